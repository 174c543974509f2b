//! Which Raspberry Pi boards a card boots on, and what the firmware needs on the FAT partition
//! for each: the board's upstream device tree (the name the firmware loads with
//! `upstream_kernel=1`) and the firmware's own files for that board's generation. The image
//! stage refuses a card that lacks any of them; the board test boots the boards QEMU models.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::build::arch::Arch;

/// QEMU's models of Raspberry Pis (`-M`) that the board test boots cards on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Raspi0,
    Raspi2b,
    Raspi3b,
    /// QEMU 9 and later only: bookworm-backports' QEMU 10 (`tools::qemu_raspi4b`).
    Raspi4b,
}

impl Machine {
    /// QEMU's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Machine::Raspi0 => "raspi0",
            Machine::Raspi2b => "raspi2b",
            Machine::Raspi3b => "raspi3b",
            Machine::Raspi4b => "raspi4b",
        }
    }
}

impl std::fmt::Display for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One board a card supports.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    /// Our name for it (and Raspberry Pi Imager's device tag family).
    pub name: &'static str,
    pub dtb: &'static str,
    /// Other device trees the firmware may load for revisions of it (the Pi 5's D0).
    pub other_dtbs: &'static [&'static str],
    /// The oldest kernel that drives it: a card whose kernel is older is not for it (bookworm's
    /// and trixie's own kernels have no RP1, so their cards are not for the Pi 5).
    pub min_kernel: KernelVersion,
    /// Files of the VideoCore firmware this board's boot ROM and GPU need.
    pub firmware: &'static [&'static str],
    /// The serial port on its GPIO header (pins 8/10) as the upstream device tree names it: the
    /// PL011 (ttyAMA0), or the mini UART (ttyS1) on boards whose PL011 drives Bluetooth.
    pub serial: &'static str,
    /// QEMU's model of it or of its SoC and memory map, if QEMU has one (booted with the board's
    /// own dtb; `raspi4b` is QEMU 10's, the others Debian 12's QEMU 7.2's).
    pub qemu_machine: Option<Machine>,
    /// Raspberry Pi Imager's family for it (its device tag is `<family>-<bits>bit`): the Zero
    /// is a `pi1`, the Zero 2 W a `pi3`, the 400 and CM4 `pi4`.
    pub imager_family: &'static str,
    /// The kernel drivers it needs to boot and do a pi2pi job (`manifest.rs` checks every card).
    pub hw: Hardware,
    /// config.txt's conditional sections that apply to it (`[pi3]` …; `[all]` applies to all).
    pub filters: &'static [&'static str],
    /// What its firmware starts.
    pub start: Start,
}

/// What a board's firmware starts: the card's U-Boot built for it (which boots the kernel and
/// initramfs `boot.scr` names, see `uboot.rs`), or the kernel and initramfs themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `/usr/lib/u-boot/<config>/u-boot.bin` of the base's bootloader package.
    UBoot(&'static str),
    /// The firmware loads the kernel and initramfs: the Pi 5, whose SD card Debian's U-Boot
    /// 2025.01 is not known to read dependably (and which no QEMU models to prove it).
    Kernel,
}

/// In a template's context (a host's `board`), a board is its name.
impl serde::Serialize for Board {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name)
    }
}

/// Kernel modules by name (as `modprobe` and `modules.builtin` name them, `_` for `-`), each
/// present in the card as a module or built into its kernel.
#[derive(Debug, Clone, Copy)]
pub struct Hardware {
    /// The SD card's controller and what the root filesystem needs, also in the initramfs.
    pub root: &'static [&'static str],
    /// The USB host controller and USB storage: the PI2PI drive.
    pub usb_host: &'static [&'static str],
    /// Its Ethernet port's driver and PHY (empty: the board has no port; a pair or a manager on it
    /// needs a USB adapter, which is the user's to add).
    pub ethernet: &'static [&'static str],
}

/// The SD card on the BCM2835's SDHOST (Pi 1, Zero, 2, 3, Zero 2 W; the Pi 3's other controller
/// drives its Wi-Fi).
const ROOT_SDHOST: &[&str] = &["mmc_block", "bcm2835", "ext4"];
/// The Pi 4 family's SD card on EMMC2, an iProc SDHCI.
const ROOT_EMMC2: &[&str] = &["mmc_block", "sdhci_iproc", "ext4"];
/// DWC2 OTG controller as a host (every Pi before the 4).
const USB_DWC2: &[&str] = &["dwc2", "usb_storage", "sd_mod"];
/// The Pi 4's VL805 xHCI behind its PCIe bridge (whose firmware the reset driver loads).
const USB_VL805: &[&str] = &["pcie_brcmstb", "reset_raspberrypi", "xhci_pci", "usb_storage", "sd_mod"];
/// LAN9514 (Pi 1 B+, 2 B, 3 B): USB Ethernet with SMSC's PHY.
const ETH_SMSC95XX: &[&str] = &["smsc95xx", "smsc"];
/// LAN7515 (Pi 3 B+): USB Gigabit Ethernet with Microchip's PHY.
const ETH_LAN78XX: &[&str] = &["lan78xx", "microchip"];
/// The Pi 4 family's GENET MAC, its UniMAC MDIO bus and Broadcom's BCM54213PE PHY.
const ETH_GENET: &[&str] = &["genet", "mdio_bcm_unimac", "broadcom"];
/// The Pi 5's SD card on the BCM2712's SDHCI.
const ROOT_BCM2712: &[&str] = &["mmc_block", "sdhci_brcmstb", "ext4"];
/// The Pi 5's USB ports: DWC3 xHCI controllers in its RP1 I/O chip, behind PCIe (Linux 6.17+).
const USB_RP1: &[&str] = &["pcie_brcmstb", "rp1_pci", "clk_rp1", "pinctrl_rp1", "dwc3", "xhci_plat_hcd", "usb_storage", "sd_mod"];
/// The Pi 5's Ethernet: the RP1's Cadence GEM and the same Broadcom PHY as the Pi 4's.
const ETH_RP1: &[&str] = &["macb", "broadcom"];
/// A worker's link: the DWC2 as the USB device controller and the Ethernet gadget.
pub const GADGET: &[&str] = &["dwc2", "g_ether"];

const fn hw(root: &'static [&'static str], usb_host: &'static [&'static str], ethernet: &'static [&'static str]) -> Hardware {
    Hardware { root, usb_host, ethernet }
}
const WITH_LAN9514: Hardware = hw(ROOT_SDHOST, USB_DWC2, ETH_SMSC95XX);
const WITH_LAN7515: Hardware = hw(ROOT_SDHOST, USB_DWC2, ETH_LAN78XX);
const NO_ETHERNET: Hardware = hw(ROOT_SDHOST, USB_DWC2, &[]);
const BCM2711: Hardware = hw(ROOT_EMMC2, USB_VL805, ETH_GENET);
const BCM2712: Hardware = hw(ROOT_BCM2712, USB_RP1, ETH_RP1);

const VC4: &[&str] = &["bootcode.bin", "start.elf", "fixup.dat"];
// The Pi 4 family's boot ROM reads its EEPROM, not bootcode.bin.
const VC6: &[&str] = &["start4.elf", "fixup4.dat"];
// The Pi 5's firmware is all in its EEPROM: it needs config.txt, the kernel, initramfs and dtb.
const EEPROM_ONLY: &[&str] = &[];

/// Device trees the firmware may look for under another name, with the file each is a copy of.
/// A Pi 5 with D0 silicon is `bcm2712-d-rpi-5-b.dtb` in Linux and `bcm2712d0-rpi-5-b.dtb` in
/// Raspberry Pi's firmware, and which one it loads with `upstream_kernel=1` is not settled
/// (raspberrypi/firmware#2018): the card has both, the same bytes.
pub const DTB_ALIASES: &[(&str, &str)] = &[("bcm2712d0-rpi-5-b.dtb", "bcm2712-d-rpi-5-b.dtb")];

/// Adds the copies `DTB_ALIASES` names to a boot partition's files, where the file they copy is.
pub fn add_dtb_aliases(files: &mut BTreeMap<String, Vec<u8>>) {
    for (alias, of) in DTB_ALIASES {
        if let Some(bytes) = files.get(*of).cloned() {
            files.entry(alias.to_string()).or_insert(bytes);
        }
    }
}

pub const PL011: &str = "ttyAMA0";
pub const MINI_UART: &str = "ttyS1";

#[allow(clippy::too_many_arguments)] // one per column of the tables below, in their order
const fn board(
    name: &'static str,
    dtb: &'static str,
    firmware: &'static [&'static str],
    serial: &'static str,
    qemu_machine: Option<Machine>,
    imager_family: &'static str,
    hw: Hardware,
    filters: &'static [&'static str],
    start: Start,
) -> Board {
    Board { name, dtb, other_dtbs: &[], min_kernel: (0, 0), firmware, serial, qemu_machine, imager_family, hw, filters, start }
}

/// Debian's U-Boot for every 64-bit Pi from the 3 on (one build: it finds the board in the
/// firmware's device tree).
const U_BOOT_ARM64: Start = Start::UBoot("rpi_arm64");
/// Debian's 32-bit U-Boot builds: the Pi 2's, the Pi 3's, and the BCM2835's (Pi 1 and Zero).
const U_BOOT_PI2: Start = Start::UBoot("rpi_2");
const U_BOOT_PI3_32: Start = Start::UBoot("rpi_3_32b");
const U_BOOT_BCM2835: Start = Start::UBoot("rpi");

/// Boards a 64-bit card (Debian's arm64 kernel and raspi-firmware) boots. The Pi 5 needs the
/// backports kernel (its RP1 I/O chip, which has its Ethernet and USB, is in Linux from 6.17;
/// trixie's 6.12 would boot it with no network and no drive). No 500 or CM5: Linux 7.3 has no dtb
/// for them.
const ARM64: &[Board] = &[
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, MINI_UART, Some(Machine::Raspi3b), "pi3", WITH_LAN9514, &["pi3"], U_BOOT_ARM64),
    board("pi3-b-plus", "bcm2837-rpi-3-b-plus.dtb", VC4, MINI_UART, None, "pi3", WITH_LAN7515, &["pi3", "pi3+"], U_BOOT_ARM64),
    board("pi3-a-plus", "bcm2837-rpi-3-a-plus.dtb", VC4, MINI_UART, None, "pi3", NO_ETHERNET, &["pi3", "pi3+"], U_BOOT_ARM64),
    board("cm3", "bcm2837-rpi-cm3-io3.dtb", VC4, PL011, None, "pi3", NO_ETHERNET, &["pi3", "cm3"], U_BOOT_ARM64),
    // The Zero 2 W's RP3A0 is the Pi 3's BCM2837 with its RAM on top: raspi3b runs its dtb.
    board("pi-zero-2-w", "bcm2837-rpi-zero-2-w.dtb", VC4, MINI_UART, Some(Machine::Raspi3b), "pi3", NO_ETHERNET, &["pi02"], U_BOOT_ARM64),
    board("pi4-b", "bcm2711-rpi-4-b.dtb", VC6, MINI_UART, Some(Machine::Raspi4b), "pi4", BCM2711, &["pi4"], U_BOOT_ARM64),
    board("pi-400", "bcm2711-rpi-400.dtb", VC6, MINI_UART, None, "pi4", BCM2711, &["pi4", "pi400"], U_BOOT_ARM64),
    board("cm4", "bcm2711-rpi-cm4-io.dtb", VC6, MINI_UART, None, "pi4", BCM2711, &["pi4", "cm4"], U_BOOT_ARM64),
    // Its debug UART (the 3-pin connector), the SoC's PL011 that the dtb's alias numbers 10.
    Board {
        other_dtbs: &["bcm2712-d-rpi-5-b.dtb", "bcm2712d0-rpi-5-b.dtb"],
        min_kernel: (6, 17),
        ..board("pi5-b", "bcm2712-rpi-5-b.dtb", EEPROM_ONLY, "ttyAMA10", None, "pi5", BCM2712, &["pi5"], Start::Kernel)
    },
];

/// Boards a 32-bit armhf card boots: Debian's armmp-lpae kernel needs a Cortex-A7 or later
/// (Pi 2 and newer); the Pi 1 and Zero are ARMv6. Not the Pi 4: that kernel (6.12) has neither
/// its GENET Ethernet nor the PCIe bridge its USB ports are behind, so it would boot with no
/// network and no drive (the hardware manifest found this); a Pi 4 takes the arm64 card.
const ARMHF: &[Board] = &[
    board("pi2-b", "bcm2836-rpi-2-b.dtb", VC4, PL011, Some(Machine::Raspi2b), "pi2", WITH_LAN9514, &["pi2"], U_BOOT_PI2),
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, MINI_UART, None, "pi3", WITH_LAN9514, &["pi3"], U_BOOT_PI3_32),
];

/// Boards an ARMv6 armel card boots: Debian's `linux-image-rpi` is built for the BCM2835 (Pi 1,
/// Zero, Zero W; its dtbs are the upstream bcm2835 ones).
const ARMEL: &[Board] = &[
    board("pi-zero", "bcm2835-rpi-zero.dtb", VC4, PL011, Some(Machine::Raspi0), "pi1", NO_ETHERNET, &["pi0"], U_BOOT_BCM2835),
    board("pi-zero-w", "bcm2835-rpi-zero-w.dtb", VC4, MINI_UART, None, "pi1", NO_ETHERNET, &["pi0", "pi0w"], U_BOOT_BCM2835),
    board("pi1-b-plus", "bcm2835-rpi-b-plus.dtb", VC4, PL011, None, "pi1", WITH_LAN9514, &["pi1"], U_BOOT_BCM2835),
    board("pi1-a-plus", "bcm2835-rpi-a-plus.dtb", VC4, PL011, None, "pi1", NO_ETHERNET, &["pi1"], U_BOOT_BCM2835),
];

/// Boards whose USB port works as a device (an OTG port that a host's cable makes a gadget): the
/// Zeros, which is what a cluster's workers are.
const USB_GADGET: &[&str] = &["pi-zero", "pi-zero-w", "pi-zero-2-w"];

impl Board {
    pub fn usb_gadget(&self) -> bool {
        USB_GADGET.contains(&self.name)
    }
}

/// The architectures whose cards boot the board `name` (empty: no such board).
pub fn arches_of(name: &str) -> Vec<Arch> {
    Arch::ALL.into_iter().filter(|a| for_arch(*a).iter().any(|b| b.name == name)).collect()
}

/// A kernel's version: major, minor.
pub type KernelVersion = (u32, u32);

/// The version in a kernel's file or package version: `vmlinuz-7.3.4+deb13-arm64`,
/// `7.3.4-1~bpo13+1` → (7, 3).
pub fn kernel_version(s: &str) -> Option<KernelVersion> {
    let v = s.strip_prefix("vmlinuz-").unwrap_or(s);
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The boards a card of `arch` with a kernel of version `kernel` is for.
pub fn for_card(arch: Arch, kernel: KernelVersion) -> impl Iterator<Item = &'static Board> {
    for_arch(arch).iter().filter(move |b| b.min_kernel <= kernel)
}

pub fn for_arch(arch: Arch) -> &'static [Board] {
    match arch {
        Arch::Arm64 => ARM64,
        Arch::Armhf => ARMHF,
        Arch::Armel => ARMEL,
    }
}

/// The board the board test boots a card of `arch` as (the first one QEMU models).
pub fn emulated(arch: Arch) -> Option<&'static Board> {
    for_arch(arch).iter().find(|b| b.qemu_machine.is_some())
}

/// The kernel's consoles for a card of `arch`, as `console=` values in command-line order: the
/// screen, the GPIO serial port of every board the card is for, and last the first board's
/// (Linux makes the last one that exists /dev/console, where systemd writes its status; a port a
/// board lacks, or one its Bluetooth holds, is skipped there). Debian's raspi-firmware writes
/// both ports for the same reason when left to guess.
pub fn consoles(arch: Arch) -> Vec<String> {
    let boards = for_arch(arch);
    let mut serial: Vec<&str> = Vec::new();
    for b in boards.iter().skip(1).chain(boards.first()) {
        serial.retain(|s| *s != b.serial);
        serial.push(b.serial);
    }
    std::iter::once("tty0".to_string()).chain(serial.into_iter().map(|s| format!("{s},115200"))).collect()
}

/// What the firmware loads for a board: `kernel=` and `initramfs` as config.txt leaves them for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub kernel: String,
    pub initramfs: Option<String>,
}

/// What the firmware of a board that matches `filters` loads, read from config.txt as the
/// firmware reads it: `kernel=<file>` and `initramfs <file> [followkernel]`, the last line of each
/// that applies wins; a `[<filter>]` section applies when the board matches it, `[all]` ends
/// sections, `[none]` applies to none. Other conditions (EDID, GPIO, serial numbers) are refused:
/// the cards have none, and what they would choose depends on more than the board.
pub fn firmware_choice(config: &str, filters: &[&str]) -> Result<Choice> {
    let (mut kernel, mut initramfs, mut applies) = (None, None, true);
    for line in config.lines().map(str::trim) {
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            applies = match section {
                "all" => true,
                "none" => false,
                f if f.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+') => filters.contains(&f),
                _ => bail!("config.txt has a conditional section `{line}` that depends on more than the board"),
            };
        } else if !applies {
        } else if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initramfs = rest.split_whitespace().next().map(str::to_string);
        }
    }
    Ok(Choice { kernel: kernel.context("config.txt names no kernel= (the firmware would look for its own default name)")?, initramfs })
}

/// Whether the firmware of any board of the card starts the kernel itself (so the kernel and
/// initramfs must be on the boot partition, not only in the root slots).
pub fn starts_a_kernel(arch: Arch, kernel_version: KernelVersion) -> bool {
    for_card(arch, kernel_version).any(|b| b.start == Start::Kernel)
}

/// The file a U-Boot build is on the boot partition as.
pub fn u_boot_file(config: &str) -> String {
    format!("u-boot-{config}.bin")
}

/// config.txt's lines that choose what each board of the card starts (`Start`): the first
/// board's choice for all, and a section for each board that starts something else, under its
/// first filter. `check_boot_partition` proves the result for every board.
pub fn firmware_lines(arch: Arch, kernel_version: KernelVersion, kernel: &str, initrd: &str) -> String {
    let lines = |start: Start| match start {
        Start::UBoot(config) => format!("kernel={}\n", u_boot_file(config)),
        Start::Kernel => format!("kernel={kernel}\ninitramfs {initrd} followkernel\n"),
    };
    let mut boards = for_card(arch, kernel_version);
    let Some(first) = boards.next() else { return String::new() };
    let mut out = lines(first.start);
    let mut sections: Vec<&str> = Vec::new();
    for b in boards.filter(|b| b.start != first.start) {
        if !sections.contains(&b.filters[0]) {
            sections.push(b.filters[0]);
            out += &format!("[{}]\n{}", b.filters[0], lines(b.start));
        }
    }
    if !sections.is_empty() {
        out += "[all]\n";
    }
    out
}

/// Every file each supported board needs is on the boot partition (`files`: its contents by
/// name): its dtb and firmware files, and what config.txt makes its firmware start, which is
/// what the board's `Start` says.
pub fn check_boot_partition(arch: Arch, kernel: KernelVersion, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let mut missing = Vec::new();
    let config = files.get("config.txt").map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
    for b in for_card(arch, kernel) {
        for f in std::iter::once(&b.dtb).chain(b.other_dtbs).chain(b.firmware) {
            if !files.contains_key(*f) {
                missing.push(format!("{} needs {f}", b.name));
            }
        }
        match firmware_choice(&config, b.filters) {
            Ok(choice) => missing.extend(start_problems(arch, b, &choice, files)),
            Err(e) => missing.push(format!("{}: {e}", b.name)),
        }
    }
    if !config.lines().any(|l| l.trim() == "upstream_kernel=1") {
        missing.push("config.txt needs upstream_kernel=1 (the dtb names above are the upstream ones)".into());
    }
    // With the GPU's least memory the firmware loads its cut-down build instead of start.elf.
    if config.lines().any(|l| l.trim() == "gpu_mem=16") {
        for f in ["start_cd.elf", "fixup_cd.dat"] {
            if !files.contains_key(f) {
                missing.push(format!("config.txt's gpu_mem=16 needs {f}"));
            }
        }
    }
    if arch == Arch::Arm64 && !config.lines().any(|l| l.trim() == "arm_64bit=1") {
        missing.push("config.txt needs arm_64bit=1 for a 64-bit kernel".into());
    }
    if !missing.is_empty() {
        bail!("the boot partition cannot boot every board this card is for:\n  {}", missing.join("\n  "));
    }
    Ok(())
}

/// What is wrong with what config.txt makes board `b`'s firmware start (it loads what config.txt
/// names and nothing else): not the board's U-Boot, or U-Boot without its boot script; or a
/// kernel that is missing, for arm64 not a 64-bit kernel image (plain or gzip'd, the two forms
/// the firmware takes), or without its initramfs.
fn start_problems(arch: Arch, b: &Board, choice: &Choice, files: &BTreeMap<String, Vec<u8>>) -> Vec<String> {
    let mut problems = Vec::new();
    let k = &choice.kernel;
    match b.start {
        Start::UBoot(config) => {
            let want = u_boot_file(config);
            if *k != want {
                problems.push(format!("{}: config.txt starts {k}, not its U-Boot {want}", b.name));
            } else if !files.contains_key(k) {
                problems.push(format!("{}: config.txt's kernel={k} is not on the partition", b.name));
            }
            // U-Boot loads the initramfs boot.scr names; one from config.txt would be loaded for nothing.
            if let Some(i) = &choice.initramfs {
                problems.push(format!("{}: config.txt's initramfs {i} is for a kernel, and it starts U-Boot", b.name));
            }
            for f in [crate::build::uboot::SCRIPT, crate::build::uboot::ENV] {
                if !files.contains_key(f) {
                    problems.push(format!("{}: U-Boot needs {f}", b.name));
                }
            }
        }
        Start::Kernel => {
            match files.get(k) {
                None => problems.push(format!("{}: config.txt's kernel={k} is not on the partition", b.name)),
                Some(image) if arch == Arch::Arm64 && !is_arm64_image(image) => {
                    problems.push(format!("{}: config.txt's kernel={k} is not an arm64 kernel image (plain or gzip)", b.name))
                }
                Some(_) => {}
            }
            match &choice.initramfs {
                None => problems.push(format!("{}: config.txt names no initramfs", b.name)),
                Some(i) if !files.contains_key(i) => {
                    problems.push(format!("{}: config.txt's initramfs {i} is not on the partition", b.name))
                }
                Some(_) => {}
            }
        }
    }
    problems
}

/// An arm64 Linux `Image` (its header's magic "ARM\x64" at 0x38), or gzip (which the firmware
/// inflates; the image inside is the kernel's to check).
fn is_arm64_image(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b]) || b.get(0x38..0x3c) == Some(b"ARM\x64")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(arch: Arch) -> BTreeMap<String, Vec<u8>> {
        let mut m: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for b in for_arch(arch) {
            for f in std::iter::once(&b.dtb).chain(b.other_dtbs).chain(b.firmware) {
                m.insert(f.to_string(), vec![]);
            }
        }
        m.insert("config.txt".into(), config(arch).into_bytes());
        m.insert("vmlinuz-7".into(), vec![0x1f, 0x8b, 8, 0]);
        m.insert("initrd.img-7".into(), vec![]);
        for b in for_arch(arch) {
            if let Start::UBoot(c) = b.start {
                m.insert(u_boot_file(c), vec![]);
            }
        }
        m.insert(crate::build::uboot::SCRIPT.into(), vec![]);
        m.insert(crate::build::uboot::ENV.into(), vec![]);
        m
    }

    fn config(arch: Arch) -> String {
        format!("arm_64bit=1\nupstream_kernel=1\n{}", firmware_lines(arch, NEW, "vmlinuz-7", "initrd.img-7"))
    }

    /// What each board starts, as its firmware reads config.txt: U-Boot, the build for the board
    /// (one section for the boards whose build is not the first board's), and on the Pi 5 the
    /// kernel and initramfs themselves.
    #[test]
    fn config_txt_starts_each_boards_u_boot_and_the_pi5s_kernel() {
        assert_eq!(
            config(Arch::Arm64).lines().skip(2).collect::<Vec<_>>(),
            ["kernel=u-boot-rpi_arm64.bin", "[pi5]", "kernel=vmlinuz-7", "initramfs initrd.img-7 followkernel", "[all]"]
        );
        assert_eq!(
            config(Arch::Armhf).lines().skip(2).collect::<Vec<_>>(),
            ["kernel=u-boot-rpi_2.bin", "[pi3]", "kernel=u-boot-rpi_3_32b.bin", "[all]"]
        );
        assert_eq!(config(Arch::Armel).lines().skip(2).collect::<Vec<_>>(), ["kernel=u-boot-rpi.bin"]);
        let choice = |arch, board: &str| {
            let b = for_arch(arch).iter().find(|b| b.name == board).unwrap();
            firmware_choice(&config(arch), b.filters).unwrap()
        };
        assert_eq!(choice(Arch::Arm64, "pi-zero-2-w").kernel, "u-boot-rpi_arm64.bin");
        assert_eq!(choice(Arch::Arm64, "pi5-b"), Choice { kernel: "vmlinuz-7".into(), initramfs: Some("initrd.img-7".into()) });
        assert_eq!(choice(Arch::Armhf, "pi3-b").kernel, "u-boot-rpi_3_32b.bin");
        assert!(firmware_choice("[EDID=VSC-TD2220]\nkernel=a\n", &[]).is_err());
        assert!(firmware_choice("[pi4]\nkernel=a\n", &["pi3"]).is_err(), "no kernel= for a Pi 3");
        for arch in Arch::ALL {
            assert!(check_boot_partition(arch, NEW, &partition(arch)).is_ok(), "{arch:?}");
        }
        let mut p = partition(Arch::Armhf);
        p.insert("config.txt".into(), b"upstream_kernel=1\nkernel=u-boot-rpi_2.bin\n".to_vec());
        let e = check_boot_partition(Arch::Armhf, NEW, &p).unwrap_err().to_string();
        assert!(e.contains("pi3-b: config.txt starts u-boot-rpi_2.bin, not its U-Boot u-boot-rpi_3_32b.bin"), "{e}");
        p = partition(Arch::Armel);
        p.insert("config.txt".into(), (config(Arch::Armel) + "initramfs initrd.img-7\n").into_bytes());
        let e = check_boot_partition(Arch::Armel, NEW, &p).unwrap_err().to_string();
        assert!(e.contains("pi-zero: config.txt's initramfs initrd.img-7 is for a kernel, and it starts U-Boot"), "{e}");
        p = partition(Arch::Armel);
        p.remove(crate::build::uboot::SCRIPT);
        assert!(check_boot_partition(Arch::Armel, NEW, &p).unwrap_err().to_string().contains("pi-zero: U-Boot needs boot.scr"));
    }

    /// A kernel with every board's drivers.
    const NEW: KernelVersion = (7, 3);

    /// A card with a kernel too old for the Pi 5 is not for it: no Pi 5 file is asked of it.
    #[test]
    fn a_kernel_too_old_for_a_board_leaves_it_out() {
        assert_eq!(kernel_version("vmlinuz-7.3.4+deb13-arm64"), Some((7, 3)));
        assert_eq!(kernel_version("6.12.57-1"), Some((6, 12)));
        assert!(for_card(Arch::Arm64, (6, 12)).all(|b| b.name != "pi5-b"));
        assert!(for_card(Arch::Arm64, (6, 17)).any(|b| b.name == "pi5-b"));
        let mut p = partition(Arch::Arm64);
        p.remove("bcm2712-rpi-5-b.dtb");
        assert!(check_boot_partition(Arch::Arm64, (6, 12), &p).is_ok());
        assert!(check_boot_partition(Arch::Arm64, NEW, &p).is_err());
    }

    /// What the Pi 5's firmware loads is checked as it will load it: the files config.txt names
    /// are there, the kernel is one a 64-bit boot takes, and the Pi 5's D0 dtb is there under both
    /// its names (the second made from the first).
    #[test]
    fn the_kernel_initramfs_and_pi5_dtbs_the_firmware_loads_are_there() {
        let with = |name: &str, bytes: &[u8]| {
            let mut p = partition(Arch::Arm64);
            p.insert(name.into(), bytes.to_vec());
            check_boot_partition(Arch::Arm64, NEW, &p).err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(with("vmlinuz-7", b"\x7fELF").contains("pi5-b: config.txt's kernel=vmlinuz-7 is not an arm64 kernel image"));
        let mut image = vec![0u8; 64];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(with("vmlinuz-7", &image), "", "an uncompressed Image");
        let cfg = config(Arch::Arm64).replace("initramfs initrd.img-7", "initramfs initrd.img-8");
        assert!(with("config.txt", cfg.as_bytes()).contains("initramfs initrd.img-8 is not on the partition"));
        let mut p = partition(Arch::Arm64);
        p.remove("bcm2712d0-rpi-5-b.dtb");
        assert!(check_boot_partition(Arch::Arm64, NEW, &p).unwrap_err().to_string().contains("pi5-b needs bcm2712d0-rpi-5-b.dtb"));
        add_dtb_aliases(&mut p);
        assert!(check_boot_partition(Arch::Arm64, NEW, &p).is_ok(), "the alias made from bcm2712-d-rpi-5-b.dtb");
    }

    #[test]
    fn a_missing_dtb_or_firmware_file_names_the_board() {
        assert!(check_boot_partition(Arch::Arm64, NEW, &partition(Arch::Arm64)).is_ok());
        let mut p = partition(Arch::Arm64);
        p.remove("bcm2711-rpi-400.dtb");
        p.remove("start4.elf");
        let e = check_boot_partition(Arch::Arm64, NEW, &p).unwrap_err().to_string();
        assert!(e.contains("pi-400 needs bcm2711-rpi-400.dtb") && e.contains("pi4-b needs start4.elf"), "{e}");
        let mut p = partition(Arch::Arm64);
        p.insert("config.txt".into(), config(Arch::Arm64).replace("arm_64bit=1\n", "").into_bytes());
        assert!(check_boot_partition(Arch::Arm64, NEW, &p).unwrap_err().to_string().contains("arm_64bit=1"));
        let mut p = partition(Arch::Arm64);
        p.insert("config.txt".into(), (config(Arch::Arm64) + "gpu_mem=16\n").into_bytes());
        assert!(check_boot_partition(Arch::Arm64, NEW, &p).unwrap_err().to_string().contains("gpu_mem=16 needs start_cd.elf"));
        assert_eq!(emulated(Arch::Arm64).unwrap().qemu_machine, Some(Machine::Raspi3b));
    }

    #[test]
    fn the_first_boards_serial_port_is_the_last_console() {
        assert_eq!(consoles(Arch::Arm64), ["tty0", "ttyAMA0,115200", "ttyAMA10,115200", "ttyS1,115200"]);
        assert_eq!(consoles(Arch::Armhf), ["tty0", "ttyS1,115200", "ttyAMA0,115200"]);
        assert_eq!(consoles(Arch::Armel), ["tty0", "ttyS1,115200", "ttyAMA0,115200"]);
    }
}
