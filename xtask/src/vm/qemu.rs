//! Booting a card image in QEMU (`-M virt`, TCG) the way the pair test and `xtask run` need it.
//!
//! - The image is never written: each VM boots a qcow2 overlay backed by the raw .img.
//! - What the card's firmware would start and cmdline.txt are read out of the image's own FAT
//!   partition (mtools with an offset, no mount), so the test runs what the card carries: where a
//!   Pi's firmware starts the card's U-Boot, `virt` starts U-Boot built for `virt`
//!   (`tools::u_boot_virt`) with the card's U-Boot environment in its flash (virt's disk and
//!   addresses in place of the Pi's, `uboot::virt_env_flash`), which runs the card's boot.scr from
//!   the card as the Pi's does.
//! - The serial console (ttyAMA0) goes to console.log, kept for failed runs.
//! - The harness's command channel is a root shell on hvc0, asked for on the kernel command line
//!   (`systemd.debug_shell=hvc0`) that only a direct-kernel boot can pass: a Pi boots with the
//!   card's cmdline.txt, which has no such thing, so the image carries no backdoor. hvc0 exists
//!   before systemd starts because image.toml puts virtio_console in the initramfs (as a late
//!   module, debug-shell.service finds no tty and fails with status=208/STDIN).
//! - Networking is one private link between two QEMU processes (`-netdev dgram` over unix
//!   sockets): no host interface, no user-mode networking, nothing reaches outside.

use std::ffi::OsString;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::build::mac::Mac;
use crate::build::uboot;
use crate::proc;
use crate::vm::boot::{boot_files, BootFiles, Start};
use crate::vm::limits::{Guest, Limits};

/// The emulated NIC's driver, loaded by systemd-modules-load before udev's coldplug. Loaded by
/// the coldplug itself (as a Pi loads its own NIC's driver), the new eth0's event queues behind
/// every other device's, which under emulation is 20-30 s: eth0 appeared after multi-user.target,
/// and every boot in the pair, cluster and soak waited for it. On a Pi the coldplug takes a second.
const EARLY_NIC_DRIVER: &str = "modules-load=virtio_net";

/// The card's command line for `-M virt`: the Pi's consoles swapped for QEMU's PL011, the
/// emulated NIC's driver loaded early, plus `extra`.
pub fn qemu_cmdline(card: &str, extra: &str) -> String {
    let mut v: Vec<&str> = card.split_whitespace().filter(|a| !a.starts_with("console=")).collect();
    v.insert(0, "console=ttyAMA0,115200");
    v.push("panic=5");
    v.push(EARLY_NIC_DRIVER);
    let mut s = v.join(" ");
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

pub struct Spec {
    pub name: String,
    pub image: PathBuf,
    pub usb: Option<PathBuf>,
    /// Start with the drive out of its port (the soak plugs it back over QMP).
    pub usb_unplugged: bool,
    /// Its network cards, in order (the guest's eth0, eth1, … before udev renames them).
    pub nics: Vec<Nic>,
    pub dir: PathBuf,
    pub memory_mib: u32,
    /// Where the guest's real-time clock starts (`-rtc base=`, e.g. "2020-01-01"); None: now.
    pub rtc_base: Option<String>,
    /// Its cores: [`CPUS_BESIDE_OTHERS`] or [`CPUS_ALONE`].
    pub cpus: u32,
}

/// A guest's cores when guests boot together: one host core each (this machine has two; more
/// vCPU threads than cores starved the guests into RCU stalls in the board test).
pub const CPUS_BESIDE_OTHERS: u32 = 1;
/// A guest's cores when it boots while the others idle (a reboot, a power cut, `xtask run`): the
/// two this host has (a Pi 3, 4, 5 or Zero 2 W has four). Its boot's userspace is about a third
/// shorter: udev's coldplug, the critical chain under emulation, runs on both.
pub const CPUS_ALONE: u32 = 2;

/// One network card on a private link: a datagram socket pair (this end, the other end), both
/// unix sockets, so frames go only to whoever binds `remote` (another VM, or the test itself).
pub struct Nic {
    pub mac: Mac,
    pub local: PathBuf,
    pub remote: PathBuf,
}

/// The QEMU argv for a VM; `console` is where the serial console goes (a chardev spec).
pub fn argv(spec: &Spec, boot: &BootFiles, append: &str, overlay: &Path, console: &str) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |s: &str| a.push(s.into());
    for s in ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-nodefaults", "-display", "none", "-no-reboot"] {
        push(s);
    }
    push("-smp");
    push(&spec.cpus.to_string());
    push("-m");
    push(&spec.memory_mib.to_string());
    for arg in boot.start.qemu_args() {
        push(&arg);
    }
    // In the device tree's /chosen/bootargs, as a Pi's firmware puts cmdline.txt there.
    push("-append");
    push(append);
    push("-drive");
    push(&format!("if=none,id=root,format=qcow2,file={}", overlay.display()));
    push("-device");
    push("virtio-blk-pci,drive=root");
    if let Some(usb) = &spec.usb {
        push("-device");
        push("qemu-xhci,id=xhci");
        // A -blockdev, not a -drive: it outlives its device, so the drive can be pulled
        // (`device_del`) and plugged back (`device_add` of [`usb_drive_device`]) over QMP.
        push("-blockdev");
        push(&format!("driver=raw,node-name={USB_NODE},file.driver=file,file.filename={}", usb.display()));
        if !spec.usb_unplugged {
            push("-device");
            push(&usb_drive_device().to_string_lossy());
        }
    }
    for (i, nic) in spec.nics.iter().enumerate() {
        push("-netdev");
        push(&format!(
            "dgram,id=net{i},local.type=unix,local.path={},remote.type=unix,remote.path={}",
            nic.local.display(),
            nic.remote.display()
        ));
        push("-device");
        push(&format!("virtio-net-pci,netdev=net{i},mac={},romfile=", nic.mac));
    }
    if let Some(base) = &spec.rtc_base {
        push("-rtc");
        push(&format!("base={base}"));
    }
    push("-qmp");
    push(&format!("unix:{},server=on,wait=off", spec.dir.join(crate::vm::qmp::QMP_SOCK).display()));
    push("-chardev");
    push(console);
    push("-serial");
    push("chardev:con");
    push("-device");
    push("virtio-serial-pci");
    push("-chardev");
    push(&format!("socket,id=sh,path={},server=on,wait=off", spec.dir.join(SHELL_SOCK).display()));
    push("-device");
    push("virtconsole,chardev=sh");
    a
}

/// The USB drive's block node and device ids on the `-M virt` VMs.
pub const USB_NODE: &str = "usb";
pub const USB_DEVICE: &str = "usbdrive";

/// The USB drive's `-device` (also what QMP's `device_add` plugs back in).
pub fn usb_drive_device() -> OsString {
    format!("usb-storage,bus=xhci.0,drive={USB_NODE},id={USB_DEVICE},removable=on").into()
}

/// What `virt` boots of the card `image`: what a Pi's firmware would start (config.txt read for no
/// board in particular), with U-Boot built for `virt` in place of the card's U-Boot for a Pi, and
/// the card's U-Boot environment in its flash.
pub fn virt_boot_files(sh: &Shell, image: &Path, dir: &Path) -> Result<BootFiles> {
    let mut boot = boot_files(sh, image, dir, &[])?;
    if let Start::UBoot { .. } = boot.start {
        let card_env = crate::vm::boot::fat_of(image)?.read(sh, uboot::ENV_SOURCE, &dir.join(uboot::ENV_SOURCE))?;
        let card_env = String::from_utf8(card_env).with_context(|| format!("{} is not UTF-8", uboot::ENV_SOURCE))?;
        let flash = dir.join("u-boot-env.flash");
        uboot::virt_env_flash(sh, &card_env, &flash)?;
        boot.start = Start::UBoot { image: crate::build::tools::u_boot_virt(sh, &crate::build::cache::dir())?, env_flash: Some(flash) };
    }
    Ok(boot)
}

/// Each spec's boot files (from its card) and qcow2 overlay, then every VM started, in order.
pub fn start_all(sh: &Shell, specs: &[Spec]) -> Result<(Vec<BootFiles>, Vec<Vm>)> {
    let mut boots = Vec::new();
    for spec in specs {
        boots.push(virt_boot_files(sh, &spec.image, &spec.dir.join("boot"))?);
        overlay(sh, &spec.image, &spec.dir.join("overlay.qcow2"))?;
    }
    let mut vms = Vec::new();
    for (s, b) in specs.iter().zip(&boots) {
        vms.push(Vm::start(sh, s, b, &s.dir.join("overlay.qcow2"))?);
    }
    Ok((boots, vms))
}

/// The SD card a `virt` VM boots has the size of the smallest card the images are for (4 GB,
/// `image.max_bytes`'s default), not the image's: the first boot grows the data partition to
/// the card's end as on a Pi, and an update bundle's copy needs that room (at the image's size
/// the partition stayed at 59 MiB, and a 120 MB bundle filled it).
pub const CARD_BYTES: u64 = 4_000_000_000;

pub fn overlay(sh: &Shell, image: &Path, path: &Path) -> Result<()> {
    let _ = fs_err::remove_file(path);
    let image = fs_err::canonicalize(image)?;
    let size = (fs_err::metadata(&image)?.len().max(CARD_BYTES).div_ceil(512) * 512).to_string();
    proc::read(cmd!(sh, "qemu-img create -q -f qcow2 -F raw -b {image} {path} {size}"))?;
    Ok(())
}

/// Kernel command-line additions that give the harness its shell on hvc0 (see module docs), and
/// turn off the soft-lockup detector: it measures wall time, which an emulated CPU on a busy
/// host loses in chunks, so it cries "BUG: soft lockup" where a Pi would not.
pub const HARNESS_APPEND: &str = "systemd.debug_shell=hvc0 systemd.mask=serial-getty@hvc0.service nosoftlockup";

/// What the harness shell prints once it is ready (`$((6*7))` expanded, so the echo of the
/// command itself cannot match).
pub const READY: &str = "@@READY42";

/// Where a VM's serial console is written, in its directory.
pub const CONSOLE_LOG: &str = "console.log";
/// The harness shell's socket, in the VM's directory.
pub const SHELL_SOCK: &str = "shell.sock";
/// Every command the harness ran in the guest, with its output and status, in the VM's directory.
pub const TRANSCRIPT: &str = "transcript.log";
/// How long past a command's limit the host waits for the guest's `timeout` to answer.
const FRAME_GRACE: Duration = Duration::from_secs(30);
/// `timeout`'s status for a command it ended.
const TIMED_OUT: i32 = 124;

/// What the kernel prints for systemd's first messages (PID 1 logs to the kernel log until journald runs).
const SYSTEMD_RUNS: &str = "systemd[1]: ";

/// The kernel's last words after a clean shutdown on a machine it cannot power off.
const HALTED: &str = "reboot: System halted";

/// Console lines that fail a run whatever the test was doing.
const FATAL: &[&str] = &["Kernel panic", "Internal error: Oops", "BUG: ", "end Kernel panic", "Failed to start", "emergency mode"];

pub struct Vm {
    pub name: String,
    pub dir: PathBuf,
    pub console_log: PathBuf,
    handle: Option<duct::Handle>,
    shell: Option<UnixStream>,
    buf: String,
    seq: u64,
    /// Where this boot's part of the console log begins (a reboot appends to it).
    console_from: usize,
    limits: Limits,
}

impl Vm {
    /// Boots a card on `-M virt` as the pair test does (see the module docs).
    pub fn start(sh: &Shell, spec: &Spec, boot: &BootFiles, overlay: &Path) -> Result<Vm> {
        for nic in &spec.nics {
            let _ = fs_err::remove_file(&nic.local);
        }
        let append = qemu_cmdline(&boot.cmdline, HARNESS_APPEND);
        let console = format!("file,id=con,path={},append=on", spec.dir.join(CONSOLE_LOG).display());
        Vm::launch(sh, &spec.name, &spec.dir, &argv(spec, boot, &append, overlay, &console), Guest::Virt)
    }

    /// Starts QEMU with `argv`, which must send the guest's console to `<dir>/console.log` (appended
    /// to, so a reboot continues the same log) and offer the harness shell on `<dir>/shell.sock`.
    pub fn launch(sh: &Shell, name: &str, dir: &Path, argv: &[OsString], guest: Guest) -> Result<Vm> {
        fs_err::create_dir_all(dir)?;
        let _ = fs_err::remove_file(dir.join(SHELL_SOCK));
        fs_err::write(dir.join("qemu.cmdline"), argv.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ") + "\n")?;
        let console_from = read_console(&dir.join(CONSOLE_LOG)).len();
        let handle = proc::spawn(sh.current_dir().as_path(), argv, &dir.join("qemu.log"))?;
        Ok(Vm {
            console_from,
            name: name.to_string(),
            dir: dir.to_path_buf(),
            console_log: dir.join(CONSOLE_LOG),
            handle: Some(handle),
            shell: None,
            buf: String::new(),
            seq: 0,
            limits: guest.limits(),
        })
    }

    pub fn console(&self) -> String {
        read_console(&self.console_log)
    }

    /// Fails if the console shows a panic, an oops or a failed unit.
    pub fn check_console(&self) -> Result<()> {
        self.check_console_text(&self.console())
    }

    /// The root slot this boot's kernel was given (`rauc.slot=` on the command line it printed).
    pub fn console_slot(&self) -> Option<pi2pi_agent::bootslot::Slot> {
        let console = self.this_boot();
        let line = console.lines().find(|l| l.contains("Kernel command line:"))?;
        pi2pi_agent::bootslot::booted(line)
    }

    /// How long this machine may take to boot (its `Limits`).
    pub fn boot_limit(&self) -> Duration {
        self.limits.boot
    }

    /// This boot's part of the console (the log goes on across the boots of one card).
    fn this_boot(&self) -> String {
        self.console().get(self.console_from..).unwrap_or_default().to_string()
    }

    /// Waits, within `limit`, for the guest to end QEMU by itself (a reboot it decided on, which
    /// `-no-reboot` turns into an exit, as a Pi's reset would end its boot); the harness then
    /// powers it on again, as the Pi's firmware would start over.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<()> {
        ensure!(self.drain_until_exit(Instant::now() + limit, None), "{}: the guest did not reboot within {limit:?}", self.name);
        Ok(())
    }

    /// Keeps the shell open and drained until QEMU exits (true) or `deadline` passes (false):
    /// closing it at once can drop the end of a command (a UART takes 16 bytes at a time), and
    /// an unread console stalls the guest. `halt_after`: a clean halt printed in the console
    /// after that offset ends QEMU here (a board QEMU cannot switch off: raspi0 has no
    /// power-management block).
    fn drain_until_exit(&mut self, deadline: Instant, halt_after: Option<usize>) -> bool {
        while Instant::now() < deadline {
            if halt_after.is_some_and(|seen| self.console().get(seen..).is_some_and(|c| c.contains(HALTED))) {
                self.kill();
            }
            if self.exited().is_some() || self.handle.is_none() {
                self.handle = None;
                self.shell = None;
                self.buf.clear();
                return true;
            }
            if self.shell.is_some() && self.pump(Duration::from_millis(250)).is_err() {
                self.shell = None; // the guest closed it on its way down
            }
            self.buf.clear();
            if self.shell.is_none() {
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        false
    }

    fn check_console_text(&self, text: &str) -> Result<()> {
        if let Some(l) = text.lines().find(|l| FATAL.iter().any(|f| l.contains(f))) {
            bail!("{}: unexpected console output: {}", self.name, l.trim());
        }
        Ok(())
    }

    fn exited(&mut self) -> Option<String> {
        match self.handle.as_ref().map(|h| h.try_wait()) {
            Some(Ok(Some(o))) => Some(format!("exited with {}", o.status)),
            Some(Err(e)) => Some(format!("failed: {e}")),
            _ => None,
        }
    }

    /// Waits for the guest's shell, then for systemd to finish booting (within its machine's boot
    /// limit from `started`); returns the time taken.
    pub fn wait_booted(&mut self, started: Instant) -> Result<Duration> {
        let limit = self.limits.boot;
        let _spinner = crate::proc::Spinner::new(&format!("{}: booting", self.name));
        let deadline = started + limit;
        let sock = self.dir.join(SHELL_SOCK);
        while self.shell.is_none() {
            if let Some(why) = self.exited() {
                bail!("{}: QEMU {why} before the guest came up", self.name);
            }
            if Instant::now() > deadline {
                bail!("{}: no shell socket after {limit:?}", self.name);
            }
            if let Ok(s) = UnixStream::connect(&sock) {
                self.shell = Some(s);
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        // The debug shell appears early in boot; until then nothing answers, so keep knocking,
        // but only once systemd runs (the shell is one of its units): on the boards whose console
        // is a PL011 (raspi0, raspi2b), input typed while the kernel and initramfs brought the UART
        // up twice left it deaf for the whole boot (no echo at all), once with the initramfs
        // hanging on its next console write.
        let mut last = Instant::now() - Duration::from_secs(10);
        let mut systemd_runs = false;
        loop {
            if let Some(why) = self.exited() {
                bail!("{}: QEMU {why} while booting", self.name);
            }
            // Only this boot's: a unit that failed in an earlier boot of the card (a new system
            // on trial that went back) is judged where that boot is.
            let console = self.this_boot();
            self.check_console_text(&console)?;
            if Instant::now() > deadline {
                bail!("{}: the harness shell did not answer within {limit:?}", self.name);
            }
            systemd_runs = systemd_runs || console.contains(SYSTEMD_RUNS);
            if systemd_runs && last.elapsed() > Duration::from_secs(3) {
                // `$((6*7))` is expanded by the shell, so the echo of our input cannot match.
                self.send("stty -echo -onlcr 2>/dev/null; PS1=''; PS2=''; export PS1 PS2 SYSTEMD_PAGER=cat TERM=dumb NO_COLOR=1 SYSTEMD_COLORS=0; echo @@READY$((6*7))\n")?;
                last = Instant::now();
            }
            self.pump(Duration::from_millis(500))?;
            if let Some(i) = self.buf.find(READY) {
                self.buf.drain(..i + READY.len());
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, out) = self.exec_within("echo \"@@STATE=$(systemctl is-system-running --wait)\"", left)?;
        let t = started.elapsed();
        let state = system_state(&out);
        if state != "running" {
            let (_, failed) = self.exec("systemctl --failed --no-legend --plain")?;
            // What the failed units said, for the report (the console shows only their names).
            let units: Vec<&str> = failed.lines().filter_map(|l| l.split_whitespace().next()).collect();
            let (_, journal) = self.exec(&format!("journalctl -b --no-pager -o short-monotonic -n 60 -u {}", units.join(" -u ")))?;
            bail!("{}: system is `{state}` after boot; failed units:\n{failed}\ntheir journal:\n{journal}", self.name);
        }
        Ok(t)
    }

    fn send(&mut self, s: &str) -> Result<()> {
        let sh = self.shell.as_mut().context("no shell")?;
        sh.write_all(s.as_bytes()).with_context(|| format!("{}: writing to the guest shell", self.name))
    }

    /// Reads whatever the shell has sent within `wait`.
    fn pump(&mut self, wait: Duration) -> Result<()> {
        let sh = self.shell.as_mut().context("no shell")?;
        sh.set_read_timeout(Some(wait))?;
        let mut b = [0u8; 65536];
        match sh.read(&mut b) {
            Ok(0) => bail!("{}: the guest shell closed", self.name),
            Ok(n) => self.buf.push_str(&String::from_utf8_lossy(&b[..n]).replace('\r', "")),
            // A read with a timeout is never restarted after a signal (signal(7)): EINTR is "no
            // data yet" (the soak, beside the other phases' threads, got one).
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(e).with_context(|| format!("{}: reading the guest shell", self.name)),
        }
        Ok(())
    }

    /// Runs a shell command in the guest under the guest's own `timeout` of its machine's command
    /// limit (so a command that hangs frees the shell for the next one); returns (exit status,
    /// output), framed by markers so that console noise cannot be taken for either. Every
    /// command, its output and status go to the VM's transcript.
    pub fn exec(&mut self, command: &str) -> Result<(i32, String)> {
        self.exec_within(command, self.limits.cmd)
    }

    /// `exec` with a limit of its own (a wait done in the guest, like systemd's boot).
    pub fn exec_within(&mut self, command: &str, limit: Duration) -> Result<(i32, String)> {
        self.seq += 1;
        let n = self.seq;
        let (begin, end) = (format!("@@B{n}@@\n"), format!("@@E{n}:"));
        let secs = limit.as_secs().max(1);
        self.send(&framed(n, command, secs))?;
        let started = Instant::now();
        // The frame still has to come over the serial line after the guest's timeout ends it.
        let deadline = started + limit + FRAME_GRACE;
        loop {
            if let (Some(b), Some(e)) = (self.buf.find(&begin), self.buf.find(&end)) {
                if let Some(nl) = self.buf[e..].find('\n') {
                    let out = self.buf[b + begin.len()..e].to_string();
                    let code = self.buf[e + end.len()..e + nl].trim().parse().unwrap_or(-1);
                    self.buf.drain(..e + nl + 1);
                    self.transcribe(command, &out, &format!("exit {code}"), started);
                    if code == TIMED_OUT {
                        bail!("{}: `{command}` did not finish within {limit:?} (ended by the guest's timeout):\n{out}", self.name);
                    }
                    return Ok((code, out));
                }
            }
            if Instant::now() > deadline {
                self.transcribe(command, "", "no answer", started);
                bail!("{}: `{command}` did not finish within {limit:?}, nor its guest timeout answer", self.name);
            }
            if let Some(why) = self.exited() {
                self.transcribe(command, "", &why, started);
                bail!("{}: QEMU {why} during `{command}`", self.name);
            }
            self.pump(Duration::from_millis(200))?;
        }
    }

    /// Appends one command to `<dir>/transcript.log` (best effort: a transcript that cannot be
    /// written does not fail the test it documents).
    fn transcribe(&self, command: &str, out: &str, ended: &str, started: Instant) {
        let entry = format!("$ {command}\n{out}[{ended} after {:.1}s]\n", started.elapsed().as_secs_f64());
        let _ = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(TRANSCRIPT))
            .and_then(|mut f| f.write_all(entry.as_bytes()));
    }

    /// `exec` that must succeed.
    pub fn ok(&mut self, command: &str) -> Result<String> {
        let (code, out) = self.exec(command)?;
        if code != 0 {
            bail!("{}: `{command}` exited {code}:\n{}", self.name, out.trim_end());
        }
        Ok(out)
    }

    /// Asks the guest to power off (or reboot) and waits, within its machine's shutdown limit,
    /// for QEMU to exit (`-no-reboot`: a reboot ends QEMU too, and the test boots the card again).
    pub fn stop(&mut self, how: Power) -> Result<()> {
        let (seen, limit) = (self.console().len(), self.limits.shutdown);
        let _ = self.send(&format!("systemctl {}\n", how.verb()));
        // A board that cannot switch off halts instead, after the same clean shutdown.
        if self.drain_until_exit(Instant::now() + limit, (how == Power::Off).then_some(seen)) {
            return Ok(());
        }
        self.kill();
        self.shell = None;
        bail!("{}: did not {} within {limit:?}", self.name, how.verb())
    }

    pub fn kill(&mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.kill();
        }
    }
}

/// The line the harness types for command `n`: begin marker, the command under `timeout`, end
/// marker with its status. The command goes in the environment, not in an argument: a `pgrep -f`
/// or `pkill -f` pattern in it would otherwise match (and kill) the very shell that runs it.
fn framed(n: u64, command: &str, secs: u64) -> String {
    format!(
        "echo \"@@\"\"B{n}@@\"; PI2PI_CMD={} timeout -k 5 {secs} sh -c 'eval \"$PI2PI_CMD\"' </dev/null 2>&1; echo \"@@\"\"E{n}:$?\"\n",
        shell_quote(command)
    )
}

/// `s` as one word for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// How a guest is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Off,
    Reboot,
}

impl Power {
    fn verb(self) -> &'static str {
        match self {
            Power::Off => "poweroff",
            Power::Reboot => "reboot",
        }
    }
}

/// Everything a guest printed so far. Lossy: a UART's first byte can be line noise (the Pi 3's
/// mini UART began with 0xb2), and a strict UTF-8 read then returned nothing at all, which every
/// console check passed.
fn read_console(path: &Path) -> String {
    fs_err::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// The last `n` lines of a console log, indented, for a failure report (CI keeps no run directories).
pub fn console_tail(path: &Path, n: usize) -> String {
    let text = read_console(path);
    let lines: Vec<&str> = text.lines().collect();
    let mut s = format!("  last {} lines of {}:\n", n.min(lines.len()), path.display());
    for l in &lines[lines.len().saturating_sub(n)..] {
        s += &format!("  | {l}\n");
    }
    s
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// systemd's state word from the output of `echo "@@STATE=$(systemctl is-system-running)"`. On a
/// board whose shell shares the console, kernel messages can come before, after or between the
/// lines of the answer (seen: "Bluetooth: SCO socket layer initialized" as the last line), so the
/// answer is found by its marker and cut at the end of the word.
fn system_state(out: &str) -> String {
    let Some(i) = out.rfind("@@STATE=") else { return String::new() };
    out[i + "@@STATE=".len()..].chars().take_while(|c| c.is_ascii_alphabetic()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_with_line_noise_is_still_read() {
        let p = std::env::temp_dir().join(format!("pi2pi-console-{}.log", std::process::id()));
        fs_err::write(&p, b"\xb2[    0.000000] Booting Linux\nKernel panic - not syncing\n").unwrap();
        let text = read_console(&p);
        let _ = fs_err::remove_file(&p);
        assert!(text.lines().any(|l| l.contains("Kernel panic")), "{text:?}");
    }

    #[test]
    fn cmdline_swaps_consoles_and_adds_the_harness_shell() {
        let c = qemu_cmdline("console=tty0 console=ttyS1,115200 root=PARTUUID=ab-02 rootwait", HARNESS_APPEND);
        assert_eq!(c, format!("console=ttyAMA0,115200 root=PARTUUID=ab-02 rootwait panic=5 modules-load=virtio_net {HARNESS_APPEND}"));
    }

    #[test]
    fn the_system_state_is_found_among_kernel_messages() {
        let out = "[  160.1] usb 1-1: new device\n@@STATE=running\n[  164.275808] Bluetooth: SCO socket layer initialized\n";
        assert_eq!(system_state(out), "running");
        assert_eq!(system_state("@@STATE=degraded[  9.1] x\n"), "degraded");
        assert_eq!(system_state("@@STATE=$(systemctl is-system-running --wait)\n@@STATE=starting\n"), "starting");
        assert_eq!(system_state("nothing"), "");
    }

    #[test]
    fn a_framed_command_runs_as_written_and_is_not_in_any_command_line() {
        let command = r#"echo "it's $((6*7))"; pgrep -f 'unique-[p]attern-9471' >/dev/null; echo "found $?"; exit 3 # unique-pattern-9471"#;
        // Typed into a shell, as the harness does on the guest's console.
        let sh = Shell::new().unwrap();
        let out = cmd!(sh, "sh").stdin(framed(7, command, 10)).read().unwrap();
        assert_eq!(out, "@@B7@@\nit's 42\nfound 1\n@@E7:3");
    }

    #[test]
    fn a_command_reaches_the_guest_shell_as_written() {
        let command = r#"cd '/media/pi/x y' && echo "it's $((6*7))" | tr -d '\n'; printf '%s' "$HOME" >/dev/null"#;
        let (sh, line) = (Shell::new().unwrap(), format!("printf '%s' {}", shell_quote(command)));
        assert_eq!(cmd!(sh, "sh -c {line}").read().unwrap(), command);
    }
}
