//! Updates brought on the USB drive (`pi2pi-agent update`, run as root by `pi2pi-update.timer`).
//!
//! A bundle (`<host>.raucb`, made by `cargo xtask image`) put in the drive's `update/` directory
//! is copied onto the card (RAUC reads a plain bundle twice: a drive must not change it in
//! between, and RAUC takes ownership of it), checked (signed with the deployment's key, built for
//! this host, newer than what runs), and at a quiet moment (nothing pending to send, nothing
//! arriving) installed by RAUC into the slot that is not running, which becomes the next boot's
//! first choice. The Pi reboots into it for a trial: the new system is kept (its slot marked
//! good) only once it shows itself healthy (the agent has run, the drive is mounted, a peer that
//! is up has been reached) within `update.health_secs` of its boot. If it is not, it marks itself
//! bad and reboots into the old system; if it never gets that far, U-Boot goes back by itself
//! once the slot's attempts are used up (bootslot.rs). Either way the bundle is then moved to
//! `update/done/` with a text file beside it that says what happened.
//!
//! Everything the updater must remember across reboots is in `layout::UPDATE_DIR` (on the data
//! partition): the trial, and outcomes the drive was not there to receive.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bootslot::{self, Health, Slot};
use crate::config::{Config, Transport};
use crate::{drive, fsutil, layout, status};

/// The card's build, from `layout::BUILD_FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    pub version: u64,
    pub compatible: String,
}

impl Build {
    pub fn parse(text: &str) -> Result<Build> {
        let value = |key: &str| {
            text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).map(str::trim).with_context(|| format!("no `{key}=` line"))
        };
        let version = value("version")?;
        let version = version.parse().with_context(|| format!("version `{version}` is not a whole number"))?;
        Ok(Build { version, compatible: value("compatible")?.to_string() })
    }

    pub fn read(path: &Path) -> Result<Build> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Build::parse(&text).with_context(|| format!("{} is not a build file", path.display()))
    }
}

/// What `rauc info` says about a bundle whose signature it has checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleInfo {
    pub compatible: String,
    pub version: u64,
}

impl BundleInfo {
    /// `rauc info --output-format=shell`: `RAUC_MF_COMPATIBLE='…'` lines.
    pub fn parse_shell(text: &str) -> Result<BundleInfo> {
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(|v| v.trim().trim_matches('\'').to_string())
                .with_context(|| format!("rauc info printed no {key}"))
        };
        let version = value("RAUC_MF_VERSION")?;
        Ok(BundleInfo {
            compatible: value("RAUC_MF_COMPATIBLE")?,
            version: version.parse().with_context(|| format!("the bundle's version `{version}` is not a whole number"))?,
        })
    }

    /// Why this card will not take the bundle, if it will not.
    pub fn refusal(&self, running: &Build) -> Option<String> {
        if self.compatible != running.compatible {
            return Some(format!("it was built for `{}`, and this card is `{}`", self.compatible, running.compatible));
        }
        if self.version <= running.version {
            return Some(format!("its version {} is not newer than the running system's {}", self.version, running.version));
        }
        None
    }
}

/// A new system being tried: written before the reboot into it, removed once judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    /// The bundle's file name in the drive's update directory.
    pub bundle: String,
    pub version: u64,
    pub slot: Slot,
    pub from: Slot,
}

/// What became of a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Applied,
    RolledBack,
    Refused,
}

/// What became of a bundle, for the person who brought it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub bundle: String,
    pub result: Verdict,
    pub detail: String,
    pub unix: u64,
}

impl Outcome {
    fn new(bundle: &str, result: Verdict, detail: String) -> Outcome {
        Outcome { bundle: bundle.to_string(), result, detail, unix: status::unix_now() }
    }

    /// The text file put beside the bundle.
    pub fn text(&self, node: &str) -> String {
        let word = match self.result {
            Verdict::Applied => "APPLIED",
            Verdict::RolledBack => "ROLLED BACK",
            Verdict::Refused => "REFUSED",
        };
        format!("{word}: {}\n{node}, at {} (seconds since 1970, UTC, by the Pi's clock)\n{}\n", self.bundle, self.unix, self.detail)
    }
}

/// Where the updater's files are.
pub struct Dirs {
    pub state: PathBuf,
    pub boot_env: PathBuf,
    pub build: PathBuf,
}

impl Dirs {
    pub fn on_card() -> Dirs {
        Dirs { state: layout::UPDATE_DIR.into(), boot_env: layout::BOOT_ENV.into(), build: layout::BUILD_FILE.into() }
    }
    fn trial(&self) -> PathBuf {
        self.state.join("trial.json")
    }
    fn outcomes(&self) -> PathBuf {
        self.state.join("outcomes")
    }
    fn incoming(&self) -> PathBuf {
        self.state.join("incoming.raucb")
    }
    fn progress(&self) -> PathBuf {
        self.state.join("progress.txt")
    }
}

/// One pass; the timer runs it every few seconds. `cfg` is the agent's configuration, or why it
/// does not load: a new system whose configuration is broken is still judged (and rolled back).
pub fn pass(cfg: Result<&Config, String>) -> Result<()> {
    let dirs = Dirs::on_card();
    std::fs::create_dir_all(dirs.outcomes()).with_context(|| format!("creating {}", dirs.outcomes().display()))?;
    let booted = bootslot::booted_here()?;
    if let Some(trial) = read_json::<Trial>(&dirs.trial())? {
        judge_trial(cfg.clone(), &dirs, &trial, booted)?;
    } else {
        confirm_boot(&dirs, booted)?;
    }
    let cfg = cfg.map_err(|e| anyhow::anyhow!(e))?;
    // Once per pass: whether the drive can take outcomes and has bundles.
    if drive::check(&cfg.drive, None).is_err() {
        return Ok(());
    }
    deliver_outcomes(cfg, &dirs)?;
    if dirs.trial().exists() {
        return Ok(());
    }
    // A refused bundle is moved aside at once: the next one is looked at in the same pass, so
    // a drive with several is answered in one go (bounded: each bundle once).
    for _ in 0..MAX_BUNDLES_PER_PASS {
        let Some(bundle) = next_bundle(cfg)? else { break };
        if apply(cfg, &dirs, &bundle, booted)? == Applied::Waiting {
            break;
        }
    }
    Ok(())
}

/// How many bundles one pass looks at, at most.
const MAX_BUNDLES_PER_PASS: usize = 16;

/// What `apply` did with a bundle.
#[derive(Debug, PartialEq, Eq)]
enum Applied {
    /// Refused, and moved aside with its outcome: the next bundle may be looked at.
    Refused,
    /// Still there: it waits for a quiet moment (or the Pi is rebooting into it).
    Waiting,
}

/// An ordinary boot: the booted slot gets its attempts back (the boot state is written only
/// when that changes it).
fn confirm_boot(dirs: &Dirs, booted: Slot) -> Result<()> {
    let mut state = bootslot::load(&dirs.boot_env)?;
    let before = state.clone();
    state.set_health(booted, Health::Good);
    if state != before {
        bootslot::store(&dirs.boot_env, &state)?;
        tracing::info!("slot {booted} booted and is marked good");
    }
    Ok(())
}

/// This boot follows an install: keep the new system if it is healthy, go back if it is not.
fn judge_trial(cfg: Result<&Config, String>, dirs: &Dirs, trial: &Trial, booted: Slot) -> Result<()> {
    let mut state = bootslot::load(&dirs.boot_env)?;
    if booted != trial.slot {
        // U-Boot went back to the old slot: the new one did not come up, or gave itself up.
        if !has_outcome(dirs, &trial.bundle)? {
            let detail = format!(
                "The new system (version {}, slot {}) did not come up {} times in a row, so the Pi went back to the old one (slot {booted}) by itself.",
                trial.version,
                trial.slot,
                bootslot::ATTEMPTS
            );
            record(dirs, &Outcome::new(&trial.bundle, Verdict::RolledBack, detail))?;
        }
        state.set_health(trial.slot, Health::Bad);
        bootslot::store(&dirs.boot_env, &state)?;
        return remove(&dirs.trial());
    }
    let since_boot = uptime()?;
    let window = cfg.as_ref().map_or(Duration::from_secs(crate::config::DEFAULT_HEALTH_SECS), |c| c.update.health);
    // A configuration that does not load will not load later either: no agent runs in this
    // system, so waiting out the window would only keep the Pi from its peers longer.
    let (healthy, hopeless) = match cfg {
        Ok(cfg) => (health(cfg, status::unix_now().saturating_sub(since_boot.as_secs())), false),
        Err(e) => (Err(format!("the agent's configuration does not load: {e}")), true),
    };
    match healthy {
        Ok(()) => {
            state.set_health(booted, Health::Good);
            bootslot::store(&dirs.boot_env, &state)?;
            let detail =
                format!("Version {} runs in slot {booted}; it was healthy {}s after its boot.", trial.version, since_boot.as_secs());
            record(dirs, &Outcome::new(&trial.bundle, Verdict::Applied, detail))?;
            tracing::info!("update {} applied: version {} in slot {booted} is healthy", trial.bundle, trial.version);
            remove(&dirs.trial())
        }
        Err(why) if since_boot < window && !hopeless => {
            progress(dirs, &format!("trying version {} in slot {booted}: not healthy yet ({why})", trial.version));
            Ok(())
        }
        Err(why) => {
            let detail = format!(
                "The new system (version {}, slot {booted}) was not healthy {}s after its boot ({why}), so the Pi went back to the old one (slot {}).",
                trial.version,
                since_boot.as_secs(),
                trial.from
            );
            tracing::warn!("{detail}");
            record(dirs, &Outcome::new(&trial.bundle, Verdict::RolledBack, detail))?;
            state.set_health(booted, Health::Bad);
            bootslot::store(&dirs.boot_env, &state)?;
            remove(&dirs.trial())?;
            reboot()
        }
    }
}

/// The health an update must show: the agent has run since the boot, the drive is mounted and
/// usable, and every peer whose SSH port answers has been reached by the agent without error.
pub fn health(cfg: &Config, booted_unix: u64) -> Result<(), String> {
    drive::check(&cfg.drive, None).map_err(|e| format!("the drive: {e}"))?;
    let st = status::read(&cfg.state_dir).filter(|s| s.updated_unix >= booted_unix).ok_or("the agent has not run since the boot")?;
    for p in &cfg.peers {
        let Transport::Ssh { host, port, .. } = &p.transport else { continue };
        if !answers(host, *port) {
            continue; // a peer that is down is not this system's fault
        }
        let reached = st.peers.iter().find(|s| s.name == p.name).is_some_and(|s| s.connected || s.last_error.is_none());
        if !reached {
            return Err(format!("{} is up but the agent has not reached it", p.name));
        }
    }
    Ok(())
}

fn answers(host: &str, port: u16) -> bool {
    use std::net::ToSocketAddrs;
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    addrs.into_iter().any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// The first bundle (by name) waiting in the drive's update directory (the drive is ready).
fn next_bundle(cfg: &Config) -> Result<Option<PathBuf>> {
    let dir = &cfg.update.dir;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut bundles: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "raucb"))
        .collect();
    bundles.sort();
    Ok(bundles.into_iter().next())
}

/// Checks one bundle and, if it is for this card and newer, installs it and reboots into it.
fn apply(cfg: &Config, dirs: &Dirs, bundle: &Path, booted: Slot) -> Result<Applied> {
    let name = bundle.file_name().context("a bundle without a name")?.to_string_lossy().into_owned();
    if let Some(why) = busy(cfg) {
        progress(dirs, &format!("{name} waits for a quiet moment: {why}"));
        return Ok(Applied::Waiting);
    }
    let running = Build::read(&dirs.build)?;
    let size = std::fs::metadata(bundle).with_context(|| format!("reading {}", bundle.display()))?.len();
    if let Some(why) = no_room(&dirs.state, size) {
        tracing::warn!("{name} refused: {why}");
        record(dirs, &Outcome::new(&name, Verdict::Refused, format!("Nothing was written: {why}.")))?;
        deliver_outcomes(cfg, dirs)?;
        return Ok(Applied::Refused);
    }
    progress(dirs, &format!("{name}: copying it onto the card"));
    if let Err(e) = copy_synced(bundle, &dirs.incoming()) {
        // A drive pulled in the middle, say: no half copy is left to fill the partition; the
        // bundle is still on the drive for the next pass.
        let _ = remove(&dirs.incoming());
        return Err(e);
    }
    let checked = run_capture(Command::new("rauc").args(["info", "--output-format=shell"]).arg(dirs.incoming()))
        .and_then(|out| BundleInfo::parse_shell(&out));
    let refusal = match &checked {
        Err(e) => Some(format!("RAUC could not verify it (not signed with this deployment's key, or damaged): {e:#}")),
        Ok(info) => info.refusal(&running),
    };
    if let Some(why) = refusal {
        tracing::warn!("{name} refused: {why}");
        record(dirs, &Outcome::new(&name, Verdict::Refused, format!("Nothing was written: {why}.")))?;
        remove(&dirs.incoming())?;
        deliver_outcomes(cfg, dirs)?;
        return Ok(Applied::Refused);
    }
    let info = checked?;
    tracing::info!("installing {name} (version {}) into slot {}", info.version, booted.other());
    if let Err(e) = install(dirs, &name) {
        record(
            dirs,
            &Outcome::new(&name, Verdict::Refused, format!("RAUC could not install it, and the running system is unchanged: {e:#}")),
        )?;
        remove(&dirs.incoming())?;
        deliver_outcomes(cfg, dirs)?;
        return Ok(Applied::Refused);
    }
    let trial = Trial { bundle: name.clone(), version: info.version, slot: booted.other(), from: booted };
    write_json(&dirs.trial(), &trial)?;
    remove(&dirs.incoming())?;
    progress(dirs, &format!("{name} installed in slot {}; rebooting to try it", trial.slot));
    reboot()?;
    Ok(Applied::Waiting)
}

/// What the data partition keeps free beyond a bundle's copy: the agent's journal and state go on
/// being written while RAUC reads it.
const KEEP_FREE: u64 = 64 << 20;

/// Why a bundle of `size` bytes cannot be copied into `dir`, if it cannot: a full data partition
/// would stop the agent's state and journal too.
fn no_room(dir: &Path, size: u64) -> Option<String> {
    let st = rustix::fs::statvfs(dir).ok()?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free < size.saturating_add(KEEP_FREE)).then(|| {
        format!(
            "the card's data partition has {} MiB free and the bundle needs {} MiB and {} MiB to spare (the partition grows to the end of the card on the first boot: a card of 4 GB or more leaves room)",
            free >> 20,
            size.div_ceil(1 << 20),
            KEEP_FREE >> 20
        )
    })
}

/// Why now is not a quiet moment, if it is not: files still to send, or a file arriving.
fn busy(cfg: &Config) -> Option<String> {
    let st = status::read(&cfg.state_dir)?;
    if let Some(p) = st.peers.iter().find(|p| !p.pending.is_empty()) {
        return Some(format!("{} files wait to be sent to {}", p.pending.len(), p.name));
    }
    let recent = std::time::SystemTime::now() - Duration::from_secs(30);
    let arriving = walkdir::WalkDir::new(&cfg.drive.receiving)
        .max_depth(8)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter(|e| crate::paths::is_temp_name(&e.file_name().to_string_lossy()))
        .any(|e| e.metadata().ok().and_then(|m| m.modified().ok()).is_some_and(|t| t > recent));
    arriving.then(|| "a file is arriving".to_string())
}

/// `rauc install`, its progress in the journal and in `pi2pi-agent status`.
fn install(dirs: &Dirs, name: &str) -> Result<()> {
    let mut child = Command::new("rauc")
        .arg("install")
        .arg(dirs.incoming())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting rauc")?;
    let out = child.stdout.take().context("rauc's output")?;
    let mut last = String::new();
    for line in BufReader::new(out).lines() {
        let line = line?;
        tracing::info!("rauc: {line}");
        progress(dirs, &format!("installing {name}: {}", line.trim()));
        last = line;
    }
    let st = child.wait()?;
    if !st.success() {
        bail!("rauc install: {st}: {last}");
    }
    Ok(())
}

/// Outcomes recorded but not yet on the drive (which is ready): each written beside its bundle,
/// which is then moved to `update/done/` (numbered if a bundle of that name is there already).
fn deliver_outcomes(cfg: &Config, dirs: &Dirs) -> Result<()> {
    let mut pending: Vec<PathBuf> = std::fs::read_dir(dirs.outcomes())?.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    pending.sort();
    if pending.is_empty() {
        return Ok(());
    }
    let done = cfg.update.dir.join("done");
    std::fs::create_dir_all(&done).with_context(|| format!("creating {}", done.display()))?;
    for file in pending {
        let Some(o) = read_json::<Outcome>(&file)? else { continue };
        let target = free_name(&done, &o.bundle);
        let text_file = done.join(format!("{}.txt", target.file_name().unwrap_or_default().to_string_lossy()));
        fsutil::replace_file(&text_file, o.text(&cfg.node).as_bytes()).with_context(|| format!("writing {}", text_file.display()))?;
        let from = cfg.update.dir.join(&o.bundle);
        if from.exists() {
            std::fs::rename(&from, &target).with_context(|| format!("moving {} to {}", from.display(), target.display()))?;
            fsutil::sync_dir(&cfg.update.dir)?;
        }
        remove(&file)?;
    }
    Ok(())
}

/// `name` in `dir`, or `name-2`, `name-3`, … if taken.
pub fn free_name(dir: &Path, name: &str) -> PathBuf {
    let (stem, ext) = name.rsplit_once('.').map_or((name, ""), |(s, e)| (s, e));
    (1..)
        .map(|n| match (n, ext) {
            (1, _) => dir.join(name),
            (n, "") => dir.join(format!("{stem}-{n}")),
            (n, ext) => dir.join(format!("{stem}-{n}.{ext}")),
        })
        .find(|p| !p.exists() && !p.with_file_name(format!("{}.txt", p.file_name().unwrap_or_default().to_string_lossy())).exists())
        .expect("an unbounded range")
}

fn record(dirs: &Dirs, o: &Outcome) -> Result<()> {
    write_json(&dirs.outcomes().join(format!("{}-{}.json", o.unix, o.bundle)), o)?;
    let first = o.text("").lines().next().unwrap_or_default().to_string();
    progress(dirs, &format!("{first}: {}", o.detail));
    Ok(())
}

fn has_outcome(dirs: &Dirs, bundle: &str) -> Result<bool> {
    for e in std::fs::read_dir(dirs.outcomes())? {
        if read_json::<Outcome>(&e?.path())?.is_some_and(|o| o.bundle == bundle) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What the updater is doing, for `pi2pi-agent status` and the journal.
fn progress(dirs: &Dirs, line: &str) {
    tracing::info!("{line}");
    let _ = std::fs::write(dirs.progress(), format!("{line}\n"));
}

/// The updater's last word, if any (`pi2pi-agent status`).
pub fn last_progress() -> Option<String> {
    std::fs::read_to_string(Dirs::on_card().progress()).ok().map(|s| s.trim().to_string())
}

fn uptime() -> Result<Duration> {
    let text = std::fs::read_to_string("/proc/uptime").context("reading /proc/uptime")?;
    let secs: f64 = text.split_whitespace().next().and_then(|s| s.parse().ok()).context("/proc/uptime")?;
    Ok(Duration::from_secs_f64(secs))
}

fn reboot() -> Result<()> {
    run_capture(Command::new("systemctl").arg("reboot")).map(|_| ())
}

fn run_capture(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        // RAUC's own progress ("rauc-Message: …") is in the journal; the error is what is left.
        let err = String::from_utf8_lossy(&out.stderr);
        let err: Vec<&str> = err.lines().filter(|l| !l.contains("rauc-Message:")).collect();
        bail!("{shown}: {}: {}", out.status, err.join(" ").trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn copy_synced(from: &Path, to: &Path) -> Result<()> {
    let mut src = std::fs::File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let mut dst = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    dst.sync_all()?;
    Ok(())
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    fsutil::replace_file(path, serde_json::to_string_pretty(v)?.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn remove(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e).with_context(|| format!("removing {}", path.display())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_file_is_read_and_a_bundle_judged_against_it() {
        let running = Build::parse("# comment\nversion=100\ncompatible=pi2pi-rpa\n").unwrap();
        assert_eq!(running, Build { version: 100, compatible: "pi2pi-rpa".into() });
        assert!(Build::parse("compatible=x\n").is_err());
        let info = BundleInfo::parse_shell("RAUC_MF_COMPATIBLE='pi2pi-rpa'\nRAUC_MF_VERSION='101'\nRAUC_MF_DESCRIPTION=''\n").unwrap();
        assert_eq!(info.refusal(&running), None);
        let older = BundleInfo { version: 100, ..info.clone() };
        assert!(older.refusal(&running).unwrap().contains("not newer than the running system's 100"));
        let other = BundleInfo { compatible: "pi2pi-rpb".into(), ..info };
        assert!(other.refusal(&running).unwrap().contains("built for `pi2pi-rpb`"));
    }

    #[test]
    fn a_bundle_moved_aside_never_replaces_another() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(free_name(d.path(), "rpa.raucb"), d.path().join("rpa.raucb"));
        std::fs::write(d.path().join("rpa.raucb"), b"x").unwrap();
        assert_eq!(free_name(d.path(), "rpa.raucb"), d.path().join("rpa-2.raucb"));
        // A text file left alone (its bundle taken away by hand) still holds the name.
        std::fs::write(d.path().join("rpa-2.raucb.txt"), b"x").unwrap();
        assert_eq!(free_name(d.path(), "rpa.raucb"), d.path().join("rpa-3.raucb"));
    }

    #[test]
    fn the_outcome_says_what_happened_first() {
        let o = Outcome { bundle: "rpa.raucb".into(), result: Verdict::RolledBack, detail: "why".into(), unix: 5 };
        assert!(o.text("rpa").starts_with("ROLLED BACK: rpa.raucb\nrpa, at 5 "));
        let j = serde_json::to_string(&o).unwrap();
        assert!(j.contains("\"rolled-back\""), "{j}");
        assert_eq!(serde_json::from_str::<Outcome>(&j).unwrap(), o);
    }
}
