//! U-Boot on the boot partition: the firmware starts the board's U-Boot (config.txt's `kernel=`,
//! see `boards::Start`), and U-Boot runs `boot.scr`, which boots the card's kernel and initramfs.
//! U-Boot, not the firmware, chooses what boots, so that a card can keep two root filesystems
//! and go back to the one that worked: the firmware's own `tryboot` needs the Raspberry Pi
//! kernel's reboot flag, which Debian's kernel does not pass.
//!
//! The script's source is `overlays/boot/boot.cmd.j2` (a template like config.txt's), and
//! U-Boot's environment's `overlays/boot/uboot-env.txt`; both are on the partition too, beside
//! what is compiled from them, for whoever reads the card.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::boards::{self, KernelVersion, Start};
use crate::proc;

/// The script's source on the boot partition, rendered from its template.
pub const SOURCE: &str = "boot.cmd";
/// The compiled script U-Boot's boot scan looks for on every partition it can read.
pub const SCRIPT: &str = "boot.scr";
/// The source of the U-Boot environment the card's U-Boot reads, on the partition too.
pub const ENV_SOURCE: &str = "uboot-env.txt";
/// Where Debian's Pi builds of U-Boot read their environment: a file on the first partition of
/// mmc 0 (`CONFIG_ENV_IS_IN_FAT`), of `ENV_SIZE` bytes.
pub const ENV: &str = "uboot.env";
/// `CONFIG_ENV_SIZE` of every Debian Pi build (rpi, rpi_2, rpi_3_32b, rpi_arm64; 2023.01 and
/// 2025.01): a file of another size fails its CRC check, and U-Boot falls back to its defaults.
const ENV_SIZE: &str = "0x4000";

/// Where a base's bootloader package keeps a U-Boot build (`config` as in `Start::UBoot`).
pub fn path_in_base(config: &str) -> String {
    format!("usr/lib/u-boot/{config}/u-boot.bin")
}

/// The U-Boot build of each board of a card of `arch` with a kernel of version `kernel`, by its
/// file name on the boot partition, taken from the base (`in_base`: `path_in_base` → bytes).
pub fn binaries(
    arch: Arch,
    kernel: KernelVersion,
    in_base: &BTreeMap<String, Vec<u8>>,
    package: &str,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for b in boards::for_card(arch, kernel) {
        let Start::UBoot(config) = b.start else { continue };
        let path = path_in_base(config);
        let Some(bytes) = in_base.get(&path) else {
            bail!("the base has no /{path} for the {} (base.bootloader = \"{package}\" should install it)", b.name);
        };
        out.insert(boards::u_boot_file(config), bytes.clone());
    }
    Ok(out)
}

/// Adds to the boot partition's files (`boot`) what is compiled from the sources there (in `work`,
/// with u-boot-tools): `boot.cmd` into `boot.scr` (a legacy U-Boot image of type script, its
/// header's time the build's epoch: mkimage takes SOURCE_DATE_EPOCH, so the same source gives the
/// same bytes), `uboot-env.txt` into `uboot.env`.
pub fn compile_sources(sh: &Shell, arch: Arch, epoch: u64, work: &Path, boot: &mut BTreeMap<String, Vec<u8>>) -> Result<()> {
    if let Some(source) = boot.get(SOURCE) {
        let (src, out) = (work.join(SOURCE), work.join(SCRIPT));
        fs_err::write(&src, source)?;
        let u_boot_arch = match arch {
            Arch::Arm64 => "arm64",
            Arch::Armhf | Arch::Armel => "arm",
        };
        let mkimage = cmd!(sh, "mkimage -A {u_boot_arch} -O linux -T script -C none -n pi2pi -d {src} {out}");
        proc::read(mkimage.env("SOURCE_DATE_EPOCH", epoch.to_string())).context("compiling the boot script")?;
        boot.insert(SCRIPT.into(), fs_err::read(&out)?);
    }
    if let Some(source) = boot.get(ENV_SOURCE) {
        let out = work.join(ENV);
        environment_image(sh, source, ENV_SIZE, &out)?;
        boot.insert(ENV.into(), fs_err::read(&out)?);
    }
    Ok(())
}

/// An environment's `name=value` lines (`#` comments and blank lines left out) as U-Boot stores
/// it, `size` bytes with its CRC (mkenvimage), written to `out`.
fn environment_image(sh: &Shell, text: &[u8], size: &str, out: &Path) -> Result<()> {
    let src = out.with_extension("txt");
    fs_err::write(&src, text)?;
    proc::read(cmd!(sh, "mkenvimage -s {size} -o {out} {src}")).context("compiling a U-Boot environment").map(drop)
}

/// What differs for QEMU's `virt` in the card's environment: its disk is virtio, its RAM starts at
/// 1 GiB, and QEMU puts its device tree at RAM's start (where the Pi's U-Boot sets `fdt_addr` to
/// the firmware's at run time). The values are those of U-Boot for virt's own defaults.
const VIRT_ENV: &[(&str, &str)] =
    &[("devtype", "virtio"), ("kernel_addr_r", "0x40400000"), ("scriptaddr", "0x40200000"), ("fdt_addr", "0x40000000")];
/// `virt`'s flash banks are 64 MiB; U-Boot for virt keeps its environment at the second's start.
const VIRT_FLASH_BYTES: u64 = 64 << 20;
const VIRT_ENV_SIZE: &str = "0x40000";

/// The card's U-Boot environment (`uboot-env.txt`) as U-Boot for `virt` reads it: `VIRT_ENV`'s
/// values in place of the Pi's, as the flash image of virt's second bank, written to `out`.
pub fn virt_env_flash(sh: &Shell, card_env: &str, out: &Path) -> Result<()> {
    let mut lines: Vec<String> = card_env
        .lines()
        .filter(|l| !VIRT_ENV.iter().any(|(k, _)| l.strip_prefix(k).is_some_and(|r| r.starts_with('='))))
        .map(str::to_string)
        .collect();
    lines.extend(VIRT_ENV.iter().map(|(k, v)| format!("{k}={v}")));
    environment_image(sh, (lines.join("\n") + "\n").as_bytes(), VIRT_ENV_SIZE, out)?;
    fs_err::OpenOptions::new().write(true).open(out)?.set_len(VIRT_FLASH_BYTES)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The card's environment reaches virt's U-Boot with virt's disk and addresses and the card's
    /// own boot command, in a flash image of the bank's size.
    #[test]
    fn virt_reads_the_cards_environment_with_its_own_disk_and_addresses() {
        if proc::skip_test_without(&["mkenvimage"], false, "the U-Boot environment for virt") {
            return;
        }
        let sh = Shell::new().unwrap();
        let dir = std::env::temp_dir().join(format!("pi2pi-uboot-test-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let card = fs_err::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/boot").join(ENV_SOURCE)).unwrap();
        let flash = dir.join("env.flash");
        virt_env_flash(&sh, &card, &flash).unwrap();
        let bytes = fs_err::read(&flash).unwrap();
        assert_eq!(bytes.len() as u64, VIRT_FLASH_BYTES);
        let vars: Vec<&str> =
            bytes[4..].split(|b| *b == 0).take_while(|v| !v.is_empty()).map(|v| std::str::from_utf8(v).unwrap()).collect();
        for want in ["devtype=virtio", "kernel_addr_r=0x40400000", "fdt_addr=0x40000000", "bootdelay=-2"] {
            assert!(vars.contains(&want), "{want} not in {vars:?}");
        }
        assert!(!vars.contains(&"devtype=mmc") && vars.iter().any(|v| v.starts_with("bootcmd=") && v.contains("boot.scr")), "{vars:?}");
        let _ = fs_err::remove_dir_all(&dir);
    }
}
