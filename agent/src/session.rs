//! The sender's side of one connection to a peer's `serve`: handshake, then batches of files with
//! a window of offers in flight, each file hashed as it is streamed (read once).

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{ChildStdin, ChildStdout};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::Peer;
use crate::fsutil;
use crate::proto::{read_msg, write_data, write_msg, Code, Hash, Msg, CHUNK, VERSION, WINDOW};
use crate::transport::{self, Link};

pub struct Session {
    link: Link,
    r: BufReader<ChildStdout>,
    w: BufWriter<ChildStdin>,
    pub peer_node: String,
    next_id: u32,
    /// When the last batch ended: a session idle too long has been closed by the peer.
    pub used: Instant,
}

/// One file to deliver, as the scan saw it.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    pub path: &'a Path,
    pub rel: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    /// Its hash, when the caller already read it.
    pub sha256: Option<Hash>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Durable at the peer; `resumed_from` bytes were already there from an interrupted attempt.
    Stored { resumed_from: u64, sha256: Hash },
    /// The peer already had this exact content under this path.
    Had { sha256: Hash },
    /// Never acceptable as it is (bad name, too large): don't retry until the file changes.
    Refused(String),
    /// Try again later (disk full, drive not mounted, checksum mismatch).
    Failed(Code, String),
    /// The file changed or could not be read while it was being sent: look again once it settles.
    Changed(String),
}

/// A file streamed (or skipped as already there) whose final answer from the peer is due.
struct Awaiting {
    resumed_from: u64,
    sha256: Hash,
}

/// What happened to a file on our side of the link.
enum Sent {
    Awaiting(Awaiting),
    Changed(String),
}

impl Session {
    pub fn connect(peer: &Peer) -> Result<Session> {
        let mut link = transport::spawn(&transport::argv(peer), &peer.name)?;
        let r = BufReader::with_capacity(64 * 1024, link.stdout.take().expect("piped"));
        // Smaller than a chunk, so data frames go from our buffer to the pipe without a copy.
        let w = BufWriter::with_capacity(64 * 1024, link.stdin.take().expect("piped"));
        let mut s = Session { link, r, w, peer_node: String::new(), next_id: 1, used: Instant::now() };
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

    /// Delivers `jobs` in order, calling `done(index, outcome)` once for each file that reaches
    /// an outcome; `done` returning false stops the batch (peer-wide trouble), and files not yet
    /// streamed then get no outcome. `Err` means the link is broken: reconnect and offer again.
    pub fn deliver(&mut self, jobs: &[Job], mut done: impl FnMut(usize, Outcome) -> bool) -> Result<()> {
        let base = self.next_id;
        let n = u32::try_from(jobs.len()).context("too many files in one batch")?;
        self.next_id = base.checked_add(n).ok_or_else(|| anyhow!("offer ids exhausted; reconnect"))?;
        let index = |id: u32| id.checked_sub(base).map(|i| i as usize).filter(|&i| i < jobs.len());
        // Offers answered but not yet acted on, and files whose final answer is due.
        let mut answers: HashMap<usize, Msg> = HashMap::new();
        let mut awaiting: HashMap<usize, Awaiting> = HashMap::new();
        let mut offered = 0;
        let mut go_on = true;

        for i in 0..jobs.len() {
            if !go_on {
                break;
            }
            while offered < jobs.len() && offered <= i + WINDOW {
                let j = &jobs[offered];
                self.send(&Msg::Offer { id: base + offered as u32, path: j.rel.to_string(), size: j.size })?;
                offered += 1;
            }
            // Read until the answer to offer `i` is in, handling final answers on the way.
            while !answers.contains_key(&i) {
                self.w.flush().context("writing to peer")?;
                let m = self.recv()?;
                let (Msg::Accept { id, .. } | Msg::Stored { id } | Msg::Have { id } | Msg::Refused { id, .. } | Msg::Failed { id, .. }) =
                    &m
                else {
                    bail!("unexpected message from peer: {m:?}");
                };
                // Answers to offers of an earlier batch that was cut short: nothing to do.
                let Some(k) = index(*id) else { continue };
                // A final answer for a file we streamed, or the answer to an offer.
                match awaiting.remove(&k) {
                    Some(a) if !matches!(m, Msg::Accept { .. }) => go_on &= done(k, final_outcome(a, m)),
                    _ => {
                        answers.insert(k, m);
                    }
                }
            }
            if !go_on {
                break;
            }
            let id = base + i as u32;
            match answers.remove(&i).expect("just read") {
                Msg::Accept { have, have_sha256, existing, .. } => match self.stream(id, &jobs[i], have, have_sha256, existing)? {
                    Sent::Awaiting(a) => {
                        awaiting.insert(i, a);
                    }
                    Sent::Changed(why) => go_on &= done(i, Outcome::Changed(why)),
                },
                Msg::Refused { message, .. } => go_on &= done(i, Outcome::Refused(message)),
                Msg::Failed { code, message, .. } => go_on &= done(i, Outcome::Failed(code, message)),
                m => bail!("unexpected answer to an offer: {m:?}"),
            }
        }
        self.w.flush().context("writing to peer")?;
        while !awaiting.is_empty() {
            let m = self.recv()?;
            let (Msg::Stored { id } | Msg::Have { id } | Msg::Refused { id, .. } | Msg::Failed { id, .. }) = &m else {
                continue; // answers to offers this batch no longer wants
            };
            if let Some((k, a)) = index(*id).and_then(|k| Some((k, awaiting.remove(&k)?))) {
                done(k, final_outcome(a, m));
            }
        }
        Ok(())
    }

    /// Sends one accepted file: `Skip` if the peer already has it, else `Start`, the data from
    /// the peer's prefix if that prefix is ours, and `Done` with the hash of what was read.
    fn stream(&mut self, id: u32, job: &Job, have: u64, have_sha256: Hash, existing: Option<Hash>) -> Result<Sent> {
        let changed = |why: String| Ok(Sent::Changed(why));
        let mut f = match File::open(job.path) {
            Ok(f) => f,
            Err(e) => return changed(format!("cannot open: {e}")),
        };
        let stat = |f: &File| f.metadata().map(|m| (m.len(), fsutil::mtime_ns(&m), fsutil::ctime_ns(&m)));
        let before = match stat(&f) {
            Ok(s) if s.0 == job.size && s.1 == job.mtime_ns => s,
            Ok(_) => return changed("changed since it was scanned".into()),
            Err(e) => return changed(format!("cannot stat: {e}")),
        };
        if let Some(theirs) = existing {
            let ours = match job.sha256 {
                Some(h) => h,
                None => match fsutil::hash_reader(&mut f, u64::MAX) {
                    Ok((h, n)) if n == job.size => h.finalize().into(),
                    Ok(_) => return changed("changed while it was read".into()),
                    Err(e) => return changed(format!("cannot read: {e}")),
                },
            };
            if ours == theirs && stat(&f).is_ok_and(|s| s == before) {
                self.send(&Msg::Skip { id })?;
                return Ok(Sent::Awaiting(Awaiting { resumed_from: job.size, sha256: ours }));
            }
        }
        // Resume only from a prefix that is ours: the peer's temporary may be of an older version.
        let mut from = 0;
        let mut hasher = Sha256::new();
        if have > 0 && have <= job.size {
            f.seek(SeekFrom::Start(0))?;
            match fsutil::hash_reader(&mut f, have) {
                Ok((h, n)) if n == have && h.clone().finalize().as_slice() == have_sha256 => {
                    from = have;
                    hasher = h;
                }
                Ok(_) => {}
                Err(e) => return changed(format!("cannot read: {e}")),
            }
        }
        f.seek(SeekFrom::Start(from))?;
        self.send(&Msg::Start { id, from })?;
        let mut left = job.size - from;
        let mut buf = vec![0u8; CHUNK];
        while left > 0 {
            let want = buf.len().min(left as usize);
            let n = match f.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    self.send(&Msg::Abort { id })?;
                    return changed(format!("cannot read: {e}"));
                }
            };
            hasher.update(&buf[..n]);
            write_data(&mut self.w, &buf[..n]).context("writing to peer")?;
            left -= n as u64;
        }
        // Any write while we read (it changes ctime) or a shrink: what we sent is no version.
        if left > 0 || stat(&f).ok() != Some(before) {
            self.send(&Msg::Abort { id })?;
            return changed("changed while it was sent".into());
        }
        let sha256 = hasher.finalize().into();
        self.send(&Msg::Done { id, sha256 })?;
        Ok(Sent::Awaiting(Awaiting { resumed_from: from, sha256 }))
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

/// The outcome of a file from the peer's final answer to it.
fn final_outcome(Awaiting { resumed_from, sha256 }: Awaiting, m: Msg) -> Outcome {
    match m {
        Msg::Stored { .. } => Outcome::Stored { resumed_from, sha256 },
        Msg::Have { .. } => Outcome::Had { sha256 },
        Msg::Refused { message, .. } => Outcome::Refused(message),
        Msg::Failed { code, message, .. } => Outcome::Failed(code, message),
        m => unreachable!("not a final answer: {m:?}"),
    }
}
