//! Small filesystem helpers shared by the sender and the receiver.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// fsync a directory so that a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` whole: `data` written to a temporary beside it and synced, renamed over it, the
/// directory synced. After a power cut the file is the old one or the new one, never a part.
pub fn replace_file(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".new");
    let tmp = dir.join(name);
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// SHA-256 of the first `limit` bytes of a reader (all of it with `u64::MAX`), and how many were read.
pub fn hash_reader(r: &mut impl Read, limit: u64) -> io::Result<(Sha256, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut done = 0u64;
    while done < limit {
        let want = buf.len().min((limit - done).min(usize::MAX as u64) as usize);
        let n = r.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        done += n as u64;
    }
    Ok((h, done))
}

pub fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let (h, n) = hash_reader(&mut File::open(path)?, u64::MAX)?;
    Ok((h.finalize().into(), n))
}

/// Modification time in ns since the epoch (saturating: a file dated past 2262 must not overflow).
pub fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec())
}

/// Status-change time in ns since the epoch; any write changes it and `touch` cannot set it back.
pub fn ctime_ns(md: &Metadata) -> i64 {
    md.ctime().saturating_mul(1_000_000_000).saturating_add(md.ctime_nsec())
}

pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
}
