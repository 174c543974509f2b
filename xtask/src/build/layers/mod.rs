//! Stage 3: what one host adds to the shared base: overlays/ rendered with image.toml's values,
//! its SSH identity and trust, the agent binary and systemd enablement, as in-memory entries
//! (the rootfs stage writes them into the root tarball; nothing here touches a filesystem image).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use pi2pi_agent::{bootslot, layout};
use serde::Serialize;

use crate::build::config::{Host, ImageConfig, Role, Schedule};
use crate::build::keys::Identity;
use crate::build::partitions;

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
    /// config.txt's lines that choose what each board's firmware starts (`boards::firmware_lines`).
    firmware_lines: String,
    /// Where the agent is on the card (`pi2pi_agent::layout`).
    agent: AgentLayout,
    /// The card's partitions and boot state (`partitions`, `pi2pi_agent::bootslot`).
    card: CardLayout,
    update: &'a Update<'a>,
}

#[derive(Serialize)]
struct CardLayout {
    slots: Vec<SlotLayout>,
    attempts: u8,
    /// The boot state's file name on the boot partition, and where that partition is mounted.
    state_file: &'static str,
    boot_mount: &'static str,
    data_partition: u32,
    data_mount: &'static str,
    persisted: &'static [partitions::Persisted],
}

#[derive(Serialize)]
struct SlotLayout {
    name: String,
    partition: u32,
}

impl CardLayout {
    fn new() -> CardLayout {
        CardLayout {
            slots: partitions::slot_partitions().map(|(s, partition)| SlotLayout { name: s.to_string(), partition }).into(),
            attempts: bootslot::ATTEMPTS,
            state_file: layout::BOOT_ENV_NAME,
            boot_mount: layout::BOOT_MOUNT,
            data_partition: partitions::DATA,
            data_mount: partitions::DATA_MOUNT,
            persisted: partitions::PERSISTED,
        }
    }
}

#[derive(Serialize)]
struct AgentLayout {
    binary: &'static str,
    state_dir: &'static str,
    update_dir: &'static str,
    /// How long a new system has to show itself healthy (the agent's default).
    health_secs: u64,
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
    pub firmware_lines: String,
    /// The build's SOURCE_DATE_EPOCH: every file's mtime on the card, /usr's included.
    pub epoch: u64,
    pub update: Update<'a>,
}

/// What the card's RAUC needs: the bundles it takes (`compatible`), this build's version and the
/// certificate bundles must be signed with.
#[derive(Serialize)]
pub struct Update<'a> {
    pub compatible: String,
    pub version: u64,
    #[serde(skip)]
    pub cert: &'a str,
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
        arch: cfg.base_of(i.host).arch.deb(),
        consoles: crate::build::boards::consoles(cfg.base_of(i.host).arch),
        disk_id: format!("{:08x}", i.disk_id),
        kernel: i.kernel.clone(),
        initrd: i.initrd.clone(),
        firmware_lines: i.firmware_lines.clone(),
        agent: AgentLayout {
            binary: layout::BINARY,
            state_dir: layout::STATE_DIR,
            update_dir: layout::UPDATE_DIR,
            health_secs: pi2pi_agent::config::DEFAULT_HEALTH_SECS,
        },
        card: CardLayout::new(),
        update: &i.update,
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
    layer.file("etc/rauc/keyring.pem", i.update.cert, 0o644, root);
    for hook in RASPI_FIRMWARE_HOOKS {
        layer.file(hook.trim_start_matches('/'), RASPI_FIRMWARE_HOOK, 0o755, root);
    }
    add_units(&mut layer, i.epoch);
    Ok(layer)
}

/// raspi-firmware's kernel and initramfs hooks, which the base diverts (xtask/hooks/customize.sh):
/// pi2pi's stands in at each name, since raspi-firmware's postinst runs the kernel hook by name.
pub const RASPI_FIRMWARE_HOOKS: &[&str] = &[
    "/etc/kernel/postinst.d/z50-raspi-firmware",
    "/etc/kernel/postrm.d/z50-raspi-firmware",
    "/etc/initramfs/post-update.d/z50-raspi-firmware",
];

const RASPI_FIRMWARE_HOOK: &str = "#!/bin/sh
# pi2pi: in place of raspi-firmware's hook (diverted to *.distrib). That hook copies a new kernel
# to the boot partition and rewrites config.txt for the firmware to start it, past U-Boot. Here
# each root slot keeps its kernel in its own /boot; U-Boot loads /vmlinuz and /initrd.img, which
# apt points at the newest kernel. The boot partition is shared by both slots and left alone.
exit 0
";

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
    let mut wants = vec![
        ("local-fs.target", ours("pi2pi-grow.service")),
        ("timers.target", ours("pi2pi-update.timer")),
        ("timers.target", ours("pi2pi-trial-guard.timer")),
    ];
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
mod tests;
