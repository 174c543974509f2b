//! How the sender reaches a peer's `serve`: the system's OpenSSH client, or a local process on a
//! pipe (tests, benchmarks). This module is the agent's one place that spawns processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

use crate::config::{Peer, Transport};

/// A running peer process: its stdin/stdout carry the protocol, its stderr is logged and the last
/// line kept (that is where ssh says "Permission denied" or "Connection refused").
pub struct Link {
    child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    last_stderr: Arc<Mutex<String>>,
}

impl Link {
    pub fn last_stderr(&self) -> String {
        self.last_stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Closes our ends and reaps the process; kills it if it does not leave on its own.
    pub fn close(mut self) {
        drop(self.stdin.take());
        drop(self.stdout.take());
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The argv that reaches `peer`. ssh runs non-interactively: a missing key or an unknown host key
/// is an error, never a prompt.
pub fn argv(peer: &Peer) -> Vec<String> {
    match &peer.transport {
        Transport::Pipe { argv } => argv.clone(),
        Transport::Ssh { host, port, user, identity, known_hosts, remote_command, ssh_program } => {
            let opt = |o: &str| ["-o".to_string(), o.to_string()];
            let mut v = vec![ssh_program.clone()];
            for o in [
                "BatchMode=yes".to_string(),
                "IdentitiesOnly=yes".to_string(),
                "StrictHostKeyChecking=yes".to_string(),
                format!("UserKnownHostsFile={}", known_hosts.display()),
                "GlobalKnownHostsFile=/dev/null".to_string(),
                "ConnectTimeout=10".to_string(),
                // Detect a cut cable within ~15 s instead of hanging on a dead TCP connection.
                "ServerAliveInterval=5".to_string(),
                "ServerAliveCountMax=3".to_string(),
                "Compression=no".to_string(),
                "LogLevel=ERROR".to_string(),
            ] {
                v.extend(opt(&o));
            }
            v.extend(["-i".into(), identity.display().to_string(), "-p".into(), port.to_string(), "-l".into(), user.clone()]);
            v.extend(["-T".into(), host.clone(), "--".into(), remote_command.clone()]);
            v
        }
    }
}

/// Spawns `argv` with piped stdin/stdout and a stderr logger thread.
pub fn spawn(argv: &[String], label: &str) -> Result<Link> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{prog}` for {label}"))?;
    let last = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("piped");
    let (keep, label) = (last.clone(), label.to_string());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            tracing::info!(peer = %label, "remote: {line}");
            if let Ok(mut l) = keep.lock() {
                *l = line;
            }
        }
    });
    let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
    if let (Some(i), Some(o)) = (&stdin, &stdout) {
        widen_pipe(i);
        widen_pipe(o);
    }
    Ok(Link { stdin, stdout, child, last_stderr: last })
}

/// Grows a pipe from the default 64 KiB to 1 MiB (the unprivileged limit), so the processes on
/// either end (agent, ssh, sshd) do not take turns: with a small pipe each write waits for the
/// reader, and the time one side spends hashing is time the other spends idle.
pub fn widen_pipe(fd: impl std::os::fd::AsFd) {
    let _ = rustix::pipe::fcntl_setpipe_size(fd, 1 << 20);
}
