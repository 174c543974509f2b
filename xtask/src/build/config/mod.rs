//! image.toml: the deployment as the build sees it (this file: [`ImageConfig`] and its parts),
//! read as written (`raw.rs`: serde structs, `deny_unknown_fields`, spans kept) and validated
//! into it (`validate.rs`, one validator per section). Enums (architecture, role, schedule) are
//! read by serde, so a new value is added in one place; names and labels follow the rules shared
//! with the agent ([`pi2pi_agent::rules`]). Every error names the file, the line and the key, and
//! what would be valid.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::build::arch::Arch;
use crate::build::mac::Mac;

pub use pi2pi_agent::rules::ConfigError;

#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The config file itself (`image.toml`, or what `--config` named).
    pub path: PathBuf,
    /// `[base]`: what every host's card is built from unless it names another.
    pub base: Base,
    /// `[bases.<name>]`: other bases, each `[base]` with some keys changed (an ARMv6 base for Pi
    /// Zero workers beside the arm64 one), chosen by a host's `base = "<name>"`.
    pub bases: BTreeMap<String, Base>,
    pub system: System,
    pub network: Network,
    pub drive: Drive,
    pub schedule: Schedule,
    pub image: ImageParams,
    pub hosts: Vec<Host>,
}

/// What the base root filesystem is built from (`[base]`).
#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub suite: String,
    pub arch: Arch,
    pub mirrors: Vec<String>,
    pub keyring: PathBuf,
    pub components: Vec<String>,
    /// The kernel package, optionally from another suite of the same mirrors (apt's
    /// `package/suite`, e.g. `linux-image-arm64/trixie-backports`).
    pub kernel: String,
    pub firmware: String,
    /// The package with each board's U-Boot (`/usr/lib/u-boot/<config>/u-boot.bin`), which the
    /// firmware starts and which picks the root slot (`build/uboot.rs`).
    pub bootloader: String,
    pub packages: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub path_exclude: Vec<String>,
    pub path_include: Vec<String>,
}

impl Base {
    /// The suite the kernel comes from when it is not the base's own (`package/suite`).
    pub fn kernel_suite(&self) -> Option<&str> {
        self.kernel.split_once('/').map(|(_, suite)| suite)
    }

    /// mmdebstrap's mirror arguments: the mirrors for the base's suite, and full `deb` lines for
    /// the kernel's suite on the same mirrors (and components), if it has its own.
    pub fn sources(&self) -> Vec<String> {
        let extra = self
            .kernel_suite()
            .into_iter()
            .flat_map(|suite| self.mirrors.iter().map(move |m| format!("deb {m} {suite} {}", self.components.join(" "))));
        self.mirrors.iter().cloned().chain(extra).collect()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct System {
    pub user: String,
    pub password_hash: String,
    pub locale: String,
    pub timezone: String,
    pub keyboard: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub domain: String,
    /// The pair's cable; a cluster has none (its links are its workers').
    pub lan: Option<Lan>,
}

/// The one cable between a pair's hosts (`[network]`'s interface, prefix and dhcp_range).
#[derive(Debug, Clone, Serialize)]
pub struct Lan {
    pub interface: String,
    pub prefix: u8,
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
}

impl Lan {
    /// The netmask of `prefix` as a number (`/8` → 0xff000000).
    pub fn mask(&self) -> u32 {
        mask(self.prefix)
    }
    /// The network `a` is in under this prefix.
    pub fn subnet_of(&self, a: Ipv4Addr) -> u32 {
        u32::from(a) & self.mask()
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX << (32 - prefix)
}

#[derive(Debug, Clone, Serialize)]
pub struct Drive {
    pub label: String,
    pub mount_point: String,
    /// Where update bundles are put on the drive, below its root.
    pub update: String,
}

/// How the agent is run on the cards: read by serde from image.toml, by clap from `--schedule`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    /// An inotify daemon under systemd: files arrive within about a second.
    Systemd,
    /// One pass a minute from cron, as the old script ran.
    Cron,
}

impl Schedule {
    pub const ALL: [Schedule; 2] = [Schedule::Systemd, Schedule::Cron];

    /// Its name in image.toml (and in directory names).
    pub fn name(self) -> &'static str {
        match self {
            Schedule::Systemd => "systemd",
            Schedule::Cron => "cron",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageParams {
    pub boot_mib: u64,
    pub root_headroom_mib: u64,
    /// Each root slot's partition; the root filesystem grows to fill it on first boot.
    pub slot_mib: u64,
    /// The data partition's filesystem as built; it grows to the end of the card on first boot.
    pub data_mib: u64,
    pub max_bytes: u64,
    /// Where the shipped files will be served from (ends in `/`), for rpi-imager.json's URLs;
    /// empty: the entries name the bare file.
    pub download_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// A pair's host with a static address, serving DHCP and DNS on the cable.
    DhcpServer,
    /// A pair's host with its address from the dhcp-server, reserved by the client identifier its
    /// card sends (so any Pi the card is put in gets it).
    DhcpClient,
    /// A cluster's hub: one USB gadget link per worker, routing between them, NAT to its uplink.
    Manager,
    /// A cluster's Pi Zero: a USB Ethernet gadget on its link to the manager.
    Worker,
}

impl Role {
    /// Its name in image.toml.
    pub fn name(self) -> &'static str {
        match self {
            Role::DhcpServer => "dhcp-server",
            Role::DhcpClient => "dhcp-client",
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }
    /// What the role does, in words (the Imager list's descriptions).
    pub fn describe(self) -> &'static str {
        match self {
            Role::DhcpServer => "static address, DHCP and DNS for the link",
            Role::DhcpClient => "address from the DHCP server",
            Role::Manager => "cluster manager: a USB Ethernet link per worker, routing and NAT",
            Role::Worker => "cluster worker: USB Ethernet gadget on its link to the manager",
        }
    }
    pub fn in_cluster(self) -> bool {
        matches!(self, Role::Manager | Role::Worker)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub role: Role,
    /// Where the other hosts reach it. None for a cluster's manager, which has an address on each
    /// worker's link instead (see [`ImageConfig::address_seen_by`]).
    pub address: Option<Ipv4Addr>,
    /// A dhcp-client's Ethernet address, when the file pins its reservation to one Pi as well.
    pub mac: Option<Mac>,
    /// A dhcp-client's DHCP client identifier (option 61, colon-separated hex): its card sends it
    /// and the dhcp-server reserves the address by it, whatever Pi the card is in.
    pub client_id: Option<String>,
    pub peers: Vec<String>,
    /// The `[bases.<name>]` its card is built from; None: `[base]`.
    pub base: Option<String>,
    /// The board it is for, when the file names one (always, for a worker).
    pub board: Option<&'static crate::build::boards::Board>,
    /// A manager's interface to the world, the only one its workers' traffic is NATed out of.
    pub uplink: Option<String>,
    /// A worker's USB cable to the manager.
    pub link: Option<Link>,
}

/// One worker's USB gadget link: a /24 (or the configured subnet) of its own, the manager at .1
/// on `ethpiN`, the worker at .2 on `usb0`; each side's interface has a fixed Ethernet address,
/// which is how the manager names it.
#[derive(Debug, Clone, Serialize)]
pub struct Link {
    pub number: u32,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub manager: Ipv4Addr,
    pub worker: Ipv4Addr,
    /// g_ether's `host_addr`: the manager's end (its `ethpiN`).
    pub host_mac: Mac,
    /// g_ether's `dev_addr`: the worker's `usb0`.
    pub dev_mac: Mac,
    /// The manager's name for the link.
    pub interface: String,
}

impl Link {
    /// Both ends of the link are in one subnet: (first, last) address of it.
    fn range(&self) -> (u32, u32) {
        let first = u32::from(self.subnet);
        (first, first | !mask(self.prefix))
    }
}

impl Host {
    /// Where it is, in words (the Imager list's descriptions).
    pub fn place(&self) -> String {
        match (&self.link, &self.uplink, self.address) {
            (Some(l), ..) => format!("at {} on USB link {}", l.worker, l.number),
            (None, Some(u), _) => format!("gateway of its workers' links, uplink {u}"),
            (None, None, Some(a)) => format!("at {a}"),
            (None, None, None) => String::new(),
        }
    }
    /// The Ethernet address this host's card gives its network interface, if it sets one: a
    /// worker's gadget end (g_ether's `dev_addr`). Every other interface has the address its Pi
    /// came with, which no config knows (a pinned `mac` is what the file expects, not what the
    /// card sets).
    pub fn card_mac(&self) -> Option<Mac> {
        self.link.as_ref().map(|l| l.dev_mac)
    }
}

impl ImageConfig {
    /// The config file itself (its lock is beside it).
    pub fn file(&self) -> PathBuf {
        self.path.clone()
    }
    /// The package pins for this config's bases: `<config>.lock` beside the config file.
    pub fn lock_file(&self) -> PathBuf {
        self.path.with_extension("lock")
    }

    pub fn host(&self, name: &str) -> anyhow::Result<&Host> {
        self.hosts.iter().find(|h| h.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            anyhow::anyhow!("{} has no host `{name}`; hosts are: {} (or `all`)", self.file_name(), names.join(", "))
        })
    }
    pub fn server(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.role == Role::DhcpServer)
    }
    /// The base `h`'s card is built from.
    pub fn base_of(&self, h: &Host) -> &Base {
        h.base.as_ref().and_then(|n| self.bases.get(n)).unwrap_or(&self.base)
    }
    /// The bases its hosts' cards are built from, each once, in the order of the hosts.
    pub fn bases_in_use(&self) -> Vec<&Base> {
        let mut used: Vec<&Base> = Vec::new();
        for b in self.hosts.iter().map(|h| self.base_of(h)) {
            if !used.iter().any(|u| std::ptr::eq(*u, b)) {
                used.push(b);
            }
        }
        used
    }
    /// The pair's cable; an error for a cluster's file (what needs it is pair-only).
    pub fn lan(&self) -> anyhow::Result<&Lan> {
        self.network.lan.as_ref().ok_or_else(|| anyhow::anyhow!("{} describes a cluster, not a pair", self.file_name()))
    }
    pub fn manager(&self) -> Option<&Host> {
        self.hosts.iter().find(|h| h.role == Role::Manager)
    }
    /// The address `from` reaches `to` at: `to`'s own, or for a cluster's manager, its end of
    /// `from`'s link (None: `from` has no link to it, i.e. it is the manager itself).
    pub fn address_seen_by(&self, from: &Host, to: &Host) -> Option<Ipv4Addr> {
        to.address.or_else(|| from.link.as_ref().map(|l| l.manager))
    }
    /// The directory below `receiver`'s receiving/ that `sender`'s files go into (`serve --into`,
    /// fixed by the receiver's authorized_keys): its own whenever the receiver has more than one
    /// sender (always on a manager), so that no sender can replace, probe or confirm another's
    /// files; `None` (receiving/ itself) for a receiver's only sender.
    pub fn sender_dir<'h>(&self, receiver: &Host, sender: &'h Host) -> Option<&'h str> {
        let senders = self.hosts.iter().filter(|h| h.peers.contains(&receiver.name)).count();
        (receiver.role == Role::Manager || senders > 1).then_some(sender.name.as_str())
    }
    /// The config file's name, for messages (`image.toml`).
    pub fn file_name(&self) -> String {
        self.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use validate::load;
#[cfg(test)]
pub use validate::{parse, shipped};
