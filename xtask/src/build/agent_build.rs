//! Stage 2: the agent, cross-compiled for the image's architecture (static: musl on aarch64,
//! glibc crt-static on armv7 and ARMv6). `cross` is used when a container engine is present; this
//! machine kind has none, so Debian's cross linkers (configured in .cargo/config.toml) do the
//! linking.
//!
//! ARMv6 (Pi 1, Zero, Zero W): rustup serves no prebuilt standard library for
//! `arm-unknown-linux-gnueabi`, and only the one stable toolchain can be fetched. The standard
//! library is therefore compiled from that toolchain's own `rust-src` component with cargo's
//! `-Z build-std`, which a stable toolchain accepts under `RUSTC_BOOTSTRAP=1`. This is the
//! standard library of exactly the compiler that builds the agent (no second toolchain, no
//! download), and the flag is scoped to this one build.
//!
//! The binary's bytes must not depend on where things are on the builder: panic messages carry
//! source paths (dependencies under `$CARGO_HOME/registry`, a from-source std under the
//! toolchain's sysroot), so those prefixes are remapped to fixed names.
//!
//! Cross builds go to cargo target directories in the cache, one per architecture, shared by
//! every checkout on the machine: a fresh clone (CI's) then finds the dependencies and the
//! from-source std already compiled and compiles only the agent itself. One per architecture
//! because the ARMv6 build's `RUSTC_BOOTSTRAP=1` is part of the fingerprint of build scripts
//! that watch it (proc-macro2's): in one shared directory the armv7 and ARMv6 builds rebuilt
//! every dependency of each other, a minute each, every time. A lock file serialises the build
//! and the copy of its binary into the checkout's own target/agent/<arch>/, so two checkouts
//! building at once never read each other's binary.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::cache;
use crate::proc;

pub struct Agent {
    pub binary: PathBuf,
    pub seconds: f64,
}

fn have_container_engine(sh: &Shell) -> bool {
    ["docker", "podman"].iter().any(|e| cmd!(sh, "{e} info").quiet().ignore_stdout().ignore_stderr().run().is_ok())
}

/// The shared cargo target directory for `arch` (see the module docs).
fn target_dir(arch: Arch) -> PathBuf {
    cache::dir().join("agent-target").join(arch.deb())
}

/// Where [`build`] leaves the agent for `arch`: in this checkout's target/.
pub fn binary(sh: &Shell, arch: Arch) -> PathBuf {
    sh.current_dir().join("target/agent").join(arch.deb()).join("pi2pi-agent")
}

pub fn build(sh: &Shell, arch: Arch) -> Result<Agent> {
    let started = Instant::now();
    let target = arch.rust_target();
    let target_dir = target_dir(arch);
    fs_err::create_dir_all(&target_dir)?;
    // Held (until dropped) over the build and the copy of its binary.
    let lock_path = target_dir.with_extension("lock");
    let lock = fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let tool = if have_container_engine(sh) && cmd!(sh, "cross --version").quiet().ignore_stdout().ignore_stderr().run().is_ok() {
        "cross"
    } else {
        "cargo"
    };
    let remap = remap_paths(sh, target)?;
    if arch.std_from_source() {
        // cross has no image for this; the std from source is built by cargo itself.
        let _bootstrap = sh.push_env("RUSTC_BOOTSTRAP", "1");
        proc::run(cmd!(
            sh,
            "cargo build --quiet --release --locked -p pi2pi-agent --target {target} --target-dir {target_dir} {remap} -Z build-std=std,panic_abort"
        ))?;
    } else {
        proc::run(cmd!(sh, "{tool} build --quiet --release --locked -p pi2pi-agent --target {target} --target-dir {target_dir} {remap}"))?;
    }
    let built = target_dir.join(target).join("release/pi2pi-agent");
    let binary = binary(sh, arch);
    fs_err::create_dir_all(binary.parent().context("the agent's path has a parent")?)?;
    fs_err::copy(&built, &binary).with_context(|| format!("copying {} to {}", built.display(), binary.display()))?;
    Ok(Agent { binary, seconds: started.elapsed().as_secs_f64() })
}

/// `--config` adding `--remap-path-prefix` for the builder's own directories to the target's
/// rustflags (cargo joins it to .cargo/config.toml's, where an environment RUSTFLAGS would
/// replace them).
fn remap_paths(sh: &Shell, target: &str) -> Result<String> {
    let cargo_home = match std::env::var_os("CARGO_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?).join(".cargo"),
    };
    let sysroot = PathBuf::from(proc::read(cmd!(sh, "rustc --print sysroot"))?.trim());
    // Not the checkout: cargo names the workspace's own sources by relative paths already, and
    // a flag naming it would change with the checkout's path and rebuild every dependency.
    let flags: Vec<toml::Value> = [(cargo_home, "/cargo"), (sysroot, "/rust")]
        .into_iter()
        .map(|(from, to)| toml::Value::String(format!("--remap-path-prefix={}={to}", from.display())))
        .collect();
    Ok(format!("--config=target.{target}.rustflags={}", toml::Value::Array(flags)))
}
