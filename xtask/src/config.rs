//! image.toml: a raw serde struct (`deny_unknown_fields`, spans kept) validated into [`ImageConfig`],
//! one validator per section. Enums (architecture, role, schedule) are read by serde, so a new
//! value is added in one place; names and labels follow the rules shared with the agent
//! ([`pi2pi_agent::rules`]). Every error names the file, the line and the key, and what would be
//! valid.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use pi2pi_agent::rules::{self, Source};
use serde::{Deserialize, Serialize};
use toml::Spanned;

pub use pi2pi_agent::rules::ConfigError;

#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// The package pins for this config's bases: `<config>.lock` beside the config file.
    pub lock_file: PathBuf,
    pub base: Base,
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

/// Debian architecture of a base; serde reads it by its Debian name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Arm64,
    Armhf,
    /// ARMv6 and older (Pi 1, Zero, Zero W): Debian's armel port, soft-float.
    Armel,
}

impl Arch {
    /// The name Debian (and image.toml) use.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
            Arch::Armel => "armel",
        }
    }
    /// Static where the toolchain allows: musl on aarch64, glibc with crt-static on armv7 and
    /// ARMv6 (`arm-unknown-linux-gnueabi` is ARMv6 with armel's soft-float calling convention).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-unknown-linux-musl",
            Arch::Armhf => "armv7-unknown-linux-gnueabihf",
            Arch::Armel => "arm-unknown-linux-gnueabi",
        }
    }
    /// rustup serves no prebuilt standard library for the target: the agent's build compiles
    /// it from the toolchain's own `rust-src` (see agent_build.rs).
    pub fn std_from_source(self) -> bool {
        self == Arch::Armel
    }
    /// Its word size, as Raspberry Pi Imager's device tags name it.
    pub fn bits(self) -> u32 {
        match self {
            Arch::Arm64 => 64,
            Arch::Armhf | Arch::Armel => 32,
        }
    }
    /// QEMU's system emulator for boards of this architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::Arm64 => "qemu-system-aarch64",
            Arch::Armhf | Arch::Armel => "qemu-system-arm",
        }
    }
    pub fn binfmt(self) -> &'static str {
        match self {
            Arch::Arm64 => "qemu-aarch64",
            Arch::Armhf | Arch::Armel => "qemu-arm",
        }
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
    pub interface: String,
    pub prefix: u8,
    pub domain: String,
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
}

impl Network {
    /// The netmask of `prefix` as a number (`/8` → 0xff000000).
    pub fn mask(&self) -> u32 {
        u32::MAX << (32 - self.prefix)
    }
    /// The network `a` is in under this prefix.
    pub fn subnet_of(&self, a: Ipv4Addr) -> u32 {
        u32::from(a) & self.mask()
    }
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
    DhcpServer,
    DhcpClient,
}

impl Role {
    /// What the role does, in words (the Imager list's descriptions).
    pub fn describe(self) -> &'static str {
        match self {
            Role::DhcpServer => "static address, DHCP and DNS for the link",
            Role::DhcpClient => "address from the DHCP server",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub role: Role,
    pub address: Ipv4Addr,
    pub mac: Option<String>,
    pub peers: Vec<String>,
}

impl Host {
    /// The Ethernet address a VM gives this host's NIC: the configured one, else (the
    /// dhcp-server needs none) a fixed locally administered one derived from the name.
    pub fn nic_mac(&self) -> String {
        self.mac.clone().unwrap_or_else(|| {
            let d = crate::cache::sha256_hex(self.name.as_bytes());
            format!("52:54:00:{}:{}:{}", &d[0..2], &d[2..4], &d[4..6])
        })
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
    system: RawSystem,
    network: RawNetwork,
    drive: RawDrive,
    agent: RawAgent,
    image: RawImage,
    host: S<Vec<RawHost>>,
}

#[derive(Deserialize)]
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
    interface: S<String>,
    prefix: S<u8>,
    domain: S<String>,
    dhcp_range: S<Vec<String>>,
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
    address: S<String>,
    mac: Option<S<String>>,
    peers: Option<S<Vec<String>>>,
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

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

pub fn load(path: &Path) -> Result<ImageConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
    parse(path, &text)
}

pub fn parse(file: &Path, text: &str) -> Result<ImageConfig, ConfigError> {
    let cx = Source { file, text };
    let raw: Raw = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
    let network = network(&cx, &raw.network)?;
    let hosts = hosts(&cx, &raw.host, &network)?;
    dhcp_range_in_subnet(&cx, &raw.network.dhcp_range, &network, &hosts)?;
    Ok(ImageConfig {
        lock_file: file.with_extension("lock"),
        base: base(&cx, &raw.base)?,
        system: system(&cx, &raw.system)?,
        network,
        drive: drive(&cx, &raw.drive)?,
        schedule: raw.agent.schedule,
        image: image(&cx, &raw.image)?,
        hosts,
    })
}

fn base(cx: &Source, b: &RawBase) -> Result<Base, ConfigError> {
    cx.check(
        !b.suite.get_ref().is_empty() && b.suite.get_ref().bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-'),
        &b.suite,
        "base.suite",
        || "must be a suite name like \"trixie\"".into(),
    )?;
    cx.check(
        !b.mirrors.get_ref().is_empty()
            && b.mirrors.get_ref().iter().all(|m| {
                (m.starts_with("http://") || m.starts_with("https://") || m.starts_with("file:/")) && !m.contains(char::is_whitespace)
            }),
        &b.mirrors,
        "base.mirrors",
        || "must list at least one http://, https:// or file:/ mirror URL".into(),
    )?;
    let keyring = PathBuf::from(b.keyring.get_ref());
    cx.check(keyring.is_absolute() && keyring.exists(), &b.keyring, "base.keyring", || {
        format!("`{}` must be an existing keyring file (Debian's is /usr/share/keyrings/debian-archive-keyring.gpg)", keyring.display())
    })?;
    cx.check(
        !b.components.get_ref().is_empty() && b.components.get_ref().iter().all(|c| is_pkg(c)),
        &b.components,
        "base.components",
        || "list archive components like \"main\"".into(),
    )?;
    for (v, key) in [(&b.kernel, "base.kernel"), (&b.firmware, "base.firmware")] {
        cx.check(is_pkg(v.get_ref()), v, key, || format!("`{}` is not a Debian package name", v.get_ref()))?;
    }
    if let Some(bad) = b.packages.get_ref().iter().find(|p| !is_pkg(p)) {
        return cx.err(&b.packages, "base.packages", format!("`{bad}` is not a Debian package name"));
    }
    if let Some(bad) = b
        .initramfs_modules
        .get_ref()
        .iter()
        .find(|m| m.is_empty() || !m.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'))
    {
        return cx.err(&b.initramfs_modules, "base.initramfs_modules", format!("`{bad}` is not a kernel module name"));
    }
    for (list, key) in [(&b.path_exclude, "base.path_exclude"), (&b.path_include, "base.path_include")] {
        for p in list {
            cx.check(p.get_ref().starts_with('/') && !p.get_ref().contains(char::is_whitespace), p, key, || {
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
    cx.check(rules::host_name(n.interface.get_ref()).is_ok(), &n.interface, "network.interface", || {
        "must be an interface name like \"eth0\"".into()
    })?;
    let prefix = *n.prefix.get_ref();
    cx.check((1..=30).contains(&prefix), &n.prefix, "network.prefix", || format!("{prefix} must be 1..=30"))?;
    cx.check(rules::host_name(n.domain.get_ref()).is_ok(), &n.domain, "network.domain", || {
        "must be a single DNS label like \"local\"".into()
    })?;
    let range: Vec<Option<Ipv4Addr>> = n.dhcp_range.get_ref().iter().map(|a| a.parse().ok()).collect();
    let dhcp_range = match range.as_slice() {
        [Some(a), Some(b)] if a <= b => (*a, *b),
        _ => {
            return cx.err(
                &n.dhcp_range,
                "network.dhcp_range",
                "must be two IPv4 addresses, first <= last, like [\"10.0.0.100\", \"10.0.0.200\"]",
            )
        }
    };
    Ok(Network { interface: n.interface.get_ref().clone(), prefix, domain: n.domain.get_ref().clone(), dhcp_range })
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

/// The `[[host]]` list: each host alone, then what holds between them (one server, one subnet, peers).
fn hosts(cx: &Source, raw: &S<Vec<RawHost>>, net: &Network) -> Result<Vec<Host>, ConfigError> {
    cx.check(!raw.get_ref().is_empty(), raw, "host", || "define at least one [[host]]".into())?;
    let mut hosts: Vec<Host> = Vec::new();
    for (idx, h) in raw.get_ref().iter().enumerate() {
        let host = one_host(cx, idx, h, &hosts)?;
        hosts.push(host);
    }
    let servers: Vec<usize> = (0..hosts.len()).filter(|&i| hosts[i].role == Role::DhcpServer).collect();
    if servers.len() > 1 {
        return cx.err(&raw.get_ref()[servers[1]].role, &format!("host[{}].role", servers[1]), "only one host can be the dhcp-server");
    }
    if servers.is_empty() && hosts.iter().any(|h| h.role == Role::DhcpClient) {
        return cx.err(raw, "host", "dhcp-client hosts need one host with role = \"dhcp-server\"");
    }
    // Everyone must share the server's subnet, or nobody can reach anybody.
    let prefix = net.prefix;
    let subnet = net.subnet_of(hosts[servers.first().copied().unwrap_or(0)].address);
    for (idx, h) in raw.get_ref().iter().enumerate() {
        let a = hosts[idx].address;
        cx.check(net.subnet_of(a) == subnet, &h.address, &format!("host[{idx}].address"), || {
            format!("{a} is outside the network {}/{prefix}", Ipv4Addr::from(subnet))
        })?;
    }
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    for (idx, h) in raw.get_ref().iter().enumerate() {
        hosts[idx].peers = match &h.peers {
            None => names.iter().filter(|n| **n != hosts[idx].name).cloned().collect(),
            Some(p) => {
                if let Some(bad) = p.get_ref().iter().find(|x| !names.contains(x) || **x == hosts[idx].name) {
                    return cx.err(p, &format!("host[{idx}].peers"), format!("`{bad}` is not another host in this file"));
                }
                p.get_ref().clone()
            }
        };
    }
    Ok(hosts)
}

/// The DHCP range lies in the server's subnet (checked once the hosts are known).
fn dhcp_range_in_subnet(cx: &Source, at: &S<Vec<String>>, net: &Network, hosts: &[Host]) -> Result<(), ConfigError> {
    let Some(server) = hosts.iter().find(|h| h.role == Role::DhcpServer) else { return Ok(()) };
    let prefix = net.prefix;
    let subnet = net.subnet_of(server.address);
    for (a, what) in [(net.dhcp_range.0, "first"), (net.dhcp_range.1, "last")] {
        cx.check(net.subnet_of(a) == subnet, at, "network.dhcp_range", || {
            format!("the {what} address {a} is outside {}/{prefix}", Ipv4Addr::from(subnet))
        })?;
    }
    Ok(())
}

/// One `[[host]]` on its own, given the hosts before it (for duplicates).
fn one_host(cx: &Source, idx: usize, h: &RawHost, before: &[Host]) -> Result<Host, ConfigError> {
    let key = |k: &str| format!("host[{idx}].{k}");
    let name = cx.rule(&h.name, &key("name"), rules::host_name)?;
    cx.check(!before.iter().any(|o| o.name == name), &h.name, &key("name"), || format!("host `{name}` is defined twice"))?;
    let role = *h.role.get_ref();
    let address: Ipv4Addr = match h.address.get_ref().parse() {
        Ok(a) => a,
        Err(_) => return cx.err(&h.address, &key("address"), format!("`{}` is not an IPv4 address", h.address.get_ref())),
    };
    cx.check(!before.iter().any(|o| o.address == address), &h.address, &key("address"), || {
        format!("{address} is already used by another host")
    })?;
    let mac = match (role, &h.mac) {
        (_, Some(m)) => {
            let lower = m.get_ref().to_lowercase();
            let ok = parse_mac(&lower).is_some_and(|b| b[0] & 1 == 0 && b != [0; 6]);
            cx.check(ok, m, &key("mac"), || format!("`{}` must be a unicast MAC like \"b8:27:eb:00:00:01\"", m.get_ref()))?;
            cx.check(!before.iter().any(|o| o.mac.as_deref() == Some(&lower)), m, &key("mac"), || {
                format!("{lower} is already used by another host")
            })?;
            Some(lower)
        }
        (Role::DhcpClient, None) => {
            return cx.err(&h.role, &key("mac"), "a dhcp-client needs `mac` (its Ethernet address) for its reservation")
        }
        (Role::DhcpServer, None) => None,
    };
    Ok(Host { name, role, address, mac, peers: Vec::new() })
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
        assert_eq!(c.server().unwrap().address, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(c.base.arch, Arch::Arm64);
    }

    #[test]
    fn the_previous_suite_validates_with_only_the_suite_changed() {
        let t = text();
        let other = format!("suite = \"{}\"", crate::test::OTHER_SUITE);
        let c = parse_str(&t.replace("suite = \"trixie\"", &other)).unwrap();
        assert_eq!(c.base.suite, crate::test::OTHER_SUITE);
        assert_eq!(parse_str(&t).unwrap().base.suite, "trixie", "the shipped default is Debian 13");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let t = text();
        let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
        let e = parse_str(&t.replace("mac = \"b8:27:eb:00:00:01\"", "mac = \"b8:27:eb:00:00\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("host[1].mac", Some(line_of("mac = "))));
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
        let e = parse_str(&t.replace("mac = \"b8:27:eb:00:00:01\"\n", "")).unwrap_err();
        assert_eq!(e.key, "host[1].mac");
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
}
