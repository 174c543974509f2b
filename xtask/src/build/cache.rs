//! The cache directory outside the repository (base root filesystems, tools), and content hashes.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// `$PI2PI_CACHE`, else `$XDG_CACHE_HOME/pi2pi`, else `~/.cache/pi2pi`.
pub fn dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PI2PI_CACHE") {
        return d.into();
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache"));
    base.join("pi2pi")
}

/// A short hex digest of labelled parts; the labels keep ("ab","c") and ("a","bc") apart.
pub fn key(parts: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (label, data) in parts {
        h.update((label.len() as u64).to_le_bytes());
        h.update(label.as_bytes());
        h.update((data.len() as u64).to_le_bytes());
        h.update(data);
    }
    hex::encode(&h.finalize()[..10])
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}
