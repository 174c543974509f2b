//! The USB drives the harness gives its guests: FAT32 images made and read from the host with
//! mtools (never mounted), and the test files that go on them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use xshell::Shell;

use crate::build::fat::Fat;

/// A test drive: 256 MiB, room for the test files both ways.
pub const DRIVE_KIB: u64 = 262_144;

/// Test files for one drive: names with spaces, UTF-8 and subdirectories, 0 bytes to tens of MB.
pub fn test_files(node: &str) -> Vec<(String, Vec<u8>)> {
    let gen = |seed: &str, len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = Sha256::digest(seed.as_bytes()).to_vec();
        while out.len() < len {
            block = Sha256::digest(&block).to_vec();
            out.extend_from_slice(&block);
        }
        out.truncate(len);
        out
    };
    vec![
        (format!("empty-{node}.txt"), Vec::new()),
        (format!("note from {node}.txt"), format!("hello from {node}\n").into_bytes()),
        (format!("photos/{node} ünïcødé 日本.jpg"), gen(node, 1 << 20)),
        (format!("videos/deep dir/{node}-clip.mp4"), gen(&format!("{node}v"), 24 << 20)),
        (format!("docs/{node}/report.bin"), gen(&format!("{node}d"), 65_537)),
    ]
}

/// A FAT32 USB drive image with the shared label, sending/ (pre-filled) and receiving/.
pub fn make_drive(sh: &Shell, path: &Path, label: &str, kib: u64, files: &[(String, Vec<u8>)], stage: &Path) -> Result<()> {
    let fat = Fat::create(sh, path, label, kib, None)?;
    fat.mkdirs(sh, &["sending", "receiving"])?;
    let _ = fs_err::remove_dir_all(stage);
    fs_err::create_dir_all(stage.join("sending"))?;
    for (rel, data) in files {
        let p = stage.join("sending").join(rel);
        fs_err::create_dir_all(p.parent().unwrap())?;
        fs_err::write(&p, data)?;
    }
    let entries: Vec<PathBuf> = fs_err::read_dir(stage.join("sending"))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    if entries.is_empty() {
        return Ok(());
    }
    fat.copy_in(sh, &entries, "sending/")
}

/// rel path → sha256 of every file under `dir` on a FAT image (read with mtools, from the host).
pub fn drive_tree(sh: &Shell, img: &Path, dir: &str, scratch: &Path) -> Result<BTreeMap<String, String>> {
    let _ = fs_err::remove_dir_all(scratch);
    fs_err::create_dir_all(scratch)?;
    Fat::file(img).copy_out(sh, dir, scratch)?;
    // mcopy puts the directory's last component in `scratch`, as cp -r would.
    let root = scratch.join(Path::new(dir).file_name().context("a directory path")?);
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(&root) {
        let e = e?;
        if e.file_type().is_file() {
            let rel = e.path().strip_prefix(&root)?.to_string_lossy().into_owned();
            out.insert(rel, hex::encode(Sha256::digest(fs_err::read(e.path())?)));
        }
    }
    Ok(out)
}
