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

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::proc;

/// The targets, as `agent/fuzz/Cargo.toml` names them.
pub const TARGETS: [&str; 2] = ["frame_decoder", "receiver"];

/// How long each target runs in `cargo xtask test`.
pub const EACH: Duration = Duration::from_secs(20);

pub fn run(sh: &Shell, each: Duration, cache: &Path) -> Result<()> {
    let root = sh.current_dir();
    let secs = each.as_secs().to_string();
    let build = cache.join("fuzz-target");
    for target in TARGETS {
        let corpus = cache.join("fuzz-corpus").join(target);
        fs_err::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let _fuzz = sh.push_dir(root.join("agent/fuzz"));
        proc::run(cmd!(sh, "cargo fuzz run --sanitizer none --target-dir {build} {target} {corpus} -- -max_total_time={secs}"))
            .with_context(|| format!("fuzz target {target}: a crash's input is in agent/fuzz/artifacts/{target}/"))?;
    }
    Ok(())
}
