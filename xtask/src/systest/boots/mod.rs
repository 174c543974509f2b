//! `cargo xtask test board`: every card of the deployment booted the way its Pi boots it, on
//! QEMU's model of its board (or of its board's SoC: a Zero 2 W on `raspi3b` with its own dtb),
//! two cards at a time, and every card of the cluster example (its manager on `raspi3b`, its
//! Zero 2 W workers on `raspi3b` with their own dtb, its Pi Zero on `raspi0`); with `--armhf`, for an arm64 deployment,
//! an armhf variant of its first card (Debian's LPAE kernel) on `raspi2b`, since nothing else
//! boots a 32-bit card. The deployment's first card boots twice.
//!
//! - The card is the SD card: a sparse copy of the .img padded to a power of two (QEMU's SD model
//!   needs one), bigger than the image so that the first boot has room to grow into.
//! - Kernel, initramfs and dtb come from the card's FAT partition as the firmware picks them:
//!   config.txt's `kernel=` and `initramfs`, and the board's upstream dtb name (`upstream_kernel=1`).
//!   On `raspi0` the harness's copy of the dtb disables the power-management block QEMU 7.2 lacks
//!   (`qemu_lacks`). The kernel command line is cmdline.txt as written plus harness-only additions a Pi never
//!   sees: a root shell on the mini UART for the checks, `nosoftlockup` (see
//!   `qemu::HARNESS_APPEND`) and longer waits for devices and for units to start (udev on the
//!   emulated board can take minutes where a Pi's takes seconds); on the Pi 2 model one core
//!   (`emulation`: each board is emulated on one host thread).
//! - The harness shell is always on the mini UART (ttyS1, QEMU's second serial port). On the Pi 3
//!   device tree that is the board's console too (its PL011 belongs to Bluetooth, a serdev with
//!   no tty). On the Pi 2 and Zero the console is the PL011 (ttyAMA0, QEMU's first port) and the
//!   mini UART is disabled: the harness's copy of the dtb enables it (found by its
//!   `/aliases/serial1`) and the PL011 only writes to console.log, so nothing is typed into QEMU
//!   7.2's PL011 (the Pi 2 model once lost all input there; the Pi Zero's freezes, first blamed
//!   on it, were the system timer: `emulation`). Everything the board's console prints is kept
//!   in console.log, the shell's port in shell.log.
//! - A FAT32 drive with the configured label is attached as USB storage on the model's dwc2 host.
//! - Checks, boot 1: root from the SD card, multi-user with no failed unit, the drive fsck'd and
//!   mounted where configured, the agent's status says the drive is ready, no console line that a
//!   Pi owner would read as an error of ours. After a clean power-off, from the host: the root
//!   partition and its ext4 filesystem both reach the end of the SD card (sfdisk, dumpe2fs).
//!   Boot 2: the same checks, and the partition table and filesystem size are unchanged.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::boards::{self, Board, Machine};
use crate::build::config::{Host, ImageConfig};
use crate::build::fat::Fat;
use crate::build::image;
use crate::build::partitions;
use crate::proc;
use crate::vm::boot;
use crate::vm::guest::{self, wait_mounted};
use crate::vm::limits::Guest;
use crate::vm::qemu::{self, Power, Vm, CONSOLE_LOG};

mod machine;
use machine::*;
use pi2pi_agent::bootslot::Slot;

/// What one boot showed.
pub struct BootReport {
    /// Host and architecture, e.g. `rpa-arm64`.
    pub card: String,
    pub machine: Machine,
    pub boot: u32,
    pub seconds: f64,
    /// Console lines mentioning an error or failure that were judged not ours (shown in the report).
    pub noted: Vec<String>,
}

/// One card to boot: the config it was built from, its host, its image file, and how often.
pub struct Card<'a> {
    pub cfg: &'a ImageConfig,
    pub host: &'a Host,
    /// The architecture of the base it was built from.
    pub arch: Arch,
    pub image: PathBuf,
    /// 1, or 2 to also prove that a grown card stays as it is.
    pub boots: u32,
    /// The board it is booted as: its host's (None: the first of its architecture QEMU models),
    /// or another board the card is for.
    pub board: Option<&'static Board>,
}

impl Card<'_> {
    /// Its run directory's name: host and architecture (a card built for another architecture
    /// keeps its host's name), and the board when it is not the host's.
    fn tag(&self) -> String {
        let card = format!("{}-{}", self.host.name, self.arch.deb());
        match self.board {
            Some(b) if self.host.board.is_none_or(|h| h.name != b.name) => format!("{card}-{}", b.name),
            _ => card,
        }
    }

    /// Roughly how long its boots take, for the order they are started in.
    fn expected_secs(&self) -> u32 {
        let secs = model_for(self.arch, self.board).map_or(0, |m| emulation(m.machine).boot_secs);
        self.boots * secs
    }
}

/// The board test: every card of the deployment (already built in `images`), every card of the
/// cluster example (its manager, its Zero 2 W workers on raspi3b with their own dtb, its Pi Zero
/// on raspi0), and with `armhf` the first card built for armhf when the deployment is not
/// (nothing else boots a 32-bit card; `cargo xtask test` asks for it). `only`, when not empty,
/// names the cards to boot (their tags, e.g. `worker3-armel`). `build_cluster`: build the
/// example's cards (false: `cargo xtask test` built them before, for this and the cluster test).
pub fn test(sh: &Shell, cfg: &ImageConfig, images: &Path, armhf: bool, only: &[String], build_cluster: bool) -> Result<Vec<BootReport>> {
    let mut all = cards(cfg, images);
    // When the deployment is the example, its own cards are those of its first base.
    let example = sh.current_dir().join(crate::systest::cluster::EXAMPLE);
    let is_example = cfg.file() == example;
    let cluster = if is_example { cfg.clone() } else { crate::build::config::load(&example)? };
    let covered = if is_example { vec![cfg.base.arch] } else { vec![] };
    let others = cluster_hosts(&cluster, &covered);
    if build_cluster {
        crate::systest::cluster::build_cards(sh, &cluster, &others)?;
    }
    let files = crate::systest::cluster::card_files(sh, &others)?;
    all.extend(others.into_iter().zip(files).map(|(host, image)| card_of(&cluster, host, image)));
    let variant = if armhf { armhf_variant(cfg) } else { None };
    if let Some(v) = &variant {
        let dir = build_variant(sh, v)?;
        let mut c = cards(v, &dir);
        c.truncate(1);
        c[0].boots = 1;
        all.extend(c);
    }
    if !only.is_empty() {
        let tags: Vec<String> = all.iter().map(Card::tag).collect();
        if let Some(o) = only.iter().find(|o| !tags.contains(o)) {
            bail!("--only {o}: no such card; the cards are {}", tags.join(", "));
        }
        all.retain(|c| only.contains(&c.tag()));
    }
    // Longest first, so that the two slots end at about the same time.
    all.sort_by_key(|c| std::cmp::Reverse(c.expected_secs()));
    run(sh, &all)
}

/// Every card of `cfg` on its `[base]`, built in `images`. The first boots twice: the second boot proves that
/// growing the card is done once (the same unit and script run on every card, so one card of
/// each build proves it for all); the others boot once, which keeps the phase within budget.
pub fn cards<'a>(cfg: &'a ImageConfig, images: &Path) -> Vec<Card<'a>> {
    // Hosts of other bases are booted as the cluster example's (`cluster_hosts`).
    let mut all: Vec<Card> = cfg
        .hosts
        .iter()
        .filter(|h| h.base.is_none())
        .enumerate()
        .map(|(i, host)| Card {
            cfg,
            host,
            arch: cfg.base.arch,
            image: images.join(format!("{}.img", host.name)),
            boots: if i == 0 { 2 } else { 1 },
            board: host.board,
        })
        .collect();
    // The first card once more on every other QEMU model of a board it is for (an arm64 card
    // on raspi4b as a Pi 4), once per model.
    if let Some((host, image)) = all.first().map(|c| (c.host, c.image.clone())) {
        let mut machines: Vec<Machine> = boards::emulated(cfg.base.arch).and_then(|b| b.qemu_machine).into_iter().collect();
        for b in boards::for_arch(cfg.base.arch) {
            if let Some(m) = b.qemu_machine.filter(|m| !machines.contains(m)) {
                machines.push(m);
                all.push(Card { cfg, host, arch: cfg.base.arch, image: image.clone(), boots: 1, board: Some(b) });
            }
        }
    }
    all
}

/// The hosts of another deployment (`cluster`, the example) whose cards are of architectures
/// none of `covered` is.
fn cluster_hosts<'a>(cluster: &'a ImageConfig, covered: &[Arch]) -> Vec<&'a Host> {
    cluster.hosts.iter().filter(|h| !covered.contains(&cluster.base_of(h).arch)).collect()
}

/// The card of `host` (one of `cfg`'s) in the file `image`, booted once.
fn card_of<'a>(cfg: &'a ImageConfig, host: &'a Host, image: PathBuf) -> Card<'a> {
    Card { cfg, host, arch: cfg.base_of(host).arch, image, boots: 1, board: host.board }
}

/// The 32-bit card CI boots besides an arm64 deployment's: the same config for armhf with
/// Debian's LPAE kernel (Cortex-A7 and later: the Pi 2 onwards). None for a 32-bit deployment.
pub fn armhf_variant(cfg: &ImageConfig) -> Option<ImageConfig> {
    (cfg.base.arch == Arch::Arm64).then(|| {
        let mut v = cfg.clone();
        v.base.arch = Arch::Armhf;
        v.base.kernel = "linux-image-armmp-lpae".into();
        v
    })
}

/// Builds the variant's first card into target/images-<arch>/ (its base cached like any other);
/// returns that directory.
fn build_variant(sh: &Shell, variant: &ImageConfig) -> Result<PathBuf> {
    let arch = variant.base.arch.deb();
    let opts = image::Options::test_cards(sh, arch);
    let first = variant.hosts.first().context("the config has no hosts")?;
    image::build(sh, variant, &[first], &opts).with_context(|| format!("building the {arch} variant of {}", first.name))?;
    Ok(opts.out_dir)
}

/// Boots `cards` in order, two at a time (a card starts when a slot frees), each on its board
/// model: one emulating thread per board (`emulation`), one host core each on this 2-core
/// machine.
pub fn run(sh: &Shell, cards: &[Card]) -> Result<Vec<BootReport>> {
    const SLOTS: usize = 2;
    let run_dir = sh.current_dir().join("target/board");
    let root = sh.current_dir();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<Vec<BootReport>>>>> = Mutex::new(cards.iter().map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..SLOTS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(c) = cards.get(i) else { break };
                let r = boot_card(&root, &run_dir, c);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    let mut reports = Vec::new();
    for r in results.into_inner().unwrap_or_else(|e| e.into_inner()) {
        reports.extend(r.unwrap_or_else(|| Err(anyhow::anyhow!("a board test panicked")))?);
    }
    Ok(reports)
}

/// One card's boots in its own shell and run directory; a failure says where its logs are.
fn boot_card(root: &Path, run_dir: &Path, c: &Card) -> Result<Vec<BootReport>> {
    let sh = Shell::new()?;
    sh.change_dir(root);
    let dir = run_dir.join(c.tag());
    // Each card's own directory only: another `--only` run may be using its neighbours.
    let _ = fs_err::remove_dir_all(&dir);
    let r = card(&sh, c, &dir);
    if let Err(e) = &r {
        eprintln!("board: {} failed: {e:#}\n  console log, transcript and QEMU command line kept in {}", c.tag(), dir.display());
        eprint!("{}", qemu::console_tail(&dir.join(CONSOLE_LOG), 30));
    }
    r.with_context(|| format!("{} ({}) on its board model", c.host.name, c.arch.deb()))
}

/// The card's boots and the host-side checks after each.
fn card(sh: &Shell, c: &Card, dir: &Path) -> Result<Vec<BootReport>> {
    let (cfg, host, image) = (c.cfg, c.host, c.image.as_path());
    ensure!(image.exists(), "{} is missing: run `cargo xtask image all`", image.display());
    fs_err::create_dir_all(dir)?;
    let model = model_for(c.arch, c.board)?;
    let program = model.program(sh)?;
    let sd = dir.join("sd.img");
    let image_len = fs_err::metadata(image)?.len();
    let card_len = (image_len + 1).next_power_of_two();
    proc::read(cmd!(sh, "cp --sparse=always {image} {sd}"))?;
    fs_err::OpenOptions::new().write(true).open(&sd)?.set_len(card_len)?;
    let usb = dir.join("usb.img");
    let fat = Fat::create(sh, &usb, &cfg.drive.label, 65536, None)?;
    fat.mkdirs(sh, &["sending", "receiving"])?;

    let mut boot = boot::boot_files(sh, image, &dir.join("boot"), model.filters)?;
    boot.start = as_firmware_loads(sh, &model, boot.start, dir)?;
    let dtb = dir.join("boot").join(model.dtb);
    boot::fat_of(image)?.copy_out(sh, model.dtb, &dtb).with_context(|| format!("{} is not on the boot partition", model.dtb))?;
    for edit in dtb_edits(model.machine) {
        edit.apply(sh, &dtb).with_context(|| format!("{edit:?} in the harness's copy of {}", model.dtb))?;
    }
    if model.shell_apart() {
        // The mini UART for the shell (see the module docs); the dtb's alias finds its node.
        let node = proc::read(cmd!(sh, "fdtget {dtb} /aliases serial1"))?.trim().to_string();
        proc::read(cmd!(sh, "fdtput -t s {dtb} {node} status okay"))
            .with_context(|| format!("enabling the mini UART {node} in the harness's copy of {}", model.dtb))?;
    }

    let mut reports = Vec::new();
    let mut after_first = None;
    for n in 1..=c.boots {
        let started = Instant::now();
        let mut vm = Vm::launch(sh, &host.name, dir, &argv(&model, &program, &boot, &dtb, &sd, &usb, dir), Guest::Pi(model.machine))?;
        vm.wait_booted(started).with_context(|| format!("boot {n}"))?;
        let seconds = started.elapsed().as_secs_f64();
        eprintln!("board: {} booted on {} in {seconds:.0}s (boot {n})", c.tag(), model.machine);
        let booted_len = vm.console().len();
        check_running(&mut vm, cfg).with_context(|| format!("boot {n}"))?;
        vm.stop(Power::Off).with_context(|| format!("boot {n}: power-off"))?;
        // The boot's part of the console: what came before the harness shell answered.
        let console = vm.console();
        let boot_part = console.get(..booted_len).unwrap_or(&console);
        let noted = console_errors(boot_part.split(qemu::READY).next().unwrap_or(""), host)?;
        let layout = Layout::read(sh, &sd)?;
        layout.fills(card_len).with_context(|| format!("after boot {n}"))?;
        if let Some(first) = &after_first {
            ensure!(&layout == first, "the second boot changed the card: {first:?} then {layout:?}");
        }
        after_first = Some(layout);
        // Keep each boot's console apart for the report.
        fs_err::rename(dir.join(CONSOLE_LOG), dir.join(format!("console-boot{n}.log")))?;
        if model.shell_apart() {
            fs_err::rename(dir.join(SHELL_LOG), dir.join(format!("shell-boot{n}.log")))?;
        }
        reports.push(BootReport { card: c.tag(), machine: model.machine, boot: n, seconds, noted });
    }
    for f in [&sd, &usb] {
        let _ = fs_err::remove_file(f);
    }
    Ok(reports)
}

/// In the guest: root from the SD card, every unit fine, the drive fsck'd and mounted, the agent
/// seeing it.
fn check_running(vm: &mut Vm, cfg: &ImageConfig) -> Result<()> {
    // The shell shares the console: from here on keep kernel messages off it, so that command
    // output is not interleaved with them (the boot's messages are already in console.log).
    vm.ok("dmesg -n 1")?;
    let root = vm.ok("findmnt -no SOURCE /")?;
    ensure!(root.lines().any(|l| l.trim() == "/dev/mmcblk0p2"), "root is not mounted from the SD card's slot A: {root}");
    let data = vm.ok(&format!("findmnt -no SOURCE {}", partitions::DATA_MOUNT))?;
    ensure!(data.lines().any(|l| l.trim() == "/dev/mmcblk0p4"), "the data partition is not mounted: {data}");
    guest::check_boot_state(vm, Slot::A)?;
    let mount = &cfg.drive.mount_point;
    let mut tries = 0;
    while let Err(e) = wait_mounted(vm, mount, "vfat") {
        tries += 1;
        ensure!(tries <= REPLUGS, "{e:#}\n(the USB drive enumerated again {REPLUGS} times)");
        replug_after_failed_enumeration(vm).context(e)?;
    }
    // The fstab entry's fsck ran for the drive, before its mount, and passed.
    let label = &cfg.drive.label;
    let fsck = vm.ok(&format!(
        "systemctl show -p ActiveState,Result \"systemd-fsck@$(systemd-escape --path /dev/disk/by-label/{label}).service\""
    ))?;
    ensure!(
        fsck.lines().any(|l| l.trim() == "ActiveState=active") && fsck.lines().any(|l| l.trim() == "Result=success"),
        "no successful fsck of the drive before it was mounted: {fsck}"
    );
    let status = vm.ok("pi2pi-agent status --json")?;
    let json = &status[status.find('{').context("no JSON from pi2pi-agent status")?..];
    let v: serde_json::Value = serde_json::from_str(json.trim()).with_context(|| format!("pi2pi-agent status: {status}"))?;
    ensure!(v["drive_ready"] == serde_json::Value::Bool(true), "the agent does not see the drive: {status}");
    Ok(())
}

/// How often the harness asks for the USB drive to be enumerated again (see below).
const REPLUGS: u32 = 3;

/// QEMU's dwc2 model can lose a device's enumeration when the host is loaded (seen in CI:
/// "usb 1-1: new full-speed USB device number 2 using dwc2", then only "dwc2 …: Not connected",
/// and no disk; once, a first re-enumeration failed the same way); a Pi's controller does not.
/// Only in that case, and saying so, the harness asks the kernel to enumerate again (the root
/// hub de-authorised and authorised), up to `REPLUGS` times.
fn replug_after_failed_enumeration(vm: &mut Vm) -> Result<()> {
    let (_, log) = vm.exec("dmesg | grep -c 'dwc2 .*: Not connected'; ls /sys/block | grep -c '^sd'")?;
    let counts: Vec<u32> = log.lines().filter_map(|l| l.trim().parse().ok()).collect();
    ensure!(counts.len() == 2 && counts[0] > 0 && counts[1] == 0, "the drive was not mounted, and not for a lost USB enumeration");
    eprintln!(
        "board: {}: the emulated dwc2 lost the USB drive's enumeration ({} \"Not connected\"); enumerating again",
        vm.name, counts[0]
    );
    vm.ok("echo 0 > /sys/bus/usb/devices/usb1/authorized && sleep 2 && echo 1 > /sys/bus/usb/devices/usb1/authorized")?;
    Ok(())
}

/// Console lines that read as errors. Ours (our units, our config files, the drive, the root
/// filesystem's growth) fail the test; the rest (the emulated board lacking hardware a Pi has)
/// are returned for the report.
fn console_errors(console: &str, host: &Host) -> Result<Vec<String>> {
    const OURS: &[&str] =
        &["pi2pi", "dnsmasq", "dhcpcd", "ssh", "fstab", "growfs", "PI2PI", "mmcblk0p2", "Failed to start", "FAILED", "emergency"];
    let mut noted = Vec::new();
    for l in console.lines() {
        let lower = l.to_lowercase();
        if !(lower.contains("error") || lower.contains("fail") || lower.contains("warn")) {
            continue;
        }
        if OURS.iter().any(|o| l.contains(o)) {
            bail!("{}: console line reads as an error of ours: {}", host.name, l.trim());
        }
        noted.push(l.trim().to_string());
    }
    Ok(noted)
}

/// The card's partition table and the sizes of slot A's root filesystem and of the data
/// filesystem, read from the host after power-off.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    /// (start, size) of each partition in 512-byte sectors.
    parts: Vec<(u64, u64)>,
    /// The ext4 filesystems' sizes in bytes (block count × block size): slot A's, the data's.
    root_fs_bytes: u64,
    data_fs_bytes: u64,
    table: String,
}

impl Layout {
    fn read(sh: &Shell, sd: &Path) -> Result<Layout> {
        let table = proc::read(cmd!(sh, "sfdisk --json {sd}"))?;
        let v: serde_json::Value = serde_json::from_str(&table)?;
        let parts = v["partitiontable"]["partitions"]
            .as_array()
            .context("no partitions")?
            .iter()
            .map(|p| Some((p["start"].as_u64()?, p["size"].as_u64()?)))
            .collect::<Option<Vec<_>>>()
            .context("a partition without start or size")?;
        ensure!(parts.len() == partitions::DATA as usize, "{} partitions, not {}:\n{table}", parts.len(), partitions::DATA);
        let fs_bytes = |n: u32| -> Result<u64> {
            let start = parts[n as usize - 1].0;
            let spec = format!("{}?offset={}", sd.display(), start * 512);
            let head = proc::read(cmd!(sh, "dumpe2fs -h {spec}"))?;
            let field = |name: &str| -> Result<u64> {
                head.lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().parse::<u64>()))
                    .with_context(|| format!("dumpe2fs printed no `{name}` for partition {n}"))?
                    .with_context(|| format!("dumpe2fs `{name}`"))
            };
            Ok(field("Block count:")? * field("Block size:")?)
        };
        let root_fs_bytes = fs_bytes(Slot::A.partition())?;
        let data_fs_bytes = fs_bytes(partitions::DATA)?;
        Ok(Layout { parts, root_fs_bytes, data_fs_bytes, table })
    }

    /// The data partition ends within 1 MiB of the card's end, and each filesystem fills its
    /// partition: the data's and slot A's root (to within one 4 MiB step: resize2fs rounds down
    /// to whole block groups' worth of blocks).
    fn fills(&self, card_len: u64) -> Result<()> {
        let (start, size) = self.parts[partitions::DATA as usize - 1];
        let part_end = (start + size) * 512;
        ensure!(
            card_len - part_end < 1 << 20,
            "the data partition ends at {part_end} of a {card_len}-byte card: not grown\n{}",
            self.table
        );
        for (what, n, fs) in [("data", partitions::DATA, self.data_fs_bytes), ("slot A's root", Slot::A.partition(), self.root_fs_bytes)] {
            let part_bytes = self.parts[n as usize - 1].1 * 512;
            ensure!(
                part_bytes - fs.min(part_bytes) < 4 << 20,
                "the {what} filesystem is {fs} bytes in a {part_bytes}-byte partition: not grown",
            );
        }
        Ok(())
    }
}

/// One line per boot, with the console lines that were noted but not judged ours.
pub fn render(reports: &[BootReport]) -> String {
    let mut s = String::new();
    for r in reports {
        s += &format!(
            "board: {} on {} boot {}: {:.0}s to multi-user; {} console lines noted\n",
            r.card,
            r.machine,
            r.boot,
            r.seconds,
            r.noted.len()
        );
        for l in &r.noted {
            s += &format!("    {l}\n");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_card_also_boots_on_every_other_model_of_its_boards() {
        let cfg = crate::build::config::shipped();
        let tags: Vec<(String, u32)> = cards(&cfg, Path::new("/i")).iter().map(|c| (c.tag(), c.boots)).collect();
        assert_eq!(tags, [("rpa-arm64".into(), 2), ("rpb-arm64".into(), 1), ("rpa-arm64-pi4-b".into(), 1)]);
        let pi4 = &cards(&cfg, Path::new("/i"))[2];
        assert_eq!(model_for(Arch::Arm64, pi4.board).unwrap().machine, Machine::Raspi4b);
        // The armhf variant has one model (raspi2b): no extra card.
        let v = armhf_variant(&cfg).unwrap();
        assert_eq!(cards(&v, Path::new("/i")).len(), 2);
    }

    /// raspi4b's shell and console share the PL011 (QEMU's first serial port); elsewhere the shell
    /// is on the mini UART (the second), and a PL011 console apart from it goes to console.log.
    #[test]
    fn each_model_wires_its_shell_and_console_to_qemus_serial_ports() {
        let boot =
            boot::BootFiles { start: boot::Start::UBoot { image: "u".into(), env_flash: None }, cmdline: "console=ttyS1,115200".into() };
        let serials = |board: &str| {
            let arch = boards::arches_of(board)[0];
            let model = model_for(arch, boards::for_arch(arch).iter().find(|b| b.name == board)).unwrap();
            let argv = argv(&model, Path::new("qemu"), &boot, Path::new("d"), Path::new("s"), Path::new("u"), Path::new("/r"));
            let argv: Vec<String> = argv.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let ports: Vec<String> = argv.windows(2).filter(|w| w[0] == "-serial").map(|w| w[1].clone()).collect();
            let append = argv.windows(2).find(|w| w[0] == "-append").map(|w| w[1].clone()).unwrap();
            (ports, append)
        };
        let (ports, append) = serials("pi4-b");
        assert_eq!(ports, ["chardev:sh", "null"]);
        assert!(append.contains("systemd.debug_shell=ttyAMA0") && append.contains("clk_ignore_unused"), "{append}");
        let (ports, append) = serials("pi3-b");
        assert_eq!(ports, ["null", "chardev:sh"]);
        assert!(append.contains("systemd.debug_shell=ttyS1"), "{append}");
        let (ports, _) = serials("pi-zero");
        assert_eq!(ports, ["file:/r/console.log", "chardev:sh"]);
    }
}
