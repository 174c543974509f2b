//! `/etc/pi2pi/agent.toml`: a raw serde struct (`deny_unknown_fields`) validated into [`Config`].
//! Errors name the file, the line and the key (see [`crate::rules`], shared with xtask).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_PATH: &str = crate::layout::CONFIG;

#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub drive: DriveConfig,
    pub state_dir: PathBuf,
    pub sync: SyncConfig,
    pub serve: ServeConfig,
    pub update: UpdateConfig,
    pub peers: Vec<Peer>,
}

/// How long a new system has to show itself healthy, unless agent.toml says otherwise.
pub const DEFAULT_HEALTH_SECS: u64 = 300;

/// Updates brought on the drive (update.rs).
#[derive(Debug, Clone)]
pub struct UpdateConfig {
    /// Where bundles are put on the drive (`drive.update`, below the mount point).
    pub dir: PathBuf,
    /// How long a newly applied system has, from its boot, to show itself healthy.
    pub health: Duration,
}

#[derive(Debug, Clone)]
pub struct DriveConfig {
    pub label: String,
    pub mount_point: PathBuf,
    pub sending: PathBuf,
    pub receiving: PathBuf,
    /// When false the directories are used as plain directories (development and tests only).
    pub require_mount: bool,
    pub fstypes: Vec<String>,
    /// Where udev publishes labels; a test can point this at its own directory of links.
    pub by_label_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// A file must be unchanged for this long before it is sent.
    pub settle: Duration,
    /// Full rescan of `sending/` even without inotify events (safety net).
    pub rescan: Duration,
    /// Ceiling of the exponential retry backoff.
    pub retry_max: Duration,
}

/// How long `serve` waits for a peer that has a key but sends nothing.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Outside a transfer: a session idle this long is closed (the sender reconnects).
    pub idle: Duration,
    /// Inside a transfer: the longest wait for its next frame. A transfer also has to average
    /// `serve::MIN_RATE`, after a grace of twice this.
    pub frame: Duration,
    /// Bytes of cut transfers' partial copies one sender may keep on the drive (to resume from);
    /// past it the oldest go. The default keeps one of the largest file FAT32 holds.
    pub partial: u64,
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub name: String,
    pub transport: Transport,
}

#[derive(Debug, Clone)]
pub enum Transport {
    Ssh {
        host: String,
        port: u16,
        user: String,
        identity: PathBuf,
        known_hosts: PathBuf,
        /// The remote command; sshd's forced command overrides it on a real Pi.
        remote_command: String,
        ssh_program: String,
    },
    /// A local `serve` process on a pipe: same protocol, no SSH (fast tests, benchmarks).
    Pipe { argv: Vec<String> },
}

pub use crate::rules::ConfigError;
use crate::rules::{self, Source};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Spanned<String>,
    drive: RawDrive,
    state: Option<RawState>,
    sync: Option<RawSync>,
    serve: Option<RawServe>,
    update: Option<RawUpdate>,
    #[serde(default)]
    peer: Vec<RawPeer>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUpdate {
    health_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrive {
    label: Spanned<String>,
    mount_point: Spanned<String>,
    sending: Option<Spanned<String>>,
    receiving: Option<Spanned<String>>,
    update: Option<Spanned<String>>,
    require_mount: Option<bool>,
    fstypes: Option<Vec<String>>,
    by_label_dir: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    settle_ms: Option<Spanned<u64>>,
    rescan_secs: Option<Spanned<u64>>,
    retry_max_secs: Option<Spanned<u64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServe {
    idle_secs: Option<Spanned<u64>>,
    frame_secs: Option<Spanned<u64>>,
    partial_mib: Option<Spanned<u64>>,
}

/// How a peer is reached; read by serde, so a new kind is added here only.
#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum TransportKind {
    #[default]
    Ssh,
    Pipe,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    name: Spanned<String>,
    #[serde(default)]
    transport: TransportKind,
    host: Option<Spanned<String>>,
    port: Option<u16>,
    user: Option<String>,
    identity: Option<Spanned<String>>,
    known_hosts: Option<Spanned<String>>,
    remote_command: Option<String>,
    ssh_program: Option<String>,
    command: Option<Spanned<Vec<String>>>,
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::unreadable(path, &e))?;
        Config::parse(path, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Config, ConfigError> {
        let cx = Source { file, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::from_toml(file, text, &e))?;
        validate(&cx, raw)
    }
}

fn abs_path(cx: &Source, s: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
    let p = PathBuf::from(s.get_ref());
    if !p.is_absolute() {
        return cx.err(s, key, format!("`{}` must be an absolute path", s.get_ref()));
    }
    Ok(p)
}

fn sub_dir(cx: &Source, s: Option<&Spanned<String>>, default: &str, key: &str) -> Result<PathBuf, ConfigError> {
    let Some(s) = s else { return Ok(PathBuf::from(default)) };
    let v = s.get_ref();
    let ok = !v.is_empty() && !v.starts_with('/') && v.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if !ok {
        return cx.err(s, key, format!("`{v}` must be a relative directory inside the drive (like \"{default}\"), without '..'"));
    }
    Ok(PathBuf::from(v))
}

fn validate(cx: &Source, raw: RawConfig) -> Result<Config, ConfigError> {
    let node = cx.rule(&raw.node, "node", rules::host_name)?;

    let d = raw.drive;
    let label = cx.rule(&d.label, "drive.label", rules::fat_label)?;
    let mount_point = abs_path(cx, &d.mount_point, "drive.mount_point")?;
    if mount_point == Path::new("/") {
        return cx.err(&d.mount_point, "drive.mount_point", "must not be `/`");
    }
    let sending = sub_dir(cx, d.sending.as_ref(), "sending", "drive.sending")?;
    let receiving = sub_dir(cx, d.receiving.as_ref(), "receiving", "drive.receiving")?;
    if sending == receiving {
        return cx.err_at(d.receiving.as_ref().map(|s| s.span().start), "drive.receiving", "must differ from drive.sending");
    }
    let update_dir = sub_dir(cx, d.update.as_ref(), "update", "drive.update")?;
    if update_dir == sending || update_dir == receiving {
        return cx.err_at(d.update.as_ref().map(|s| s.span().start), "drive.update", "must differ from drive.sending and drive.receiving");
    }
    let update_dir = mount_point.join(update_dir);
    let drive = DriveConfig {
        label,
        sending: mount_point.join(sending),
        receiving: mount_point.join(receiving),
        mount_point,
        require_mount: d.require_mount.unwrap_or(true),
        fstypes: d.fstypes.unwrap_or_else(|| vec!["vfat".into()]),
        by_label_dir: d.by_label_dir.map(PathBuf::from).unwrap_or_else(|| "/dev/disk/by-label".into()),
    };

    let state_dir = match &raw.state {
        Some(s) => abs_path(cx, &s.dir, "state.dir")?,
        None => PathBuf::from(crate::layout::STATE_DIR),
    };

    let s = raw.sync.unwrap_or(RawSync { settle_ms: None, rescan_secs: None, retry_max_secs: None });
    let ranged = |v: &Option<Spanned<u64>>, key: &str, default: u64, lo: u64, hi: u64| -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if (lo..=hi).contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => cx.err(v, key, format!("{} is out of range: use {lo}..={hi}", v.get_ref())),
        }
    };
    let sync = SyncConfig {
        settle: Duration::from_millis(ranged(&s.settle_ms, "sync.settle_ms", 300, 0, 60_000)?),
        rescan: Duration::from_secs(ranged(&s.rescan_secs, "sync.rescan_secs", 30, 1, 3600)?),
        retry_max: Duration::from_secs(ranged(&s.retry_max_secs, "sync.retry_max_secs", 10, 1, 3600)?),
    };
    let v = raw.serve.unwrap_or_default();
    let serve = ServeConfig {
        idle: Duration::from_secs(ranged(&v.idle_secs, "serve.idle_secs", 600, 1, 3600)?),
        frame: Duration::from_secs(ranged(&v.frame_secs, "serve.frame_secs", 60, 1, 600)?),
        partial: ranged(&v.partial_mib, "serve.partial_mib", 4096, 1, 1 << 20)? << 20,
    };

    let u = raw.update.unwrap_or_default();
    let update = UpdateConfig {
        dir: update_dir,
        health: Duration::from_secs(ranged(&u.health_secs, "update.health_secs", DEFAULT_HEALTH_SECS, 30, 3600)?),
    };

    let mut peers = Vec::new();
    for (i, p) in raw.peer.into_iter().enumerate() {
        let key = |k: &str| format!("peer[{i}].{k}");
        let name = cx.rule(&p.name, &key("name"), rules::host_name)?;
        if name == node || peers.iter().any(|q: &Peer| q.name == name) {
            return cx.err(&p.name, &key("name"), format!("`{name}` is this node or a duplicate peer"));
        }
        let transport = match p.transport {
            TransportKind::Ssh => {
                let Some(host) = &p.host else {
                    return cx.err(&p.name, &key("host"), "missing: ssh peers need `host` (a name or IP address)");
                };
                if host.get_ref().is_empty() || host.get_ref().contains(char::is_whitespace) {
                    return cx.err(host, &key("host"), "must be a host name or IP address");
                }
                let need = |v: &Option<Spanned<String>>, k: &str| -> Result<PathBuf, ConfigError> {
                    match v {
                        Some(v) => abs_path(cx, v, &key(k)),
                        None => cx.err(&p.name, &key(k), "missing: ssh peers need an absolute path here"),
                    }
                };
                Transport::Ssh {
                    host: host.get_ref().clone(),
                    port: p.port.unwrap_or(22),
                    user: p.user.clone().unwrap_or_else(|| "pi".into()),
                    identity: need(&p.identity, "identity")?,
                    known_hosts: need(&p.known_hosts, "known_hosts")?,
                    remote_command: p.remote_command.clone().unwrap_or_else(|| "pi2pi-agent serve".into()),
                    ssh_program: p.ssh_program.clone().unwrap_or_else(|| "ssh".into()),
                }
            }
            TransportKind::Pipe => match &p.command {
                Some(c) if !c.get_ref().is_empty() => Transport::Pipe { argv: c.get_ref().clone() },
                _ => return cx.err(&p.name, &key("command"), "pipe peers need a non-empty `command` array"),
            },
        };
        peers.push(Peer { name, transport });
    }

    Ok(Config { node, drive, state_dir, sync, serve, update, peers })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node = "rpa"
[drive]
label = "PI2PI"
mount_point = "/media/pi/PI2PI"
[[peer]]
name = "rpb"
host = "rpb.local"
identity = "/home/pi/.ssh/id_ed25519"
known_hosts = "/etc/ssh/ssh_known_hosts"
"#;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/pi2pi/agent.toml"), s)
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node, "rpa");
        assert_eq!(c.drive.sending, Path::new("/media/pi/PI2PI/sending"));
        assert_eq!(c.drive.receiving, Path::new("/media/pi/PI2PI/receiving"));
        assert!(c.drive.require_mount);
        assert_eq!(c.peers.len(), 1);
        match &c.peers[0].transport {
            Transport::Ssh { port, user, .. } => assert_eq!((*port, user.as_str()), (22, "pi")),
            t => panic!("{t:?}"),
        }
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = GOOD.replace("host = \"rpb.local\"", "host = \"rpb.local\"\nhots = 1");
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("/etc/pi2pi/agent.toml:9: key `hots`"), "{e}");
        assert!(e.contains("hots"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = parse(&GOOD.replace("PI2PI\"\nmount", "MY DRIVE\"\nmount")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("drive.label", Some(4)));
        let e = parse(&GOOD.replace("\"/media/pi/PI2PI\"", "\"media\"")).unwrap_err();
        assert_eq!(e.key, "drive.mount_point");
        let e = parse(&format!("{GOOD}[sync]\nsettle_ms = 999999\n")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("sync.settle_ms", Some(12)));
        let e = parse(&GOOD.replace("name = \"rpb\"", "name = \"rpb\"\ntransport = \"ftp\"")).unwrap_err();
        assert!(e.to_string().contains("peer[0].transport"), "{e}");
        let e = parse(&GOOD.replace("identity = \"/home/pi/.ssh/id_ed25519\"\n", "")).unwrap_err();
        assert_eq!(e.key, "peer[0].identity");
    }
}
