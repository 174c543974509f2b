//! Which Raspberry Pi boards a card boots on, and what the firmware needs on the FAT partition
//! for each: the board's upstream device tree (the name the firmware loads with
//! `upstream_kernel=1`) and the firmware's own files for that board's generation. The image
//! stage refuses a card that lacks any of them; the board test boots the boards QEMU models.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::build::arch::Arch;

/// One board a card supports.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    /// Our name for it (and Raspberry Pi Imager's device tag family).
    pub name: &'static str,
    pub dtb: &'static str,
    /// Files of the VideoCore firmware this board's boot ROM and GPU need.
    pub firmware: &'static [&'static str],
    /// The serial port on its GPIO header (pins 8/10) as the upstream device tree names it: the
    /// PL011 (ttyAMA0), or the mini UART (ttyS1) on boards whose PL011 drives Bluetooth.
    pub serial: &'static str,
    /// QEMU's model of it or of its SoC and memory map, if QEMU has one (booted with the board's
    /// own dtb; `raspi4b` is QEMU 10's, the others Debian 12's QEMU 7.2's).
    pub qemu_machine: Option<&'static str>,
    /// Raspberry Pi Imager's family for it (its device tag is `<family>-<bits>bit`): the Zero
    /// is a `pi1`, the Zero 2 W a `pi3`, the 400 and CM4 `pi4`.
    pub imager_family: &'static str,
    /// The kernel drivers it needs to boot and do a pi2pi job (`manifest.rs` checks every card).
    pub hw: Hardware,
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
/// A worker's link: the DWC2 as the USB device controller and the Ethernet gadget.
pub const GADGET: &[&str] = &["dwc2", "g_ether"];

const fn hw(root: &'static [&'static str], usb_host: &'static [&'static str], ethernet: &'static [&'static str]) -> Hardware {
    Hardware { root, usb_host, ethernet }
}
const WITH_LAN9514: Hardware = hw(ROOT_SDHOST, USB_DWC2, ETH_SMSC95XX);
const WITH_LAN7515: Hardware = hw(ROOT_SDHOST, USB_DWC2, ETH_LAN78XX);
const NO_ETHERNET: Hardware = hw(ROOT_SDHOST, USB_DWC2, &[]);
const BCM2711: Hardware = hw(ROOT_EMMC2, USB_VL805, ETH_GENET);

const VC4: &[&str] = &["bootcode.bin", "start.elf", "fixup.dat"];
// The Pi 4 family's boot ROM reads its EEPROM, not bootcode.bin.
const VC6: &[&str] = &["start4.elf", "fixup4.dat"];

pub const PL011: &str = "ttyAMA0";
pub const MINI_UART: &str = "ttyS1";

const fn board(
    name: &'static str,
    dtb: &'static str,
    firmware: &'static [&'static str],
    serial: &'static str,
    qemu_machine: Option<&'static str>,
    imager_family: &'static str,
    hw: Hardware,
) -> Board {
    Board { name, dtb, firmware, serial, qemu_machine, imager_family, hw }
}

/// Boards a 64-bit card (Debian's arm64 kernel and raspi-firmware) boots. Not the Pi 5: its dtb
/// ships, but kernel 6.12 has no driver for its RP1 I/O chip (Ethernet, USB), so it would boot
/// with no network and no USB drive.
const ARM64: &[Board] = &[
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, MINI_UART, Some("raspi3b"), "pi3", WITH_LAN9514),
    board("pi3-b-plus", "bcm2837-rpi-3-b-plus.dtb", VC4, MINI_UART, None, "pi3", WITH_LAN7515),
    board("pi3-a-plus", "bcm2837-rpi-3-a-plus.dtb", VC4, MINI_UART, None, "pi3", NO_ETHERNET),
    board("cm3", "bcm2837-rpi-cm3-io3.dtb", VC4, PL011, None, "pi3", NO_ETHERNET),
    // The Zero 2 W's RP3A0 is the Pi 3's BCM2837 with its RAM on top: raspi3b runs its dtb.
    board("pi-zero-2-w", "bcm2837-rpi-zero-2-w.dtb", VC4, MINI_UART, Some("raspi3b"), "pi3", NO_ETHERNET),
    board("pi4-b", "bcm2711-rpi-4-b.dtb", VC6, MINI_UART, Some("raspi4b"), "pi4", BCM2711),
    board("pi-400", "bcm2711-rpi-400.dtb", VC6, MINI_UART, None, "pi4", BCM2711),
    board("cm4", "bcm2711-rpi-cm4-io.dtb", VC6, MINI_UART, None, "pi4", BCM2711),
];

/// Boards a 32-bit armhf card boots: Debian's armmp-lpae kernel needs a Cortex-A7 or later
/// (Pi 2 and newer); the Pi 1 and Zero are ARMv6. Not the Pi 4: that kernel (6.12) has neither
/// its GENET Ethernet nor the PCIe bridge its USB ports are behind, so it would boot with no
/// network and no drive (the hardware manifest found this); a Pi 4 takes the arm64 card.
const ARMHF: &[Board] = &[
    board("pi2-b", "bcm2836-rpi-2-b.dtb", VC4, PL011, Some("raspi2b"), "pi2", WITH_LAN9514),
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, MINI_UART, None, "pi3", WITH_LAN9514),
];

/// Boards an ARMv6 armel card boots: Debian's `linux-image-rpi` is built for the BCM2835 (Pi 1,
/// Zero, Zero W; its dtbs are the upstream bcm2835 ones).
const ARMEL: &[Board] = &[
    board("pi-zero", "bcm2835-rpi-zero.dtb", VC4, PL011, Some("raspi0"), "pi1", NO_ETHERNET),
    board("pi-zero-w", "bcm2835-rpi-zero-w.dtb", VC4, MINI_UART, None, "pi1", NO_ETHERNET),
    board("pi1-b-plus", "bcm2835-rpi-b-plus.dtb", VC4, PL011, None, "pi1", WITH_LAN9514),
    board("pi1-a-plus", "bcm2835-rpi-a-plus.dtb", VC4, PL011, None, "pi1", NO_ETHERNET),
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

/// Every file each supported board needs is on the boot partition (`files`: its contents by
/// name), and config.txt asks for the upstream device trees the dtb names are for.
pub fn check_boot_partition(arch: Arch, files: &BTreeMap<String, Vec<u8>>) -> Result<()> {
    let mut missing = Vec::new();
    for b in for_arch(arch) {
        for f in std::iter::once(&b.dtb).chain(b.firmware) {
            if !files.contains_key(*f) {
                missing.push(format!("{} needs {f}", b.name));
            }
        }
    }
    let config = files.get("config.txt").map(|c| String::from_utf8_lossy(c).into_owned()).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(arch: Arch) -> BTreeMap<String, Vec<u8>> {
        let mut m: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        for b in for_arch(arch) {
            for f in std::iter::once(&b.dtb).chain(b.firmware) {
                m.insert(f.to_string(), vec![]);
            }
        }
        m.insert("config.txt".into(), b"arm_64bit=1\nupstream_kernel=1\n".to_vec());
        m
    }

    #[test]
    fn a_missing_dtb_or_firmware_file_names_the_board() {
        assert!(check_boot_partition(Arch::Arm64, &partition(Arch::Arm64)).is_ok());
        let mut p = partition(Arch::Arm64);
        p.remove("bcm2711-rpi-400.dtb");
        p.remove("start4.elf");
        let e = check_boot_partition(Arch::Arm64, &p).unwrap_err().to_string();
        assert!(e.contains("pi-400 needs bcm2711-rpi-400.dtb") && e.contains("pi4-b needs start4.elf"), "{e}");
        let mut p = partition(Arch::Arm64);
        p.insert("config.txt".into(), b"upstream_kernel=1\n".to_vec());
        assert!(check_boot_partition(Arch::Arm64, &p).unwrap_err().to_string().contains("arm_64bit=1"));
        let mut p = partition(Arch::Arm64);
        p.insert("config.txt".into(), b"arm_64bit=1\nupstream_kernel=1\ngpu_mem=16\n".to_vec());
        assert!(check_boot_partition(Arch::Arm64, &p).unwrap_err().to_string().contains("gpu_mem=16 needs start_cd.elf"));
        assert_eq!(emulated(Arch::Arm64).unwrap().qemu_machine, Some("raspi3b"));
    }

    #[test]
    fn the_first_boards_serial_port_is_the_last_console() {
        assert_eq!(consoles(Arch::Arm64), ["tty0", "ttyAMA0,115200", "ttyS1,115200"]);
        assert_eq!(consoles(Arch::Armhf), ["tty0", "ttyS1,115200", "ttyAMA0,115200"]);
        assert_eq!(consoles(Arch::Armel), ["tty0", "ttyS1,115200", "ttyAMA0,115200"]);
    }
}
