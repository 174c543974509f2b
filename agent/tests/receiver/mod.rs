//! One `serve` session run in-process on frames from a hostile or broken sender, and what must
//! hold whatever the frames were. Shared by `tests/receiver_states.rs` (stable, seeded, bounded
//! in time, run in CI) and `fuzz/fuzz_targets/receiver.rs` (cargo-fuzz, nightly).

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use pi2pi_agent::config::Config;
use pi2pi_agent::proto::{read_msg, write_msg, Hash, Msg, VERSION};
use sha2::{Digest, Sha256};

/// A receiver's drive and state in a directory of their own, beside a file it must never touch.
pub struct Receiver {
    pub root: PathBuf,
    cfg: Config,
}

impl Receiver {
    pub fn new(root: &Path) -> Receiver {
        let drive = root.join("drive");
        fs::create_dir_all(drive.join("receiving")).unwrap();
        fs::write(root.join("outside.txt"), b"not the receiver's").unwrap();
        let text = format!(
            "node = \"rpb\"\n[drive]\nlabel = \"PI2PI\"\nmount_point = \"{}\"\nrequire_mount = false\n[state]\ndir = \"{}\"\n",
            drive.display(),
            root.join("state").display()
        );
        let cfg = Config::parse(&root.join("agent.toml"), &text).unwrap();
        Receiver { root: root.to_path_buf(), cfg }
    }

    pub fn receiving(&self) -> PathBuf {
        self.cfg.drive.receiving.clone()
    }

    /// Runs one session on `input` (the bytes after Hello), returning the replies after Welcome.
    pub fn session(&self, input: &[u8]) -> Vec<Msg> {
        let mut bytes = Vec::new();
        write_msg(&mut bytes, &Msg::Hello { version: VERSION }).unwrap();
        bytes.extend_from_slice(input);
        let mut out = Vec::new();
        // An error is a session the receiver ended (a protocol error): allowed; a panic is not.
        let _ = pi2pi_agent::serve::serve(&self.cfg, None, Cursor::new(bytes), &mut out);
        let mut r = &out[..];
        let mut replies = Vec::new();
        while let Ok(Some(m)) = read_msg(&mut r) {
            replies.push(m);
        }
        replies
    }

    /// What must hold after any session: nothing outside receiving/ was written, and every
    /// `Stored` is for the bytes on disk: the last file stored under a path hashes to what its
    /// sender said in `Done`.
    pub fn check(&self, sent: &[u8], replies: &[Msg]) {
        assert_eq!(fs::read(self.root.join("outside.txt")).unwrap(), b"not the receiver's");
        let outside: Vec<String> =
            walk(&self.root).into_iter().filter(|p| !p.starts_with("drive/receiving/") && !p.starts_with("state/sessions/")).collect();
        assert_eq!(outside, ["outside.txt"], "written outside receiving/");
        let mut frames = Vec::new();
        let mut r = sent;
        while let Ok(Some(m)) = read_msg(&mut r) {
            frames.push(m);
        }
        let path_of = |id: u32| frames.iter().find_map(|m| matches!(m, Msg::Offer { id: i, .. } if *i == id).then(|| m.clone()));
        let done_of =
            |id: u32| frames.iter().find_map(|m| if let Msg::Done { id: i, sha256 } = m { (*i == id).then_some(*sha256) } else { None });
        let mut last: BTreeMap<String, Hash> = BTreeMap::new();
        for m in replies {
            if let Msg::Stored { id } = m {
                let Some(Msg::Offer { path, .. }) = path_of(*id) else { panic!("Stored for {id}, never offered") };
                let sha = done_of(*id).unwrap_or_else(|| panic!("Stored for {id}, never done"));
                last.insert(path, sha);
            }
        }
        for (path, sha) in last {
            let disk = fs::read(self.receiving().join(&path)).unwrap_or_else(|e| panic!("{path}: Stored, but {e}"));
            assert_eq!(<[u8; 32]>::from(Sha256::digest(&disk)), sha, "{path}: Stored, but the drive holds other bytes");
        }
    }
}

/// Every file below `root`, relative, with '/'.
fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                dirs.push(p);
            } else {
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}
