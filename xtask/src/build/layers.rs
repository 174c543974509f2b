//! Stage 3: what one host adds to the shared base: overlays/ rendered with image.toml's values,
//! its SSH identity and trust, the agent binary and systemd enablement, as in-memory entries
//! (the rootfs stage writes them into the root tarball; nothing here touches a filesystem image).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use pi2pi_agent::layout;
use serde::Serialize;

use crate::build::config::{Host, ImageConfig, Role, Schedule};
use crate::build::keys::Identity;

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

#[derive(Serialize)]
struct Seen<'a> {
    name: &'a str,
    address: std::net::Ipv4Addr,
}

/// Values the templates see.
#[derive(Serialize)]
struct Ctx<'a> {
    host: &'a Host,
    hosts: &'a [Host],
    peers: Vec<&'a Host>,
    /// Every host with the address this host reaches it at: itself at its own address (a
    /// manager, with one per link, only as 127.0.1.1), the manager at its end of this worker's link.
    known: Vec<Seen<'a>>,
    server: Option<&'a Host>,
    manager: Option<&'a Host>,
    /// This host's workers, if it is a manager.
    workers: Vec<&'a Host>,
    network: &'a crate::build::config::Network,
    /// The pair's netmask (empty in a cluster).
    netmask: String,
    drive: &'a crate::build::config::Drive,
    drive_mount_unit: String,
    system: &'a crate::build::config::System,
    schedule: Schedule,
    arch: &'static str,
    /// `console=` values, in order (see `boards::consoles`).
    consoles: Vec<String>,
    disk_id: String,
    kernel: String,
    initrd: String,
    /// Where the agent is on the card (`pi2pi_agent::layout`).
    agent: AgentLayout,
}

#[derive(Serialize)]
struct AgentLayout {
    binary: &'static str,
    state_dir: &'static str,
}

pub struct Inputs<'a> {
    pub cfg: &'a ImageConfig,
    pub host: &'a Host,
    pub overlays: &'a Path,
    pub identity: &'a Identity,
    /// Every other host with its keys (only the public halves are used).
    pub others: Vec<(&'a Host, Identity)>,
    /// The agent binary for the card's architecture.
    pub agent: &'a [u8],
    pub disk_id: u32,
    /// The user's uid/gid, read from the base's /etc/passwd.
    pub user_ids: (u32, u32),
    pub kernel: String,
    pub initrd: String,
    /// The build's SOURCE_DATE_EPOCH: every file's mtime on the card, /usr's included.
    pub epoch: u64,
}

/// Every host as `host` reaches it (one it has no single address for, only a manager seen by
/// itself, left out).
fn seen_from<'a>(cfg: &'a ImageConfig, host: &Host) -> Vec<Seen<'a>> {
    cfg.hosts.iter().filter_map(|h| Some(Seen { name: &h.name, address: cfg.address_seen_by(host, h)? })).collect()
}

/// For the drive's mount unit (generated from fstab). Found by the soak: the drive pulled while a
/// file was arriving, the receiver still held it open, systemd's umount failed ("target is
/// busy") and the dead mount stayed until reboot, so the drive plugged back was never mounted
/// (and the agent, rightly, would not use it). Detached at once instead: the processes holding
/// it get I/O errors, the mount point is bare at once, and a replug mounts the drive again.
const DRIVE_MOUNT_DROP_IN: &str =
    "# pi2pi: a pulled drive is unmounted even while a file on it is open (umount -l).\n[Mount]\nLazyUnmount=yes\n";

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
        known: seen_from(cfg, i.host),
        server: cfg.server(),
        manager: cfg.manager(),
        workers: if i.host.role == Role::Manager { cfg.hosts.iter().filter(|h| h.role == Role::Worker).collect() } else { Vec::new() },
        network: &cfg.network,
        netmask: cfg.network.lan.as_ref().map(|l| std::net::Ipv4Addr::from(l.mask()).to_string()).unwrap_or_default(),
        drive: &cfg.drive,
        drive_mount_unit: mount_unit(&cfg.drive.mount_point),
        system: &cfg.system,
        schedule: cfg.schedule,
        arch: cfg.base.arch.deb(),
        consoles: crate::build::boards::consoles(cfg.base.arch),
        disk_id: format!("{:08x}", i.disk_id),
        kernel: i.kernel.clone(),
        initrd: i.initrd.clone(),
        agent: AgentLayout { binary: layout::BINARY, state_dir: layout::STATE_DIR },
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

    add_ssh(&mut layer, i, &home)?;
    layer.file(layout::BINARY.trim_start_matches('/'), i.agent.to_vec(), 0o755, root);
    layer.put(layout::STATE_DIR.trim_start_matches('/'), Kind::Dir, 0o755, user);
    layer.file(&format!("etc/systemd/system/{}.d/pi2pi.conf", ctx.drive_mount_unit), DRIVE_MOUNT_DROP_IN, 0o644, root);
    add_units(&mut layer, i.epoch);
    Ok(layer)
}

/// SSH: this host's pinned host key and its user key; whom it trusts (`ssh_trust`).
fn add_ssh(layer: &mut Layer, i: &Inputs, home: &str) -> Result<()> {
    let (root, user) = ((0, 0), i.user_ids);
    let id = i.identity;
    layer.file("etc/ssh/ssh_host_ed25519_key", id.host_key.clone(), 0o600, root);
    layer.file("etc/ssh/ssh_host_ed25519_key.pub", format!("{}\n", id.host_pub), 0o644, root);
    layer.put(&format!("{home}/.ssh"), Kind::Dir, 0o700, user);
    layer.file(&format!("{home}/.ssh/id_ed25519"), id.user_key.clone(), 0o600, user);
    layer.file(&format!("{home}/.ssh/id_ed25519.pub"), format!("{}\n", id.user_pub), 0o644, user);
    let (authorized, known) = ssh_trust(i.cfg, i.host, &i.others)?;
    layer.file(&format!("{home}/.ssh/authorized_keys"), authorized, 0o600, user);
    layer.file("etc/ssh/ssh_known_hosts", known, 0o644, root);
    Ok(())
}

/// Units enabled and masked the way `systemctl` would, without running it, and what the build
/// did for the first boot.
fn add_units(layer: &mut Layer, epoch: u64) {
    let root = (0, 0);
    // Enable units the way `systemctl enable` would, without running it.
    let ours = |unit: &str| format!("/etc/systemd/system/{unit}");
    let mut wants = vec![("local-fs.target", ours("pi2pi-growroot.service"))];
    let has = |path: &str| layer.root.contains_key(path);
    if has("etc/systemd/system/pi2pi-agent.service") {
        wants.push(("multi-user.target", ours("pi2pi-agent.service")));
    }
    if has("etc/systemd/system/pi2pi-dnsmasq.service") {
        wants.push(("multi-user.target", ours("pi2pi-dnsmasq.service")));
    }
    if has("etc/nftables.conf") {
        // Debian's unit, which loads /etc/nftables.conf before the network is up.
        wants.push(("sysinit.target", "/usr/lib/systemd/system/nftables.service".to_string()));
    }
    for (target, unit) in wants {
        let name = unit.rsplit('/').next().expect("a unit path");
        layer.put(&format!("etc/systemd/system/{target}.wants/{name}"), Kind::Symlink(unit.clone()), 0o777, root);
    }
    // Masked the way `systemctl mask` would: timers that can only fail on a Pi with no archive to
    // reach (and would wake it, and write to the SD card, for nothing), and what a headless card
    // has no use for.
    for unit in masked_units() {
        layer.put(&format!("etc/systemd/system/{unit}"), Kind::Symlink("/dev/null".into()), 0o777, root);
    }
    // The build ran what systemd's ConditionNeedsUpdate= units would (ldconfig, the journal's
    // catalog, udev's hwdb: dpkg's triggers, in the base). Saying so spares the first boot those
    // units (9 s under emulation, seconds on a Pi Zero); an upgrade of /usr still re-runs them.
    for dir in ["etc", "var"] {
        layer.put(&format!("{dir}/.updated"), Kind::File(update_done_stamp(epoch).into_bytes()), 0o644, root);
    }
    // systemd 257's ssh generator offers sshd on AF_VSOCK for VMs; a Pi has no vsock, and the
    // generator says "Failed to query local AF_VSOCK CID" on every boot. sshd runs as a service.
    layer.put("etc/systemd/system-generators/systemd-ssh-generator", Kind::Symlink("/dev/null".into()), 0o777, root);
}

/// What a host's sshd lets in (authorized_keys) and which host keys its ssh trusts
/// (ssh_known_hosts, under every name the host is reached by):
/// - every host that delivers to this one may run the receiver, and only that; one with more
///   than one sender (a manager always) takes each one's files into `receiving/<sender>/`;
/// - a manager logs in to its workers (a shell, as the seed's owner did by hand, now with no
///   password and no "type yes"): a worker authorises its manager's key for a login.
fn ssh_trust(cfg: &ImageConfig, me: &Host, others: &[(&Host, Identity)]) -> Result<(String, String)> {
    let mut authorized = String::from("# pi2pi: the hosts that deliver here may only run the receiver.\n");
    let mut known = String::from("# pi2pi: pinned host keys of the hosts this one connects to (no \"type yes\").\n");
    for (other, keys) in others {
        if other.peers.contains(&me.name) {
            let into = cfg.sender_dir(me, other).map(|d| format!(" --into {d}")).unwrap_or_default();
            authorized += &format!("restrict,command=\"{} serve{into}\" {}\n", layout::BINARY, keys.user_pub);
        }
        if me.role == Role::Worker && other.role == Role::Manager {
            authorized += &format!("# {} (the manager) logs in.\n{}\n", other.name, keys.user_pub);
        }
        if me.peers.contains(&other.name) || (me.role == Role::Manager && other.role == Role::Worker) {
            let address = cfg.address_seen_by(me, other).context("a host with no address to reach it at")?;
            known += &format!("{0},{0}.{1},{address} {2}\n", other.name, cfg.network.domain, keys.host_pub);
        }
    }
    Ok((authorized, known))
}

/// Units a headless Pi of this deployment has no use for, masked so that every boot starts fewer
/// processes (each a few seconds of an emulated boot, where one core runs them all): getty-static
/// starts logins on tty2-tty6 where there is no logind to start them on demand (tty1 and the
/// serial console keep theirs); e2scrub_reap removes e2scrub's leftover LVM snapshots, and the
/// cards have no LVM; the kernel's debug, tracing, configuration (configfs: the workers' gadget is
/// the legacy `g_ether`), huge-page, message-queue and FUSE filesystems, mounted for tools no
/// card runs (a developer mounts one by hand); and modules loaded ahead for them or for hardware
/// a Pi has not (DRM for a display stack no card has, EFI's pstore).
pub const HEADLESS_MASKED: &[&str] = &[
    "getty-static.service",
    "e2scrub_reap.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "sys-kernel-config.mount",
    "modprobe@configfs.service",
    "dev-hugepages.mount",
    "dev-mqueue.mount",
    "sys-fs-fuse-connections.mount",
    "modprobe@fuse.service",
    "modprobe@drm.service",
    "modprobe@efi_pstore.service",
];

/// What systemd-update-done writes in /etc/.updated and /var/.updated once /usr's updates are
/// applied: /usr's mtime, which is the build's epoch on our cards.
fn update_done_stamp(epoch: u64) -> String {
    format!(
        "# This file was created by systemd-update-done. Its only\n# purpose is to hold a timestamp of the time this directory\n# was updated. See man:systemd-update-done.service(8).\nTIMESTAMP_NSEC={}\n",
        u128::from(epoch) * 1_000_000_000
    )
}

/// Units masked on every card: the cards are offline, so apt's download and upgrade timers fail.
pub const OFFLINE_MASKED: &[&str] = &["apt-daily.timer", "apt-daily-upgrade.timer"];

/// Every unit masked on every card.
pub fn masked_units() -> impl Iterator<Item = &'static str> {
    OFFLINE_MASKED.iter().chain(HEADLESS_MASKED).copied()
}

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
        out.push(OverlayFile { rel, data: fs_err::read(e.path())?, exec });
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
    use pi2pi_agent::layout::BINARY;

    use super::*;
    use crate::build::config::{self, ImageConfig, Schedule};

    fn shipped(schedule: Schedule) -> ImageConfig {
        ImageConfig { schedule, ..config::shipped() }
    }

    fn cluster() -> ImageConfig {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        config::load(&root.join("examples/cluster.toml")).unwrap()
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
        let others = cfg.hosts.iter().filter(|o| o.name != h.name).map(|o| (o, identity(&o.name))).collect();
        build(&Inputs {
            cfg,
            host: h,
            overlays: &overlays,
            identity: &id,
            others,
            agent: b"AGENT",
            disk_id: 0x1234abcd,
            user_ids: (1000, 1000),
            kernel: "vmlinuz-6.12.0-arm64".into(),
            initrd: "initrd.img-6.12.0-arm64".into(),
            epoch: 1_700_000_000,
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
        // Every name resolves to its address on every host, its own included (the pair test
        // checks `getent hosts rpa.local` on rpa too).
        let hosts = text(&a, "etc/hosts");
        assert!(hosts.contains("10.0.0.1\trpa.local rpa\n") && hosts.contains("10.0.0.49\trpb.local rpb\n"), "{hosts}");
        let dns = text(&a, "etc/pi2pi/dnsmasq.conf");
        // rpb's address is reserved by the identifier its card sends, whatever Pi it is in.
        let id = cfg.host("rpb").unwrap().client_id.clone().unwrap();
        assert!(dns.contains(&format!("\ndhcp-host=id:{id},10.0.0.49,rpb\n")), "{dns}");
        assert_eq!(dns.matches("dhcp-host=").count(), 1, "{dns}");
        assert!(dns.contains("dhcp-range=10.0.0.100,10.0.0.200,255.0.0.0,12h"), "{dns}");
        assert!(enabled(&a, "multi-user.target", "pi2pi-dnsmasq.service"));
        let b = layer_for(&cfg, "rpb");
        assert!(!b.root.contains_key("etc/pi2pi/dnsmasq.conf") && !b.root.contains_key("etc/systemd/system/pi2pi-dnsmasq.service"));
        assert!(!enabled(&b, "multi-user.target", "pi2pi-dnsmasq.service"));
        let dhcpcd = text(&b, "etc/dhcpcd.conf");
        assert!(!dhcpcd.contains("static ip_address"));
        assert!(dhcpcd.contains(&format!("\nclientid {id}\npersistent\n")), "{dhcpcd}");
        assert!(text(&a, "etc/dhcpcd.conf").contains("\nclientid\npersistent\n"));
        // A pinned MAC is honoured beside the identifier.
        let mut pinned = cfg.clone();
        pinned.hosts[1].mac = Some("b8:27:eb:12:34:56".parse().unwrap());
        let a = layer_for(&pinned, "rpa");
        let dns = text(&a, "etc/pi2pi/dnsmasq.conf");
        assert!(dns.contains(&format!("\ndhcp-host=b8:27:eb:12:34:56,id:{id},10.0.0.49,rpb\n")), "{dns}");
    }

    #[test]
    fn the_schedule_picks_the_daemon_or_the_cron_job_never_both() {
        for host in ["rpa", "rpb"] {
            let d = layer_for(&shipped(Schedule::Systemd), host);
            assert!(enabled(&d, "multi-user.target", "pi2pi-agent.service"));
            assert!(text(&d, "etc/systemd/system/pi2pi-agent.service").contains(&format!("ExecStart={BINARY} run")));
            assert!(!d.root.contains_key("etc/cron.d/pi2pi-agent"));
            let c = layer_for(&shipped(Schedule::Cron), host);
            assert!(!enabled(&c, "multi-user.target", "pi2pi-agent.service"));
            assert!(!c.root.contains_key("etc/systemd/system/pi2pi-agent.service"));
            assert!(text(&c, "etc/cron.d/pi2pi-agent").contains(&format!("* * * * * pi {BINARY} sync ")));
        }
    }

    /// A pair with a second dhcp-client: each host then receives from two senders (a pair's
    /// hosts deliver to all the others), so each sender gets its own directory there, fixed by
    /// the receiver's authorized_keys. A two-host pair keeps receiving/ itself (the test above).
    #[test]
    fn a_host_with_two_senders_gives_each_its_own_directory() {
        let shipped = fs_err::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../image.toml")).unwrap();
        let three = format!("{shipped}\n[[host]]\nname = \"rpc\"\nrole = \"dhcp-client\"\naddress = \"10.0.0.50\"\n");
        let cfg = config::parse(Path::new("image.toml"), &three).unwrap();
        for (me, senders) in [("rpa", ["rpb", "rpc"]), ("rpb", ["rpa", "rpc"]), ("rpc", ["rpa", "rpb"])] {
            let auth = text(&layer_for(&cfg, me), "home/pi/.ssh/authorized_keys").to_string();
            for s in senders {
                let line = format!("restrict,command=\"{BINARY} serve --into {s}\" ssh-ed25519 USERPUB{s} pi@{s}");
                assert!(auth.lines().any(|l| l == line), "{me}: {auth}");
            }
            assert!(!auth.contains("serve\""), "{me} lets a sender into receiving/ itself: {auth}");
        }
    }

    #[test]
    fn ssh_trust_is_the_peers_keys_only_and_the_agent_key_runs_the_receiver_only() {
        let l = layer_for(&shipped(Schedule::Systemd), "rpb");
        let auth = text(&l, "home/pi/.ssh/authorized_keys");
        assert!(auth.contains(&format!("restrict,command=\"{BINARY} serve\" ssh-ed25519 USERPUBrpa pi@rpa")), "{auth}");
        assert!(!auth.contains("USERPUBrpb"), "a host does not trust itself");
        let known = text(&l, "etc/ssh/ssh_known_hosts");
        assert!(known.contains("rpa,rpa.local,10.0.0.1 ssh-ed25519 HOSTPUBrpa"), "{known}");
        assert_eq!(l.root["home/pi/.ssh/id_ed25519"].mode, 0o600);
        assert_eq!((l.root["home/pi/.ssh"].uid, l.root["home/pi/.ssh"].mode), (1000, 0o700));
        assert_eq!(l.root["etc/ssh/ssh_host_ed25519_key"].kind, Kind::File(b"HOST-PRIVATE-rpb".to_vec()));
        assert_eq!(l.root[BINARY.trim_start_matches('/')], Entry { kind: Kind::File(b"AGENT".to_vec()), mode: 0o755, uid: 0, gid: 0 });
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
        assert!(text(&l, "etc/systemd/system/media-pi-PI2PI.mount.d/pi2pi.conf").contains("[Mount]\nLazyUnmount=yes"));
        let boot_cfg = std::str::from_utf8(&l.boot["config.txt"]).unwrap();
        assert!(boot_cfg.contains("kernel=vmlinuz-6.12.0-arm64") && boot_cfg.contains("initramfs initrd.img-6.12.0-arm64"), "{boot_cfg}");
        let cmdline = std::str::from_utf8(&l.boot["cmdline.txt"]).unwrap();
        assert!(
            cmdline
                .starts_with("console=tty0 console=ttyAMA0,115200 console=ttyAMA10,115200 console=ttyS1,115200 root=PARTUUID=1234abcd-02 "),
            "{cmdline}"
        );
        // A kernel upgrade on the Pi rewrites cmdline.txt from this: the same consoles, in the same order.
        assert!(text(&l, "etc/default/raspi-firmware").contains("CONSOLES=\"tty0 ttyAMA0,115200 ttyAMA10,115200 ttyS1,115200\""));
        assert_eq!(l.root["etc/localtime"].kind, Kind::Symlink("/usr/share/zoneinfo/America/New_York".into()));
        assert_eq!(l.root["etc/systemd/system/apt-daily.timer"].kind, Kind::Symlink("/dev/null".into()), "offline: no apt timers");
        for unit in ["getty-static.service", "e2scrub_reap.service"] {
            assert_eq!(l.root[&format!("etc/systemd/system/{unit}")].kind, Kind::Symlink("/dev/null".into()), "{unit}");
        }
        // /usr (mtime: the epoch) is no newer than these, so ldconfig & co. skip the first boot.
        for stamp in ["etc/.updated", "var/.updated"] {
            assert!(text(&l, stamp).ends_with("\nTIMESTAMP_NSEC=1700000000000000000\n"), "{stamp}");
        }
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
        // Debian 12's systemd (252, the cluster example's Pi Zero base) names the same job so;
        // without it the Zero's card grew its partition after its filesystem (seen on raspi0).
        assert!(before.contains(&"systemd-growfs@-.service"), "pi2pi-growroot is not ordered before systemd-growfs@-: {unit}");
        assert!(unit.contains("DefaultDependencies=no"), "with default dependencies it could not run before local-fs.target");
        assert!(enabled(&l, "local-fs.target", "pi2pi-growroot.service"));
    }

    #[test]
    fn mount_unit_names_follow_systemd_escaping() {
        assert_eq!(mount_unit("/media/pi/PI2PI"), "media-pi-PI2PI.mount");
        assert_eq!(mount_unit("/media/pi/my-drive"), "media-pi-my\\x2ddrive.mount");
    }

    /// The manager: a link per worker named by its gadget's host-side MAC, static .1 on each,
    /// forwarding, NAT out of the uplink only, DNS and time for the links, each worker's files in
    /// their own directory, and a login on every worker with pinned host keys.
    #[test]
    fn the_manager_names_routes_and_nats_its_workers_links() {
        let cfg = cluster();
        let m = layer_for(&cfg, "manager");
        let w1 = cfg.host("worker1").unwrap().link.clone().unwrap();
        let rules = text(&m, "etc/udev/rules.d/70-pi2pi-links.rules");
        assert!(rules.contains(&format!("ATTR{{address}}==\"{}\", NAME=\"ethpi1\"", w1.host_mac)), "{rules}");
        assert_eq!(rules.matches("NAME=\"ethpi").count(), 3, "{rules}");
        let dhcpcd = text(&m, "etc/dhcpcd.conf");
        assert!(dhcpcd.contains("interface ethpi3\nstatic ip_address=10.0.13.1/24\nnolink"), "{dhcpcd}");
        assert!(!dhcpcd.contains("interface eth0"), "the uplink is left to DHCP: {dhcpcd}");
        assert_eq!(text(&m, "etc/sysctl.d/90-pi2pi-router.conf").lines().last(), Some("net.ipv4.ip_forward = 1"));
        let nft = text(&m, "etc/nftables.conf");
        assert!(nft.contains("define links = { 10.0.11.0/24, 10.0.12.0/24, 10.0.13.0/24 }"), "{nft}");
        assert!(nft.contains("ip saddr $links oifname \"eth0\" masquerade"), "{nft}");
        assert!(enabled(&m, "sysinit.target", "nftables.service"));
        let dns = text(&m, "etc/pi2pi/dnsmasq.conf");
        assert!(dns.contains("interface=ethpi2\n") && !dns.contains("dhcp-range"), "{dns}");
        assert!(enabled(&m, "multi-user.target", "pi2pi-dnsmasq.service"));
        let chrony = text(&m, "etc/chrony/chrony.conf");
        assert!(chrony.contains("local stratum 10") && chrony.contains("allow 10.0.12.0/24"), "{chrony}");
        let hosts = text(&m, "etc/hosts");
        assert!(hosts.contains("10.0.12.2\tworker2.local worker2"), "{hosts}");
        assert_eq!(hosts.matches("manager.local").count(), 1, "the manager is only 127.0.1.1 to itself: {hosts}");
        let auth = text(&m, "home/pi/.ssh/authorized_keys");
        assert!(auth.contains(&format!("restrict,command=\"{BINARY} serve --into worker2\" ssh-ed25519 USERPUBworker2")), "{auth}");
        let known = text(&m, "etc/ssh/ssh_known_hosts");
        assert!(known.contains("worker3,worker3.local,10.0.13.2 ssh-ed25519 HOSTPUBworker3"), "{known}");
        // It collects: no peers, so no agent daemon; the receiver runs from sshd.
        assert!(!enabled(&m, "multi-user.target", "pi2pi-agent.service"));
        assert!(!m.boot.get("config.txt").is_some_and(|c| String::from_utf8_lossy(c).contains("gpu_mem")));
    }

    /// A worker: its gadget with the configured addresses, usb0 static with the manager as
    /// gateway, DNS and clock, its agent delivering to the manager, the manager let in.
    #[test]
    fn a_worker_is_a_gadget_with_the_manager_as_gateway_clock_and_peer() {
        let cfg = cluster();
        let w = layer_for(&cfg, "worker2");
        let l = cfg.host("worker2").unwrap().link.clone().unwrap();
        assert_eq!(text(&w, "etc/modules-load.d/pi2pi-gadget.conf").lines().last(), Some("g_ether"));
        let opts = text(&w, "etc/modprobe.d/pi2pi-gadget.conf");
        assert!(opts.contains(&format!("options g_ether host_addr={} dev_addr={}", l.host_mac, l.dev_mac)), "{opts}");
        let rules = text(&w, "etc/udev/rules.d/70-pi2pi-links.rules");
        assert!(rules.contains(&format!("ATTR{{address}}==\"{}\", NAME=\"usb0\"", l.dev_mac)), "{rules}");
        let dhcpcd = text(&w, "etc/dhcpcd.conf");
        for want in
            ["allowinterfaces usb0", "static ip_address=10.0.12.2/24", "static routers=10.0.12.1", "static domain_name_servers=10.0.12.1"]
        {
            assert!(dhcpcd.contains(want), "{want}: {dhcpcd}");
        }
        let chrony = text(&w, "etc/chrony/chrony.conf");
        assert!(chrony.contains("server 10.0.12.1 iburst") && chrony.contains("makestep 1 -1") && !chrony.contains("pool"), "{chrony}");
        let hosts = text(&w, "etc/hosts");
        assert!(hosts.contains("10.0.12.1\tmanager.local manager") && hosts.contains("10.0.11.2\tworker1.local"), "{hosts}");
        let agent = pi2pi_agent::config::Config::parse(Path::new("agent.toml"), text(&w, "etc/pi2pi/agent.toml")).unwrap();
        assert_eq!(agent.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["manager"]);
        assert!(enabled(&w, "multi-user.target", "pi2pi-agent.service"));
        let auth = text(&w, "home/pi/.ssh/authorized_keys");
        assert!(auth.lines().any(|a| a == "ssh-ed25519 USERPUBmanager pi@manager"), "the manager logs in: {auth}");
        assert!(!auth.contains("worker"), "no other worker does: {auth}");
        let known = text(&w, "etc/ssh/ssh_known_hosts");
        assert!(known.contains("manager,manager.local,10.0.12.1 ssh-ed25519 HOSTPUBmanager") && !known.contains("worker"), "{known}");
        for absent in ["etc/nftables.conf", "etc/sysctl.d/90-pi2pi-router.conf", "etc/pi2pi/dnsmasq.conf"] {
            assert!(!w.root.contains_key(absent), "{absent}");
        }
        assert!(String::from_utf8_lossy(&w.boot["config.txt"]).contains("\ngpu_mem=16\n"));
    }
}
