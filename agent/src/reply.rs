//! The receiver's answers to the sender: one locked output shared by the session and the commit
//! thread, and the `Setback` a failed offer or transfer ends in.

use std::io::{self, BufWriter, Write};
use std::sync::{Mutex, MutexGuard};

use anyhow::{anyhow, Result};

use crate::fsutil;
use crate::proto::{write_msg, Code, Msg};

pub type Out<W> = Mutex<BufWriter<W>>;

/// Why an offer or transfer did not succeed: an answer the sender gets (that file fails, the
/// session goes on), or a broken session (the sender reconnects).
pub enum Setback {
    Answer(Msg),
    Broken(anyhow::Error),
}

impl From<io::Error> for Setback {
    fn from(e: io::Error) -> Setback {
        Setback::Broken(e.into())
    }
}

pub fn refused(id: u32, code: Code, message: impl Into<String>) -> Setback {
    Setback::Answer(Msg::Refused { id, code, message: message.into() })
}
pub fn failed(id: u32, code: Code, message: impl Into<String>) -> Setback {
    Setback::Answer(Msg::Failed { id, code, message: message.into() })
}
pub fn io_failed(id: u32, what: &str, path: &str, e: io::Error) -> Setback {
    Setback::Answer(io_failure(id, what, path, &e))
}

/// The `Failed` for an I/O error: `NoSpace` when the drive is full, so the sender backs off.
pub fn io_failure(id: u32, what: &str, path: &str, e: &io::Error) -> Msg {
    let code = if fsutil::is_no_space(e) { Code::NoSpace } else { Code::Io };
    let what = if code == Code::NoSpace { "receiver's drive is full" } else { what };
    Msg::Failed { id, code, message: format!("{what}: {path}: {e}") }
}

pub fn lock<W: Write>(out: &Out<W>) -> Result<MutexGuard<'_, BufWriter<W>>> {
    out.lock().map_err(|_| anyhow!("output lock poisoned"))
}

/// Writes a message to the sender, and flushes if asked to.
pub fn emit<W: Write>(out: &Out<W>, m: &Msg, flush: bool) -> Result<()> {
    let mut w = lock(out)?;
    write_msg(&mut *w, m)?;
    if flush {
        w.flush()?;
    }
    Ok(())
}

/// Sends a refusal or failure (logged here, where the receiver's operator can see it).
pub fn answer<W: Write>(out: &Out<W>, path: &str, m: Msg) -> Result<()> {
    if let Msg::Refused { message, .. } | Msg::Failed { message, .. } = &m {
        tracing::warn!(path, "{message}");
    }
    emit(out, &m, true)
}
