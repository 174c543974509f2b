//! `run` (the systemd daemon) and `sync` (the cron job) around the [`Engine`].

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Result;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};

use crate::config::Config;
use crate::engine::{Engine, Hot, PassReport};
use crate::status::Mode;
use crate::{lock, status};

/// How long `sync` keeps waiting for files that are still being written (cron runs it
/// every minute, so less than that).
const ONCE_BUDGET: Duration = Duration::from_secs(45);

pub fn once(cfg: Config) -> Result<PassReport> {
    let _lock = lock::acquire(&cfg.state_dir)?;
    let state_dir = cfg.state_dir.clone();
    let mut engine = Engine::new(cfg, Mode::Once)?;
    let deadline = Instant::now() + ONCE_BUDGET;
    let mut total = 0;
    loop {
        let r = engine.pass(&HashMap::new());
        total += r.delivered;
        status::write(&state_dir, &engine.status())?;
        let now = Instant::now();
        match r.wake_in {
            Some(w) if r.waiting > 0 && r.failures == 0 && now + w < deadline => std::thread::sleep(w),
            _ => {
                engine.disconnect();
                status::write(&state_dir, &engine.status())?;
                return Ok(PassReport { delivered: total, ..r });
            }
        }
    }
}

pub fn run(cfg: Config) -> Result<()> {
    let _lock = lock::acquire(&cfg.state_dir)?;
    let state_dir = cfg.state_dir.clone();
    let sending = cfg.drive.sending.clone();
    let rescan = cfg.sync.rescan;
    let mut engine = Engine::new(cfg, Mode::Daemon)?;
    let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher: Option<notify::RecommendedWatcher> = None;
    let mut hot: HashMap<String, Hot> = HashMap::new();
    tracing::info!("pi2pi-agent {} running as {}", env!("CARGO_PKG_VERSION"), engine.cfg.node);
    loop {
        let report = engine.pass(&hot);
        // The watch lives and dies with the mount: a remounted drive is a new directory tree.
        if engine.drive_error.is_none() && watcher.is_none() {
            watcher = watch(&sending, tx.clone());
        } else if engine.drive_error.is_some() {
            watcher = None;
        }
        if let Err(e) = status::write(&state_dir, &engine.status()) {
            tracing::warn!("cannot write status: {e:#}");
        }
        let mut wait = report.wake_in.unwrap_or(rescan).min(rescan);
        if engine.drive_error.is_some() {
            wait = wait.min(Duration::from_secs(2));
        }
        if !wait_for_change(&rx, wait, &sending, &mut hot) {
            watcher = None;
        }
        hot.retain(|_, h| h.last.elapsed() < Duration::from_secs(600));
    }
}

/// Waits up to `wait` for an event that may change what there is to send, then takes the rest of
/// its burst (a copy of many files) before the next pass scans. False when the watch is gone.
fn wait_for_change(
    rx: &mpsc::Receiver<notify::Result<notify::Event>>,
    wait: Duration,
    sending: &Path,
    hot: &mut HashMap<String, Hot>,
) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                if note(sending, hot, ev) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
    let until = Instant::now() + Duration::from_millis(20);
    while let Ok(ev) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
        note(sending, hot, ev);
    }
    true
}

fn watch(dir: &Path, tx: mpsc::Sender<notify::Result<notify::Event>>) -> Option<notify::RecommendedWatcher> {
    let mut w = match notify::recommended_watcher(move |ev| {
        let _ = tx.send(ev);
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("inotify unavailable ({e}); relying on periodic rescans");
            return None;
        }
    };
    match w.watch(dir, RecursiveMode::Recursive) {
        Ok(()) => Some(w),
        Err(e) => {
            tracing::warn!("cannot watch {} ({e}); relying on periodic rescans", dir.display());
            None
        }
    }
}

/// Records which files an event says are being written. False for an event that cannot change
/// what there is to send: a read (an open, a read, a close after reading). A pass opens sending/
/// and reads every file it hashes or sends, so waking on those made every pass wake the next one,
/// forever: about 40 passes a second on an idle drive, each rescanning the tree and rewriting
/// status.json (a third of an emulated core; on a Pi Zero, CPU and SD card writes for nothing).
fn note(root: &Path, hot: &mut HashMap<String, Hot>, ev: notify::Result<notify::Event>) -> bool {
    // An error (the kernel's queue overflowed, say) may hide changes: rescan.
    let Ok(ev) = ev else { return true };
    let writing = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => Some(false),
        EventKind::Access(_) => return false,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => Some(true),
        EventKind::Modify(ModifyKind::Name(_)) => Some(false),
        EventKind::Modify(_) => None,
        // A removal or anything else: nothing to record, but worth a pass.
        _ => return true,
    };
    for p in ev.paths {
        let Some(rel) = p.strip_prefix(root).ok().and_then(|r| r.to_str()) else { continue };
        let e = hot.entry(rel.to_string()).or_insert(Hot { last: Instant::now(), writing: false });
        e.last = Instant::now();
        if let Some(w) = writing {
            e.writing = w;
        }
    }
    true
}
