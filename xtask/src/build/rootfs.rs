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
use crate::build::partitions::{self, Route, PERSISTED};

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

/// A tarball being written, and what it holds so far.
struct Tar {
    b: tar::Builder<BufWriter<File>>,
    stats: Stats,
}

impl Tar {
    fn create(path: &Path) -> Result<Tar> {
        let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
        b.mode(tar::HeaderMode::Complete);
        Ok(Tar { b, stats: Stats { entries: 0, blocks_bytes: 0 } })
    }

    fn finish(self) -> Result<Stats> {
        self.b.into_inner()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(self.stats)
    }
}

/// What [`write`] wrote: the root slot's tarball and the data partition's.
pub struct Split {
    pub root: Stats,
    pub data: Stats,
}

/// Writes the root tarball and the data partition's: the base's entries then the layer's, each
/// where `partitions::route` sends it. The boot partition's files are left out (they are on the
/// FAT); the base's /boot keeps its kernel and initrd, which U-Boot loads from the slot.
pub fn write(base: &Path, layer: &Layer, epoch: u64, root_out: &Path, data_out: &Path) -> Result<Split> {
    let mut ar = tar::Archive::new(BufReader::with_capacity(1 << 20, File::open(base)?));
    let mut root = Tar::create(root_out)?;
    let mut data = Tar::create(data_out)?;
    let top = Entry { kind: Kind::Dir, mode: 0o755, uid: 0, gid: 0 };
    append(&mut data, "./", &top, epoch)?;
    let mut pending = layer.root.clone();
    let mut persisted: BTreeSet<String> = BTreeSet::new();

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
        let name = if path.is_empty() { "./".to_string() } else { path.clone() };
        let route = partitions::route(&path);
        if header.entry_type() == tar::EntryType::Link {
            let target = norm(&e.link_name()?.context("link without a target")?);
            anyhow::ensure!(
                route == Route::Root && partitions::route(&target) == Route::Root,
                "the base hard-links /{path} to /{target}: a hard link cannot reach the data partition"
            );
        }
        let to = match route {
            Route::Root => &mut root,
            Route::Data(p) => {
                copy_entry(&mut data, &mut e, header, &p)?;
                continue;
            }
            Route::Both(p) => {
                anyhow::ensure!(
                    header.entry_type().is_dir(),
                    "the base's /{path} is kept on the data partition, so it must be a directory"
                );
                persisted.insert(path.clone());
                copy_entry(&mut data, &mut e, header.clone(), &p)?;
                &mut root
            }
        };
        copy_entry(to, &mut e, header, &name)?;
    }
    for (path, entry) in &pending {
        match partitions::route(path) {
            Route::Root => append(&mut root, path, entry, epoch)?,
            Route::Data(p) => append(&mut data, &p, entry, epoch)?,
            Route::Both(p) => {
                anyhow::ensure!(entry.kind == Kind::Dir, "/{path} is kept on the data partition, so the layer must make it a directory");
                persisted.insert(path.clone());
                append(&mut root, path, entry, epoch)?;
                append(&mut data, &p, entry, epoch)?;
            }
        }
    }
    // A persisted directory neither the base nor the layer has (dhcpcd's, before it first runs):
    // the mount point and its data directory, root's.
    for p in PERSISTED {
        let path = p.path.trim_start_matches('/');
        if !persisted.contains(path) {
            append(&mut root, path, &top, epoch)?;
            append(&mut data, p.name, &top, epoch)?;
        }
    }
    Ok(Split { root: root.finish()?, data: data.finish()? })
}

/// One entry of the base as `name` in `to`: its xattrs, its link or its data.
fn copy_entry<R: Read>(to: &mut Tar, e: &mut tar::Entry<R>, mut header: tar::Header, name: &str) -> Result<()> {
    let xattrs: Vec<(String, Vec<u8>)> = match e.pax_extensions()? {
        Some(exts) => exts
            .filter_map(|x| x.ok())
            .filter_map(|x| Some((x.key().ok()?.to_string(), x.value_bytes().to_vec())))
            .filter(|(k, _)| k.starts_with("SCHILY.xattr.") || k.starts_with("LIBARCHIVE.xattr."))
            .collect(),
        None => Vec::new(),
    };
    if !xattrs.is_empty() {
        to.b.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    to.stats.entries += 1;
    match header.entry_type() {
        tar::EntryType::Symlink => {
            let target = e.link_name()?.context("link without a target")?.into_owned();
            to.b.append_link(&mut header, name, target)?;
        }
        tar::EntryType::Link => {
            // Both names of a hard link stay in the root (checked by the caller).
            let target = e.link_name()?.context("link without a target")?.into_owned();
            to.b.append_link(&mut header, name, target)?;
        }
        _ => {
            to.stats.blocks_bytes += header.size()?.div_ceil(4096) * 4096;
            to.b.append_data(&mut header, name, e)?;
        }
    }
    Ok(())
}

/// A layer entry as `path` in `to`.
fn append(to: &mut Tar, path: &str, e: &Entry, epoch: u64) -> Result<()> {
    let (b, stats) = (&mut to.b, &mut to.stats);
    stats.entries += 1;
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

    /// (path, contents or link target) of every entry of a tarball, in order.
    fn entries(tar: &Path) -> Vec<(String, String)> {
        let mut ar = tar::Archive::new(File::open(tar).unwrap());
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
        seen
    }

    #[test]
    fn layer_replaces_adds_boot_files_move_out_and_state_moves_to_data() {
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
            add("./boot/firmware/", b"", true);
            add("./boot/firmware/vmlinuz-6.1", b"KERNEL", false);
            add("./var/", b"", true);
            add("./var/lib/", b"", true);
            add("./var/lib/misc/", b"", true);
            add("./var/lib/misc/dnsmasq.leases", b"LEASES", false);
            b.finish().unwrap();
        }
        let facts = read_base_facts(&base).unwrap();
        assert_eq!(facts.boot.keys().collect::<Vec<_>>(), vec!["vmlinuz-6.1"]);
        assert_eq!(user_ids(&facts.passwd, "pi").unwrap(), (1000, 1000));
        assert!(user_ids(&facts.passwd, "bob").is_err());

        let mut layer = Layer::default();
        layer.root.insert("etc/hostname".into(), Entry { kind: Kind::File(b"rpa\n".to_vec()), mode: 0o644, uid: 0, gid: 0 });
        layer.root.insert("etc/new".into(), Entry { kind: Kind::Symlink("/x".into()), mode: 0o777, uid: 0, gid: 0 });
        layer.root.insert("var/lib/pi2pi".into(), Entry { kind: Kind::Dir, mode: 0o755, uid: 1000, gid: 1000 });
        let (root, data) = (t.join("root.tar"), t.join("data.tar"));
        let split = write(&base, &layer, 99, &root, &data).unwrap();
        let seen = entries(&root);
        let paths: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "",
                "etc",
                "etc/passwd",
                "boot",
                "boot/vmlinuz-6.1",
                "boot/firmware",
                "var",
                "var/lib",
                "var/lib/misc",
                "etc/hostname",
                "etc/new",
                "var/lib/pi2pi",
                "var/lib/pi2pi-update",
                "var/lib/dhcpcd",
                "var/lib/chrony"
            ]
        );
        // The slot keeps its kernel (U-Boot loads it from there); the layer's file replaced the base's.
        assert_eq!(seen[4].1, "KERNEL");
        assert_eq!(seen[9].1, "rpa\n");
        // The persisted directories' contents are on the data partition, under their names; the
        // root keeps each directory, empty, as its mount point.
        let data_paths: Vec<(String, String)> = entries(&data);
        assert_eq!(
            data_paths,
            [
                ("", ""),
                ("misc", ""),
                ("misc/dnsmasq.leases", "LEASES"),
                ("pi2pi", ""),
                ("pi2pi-update", ""),
                ("dhcpcd", ""),
                ("chrony", "")
            ]
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .to_vec()
        );
        assert_eq!((split.root.entries, split.data.entries), (15, 7));
        // Same inputs, same bytes.
        let (root2, data2) = (t.join("root2.tar"), t.join("data2.tar"));
        write(&base, &layer, 99, &root2, &data2).unwrap();
        assert_eq!(fs_err::read(&root).unwrap(), fs_err::read(&root2).unwrap());
        assert_eq!(fs_err::read(&data).unwrap(), fs_err::read(&data2).unwrap());
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("pi2pi-rootfs-test-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&d);
        fs_err::create_dir_all(&d).unwrap();
        d
    }
}
