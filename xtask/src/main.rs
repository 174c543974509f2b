//! `cargo xtask`: builds pi2pi's card images and runs its tests. See `cargo xtask --help`.

mod agent_build;
mod base;
mod cache;
mod config;
mod disk;
mod image;
mod keys;
mod layers;
mod lock;
mod proc;
mod rootfs;
mod setup;
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
    }
    Ok(())
}
