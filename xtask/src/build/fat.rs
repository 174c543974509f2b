//! FAT filesystems without mounting them: mkfs.vfat and mtools. The one place that sets mtools'
//! environment, so every caller gets the same behaviour:
//! - `MTOOLS_SKIP_CHECK=1`: images made by mkfs.vfat with an odd total size are still read;
//! - `TZ=UTC`: FAT stores local time, so file times written (and read back) in the builder's own
//!   time zone would make two builds in two zones differ;
//! - `LANG=C.UTF-8`: long names with non-ASCII letters come out as UTF-8.

use std::path::{Path, PathBuf};

use anyhow::Result;
use xshell::{cmd, Cmd, Shell};

use crate::proc;

fn env(c: Cmd<'_>) -> Cmd<'_> {
    c.env("MTOOLS_SKIP_CHECK", "1").env("TZ", "UTC").env("LANG", "C.UTF-8")
}

/// A FAT filesystem: a whole file, or a partition inside a disk image at a byte offset.
pub struct Fat {
    spec: String,
}

impl Fat {
    pub fn file(path: &Path) -> Fat {
        Fat { spec: path.display().to_string() }
    }

    pub fn partition(image: &Path, offset: u64) -> Fat {
        Fat { spec: format!("{}@@{offset}", image.display()) }
    }

    /// Makes a FAT32 filesystem of `kib` KiB in a new file. `volid` fixes the volume id, and
    /// then the filesystem's bytes depend only on the arguments (mkfs.vfat `--invariant`).
    pub fn create(sh: &Shell, path: &Path, label: &str, kib: u64, volid: Option<u32>) -> Result<Fat> {
        let _ = fs_err::remove_file(path);
        let kib = kib.to_string();
        match volid {
            Some(v) => {
                let v = format!("{v:08x}");
                proc::read(env(cmd!(sh, "mkfs.vfat --invariant -F 32 -n {label} -i {v} -C {path} {kib}")))?;
            }
            None => {
                proc::read(env(cmd!(sh, "mkfs.vfat -F 32 -n {label} -C {path} {kib}")))?;
            }
        }
        Ok(Fat::file(path))
    }

    pub fn mkdirs(&self, sh: &Shell, dirs: &[&str]) -> Result<()> {
        let img = &self.spec;
        let dirs: Vec<String> = dirs.iter().map(|d| format!("::/{d}")).collect();
        proc::read(env(cmd!(sh, "mmd -i {img} {dirs...}")))?;
        Ok(())
    }

    /// Copies host files or directory trees into `dest_dir` (`-m`: keeping their modification times).
    pub fn copy_in(&self, sh: &Shell, paths: &[PathBuf], dest_dir: &str) -> Result<()> {
        let img = &self.spec;
        let dest = format!("::/{}", dest_dir.trim_start_matches('/'));
        proc::read(env(cmd!(sh, "mcopy -s -m -o -i {img} {paths...} {dest}")))?;
        Ok(())
    }

    /// Copies a file or directory tree out of the filesystem to a host path.
    pub fn copy_out(&self, sh: &Shell, src: &str, dst: &Path) -> Result<()> {
        let img = &self.spec;
        let src = format!("::/{}", src.trim_start_matches('/'));
        proc::read(env(cmd!(sh, "mcopy -s -n -o -i {img} {src} {dst}")))?;
        Ok(())
    }

    /// Reads one file's bytes.
    pub fn read(&self, sh: &Shell, name: &str, scratch: &Path) -> Result<Vec<u8>> {
        self.copy_out(sh, name, scratch)?;
        Ok(fs_err::read(scratch)?)
    }
}
