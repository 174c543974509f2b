//! `status.json` in the state directory: what the running agent last knew, for `pi2pi-agent status`.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::layout::STATUS_FILE;
use crate::state::{Entry, Journal};

/// How the sender runs: its status says whether a daemon is expected to be alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `pi2pi-agent run` under systemd.
    #[default]
    #[serde(rename = "run")]
    Daemon,
    /// `pi2pi-agent sync` from cron: one pass, then exit.
    Once,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub pid: u32,
    pub mode: Mode,
    pub updated_unix: u64,
    pub drive_error: Option<String>,
    pub peers: Vec<PeerStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub connected: bool,
    pub delivered_total: u64,
    /// Deliveries by this process that continued a kept partial copy instead of starting over.
    #[serde(default)]
    pub resumed_total: u64,
    pub last_delivered: Option<String>,
    pub last_delivered_unix: u64,
    pub last_error: Option<String>,
    pub last_error_unix: u64,
    pub pending: Vec<String>,
    pub skipped: Vec<Skipped>,
}

/// A file the sender will not send until it changes, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Skipped {
    pub path: String,
    pub reason: String,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn write(dir: &Path, st: &Status) -> Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{STATUS_FILE}.tmp"));
    let mut f = fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(serde_json::to_string_pretty(st)?.as_bytes())?;
    // No fsync: status is advisory and rewritten every pass; the journal is what must be durable.
    fs::rename(&tmp, dir.join(STATUS_FILE))?;
    Ok(())
}

pub fn read(dir: &Path) -> Option<Status> {
    serde_json::from_str(&fs::read_to_string(dir.join(STATUS_FILE)).ok()?).ok()
}

/// Human-readable report: live drive check, the daemon's last word, and the journals.
pub fn report(cfg: &Config, json: bool) -> Result<String> {
    let drive = crate::drive::check(&cfg.drive, None);
    let st = read(&cfg.state_dir);
    let alive = st.as_ref().is_some_and(|s| Path::new(&format!("/proc/{}", s.pid)).exists() && s.mode == Mode::Daemon);
    if json {
        let v = serde_json::json!({
            "node": cfg.node,
            "drive_ready": drive.is_ok(),
            "drive_error": drive.as_ref().err().map(|e| e.to_string()),
            "daemon_running": alive,
            "last": st,
            "update": crate::update::last_progress(),
        });
        return Ok(serde_json::to_string_pretty(&v)?);
    }
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("node:   {}", cfg.node));
    match &drive {
        Ok(()) => line(format!("drive:  {} mounted at {} (ready)", cfg.drive.label, cfg.drive.mount_point.display())),
        Err(e) => line(format!("drive:  NOT READY: {e}")),
    }
    match &st {
        Some(s) => line(format!(
            "agent:  {} (pid {}, mode {:?}, last pass {}s ago)",
            if alive { "running" } else { "not running" },
            s.pid,
            s.mode,
            unix_now().saturating_sub(s.updated_unix)
        )),
        None => line("agent:  has not run yet".into()),
    }
    if let Some(u) = crate::update::last_progress() {
        line(format!("update: {u}"));
    }
    for p in &cfg.peers {
        let journal = Journal::open(&cfg.state_dir, &p.name)?;
        let delivered = journal.entries().filter(|e| matches!(e, Entry::Delivered { .. })).count();
        let ps = st.as_ref().and_then(|s| s.peers.iter().find(|x| x.name == p.name));
        line(format!("peer {}:", p.name));
        line(format!(
            "  link:       {}",
            match ps {
                Some(ps) if ps.connected => "up".to_string(),
                Some(ps) if ps.last_error.is_some() => "down".to_string(),
                _ => "idle".to_string(),
            }
        ));
        line(format!("  delivered:  {delivered} files"));
        if let Some(ps) = ps {
            if let Some(l) = &ps.last_delivered {
                line(format!("  last:       {l}"));
            }
            line(format!("  pending:    {}", ps.pending.len()));
            for f in ps.pending.iter().take(10) {
                line(format!("    {f}"));
            }
            if let Some(e) = &ps.last_error {
                line(format!("  last error: {e}"));
            }
        }
        for e in journal.entries() {
            if let Entry::Skipped { path, reason, .. } = e {
                line(format!("  skipped:    {path}: {reason}"));
            }
        }
    }
    Ok(out)
}
