//! `cargo xtask soak [--faults N] [--seed S] [--max-mib M]`: the pair booted as in the pair test,
//! a writer on each side putting files into `sending/` (0 B to `--max-mib`, names with spaces,
//! non-ASCII letters and nested directories; some rewritten while they are being sent, some
//! deleted once sent), and faults injected at moments drawn from a replayable seed: power cut
//! (QEMU killed, or QMP `quit`) and a cold boot of the same disks, the USB drive pulled and plugged
//! back (QMP `device_del`/`device_add`; sometimes only after a reboot), the cable cut (QMP
//! `set_link`), the agent killed, a reboot in the middle of a transfer.
//!
//! Judged by what was written, never by logs: after every fault, no file under its final name at
//! a receiver that is not byte-identical to a version its sender had (torn); once both sides are
//! idle, no file the sender did not change written again at the receiver (sent twice), and no
//! temporaries left; while a drive is out, nothing under its bare mount point. At the end, after a
//! clean shutdown, from the host: every file in a `sending/` is in the peer's `receiving/` with its
//! last content (lost), nothing there the sender never had (a second copy under another name),
//! and `fsck.vfat -n` finds both drives clean. Recovery (fault over → first delivery after it) is
//! reported per kind.
//!
//! Runs under target/soak/; console logs, transcripts of the guest commands and report.txt stay
//! there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;
use xshell::{cmd, Shell};

use crate::build::config::{Host, ImageConfig};
use crate::build::image;
use crate::build::mac::PiMacs;
use crate::proc;
use crate::systest::pair::{specs, Drives};
use crate::vm::drive::drive_tree;
use crate::vm::guest::{check_boot_state, guest_written, wait_arrival, wait_idle, wait_mounted, wait_until};
use crate::vm::qemu::{self, Power, Vm};

mod faults;
mod judge;
mod update;
use crate::vm::qmp::{Qmp, QMP_SOCK};

/// How long delivery may take to resume once a fault is over (a cold boot's services included).
const RECOVERY_LIMIT: Duration = Duration::from_secs(300);
/// How long both sides may take to deliver everything and go idle.
const IDLE_LIMIT: Duration = Duration::from_secs(600);
/// The soak's drives: room for many files of up to `--max-mib` both ways.
const DRIVE_KIB: u64 = 2 << 20;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// QEMU killed (or told to quit over QMP), then a cold boot of the same disks.
    PowerCut,
    /// The USB drive pulled and plugged back, sometimes only after a reboot.
    DrivePull,
    /// The cable unplugged for seconds to minutes.
    CableCut,
    /// The agent killed (SIGKILL) inside the guest.
    AgentKill,
    /// A clean reboot while a file is being sent.
    Reboot,
    /// Update bundles brought on the USB drive (`update.rs`): refused, applied across power
    /// cuts, or tried and rolled back.
    Update,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::PowerCut, Kind::DrivePull, Kind::CableCut, Kind::AgentKill, Kind::Reboot, Kind::Update];

    fn name(self) -> &'static str {
        match self {
            Kind::PowerCut => "power cut",
            Kind::DrivePull => "drive pull",
            Kind::CableCut => "cable cut",
            Kind::AgentKill => "agent kill",
            Kind::Reboot => "reboot mid-transfer",
            Kind::Update => "update",
        }
    }
}

pub struct Options {
    pub faults: usize,
    pub seed: u64,
    /// The largest file a writer puts into sending/.
    pub max_mib: u64,
    /// The longest a cable stays cut.
    pub max_cut: Duration,
}

impl Options {
    /// The soak `cargo xtask test` runs: two faults of each kind (the update's two cases, with
    /// their four reboots and two power cuts besides), files of up to 16 MiB and cuts of up to
    /// 20 s, so that it fits the test budget; the seed is fixed, so a red run replays with the
    /// command the soak prints. Longer soaks are `cargo xtask soak`'s.
    pub fn short() -> Options {
        Options { faults: 2 * Kind::ALL.len(), seed: 20261130, max_mib: 16, max_cut: Duration::from_secs(20) }
    }
}

/// One fault and how long delivery took to resume after it.
pub struct Fault {
    pub kind: Kind,
    pub host: String,
    pub what: String,
    pub recovery: Duration,
}

pub struct Report {
    pub seed: u64,
    pub faults: Vec<Fault>,
    pub files: usize,
    pub bytes: u64,
    pub lost: Vec<String>,
    pub torn: Vec<String>,
    pub doubled: Vec<String>,
    pub wall: Duration,
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = format!(
            "soak (seed {}): {} faults survived; {} files, {:.1} MB delivered; lost {}, torn {}, sent twice or doubled {}; wall {:.0}s\n",
            self.seed,
            self.faults.len(),
            self.files,
            self.bytes as f64 / 1e6,
            self.lost.len(),
            self.torn.len(),
            self.doubled.len(),
            self.wall.as_secs_f64()
        );
        for kind in Kind::ALL {
            let mut r: Vec<f64> = self.faults.iter().filter(|f| f.kind == kind).map(|f| f.recovery.as_secs_f64()).collect();
            if r.is_empty() {
                continue;
            }
            r.sort_by(|a, b| a.total_cmp(b));
            s += &format!(
                "  {:<20} {:>3} × recovery to first delivery: median {:.1}s, max {:.1}s\n",
                kind.name(),
                r.len(),
                r[r.len() / 2],
                r[r.len() - 1]
            );
        }
        for (what, list) in [("lost", &self.lost), ("torn", &self.torn), ("doubled", &self.doubled)] {
            for l in list {
                s += &format!("  {what}: {l}\n");
            }
        }
        s
    }

    fn clean(&self) -> bool {
        self.lost.is_empty() && self.torn.is_empty() && self.doubled.is_empty()
    }
}

/// Builds (or reuses, `build` false) the pair's cards and runs the soak.
pub fn run(sh: &Shell, cfg: &ImageConfig, opts: &Options, build: bool) -> Result<Report> {
    let t0 = Instant::now();
    ensure!(cfg.hosts.len() == 2 && cfg.lan().is_ok(), "the soak needs a pair (two hosts on one cable) in {}", cfg.file().display());
    let images_dir = image::Options::default_for(sh).out_dir;
    let hosts: Vec<&Host> = cfg.hosts.iter().collect();
    if build {
        image::build(sh, cfg, &hosts, &image::Options::default_for(sh))?;
    }
    let images: Vec<PathBuf> = hosts.iter().map(|h| images_dir.join(format!("{}.img", h.name))).collect();
    for i in &images {
        ensure!(i.exists(), "{} is missing: run `cargo xtask image all`", i.display());
    }
    let run_dir = sh.current_dir().join("target/soak");
    let _ = fs_err::remove_dir_all(&run_dir);
    fs_err::create_dir_all(&run_dir)?;
    let mut macs = PiMacs::for_run("soak")?;
    eprintln!(
        "soak: {} faults, seed {} (replay: {}={} cargo xtask soak --faults {} --seed {} --max-mib {} --max-cut {})",
        opts.faults,
        opts.seed,
        crate::build::mac::SEED_VAR,
        macs.seed(),
        opts.faults,
        opts.seed,
        opts.max_mib,
        opts.max_cut.as_secs()
    );
    let result = Soak::start(sh, cfg, &hosts, &images, &run_dir, opts, &mut macs).and_then(|mut s| {
        let r = s.run(opts, t0);
        if r.is_err() {
            s.keep_diagnostics();
        }
        r
    });
    let text = match &result {
        Ok(r) => r.render(),
        Err(e) => format!("FAILED: {e:#}\n"),
    };
    fs_err::write(run_dir.join("report.txt"), &text)?;
    let report = result
        .with_context(|| format!("soak failed (seed {}); console logs, transcripts and report in {}", opts.seed, run_dir.display()))?;
    if !report.clean() {
        bail!("the soak lost, tore or doubled files (seed {}):\n{}", opts.seed, report.render());
    }
    for h in &hosts {
        for f in ["overlay.qcow2", "usb.img"] {
            let _ = fs_err::remove_file(run_dir.join(&h.name).join(f));
        }
    }
    let _ = fs_err::remove_dir_all(run_dir.join("bundles"));
    Ok(report)
}

/// What one sender's writer did: every version each path had (SHA-256, oldest first), and which
/// paths are in sending/ now.
#[derive(Default)]
struct Written {
    versions: BTreeMap<String, Vec<String>>,
    present: BTreeSet<String>,
    /// Paths written since both sides were last idle: their receiver may write them again.
    since_idle: BTreeSet<String>,
    bytes: BTreeMap<String, u64>,
}

struct Soak<'a> {
    sh: &'a Shell,
    cfg: &'a ImageConfig,
    hosts: &'a [&'a Host],
    specs: Vec<qemu::Spec>,
    boots: Vec<crate::vm::boot::BootFiles>,
    vms: Vec<Vm>,
    qmp: Vec<Qmp>,
    rng: fastrand::Rng,
    opts_max: u64,
    written: [Written; 2],
    /// What each receiving/ held (path → size and times) when both sides were last idle.
    received: [BTreeMap<String, String>; 2],
    drive_in: [bool; 2],
    serial: u32,
    /// Each receiving/'s files as last hashed: path → (size and times, SHA-256).
    hashed: [BTreeMap<String, (String, String)>; 2],
    torn: BTreeSet<String>,
    doubled: BTreeSet<String>,
    bundles: update::Bundles,
    /// Update faults so far (they take turns: a newer build, a broken one).
    updates: usize,
}

impl<'a> Soak<'a> {
    fn start(
        sh: &'a Shell,
        cfg: &'a ImageConfig,
        hosts: &'a [&'a Host],
        images: &[PathBuf],
        run_dir: &Path,
        opts: &Options,
        macs: &mut PiMacs,
    ) -> Result<Soak<'a>> {
        let specs = specs(sh, cfg, hosts, images, run_dir, Drives { files: &[Vec::new(), Vec::new()], kib: DRIVE_KIB }, macs)?;
        let (boots, vms) = qemu::start_all(sh, &specs)?;
        let qmp = specs.iter().map(|s| Qmp::connect(&s.dir.join(QMP_SOCK), Duration::from_secs(30))).collect::<Result<_>>()?;
        let mut s = Soak {
            sh,
            cfg,
            hosts,
            specs,
            boots,
            vms,
            qmp,
            rng: fastrand::Rng::with_seed(opts.seed),
            opts_max: opts.max_mib,
            written: Default::default(),
            received: Default::default(),
            drive_in: [true, true],
            serial: 0,
            hashed: Default::default(),
            torn: BTreeSet::new(),
            doubled: BTreeSet::new(),
            bundles: update::Bundles::new(sh, run_dir)?,
            updates: 0,
        };
        let started = Instant::now();
        for vm in s.vms.iter_mut() {
            let t = vm.wait_booted(started)?;
            eprintln!("soak: {} booted in {:.0}s", vm.name, t.as_secs_f64());
        }
        for i in 0..2 {
            wait_mounted(&mut s.vms[i], &cfg.drive.mount_point, "vfat")?;
        }
        Ok(s)
    }

    fn run(&mut self, opts: &Options, t0: Instant) -> Result<Report> {
        let mut faults = Vec::new();
        // Every kind in turn, in an order shuffled per round, so a short soak has each kind.
        let mut order: Vec<Kind> = Vec::new();
        for n in 0..opts.faults {
            if order.is_empty() {
                order = Kind::ALL.to_vec();
                self.rng.shuffle(&mut order);
            }
            let kind = order.pop().unwrap_or(Kind::AgentKill);
            self.churn()?;
            let drawn = self.rng.usize(0..2);
            let victim = if kind == Kind::Update { self.update_victim() } else { drawn };
            let f = self
                .inject(kind, victim, opts)
                .with_context(|| format!("fault {} ({} of {})", n + 1, kind.name(), self.hosts[victim].name))?;
            eprintln!(
                "soak: fault {}/{} (at {:.0}s): {} of {}: {}; delivering again {:.1}s after",
                n + 1,
                opts.faults,
                t0.elapsed().as_secs_f64(),
                kind.name(),
                f.host,
                f.what,
                f.recovery.as_secs_f64()
            );
            if matches!(kind, Kind::PowerCut | Kind::Reboot | Kind::DrivePull | Kind::Update) {
                self.keep_timeline(n + 1, victim);
            }
            faults.push(f);
            self.check_nothing_torn()?;
            self.settle()?;
        }
        self.churn()?;
        self.settle()?;
        self.wait_delivered()?;
        let (lost, files, bytes) = self.finish()?;
        Ok(Report {
            seed: opts.seed,
            faults,
            files,
            bytes,
            lost,
            torn: self.torn.iter().cloned().collect(),
            doubled: self.doubled.iter().cloned().collect(),
            wall: t0.elapsed(),
        })
    }

    fn mount(&self) -> &str {
        &self.cfg.drive.mount_point
    }

    /// A path for a new file: spaces, non-ASCII letters, nested directories.
    fn new_path(&mut self) -> String {
        const DIRS: &[&str] = &["", "photos/", "vidéos/deep dir/", "日本/ü/", "docs/2026/"];
        const STEMS: &[&str] = &["img", "clip", "notes", "Ωmega", "résumé"];
        const EXTS: &[&str] = &["jpg", "mp4", "txt", "bin"];
        self.serial += 1;
        format!(
            "{}{} {}.{}",
            DIRS[self.rng.usize(0..DIRS.len())],
            STEMS[self.rng.usize(0..STEMS.len())],
            self.serial,
            EXTS[self.rng.usize(0..EXTS.len())]
        )
    }

    /// A file size: mostly small, some empty, some up to the maximum.
    fn size(&mut self) -> u64 {
        let max = self.opts_max << 20;
        match self.rng.u32(0..100) {
            0..=4 => 0,
            5..=49 => self.rng.u64(1..64 << 10),
            50..=84 => self.rng.u64(64 << 10..(4 << 20).min(max).max((64 << 10) + 1)),
            _ => self.rng.u64(1..max.max(2)),
        }
    }

    /// Writes `bytes` of new content to sending/`rel` on host `i`, as a person copying a file in
    /// would (straight under its name); records the version.
    fn write(&mut self, i: usize, rel: &str, bytes: u64) -> Result<()> {
        let f = format!("{}/sending/{rel}", self.mount());
        let out = self.vms[i]
            .ok(&format!("f='{f}'; mkdir -p \"$(dirname \"$f\")\" && head -c {bytes} /dev/urandom > \"$f\" && sha256sum < \"$f\""))?;
        let sum = out.split_whitespace().next().context("no sha256sum output")?.to_string();
        let w = &mut self.written[i];
        w.versions.entry(rel.to_string()).or_default().push(sum);
        w.present.insert(rel.to_string());
        w.since_idle.insert(rel.to_string());
        w.bytes.insert(rel.to_string(), bytes);
        Ok(())
    }

    /// Between faults, on each side whose drive is in: new files, sometimes a rewrite of one
    /// being sent, sometimes a delete of one already delivered.
    fn churn(&mut self) -> Result<()> {
        for i in 0..2 {
            if !self.drive_in[i] {
                continue;
            }
            for _ in 0..2 {
                let (rel, n) = (self.new_path(), self.size());
                self.write(i, &rel, n)?;
            }
            if self.rng.u32(0..3) == 0 {
                // Written, then written again at once: the first version is likely on its way.
                let (rel, n) = (self.new_path(), self.size().max(1 << 20));
                self.write(i, &rel, n)?;
                std::thread::sleep(Duration::from_millis(self.rng.u64(500..3000)));
                let m = self.size();
                self.write(i, &rel, m)?;
            }
            let delivered: Vec<String> =
                self.written[i].present.iter().filter(|p| !self.written[i].since_idle.contains(*p)).cloned().collect();
            if !delivered.is_empty() && self.rng.u32(0..3) == 0 {
                let rel = delivered[self.rng.usize(0..delivered.len())].clone();
                let f = format!("{}/sending/{rel}", self.mount());
                self.vms[i].ok(&format!("rm -f '{f}'"))?;
                self.written[i].present.remove(&rel);
            }
        }
        Ok(())
    }

    /// A big file on its way from `i`, so the fault lands mid-transfer (when the drive is in).
    fn start_big_transfer(&mut self, i: usize) -> Result<()> {
        if self.drive_in[i] {
            let (rel, n) = (self.new_path(), (self.opts_max << 20).max(1 << 20));
            self.write(i, &rel, n)?;
        }
        Ok(())
    }

    /// What the victim of fault `n` did since its boot, by the guest's monotonic clock: how long
    /// its boot took, and when its drive, network and agent came up (recovery times are made of
    /// these). Kept in `fault-<n>.txt` in its run directory; best effort.
    fn keep_timeline(&mut self, n: usize, v: usize) {
        // journalctl ANDs matches on different fields: one filter on the text instead.
        let cmd = "systemd-analyze time | head -2; journalctl -b -o short-monotonic --no-pager \
            | grep -E 'pi2pi|dhcpcd|fsck|PI2PI|sshd|chrony|dnsmasq|Reached target|eth0|carrier' | tail -120";
        if let Ok((_, out)) = self.vms[v].exec(cmd) {
            let _ = fs_err::write(self.specs[v].dir.join(format!("fault-{n}.txt")), out);
        }
    }

    /// On failure: each guest's agent status and journal, if it still answers.
    fn keep_diagnostics(&mut self) {
        for (vm, spec) in self.vms.iter_mut().zip(&self.specs) {
            if let Ok((_, out)) =
                vm.exec("pi2pi-agent status; findmnt /media; journalctl -b --no-pager -u pi2pi-agent -t pi2pi-agent | tail -80")
            {
                let _ = fs_err::write(spec.dir.join("diagnostics.txt"), out);
            }
            vm.kill();
        }
    }
}

/// The writer's serial number in a path (`… <n>.<ext>`), for oldest-first order.
fn serial_of(path: &str) -> u32 {
    let stem = path.rsplit_once('.').map_or(path, |(s, _)| s);
    stem.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// The receiver's temporaries (`.pi2pi-<hash>.part`, in any directory).
fn is_temporary(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    pi2pi_agent::paths::is_temp_name(name)
}

#[cfg(test)]
mod tests {
    use super::faults::device_add_arguments;
    use super::*;

    #[test]
    fn the_usb_drive_is_plugged_back_as_it_was_plugged_in() {
        let a = device_add_arguments(&qemu::usb_drive_device().to_string_lossy()).unwrap();
        assert_eq!(a, json!({ "driver": "usb-storage", "bus": "xhci.0", "drive": "usb", "id": "usbdrive", "removable": true }));
    }

    #[test]
    fn temporaries_are_recognised_in_any_directory() {
        let t = pi2pi_agent::serve::temp_name("x.jpg");
        assert!(is_temporary(&t));
        assert!(is_temporary(&format!("photos/deep/{t}")));
        assert!(!is_temporary("photos/x.jpg"));
    }

    #[test]
    fn paths_sort_by_the_writers_serial() {
        assert_eq!(serial_of("vidéos/deep dir/Ωmega 12.mp4"), 12);
        assert_eq!(serial_of("probe 3.txt"), 3);
        assert_eq!(serial_of("no-number"), 0);
    }

    #[test]
    fn a_seed_replays_the_same_soak() {
        let draw = |seed| {
            let mut r = fastrand::Rng::with_seed(seed);
            (0..20).map(|_| r.u64(0..1000)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
