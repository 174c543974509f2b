//! `cargo xtask`: builds pi2pi's card images and runs its tests. See `cargo xtask --help`.

mod bench;
mod build;
mod flash;
mod proc;
mod systest;
mod vm;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xshell::Shell;

use build::{config, image, keys, setup};
use systest::{boots, cluster, fuzz, pair, phases, soak, time32, verify};
use vm::interactive;

#[derive(Parser)]
#[command(about = "pi2pi build and test tasks", arg_required_else_help = true)]
struct Cli {
    /// The deployment to build or test (its lock is beside it, `<name>.lock`).
    #[arg(long, global = true, default_value = "image.toml")]
    config: PathBuf,
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build flashable card images: target/images/<host>.img, .img.xz, .img.bmap, rpi-imager.json, SHA256SUMS.
    Image {
        /// A host from image.toml, or `all`.
        host: String,
        /// Accept newer packages from the archive and rewrite image.lock.
        #[arg(long)]
        update_lock: bool,
        /// Where the images and what ships with them go (default target/images).
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// Where intermediate files go (default target/image-build).
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Where the base and tools are cached (default ~/.cache/pi2pi, or PI2PI_CACHE).
        #[arg(long)]
        cache_dir: Option<PathBuf>,
    },
    /// Build every image twice from empty build directories and compare the bytes.
    Verify {
        /// Also rebuild the base root filesystem twice (empty caches; slow).
        #[arg(long)]
        cold: bool,
    },
    /// Make missing SSH keys in keys/ (git-ignored).
    Keys,
    /// Write a built card to an SD card (or a file): shows the device and asks, refuses one in
    /// use, writes the mapped blocks with bmaptool, reads them back and compares.
    Flash {
        /// A host from the config (its card is target/images/<host>.img).
        host: String,
        /// The SD card's device, e.g. /dev/sdb (the whole device, not a partition).
        device: PathBuf,
        /// Do not ask before writing.
        #[arg(long)]
        yes: bool,
        /// Write a device that is not removable or is larger than 256 GB (never one in use).
        #[arg(long)]
        force: bool,
    },
    /// Run the tests. With no argument: everything (what CI runs).
    Test {
        #[command(subcommand)]
        which: Option<TestWhich>,
        /// Skip the QEMU pair test (quick local runs).
        #[arg(long)]
        no_qemu: bool,
    },
    /// Boot the pair and inject faults (power cuts, drive pulls, cable cuts, agent kills, reboots)
    /// while both sides write files; check nothing is lost, torn or doubled.
    Soak {
        /// How many faults (each kind in turn, in a shuffled order).
        #[arg(long, default_value_t = 15)]
        faults: usize,
        /// Replays a soak (printed at its start); default: from the clock.
        #[arg(long)]
        seed: Option<u64>,
        /// The largest file a writer puts into sending/, in MiB.
        #[arg(long, default_value_t = 200)]
        max_mib: u64,
        /// The longest a cable stays cut, in seconds.
        #[arg(long, default_value_t = 120)]
        max_cut: u64,
    },
    /// Build (or find in the cache) every base the cards and the tests' cards are built from,
    /// at the same time: what the test's "bases" phase does.
    Bases,
    /// Boot one built image in QEMU on this terminal.
    Run { host: String },
    /// Print measurements.
    Bench {
        #[arg(value_enum)]
        what: Bench,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// The agent against rsync over real sshd: throughput, latency, RSS, binary size.
    Agent,
    /// Image builds from a cold and a warm cache: times per stage, sizes.
    Image,
}

#[derive(Subcommand)]
enum TestWhich {
    /// Boot every built card, and every card of the cluster example, on QEMU's model of its Pi
    /// (raspi3b for arm64, raspi0 for the Pi Zero; the first card twice).
    Board {
        /// Also build the first card for armhf and boot it on raspi2b (the Pi 2).
        #[arg(long)]
        armhf: bool,
        /// Boot only these cards (host-architecture, e.g. `worker3-armel`; repeatable).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Boot a cluster's manager and two workers together in QEMU and check the whole cluster
    /// (examples/cluster.toml, or --config's file if it describes a cluster).
    Cluster,
    /// The 32-bit agents (armv7, and ARMv6 on the Pi Zero's CPU), run under qemu-arm, read file
    /// times past 2038 right.
    Time32,
    /// Run each of the agent's cargo-fuzz targets for a while (stable, no sanitizer).
    Fuzz {
        /// Seconds per target (by default what CI runs).
        #[arg(long, default_value_t = fuzz::EACH.as_secs())]
        seconds: u64,
    },
    /// Boot both images together in QEMU and check the whole system.
    Qemu {
        /// Both cards on this schedule; when omitted, the dhcp-server on the configured one and
        /// the client on the other, so one boot covers both.
        #[arg(long, value_enum)]
        schedule: Option<config::Schedule>,
    },
}

/// The repository root, whatever directory cargo was started from: where xtask was built from,
/// or `PI2PI_ROOT` (verify's second build sees the checkout at another path).
fn project_root() -> PathBuf {
    match std::env::var_os("PI2PI_ROOT") {
        Some(r) => PathBuf::from(r),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf(),
    }
}

fn main() -> Result<()> {
    // Files the build's tools create (mmdebstrap's hooks, tar, mke2fs's inputs) take their mode
    // from the umask: the builder's own (077 under `verify`'s second build) made one file of the
    // base 0600 instead of 0644. Every build uses Debian's default.
    // SAFETY: umask only sets this process's file mode creation mask.
    unsafe { libc::umask(0o022) };
    let cli = Cli::parse();
    let sh = Shell::new()?;
    // A relative --config is relative to where the user ran the command, not to the root.
    let cwd = std::env::current_dir()?;
    let config_path = cwd.join(&cli.config);
    sh.change_dir(project_root());
    // Only the tasks that build or boot cards read the config: a broken one must not stop `bench agent`.
    let load = || config::load(&config_path);
    match cli.task {
        Task::Image { host, update_lock, out_dir, work_dir, cache_dir } => {
            let cfg = load()?;
            let hosts = image::select(&cfg, &host)?;
            let d = image::Options::default_for(&sh);
            let opts = image::Options {
                update_lock,
                out_dir: out_dir.map(|p| cwd.join(p)).unwrap_or(d.out_dir),
                work_dir: work_dir.map(|p| cwd.join(p)).unwrap_or(d.work_dir),
                cache_dir: cache_dir.map(|p| cwd.join(p)).unwrap_or(d.cache_dir),
                ..d
            };
            let built = image::build(&sh, &cfg, &hosts, &opts)?;
            print!("{}", image::summary(&built));
        }
        Task::Verify { cold } => verify::run(&sh, &load()?, cold, None)?,
        Task::Bases => phases::build_bases(&sh, &load()?, false)?,
        Task::Keys => {
            let cfg = load()?;
            setup::ensure(&sh, cfg.base.arch)?;
            keys::ensure(&sh, &cfg)?
        }
        Task::Flash { host, device, yes, force } => {
            let cfg = load()?;
            let img = image::Options::default_for(&sh).out_dir.join(format!("{}.img", cfg.host(&host)?.name));
            setup::ensure(&sh, cfg.base.arch)?;
            flash::run(&sh, &img, &cwd.join(device), &flash::Options { yes, force })?;
        }
        Task::Test { which: None, no_qemu } => phases::all(&sh, &load()?, no_qemu)?,
        Task::Soak { faults, seed, max_mib, max_cut } => {
            let cfg = load()?;
            setup::ensure(&sh, cfg.base.arch)?;
            let seed = seed
                .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
            let opts = soak::Options { faults, seed, max_mib, max_cut: std::time::Duration::from_secs(max_cut) };
            print!("{}", soak::run(&sh, &cfg, &opts, true)?.render());
        }
        Task::Test { which: Some(TestWhich::Board { armhf, only }), .. } => {
            let cfg = load()?;
            let built = image::build(&sh, &cfg, &image::select(&cfg, "all")?, &image::Options::default_for(&sh))?;
            let dir = built.first().and_then(|b| b.path.parent()).context("no cards built")?.to_path_buf();
            print!("{}", boots::render(&boots::test(&sh, &cfg, &dir, armhf, &only, true)?));
        }
        Task::Test { which: Some(TestWhich::Time32), .. } => time32::check_all(&sh)?,
        Task::Test { which: Some(TestWhich::Fuzz { seconds }), .. } => {
            setup::ensure(&sh, load()?.base.arch)?;
            fuzz::run(&sh, std::time::Duration::from_secs(seconds), &image::Options::default_for(&sh).cache_dir)?
        }
        Task::Test { which: Some(TestWhich::Cluster), .. } => {
            let cfg = load()?;
            let cfg = if cfg.manager().is_some() { cfg } else { config::load(&sh.current_dir().join(cluster::EXAMPLE))? };
            setup::ensure(&sh, cfg.base.arch)?;
            print!("{}", cluster::run(&sh, &cfg, true)?.render());
        }
        Task::Test { which: Some(TestWhich::Qemu { schedule }), .. } => {
            let cfg = load()?;
            setup::ensure(&sh, cfg.base.arch)?;
            print!("{}", pair::run(&sh, &cfg, &pair::schedules(&cfg, schedule), true)?.render());
        }
        Task::Run { host } => interactive::run(&sh, &load()?, &host)?,
        Task::Bench { what: Bench::Agent } => bench::agent(&sh)?,
        Task::Bench { what: Bench::Image } => bench::image(&sh, &load()?)?,
    }
    Ok(())
}
