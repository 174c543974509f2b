//! The receiver's group commit: verified temporaries become durable final files in two syncs
//! per group, on a thread of their own, and only then are they acknowledged.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use crate::proto::{write_msg, Msg};
use crate::reply::{io_failure, lock, Out};

/// A verified file waiting for the group commit.
pub struct Pending {
    pub id: u32,
    pub path: String,
    pub dir: Arc<OwnedFd>,
    pub name: String,
    /// `Some(temp)`: rename it to `name`, then answer `Stored`. `None`: the final file already was
    /// the content (`Skip`); answer `Have` once it is known to be on disk.
    pub temp: Option<Temp>,
}

/// A verified temporary, still open and locked (see `serve::claim_temp`): no other offer or
/// session can write to it until it is renamed into place and this is dropped.
pub struct Temp {
    pub name: String,
    pub file: File,
}

impl Temp {
    /// Renames the temporary to `final_name`, after proving that the name still leads to the
    /// file this session wrote and verified.
    fn rename_into_place(&self, dir: &OwnedFd, final_name: &str) -> io::Result<()> {
        let ours = rustix::fs::fstat(&self.file)?;
        let there = rustix::fs::statat(dir, self.name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
        if (there.st_dev, there.st_ino) != (ours.st_dev, ours.st_ino) {
            return Err(io::Error::other("the temporary was replaced after it was verified"));
        }
        Ok(rustix::fs::renameat(dir, self.name.as_str(), dir, final_name)?)
    }
}

/// Makes a group durable and answers for it:
/// 1. `syncfs`: every temporary's data and inode reach the drive;
/// 2. `fsync` of a directory: a cache flush, so the device cannot persist a rename before the
///    data it names (FAT's fsync issues the flush; `syncfs` alone may not);
/// 3. the renames; 4. `syncfs` and one more flush: the renames (and any `Have` file) are on disk.
///
/// One group costs two syncs whatever its size, where per-file fsyncs cost two per file.
pub fn commit<W: Write>(group: Vec<Pending>, out: &Out<W>) -> Result<()> {
    let Some(first) = group.first() else { return Ok(()) };
    let started = Instant::now();
    let any = Arc::clone(&first.dir);
    let flush = || -> rustix::io::Result<()> {
        rustix::fs::syncfs(&*any)?;
        rustix::fs::fsync(&*any)
    };
    let renames = group.iter().any(|p| p.temp.is_some());
    let synced = if renames { flush() } else { Ok(()) };
    let mut answers: Vec<Msg> = group
        .iter()
        .map(|p| match (synced, &p.temp) {
            (Err(e), _) => io_failure(p.id, "cannot sync", &p.path, &e.into()),
            (Ok(()), Some(temp)) => match temp.rename_into_place(&p.dir, &p.name) {
                Ok(()) => Msg::Stored { id: p.id },
                Err(e) => io_failure(p.id, "cannot rename into place", &p.path, &e),
            },
            (Ok(()), None) => Msg::Have { id: p.id },
        })
        .collect();
    if let Err(e) = flush() {
        for (p, a) in group.iter().zip(&mut answers) {
            if matches!(a, Msg::Stored { .. } | Msg::Have { .. }) {
                *a = io_failure(p.id, "cannot sync", &p.path, &e.into());
            }
        }
    }
    tracing::debug!(files = group.len(), ms = started.elapsed().as_millis() as u64, "group committed");
    let mut w = lock(out)?;
    for (p, m) in group.iter().zip(&answers) {
        match m {
            Msg::Failed { message, .. } => tracing::warn!(path = p.path, "{message}"),
            _ => tracing::debug!(path = p.path, "stored"),
        }
        write_msg(&mut *w, m)?;
    }
    w.flush()?;
    Ok(())
}
