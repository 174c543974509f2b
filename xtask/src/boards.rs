//! Which Raspberry Pi boards a card boots on, and what the firmware needs on the FAT partition
//! for each: the board's upstream device tree (the name the firmware loads with
//! `upstream_kernel=1`) and the firmware's own files for that board's generation. The image
//! stage refuses a card that lacks any of them; the board test boots the boards QEMU models.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use crate::config::Arch;

/// One board a card supports.
#[derive(Debug, Clone, Copy)]
pub struct Board {
    /// Our name for it (and Raspberry Pi Imager's device tag family).
    pub name: &'static str,
    pub dtb: &'static str,
    /// Files of the VideoCore firmware this board's boot ROM and GPU need.
    pub firmware: &'static [&'static str],
    /// QEMU's model of it, if QEMU 7.2 has one.
    pub qemu_machine: Option<&'static str>,
}

const VC4: &[&str] = &["bootcode.bin", "start.elf", "fixup.dat"];
// The Pi 4 family's boot ROM reads its EEPROM, not bootcode.bin.
const VC6: &[&str] = &["start4.elf", "fixup4.dat"];

const fn board(name: &'static str, dtb: &'static str, firmware: &'static [&'static str], qemu_machine: Option<&'static str>) -> Board {
    Board { name, dtb, firmware, qemu_machine }
}

/// Boards a 64-bit card (Debian's arm64 kernel and raspi-firmware) boots. Not the Pi 5: its dtb
/// ships, but kernel 6.12 has no driver for its RP1 I/O chip (Ethernet, USB), so it would boot
/// with no network and no USB drive.
const ARM64: &[Board] = &[
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, Some("raspi3b")),
    board("pi3-b-plus", "bcm2837-rpi-3-b-plus.dtb", VC4, None),
    board("pi3-a-plus", "bcm2837-rpi-3-a-plus.dtb", VC4, None),
    board("cm3", "bcm2837-rpi-cm3-io3.dtb", VC4, None),
    board("pi-zero-2-w", "bcm2837-rpi-zero-2-w.dtb", VC4, None),
    board("pi4-b", "bcm2711-rpi-4-b.dtb", VC6, None),
    board("pi-400", "bcm2711-rpi-400.dtb", VC6, None),
    board("cm4", "bcm2711-rpi-cm4-io.dtb", VC6, None),
];

/// Boards a 32-bit armhf card boots: Debian's armmp-lpae kernel needs a Cortex-A7 or later
/// (Pi 2 and newer); the Pi 1 and Zero are ARMv6.
const ARMHF: &[Board] = &[
    board("pi2-b", "bcm2836-rpi-2-b.dtb", VC4, Some("raspi2b")),
    board("pi3-b", "bcm2837-rpi-3-b.dtb", VC4, None),
    board("pi4-b", "bcm2711-rpi-4-b.dtb", VC6, None),
];

/// Boards an ARMv6 armel card boots: Debian's `linux-image-rpi` is built for the BCM2835 (Pi 1,
/// Zero, Zero W; its dtbs are the upstream bcm2835 ones).
const ARMEL: &[Board] = &[
    board("pi-zero", "bcm2835-rpi-zero.dtb", VC4, Some("raspi0")),
    board("pi-zero-w", "bcm2835-rpi-zero-w.dtb", VC4, None),
    board("pi1-b-plus", "bcm2835-rpi-b-plus.dtb", VC4, None),
    board("pi1-a-plus", "bcm2835-rpi-a-plus.dtb", VC4, None),
];

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
        assert_eq!(emulated(Arch::Arm64).unwrap().qemu_machine, Some("raspi3b"));
    }
}
