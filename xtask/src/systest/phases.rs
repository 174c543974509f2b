//! `cargo xtask test`: the README's test command and what `.ci/run` calls. Sets the machine up,
//! then runs every phase in order, printing each phase's time: format, lint, unit and integration
//! tests, the agent's fuzz targets for a bounded time, the previous suite's package resolution, the 32-bit agent's clock, the images, what
//! ships with them (`sha256sum -c`, the bmaptool round trip, the Imager list), the
//! reproducibility check, the QEMU pair test (one card on each schedule), the QEMU cluster test,
//! the board test (each card booted the way its Pi boots it, and an armhf variant), and a short
//! soak (the pair under faults). The bases of all of them are built first, at the same time.
//! After a failure the remaining phases are listed as not run.
//!
//! The phases run one after another. The QEMU phases saturate both cores (a guest per core), so
//! running the soak beside the others saved no time and slowed every guest threefold, past
//! what its services wait for (dhcpcd's start timed out in the pair test).

use std::time::Instant;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::config::ImageConfig;
use crate::build::{base, config, image, setup, ship};
use crate::proc;
use crate::systest::{boots, cluster, fuzz, pair, soak, time32, verify};

/// The previous Debian stable, which README promises stays buildable by changing `base.suite`
/// (and the kernel to its own: it has no kernel for the Pi 5).
pub const OTHER_SUITE: &str = "bookworm";

type Phase<'a> = (String, Box<dyn FnOnce() -> Result<()> + 'a>);

fn in_turn<'a>(name: impl Into<String>, f: impl FnOnce() -> Result<()> + 'a) -> Phase<'a> {
    (name.into(), Box::new(f))
}

pub fn all(sh: &Shell, cfg: &ImageConfig, skip_qemu: bool) -> Result<()> {
    let mut phases: Vec<Phase> = vec![
        in_turn("setup", || setup::ensure(sh, cfg.base.arch)),
        in_turn("format (cargo fmt --check)", || proc::run(cmd!(sh, "cargo fmt --all --check"))),
        in_turn("lint (cargo clippy -D warnings)", || {
            let dir = workspace_target();
            proc::run(cmd!(sh, "cargo clippy --workspace --all-targets --locked --quiet --target-dir {dir} -- -D warnings"))
        }),
        in_turn("cargo test", || {
            let dir = workspace_target();
            proc::run(cmd!(sh, "cargo test --workspace --locked --target-dir {dir}"))
        }),
        in_turn(format!("fuzz (cargo-fuzz, no sanitizer: {} s per target)", fuzz::EACH.as_secs()), || {
            fuzz::run(sh, fuzz::EACH, &image::Options::default_for(sh).cache_dir)
        }),
        in_turn(format!("other suite: {OTHER_SUITE} resolves (mmdebstrap --simulate)"), || {
            // The suite a user may switch back to: the same config with only the suite (and the
            // kernel's suite) changed must still name packages that exist and install together.
            let mut base = cfg.base.clone();
            base.suite = OTHER_SUITE.into();
            base.kernel = base.kernel.split('/').next().unwrap_or_default().into();
            base::resolve(sh, &base, &sh.current_dir().join("target/resolve"))
        }),
        in_turn("32-bit agents: file times past 2038 (armv7; ARMv6 on qemu-arm's ARM1176)", || time32::check_all(sh)),
        in_turn("bases (every base the later phases build cards from, at the same time when cold)", || build_bases(sh, cfg, skip_qemu)),
        in_turn(
            if skip_qemu { "images" } else { "images (the deployment's, and every card of the cluster example for the QEMU phases)" },
            || {
                let built = image::build(sh, cfg, &image::select(cfg, "all")?, &image::Options::default_for(sh))?;
                eprint!("{}", image::summary(&built));
                if !skip_qemu {
                    let example = config::load(&sh.current_dir().join(cluster::EXAMPLE))?;
                    cluster::build_cards(sh, &example, &example.hosts.iter().collect::<Vec<_>>())?;
                }
                Ok(())
            },
        ),
        in_turn("shipped files (bmaptool copy round-trip, Imager list)", || {
            let images = image::Options::default_for(sh).out_dir;
            let n = ship::check(sh, cfg, &images, &sh.current_dir().join("target/ship-check"))?;
            eprintln!("ship: {n} cards: bmaptool copy of each .img.xz with its .bmap is the .img; rpi-imager.json matches the files");
            Ok(())
        }),
        in_turn(format!("verify (reproducible: a second build, {})", verify::VARIED), || {
            verify::run(sh, cfg, false, Some(&image::Options::default_for(sh).out_dir))
        }),
    ];
    if !skip_qemu {
        phases.extend(qemu_phases(sh, cfg));
    }
    run_phases(phases)
}

/// The QEMU phases, the soak last: a soak that fails leaves the other phases' results standing.
fn qemu_phases<'a>(sh: &'a Shell, cfg: &'a ImageConfig) -> Vec<Phase<'a>> {
    let schedules = pair::schedules(cfg, None);
    let label = cfg.hosts.iter().zip(&schedules).map(|(h, s)| format!("{} {}", h.name, s.name())).collect::<Vec<_>>().join(", ");
    let soak = format!("soak (the pair under faults: {} of each kind, short)", soak::Options::short().faults / soak::Kind::ALL.len());
    vec![
        in_turn(format!("qemu pair test ({label})"), move || {
            // The configured schedule's cards are the ones the "images" phase just wrote; the
            // other schedule's card is built as a variant.
            eprint!("{}", pair::run(sh, cfg, &schedules, false)?.render());
            Ok(())
        }),
        in_turn(format!("qemu cluster test ({}: a manager and two workers)", cluster::EXAMPLE), || {
            let c = config::load(&sh.current_dir().join(cluster::EXAMPLE))?;
            eprint!("{}", cluster::run(sh, &c, false)?.render());
            Ok(())
        }),
        in_turn(
            format!("board test (each card on its Pi's QEMU model: the pair's, {}'s, and an armhf variant on raspi2b)", cluster::EXAMPLE),
            || {
                let images = image::Options::default_for(sh).out_dir;
                eprint!("{}", boots::render(&boots::test(sh, cfg, &images, true, &[], false)?));
                Ok(())
            },
        ),
        in_turn(soak, || {
            eprint!("{}", soak::run(sh, cfg, &soak::Options::short(), false)?.render());
            Ok(())
        }),
    ]
}

/// Where the lint and test phases build: in the cache, like the agent's cross builds, so that a
/// fresh clone (CI's) compiles only the workspace's own crates, not every dependency again.
fn workspace_target() -> std::path::PathBuf {
    crate::build::cache::dir().join("workspace-target")
}

/// The configs the phases build cards from: the deployment, and for the QEMU phases the cluster
/// example and the board test's armhf variant.
/// Every base the deployment's cards and (unless `skip_qemu`) the QEMU phases' cards are built
/// from, into the cache, at the same time when cold (`cargo xtask bases`, and a phase of the test).
pub fn build_bases(sh: &Shell, cfg: &ImageConfig, skip_qemu: bool) -> Result<()> {
    let configs = configs_built(sh, cfg, skip_qemu)?;
    let mut arches: Vec<Arch> = Vec::new();
    for arch in configs.iter().flat_map(|c| c.bases_in_use()).map(|b| b.arch) {
        if !arches.contains(&arch) {
            setup::ensure(sh, arch)?; // binfmt for its package scripts
            arches.push(arch);
        }
    }
    let opts = image::Options::default_for(sh);
    base::build_all(&sh.current_dir(), &configs, &sh.current_dir().join("target/bases"), &opts.cache_dir)
}

fn configs_built(sh: &Shell, cfg: &ImageConfig, skip_qemu: bool) -> Result<Vec<ImageConfig>> {
    let mut configs = vec![cfg.clone()];
    if !skip_qemu {
        configs.push(config::load(&sh.current_dir().join(cluster::EXAMPLE))?);
        configs.extend(boots::armhf_variant(cfg));
    }
    Ok(configs)
}

/// Runs phases in order until one fails; prints a table of times with the rest as not run.
fn run_phases(phases: Vec<Phase>) -> Result<()> {
    let started = Instant::now();
    let mut rows: Vec<(String, Option<(f64, bool)>)> = Vec::new();
    for (name, f) in phases {
        if rows.iter().any(|r| matches!(r.1, Some((_, false)))) {
            rows.push((name, None));
            continue;
        }
        eprintln!("\n==> {name}");
        let t = Instant::now();
        let r = f();
        rows.push((name.clone(), Some(ended(&name, t, &r))));
    }
    eprintln!("\nphases:");
    for (n, r) in &rows {
        match r {
            Some((s, good)) => eprintln!("  {:<34} {:>6.0}s  {}", n, s, if *good { "ok" } else { "FAILED" }),
            None => eprintln!("  {:<34} {:>7}  not run", n, "-"),
        }
    }
    eprintln!("  {:<34} {:>6.0}s", "total", started.elapsed().as_secs_f64());
    let passed = rows.iter().filter(|r| matches!(r.1, Some((_, true)))).count();
    let not_run = rows.iter().filter(|r| r.1.is_none()).count();
    println!("xtask test: {passed} passed, {} failed, {not_run} skipped", rows.len() - passed - not_run);
    if passed + not_run < rows.len() {
        bail!("test phases failed");
    }
    Ok(())
}

/// Says how a phase ended; its time and whether it passed.
fn ended(name: &str, t: Instant, r: &Result<()>) -> (f64, bool) {
    let secs = t.elapsed().as_secs_f64();
    match r {
        Ok(()) => eprintln!("==> {name} ok ({secs:.0}s)"),
        Err(e) => eprintln!("==> {name} FAILED after {secs:.0}s: {e:#}"),
    }
    (secs, r.is_ok())
}
