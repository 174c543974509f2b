//! Tools newer than Debian 12's, unpacked from Debian's archive into the cache with a private
//! apt state (the host's own packages stay untouched): from bookworm-backports, mke2fs ≥ 1.47.1
//! (for `-d <tarball>`; Debian 12 ships 1.47.0) and QEMU 10 for its `raspi4b` model; from
//! trixie, the U-Boot of QEMU's `virt` machine (the cards' U-Boot release).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::proc;

pub struct Mke2fs {
    pub program: PathBuf,
    pub ld_library_path: Option<String>,
}

const BACKPORTS: &str = "bookworm-backports";

fn version_ok(out: &str) -> bool {
    // "mke2fs 1.47.0 (5-Feb-2023)"
    let v: Vec<u32> = out.split_whitespace().nth(1).unwrap_or("").split('.').filter_map(|x| x.parse().ok()).collect();
    v >= vec![1, 47, 1]
}

pub fn mke2fs(sh: &Shell, cache: &Path) -> Result<Mke2fs> {
    let host = cmd!(sh, "mke2fs -V").quiet().ignore_status().ignore_stdout().output()?;
    if version_ok(&String::from_utf8_lossy(&host.stderr)) {
        return Ok(Mke2fs { program: "mke2fs".into(), ld_library_path: None });
    }
    let root = unpack(sh, cache, BACKPORTS, "e2fsprogs", &["e2fsprogs", "libext2fs2"])?;
    let program = root.join("sbin/mke2fs");
    let libs = format!("{0}/lib/x86_64-linux-gnu:{0}/usr/lib/x86_64-linux-gnu", root.display());
    let v = cmd!(sh, "{program} -V").env("LD_LIBRARY_PATH", &libs).quiet().ignore_stdout().output().context("running the cached mke2fs")?;
    if !version_ok(&String::from_utf8_lossy(&v.stderr)) {
        bail!("{} is not usable: {}", program.display(), String::from_utf8_lossy(&v.stderr));
    }
    Ok(Mke2fs { program, ld_library_path: Some(libs) })
}

/// `qemu-system-aarch64` from bookworm-backports' QEMU 10, whose `raspi4b` model Debian 12's QEMU
/// 7.2 lacks. Only its own package is unpacked (into the cache, the host's QEMU untouched): it
/// runs with Debian 12's libraries.
pub fn qemu_raspi4b(sh: &Shell, cache: &Path) -> Result<PathBuf> {
    let root = unpack(sh, cache, BACKPORTS, "qemu-system-arm", &["qemu-system-arm"])?;
    let program = root.join("usr/bin/qemu-system-aarch64");
    let machines = proc::read(cmd!(sh, "{program} -M help")).with_context(|| format!("running {}", program.display()))?;
    if !machines.lines().any(|l| l.split_whitespace().next() == Some("raspi4b")) {
        bail!("{} has no raspi4b machine", program.display());
    }
    Ok(program)
}

/// U-Boot for QEMU's `virt` machine (`qemu_arm64/uboot.elf` of trixie's `u-boot-qemu`, the
/// U-Boot release of the cards): the pair, cluster and soak boot it where a Pi's firmware
/// would start the card's own U-Boot, which only runs on a Pi's SoC. It runs the card's boot.scr.
pub fn u_boot_virt(sh: &Shell, cache: &Path) -> Result<PathBuf> {
    let root = unpack(sh, cache, "trixie", "u-boot-qemu", &["u-boot-qemu"])?;
    let program = root.join("usr/lib/u-boot/qemu_arm64/uboot.elf");
    if !program.exists() {
        bail!("{} is not in trixie's u-boot-qemu", program.display());
    }
    Ok(program)
}

/// `packages` from `suite`, unpacked into `<cache>/tools/<name>/root` (once; a private apt state,
/// so the host's own packages and sources stay as they are). Returns that root.
fn unpack(sh: &Shell, cache: &Path, suite: &str, name: &str, packages: &[&str]) -> Result<PathBuf> {
    let dir = cache.join("tools").join(name);
    let root = dir.join("root");
    let done = dir.join("unpacked");
    if done.exists() {
        return Ok(root);
    }
    eprintln!("tools: fetching {} from {suite} into {}", packages.join(" "), dir.display());
    let _ = fs_err::remove_dir_all(&dir);
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        fs_err::create_dir_all(dir.join(d))?;
    }
    let mirror = std::env::var("PI2PI_TOOLS_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    fs_err::write(dir.join("sources.list"), format!("deb {mirror} {suite} main\n"))?;
    let d = dir.display().to_string();
    let opts = [
        format!("-oDir::Etc::SourceList={d}/sources.list"),
        "-oDir::Etc::SourceParts=/dev/null".into(),
        format!("-oDir::State::Lists={d}/lists"),
        format!("-oDir::Cache={d}/cache"),
        "-oAPT::Sandbox::User=root".into(),
    ];
    let o = opts.clone();
    proc::read(cmd!(sh, "apt-get -q {o...} update"))?;
    let debs_dir = dir.join("debs");
    let wanted: Vec<String> = packages.iter().map(|p| format!("{p}/{suite}")).collect();
    {
        let _cd = sh.push_dir(&debs_dir);
        proc::read(cmd!(sh, "apt-get -q {opts...} download {wanted...}"))?;
    }
    for e in fs_err::read_dir(&debs_dir)? {
        let deb = e?.path();
        proc::run(cmd!(sh, "dpkg-deb -x {deb} {root}"))?;
    }
    fs_err::write(&done, packages.join("\n"))?;
    Ok(root)
}
