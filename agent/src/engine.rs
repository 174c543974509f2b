//! One sync pass: scan `sending/`, decide what each peer still needs, deliver it.
//! Shared by `sync` (cron) and `run` (the daemon, which adds inotify on top).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::config::{Config, Peer};
use crate::proto::Code;
use crate::session::{Job, Outcome, Session};
use crate::state::{Entry, Journal};
use crate::status::{PeerStatus, Status};
use crate::{drive, fsutil, paths};

/// (size, mtime ns, ctime ns, inode): changes whenever the file is written.
type Sig = (u64, i64, i64, u64);

/// A regular file found in `sending/`.
#[derive(Debug, Clone)]
pub struct Found {
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
    /// Stat signature: any write changes it (ctime cannot be set back by `cp -p`).
    sig: Sig,
}

/// What the daemon learned from inotify about a path.
#[derive(Debug, Clone, Copy)]
pub struct Hot {
    pub last: Instant,
    /// Modified and not yet closed by its writer.
    pub writing: bool,
}

/// A writer that keeps a file open but stops writing for this long is taken to be done with it.
const WRITER_IDLE: Duration = Duration::from_secs(30);
/// FAT keeps modification times to 2 s (Linux truncates them in memory too); a file whose mtime
/// is this recent may have changed without its (size, mtime) changing.
const FAT_MTIME_SLACK: Duration = Duration::from_secs(4);

pub struct Engine {
    pub cfg: Config,
    peers: Vec<PeerState>,
    /// First time each stat signature was seen (monotonic), for quiescence without trusting the
    /// wall clock: a Pi has no RTC and its clock can jump at boot.
    seen: HashMap<String, (Sig, Instant)>,
    pub drive_error: Option<String>,
    mode: &'static str,
}

struct PeerState {
    peer: Peer,
    journal: Journal,
    session: Option<Session>,
    retry_at: Option<Instant>,
    backoff: Duration,
    status: PeerStatus,
}

#[derive(Debug, Default)]
pub struct PassReport {
    /// Files that will be ready after they settle: when to look again.
    pub wake_in: Option<Duration>,
    pub waiting: usize,
    pub delivered: usize,
    /// Errors that should make `sync` exit non-zero.
    pub failures: usize,
}

impl Engine {
    pub fn new(cfg: Config, mode: &'static str) -> Result<Engine> {
        let mut peers = Vec::new();
        for p in &cfg.peers {
            let journal = Journal::open(&cfg.state_dir, &p.name)?;
            let status = PeerStatus {
                name: p.name.clone(),
                delivered_total: journal.entries().filter(|e| matches!(e, Entry::Delivered { .. })).count() as u64,
                ..Default::default()
            };
            peers.push(PeerState { peer: p.clone(), journal, session: None, retry_at: None, backoff: Duration::ZERO, status });
        }
        Ok(Engine { cfg, peers, seen: HashMap::new(), drive_error: None, mode })
    }

    /// Is the sending side usable? Logs only when the answer changes.
    pub fn drive_ready(&mut self) -> bool {
        let now = drive::check(&self.cfg.drive, None).and_then(|()| {
            // Only now that the drive is proven mounted may the directories be created.
            for d in [&self.cfg.drive.sending, &self.cfg.drive.receiving] {
                fs::create_dir_all(d).map_err(|e| drive::DriveError::NotWritable { path: d.clone(), err: e.to_string() })?;
            }
            Ok(())
        });
        let err = now.err().map(|e| e.to_string());
        if err != self.drive_error {
            match &err {
                Some(e) => tracing::warn!("waiting for the drive: {e}"),
                None => tracing::info!("drive {} is ready at {}", self.cfg.drive.label, self.cfg.drive.mount_point.display()),
            }
            self.drive_error = err;
        }
        self.drive_error.is_none()
    }

    pub fn scan(&self) -> Vec<Found> {
        let root = &self.cfg.drive.sending;
        let mut out = Vec::new();
        for e in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    tracing::warn!("scanning {}: {err}", root.display());
                    continue;
                }
            };
            if !e.file_type().is_file() || paths::is_temp_name(&e.file_name().to_string_lossy()) {
                continue;
            }
            let Ok(rel) = e.path().strip_prefix(root) else { continue };
            let Some(rel) = rel.to_str() else {
                tracing::error!("{}: name is not UTF-8; skipping", e.path().display());
                continue;
            };
            let Ok(md) = e.metadata() else { continue };
            let (mtime_ns, ctime_ns) = (fsutil::mtime_ns(&md), fsutil::ctime_ns(&md));
            out.push(Found {
                rel: rel.to_string(),
                path: e.path().to_path_buf(),
                size: md.len(),
                mtime_ns,
                sig: (md.len(), mtime_ns, ctime_ns, md.ino()),
            });
        }
        out
    }

    /// One pass over `sending/` for every peer whose retry time has come.
    pub fn pass(&mut self, hot: &HashMap<String, Hot>) -> PassReport {
        let mut report = PassReport::default();
        if !self.drive_ready() {
            report.failures += 1;
            return report;
        }
        let files = self.scan();
        let now = Instant::now();
        let settle = self.cfg.sync.settle;

        // Quiescence: unchanged for `settle` and not held open by a writer.
        let mut ready = Vec::new();
        let live: HashSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        self.seen.retain(|k, _| live.contains(k.as_str()));
        for f in &files {
            // Only an observed lack of change counts: file times cannot say how long a file has
            // been still (FAT keeps them to 2 s, a Pi's clock jumps at boot).
            let first = match self.seen.get(&f.rel) {
                Some((sig, t)) if *sig == f.sig => *t,
                _ => {
                    self.seen.insert(f.rel.clone(), (f.sig, now));
                    now
                }
            };
            let mut due = first + settle;
            if let Some(h) = hot.get(&f.rel) {
                due = due.max(h.last + if h.writing { WRITER_IDLE } else { settle });
            }
            if due <= now {
                ready.push(f);
            } else {
                report.waiting += 1;
                let w = due - now;
                report.wake_in = Some(report.wake_in.map_or(w, |x: Duration| x.min(w)));
            }
        }

        let collisions: HashMap<&str, &str> =
            paths::case_collisions(files.iter().map(|f| f.rel.as_str())).into_iter().flat_map(|(a, b)| [(a, b), (b, a)]).collect();
        let sending = self.cfg.drive.sending.clone();

        for ps in &mut self.peers {
            if ps.retry_at.is_some_and(|t| t > now) {
                let w = ps.retry_at.unwrap() - now;
                report.wake_in = Some(report.wake_in.map_or(w, |x| x.min(w)));
                report.failures += 1;
                continue;
            }
            // What this peer still needs.
            let mut jobs = Vec::new();
            for f in &ready {
                // Same size and mtime means unchanged, except for a file modified in the last few
                // seconds: FAT's 2 s mtime cannot tell two writes in one window apart, so re-hash.
                let settled_mtime = wall_age(f.mtime_ns).is_none_or(|age| age >= FAT_MTIME_SLACK);
                let mut known = None;
                match ps.journal.get(&f.rel) {
                    Some(Entry::Delivered { size, mtime_ns, .. }) if *size == f.size && *mtime_ns == f.mtime_ns && settled_mtime => {
                        continue
                    }
                    // A skip is about the name or the size, not the content: no re-hash needed.
                    Some(Entry::Skipped { size, mtime_ns, .. }) if *size == f.size && *mtime_ns == f.mtime_ns => continue,
                    // Same size, other mtime: maybe only touched. Read it to know.
                    Some(Entry::Delivered { size, sha256, mtime_ns, .. }) if *size == f.size => match fsutil::hash_file(&f.path) {
                        Ok((h, n)) if n == f.size => {
                            if hex::encode(h) == *sha256 {
                                // Touched but not changed: remember the new mtime, send nothing.
                                if *mtime_ns != f.mtime_ns {
                                    let sha256 = sha256.clone();
                                    record(ps, Entry::Delivered { path: f.rel.clone(), size: f.size, mtime_ns: f.mtime_ns, sha256 });
                                }
                                continue;
                            }
                            known = Some(h);
                        }
                        Ok(_) => continue, // changed while hashing: next pass
                        Err(e) => {
                            tracing::warn!("{}: cannot read: {e}", f.path.display());
                            continue;
                        }
                    },
                    _ => {}
                }
                if let Some(reason) = unsendable(f, &collisions) {
                    tracing::error!(peer = %ps.peer.name, "{}: {reason}; skipped until it changes", sending.join(&f.rel).display());
                    record(ps, Entry::Skipped { path: f.rel.clone(), size: f.size, mtime_ns: f.mtime_ns, reason });
                    continue;
                }
                jobs.push(Job { path: &f.path, rel: &f.rel, size: f.size, mtime_ns: f.mtime_ns, sha256: known });
            }
            ps.status.pending = jobs.iter().map(|j| j.rel.to_string()).collect();
            if jobs.is_empty() {
                continue;
            }
            let mut session = match ps.session.take() {
                Some(s) => s,
                None => match Session::connect(&ps.peer) {
                    Ok(s) => {
                        tracing::info!(peer = %ps.peer.name, "connected to {}", s.peer_node);
                        ps.status.connected = true;
                        s
                    }
                    Err(e) => {
                        fail(ps, format!("{e:#}"), self.cfg.sync.retry_max);
                        report.failures += 1;
                        continue;
                    }
                },
            };
            let started = Instant::now();
            let retry_max = self.cfg.sync.retry_max;
            let seen = &mut self.seen;
            let mut settled = vec![false; jobs.len()];
            let result = session.deliver(&jobs, |i, outcome| {
                let j = &jobs[i];
                let (resumed_from, sha256, verb) = match outcome {
                    Outcome::Stored { resumed_from, sha256 } => (resumed_from, sha256, "delivered"),
                    Outcome::Had { sha256 } => (j.size, sha256, "already there"),
                    Outcome::Refused(reason) => {
                        tracing::error!(peer = %ps.peer.name, "{}: refused by peer: {reason}; skipped until it changes", j.path.display());
                        record(ps, Entry::Skipped { path: j.rel.to_string(), size: j.size, mtime_ns: j.mtime_ns, reason });
                        settled[i] = true;
                        return true;
                    }
                    // It will be picked up again once it settles.
                    Outcome::Changed(why) => {
                        tracing::info!(peer = %ps.peer.name, "{}: {why}; will send it once it settles", j.path.display());
                        seen.remove(j.rel);
                        return true;
                    }
                    Outcome::Failed(code, msg) => {
                        report.failures += 1;
                        return match code {
                            Code::Checksum | Code::Protocol => {
                                tracing::warn!(peer = %ps.peer.name, "{msg}; will retry");
                                seen.remove(j.rel);
                                true
                            }
                            // Peer-wide trouble (full or missing drive): back off for this peer.
                            _ => {
                                fail(ps, msg, retry_max);
                                false
                            }
                        };
                    }
                };
                tracing::info!(peer = %ps.peer.name, path = %j.rel, bytes = j.size, resumed_from, ms = started.elapsed().as_millis() as u64, "{verb}");
                record(ps, Entry::Delivered { path: j.rel.to_string(), size: j.size, mtime_ns: j.mtime_ns, sha256: hex::encode(sha256) });
                ps.status.delivered_total += 1;
                ps.status.last_delivered = Some(j.rel.to_string());
                ps.status.last_delivered_unix = unix_now();
                ps.status.last_error = None;
                ps.backoff = Duration::ZERO;
                report.delivered += 1;
                settled[i] = true;
                true
            });
            if let Err(e) = ps.journal.sync() {
                tracing::error!("cannot sync delivery journal: {e:#}");
            }
            ps.status.pending = jobs.iter().zip(&settled).filter(|(_, s)| !**s).map(|(j, _)| j.rel.to_string()).collect();
            match result {
                Ok(()) => ps.session = Some(session),
                Err(e) => {
                    let why = session.last_stderr();
                    session.close();
                    let msg = if why.is_empty() {
                        format!("link to {} lost: {e:#}", ps.peer.name)
                    } else {
                        format!("link to {} lost: {e:#} ({why})", ps.peer.name)
                    };
                    ps.status.connected = false;
                    fail(ps, msg, retry_max);
                    report.failures += 1;
                }
            }
        }
        report
    }

    /// Closes idle sessions (end of `sync`, or shutdown).
    pub fn disconnect(&mut self) {
        for ps in &mut self.peers {
            if let Some(s) = ps.session.take() {
                s.close();
            }
            ps.status.connected = false;
        }
    }

    pub fn status(&self) -> Status {
        Status {
            node: self.cfg.node.clone(),
            pid: std::process::id(),
            mode: self.mode.to_string(),
            updated_unix: unix_now(),
            drive_error: self.drive_error.clone(),
            peers: self
                .peers
                .iter()
                .map(|ps| {
                    let mut st = ps.status.clone();
                    st.skipped = ps
                        .journal
                        .entries()
                        .filter_map(|e| match e {
                            Entry::Skipped { path, reason, .. } => Some((path.clone(), reason.clone())),
                            _ => None,
                        })
                        .collect();
                    st
                })
                .collect(),
        }
    }
}

fn unsendable(f: &Found, collisions: &HashMap<&str, &str>) -> Option<String> {
    if let Err(e) = paths::check_relative(&f.rel) {
        return Some(e.to_string());
    }
    if f.size > paths::FAT32_MAX_FILE {
        return Some(format!("{} bytes is over FAT32's 4 GiB - 1 limit", f.size));
    }
    collisions.get(f.rel.as_str()).map(|other| format!("differs from `{other}` only by case, which FAT32 cannot keep apart"))
}

fn record(ps: &mut PeerState, e: Entry) {
    if let Err(err) = ps.journal.record(e) {
        tracing::error!("cannot write delivery journal: {err:#}");
    }
}

/// Capped exponential backoff: 1 s, 2 s, 4 s … `max`.
fn fail(ps: &mut PeerState, msg: String, max: Duration) {
    ps.backoff = (ps.backoff * 2).clamp(Duration::from_secs(1), max);
    tracing::warn!(peer = %ps.peer.name, "{msg}; retrying in {:?}", ps.backoff);
    ps.retry_at = Some(Instant::now() + ps.backoff);
    ps.status.last_error = Some(msg);
    ps.status.last_error_unix = unix_now();
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// How long ago a wall-clock time (ns since the epoch) was; `None` if it is in the future.
fn wall_age(t_ns: i64) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_nanos() as i64;
    (now >= t_ns).then(|| Duration::from_nanos((now - t_ns) as u64))
}
