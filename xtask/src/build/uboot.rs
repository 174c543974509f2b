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

/// `boot.cmd` compiled into a `boot.scr` (a legacy U-Boot image of type script) by mkimage, its
/// header's time the build's epoch (mkimage takes SOURCE_DATE_EPOCH), so the same source gives
/// the same bytes.
pub fn compile(sh: &Shell, arch: Arch, source: &[u8], epoch: u64, work: &Path) -> Result<Vec<u8>> {
    let (src, out) = (work.join(SOURCE), work.join(SCRIPT));
    fs_err::write(&src, source)?;
    let u_boot_arch = match arch {
        Arch::Arm64 => "arm64",
        Arch::Armhf | Arch::Armel => "arm",
    };
    proc::read(
        cmd!(sh, "mkimage -A {u_boot_arch} -O linux -T script -C none -n pi2pi -d {src} {out}").env("SOURCE_DATE_EPOCH", epoch.to_string()),
    )
    .context("compiling the boot script (mkimage is in Debian's u-boot-tools)")?;
    Ok(fs_err::read(&out)?)
}

/// `uboot-env.txt` compiled into `uboot.env` by mkenvimage (a CRC and the `name=value` pairs).
pub fn environment(sh: &Shell, source: &[u8], work: &Path) -> Result<Vec<u8>> {
    let (src, out) = (work.join(ENV_SOURCE), work.join(ENV));
    fs_err::write(&src, source)?;
    proc::read(cmd!(sh, "mkenvimage -s {ENV_SIZE} -o {out} {src}"))
        .context("compiling the U-Boot environment (mkenvimage is in u-boot-tools)")?;
    Ok(fs_err::read(&out)?)
}
