use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pi2pi_agent::bootslot::{self, Health, Slot};
use pi2pi_agent::{config, daemon, layout, lock, serve, status};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// pi2pi sync agent: delivers this Pi's sending/ to its peers' receiving/ over SSH.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// Configuration file.
    #[arg(long, global = true, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run as a daemon: deliver files as soon as they are written (systemd schedule).
    Run,
    /// One full pass, then exit (cron schedule). Exits 75 if another agent holds the lock.
    Sync,
    /// Receiving side, speaking the protocol on stdin/stdout (sshd's forced command).
    Serve {
        /// Put what arrives in receiving/<NAME>/ (a host taking files from several senders
        /// gives each its own directory, set by the forced command of that sender's key).
        #[arg(long, value_name = "NAME", value_parser = sender_dir)]
        into: Option<String>,
    },
    /// What is pending, delivered and failing; whether the drive and peers are up.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Apply an update bundle from the drive's update/ directory, or judge one being tried (run
    /// as root by pi2pi-update.timer; one pass).
    Update,
    /// Which root slot boots (the state boot.scr keeps on the boot partition); RAUC's custom
    /// boot-loader interface. Needs no agent configuration.
    Boot {
        /// The state file.
        #[arg(long, default_value = layout::BOOT_ENV)]
        env: PathBuf,
        #[command(subcommand)]
        op: BootOp,
    },
}

#[derive(Subcommand, Clone, Copy)]
enum BootOp {
    /// The slot the next boot starts.
    GetPrimary,
    /// Boot SLOT next, with all its attempts; the other stays as the fallback.
    SetPrimary {
        slot: Slot,
    },
    /// Whether SLOT may be booted (good) or is passed over (bad).
    GetState {
        slot: Slot,
    },
    SetState {
        slot: Slot,
        state: Health,
    },
    /// The slot this system was booted from.
    GetCurrent,
    /// This boot was healthy: give the booted slot its attempts back.
    MarkGood,
    /// The whole state, as the file holds it.
    Show,
}

/// `pi2pi-agent boot …`: prints what RAUC reads (one word) and changes only what it is asked to.
fn boot(env: &std::path::Path, op: BootOp) -> anyhow::Result<()> {
    let mut state = bootslot::load(env)?;
    let change = |state: &bootslot::BootState| bootslot::store(env, state);
    match op {
        BootOp::GetPrimary => println!("{}", state.primary().context("no slot has boot attempts left")?),
        BootOp::SetPrimary { slot } => {
            state.set_primary(slot);
            change(&state)?
        }
        BootOp::GetState { slot } => println!("{}", state.health(slot)),
        BootOp::SetState { slot, state: health } => {
            state.set_health(slot, health);
            change(&state)?
        }
        BootOp::GetCurrent => println!("{}", bootslot::booted_here()?),
        BootOp::MarkGood => {
            let slot = bootslot::booted_here()?;
            state.set_health(slot, Health::Good);
            change(&state)?;
            tracing::info!("slot {slot} booted and is marked good ({} attempts)", state.left(slot));
        }
        BootOp::Show => print!("{}", state.render()),
    }
    Ok(())
}

/// `--into`'s value is one directory name, by the host-name rule (never a path).
fn sender_dir(s: &str) -> Result<String, String> {
    pi2pi_agent::rules::host_name(s).map(|()| s.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // PI2PI_LOG: `info` (the default), `debug`, or per target, like `pi2pi_agent::serve=debug`.
    let filter = std::env::var("PI2PI_LOG").ok().and_then(|s| s.parse::<Targets>().ok());
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false))
        .with(filter.unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO)))
        .init();
    // These two run without a configuration: RAUC calls `boot`, and a new system on trial must be
    // judged by `update` even when its configuration is broken (that is a reason to go back).
    let early = match &cli.cmd {
        Cmd::Boot { env, op } => Some(boot(env, *op)),
        Cmd::Update => {
            let cfg = config::Config::load(&cli.config).map_err(|e| e.to_string());
            Some(pi2pi_agent::update::pass(cfg.as_ref().map_err(String::clone)))
        }
        _ => None,
    };
    if let Some(r) = early {
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pi2pi-agent: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let cfg = match config::Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pi2pi-agent: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let result = match cli.cmd {
        Cmd::Run => daemon::run(cfg).map(|()| ExitCode::SUCCESS),
        Cmd::Sync => daemon::once(cfg).map(|r| if r.failures == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        Cmd::Serve { into } => {
            // Not pipes when run by hand from a terminal; then this does nothing.
            pi2pi_agent::transport::widen_pipe(std::io::stdin());
            pi2pi_agent::transport::widen_pipe(std::io::stdout());
            serve::serve(&cfg, into.as_deref(), std::io::stdin(), std::io::stdout()).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Status { json } => status::report(&cfg, json).map(|s| {
            print!("{s}");
            ExitCode::SUCCESS
        }),
        Cmd::Update | Cmd::Boot { .. } => unreachable!("handled before the configuration is read"),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.is::<lock::AlreadyRunning>() => {
            eprintln!("pi2pi-agent: {e}");
            ExitCode::from(75) // EX_TEMPFAIL
        }
        Err(e) => {
            eprintln!("pi2pi-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
