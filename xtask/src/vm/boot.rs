//! What a card boots, read out of its FAT partition as the Pi's firmware chooses it: the kernel
//! and initramfs config.txt names, and cmdline.txt. Every QEMU boot of a card starts here, so the
//! tests run what the card carries.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::build::fat::Fat;

/// What the card's boot partition says to boot.
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
}

/// Reads what the card boots out of its FAT partition the way the Pi firmware chooses it:
/// config.txt's `kernel=` and `initramfs`, and cmdline.txt. Copies them into `dir`.
pub fn boot_files(sh: &Shell, image: &Path, dir: &Path) -> Result<BootFiles> {
    let fat = fat_of(image)?;
    fs_err::create_dir_all(dir)?;
    let config = String::from_utf8(fat.read(sh, "config.txt", &dir.join("config.txt"))?).context("config.txt is not UTF-8")?;
    let (kernel, initrd) = firmware_choice(&config).with_context(|| format!("the config.txt of {}", image.display()))?;
    let mut out = Vec::new();
    for name in [kernel, initrd, "cmdline.txt".to_string()] {
        let dst = dir.join(&name);
        fat.copy_out(sh, &name, &dst).with_context(|| format!("{name}, named by config.txt, is not on the boot partition"))?;
        out.push(dst);
    }
    let cmdline = fs_err::read_to_string(&out[2])?.trim().to_string();
    Ok(BootFiles { kernel: out[0].clone(), initrd: out[1].clone(), cmdline })
}

/// The card's boot partition (partition 1 of its MBR).
pub fn fat_of(image: &Path) -> Result<Fat> {
    let mut f = fs_err::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mbr = mbrman::MBR::read_from(&mut f, 512).with_context(|| format!("reading the MBR of {}", image.display()))?;
    Ok(Fat::partition(image, mbr[1].starting_lba as u64 * 512))
}

/// The kernel and initramfs the firmware loads, from config.txt (`kernel=<file>`,
/// `initramfs <file> [followkernel]`; the last line of each wins, as for the firmware).
/// Conditional sections (`[pi4]` …) are not modelled: the cards' config.txt has none.
pub fn firmware_choice(config: &str) -> Result<(String, String)> {
    let (mut kernel, mut initrd) = (None, None);
    for line in config.lines().map(str::trim) {
        if let Some(k) = line.strip_prefix("kernel=") {
            kernel = Some(k.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("initramfs ") {
            initrd = rest.split_whitespace().next().map(str::to_string);
        } else if line.starts_with('[') && line != "[all]" {
            bail!("config.txt has a conditional section `{line}`, which the harness does not model");
        }
    }
    Ok((kernel.context("config.txt has no kernel= line")?, initrd.context("config.txt has no initramfs line")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_firmware_choice_comes_from_config_txt() {
        let c = "arm_64bit=1\nkernel=vmlinuz-6.12.1-arm64\ninitramfs initrd.img-6.12.1-arm64 followkernel\n";
        assert_eq!(firmware_choice(c).unwrap(), ("vmlinuz-6.12.1-arm64".into(), "initrd.img-6.12.1-arm64".into()));
        assert!(firmware_choice("kernel=a\n").is_err());
        assert!(firmware_choice("[pi4]\nkernel=a\ninitramfs b\n").is_err());
    }
}
