//! The agent built for a 32-bit ARM port must read file times past January 2038 right. Debian
//! moved its 32-bit ports to a 64-bit `time_t` in trixie; our agent is linked statically and
//! brings its own C library, so what matters is how *it* reads times. This runs the real 32-bit
//! binary as the sender (under qemu-user via binfmt_misc, as the image build's package scripts
//! run): one sync over a pipe of files dated 1980, 2037 and 2040, then compares the times in the
//! sender's delivery journal with the host's own stat of the same files. The receiver is the
//! host's own build: qemu-user 7.2 does not emulate `openat2`, which the receiver relies on (a
//! Pi's kernel has it), and the receiver does not look at file times.
//!
//! The ARMv6 agent (Pi 1, Zero) runs on qemu-arm's model of the Pi Zero's own core, the
//! ARM1176JZF-S, not on binfmt's default (a CPU with every extension): an ARMv7-only instruction
//! in it, from the standard library or a dependency, stops it with SIGILL here as it would on
//! the Pi. Its ELF attributes must also say ARMv6.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use xshell::Shell;

use crate::build::arch::Arch;
use crate::build::{agent_build, setup};
use crate::proc;

/// (file name, date for `touch -d`)
const DATED: &[(&str, &str)] =
    &[("dos-era.txt", "1980-01-02 00:00:00 UTC"), ("before.txt", "2037-12-31 23:59:58 UTC"), ("after.txt", "2040-02-29 12:00:00 UTC")];

/// Every 32-bit agent we build: armv7 (armhf) and ARMv6 (armel).
pub fn check_all(sh: &Shell) -> Result<()> {
    [Arch::Armhf, Arch::Armel].into_iter().try_for_each(|a| check(sh, a))
}

pub fn check(sh: &Shell, arch: Arch) -> Result<()> {
    setup::ensure(sh, arch)?;
    let agent = agent_build::build(sh, arch)?.binary;
    proc::run(xshell::cmd!(sh, "cargo build --quiet --locked -p pi2pi-agent"))?;
    let host_agent = sh.current_dir().join("target/debug/pi2pi-agent");
    let dir = sh.current_dir().join(format!("target/time32-{}", arch.deb()));
    let _ = fs_err::remove_dir_all(&dir);
    for node in ["a", "b"] {
        for d in ["sending", "receiving", "state"] {
            fs_err::create_dir_all(dir.join(node).join(d))?;
        }
    }
    write_config(&dir, "b", "")?;
    let serve = format!(
        "[[peer]]\nname = \"b\"\ntransport = \"pipe\"\ncommand = [\"{}\", \"--config\", \"{}\", \"serve\"]\n",
        host_agent.display(),
        dir.join("b.toml").display()
    );
    write_config(&dir, "a", &serve)?;
    for (name, date) in DATED {
        let p = dir.join("a/sending").join(name);
        fs_err::write(&p, format!("{name} dated {date}\n"))?;
        proc::read(xshell::cmd!(sh, "touch -d {date} {p}"))?;
    }
    if let Some(cpu) = emulated_cpu(arch) {
        check_elf_arch(sh, &agent, "v6")?;
        eprintln!("time32: running the {} agent on qemu-arm -cpu {cpu}", arch.deb());
    }
    let mut argv: Vec<OsString> = match emulated_cpu(arch) {
        Some(cpu) => vec!["qemu-arm-static".into(), "-cpu".into(), cpu.into()],
        None => Vec::new(),
    };
    argv.extend([agent.clone().into(), "--config".into(), dir.join("a.toml").into(), "sync".into()]);
    let status = proc::run_inherited(&argv, &[("PI2PI_LOG", "warn".into())])?;
    ensure!(status.success(), "the {} agent's sync failed ({status})", arch.deb());

    let journal = pi2pi_agent::state::Journal::open(&dir.join("a/state"), "b")?;
    for (name, date) in DATED {
        let host_ns = host_mtime_ns(&dir.join("a/sending").join(name))?;
        match journal.get(name) {
            Some(pi2pi_agent::state::Entry::Delivered { mtime_ns, .. }) => ensure!(
                *mtime_ns == host_ns,
                "the {} agent read {name} (dated {date}) as {mtime_ns} ns since 1970; the host reads {host_ns}",
                arch.deb()
            ),
            other => anyhow::bail!("{name} was not delivered by the {} agent: {other:?}", arch.deb()),
        }
        let sent = fs_err::read(dir.join("a/sending").join(name))?;
        ensure!(fs_err::read(dir.join("b/receiving").join(name)).ok() == Some(sent), "{name} did not arrive intact");
    }
    eprintln!("time32: the {} agent reads times before 1981, at the end of 2037 and after 2038 as the host does", arch.deb());
    Ok(())
}

/// The CPU qemu-arm must emulate for the agent of `arch` to prove it runs on its oldest Pi
/// (None: binfmt's default will do).
fn emulated_cpu(arch: Arch) -> Option<&'static str> {
    (arch == Arch::Armel).then_some("arm1176")
}

/// The binary's ARM build attributes name `want` (readelf: `Tag_CPU_arch: v6`).
fn check_elf_arch(sh: &Shell, binary: &Path, want: &str) -> Result<()> {
    let attrs = proc::read(xshell::cmd!(sh, "readelf -A {binary}"))?;
    let arch = attrs.lines().find_map(|l| l.trim().strip_prefix("Tag_CPU_arch:")).map(str::trim);
    ensure!(arch == Some(want), "{} is built for {arch:?}, not ARM {want}", binary.display());
    Ok(())
}

fn write_config(dir: &Path, node: &str, peers: &str) -> Result<()> {
    let n = dir.join(node);
    let text = format!(
        "node = \"{node}\"\n[drive]\nlabel = \"PI2PI\"\nmount_point = \"{}\"\nrequire_mount = false\n[state]\ndir = \"{}\"\n[sync]\nsettle_ms = 0\n{peers}",
        n.display(),
        n.join("state").display()
    );
    fs_err::write(dir.join(format!("{node}.toml")), text).context("writing a test config")
}

fn host_mtime_ns(p: &Path) -> Result<i64> {
    use std::os::unix::fs::MetadataExt;
    let md = fs_err::metadata(p)?;
    Ok(md.mtime() * 1_000_000_000 + md.mtime_nsec())
}
