//! The fuzz phase: each cargo-fuzz target in `agent/fuzz` (the frame decoder; the receiver's
//! state machine, checked as `agent/tests/receiver_states.rs` checks it) runs for a bounded time.
//! On the stable toolchain, so without a sanitizer (`--sanitizer none`, which cargo-fuzz supports
//! there): what it finds is a panic, a hang or runaway memory, which is what safe Rust can do; a
//! longer run with AddressSanitizer is `cargo +nightly fuzz run <target>` (tests/README.md).
//!
//! Both the build (`fuzz-target/`) and the inputs found so far (`fuzz-corpus/<target>/`) are kept
//! in the cache, like the agent's cross builds: a fresh clone (CI's) neither builds the targets'
//! dependencies again nor starts from nothing, so each short run goes on from where the last one
//! stopped. A crash leaves its input in `agent/fuzz/artifacts/<target>/`.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use xshell::{cmd, Shell};

use crate::proc;

/// The targets, as `agent/fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 2] = ["frame_decoder", "receiver"];

/// How long each target runs in `cargo xtask test`.
pub const EACH: Duration = Duration::from_secs(20);

/// Builds the targets, then runs them all at once for `each`: a libFuzzer run is one process on
/// one core, and this machine has as many cores as there are targets. Each run's output goes to
/// `target/fuzz/<target>.log`; its last line (runs done, time) is shown.
pub fn run(sh: &Shell, each: Duration, cache: &Path) -> Result<()> {
    let root = sh.current_dir();
    let build = cache.join("fuzz-target");
    {
        let _fuzz = sh.push_dir(root.join("agent/fuzz"));
        proc::run(cmd!(sh, "cargo fuzz build --sanitizer none --target-dir {build}"))?;
    }
    std::thread::scope(|s| {
        let runs: Vec<_> = TARGETS.iter().map(|target| s.spawn(|| fuzz_one(&root, &build, cache, target, each))).collect();
        runs.into_iter().map(|r| r.join().unwrap_or_else(|_| Err(anyhow!("a fuzz run panicked")))).collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// One target for `each`, going on from the inputs the cache keeps for it.
fn fuzz_one(root: &Path, build: &Path, cache: &Path, target: &str, each: Duration) -> Result<()> {
    let corpus = cache.join("fuzz-corpus").join(target);
    fs_err::create_dir_all(&corpus)?;
    let argv: Vec<OsString> = vec![
        "cargo".into(),
        "fuzz".into(),
        "run".into(),
        "--sanitizer".into(),
        "none".into(),
        "--target-dir".into(),
        build.into(),
        target.into(),
        corpus.into(),
        "--".into(),
        format!("-max_total_time={}", each.as_secs()).into(),
    ];
    let log = root.join("target/fuzz").join(format!("{target}.log"));
    proc::run_logged(&root.join("agent/fuzz"), &argv, &[], &log, &format!("fuzz {target}"))
        .with_context(|| format!("fuzz target {target}: a crash's input is in agent/fuzz/artifacts/{target}/"))?;
    let text = fs_err::read_to_string(&log)?;
    let done = text.lines().rev().find(|l| l.starts_with("Done ")).unwrap_or("(no summary line)");
    eprintln!("fuzz {target}: {done}");
    Ok(())
}
