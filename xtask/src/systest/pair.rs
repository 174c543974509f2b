//! `cargo xtask test qemu`: boots the two built images together in QEMU and checks the whole
//! system: addresses and DHCP, names, SSH trust and its restriction, delivery both ways
//! (compared from the host by reading the USB disk images), latency, and a reboot.
//!
//! Each card runs the agent on its own schedule. By default the dhcp-server keeps the configured
//! schedule and the client runs the other one, so one boot of the pair proves both (the daemon
//! in one direction, the cron job in the other) in the time of one; `--schedule` gives both cards
//! the same one. A card whose schedule differs from the configuration is built as a variant into
//! target/images-<schedule>/.
//!
//! Runs under target/qemu/<schedules>/. On failure the console logs, the transcripts (every guest command and its output), the QEMU command lines and
//! report.txt stay there; on success the big overlay and drive images are removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};
use xshell::Shell;

use crate::build::config::{Host, ImageConfig, Role, Schedule};
use crate::build::image;
use crate::build::mac::{Mac, PiMacs};
use crate::vm::drive::{drive_tree, make_drive, test_files, DRIVE_KIB};
use crate::vm::guest::{check_boot_state, guest_tree, guest_written, wait_arrival, wait_idle, wait_mounted, wait_until};
use crate::vm::qemu::{self, Power, Vm};
use pi2pi_agent::bootslot::Slot;

pub struct Report {
    /// Each host and the schedule its agent ran on.
    pub schedules: Vec<(String, Schedule)>,
    pub boot: Vec<(String, Duration)>,
    pub synced_after_boot: Duration,
    /// New-file latencies by the sender's schedule.
    pub latencies: Vec<(Schedule, Duration)>,
    pub wall: Duration,
}

impl Report {
    pub fn render(&self) -> String {
        let mut lat = String::new();
        for s in Schedule::ALL {
            let mut l: Vec<f64> = self.latencies.iter().filter(|(k, _)| *k == s).map(|(_, d)| d.as_secs_f64()).collect();
            if l.is_empty() {
                continue;
            }
            l.sort_by(|a, b| a.total_cmp(b));
            let all = l.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
            lat += &format!("; new-file latency from a {} sender median {:.2}s (all: {all})", s.name(), l[l.len() / 2]);
        }
        format!(
            "pair test ({}): boot {}; prefilled files synced {:.1}s after both booted{lat}; wall {:.0}s\n",
            self.schedules.iter().map(|(h, s)| format!("{h} {}", s.name())).collect::<Vec<_>>().join(", "),
            self.boot.iter().map(|(n, d)| format!("{n} {:.0}s", d.as_secs_f64())).collect::<Vec<_>>().join(", "),
            self.synced_after_boot.as_secs_f64(),
            self.wall.as_secs_f64()
        )
    }
}

/// The schedule of each host (in config order): both the same, or, when `uniform` is None, the
/// configured one on the dhcp-server and the other one on the client.
pub fn schedules(cfg: &ImageConfig, uniform: Option<Schedule>) -> Vec<Schedule> {
    let other = Schedule::ALL.into_iter().find(|s| *s != cfg.schedule).unwrap_or(cfg.schedule);
    cfg.hosts
        .iter()
        .map(|h| match (uniform, h.role) {
            (Some(s), _) => s,
            (None, Role::DhcpServer | Role::Manager) => cfg.schedule,
            (None, Role::DhcpClient | Role::Worker) => other,
        })
        .collect()
}

/// A pair's host's address (every pair host has one; `ImageConfig::lan` has checked it is a pair).
fn address(h: &Host) -> std::net::Ipv4Addr {
    h.address.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)
}

/// The pair's USB drives: FAT32 images of `kib`, pre-filled with `files` (one list per host).
pub(crate) struct Drives<'a> {
    pub files: &'a [Vec<(String, Vec<u8>)>],
    pub kib: u64,
}

/// The pair's drives and VM specs: one cable between the two, each card on its image, under
/// `run_dir/<host>/`, each NIC with a Pi's own address from `macs`.
pub(crate) fn specs(
    sh: &Shell,
    cfg: &ImageConfig,
    hosts: &[&Host],
    images: &[PathBuf],
    run_dir: &Path,
    drives: Drives,
    macs: &mut PiMacs,
) -> Result<Vec<qemu::Spec>> {
    let mut specs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let dir = run_dir.join(&h.name);
        fs_err::create_dir_all(&dir)?;
        make_drive(sh, &dir.join("usb.img"), &cfg.drive.label, drives.kib, &drives.files[i], &dir.join("stage"))?;
        let other = &hosts[1 - i].name;
        specs.push(qemu::Spec {
            name: h.name.clone(),
            image: images[i].clone(),
            usb: Some(dir.join("usb.img")),
            usb_unplugged: false,
            nics: vec![qemu::Nic {
                mac: h.card_mac().unwrap_or_else(|| macs.next(&format!("{} eth0", h.name))),
                local: run_dir.join(format!("{}.link", h.name)),
                remote: run_dir.join(format!("{other}.link")),
            }],
            dir,
            memory_mib: 768,
            rtc_base: None,
            cpus: qemu::CPUS_BESIDE_OTHERS,
        });
    }
    Ok(specs)
}

/// `schedules`: one per host (see [`schedules`]). `build`: build the configured schedule's images
/// first; false when the caller has just built them (`cargo xtask test`), so the test boots exactly
/// the files `cargo xtask image` wrote. Variants for another schedule are always built.
pub fn run(sh: &Shell, cfg: &ImageConfig, schedules: &[Schedule], build: bool) -> Result<Report> {
    let t0 = Instant::now();
    ensure!(cfg.hosts.len() == 2, "the pair test needs exactly two hosts in image.toml");
    ensure!(schedules.len() == 2, "one schedule per host");
    let root = sh.current_dir();
    let hosts: Vec<&Host> = cfg.hosts.iter().collect();
    let mut images = Vec::new();
    for (h, &s) in hosts.iter().zip(schedules) {
        let configured = s == cfg.schedule;
        let dir = if configured { root.join("target/images") } else { root.join(format!("target/images-{}", s.name())) };
        if configured && build {
            image::build(sh, cfg, &[h], &image::Options::default_for(sh))?;
        } else if !configured {
            let variant = ImageConfig { schedule: s, ..cfg.clone() };
            image::build(sh, &variant, &[h], &image::Options::test_cards(sh, s.name()))?;
        }
        let img = dir.join(format!("{}.img", h.name));
        ensure!(img.exists(), "{} is missing: run `cargo xtask image all`", img.display());
        images.push(img);
    }

    let tag = schedules.iter().map(|s| s.name()).collect::<Vec<_>>().join("-");
    let run_dir = root.join(format!("target/qemu/{tag}"));
    let _ = fs_err::remove_dir_all(&run_dir);
    fs_err::create_dir_all(&run_dir)?;
    let result = pair(sh, cfg, &hosts, &images, schedules, &run_dir, t0);
    match &result {
        Ok(r) => {
            fs_err::write(run_dir.join("report.txt"), r.render())?;
            for h in &hosts {
                let d = run_dir.join(&h.name);
                for f in ["overlay.qcow2", "usb.img"] {
                    let _ = fs_err::remove_file(d.join(f));
                }
            }
        }
        Err(e) => {
            fs_err::write(run_dir.join("report.txt"), format!("FAILED: {e:#}\n"))?;
            eprintln!("pair test failed; console logs, transcripts and report in {}", run_dir.display());
        }
    }
    result
}

/// The two VMs and what the checks need to know about them.
struct Pair<'a> {
    sh: &'a Shell,
    cfg: &'a ImageConfig,
    hosts: &'a [&'a Host],
    /// Each host's schedule, in host order.
    schedules: &'a [Schedule],
    specs: Vec<qemu::Spec>,
    boots: Vec<crate::vm::boot::BootFiles>,
    /// What each host's drive was pre-filled with.
    files: Vec<Vec<(String, Vec<u8>)>>,
    vms: Vec<Vm>,
    server: usize,
    client: usize,
    /// Where the Pis' own Ethernet addresses come from (see [`PiMacs`]).
    macs: PiMacs,
}

fn pair(
    sh: &Shell,
    cfg: &ImageConfig,
    hosts: &[&Host],
    images: &[PathBuf],
    schedules: &[Schedule],
    run_dir: &Path,
    t0: Instant,
) -> Result<Report> {
    let mut p = Pair::start(sh, cfg, hosts, images, schedules, run_dir)?;
    let boot = p.wait_booted()?;
    let both_up = Instant::now();
    p.check_services()?;
    p.check_addresses()?;
    p.check_names_and_ssh()?;
    p.wait_prefilled()?;
    let synced = both_up.elapsed();
    eprintln!("qemu: prefilled files synced both ways {:.0}s after boot", synced.as_secs_f64());
    let mut latencies = p.measure_latency()?;
    latencies.extend(p.check_reboot_sends_nothing_twice()?);
    p.stop_and_compare_drives(run_dir)?;
    let schedules = hosts.iter().zip(schedules).map(|(h, s)| (h.name.clone(), *s)).collect();
    Ok(Report { schedules, boot, synced_after_boot: synced, latencies, wall: t0.elapsed() })
}

impl Pair<'_> {
    fn start<'a>(
        sh: &'a Shell,
        cfg: &'a ImageConfig,
        hosts: &'a [&'a Host],
        images: &[PathBuf],
        schedules: &'a [Schedule],
        run_dir: &Path,
    ) -> Result<Pair<'a>> {
        let server = hosts.iter().position(|h| h.role == Role::DhcpServer).context("no dhcp-server")?;
        let files: Vec<_> = hosts.iter().map(|h| test_files(&h.name)).collect();
        let mut macs = PiMacs::for_run("qemu")?;
        let specs = specs(sh, cfg, hosts, images, run_dir, Drives { files: &files, kib: DRIVE_KIB }, &mut macs)?;
        let (boots, vms) = qemu::start_all(sh, &specs)?;
        Ok(Pair { sh, cfg, hosts, schedules, specs, boots, files, vms, server, client: 1 - server, macs })
    }

    fn wait_booted(&mut self) -> Result<Vec<(String, Duration)>> {
        let started = Instant::now();
        let mut times = Vec::new();
        for vm in self.vms.iter_mut() {
            let t = vm.wait_booted(started)?;
            eprintln!("qemu: {} booted in {:.0}s", vm.name, t.as_secs_f64());
            times.push((vm.name.clone(), t));
        }
        Ok(times)
    }

    /// How long a file may take to arrive from `sender`, whose schedule sets the pace.
    fn sync_limit(&self, sender: usize) -> Duration {
        match self.schedules[sender] {
            Schedule::Systemd => Duration::from_secs(180),
            Schedule::Cron => Duration::from_secs(240),
        }
    }

    /// sshd everywhere, dnsmasq on the server only, the agent as the schedule says, the drive mounted.
    fn check_services(&mut self) -> Result<()> {
        let mount = &self.cfg.drive.mount_point;
        for ((vm, h), schedule) in self.vms.iter_mut().zip(self.hosts).zip(self.schedules) {
            vm.ok("systemctl is-active ssh")?;
            // The bounds a peer meets in sshd (its effective settings, as sshd reads its files).
            let sshd = vm.ok("sshd -T")?;
            for want in ["clientaliveinterval 15", "clientalivecountmax 4", "logingracetime 60", "maxstartups 4:50:10", "maxsessions 2"] {
                ensure!(sshd.lines().any(|l| l.trim() == want), "{}: sshd runs without `{want}`", h.name);
            }
            let (dns, _) = vm.exec("systemctl is-active pi2pi-dnsmasq")?;
            if h.role == Role::DhcpServer {
                ensure!(dns == 0, "{}: dnsmasq is not active on the dhcp-server", h.name);
            } else {
                ensure!(dns != 0, "{}: dnsmasq runs on a dhcp-client", h.name);
            }
            if *schedule == Schedule::Systemd {
                vm.ok("systemctl is-active pi2pi-agent")?;
            } else {
                let (c, _) = vm.exec("systemctl is-enabled pi2pi-agent")?;
                ensure!(c != 0, "{}: pi2pi-agent.service is enabled with the cron schedule", h.name);
                vm.ok("systemctl is-active cron && test -f /etc/cron.d/pi2pi-agent")?;
            }
            wait_mounted(vm, mount, "vfat")?;
            check_boot_state(vm, Slot::A).with_context(|| format!("{}: the boot slot", h.name))?;
            let units = crate::build::layers::masked_units().collect::<Vec<_>>().join(" ");
            let (_, state) = vm.exec(&format!("systemctl is-enabled {units}"))?;
            ensure!(state.lines().all(|l| l.trim() == "masked"), "{}: {units} should be masked: {state}", h.name);
        }
        Ok(())
    }

    /// Static address on the server, leased (reserved by the card's client identifier) on the
    /// client, whose Ethernet address is a Pi's own, in no config.
    fn check_addresses(&mut self) -> Result<()> {
        let (cfg, hosts) = (self.cfg, self.hosts);
        let lan = cfg.lan()?;
        let iface = &lan.interface;
        let want = |h: &Host| format!("inet {}/{}", address(h), lan.prefix);
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let what = format!("{}: {iface} getting {}", hosts[i].name, want(hosts[i]));
            wait_until(&what, Duration::from_secs(120), Duration::from_secs(2), || {
                let out = vm.ok(&format!("ip -c=never -4 addr show dev {iface}"))?;
                Ok(if out.contains(&want(hosts[i])) { Ok(()) } else { Err(out) })
            })?;
        }
        self.check_lease()
    }

    /// The server's lease file gives the client its reserved address, to the Ethernet address its
    /// NIC has now and the identifier its card sends.
    fn check_lease(&mut self) -> Result<()> {
        let leases = self.vms[self.server].ok("cat /var/lib/misc/dnsmasq.leases")?;
        let c = self.hosts[self.client];
        let mac = self.client_mac();
        let want = (mac.to_string(), address(c).to_string(), c.name.as_str(), c.client_id.as_deref().unwrap_or("-"));
        // dnsmasq's lease line: expiry, MAC, address, host name, client identifier.
        let found = leases
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .any(|f| f.len() == 5 && (f[1], f[2], f[3], f[4]) == (want.0.as_str(), want.1.as_str(), want.2, want.3));
        ensure!(
            found,
            "{}'s lease file has no lease of {} to {} ({}, id {}):\n{leases}",
            self.hosts[self.server].name,
            want.1,
            want.2,
            want.0,
            want.3
        );
        Ok(())
    }

    fn client_mac(&self) -> Mac {
        self.specs[self.client].nics[0].mac
    }

    /// Every name resolves on both; the agent key logs in with no prompt but runs the receiver only.
    fn check_names_and_ssh(&mut self) -> Result<()> {
        let (cfg, hosts) = (self.cfg, self.hosts);
        for (i, vm) in self.vms.iter_mut().enumerate() {
            for h in hosts {
                let name = format!("{}.{}", h.name, cfg.network.domain);
                let out = vm.ok(&format!("getent hosts {name}"))?;
                ensure!(out.contains(&address(h).to_string()), "{}: {name} resolves to {out}", hosts[i].name);
            }
            let peer = format!("{}.{}", hosts[1 - i].name, cfg.network.domain);
            let user = &cfg.system.user;
            let (code, out) = vm.exec(&format!(
                "sudo -u {user} ssh -o BatchMode=yes -i /home/{user}/.ssh/id_ed25519 {user}@{peer} 'echo SHELL-$((6*7))'"
            ))?;
            ensure!(code != 255, "{}: ssh to {peer} failed (exit 255):\n{out}", hosts[i].name);
            ensure!(!out.contains("SHELL-42"), "{}: the agent key got a shell on {peer}:\n{out}", hosts[i].name);
        }
        Ok(())
    }

    /// Every pre-filled file arrives on the other side (checked in the guest; host-side at the end).
    fn wait_prefilled(&mut self) -> Result<()> {
        let mount = &self.cfg.drive.mount_point;
        let started = Instant::now();
        for i in 0..2 {
            let limit = self.sync_limit(1 - i);
            let deadline = started + limit;
            let want: BTreeMap<String, String> =
                self.files[1 - i].iter().map(|(p, d)| (p.clone(), hex::encode(Sha256::digest(d)))).collect();
            let vm = &mut self.vms[i];
            let what = format!("{}: receiving/ holding the peer's files, expected:\n{want:#?}", vm.name);
            let left = deadline.saturating_duration_since(Instant::now());
            let arrived = wait_until(&what, left, Duration::from_secs(2), || {
                let got = guest_tree(vm, &format!("{mount}/receiving"))?;
                Ok(if got == want { Ok(()) } else { Err(format!("{got:#?}")) })
            });
            if let Err(e) = arrived {
                let (_, status) = vm.exec("pi2pi-agent status; journalctl -b --no-pager -t pi2pi-agent -u pi2pi-agent | tail -30")?;
                return Err(e.context(status));
            }
        }
        Ok(())
    }

    /// Files written after boot: time from their close on one card to their arrival on the other,
    /// three from each daemon sender. A cron sender's (a minute each) is measured after the
    /// reboot below, where its wait overlaps the rest of that check.
    fn measure_latency(&mut self) -> Result<Vec<(Schedule, Duration)>> {
        let mut latencies = Vec::new();
        for sender in [self.server, self.client] {
            let schedule = self.schedules[sender];
            if schedule != Schedule::Systemd {
                continue;
            }
            for n in 0..3 {
                let name = format!("late-{}-{n}.bin", self.hosts[sender].name);
                let sum = self.write_staged(sender, &name, 300_000)?;
                let took = self.wait_arrival_from(sender, &name, &sum)?;
                latencies.push((schedule, took));
                eprintln!("qemu: {name} ({} sender) arrived after {:.2}s", schedule.name(), took.as_secs_f64());
            }
        }
        Ok(latencies)
    }

    /// Writes `bytes` random bytes as sending/`name` on `sender`, the way a careful writer does:
    /// staged outside sending/ on the same drive and moved in (a temporary written inside
    /// sending/ is a file like any other, delivered once closed and still for the settle time: a
    /// slow `mv` under emulation once let `late-2.bin.tmp` go out, and deletions are not
    /// propagated). Returns its `sha256sum` line.
    fn write_staged(&mut self, sender: usize, name: &str, bytes: u32) -> Result<String> {
        let mount = &self.cfg.drive.mount_point;
        self.vms[sender].ok(&format!(
            "t={mount}/.{name}.part; f={mount}/sending/{name}; head -c {bytes} /dev/urandom > $t && mv $t $f && sha256sum < $f"
        ))
    }

    /// Waits for `name` from `sender` in the peer's receiving/; returns the wait.
    fn wait_arrival_from(&mut self, sender: usize, name: &str, sum: &str) -> Result<Duration> {
        let path = format!("{}/receiving/{name}", self.cfg.drive.mount_point);
        let limit = self.sync_limit(sender);
        wait_arrival(&mut self.vms[1 - sender], &path, sum, limit)
    }

    /// Reboots the client with its card in another Pi (another factory Ethernet address, as when
    /// a broken Pi is replaced and the card moved over): it keeps its address, sync goes on both
    /// ways (a file from each side, written after the reboot; the client's is its new-file latency
    /// sample, from a sender that just booted), and no receiver writes any file a second time
    /// (judged by the files themselves: the times of each file under receiving/, which a new copy
    /// changes).
    fn check_reboot_sends_nothing_twice(&mut self) -> Result<Vec<(Schedule, Duration)>> {
        let mount = self.cfg.drive.mount_point.clone();
        let receiving = format!("{mount}/receiving");
        let before: Vec<_> = self.vms.iter_mut().map(|vm| guest_written(vm, &receiving)).collect::<Result<_>>()?;
        let c = self.client;
        // Slot B first: the card has nothing there yet, so U-Boot passes it over and boots A
        // (what a fresh card does when its boot state asks for a slot no update has written).
        self.vms[c].ok("pi2pi-agent boot set-primary B")?;
        self.vms[c].stop(Power::Reboot)?;
        let moved_to = self.macs.next(&format!("{} eth0, its card moved to another Pi", self.hosts[c].name));
        self.specs[c].nics[0].mac = moved_to;
        self.specs[c].cpus = qemu::CPUS_ALONE;
        let restarted = Instant::now();
        self.vms[c] = Vm::start(self.sh, &self.specs[c], &self.boots[c], &self.specs[c].dir.join("overlay.qcow2"))?;
        let t = self.vms[c].wait_booted(restarted)?;
        eprintln!("qemu: {} rebooted in another Pi ({moved_to}) in {:.0}s", self.hosts[c].name, t.as_secs_f64());
        let state = check_boot_state(&mut self.vms[c], Slot::A).context("after asking for the empty slot B")?;
        ensure!(state.left(Slot::B) == 0, "U-Boot did not pass over the empty slot B: {state:?}");
        self.check_addresses().context("after the card moved to another Pi")?;
        let names: Vec<String> = [self.server, c].iter().map(|&i| format!("after-reboot-{}.bin", self.hosts[i].name)).collect();
        let sums = [self.write_staged(self.server, &names[0], 50_000)?, self.write_staged(c, &names[1], 300_000)?];
        let written = Instant::now();
        self.wait_arrival_from(self.server, &names[0], &sums[0]).context("after the reboot")?;
        self.wait_arrival_from(c, &names[1], &sums[1]).context("after the reboot")?;
        let took = written.elapsed();
        eprintln!("qemu: {} ({} sender, after its reboot) arrived after {:.2}s", names[1], self.schedules[c].name(), took.as_secs_f64());
        // Both senders idle (nothing pending, no pass running): a resend would have happened by now.
        for i in 0..2 {
            let limit = self.sync_limit(i);
            wait_idle(&mut self.vms[i], limit)?;
        }
        for (i, vm) in self.vms.iter_mut().enumerate() {
            let after = guest_written(vm, &receiving)?;
            let changed: Vec<&String> = after.iter().filter(|(k, v)| before[i].get(*k) != Some(v)).map(|(k, _)| k).collect();
            let expected = &names[if i == c { 0 } else { 1 }];
            ensure!(
                changed.len() == 1 && changed[0] == expected,
                "{}: receiving/ files written after the reboot: {changed:?}, expected only {expected} (re-sent files?)",
                self.hosts[i].name
            );
        }
        for vm in &self.vms {
            vm.check_console()?;
        }
        Ok(vec![(self.schedules[c], took)])
    }

    /// Clean shutdown, then each sending/ and the peer's receiving/ compared from the host.
    fn stop_and_compare_drives(&mut self, run_dir: &Path) -> Result<()> {
        for vm in self.vms.iter_mut() {
            vm.stop(Power::Off)?;
        }
        let hosts = self.hosts;
        for i in 0..2 {
            let scratch = run_dir.join("compare");
            let sent = drive_tree(self.sh, &self.specs[i].dir.join("usb.img"), "sending", &scratch.join("a"))?;
            let got = drive_tree(self.sh, &self.specs[1 - i].dir.join("usb.img"), "receiving", &scratch.join("b"))?;
            ensure!(
                sent == got,
                "{}'s sending/ and {}'s receiving/ differ on disk:\n{sent:#?}\n{got:#?}",
                hosts[i].name,
                hosts[1 - i].name
            );
            let _ = fs_err::remove_dir_all(&scratch);
        }
        Ok(())
    }
}
