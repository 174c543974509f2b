//! `cargo xtask`: builds pi2pi's card images and runs its tests. See `cargo xtask --help`.

mod agent_build;
mod base;
mod bench;
mod cache;
mod config;
mod disk;
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
mod tools;
mod verify;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use xshell::Shell;

#[derive(Parser)]
#[command(about = "pi2pi build and test tasks", arg_required_else_help = true)]
struct Cli {
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
    /// Print measurements: `agent` (throughput vs rsync, latency, RSS, size) or `image` (build times, size).
    Bench { what: String },
}

#[derive(Subcommand)]
enum TestWhich {
    /// Boot both images together in QEMU and check the whole system.
    Qemu {
        /// "systemd" or "cron"; both when omitted.
        #[arg(long)]
        schedule: Option<String>,
    },
}

/// The repository root, whatever directory cargo was started from.
fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let sh = Shell::new()?;
    sh.change_dir(project_root());
    let cfg = config::load(&sh.current_dir().join("image.toml"))?;
    match cli.task {
        Task::Image { host, update_lock } => {
            let hosts = image::select(&cfg, &host)?;
            let opts = image::Options { update_lock, ..image::Options::default_for(&sh) };
            let built = image::build(&sh, &cfg, &hosts, &opts)?;
            print!("{}", image::summary(&built));
        }
        Task::Verify { cold } => verify::run(&sh, &cfg, cold)?,
        Task::Keys => keys::ensure(&sh, &cfg)?,
        Task::Test { which: None, no_qemu } => test::all(&sh, &cfg, no_qemu)?,
        Task::Test { which: Some(TestWhich::Qemu { schedule }), .. } => {
            let schedules = match schedule.as_deref() {
                None => vec![config::Schedule::Systemd, config::Schedule::Cron],
                Some("systemd") => vec![config::Schedule::Systemd],
                Some("cron") => vec![config::Schedule::Cron],
                Some(o) => anyhow::bail!("--schedule {o}: use systemd or cron"),
            };
            setup::ensure(&sh, cfg.base.arch)?;
            for s in schedules {
                print!("{}", pair::run(&sh, &cfg, s, true)?.render());
            }
        }
        Task::Run { host } => run::run(&sh, &cfg, &host)?,
        Task::Bench { what } => match what.as_str() {
            "agent" => bench::agent(&sh)?,
            "image" => bench::image(&sh, &cfg)?,
            o => anyhow::bail!("nothing to benchmark called `{o}`: use `agent` or `image`"),
        },
    }
    Ok(())
}
