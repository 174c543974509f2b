//! The faults the soak injects, on a running pair: power cuts and reboots, the USB drive pulled
//! and plugged back, and how soon deliveries resume after each.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::*;

impl Soak<'_> {
    pub(super) fn inject(&mut self, kind: Kind, v: usize, opts: &Options) -> Result<Fault> {
        let sender = if self.rng.bool() { v } else { 1 - v };
        self.start_big_transfer(sender)?;
        // The moment: somewhere in the first seconds of that transfer.
        std::thread::sleep(Duration::from_millis(self.rng.u64(0..4000)));
        let before = self.receiving_now()?;
        let (what, restored) = match kind {
            Kind::PowerCut => {
                let how = if self.rng.bool() {
                    let _ = self.qmp[v].quit();
                    "QMP quit"
                } else {
                    self.vms[v].kill();
                    "QEMU killed"
                };
                self.vms[v].kill();
                let on = self.power_on(v, true)?;
                (format!("{how}; cold boot {:.0}s", on.elapsed().as_secs_f64()), on)
            }
            Kind::Reboot => {
                self.vms[v].stop(Power::Reboot)?;
                let on = self.power_on(v, true)?;
                (format!("systemctl reboot; boot {:.0}s", on.elapsed().as_secs_f64()), on)
            }
            Kind::DrivePull => self.pull_drive(v)?,
            Kind::CableCut => {
                let secs = self.rng.u64(3..opts.max_cut.as_secs().max(4));
                self.qmp[v].execute("set_link", json!({ "name": "net0", "up": false }))?;
                std::thread::sleep(Duration::from_secs(secs));
                self.qmp[v].execute("set_link", json!({ "name": "net0", "up": true }))?;
                (format!("unplugged for {secs}s"), Instant::now())
            }
            Kind::Update => self.update(v)?,
            Kind::AgentKill => {
                self.vms[v].ok(&format!("pkill -KILL -f '^{}' || true", pi2pi_agent::layout::BINARY))?;
                ("SIGKILL to every pi2pi-agent process".to_string(), Instant::now())
            }
        };
        let (recovery, probe) = self.first_delivery_after(v, &before, restored)?;
        let what = format!("{what}; a file written after it through in {:.1}s", probe.as_secs_f64());
        Ok(Fault { kind, host: self.hosts[v].name.clone(), what, recovery })
    }

    /// What each receiving/ holds now (path → size and times; empty while its drive is out).
    pub(super) fn receiving_now(&mut self) -> Result<Vec<BTreeMap<String, String>>> {
        let dir = format!("{}/receiving", self.mount());
        (0..2).map(|r| if self.drive_in[r] { guest_written(&mut self.vms[r], &dir) } else { Ok(BTreeMap::new()) }).collect()
    }

    /// Starts host `v`'s QEMU again on the same disks (its drive plugged in or not) and waits for
    /// it to boot; returns when power came back.
    pub(super) fn power_on(&mut self, v: usize, drive: bool) -> Result<Instant> {
        let on = Instant::now();
        self.start_vm(v, drive)?;
        self.vms[v].wait_booted(on)?;
        if drive {
            wait_mounted(&mut self.vms[v], &self.cfg.drive.mount_point, "vfat")?;
        }
        Ok(on)
    }

    /// Starts host `v`'s QEMU on the same disks (its drive plugged in or not), without waiting.
    pub(super) fn start_vm(&mut self, v: usize, drive: bool) -> Result<()> {
        self.specs[v].usb_unplugged = !drive;
        self.specs[v].cpus = qemu::CPUS_ALONE;
        let overlay = self.specs[v].dir.join("overlay.qcow2");
        self.vms[v] = Vm::start(self.sh, &self.specs[v], &self.boots[v], &overlay)?;
        self.qmp[v] = Qmp::connect(&self.specs[v].dir.join(QMP_SOCK), Duration::from_secs(30))?;
        Ok(())
    }

    /// Pulls `v`'s drive (QMP `device_del`) and waits until the guest has let go of it.
    fn unplug(&mut self, v: usize) -> Result<()> {
        self.qmp[v].execute("device_del", json!({ "id": qemu::USB_DEVICE }))?;
        self.qmp[v].wait_event("DEVICE_DELETED", Duration::from_secs(60))?;
        self.drive_in[v] = false;
        let mount = self.mount().to_string();
        let t = Instant::now();
        while self.vms[v].exec(&format!("mountpoint -q '{mount}'"))?.0 == 0 {
            ensure!(t.elapsed() < Duration::from_secs(60), "{mount} still mounted a minute after the drive was pulled");
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    }

    /// Plugs `v`'s drive back (QMP `device_add`, as it was plugged in) and waits for its mount;
    /// returns when it went in.
    fn plug(&mut self, v: usize) -> Result<Instant> {
        let args = device_add_arguments(&qemu::usb_drive_device().to_string_lossy())?;
        self.qmp[v].execute("device_add", args)?;
        let plugged = Instant::now();
        let mount = self.mount().to_string();
        wait_mounted(&mut self.vms[v], &mount, "vfat")?;
        self.drive_in[v] = true;
        Ok(plugged)
    }

    /// Takes `v`'s drive out, puts `files` in its `update/` (from the host, as a person would on
    /// their computer) and plugs it back.
    pub(super) fn swap_drive(&mut self, v: usize, files: &[std::path::PathBuf]) -> Result<()> {
        self.unplug(v)?;
        let usb = self.specs[v].usb.clone().context("the soak's VMs have a drive")?;
        let stage = self.specs[v].dir.join("stage-update");
        let _ = fs_err::remove_dir_all(&stage);
        fs_err::create_dir_all(stage.join("update"))?;
        for f in files {
            let to = stage.join("update").join(f.file_name().context("a bundle's name")?);
            fs_err::hard_link(f, &to).or_else(|_| fs_err::copy(f, &to).map(|_| ()))?;
        }
        crate::build::fat::Fat::file(&usb).copy_in(self.sh, &[stage.join("update")], "")?;
        let _ = fs_err::remove_dir_all(&stage);
        self.plug(v)?;
        Ok(())
    }

    /// Pulls `v`'s drive, keeps it out while its peer goes on sending (sometimes across a reboot),
    /// checks nothing was written to the bare mount point, and plugs it back.
    pub(super) fn pull_drive(&mut self, v: usize) -> Result<(String, Instant)> {
        self.unplug(v)?;
        let mount = self.mount().to_string();
        // The peer keeps writing; its agent keeps trying to deliver to the missing drive.
        let peer = 1 - v;
        let (rel, n) = (self.new_path(), self.size());
        self.write(peer, &rel, n)?;
        std::thread::sleep(Duration::from_secs(self.rng.u64(5..30)));
        let across_reboot = self.rng.u32(0..3) == 0;
        if across_reboot {
            self.vms[v].stop(Power::Reboot)?;
            self.power_on(v, false)?;
        }
        let bare = self.vms[v].ok(&format!("mountpoint -q '{mount}' && echo MOUNTED; ls -A '{mount}'"))?;
        ensure!(bare.trim().is_empty(), "{}: with the drive out, {mount} holds: {bare}", self.hosts[v].name);
        let plugged = self.plug(v)?;
        let what = if across_reboot { "out across a reboot, plugged back after it" } else { "out while the peer sent, plugged back" };
        Ok((what.to_string(), plugged))
    }

    /// Writes a small probe file on `v` and waits for it at the peer: the first delivery after
    /// `since` (when the fault ended) is no later than its arrival.
    /// Returns how long after `since` (when the fault ended) a file was first delivered either
    /// way (a file under its final name new or rewritten at either receiver since `before`), and
    /// how long a small file written on `v` once the fault was over took to reach the peer (it
    /// also makes sure there is something to deliver).
    pub(super) fn first_delivery_after(
        &mut self,
        v: usize,
        before: &[BTreeMap<String, String>],
        since: Instant,
    ) -> Result<(Duration, Duration)> {
        self.serial += 1;
        let rel = format!("probe {}.txt", self.serial);
        let written = Instant::now();
        self.write(v, &rel, 4096)?;
        let dir = format!("{}/receiving", self.mount());
        let what = format!("a delivery in {dir} either way after the fault");
        let left = RECOVERY_LIMIT.saturating_sub(since.elapsed());
        let first = wait_until(&what, left, Duration::from_secs(1), || {
            let now = self.receiving_now()?;
            let delivered = (0..2).any(|r| now[r].iter().any(|(p, stamp)| !is_temporary(p) && before[r].get(p) != Some(stamp)));
            Ok(if delivered { Ok(since.elapsed()) } else { Err("nothing new".into()) })
        })?;
        let sum = self.written[v].versions[&rel].last().cloned().unwrap_or_default();
        wait_arrival(&mut self.vms[1 - v], &format!("{dir}/{rel}"), &sum, RECOVERY_LIMIT).context("the file written after the fault")?;
        Ok((first, written.elapsed()))
    }
}

/// `device_add`'s arguments from a `-device` option string (`driver,key=value,…`).
pub(super) fn device_add_arguments(device: &str) -> Result<serde_json::Value> {
    let mut parts = device.split(',');
    let driver = parts.next().context("an empty -device")?;
    let mut args = serde_json::Map::new();
    args.insert("driver".into(), json!(driver));
    for p in parts {
        let (k, v) = p.split_once('=').with_context(|| format!("`{p}` in -device {device}"))?;
        let v = match v {
            "on" => json!(true),
            "off" => json!(false),
            v => json!(v),
        };
        args.insert(k.into(), v);
    }
    Ok(serde_json::Value::Object(args))
}
