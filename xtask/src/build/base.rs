//! Stage 1: the base root filesystem, a tarball made by mmdebstrap from Debian packages (foreign
//! package scripts under qemu-user-static), cached by a hash of everything that goes into it.
//! One base serves every host of an architecture; what differs per host is added in layers.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::build::cache;
use crate::build::config::{Base, ImageConfig};
use crate::build::pins::{BasePins, LockFile};
use crate::proc;

const SETUP: &str = include_str!("../../hooks/setup.sh");
const ESSENTIAL: &str = include_str!("../../hooks/essential.sh");
const CUSTOMIZE: &str = include_str!("../../hooks/customize.sh");

pub struct BuiltBase {
    pub tar: PathBuf,
    pub pins: BasePins,
    pub cached: bool,
    pub seconds: f64,
}

/// The build's SOURCE_DATE_EPOCH: the lock's, else `$SOURCE_DATE_EPOCH`, else the last commit's
/// time, so a fresh lock is stable. No silent default: a made-up time would make two builds differ.
fn epoch(sh: &Shell, locked: Option<&BasePins>) -> Result<u64> {
    if let Some(l) = locked {
        return Ok(l.source_date_epoch);
    }
    if let Ok(s) = std::env::var("SOURCE_DATE_EPOCH") {
        return s.parse().context("SOURCE_DATE_EPOCH is not a number");
    }
    let t = cmd!(sh, "git log -1 --format=%ct").quiet().ignore_stderr().read().unwrap_or_default();
    t.trim().parse().map_err(|_| {
        anyhow::anyhow!(
            "no time to build from: the lock has no section for this base, this is not a git checkout with a commit, \
             and SOURCE_DATE_EPOCH is not set. Set SOURCE_DATE_EPOCH (seconds since 1970) or build from a git clone."
        )
    })
}

fn cache_key(cfg: &ImageConfig, b: &Base, lock: Option<&BasePins>, epoch: u64) -> Result<String> {
    let base = serde_json::to_vec(b)?;
    let lock = lock.map(|l| l.render_section()).unwrap_or_default();
    let keyring = fs_err::read(&b.keyring).with_context(|| format!("reading {}", b.keyring.display()))?;
    Ok(cache::key(&[
        ("format", b"base-1"),
        ("base", &base),
        ("keyring", &keyring),
        ("user", cfg.system.user.as_bytes()),
        ("locale", cfg.system.locale.as_bytes()),
        ("password", cfg.system.password_hash.as_bytes()),
        ("hooks", format!("{SETUP}{ESSENTIAL}{CUSTOMIZE}").as_bytes()),
        ("lock", lock.as_bytes()),
        ("epoch", &epoch.to_le_bytes()),
    ]))
}

/// mmdebstrap's options for a base (without hooks, suite, target and mirrors).
fn mmdebstrap_argv(b: &Base) -> Vec<OsString> {
    let mut include = b.packages.clone();
    include.extend([b.kernel.clone(), b.firmware.clone(), b.bootloader.clone()]);
    let mut argv: Vec<OsString> = vec![
        "mmdebstrap".into(),
        "--mode=root".into(),
        "--variant=minbase".into(),
        format!("--architectures={}", b.arch.deb()).into(),
        format!("--components={}", b.components.join(",")).into(),
        format!("--keyring={}", b.keyring.display()).into(),
        format!("--include={}", include.join(",")).into(),
        "--aptopt=Acquire::Retries \"3\"".into(),
        // dpkg's output too, which the build counts to show progress (proc::run_logged).
        "--verbose".into(),
    ];
    // dpkg applies them in order: the exclusions, then what is included back.
    for (option, patterns) in [("path-exclude", &b.path_exclude), ("path-include", &b.path_include)] {
        for p in patterns.iter().flat_map(|p| with_usr_twin(p)) {
            argv.push(format!("--dpkgopt={option}={p}").into());
        }
    }
    argv
}

/// A dpkg path pattern and, for one under /lib, the same under /usr/lib: packages of bookworm and
/// earlier may still ship /lib, merged-/usr ones ship /usr/lib.
fn with_usr_twin(pattern: &str) -> Vec<String> {
    let twin = pattern.strip_prefix("/lib/").map(|rest| format!("/usr/lib/{rest}"));
    std::iter::once(pattern.to_string()).chain(twin).collect()
}

/// Asks apt (through `mmdebstrap --simulate`: package indices only, nothing installed) whether
/// the base's package selection can be installed from its suite and mirrors. Seconds, not minutes.
pub fn resolve(sh: &Shell, b: &Base, work: &Path) -> Result<()> {
    fs_err::create_dir_all(work)?;
    let mut argv = mmdebstrap_argv(b);
    argv.push("--simulate".into());
    argv.push(b.suite.clone().into());
    argv.push(work.join("simulated.tar").into());
    argv.extend(b.sources().into_iter().map(OsString::from));
    let log = work.join(format!("resolve-{}-{}.log", b.suite, b.arch.deb()));
    proc::run_logged(sh.current_dir().as_path(), &argv, &[], &log, "resolve")
        .with_context(|| format!("the {} {} package selection does not resolve", b.suite, b.arch.deb()))
}

/// Builds `b` (one of `cfg`'s bases: `cfg` gives its lock file and `[system]`) into the cache,
/// or finds it there.
pub fn build(sh: &Shell, cfg: &ImageConfig, b: &Base, update_lock: bool, work: &Path, cache: &Path) -> Result<BuiltBase> {
    let started = Instant::now();
    let lock_file = &cfg.lock_file();
    let lock = LockFile::read(lock_file)?;
    let locked = lock.get(&b.suite, b.arch.deb()).filter(|_| !update_lock).cloned();
    let locked = locked.as_ref();
    let epoch = epoch(sh, locked)?;
    let key = cache_key(cfg, b, locked, epoch)?;
    let dir = cache.join("base");
    let name = |k: &str| dir.join(format!("{}-{}-{k}", b.suite, b.arch.deb()));
    let tar = name(&key).with_extension("tar");
    if tar.exists() {
        let pins = BasePins::read_single(&name(&key).with_extension("lock")).context("a cached base without its pins")?;
        write_lock(lock_file, &pins)?;
        return Ok(BuiltBase { tar, pins, cached: true, seconds: started.elapsed().as_secs_f64() });
    }

    let out = work.join("base");
    if out.exists() {
        fs_err::remove_dir_all(&out)?;
    }
    fs_err::create_dir_all(&out)?;
    fs_err::create_dir_all(&dir)?;
    // Hooks and their inputs are files in `out`; the hooks find them and every value through
    // the environment (PI2PI_*), so no path or value is ever pasted into a shell command.
    for (name, text) in [
        ("setup.sh", SETUP.to_string()),
        ("essential.sh", ESSENTIAL.to_string()),
        ("customize.sh", CUSTOMIZE.to_string()),
        ("preferences", locked.map(|l| l.apt_preferences()).unwrap_or_default()),
        ("modules", b.initramfs_modules.join("\n") + "\n"),
    ] {
        fs_err::write(out.join(name), text)?;
    }

    let mut argv = mmdebstrap_argv(b);
    for stage in ["setup", "essential", "customize"] {
        argv.push(format!("--{stage}-hook=sh \"$PI2PI_HOOKS/{stage}.sh\" \"$1\"").into());
    }
    let partial = out.join("base.tar");
    argv.push(b.suite.clone().into());
    argv.push(partial.clone().into());
    argv.extend(b.sources().into_iter().map(OsString::from));
    eprintln!("base: building {} {} with mmdebstrap (cold cache; this is the slow step)", b.suite, b.arch.deb());
    let env = [
        ("SOURCE_DATE_EPOCH", epoch.to_string()),
        ("PI2PI_HOOKS", out.display().to_string()),
        ("PI2PI_USER", cfg.system.user.clone()),
        ("PI2PI_LOCALE", cfg.system.locale.clone()),
        ("PI2PI_PASSWORD_HASH", cfg.system.password_hash.clone()),
    ];
    proc::run_logged(sh.current_dir().as_path(), &argv, &env, &out.join("mmdebstrap.log"), "base")?;

    let status = fs_err::read_to_string(out.join("dpkg-status"))?;
    let index = fs_err::read_to_string(out.join("Packages"))?;
    let built = BasePins::from_build(epoch, &b.suite, b.arch.deb(), &status, &index)?;
    if let Some(l) = locked {
        let drift = l.drift(&built);
        if !drift.is_empty() {
            bail!(
                "the archive no longer serves what {} pins for {} {}:\n  {}\nPoint base.mirrors at a snapshot of the archive, or accept the new packages \
                 with `cargo xtask image <host> --update-lock` (and commit the lock).",
                lock_file.display(),
                b.suite,
                b.arch.deb(),
                drift.join("\n  ")
            );
        }
    }
    fs_err::rename(&partial, &tar)?;
    fs_err::write(name(&key).with_extension("lock"), built.render())?;
    // Next time the lock exists, so the key will be computed with it: store under that key too.
    let next = name(&cache_key(cfg, b, Some(&built), epoch)?);
    if next.with_extension("tar") != tar {
        let _ = fs_err::remove_file(next.with_extension("tar"));
        fs_err::hard_link(&tar, next.with_extension("tar"))?;
        fs_err::write(next.with_extension("lock"), built.render())?;
    }
    write_lock(lock_file, &built)?;
    Ok(BuiltBase { tar, pins: built, cached: false, seconds: started.elapsed().as_secs_f64() })
}

/// Builds every base the hosts of `cfgs` use (the same suite and architecture once) at the same
/// time, each in its own work directory under `work`, into the cache the image builds then find
/// them in. A cold base is one emulated dpkg at a time, a single core's work: two or three at
/// once take little longer than the slowest alone.
pub fn build_all(root: &Path, cfgs: &[ImageConfig], work: &Path, cache: &Path) -> Result<()> {
    let mut distinct: Vec<(&ImageConfig, &Base)> = Vec::new();
    for (c, b) in cfgs.iter().flat_map(|c| c.bases_in_use().into_iter().map(move |b| (c, b))) {
        if !distinct.iter().any(|(_, d)| (&d.suite, d.arch) == (&b.suite, b.arch)) {
            distinct.push((c, b));
        }
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = distinct
            .iter()
            .map(|&(cfg, b)| {
                s.spawn(move || -> Result<()> {
                    let sh = Shell::new()?;
                    sh.change_dir(root);
                    let (suite, arch) = (&b.suite, b.arch.deb());
                    let built = build(&sh, cfg, b, false, &work.join(format!("{suite}-{arch}")), cache)
                        .with_context(|| format!("the {suite} {arch} base of {}", cfg.file().display()))?;
                    let how = if built.cached { "in the cache" } else { "built" };
                    eprintln!("base: {suite} {arch}: {} packages, {how} ({:.0}s)", built.pins.packages.len(), built.seconds);
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("a base build panicked"))).collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// Lock files are read, changed and written by base builds that may run at the same time.
static LOCK_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Puts this base's section into the lock file (other bases' sections stay) if it changed.
fn write_lock(path: &Path, new: &BasePins) -> Result<()> {
    let _guard = LOCK_FILES.lock().unwrap_or_else(|e| e.into_inner());
    // Read now, not when the build began: another base's build may have written its section.
    let mut lock = LockFile::read(path)?;
    if lock.get(&new.suite, &new.arch) != Some(new) {
        lock.put(new.clone());
        fs_err::write(path, lock.render()).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "base: wrote the {} {} section of {} ({} packages); commit it so rebuilds are identical",
            new.suite,
            new.arch,
            path.display(),
            new.packages.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lib_patterns_also_exclude_their_usr_twin() {
        assert_eq!(with_usr_twin("/lib/modules/*/x/*"), vec!["/lib/modules/*/x/*", "/usr/lib/modules/*/x/*"]);
        assert_eq!(with_usr_twin("/usr/share/doc/*"), vec!["/usr/share/doc/*"]);
    }
}
