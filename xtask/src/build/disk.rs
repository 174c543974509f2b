//! Stage 5: the card image: MBR with a fixed disk id, a FAT32 boot partition (mkfs.vfat and
//! mtools, no mount), two root slots (slot A's ext4 made by mke2fs from the root tarball, slot B
//! empty until an update writes it) and the data partition (ext4 from its tarball), with every
//! identifier and time fixed so the same inputs give the same bytes. `partitions` says which is
//! which.

use fs_err::{File, OpenOptions};
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::build::fat::Fat;

use crate::build::tools::Mke2fs;

pub const SECTOR: u64 = 512;
/// First partition at 4 MiB, as Raspberry Pi OS does (erase-block friendly).
pub const FIRST_LBA: u64 = 8192;
const MIB: u64 = 1 << 20;

/// Deterministic identifiers for one host: same host name, same ids (a re-flashed card is the
/// same card to the Pi and to its peer).
pub struct Ids {
    pub disk_id: u32,
    pub boot_volid: u32,
    pub root_uuid: String,
    pub data_uuid: String,
}

impl Ids {
    pub fn for_host(host: &str) -> Ids {
        let h = |tag: &str| crate::build::cache::sha256_hex(format!("pi2pi:{tag}:{host}").as_bytes());
        let uuid = |tag: &str| {
            let u = h(tag);
            format!("{}-{}-4{}-8{}-{}", &u[..8], &u[8..12], &u[13..16], &u[17..20], &u[20..32])
        };
        Ids {
            disk_id: u32::from_str_radix(&h("disk-id")[..8], 16).unwrap(),
            boot_volid: u32::from_str_radix(&h("boot-volid")[..8], 16).unwrap(),
            root_uuid: uuid("root-uuid"),
            data_uuid: uuid("data-uuid"),
        }
    }
}

pub fn boot_fs(sh: &Shell, files: &BTreeMap<String, Vec<u8>>, mib: u64, volid: u32, epoch: u64, work: &Path, out: &Path) -> Result<()> {
    let stage = work.join("boot-files");
    let _ = fs_err::remove_dir_all(&stage);
    fs_err::create_dir_all(&stage)?;
    let total: u64 = files.values().map(|v| v.len() as u64).sum();
    if total + 4 * MIB > mib * MIB {
        bail!("the boot files need {} MiB; raise image.boot_mib (now {mib})", total / MIB + 5);
    }
    // mcopy -m keeps these times: the only timestamps on the partition.
    let at_epoch = |p: &Path| -> Result<()> { Ok(File::open(p)?.set_modified(UNIX_EPOCH + Duration::from_secs(epoch))?) };
    let mut dirs = std::collections::BTreeSet::new();
    for (name, data) in files {
        // Subdirectories (the firmware's overlays/) are made as the files need them.
        anyhow::ensure!(!name.starts_with('/') && !name.split('/').any(|c| c.is_empty() || c == ".."), "boot file `{name}`: bad path");
        let p = stage.join(name);
        for d in p.parent().into_iter().flat_map(|d| d.ancestors()).take_while(|d| *d != stage) {
            dirs.insert(d.to_path_buf());
        }
        fs_err::create_dir_all(p.parent().unwrap_or(&stage))?;
        let f = File::create(&p)?;
        (&f).write_all(data)?;
        drop(f);
        at_epoch(&p)?;
    }
    // Deepest first, so making a child does not move its parent's time again.
    for d in dirs.iter().rev() {
        at_epoch(d)?;
    }
    let paths: Vec<PathBuf> = fs_err::read_dir(&stage)?.map(|e| e.map(|e| e.path())).collect::<std::io::Result<_>>()?;
    let mut paths = paths;
    paths.sort();
    Fat::create(sh, out, "BOOT", mib * 1024, Some(volid))?.copy_in(sh, &paths, "/")
}

/// One ext4 filesystem made from a tarball.
pub struct Ext4<'a> {
    pub tar: &'a Path,
    pub stats: &'a crate::build::rootfs::Stats,
    /// Free space it gets beyond what the tarball needs.
    pub headroom_mib: u64,
    pub label: &'a str,
    pub uuid: &'a str,
}

/// ext4 from the tarball, sized from its contents plus headroom; returns its size.
pub fn ext4(sh: &Shell, m: &Mke2fs, fs: &Ext4, epoch: u64, out: &Path) -> Result<u64> {
    let Ext4 { tar, stats, headroom_mib, label, uuid } = *fs;
    // Data blocks, per-entry metadata (inode, directory entry), journal and bitmaps, 5% slack;
    // the headroom is the free space it has until first boot grows it.
    let mut bytes = (stats.blocks_bytes + stats.entries * 512 + 40 * MIB) * 21 / 20 + headroom_mib * MIB;
    bytes = bytes.div_ceil(MIB) * MIB;
    for _ in 0..5 {
        let _ = fs_err::remove_file(out);
        File::create(out)?.set_len(bytes)?;
        let prog = &m.program;
        let extended = format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0");
        let mut c = cmd!(sh, "{prog} -q -F -t ext4 -b 4096 -L {label} -U {uuid} -E {extended} -d {tar} {out}")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .quiet()
            .ignore_status();
        if let Some(l) = &m.ld_library_path {
            c = c.env("LD_LIBRARY_PATH", l);
        }
        let o = c.output()?;
        if o.status.success() {
            return Ok(bytes);
        }
        let err = String::from_utf8_lossy(&o.stderr);
        // Only "the estimate was too small" is worth a bigger retry: mke2fs -d says it ran out of
        // blocks or inodes ("Could not allocate block/inode in ext2 filesystem") or space.
        let too_small = ["Could not allocate block", "Could not allocate inode", "No space left on device"].iter().any(|m| err.contains(m));
        if !too_small {
            bail!("mke2fs failed: {err}");
        }
        bytes = (bytes * 5 / 4).div_ceil(MIB) * MIB; // estimate too small: retry, deterministically
    }
    bail!("mke2fs could not fit {} into {bytes} bytes", tar.display())
}

/// A partition of the card: its type, its size, and the filesystem image it starts with (none:
/// left empty, a hole in the image file).
pub struct Part<'a> {
    pub sys: u8,
    pub bytes: u64,
    pub image: Option<&'a Path>,
}

/// MBR types: FAT32 (LBA), what the Pi's boot ROM looks for; Linux.
pub const FAT32: u8 = 0x0c;
pub const LINUX: u8 = 0x83;

/// Writes the MBR and the partitions, in order from 4 MiB, into `out` (the first is marked
/// active); returns the image size. Zero runs are left as holes, so the file is sparse on disk
/// while still being a plain raw image.
pub fn assemble(disk_id: u32, parts: &[Part], out: &Path) -> Result<u64> {
    anyhow::ensure!((1..=4).contains(&parts.len()), "an MBR holds 1 to 4 primary partitions, not {}", parts.len());
    let mut lba = FIRST_LBA;
    let mut placed = Vec::new();
    for p in parts {
        anyhow::ensure!(p.bytes % MIB == 0, "partition sizes are whole MiB");
        if let Some(img) = p.image {
            let len = fs_err::metadata(img)?.len();
            anyhow::ensure!(len <= p.bytes, "{} ({len} bytes) does not fit its {}-byte partition", img.display(), p.bytes);
        }
        placed.push((lba, p));
        lba += p.bytes / SECTOR;
    }
    let total = lba * SECTOR;
    let _ = fs_err::remove_file(out);
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(out)?;
    f.set_len(total)?;
    let mut mbr = mbrman::MBR::new_from(&mut f, SECTOR as u32, disk_id.to_le_bytes()).context("creating the MBR")?;
    for (i, (start, p)) in placed.iter().enumerate() {
        mbr[i + 1] = mbrman::MBRPartitionEntry {
            boot: if i == 0 { mbrman::BOOT_ACTIVE } else { mbrman::BOOT_INACTIVE },
            first_chs: mbrman::CHS::empty(),
            sys: p.sys,
            last_chs: mbrman::CHS::empty(),
            starting_lba: *start as u32,
            sectors: (p.bytes / SECTOR) as u32,
        };
    }
    mbr.write_into(&mut f).context("writing the MBR")?;
    for (start, p) in &placed {
        if let Some(img) = p.image {
            copy_sparse(img, &mut f, start * SECTOR)?;
        }
    }
    f.sync_all()?;
    Ok(total)
}

fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> Result<()> {
    let mut s = File::open(src)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = offset;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(64 * 1024) {
            if chunk.iter().any(|&b| b != 0) {
                dst.seek(SeekFrom::Start(at))?;
                dst.write_all(chunk)?;
            }
            at += chunk.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct_per_host() {
        let (a, b) = (Ids::for_host("rpa"), Ids::for_host("rpb"));
        assert_eq!(a.root_uuid, Ids::for_host("rpa").root_uuid);
        assert_ne!(a.disk_id, b.disk_id);
        assert_eq!(a.root_uuid.len(), 36);
        assert_eq!(&a.root_uuid[14..15], "4");
    }
}
