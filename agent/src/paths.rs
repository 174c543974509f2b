//! Which relative paths may cross the wire and land on a FAT32 drive.
//!
//! The sender checks before sending (so a bad name is reported once, naming the file, instead of
//! failing at the far end every pass); the receiver checks again because it must not trust the
//! sender: its only authority is "inside receiving/".

use std::collections::HashMap;

/// FAT32 cannot hold a file of 4 GiB or more.
pub const FAT32_MAX_FILE: u64 = (1 << 32) - 1;
/// Long file names are at most 255 UTF-16 code units per component.
const MAX_COMPONENT_UTF16: usize = 255;
/// A whole relative path: Linux's PATH_MAX less its NUL. A receiver opens one component at a
/// time, so this is no limit of its own syscalls: it bounds what one offer can make it hold and
/// create, and no person's tree comes near it.
pub const MAX_PATH_BYTES: usize = 4095;
/// Directories deep: likewise far beyond any real tree, and it bounds the directories one offer
/// can create (a 4 KB path of one-letter names was a tree 2,028 deep).
pub const MAX_DEPTH: usize = 64;
/// Temporary files the receiver writes are hidden and carry this marker; the sender never sends them.
pub const TEMP_PREFIX: &str = ".pi2pi-";
pub const TEMP_SUFFIX: &str = ".part";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("absolute paths are not allowed")]
    Absolute,
    #[error("component `{0}` is not allowed ('.', '..' and empty components are refused)")]
    DotOrEmpty(String),
    #[error("`{0}` contains {1}, which FAT32 cannot store (not allowed: \" * : < > ? \\ | and control characters)")]
    BadChar(String, String),
    #[error("`{0}` ends with a dot or a space, which FAT32 silently drops")]
    TrailingDotOrSpace(String),
    #[error("`{0}` is a reserved device name on FAT (CON, PRN, AUX, NUL, COM1-9, LPT1-9)")]
    DeviceName(String),
    #[error("`{0}` is longer than FAT32's 255-character name limit")]
    TooLong(String),
    #[error("`{0}` is the name of a pi2pi temporary file")]
    Reserved(String),
    #[error("the path is {0} bytes long; at most {MAX_PATH_BYTES} are allowed")]
    PathTooLong(usize),
    #[error("the path is {0} directories deep; at most {MAX_DEPTH} are allowed")]
    TooDeep(usize),
}

/// Checks a '/'-separated relative path; returns its components.
pub fn check_relative(path: &str) -> Result<Vec<&str>, PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::PathTooLong(path.len()));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_DEPTH + 1 {
        return Err(PathError::TooDeep(parts.len() - 1));
    }
    for c in &parts {
        check_component(c)?;
    }
    Ok(parts)
}

pub fn check_component(c: &str) -> Result<(), PathError> {
    if c.is_empty() || c == "." || c == ".." {
        return Err(PathError::DotOrEmpty(c.to_string()));
    }
    if let Some(bad) = c.chars().find(|&ch| ch.is_control() || "\"*:<>?\\|".contains(ch)) {
        let what = if bad.is_control() { format!("control character U+{:04X}", bad as u32) } else { format!("'{bad}'") };
        return Err(PathError::BadChar(c.to_string(), what));
    }
    if c.ends_with('.') || c.ends_with(' ') {
        return Err(PathError::TrailingDotOrSpace(c.to_string()));
    }
    if c.encode_utf16().count() > MAX_COMPONENT_UTF16 {
        return Err(PathError::TooLong(c.to_string()));
    }
    let stem = c.split('.').next().unwrap_or(c).trim_end().to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0');
    if device {
        return Err(PathError::DeviceName(c.to_string()));
    }
    if is_temp_name(c) {
        return Err(PathError::Reserved(c.to_string()));
    }
    Ok(())
}

/// Whether `name` is (or, on a FAT drive that ignores case, is the same file as) a receiver's
/// temporary: `.PI2PI-X.PART` is `.pi2pi-x.part` there.
pub fn is_temp_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= TEMP_PREFIX.len() + TEMP_SUFFIX.len()
        && b[..TEMP_PREFIX.len()].eq_ignore_ascii_case(TEMP_PREFIX.as_bytes())
        && b[b.len() - TEMP_SUFFIX.len()..].eq_ignore_ascii_case(TEMP_SUFFIX.as_bytes())
}

/// Paths (among `paths`) that collide with another one when case is ignored, as FAT does.
/// Both members of a collision are returned: neither can be sent safely.
pub fn case_collisions<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<(&'a str, &'a str)> {
    let mut seen: HashMap<String, &'a str> = HashMap::new();
    let mut out = Vec::new();
    for p in paths {
        match seen.get(&p.to_lowercase()) {
            Some(&first) if first != p => out.push((first, p)),
            _ => {
                seen.insert(p.to_lowercase(), p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for p in ["a.jpg", "dir/sub dir/photo 1.JPG", "ünïcødé/日本.txt", ".hidden", "a..b", "CONSOLE.txt", "COM0"] {
            assert!(check_relative(p).is_ok(), "{p}");
        }
    }

    #[test]
    fn escapes_and_fat_illegal_names_fail() {
        let bad = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../x", PathError::DotOrEmpty("..".into())),
            ("a/../../x", PathError::DotOrEmpty("..".into())),
            ("a//b", PathError::DotOrEmpty("".into())),
            ("./a", PathError::DotOrEmpty(".".into())),
            ("a/", PathError::DotOrEmpty("".into())),
        ];
        for (p, e) in bad {
            assert_eq!(check_relative(p).unwrap_err(), e, "{p:?}");
        }
        for p in ["a:b", "q?", "x*y", "a<b", "a>b", "a|b", "a\\b", "a\"b", "tab\there", "nl\n", "del\u{7f}"] {
            assert!(matches!(check_relative(p), Err(PathError::BadChar(..))), "{p:?}");
        }
        for p in ["trailing.", "trailing ", "dir./x"] {
            assert!(matches!(check_relative(p), Err(PathError::TrailingDotOrSpace(_))), "{p:?}");
        }
        for p in ["CON", "con.txt", "dir/Lpt1.log", "COM9", "nul"] {
            assert!(matches!(check_relative(p), Err(PathError::DeviceName(_))), "{p:?}");
        }
        assert!(matches!(check_relative(&"x".repeat(256)), Err(PathError::TooLong(_))));
        assert!(check_relative(&"ü".repeat(255)).is_ok(), "255 UTF-16 units is allowed");
        assert!(matches!(check_relative("d/.pi2pi-abc.part"), Err(PathError::Reserved(_))));
        // FAT ignores case: this is the temporary itself there.
        assert!(matches!(check_relative("d/.PI2PI-ABC.PART"), Err(PathError::Reserved(_))));
        assert!(check_relative(".pi2pi.part").is_ok(), "too short to be a temporary");
    }

    #[test]
    fn paths_are_bounded_in_length_and_depth() {
        let deep = vec!["d"; MAX_DEPTH].join("/") + "/f";
        assert!(check_relative(&deep).is_ok(), "{MAX_DEPTH} directories deep is allowed");
        assert_eq!(check_relative(&format!("d/{deep}")), Err(PathError::TooDeep(MAX_DEPTH + 1)));
        let long = format!("{}/f", vec!["x".repeat(200); 25].join("/"));
        assert!(long.len() > MAX_PATH_BYTES);
        assert_eq!(check_relative(&long), Err(PathError::PathTooLong(long.len())));
    }

    #[test]
    fn case_only_collisions_are_found() {
        let c = case_collisions(["a/Photo.jpg", "a/b.jpg", "a/photo.JPG", "A/b.jpg"]);
        assert_eq!(c, vec![("a/Photo.jpg", "a/photo.JPG"), ("a/b.jpg", "A/b.jpg")]);
        assert!(case_collisions(["x", "y"]).is_empty());
    }
}
