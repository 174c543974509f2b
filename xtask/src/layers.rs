//! Stage 3: what one host adds to the shared base: overlays/ rendered with image.toml's values,
//! its SSH identity and trust, the agent binary and systemd enablement, as in-memory entries
//! (the rootfs stage writes them into the root tarball; nothing here touches a filesystem image).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::{Host, ImageConfig, Role, Schedule};
use crate::keys::HostKeys;

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
    disk_id: String,
    kernel: String,
    initrd: String,
}

pub struct Inputs<'a> {
    pub cfg: &'a ImageConfig,
    pub host: &'a Host,
    pub overlays: &'a Path,
    pub keys: &'a HostKeys,
    pub peer_keys: Vec<(&'a Host, HostKeys)>,
    pub agent: &'a Path,
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
    let prefix = cfg.network.prefix;
    let ctx = Ctx {
        host: i.host,
        hosts: &cfg.hosts,
        peers: i.host.peers.iter().filter_map(|p| cfg.hosts.iter().find(|h| &h.name == p)).collect(),
        server: cfg.server(),
        network: &cfg.network,
        netmask: std::net::Ipv4Addr::from(u32::MAX << (32 - prefix)).to_string(),
        drive: &cfg.drive,
        drive_mount_unit: mount_unit(&cfg.drive.mount_point),
        system: &cfg.system,
        schedule: cfg.schedule,
        arch: cfg.base.arch.deb(),
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
        for (rel, data, exec) in read_tree(&dir)? {
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
    for (rel, data, _) in read_tree(&i.overlays.join("boot"))? {
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
    let rd = |p: &Path| std::fs::read(p).with_context(|| format!("reading {} (run `cargo xtask keys`)", p.display()));
    layer.file("etc/ssh/ssh_host_ed25519_key", rd(&i.keys.host_key)?, 0o600, root);
    layer.file("etc/ssh/ssh_host_ed25519_key.pub", rd(&i.keys.host_key.with_extension("pub"))?, 0o644, root);
    layer.put(&format!("{home}/.ssh"), Kind::Dir, 0o700, user);
    layer.file(&format!("{home}/.ssh/id_ed25519"), rd(&i.keys.user_key)?, 0o600, user);
    layer.file(&format!("{home}/.ssh/id_ed25519.pub"), rd(&i.keys.user_key.with_extension("pub"))?, 0o644, user);
    let mut authorized = String::from("# pi2pi: peers' agents may only run the receiver.\n");
    let mut known = String::from("# pi2pi: peers' pinned host keys (no \"type yes\").\n");
    for (peer, keys) in &i.peer_keys {
        authorized += &format!("restrict,command=\"/usr/local/bin/pi2pi-agent serve\" {}\n", keys.user_pub()?);
        let names = format!("{0},{0}.{1},{2}", peer.name, cfg.network.domain, peer.address);
        known += &format!("{names} {}\n", keys.host_pub()?);
    }
    layer.file(&format!("{home}/.ssh/authorized_keys"), authorized, 0o600, user);
    layer.file("etc/ssh/ssh_known_hosts", known, 0o644, root);

    layer.file("usr/local/bin/pi2pi-agent", rd(i.agent)?, 0o755, root);
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
    Ok(layer)
}

/// Files below `dir` as (relative path, bytes, executable), sorted; a missing dir is empty.
fn read_tree(dir: &Path) -> Result<Vec<(String, Vec<u8>, bool)>> {
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
        out.push((rel, std::fs::read(e.path())?, exec));
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

    #[test]
    fn mount_unit_names_follow_systemd_escaping() {
        assert_eq!(mount_unit("/media/pi/PI2PI"), "media-pi-PI2PI.mount");
        assert_eq!(mount_unit("/media/pi/my-drive"), "media-pi-my\\x2ddrive.mount");
    }
}
