//! `cargo xtask verify`: two builds of every image from empty build directories must be
//! byte-identical. The base comes from the cache (its own reproducibility is `--cold`, which
//! rebuilds it twice in two empty caches).

use anyhow::{bail, Result};
use xshell::Shell;

use crate::config::ImageConfig;
use crate::image;

pub fn run(sh: &Shell, cfg: &ImageConfig, cold: bool) -> Result<()> {
    let root = sh.current_dir().join("target/verify");
    let _ = std::fs::remove_dir_all(&root);
    let hosts = image::select(cfg, "all")?;
    let mut runs = Vec::new();
    for n in ["1", "2"] {
        let dir = root.join(n);
        let mut opts = image::Options { out_dir: dir.join("images"), work_dir: dir.join("work"), ..image::Options::default_for(sh) };
        if cold {
            opts.cache_dir = dir.join("cache");
        }
        eprintln!("verify: build {n} in {}", dir.display());
        runs.push(image::build(sh, cfg, &hosts, &opts)?);
    }
    let mut bad = Vec::new();
    for (a, b) in runs[0].iter().zip(&runs[1]) {
        let same = a.sha256 == b.sha256;
        println!("{:<6} {} {} {}", a.host, a.sha256, if same { "==" } else { "!=" }, b.sha256);
        if !same {
            bad.push(a.host.clone());
        }
    }
    if !bad.is_empty() {
        bail!("not reproducible: {} (compare the two builds under {})", bad.join(", "), root.display());
    }
    println!("verify: {} images reproducible", runs[0].len());
    Ok(())
}
