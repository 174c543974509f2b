//! What a card boots, read out of its FAT partition as the Pi's firmware chooses it: what
//! config.txt makes the board's firmware start (its U-Boot, or a kernel and initramfs), and
//! cmdline.txt. Every QEMU boot of a card starts here, so the tests run what the card carries.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::build::boards;
use crate::build::fat::Fat;

/// What the card's boot partition says to boot.
pub struct BootFiles {
    pub start: Start,
    /// cmdline.txt, which the firmware puts in the device tree's /chosen/bootargs (QEMU's
    /// `-append`), where U-Boot's boot script reads it.
    pub cmdline: String,
}

/// What the firmware starts, copied out of the card.
pub enum Start {
    /// U-Boot (which then loads the kernel boot.scr names from the card, as on the Pi), and the
    /// flash that holds its environment where it reads it from flash (`virt`'s; a Pi's U-Boot
    /// reads the card's uboot.env).
    UBoot {
        image: PathBuf,
        env_flash: Option<PathBuf>,
    },
    Kernel {
        kernel: PathBuf,
        initrd: PathBuf,
    },
}

impl Start {
    /// QEMU's options that load it where the firmware would (`-kernel`, `-initrd`, and the flash
    /// with U-Boot's environment where it reads it from flash).
    pub fn qemu_args(&self) -> Vec<String> {
        match self {
            Start::UBoot { image, env_flash } => {
                let mut a = vec!["-kernel".to_string(), image.display().to_string()];
                if let Some(flash) = env_flash {
                    a.extend(["-drive".into(), format!("if=pflash,unit=1,format=raw,readonly=on,file={}", flash.display())]);
                }
                a
            }
            Start::Kernel { kernel, initrd } => {
                vec!["-kernel".into(), kernel.display().to_string(), "-initrd".into(), initrd.display().to_string()]
            }
        }
    }
}

/// Reads what the firmware of a board matching config.txt's `filters` (`Board::filters`; none
/// for QEMU's `virt`, which is no Pi) starts from the card's FAT partition, and cmdline.txt.
/// Copies them into `dir`.
pub fn boot_files(sh: &Shell, image: &Path, dir: &Path, filters: &[&str]) -> Result<BootFiles> {
    let fat = fat_of(image)?;
    fs_err::create_dir_all(dir)?;
    let config = String::from_utf8(fat.read(sh, "config.txt", &dir.join("config.txt"))?).context("config.txt is not UTF-8")?;
    let choice = boards::firmware_choice(&config, filters).with_context(|| format!("the config.txt of {}", image.display()))?;
    let copy = |name: &str| -> Result<PathBuf> {
        let dst = dir.join(name);
        fat.copy_out(sh, name, &dst).with_context(|| format!("{name}, named by config.txt, is not on the boot partition"))?;
        Ok(dst)
    };
    let start = match &choice.initramfs {
        // The firmware loads an initramfs only for a kernel: for U-Boot, config.txt names none
        // (`boards::check_boot_partition`).
        None => Start::UBoot { image: copy(&choice.kernel)?, env_flash: None },
        Some(initrd) => Start::Kernel { kernel: copy(&choice.kernel)?, initrd: copy(initrd)? },
    };
    let cmdline = String::from_utf8(fat.read(sh, "cmdline.txt", &dir.join("cmdline.txt"))?).context("cmdline.txt is not UTF-8")?;
    Ok(BootFiles { start, cmdline: cmdline.trim().to_string() })
}

/// The card's boot partition (partition 1 of its MBR).
pub fn fat_of(image: &Path) -> Result<Fat> {
    let mut f = fs_err::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mbr = mbrman::MBR::read_from(&mut f, 512).with_context(|| format!("reading the MBR of {}", image.display()))?;
    Ok(Fat::partition(image, mbr[1].starting_lba as u64 * 512))
}
