//! Stage 3: what one host adds to the shared base: overlays/ rendered with image.toml's values,
//! its SSH identity and trust, the agent binary and systemd enablement, as in-memory entries
//! (the rootfs stage writes them into the root tarball; nothing here touches a filesystem image).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{Host, ImageConfig, Role, Schedule};
use crate::keys::Identity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Root-filesystem entries by path relative to `/` (no leading slash), plus boot-partition files.
#[derive(Default)]
pub struct Layer {
    pub root: BTreeMap<String, Entry>,
    pub boot: BTreeMap<String, Vec<u8>>,
}

impl Layer {
    fn put(&mut self, path: &str, kind: Kind, mode: u32, owner: (u32, u32)) {
        // Parents first, so the tarball never names a file before its directory.
        for (i, _) in path.match_indices('/') {
            self.root.entry(path[..i].to_string()).or_insert(Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0 });
        }
        self.root.insert(path.to_string(), Entry { kind, mode, uid: owner.0, gid: owner.1 });
    }
    fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32, owner: (u32, u32)) {
        self.put(path, Kind::File(data.into()), mode, owner);
    }
}

/// Values the templates see.
#[derive(Serialize)]
struct Ctx<'a> {
    host: &'a Host,
    hosts: &'a [Host],
    peers: Vec<&'a Host>,
    server: Option<&'a Host>,
    network: &'a crate::config::Network,
    netmask: String,
    drive: &'a crate::config::Drive,
    drive_mount_unit: String,
    system: &'a crate::config::System,
    schedule: Schedule,
    arch: &'static str,
    /// `console=` values, in order (see `boards::consoles`).
    consoles: Vec<String>,
    disk_id: String,
    kernel: String,
    initrd: String,
}

pub struct Inputs<'a> {
    pub cfg: &'a ImageConfig,
    pub host: &'a Host,
    pub overlays: &'a Path,
    pub identity: &'a Identity,
    /// Each peer with its keys (only the public halves are used).
    pub peers: Vec<(&'a Host, Identity)>,
    /// The agent binary for the card's architecture.
    pub agent: &'a [u8],
    pub disk_id: u32,
    /// The user's uid/gid, read from the base's /etc/passwd.
    pub user_ids: (u32, u32),
    pub kernel: String,
    pub initrd: String,
}

/// systemd's name for a mount unit: /media/pi/PI2PI → media-pi-PI2PI.mount.
fn mount_unit(path: &str) -> String {
    let mut s = String::new();
    for (i, part) in path.trim_matches('/').split('/').enumerate() {
        if i > 0 {
            s.push('-');
        }
        for c in part.chars() {
            if c.is_ascii_alphanumeric() || c == '_' || (c == '.' && !s.is_empty()) {
                s.push(c);
            } else {
                s.push_str(&format!("\\x{:02x}", c as u32));
            }
        }
    }
    s + ".mount"
}

pub fn build(i: &Inputs) -> Result<Layer> {
    let cfg = i.cfg;
    let ctx = Ctx {
        host: i.host,
        hosts: &cfg.hosts,
        peers: i.host.peers.iter().filter_map(|p| cfg.hosts.iter().find(|h| &h.name == p)).collect(),
        server: cfg.server(),
        network: &cfg.network,
        netmask: std::net::Ipv4Addr::from(cfg.network.mask()).to_string(),
        drive: &cfg.drive,
        drive_mount_unit: mount_unit(&cfg.drive.mount_point),
        system: &cfg.system,
        schedule: cfg.schedule,
        arch: cfg.base.arch.deb(),
        consoles: crate::boards::consoles(cfg.base.arch),
        disk_id: format!("{:08x}", i.disk_id),
        kernel: i.kernel.clone(),
        initrd: i.initrd.clone(),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);

    let root = (0, 0);
    let user = i.user_ids;
    let home = format!("home/{}", cfg.system.user);
    let mut layer = Layer::default();

    for dir in [i.overlays.join("common"), i.overlays.join(&i.host.name)] {
        for OverlayFile { rel, data, exec } in read_tree(&dir)? {
            let Some((path, data)) = render(&env, &ctx, &rel, data)? else { continue };
            let mode = if path.starts_with("etc/sudoers.d/") {
                0o440
            } else if exec {
                0o755
            } else {
                0o644
            };
            layer.file(&path, data, mode, root);
        }
    }
    for OverlayFile { rel, data, .. } in read_tree(&i.overlays.join("boot"))? {
        if let Some((path, data)) = render(&env, &ctx, &rel, data)? {
            layer.boot.insert(path, data);
        }
    }

    // The agent will refuse a bad config at boot; refuse it now instead, with the agent's parser.
    if let Some(Entry { kind: Kind::File(text), .. }) = layer.root.get("etc/pi2pi/agent.toml") {
        let text = String::from_utf8_lossy(text);
        pi2pi_agent::config::Config::parse(Path::new("overlays/common/etc/pi2pi/agent.toml.j2 (rendered)"), &text)
            .with_context(|| format!("the agent config rendered for {}", i.host.name))?;
    }

    // Time zone (a symlink, which git-kept overlays would not make portable).
    layer.put("etc/localtime", Kind::Symlink(format!("/usr/share/zoneinfo/{}", cfg.system.timezone)), 0o777, root);

    // SSH: this host's pinned host key; its user key; peers' user keys authorised for the
    // receiver only; peers' host keys known under every name they are reached by.
    let id = i.identity;
    layer.file("etc/ssh/ssh_host_ed25519_key", id.host_key.clone(), 0o600, root);
    layer.file("etc/ssh/ssh_host_ed25519_key.pub", format!("{}\n", id.host_pub), 0o644, root);
    layer.put(&format!("{home}/.ssh"), Kind::Dir, 0o700, user);
    layer.file(&format!("{home}/.ssh/id_ed25519"), id.user_key.clone(), 0o600, user);
    layer.file(&format!("{home}/.ssh/id_ed25519.pub"), format!("{}\n", id.user_pub), 0o644, user);
    let mut authorized = String::from("# pi2pi: peers' agents may only run the receiver.\n");
    let mut known = String::from("# pi2pi: peers' pinned host keys (no \"type yes\").\n");
    for (peer, keys) in &i.peers {
        authorized += &format!("restrict,command=\"/usr/local/bin/pi2pi-agent serve\" {}\n", keys.user_pub);
        let names = format!("{0},{0}.{1},{2}", peer.name, cfg.network.domain, peer.address);
        known += &format!("{names} {}\n", keys.host_pub);
    }
    layer.file(&format!("{home}/.ssh/authorized_keys"), authorized, 0o600, user);
    layer.file("etc/ssh/ssh_known_hosts", known, 0o644, root);

    layer.file("usr/local/bin/pi2pi-agent", i.agent.to_vec(), 0o755, root);
    layer.put("var/lib/pi2pi", Kind::Dir, 0o755, user);

    // Enable units the way `systemctl enable` would, without running it.
    let mut wants = vec![("local-fs.target", "pi2pi-growroot.service")];
    if cfg.schedule == Schedule::Systemd {
        wants.push(("multi-user.target", "pi2pi-agent.service"));
    }
    if i.host.role == Role::DhcpServer {
        wants.push(("multi-user.target", "pi2pi-dnsmasq.service"));
    }
    for (target, unit) in wants {
        layer.put(&format!("etc/systemd/system/{target}.wants/{unit}"), Kind::Symlink(format!("/etc/systemd/system/{unit}")), 0o777, root);
    }
    // Masked the way `systemctl mask` would: timers that can only fail on a Pi with no archive to
    // reach (and would wake it, and write to the SD card, for nothing).
    for unit in OFFLINE_MASKED {
        layer.put(&format!("etc/systemd/system/{unit}"), Kind::Symlink("/dev/null".into()), 0o777, root);
    }
    // systemd 257's ssh generator offers sshd on AF_VSOCK for VMs; a Pi has no vsock, and the
    // generator says "Failed to query local AF_VSOCK CID" on every boot. sshd runs as a service.
    layer.put("etc/systemd/system-generators/systemd-ssh-generator", Kind::Symlink("/dev/null".into()), 0o777, root);
    Ok(layer)
}

/// Units masked on every card: the cards are offline, so apt's download and upgrade timers fail.
pub const OFFLINE_MASKED: &[&str] = &["apt-daily.timer", "apt-daily-upgrade.timer"];

/// One file of an overlay directory.
struct OverlayFile {
    /// Path below the overlay directory.
    rel: String,
    data: Vec<u8>,
    /// Executable in git: installed 0755.
    exec: bool,
}

/// Files below `dir`, sorted by path; a missing dir is empty.
fn read_tree(dir: &Path) -> Result<Vec<OverlayFile>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in walkdir::WalkDir::new(dir).sort_by_file_name() {
        let e = e?;
        if !e.file_type().is_file() {
            continue;
        }
        let rel = e.path().strip_prefix(dir)?.to_str().context("overlay path is not UTF-8")?.to_string();
        let exec = e.metadata()?.permissions().mode() & 0o111 != 0;
        out.push(OverlayFile { rel, data: std::fs::read(e.path())?, exec });
    }
    Ok(out)
}

/// Renders `.j2` templates (None if the result is blank); other files pass through.
fn render(env: &minijinja::Environment, ctx: &Ctx, rel: &str, data: Vec<u8>) -> Result<Option<(String, Vec<u8>)>> {
    let Some(path) = rel.strip_suffix(".j2") else { return Ok(Some((rel.to_string(), data))) };
    let src = String::from_utf8(data).with_context(|| format!("overlays/{rel} is not UTF-8"))?;
    let out = env.render_str(&src, ctx).with_context(|| format!("rendering overlays/{rel}"))?;
    if out.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some((path.to_string(), out.into_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{self, ImageConfig, Schedule};

    fn shipped(schedule: Schedule) -> ImageConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut cfg = config::load(&root.join("image.toml")).unwrap();
        cfg.schedule = schedule;
        cfg
    }

    fn identity(name: &str) -> Identity {
        Identity {
            host_key: format!("HOST-PRIVATE-{name}").into_bytes(),
            host_pub: format!("ssh-ed25519 HOSTPUB{name} root@{name}"),
            user_key: format!("USER-PRIVATE-{name}").into_bytes(),
            user_pub: format!("ssh-ed25519 USERPUB{name} pi@{name}"),
        }
    }

    /// The layer for `host` as the image stage would build it, with stand-in keys and agent.
    fn layer_for(cfg: &ImageConfig, host: &str) -> Layer {
        let h = cfg.host(host).unwrap();
        let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays");
        let id = identity(host);
        let peers = h.peers.iter().map(|p| (cfg.host(p).unwrap(), identity(p))).collect();
        build(&Inputs {
            cfg,
            host: h,
            overlays: &overlays,
            identity: &id,
            peers,
            agent: b"AGENT",
            disk_id: 0x1234abcd,
            user_ids: (1000, 1000),
            kernel: "vmlinuz-6.12.0-arm64".into(),
            initrd: "initrd.img-6.12.0-arm64".into(),
        })
        .unwrap()
    }

    fn text<'a>(l: &'a Layer, path: &str) -> &'a str {
        match l.root.get(path).map(|e| &e.kind) {
            Some(Kind::File(b)) => std::str::from_utf8(b).unwrap(),
            other => panic!("{path}: {other:?}"),
        }
    }

    fn enabled(l: &Layer, target: &str, unit: &str) -> bool {
        l.root.contains_key(&format!("etc/systemd/system/{target}.wants/{unit}"))
    }

    #[test]
    fn the_dhcp_server_gets_a_static_address_and_dnsmasq_with_the_clients_reservation() {
        let cfg = shipped(Schedule::Systemd);
        let a = layer_for(&cfg, "rpa");
        assert!(text(&a, "etc/dhcpcd.conf").contains("static ip_address=10.0.0.1/8"));
        let dns = text(&a, "etc/pi2pi/dnsmasq.conf");
        assert!(dns.contains("dhcp-host=b8:27:eb:00:00:01,10.0.0.49,rpb"), "{dns}");
        assert!(dns.contains("dhcp-range=10.0.0.100,10.0.0.200,255.0.0.0,12h"), "{dns}");
        assert!(enabled(&a, "multi-user.target", "pi2pi-dnsmasq.service"));
        let b = layer_for(&cfg, "rpb");
        assert!(!b.root.contains_key("etc/pi2pi/dnsmasq.conf") && !b.root.contains_key("etc/systemd/system/pi2pi-dnsmasq.service"));
        assert!(!enabled(&b, "multi-user.target", "pi2pi-dnsmasq.service"));
        assert!(!text(&b, "etc/dhcpcd.conf").contains("static ip_address"));
    }

    #[test]
    fn the_schedule_picks_the_daemon_or_the_cron_job_never_both() {
        for host in ["rpa", "rpb"] {
            let d = layer_for(&shipped(Schedule::Systemd), host);
            assert!(enabled(&d, "multi-user.target", "pi2pi-agent.service"));
            assert!(text(&d, "etc/systemd/system/pi2pi-agent.service").contains("ExecStart=/usr/local/bin/pi2pi-agent run"));
            assert!(!d.root.contains_key("etc/cron.d/pi2pi-agent"));
            let c = layer_for(&shipped(Schedule::Cron), host);
            assert!(!enabled(&c, "multi-user.target", "pi2pi-agent.service"));
            assert!(!c.root.contains_key("etc/systemd/system/pi2pi-agent.service"));
            assert!(text(&c, "etc/cron.d/pi2pi-agent").contains("* * * * * pi /usr/local/bin/pi2pi-agent sync "));
        }
    }

    #[test]
    fn ssh_trust_is_the_peers_keys_only_and_the_agent_key_runs_the_receiver_only() {
        let l = layer_for(&shipped(Schedule::Systemd), "rpb");
        let auth = text(&l, "home/pi/.ssh/authorized_keys");
        assert!(auth.contains("restrict,command=\"/usr/local/bin/pi2pi-agent serve\" ssh-ed25519 USERPUBrpa pi@rpa"), "{auth}");
        assert!(!auth.contains("USERPUBrpb"), "a host does not trust itself");
        let known = text(&l, "etc/ssh/ssh_known_hosts");
        assert!(known.contains("rpa,rpa.local,10.0.0.1 ssh-ed25519 HOSTPUBrpa"), "{known}");
        assert_eq!(l.root["home/pi/.ssh/id_ed25519"].mode, 0o600);
        assert_eq!((l.root["home/pi/.ssh"].uid, l.root["home/pi/.ssh"].mode), (1000, 0o700));
        assert_eq!(l.root["etc/ssh/ssh_host_ed25519_key"].kind, Kind::File(b"HOST-PRIVATE-rpb".to_vec()));
        assert_eq!(l.root["usr/local/bin/pi2pi-agent"], Entry { kind: Kind::File(b"AGENT".to_vec()), mode: 0o755, uid: 0, gid: 0 });
    }

    #[test]
    fn agent_config_drive_and_boot_files_follow_the_config() {
        let cfg = shipped(Schedule::Systemd);
        let l = layer_for(&cfg, "rpa");
        let agent = pi2pi_agent::config::Config::parse(Path::new("agent.toml"), text(&l, "etc/pi2pi/agent.toml")).unwrap();
        assert_eq!((agent.node.as_str(), agent.peers.len(), agent.peers[0].name.as_str()), ("rpa", 1, "rpb"));
        assert_eq!(agent.drive.label, cfg.drive.label);
        assert!(text(&l, "etc/fstab").contains("LABEL=PI2PI\t/media/pi/PI2PI\tvfat\tnoauto,nofail"));
        assert!(text(&l, "etc/udev/rules.d/90-pi2pi-drive.rules").contains("media-pi-PI2PI.mount"));
        let boot_cfg = std::str::from_utf8(&l.boot["config.txt"]).unwrap();
        assert!(boot_cfg.contains("kernel=vmlinuz-6.12.0-arm64") && boot_cfg.contains("initramfs initrd.img-6.12.0-arm64"), "{boot_cfg}");
        let cmdline = std::str::from_utf8(&l.boot["cmdline.txt"]).unwrap();
        assert!(cmdline.starts_with("console=tty0 console=ttyAMA0,115200 console=ttyS1,115200 root=PARTUUID=1234abcd-02 "), "{cmdline}");
        // A kernel upgrade on the Pi rewrites cmdline.txt from this: the same consoles, in the same order.
        assert!(text(&l, "etc/default/raspi-firmware").contains("CONSOLES=\"tty0 ttyAMA0,115200 ttyS1,115200\""));
        assert_eq!(l.root["etc/localtime"].kind, Kind::Symlink("/usr/share/zoneinfo/America/New_York".into()));
        assert_eq!(l.root["etc/systemd/system/apt-daily.timer"].kind, Kind::Symlink("/dev/null".into()), "offline: no apt timers");
    }

    /// systemd-growfs-root (from `x-systemd.growfs` on /) resizes ext4 to its partition once; if it
    /// runs before pi2pi-growroot has grown the partition it finds nothing to do, and the card
    /// stays small until a second boot (seen on the first boot of a card on `raspi3b`: "resizing
    /// filesystem from 177152 to 177152 blocks", then "Starting pi2pi-growroot").
    #[test]
    fn the_partition_grows_before_the_filesystem_in_the_same_boot() {
        let l = layer_for(&shipped(Schedule::Systemd), "rpa");
        let root_line = text(&l, "etc/fstab").lines().find(|f| f.split_whitespace().nth(1) == Some("/")).map(str::to_string);
        assert!(root_line.as_deref().is_some_and(|f| f.contains("x-systemd.growfs")), "fstab: {root_line:?}");
        let unit = text(&l, "etc/systemd/system/pi2pi-growroot.service");
        let before: Vec<&str> = unit.lines().filter_map(|u| u.strip_prefix("Before=")).flat_map(str::split_whitespace).collect();
        assert!(before.contains(&"systemd-growfs-root.service"), "pi2pi-growroot is not ordered before systemd-growfs-root: {unit}");
        assert!(unit.contains("DefaultDependencies=no"), "with default dependencies it could not run before local-fs.target");
        assert!(enabled(&l, "local-fs.target", "pi2pi-growroot.service"));
    }

    #[test]
    fn mount_unit_names_follow_systemd_escaping() {
        assert_eq!(mount_unit("/media/pi/PI2PI"), "media-pi-PI2PI.mount");
        assert_eq!(mount_unit("/media/pi/my-drive"), "media-pi-my\\x2ddrive.mount");
    }
}
