//! The soak's update fault (#24): bundles brought to a Pi on its USB drive while files flow both
//! ways, as a person would bring them (the drive pulled, the bundles put in its `update/`, the
//! drive plugged back). Two cases, in turn:
//!
//! - **newer**: first three bundles the Pi must refuse (signed with another key, built for the
//!   other host, older than what runs), each with its reason on the drive and nothing written
//!   (the boot state and the other slot as they were); then a newer build, with the power cut
//!   while RAUC writes it and again during its trial boot; it must end applied, the Pi running the
//!   new version from the other slot, marked good.
//! - **broken**: a newer build whose agent cannot start (its agent.toml does not parse): the Pi
//!   tries it, goes back to the system it ran by itself, and says so on the drive.
//!
//! The bundles are made here from the bundle `cargo xtask image` wrote for the host: its root
//! (`rauc extract`), with the build file saying a newer version (debugfs), signed with the
//! deployment's key by the same `bundle::write`. The images phase proves the build writes and
//! signs bundles; this proves the Pi takes them. A second image build only to raise the version
//! would cost a minute of the test budget and differ from this root by that one file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use xshell::{cmd, Shell};

use super::*;
use crate::build::bundle;
use crate::build::keys::{self, UpdateKeys};
use crate::build::partitions;
use pi2pi_agent::bootslot::{self, Slot};
use pi2pi_agent::update::Build;

/// From the drive plugged back to RAUC writing the bundle (copied off the drive, checked, a quiet
/// moment found).
const INSTALL_LIMIT: Duration = Duration::from_secs(300);
/// From RAUC writing to the Pi rebooting into the new system.
const REBOOT_LIMIT: Duration = Duration::from_secs(300);
/// From the drive plugged back (or the trial boot) to the outcome beside the bundle.
const OUTCOME_LIMIT: Duration = Duration::from_secs(420);
/// How much of a slot's start is compared to see that nothing was written to it.
const SLOT_HEAD_MIB: u64 = 16;

/// What the update fault brings, in turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Case {
    Newer,
    Broken,
}

/// Makes the bundles (in the soak's run directory).
pub(super) struct Bundles {
    dir: PathBuf,
    keys: UpdateKeys,
    /// Another deployment's key, made for the soak.
    other: UpdateKeys,
    hook: PathBuf,
    /// Each host's root filesystem, from its bundle.
    roots: BTreeMap<String, PathBuf>,
}

impl Bundles {
    pub(super) fn new(sh: &Shell, run_dir: &Path) -> Result<Bundles> {
        let dir = run_dir.join("bundles");
        fs_err::create_dir_all(&dir)?;
        let other = UpdateKeys { key: dir.join("other.key.pem"), cert: dir.join("other.cert.pem") };
        other.make(sh)?;
        Ok(Bundles { dir, keys: keys::update(sh), other, hook: sh.current_dir().join("overlays/bundle/hook"), roots: BTreeMap::new() })
    }

    /// `host`'s root filesystem as its bundle carries it (extracted once).
    fn root(&mut self, sh: &Shell, host: &str) -> Result<PathBuf> {
        if let Some(r) = self.roots.get(host) {
            return Ok(r.clone());
        }
        let bundle = image::Options::default_for(sh).out_dir.join(bundle::file_name(host));
        let out = self.dir.join(format!("{host}-extracted"));
        let _ = fs_err::remove_dir_all(&out);
        let cert = &self.keys.cert;
        proc::read(cmd!(sh, "rauc extract --keyring {cert} {bundle} {out}")).with_context(|| format!("extracting {}", bundle.display()))?;
        let root = out.join("root.ext4");
        self.roots.insert(host.to_string(), root.clone());
        Ok(root)
    }

    /// A copy of `host`'s root whose build file says `version`, and whose agent.toml does not
    /// parse if `broken`.
    fn patched_root(&mut self, sh: &Shell, host: &str, version: u64, broken: bool) -> Result<PathBuf> {
        let from = self.root(sh, host)?;
        let root = self.dir.join(format!("{host}-{version}{}.ext4", if broken { "-broken" } else { "" }));
        proc::read(cmd!(sh, "cp --sparse=always {from} {root}"))?;
        let build = self.dir.join("build");
        fs_err::write(&build, format!("version={version}\ncompatible={}\n", bundle::compatible(host)))?;
        let mut script = replace_in_root("/etc/pi2pi", "build", &build);
        if broken {
            let toml = self.dir.join("agent.toml");
            fs_err::write(&toml, "# a broken configuration: the agent cannot start\n[drive\n")?;
            script += &replace_in_root("/etc/pi2pi", "agent.toml", &toml);
        }
        let script_file = self.dir.join("debugfs.cmds");
        fs_err::write(&script_file, script)?;
        proc::read(cmd!(sh, "debugfs -w -f {script_file} {root}")).with_context(|| format!("patching {}", root.display()))?;
        Ok(root)
    }

    /// A root filesystem that holds nothing, for the bundles that must be refused (if one were
    /// written, the slot's start would show it).
    fn empty_root(&self, sh: &Shell) -> Result<PathBuf> {
        let root = self.dir.join("empty.ext4");
        if !root.exists() {
            proc::read(cmd!(sh, "mke2fs -q -F -t ext4 -L refused {root} 8M"))?;
        }
        Ok(root)
    }

    /// Signs `root` into `update/<name>` for `host`'s cards (`compatible`).
    fn make(&self, sh: &Shell, name: &str, host: &str, root: &Path, version: u64, keys: &UpdateKeys) -> Result<PathBuf> {
        let out = self.dir.join("update").join(name);
        fs_err::create_dir_all(out.parent().unwrap())?;
        // Signed at the version's time: the cards check the certificate then (valid 2000-2099).
        let i = bundle::Inputs { host, root, version, epoch: version, keys, hook: &self.hook };
        bundle::write(sh, &i, &self.dir, &out).with_context(|| format!("making {}", out.display()))?;
        Ok(out)
    }

    /// Forgets the bundles made for the last fault.
    fn clear(&self) {
        let _ = fs_err::remove_dir_all(self.dir.join("update"));
    }
}

/// debugfs commands that replace `dir/name` in a root filesystem by the host file `with`,
/// root-owned and 0644.
fn replace_in_root(dir: &str, name: &str, with: &Path) -> String {
    format!("cd {dir}\nrm {name}\nwrite {} {name}\nsif {name} uid 0\nsif {name} gid 0\nsif {name} mode 0100644\n", with.display())
}

/// What a Pi shows of its update state: the slot it booted, its build and its boot state, and
/// the start of the slot it does not run.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    booted: Slot,
    version: u64,
    boot_state: String,
    other_head: String,
}

impl Soak<'_> {
    /// Which host the next update fault is brought to: the cases take turns on each host, the
    /// first host (the pair's DHCP server, whose restarts its peer feels most) first, so that
    /// even a short soak updates it both ways.
    pub(super) fn update_victim(&self) -> usize {
        (self.updates / 2) % self.hosts.len()
    }

    /// The update fault on `v`; returns what happened and when the Pi was back.
    pub(super) fn update(&mut self, v: usize) -> Result<(String, Instant)> {
        let case = if self.updates.is_multiple_of(2) { Case::Newer } else { Case::Broken };
        self.updates += 1;
        match case {
            Case::Newer => self.update_newer(v),
            Case::Broken => self.update_broken(v),
        }
    }

    fn seen(&mut self, v: usize) -> Result<Seen> {
        let cmdline = self.vms[v].ok("cat /proc/cmdline")?;
        let booted = bootslot::booted(&cmdline).with_context(|| format!("no slot on the command line: {cmdline}"))?;
        let build = Build::parse(&self.vms[v].ok(&format!("cat {}", pi2pi_agent::layout::BUILD_FILE))?)?;
        let boot_state = self.vms[v].ok("pi2pi-agent boot show")?;
        let other = partitions::slot_partitions().into_iter().find(|(s, _)| *s == booted.other()).map(|(_, p)| p).unwrap_or(0);
        // The card is the VM's only virtio disk.
        let other_head = self.vms[v].ok(&format!("head -c {}M /dev/vda{other} | sha256sum", SLOT_HEAD_MIB))?;
        Ok(Seen { booted, version: build.version, boot_state, other_head })
    }

    /// Refusals, then a newer build applied across two power cuts.
    fn update_newer(&mut self, v: usize) -> Result<(String, Instant)> {
        let host = self.hosts[v].name.clone();
        let other_host = self.hosts[1 - v].name.clone();
        let before = self.seen(v)?;
        let sh = self.sh;
        let (running, newer) = (before.version, before.version + 1);
        self.bundles.clear();
        let empty = self.bundles.empty_root(sh)?;
        let refused = [
            (
                format!("{host}-other-key.raucb"),
                self.bundles.make(sh, &format!("{host}-other-key.raucb"), &host, &empty, newer, &self.bundles.other)?,
                "signature",
            ),
            (
                bundle::file_name(&other_host),
                self.bundles.make(sh, &bundle::file_name(&other_host), &other_host, &empty, newer, &self.bundles.keys)?,
                "built for",
            ),
            (
                format!("{host}-older.raucb"),
                self.bundles.make(sh, &format!("{host}-older.raucb"), &host, &empty, running - 1, &self.bundles.keys)?,
                "not newer",
            ),
        ];
        let brought = Instant::now();
        self.swap_drive(v, &refused.iter().map(|(_, p, _)| p.clone()).collect::<Vec<_>>())?;
        for (name, _, why) in &refused {
            let text = self.wait_outcome(v, name)?;
            ensure!(text.starts_with("REFUSED") && text.contains(why), "{host}: {name} should be refused ({why}), the drive says:\n{text}");
        }
        let refusals = brought.elapsed();
        let after = self.seen(v)?;
        ensure!(after == before, "{host}: refused bundles changed the card: before {before:?}, after {after:?}");

        // The newer build: cut while RAUC writes it, then again while the new system boots.
        let (name, brought) = self.bring_build(v, newer, false)?;
        let writing = self.wait_writing(v)?;
        std::thread::sleep(Duration::from_millis(self.rng.u64(1000..8000)));
        self.vms[v].kill();
        // Power back: the old system boots (the half-written slot was marked bad before RAUC
        // wrote it), finds the bundle still on the drive and takes it again, this time to the
        // end, and reboots into it. Its updater starts while the boot is still finishing, so the
        // harness does not wait for a settled boot in between: the kernel's command line in this
        // boot's console says which slot U-Boot chose.
        self.start_vm(v, true)?;
        let limit = self.vms[v].boot_limit() + INSTALL_LIMIT + REBOOT_LIMIT;
        self.vms[v].wait_exit(limit)?;
        let slot = self.vms[v].console_slot();
        ensure!(
            slot == Some(before.booted),
            "{host}: after a cut while RAUC wrote, U-Boot booted {slot:?}, not the old slot {}",
            before.booted
        );
        let cut_after = self.rng.u64(5..25);
        self.start_vm(v, true)?;
        std::thread::sleep(Duration::from_secs(cut_after));
        self.vms[v].kill();
        let (on, applied) = self.power_on_to_outcome(v, &name, "APPLIED", before.booted.other(), newer, brought)?;
        Ok((
            format!(
                "3 bundles refused in {:.0}s, nothing written; version {newer} applied to slot {} across a power cut while RAUC wrote ({writing}) and one {cut_after}s into its trial boot, {:.0}s from the drive plugged in to the outcome on it",
                refusals.as_secs_f64(),
                before.booted.other(),
                applied.as_secs_f64()
            ),
            on,
        ))
    }

    /// A newer build whose agent cannot start: tried, and rolled back by the Pi itself.
    fn update_broken(&mut self, v: usize) -> Result<(String, Instant)> {
        let host = self.hosts[v].name.clone();
        let before = self.seen(v)?;
        let version = before.version + 1;
        let (name, brought) = self.bring_build(v, version, true)?;
        self.vms[v].wait_exit(INSTALL_LIMIT + REBOOT_LIMIT)?;
        // The new system's boot: its agent fails (a failed unit, which the harness's boot check
        // would stop at); the Pi is left to judge it and reboot by itself.
        let trial = Instant::now();
        self.start_vm(v, true)?;
        let limit = self.vms[v].boot_limit() + REBOOT_LIMIT;
        self.vms[v].wait_exit(limit)?;
        let judged = trial.elapsed();
        let (on, rolled_back) = self.power_on_to_outcome(v, &name, "ROLLED BACK", before.booted, before.version, brought)?;
        let state = bootslot::BootState::parse(&self.vms[v].ok("pi2pi-agent boot show")?);
        ensure!(state.left(before.booted.other()) == 0, "{host}: the broken system's slot still has attempts: {state:?}");
        Ok((
            format!(
                "version {version} with a broken agent.toml tried and rolled back by the Pi ({:.0}s in the trial boot), {:.0}s from the drive plugged in to the outcome on it",
                judged.as_secs_f64(),
                rolled_back.as_secs_f64()
            ),
            on,
        ))
    }

    /// Powers `v` on and waits for `bundle`'s outcome on its drive: it must say `verdict`, and
    /// the Pi run `version` from `slot`, marked good. Returns when the power came on and how long
    /// after the drive went in (`brought`) the outcome was there.
    fn power_on_to_outcome(
        &mut self,
        v: usize,
        bundle: &str,
        verdict: &str,
        slot: Slot,
        version: u64,
        brought: Instant,
    ) -> Result<(Instant, Duration)> {
        let host = self.hosts[v].name.clone();
        let on = self.power_on(v, true)?;
        let text = self.wait_outcome(v, bundle)?;
        let took = brought.elapsed();
        ensure!(text.starts_with(verdict), "{host}: {bundle} should be {verdict}, the drive says:\n{text}");
        let now = self.seen(v)?;
        ensure!(
            now.booted == slot && now.version == version,
            "{host}: {verdict}, but runs version {} from slot {} (expected {version} from slot {slot})",
            now.version,
            now.booted
        );
        check_boot_state(&mut self.vms[v], slot)?;
        Ok((on, took))
    }

    /// Makes `v`'s build of `version` (with a broken agent.toml if `broken`) into a bundle and
    /// brings it on `v`'s drive; returns the bundle's name and when the drive went back in.
    fn bring_build(&mut self, v: usize, version: u64, broken: bool) -> Result<(String, Instant)> {
        let host = self.hosts[v].name.clone();
        self.bundles.clear();
        let root = self.bundles.patched_root(self.sh, &host, version, broken)?;
        let name = format!("{host}-{version}{}.raucb", if broken { "-broken" } else { "" });
        let bundle = self.bundles.make(self.sh, &name, &host, &root, version, &self.bundles.keys)?;
        let _ = fs_err::remove_file(&root); // the bundle holds it; 471 MB each
        let brought = Instant::now();
        self.swap_drive(v, &[bundle])?;
        Ok((name, brought))
    }

    /// Waits until the Pi's updater says RAUC is writing a bundle; returns its words.
    fn wait_writing(&mut self, v: usize) -> Result<String> {
        let progress = format!("cat {}/progress.txt 2>/dev/null || true", pi2pi_agent::layout::UPDATE_DIR);
        let vm = &mut self.vms[v];
        let name = vm.name.clone();
        wait_until(&format!("{name}: RAUC writing the bundle"), INSTALL_LIMIT, Duration::from_secs(1), || {
            let p = vm.ok(&progress)?;
            // RAUC's step while it writes the slot (marked bad before): "48% Copying image to
            // rootfs.1" (about 30 s of it under emulation; the harness looks every second).
            let writing = p.starts_with("installing") && p.contains("Copying image");
            Ok(if writing { Ok(p.trim().to_string()) } else { Err(p) })
        })
    }

    /// Waits for `update/done/<bundle>.txt` on `v`'s drive; returns it.
    fn wait_outcome(&mut self, v: usize, bundle: &str) -> Result<String> {
        let f = format!("{}/update/done/{bundle}.txt", self.mount());
        let vm = &mut self.vms[v];
        let name = vm.name.clone();
        wait_until(&format!("{name}: the outcome of {bundle} on the drive"), OUTCOME_LIMIT, Duration::from_secs(2), || {
            let (code, text) = vm.exec(&format!("cat '{f}'"))?;
            Ok(if code == 0 { Ok(text) } else { Err(vm.ok(&format!("{} status | tail -3", pi2pi_agent::layout::BINARY))?) })
        })
    }
}
