//! What is written beside the raw images so that every flashing tool takes them:
//! `<host>.img.xz` (Raspberry Pi Imager, balenaEtcher, `bmaptool`), `<host>.img.bmap` (bmaptool
//! writes only the blocks in use) and `rpi-imager.json` (Imager's custom repository list). All of
//! it is reproducible: image.rs lists every file in SHA256SUMS and `cargo xtask verify` compares
//! them.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::boards;
use crate::build::config::{Base, Host, ImageConfig, ImageParams};
use crate::proc;

/// xz's preset. Measured on a 770 MiB trixie card here (2 cores): -1 24 s, 158 MB; -3 48 s,
/// 148 MB; -6 100 s, 137 MB. Most of the data is compressed already (kernel modules, initramfs),
/// so higher presets buy little, and every build (and verify's second) pays the time.
const XZ_PRESET: &str = "-1";
/// A fixed block size makes xz's multi-threaded output depend only on it and the preset, not on
/// the number of cores (xz -T1 would write a single-block stream instead; 5.4 keeps `-T0`
/// multi-threaded even on one core). Checked by a test, as `verify` builds on all cores.
const XZ_BLOCK: &str = "--block-size=32MiB";

const XZ_THREADS: &str = "-T0";

pub const IMAGER_LIST: &str = "rpi-imager.json";
/// The icon Imager shows beside every card of the list (its schema requires one), shipped
/// beside the list.
pub const IMAGER_ICON: &str = "pi2pi.svg";
const ICON_SVG: &[u8] = include_bytes!("../../assets/pi2pi.svg");
/// The checksum file beside the cards, over every file written there.
pub const SUMS: &str = "SHA256SUMS";

/// The files shipped for one image.
pub struct Shipped {
    pub xz: PathBuf,
    pub bmap: PathBuf,
    pub xz_seconds: f64,
    pub bmap_seconds: f64,
}

/// `<img>.xz` and `<img>.bmap` beside `img`.
pub fn package(sh: &Shell, img: &Path) -> Result<Shipped> {
    let (xz, bmap) = (xz_of(img), bmap_of(img));
    let t = std::time::Instant::now();
    // -v: progress on a terminal, one summary line otherwise.
    proc::read(cmd!(sh, "xz -v {XZ_THREADS} {XZ_BLOCK} {XZ_PRESET} --keep --force {img}"))?;
    let xz_seconds = t.elapsed().as_secs_f64();
    // bmaptool maps the image's holes: the .img is written sparse (disk.rs), so the map is the
    // blocks the filesystems use.
    let t = std::time::Instant::now();
    proc::read(cmd!(sh, "bmaptool -q create -o {bmap} {img}"))?;
    Ok(Shipped { xz, bmap, xz_seconds, bmap_seconds: t.elapsed().as_secs_f64() })
}

/// Where a card's compressed image and block map are: beside it, `<host>.img.xz`, `<host>.img.bmap`.
pub fn xz_of(img: &Path) -> PathBuf {
    suffixed(img, ".xz")
}
pub fn bmap_of(img: &Path) -> PathBuf {
    suffixed(img, ".bmap")
}

fn suffixed(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// One entry of Imager's `os_list`. No `init_format`: Imager would then offer its "OS
/// customisation" (user, hostname, SSH keys, Wi-Fi through firstrun.sh or cloud-init), which
/// would overwrite what the card was built with (its name in the peers' configs, its pinned
/// host key); without it Imager writes the card as built.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct ImagerEntry {
    pub name: String,
    pub description: String,
    pub icon: String,
    pub url: String,
    pub extract_size: u64,
    pub extract_sha256: String,
    pub image_download_size: u64,
    pub image_download_sha256: String,
    pub release_date: String,
    pub devices: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ImagerList {
    pub os_list: Vec<ImagerEntry>,
}

/// The list entry for `host`'s card (built from `base`) from its files.
/// `kernel_version`: its kernel's, which decides some of the boards it is for.
pub fn imager_entry(
    base: &Base,
    params: &ImageParams,
    host: &Host,
    img: &Path,
    img_sha256: &str,
    epoch: u64,
    kernel_version: boards::KernelVersion,
) -> Result<ImagerEntry> {
    let xz = suffixed(img, ".xz");
    let file = xz.file_name().context("image has no file name")?.to_string_lossy().into_owned();
    Ok(ImagerEntry {
        name: format!("pi2pi {} ({})", host.name, base.arch.deb()),
        description: format!(
            "{}: {} {}. Debian {} ({}), built by pi2pi; flash as is (no OS customisation).",
            host.name,
            host.role.describe(),
            host.place(),
            base.suite,
            base.arch.deb()
        ),
        icon: format!("{}{IMAGER_ICON}", params.download_url),
        url: format!("{}{file}", params.download_url),
        extract_size: fs_err::metadata(img)?.len(),
        extract_sha256: img_sha256.to_string(),
        image_download_size: fs_err::metadata(&xz).with_context(|| format!("{} is missing", xz.display()))?.len(),
        image_download_sha256: sha256_file(&xz)?,
        release_date: date_of(epoch)?,
        devices: imager_devices(base.arch, kernel_version),
    })
}

/// Imager's device tags for the boards a card of `arch` boots (`pi3-64bit`, `pi1-32bit`, …).
pub fn imager_devices(arch: Arch, kernel: boards::KernelVersion) -> Vec<String> {
    let bits = arch.bits();
    let mut tags: Vec<String> = Vec::new();
    for b in boards::for_card(arch, kernel) {
        let tag = format!("{}-{bits}bit", b.imager_family);
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// YYYY-MM-DD (UTC) of a Unix time: the build's epoch, so the date is the packages' date, not
/// the day of the build.
fn date_of(epoch: u64) -> Result<String> {
    let d = time::OffsetDateTime::from_unix_timestamp(i64::try_from(epoch)?)?.date();
    Ok(format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()))
}

/// Writes `rpi-imager.json` in `dir` with `entries` (by name) merged into the entries already
/// there whose files still exist, so that building one host keeps the others listed, and the
/// icon they name beside it. Returns both files.
pub fn write_imager_list(dir: &Path, entries: Vec<ImagerEntry>) -> Result<[PathBuf; 2]> {
    let path = dir.join(IMAGER_LIST);
    let mut list: Vec<ImagerEntry> =
        fs_err::read_to_string(&path).ok().and_then(|t| serde_json::from_str::<ImagerList>(&t).ok()).map(|l| l.os_list).unwrap_or_default();
    list.retain(|old| !entries.iter().any(|e| e.name == old.name) && dir.join(file_of(&old.url)).exists());
    list.extend(entries);
    list.sort_by(|a, b| a.name.cmp(&b.name));
    let text = serde_json::to_string_pretty(&ImagerList { os_list: list })? + "\n";
    imager_schema::check(&text)?;
    fs_err::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let icon = dir.join(IMAGER_ICON);
    fs_err::write(&icon, ICON_SVG).with_context(|| format!("writing {}", icon.display()))?;
    Ok([path, icon])
}

/// The rules of Raspberry Pi Imager's own schema for its lists
/// (`doc/json-schema/os-list-schema.json` in Imager's repository, draft-07), as serde types: an
/// object with `os_list` and optionally `imager`, nothing else; `imager` has only its five
/// string keys; each `os_list` item is one of three kinds (an OS, a link to a sub-list, inline
/// sub-items), each with its required keys and their types, other keys allowed. Imager's
/// published list format has grown keys its schema does not name (`devices`,
/// `image_download_sha256`); where items allow more keys, the schema allows them too.
mod imager_schema {
    use anyhow::{Context, Result};
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // Read only to be checked.
    struct List {
        imager: Option<Imager>,
        os_list: Vec<Item>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Imager {
        latest_version: Option<String>,
        url: Option<String>,
        default_os: Option<String>,
        embedded_default_os: Option<String>,
        embedded_default_destination: Option<String>,
    }

    /// `anyOf` in the schema: the first kind an item fits.
    #[derive(Deserialize)]
    #[serde(untagged)]
    #[allow(dead_code)]
    enum Item {
        Os {
            name: String,
            description: String,
            icon: String,
            url: String,
            extract_size: i64,
            extract_sha256: String,
            image_download_size: i64,
            release_date: String,
            init_format: Option<String>,
            website: Option<String>,
        },
        SubitemsUrl {
            name: String,
            description: String,
            icon: Option<String>,
            subitems_url: String,
            website: Option<String>,
        },
        Subitems {
            name: String,
            description: String,
            icon: Option<String>,
            subitems: Vec<serde_json::Value>,
        },
    }

    /// Fails naming the item and what Imager's schema wants of it.
    pub fn check(text: &str) -> Result<()> {
        let raw: serde_json::Value = serde_json::from_str(text).context("an Imager list is JSON")?;
        let items = raw.get("os_list").and_then(|l| l.as_array()).cloned().unwrap_or_default();
        for (i, item) in items.iter().enumerate() {
            serde_json::from_value::<Item>(item.clone()).map_err(|_| {
                let name = item.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                anyhow::anyhow!(
                    "os_list[{i}] ({name}) fits none of Imager's item kinds: an OS needs name, description, icon, url, \
                     release_date and extract_sha256 (strings) and extract_size and image_download_size (integers)"
                )
            })?;
        }
        serde_json::from_str::<List>(text).context("not a list Raspberry Pi Imager's schema accepts")?;
        Ok(())
    }
}

fn file_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// `dir`'s SHA256SUMS as file name → hash (what the image build writes and verify compares).
pub fn read_sums(dir: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let path = dir.join(SUMS);
    let text = fs_err::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.lines().filter_map(|l| l.split_once("  ")).map(|(h, n)| (n.to_string(), h.to_string())).collect())
}

/// `sha256sum -c` of `dir`'s SHA256SUMS, as a user checking a download would run it; the names it
/// lists.
fn checked_sums(sh: &Shell, dir: &Path) -> Result<std::collections::BTreeSet<String>> {
    let _cd = sh.push_dir(dir);
    proc::read(cmd!(sh, "sha256sum --check --strict --quiet {SUMS}")).with_context(|| format!("sha256sum -c in {}", dir.display()))?;
    Ok(read_sums(dir)?.into_keys().collect())
}

/// The checks a user's tools make: `bmaptool copy` of each `.img.xz` with its `.bmap` gives the
/// `.img` byte for byte, and every `rpi-imager.json` entry's sizes and hashes match the files,
/// its date is the locked packages' date and its device tags are the boards of `cfg`'s cards;
/// `sha256sum -c` passes and lists every one of those files.
/// `scratch` holds the copies.
pub fn check(sh: &Shell, cfg: &ImageConfig, dir: &Path, scratch: &Path) -> Result<usize> {
    fs_err::create_dir_all(scratch)?;
    let lock = crate::build::pins::LockFile::read(&cfg.lock_file())?;
    let text = fs_err::read_to_string(dir.join(IMAGER_LIST)).with_context(|| format!("reading {}", dir.join(IMAGER_LIST).display()))?;
    imager_schema::check(&text).with_context(|| format!("{}", dir.join(IMAGER_LIST).display()))?;
    let list: ImagerList = serde_json::from_str(&text).with_context(|| format!("{} is not an Imager list", IMAGER_LIST))?;
    ensure!(!list.os_list.is_empty(), "{IMAGER_LIST} lists no card");
    let summed = checked_sums(sh, dir)?;
    ensure!(summed.contains(IMAGER_LIST), "{} does not list {IMAGER_LIST}", dir.join(SUMS).display());
    for e in &list.os_list {
        let xz = dir.join(file_of(&e.url));
        let img = xz.with_extension("");
        // What the entry must say follows from its card's host: its base's boards and pins.
        let stem = img.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let base = cfg.base_of(cfg.host(&stem).with_context(|| format!("{}: {} is no host's card", e.name, xz.display()))?);
        let pins = lock
            .get(&base.suite, base.arch.deb())
            .with_context(|| format!("{} has no section for {}'s base", cfg.lock_file().display(), stem))?;
        let date = date_of(pins.source_date_epoch)?;
        let kernel_pkg = base.kernel.split('/').next().unwrap_or_default();
        let kernel = pins.packages.get(kernel_pkg).and_then(|p| boards::kernel_version(&p.version));
        let devices =
            imager_devices(base.arch, kernel.with_context(|| format!("{} pins no version of {kernel_pkg}", cfg.lock_file().display()))?);
        let bmap = img.with_extension("img.bmap");
        for f in [&img, &xz, &bmap] {
            let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ensure!(summed.contains(&name), "{} does not list {name}", dir.join(SUMS).display());
        }
        let copy = scratch.join(img.file_name().context("no file name")?);
        let _ = fs_err::remove_file(&copy);
        proc::read(cmd!(sh, "bmaptool -q copy --bmap {bmap} {xz} {copy}"))?;
        let copied = sha256_file(&copy)?;
        let _ = fs_err::remove_file(&copy);
        ensure!(copied == sha256_file(&img)?, "bmaptool copy of {} differs from {}", xz.display(), img.display());
        ensure!(copied == e.extract_sha256, "{}: extract_sha256 {} is not the image's {copied}", e.name, e.extract_sha256);
        ensure!(e.extract_size == fs_err::metadata(&img)?.len(), "{}: extract_size is not the image's size", e.name);
        ensure!(e.image_download_size == fs_err::metadata(&xz)?.len(), "{}: image_download_size is not the .img.xz's size", e.name);
        ensure!(e.image_download_sha256 == sha256_file(&xz)?, "{}: image_download_sha256 is not the .img.xz's", e.name);
        ensure!(e.devices == devices, "{}: device tags {:?}, but the card boots {devices:?}", e.name, e.devices);
        ensure!(e.release_date == date, "{}: release_date {} is not the locked packages' date {date}", e.name, e.release_date);
        ensure!(
            file_of(&e.icon) == IMAGER_ICON && summed.contains(IMAGER_ICON),
            "{}: its icon {} is not the shipped {IMAGER_ICON}",
            e.name,
            e.icon
        );
    }
    Ok(list.os_list.len())
}

/// The SHA-256 of a file, in hex (as SHA256SUMS and Imager's list give it).
pub fn sha256_file(p: &Path) -> Result<String> {
    let mut f = fs_err::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    /// What `verify` would not see, building on all cores both times: the compressed bytes are
    /// the same with one thread (what `-T0` gives on a one-core machine) and with four.
    #[test]
    fn compressed_images_do_not_depend_on_the_core_count() {
        if crate::proc::skip_test_without(&["xz"], false, "the xz core-count test") {
            return;
        }
        // 40 MiB of varied data: two 32 MiB blocks.
        let mut data = Vec::with_capacity(40 << 20);
        let mut x: u32 = 1;
        while data.len() < 40 << 20 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            data.extend_from_slice(format!("{} ", x >> 20).as_bytes());
        }
        let sh = Shell::new().unwrap();
        let packed = |threads: &str| cmd!(sh, "xz {threads} {XZ_BLOCK} {XZ_PRESET} --stdout").stdin(&data).output().unwrap().stdout;
        let (one, four) = (packed("-T+1"), packed("-T4"));
        assert!(!one.is_empty() && one == four, "xz wrote different bytes on one thread and on four");
        assert_eq!(XZ_THREADS, "-T0", "the build's setting is the one tested");
    }

    /// What a user checking a download runs passes, and a file changed after it was summed fails.
    #[test]
    fn the_sums_are_checked_as_sha256sum_checks_them() {
        let dir = std::env::temp_dir().join(format!("pi2pi-sums-{}", std::process::id()));
        fs_err::create_dir_all(&dir).unwrap();
        let sh = Shell::new().unwrap();
        for (name, data) in [("a.img", "card"), ("a.img.xz", "packed card")] {
            fs_err::write(dir.join(name), data).unwrap();
        }
        let sums = {
            let _cd = sh.push_dir(&dir);
            cmd!(sh, "sha256sum a.img a.img.xz").read().unwrap()
        };
        fs_err::write(dir.join(SUMS), sums + "\n").unwrap();
        let listed = checked_sums(&sh, &dir).unwrap();
        assert_eq!(listed.into_iter().collect::<Vec<_>>(), ["a.img", "a.img.xz"]);
        fs_err::write(dir.join("a.img"), "card, changed").unwrap();
        assert!(checked_sums(&sh, &dir).is_err(), "a changed file passed sha256sum -c");
        fs_err::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn device_tags_follow_the_boards_of_the_architecture() {
        let tags = |arch| imager_devices(arch, (7, 3)).join(" ");
        assert_eq!(tags(Arch::Arm64), "pi3-64bit pi4-64bit pi5-64bit");
        assert_eq!(tags(Arch::Armhf), "pi2-32bit pi3-32bit");
        assert_eq!(tags(Arch::Armel), "pi1-32bit");
    }

    /// A small sparse image through the real tools: xz, bmaptool create, the Imager list, then
    /// the check (bmaptool copy back, fields against the files), which must also catch a list
    /// that does not match.
    #[test]
    fn a_shipped_image_round_trips_and_a_wrong_list_is_caught() {
        if crate::proc::skip_test_without(&["xz", "bmaptool"], false, "the shipped-image round trip") {
            return;
        }
        let dir = std::env::temp_dir().join(format!("pi2pi-ship-test-{}", std::process::id()));
        let _ = fs_err::remove_dir_all(&dir);
        fs_err::create_dir_all(&dir).unwrap();
        let cfg = crate::build::config::shipped();
        let host = &cfg.hosts[0];
        let img = dir.join(format!("{}.img", host.name));
        let mut f = fs_err::File::create(&img).unwrap();
        f.write_all(&[0x55; 4096]).unwrap();
        f.seek(SeekFrom::Start(6 << 20)).unwrap(); // a hole between the two written ranges
        f.write_all(b"end of the card").unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        let sh = Shell::new().unwrap();
        package(&sh, &img).unwrap();
        let lock = crate::build::pins::LockFile::read(&cfg.lock_file()).unwrap();
        let pins = lock.get(&cfg.base.suite, cfg.base.arch.deb()).unwrap();
        let kernel = crate::build::boards::kernel_version(&pins.packages["linux-image-arm64"].version).unwrap();
        let sha = sha256_file(&img).unwrap();
        write_imager_list(&dir, vec![imager_entry(&cfg.base, &cfg.image, host, &img, &sha, pins.source_date_epoch, kernel).unwrap()])
            .unwrap();
        // SHA256SUMS as the image build writes it: every file there.
        let sum_all = || {
            let _cd = sh.push_dir(&dir);
            let names: Vec<String> = ["img", "img.xz", "img.bmap"].iter().map(|x| format!("{}.{x}", host.name)).collect();
            let sums = cmd!(sh, "sha256sum {names...} {IMAGER_LIST} {IMAGER_ICON}").read().unwrap();
            fs_err::write(dir.join(SUMS), sums + "\n").unwrap();
        };
        let e = check(&sh, &cfg, &dir, &dir.join("scratch")).unwrap_err();
        assert!(format!("{e:#}").contains("SHA256SUMS"), "{e:#}");
        sum_all();
        assert_eq!(check(&sh, &cfg, &dir, &dir.join("scratch")).unwrap(), 1);

        let list_path = dir.join(IMAGER_LIST);
        let mut list: ImagerList = serde_json::from_str(&fs_err::read_to_string(&list_path).unwrap()).unwrap();
        list.os_list[0].extract_size += 1;
        fs_err::write(&list_path, serde_json::to_string(&list).unwrap()).unwrap();
        let e = check(&sh, &cfg, &dir, &dir.join("scratch")).unwrap_err();
        assert!(format!("{e:#}").contains("sha256sum -c"), "a list changed after it was summed: {e:#}");
        sum_all();
        let e = check(&sh, &cfg, &dir, &dir.join("scratch")).unwrap_err().to_string();
        assert!(e.contains("extract_size"), "{e}");
        let _ = fs_err::remove_dir_all(&dir);
    }

    /// The rules of Imager's schema, each broken once; the list we write keeps them.
    #[test]
    fn imager_lists_are_checked_against_imagers_schema() {
        let cfg = crate::build::config::shipped();
        let entry = ImagerEntry {
            name: "pi2pi rpa (arm64)".into(),
            description: "rpa".into(),
            icon: IMAGER_ICON.into(),
            url: "rpa.img.xz".into(),
            extract_size: 1,
            extract_sha256: "00".into(),
            image_download_size: 1,
            image_download_sha256: "00".into(),
            release_date: "2026-12-01".into(),
            devices: imager_devices(cfg.base.arch, (7, 3)),
        };
        let ours = serde_json::to_value(ImagerList { os_list: vec![entry] }).unwrap();
        imager_schema::check(&ours.to_string()).unwrap();
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = ours.clone();
            f(&mut v);
            imager_schema::check(&v.to_string()).map_err(|e| format!("{e:#}")).unwrap_err()
        };
        let e = broken(&|v| drop(v["os_list"][0].as_object_mut().unwrap().remove("icon")));
        assert!(e.contains("os_list[0] (pi2pi rpa (arm64))") && e.contains("icon"), "{e}");
        let e = broken(&|v| v["os_list"][0]["extract_size"] = "1".into());
        assert!(e.contains("integers"), "{e}");
        let e = broken(&|v| v["source"] = "pi2pi".into());
        assert!(e.contains("unknown field `source`"), "{e}");
        let e = broken(&|v| v["imager"] = serde_json::json!({"devices": []}));
        assert!(e.contains("unknown field `devices`"), "{e}");
        let e = broken(&|v| drop(v.as_object_mut().unwrap().remove("os_list")));
        assert!(e.contains("missing field `os_list`"), "{e}");
        // The other two kinds of item, and keys the schema leaves open, are accepted.
        let mut v = ours.clone();
        v["imager"] = serde_json::json!({"latest_version": "2.0"});
        v["os_list"].as_array_mut().unwrap().push(serde_json::json!({"name": "n", "description": "d", "subitems_url": "u"}));
        v["os_list"].as_array_mut().unwrap().push(serde_json::json!({"name": "n", "description": "d", "subitems": []}));
        imager_schema::check(&v.to_string()).unwrap();
    }

    #[test]
    fn dates_of_epochs() {
        assert_eq!(date_of(0).unwrap(), "1970-01-01");
        assert_eq!(date_of(951_782_400).unwrap(), "2000-02-29");
        assert_eq!(date_of(4_107_542_399).unwrap(), "2100-02-28");
    }
}
