//! Is the USB drive really there? Decided from /proc/self/mountinfo, the label and a write probe,
//! never from the directory existing: an unmounted drive leaves a bare directory on the SD card,
//! and writing into it is how the old rsync script filled people's SD cards.

use std::fs;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags};

use crate::config::DriveConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriveError {
    #[error("nothing is mounted at {0} (is the USB drive plugged in?)")]
    NotMounted(PathBuf),
    #[error("{mount} holds a {fstype} filesystem, expected one of {expected:?}")]
    WrongFs { mount: PathBuf, fstype: String, expected: Vec<String> },
    #[error("{0} is mounted read-only (run fsck on the drive, see README)")]
    ReadOnly(PathBuf),
    #[error("no drive labelled {label} is attached ({dir}/{label} is missing)")]
    NoLabel { label: String, dir: PathBuf },
    #[error("{mount} holds {device}, but the drive labelled {label} is {labelled}")]
    WrongDrive { mount: PathBuf, device: String, label: String, labelled: PathBuf },
    #[error("{path} is not writable: {err}")]
    NotWritable { path: PathBuf, err: String },
    #[error("cannot read {path}: {err}")]
    Io { path: PathBuf, err: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub options: Vec<String>,
    pub fstype: String,
    pub source: String,
}

/// Parses the text of /proc/self/mountinfo (see proc(5)).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let pre: Vec<&str> = pre.split(' ').collect();
            let mut post = post.split(' ');
            Some(MountEntry {
                mount_point: PathBuf::from(unescape(pre.get(4)?)),
                options: pre.get(5)?.split(',').map(str::to_string).collect(),
                fstype: post.next()?.to_string(),
                source: unescape(post.next()?),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks the drive; with `write_dir`, also proves that directory writable by creating and
/// removing a probe file in it (created first if missing — only once the mount is proven).
pub fn check(cfg: &DriveConfig, write_dir: Option<&Path>) -> Result<(), DriveError> {
    if cfg.require_mount {
        let info = fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| DriveError::Io { path: "/proc/self/mountinfo".into(), err: e.to_string() })?;
        check_mount(cfg, &parse_mountinfo(&info))?;
    }
    if let Some(dir) = write_dir {
        probe_writable(dir)?;
    }
    Ok(())
}

fn check_mount(cfg: &DriveConfig, mounts: &[MountEntry]) -> Result<(), DriveError> {
    // The last entry for a mount point is the one on top (mounts stack).
    let m =
        mounts.iter().rev().find(|m| m.mount_point == cfg.mount_point).ok_or_else(|| DriveError::NotMounted(cfg.mount_point.clone()))?;
    if !cfg.fstypes.contains(&m.fstype) {
        return Err(DriveError::WrongFs { mount: cfg.mount_point.clone(), fstype: m.fstype.clone(), expected: cfg.fstypes.clone() });
    }
    if m.options.iter().any(|o| o == "ro") {
        return Err(DriveError::ReadOnly(cfg.mount_point.clone()));
    }
    let link = cfg.by_label_dir.join(&cfg.label);
    let labelled = fs::canonicalize(&link).map_err(|_| DriveError::NoLabel { label: cfg.label.clone(), dir: cfg.by_label_dir.clone() })?;
    let source = fs::canonicalize(&m.source).unwrap_or_else(|_| PathBuf::from(&m.source));
    if source != labelled {
        return Err(DriveError::WrongDrive {
            mount: cfg.mount_point.clone(),
            device: m.source.clone(),
            label: cfg.label.clone(),
            labelled,
        });
    }
    Ok(())
}

/// One fixed name, so a probe left by a process killed mid-probe is replaced and removed by the
/// next one (a per-process name would be left behind for good).
pub const PROBE: &str = ".pi2pi-probe.part";

fn probe_writable(dir: &Path) -> Result<(), DriveError> {
    let err = |e: std::io::Error| DriveError::NotWritable { path: dir.to_path_buf(), err: e.to_string() };
    fs::create_dir_all(dir).map_err(err)?;
    let d = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(|e| err(e.into()))?;
    // Made new, through the directory and never through a link at its name: whatever is there
    // (a probe left by a killed process, or a symlink planted on a non-FAT drive) is unlinked,
    // never written through.
    let create = || {
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC;
        rustix::fs::openat(&d, PROBE, flags, Mode::from_raw_mode(0o644))
    };
    let probe = match create() {
        Err(rustix::io::Errno::EXIST) => {
            let _ = rustix::fs::unlinkat(&d, PROBE, AtFlags::empty());
            create()
        }
        made => made,
    };
    let probe = probe.map_err(|e| err(e.into()))?;
    rustix::io::write(&probe, b"probe").map_err(|e| err(e.into()))?;
    drop(probe);
    match rustix::fs::unlinkat(&d, PROBE, AtFlags::empty()) {
        // Another receiver (a second peer) probing at the same moment removed it first.
        Err(e) if e != rustix::io::Errno::NOENT => Err(err(e.into())),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/mmcblk0p2 rw
40 22 8:1 / /media/pi/PI2PI rw,nosuid,nodev,relatime shared:20 - vfat /dev/sda1 rw,fmask=0022
41 22 8:17 / /media/pi/with\\040space ro,relatime - vfat /dev/sdb1 ro
";

    fn cfg(mount: &str, by_label: &Path) -> DriveConfig {
        DriveConfig {
            label: "PI2PI".into(),
            mount_point: mount.into(),
            sending: PathBuf::from(mount).join("sending"),
            receiving: PathBuf::from(mount).join("receiving"),
            require_mount: true,
            fstypes: vec!["vfat".into()],
            by_label_dir: by_label.into(),
        }
    }

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let m = parse_mountinfo(INFO);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/media/pi/PI2PI"));
        assert_eq!((m[1].fstype.as_str(), m[1].source.as_str()), ("vfat", "/dev/sda1"));
        assert_eq!(m[2].mount_point, Path::new("/media/pi/with space"));
        assert!(m[2].options.contains(&"ro".to_string()));
    }

    #[test]
    fn bare_mountpoint_wrong_fs_readonly_and_wrong_label_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let m = parse_mountinfo(INFO);
        let c = cfg("/media/pi/OTHER", t.path());
        assert_eq!(check_mount(&c, &m), Err(DriveError::NotMounted("/media/pi/OTHER".into())));
        let c = cfg("/", t.path());
        assert!(matches!(check_mount(&c, &m), Err(DriveError::WrongFs { .. })));
        let c = cfg("/media/pi/with space", t.path());
        assert!(matches!(check_mount(&c, &m), Err(DriveError::ReadOnly(_))));
        let c = cfg("/media/pi/PI2PI", t.path());
        assert!(matches!(check_mount(&c, &m), Err(DriveError::NoLabel { .. })));
        // A label link that points at another device: a different drive is mounted there.
        let other = t.path().join("sdz1");
        fs::write(&other, b"").unwrap();
        std::os::unix::fs::symlink(&other, t.path().join("PI2PI")).unwrap();
        assert!(matches!(check_mount(&c, &m), Err(DriveError::WrongDrive { .. })));
    }

    #[test]
    fn a_probe_left_by_a_killed_process_is_cleaned_by_the_next() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join(PROBE), b"left by kill -9").unwrap();
        probe_writable(t.path()).unwrap();
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
    }

    #[test]
    fn matching_label_passes() {
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("sda1");
        fs::write(&dev, b"").unwrap();
        std::os::unix::fs::symlink(&dev, t.path().join("PI2PI")).unwrap();
        let info = INFO.replace("/dev/sda1", dev.to_str().unwrap());
        assert_eq!(check_mount(&cfg("/media/pi/PI2PI", t.path()), &parse_mountinfo(&info)), Ok(()));
    }
}
