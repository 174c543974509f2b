//! One sync pass: scan `sending/`, decide what each peer still needs, deliver it.
//! Shared by `sync` (cron) and `run` (the daemon, which adds inotify on top).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::config::{Config, Peer};
use crate::proto::Code;
use crate::session::{Job, Outcome, Session};
use crate::state::{Entry, Journal};
use crate::status::{unix_now, Mode, PeerStatus, Skipped, Status};
use crate::{drive, fsutil, paths};

/// Stat signature: changes whenever the file is written (ctime cannot be set back by `cp -p`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sig {
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
}

/// When a file was first seen with its current signature (monotonic clock).
struct Seen {
    sig: Sig,
    since: Instant,
}

/// A regular file found in `sending/`.
#[derive(Debug, Clone)]
pub struct Found {
    pub rel: String,
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
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

/// The engine's monotonic time: `Instant::now` on a Pi; in a test, a clock the test moves by hand
/// (`Clock::manual`, `advance`), so that quiescence, holds and backoff are tested without sleeping.
#[derive(Clone)]
pub struct Clock(Option<Arc<Mutex<Instant>>>);

impl Clock {
    pub fn system() -> Clock {
        Clock(None)
    }

    /// A clock that stands still until `advance`d.
    pub fn manual() -> Clock {
        Clock(Some(Arc::new(Mutex::new(Instant::now()))))
    }

    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }

    /// Moves a manual clock on (a system clock moves by itself).
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.0 {
            *t.lock().unwrap_or_else(|e| e.into_inner()) += by;
        }
    }
}

pub struct Engine {
    pub cfg: Config,
    clock: Clock,
    peers: Vec<PeerState>,
    /// First time each stat signature was seen (monotonic), for quiescence without trusting the
    /// wall clock: a Pi has no RTC and its clock can jump at boot.
    seen: HashMap<String, Seen>,
    pub drive_error: Option<String>,
    mode: Mode,
}

struct PeerState {
    peer: Peer,
    journal: Journal,
    session: Option<Session>,
    retry_at: Option<Instant>,
    backoff: Duration,
    /// Files the peer failed to take for a reason of their own (an I/O error on that file at the
    /// receiver): each waits out its own backoff while the others go on.
    held: HashMap<String, Hold>,
    status: PeerStatus,
}

/// When a held file is offered again, and how long it waited last time.
struct Hold {
    until: Instant,
    backoff: Duration,
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

impl PassReport {
    /// Something needs another look in `w`: keep the earliest such time.
    fn wake(&mut self, w: Duration) {
        self.wake_in = Some(self.wake_in.map_or(w, |x| x.min(w)));
    }
}

impl Engine {
    pub fn new(cfg: Config, mode: Mode) -> Result<Engine> {
        Engine::with_clock(cfg, mode, Clock::system())
    }

    pub fn with_clock(cfg: Config, mode: Mode, clock: Clock) -> Result<Engine> {
        let mut peers = Vec::new();
        for p in &cfg.peers {
            let journal = Journal::open(&cfg.state_dir, &p.name)?;
            let status = PeerStatus {
                name: p.name.clone(),
                delivered_total: journal.entries().filter(|e| matches!(e, Entry::Delivered { .. })).count() as u64,
                ..Default::default()
            };
            peers.push(PeerState {
                peer: p.clone(),
                journal,
                session: None,
                retry_at: None,
                backoff: Duration::ZERO,
                held: HashMap::new(),
                status,
            });
        }
        Ok(Engine { cfg, clock, peers, seen: HashMap::new(), drive_error: None, mode })
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
                sig: Sig { size: md.len(), mtime_ns, ctime_ns, ino: md.ino() },
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
        let now = self.clock.now();
        let ready = self.ready(&files, hot, now, &mut report);
        let collisions: HashMap<&str, &str> =
            paths::case_collisions(files.iter().map(|f| f.rel.as_str())).into_iter().flat_map(|(a, b)| [(a, b), (b, a)]).collect();
        let limits = Limits { retry_max: self.cfg.sync.retry_max, serve_idle: self.cfg.serve.idle, clock: &self.clock };
        for ps in &mut self.peers {
            let (ready, held) = unheld(ps, &ready, now, &mut report);
            let jobs = jobs_for(ps, &ready, &collisions, &self.cfg.drive.sending);
            // Said even while the peer waits out its backoff: a status that kept the last
            // pass's (empty) list told the soak's idle check, and a person, that nothing waited.
            ps.status.pending = jobs.iter().map(|j| j.rel.to_string()).chain(held).collect();
            if let Some(at) = ps.retry_at.filter(|t| *t > now) {
                report.wake(at - now);
                report.failures += 1;
                continue;
            }
            if !jobs.is_empty() {
                deliver(ps, &jobs, &mut self.seen, limits, &mut report);
            }
        }
        // What this pass put off (a peer's backoff, a file held back) is looked at again when
        // it is due, not at the next rescan: a peer that failed once was otherwise tried again
        // only after `sync.rescan_secs` (30 s) unless a file changed (found by the soak).
        let now = self.clock.now();
        for ps in &self.peers {
            let due = ps.retry_at.into_iter().chain(ps.held.values().map(|h| h.until));
            for at in due.filter(|t| *t > now) {
                report.wake(at - now);
            }
        }
        report
    }

    /// The files that are quiescent: their signature unchanged for `settle` (observed, not read
    /// from file times: FAT keeps them to 2 s, a Pi's clock jumps at boot) and not held open by
    /// a writer. The others are counted as waiting, with when to look again.
    fn ready<'f>(&mut self, files: &'f [Found], hot: &HashMap<String, Hot>, now: Instant, report: &mut PassReport) -> Vec<&'f Found> {
        let settle = self.cfg.sync.settle;
        let live: HashSet<&str> = files.iter().map(|f| f.rel.as_str()).collect();
        self.seen.retain(|k, _| live.contains(k.as_str()));
        let mut ready = Vec::new();
        for f in files {
            let first = match self.seen.get(&f.rel) {
                Some(s) if s.sig == f.sig => s.since,
                _ => {
                    self.seen.insert(f.rel.clone(), Seen { sig: f.sig, since: now });
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
                report.wake(due - now);
            }
        }
        ready
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
            mode: self.mode,
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
                            Entry::Skipped { path, reason, .. } => Some(Skipped { path: path.clone(), reason: reason.clone() }),
                            _ => None,
                        })
                        .collect();
                    st
                })
                .collect(),
        }
    }
}

/// The ready files `ps` is not holding back, and the names of those it is (still pending). A
/// held file's retry time is a reason to wake, and (for `sync`) a failure of this pass.
fn unheld<'f>(ps: &PeerState, ready: &[&'f Found], now: Instant, report: &mut PassReport) -> (Vec<&'f Found>, Vec<String>) {
    let (mut out, mut held) = (Vec::with_capacity(ready.len()), Vec::new());
    for f in ready {
        match ps.held.get(&f.rel) {
            Some(h) if h.until > now => {
                report.wake(h.until - now);
                report.failures += 1;
                held.push(f.rel.clone());
            }
            _ => out.push(*f),
        }
    }
    (out, held)
}

/// What `ps` still needs of the ready files. Files it has (by the journal, or by content when
/// only their mtime moved) and files FAT32 cannot hold (recorded as skipped) are left out.
fn jobs_for<'f>(ps: &mut PeerState, ready: &[&'f Found], collisions: &HashMap<&str, &str>, sending: &std::path::Path) -> Vec<Job<'f>> {
    let mut jobs = Vec::new();
    for f in ready {
        let Some(known) = still_needed(ps, f) else { continue };
        if let Some(reason) = unsendable(f, collisions) {
            tracing::error!(peer = %ps.peer.name, "{}: {reason}; skipped until it changes", sending.join(&f.rel).display());
            record(ps, Entry::Skipped { path: f.rel.clone(), size: f.size, mtime_ns: f.mtime_ns, reason });
            continue;
        }
        jobs.push(Job { path: &f.path, rel: &f.rel, size: f.size, mtime_ns: f.mtime_ns, sha256: known });
    }
    jobs
}

/// Whether `f` must be sent to `ps`: `None` if not, else `Some(hash if already computed)`.
fn still_needed(ps: &mut PeerState, f: &Found) -> Option<Option<[u8; 32]>> {
    // Same size and mtime means unchanged, except for a file modified in the last few seconds:
    // FAT's 2 s mtime cannot tell two writes in one window apart, so re-hash those.
    let settled_mtime = wall_age(f.mtime_ns).is_none_or(|age| age >= FAT_MTIME_SLACK);
    match ps.journal.get(&f.rel) {
        Some(Entry::Delivered { size, mtime_ns, .. }) if *size == f.size && *mtime_ns == f.mtime_ns && settled_mtime => None,
        // A skip is about the name or the size, not the content: no re-hash needed.
        Some(Entry::Skipped { size, mtime_ns, .. }) if *size == f.size && *mtime_ns == f.mtime_ns => None,
        // Same size, other mtime: maybe only touched. Read it to know.
        Some(Entry::Delivered { size, sha256, mtime_ns, .. }) if *size == f.size => match fsutil::hash_file(&f.path) {
            Ok((h, n)) if n == f.size => {
                if hex::encode(h) != *sha256 {
                    return Some(Some(h));
                }
                // Touched but not changed: remember the new mtime, send nothing.
                if *mtime_ns != f.mtime_ns {
                    let sha256 = sha256.clone();
                    record(ps, Entry::Delivered { path: f.rel.clone(), size: f.size, mtime_ns: f.mtime_ns, sha256 });
                }
                None
            }
            Ok(_) => None, // changed while hashing: next pass
            Err(e) => {
                tracing::warn!("{}: cannot read: {e}", f.path.display());
                None
            }
        },
        _ => Some(None),
    }
}

/// Sends `jobs` to `ps` over its open session (or a new one), applying each outcome as it comes.
fn deliver(ps: &mut PeerState, jobs: &[Job], seen: &mut HashMap<String, Seen>, limits: Limits, report: &mut PassReport) {
    let Some((mut session, kept)) = session_for(ps, limits, report) else { return };
    let mut settled = vec![false; jobs.len()];
    let mut result = deliver_on(&mut session, ps, jobs, seen, &mut settled, limits, report);
    // A kept session the peer closed meanwhile (it ends idle ones, or restarted) fails at once,
    // before any answer: not a lost link, so a new connection is tried at once, quietly.
    if result.as_ref().is_err_and(|(_, answered)| *answered == 0) && kept {
        tracing::info!(peer = %ps.peer.name, "the peer had closed the kept session; reconnecting");
        session.close();
        ps.status.connected = false;
        let Some((s, _)) = session_for(ps, limits, report) else { return };
        session = s;
        result = deliver_on(&mut session, ps, jobs, seen, &mut settled, limits, report);
    }
    if let Err(e) = ps.journal.sync() {
        tracing::error!("cannot sync delivery journal: {e:#}");
    }
    ps.status.pending = jobs.iter().zip(&settled).filter(|(_, s)| !**s).map(|(j, _)| j.rel.to_string()).collect();
    match result {
        Ok(()) => ps.session = Some(session),
        Err((e, _)) => {
            let why = session.last_stderr();
            session.close();
            let msg = if why.is_empty() {
                format!("link to {} lost: {e:#}", ps.peer.name)
            } else {
                format!("link to {} lost: {e:#} ({why})", ps.peer.name)
            };
            ps.status.connected = false;
            fail(ps, msg, limits);
            report.failures += 1;
        }
    }
}

/// One attempt at a batch on `session`; on a broken link, why, and how many files had an outcome
/// before it broke.
fn deliver_on(
    session: &mut Session,
    ps: &mut PeerState,
    jobs: &[Job],
    seen: &mut HashMap<String, Seen>,
    settled: &mut [bool],
    limits: Limits,
    report: &mut PassReport,
) -> Result<(), (anyhow::Error, usize)> {
    let started = limits.clock.now();
    let mut outcomes = 0;
    let result = session.deliver(jobs, |i, outcome| {
        outcomes += 1;
        let applied = apply_outcome(ps, &jobs[i], outcome, started, limits, report);
        if applied.retry_after_settle {
            seen.remove(jobs[i].rel);
        }
        settled[i] = applied.settled;
        applied.go_on
    });
    session.used = limits.clock.now();
    result.map_err(|e| (e, outcomes))
}

/// The peer's open session if it was used lately enough that the peer still holds it (half the
/// `serve.idle_secs` after which a receiver closes one), or a new connection; `None` (and a
/// backoff) if it cannot be reached. With whether the session was kept from before.
fn session_for(ps: &mut PeerState, limits: Limits, report: &mut PassReport) -> Option<(Session, bool)> {
    match ps.session.take() {
        Some(s) if limits.clock.now().saturating_duration_since(s.used) < limits.serve_idle / 2 => return Some((s, true)),
        Some(s) => s.close(),
        None => {}
    }
    match Session::connect(&ps.peer) {
        Ok(mut s) => {
            s.used = limits.clock.now();
            tracing::info!(peer = %ps.peer.name, "connected to {}", s.peer_node);
            ps.status.connected = true;
            Some((s, false))
        }
        Err(e) => {
            fail(ps, format!("{e:#}"), limits);
            report.failures += 1;
            None
        }
    }
}

/// The times `deliver` works to, and its clock.
#[derive(Clone, Copy)]
struct Limits<'c> {
    retry_max: Duration,
    serve_idle: Duration,
    clock: &'c Clock,
}

/// What one outcome means for the pass.
struct Applied {
    /// Nothing more to do for this file until it changes.
    settled: bool,
    /// Forget its quiescence: it changed, or must be sent again once it settles.
    retry_after_settle: bool,
    /// Keep delivering this batch (false: the peer as a whole is in trouble).
    go_on: bool,
}

/// Records one file's outcome in the journal, the status and the report.
fn apply_outcome(ps: &mut PeerState, j: &Job, outcome: Outcome, started: Instant, limits: Limits, report: &mut PassReport) -> Applied {
    let (resumed_from, sha256, verb) = match outcome {
        Outcome::Stored { resumed_from, sha256 } => (resumed_from, sha256, "delivered"),
        Outcome::Had { sha256 } => (j.size, sha256, "already there"),
        Outcome::Refused(reason) => {
            tracing::error!(peer = %ps.peer.name, "{}: refused by peer: {reason}; skipped until it changes", j.path.display());
            record(ps, Entry::Skipped { path: j.rel.to_string(), size: j.size, mtime_ns: j.mtime_ns, reason });
            return Applied { settled: true, retry_after_settle: false, go_on: true };
        }
        Outcome::Changed(why) => {
            tracing::info!(peer = %ps.peer.name, "{}: {why}; will send it once it settles", j.path.display());
            return Applied { settled: false, retry_after_settle: true, go_on: true };
        }
        Outcome::Failed(code, msg) => {
            report.failures += 1;
            return match code {
                // A transfer that went wrong on the way: this file is offered again once settled.
                Code::Checksum | Code::Protocol => {
                    tracing::warn!(peer = %ps.peer.name, "{msg}; will retry");
                    Applied { settled: false, retry_after_settle: true, go_on: true }
                }
                // The receiver cannot write or read this one file (a bad sector, a read-only
                // directory): the others go on; this one waits out its own backoff, so that a file
                // that keeps failing neither holds up the peer nor is retried in a tight loop.
                Code::Io => {
                    hold(ps, j.rel, limits, &msg);
                    ps.status.last_error = Some(msg);
                    ps.status.last_error_unix = unix_now();
                    Applied { settled: false, retry_after_settle: false, go_on: true }
                }
                // Peer-wide trouble (full or missing drive): back off for this peer.
                _ => {
                    fail(ps, msg, limits);
                    Applied { settled: false, retry_after_settle: false, go_on: false }
                }
            };
        }
    };
    let ms = limits.clock.now().saturating_duration_since(started).as_millis() as u64;
    tracing::info!(peer = %ps.peer.name, path = %j.rel, bytes = j.size, resumed_from, ms, "{verb}");
    record(ps, Entry::Delivered { path: j.rel.to_string(), size: j.size, mtime_ns: j.mtime_ns, sha256: hex::encode(sha256) });
    ps.held.remove(j.rel);
    ps.status.delivered_total += 1;
    ps.status.resumed_total += u64::from(resumed_from > 0 && resumed_from < j.size);
    ps.status.last_delivered = Some(j.rel.to_string());
    ps.status.last_delivered_unix = unix_now();
    ps.status.last_error = None;
    ps.backoff = Duration::ZERO;
    report.delivered += 1;
    Applied { settled: true, retry_after_settle: false, go_on: true }
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
/// The next wait after `prev`: double it, from 1 s up to `max`.
fn doubled(prev: Duration, max: Duration) -> Duration {
    (prev * 2).clamp(Duration::from_secs(1), max)
}

/// Holds `rel` back from `ps` for a doubling backoff (1 s up to `retry_max`).
fn hold(ps: &mut PeerState, rel: &str, limits: Limits, msg: &str) {
    let now = limits.clock.now();
    let h = ps.held.entry(rel.to_string()).or_insert(Hold { until: now, backoff: Duration::ZERO });
    h.backoff = doubled(h.backoff, limits.retry_max);
    h.until = now + h.backoff;
    tracing::warn!(peer = %ps.peer.name, "{msg}; this file again in {:?}, the others go on", h.backoff);
}

fn fail(ps: &mut PeerState, msg: String, limits: Limits) {
    ps.backoff = doubled(ps.backoff, limits.retry_max);
    tracing::warn!(peer = %ps.peer.name, "{msg}; retrying in {:?}", ps.backoff);
    ps.retry_at = Some(limits.clock.now() + ps.backoff);
    ps.status.last_error = Some(msg);
    ps.status.last_error_unix = unix_now();
}

/// How long ago a wall-clock time (ns since the epoch) was; `None` if it is in the future.
fn wall_age(t_ns: i64) -> Option<Duration> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_nanos() as i64;
    (now >= t_ns).then(|| Duration::from_nanos((now - t_ns) as u64))
}
