//! image.toml validated into [`ImageConfig`], one validator per section; every error names the
//! file, the line and the key, and what would be valid.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use pi2pi_agent::rules::{self, Source};

use super::raw::*;
use super::*;
use crate::build::arch::Arch;
use crate::build::mac::Mac;

/// Every Ethernet address a host's config gives it, by key.
pub(super) fn macs(h: &Host) -> Vec<(&'static str, Mac)> {
    let mut v = Vec::new();
    if let Some(m) = h.mac {
        v.push(("mac", m));
    }
    if let Some(l) = &h.link {
        v.extend([("host_mac", l.host_mac), ("dev_mac", l.dev_mac)]);
    }
    v
}

pub(super) fn is_pkg(s: &str) -> bool {
    s.len() >= 2
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+.-".contains(&b))
}

/// A suite's name as the archive has it (`trixie`, `trixie-backports`).
pub(super) fn is_suite(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// A user name as useradd takes it (what the base's hook passes it to).
pub(super) fn user_name(s: &str) -> Result<(), String> {
    rules::host_name(s).map_err(|_| format!("`{s}` must be a lower-case user name (letters, digits, '-')"))?;
    if s == "root" {
        return Err("must not be root: the cards log in as an ordinary user with sudo".into());
    }
    Ok(())
}

/// A unicast Ethernet address.
pub(super) fn mac(cx: &Source, m: &S<String>, key: &str) -> Result<Mac, ConfigError> {
    m.get_ref().parse().or_else(|e| cx.err(m, key, e))
}

/// A dhcp-client's DHCP client identifier: type 0 (not a hardware address, RFC 2132 9.14) and 15
/// bytes derived from its name, so a card sends the same one in any Pi and no two hosts share one.
/// Hex on both sides: dhcpcd sends exactly these bytes, and dnsmasq's `id:` matches them (in text
/// form dnsmasq would drop the type byte that dhcpcd adds). 16 bytes, within dhcpcd's 48.
pub(super) fn dhcp_client_id(name: &str) -> String {
    let d = crate::build::cache::sha256_hex(format!("pi2pi dhcp-client {name}").as_bytes());
    std::iter::once("00").chain((0..15).map(|i| &d[2 * i..2 * i + 2])).collect::<Vec<_>>().join(":")
}

/// The board `at` names, which must be one the base's architecture boots.
pub(super) fn board(cx: &Source, at: &S<String>, key: &str, arch: Arch) -> Result<&'static crate::build::boards::Board, ConfigError> {
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
pub(super) fn link(cx: &Source, idx: usize, h: &RawHost, name: &str) -> Result<Link, ConfigError> {
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
    let text = fs_err::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
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
        path: file.to_path_buf(),
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

pub(super) fn base(cx: &Source, at: &str, b: &RawBase) -> Result<Base, ConfigError> {
    let key = |k: &str| format!("{at}.{k}");
    cx.check(is_suite(b.suite.get_ref()), &b.suite, &key("suite"), || "must be a suite name like \"trixie\"".into())?;
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
    let (kernel, kernel_suite) = b.kernel.get_ref().split_once('/').unwrap_or((b.kernel.get_ref(), b.suite.get_ref()));
    cx.check(is_pkg(kernel) && is_suite(kernel_suite), &b.kernel, &key("kernel"), || {
        format!(
            "`{}` is not a Debian package name, or one from another suite like \"linux-image-arm64/trixie-backports\"",
            b.kernel.get_ref()
        )
    })?;
    for (value, k) in [(&b.firmware, "firmware"), (&b.bootloader, "bootloader")] {
        cx.check(is_pkg(value.get_ref()), value, &key(k), || format!("`{}` is not a Debian package name", value.get_ref()))?;
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
        bootloader: b.bootloader.get_ref().clone(),
        packages: b.packages.get_ref().clone(),
        initramfs_modules: b.initramfs_modules.get_ref().clone(),
        path_exclude: b.path_exclude.iter().map(|p| p.get_ref().clone()).collect(),
        path_include: b.path_include.iter().map(|p| p.get_ref().clone()).collect(),
    })
}

/// `[bases.<name>]`, each `[base]` with its own keys, validated like it; no two bases may pin the
/// same suite and architecture (the lock keeps one section per pair).
pub(super) fn named_bases(cx: &Source, raw: &Raw, default: &Base) -> Result<BTreeMap<String, Base>, ConfigError> {
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

pub(super) fn system(cx: &Source, s: &RawSystem) -> Result<System, ConfigError> {
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

pub(super) fn network(cx: &Source, n: &RawNetwork) -> Result<Network, ConfigError> {
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

pub(super) fn lan(cx: &Source, interface: &S<String>, prefix: &S<u8>, range: &S<Vec<String>>) -> Result<Lan, ConfigError> {
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

pub(super) fn drive(cx: &Source, d: &RawDrive) -> Result<Drive, ConfigError> {
    let label = cx.rule(&d.label, "drive.label", rules::fat_label)?;
    let m = d.mount_point.get_ref();
    cx.check(m.starts_with('/') && m != "/" && !m.contains(char::is_whitespace), &d.mount_point, "drive.mount_point", || {
        "must be an absolute path without spaces, like \"/media/pi/PI2PI\"".into()
    })?;
    let update = match &d.update {
        None => "update".to_string(),
        Some(u) => {
            let v = u.get_ref();
            let relative = !v.is_empty() && !v.starts_with('/') && v.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
            let plain = !v.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\');
            cx.check(relative && plain && v != "sending" && v != "receiving", u, "drive.update", || {
                format!("`{v}` must be a directory inside the drive, like \"update\" (relative, no '..', not sending or receiving)")
            })?;
            v.clone()
        }
    };
    Ok(Drive { label, mount_point: m.clone(), update })
}

pub(super) fn image(cx: &Source, i: &RawImage) -> Result<ImageParams, ConfigError> {
    cx.check((64..=2048).contains(i.boot_mib.get_ref()), &i.boot_mib, "image.boot_mib", || "must be 64..=2048".into())?;
    cx.check(*i.root_headroom_mib.get_ref() <= 8192, &i.root_headroom_mib, "image.root_headroom_mib", || "must be at most 8192".into())?;
    cx.check((256..=16384).contains(i.slot_mib.get_ref()), &i.slot_mib, "image.slot_mib", || "must be 256..=16384".into())?;
    cx.check((16..=8192).contains(i.data_mib.get_ref()), &i.data_mib, "image.data_mib", || "must be 16..=8192".into())?;
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
        slot_mib: *i.slot_mib.get_ref(),
        data_mib: *i.data_mib.get_ref(),
        max_bytes: *i.max_bytes.get_ref(),
        download_url: i.download_url.as_ref().map(|u| u.get_ref().clone()).unwrap_or_default(),
    })
}

/// The `[[host]]` list: each host alone, then what holds between them: one kind of deployment,
/// its one server or manager, addresses and links that do not collide, peers.
pub(super) fn hosts(
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
pub(super) fn one_hub(cx: &Source, raw: &S<Vec<RawHost>>, hosts: &[Host], hub: Role, spoke: Role) -> Result<(), ConfigError> {
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
pub(super) fn pair_on_one_subnet(
    cx: &Source,
    raw: &S<Vec<RawHost>>,
    raw_net: &RawNetwork,
    net: &Network,
    hosts: &[Host],
) -> Result<(), ConfigError> {
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
pub(super) fn links_apart(cx: &Source, raw: &S<Vec<RawHost>>, hosts: &[Host]) -> Result<(), ConfigError> {
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
pub(super) fn one_host(
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
    let mut host =
        Host { name, role, address: None, mac: None, client_id: None, peers: Vec::new(), base: base_name, board, uplink: None, link: None };
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
