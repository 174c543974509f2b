//! What the soak judges by: the files on both drives, as the guests see them and, after power
//! off, as the drive images hold them. Nothing lost, torn or delivered twice.

use std::collections::BTreeMap;

use anyhow::{ensure, Context, Result};

use super::*;

impl Soak<'_> {
    /// Every file under its final name in a receiving/ is a version its sender had.
    pub(super) fn check_nothing_torn(&mut self) -> Result<()> {
        for r in 0..2 {
            let got = self.receiving_sums(r)?;
            let sent = &self.written[1 - r];
            for (path, sum) in &got {
                match sent.versions.get(path) {
                    Some(v) if v.contains(sum) => {}
                    Some(_) => {
                        self.torn.insert(format!("{}: receiving/{path} is no version {} had", self.hosts[r].name, self.hosts[1 - r].name));
                    }
                    None => {
                        self.doubled.insert(format!(
                            "{}: receiving/{path} was never in {}'s sending/",
                            self.hosts[r].name,
                            self.hosts[1 - r].name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// path → SHA-256 of every file under its final name in receiving/ on `r`. Only files whose
    /// size or times changed since they were last hashed are read again, so the work per fault
    /// does not grow with what the drives hold over a long soak. A file damaged in place without
    /// a new size or time would be missed here, not by `finish`, which hashes every file from
    /// the drive images.
    pub(super) fn receiving_sums(&mut self, r: usize) -> Result<BTreeMap<String, String>> {
        let dir = format!("{}/receiving", self.mount());
        let stamps: BTreeMap<String, String> =
            guest_written(&mut self.vms[r], &dir)?.into_iter().filter(|(p, _)| !is_temporary(p)).collect();
        let cache = &mut self.hashed[r];
        cache.retain(|p, _| stamps.contains_key(p));
        let changed: Vec<&String> = stamps.iter().filter(|(p, st)| cache.get(*p).map(|(s, _)| s) != Some(*st)).map(|(p, _)| p).collect();
        // A few paths per command: the harness shell reads lines of at most 4 KiB.
        for chunk in changed.chunks(16) {
            let args: Vec<String> = chunk.iter().map(|p| format!("'{p}'")).collect();
            let out = self.vms[r].ok(&format!("cd '{dir}' && {{ sha256sum -- {} 2>/dev/null; true; }}", args.join(" ")))?;
            for (sum, path) in out.lines().filter_map(|l| l.split_once("  ")) {
                if let Some(stamp) = stamps.get(path) {
                    cache.insert(path.to_string(), (stamp.clone(), sum.to_string()));
                }
            }
        }
        Ok(cache.iter().map(|(p, (_, sum))| (p.clone(), sum.clone())).collect())
    }

    /// Waits for both sides to deliver everything and go idle; then no file the sender did not
    /// write since the last idle point was written again, and no temporaries are left (a
    /// temporary seen is looked at again after the next idle: a transfer may have just begun).
    pub(super) fn settle(&mut self) -> Result<()> {
        let dir = format!("{}/receiving", self.cfg.drive.mount_point);
        let mut snapshots = Vec::new();
        for attempt in 0.. {
            for i in 0..2 {
                wait_idle(&mut self.vms[i], IDLE_LIMIT)?;
            }
            snapshots = (0..2).map(|r| guest_written(&mut self.vms[r], &dir)).collect::<Result<Vec<_>>>()?;
            let temps: Vec<String> =
                (0..2).flat_map(|r| snapshots[r].keys().filter(|p| is_temporary(p)).map(move |p| format!("{r}: receiving/{p}"))).collect();
            if temps.is_empty() {
                break;
            }
            ensure!(attempt < 3, "temporaries left behind with nothing in flight: {temps:?}");
            std::thread::sleep(Duration::from_secs(10));
        }
        for (r, now) in snapshots.into_iter().enumerate() {
            let changed_at_sender = &self.written[1 - r].since_idle;
            for (path, stamp) in &now {
                if self.received[r].get(path).is_some_and(|before| before != stamp) && !changed_at_sender.contains(path) {
                    let (to, from) = (&self.hosts[r].name, &self.hosts[1 - r].name);
                    self.doubled.insert(format!("{to}: receiving/{path} written again, unchanged at {from}"));
                }
            }
            self.received[r] = now;
        }
        for w in self.written.iter_mut() {
            w.since_idle.clear();
        }
        self.prune()
    }

    /// Waits until every file in each sending/ is at the peer in its last version (by hash, as
    /// the guests see them): the end of the soak is judged once the pair has had the time to
    /// deliver, not when a status looked idle (a daemon in the middle of a pass, or waiting out
    /// a backoff, had not yet said what it still had to send).
    pub(super) fn wait_delivered(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut missing = Vec::new();
            for r in 0..2 {
                let got = self.receiving_sums(r)?;
                let sent = &self.written[1 - r];
                missing.extend(
                    sent.present
                        .iter()
                        .filter(|p| got.get(*p) != sent.versions[*p].last())
                        .map(|p| format!("{}'s {p}", self.hosts[1 - r].name)),
                );
            }
            if missing.is_empty() {
                return Ok(());
            }
            ensure!(started.elapsed() < IDLE_LIMIT, "not delivered within {IDLE_LIMIT:?}: {missing:?}");
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Keeps the drives from filling over a long soak, as their owners would: once a side has sent
    /// more than a third of a drive, its oldest delivered files are deleted on both sides.
    pub(super) fn prune(&mut self) -> Result<()> {
        let budget = DRIVE_KIB * 1024 / 3;
        for s in 0..2 {
            let size = |p: &String| self.written[s].bytes.get(p).copied().unwrap_or(0);
            let mut total: u64 = self.written[s].present.iter().map(size).sum();
            let mut oldest: Vec<String> = self.written[s].present.iter().cloned().collect();
            oldest.sort_by_key(|p| serial_of(p));
            for path in oldest {
                if total <= budget {
                    break;
                }
                let mount = self.mount().to_string();
                self.vms[s].ok(&format!("rm -f '{mount}/sending/{path}'"))?;
                self.vms[1 - s].ok(&format!("rm -f '{mount}/receiving/{path}'"))?;
                self.written[s].present.remove(&path);
                self.received[1 - s].remove(&path);
                total -= self.written[s].bytes.get(&path).copied().unwrap_or(0);
            }
        }
        Ok(())
    }

    /// Clean shutdown, then from the host: each drive fsck-clean, each receiving/ holding exactly
    /// the last version of every file in the peer's sending/ (and of deleted ones, some version).
    pub(super) fn finish(&mut self) -> Result<(Vec<String>, usize, u64)> {
        for vm in self.vms.iter_mut() {
            vm.stop(Power::Off)?;
        }
        let mut lost = Vec::new();
        let (mut files, mut bytes) = (0, 0);
        for r in 0..2 {
            let usb = self.specs[r].dir.join("usb.img");
            let out =
                proc::read(cmd!(self.sh, "fsck.vfat -n {usb}")).with_context(|| format!("{}'s drive is not clean", self.hosts[r].name))?;
            eprintln!("soak: {}'s drive: {}", self.hosts[r].name, out.lines().last().unwrap_or("").trim());
            let got = drive_tree(self.sh, &usb, "receiving", &self.specs[r].dir.join("compare"))?;
            let sent = &self.written[1 - r];
            for path in &sent.present {
                let last = sent.versions[path].last();
                if got.get(path) != last {
                    lost.push(format!("{}'s {path} is not (in its last version) at {}", self.hosts[1 - r].name, self.hosts[r].name));
                }
            }
            for (path, sum) in &got {
                match sent.versions.get(path) {
                    Some(v) if v.contains(sum) => {
                        files += 1;
                        bytes += sent.bytes.get(path).copied().unwrap_or(0);
                    }
                    Some(_) => {
                        self.torn.insert(format!("{} (on its drive): receiving/{path} is no version the sender had", self.hosts[r].name));
                    }
                    None => {
                        self.doubled.insert(format!("{} (on its drive): receiving/{path} was never sent", self.hosts[r].name));
                    }
                }
            }
            let _ = fs_err::remove_dir_all(self.specs[r].dir.join("compare"));
        }
        Ok((lost, files, bytes))
    }
}
