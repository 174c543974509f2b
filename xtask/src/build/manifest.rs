//! The hardware manifest checked on every build: each board a card is for (`boards.rs`) finds the
//! kernel drivers it needs to boot and do its host's job in the card, as modules or built into
//! the kernel (`modules.builtin`), and the SD card's in the initramfs too, where the root is
//! found. A `base.path_exclude` line or a kernel without a driver then fails the build, naming
//! the board and the driver, instead of a Pi that boots to nothing.

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::{bail, Context, Result};

use crate::build::arch::Arch;
use crate::build::boards::{self, Board};
use crate::build::config::Role;
use crate::build::rootfs::{module_name, BaseFacts};

/// The kernel drivers a card carries, by module name (`-` written `_`, as modprobe matches them).
#[derive(Debug, Default, Clone)]
pub struct Drivers {
    /// Modules under `/usr/lib/modules/<version>/` and those built into the kernel.
    pub card: BTreeSet<String>,
    /// What the initramfs can load, and those built into the kernel.
    pub initramfs: BTreeSet<String>,
}

impl Drivers {
    /// What the base carries: its modules and built-in drivers, and what its initramfs
    /// (`initrd`, on the boot partition) can load.
    pub fn of(facts: &BaseFacts, initrd: &str) -> Result<Drivers> {
        let image = facts.boot.get(initrd).with_context(|| format!("{initrd} is not in the base's /boot/firmware"))?;
        let loadable = initramfs_modules(image).with_context(|| format!("reading {initrd}"))?;
        Ok(Drivers {
            card: facts.modules.union(&facts.builtin).cloned().collect(),
            initramfs: loadable.union(&facts.builtin).cloned().collect(),
        })
    }
}

/// The modules in an initramfs: newc cpio archives one after another, as mkinitramfs writes them
/// (an uncompressed early archive, then the main one compressed with the cards' `COMPRESS=gzip`).
pub fn initramfs_modules(initrd: &[u8]) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    scan(initrd, &mut names)?;
    Ok(names)
}

const NEWC: &[u8] = b"070701";
const GZIP: &[u8] = &[0x1f, 0x8b];

fn scan(mut data: &[u8], names: &mut BTreeSet<String>) -> Result<()> {
    loop {
        // Archives are padded with zeros to a block boundary.
        data = &data[data.iter().position(|b| *b != 0).unwrap_or(data.len())..];
        if data.is_empty() {
            return Ok(());
        }
        if data.starts_with(NEWC) {
            let end = archive(data, names)?;
            data = &data[end..];
        } else if data.starts_with(GZIP) {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).context("decompressing the initramfs")?;
            return scan(&out, names);
        } else {
            bail!("the initramfs has a part that is neither a newc cpio archive nor gzip (starts {:02x?})", &data[..data.len().min(6)]);
        }
    }
}

/// One cpio archive at the start of `data`: its modules into `names`; returns its length.
fn archive(data: &[u8], names: &mut BTreeSet<String>) -> Result<usize> {
    let mut input = std::io::Cursor::new(data);
    loop {
        let reader = cpio::NewcReader::new(input).context("a broken cpio archive in the initramfs")?;
        let trailer = reader.entry().is_trailer();
        if let Some(m) = module_name(reader.entry().name()) {
            names.insert(m);
        }
        input = reader.finish()?;
        if trailer {
            return Ok(input.position() as usize);
        }
    }
}

/// What board `b` needs of a card for a host of `role`.
fn needs(b: &Board, role: Role) -> Vec<(&'static str, &'static [&'static str])> {
    let mut v = vec![("its SD card (root)", b.hw.root), ("its USB host (the drive)", b.hw.usb_host)];
    match role {
        Role::Worker if b.usb_gadget() => v.push(("its USB gadget link", boards::GADGET)),
        Role::Worker => {}
        Role::DhcpServer | Role::DhcpClient | Role::Manager => v.push(("its Ethernet port", b.hw.ethernet)),
    }
    v
}

/// Every board of `arch` finds what it needs for `role` in `drivers`; the root's drivers also in
/// the initramfs.
pub fn check(arch: Arch, kernel: boards::KernelVersion, role: Role, drivers: &Drivers) -> Result<()> {
    let mut missing = Vec::new();
    for b in boards::for_card(arch, kernel) {
        for (what, mods) in needs(b, role) {
            for m in mods.iter().filter(|m| !drivers.card.contains(**m)) {
                missing.push(format!("{} needs {m} for {what}: not in the card's modules nor built into its kernel", b.name));
            }
        }
        for m in b.hw.root.iter().filter(|m| drivers.card.contains(**m) && !drivers.initramfs.contains(**m)) {
            missing.push(format!("{} needs {m} in the initramfs to find its root (add it to base.initramfs_modules)", b.name));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the card lacks drivers of boards it is for (a base.path_exclude line, or a kernel without them):\n  {}",
            missing.join("\n  ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::rootfs::builtin;

    /// Every driver of every board, as a card with nothing left out would have them.
    fn complete(arch: Arch) -> Drivers {
        let mut d = Drivers::default();
        for b in boards::for_arch(arch) {
            for (_, mods) in needs(b, Role::Worker).into_iter().chain(needs(b, Role::DhcpServer)) {
                d.card.extend(mods.iter().map(|m| m.to_string()));
            }
            d.initramfs.extend(b.hw.root.iter().map(|m| m.to_string()));
        }
        d
    }

    #[test]
    fn module_names_come_from_paths_as_modprobe_writes_them() {
        assert_eq!(module_name("usr/lib/modules/6.12.1-arm64/kernel/drivers/mmc/host/sdhci-iproc.ko.xz").as_deref(), Some("sdhci_iproc"));
        assert_eq!(module_name("kernel/drivers/net/usb/smsc95xx.ko").as_deref(), Some("smsc95xx"));
        assert_eq!(module_name("usr/lib/modules/6.12.1-arm64/modules.dep"), None);
        assert_eq!(builtin("kernel/fs/ext4/ext4.ko\nkernel/drivers/usb/dwc2/dwc2.ko\n").collect::<Vec<_>>(), ["ext4", "dwc2"]);
    }

    #[test]
    fn a_driver_left_out_of_the_card_is_refused_by_board() {
        for arch in Arch::ALL {
            check(arch, (7, 3), Role::DhcpServer, &complete(arch)).unwrap();
            check(arch, (7, 3), Role::Worker, &complete(arch)).unwrap();
        }
        // What `/lib/modules/*/kernel/drivers/net/ethernet/*` without its broadcom/ exception did.
        let mut d = complete(Arch::Arm64);
        d.card.remove("genet");
        let e = check(Arch::Arm64, (7, 3), Role::DhcpClient, &d).unwrap_err().to_string();
        assert!(e.contains("pi4-b needs genet for its Ethernet port") && e.contains("cm4 needs genet"), "{e}");
        assert!(!e.contains("pi3-b "), "the Pi 3 does not need genet: {e}");
        // A worker does not use the Ethernet port; its gadget link is what it needs.
        check(Arch::Arm64, (7, 3), Role::Worker, &d).unwrap();
        let mut d = complete(Arch::Armel);
        d.card.remove("g_ether");
        let e = check(Arch::Armel, (7, 3), Role::Worker, &d).unwrap_err().to_string();
        assert!(e.contains("pi-zero needs g_ether for its USB gadget link"), "{e}");
        // The root's driver on the card but not in the initramfs.
        let mut d = complete(Arch::Arm64);
        d.initramfs.remove("sdhci_iproc");
        let e = check(Arch::Arm64, (7, 3), Role::DhcpServer, &d).unwrap_err().to_string();
        assert!(e.contains("pi4-b needs sdhci_iproc in the initramfs"), "{e}");
    }

    /// A real newc archive, gzip-compressed, read back for its module names.
    #[test]
    fn the_initramfs_is_read_for_its_modules() {
        let mut cpio = Vec::new();
        let files = [("usr/lib/modules/6.12.1-arm64/kernel/drivers/mmc/host/bcm2835.ko", b"x".as_slice()), ("init", b"#!/bin/sh")];
        let inputs = files.iter().map(|(n, d)| (cpio::NewcBuilder::new(n).mode(0o100644), std::io::Cursor::new(d.to_vec())));
        cpio::write_cpio(inputs, &mut cpio).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &cpio).unwrap();
        let main = gz.finish().unwrap();
        assert_eq!(initramfs_modules(&main).unwrap().into_iter().collect::<Vec<_>>(), ["bcm2835"]);
        // As mkinitramfs writes it: an uncompressed early archive (padded), then the main one.
        let mut early = Vec::new();
        let inputs = [("kernel/x86/microcode/x.bin", b"y".as_slice()), ("usr/lib/modules/6.12.1/kernel/fs/ext4/ext4.ko", b"z")]
            .map(|(n, d)| (cpio::NewcBuilder::new(n).mode(0o100644), std::io::Cursor::new(d.to_vec())));
        cpio::write_cpio(inputs.into_iter(), &mut early).unwrap();
        early.resize(early.len().next_multiple_of(512), 0);
        early.extend_from_slice(&main);
        assert_eq!(initramfs_modules(&early).unwrap().into_iter().collect::<Vec<_>>(), ["bcm2835", "ext4"]);
        assert!(initramfs_modules(b"not an archive").is_err());
    }
}
