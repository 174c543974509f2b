//! `cargo xtask verify`: two builds of every card from empty build directories must write the
//! same bytes, every shipped file alike (compared through their SHA256SUMS). The base comes from
//! the cache (its own reproducibility is `--cold`, which rebuilds it twice in two empty caches).
//!
//! The second build runs as another process in another environment, so that anything of the
//! builder's leaking into the output shows up: another time zone (FAT stores local time),
//! locale and umask, and, when root, the checkout seen at another path (a private bind mount).
//! The core count is not varied: both builds use every core, as one core would double the
//! second build's time. What could depend on it is xz's threading, which ship.rs's tests check
//! (one thread and four give the same bytes); hosts build in parallel into separate files.

use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::build::config::ImageConfig;
use crate::build::image;
use crate::proc;

/// The second build's environment: a zone 13:45 ahead of UTC, the C locale, a umask that drops
/// group and other bits.
const TZ: &str = "Pacific/Chatham";
const LOCALE: &str = "C";
const UMASK: &str = "077";
/// How the second build differs, for the test's phase name.
pub const VARIED: &str = "another TZ, locale, umask and path";

/// Builds every card twice and compares. `first`: the output of a build already made from empty
/// build directories (the test's images phase), which then stands for build 1.
pub fn run(sh: &Shell, cfg: &ImageConfig, cold: bool, first: Option<&Path>) -> Result<()> {
    let root = sh.current_dir().join("target/verify");
    let _ = fs_err::remove_dir_all(&root);
    let dirs = |n: &str| -> image::Options {
        let dir = root.join(n);
        let mut opts = image::Options { out_dir: dir.join("images"), work_dir: dir.join("work"), ..image::Options::default_for(sh) };
        if cold {
            opts.cache_dir = dir.join("cache");
        }
        opts
    };
    let first = match first {
        Some(dir) => dir.to_path_buf(),
        None => {
            let opts = dirs("1");
            eprintln!("verify: build 1 in {}", opts.out_dir.display());
            image::build(sh, cfg, &image::select(cfg, "all")?, &opts)?;
            opts.out_dir
        }
    };
    let second = dirs("2");
    eprintln!("verify: build 2 in {} (TZ={TZ}, LC_ALL={LOCALE}, umask {UMASK}{})", second.out_dir.display(), moved_note());
    build_elsewhere(sh, cfg, &second)?;
    compare(&first, &second.out_dir)
}

fn moved_note() -> &'static str {
    if crate::build::setup::is_root() {
        ", the checkout at another path"
    } else {
        "; not root, so the checkout stays where it is"
    }
}

/// `cargo xtask image all` as a child process in the varied environment.
fn build_elsewhere(sh: &Shell, cfg: &ImageConfig, opts: &image::Options) -> Result<()> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    let config = cfg.file();
    let (out, work, cache) = (&opts.out_dir, &opts.work_dir, &opts.cache_dir);
    let checkout = sh.current_dir();
    let moved = sh.current_dir().join("target/verify/checkout");
    // (`env` starts whichever comes first.) `sh -c`: set the umask, bind the checkout elsewhere (private mount namespace: gone when the
    // build ends), then run the build from there.
    let script = if crate::build::setup::is_root() {
        r#"umask "$1" && mount --bind "$2" "$3" && cd "$3" && shift 3 && PI2PI_ROOT="$PWD" exec "$@""#
    } else {
        r#"umask "$1" && cd "$2" && shift 3 && exec "$@""#
    };
    fs_err::create_dir_all(&moved)?;
    let ns: &[&str] = if crate::build::setup::is_root() { &["unshare", "--mount", "--propagation", "private"] } else { &[] };
    let c = cmd!(
        sh,
        "env {ns...} sh -c {script} verify {UMASK} {checkout} {moved} {exe} --config {config} image all --out-dir {out} --work-dir {work} --cache-dir {cache}"
    )
    .env("TZ", TZ)
    .env("LC_ALL", LOCALE)
    .env("LANG", LOCALE);
    proc::run(c).context("the second build")
}

/// Every file in either SHA256SUMS is in both with the same hash.
fn compare(a: &Path, b: &Path) -> Result<()> {
    let (sa, sb) = (crate::build::ship::read_sums(a)?, crate::build::ship::read_sums(b)?);
    let mut bad = Vec::new();
    for name in sa.keys().chain(sb.keys().filter(|k| !sa.contains_key(*k))) {
        let (ha, hb) = (sa.get(name).map(String::as_str).unwrap_or("(missing)"), sb.get(name).map(String::as_str).unwrap_or("(missing)"));
        let same = ha == hb;
        println!("{name:<18} {ha} {} {hb}", if same { "==" } else { "!=" });
        if !same {
            bad.push(name.clone());
        }
    }
    if !bad.is_empty() {
        bail!("not reproducible: {} (compare {} with {})", bad.join(", "), a.display(), b.display());
    }
    println!("verify: {} files reproducible", sa.len());
    Ok(())
}
