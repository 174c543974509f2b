//! The engine's times on a clock the test moves (`engine::Clock::manual`): quiescence, the
//! peer-wide backoff and one held file's backoff, each checked to the second without sleeping.
//! The peer is a real `serve` over a pipe.

mod common;

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use common::{pipe_pair, write_file, Node};
use pi2pi_agent::config::Config;
use pi2pi_agent::engine::{Clock, Engine, PassReport};
use pi2pi_agent::status::Mode;

const S: fn(u64) -> Duration = Duration::from_secs;

/// The sender's config with `[sync]` set as given (the fixtures' `[sync]` replaced).
fn with_sync(n: &Node, sync: &str) {
    let text = fs::read_to_string(&n.config).unwrap();
    let start = text.find("[sync]").unwrap();
    let end = text[start..].find("[[peer]]").map_or(text.len(), |i| start + i);
    fs::write(&n.config, format!("{}[sync]\n{sync}\n{}", &text[..start], &text[end..])).unwrap();
}

fn engine(n: &Node, clock: &Clock) -> Engine {
    Engine::with_clock(Config::load(&n.config).unwrap(), Mode::Once, clock.clone()).unwrap()
}

fn pass(e: &mut Engine) -> PassReport {
    e.pass(&HashMap::new())
}

/// A file goes once its size and times have been still for `settle`, by the engine's clock: a
/// change starts the wait again. (Real time stays far below the 30 s settle here.)
#[test]
fn a_file_goes_once_it_has_been_still_for_settle() {
    let (_t, a, b) = pipe_pair();
    with_sync(&a, "settle_ms = 30000\nretry_max_secs = 8");
    let clock = Clock::manual();
    let mut e = engine(&a, &clock);
    write_file(&a.sending(), "f.txt", b"one");
    let r = pass(&mut e);
    assert_eq!((r.waiting, r.delivered, r.wake_in), (1, 0, Some(S(30))));
    clock.advance(S(29));
    let r = pass(&mut e);
    assert_eq!((r.waiting, r.delivered, r.wake_in), (1, 0, Some(S(1))));
    write_file(&a.sending(), "f.txt", b"one, and more");
    clock.advance(S(1));
    let r = pass(&mut e);
    assert_eq!((r.waiting, r.delivered, r.wake_in), (1, 0, Some(S(30))), "a change starts the wait again");
    clock.advance(S(30));
    let r = pass(&mut e);
    assert_eq!((r.waiting, r.delivered), (0, 1));
    assert_eq!(fs::read(b.receiving().join("f.txt")).unwrap(), b"one, and more");
}

/// A peer that cannot be reached is tried again after 1, 2, 4, 8, 8 s (`retry_max_secs` = 8),
/// not before; once it answers, the file goes and the backoff is over.
#[test]
fn an_unreachable_peer_is_retried_after_a_doubling_backoff() {
    let (_t, a, b) = pipe_pair();
    with_sync(&a, "settle_ms = 0\nretry_max_secs = 8");
    let good = fs::read_to_string(&b.config).unwrap();
    fs::write(&b.config, "not a config").unwrap(); // its serve exits at once: unreachable
    let clock = Clock::manual();
    let mut e = engine(&a, &clock);
    write_file(&a.sending(), "f.txt", b"x");
    let r = pass(&mut e);
    assert!(r.failures > 0);
    // The failing pass itself says when to try again (a daemon sleeps until then, not until its
    // next rescan).
    assert_eq!(r.wake_in, Some(S(1)), "the failed pass asks to be woken for the retry");
    // A file written while the peer waits out its backoff is said to wait too.
    write_file(&a.sending(), "g.txt", b"y");
    pass(&mut e);
    assert_eq!(e.status().peers[0].pending, ["f.txt", "g.txt"], "the status lists what waits, during a backoff too");
    for (wait, next) in [(1, 2), (2, 4), (4, 8), (8, 8), (8, 8)] {
        let r = pass(&mut e);
        assert_eq!(r.wake_in, Some(S(wait)), "waiting out the backoff");
        clock.advance(S(wait) - Duration::from_millis(1));
        assert_eq!(pass(&mut e).wake_in, Some(Duration::from_millis(1)), "not tried before its time");
        clock.advance(Duration::from_millis(1));
        let r = pass(&mut e);
        assert!(r.failures > 0, "tried again after {wait} s, and failed");
        assert_eq!(r.wake_in, Some(S(next)), "and asks to be woken for the next try");
    }
    fs::write(&b.config, good).unwrap();
    clock.advance(S(8));
    let r = pass(&mut e);
    assert_eq!((r.delivered, r.failures), (2, 0));
    assert_eq!(pass(&mut e).wake_in, None, "no backoff left");
}

/// One file the receiver cannot write waits out its own doubling backoff while the others go
/// at once; it goes when it can be written.
#[test]
fn a_file_the_receiver_cannot_write_waits_out_its_own_backoff() {
    let (_t, a, b) = pipe_pair();
    with_sync(&a, "settle_ms = 0\nretry_max_secs = 8");
    // A directory where the receiver makes the file's temporary: that one file fails (Io).
    let stuck = b.receiving().join(pi2pi_agent::serve::temp_name("stuck.txt"));
    fs::create_dir_all(&stuck).unwrap();
    let clock = Clock::manual();
    let mut e = engine(&a, &clock);
    write_file(&a.sending(), "stuck.txt", b"s");
    write_file(&a.sending(), "free.txt", b"f");
    let r = pass(&mut e);
    assert_eq!(r.delivered, 1);
    assert_eq!(fs::read(b.receiving().join("free.txt")).unwrap(), b"f");
    for wait in [1, 2, 4] {
        write_file(&a.sending(), &format!("new-{wait}.txt"), b"n");
        let r = pass(&mut e);
        assert_eq!((r.delivered, r.wake_in), (1, Some(S(wait))), "a new file goes at once; the stuck one waits {wait} s");
        clock.advance(S(wait));
        assert_eq!(pass(&mut e).delivered, 0, "tried again after {wait} s, and failed");
    }
    fs::remove_dir(&stuck).unwrap();
    clock.advance(S(8));
    assert_eq!(pass(&mut e).delivered, 1);
    assert_eq!(fs::read(b.receiving().join("stuck.txt")).unwrap(), b"s");
}
