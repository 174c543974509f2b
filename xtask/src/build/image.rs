//! `cargo xtask image <host|all>`: runs the stages in order and writes target/images/<host>.img,
//! what is shipped beside it (`<host>.img.xz`, `.img.bmap`, rpi-imager.json: ship.rs),
//! SHA256SUMS over all of them, and a summary. Stage 6 (checks) lives here: the size limit and
//! the checksums.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::Shell;

use crate::build::arch::Arch;
use crate::build::config::{Base, Host, ImageConfig};
use crate::build::{agent_build, base, boards, bundle, disk, keys, layers, rootfs, setup, ship, tools, uboot};
use pi2pi_agent::bootslot::BootState;
use pi2pi_agent::layout::BOOT_ENV_NAME;

pub struct Options {
    pub update_lock: bool,
    pub out_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Where the base and tools are cached (`cache::dir()` unless a cold build is wanted).
    pub cache_dir: PathBuf,
    /// Also write what ships beside the images (.img.xz, .bmap, rpi-imager.json); off for the
    /// test harness's variant cards, which are booted, never flashed.
    pub ship: bool,
}

impl Options {
    pub fn default_for(sh: &Shell) -> Options {
        let root = sh.current_dir();
        Options {
            update_lock: false,
            out_dir: root.join("target/images"),
            work_dir: root.join("target/image-build"),
            cache_dir: crate::build::cache::dir(),
            ship: true,
        }
    }
    /// Cards the tests boot and never ship: into target/images-<tag>/, built in
    /// target/image-build-<tag>/, without .img.xz, .bmap or Imager list.
    pub fn test_cards(sh: &Shell, tag: &str) -> Options {
        let root = sh.current_dir();
        Options {
            out_dir: root.join(format!("target/images-{tag}")),
            work_dir: root.join(format!("target/image-build-{tag}")),
            ship: false,
            ..Options::default_for(sh)
        }
    }
}

pub struct Built {
    pub host: String,
    pub path: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    /// The size of `<host>.img.xz`.
    pub xz_bytes: u64,
    /// Its base's SOURCE_DATE_EPOCH (the build's time).
    pub epoch: u64,
    /// Its kernel's version, which decides some of the boards it is for.
    pub kernel_version: boards::KernelVersion,
    /// `<host>.raucb` and its size, when what ships is written.
    pub bundle: Option<(PathBuf, u64)>,
    pub stages: Vec<Lap>,
}

/// How long one stage took.
#[derive(Debug, Clone, Copy)]
pub struct Lap {
    pub stage: &'static str,
    pub seconds: f64,
}

impl std::fmt::Display for Lap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {:.1}s", self.stage, self.seconds)
    }
}

pub fn select<'a>(cfg: &'a ImageConfig, which: &str) -> Result<Vec<&'a Host>> {
    if which == "all" {
        Ok(cfg.hosts.iter().collect())
    } else {
        Ok(vec![cfg.host(which)?])
    }
}

pub fn build(sh: &Shell, cfg: &ImageConfig, hosts: &[&Host], opts: &Options) -> Result<Vec<Built>> {
    setup::ensure(sh, cfg.base.arch)?; // the tools keys are made with
    keys::ensure(sh, cfg)?;
    // Every build starts from an empty build directory (what `verify` compares).
    let _ = fs_err::remove_dir_all(&opts.work_dir);
    fs_err::create_dir_all(&opts.work_dir)?;
    fs_err::create_dir_all(&opts.out_dir)?;
    // The hosts of each base together: that base (and its agent) once, then its cards.
    let mut groups: Vec<(&Base, Vec<&Host>)> = Vec::new();
    for h in hosts {
        match groups.iter_mut().find(|(_, g)| g[0].base == h.base) {
            Some((_, g)) => g.push(h),
            None => groups.push((cfg.base_of(h), vec![h])),
        }
    }
    let mut built = Vec::new();
    for (base, group) in &groups {
        built.extend(build_group(sh, cfg, base, group, opts)?);
    }
    built.sort_by_key(|b| hosts.iter().position(|h| h.name == b.host));
    if opts.ship {
        ship_all(sh, cfg, &opts.out_dir, &mut built)?;
    } else {
        let sums: Vec<(PathBuf, String)> = built.iter().map(|b| (b.path.clone(), b.sha256.clone())).collect();
        write_sums(&opts.out_dir, &sums)?;
    }
    Ok(built)
}

/// The cards of `hosts`, which share the base `b`.
fn build_group(sh: &Shell, cfg: &ImageConfig, b: &Base, hosts: &[&Host], opts: &Options) -> Result<Vec<Built>> {
    let t = Instant::now();
    setup::ensure(sh, b.arch)?;
    let setup_s = t.elapsed().as_secs_f64();

    let base = base::build(sh, cfg, b, opts.update_lock, &opts.work_dir, &opts.cache_dir)?;
    eprintln!("base: {} packages, {} ({:.0}s)", base.pins.packages.len(), if base.cached { "from cache" } else { "built" }, base.seconds);
    let agent = agent_build::build(sh, b.arch)?;
    let agent_bytes = fs_err::read(&agent.binary).with_context(|| format!("reading {}", agent.binary.display()))?;
    let t_facts = Instant::now();
    let facts = rootfs::read_base_facts(&base.tar)?;
    let user_ids = rootfs::user_ids(&facts.passwd, &cfg.system.user)?;
    let find = |prefix: &str| -> Result<String> {
        let names: Vec<&String> = facts.boot.keys().filter(|k| k.starts_with(prefix)).collect();
        match names.as_slice() {
            [one] => Ok(one.to_string()),
            _ => bail!("expected one {prefix}* in the base's /boot/firmware, found {names:?} (is `{}` installed?)", b.kernel),
        }
    };
    let (kernel, initrd) = (find("vmlinuz-")?, find("initrd.img-")?);
    let kernel_version = boards::kernel_version(&kernel).with_context(|| format!("no kernel version in {kernel}"))?;
    let drivers = crate::build::manifest::Drivers::of(&facts, &initrd)?;
    let mke2fs = tools::mke2fs(sh, &opts.cache_dir)?;
    let facts_s = t_facts.elapsed().as_secs_f64();
    let epoch = base.pins.source_date_epoch;
    let version = bundle::version(sh, epoch)?;
    let update_keys = keys::update(sh);
    let update_cert = update_keys.read_cert()?;

    let shared = Shared {
        cfg,
        arch: b.arch,
        opts,
        base_tar: &base.tar,
        agent: &agent_bytes,
        facts: &facts,
        user_ids,
        kernel,
        kernel_version,
        initrd,
        mke2fs: &mke2fs,
        epoch,
        version,
        update_keys: &update_keys,
        update_cert: &update_cert,
        drivers,
        stages: [("setup", setup_s), ("base", base.seconds), ("agent", agent.seconds), ("facts", facts_s)]
            .map(|(stage, seconds)| Lap { stage, seconds })
            .to_vec(),
    };
    // Hosts are independent and their stages single-threaded (mke2fs, mcopy, hashing): build as
    // many at once as there are cores, each with its own Shell (a Shell is not Sync).
    let root = sh.current_dir();
    let width = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(1);
    let mut built = Vec::new();
    for chunk in hosts.chunks(width) {
        let results: Vec<Result<Built>> = std::thread::scope(|s| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|host| {
                    let (shared, root) = (&shared, &root);
                    s.spawn(move || -> Result<Built> {
                        let sh = Shell::new()?;
                        sh.change_dir(root);
                        build_host(&sh, shared, host).with_context(|| format!("building {}.img", host.name))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a host build panicked")))).collect()
        });
        for r in results {
            built.push(r?);
        }
    }
    Ok(built)
}

/// The compressed images, block maps and Imager list beside the images, then SHA256SUMS over
/// every file written.
fn ship_all(sh: &Shell, cfg: &ImageConfig, dir: &Path, built: &mut [Built]) -> Result<()> {
    let mut sums = Vec::new();
    let mut entries = Vec::new();
    for b in built.iter_mut() {
        let shipped = ship::package(sh, &b.path).with_context(|| format!("compressing {}", b.path.display()))?;
        b.xz_bytes = fs_err::metadata(&shipped.xz)?.len();
        b.stages.push(Lap { stage: "xz", seconds: shipped.xz_seconds });
        b.stages.push(Lap { stage: "bmap", seconds: shipped.bmap_seconds });
        sums.push((b.path.clone(), b.sha256.clone()));
        for f in [&shipped.xz, &shipped.bmap].into_iter().chain(b.bundle.as_ref().map(|(f, _)| f)) {
            sums.push((f.clone(), ship::sha256_file(f)?));
        }
        let host = cfg.host(&b.host)?;
        entries.push(ship::imager_entry(cfg.base_of(host), &cfg.image, host, &b.path, &b.sha256, b.epoch, b.kernel_version)?);
    }
    for f in ship::write_imager_list(dir, entries)? {
        sums.push((f.clone(), ship::sha256_file(&f)?));
    }
    write_sums(dir, &sums)
}

/// Inputs every host's build shares (read-only).
struct Shared<'a> {
    cfg: &'a ImageConfig,
    /// The architecture of the base the cards are built from.
    arch: Arch,
    opts: &'a Options,
    base_tar: &'a Path,
    agent: &'a [u8],
    facts: &'a rootfs::BaseFacts,
    user_ids: (u32, u32),
    kernel: String,
    /// Its version, which decides some of the boards the cards are for.
    kernel_version: boards::KernelVersion,
    initrd: String,
    mke2fs: &'a tools::Mke2fs,
    epoch: u64,
    /// What makes this build newer than another (`bundle::version`), on the card and its bundle.
    version: u64,
    update_keys: &'a keys::UpdateKeys,
    update_cert: &'a str,
    /// What the base's kernel and initramfs carry, for the hardware manifest.
    drivers: crate::build::manifest::Drivers,
    stages: Vec<Lap>,
}

/// Stages 3-6 for one host.
fn build_host(sh: &Shell, shared: &Shared, host: &Host) -> Result<Built> {
    let Shared { cfg, opts, base_tar, agent, facts, user_ids, kernel, initrd, epoch, .. } = shared;
    let (user_ids, epoch) = (*user_ids, *epoch);
    let mut stages = shared.stages.clone();
    let mut stage = Instant::now();
    let mut lap = |name: &'static str, stages: &mut Vec<Lap>| {
        stages.push(Lap { stage: name, seconds: stage.elapsed().as_secs_f64() });
        stage = Instant::now();
    };
    let work = opts.work_dir.join(&host.name);
    fs_err::create_dir_all(&work)?;
    let ids = disk::Ids::for_host(&host.name);
    let others = cfg
        .hosts
        .iter()
        .filter(|o| o.name != host.name)
        .map(|o| Ok((o, keys::for_host(sh, &o.name).read()?)))
        .collect::<Result<Vec<_>>>()?;
    let identity = keys::for_host(sh, &host.name).read()?;
    let layer = layers::build(&layers::Inputs {
        cfg,
        host,
        overlays: &sh.current_dir().join("overlays"),
        identity: &identity,
        others,
        agent,
        disk_id: ids.disk_id,
        user_ids,
        kernel: kernel.clone(),
        initrd: initrd.clone(),
        firmware_lines: boards::firmware_lines(shared.arch, shared.kernel_version, kernel, initrd),
        epoch,
        update: layers::Update { compatible: bundle::compatible(&host.name), version: shared.version, cert: shared.update_cert },
    })?;
    let (root_tar, data_tar) = tarballs(&work);
    let split = rootfs::write(base_tar, &layer, epoch, &root_tar, &data_tar)?;
    lap("layers", &mut stages);

    // The firmware's own config.txt/cmdline.txt give way to ours.
    let mut boot: BTreeMap<String, Vec<u8>> = facts.boot.clone();
    if !boards::starts_a_kernel(shared.arch, shared.kernel_version) {
        // U-Boot loads each slot's kernel from the slot; only a board whose firmware starts the
        // kernel needs it here.
        boot.retain(|name, _| name != kernel && name != initrd);
    }
    boot.insert(BOOT_ENV_NAME.to_string(), BootState::fresh().render().into_bytes());
    boot.extend(layer.boot.clone());
    boards::add_dtb_aliases(&mut boot);
    boot.extend(uboot::binaries(shared.arch, shared.kernel_version, &facts.u_boot, &cfg.base_of(host).bootloader)?);
    uboot::compile_sources(sh, shared.arch, epoch, &work, &mut boot)?;
    let kernel_version = shared.kernel_version;
    boards::check_boot_partition(shared.arch, kernel_version, &boot)?;
    crate::build::manifest::check(shared.arch, kernel_version, host.role, &shared.drivers)?;
    let img = opts.out_dir.join(format!("{}.img", host.name));
    let (bytes, root_img) = write_card(sh, shared, &ids, &boot, &split, &work, &img)?;
    lap("disk", &mut stages);
    let sha256 = ship::sha256_file(&img)?;
    lap("checks", &mut stages);
    let bundle = if opts.ship {
        let out = opts.out_dir.join(bundle::file_name(&host.name));
        let inputs = bundle::Inputs {
            host: &host.name,
            root: &root_img,
            version: shared.version,
            epoch,
            keys: shared.update_keys,
            hook: &sh.current_dir().join("overlays/bundle/hook"),
        };
        let bytes = bundle::write(sh, &inputs, &work, &out)?;
        lap("bundle", &mut stages);
        Some((out, bytes))
    } else {
        None
    };
    // The intermediate filesystems are as big as the image: don't keep two copies around.
    for f in [&root_img, &root_tar, &data_tar] {
        let _ = fs_err::remove_file(f);
    }
    Ok(Built { host: host.name.clone(), path: img, bytes, sha256, xz_bytes: 0, epoch, kernel_version, bundle, stages })
}

/// Where a host's root and data tarballs are written in its work directory.
fn tarballs(work: &Path) -> (PathBuf, PathBuf) {
    (work.join("root.tar"), work.join("data.tar"))
}

/// The card's filesystems and the card itself (`partitions`): the FAT from `boot`, slot A's ext4
/// and the data partition's from their tarballs, slot B left empty; held to the size limits.
/// Returns the card's size and slot A's filesystem image (what the bundle carries).
fn write_card(
    sh: &Shell,
    shared: &Shared,
    ids: &disk::Ids,
    boot: &BTreeMap<String, Vec<u8>>,
    split: &rootfs::Split,
    work: &Path,
    img: &Path,
) -> Result<(u64, PathBuf)> {
    let (image, epoch, mke2fs) = (&shared.cfg.image, shared.epoch, shared.mke2fs);
    let boot_img = work.join("boot.vfat");
    disk::boot_fs(sh, boot, image.boot_mib, ids.boot_volid, epoch, work, &boot_img)?;
    let (root_img, data_img) = (work.join("root.ext4"), work.join("data.ext4"));
    let (root_tar, data_tar) = tarballs(work);
    let root =
        disk::Ext4 { tar: &root_tar, stats: &split.root, headroom_mib: image.root_headroom_mib, label: "rootfs", uuid: &ids.root_uuid };
    let root_bytes = disk::ext4(sh, mke2fs, &root, epoch, &root_img)?;
    let slot_bytes = image.slot_mib << 20;
    if root_bytes > slot_bytes {
        bail!(
            "the root filesystem needs {} MiB, more than a root slot's image.slot_mib = {}: raise it (the card then needs twice that)",
            root_bytes >> 20,
            image.slot_mib
        );
    }
    let data = disk::Ext4 { tar: &data_tar, stats: &split.data, headroom_mib: image.data_mib, label: "data", uuid: &ids.data_uuid };
    let data_bytes = disk::ext4(sh, mke2fs, &data, epoch, &data_img)?;
    let parts = [
        disk::Part { sys: disk::FAT32, bytes: image.boot_mib << 20, image: Some(&boot_img) },
        disk::Part { sys: disk::LINUX, bytes: slot_bytes, image: Some(&root_img) },
        disk::Part { sys: disk::LINUX, bytes: slot_bytes, image: None },
        disk::Part { sys: disk::LINUX, bytes: data_bytes, image: Some(&data_img) },
    ];
    let bytes = disk::assemble(ids.disk_id, &parts, img)?;
    for f in [&boot_img, &data_img] {
        let _ = fs_err::remove_file(f);
    }
    if bytes > image.max_bytes {
        bail!(
            "{} is {bytes} bytes (boot {} MiB + two root slots of {} MiB + data {} MiB), over image.max_bytes = {}: lower image.slot_mib or raise the limit",
            img.display(),
            image.boot_mib,
            image.slot_mib,
            data_bytes >> 20,
            image.max_bytes
        );
    }
    Ok((bytes, root_img))
}

/// SHA256SUMS in `sha256sum -c` format over `files` (path, hash); lines for files not written
/// now (other hosts' cards) are kept while those files exist.
fn write_sums(dir: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    let path = dir.join(crate::build::ship::SUMS);
    let mut lines = crate::build::ship::read_sums(dir).unwrap_or_default();
    lines.retain(|n, _| dir.join(n).exists());
    for (f, sha) in files {
        let name = f.file_name().with_context(|| format!("{} has no file name", f.display()))?;
        lines.insert(name.to_string_lossy().into_owned(), sha.clone());
    }
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    fs_err::write(&path, text)?;
    Ok(())
}

pub fn summary(built: &[Built]) -> String {
    let mut s = String::new();
    for b in built {
        let total: f64 = b.stages.iter().map(|l| l.seconds).sum();
        let stages: Vec<String> = b.stages.iter().map(Lap::to_string).collect();
        s += &format!(
            "{}: {} ({} bytes, {:.0} MiB{})\n  sha256 {}\n  build {:.1}s: {}\n",
            b.host,
            b.path.display(),
            b.bytes,
            b.bytes as f64 / (1 << 20) as f64,
            if b.xz_bytes > 0 { format!("; .img.xz {:.1} MB", b.xz_bytes as f64 / 1e6) } else { String::new() }
                + &b.bundle.as_ref().map(|(_, n)| format!("; .raucb {:.1} MB", *n as f64 / 1e6)).unwrap_or_default(),
            b.sha256,
            total,
            stages.join(", ")
        );
    }
    s
}
