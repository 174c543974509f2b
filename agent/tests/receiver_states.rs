//! The receiver's state machine under random sessions: offers, starts, data, skips, aborts and
//! dones in any order, for ids offered or not, with right and wrong hashes, over files and
//! temporaries already on the drive; seeded, bounded in count and time, run in CI. The stable
//! cousin of `fuzz/fuzz_targets/receiver.rs`; the properties are `receiver::Receiver::check`.

mod receiver;

use std::time::{Duration, Instant};

use pi2pi_agent::proto::{write_msg, Msg};
use receiver::Receiver;
use sha2::{Digest, Sha256};

/// Paths a sender offers; the last ones a receiver must refuse.
const PATHS: &[&str] = &["a", "d/b", "d/e/f", "A", "d", ".pi2pi-0.part", "../x", "d/.PI2PI-1.PART", "con"];
const GOOD_PATHS: usize = 4;
const SESSIONS: usize = 3_000;
const TIME: Duration = Duration::from_secs(30);

#[test]
fn random_sessions_never_escape_panic_or_store_bytes_not_on_disk() {
    let seed = std::env::var("PI2PI_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();
    let (mut sessions, mut stored) = (0, 0);
    while sessions < SESSIONS && started.elapsed() < TIME {
        let t = tempfile::tempdir().unwrap();
        let r = Receiver::new(t.path());
        plant(&mut rng, &r);
        // Two sessions on one drive: the second meets what the first left.
        for _ in 0..2 {
            let input = session(&mut rng);
            let replies = r.session(&input);
            r.check(&input, &replies);
            stored += replies.iter().filter(|m| matches!(m, Msg::Stored { .. })).count();
            sessions += 1;
        }
    }
    eprintln!("{sessions} random sessions (seed {seed:#x}) in {} ms, {stored} files stored", started.elapsed().as_millis());
    assert!(stored > sessions / 5, "the generator hardly gets a file through ({stored} in {sessions} sessions)");
}

/// Files and kept prefixes already on the drive.
fn plant(rng: &mut fastrand::Rng, r: &Receiver) {
    let recv = r.receiving();
    std::fs::create_dir_all(recv.join("d")).unwrap();
    for p in ["a", "d/b"] {
        if rng.f64() < 0.5 {
            std::fs::write(recv.join(p), content(rng)).unwrap();
        }
        if rng.f64() < 0.5 {
            let (dir, name) = p.rsplit_once('/').unwrap_or(("", p));
            std::fs::write(recv.join(dir).join(pi2pi_agent::serve::temp_name(name)), content(rng)).unwrap();
        }
    }
}

fn content(rng: &mut fastrand::Rng) -> Vec<u8> {
    (0..rng.usize(0..6)).map(|_| rng.u8(b'a'..b'e')).collect()
}

/// One session's frames: mostly what a sender would send, with its mistakes and a hostile
/// sender's inventions mixed in.
fn session(rng: &mut fastrand::Rng) -> Vec<u8> {
    let mut frames = Vec::new();
    let mut offered: Vec<(u32, u64)> = Vec::new();
    for id in 1..rng.u32(2..12) {
        match rng.usize(0..100) {
            0..=44 => {
                let size = rng.u64(0..6);
                let path = if rng.f64() < 0.85 { PATHS[rng.usize(0..GOOD_PATHS)] } else { PATHS[rng.usize(0..PATHS.len())] };
                frames.push(Msg::Offer { id, path: path.into(), size });
                offered.push((id, size));
            }
            // In offer order, as a sender goes; now and then one passed over or out of order.
            45..=92 if !offered.is_empty() => {
                let at = if rng.f64() < 0.85 { 0 } else { rng.usize(0..offered.len()) };
                let (id, size) = offered.remove(at);
                transfer(rng, &mut frames, id, size);
            }
            93..=95 => frames.push(Msg::Skip { id: rng.u32(0..id + 1) }),
            96..=99 => frames.push(junk(rng, id)),
            _ => {}
        }
    }
    for (id, size) in offered {
        if rng.f64() < 0.8 {
            transfer(rng, &mut frames, id, size);
        }
    }
    if rng.f64() < 0.7 {
        frames.push(Msg::Bye);
    }
    let mut bytes = Vec::new();
    for f in &frames {
        write_msg(&mut bytes, f).unwrap();
    }
    bytes
}

/// Start, data and Done for an offer: usually right, sometimes short, long, wrongly hashed,
/// aborted or skipped.
fn transfer(rng: &mut fastrand::Rng, frames: &mut Vec<Msg>, id: u32, size: u64) {
    if rng.f64() < 0.15 {
        frames.push(Msg::Skip { id });
        return;
    }
    let from = if rng.f64() < 0.8 { 0 } else { rng.u64(0..4) };
    frames.push(Msg::Start { id, from });
    let len = match rng.usize(0..10) {
        0 => size.saturating_sub(1),
        1 => size + 1,
        _ => size.saturating_sub(from),
    };
    let data: Vec<u8> = (0..len).map(|_| rng.u8(b'a'..b'e')).collect();
    for chunk in data.chunks(rng.usize(1..4)) {
        frames.push(Msg::Data(chunk.to_vec()));
    }
    match rng.usize(0..10) {
        0 => frames.push(Msg::Abort { id }),
        1 => frames.push(Msg::Done { id, sha256: [0; 32] }),
        _ => frames.push(Msg::Done { id, sha256: Sha256::digest(&data).into() }),
    }
}

/// A frame a sender never sends at this point.
fn junk(rng: &mut fastrand::Rng, id: u32) -> Msg {
    match rng.usize(0..5) {
        0 => Msg::Data(vec![b'z'; rng.usize(0..3)]),
        1 => Msg::Done { id, sha256: [1; 32] },
        2 => Msg::Stored { id },
        3 => Msg::Hello { version: 2 },
        _ => Msg::Start { id: id + 100, from: 0 },
    }
}
