//! `cargo xtask`: builds pi2pi's card images and runs its tests. See `cargo xtask --help`.

mod agent_build;
mod base;
mod bench;
mod board;
mod boards;
mod cache;
mod config;
mod disk;
mod fat;
mod image;
mod keys;
mod layers;
mod pair;
mod pins;
mod proc;
mod qemu;
mod rootfs;
mod run;
mod setup;
mod test;
mod time32;
mod tools;
mod verify;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use xshell::Shell;

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
    /// Build flashable card images: target/images/<host>.img and SHA256SUMS.
    Image {
        /// A host from image.toml, or `all`.
        host: String,
        /// Accept newer packages from the archive and rewrite image.lock.
        #[arg(long)]
        update_lock: bool,
    },
    /// Build every image twice from empty build directories and compare the bytes.
    Verify {
        /// Also rebuild the base root filesystem twice (empty caches; slow).
        #[arg(long)]
        cold: bool,
    },
    /// Make missing SSH keys in keys/ (git-ignored).
    Keys,
    /// Run the tests. With no argument: everything (what CI runs).
    Test {
        #[command(subcommand)]
        which: Option<TestWhich>,
        /// Skip the QEMU pair test (quick local runs).
        #[arg(long)]
        no_qemu: bool,
    },
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
    /// Boot every built card on QEMU's model of its Pi (raspi3b for arm64), twice.
    Board,
    /// The 32-bit agents (armv7, and ARMv6 on the Pi Zero's CPU), run under qemu-arm, read file
    /// times past 2038 right.
    Time32,
    /// Boot both images together in QEMU and check the whole system.
    Qemu {
        /// Both cards on this schedule; when omitted, the dhcp-server on the configured one and
        /// the client on the other, so one boot covers both.
        #[arg(long, value_enum)]
        schedule: Option<config::Schedule>,
    },
}

/// The repository root, whatever directory cargo was started from.
fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let sh = Shell::new()?;
    // A relative --config is relative to where the user ran the command, not to the root.
    let config_path = std::env::current_dir()?.join(&cli.config);
    sh.change_dir(project_root());
    // Only the tasks that build or boot cards read the config: a broken one must not stop `bench agent`.
    let load = || config::load(&config_path);
    match cli.task {
        Task::Image { host, update_lock } => {
            let cfg = load()?;
            let hosts = image::select(&cfg, &host)?;
            let opts = image::Options { update_lock, ..image::Options::default_for(&sh) };
            let built = image::build(&sh, &cfg, &hosts, &opts)?;
            print!("{}", image::summary(&built));
        }
        Task::Verify { cold } => verify::run(&sh, &load()?, cold)?,
        Task::Keys => keys::ensure(&sh, &load()?)?,
        Task::Test { which: None, no_qemu } => test::all(&sh, &load()?, no_qemu)?,
        Task::Test { which: Some(TestWhich::Board), .. } => {
            let cfg = load()?;
            let built = image::build(&sh, &cfg, &image::select(&cfg, "all")?, &image::Options::default_for(&sh))?;
            let dir = built.first().and_then(|b| b.path.parent()).context("no cards built")?.to_path_buf();
            print!("{}", board::render(&board::test(&sh, &cfg, &dir)?));
        }
        Task::Test { which: Some(TestWhich::Time32), .. } => time32::check_all(&sh)?,
        Task::Test { which: Some(TestWhich::Qemu { schedule }), .. } => {
            let cfg = load()?;
            setup::ensure(&sh, cfg.base.arch)?;
            print!("{}", pair::run(&sh, &cfg, &pair::schedules(&cfg, schedule), true)?.render());
        }
        Task::Run { host } => run::run(&sh, &load()?, &host)?,
        Task::Bench { what: Bench::Agent } => bench::agent(&sh)?,
        Task::Bench { what: Bench::Image } => bench::image(&sh, &load()?)?,
    }
    Ok(())
}
