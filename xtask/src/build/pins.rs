//! Package pins: the lock file beside a config (`image.toml` → `image.lock`) holds one section per
//! base root filesystem the config builds (suite + architecture): every package with its version
//! and the archive's SHA-256 of its .deb, plus the base's SOURCE_DATE_EPOCH. The pins drive apt
//! (preferences at priority 1001) and a build fails if the archive no longer serves what they pin.
//! Sections of bases the config does not build now (another suite tried, say) are kept.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// One package as installed in a base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    pub version: String,
    pub arch: String,
    /// The archive's SHA-256 of the .deb.
    pub sha256: String,
}

/// The pins of one base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasePins {
    pub source_date_epoch: u64,
    pub suite: String,
    pub arch: String,
    pub packages: BTreeMap<String, Pinned>,
}

/// Which base a section pins: (suite, architecture).
pub type BaseId = (String, String);

/// A whole lock file: every base's pins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LockFile {
    pub bases: BTreeMap<BaseId, BasePins>,
}

const HEADER: &str = "# The exact Debian packages of each base root filesystem, written by `cargo xtask image`.\n\
                      # Commit it: the same lock (and keys) give the same images. Refresh: `cargo xtask image <host> --update-lock`.\n";

impl LockFile {
    /// The lock at `path`; an absent file is an empty lock.
    pub fn read(path: &Path) -> Result<LockFile> {
        match fs_err::read_to_string(path) {
            Ok(text) => LockFile::parse(&text).with_context(|| format!("reading {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Sections start at `suite <suite> <arch>`; `source-date-epoch` may come before or after it.
    pub fn parse(text: &str) -> Result<LockFile> {
        let mut bases = BTreeMap::new();
        let mut cur: Option<BasePins> = None;
        let mut epoch: Option<u64> = None;
        let finish = |cur: Option<BasePins>, bases: &mut BTreeMap<BaseId, BasePins>| -> Result<()> {
            if let Some(b) = cur {
                if b.source_date_epoch == 0 {
                    bail!("section `suite {} {}` has no `source-date-epoch` line", b.suite, b.arch);
                }
                bases.insert((b.suite.clone(), b.arch.clone()), b);
            }
            Ok(())
        };
        for (n, line) in text.lines().enumerate() {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [] => {}
                [c, ..] if c.starts_with('#') => {}
                ["source-date-epoch", e] => {
                    let e = e.parse().with_context(|| format!("line {}: bad epoch", n + 1))?;
                    match cur.as_mut() {
                        Some(b) if b.source_date_epoch == 0 => b.source_date_epoch = e,
                        _ => epoch = Some(e),
                    }
                }
                ["suite", s, a] => {
                    finish(cur.take(), &mut bases)?;
                    let source_date_epoch = epoch.take().unwrap_or(0);
                    cur = Some(BasePins { source_date_epoch, suite: s.to_string(), arch: a.to_string(), packages: BTreeMap::new() });
                }
                [p, v, a, h] if h.len() == 64 => {
                    let b = cur.as_mut().with_context(|| format!("line {}: package before any `suite` line", n + 1))?;
                    b.packages.insert(p.to_string(), Pinned { version: v.to_string(), arch: a.to_string(), sha256: h.to_string() });
                }
                _ => bail!("line {}: expected `<package> <version> <arch> <sha256>`, got `{line}`", n + 1),
            }
        }
        finish(cur, &mut bases)?;
        Ok(LockFile { bases })
    }

    pub fn render(&self) -> String {
        let mut s = String::from(HEADER);
        for b in self.bases.values() {
            s.push('\n');
            s += &b.render_section();
        }
        s
    }

    pub fn get(&self, suite: &str, arch: &str) -> Option<&BasePins> {
        self.bases.get(&(suite.to_string(), arch.to_string()))
    }

    pub fn put(&mut self, pins: BasePins) {
        self.bases.insert((pins.suite.clone(), pins.arch.clone()), pins);
    }
}

impl BasePins {
    /// This base's section alone (also what its cache key hashes: the file's header may change).
    pub fn render_section(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "suite {} {}", self.suite, self.arch);
        let _ = writeln!(s, "source-date-epoch {}", self.source_date_epoch);
        for (p, x) in &self.packages {
            let _ = writeln!(s, "{p} {} {} {}", x.version, x.arch, x.sha256);
        }
        s
    }

    /// This base alone as a lock file's text (what the cache keeps beside a base tarball).
    pub fn render(&self) -> String {
        format!("{HEADER}\n{}", self.render_section())
    }

    /// Reads a file holding exactly this one base's section.
    pub fn read_single(path: &Path) -> Result<BasePins> {
        let lock = LockFile::read(path)?;
        let mut it = lock.bases.into_values();
        match (it.next(), it.next()) {
            (Some(b), None) => Ok(b),
            _ => bail!("{} should pin exactly one base", path.display()),
        }
    }

    /// apt preferences that make apt choose exactly the pinned versions.
    pub fn apt_preferences(&self) -> String {
        let mut s = String::new();
        for (p, x) in &self.packages {
            let _ = write!(s, "Package: {p}\nPin: version {}\nPin-Priority: 1001\n\n", x.version);
        }
        s
    }

    /// Pins from dpkg's status file and the archive's Packages indices.
    pub fn from_build(epoch: u64, suite: &str, arch: &str, status: &str, packages_index: &str) -> Result<BasePins> {
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
            packages.insert(p.clone(), Pinned { version: v.clone(), arch: a.clone(), sha256: h.clone() });
        }
        Ok(BasePins { source_date_epoch: epoch, suite: suite.into(), arch: arch.into(), packages })
    }

    /// What differs between the pins we asked for and what the build installed.
    pub fn drift(&self, built: &BasePins) -> Vec<String> {
        let mut out = Vec::new();
        for (p, want) in &self.packages {
            match built.packages.get(p) {
                Some(got) if (&got.version, &got.arch) == (&want.version, &want.arch) && got.sha256 != want.sha256 => {
                    out.push(format!("{p} {}: the archive's .deb has SHA-256 {}, the lock says {}", want.version, got.sha256, want.sha256))
                }
                Some(got) if got.version != want.version => {
                    out.push(format!("{p}: locked {}, the archive gave {}", want.version, got.version))
                }
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
    fn pins_are_built_from_installed_packages_and_round_trip() {
        let l = BasePins::from_build(1700000000, "trixie", "arm64", STATUS, &index()).unwrap();
        assert_eq!(l.packages.len(), 2);
        assert_eq!(l.packages["a"], Pinned { version: "1.0".into(), arch: "arm64".into(), sha256: "1".repeat(64) });
        assert_eq!(LockFile::parse(&l.render()).unwrap().get("trixie", "arm64"), Some(&l));
        assert!(l.apt_preferences().contains("Package: a\nPin: version 1.0\nPin-Priority: 1001"));
    }

    #[test]
    fn a_lock_file_keeps_one_section_per_base() {
        let a = BasePins::from_build(5, "trixie", "arm64", STATUS, &index()).unwrap();
        let b = BasePins { suite: "bookworm".into(), source_date_epoch: 7, ..a.clone() };
        let mut lock = LockFile::default();
        lock.put(a.clone());
        lock.put(b.clone());
        let back = LockFile::parse(&lock.render()).unwrap();
        assert_eq!(back, lock);
        assert_eq!(back.get("bookworm", "arm64").unwrap().source_date_epoch, 7);
        // Replacing one section leaves the other alone.
        lock.put(BasePins { source_date_epoch: 9, ..a });
        assert_eq!(lock.get("bookworm", "arm64"), Some(&b));
        assert_eq!(lock.get("trixie", "arm64").unwrap().source_date_epoch, 9);
    }

    #[test]
    fn the_single_section_format_of_earlier_releases_still_reads() {
        let old = format!("# old\nsource-date-epoch 1700\nsuite bookworm arm64\na 1.0 arm64 {}\n", "1".repeat(64));
        let l = LockFile::parse(&old).unwrap();
        assert_eq!(l.get("bookworm", "arm64").unwrap().source_date_epoch, 1700);
        assert!(LockFile::parse("suite trixie arm64\n").unwrap_err().to_string().contains("source-date-epoch"));
        assert!(LockFile::parse(&format!("a 1.0 arm64 {}\n", "1".repeat(64))).is_err());
    }

    #[test]
    fn drift_names_the_package() {
        let l = BasePins::from_build(1, "s", "arm64", STATUS, &index()).unwrap();
        let mut other = l.clone();
        other.packages.get_mut("a").unwrap().version = "1.1".into();
        assert_eq!(l.drift(&other), vec!["a: locked 1.0, the archive gave 1.1".to_string()]);
        other.packages.get_mut("a").unwrap().version = "1.0".into();
        other.packages.get_mut("a").unwrap().sha256 = "f".repeat(64);
        assert!(l.drift(&other)[0].contains("SHA-256"));
        assert!(BasePins::from_build(1, "s", "arm64", STATUS, "").is_err());
    }
}
