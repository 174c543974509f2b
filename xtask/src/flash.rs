//! `cargo xtask flash <host> <device>`: writes a built card to an SD card on this machine.
//!
//! Before anything is written it shows the device (model, size) and asks (`--yes` to skip), and
//! refuses a device that is mounted, holds the running system, swap or another device (LVM,
//! dm-crypt), or is a partition; and, unless `--force`, one that is not removable or is larger
//! than a card would be. The write is `bmaptool copy` (only the mapped blocks, with its progress),
//! then the device's cache is dropped and the whole image is read back and compared with the
//! `.img`'s SHA-256. A regular file as target gets the same write and read-back, no device checks.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::proc;

/// Larger than this is not an SD card or USB stick someone means to overwrite (without --force).
const CARD_MAX_BYTES: u64 = 256_000_000_000;

/// What the kernel says about a whole block device.
#[derive(Debug, Default)]
pub struct Device {
    pub name: String,
    pub bytes: u64,
    pub removable: bool,
    pub model: String,
    /// Where it or one of its partitions is mounted.
    pub mounts: Vec<String>,
    /// Devices built on it or its partitions (device-mapper, md).
    pub holders: Vec<String>,
    /// Its partitions in use as swap.
    pub swaps: Vec<String>,
}

/// Where device facts come from: the real /sys and /proc, or a test's files.
pub struct System {
    pub sys_block: PathBuf,
    pub mountinfo: String,
    pub swaps: String,
}

impl System {
    pub fn real() -> Result<System> {
        Ok(System {
            sys_block: PathBuf::from("/sys/class/block"),
            mountinfo: fs_err::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?,
            swaps: fs_err::read_to_string("/proc/swaps").unwrap_or_default(),
        })
    }

    /// The whole device `name` (e.g. `sdb`): its size, model and everything using it.
    pub fn device(&self, name: &str) -> Result<Device> {
        let dir = self.sys_block.join(name);
        let read = |f: &str| fs_err::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        ensure!(dir.exists(), "no block device `{name}` in {}", self.sys_block.display());
        ensure!(!dir.join("partition").exists(), "`{name}` is a partition: give the whole device (e.g. /dev/sdb, not /dev/sdb1)");
        let sectors: u64 = read("size")?.parse().with_context(|| format!("{}/size", dir.display()))?;
        let model = [read("device/vendor").unwrap_or_default(), read("device/model").unwrap_or_default()]
            .iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let mut d = Device { name: name.into(), bytes: sectors * 512, removable: read("removable")? == "1", model, ..Device::default() };
        // The device and its partitions (subdirectories with a `partition` file).
        let mut parts = vec![(name.to_string(), dir.clone())];
        for e in fs_err::read_dir(&dir)? {
            let e = e?;
            if e.path().join("partition").exists() {
                parts.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
        for (part, pdir) in &parts {
            let dev = fs_err::read_to_string(pdir.join("dev")).with_context(|| format!("{}/dev", pdir.display()))?;
            d.mounts.extend(mounts_of(&self.mountinfo, dev.trim()));
            if let Ok(hs) = fs_err::read_dir(pdir.join("holders")) {
                d.holders.extend(hs.filter_map(|h| h.ok()).map(|h| h.file_name().to_string_lossy().into_owned()));
            }
            let dev_path = format!("/dev/{part}");
            if self.swaps.lines().skip(1).any(|l| l.split_whitespace().next() == Some(dev_path.as_str())) {
                d.swaps.push(dev_path);
            }
        }
        Ok(d)
    }
}

/// Mount points of the device `major:minor` in a mountinfo table.
fn mounts_of(mountinfo: &str, dev: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&dev)).then(|| f.get(4).map(|m| m.to_string())).flatten()
        })
        .collect()
}

/// Why `d` must not be written: first what `--force` cannot override, then what it can.
pub fn refusals(d: &Device, force: bool) -> Vec<String> {
    let mut r = Vec::new();
    if d.mounts.iter().any(|m| m == "/") {
        r.push(format!("/dev/{} holds the running system (/ is mounted from it)", d.name));
    }
    if !d.mounts.is_empty() {
        r.push(format!("/dev/{} is mounted at {}: unmount it first", d.name, d.mounts.join(", ")));
    }
    if !d.holders.is_empty() {
        r.push(format!("/dev/{} is in use by {} (LVM, RAID or encryption)", d.name, d.holders.join(", ")));
    }
    if !d.swaps.is_empty() {
        r.push(format!("{} is in use as swap", d.swaps.join(", ")));
    }
    if !force {
        if !d.removable {
            r.push(format!(
                "/dev/{} is not a removable device (pass --force if it is the card, e.g. behind a USB reader that says otherwise)",
                d.name
            ));
        }
        if d.bytes > CARD_MAX_BYTES {
            r.push(format!(
                "/dev/{} is {:.0} GB, larger than any card this is for (pass --force to write it anyway)",
                d.name,
                d.bytes as f64 / 1e9
            ));
        }
    }
    r
}

/// Flashing options from the command line.
pub struct Options {
    pub yes: bool,
    pub force: bool,
}

/// Writes `img` (with its `.img.xz` and `.img.bmap` beside it) to `target`, after the checks.
pub fn run(sh: &Shell, img: &Path, target: &Path, opts: &Options) -> Result<()> {
    let (xz, bmap) = (crate::build::ship::xz_of(img), crate::build::ship::bmap_of(img));
    for f in [img, &xz, &bmap] {
        ensure!(f.exists(), "{} is missing: run `cargo xtask image` first", f.display());
    }
    let meta = fs_err::metadata(target).with_context(|| format!("{} does not exist", target.display()))?;
    let what = if meta.file_type().is_block_device() {
        let name = block_name(target, meta.rdev())?;
        let d = System::real()?.device(&name)?;
        let r = refusals(&d, opts.force);
        if !r.is_empty() {
            bail!("not writing {}:\n  {}", target.display(), r.join("\n  "));
        }
        let what = format!(
            "/dev/{} ({}, {:.1} GB{})",
            d.name,
            if d.model.is_empty() { "no model name" } else { &d.model },
            d.bytes as f64 / 1e9,
            if d.removable { ", removable" } else { "" }
        );
        ensure!(d.bytes >= fs_err::metadata(img)?.len(), "{what} is smaller than the image");
        what
    } else {
        ensure!(meta.is_file(), "{} is neither a block device nor a file", target.display());
        format!("the file {}", target.display())
    };
    let card = img.file_name().context("image has no name")?.to_string_lossy().into_owned();
    if !opts.yes {
        confirm(&format!("Write {card} to {what}? Everything on it is lost."))?;
    }
    proc::run(cmd!(sh, "bmaptool copy --bmap {bmap} {xz} {target}")).with_context(|| format!("writing {card} to {what}"))?;
    if meta.file_type().is_block_device() {
        // Read back from the card, not from this machine's cache of what was written.
        proc::read(cmd!(sh, "blockdev --flushbufs {target}"))?;
    }
    let ranges = mapped_ranges(&fs_err::read_to_string(&bmap).with_context(|| format!("reading {}", bmap.display()))?)
        .with_context(|| format!("{} is not a block map bmaptool wrote", bmap.display()))?;
    verify_ranges(target, &ranges).with_context(|| format!("reading back {card} from {what}"))?;
    println!("flash: wrote {card} to {what}; every mapped block read back and verified against {}", bmap.display());
    Ok(())
}

/// The kernel's name of a block device node (`/dev/disk/by-id/...` → `sdb`).
fn block_name(target: &Path, rdev: u64) -> Result<String> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let link =
        fs_err::read_link(format!("/sys/dev/block/{major}:{minor}")).with_context(|| format!("{}: no sysfs entry", target.display()))?;
    Ok(link.file_name().context("odd sysfs link")?.to_string_lossy().into_owned())
}

fn confirm(question: &str) -> Result<()> {
    ensure!(std::io::stdin().is_terminal(), "{question}\nnot asked: no terminal (pass --yes to write without asking)");
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    ensure!(matches!(answer.trim(), "y" | "Y" | "yes"), "not written");
    Ok(())
}

/// One run of mapped blocks from a bmap: byte offset, length, SHA-256.
#[derive(Debug, PartialEq)]
struct Mapped {
    offset: u64,
    len: u64,
    sha256: String,
}

/// The mapped ranges of a bmaptool block map (format 2: `<Range chksum="…">first-last</Range>`
/// in blocks of `<BlockSize>`).
fn mapped_ranges(xml: &str) -> Result<Vec<Mapped>> {
    let doc = roxmltree::Document::parse(xml)?;
    let text = |tag: &str| -> Result<String> {
        Ok(doc
            .descendants()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .with_context(|| format!("no <{tag}>"))?
            .trim()
            .to_string())
    };
    let block: u64 = text("BlockSize")?.parse()?;
    let image: u64 = text("ImageSize")?.parse()?;
    let mut out = Vec::new();
    for r in doc.descendants().filter(|n| n.has_tag_name("Range")) {
        let sha256 = r.attribute("chksum").context("a <Range> without chksum")?.to_string();
        let span = r.text().context("an empty <Range>")?.trim();
        let (first, last) = match span.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u64>()?, b.trim().parse::<u64>()?),
            None => (span.parse::<u64>()?, span.parse::<u64>()?),
        };
        let offset = first * block;
        // The last block may be cut short by the image's end.
        let len = ((last + 1) * block).min(image) - offset;
        out.push(Mapped { offset, len, sha256 });
    }
    Ok(out)
}

/// Reads every mapped range back from `target` and compares its SHA-256 with the map's (the
/// unmapped blocks of a reused card keep old bytes, which no filesystem on the card reads).
fn verify_ranges(target: &Path, ranges: &[Mapped]) -> Result<()> {
    use std::io::{Seek, SeekFrom};
    let total: u64 = ranges.iter().map(|r| r.len).sum();
    let bar = proc::progress_bar(total, "reading back");
    let mut f = fs_err::File::open(target).with_context(|| format!("opening {}", target.display()))?;
    for r in ranges {
        f.seek(SeekFrom::Start(r.offset))?;
        let mut h = Sha256::new();
        let n = std::io::copy(&mut bar.wrap_read((&mut f).take(r.len)), &mut h)?;
        let got = hex::encode(h.finalize());
        ensure!(n == r.len && got == r.sha256, "bytes {}..{}: SHA-256 {got}, the image has {}", r.offset, r.offset + r.len, r.sha256);
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/block with one disk `sdz` (8:240) of `bytes` and its partitions.
    fn fake_sys(dir: &Path, bytes: u64, removable: bool, parts: &[(&str, &str)]) {
        let _ = fs_err::remove_dir_all(dir);
        let disk = dir.join("sdz");
        fs_err::create_dir_all(disk.join("device")).unwrap();
        fs_err::create_dir_all(disk.join("holders")).unwrap();
        fs_err::write(disk.join("dev"), "8:240\n").unwrap();
        fs_err::write(disk.join("size"), format!("{}\n", bytes / 512)).unwrap();
        fs_err::write(disk.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        fs_err::write(disk.join("device/vendor"), "Generic \n").unwrap();
        fs_err::write(disk.join("device/model"), "SD/MMC Reader\n").unwrap();
        for (name, dev) in parts {
            let p = disk.join(name);
            fs_err::create_dir_all(p.join("holders")).unwrap();
            fs_err::write(p.join("partition"), "1\n").unwrap();
            fs_err::write(p.join("dev"), format!("{dev}\n")).unwrap();
            // /sys/class/block lists partitions too, as links into their disk's directory.
            std::os::unix::fs::symlink(format!("sdz/{name}"), dir.join(name)).unwrap();
        }
    }

    fn system(dir: &Path, mountinfo: &str, swaps: &str) -> System {
        System { sys_block: dir.to_path_buf(), mountinfo: mountinfo.into(), swaps: swaps.into() }
    }

    const ROOT_ELSEWHERE: &str = "22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n";

    #[test]
    fn a_free_removable_card_is_accepted_and_described() {
        let dir = std::env::temp_dir().join(format!("pi2pi-flash-ok-{}", std::process::id()));
        fake_sys(&dir, 32_000_000_000, true, &[("sdz1", "8:241"), ("sdz2", "8:242")]);
        let d = system(&dir, ROOT_ELSEWHERE, "Filename Type Size Used Priority\n").device("sdz").unwrap();
        assert_eq!((d.bytes, d.removable, d.model.as_str()), (32_000_000_000, true, "Generic SD/MMC Reader"));
        assert!(refusals(&d, false).is_empty(), "{:?}", refusals(&d, false));
        let _ = fs_err::remove_dir_all(&dir);
    }

    #[test]
    fn mounted_system_swap_held_partition_fixed_and_huge_devices_are_refused() {
        let dir = std::env::temp_dir().join(format!("pi2pi-flash-refuse-{}", std::process::id()));
        fake_sys(&dir, 1_000_000_000_000, false, &[("sdz1", "8:241"), ("sdz2", "8:242"), ("sdz3", "8:243")]);
        fs_err::create_dir_all(dir.join("sdz/sdz3/holders/dm-0")).unwrap();
        let mountinfo = "22 1 8:241 / / rw - ext4 /dev/sdz1 rw\n30 22 8:242 / /media/pi/CARD rw - vfat /dev/sdz2 rw\n";
        let swaps = "Filename Type Size Used Priority\n/dev/sdz2 partition 1 0 -2\n";
        let d = system(&dir, mountinfo, swaps).device("sdz").unwrap();
        let all = refusals(&d, false).join("\n");
        for want in [
            "holds the running system",
            "mounted at /, /media/pi/CARD",
            "in use by dm-0",
            "/dev/sdz2 is in use as swap",
            "not a removable device",
            "1000 GB",
        ] {
            assert!(all.contains(want), "missing `{want}` in:\n{all}");
        }
        // --force overrides only what is about the device's kind, never what is in use.
        let forced = refusals(&d, true).join("\n");
        assert!(!forced.contains("removable") && !forced.contains("1000 GB") && forced.contains("running system"), "{forced}");
        let e = system(&dir, ROOT_ELSEWHERE, "").device("sdz1").unwrap_err().to_string();
        assert!(e.contains("is a partition"), "{e}");
        let _ = fs_err::remove_dir_all(&dir);
    }

    /// A small sparse card (`rpa.img` with its .xz and .bmap) in `dir`; returns the image's bytes.
    fn small_card(sh: &Shell, dir: &Path) -> Vec<u8> {
        let _ = fs_err::remove_dir_all(dir);
        fs_err::create_dir_all(dir).unwrap();
        let img = dir.join("rpa.img");
        let mut data = vec![0u8; 6 << 20];
        data[..4096].fill(0xa5);
        data[5 << 20..(5 << 20) + 11].copy_from_slice(b"end of card");
        // Sparse, as the build writes cards: the zeros between are a hole, unmapped.
        let mut f = fs_err::File::create(&img).unwrap();
        f.write_all(&data[..4096]).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(5 << 20)).unwrap();
        f.write_all(&data[5 << 20..(5 << 20) + 11]).unwrap();
        f.set_len(data.len() as u64).unwrap();
        drop(f);
        crate::build::ship::package(sh, &img).unwrap();
        data
    }

    /// The real write: `run` to a file target, read back and compared; a card that does not
    /// keep what was written is caught.
    #[test]
    fn a_card_written_to_a_file_reads_back_identical() {
        if crate::proc::skip_test_without(&["xz", "bmaptool"], false, "the flash write test") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("pi2pi-flash-write-{}", std::process::id()));
        let sh = Shell::new().unwrap();
        let data = small_card(&sh, &dir);
        let img = dir.join("rpa.img");
        let target = dir.join("card");
        fs_err::write(&target, vec![0xffu8; 8 << 20]).unwrap(); // an old card's contents
        run(&sh, &img, &target, &Options { yes: true, force: false }).unwrap();
        let written = fs_err::read(&target).unwrap();
        assert_eq!(&written[..data.len()], &data[..], "the card holds the image");
        // A card that does not keep what was written is caught by the read-back.
        let ranges = mapped_ranges(&fs_err::read_to_string(dir.join("rpa.img.bmap")).unwrap()).unwrap();
        assert_eq!(ranges.iter().map(|r| (r.offset, r.len)).collect::<Vec<_>>(), [(0, 4096), (5 << 20, 4096)]);
        let mut bad = written.clone();
        bad[(5 << 20) + 3] ^= 1;
        fs_err::write(&target, bad).unwrap();
        let e = verify_ranges(&target, &ranges).unwrap_err().to_string();
        assert!(e.contains(&format!("bytes {}..", 5 << 20)), "{e}");
        let _ = fs_err::remove_dir_all(&dir);
    }

    /// The block-device path for real (root): a loop device with an old card's bytes. Loop
    /// devices say they are not removable, so it takes --force; the unmapped blocks keep their
    /// old bytes and the read-back passes on the mapped ones.
    #[test]
    fn a_card_written_to_a_loop_device_reads_back() {
        if crate::proc::skip_test_without(&["xz", "bmaptool"], true, "the loop-device flash test") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("pi2pi-flash-loop-{}", std::process::id()));
        let sh = Shell::new().unwrap();
        let data = small_card(&sh, &dir);
        let backing = dir.join("loop.bin");
        fs_err::write(&backing, vec![0xffu8; 8 << 20]).unwrap();
        let dev = cmd!(sh, "losetup --find --show {backing}").read().unwrap();
        let dev = PathBuf::from(dev.trim());
        let refused = run(&sh, &dir.join("rpa.img"), &dev, &Options { yes: true, force: false });
        let written = run(&sh, &dir.join("rpa.img"), &dev, &Options { yes: true, force: true });
        let _ = cmd!(sh, "losetup -d {dev}").run();
        let e = refused.unwrap_err().to_string();
        assert!(e.contains("not a removable device"), "{e}");
        written.unwrap();
        let card = fs_err::read(&backing).unwrap();
        assert_eq!(&card[..4096], &data[..4096]);
        assert_eq!(&card[5 << 20..(5 << 20) + 11], b"end of card");
        assert_eq!(card[8192], 0xff, "an unmapped block keeps the old card's byte");
        let _ = fs_err::remove_dir_all(&dir);
    }
}
