//! Everything a fresh Debian 12 machine needs before an image can be built or tested: Debian
//! packages, rustup targets and components, cargo-fuzz, binfmt_misc registration for the image's
//! architecture, and a newer mke2fs (kept in the cache, the host's e2fsprogs untouched). When it
//! cannot do this itself (not root, not Debian) it prints the exact commands instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::proc;

/// Debian packages the build and the tests use, and what for.
pub const PACKAGES: &[&str] = &[
    "mmdebstrap",             // base root filesystem
    "debian-archive-keyring", // the default keyring in image.toml
    "arch-test",              // mmdebstrap's check that foreign binaries run
    "qemu-user-static",       // foreign-arch package scripts
    "qemu-system-arm",        // the pair test and `xtask run`
    "qemu-utils",             // qcow2 overlays
    "mtools",                 // files into the FAT boot partition, no mount
    "dosfstools",             // mkfs.vfat, fsck.vfat
    "e2fsprogs",              // mke2fs, used when ≥ 1.47.1 (else tools.rs fetches one)
    "libarchive13",           // mke2fs -d <tarball>
    "fdisk",                  // sfdisk: the board test reads the grown partition table
    "openssh-client",         // ssh-keygen; the agent's transport
    "openssh-server",         // sshd for the agent's integration tests
    "rsync",                  // the agent benchmark's baseline
    "time",                   // peak RSS in the agent benchmark
    "gcc-aarch64-linux-gnu",  // cross linkers for the agent
    "gcc-arm-linux-gnueabihf",
    "gcc-arm-linux-gnueabi",
    "libc6-dev-arm64-cross",
    "libc6-dev-armhf-cross",
    "libc6-dev-armel-cross",
    "util-linux",           // losetup for the agent's drive tests
    "xz-utils",             // <host>.img.xz
    "bmap-tools",           // <host>.img.bmap, and the round-trip check with `bmaptool copy`
    "device-tree-compiler", // fdtput: the board test's copy of a dtb, for what QEMU does not model
    "u-boot-tools",         // mkimage: the cards' boot.scr; the board test's 32-bit U-Boot as a uImage
    "rauc",                 // <host>.raucb, the update bundles
    "squashfs-tools",       // mksquashfs, which rauc runs
    "openssl",              // the update-signing key and certificate
    "faketime",             // the signing times fixed: the certificate's start, each bundle's signature
];

pub const RUST_TARGETS: &[&str] = &["aarch64-unknown-linux-musl", "armv7-unknown-linux-gnueabihf"];

pub fn is_root() -> bool {
    fs_err::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn manual(steps: &str) -> anyhow::Error {
    anyhow::anyhow!("pi2pi needs a Debian 12 machine and root to set itself up. Run these, then try again:\n{steps}")
}

/// The cargo-fuzz the fuzz phase runs.
const CARGO_FUZZ: &str = "0.13.2";

pub fn ensure(sh: &Shell, arch: Arch) -> Result<()> {
    let missing = missing_packages(sh)?;
    let targets = missing_targets(sh)?;
    let binfmt = !Path::new(&format!("/proc/sys/fs/binfmt_misc/{}", arch.binfmt())).exists();
    // The format and lint phases' tools: in rustup's default profile, not in its minimal one.
    for (sub, component) in [("fmt", "rustfmt"), ("clippy", "clippy")] {
        if cmd!(sh, "cargo {sub} --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
            eprintln!("setup: adding the {component} component");
            proc::run(cmd!(sh, "rustup component add {component}"))?;
        }
    }
    // The fuzz phase's runner (a pinned version: it decides the flags the targets are built with).
    if cmd!(sh, "cargo fuzz --version").quiet().ignore_stdout().ignore_stderr().run().is_err() {
        eprintln!("setup: installing cargo-fuzz {CARGO_FUZZ}");
        proc::run(cmd!(sh, "cargo install --locked cargo-fuzz --version {CARGO_FUZZ}"))?;
    }
    // The ARMv6 agent's standard library is compiled from the toolchain's sources.
    if !proc::read(cmd!(sh, "rustup component list --installed"))?.lines().any(|l| l.trim().starts_with("rust-src")) {
        eprintln!("setup: adding the rust-src component");
        proc::run(cmd!(sh, "rustup component add rust-src"))?;
    }
    if missing.is_empty() && targets.is_empty() && !binfmt {
        return Ok(());
    }
    let pkgs = missing.join(" ");
    let steps = format!(
        "  apt-get update && apt-get install -y --no-install-recommends {pkgs}\n  rustup target add {}\n  \
         mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc  # if not mounted\n  \
         cat /usr/lib/binfmt.d/{}.conf > /proc/sys/fs/binfmt_misc/register",
        RUST_TARGETS.join(" "),
        arch.binfmt()
    );
    if !Path::new("/etc/debian_version").exists() || (!is_root() && (!missing.is_empty() || binfmt)) {
        return Err(manual(&steps));
    }
    if !missing.is_empty() {
        eprintln!("setup: installing Debian packages: {pkgs}");
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        proc::run(cmd!(sh, "apt-get update -q"))?;
        proc::run(cmd!(sh, "apt-get install -y -q --no-install-recommends {missing...}"))?;
    }
    if !targets.is_empty() {
        eprintln!("setup: adding rustup targets: {}", targets.join(" "));
        proc::run(cmd!(sh, "rustup target add {targets...}"))?;
    }
    if binfmt {
        register_binfmt(arch).map_err(|e| e.context(manual(&steps)))?;
    }
    Ok(())
}

fn missing_packages(sh: &Shell) -> Result<Vec<String>> {
    let format = "${Package}\t${db:Status-Status}\n";
    let out = cmd!(sh, "dpkg-query -W -f {format} {PACKAGES...}").quiet().ignore_status().ignore_stderr().read()?;
    let installed: Vec<&str> = out.lines().filter(|l| l.ends_with("\tinstalled")).map(|l| l.split('\t').next().unwrap_or("")).collect();
    Ok(PACKAGES.iter().filter(|p| !installed.contains(p)).map(|p| p.to_string()).collect())
}

fn missing_targets(sh: &Shell) -> Result<Vec<String>> {
    let have = proc::read(cmd!(sh, "rustup target list --installed"))?;
    Ok(RUST_TARGETS.iter().filter(|t| !have.lines().any(|l| l.trim() == **t)).map(|t| t.to_string()).collect())
}

/// binfmt_misc is not mounted in this kind of machine; mount it and register qemu's handler.
fn register_binfmt(arch: Arch) -> Result<()> {
    let root = Path::new("/proc/sys/fs/binfmt_misc");
    if !root.join("register").exists() {
        let sh = Shell::new()?;
        proc::run(cmd!(sh, "mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc"))?;
    }
    let conf = PathBuf::from(format!("/usr/lib/binfmt.d/{}.conf", arch.binfmt()));
    let rule = fs_err::read_to_string(&conf).with_context(|| format!("reading {}", conf.display()))?;
    if !root.join(arch.binfmt()).exists() {
        fs_err::write(root.join("register"), rule.trim()).context("registering the qemu binfmt handler")?;
        eprintln!("setup: registered {} in binfmt_misc", arch.binfmt());
    }
    if !root.join(arch.binfmt()).exists() {
        bail!("binfmt_misc registration of {} did not take", arch.binfmt());
    }
    Ok(())
}
