//! mke2fs ≥ 1.47.1 (for `-d <tarball>`). Debian 12 ships 1.47.0, so the backport's e2fsprogs is
//! unpacked into the cache with a private apt state: the host's own e2fsprogs stays untouched.

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
    let dir = cache.join("tools/e2fsprogs");
    let program = dir.join("root/sbin/mke2fs");
    let libs = format!("{0}/root/lib/x86_64-linux-gnu:{0}/root/usr/lib/x86_64-linux-gnu", dir.display());
    if !program.exists() {
        eprintln!("tools: fetching e2fsprogs from {BACKPORTS} into {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let mirror = std::env::var("PI2PI_TOOLS_MIRROR").unwrap_or_else(|_| "http://deb.debian.org/debian".into());
        std::fs::write(dir.join("sources.list"), format!("deb {mirror} {BACKPORTS} main\n"))?;
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
        let _cd = sh.push_dir(&debs_dir);
        proc::read(cmd!(sh, "apt-get -q {opts...} download e2fsprogs/{BACKPORTS} libext2fs2/{BACKPORTS}"))?;
        drop(_cd);
        for e in std::fs::read_dir(&debs_dir)? {
            let deb = e?.path();
            let root = dir.join("root");
            proc::run(cmd!(sh, "dpkg-deb -x {deb} {root}"))?;
        }
    }
    let v = cmd!(sh, "{program} -V").env("LD_LIBRARY_PATH", &libs).quiet().ignore_stdout().output().context("running the cached mke2fs")?;
    if !version_ok(&String::from_utf8_lossy(&v.stderr)) {
        bail!("{} is not usable: {}", program.display(), String::from_utf8_lossy(&v.stderr));
    }
    Ok(Mke2fs { program, ld_library_path: Some(libs) })
}
