//! Test fixtures: real `pi2pi-agent` processes on temporary drives, wired by pipe or by a real sshd.
// Each test binary includes this module and uses a different part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_pi2pi-agent");

/// One Pi: a drive directory with sending/ and receiving/, a state dir and a config file.
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub drive: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
}

impl Node {
    pub fn new(root: &Path, name: &str) -> Node {
        let dir = root.join(name);
        let drive = dir.join("drive");
        fs::create_dir_all(drive.join("sending")).unwrap();
        fs::create_dir_all(drive.join("receiving")).unwrap();
        Node { name: name.into(), state: dir.join("state"), config: dir.join("agent.toml"), drive, dir }
    }

    pub fn sending(&self) -> PathBuf {
        self.drive.join("sending")
    }
    pub fn receiving(&self) -> PathBuf {
        self.drive.join("receiving")
    }

    /// Writes the config with `drive_extra` lines in [drive] and the given peer tables.
    pub fn write_config(&self, drive_extra: &str, peers: &str) {
        let text = format!(
            "node = \"{}\"\n[drive]\nlabel = \"PI2PI\"\nmount_point = \"{}\"\n{drive_extra}\n[state]\ndir = \"{}\"\n[sync]\nsettle_ms = 100\nrescan_secs = 2\nretry_max_secs = 2\n{peers}",
            self.name,
            self.drive.display(),
            self.state.display()
        );
        fs::write(&self.config, text).unwrap();
    }

    /// A plain-directory node (no mount check) sending to `peer` over a local pipe.
    pub fn pipe_to(&self, peer: &Node) {
        self.write_config("require_mount = false", &pipe_peer(peer));
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args).env("PI2PI_LOG", "info");
        c
    }

    pub fn sync_once(&self) -> Output {
        self.cmd(&["sync"]).output().unwrap()
    }

    pub fn spawn_run(&self) -> Child {
        self.cmd(&["run"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    }
}

/// Two plain-directory nodes in a new temporary directory: `rpa` sending to `rpb` over a pipe.
pub fn pipe_pair() -> (tempfile::TempDir, Node, Node) {
    let t = tempfile::tempdir().unwrap();
    let a = Node::new(t.path(), "rpa");
    let b = Node::new(t.path(), "rpb");
    b.write_config("require_mount = false", "");
    a.pipe_to(&b);
    (t, a, b)
}

pub fn pipe_peer(peer: &Node) -> String {
    format!(
        "[[peer]]\nname = \"{}\"\ntransport = \"pipe\"\ncommand = [\"{BIN}\", \"--config\", \"{}\", \"serve\"]\n",
        peer.name,
        peer.config.display()
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Deterministic pseudo-random content.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn write_file(root: &Path, rel: &str, data: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    let mut f = fs::File::create(p).unwrap();
    f.write_all(data).unwrap();
}

/// rel path → sha256 of every regular file below `root`, temporaries included (so tests see them).
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in walk(root) {
        let rel = e.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        match fs::read(&e) {
            Ok(data) => {
                out.insert(rel, hex::encode(Sha256::digest(data)));
            }
            // Renamed into place (or removed) by a live receiver between listing and reading.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => panic!("{}: {err}", e.display()),
        }
    }
    out
}

/// rel path → (inode, mtime) of every file the receiver holds under its final name: a file
/// written again (even with the same bytes) gets a new inode, because it arrives by rename.
pub fn written(root: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    walk(root)
        .into_iter()
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with(".pi2pi-"))
        .filter_map(|p| {
            let md = fs::metadata(&p).ok()?;
            Some((p.strip_prefix(root).unwrap().to_str().unwrap().to_string(), (md.ino(), md.modified().unwrap())))
        })
        .collect()
}

/// The paths whose receiver copy was written between two `written` snapshots (new or replaced).
pub fn rewritten(
    before: &BTreeMap<String, (u64, std::time::SystemTime)>,
    after: &BTreeMap<String, (u64, std::time::SystemTime)>,
) -> Vec<String> {
    after.iter().filter(|(k, v)| before.get(*k) != Some(v)).map(|(k, _)| k.clone()).collect()
}

/// The sender's last status.json for its one peer.
pub fn peer_status(n: &Node) -> pi2pi_agent::status::PeerStatus {
    let st = pi2pi_agent::status::read(&n.state).expect("status.json");
    st.peers.into_iter().next().expect("one peer")
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                v.extend(walk(&e.path()));
            } else if t.is_file() {
                v.push(e.path());
            }
        }
    }
    v
}

pub fn temps(root: &Path) -> Vec<String> {
    walk(root)
        .into_iter()
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".pi2pi-"))
        .map(|p| p.strip_prefix(root).unwrap().to_str().unwrap().to_string())
        .collect()
}

/// Polls `f` every 20 ms until it is true or `limit` passes.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn sh(cmd: &str) -> Output {
    let o = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(o.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&o.stderr));
    o
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A real OpenSSH server on 127.0.0.1 with keys made for this test. The client key is authorised
/// only for `pi2pi-agent serve` of `receiver`, exactly as the images set it up.
pub struct Sshd {
    pub child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    config: PathBuf,
}

impl Sshd {
    pub fn new(dir: &Path, receiver: &Node) -> Sshd {
        fs::create_dir_all(dir).unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        for k in [&host_key, &client_key] {
            let o = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "pi2pi-test", "-f"]).arg(k).output().unwrap();
            assert!(o.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&o.stderr));
        }
        let port = free_port();
        let host_pub = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        let known_hosts = dir.join("known_hosts");
        fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}")).unwrap();
        let client_pub = fs::read_to_string(client_key.with_extension("pub")).unwrap();
        let auth = dir.join("authorized_keys");
        fs::write(&auth, format!("restrict,command=\"{BIN} --config {} serve\" {client_pub}", receiver.config.display())).unwrap();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin forced-commands-only\nStrictModes no\nUsePAM no\n\
                 PidFile none\nLogLevel ERROR\n",
                host_key.display(),
                auth.display()
            ),
        )
        .unwrap();
        let mut s = Sshd { child: None, port, dir: dir.into(), client_key, known_hosts, config };
        s.start();
        s
    }

    pub fn start(&mut self) {
        let child = Command::new("/usr/sbin/sshd").args(["-D", "-e", "-f"]).arg(&self.config).stderr(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
        let port = self.port;
        assert!(wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()), "sshd did not start");
    }

    /// Kills the listener and every per-connection sshd below it, as a cut link would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let kids = descendants(c.id());
            let _ = c.kill();
            let _ = c.wait();
            for pid in kids {
                kill9(pid);
            }
        }
    }

    /// Kills only the per-connection processes (the link drops, the server stays up).
    pub fn cut_connections(&self) {
        if let Some(c) = &self.child {
            for pid in descendants(c.id()) {
                kill9(pid);
            }
        }
    }

    pub fn peer(&self, receiver: &Node) -> String {
        format!(
            "[[peer]]\nname = \"{}\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\n",
            receiver.name,
            self.port,
            self.client_key.display(),
            self.known_hosts.display()
        )
    }

    /// Runs the system ssh client with the agent's key and options, as a person trying for a shell would.
    pub fn ssh(&self, remote: &str) -> Output {
        Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .arg("-i")
            .arg(&self.client_key)
            .args(["-p", &self.port.to_string(), "-l", "root", "127.0.0.1", remote])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// All processes below `pid`, found by scanning /proc for parent links.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // Field 4 (ppid) follows the parenthesised command name, which may contain spaces.
        let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else { continue };
        if let Some(pp) = rest.split_whitespace().nth(1).and_then(|x| x.parse::<u32>().ok()) {
            parent.push((p, pp));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for &(c, pp) in &parent {
            if pp == q {
                out.push(c);
                frontier.push(c);
            }
        }
    }
    out
}

pub fn kill9(pid: u32) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap(), rustix::process::Signal::KILL);
}

pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
