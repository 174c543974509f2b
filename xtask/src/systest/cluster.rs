//! `cargo xtask test cluster`: the manager and two workers of a cluster config (by default
//! `examples/cluster.toml`) booted together from their own built cards, and the whole cluster
//! checked: links named by MAC with their addresses, routes, ping both ways on each link, a worker
//! reaching another through the manager, NAT out of the uplink only, SSH from the manager with no
//! prompt and no password, the workers' clocks set by the manager, each worker's files delivered
//! to the manager's receiving/<worker>/ (compared from the host after power-off), no failed unit.
//!
//! USB gadget mode cannot be emulated, so each link is what the gadget makes of it: the worker's
//! NIC has the gadget's device address (the worker's card names it usb0 by that address), the
//! manager has one NIC per worker with that worker's host address (named ethpiN by it), the pair
//! joined by a private datagram socket. The manager's uplink (its first NIC, eth0) is a socket the
//! test itself reads: what the manager sends out of it is captured, and nothing goes anywhere.
//! Workers' clocks start years off (`-rtc base=`), so only the manager can set them.
//!
//! Runs under target/qemu/cluster/; on failure the console logs, transcripts, QEMU command lines and
//! report.txt stay there.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use xshell::Shell;

use crate::build::config::{Host, ImageConfig, Role};
use crate::build::image;
use crate::build::mac::PiMacs;
use crate::vm::drive::{drive_tree, make_drive, test_files, DRIVE_KIB};
use crate::vm::guest::{guest_tree, wait_until};
use crate::vm::qemu::{self, Nic, Power, Vm};

/// The cluster the test builds and boots when not given another.
pub const EXAMPLE: &str = "examples/cluster.toml";
/// Two workers: enough for routing between links, and three VMs is what two cores boot in time.
const WORKERS: usize = 2;
/// The manager's uplink in the test: TEST-NET-1 (RFC 5737), documentation-only addresses; the
/// "gateway" is the test's socket, which answers nothing.
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UPLINK_GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const UPLINK_GATEWAY_MAC: &str = "02:00:00:00:02:fe";
/// Where the workers' real-time clocks start.
const WORKER_RTC: &str = "2020-01-01";
/// How far a worker's clock may be from the manager's once synchronised.
const CLOCK_TOLERANCE: f64 = 2.0;

pub struct Report {
    pub boot: Vec<(String, Duration)>,
    /// Each worker's clock: how far chrony stepped it, and then its offset from the manager's (s).
    pub clocks: Vec<(String, f64, f64)>,
    /// From all up to every worker's files at the manager.
    pub delivered_after_boot: Duration,
    pub wall: Duration,
}

impl Report {
    pub fn render(&self) -> String {
        let boot = self.boot.iter().map(|(n, d)| format!("{n} {:.0}s", d.as_secs_f64())).collect::<Vec<_>>().join(", ");
        let clocks = self.clocks.iter().map(|(n, s, o)| format!("{n} stepped {s:+.0}s, then {o:+.2}s")).collect::<Vec<_>>().join(", ");
        format!(
            "cluster: booted {boot}; workers' clocks set by the manager: {clocks}; workers' files at the manager {:.0}s after boot; wall {:.0}s\n",
            self.delivered_after_boot.as_secs_f64(),
            self.wall.as_secs_f64()
        )
    }
}

/// The manager and the first two workers of `cfg`, in that order.
fn booted_hosts(cfg: &ImageConfig) -> Result<Vec<&Host>> {
    let manager = cfg.manager().with_context(|| format!("{} describes no cluster (no host with role = \"manager\")", cfg.file_name()))?;
    let workers: Vec<&Host> = cfg.hosts.iter().filter(|h| h.role == Role::Worker).take(WORKERS).collect();
    ensure!(workers.len() == WORKERS, "the cluster test needs {WORKERS} workers in {}", cfg.file_name());
    Ok(std::iter::once(manager).chain(workers).collect())
}

/// Where the example's cards are built (not shipped): target/images-cluster/.
fn cards_options(sh: &Shell) -> image::Options {
    image::Options::test_cards(sh, "cluster")
}

/// Builds the cards of `hosts` (of `cfg`, the example) where the cluster and board tests find
/// them; `cargo xtask test` builds all of them once, for both.
pub fn build_cards(sh: &Shell, cfg: &ImageConfig, hosts: &[&Host]) -> Result<()> {
    crate::build::keys::ensure(sh, cfg)?;
    let built = image::build(sh, cfg, hosts, &cards_options(sh))?;
    eprint!("{}", image::summary(&built));
    Ok(())
}

/// Builds (or, `build` false, finds) the booted hosts' cards and runs the test.
pub fn run(sh: &Shell, cfg: &ImageConfig, build: bool) -> Result<Report> {
    let t0 = Instant::now();
    let hosts = booted_hosts(cfg)?;
    let root = sh.current_dir();
    if build {
        build_cards(sh, cfg, &hosts)?;
    }
    let images = card_files(sh, &hosts)?;

    let run_dir = root.join("target/qemu/cluster");
    let _ = fs_err::remove_dir_all(&run_dir);
    fs_err::create_dir_all(&run_dir)?;
    let result = Cluster::start(sh, cfg, &hosts, &images, &run_dir).and_then(|mut c| {
        let r = c.check_all(t0);
        if r.is_err() {
            c.save_diagnostics();
        }
        r
    });
    match &result {
        Ok(r) => {
            fs_err::write(run_dir.join("report.txt"), r.render())?;
            for h in &hosts {
                for f in ["overlay.qcow2", "usb.img"] {
                    let _ = fs_err::remove_file(run_dir.join(&h.name).join(f));
                }
            }
        }
        Err(e) => {
            fs_err::write(run_dir.join("report.txt"), format!("FAILED: {e:#}\n"))?;
            eprintln!("cluster test failed; console logs, transcripts and report in {}", run_dir.display());
        }
    }
    result
}

/// The card of each of `hosts` (of the example) in [`cards_options`]' directory, which must exist.
pub fn card_files(sh: &Shell, hosts: &[&Host]) -> Result<Vec<PathBuf>> {
    let dir = cards_options(sh).out_dir;
    let files: Vec<PathBuf> = hosts.iter().map(|h| dir.join(format!("{}.img", h.name))).collect();
    if let Some(missing) = files.iter().find(|f| !f.exists()) {
        bail!("{} is missing: the cluster example's cards were not built", missing.display());
    }
    Ok(files)
}

/// What the manager sends out of its uplink, as the test's end of that link receives it.
struct Uplink {
    frames: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
}

impl Uplink {
    /// Binds `path` (the manager's uplink NIC sends there) and keeps every frame, up to a bound.
    fn listen(path: &Path) -> Result<Uplink> {
        let _ = fs_err::remove_file(path);
        let sock = UnixDatagram::bind(path).with_context(|| format!("binding {}", path.display()))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let (frames, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (f, s) = (frames.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let mut v = f.lock().expect("frames lock");
                    if v.len() < 100_000 {
                        v.push(buf[..n].to_vec());
                    }
                }
            }
        });
        Ok(Uplink { frames, stop })
    }

    /// (source, destination) of every ICMP echo request seen so far.
    fn echo_requests(&self) -> Vec<(Ipv4Addr, Ipv4Addr)> {
        self.frames.lock().expect("frames lock").iter().filter_map(|f| echo_request(f)).collect()
    }
}

impl Drop for Uplink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// An Ethernet frame's (source, destination) if it carries an IPv4 ICMP echo request.
fn echo_request(f: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let ip = f.get(14..)?;
    let is_ipv4 = f.get(12..14)? == [0x08, 0x00] && ip.first()? >> 4 == 4;
    let header = usize::from(ip.first()? & 0x0f) * 4;
    if !is_ipv4 || *ip.get(9)? != 1 || *ip.get(header)? != 8 {
        return None;
    }
    let addr = |at: usize| Some(Ipv4Addr::new(*ip.get(at)?, *ip.get(at + 1)?, *ip.get(at + 2)?, *ip.get(at + 3)?));
    Some((addr(12)?, addr(16)?))
}

struct Cluster<'a> {
    sh: &'a Shell,
    cfg: &'a ImageConfig,
    /// The manager first, then the workers.
    hosts: &'a [&'a Host],
    specs: Vec<qemu::Spec>,
    /// What each host's drive was pre-filled with (the manager's is empty).
    files: Vec<Vec<(String, Vec<u8>)>>,
    vms: Vec<Vm>,
    uplink: Uplink,
}

impl<'a> Cluster<'a> {
    fn start(sh: &'a Shell, cfg: &'a ImageConfig, hosts: &'a [&'a Host], images: &[PathBuf], run_dir: &Path) -> Result<Cluster<'a>> {
        let sock = |name: &str| run_dir.join(format!("{name}.sock"));
        let uplink = Uplink::listen(&sock("uplink"))?;
        let manager = hosts[0];
        let mut macs = PiMacs::for_run("cluster")?;
        let (mut specs, mut files) = (Vec::new(), Vec::new());
        for (h, img) in hosts.iter().zip(images) {
            let dir = run_dir.join(&h.name);
            fs_err::create_dir_all(&dir)?;
            let f = if h.role == Role::Worker { test_files(&h.name) } else { Vec::new() };
            make_drive(sh, &dir.join("usb.img"), &cfg.drive.label, DRIVE_KIB, &f, &dir.join("stage"))?;
            files.push(f);
            let nics = match &h.link {
                // The worker: its gadget end.
                Some(l) => vec![Nic { mac: l.dev_mac, local: sock(&h.name), remote: sock(&l.interface) }],
                // The manager: the uplink first (eth0, as the config names it; its address is its
                // Pi's own), then a link per worker (each end's address set by the worker's card).
                None => std::iter::once(Nic {
                    mac: macs.next(&format!("{} uplink {}", manager.name, manager.uplink.as_deref().unwrap_or("eth0"))),
                    local: sock("manager-uplink"),
                    remote: sock("uplink"),
                })
                .chain(hosts[1..].iter().filter_map(|w| w.link.as_ref().map(|l| (w, l))).map(|(w, l)| Nic {
                    mac: l.host_mac,
                    local: sock(&l.interface),
                    remote: sock(&w.name),
                }))
                .collect(),
            };
            let spec = qemu::Spec {
                name: h.name.clone(),
                image: img.clone(),
                usb: Some(dir.join("usb.img")),
                usb_unplugged: false,
                nics,
                dir,
                memory_mib: 640,
                rtc_base: (h.role == Role::Worker).then(|| WORKER_RTC.to_string()),
                cpus: qemu::CPUS_BESIDE_OTHERS,
            };
            specs.push(spec);
        }
        let (_, vms) = qemu::start_all(sh, &specs)?;
        Ok(Cluster { sh, cfg, hosts, specs, files, vms, uplink })
    }

    fn check_all(&mut self, t0: Instant) -> Result<Report> {
        let started = Instant::now();
        let mut boot = Vec::new();
        for vm in self.vms.iter_mut() {
            let t = vm.wait_booted(started)?;
            eprintln!("cluster: {} booted in {:.0}s", vm.name, t.as_secs_f64());
            boot.push((vm.name.clone(), t));
        }
        let all_up = Instant::now();
        self.check_links()?;
        self.check_routing()?;
        self.check_nat()?;
        self.check_ssh()?;
        let clocks = self.check_clocks()?;
        self.wait_delivered()?;
        let delivered_after_boot = all_up.elapsed();
        eprintln!("cluster: every worker's files at the manager {:.0}s after boot", delivered_after_boot.as_secs_f64());
        self.check_still_running()?;
        self.stop_and_compare_drives()?;
        Ok(Report { boot, clocks, delivered_after_boot, wall: t0.elapsed() })
    }

    /// After a failure: each running guest's links, addresses, routes, rules and recent warnings,
    /// into `<host>/diagnostics.txt` beside its console log.
    fn save_diagnostics(&mut self) {
        const WHAT: &str = "ip -d link; ip addr; ip route; cat /etc/udev/rules.d/70-pi2pi-links.rules; nft list ruleset; \
                            date -u; chronyc -n sources; chronyc tracking; journalctl -b --no-pager -u chrony -u fake-hwclock; systemctl --failed --no-pager; journalctl -b --no-pager -p warning | tail -60";
        for (vm, spec) in self.vms.iter_mut().zip(&self.specs) {
            let text = match vm.exec(WHAT) {
                Ok((_, out)) => out,
                Err(e) => format!("no diagnostics: {e:#}"),
            };
            let _ = fs_err::write(spec.dir.join("diagnostics.txt"), text);
        }
    }

    fn workers(&self) -> impl Iterator<Item = (usize, &'a Host, &'a crate::build::config::Link)> + 'a {
        self.hosts.iter().enumerate().skip(1).filter_map(|(i, h)| h.link.as_ref().map(|l| (i, *h, l)))
    }

    /// The manager's ethpiN carry the worker's host address and the .1; each worker's usb0 its
    /// device address and the .2, with the default route via the manager (dhcpcd may take a few
    /// seconds after boot).
    fn check_links(&mut self) -> Result<()> {
        let links: Vec<_> = self.workers().map(|(i, _, l)| (i, l)).collect();
        for (i, l) in links {
            let checks = [
                (0, l.interface.as_str(), l.host_mac.to_string(), format!("inet {}/{}", l.manager, l.prefix)),
                (i, "usb0", l.dev_mac.to_string(), format!("inet {}/{}", l.worker, l.prefix)),
            ];
            for (vm, iface, mac, inet) in checks {
                let vm = &mut self.vms[vm];
                // Booted is not settled: udev may still be loading the NIC driver (seen: 30 s
                // after the manager's systemd said "running", three guests on two cores).
                poll(vm, &format!("cat /sys/class/net/{iface}/address 2>&1"), |o| o.trim() == mac, Duration::from_secs(120))
                    .with_context(|| format!("no {iface} with address {mac}"))?;
                poll(vm, &format!("ip -4 -o addr show dev {iface}"), |o| o.contains(&inet), Duration::from_secs(90))
                    .with_context(|| format!("{iface} never got {inet}"))?;
            }
            let vm = &mut self.vms[i];
            let want = format!("default via {} dev usb0", l.manager);
            poll(vm, "ip -4 route show default", |o| o.contains(&want), Duration::from_secs(90)).with_context(|| format!("no `{want}`"))?;
        }
        Ok(())
    }

    /// Ping both ways on each link; worker 1 reaches worker 2 through the manager (its reply
    /// comes back with the TTL one lower: routed, once); forwarding is on.
    fn check_routing(&mut self) -> Result<()> {
        let links: Vec<_> = self.workers().map(|(i, h, l)| (i, h.name.clone(), l.clone())).collect();
        for (i, name, l) in &links {
            self.vms[0].ok(&format!("ping -c 1 -W 5 {}", l.worker)).with_context(|| format!("the manager cannot ping {name}"))?;
            self.vms[*i].ok(&format!("ping -c 1 -W 5 {}", l.manager)).with_context(|| format!("{name} cannot ping the manager"))?;
        }
        let forward = self.vms[0].ok("sysctl -n net.ipv4.ip_forward")?;
        ensure!(forward.trim() == "1", "the manager does not forward: ip_forward = {}", forward.trim());
        let (a, b) = (&links[0], &links[1]);
        let out = self.vms[a.0].ok(&format!("ping -c 1 -W 5 {}.{}", b.1, self.cfg.network.domain))?;
        ensure!(
            out.contains(&format!("({})", b.2.worker)) && out.contains("ttl=63"),
            "{} → {} not routed once by the manager (expected a reply from {} with ttl=63):\n{out}",
            a.1,
            b.1,
            b.2.worker
        );
        Ok(())
    }

    /// The ruleset is loaded, and a worker's packet to the uplink's side leaves the manager with
    /// the manager's uplink address, not the worker's.
    fn check_nat(&mut self) -> Result<()> {
        let m = &mut self.vms[0];
        let uplink = self.hosts[0].uplink.as_deref().context("the manager has no uplink")?;
        let rules = m.ok("nft list ruleset")?;
        ensure!(rules.contains(&format!("oifname \"{uplink}\" masquerade")), "no masquerade out of {uplink} in force:\n{rules}");
        m.ok(
            &format!(
                "ip link set {uplink} up && ip addr add {UPLINK}/24 dev {uplink} && ip route replace default via {UPLINK_GATEWAY} dev {uplink} && \
                 ip neigh replace {UPLINK_GATEWAY} lladdr {UPLINK_GATEWAY_MAC} dev {uplink} nud permanent"
            )
        )?;
        let (i, name, l) = self.workers().next().map(|(i, h, l)| (i, h.name.clone(), l.clone())).context("no worker")?;
        // No one answers on the uplink: the ping fails, what matters is what left the manager.
        self.vms[i].exec(&format!("ping -c 3 -i 0.5 -W 1 {UPLINK_GATEWAY}"))?;
        std::thread::sleep(Duration::from_secs(1));
        let seen: Vec<_> = self.uplink.echo_requests().into_iter().filter(|(_, dst)| *dst == UPLINK_GATEWAY).collect();
        ensure!(!seen.is_empty(), "nothing from {name}'s ping to {UPLINK_GATEWAY} left the manager's uplink");
        ensure!(
            seen.iter().all(|(src, _)| *src == UPLINK),
            "{name}'s packets left the uplink with sources {seen:?}; masqueraded they come from {UPLINK} (not {})",
            l.worker
        );
        eprintln!("cluster: {} of {name}'s pings left the uplink masqueraded as {UPLINK}", seen.len());
        Ok(())
    }

    /// The manager logs in to each worker by name with no prompt; a password is not even asked
    /// for; a worker's agent key on the manager runs the receiver only.
    fn check_ssh(&mut self) -> Result<()> {
        let user = self.cfg.system.user.clone();
        let ssh = format!("sudo -u {user} ssh -o BatchMode=yes -o ConnectTimeout=20");
        let names: Vec<(usize, String)> = self.workers().map(|(i, h, _)| (i, h.name.clone())).collect();
        let manager = self.hosts[0].name.clone();
        for (i, name) in names {
            let out = self.vms[0].ok(&format!("{ssh} {name} 'echo SHELL-$((6*7)) $(hostname)'"))?;
            ensure!(out.contains(&format!("SHELL-42 {name}")), "the manager's ssh to {name} did not run a command:\n{out}");
            let (code, out) = self.vms[0]
                .exec(&format!("{ssh} -o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive {name} true"))?;
            // The server's list of methods is in the refusal: public keys only, no password offered.
            ensure!(
                code == 255 && out.contains("Permission denied (publickey)"),
                "{name} did not refuse a password login (exit {code}):\n{out}"
            );
            let (code, out) = self.vms[i].exec(&format!("{ssh} {manager} 'echo SHELL-$((6*7))'"))?;
            ensure!(code != 255 && !out.contains("SHELL-42"), "{name}'s agent key got a shell on {manager} (exit {code}):\n{out}");
        }
        Ok(())
    }

    /// Each worker's clock started in WORKER_RTC's year, was stepped by chrony (from the card's
    /// build time, where fake-hwclock put it, being later than the RTC's), and is then within
    /// CLOCK_TOLERANCE of the manager's; returns (worker, step, offset).
    fn check_clocks(&mut self) -> Result<Vec<(String, f64, f64)>> {
        let started = Instant::now();
        let mut out = Vec::new();
        let workers: Vec<(usize, String)> = self.workers().map(|(i, h, _)| (i, h.name.clone())).collect();
        for (i, name) in workers {
            let year = &WORKER_RTC[..4];
            ensure!(
                self.vms[i].console().contains(&format!("setting system clock to {year}-")),
                "{name}'s console does not show its clock starting in {year} (is -rtc base= in force?)"
            );
            let what = format!("{name}'s clock stepped by chrony to within {CLOCK_TOLERANCE}s of the manager's");
            let left = Duration::from_secs(180).saturating_sub(started.elapsed());
            let vms = &mut self.vms;
            let stepped = wait_until(&what, left, Duration::from_secs(3), || {
                let log = vms[i].ok("journalctl -b --no-pager -u chrony -o cat | grep 'System clock wrong by' || true")?;
                let step: Option<f64> = log.lines().find_map(|l| l.split("wrong by ").nth(1)?.split_whitespace().next()?.parse().ok());
                let off = clock_offset(&mut vms[i])? - clock_offset(&mut vms[0])?;
                Ok(match step {
                    Some(s) if off.abs() <= CLOCK_TOLERANCE => Ok((s, off)),
                    _ => Err(format!("{off:+.1}s from the manager's (chrony's first step: {step:?})")),
                })
            });
            let (s, off) = match stepped {
                Ok(v) => v,
                Err(e) => {
                    let (_, why) = self.vms[i].exec("chronyc -n sources; chronyc tracking; journalctl -b --no-pager -u chrony | tail")?;
                    return Err(e.context(why));
                }
            };
            ensure!(s.abs() > 60.0, "{name}'s clock was only {s:+.1}s off when chrony first stepped it: it did not start far off");
            out.push((name, s, off));
        }
        Ok(out)
    }

    /// Every worker's pre-filled sending/ is in the manager's receiving/<worker>/ (in the guest;
    /// from the host after power-off).
    fn wait_delivered(&mut self) -> Result<()> {
        let mount = self.cfg.drive.mount_point.clone();
        let started = Instant::now();
        for (i, h) in self.hosts.iter().enumerate().skip(1) {
            let want: BTreeMap<String, String> = self.files[i].iter().map(|(p, d)| (p.clone(), hex::encode(Sha256::digest(d)))).collect();
            let what = format!("the manager's receiving/{} holding\n{want:#?}", h.name);
            let left = Duration::from_secs(240).saturating_sub(started.elapsed());
            let manager = &mut self.vms[0];
            let delivered = wait_until(&what, left, Duration::from_secs(3), || {
                let got = guest_tree(manager, &format!("{mount}/receiving/{}", h.name)).unwrap_or_default();
                Ok(if got == want { Ok(()) } else { Err(format!("{got:#?}")) })
            });
            if let Err(e) = delivered {
                let (_, status) = self.vms[i].exec("pi2pi-agent status; journalctl -b --no-pager -u pi2pi-agent | tail -30")?;
                return Err(e.context(format!("{} says:\n{status}", h.name)));
            }
        }
        Ok(())
    }

    /// Still no failed unit anywhere, and nothing alarming on any console.
    fn check_still_running(&mut self) -> Result<()> {
        for vm in self.vms.iter_mut() {
            let (_, state) = vm.exec("systemctl is-system-running")?;
            if state.trim() != "running" {
                let (_, failed) = vm.exec("systemctl --failed --no-legend --plain")?;
                bail!("{}: system is `{}`; failed units:\n{failed}", vm.name, state.trim());
            }
            vm.check_console()?;
        }
        Ok(())
    }

    fn stop_and_compare_drives(&mut self) -> Result<()> {
        for vm in self.vms.iter_mut() {
            vm.stop(Power::Off)?;
        }
        let scratch = self.specs[0].dir.join("compare");
        let manager_drive = self.specs[0].dir.join("usb.img");
        for (i, h) in self.hosts.iter().enumerate().skip(1) {
            let sent = drive_tree(self.sh, &self.specs[i].dir.join("usb.img"), "sending", &scratch.join("a"))?;
            let got = drive_tree(self.sh, &manager_drive, &format!("receiving/{}", h.name), &scratch.join("b"))?;
            ensure!(sent == got, "{}'s sending/ and the manager's receiving/{} differ on disk:\n{sent:#?}\n{got:#?}", h.name, h.name);
        }
        let _ = fs_err::remove_dir_all(&scratch);
        Ok(())
    }
}

/// Runs `command` in the guest until its output satisfies `ok`, up to `limit`.
fn poll(vm: &mut Vm, command: &str, ok: impl Fn(&str) -> bool, limit: Duration) -> Result<String> {
    let what = format!("{}: `{command}`", vm.name);
    wait_until(&what, limit, Duration::from_secs(2), || {
        let (_, out) = vm.exec(command)?;
        Ok(if ok(&out) { Ok(out) } else { Err(out) })
    })
}

/// The guest's clock minus the host's, taking the host's at the middle of the round trip.
fn clock_offset(vm: &mut Vm) -> Result<f64> {
    let now = || SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let before = now();
    let out = vm.ok("date +%s.%N")?;
    let after = now();
    let guest: f64 = out.trim().parse().with_context(|| format!("{}: `date` said {out}", vm.name))?;
    Ok(guest - (before + after) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> Vec<u8> {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0];
        ip.extend(src);
        ip.extend(dst);
        f.extend(ip);
        f.extend([icmp_type, 0, 0, 0, 0, 0, 0, 0]);
        f
    }

    #[test]
    fn echo_requests_are_read_from_ethernet_frames() {
        let f = frame([192, 0, 2, 1], [192, 0, 2, 254], 8);
        assert_eq!(echo_request(&f), Some((UPLINK, UPLINK_GATEWAY)));
        assert_eq!(echo_request(&frame([10, 0, 11, 2], [192, 0, 2, 254], 0)), None, "a reply is not a request");
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(echo_request(&arp), None);
        assert_eq!(echo_request(&f[..30]), None, "a short frame is no match, not a panic");
    }

    /// The example's base is the pair's, pinned alike, so CI builds (and caches) one base for both.
    #[test]
    fn the_example_shares_the_pairs_base_and_its_pins() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let pair = crate::build::config::load(&root.join("image.toml")).unwrap();
        let cluster = crate::build::config::load(&root.join(EXAMPLE)).unwrap();
        let json = |c: &ImageConfig| serde_json::to_string(&(&c.base, &c.system)).unwrap();
        assert_eq!(json(&pair), json(&cluster), "[base] and [system] of image.toml and {EXAMPLE} differ");
        let (b, read) = (&pair.base, |p: &Path| crate::build::pins::LockFile::read(p).unwrap());
        let (a, c) = (read(&pair.lock_file()), read(&cluster.lock_file()));
        assert!(a.get(&b.suite, b.arch.deb()).is_some(), "image.lock pins the base");
        assert_eq!(a.get(&b.suite, b.arch.deb()), c.get(&b.suite, b.arch.deb()), "refresh both locks together");
    }

    #[test]
    fn the_example_has_a_manager_and_two_workers_to_boot() {
        let cfg = crate::build::config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(EXAMPLE)).unwrap();
        let hosts = booted_hosts(&cfg).unwrap();
        assert_eq!(hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["manager", "worker1", "worker2"]);
        assert_eq!(hosts[0].uplink.as_deref(), Some("eth0"), "the manager's first NIC is its uplink");
    }
}
