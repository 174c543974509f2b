//! image.lock: every package in the base root filesystem with its version and the archive's
//! SHA-256 of its .deb, plus the SOURCE_DATE_EPOCH of the build. The lock pins apt (preferences
//! at priority 1001) and the build fails if the archive no longer serves what it pins.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub source_date_epoch: u64,
    pub suite: String,
    pub arch: String,
    /// package name → (version, architecture, sha256 of the .deb)
    pub packages: BTreeMap<String, (String, String, String)>,
}

impl Lock {
    pub fn read(path: &Path) -> Result<Option<Lock>> {
        let Ok(text) = std::fs::read_to_string(path) else { return Ok(None) };
        Lock::parse(&text).map(Some).with_context(|| format!("reading {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Lock> {
        let mut lock = Lock { source_date_epoch: 0, suite: String::new(), arch: String::new(), packages: BTreeMap::new() };
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["source-date-epoch", e] => lock.source_date_epoch = e.parse().with_context(|| format!("line {}: bad epoch", n + 1))?,
                ["suite", s, a] => (lock.suite, lock.arch) = (s.to_string(), a.to_string()),
                [p, v, a, h] if h.len() == 64 => {
                    lock.packages.insert(p.to_string(), (v.to_string(), a.to_string(), h.to_string()));
                }
                _ => bail!("line {}: expected `<package> <version> <arch> <sha256>`, got `{line}`", n + 1),
            }
        }
        if lock.source_date_epoch == 0 {
            bail!("no `source-date-epoch` line");
        }
        Ok(lock)
    }

    pub fn render(&self) -> String {
        let mut s = String::from(
            "# image.lock: the exact Debian packages of the base root filesystem, written by `cargo xtask image`.\n\
             # Commit it: the same lock (and keys) give the same images. Refresh: `cargo xtask image <host> --update-lock`.\n",
        );
        let _ = writeln!(s, "source-date-epoch {}", self.source_date_epoch);
        let _ = writeln!(s, "suite {} {}", self.suite, self.arch);
        for (p, (v, a, h)) in &self.packages {
            let _ = writeln!(s, "{p} {v} {a} {h}");
        }
        s
    }

    /// apt preferences that make apt choose exactly the locked versions.
    pub fn apt_preferences(&self) -> String {
        let mut s = String::new();
        for (p, (v, _, _)) in &self.packages {
            let _ = write!(s, "Package: {p}\nPin: version {v}\nPin-Priority: 1001\n\n");
        }
        s
    }

    /// Builds a lock from dpkg's status file and the archive's Packages indices.
    pub fn from_build(epoch: u64, suite: &str, arch: &str, status: &str, packages_index: &str) -> Result<Lock> {
        let mut hashes: BTreeMap<(String, String, String), String> = BTreeMap::new();
        for para in deb822(packages_index) {
            if let (Some(p), Some(v), Some(a), Some(h)) =
                (para.get("Package"), para.get("Version"), para.get("Architecture"), para.get("SHA256"))
            {
                hashes.insert((p.clone(), v.clone(), a.clone()), h.clone());
            }
        }
        let mut packages = BTreeMap::new();
        for para in deb822(status) {
            if !para.get("Status").is_some_and(|s| s.ends_with(" installed")) {
                continue;
            }
            let (Some(p), Some(v), Some(a)) = (para.get("Package"), para.get("Version"), para.get("Architecture")) else { continue };
            let h = hashes
                .get(&(p.clone(), v.clone(), a.clone()))
                .with_context(|| format!("{p} {v} ({a}) is installed but not in the archive's index"))?;
            packages.insert(p.clone(), (v.clone(), a.clone(), h.clone()));
        }
        Ok(Lock { source_date_epoch: epoch, suite: suite.into(), arch: arch.into(), packages })
    }

    /// What differs between the lock we asked for and what the build installed.
    pub fn drift(&self, built: &Lock) -> Vec<String> {
        let mut out = Vec::new();
        for (p, (v, a, h)) in &self.packages {
            match built.packages.get(p) {
                Some((bv, ba, bh)) if (bv, ba) == (v, a) && bh != h => {
                    out.push(format!("{p} {v}: the archive's .deb has SHA-256 {bh}, the lock says {h}"))
                }
                Some((bv, _, _)) if bv != v => out.push(format!("{p}: locked {v}, the archive gave {bv}")),
                _ => {}
            }
        }
        out
    }
}

/// Paragraphs of a Debian control-style file (continuation lines folded away).
pub fn deb822(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut cur = BTreeMap::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if !line.starts_with([' ', '\t']) {
            if let Some((k, v)) = line.split_once(':') {
                cur.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Package: a\nStatus: install ok installed\nVersion: 1.0\nArchitecture: arm64\nDescription: x\n more\n\n\
                          Package: b\nStatus: deinstall ok config-files\nVersion: 2\nArchitecture: all\n\n\
                          Package: c\nStatus: install ok installed\nVersion: 3\nArchitecture: all\n";
    fn index() -> String {
        format!(
            "Package: a\nVersion: 1.0\nArchitecture: arm64\nSHA256: {}\n\nPackage: a\nVersion: 0.9\nArchitecture: arm64\nSHA256: {}\n\n\
             Package: c\nVersion: 3\nArchitecture: all\nSHA256: {}\n",
            "1".repeat(64),
            "9".repeat(64),
            "3".repeat(64)
        )
    }

    #[test]
    fn lock_is_built_from_installed_packages_and_round_trips() {
        let l = Lock::from_build(1700000000, "bookworm", "arm64", STATUS, &index()).unwrap();
        assert_eq!(l.packages.len(), 2);
        assert_eq!(l.packages["a"], ("1.0".into(), "arm64".into(), "1".repeat(64)));
        assert_eq!(Lock::parse(&l.render()).unwrap(), l);
        assert!(l.apt_preferences().contains("Package: a\nPin: version 1.0\nPin-Priority: 1001"));
    }

    #[test]
    fn drift_names_the_package() {
        let l = Lock::from_build(1, "s", "arm64", STATUS, &index()).unwrap();
        let mut other = l.clone();
        other.packages.get_mut("a").unwrap().0 = "1.1".into();
        assert_eq!(l.drift(&other), vec!["a: locked 1.0, the archive gave 1.1".to_string()]);
        other.packages.get_mut("a").unwrap().0 = "1.0".into();
        other.packages.get_mut("a").unwrap().2 = "f".repeat(64);
        assert!(l.drift(&other)[0].contains("SHA-256"));
        assert!(Lock::from_build(1, "s", "arm64", STATUS, "").is_err());
    }
}
