//! One sender at a time: `run` and `sync` both hold an exclusive lock in the state directory,
//! so a cron run that overlaps a slow one (or the daemon) leaves at once instead of racing it.
//! And few receivers per sender: each `serve` session holds one of `SESSIONS_MAX` slots, where it
//! also keeps the space it has promised, for the other sessions to count.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Held, never read: the flock lasts as long as the file stays open.
pub struct Lock {
    _held: File,
}

pub fn acquire(state_dir: &Path) -> Result<Lock> {
    fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join("agent.lock");
    let mut f = open_lock_file(&path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = f.read_to_string(&mut holder);
            bail!(AlreadyRunning(format!(
                "another pi2pi-agent (pid {}) is already syncing (lock {}); not starting a second one",
                holder.trim(),
                path.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
    }
    f.set_len(0)?;
    f.rewind()?;
    write!(f, "{}", std::process::id())?;
    Ok(Lock { _held: f })
}

/// `serve` sessions one sender may hold at once: its live one, one a dead link leaves behind
/// until sshd's keepalives end it, and room for reconnecting. A key cannot open sessions without
/// bound (100 idle ones held 567 MiB).
pub const SESSIONS_MAX: usize = 4;

/// One `serve` session's slot: a file in `<state>/sessions/` it holds an open-file-description
/// lock on while it lives (a killed session frees its own), and in which it keeps the bytes it has
/// promised (accepted and not yet received), so that every session counts the others' promises
/// against the drive's free space. OFD locks, not flock, because another session must be able to
/// ask "is this slot held?" without taking the lock (`F_OFD_GETLK`).
pub struct SessionSlot {
    file: File,
    path: PathBuf,
}

/// How a promise is written: fixed width, so a rewrite never leaves a longer old one's tail.
const PROMISE_WIDTH: usize = 20;

impl SessionSlot {
    /// Records that this session has promised `bytes` of the drive.
    pub fn promise(&self, bytes: u64) {
        // Best effort: a promise not recorded only lets another session overcommit, as before.
        let _ = rustix::io::pwrite(&self.file, format!("{bytes:0PROMISE_WIDTH$}\n").as_bytes(), 0);
    }

    /// The bytes the other live sessions (of every sender) have promised.
    pub fn promised_by_others(&self) -> u64 {
        let Some(dir) = self.path.parent() else { return 0 };
        let Ok(entries) = fs::read_dir(dir) else { return 0 };
        let mut sum = 0u64;
        for e in entries.flatten() {
            let path = e.path();
            if path == self.path {
                continue;
            }
            let Ok(mut f) = File::open(&path) else { continue };
            if !is_locked(&f) {
                continue; // a slot free now, or one a killed session left: promises nothing
            }
            let mut text = String::new();
            let _ = f.read_to_string(&mut text);
            sum = sum.saturating_add(text.trim().parse().unwrap_or(0));
        }
        sum
    }
}

/// A free session slot for the sender whose files go to `into` (None: receiving/ itself), or
/// `None` if all `SESSIONS_MAX` are held.
pub fn session_slot(state_dir: &Path, into: Option<&str>) -> Result<Option<SessionSlot>> {
    let dir = state_dir.join("sessions");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // '-' alone is no host name, so it cannot be a sender's directory.
    let sender = into.unwrap_or("-");
    for k in 0..SESSIONS_MAX {
        let path = dir.join(format!("{sender}.{k}.lock"));
        let file = open_lock_file(&path)?;
        if try_lock(&file).with_context(|| format!("locking {}", path.display()))? {
            let slot = SessionSlot { file, path };
            slot.promise(0);
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// An exclusive OFD lock on the whole file: true if taken, false if another holds it.
fn try_lock(f: &File) -> std::io::Result<bool> {
    let mut l = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own, with a flock struct it reads.
    match unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &mut l) } {
        0 => Ok(true),
        _ => match std::io::Error::last_os_error() {
            e if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => Ok(false),
            e => Err(e),
        },
    }
}

/// Whether some open file description holds a lock on `f` (asked without taking one).
fn is_locked(f: &File) -> bool {
    let mut l = whole_file(libc::F_WRLCK);
    // SAFETY: fcntl on a descriptor we own, with a flock struct it fills in.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_GETLK, &mut l) };
    r == 0 && l.l_type != libc::F_UNLCK as libc::c_short
}

fn whole_file(kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value (start 0, length 0: the whole file).
    let mut l: libc::flock = unsafe { std::mem::zeroed() };
    l.l_type = kind as libc::c_short;
    l.l_whence = libc::SEEK_SET as libc::c_short;
    l
}

/// A lock file, made if missing, never truncated (the agent's holds the holder's pid).
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).with_context(|| format!("opening {}", path.display()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyRunning(pub String);
