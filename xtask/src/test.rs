//! `cargo xtask test`: the README's test command and what `.ci/run` calls. Sets the machine up,
//! then runs every phase in order, printing each phase's time: the format check, unit and
//! integration tests, the images, the reproducibility check, and the QEMU pair test with both
//! schedules.

use std::time::Instant;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::config::{ImageConfig, Schedule};
use crate::{image, pair, proc, setup, verify};

pub fn all(sh: &Shell, cfg: &ImageConfig, skip_qemu: bool) -> Result<()> {
    let started = Instant::now();
    let mut done: Vec<(String, f64, bool)> = Vec::new();
    let mut phase = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> bool {
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        let secs = t.elapsed().as_secs_f64();
        if let Err(e) = &r {
            eprintln!("==> {name} FAILED after {secs:.0}s: {e:#}");
        } else {
            eprintln!("==> {name} ok ({secs:.0}s)");
        }
        done.push((name.to_string(), secs, r.is_ok()));
        r.is_ok()
    };
    let mut ok = phase("setup", &mut || setup::ensure(sh, cfg.base.arch));
    ok = ok && phase("format (cargo fmt --check)", &mut || proc::run(cmd!(sh, "cargo fmt --all --check")));
    ok = ok && phase("cargo test", &mut || proc::run(cmd!(sh, "cargo test --workspace --locked")));
    ok = ok
        && phase("images", &mut || {
            let built = image::build(sh, cfg, &image::select(cfg, "all")?, &image::Options::default_for(sh))?;
            eprint!("{}", image::summary(&built));
            Ok(())
        });
    ok = ok && phase("verify (reproducible images)", &mut || verify::run(sh, cfg, false));
    if !skip_qemu {
        for s in Schedule::ALL {
            ok = ok
                && phase(&format!("qemu pair test ({s:?})"), &mut || {
                    // The systemd images are the ones the "images" phase just wrote; cron is a variant.
                    let r = pair::run(sh, cfg, s, s != Schedule::Systemd)?;
                    eprint!("{}", r.render());
                    Ok(())
                });
        }
    }
    eprintln!("\nphases:");
    for (n, s, good) in &done {
        eprintln!("  {:<32} {:>6.0}s  {}", n, s, if *good { "ok" } else { "FAILED" });
    }
    eprintln!("  {:<32} {:>6.0}s", "total", started.elapsed().as_secs_f64());
    let failed = done.iter().filter(|d| !d.2).count();
    println!("xtask test: {} passed, {} failed", done.len() - failed, failed);
    if !ok {
        bail!("test phases failed");
    }
    Ok(())
}
