//! Small filesystem helpers shared by the sender and the receiver.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// fsync a directory so that a rename or create inside it survives a power cut.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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

pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error() || code == rustix::io::Errno::DQUOT.raw_os_error())
}
