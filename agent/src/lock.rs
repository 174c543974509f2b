//! One sender at a time: `run` and `sync` both hold an exclusive lock in the state directory,
//! so a cron run that overlaps a slow one (or the daemon) leaves at once instead of racing it.
//! And few receivers per sender: each `serve` session holds one of `SESSIONS_MAX` slots.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

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

/// A free session slot for the sender whose files go to `into` (None: receiving/ itself), or
/// `None` if all `SESSIONS_MAX` are held. Slots are flocks, so a killed session frees its own.
pub fn session_slot(state_dir: &Path, into: Option<&str>) -> Result<Option<Lock>> {
    let dir = state_dir.join("sessions");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // '-' alone is no host name, so it cannot be a sender's directory.
    let sender = into.unwrap_or("-");
    for k in 0..SESSIONS_MAX {
        let path = dir.join(format!("{sender}.{k}.lock"));
        let f = open_lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => return Ok(Some(Lock { _held: f })),
            Err(fs::TryLockError::WouldBlock) => continue,
            Err(fs::TryLockError::Error(e)) => return Err(e).with_context(|| format!("locking {}", path.display())),
        }
    }
    Ok(None)
}

/// A lock file, made if missing, never truncated (the agent's holds the holder's pid).
fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).with_context(|| format!("opening {}", path.display()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyRunning(pub String);
