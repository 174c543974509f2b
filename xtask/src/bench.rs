//! `cargo xtask bench agent|image`: measurements that print numbers (never pass/fail).
//!
//! agent: 1 GiB of mixed files over a real sshd on 127.0.0.1, pi2pi-agent against `rsync -a`
//! through the same ssh; close-to-arrival latency of small files with the daemon; RSS; binary size.
//! image: cold build of every image with an empty cache, then a rebuild after an agent-only change.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use xshell::{cmd, Shell};

use crate::build::arch::Arch;
use crate::build::config::ImageConfig;
use crate::build::{agent_build, image};
use crate::proc;

fn fill(path: &Path, len: usize, seed: u64) -> Result<()> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut buf = vec![0u8; len];
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    fs_err::create_dir_all(path.parent().unwrap())?;
    fs_err::write(path, buf)?;
    Ok(())
}

/// 1 GiB: 2,000 small files (4-64 KiB) in 20 directories and 6 large ones.
fn dataset(dir: &Path) -> Result<(usize, u64)> {
    let (mut n, mut bytes) = (0, 0u64);
    for i in 0..2000u64 {
        let len = 4096 + (i * 7919 % 61_440) as usize;
        fill(&dir.join(format!("small/d{:02}/f{i:04}.dat", i % 20)), len, i)?;
        n += 1;
        bytes += len as u64;
    }
    let large = ((1u64 << 30) - bytes) / 6;
    for i in 0..6u64 {
        fill(&dir.join(format!("large/big-{i}.bin")), large as usize, 10_000 + i)?;
        n += 1;
        bytes += large;
    }
    Ok((n, bytes))
}

struct Sshd {
    child: duct::Handle,
    port: u16,
    key: PathBuf,
    known_hosts: PathBuf,
}

impl Sshd {
    /// The sender's [[peer]] table for this server.
    fn peer(&self) -> String {
        format!(
            "[[peer]]\nname = \"rpb\"\nhost = \"127.0.0.1\"\nport = {}\nuser = \"root\"\nidentity = \"{}\"\nknown_hosts = \"{}\"\n",
            self.port,
            self.key.display(),
            self.known_hosts.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// A loopback sshd whose one client key may run the agent's receiver (forced command) and,
/// for the baseline, a second key that may run rsync.
fn start_sshd(sh: &Shell, dir: &Path, serve: &str) -> Result<(Sshd, PathBuf)> {
    fs_err::create_dir_all(dir)?;
    fs_err::create_dir_all("/run/sshd")?;
    let (host, agent_key, rsync_key) = (dir.join("host"), dir.join("agent"), dir.join("rsync"));
    for k in [&host, &agent_key, &rsync_key] {
        if !k.exists() {
            proc::read(cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C pi2pi-bench -f {k}"))?;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let pubk = |k: &Path| fs_err::read_to_string(k.with_extension("pub"));
    fs_err::write(dir.join("known_hosts"), format!("[127.0.0.1]:{port} {}", pubk(&host)?))?;
    fs_err::write(dir.join("authorized_keys"), format!("restrict,command=\"{serve}\" {}{}", pubk(&agent_key)?, pubk(&rsync_key)?))?;
    fs_err::write(
        dir.join("sshd_config"),
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\nPasswordAuthentication no\n\
             PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile none\nLogLevel ERROR\n",
            host.display(),
            dir.join("authorized_keys").display()
        ),
    )?;
    let argv: Vec<OsString> = vec!["/usr/sbin/sshd".into(), "-D".into(), "-e".into(), "-f".into(), dir.join("sshd_config").into()];
    let child = proc::spawn(dir, &argv, &dir.join("sshd.log"))?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((Sshd { child, port, key: agent_key, known_hosts: dir.join("known_hosts") }, rsync_key));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("sshd did not start")
}

fn node_config(path: &Path, name: &str, drive: &Path, state: &Path, peer: &str) -> Result<()> {
    fs_err::write(
        path,
        format!(
            "node = \"{name}\"\n[drive]\nlabel = \"PI2PI\"\nmount_point = \"{}\"\nrequire_mount = false\n[state]\ndir = \"{}\"\n{peer}",
            drive.display(),
            state.display()
        ),
    )?;
    Ok(())
}

/// Busy CPU time of the whole machine so far (all processes: ours, ssh, sshd, kernel writeback),
/// in seconds, from /proc/stat (user + nice + system + irq + softirq; USER_HZ is 100 on Linux).
fn busy_cpu() -> f64 {
    let stat = fs_err::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| f.get(i)).sum::<f64>() / 100.0
}

struct Run {
    secs: f64,
    /// Peak RSS (KiB) of the timed process, from /usr/bin/time's report.
    kib: u64,
    /// CPU time the whole machine spent during the run.
    cpu: f64,
}

fn timed(argv: &[OsString], report: &Path) -> Result<Run> {
    let (t, cpu) = (Instant::now(), busy_cpu());
    let status = proc::run_inherited(argv, &[("PI2PI_LOG", "warn".into())])?;
    let (secs, cpu) = (t.elapsed().as_secs_f64(), busy_cpu() - cpu);
    ensure!(status.success(), "{argv:?} failed with {status}");
    let kib = fs_err::read_to_string(report)?.trim().lines().last().unwrap_or("0").trim().parse().unwrap_or(0);
    Ok(Run { secs, kib, cpu })
}

/// Single runs on a shared machine vary by ±10 % or more: alternate the three, report medians.
const ROUNDS: usize = 5;

pub fn agent(sh: &Shell) -> Result<()> {
    crate::build::setup::ensure(sh, crate::build::arch::Arch::Arm64)?;
    proc::run(cmd!(sh, "cargo build --quiet --release --locked -p pi2pi-agent"))?;
    proc::run(cmd!(sh, "cargo build --quiet --release --locked -p pi2pi-agent --target aarch64-unknown-linux-musl"))?;
    proc::run(cmd!(sh, "cargo build --quiet --release --locked -p pi2pi-agent --target armv7-unknown-linux-gnueabihf"))?;
    let root = sh.current_dir();
    let bin = root.join("target/release/pi2pi-agent");
    let dir = root.join("target/bench/agent");
    let _ = fs_err::remove_dir_all(&dir);
    let (a, b, r) = (dir.join("a"), dir.join("b"), dir.join("rsync-dst"));
    eprintln!("bench: writing 1 GiB of test files");
    let (files, bytes) = dataset(&a.join("sending"))?;
    let b_conf = dir.join("b.toml");
    node_config(&b_conf, "rpb", &b, &dir.join("b-state"), "")?;
    let (sshd, rsync_key) = start_sshd(sh, &dir.join("ssh"), &format!("{} --config {} serve", bin.display(), b_conf.display()))?;
    let peer = sshd.peer();
    let a_conf = dir.join("a.toml");
    node_config(&a_conf, "rpa", &a, &dir.join("a-state"), &format!("[sync]\nsettle_ms = 0\n{peer}"))?;
    let ssh = format!(
        "ssh -o BatchMode=yes -o IdentitiesOnly=yes -o Compression=no -o UserKnownHostsFile={} -i {} -p {}",
        sshd.known_hosts.display(),
        rsync_key.display(),
        sshd.port
    );
    let report = dir.join("time.txt");
    // /usr/bin/time -f %M: the timed process's peak RSS, written to `report`.
    let time = |argv: &[&std::ffi::OsStr]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["/usr/bin/time".into(), "-f".into(), "%M".into(), "-o".into(), report.clone().into()];
        v.extend(argv.iter().map(|a| a.to_os_string()));
        v
    };
    let src = format!("{}/", a.join("sending").display());
    let r2 = dir.join("rsync-fsync-dst");
    let rsync = |extra: &[&str], dst: &Path| {
        let dst = format!("root@127.0.0.1:{}/", dst.join("receiving").display());
        let mut argv: Vec<&std::ffi::OsStr> = vec!["rsync".as_ref(), "-a".as_ref()];
        argv.extend(extra.iter().map(|e| std::ffi::OsStr::new(*e)));
        argv.extend(["-e".as_ref(), ssh.as_ref(), src.as_ref(), std::ffi::OsStr::new(&dst)]);
        time(&argv)
    };
    let mut runs: [Vec<Run>; 3] = Default::default();
    for round in 0..ROUNDS {
        // Each run starts from an empty destination (and the agent from an empty journal), with
        // no earlier run's dirty pages left for it to write back. All read the same cached files.
        for d in [b.join("receiving"), r.join("receiving"), r2.join("receiving"), dir.join("a-state"), dir.join("b-state")] {
            let _ = fs_err::remove_dir_all(&d);
            fs_err::create_dir_all(&d)?;
        }
        proc::run(cmd!(sh, "sync").quiet())?;
        runs[0].push(timed(&time(&[bin.as_ref(), "--config".as_ref(), a_conf.as_ref(), "sync".as_ref()]), &report)?);
        if round == 0 {
            let same = cmd!(sh, "diff -rq {a}/sending {b}/receiving").quiet().ignore_stdout().run().is_ok();
            ensure!(same, "the agent's copy differs from the source");
        }
        proc::run(cmd!(sh, "sync").quiet())?;
        runs[1].push(timed(&rsync(&[], &r), &report)?);
        // The like-for-like baseline: rsync made durable too (the agent syncs every file).
        proc::run(cmd!(sh, "sync").quiet())?;
        runs[2].push(timed(&rsync(&["--fsync"], &r2), &report)?);
        let last = |i: usize| runs[i].last().map_or(0.0, |r: &Run| r.secs);
        eprintln!("bench: round {}: agent {:.2} s, rsync {:.2} s, rsync --fsync {:.2} s", round + 1, last(0), last(1), last(2));
    }
    drop(sshd);
    let (lat, daemon_kib) = latency(sh, &bin, &dir)?;

    // The cross builds are whatever `cargo xtask image` or `test` last built at this checkout.
    let size = |p: &Path| fs_err::metadata(p).map_or_else(|_| "(not built yet)".to_string(), |m| format!("{} bytes", m.len()));
    print_throughput(files, bytes, &runs);
    println!(
        "  latency close->arrival (4 KiB, daemon, settle 300 ms): median {:.3} s, p90 {:.3} s, max {:.3} s (goal <= 1 s)",
        lat[lat.len() / 2],
        lat[lat.len() * 9 / 10],
        lat[lat.len() - 1]
    );
    println!("  daemon peak RSS {daemon_kib} KiB");
    println!(
        "  binary size: aarch64-musl (static) {}, armv7-gnueabihf (static) {}, x86_64 {}",
        size(&agent_build::binary(sh, Arch::Arm64)),
        size(&agent_build::binary(sh, Arch::Armhf)),
        size(&bin)
    );
    let _ = fs_err::remove_dir_all(&dir);
    Ok(())
}

/// The throughput table: medians of the alternated runs, ranges, CPU time, ratios.
fn print_throughput(files: usize, bytes: u64, runs: &[Vec<Run>; 3]) {
    let agent_kib = runs[0].iter().map(|r| r.kib).max().unwrap_or(0);
    let median = |v: &[Run], f: fn(&Run) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        x.sort_by(|p, q| p.total_cmp(q));
        x[x.len() / 2]
    };
    let range = |v: &[Run]| {
        let x: Vec<f64> = v.iter().map(|r| r.secs).collect();
        format!("{:.2}-{:.2}", x.iter().cloned().fold(f64::MAX, f64::min), x.iter().cloned().fold(0.0, f64::max))
    };
    let [agent_s, rsync_s, rsync_fsync_s] = [0, 1, 2].map(|i| median(&runs[i], |r| r.secs));
    let [agent_cpu, rsync_cpu, fsync_cpu] = [0, 1, 2].map(|i| median(&runs[i], |r| r.cpu));
    // Per round, so that a slow patch of the machine weighs on both sides of the ratio.
    let mut ratios: Vec<f64> = runs[0].iter().zip(&runs[1]).map(|(a, r)| r.secs / a.secs).collect();
    ratios.sort_by(|p, q| p.total_cmp(q));

    let mib = bytes as f64 / (1 << 20) as f64;
    println!(
        "agent benchmark ({files} files, {mib:.0} MiB, ssh on 127.0.0.1; median of {ROUNDS} alternated runs (range); machine CPU time):"
    );
    println!(
        "  pi2pi-agent sync      {agent_s:6.2} s  {:6.1} MiB/s  ({} s)  CPU {agent_cpu:.1} s  peak RSS {agent_kib} KiB",
        mib / agent_s,
        range(&runs[0])
    );
    println!("  rsync -a (same ssh)          {rsync_s:6.2} s  {:6.1} MiB/s  ({} s)  CPU {rsync_cpu:.1} s", mib / rsync_s, range(&runs[1]));
    println!(
        "  rsync -a --fsync (same ssh)  {rsync_fsync_s:6.2} s  {:6.1} MiB/s  ({} s)  CPU {fsync_cpu:.1} s",
        mib / rsync_fsync_s,
        range(&runs[2])
    );
    println!(
        "  throughput ratio agent/rsync: {:.2} (median of medians; per round {:.2}-{:.2}; goal >= 1.0); agent/(rsync --fsync): {:.2}",
        rsync_s / agent_s,
        ratios[0],
        ratios[ratios.len() - 1],
        rsync_fsync_s / agent_s
    );
}

/// Latency: the daemon, one small file at a time, from its close to its being visible at the
/// receiver (sorted seconds), and the daemon's peak RSS in KiB.
fn latency(sh: &Shell, bin: &Path, dir: &Path) -> Result<(Vec<f64>, u64)> {
    let lat_conf = dir.join("lat.toml");
    let (la, lb) = (dir.join("la"), dir.join("lb"));
    fs_err::create_dir_all(la.join("sending"))?;
    fs_err::create_dir_all(lb.join("receiving"))?;
    let lb_conf = dir.join("lb.toml");
    node_config(&lb_conf, "rpb", &lb, &dir.join("lb-state"), "")?;
    let (sshd2, _) = start_sshd(sh, &dir.join("ssh2"), &format!("{} --config {} serve", bin.display(), lb_conf.display()))?;
    let peer2 = sshd2.peer();
    node_config(&lat_conf, "rpa", &la, &dir.join("la-state"), &peer2)?;
    let daemon_argv: Vec<OsString> = vec![bin.into(), "--config".into(), lat_conf.clone().into(), "run".into()];
    let daemon = proc::spawn(dir, &daemon_argv, &dir.join("latency-daemon.log"))?;
    std::thread::sleep(Duration::from_secs(1));
    let mut lat = Vec::new();
    for i in 0..20 {
        let name = format!("small-{i}.txt");
        let t;
        {
            let mut f = fs_err::File::create(la.join("sending").join(&name))?;
            f.write_all(&vec![b'x'; 4096])?;
            drop(f);
            t = Instant::now();
        }
        while !lb.join("receiving").join(&name).exists() {
            ensure!(t.elapsed() < Duration::from_secs(20), "{name} never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        lat.push(t.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(300));
    }
    let daemon_kib = fs_err::read_to_string(format!("/proc/{}/status", daemon.pids()[0]))?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    let _ = daemon.kill();
    drop(sshd2);
    lat.sort_by(|x, y| x.partial_cmp(y).unwrap());

    Ok((lat, daemon_kib))
}

pub fn image(sh: &Shell, cfg: &ImageConfig) -> Result<()> {
    let root = sh.current_dir();
    let dir = root.join("target/bench/image");
    let _ = fs_err::remove_dir_all(&dir);
    let hosts = image::select(cfg, "all")?;
    let opts = image::Options {
        out_dir: dir.join("images"),
        work_dir: dir.join("work"),
        cache_dir: dir.join("cache"), // empty: a cold build
        ..image::Options::default_for(sh)
    };
    let t = Instant::now();
    let cold = image::build(sh, cfg, &hosts, &opts)?;
    let cold_s = t.elapsed().as_secs_f64();
    // An agent-only change: the agent crate recompiles (its dependencies do not), the base comes
    // from the cache. (Rewriting a source file unchanged would not do: cargo tracks content.)
    let target = cfg.base.arch.rust_target();
    proc::run(cmd!(sh, "cargo clean --quiet --release -p pi2pi-agent --target {target}"))?;
    let t = Instant::now();
    let warm = image::build(sh, cfg, &hosts, &opts)?;
    let warm_s = t.elapsed().as_secs_f64();
    println!("image benchmark ({} hosts, {} cores):", hosts.len(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("  cold build (empty cache)        {cold_s:7.1} s (goal <= 600)");
    println!("  warm rebuild (agent changed)    {warm_s:7.1} s (goal <= 30)");
    for (b, w) in cold.iter().zip(&warm) {
        let p = &b.path;
        let on_disk = cmd!(sh, "du -k {p}").read().unwrap_or_default();
        let stages = |b: &image::Built| b.stages.iter().map(image::Lap::to_string).collect::<Vec<_>>().join(", ");
        println!(
            "  {}.img: {} bytes raw ({:.0} MiB, goal <= 1024), {} KiB allocated\n    cold stages: {}\n    warm stages: {}",
            b.host,
            b.bytes,
            b.bytes as f64 / (1 << 20) as f64,
            on_disk.split_whitespace().next().unwrap_or("?"),
            stages(b),
            stages(w)
        );
    }
    // Same lock, keys and commit as target/images: equal hashes mean the base, rebuilt from an
    // empty cache, came out byte-identical too.
    let sums = fs_err::read_to_string(root.join("target/images/SHA256SUMS")).unwrap_or_default();
    for b in &cold {
        let name = format!("{}.img", b.host);
        match sums.lines().find(|l| l.ends_with(&format!("  {name}"))) {
            Some(l) if l.starts_with(&b.sha256) => println!("  {name}: identical to target/images/{name} (cold base reproducible)"),
            Some(_) => println!("  {name}: DIFFERS from target/images/{name} (built from the cached base, or from other sources)"),
            None => println!("  {name}: no target/images/{name} to compare with"),
        }
    }
    let _ = fs_err::remove_dir_all(&dir).context("cleaning up");
    Ok(())
}
