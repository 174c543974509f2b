//! QEMU's models of the boards, and what the harness changes for each: the machine and its
//! serial ports, the edits to its copy of the board's dtb, the emulation's settings, and the
//! command line that boots a card on it.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::boards::{self, Board, Machine};
use crate::proc;
use crate::vm::boot::{BootFiles, Start};
use crate::vm::qemu::{CONSOLE_LOG, SHELL_SOCK};

/// How long systemd waits for a device (default 90 s). Emulated, the Pi 3's udev takes minutes to
/// announce the SD card's partitions; a real Pi takes a second or two.
pub(super) const DEVICE_TIMEOUT_S: u32 = 400;
/// How long systemd waits for a unit to start (default 90 s). In one CI run the emulated Pi 2
/// was so slow for a while that chronyd took 60 s to load its seccomp filter, and it and dhcpcd
/// timed out; on a Pi they start in a second or two.
pub(super) const START_TIMEOUT_S: u32 = 300;
/// Where the harness shell's port is logged when it is not the board's console.
pub(super) const SHELL_LOG: &str = "shell.log";

/// QEMU's model of a board family, and where its console is.
pub(super) struct Model {
    /// The card's architecture (its QEMU, and how the firmware loads its U-Boot).
    pub(super) arch: Arch,
    pub(super) machine: Machine,
    /// The dtb the firmware loads for this board with `upstream_kernel=1`.
    pub(super) dtb: &'static str,
    /// The board's serial console (one of the card's `console=`s): the PL011 on QEMU's first
    /// serial port, or the mini UART on its second.
    pub(super) console_tty: &'static str,
    /// Where the harness shell is: the mini UART, except on raspi4b (see `dtb_edits`).
    pub(super) shell_tty: &'static str,
    /// The config.txt sections the board's firmware reads (`Board::filters`).
    pub(super) filters: &'static [&'static str],
}

impl Model {
    /// The console is another port than the shell's, so the shell has its port to itself.
    pub(super) fn shell_apart(&self) -> bool {
        self.console_tty != self.shell_tty
    }

    /// The QEMU that models it: Debian 12's, or for raspi4b (QEMU 9 and later) bookworm-backports'
    /// QEMU 10, unpacked into the cache.
    pub(super) fn program(&self, sh: &Shell) -> Result<std::path::PathBuf> {
        match self.machine {
            Machine::Raspi4b => crate::build::tools::qemu_raspi4b(sh, &crate::build::cache::dir()),
            _ => Ok(self.arch.qemu_system().into()),
        }
    }
}

/// The model a card boots on: its host's board when the config names one (a worker's Pi Zero 2
/// W: the Pi 3's SoC, so `raspi3b` with the Zero 2 W's own dtb), else the first board of its
/// architecture that QEMU models.
pub(super) fn model_for(arch: Arch, host_board: Option<&'static Board>) -> Result<Model> {
    let board = host_board.or_else(|| boards::emulated(arch)).with_context(|| format!("no {} board that QEMU models", arch.deb()))?;
    let machine = board.qemu_machine.with_context(|| format!("QEMU models neither the {} nor its SoC", board.name))?;
    // raspi4b's mini UART storms its interrupt (see `dtb_edits`): there the PL011 carries the
    // console and the shell.
    let (console_tty, shell_tty) =
        if machine == Machine::Raspi4b { (boards::PL011, boards::PL011) } else { (board.serial, boards::MINI_UART) };
    Ok(Model { arch, machine, dtb: board.dtb, console_tty, shell_tty, filters: board.filters })
}

/// What the firmware starts, in the form QEMU loads where the firmware would. The firmware loads
/// a 32-bit `kernel=` at 0x8000; QEMU loads a raw `-kernel` at 0x10000, which is no place for
/// Debian's 32-bit U-Boot builds for the Pi (linked to run at 0x8000, not relocatable): the
/// harness gives them a uImage header that says 0x8000, which QEMU obeys. A 64-bit U-Boot is
/// relocatable and runs as it is.
pub(super) fn as_firmware_loads(sh: &Shell, model: &Model, start: Start, dir: &Path) -> Result<Start> {
    match start {
        Start::UBoot { image: raw, env_flash } if model.arch.bits() == 32 => {
            let wrapped = dir.join("u-boot.uimg");
            proc::read(cmd!(sh, "mkimage -A arm -O linux -T kernel -C none -a 0x8000 -e 0x8000 -n u-boot -d {raw} {wrapped}"))
                .context("wrapping the card's U-Boot as a uImage for QEMU")?;
            Ok(Start::UBoot { image: wrapped, env_flash })
        }
        other => Ok(other),
    }
}

/// One change to the harness's copy of a board's dtb (the card's own is untouched; a Pi never
/// sees it), made with fdtput.
#[derive(Debug)]
pub(super) enum DtbEdit {
    Disable(&'static str),
    RemoveNode(&'static str),
    RemoveProperty(&'static str, &'static str),
    SetString(&'static str, &'static str, &'static str),
}

impl DtbEdit {
    pub(super) fn apply(&self, sh: &Shell, dtb: &Path) -> Result<()> {
        let (DtbEdit::Disable(at) | DtbEdit::RemoveNode(at) | DtbEdit::RemoveProperty(at, _) | DtbEdit::SetString(at, _, _)) = *self;
        let node = node_path(sh, dtb, at)?;
        let c = match *self {
            DtbEdit::Disable(_) => cmd!(sh, "fdtput -t s {dtb} {node} status disabled"),
            DtbEdit::RemoveNode(_) => cmd!(sh, "fdtput -r {dtb} {node}"),
            DtbEdit::RemoveProperty(_, p) => cmd!(sh, "fdtput -d {dtb} {node} {p}"),
            DtbEdit::SetString(_, p, v) => cmd!(sh, "fdtput -t s {dtb} {node} {p} {v}"),
        };
        proc::read(c).map(drop)
    }
}

/// A node's path: `at` itself when it is one, else the path of the node labelled `at` (the dtb's
/// `__symbols__`). Labels outlive paths: Linux 7.3 moved the Pi 4's EMMC2 from `/emmc2bus` to
/// `/emmc2-bus@fe000000`; its label is `emmc2` in both.
fn node_path(sh: &Shell, dtb: &Path, at: &str) -> Result<String> {
    if at.starts_with('/') {
        return Ok(at.to_string());
    }
    let path = proc::read(cmd!(sh, "fdtget {dtb} /__symbols__ {at}")).with_context(|| format!("no node labelled {at}"))?;
    Ok(path.trim().to_string())
}

/// What the harness changes in a board's dtb for QEMU's model of it, each for hardware the Pi has
/// and the model lacks or wires otherwise.
///
/// raspi0: no BCM2835 power-management block: Debian's rpi kernel faults reading its ASB
/// registers in `bcm2835_power_probe` and panics before the console. Its watchdog (the same
/// node) is not used by the checks.
///
/// raspi2b: the SD card. QEMU puts it on the SD bus its GPIO block routes to the SDHCI
/// (`mmc@7e300000`) until GPIO 48-53 are switched to the SDHOST, which Linux's pin driver does
/// and trixie's 32-bit U-Boot (2025.01, which runs on the firmware's device tree) does not (a
/// Pi's firmware leaves them switched for U-Boot): it read nothing and stopped after "Loading
/// Environment from FAT". So the SDHOST is disabled and the SDHCI enabled, and U-Boot and Linux
/// both read the card there (Linux with `sdhci_iproc`, which every card's initramfs has for the
/// Pi 4). raspi3b routes it to the SDHOST from the start, and bookworm's U-Boot (2023.01, on its
/// own device tree), the Zero's, switches the pins itself.
///
/// raspi4b (QEMU 10; what it lacks, QEMU itself disables too: PCIe, GENET, the RNG, thermal):
/// - the always-on L2 interrupt controller and the HDMI DDC I2C controllers, which it does not
///   model: the kernel panics probing them;
/// - the SD card: QEMU puts `-drive if=sd` on the SD bus its GPIO block routes to the legacy
///   EMMC (`mmc@7e300000`, the SDHCI that drives a Pi 4's Wi-Fi), not to EMMC2, whose bus is
///   empty. So EMMC2 is disabled and the EMMC loses its Wi-Fi child and that chip's power
///   sequence (a firmware GPIO): the same `sdhci_iproc` driver then finds the card there;
/// - the mini UART: once its interrupt is requested the model keeps it asserted, and the boot
///   spins in `__setup_irq` opening /dev/console. It is disabled, and the PL011 (Bluetooth's on
///   a Pi 4) loses its Bluetooth child to carry the console and the harness shell;
/// - USB: a Pi 4's USB-A ports are on the VL805 behind PCIe, which is not modelled; the DWC2 of
///   its USB-C port (an OTG controller, a peripheral in the dtb) is made a host for the drive.
pub(super) fn dtb_edits(machine: Machine) -> &'static [DtbEdit] {
    use DtbEdit::*;
    match machine {
        Machine::Raspi0 => &[Disable("/soc/watchdog@7e100000")],
        Machine::Raspi2b => &[Disable("sdhost"), SetString("sdhci", "status", "okay")],
        // By label: the nodes' paths change between kernels.
        Machine::Raspi4b => &[
            Disable("aon_intr"),
            Disable("ddc0"),
            Disable("ddc1"),
            Disable("emmc2"),
            RemoveNode("brcmf"),
            RemoveProperty("sdhci", "mmc-pwrseq"),
            Disable("uart1"),
            RemoveNode("bt"),
            SetString("usb", "dr_mode", "host"),
        ],
        Machine::Raspi3b => &[],
    }
}

/// How QEMU runs a board model's CPUs: its extra options, and what the harness adds to the
/// kernel command line for it.
pub(super) struct Emulation {
    pub(super) qemu_args: &'static [&'static str],
    pub(super) append: &'static str,
    /// About how long one boot and its checks take here, two boards at a time (for scheduling).
    pub(super) boot_secs: u32,
}

/// One emulating thread per board everywhere: two boards booting at once then take one host core
/// each, where multi-threaded TCG ran four vCPU threads per board on this 2-core machine, each
/// preempted at random (RCU stalls, an oops in the initramfs, and in CI an armhf boot whose
/// page cache held garbage: cron and dhcpcd "Exec format error", fsck failed).
///
/// - raspi3b: all four cores, round-robin on one thread: rpb booted in 89 s beside a busy
///   neighbour (175-201 s multi-threaded, two boards at a time).
/// - raspi2b: one core (`maxcpus=1`, the harness's only; a Pi never sees it). Round-robin with
///   all four, Debian's LPAE kernel stops for good after "Disabling unused power domains" (twice
///   of two, QEMU busy); with one it reaches the login prompt in ~180 s (232-373 s before). The
///   three cores Linux does not start wait in the boot stub's WFE, which round-robin TCG treats
///   as a yield, not as the busy loop it is multi-threaded.
/// - raspi0 (one core): `-icount`, which also keeps time the way the board does. Linux on the
///   BCM2835 (no ARM generic timer) arms its next tick by reading the system timer's counter and
///   writing counter + delta (as little as 15 µs) to a compare register, and QEMU 7.2's model
///   fires at `compare - now` taken as an unsigned 32-bit number of µs: when the host preempts
///   the emulated CPU between that read and that write, the compare is already past and the tick
///   comes 71 minutes later; the guest froze mid-boot (in CI twice, here once, under load). With
///   `-icount` the emulated clock advances by instructions executed, never between two of them.
///   The Pi 2 and 3 tick from the ARM generic timer, which has no such window.
pub(super) fn emulation(machine: Machine) -> Emulation {
    const ONE_THREAD: &[&str] = &["-accel", "tcg,thread=single"];
    match machine {
        Machine::Raspi0 => Emulation { qemu_args: &["-icount", "shift=0"], append: "", boot_secs: 80 },
        Machine::Raspi2b => Emulation { qemu_args: ONE_THREAD, append: " maxcpus=1", boot_secs: 240 },
        // Unused clocks left on: the model lacks clock gates the kernel would otherwise switch off
        // (it panicked in "Disabling unused clocks").
        Machine::Raspi4b => Emulation { qemu_args: ONE_THREAD, append: " clk_ignore_unused", boot_secs: 180 },
        Machine::Raspi3b => Emulation { qemu_args: ONE_THREAD, append: "", boot_secs: 120 },
    }
}

/// The QEMU command line for one boot of the card on `model`.
pub(super) fn argv(model: &Model, program: &Path, boot: &BootFiles, dtb: &Path, sd: &Path, usb: &Path, dir: &Path) -> Vec<OsString> {
    let emulation = emulation(model.machine);
    let append = format!(
        "{}{} nosoftlockup systemd.default_device_timeout_sec={DEVICE_TIMEOUT_S} systemd.default_timeout_start_sec={START_TIMEOUT_S} systemd.debug_shell={tty} systemd.mask=serial-getty@{tty}.service",
        boot.cmdline,
        emulation.append,
        tty = model.shell_tty
    );
    let shell_log = dir.join(if model.shell_apart() { SHELL_LOG } else { CONSOLE_LOG });
    let shell =
        format!("socket,id=sh,path={},server=on,wait=off,logfile={},logappend=on", dir.join(SHELL_SOCK).display(), shell_log.display());
    let mut a: Vec<String> = vec![
        program.display().to_string(),
        "-M".into(),
        model.machine.name().into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
    ];
    a.extend(emulation.qemu_args.iter().map(|s| s.to_string()));
    a.extend(boot.start.qemu_args());
    a.extend(["-dtb".into(), dtb.display().to_string(), "-append".into(), append]);
    a.extend(["-drive".into(), format!("if=sd,format=raw,file={}", sd.display())]);
    a.extend([
        "-drive".into(),
        format!("if=none,id=usb,format=raw,file={}", usb.display()),
        "-device".into(),
        "usb-storage,drive=usb,removable=on".into(),
    ]);
    a.extend(["-chardev".into(), shell]);
    // QEMU's first serial port is the PL011, its second the mini UART: the shell's port carries
    // the shell (logged), a console apart from it writes to console.log, and a port that is
    // neither goes nowhere (the Pi 3's PL011: Bluetooth's).
    for tty in [boards::PL011, boards::MINI_UART] {
        let port = match tty {
            t if t == model.shell_tty => "chardev:sh".to_string(),
            t if t == model.console_tty => format!("file:{}", dir.join(CONSOLE_LOG).display()),
            _ => "null".into(),
        };
        a.extend(["-serial".into(), port]);
    }
    a.into_iter().map(OsString::from).collect()
}
