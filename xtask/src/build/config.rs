//! image.toml: a raw serde struct (`deny_unknown_fields`, spans kept) validated into [`ImageConfig`],
//! one validator per section. Enums (architecture, role, schedule) are read by serde, so a new
//! value is added in one place; names and labels follow the rules shared with the agent
//! ([`pi2pi_agent::rules`]). Every error names the file, the line and the key, and what would be
//! valid.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use pi2pi_agent::rules::{self, Source};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::build::arch::Arch;
use crate::build::mac::Mac;

pub use pi2pi_agent::rules::ConfigError;

#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The package pins for this config's bases: `<config>.lock` beside the config file.
    pub lock_file: PathBuf,
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
    pub kernel: String,
    pub firmware: String,
    pub packages: Vec<String>,
    pub initramfs_modules: Vec<String>,
    pub path_exclude: Vec<String>,
    pub path_include: Vec<String>,
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
    pub board: Option<&'static str>,
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
        self.lock_file.with_extension("toml")
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
    /// This config as `h`'s card sees it: `base` is the host's base (every stage of one card's
    /// build reads `cfg.base`).
    pub fn for_host(&self, h: &Host) -> ImageConfig {
        ImageConfig { base: self.base_of(h).clone(), ..self.clone() }
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
        self.lock_file.with_extension("toml").file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    base: RawBase,
    #[serde(default)]
    bases: BTreeMap<String, S<RawBaseOverride>>,
    system: RawSystem,
    network: RawNetwork,
    drive: RawDrive,
    agent: RawAgent,
    image: RawImage,
    host: S<Vec<RawHost>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct RawBase {
    suite: S<String>,
    architecture: Arch,
    mirrors: S<Vec<String>>,
    keyring: S<String>,
    components: S<Vec<String>>,
    kernel: S<String>,
    firmware: S<String>,
    packages: S<Vec<String>>,
    initramfs_modules: S<Vec<String>>,
    #[serde(default)]
    path_exclude: Vec<S<String>>,
    #[serde(default)]
    path_include: Vec<S<String>>,
}

/// `[bases.<name>]`: any of `[base]`'s keys, replacing its value (lists too, whole).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBaseOverride {
    suite: Option<S<String>>,
    architecture: Option<Arch>,
    mirrors: Option<S<Vec<String>>>,
    keyring: Option<S<String>>,
    components: Option<S<Vec<String>>>,
    kernel: Option<S<String>>,
    firmware: Option<S<String>>,
    packages: Option<S<Vec<String>>>,
    initramfs_modules: Option<S<Vec<String>>>,
    path_exclude: Option<Vec<S<String>>>,
    path_include: Option<Vec<S<String>>>,
}

impl RawBaseOverride {
    fn over(&self, b: &RawBase) -> RawBase {
        fn or<T: Clone>(o: &Option<T>, d: &T) -> T {
            o.clone().unwrap_or_else(|| d.clone())
        }
        RawBase {
            suite: or(&self.suite, &b.suite),
            architecture: self.architecture.unwrap_or(b.architecture),
            mirrors: or(&self.mirrors, &b.mirrors),
            keyring: or(&self.keyring, &b.keyring),
            components: or(&self.components, &b.components),
            kernel: or(&self.kernel, &b.kernel),
            firmware: or(&self.firmware, &b.firmware),
            packages: or(&self.packages, &b.packages),
            initramfs_modules: or(&self.initramfs_modules, &b.initramfs_modules),
            path_exclude: or(&self.path_exclude, &b.path_exclude),
            path_include: or(&self.path_include, &b.path_include),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSystem {
    user: S<String>,
    password_hash: Option<S<String>>,
    locale: S<String>,
    timezone: S<String>,
    keyboard: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    domain: S<String>,
    // The pair's cable: all three or none.
    interface: Option<S<String>>,
    prefix: Option<S<u8>>,
    dhcp_range: Option<S<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrive {
    label: S<String>,
    mount_point: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    boot_mib: S<u64>,
    root_headroom_mib: S<u64>,
    max_bytes: S<u64>,
    download_url: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    name: S<String>,
    role: S<Role>,
    address: Option<S<String>>,
    mac: Option<S<String>>,
    peers: Option<S<Vec<String>>>,
    base: Option<S<String>>,
    board: Option<S<String>>,
    uplink: Option<S<String>>,
    link: Option<S<u32>>,
    subnet: Option<S<String>>,
    host_mac: Option<S<String>>,
    dev_mac: Option<S<String>>,
}

impl RawHost {
    /// The keys only some roles take, with where each is (if set) and the roles it is for.
    fn role_keys(&self) -> [(&'static str, Option<usize>, &'static [Role]); 7] {
        const PAIR: &[Role] = &[Role::DhcpServer, Role::DhcpClient];
        fn at<T>(v: &Option<S<T>>) -> Option<usize> {
            v.as_ref().map(|s| s.span().start)
        }
        [
            ("address", at(&self.address), PAIR),
            ("mac", at(&self.mac), &[Role::DhcpClient]),
            ("uplink", at(&self.uplink), &[Role::Manager]),
            ("link", at(&self.link), &[Role::Worker]),
            ("subnet", at(&self.subnet), &[Role::Worker]),
            ("host_mac", at(&self.host_mac), &[Role::Worker]),
            ("dev_mac", at(&self.dev_mac), &[Role::Worker]),
        ]
    }
    /// Where role key `k` is in the file, if it is set.
    fn offset(&self, k: &str) -> Option<usize> {
        self.role_keys().into_iter().find(|(key, ..)| *key == k).and_then(|(_, at, _)| at)
    }
}

/// Every Ethernet address a host's config gives it, by key.
fn macs(h: &Host) -> Vec<(&'static str, Mac)> {
    let mut v = Vec::new();
    if let Some(m) = h.mac {
        v.push(("mac", m));
    }
    if let Some(l) = &h.link {
        v.extend([("host_mac", l.host_mac), ("dev_mac", l.dev_mac)]);
    }
    v
}

fn is_pkg(s: &str) -> bool {
    s.len() >= 2
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
}

/// A user name as useradd takes it (what the base's hook passes it to).
fn user_name(s: &str) -> Result<(), String> {
    rules::host_name(s).map_err(|_| format!("`{s}` must be a lower-case user name (letters, digits, '-')"))?;
    if s == "root" {
        return Err("must not be root: the cards log in as an ordinary user with sudo".into());
    }
    Ok(())
}

/// A unicast Ethernet address.
fn mac(cx: &Source, m: &S<String>, key: &str) -> Result<Mac, ConfigError> {
    m.get_ref().parse().or_else(|e| cx.err(m, key, e))
}

/// A dhcp-client's DHCP client identifier: type 0 (not a hardware address, RFC 2132 9.14) and 15
/// bytes derived from its name, so a card sends the same one in any Pi and no two hosts share one.
/// Hex on both sides: dhcpcd sends exactly these bytes, and dnsmasq's `id:` matches them (in text
/// form dnsmasq would drop the type byte that dhcpcd adds). 16 bytes, within dhcpcd's 48.
fn dhcp_client_id(name: &str) -> String {
    let d = crate::build::cache::sha256_hex(format!("pi2pi dhcp-client {name}").as_bytes());
    std::iter::once("00").chain((0..15).map(|i| &d[2 * i..2 * i + 2])).collect::<Vec<_>>().join(":")
}

/// The board `at` names, which must be one the base's architecture boots.
fn board(cx: &Source, at: &S<String>, key: &str, arch: Arch) -> Result<&'static crate::build::boards::Board, ConfigError> {
    let name = at.get_ref();
    let ours = crate::build::boards::for_arch(arch);
    if let Some(b) = ours.iter().find(|b| b.name == name) {
        return Ok(b);
    }
    let list = ours.iter().map(|b| b.name).collect::<Vec<_>>().join(", ");
    let msg = match crate::build::boards::arches_of(name).first() {
        Some(other) => format!(
            "`{name}` needs an {} card, and this host's base is {}; give the host `base = \"<name>\"` of a \
             [bases.<name>] with architecture = \"{}\" ({} cards boot: {list})",
            other.describe(),
            arch.describe(),
            other.deb(),
            arch.deb()
        ),
        None => format!("`{name}` is not a board pi2pi knows; {} cards boot: {list}", arch.deb()),
    };
    cx.err(at, key, msg)
}

/// A worker's link: its number, its subnet (given, or 10.0.(10+N).0/24 as the seed numbers
/// them), and the two gadget addresses (given, or derived from its name).
fn link(cx: &Source, idx: usize, h: &RawHost, name: &str) -> Result<Link, ConfigError> {
    let key = |k: &str| format!("host[{idx}].{k}");
    let Some(n) = &h.link else {
        return cx.err(
            &h.role,
            &key("link"),
            "a worker needs `link = N`: its cable's number (the manager's ethpiN; subnet 10.0.(10+N).0/24 unless `subnet` is set)",
        );
    };
    let number = *n.get_ref();
    cx.check((1..=245).contains(&number), n, &key("link"), || format!("{number} must be 1..=245 (10.0.(10+N).0/24)"))?;
    let (subnet, prefix) = match &h.subnet {
        None => (Ipv4Addr::new(10, 0, 10 + number as u8, 0), 24),
        Some(s) => {
            let parsed = s.get_ref().split_once('/').and_then(|(a, p)| Some((a.parse::<Ipv4Addr>().ok()?, p.parse::<u8>().ok()?)));
            match parsed {
                Some((a, p)) if (8..=30).contains(&p) && u32::from(a) & !mask(p) == 0 => (a, p),
                _ => {
                    return cx.err(s, &key("subnet"), format!("`{}` must be a network like \"10.0.11.0/24\" (prefix 8..=30)", s.get_ref()))
                }
            }
        }
    };
    let gadget_mac = |given: &Option<S<String>>, k: &str| match given {
        Some(m) => mac(cx, m, &key(k)),
        None => Ok(Mac::derived(name, k)),
    };
    let (host_mac, dev_mac) = (gadget_mac(&h.host_mac, "host_mac")?, gadget_mac(&h.dev_mac, "dev_mac")?);
    if host_mac == dev_mac {
        return cx.err_at(
            h.offset("dev_mac").or(h.offset("host_mac")),
            &key("dev_mac"),
            "must differ from host_mac: they are the two ends of the link",
        );
    }
    let first = u32::from(subnet);
    Ok(Link {
        number,
        subnet,
        prefix,
        manager: Ipv4Addr::from(first + 1),
        worker: Ipv4Addr::from(first + 2),
        host_mac,
        dev_mac,
        interface: format!("ethpi{number}"),
    })
}

/// The shipped image.toml, as the tests of every module read it.
#[cfg(test)]
pub fn shipped() -> ImageConfig {
    load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../image.toml")).expect("the shipped image.toml is valid")
}

pub fn load(path: &Path) -> Result<ImageConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    parse(path, &text)
}

pub fn parse(file: &Path, text: &str) -> Result<ImageConfig, ConfigError> {
    let cx = Source { file, text };
    let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    let base = base(&cx, "base", &raw.base)?;
    let bases = named_bases(&cx, &raw, &base)?;
    let network = network(&cx, &raw.network)?;
    let hosts = hosts(&cx, &raw.host, &raw.network, &network, &base, &bases)?;
    Ok(ImageConfig {
        lock_file: file.with_extension("lock"),
        base,
        bases,
        system: system(&cx, &raw.system)?,
        network,
        drive: drive(&cx, &raw.drive)?,
        schedule: raw.agent.schedule,
        image: image(&cx, &raw.image)?,
        hosts,
    })
}

fn base(cx: &Source, at: &str, b: &RawBase) -> Result<Base, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    cx.check(
        !b.suite.get_ref().is_empty() && b.suite.get_ref().bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
        &b.suite,
        &key("suite"),
        || "must be a suite name like \"trixie\"".into(),
    )?;
    cx.check(
        !b.mirrors.get_ref().is_empty()
            && b.mirrors.get_ref().iter().all(|m| {
                (m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/")) && !m.contains(char::is_whitespace)
            }),
        &b.mirrors,
        &key("mirrors"),
        || "must list at least one http://, https:// or file:/ mirror URL".into(),
    )?;
    let keyring = PathBuf::from(b.keyring.get_ref());
    cx.check(keyring.is_absolute() && keyring.exists(), &b.keyring, &key("keyring"), || {
        format!("`{}` must be an existing keyring file (Debian's is /usr/share/keyrings/debian-archive-keyring.gpg)", keyring.display())
    })?;
    cx.check(
        !b.components.get_ref().is_empty() && b.components.get_ref().iter().all(|c| is_pkg(c)),
        &b.components,
        &key("components"),
        || "list archive components like \"main\"".into(),
    )?;
    for (v, k) in [(&b.kernel, key("kernel")), (&b.firmware, key("firmware"))] {
        cx.check(is_pkg(v.get_ref()), v, &k, || format!("`{}` is not a Debian package name", v.get_ref()))?;
    }
    if let Some(bad) = b.packages.get_ref().iter().find(|p| !is_pkg(p)) {
        return cx.err(&b.packages, &key("packages"), format!("`{bad}` is not a Debian package name"));
    }
    if let Some(bad) = b
        .initramfs_modules
        .get_ref()
        .iter()
        .find(|m| m.is_empty() || !m.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return cx.err(&b.initramfs_modules, &key("initramfs_modules"), format!("`{bad}` is not a kernel module name"));
    }
    for (list, k) in [(&b.path_exclude, key("path_exclude")), (&b.path_include, key("path_include"))] {
        for p in list {
            cx.check(p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace), p, &k, || {
                format!("`{}` must be an absolute path glob without spaces", p.get_ref())
            })?;
        }
    }
    Ok(Base {
        suite: b.suite.get_ref().clone(),
        arch: b.architecture,
        mirrors: b.mirrors.get_ref().clone(),
        keyring,
        components: b.components.get_ref().clone(),
        kernel: b.kernel.get_ref().clone(),
        firmware: b.firmware.get_ref().clone(),
        packages: b.packages.get_ref().clone(),
        initramfs_modules: b.initramfs_modules.get_ref().clone(),
        path_exclude: b.path_exclude.iter().map(|p| p.get_ref().clone()).collect(),
        path_include: b.path_include.iter().map(|p| p.get_ref().clone()).collect(),
    })
}

/// `[bases.<name>]`, each `[base]` with its own keys, validated like it; no two bases may pin the
/// same suite and architecture (the lock keeps one section per pair).
fn named_bases(cx: &Source, raw: &Raw, default: &Base) -> Result<BTreeMap<String, Base>, ConfigError> {
    let mut out: BTreeMap<String, Base> = BTreeMap::new();
    for (name, o) in &raw.bases {
        let at = format!("bases.{name}");
        cx.check(rules::host_name(name).is_ok(), o, &at, || {
            format!("`{name}` must be a name like \"zero\" (lower-case letters, digits, '-')")
        })?;
        let b = base(cx, &at, &o.get_ref().over(&raw.base))?;
        let same = |x: &Base| x.suite == b.suite && x.arch == b.arch;
        if let Some(other) =
            same(default).then_some("[base]".to_string()).or_else(|| out.iter().find(|(_, x)| same(x)).map(|(n, _)| format!("[bases.{n}]")))
        {
            return cx.err(o, &at, format!("builds {} {} as {other} does; give it another architecture or suite", b.suite, b.arch.deb()));
        }
        out.insert(name.clone(), b);
    }
    Ok(out)
}

fn system(cx: &Source, s: &RawSystem) -> Result<System, ConfigError> {
    let user = cx.rule(&s.user, "system.user", user_name)?;
    let password_hash = match &s.password_hash {
        None => String::new(),
        Some(p) => {
            let h = p.get_ref();
            // A crypt(3) hash is [$./0-9A-Za-z=]; anything else is a typo (or a plain password).
            let ok = h.is_empty() || (h.starts_with('$') && h.bytes().all(|c| c.is_ascii_alphanumeric() || b"$./=".contains(&c)));
            cx.check(ok, p, "system.password_hash", || {
                "must be empty (locked) or a crypt(3) hash starting with '$' (make one with `mkpasswd -m yescrypt`)".into()
            })?;
            h.clone()
        }
    };
    let loc = s.locale.get_ref();
    let ok = loc.len() >= 5
        && loc.as_bytes()[2] == b'_'
        && loc.ends_with(".UTF-8")
        && loc.bytes().all(|c| c.is_ascii_alphanumeric() || b"_.-@".contains(&c));
    cx.check(ok, &s.locale, "system.locale", || format!("`{loc}` must look like \"en_US.UTF-8\""))?;
    let tz = s.timezone.get_ref();
    cx.check(
        !tz.is_empty() && !tz.contains("..") && !tz.starts_with('/') && Path::new("/usr/share/zoneinfo").join(tz).is_file(),
        &s.timezone,
        "system.timezone",
        || format!("`{tz}` is not a time zone name like \"America/New_York\""),
    )?;
    let kb = s.keyboard.get_ref();
    cx.check(!kb.is_empty() && kb.bytes().all(|c| c.is_ascii_lowercase()), &s.keyboard, "system.keyboard", || {
        "must be an XKB layout like \"us\"".into()
    })?;
    Ok(System { user, password_hash, locale: loc.clone(), timezone: tz.clone(), keyboard: kb.clone() })
}

fn network(cx: &Source, n: &RawNetwork) -> Result<Network, ConfigError> {
    cx.check(rules::host_name(n.domain.get_ref()).is_ok(), &n.domain, "network.domain", || {
        "must be a single DNS label like \"local\"".into()
    })?;
    let lan = match (&n.interface, &n.prefix, &n.dhcp_range) {
        (None, None, None) => None,
        (Some(i), Some(p), Some(r)) => Some(lan(cx, i, p, r)?),
        _ => {
            let missing: Vec<&str> =
                [("interface", n.interface.is_some()), ("prefix", n.prefix.is_some()), ("dhcp_range", n.dhcp_range.is_some())]
                    .into_iter()
                    .filter_map(|(k, set)| (!set).then_some(k))
                    .collect();
            return cx.err(&n.domain, &format!("network.{}", missing[0]), "a pair's cable needs interface, prefix and dhcp_range together");
        }
    };
    Ok(Network { domain: n.domain.get_ref().clone(), lan })
}

fn lan(cx: &Source, interface: &S<String>, prefix: &S<u8>, range: &S<Vec<String>>) -> Result<Lan, ConfigError> {
    cx.check(rules::host_name(interface.get_ref()).is_ok(), interface, "network.interface", || {
        "must be an interface name like \"eth0\"".into()
    })?;
    let p = *prefix.get_ref();
    cx.check((1..=30).contains(&p), prefix, "network.prefix", || format!("{p} must be 1..=30"))?;
    let ends: Vec<Option<Ipv4Addr>> = range.get_ref().iter().map(|a| a.parse().ok()).collect();
    let dhcp_range = match ends.as_slice() {
        [Some(a), Some(b)] if a <= b => (*a, *b),
        _ => {
            return cx.err(range, "network.dhcp_range", "must be two IPv4 addresses, first <= last, like [\"10.0.0.100\", \"10.0.0.200\"]")
        }
    };
    Ok(Lan { interface: interface.get_ref().clone(), prefix: p, dhcp_range })
}

fn drive(cx: &Source, d: &RawDrive) -> Result<Drive, ConfigError> {
    let label = cx.rule(&d.label, "drive.label", rules::fat_label)?;
    let m = d.mount_point.get_ref();
    cx.check(m.starts_with('/') && m != "/" && !m.contains(char::is_whitespace), &d.mount_point, "drive.mount_point", || {
        "must be an absolute path without spaces, like \"/media/pi/PI2PI\"".into()
    })?;
    Ok(Drive { label, mount_point: m.clone() })
}

fn image(cx: &Source, i: &RawImage) -> Result<ImageParams, ConfigError> {
    cx.check((64..=2048).contains(i.boot_mib.get_ref()), &i.boot_mib, "image.boot_mib", || "must be 64..=2048".into())?;
    cx.check(*i.root_headroom_mib.get_ref() <= 8192, &i.root_headroom_mib, "image.root_headroom_mib", || "must be at most 8192".into())?;
    cx.check(*i.max_bytes.get_ref() >= 1 << 28, &i.max_bytes, "image.max_bytes", || "must be at least 256 MiB".into())?;
    if let Some(u) = &i.download_url {
        let url = u.get_ref();
        let ok = ["http://", "https://", "file:///"].iter().any(|p| url.starts_with(p))
            && url.ends_with('/')
            && !url.contains(char::is_whitespace);
        cx.check(ok, u, "image.download_url", || {
            format!("`{url}` must be an http://, https:// or file:/// URL of a directory, ending in `/`")
        })?;
    }
    Ok(ImageParams {
        boot_mib: *i.boot_mib.get_ref(),
        root_headroom_mib: *i.root_headroom_mib.get_ref(),
        max_bytes: *i.max_bytes.get_ref(),
        download_url: i.download_url.as_ref().map(|u| u.get_ref().clone()).unwrap_or_default(),
    })
}

/// The `[[host]]` list: each host alone, then what holds between them: one kind of deployment,
/// its one server or manager, addresses and links that do not collide, peers.
fn hosts(
    cx: &Source,
    raw: &S<Vec<RawHost>>,
    raw_net: &RawNetwork,
    net: &Network,
    base: &Base,
    bases: &BTreeMap<String, Base>,
) -> Result<Vec<Host>, ConfigError> {
    cx.check(!raw.get_ref().is_empty(), raw, "host", || "define at least one [[host]]".into())?;
    let mut hosts: Vec<Host> = Vec::new();
    for (idx, h) in raw.get_ref().iter().enumerate() {
        let host = one_host(cx, idx, h, &hosts, base, bases)?;
        hosts.push(host);
    }
    let cluster = hosts[0].role.in_cluster();
    if let Some(idx) = hosts.iter().position(|h| h.role.in_cluster() != cluster) {
        return cx.err(
            &raw.get_ref()[idx].role,
            &format!("host[{idx}].role"),
            "a file describes a pair (dhcp-server, dhcp-client) or a cluster (manager, worker), not both",
        );
    }
    if cluster {
        one_hub(cx, raw, &hosts, Role::Manager, Role::Worker)?;
        links_apart(cx, raw, &hosts)?;
    } else {
        one_hub(cx, raw, &hosts, Role::DhcpServer, Role::DhcpClient)?;
        pair_on_one_subnet(cx, raw, raw_net, net, &hosts)?;
    }
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    for (idx, h) in raw.get_ref().iter().enumerate() {
        let me = &hosts[idx];
        hosts[idx].peers = match &h.peers {
            // A pair delivers both ways; a cluster's workers deliver to the manager.
            None => hosts
                .iter()
                .filter(|o| o.name != me.name && (!cluster || (me.role == Role::Worker && o.role == Role::Manager)))
                .map(|o| o.name.clone())
                .collect(),
            Some(p) => {
                // Its key logs in to the workers (a shell); one key cannot also be forced to run
                // only the receiver there.
                cx.check(me.role != Role::Manager || p.get_ref().is_empty(), p, &format!("host[{idx}].peers"), || {
                    "a manager's key logs in to its workers, so its agent delivers to no one; workers deliver to it".into()
                })?;
                if let Some(bad) = p.get_ref().iter().find(|x| !names.contains(x) || **x == me.name) {
                    return cx.err(p, &format!("host[{idx}].peers"), format!("`{bad}` is not another host in this file"));
                }
                // A worker's link leads to its manager only; workers take nothing from each other.
                if me.role == Role::Worker {
                    if let Some(bad) = p.get_ref().iter().find(|x| hosts.iter().any(|o| o.name == **x && o.role != Role::Manager)) {
                        return cx.err(
                            p,
                            &format!("host[{idx}].peers"),
                            format!("`{bad}` is a worker; a worker delivers to its manager only"),
                        );
                    }
                }
                p.get_ref().clone()
            }
        };
    }
    Ok(hosts)
}

/// At most one hub (dhcp-server, manager), and exactly one if there are spokes.
fn one_hub(cx: &Source, raw: &S<Vec<RawHost>>, hosts: &[Host], hub: Role, spoke: Role) -> Result<(), ConfigError> {
    let hubs: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].role == hub).collect();
    if hubs.len() > 1 {
        return cx.err(
            &raw.get_ref()[hubs[1]].role,
            &format!("host[{}].role", hubs[1]),
            format!("only one host can be the {}", hub.name()),
        );
    }
    if hubs.is_empty() && hosts.iter().any(|h| h.role == spoke) {
        return cx.err(raw, "host", format!("{} hosts need one host with role = \"{}\"", spoke.name(), hub.name()));
    }
    Ok(())
}

/// A pair: the cable is configured, and every address and the DHCP range are on the server's
/// subnet, or nobody can reach anybody.
fn pair_on_one_subnet(cx: &Source, raw: &S<Vec<RawHost>>, raw_net: &RawNetwork, net: &Network, hosts: &[Host]) -> Result<(), ConfigError> {
    let Some(lan) = &net.lan else {
        return cx.err(&raw_net.domain, "network.interface", "a pair needs its cable: network.interface, prefix and dhcp_range");
    };
    let prefix = lan.prefix;
    let server = hosts.iter().find(|h| h.role == Role::DhcpServer).unwrap_or(&hosts[0]);
    let subnet = lan.subnet_of(server.address.expect("pair hosts have addresses"));
    for (idx, h) in raw.get_ref().iter().enumerate() {
        let a = hosts[idx].address.expect("pair hosts have addresses");
        let at = h.address.as_ref().expect("pair hosts have addresses");
        cx.check(lan.subnet_of(a) == subnet, at, &format!("host[{idx}].address"), || {
            format!("{a} is outside the network {}/{prefix}", Ipv4Addr::from(subnet))
        })?;
    }
    let at = raw_net.dhcp_range.as_ref().expect("checked with the lan");
    for (a, what) in [(lan.dhcp_range.0, "first"), (lan.dhcp_range.1, "last")] {
        cx.check(lan.subnet_of(a) == subnet, at, "network.dhcp_range", || {
            format!("the {what} address {a} is outside {}/{prefix}", Ipv4Addr::from(subnet))
        })?;
    }
    Ok(())
}

/// A cluster: no two workers on one cable number or on overlapping subnets.
fn links_apart(cx: &Source, raw: &S<Vec<RawHost>>, hosts: &[Host]) -> Result<(), ConfigError> {
    for (idx, h) in hosts.iter().enumerate() {
        let Some(l) = &h.link else { continue };
        for o in &hosts[..idx] {
            let Some(ol) = &o.link else { continue };
            let r = &raw.get_ref()[idx];
            if l.number == ol.number {
                let at = r.link.as_ref().expect("workers have links");
                return cx.err(at, &format!("host[{idx}].link"), format!("link {} is already {}'s", l.number, o.name));
            }
            let ((a0, a1), (b0, b1)) = (l.range(), ol.range());
            if a0 <= b1 && b0 <= a1 {
                let key = format!("host[{idx}].{}", if r.subnet.is_some() { "subnet" } else { "link" });
                let offset = r.subnet.as_ref().map(|s| s.span().start).or(r.link.as_ref().map(|s| s.span().start));
                return cx.err_at(
                    offset,
                    &key,
                    format!("{}/{} overlaps {}'s link {}/{}", l.subnet, l.prefix, o.name, ol.subnet, ol.prefix),
                );
            }
        }
    }
    Ok(())
}

/// One `[[host]]` on its own, given the hosts before it (for duplicates).
fn one_host(
    cx: &Source,
    idx: usize,
    h: &RawHost,
    before: &[Host],
    default: &Base,
    bases: &BTreeMap<String, Base>,
) -> Result<Host, ConfigError> {
    let key = |k: &str| format!("host[{idx}].{k}");
    let name = cx.rule(&h.name, &key("name"), rules::host_name)?;
    cx.check(!before.iter().any(|o| o.name == name), &h.name, &key("name"), || format!("host `{name}` is defined twice"))?;
    let role = *h.role.get_ref();
    for (k, offset, roles) in h.role_keys() {
        if offset.is_some() && !roles.contains(&role) {
            let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
            return cx.err_at(offset, &key(k), format!("`{k}` is not for a {} (only for: {})", role.name(), names.join(", ")));
        }
    }
    let (base_name, arch) = match &h.base {
        None => (None, default.arch),
        Some(n) => match bases.get(n.get_ref()) {
            Some(b) => (Some(n.get_ref().clone()), b.arch),
            None => {
                let names: Vec<String> = bases.keys().map(|k| format!("\"{k}\"")).collect();
                let valid = if names.is_empty() {
                    "this file has no [bases.<name>] tables".to_string()
                } else {
                    format!("its bases are {}", names.join(", "))
                };
                return cx.err(n, &key("base"), format!("no [bases.{}] in this file; {valid} (unset: [base])", n.get_ref()));
            }
        },
    };
    let board = h.board.as_ref().map(|b| board(cx, b, &key("board"), arch)).transpose()?;
    let mut host = Host {
        name,
        role,
        address: None,
        mac: None,
        client_id: None,
        peers: Vec::new(),
        base: base_name,
        board: board.map(|b| b.name),
        uplink: None,
        link: None,
    };
    match role {
        Role::DhcpServer | Role::DhcpClient => {
            let Some(a) = &h.address else { return cx.err(&h.role, &key("address"), "a pair's host needs `address`") };
            let ip: Ipv4Addr =
                a.get_ref().parse().or_else(|_| cx.err(a, &key("address"), format!("`{}` is not an IPv4 address", a.get_ref())))?;
            if let Some(o) = before.iter().find(|o| o.address == Some(ip)) {
                return cx.err(a, &key("address"), format!("{ip} is already {}'s", o.name));
            }
            host.address = Some(ip);
            host.mac = h.mac.as_ref().map(|m| mac(cx, m, &key("mac"))).transpose()?;
            if role == Role::DhcpClient {
                host.client_id = Some(dhcp_client_id(&host.name));
            }
        }
        Role::Manager => {
            let Some(u) = &h.uplink else {
                return cx.err(
                    &h.role,
                    &key("uplink"),
                    "a manager needs `uplink`: the interface its workers' traffic is NATed out of, like \"eth0\"",
                );
            };
            cx.check(rules::host_name(u.get_ref()).is_ok(), u, &key("uplink"), || "must be an interface name like \"eth0\"".into())?;
            host.uplink = Some(u.get_ref().clone());
        }
        Role::Worker => {
            let Some(b) = board else {
                return cx.err(
                    &h.role,
                    &key("board"),
                    "a worker needs `board` (\"pi-zero\", \"pi-zero-w\" or \"pi-zero-2-w\"): its card is made for it",
                );
            };
            let at = h.board.as_ref().expect("board is set");
            cx.check(b.usb_gadget(), at, &key("board"), || {
                format!("a {} has no USB port that can be a gadget; workers are Zeros", b.name)
            })?;
            let link = link(cx, idx, h, &host.name)?;
            host.address = Some(link.worker);
            host.link = Some(link);
        }
    }
    for (k, m) in macs(&host) {
        if let Some(o) = before.iter().find(|o| macs(o).iter().any(|(_, x)| *x == m)) {
            return cx.err_at(h.offset(k).or(h.offset("link")), &key(k), format!("{m} is already {}'s", o.name));
        }
    }
    Ok(host)
}
#[cfg(test)]
mod tests {
    use super::*;

    fn text() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../image.toml")).unwrap()
    }

    fn parse_str(t: &str) -> Result<ImageConfig, ConfigError> {
        parse(Path::new("image.toml"), t)
    }

    #[test]
    fn the_shipped_image_toml_is_valid() {
        let c = parse_str(&text()).unwrap();
        assert_eq!(c.hosts.len(), 2);
        assert_eq!(c.host("rpb").unwrap().peers, vec!["rpa"]);
        assert_eq!(c.server().unwrap().address, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(c.base.arch, Arch::Arm64);
    }

    #[test]
    fn the_previous_suite_validates_with_only_the_suite_changed() {
        let t = text();
        let other = format!("suite = \"{}\"", crate::systest::phases::OTHER_SUITE);
        let c = parse_str(&t.replace("suite = \"trixie\"", &other)).unwrap();
        assert_eq!(c.base.suite, crate::systest::phases::OTHER_SUITE);
        assert_eq!(parse_str(&t).unwrap().base.suite, "trixie", "the shipped default is Debian 13");
    }

    #[test]
    fn a_dhcp_clients_reservation_is_by_its_card_and_optionally_by_a_mac() {
        let t = text();
        let c = parse_str(&t).unwrap();
        let rpb = c.host("rpb").unwrap();
        assert_eq!(rpb.mac, None, "the shipped file ties rpb to no Pi");
        let id = rpb.client_id.as_deref().unwrap();
        assert!(id.starts_with("00:") && id.len() == 16 * 3 - 1, "type 0, 16 bytes: {id}");
        assert_eq!(c.host("rpa").unwrap().client_id, None, "the dhcp-server has a static address");
        let pinned = parse_str(&t.replace("# mac = \"b8:27:eb:12:34:56\"", "mac = \"B8:27:EB:12:34:56\"")).unwrap();
        let rpb2 = pinned.host("rpb").unwrap();
        assert_eq!(rpb2.mac.map(|m| m.to_string()).as_deref(), Some("b8:27:eb:12:34:56"));
        assert_eq!(rpb2.client_id.as_deref(), Some(id), "a pinned MAC keeps the card's identifier too");
        let renamed = parse_str(&t.replace("name = \"rpb\"", "name = \"rpc\"").replace("rpb", "rpc")).unwrap();
        assert_ne!(renamed.host("rpc").unwrap().client_id.as_deref(), Some(id), "each name its own identifier");
        let e = parse_str(&t.replace("address = \"10.0.0.1\"", "address = \"10.0.0.1\"\nmac = \"b8:27:eb:00:00:02\"")).unwrap_err();
        assert_eq!(e.key, "host[0].mac");
        assert!(e.message.contains("only for: dhcp-client"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let t = text();
        let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
        let e = parse_str(&t.replace("# mac = \"b8:27:eb:12:34:56\"", "mac = \"b8:27:eb:00:00\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("host[1].mac", Some(line_of("# mac = "))));
        assert!(e.to_string().starts_with("image.toml:"), "{e}");
        let e = parse_str(&t.replace("address = \"10.0.0.49\"", "address = \"192.168.1.9\"")).unwrap_err();
        assert_eq!(e.key, "host[1].address");
        assert!(e.message.contains("outside the network 10.0.0.0/8"), "{e}");
        let e = parse_str(&t.replace("schedule = \"systemd\"", "schedule = \"anacron\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("agent.schedule", Some(line_of("schedule = "))));
        let e = parse_str(&t.replace("label = \"PI2PI\"", "label = \"MY DRIVE\"")).unwrap_err();
        assert_eq!(e.key, "drive.label");
        let e = parse_str(&t.replace("[drive]\n", "[drive]\nlabl = 1\n")).unwrap_err();
        assert_eq!(e.key, "labl");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = parse_str(&t.replace("role = \"dhcp-client\"", "role = \"dhcp-server\"")).unwrap_err();
        assert!(e.message.contains("only one host"), "{e}");
        let e = parse_str(&t.replace("timezone = \"America/New_York\"", "timezone = \"Mars/Olympus\"")).unwrap_err();
        assert_eq!(e.key, "system.timezone");
    }

    #[test]
    fn the_download_url_is_a_directory_url() {
        let t = text();
        let with = |u: &str| parse_str(&t.replace("# download_url = \"https://example.org/pi2pi/\"", &format!("download_url = \"{u}\"")));
        assert_eq!(parse_str(&t).unwrap().image.download_url, "", "unset by default: bare file names");
        assert_eq!(with("https://example.org/pi2pi/").unwrap().image.download_url, "https://example.org/pi2pi/");
        assert!(with("file:///srv/pi2pi/").is_ok());
        for bad in ["https://example.org/pi2pi", "ftp://example.org/", "/srv/pi2pi/"] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.key, "image.download_url", "{bad}");
            assert!(e.message.contains("ending in `/`"), "{e}");
        }
    }

    #[test]
    fn enums_are_read_by_serde_and_their_errors_still_name_the_key() {
        let t = text();
        let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
        let e = parse_str(&t.replace("architecture = \"arm64\"", "architecture = \"i386\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("base.architecture", Some(line_of("architecture = "))));
        assert!(e.message.contains("arm64") && e.message.contains("armhf"), "the valid values are listed: {e}");
        let e = parse_str(&t.replace("role = \"dhcp-client\"", "role = \"client\"")).unwrap_err();
        assert_eq!(e.key, "host[1].role");
        assert!(e.message.contains("dhcp-client"), "{e}");
    }

    #[test]
    fn the_label_and_name_rules_are_the_agents() {
        let t = text();
        // Lower case would never match what Windows writes; the agent refuses it too.
        let e = parse_str(&t.replace("label = \"PI2PI\"", "label = \"pi2pi\"")).unwrap_err();
        assert_eq!(e.key, "drive.label");
        assert!(pi2pi_agent::rules::fat_label("pi2pi").is_err());
        let e = parse_str(&t.replace("name = \"rpb\"", "name = \"RPB\"")).unwrap_err();
        assert_eq!(e.key, "host[1].name");
        // Values reach the base's hooks through the environment; anything a hash cannot hold is refused.
        let e = parse_str(&t.replace("password_hash = \"\"", "password_hash = \"$y$j9T$a'b\"")).unwrap_err();
        assert_eq!(e.key, "system.password_hash");
        assert!(parse_str(&t.replace("password_hash = \"\"", "password_hash = \"$y$j9T$abc./=\"")).is_ok());
    }

    fn cluster_text() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml")).unwrap()
    }

    #[test]
    fn the_cluster_example_is_valid_and_derives_links_and_addresses() {
        let c = parse_str(&cluster_text()).unwrap();
        assert!(c.network.lan.is_none() && c.lan().is_err(), "a cluster has no pair cable");
        let m = c.manager().unwrap();
        assert_eq!((m.uplink.as_deref(), m.address, m.peers.len()), (Some("eth0"), None, 0), "the manager collects");
        let w2 = c.host("worker2").unwrap();
        let l = w2.link.as_ref().unwrap();
        assert_eq!((l.interface.as_str(), l.subnet, l.prefix), ("ethpi2", Ipv4Addr::new(10, 0, 12, 0), 24));
        assert_eq!((l.manager, l.worker, w2.address), (Ipv4Addr::new(10, 0, 12, 1), Ipv4Addr::new(10, 0, 12, 2), Some(l.worker)));
        assert_eq!(w2.peers, vec!["manager"]);
        assert_eq!(c.address_seen_by(w2, m), Some(l.manager), "a worker reaches the manager at its own link's .1");
        // Derived gadget addresses: locally administered unicast, stable, different per end and name.
        let all: Vec<Mac> = c.hosts.iter().flat_map(|h| macs(h).into_iter().map(|(_, m)| m)).collect();
        assert_eq!(all.len(), 6);
        for m in &all {
            assert_eq!(m.0[0] & 3, 2, "{m} is locally administered unicast");
        }
        assert_eq!(all.iter().collect::<std::collections::BTreeSet<_>>().len(), 6, "{all:?}");
        assert_eq!(parse_str(&cluster_text()).unwrap().host("worker2").unwrap().link.as_ref().unwrap().host_mac, l.host_mac);
    }

    #[test]
    fn cluster_mistakes_are_named_by_line_and_key() {
        let t = cluster_text();
        let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
        let err = |from: &str, to: &str| {
            assert!(t.contains(from), "{from}");
            parse_str(&t.replacen(from, to, 1)).unwrap_err()
        };
        let e = err("link = 2\n", "link = 2\nsubnet = \"10.0.11.128/25\"\n");
        assert_eq!(e.key, "host[2].subnet");
        assert!(e.message.contains("overlaps worker1's link 10.0.11.0/24"), "{e}");
        let e = err("link = 3", "link = 1");
        assert_eq!((e.key.as_str(), e.line), ("host[3].link", Some(line_of("link = 3"))));
        assert!(e.message.contains("already worker1's"), "{e}");
        let e = err("link = 2\n", "");
        assert_eq!(e.key, "host[2].link");
        assert!(e.message.contains("a worker needs `link = N`"), "{e}");
        let e = err("board = \"pi-zero-2-w\"\nlink = 1", "board = \"pi-zero\"\nlink = 1");
        assert_eq!((e.key.as_str(), e.line), ("host[1].board", Some(line_of("board = \"pi-zero-2-w\""))));
        assert!(e.message.contains("armel (ARMv6)") && e.message.contains("arm64 (64-bit)"), "{e}");
        // A worker listing another worker would make that one a receiver of a second sender.
        let e = err("link = 2\n", "link = 2\npeers = [\"manager\", \"worker1\"]\n");
        assert_eq!(e.key, "host[2].peers");
        assert!(e.message.contains("`worker1` is a worker; a worker delivers to its manager only"), "{e}");
        let e = err("board = \"pi-zero-2-w\"\nlink = 1", "board = \"pi3-b\"\nlink = 1");
        assert!(e.message.contains("no USB port that can be a gadget"), "{e}");
        assert!(parse_str(&t.replacen("link = 2\n", "link = 2\nhost_mac = \"02:00:00:00:00:01\"\n", 1)).is_ok(), "a given MAC");
        let dup = t.replacen("link = 1\n", "link = 1\ndev_mac = \"02:00:00:00:00:01\"\n", 1).replacen(
            "link = 3\n",
            "link = 3\nhost_mac = \"02:00:00:00:00:01\"\n",
            1,
        );
        let e = parse_str(&dup).unwrap_err();
        assert_eq!(e.key, "host[3].host_mac");
        assert!(e.message.contains("02:00:00:00:00:01 is already worker1's"), "{e}");
        let e = err("uplink = \"eth0\"", "");
        assert_eq!(e.key, "host[0].uplink");
        let e = err("link = 3\n", "link = 3\nuplink = \"eth1\"\n");
        assert_eq!(e.key, "host[3].uplink");
        assert!(e.message.contains("not for a worker (only for: manager)"), "{e}");
        let e = err("link = 3\n", "link = 3\naddress = \"10.0.13.9\"\n");
        assert_eq!(e.key, "host[3].address");
        let e = err("role = \"worker\"", "role = \"dhcp-client\"\naddress = \"10.0.0.9\"\nmac = \"b8:27:eb:00:00:09\"");
        assert_eq!(e.key, "host[1].link", "link is for workers: {e}");
        let e = err("uplink = \"eth0\"", "uplink = \"eth0\"\npeers = [\"worker1\"]");
        assert_eq!(e.key, "host[0].peers");
        let e = err("role = \"manager\"", "role = \"worker\"");
        assert_eq!(e.key, "host[0].uplink");
        let pair_in_cluster = format!("{t}\n[[host]]\nname = \"rpx\"\nrole = \"dhcp-server\"\naddress = \"10.0.0.1\"\n");
        let e = parse_str(&pair_in_cluster).unwrap_err();
        assert_eq!(e.key, "host[4].role");
        assert!(e.message.contains("a pair") && e.message.contains("a cluster"), "{e}");
    }

    #[test]
    fn a_pair_needs_its_cable() {
        let t = text();
        let e = parse_str(&t.replace("dhcp_range = [\"10.0.0.100\", \"10.0.0.200\"]\n", "")).unwrap_err();
        assert_eq!(e.key, "network.dhcp_range");
        let no_lan = t
            .replace("interface = \"eth0\"\n", "")
            .replace("prefix = 8\n", "")
            .replace("dhcp_range = [\"10.0.0.100\", \"10.0.0.200\"]\n", "");
        let e = parse_str(&no_lan).unwrap_err();
        assert_eq!(e.key, "network.interface");
        assert!(e.message.contains("a pair needs its cable"), "{e}");
    }

    #[test]
    fn named_bases_change_some_keys_of_base_and_hosts_choose_them() {
        let t = cluster_text();
        let c = parse_str(&t).unwrap();
        let zero = &c.bases["zero"];
        assert_eq!((zero.arch, zero.kernel.as_str(), zero.suite.as_str()), (Arch::Armel, "linux-image-rpi", "bookworm"));
        assert_eq!(zero.packages, c.base.packages, "unchanged keys are [base]'s");
        let w3 = c.host("worker3").unwrap();
        assert_eq!((c.base_of(w3).arch, c.for_host(w3).base.arch), (Arch::Armel, Arch::Armel));
        assert_eq!(c.base_of(c.host("worker1").unwrap()).arch, Arch::Arm64);
        let err = |from: &str, to: &str| {
            assert!(t.contains(from), "{from}");
            parse_str(&t.replacen(from, to, 1)).unwrap_err()
        };
        let e = err("base = \"zero\"\nlink", "base = \"zeros\"\nlink");
        assert_eq!(e.key, "host[3].base");
        assert!(e.message.contains("its bases are \"zero\""), "{e}");
        let e = err("kernel = \"linux-image-rpi\"", "kernel = \"Linux Image\"");
        assert_eq!(e.key, "bases.zero.kernel");
        let e = err("suite = \"bookworm\"\narchitecture = \"armel\"", "architecture = \"arm64\"");
        assert_eq!(e.key, "bases.zero");
        assert!(e.message.contains("as [base] does"), "{e}");
        let e = err("[bases.zero]\n", "[bases.zero]\nmirror = \"x\"\n");
        assert!(e.message.contains("unknown field"), "{e}");
        let e = err("base = \"zero\"\nlink", "link");
        assert_eq!(e.key, "host[3].board", "a pi-zero on the arm64 base: {e}");
        assert!(e.message.contains("base = \\\"<name>\\\"") || e.message.contains("[bases.<name>]"), "{e}");
    }
}
