//! Stage 4: one host's root filesystem as a tarball: the base's entries in the base's order (the
//! boot partition's files taken out), then the layer's entries in path order. mke2fs reads the
//! tarball directly, so no staging directory, no root privileges and no mounts are involved, and
//! the result depends only on the two inputs.

use fs_err::File;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufReader, BufWriter, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::build::layers::{Entry, Kind, Layer};

/// What the root tarball holds, for sizing the filesystem.
pub struct Stats {
    pub entries: u64,
    /// Bytes of file data, each file rounded up to a 4 KiB block.
    pub blocks_bytes: u64,
}

/// Facts from the base needed before the layer can be built.
pub struct BaseFacts {
    pub boot: BTreeMap<String, Vec<u8>>,
    pub passwd: String,
    /// The kernel's modules in the base.
    pub modules: BTreeSet<String>,
    /// The drivers built into its kernel (`modules.builtin`).
    pub builtin: BTreeSet<String>,
    /// Its U-Boot builds (`usr/lib/u-boot/<config>/u-boot.bin` → bytes), for the boot partition.
    pub u_boot: BTreeMap<String, Vec<u8>>,
}

fn norm(p: &Path) -> String {
    let s = p.to_string_lossy();
    s.trim_start_matches("./").trim_end_matches('/').to_string()
}

const BOOT: &str = "boot/firmware/";

pub fn read_base_facts(base: &Path) -> Result<BaseFacts> {
    let mut ar =
        tar::Archive::new(BufReader::with_capacity(1 << 20, File::open(base).with_context(|| format!("opening {}", base.display()))?));
    let mut facts = BaseFacts {
        boot: BTreeMap::new(),
        passwd: String::new(),
        modules: BTreeSet::new(),
        builtin: BTreeSet::new(),
        u_boot: BTreeMap::new(),
    };
    for e in ar.entries()? {
        let mut e = e?;
        let path = norm(&e.path()?);
        if let Some(name) = path.strip_prefix(BOOT) {
            if e.header().entry_type().is_file() {
                let mut v = Vec::new();
                e.read_to_end(&mut v)?;
                facts.boot.insert(name.to_string(), v);
            }
        } else if path.starts_with("usr/lib/u-boot/") && path.ends_with("/u-boot.bin") && e.header().entry_type().is_file() {
            let mut v = Vec::new();
            e.read_to_end(&mut v)?;
            facts.u_boot.insert(path, v);
        } else if path == "etc/passwd" {
            e.read_to_string(&mut facts.passwd)?;
        } else if in_module_tree(&path) {
            if path.ends_with("/modules.builtin") {
                let mut text = String::new();
                e.read_to_string(&mut text)?;
                facts.builtin.extend(builtin(&text));
            } else if let Some(m) = module_name(&path) {
                facts.modules.insert(m);
            }
        }
    }
    if facts.passwd.is_empty() {
        bail!("{} has no etc/passwd: not a root filesystem tarball", base.display());
    }
    Ok(facts)
}

/// uid and gid of `user` from passwd(5) text.
pub fn user_ids(passwd: &str, user: &str) -> Result<(u32, u32)> {
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user))
        .and_then(|f| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))
        .with_context(|| format!("user `{user}` is not in the base's /etc/passwd"))
}

/// Writes the root tarball. `boot` is the boot partition's files as the base has them: the base's
/// `/boot/<name>` that is the same file as the boot partition's `<name>` (the kernel and initrd,
/// which raspi-firmware copies there) becomes a link to `firmware/<name>` instead of a second copy
/// (23 MB of the compressed card). The FAT is mounted at /boot/firmware, so /boot/vmlinuz-* still
/// exists for linux-version and update-initramfs; an upgrade writes real files again.
pub fn write(base: &Path, boot: &BTreeMap<String, Vec<u8>>, layer: &Layer, epoch: u64, out: &Path) -> Result<Stats> {
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, File::open(base)?));
    let mut b =
        tar::Builder::new(BufWriter::with_capacity(1 << 20, File::create(out).with_context(|| format!("creating {}", out.display()))?));
    b.mode(tar::HeaderMode::Complete);
    let mut stats = Stats { entries: 0, blocks_bytes: 0 };
    let mut pending = layer.root.clone();

    for e in ar.entries()? {
        let mut e = e?;
        let path = norm(&e.path()?);
        if path.starts_with(BOOT) {
            continue; // those files live on the FAT partition
        }
        let mut header = e.header().clone();
        if let Some(l) = pending.get(&path) {
            if l.kind == Kind::Dir && header.entry_type().is_dir() {
                // Existing directory: keep it where it is, with the layer's owner and mode.
                header.set_mode(l.mode);
                header.set_uid(l.uid as u64);
                header.set_gid(l.gid as u64);
                pending.remove(&path);
            } else {
                continue; // replaced by the layer below
            }
        }
        let xattrs: Vec<(String, Vec<u8>)> = match e.pax_extensions()? {
            Some(exts) => exts
                .filter_map(|x| x.ok())
                .filter_map(|x| Some((x.key().ok()?.to_string(), x.value_bytes().to_vec())))
                .filter(|(k, _)| k.starts_with("SCHILY.xattr.") || k.starts_with("LIBARCHIVE.xattr."))
                .collect(),
            None => Vec::new(),
        };
        if !xattrs.is_empty() {
            b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        let name = if path.is_empty() { "./".to_string() } else { path.clone() };
        stats.entries += 1;
        match header.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = e.link_name()?.context("link without a target")?.into_owned();
                b.append_link(&mut header, &name, target)?;
            }
            _ => match path.strip_prefix("boot/").filter(|n| !n.contains('/')).and_then(|n| Some((n, boot.get(n)?))) {
                Some((file, on_fat)) if header.entry_type().is_file() => {
                    let mut data = Vec::new();
                    e.read_to_end(&mut data)?;
                    if &data == on_fat {
                        header.set_entry_type(tar::EntryType::Symlink);
                        header.set_size(0);
                        header.set_mode(0o777);
                        b.append_link(&mut header, &name, format!("firmware/{file}"))?;
                    } else {
                        stats.blocks_bytes += (data.len() as u64).div_ceil(4096) * 4096;
                        b.append_data(&mut header, &name, data.as_slice())?;
                    }
                }
                _ => {
                    stats.blocks_bytes += header.size()?.div_ceil(4096) * 4096;
                    b.append_data(&mut header, &name, &mut e)?;
                }
            },
        }
    }
    for (path, entry) in &pending {
        stats.entries += 1;
        append(&mut b, path, entry, epoch, &mut stats)?;
    }
    b.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(stats)
}

fn append<W: std::io::Write>(b: &mut tar::Builder<W>, path: &str, e: &Entry, epoch: u64, stats: &mut Stats) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_mtime(epoch);
    h.set_uid(e.uid as u64);
    h.set_gid(e.gid as u64);
    h.set_mode(e.mode);
    match &e.kind {
        Kind::File(data) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            stats.blocks_bytes += (data.len() as u64).div_ceil(4096) * 4096;
            b.append_data(&mut h, path, data.as_slice())?;
        }
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            b.append_data(&mut h, path, std::io::empty())?;
        }
        Kind::Symlink(target) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            b.append_link(&mut h, path, target)?;
        }
    }
    Ok(())
}

/// A module's name from its path (`…/kernel/drivers/mmc/host/sdhci-iproc.ko.xz` → `sdhci_iproc`).
pub fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"].iter().find_map(|ext| file.strip_suffix(ext))?;
    Some(stem.replace('-', "_"))
}

/// Whether `path` (in the root tar, no leading `/`) is under a kernel's module tree.
pub fn in_module_tree(path: &str) -> bool {
    path.starts_with("usr/lib/modules/") || path.starts_with("lib/modules/")
}

/// The module names of `modules.builtin` (one path a line).
pub fn builtin(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().filter_map(module_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_replaces_adds_and_boot_files_move_out() {
        let t = tempfile_dir();
        let base = t.join("base.tar");
        {
            let mut b = tar::Builder::new(File::create(&base).unwrap());
            let mut add = |p: &str, data: &[u8], dir: bool| {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(if dir { tar::EntryType::Directory } else { tar::EntryType::Regular });
                h.set_size(data.len() as u64);
                h.set_mode(0o755);
                h.set_mtime(5);
                b.append_data(&mut h, p, data).unwrap();
            };
            add("./", b"", true);
            add("./etc/", b"", true);
            add("./etc/passwd", b"root:x:0:0::/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/bash\n", false);
            add("./etc/hostname", b"debian\n", false);
            add("./boot/", b"", true);
            add("./boot/vmlinuz-6.1", b"KERNEL", false);
            add("./boot/config-6.1", b"CONFIG", false);
            add("./boot/initrd.img-6.1", b"OLD INITRD", false);
            add("./boot/firmware/", b"", true);
            add("./boot/firmware/vmlinuz-6.1", b"KERNEL", false);
            add("./boot/firmware/initrd.img-6.1", b"NEW INITRD", false);
            b.finish().unwrap();
        }
        let facts = read_base_facts(&base).unwrap();
        assert_eq!(facts.boot.keys().collect::<Vec<_>>(), vec!["initrd.img-6.1", "vmlinuz-6.1"]);
        assert_eq!(user_ids(&facts.passwd, "pi").unwrap(), (1000, 1000));
        assert!(user_ids(&facts.passwd, "bob").is_err());

        let mut layer = Layer::default();
        layer.root.insert("etc/hostname".into(), Entry { kind: Kind::File(b"rpa\n".to_vec()), mode: 0o644, uid: 0, gid: 0 });
        layer.root.insert("etc/new".into(), Entry { kind: Kind::Symlink("/x".into()), mode: 0o777, uid: 0, gid: 0 });
        let out = t.join("root.tar");
        write(&base, &facts.boot, &layer, 99, &out).unwrap();
        let mut ar = tar::Archive::new(File::open(&out).unwrap());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = norm(&e.path().unwrap());
            let mut s = String::new();
            if e.header().entry_type().is_file() {
                e.read_to_string(&mut s).unwrap();
            } else if let Some(target) = e.link_name().unwrap() {
                s = format!("-> {}", target.display());
            }
            seen.push((p, s));
        }
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "",
                "etc",
                "etc/passwd",
                "boot",
                "boot/vmlinuz-6.1",
                "boot/config-6.1",
                "boot/initrd.img-6.1",
                "boot/firmware",
                "etc/hostname",
                "etc/new"
            ]
        );
        // The kernel, the same file as on the FAT, is linked to it; the initrd that differs is kept.
        assert_eq!(seen[4].1, "-> firmware/vmlinuz-6.1");
        assert_eq!(seen[5].1, "CONFIG");
        assert_eq!(seen[6].1, "OLD INITRD");
        assert_eq!(seen[8].1, "rpa\n");
        // Same inputs, same bytes.
        let again = t.join("again.tar");
        write(&base, &facts.boot, &layer, 99, &again).unwrap();
        assert_eq!(fs_err::read(&out).unwrap(), fs_err::read(&again).unwrap());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pi2pi-rootfs-test-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&d);
        fs_err::create_dir_all(&d).unwrap();
        d
    }
}
