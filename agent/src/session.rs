//! The sender's side of one connection to a peer's `serve`: handshake, then one file at a time.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::Peer;
use crate::proto::{read_msg, write_data, write_msg, Code, Msg, CHUNK, VERSION};
use crate::transport::{self, Link};

pub struct Session {
    link: Link,
    r: BufReader<ChildStdout>,
    w: BufWriter<ChildStdin>,
    pub peer_node: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable at the peer; `resumed_from` bytes were already there from an interrupted attempt.
    Stored { resumed_from: u64 },
    /// The peer already had this exact content under this path.
    Had,
    /// Never acceptable as it is (bad name, too large): don't retry until the file changes.
    Refused(String),
    /// Try again later (disk full, drive not mounted, changed during transfer).
    Failed(Code, String),
}

impl Session {
    pub fn connect(peer: &Peer) -> Result<Session> {
        let mut link = transport::spawn(&transport::argv(peer), &peer.name)?;
        let r = BufReader::with_capacity(64 * 1024, link.stdout.take().expect("piped"));
        let w = BufWriter::with_capacity(CHUNK + 64, link.stdin.take().expect("piped"));
        let mut s = Session { link, r, w, peer_node: String::new() };
        let hello = s.handshake();
        match hello {
            Ok(node) => {
                s.peer_node = node;
                Ok(s)
            }
            Err(e) => {
                let Session { link, r, w, .. } = s;
                drop((r, w));
                // Give the ssh process a moment to print why it failed before we read its stderr.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let why = link.last_stderr();
                link.close();
                if why.is_empty() {
                    Err(e.context(format!("cannot reach {}", peer.name)))
                } else {
                    Err(anyhow!("cannot reach {}: {why}", peer.name))
                }
            }
        }
    }

    fn handshake(&mut self) -> Result<String> {
        self.send(&Msg::Hello { version: VERSION })?;
        self.w.flush()?;
        match self.recv()? {
            Msg::Welcome { version: VERSION, node } => Ok(node),
            Msg::Failed { message, .. } => bail!("peer refused the session: {message}"),
            m => bail!("unexpected handshake reply {m:?}"),
        }
    }

    fn send(&mut self, m: &Msg) -> Result<()> {
        write_msg(&mut self.w, m).context("writing to peer")
    }

    fn recv(&mut self) -> Result<Msg> {
        read_msg(&mut self.r).context("reading from peer")?.ok_or_else(|| anyhow!("peer closed the connection"))
    }

    /// Offers one file and, if asked, streams it from the offset the peer already holds.
    /// `Err` means the session is broken (link cut, peer died): reconnect and offer again.
    pub fn deliver(&mut self, file: &Path, rel: &str, size: u64, sha256: [u8; 32]) -> Result<Outcome> {
        self.send(&Msg::Offer { path: rel.to_string(), size, sha256 })?;
        self.w.flush()?;
        let offset = match self.recv()? {
            Msg::Resume { offset } if offset <= size => offset,
            Msg::Have => return Ok(Outcome::Had),
            Msg::Refused { message, .. } => return Ok(Outcome::Refused(message)),
            Msg::Failed { code, message } => return Ok(Outcome::Failed(code, message)),
            m => bail!("unexpected reply to offer: {m:?}"),
        };
        let mut f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut left = size - offset;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = f.read(&mut buf[..want]).with_context(|| format!("reading {}", file.display()))?;
            if n == 0 {
                break; // shrank under us: the peer reports the short transfer and drops its copy
            }
            write_data(&mut self.w, &buf[..n]).context("writing to peer")?;
            left -= n as u64;
        }
        self.send(&Msg::Done)?;
        self.w.flush()?;
        match self.recv()? {
            Msg::Stored => Ok(Outcome::Stored { resumed_from: offset }),
            Msg::Refused { message, .. } => Ok(Outcome::Refused(message)),
            Msg::Failed { code, message } => Ok(Outcome::Failed(code, message)),
            m => bail!("unexpected reply after data: {m:?}"),
        }
    }

    pub fn last_stderr(&self) -> String {
        self.link.last_stderr()
    }

    pub fn close(mut self) {
        let _ = self.send(&Msg::Bye);
        let _ = self.w.flush();
        let Session { link, r, w, .. } = self;
        drop((r, w));
        link.close();
    }
}
