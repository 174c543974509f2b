//! One sender at a time: `run` and `sync` both hold an exclusive lock in the state directory,
//! so a cron run that overlaps a slow one (or the daemon) leaves at once instead of racing it.

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
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
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

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AlreadyRunning(pub String);
