//! The one place xtask starts processes. Short commands go through xshell (echoed, with context);
//! long ones (mmdebstrap, QEMU) through duct, with their output kept in a log file and shown as
//! progress, so a failure can be read in full afterwards.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::Cmd;

/// Runs a command, output inherited; the error names the command.
pub fn run(cmd: Cmd<'_>) -> Result<()> {
    let shown = cmd.to_string();
    cmd.run().with_context(|| format!("`{shown}` failed"))
}

/// Runs a command quietly and returns its stdout (trimmed).
pub fn read(cmd: Cmd<'_>) -> Result<String> {
    let shown = cmd.to_string();
    cmd.quiet().read().with_context(|| format!("`{shown}` failed"))
}

/// Runs a long command with a progress line, its full output in `log`. On failure the error
/// carries the last lines and the log's path.
pub fn run_logged(dir: &Path, argv: &[OsString], envs: &[(&str, String)], log: &Path, what: &str) -> Result<()> {
    let (prog, args) = argv.split_first().context("empty command")?;
    if let Some(p) = log.parent() {
        fs_err::create_dir_all(p)?;
    }
    let mut logf = fs_err::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let mut expr = duct::cmd(prog, args).dir(dir).stderr_to_stdout().unchecked();
    for (k, v) in envs {
        expr = expr.env(k, v);
    }
    let started = Instant::now();
    let reader = expr.reader().with_context(|| format!("cannot start {}", prog.to_string_lossy()))?;
    let bar = indicatif::ProgressBar::new_spinner();
    let tty = std::io::stderr().is_terminal();
    if tty {
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut tail = VecDeque::new();
    let mut lines = BufReader::new(&reader);
    let mut line = String::new();
    let mut progress = Progress::default();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        logf.write_all(line.as_bytes())?;
        let l = line.trim_end().to_string();
        // mmdebstrap's "I:" lines are the stage names: worth seeing in a CI log too. Between them
        // dpkg's "Setting up" lines count packages, shown every PROGRESS_EVERY: the emulated
        // install of a cold base is minutes with no stage line.
        let shown = if l.starts_with("I: ") || l.starts_with("E: ") { Some(l.clone()) } else { progress.count(&l, started.elapsed()) };
        if let Some(shown) = shown {
            if tty {
                bar.set_message(format!("{what}: {shown}"));
            } else {
                eprintln!("[{:>5.0}s] {what}: {shown}", started.elapsed().as_secs_f64());
            }
        }
        tail.push_back(l);
        if tail.len() > 40 {
            tail.pop_front();
        }
    }
    bar.finish_and_clear();
    let status = reader.try_wait()?.map(|o| o.status);
    match status {
        Some(s) if s.success() => Ok(()),
        _ => bail!(
            "{what} failed ({}); last lines:\n{}\nfull log: {}",
            status.map(|s| s.to_string()).unwrap_or_else(|| "no exit status".into()),
            Vec::from(tail).join("\n"),
            log.display()
        ),
    }
}

/// How often a long step's package count is shown.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);

/// dpkg's "Setting up <package> (<version>) ..." lines, counted.
#[derive(Default)]
struct Progress {
    set_up: usize,
    shown_at: Duration,
}

impl Progress {
    /// Counts `line`; a message when one is due.
    fn count(&mut self, line: &str, now: Duration) -> Option<String> {
        let package = line.strip_prefix("Setting up ")?.split_whitespace().next()?;
        self.set_up += 1;
        (now >= self.shown_at + PROGRESS_EVERY).then(|| {
            self.shown_at = now;
            format!("{} packages set up (now {package})", self.set_up)
        })
    }
}

/// Runs a command with this terminal's stdin/stdout/stderr (an interactive VM, a timed
/// benchmark run) and returns its exit status, whatever it is.
pub fn run_inherited(argv: &[OsString], envs: &[(&str, String)]) -> Result<std::process::ExitStatus> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let mut expr = duct::cmd(prog, args).unchecked();
    for (k, v) in envs {
        expr = expr.env(k, v);
    }
    Ok(expr.run().with_context(|| format!("cannot start {}", prog.to_string_lossy()))?.status)
}

/// Starts a long-lived process (a VM, a server) with stdout/stderr in `log`; the caller owns its lifetime.
pub fn spawn(dir: &Path, argv: &[OsString], log: &Path) -> Result<duct::Handle> {
    let (prog, args) = argv.split_first().context("empty command")?;
    let f = fs_err::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    duct::cmd(prog, args)
        .dir(dir)
        .stdin_null()
        .stdout_file(f.try_clone()?)
        .stderr_file(f)
        .unchecked()
        .start()
        .with_context(|| format!("cannot start {}", prog.to_string_lossy()))
}

/// A byte-count progress bar on a terminal; hidden otherwise, so CI logs stay line-oriented.
pub fn progress_bar(len: u64, what: &str) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    let style = indicatif::ProgressStyle::with_template("{msg}: {bytes}/{total_bytes} {wide_bar} {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A spinner with the elapsed time on a terminal, cleared when dropped; nothing otherwise.
pub struct Spinner(indicatif::ProgressBar);

impl Spinner {
    pub fn new(what: &str) -> Spinner {
        if !std::io::stderr().is_terminal() {
            return Spinner(indicatif::ProgressBar::hidden());
        }
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        Spinner(bar)
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

/// For tests that need what `cargo xtask` sets up (tools it installs, root): true, after saying
/// the test was skipped and why, when something is missing; under CI (`CI` set), where setup has
/// run as root, a missing tool or root fails the test instead of passing silently.
#[cfg(test)]
pub fn skip_test_without(tools: &[&str], root: bool, test: &str) -> bool {
    // On PATH and executable: not every tool answers `--version` (mkenvimage takes only `-V`).
    let have = |t: &&str| {
        use std::os::unix::fs::PermissionsExt;
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| fs_err::metadata(d.join(t)).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
    };
    let mut missing: Vec<String> = tools.iter().filter(|t| !have(t)).map(|t| t.to_string()).collect();
    if root && !crate::build::setup::is_root() {
        missing.push("root".into());
    }
    if missing.is_empty() {
        return false;
    }
    let why = format!("{test} needs {} (cargo xtask sets them up; CI runs as root)", missing.join(", "));
    assert!(std::env::var_os("CI").is_none(), "{why}");
    eprintln!("SKIPPED: {why}");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_progress_is_counted_and_shown_every_so_often() {
        let mut p = Progress::default();
        let at = Duration::from_secs;
        assert_eq!(p.count("Unpacking libc6:arm64 (2.41-12) ...", at(1)), None);
        assert_eq!(p.count("Setting up libc6:arm64 (2.41-12) ...", at(31)).as_deref(), Some("1 packages set up (now libc6:arm64)"));
        assert_eq!(p.count("Setting up bash (5.2) ...", at(40)), None, "shown 9 s ago");
        assert_eq!(p.count("Setting up kmod (34) ...", at(61)).as_deref(), Some("3 packages set up (now kmod)"));
    }
}
