//! A peer with a key, talking to `serve` as a hostile client would: protocol 2 frames written
//! straight to its input. Each test holds the receiver to a bound and checks, by what is on disk
//! and what the process holds, that nothing beyond it happened.

mod common;

use std::fs;
use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{pipe_pair, Node};
use pi2pi_agent::paths::{MAX_DEPTH, MAX_PATH_BYTES};
use pi2pi_agent::proto::{read_msg, write_msg, Code, Msg, VERSION};

/// A `serve` session driven frame by frame: its replies arrive on a channel as it sends them.
struct Session {
    child: Child,
    input: ChildStdin,
    replies: mpsc::Receiver<Msg>,
}

impl Session {
    fn start(b: &Node) -> Session {
        let mut child = b.cmd(&["serve"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let (tx, replies) = mpsc::channel();
        std::thread::spawn(move || {
            while let Ok(Some(m)) = read_msg(&mut output) {
                if tx.send(m).is_err() {
                    return;
                }
            }
        });
        write_msg(&mut input, &Msg::Hello { version: VERSION }).unwrap();
        let mut s = Session { child, input, replies };
        assert!(matches!(s.reply(), Msg::Welcome { .. }));
        s
    }

    fn send(&mut self, frames: &[Msg]) {
        let mut buf = Vec::new();
        for f in frames {
            write_msg(&mut buf, f).unwrap();
        }
        self.input.write_all(&buf).unwrap();
        self.input.flush().unwrap();
    }

    fn reply(&mut self) -> Msg {
        self.replies.recv_timeout(Duration::from_secs(60)).expect("serve answered within a minute")
    }

    /// The receiver's resident memory now, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deep path of long names (about 2.5 KB) whose last directory is new for each `n`, so that
/// each offer makes one directory.
fn deep_path(n: u32) -> String {
    let dirs: Vec<String> = (0..9).map(|d| format!("{d}-{}", "x".repeat(240))).collect();
    format!("{}/{n:08}-{}/f", dirs.join("/"), "y".repeat(200))
}

/// Offers of ever new deep directories, each skipped: the receiver's memory stays flat. Before
/// the bound, each directory was remembered for the session (2.5 KB each here; 265 MB after
/// 4,000 longer paths in the report that found it).
#[test]
fn many_new_directories_keep_memory_flat() {
    let (_t, _a, b) = pipe_pair();
    let mut s = Session::start(&b);
    let offer_skip = |from: u32, to: u32, s: &mut Session| {
        for chunk in (from..to).collect::<Vec<_>>().chunks(200) {
            let frames: Vec<Msg> =
                chunk.iter().flat_map(|&i| [Msg::Offer { id: i, path: deep_path(i), size: 1 }, Msg::Skip { id: i }]).collect();
            s.send(&frames);
            // Each offer is accepted, each skip answered (Have: nothing to commit, acknowledged).
            for _ in 0..chunk.len() * 2 {
                match s.reply() {
                    Msg::Accept { .. } | Msg::Have { .. } | Msg::Stored { .. } => {}
                    other => panic!("{other:?}"),
                }
            }
        }
    };
    offer_skip(0, 2_000, &mut s);
    let settled = s.rss_kib();
    offer_skip(2_000, 12_000, &mut s);
    let after = s.rss_kib();
    eprintln!("serve RSS after 2,000 offers of new deep directories: {settled} KiB; after 12,000: {after} KiB");
    assert!(after < settled + 4 * 1024, "serve grew from {settled} KiB to {after} KiB over 10,000 offers of new directories");
}

/// A path past the bounds is refused before anything is made for it.
#[test]
fn paths_too_long_or_too_deep_are_refused_and_make_nothing() {
    let (_t, _a, b) = pipe_pair();
    let deep = format!("{}/f", vec!["d"; MAX_DEPTH + 1].join("/"));
    let long = format!("{}/f", vec!["y".repeat(250); MAX_PATH_BYTES / 250 + 1].join("/"));
    let mut s = Session::start(&b);
    s.send(&[Msg::Offer { id: 1, path: deep, size: 1 }, Msg::Offer { id: 2, path: long, size: 1 }]);
    for id in [1, 2] {
        match s.reply() {
            Msg::Refused { id: i, code: Code::BadPath, .. } if i == id => {}
            other => panic!("offer {id}: {other:?}"),
        }
    }
    assert_eq!(fs::read_dir(b.receiving()).unwrap().count(), 0, "a refused path made directories");
}

/// A name the drive cannot hold (here 300 bytes on a byte-counting filesystem, though 150 UTF-16
/// units is fine for FAT) is refused at once, never accepted and then failed at rename, which
/// the sender would retry for ever.
#[test]
fn a_name_the_drive_cannot_store_is_refused_not_retried() {
    let (_t, _a, b) = pipe_pair();
    let name_max = rustix::fs::statvfs(b.receiving()).unwrap().f_namemax;
    let name = format!("{}.txt", "é".repeat(name_max as usize / 2 + 10));
    assert!(name.encode_utf16().count() <= 255 && name.len() as u64 > name_max, "{} bytes", name.len());
    let mut s = Session::start(&b);
    s.send(&[Msg::Offer { id: 1, path: format!("d/{name}"), size: 3 }]);
    match s.reply() {
        Msg::Refused { id: 1, code: Code::BadPath, message } => assert!(message.contains("this drive takes"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read_dir(b.receiving()).unwrap().count(), 0);
}

/// FAT ignores case: `.PI2PI-X.PART` is a temporary there, and is refused like one.
#[test]
fn reserved_names_are_refused_whatever_their_case() {
    let (_t, _a, b) = pipe_pair();
    let mut s = Session::start(&b);
    for (id, path) in [(1, "d/.pi2pi-0011.part"), (2, "d/.PI2PI-0011.PART"), (3, "d/.Pi2Pi-0011.Part")] {
        s.send(&[Msg::Offer { id, path: path.into(), size: 1 }]);
        match s.reply() {
            Msg::Refused { id: i, code: Code::BadPath, .. } if i == id => {}
            other => panic!("{path}: {other:?}"),
        }
    }
}

/// A bad first frame ends the session with a short message: what serve writes to stderr goes
/// back to the peer through sshd, and was the whole frame (1 MiB) before.
#[test]
fn a_huge_bad_first_frame_is_not_echoed() {
    let (_t, _a, b) = pipe_pair();
    let mut child = b.cmd(&["serve"]).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut frame = Vec::new();
    write_msg(&mut frame, &Msg::Failed { id: 0, code: Code::Protocol, message: "x".repeat((1 << 20) - 64) }).unwrap();
    let _ = child.stdin.take().unwrap().write_all(&frame);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected Hello"), "{}", &err[..err.len().min(300)]);
    assert!(out.stderr.len() < 2048, "serve wrote {} bytes to stderr for one bad frame", out.stderr.len());
}
