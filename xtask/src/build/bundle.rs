//! `<host>.raucb`: a card's update bundle. RAUC (Debian's `rauc`) packs the card's root
//! filesystem (what slot A of the `.img` holds) with a manifest and pi2pi's hook
//! (`overlays/bundle/hook`) and signs it with the deployment's update key (`keys.rs`); a Pi
//! verifies it against the certificate on its card and writes it to the slot it is not running.
//!
//! Reproducible like the `.img`: the `plain` bundle format (a squashfs, then the signature over
//! it; `verity` bundles carry a random salt), mksquashfs at `SOURCE_DATE_EPOCH`, the signature
//! made at the build's epoch (faketime; the card's RAUC checks the certificate at that time,
//! `use-bundle-signing-time`) with an RSA key, whose signatures are deterministic. A plain bundle
//! is read twice on the Pi (the signature over the whole file, then the image), so the agent
//! copies it off the USB drive before RAUC sees it: a drive cannot change it in between.

use std::path::Path;

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::build::keys::UpdateKeys;
use crate::proc;

/// The file name of a host's bundle.
pub fn file_name(host: &str) -> String {
    format!("{host}.raucb")
}

/// RAUC's `compatible`: a bundle installs only on the host it was built for (the card's
/// system.conf says the same).
pub fn compatible(host: &str) -> String {
    format!("pi2pi-{host}")
}

/// What makes one build newer than another: `PI2PI_VERSION` if set, else the later of the
/// commit's time and the base's epoch (a refreshed lock is newer than its commit). The same
/// commit and lock give the same version, so a bundle of the build a Pi runs is never "newer"
/// than it: a change that is not committed does not make a newer build (said when it happens).
pub fn version(sh: &Shell, epoch: u64) -> Result<u64> {
    if let Ok(v) = std::env::var("PI2PI_VERSION") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("PI2PI_VERSION=`{v}` is not a whole number (a build's version, e.g. seconds since 1970)"));
    }
    let git = |args: &[&str]| cmd!(sh, "git {args...}").quiet().ignore_stderr().read().ok();
    let committed = git(&["log", "-1", "--format=%ct"]).and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let version = committed.max(epoch);
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.trim().is_empty()) {
        eprintln!(
            "image: the checkout has uncommitted changes; this build's version is still {version} (the last commit's), so a Pi \
             running that commit's build will refuse its bundle as not newer: commit first, or set PI2PI_VERSION"
        );
    }
    Ok(version)
}

/// What goes into one bundle.
pub struct Inputs<'a> {
    pub host: &'a str,
    /// The root filesystem image (ext4), as slot A of the card holds it.
    pub root: &'a Path,
    pub version: u64,
    pub epoch: u64,
    pub keys: &'a UpdateKeys,
    pub hook: &'a Path,
}

/// Writes `out` (replacing it); returns its size.
pub fn write(sh: &Shell, i: &Inputs, work: &Path, out: &Path) -> Result<u64> {
    // rauc rewrites the manifest it is given, so the input directory is made fresh each time;
    // it verifies what it wrote with the certificate the cards carry.
    let dir = work.join("bundle");
    let _ = fs_err::remove_dir_all(&dir);
    fs_err::create_dir_all(&dir)?;
    fs_err::write(dir.join("manifest.raucm"), manifest(i.host, i.version))?;
    fs_err::hard_link(i.root, dir.join("root.ext4")).or_else(|_| fs_err::copy(i.root, dir.join("root.ext4")).map(|_| ()))?;
    fs_err::copy(i.hook, dir.join("hook"))?;
    let _ = fs_err::remove_file(out);
    let (cert, key) = (&i.keys.cert, &i.keys.key);
    // faketime's frozen clock, in UTC (TZ below): the build's epoch.
    let t = time::OffsetDateTime::from_unix_timestamp(i64::try_from(i.epoch)?)?;
    let at = format!("{:04}-{:02}-{:02} {:02}:{:02}:{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second());
    proc::read(
        cmd!(sh, "faketime -f {at} rauc bundle --cert {cert} --key {key} --keyring {cert} {dir} {out}")
            .env("SOURCE_DATE_EPOCH", i.epoch.to_string())
            .env("TZ", "UTC"),
    )
    .with_context(|| format!("making {}", out.display()))?;
    let _ = fs_err::remove_dir_all(&dir);
    Ok(fs_err::metadata(out)?.len())
}

fn manifest(host: &str, version: u64) -> String {
    format!(
        "[update]\ncompatible={}\nversion={version}\ndescription=pi2pi {host}\n\n[bundle]\nformat=plain\n\n\
         [hooks]\nfilename=hook\n\n[image.rootfs]\nfilename=root.ext4\nhooks=post-install\n",
        compatible(host)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_in(dir: &Path, name: &str) -> UpdateKeys {
        UpdateKeys { key: dir.join(format!("{name}.key.pem")), cert: dir.join(format!("{name}.cert.pem")) }
    }

    /// A bundle is the same bytes each time it is made, verifies with the deployment's
    /// certificate and no other, and says whom it is for and how new it is.
    #[test]
    fn a_bundle_is_reproducible_and_verifies_only_with_its_key() {
        if proc::skip_test_without(&["rauc", "mksquashfs", "faketime", "openssl"], false, "the update bundle test") {
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let sh = Shell::new().unwrap();
        let (ours, theirs) = (keys_in(t.path(), "ours"), keys_in(t.path(), "theirs"));
        ours.make(&sh).unwrap();
        theirs.make(&sh).unwrap();
        let root = t.path().join("root.ext4");
        fs_err::write(&root, (0..1u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>()).unwrap();
        let hook = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays/bundle/hook");
        let i = Inputs { host: "rpa", root: &root, version: 1_800_000_000, epoch: 1_790_000_000, keys: &ours, hook: &hook };
        let (one, two) = (t.path().join("one.raucb"), t.path().join("two.raucb"));
        write(&sh, &i, t.path(), &one).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100)); // a clock that moved on changes nothing
        write(&sh, &i, t.path(), &two).unwrap();
        assert_eq!(fs_err::read(&one).unwrap(), fs_err::read(&two).unwrap(), "two builds of one bundle differ");

        let cert = &ours.cert;
        let info = proc::read(cmd!(sh, "rauc info --output-format=shell --keyring {cert} {one}")).unwrap();
        for want in [
            "RAUC_MF_COMPATIBLE='pi2pi-rpa'",
            "RAUC_MF_VERSION='1800000000'",
            "RAUC_IMAGE_CLASS_0='rootfs'",
            "RAUC_IMAGE_HOOKS_0='post-install'",
        ] {
            assert!(info.lines().any(|l| l == want), "rauc info lacks {want}:\n{info}");
        }
        let other = &theirs.cert;
        let refused = cmd!(sh, "rauc info --keyring {other} {one}").quiet().ignore_stdout().ignore_stderr().run();
        assert!(refused.is_err(), "a bundle verified with another deployment's certificate");
    }
}
