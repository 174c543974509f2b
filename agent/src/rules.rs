//! Rules and error reporting shared by every TOML file pi2pi reads: the agent's `agent.toml` and
//! xtask's `image.toml` (xtask depends on this crate). One definition each, so the card builder
//! and the agent on the card can never disagree about what a valid name or label is.
//!
//! Every error names the file, the line and the key, and says what would be valid, because the
//! person reading it is often on a serial console with no other clue.

use std::fmt;
use std::path::{Path, PathBuf};

use toml::Spanned;

#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// An error at byte `offset` of `text` (the line is computed from it).
    pub fn at(file: &Path, text: &str, offset: Option<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError { file: file.to_path_buf(), line: offset.map(|o| line_of(text, o)), key: key.to_string(), message: message.into() }
    }

    /// The file could not be read at all.
    pub fn unreadable(file: &Path, e: &std::io::Error) -> ConfigError {
        ConfigError::at(file, "", None, "", format!("cannot read: {e}"))
    }

    /// A TOML syntax or shape error (unknown or missing key, wrong type, a value that is not one
    /// of an enum's variants). The key is toml's when it names one, else the dotted key written
    /// at the error's position.
    pub fn from_toml(file: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
        let msg = e.message().trim().to_string();
        let offset = e.span().map(|s| s.start);
        let named = if msg.contains("field") { msg.split('`').nth(1).map(str::to_string) } else { None };
        let key = named.or_else(|| offset.and_then(|o| key_at(text, o))).unwrap_or_default();
        ConfigError::at(file, text, offset, &key, msg)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": key `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

pub fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// The dotted key (`agent.schedule`, `host[1].role`) whose `key = value` line holds `offset`,
/// from the table headers above it. Good enough for the flat files pi2pi reads; None elsewhere.
pub fn key_at(text: &str, offset: usize) -> Option<String> {
    let line_no = line_of(text, offset);
    let mut table = String::new();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if i + 1 == line_no {
            let (k, _) = l.split_once('=')?;
            let k = k.trim().trim_matches('"');
            return Some(if table.is_empty() { k.to_string() } else { format!("{table}.{k}") });
        }
        if let Some(name) = l.strip_prefix("[[").and_then(|r| r.split_once("]]")).map(|(n, _)| n.trim().to_string()) {
            let n = counts.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = l.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(n, _)| n.trim().to_string()) {
            table = name;
        }
    }
    None
}

/// One file being validated: errors point into its text.
pub struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    pub fn err<T, V>(&self, at: &Spanned<V>, key: &str, msg: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError::at(self.file, self.text, Some(at.span().start), key, msg))
    }

    /// An error where no value exists to point at (a missing optional key).
    pub fn err_at<T>(&self, offset: Option<usize>, key: &str, msg: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError::at(self.file, self.text, offset, key, msg))
    }

    pub fn check<V>(&self, ok: bool, at: &Spanned<V>, key: &str, msg: impl FnOnce() -> String) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            self.err(at, key, msg())
        }
    }

    /// Applies a rule (`Err` = what would be valid) to a spanned string.
    pub fn rule(&self, at: &Spanned<String>, key: &str, rule: fn(&str) -> Result<(), String>) -> Result<String, ConfigError> {
        match rule(at.get_ref()) {
            Ok(()) => Ok(at.get_ref().clone()),
            Err(why) => self.err(at, key, why),
        }
    }
}

/// A host name as the Pis use it (hostname, DNS label, ssh peer): 1-63 lower-case letters,
/// digits or '-', not starting or ending with '-'. Lower case only: `/etc/hostname`, dnsmasq and
/// known_hosts would each fold case differently.
pub fn host_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(())
        .ok_or_else(|| format!("`{s}` is not a host name: use 1-63 lower-case letters, digits or '-', not starting or ending with '-'"))
}

/// A FAT32 volume label the drive can be found by (`/dev/disk/by-label/<LABEL>`): 1-11 upper-case
/// ASCII letters, digits, '_' or '-'. Upper case because that is what Windows and macOS write
/// when a user names the drive, so a label typed in lower case here would never match; no spaces,
/// as the seed's users were told.
pub fn fat_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty() && s.len() <= 11 && s.bytes().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    ok.then_some(()).ok_or_else(|| format!("`{s}` is not a usable FAT32 label: 1-11 upper-case letters, digits, '_' or '-', no spaces"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert!(host_name("rpa").is_ok() && host_name("worker-12").is_ok());
        for bad in ["", "RPA", "-a", "a-", "a.b", "a b", &"a".repeat(64)] {
            assert!(host_name(bad).is_err(), "{bad}");
        }
        assert!(fat_label("PI2PI").is_ok() && fat_label("MY_DRIVE-1").is_ok());
        for bad in ["", "pi2pi", "MY DRIVE", "TWELVECHARSX", "É"] {
            assert!(fat_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_at_follows_tables_and_arrays_of_tables() {
        let t = "a = 1\n[agent]\nschedule = \"x\"\n[[host]]\nname = \"a\"\n[[host]]\nrole = \"y\"\n";
        assert_eq!(key_at(t, 0).as_deref(), Some("a"));
        assert_eq!(key_at(t, t.find("schedule").unwrap()).as_deref(), Some("agent.schedule"));
        assert_eq!(key_at(t, t.find("role").unwrap() + 8).as_deref(), Some("host[1].role"));
        assert_eq!(key_at(t, t.find("[agent]").unwrap()), None);
    }
}
