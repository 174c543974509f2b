//! What has been delivered to a peer, by path, size, mtime and SHA-256, kept in an append-only
//! journal (one JSON object a line) in the state directory on the SD card.
//!
//! Append-only so that a power cut can at worst tear the last line, which is ignored on load; the
//! journal is rewritten (tmp + fsync + rename) when it has grown to several times its live size.
//! It is synced at the end of every batch and at most a second after an entry, not per entry: a
//! lost entry only means the file is offered again, and the peer, which has it, says `Have`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Entry {
    /// The peer acknowledged this content as durable under this path.
    Delivered { path: String, size: u64, mtime_ns: i64, sha256: String },
    /// This version of the file can never be sent (bad FAT32 name, too large): don't retry it
    /// until it changes.
    Skipped { path: String, size: u64, mtime_ns: i64, reason: String },
}

impl Entry {
    pub fn path(&self) -> &str {
        match self {
            Entry::Delivered { path, .. } | Entry::Skipped { path, .. } => path,
        }
    }
}

pub struct Journal {
    path: PathBuf,
    file: File,
    live: BTreeMap<String, Entry>,
    lines: usize,
    /// When the appended entries were last synced; `None`: nothing unsynced.
    unsynced_since: Option<Instant>,
}

const SYNC_EVERY: Duration = Duration::from_secs(1);

impl Journal {
    pub fn open(dir: &Path, peer: &str) -> Result<Journal> {
        fs::create_dir_all(dir).with_context(|| format!("creating state directory {}", dir.display()))?;
        let path = dir.join(format!("{peer}.journal"));
        let mut live = BTreeMap::new();
        let mut lines = 0;
        let mut torn = false;
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                let line = line.with_context(|| format!("reading {}", path.display()))?;
                // A torn final line (power cut mid-append) does not parse: its delivery was never
                // counted, so the file is offered again and the receiver answers `Have`.
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => {
                        live.insert(e.path().to_string(), e);
                        lines += 1;
                    }
                    Err(_) => torn = true,
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).with_context(|| format!("opening {}", path.display()))?;
        let mut j = Journal { path, file, live, lines, unsynced_since: None };
        // Rewrite a torn journal too, or the next append would be glued to the torn line.
        if torn || j.lines > 2 * j.live.len() + 64 {
            j.compact()?;
        }
        Ok(j)
    }

    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.live.get(path)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.live.values()
    }

    pub fn record(&mut self, e: Entry) -> Result<()> {
        let mut line = serde_json::to_string(&e)?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).with_context(|| format!("appending to {}", self.path.display()))?;
        self.live.insert(e.path().to_string(), e);
        self.lines += 1;
        if self.unsynced_since.get_or_insert_with(Instant::now).elapsed() >= SYNC_EVERY {
            self.sync()?;
        }
        Ok(())
    }

    pub fn sync(&mut self) -> Result<()> {
        if self.unsynced_since.take().is_some() {
            self.file.sync_data().with_context(|| format!("syncing {}", self.path.display()))?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        for e in self.live.values() {
            writeln!(f, "{}", serde_json::to_string(e)?)?;
        }
        f.sync_all()?;
        fs::rename(&tmp, &self.path)?;
        crate::fsutil::sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = self.live.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivered(p: &str, n: u64) -> Entry {
        Entry::Delivered { path: p.into(), size: n, mtime_ns: 1, sha256: "ab".into() }
    }

    #[test]
    fn survives_reopen_and_ignores_a_torn_tail() {
        let t = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(t.path(), "rpb").unwrap();
            j.record(delivered("a", 1)).unwrap();
            j.record(delivered("b", 2)).unwrap();
            j.record(delivered("a", 3)).unwrap();
        }
        // Simulate a power cut in the middle of an append.
        let mut f = OpenOptions::new().append(true).open(t.path().join("rpb.journal")).unwrap();
        f.write_all(br#"{"kind":"delivered","path":"c","si"#).unwrap();
        let j = Journal::open(t.path(), "rpb").unwrap();
        assert_eq!(j.get("a"), Some(&delivered("a", 3)));
        assert_eq!(j.get("b"), Some(&delivered("b", 2)));
        assert_eq!(j.get("c"), None);
    }

    #[test]
    fn compacts_when_mostly_superseded() {
        let t = tempfile::tempdir().unwrap();
        {
            let mut j = Journal::open(t.path(), "p").unwrap();
            for i in 0..200 {
                j.record(delivered("same", i)).unwrap();
            }
        }
        let j = Journal::open(t.path(), "p").unwrap();
        assert_eq!(j.get("same"), Some(&delivered("same", 199)));
        let text = fs::read_to_string(t.path().join("p.journal")).unwrap();
        assert_eq!(text.lines().count(), 1);
    }
}
