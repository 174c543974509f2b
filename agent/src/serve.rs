//! `pi2pi-agent serve`: the receiving end, run by sshd as the forced command of the sender's key.
//!
//! Its whole authority is "write regular files inside receiving/". Every open goes through
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of receiving/, so neither a
//! hostile path nor a symlink planted on the drive can lead it outside.
//!
//! A file is written to a hidden temporary name in its final directory and checked against the
//! sender's SHA-256; then, in a group commit, the temporaries are synced, renamed into place and
//! the renames synced, and only then is `Stored` sent. The temporary name is derived from the
//! final name, so a transfer cut by a crash resumes from the bytes already there once the sender
//! has checked that they are a prefix of its file. A session holds a lock on each temporary it
//! has accepted from the offer until the rename, so the bytes it verified are the bytes renamed:
//! another offer of the path, in this session or another, is told it is busy.
//!
//! A peer with a key is held to bounds (ARCHITECTURE.md, "Threat model"): offers in flight,
//! descriptors, memory, bytes hashed per session, time idle and time per transfer, and the
//! partial copies of cut transfers it leaves on the drive.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc::{self, Receiver as Rx, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};

use crate::commit::{commit, Pending, Temp};
use crate::config::Config;
use crate::proto::{read_msg, write_msg, Code, Hash, Msg, VERSION, WINDOW};
use crate::reply::{answer, emit, failed, io_failed, refused, Out, Setback};
use crate::{drive, fsutil, lock, paths};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// A group commit happens when the input runs dry, or when the group is this large or this old.
/// Each file of a group holds two descriptors until it is committed.
const GROUP_FILES: usize = 128;
const GROUP_BYTES: u64 = 256 << 20;
const GROUP_AGE: Duration = Duration::from_millis(500);
/// Written data is handed to the disk in slices of this size as it arrives, so that the commit's
/// sync finds little left to write and a large file does not pile up in the page cache.
const WRITEBACK_SLICE: u64 = 8 << 20;
/// Directory entries the tidy of a sender's partial copies reads at most: it runs once per
/// session, so on a drive of very many files it tidies part of the tree rather than stall.
const TIDY_ENTRIES_MAX: usize = 200_000;
/// What a message shows of itself in a log line or error: a peer's frame can be 1 MiB.
const SHOWN_MAX: usize = 200;
/// Offers accepted and not yet started that a session may hold: twice the sender's window (ours
/// holds at most `WINDOW + 1`). Past it the session ends. Each holds two descriptors.
pub const IN_FLIGHT_MAX: usize = 2 * WINDOW;
/// Descriptors a session holds at most: its accepted offers, the group being filled and the one
/// being committed (a directory and a temporary each), and a few of its own. Under the 1,024 that
/// sshd's sessions get by default.
pub const DESCRIPTORS_MAX: usize = 2 * IN_FLIGHT_MAX + 2 * 2 * GROUP_FILES + 32;
/// Bytes of files already on the drive a session may hash to answer offers of their size, beyond
/// what it has received: past that an offer is answered as a new file and the sender sends it, so
/// a 20-byte offer cannot make the receiver read a gigabyte. (Costs a re-send only to a sender
/// that lost its journal and offers more than this of what is already here.)
pub const HASH_FREE: u64 = 256 << 20;
/// Hashes of files already here that a session remembers, so the same file offered again is not
/// read again.
const KNOWN_MAX: usize = 1024;
/// The slowest a transfer may average (after a grace of twice `serve.frame_secs`): a 4 GiB file
/// has 4.5 hours. A transfer kept alive by a trickle of frames ends there; its prefix is kept.
pub const MIN_RATE: u64 = 256 << 10;

type Frames = Rx<io::Result<Option<Msg>>>;

/// Runs one session on the given streams until the sender says `Bye` or closes the stream. With
/// `into`, every path is taken below `receiving/<into>/` (made when the first file comes).
pub fn serve(cfg: &Config, into: Option<&str>, input: impl Read + Send + 'static, output: impl Write + Send) -> Result<()> {
    // Smaller than a chunk, so most data is read from the pipe straight into its own buffer.
    let mut r = BufReader::with_capacity(64 * 1024, input);
    let mut w = BufWriter::new(output);
    match read_msg(&mut r)? {
        Some(Msg::Hello { version: VERSION }) => {}
        Some(Msg::Hello { version }) => {
            let m = format!("protocol version {version} is not supported (this receiver speaks {VERSION})");
            write_msg(&mut w, &Msg::Failed { id: 0, code: Code::Version, message: m.clone() })?;
            w.flush()?;
            bail!(m);
        }
        Some(other) => bail!("expected Hello, got {}", name_of(&other)),
        None => bail!("expected Hello, got the end of the stream"),
    }
    let Some(slot) = lock::session_slot(&cfg.state_dir, into)? else {
        let m = format!("this sender already has {} sessions open here; try again later", lock::SESSIONS_MAX);
        write_msg(&mut w, &Msg::Failed { id: 0, code: Code::Io, message: m.clone() })?;
        w.flush()?;
        bail!(m);
    };
    write_msg(&mut w, &Msg::Welcome { version: VERSION, node: cfg.node.clone() })?;
    w.flush()?;
    // Frames are read and decoded on their own thread, so that reading the link overlaps writing
    // and hashing, and so that "no frame waiting" (the moment to commit) can be seen. Detached:
    // when the session ends with an error the process exits, whatever the thread is blocked on.
    let (tx, rx) = mpsc::sync_channel(8);
    std::thread::spawn(move || loop {
        let m = read_msg(&mut r);
        let last = !matches!(m, Ok(Some(_)));
        if tx.send(m).is_err() || last {
            return;
        }
    });
    let out = Mutex::new(w);
    std::thread::scope(|s| {
        // Commits run on their own thread so that receiving goes on while the drive syncs. The
        // hand-off is a rendezvous: a group is taken only when the previous one is committed.
        let (commit_tx, commit_rx) = mpsc::sync_channel::<Vec<Pending>>(0);
        let out = &out;
        let committer = s.spawn(move || -> Result<()> {
            for group in commit_rx {
                commit(group, out)?;
            }
            Ok(())
        });
        let session = Receiver {
            cfg,
            into,
            slot: &slot,
            receiving: 0,
            out,
            commits: commit_tx,
            probed: false,
            tidied: false,
            known: HashMap::new(),
            hashed: 0,
            received: 0,
            accepted: VecDeque::new(),
            group: Vec::new(),
            group_paths: HashSet::new(),
            group_bytes: 0,
            group_since: None,
            committing: HashSet::new(),
        };
        let result = session.run(&rx);
        let committed = committer.join().unwrap_or_else(|_| Err(anyhow!("the commit thread panicked")));
        result.and(committed)
    })
}

struct Receiver<'a, W: Write> {
    cfg: &'a Config,
    /// The sender's own directory under receiving/, if it has one.
    into: Option<&'a str>,
    /// Where this session keeps the space it has promised, for other sessions to count.
    slot: &'a lock::SessionSlot,
    /// Bytes of the transfer in progress not received yet (at most its size).
    receiving: u64,
    out: &'a Out<W>,
    commits: SyncSender<Vec<Pending>>,
    /// The write probe (a create and unlink on the drive) runs once per session.
    probed: bool,
    /// The sender's partial copies are tidied once per session, before its first file.
    tidied: bool,
    /// Hashes of files already here, by what identifies their content.
    known: HashMap<FileId, Hash>,
    /// Bytes of files already here hashed this session, and bytes received (see `HASH_FREE`).
    hashed: u64,
    received: u64,
    /// Offers answered with `Accept` whose `Start` or `Skip` has not come yet, oldest first.
    accepted: VecDeque<Accepted>,
    /// Verified files waiting for the group commit.
    group: Vec<Pending>,
    group_paths: HashSet<String>,
    group_bytes: u64,
    group_since: Option<Instant>,
    /// Paths of the group handed to the commit thread last (maybe still being committed).
    committing: HashSet<String>,
}

struct Accepted {
    id: u32,
    path: String,
    size: u64,
    dir: Arc<OwnedFd>,
    name: String,
    temp: Temp,
    /// Bytes kept from an earlier attempt, and their hash so far.
    have: u64,
    hasher: Sha256,
}

impl Accepted {
    /// Lets go of an offer never started: a temporary it made and left empty is removed (while
    /// still locked, so it is this one), one with an earlier attempt's bytes kept.
    fn release(self) {
        if self.temp.file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = rustix::fs::unlinkat(&*self.dir, self.temp.name.as_str(), AtFlags::empty());
        }
    }
}

/// A file's identity and version as far as the filesystem tells it: same values, same content.
#[derive(Hash, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> FileId {
        FileId {
            dev: st.st_dev,
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            ctime: (st.st_ctime, st.st_ctime_nsec as i64),
        }
    }
}

impl<W: Write> Receiver<'_, W> {
    fn run(mut self, rx: &Frames) -> Result<()> {
        let result = self.receive_all(rx);
        for a in std::mem::take(&mut self.accepted) {
            a.release();
        }
        result
    }

    fn receive_all(&mut self, rx: &Frames) -> Result<()> {
        let idle = self.cfg.serve.idle;
        loop {
            let next = match rx.try_recv() {
                Ok(m) => m,
                Err(_) => {
                    // Nothing waiting: the sender is done or slower than us; make what we have
                    // durable and say so now rather than later.
                    self.hand_off()?;
                    match rx.recv_timeout(idle) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Disconnected) => return Ok(()),
                        Err(RecvTimeoutError::Timeout) => {
                            // Not an error: the sender reconnects when it next has files.
                            tracing::info!("the sender sent nothing for {} s; closing the session", idle.as_secs());
                            return Ok(());
                        }
                    }
                }
            };
            match next.context("reading from the sender")? {
                None | Some(Msg::Bye) => return self.hand_off(),
                Some(Msg::Offer { id, path, size }) => {
                    if self.accepted.len() >= IN_FLIGHT_MAX {
                        bail!("protocol error: more than {IN_FLIGHT_MAX} offers accepted and not started");
                    }
                    // A newer version of a file not yet committed: let that commit finish first
                    // (its temporary stays locked until it is renamed).
                    if self.group_paths.contains(&path) || self.committing.contains(&path) {
                        self.hand_off()?;
                        self.barrier()?;
                    }
                    match self.accept(id, &path, size) {
                        Ok((a, existing)) => {
                            let have_sha256 = a.hasher.clone().finalize().into();
                            // Flushed at once: the sender may be waiting for exactly this answer.
                            emit(self.out, &Msg::Accept { id, have: a.have, have_sha256, existing }, true)?;
                            self.accepted.push_back(a);
                            self.record_promise();
                        }
                        Err(Setback::Answer(m)) => answer(self.out, &path, m)?,
                        Err(Setback::Broken(e)) => return Err(e),
                    }
                }
                Some(Msg::Skip { id }) => {
                    // The final file is the content: a kept prefix is of no more use. Unlinked
                    // while locked, so it is the one this session claimed.
                    let a = self.take_accepted(id)?;
                    self.record_promise();
                    let _ = rustix::fs::unlinkat(&*a.dir, a.temp.name.as_str(), AtFlags::empty());
                    self.add(Pending { id, path: a.path, dir: a.dir, name: a.name, temp: None }, 0);
                }
                Some(Msg::Start { id, from }) => {
                    let a = self.take_accepted(id)?;
                    let (size, path) = (a.size, a.path.clone());
                    self.receiving = size;
                    self.record_promise();
                    let received = self.receive(a, from, rx);
                    self.receiving = 0;
                    self.record_promise();
                    match received {
                        Ok(Some(p)) => self.add(p, size),
                        Ok(None) => {} // aborted by the sender
                        Err(Setback::Answer(m)) => answer(self.out, &path, m)?,
                        Err(Setback::Broken(e)) => return Err(e),
                    }
                }
                Some(m) => bail!("protocol error: unexpected {} outside a transfer", name_of(&m)),
            }
            if self.group.len() >= GROUP_FILES
                || self.group_bytes >= GROUP_BYTES
                || self.group_since.is_some_and(|t| t.elapsed() >= GROUP_AGE)
            {
                self.hand_off()?;
            }
        }
    }

    /// Gives the group to the commit thread (waiting while it commits the one before).
    fn hand_off(&mut self) -> Result<()> {
        if self.group.is_empty() {
            return Ok(());
        }
        self.group_bytes = 0;
        self.group_since = None;
        self.committing = std::mem::take(&mut self.group_paths);
        self.commits.send(std::mem::take(&mut self.group)).map_err(|_| anyhow!("the commit thread stopped"))
    }

    /// Waits until everything handed off is committed.
    fn barrier(&mut self) -> Result<()> {
        self.commits.send(Vec::new()).map_err(|_| anyhow!("the commit thread stopped"))?;
        self.committing.clear();
        Ok(())
    }

    fn add(&mut self, p: Pending, bytes: u64) {
        self.group_since.get_or_insert_with(Instant::now);
        self.group_paths.insert(p.path.clone());
        self.group_bytes += bytes;
        self.group.push(p);
    }

    /// The accepted offer `id`; older accepted offers the sender skipped over are dropped (their
    /// temporaries stay, to resume from later, unless empty).
    fn take_accepted(&mut self, id: u32) -> Result<Accepted> {
        while let Some(a) = self.accepted.pop_front() {
            if a.id == id {
                return Ok(a);
            }
            a.release();
        }
        bail!("protocol error: transfer {id} was not offered and accepted")
    }

    /// Decides whether an offer can be taken, and from where; with the hash of a file of the
    /// offered size already under the final name, if there is one.
    fn accept(&mut self, id: u32, path: &str, size: u64) -> Result<(Accepted, Option<Hash>), Setback> {
        let parts = paths::check_relative(path).map_err(|e| refused(id, Code::BadPath, format!("{path}: {e}")))?;
        if size > paths::FAT32_MAX_FILE {
            return Err(refused(id, Code::TooLarge, format!("{path}: {size} bytes is over FAT32's 4 GiB - 1 limit")));
        }
        let root_dir = &self.cfg.drive.receiving;
        // The mount is checked for every file (the drive can be pulled mid-session).
        let probe = (!self.probed).then_some(root_dir.as_path());
        drive::check(&self.cfg.drive, probe).map_err(|e| failed(id, Code::DriveNotReady, e.to_string()))?;
        self.probed = true;

        let root = rustix::fs::open(root_dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| failed(id, Code::DriveNotReady, format!("{}: {e}", root_dir.display())))?;
        if !self.tidied {
            self.tidied = true;
            if let Ok(top) = open_dirs(&root, self.into.as_slice(), false) {
                tidy_partials(&top, self.cfg.serve.partial);
            }
        }
        // Names in the units the drive counts, before anything is made: FAT takes 255 UTF-16
        // units (checked above), a byte-counting filesystem (ext4: 255 bytes) fewer. Past that
        // the file could never be stored, so it is refused, not failed to be retried.
        let name_max = rustix::fs::fstatvfs(&root).map(|s| s.f_namemax).unwrap_or(255);
        if let Some(long) = parts.iter().find(|c| c.len() as u64 > name_max) {
            return Err(refused(id, Code::BadPath, format!("{path}: `{long}` is {} bytes; this drive takes {name_max}", long.len())));
        }
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let name = name[0];
        let dirs: Vec<&str> = self.into.into_iter().chain(dirs.iter().copied()).collect();
        let dirs = dirs.as_slice();
        // Directories are made only once the file is known to fit (with what this session has
        // accepted already): a full drive does not fill up with empty directories.
        let dir = match open_dirs(&root, dirs, false) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.check_space(id, path, &root, size)?;
                open_dirs(&root, dirs, true)
            }
            opened => opened,
        };
        let dir = dir.map_err(|e| match e.kind() {
            io::ErrorKind::NotADirectory => refused(id, Code::NotRegular, format!("{path}: a parent is not a directory")),
            _ if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
                || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
            {
                refused(id, Code::BadPath, format!("{path}: a parent is a symlink; refusing to follow it"))
            }
            _ => io_failed(id, "cannot create directory", path, e),
        })?;

        // A file of this size already here may be this very content (our `Stored` was lost in a
        // crash, or the sender lost its journal): tell the sender its hash instead of taking it again.
        let mut existing = None;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
                return Err(refused(id, Code::NotRegular, format!("{path}: exists and is not a regular file")));
            }
            Ok(st) if st.st_size as u64 == size => existing = self.existing_hash(id, path, &dir, name, &st)?,
            _ => {}
        }

        // The temporary, this session's alone until the file is renamed or dropped; what an
        // earlier attempt left in it, and its hash, so the final check covers the whole file.
        // More than the offered size cannot be a prefix: start over.
        let temp_name = temp_name(name);
        let mut file = match claim_temp(&dir, &temp_name) {
            Ok(Some(f)) => f,
            Ok(None) => return Err(failed(id, Code::Io, format!("{path}: being received in another transfer; try again later"))),
            Err(e) => return Err(io_failed(id, "cannot create", path, e)),
        };
        let (mut have, mut hasher) = (0, Sha256::new());
        let kept = file.metadata().map(|m| m.len()).unwrap_or(0);
        if kept > 0 && kept <= size {
            // A kept prefix that cannot be read back is not kept: the transfer starts from zero
            // and rewrites the temporary.
            match fsutil::hash_reader(&mut file, kept) {
                Ok(read) => (hasher, have) = read,
                Err(e) => tracing::warn!("{path}: the partial copy cannot be read ({e}); starting over"),
            }
        }
        if existing.is_none() {
            if let Err(full) = self.check_space(id, path, &dir, size - have) {
                // A temporary claimed just now holds nothing worth keeping on a full drive.
                if have == 0 {
                    let _ = rustix::fs::unlinkat(&dir, temp_name.as_str(), AtFlags::empty());
                }
                return Err(full);
            }
        }
        let temp = Temp { name: temp_name, file };
        let a = Accepted { id, path: path.to_string(), size, dir: Arc::new(dir), name: name.to_string(), temp, have, hasher };
        Ok((a, existing))
    }

    /// Bytes this session has promised: its accepted offers' and its transfer's yet to come.
    fn promised(&self) -> u64 {
        self.accepted.iter().map(|a| a.size - a.have).sum::<u64>() + self.receiving
    }

    fn record_promise(&self) {
        self.slot.promise(self.promised());
    }

    /// Fails the offer unless the drive has room for `need` bytes beyond what this session and
    /// the others live on this receiver have promised.
    fn check_space(&self, id: u32, path: &str, on: &OwnedFd, need: u64) -> Result<(), Setback> {
        let reserved = self.promised().saturating_add(self.slot.promised_by_others());
        let free = rustix::fs::fstatvfs(on).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(u64::MAX);
        if free < reserved.saturating_add(need) {
            let m =
                format!("receiver's drive is full: {path} needs {need} bytes, {free} free, {reserved} promised to offers accepted before");
            return Err(failed(id, Code::NoSpace, m));
        }
        Ok(())
    }

    /// The hash of the file of the offered size already at `name`: remembered if this session
    /// read it before, read if the session's budget (`HASH_FREE`) allows, else `None` (the sender
    /// then sends the file).
    fn existing_hash(&mut self, id: u32, path: &str, dir: &OwnedFd, name: &str, st: &rustix::fs::Stat) -> Result<Option<Hash>, Setback> {
        let key = FileId::of(st);
        if let Some(h) = self.known.get(&key) {
            return Ok(Some(*h));
        }
        let size = st.st_size as u64;
        if self.hashed.saturating_add(size) > HASH_FREE.saturating_add(self.received) {
            tracing::debug!(path, "not hashing the file already here: over this session's budget");
            return Ok(None);
        }
        // Unreadable (a bad sector): that file fails, the session and the others go on.
        let f = open_beneath(dir, name, OFlags::RDONLY).map_err(|e| io_failed(id, "cannot read", path, e))?;
        let (h, n) = fsutil::hash_reader(&mut File::from(f), u64::MAX).map_err(|e| io_failed(id, "cannot read", path, e))?;
        self.hashed += n;
        let h: Hash = h.finalize().into();
        if self.known.len() >= KNOWN_MAX {
            self.known = HashMap::new();
        }
        self.known.insert(key, h);
        Ok(Some(h))
    }

    /// Writes one transfer into its temporary file and verifies it. `Ok(None)`: the sender aborted.
    fn receive(&mut self, a: Accepted, from: u64, rx: &Frames) -> Result<Option<Pending>, Setback> {
        let Accepted { id, path, size, dir, name, temp, have, mut hasher } = a;
        if from != 0 && from != have {
            return Err(Setback::Broken(anyhow!("{path}: sender asked to start at {from}; only 0 or {have} are possible")));
        }
        let clock = Clock::start(self.cfg.serve.frame, size - from);
        // Unlinked only while this session holds its lock: it is the temporary it claimed.
        let unlink_temp = || {
            let _ = rustix::fs::unlinkat(&*dir, temp.name.as_str(), AtFlags::empty());
        };
        let mut file = &temp.file;
        if from == 0 {
            hasher = Sha256::new();
        }
        // After a write error the stream is still read to its end, so the session stays in step.
        let mut write_err = position(file, from).err();
        let mut left = size - from;
        let (mut written, mut handed) = (from, from);
        loop {
            match clock.recv(rx, &path)? {
                Msg::Data(d) => {
                    if d.len() as u64 > left {
                        return Err(Setback::Broken(anyhow!("{path}: sender sent more than the offered size")));
                    }
                    left -= d.len() as u64;
                    self.received += d.len() as u64;
                    if write_err.is_none() {
                        match file.write_all(&d) {
                            Ok(()) => {
                                hasher.update(&d);
                                written += d.len() as u64;
                                if written - handed >= WRITEBACK_SLICE {
                                    start_writeback(file, handed, written - handed);
                                    handed = written;
                                    // What is written is counted by the drive's free space now.
                                    self.receiving = size - written;
                                    self.record_promise();
                                }
                            }
                            Err(e) => write_err = Some(e),
                        }
                    }
                }
                Msg::Done { id: done, sha256 } if done == id => {
                    if let Some(e) = write_err {
                        unlink_temp();
                        return Err(io_failed(id, "cannot write", &path, e));
                    }
                    if left != 0 {
                        unlink_temp();
                        return Err(failed(id, Code::Protocol, format!("{path}: transfer ended {left} bytes short")));
                    }
                    if hasher.finalize().as_slice() != sha256 {
                        unlink_temp();
                        return Err(failed(
                            id,
                            Code::Checksum,
                            format!("{path}: SHA-256 mismatch (file changed at the sender during transfer?)"),
                        ));
                    }
                    return Ok(Some(Pending { id, path, dir, name, temp: Some(temp) }));
                }
                Msg::Abort { id: done } if done == id => {
                    unlink_temp();
                    return Ok(None);
                }
                m => return Err(Setback::Broken(anyhow!("{path}: unexpected {} during transfer {id}", name_of(&m)))),
            }
        }
    }
}

/// Readies a claimed temporary for data from `from`: what is past it is not ours to keep.
fn position(mut file: &File, from: u64) -> io::Result<()> {
    file.set_len(from)?;
    file.seek(SeekFrom::Start(from)).map(drop)
}

/// How long a transfer may wait for its next frame, and by when it must be done: a trickle of
/// frames (even empty ones) keeps no session alive past `MIN_RATE`.
struct Clock {
    frame: Duration,
    started: Instant,
    deadline: Instant,
}

impl Clock {
    fn start(frame: Duration, bytes: u64) -> Clock {
        let started = Instant::now();
        Clock { frame, started, deadline: started + 2 * frame + Duration::from_secs(bytes / MIN_RATE) }
    }

    fn recv(&self, rx: &Frames, path: &str) -> Result<Msg, Setback> {
        let wait = self.frame.min(self.deadline.saturating_duration_since(Instant::now()));
        match rx.recv_timeout(wait) {
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) | Err(RecvTimeoutError::Disconnected) => Err(Setback::Broken(anyhow!("{path}: sender went away mid-transfer"))),
            Ok(Err(e)) => Err(Setback::Broken(anyhow::Error::new(e).context(format!("{path}: reading data")))),
            Err(RecvTimeoutError::Timeout) if Instant::now() >= self.deadline => Err(Setback::Broken(anyhow!(
                "{path}: transfer too slow: not done after {} s (a transfer must average {} KiB/s)",
                self.started.elapsed().as_secs(),
                MIN_RATE >> 10
            ))),
            Err(RecvTimeoutError::Timeout) => {
                Err(Setback::Broken(anyhow!("{path}: no data from the sender for {} s", self.frame.as_secs())))
            }
        }
    }
}

/// Starts (does not wait for) writeback of a range just written.
fn start_writeback(f: &File, offset: u64, len: u64) {
    // SAFETY: plain syscall on a descriptor we own; a failure only means the commit does the work.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset as libc::off64_t, len as libc::off64_t, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// A message as logs and errors show it, cut to `SHOWN_MAX` characters (what goes back to the
/// peer through sshd's stderr stays small whatever it sent).
fn name_of(m: &Msg) -> String {
    let s = match m {
        Msg::Data(d) => format!("Data({} bytes)", d.len()),
        m => format!("{m:?}"),
    };
    match s.char_indices().nth(SHOWN_MAX) {
        Some((i, _)) => format!("{}… ({} bytes)", &s[..i], s.len()),
        None => s,
    }
}

fn open_beneath(dir: &OwnedFd, name: &str, flags: OFlags) -> io::Result<OwnedFd> {
    // openat2 insists on a zero mode unless it may create the file.
    let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o644) } else { Mode::empty() };
    Ok(rustix::fs::openat2(dir, name, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, mode, RESOLVE)?)
}

/// Opens each directory below `root` (making missing ones with `make`), never following a symlink.
fn open_dirs(root: &OwnedFd, dirs: &[&str], make: bool) -> io::Result<OwnedFd> {
    let mut cur = rustix::io::dup(root)?;
    for d in dirs {
        if make {
            match rustix::fs::mkdirat(&cur, *d, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        cur = rustix::fs::openat2(&cur, *d, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), RESOLVE)?;
    }
    Ok(cur)
}

/// Opens the temporary `temp` in `dir` for this session alone: made if missing, never through a
/// symlink, a regular file with one link (a hard link planted to a file elsewhere is unlinked,
/// never written through), and locked. `None`: another offer or session holds it.
fn claim_temp(dir: &OwnedFd, temp: &str) -> io::Result<Option<File>> {
    // Twice at most: once more after unlinking a planted link or losing a race with an unlink.
    for _ in 0..2 {
        let fd = open_beneath(dir, temp, OFlags::RDWR | OFlags::CREATE | OFlags::NONBLOCK)?;
        let st = rustix::fs::fstat(&fd)?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
            return Err(io::Error::other(format!("{temp} is not a regular file")));
        }
        match rustix::fs::flock(&fd, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let here = rustix::fs::statat(dir, temp, AtFlags::SYMLINK_NOFOLLOW).ok().map(|s| (s.st_dev, s.st_ino));
        if st.st_nlink == 1 && here == Some((st.st_dev, st.st_ino)) {
            // Blocking again for the writes to come.
            rustix::fs::fcntl_setfl(&fd, OFlags::empty())?;
            return Ok(Some(File::from(fd)));
        }
        if st.st_nlink > 1 {
            tracing::warn!("{temp} is a hard link to another file; removing the link");
            let _ = rustix::fs::unlinkat(dir, temp, AtFlags::empty());
        }
    }
    Err(io::Error::other(format!("{temp} keeps changing under this receiver")))
}

/// A temporary nobody has written to for this long belongs to a transfer whose file is gone from
/// the sender (one that is still wanted is resumed, which writes to it, long before).
const ABANDONED: Duration = Duration::from_secs(7 * 24 * 3600);

/// A partial copy of a cut transfer found on the drive.
struct Partial {
    /// Its directory, below the sender's.
    dir: Vec<String>,
    name: String,
    size: u64,
    /// Seconds and nanoseconds: the oldest go first.
    mtime: (i64, i64),
}

/// Once per session, before its first file: the sender's partial copies that are empty or
/// abandoned (untouched for `ABANDONED`) go, then the oldest while the rest hold more than `cap`
/// bytes. Only partial data of ours is removed, never a user's file, and never a copy another
/// session holds. A session leaves at most one new partial copy behind (the transfer it was in
/// when cut; an empty one of an offer never started is removed when the session ends), so a
/// sender keeps at most `cap` plus one file per session it has open at once: cut transfers cannot
/// fill the drive with hidden files, as they could for a week before.
fn tidy_partials(top: &OwnedFd, cap: u64) {
    let mut found = find_partials(top);
    found.sort_by_key(|p| p.mtime);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let mut held: u64 = found.iter().map(|p| p.size).sum();
    for p in found {
        let why = match () {
            _ if p.size == 0 => "empty",
            // A clock that jumped back only delays this.
            _ if now - p.mtime.0 > ABANDONED.as_secs() as i64 => "untouched for a week",
            _ if held > cap => "the sender's oldest while over serve.partial_mib",
            _ => continue,
        };
        let dirs: Vec<&str> = p.dir.iter().map(String::as_str).collect();
        let Ok(dir) = open_dirs(top, &dirs, false) else { continue };
        // Claimed first, so a copy another session holds (one it is resuming) is left to it.
        if let Ok(Some(_held)) = claim_temp(&dir, &p.name) {
            tracing::info!("removing the partial copy {}/{} ({} bytes): {why}", p.dir.join("/"), p.name, p.size);
            if rustix::fs::unlinkat(&dir, p.name.as_str(), AtFlags::empty()).is_ok() {
                held -= p.size;
            }
        }
    }
}

/// The partial copies (temporaries) in `top`'s tree, reading at most `TIDY_ENTRIES_MAX` entries.
fn find_partials(top: &OwnedFd) -> Vec<Partial> {
    let mut found = Vec::new();
    let mut pending: Vec<Vec<String>> = vec![Vec::new()];
    let mut budget = TIDY_ENTRIES_MAX;
    while let Some(rel) = pending.pop() {
        let dirs: Vec<&str> = rel.iter().map(String::as_str).collect();
        let Ok(dir) = open_dirs(top, &dirs, false) else { continue };
        let Ok(mut entries) = rustix::fs::Dir::read_from(&dir) else { continue };
        while let Some(Ok(e)) = entries.next() {
            budget = match budget.checked_sub(1) {
                Some(b) => b,
                None => return found,
            };
            let name = e.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            // A user's file needs no stat (FAT and ext4 give the type with the name).
            if e.file_type() == FileType::RegularFile && !paths::is_temp_name(&name) {
                continue;
            }
            let Ok(st) = rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory if rel.len() < paths::MAX_DEPTH => pending.push(rel.iter().cloned().chain([name]).collect()),
                FileType::RegularFile if paths::is_temp_name(&name) => {
                    let mtime = (st.st_mtime, st.st_mtime_nsec as i64);
                    found.push(Partial { dir: rel.clone(), name, size: st.st_size as u64, mtime })
                }
                _ => {}
            }
        }
    }
    found
}

/// `.pi2pi-<hash of name>.part`: hidden, one per final name, short enough for FAT32 whatever the
/// name's length. Its content is whatever prefix of the file an earlier attempt got to.
pub fn temp_name(name: &str) -> String {
    format!("{}{}{}", paths::TEMP_PREFIX, hex::encode(&Sha256::digest(name.as_bytes())[..8]), paths::TEMP_SUFFIX)
}
