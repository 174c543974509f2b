//! The agent over a real OpenSSH server on 127.0.0.1, with keys made by the test and the
//! receiver as the key's forced command, as on the Pis.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::*;

fn setup() -> (tempfile::TempDir, Node, Node, Sshd) {
    let t = tempfile::tempdir().unwrap();
    let a = Node::new(t.path(), "rpa");
    let b = Node::new(t.path(), "rpb");
    b.write_config("require_mount = false", "");
    let sshd = Sshd::new(&t.path().join("sshd"), &b);
    a.write_config("require_mount = false", &sshd.peer(&b));
    (t, a, b, sshd)
}

#[test]
fn delivers_over_ssh_with_no_prompt_and_the_key_cannot_get_a_shell() {
    let (_t, a, b, sshd) = setup();
    write_file(&a.sending(), "dir/photo.jpg", &content(1, 5 << 20));
    write_file(&a.sending(), "empty", b"");
    let o = a.sync_once();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(tree(&b.receiving()), tree(&a.sending()));

    // The key is good only for the receiver: asking for a shell or a command gets the receiver,
    // which does not speak shell, so nothing runs.
    let o = sshd.ssh("touch /tmp/pi2pi-pwned; echo PWNED");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("PWNED"));
    assert!(!std::path::Path::new("/tmp/pi2pi-pwned").exists());
    assert!(!o.status.success());
}

#[test]
fn unknown_host_key_is_an_error_not_a_prompt() {
    let (_t, a, _b, sshd) = setup();
    fs::write(&sshd.known_hosts, "").unwrap();
    write_file(&a.sending(), "x", b"x");
    let started = Instant::now();
    let o = a.sync_once();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("Host key verification failed"), "{}", stderr(&o));
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn peer_down_then_up_and_link_cut_mid_file_resume() {
    let (_t, a, b, mut sshd) = setup();
    sshd.stop();
    let big = content(7, 256 << 20);
    write_file(&a.sending(), "big.bin", &big);
    write_file(&a.sending(), "small.txt", b"hello");
    let mut daemon = KillOnDrop(a.spawn_run());
    // Unreachable peer: the daemon keeps retrying with capped backoff (retry_max_secs = 2 here).
    std::thread::sleep(Duration::from_secs(3));
    assert!(tree(&b.receiving()).is_empty());
    let st = String::from_utf8(a.cmd(&["status"]).output().unwrap().stdout).unwrap();
    assert!(st.contains("last error") && st.contains("Connection refused"), "{st}");

    sshd.start();
    // Cut the link while the large file is in flight: once a temporary has data, kill the
    // per-connection sshd processes (the server stays up, as after a cable is replugged).
    let saw_partial = wait_until(Duration::from_secs(20), || {
        temps(&b.receiving()).iter().any(|t| fs::metadata(b.receiving().join(t)).map(|m| m.len() > 0).unwrap_or(false))
    });
    sshd.cut_connections();
    assert!(
        wait_until(Duration::from_secs(30), || fs::read(b.receiving().join("big.bin")).ok().as_deref() == Some(&big[..])),
        "big.bin never arrived intact"
    );
    assert!(wait_until(Duration::from_secs(10), || b.receiving().join("small.txt").exists()));
    assert!(temps(&b.receiving()).is_empty());
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
    let mut out = String::new();
    std::io::Read::read_to_string(daemon.0.stderr.as_mut().unwrap(), &mut out).unwrap();
    assert!(saw_partial, "the cut never landed mid-file");
    assert!(out.contains("link to rpb lost"), "{out}");
    assert!(peer_status(&a).resumed_total >= 1, "big.bin was not resumed after the cut:\n{out}");
}
