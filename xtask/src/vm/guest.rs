//! What the tests do in a guest, over the harness's shell (`Vm::exec`): the one wait
//! (`wait_until`), and reading the guest's drive and agent.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::vm::qemu::Vm;
use pi2pi_agent::bootslot::{self, BootState, Slot};

/// Polls `probe` every `every` until it is done, for at most `limit`: every wait of the harness,
/// so each is bounded in time and count and fails the same way. `probe` answers `Ok(Ok(value))`
/// when done, `Ok(Err(seen))` when not yet (what it saw, for the error), `Err` to stop at once.
pub fn wait_until<T>(what: &str, limit: Duration, every: Duration, mut probe: impl FnMut() -> Result<Result<T, String>>) -> Result<T> {
    let started = Instant::now();
    loop {
        match probe()? {
            Ok(v) => return Ok(v),
            Err(seen) if started.elapsed() >= limit => bail!("{what}: not within {limit:?}; last seen:\n{seen}"),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// U-Boot booted `slot` (its command line says so), and once the boot is marked good the boot
/// state on the FAT gives it all its attempts and still keeps it first.
pub fn check_boot_state(vm: &mut Vm, slot: Slot) -> Result<BootState> {
    let cmdline = vm.ok("cat /proc/cmdline")?;
    anyhow::ensure!(bootslot::booted(&cmdline) == Some(slot), "not booted from slot {slot}: {cmdline}");
    let state = vm.ok("systemctl start pi2pi-update.service && pi2pi-agent boot show")?;
    let state = BootState::parse(&state);
    anyhow::ensure!(
        state.primary() == Some(slot) && state.left(slot) == bootslot::ATTEMPTS,
        "the boot state after slot {slot} was marked good: {state:?}"
    );
    Ok(state)
}

/// What `pi2pi-agent status --json` says that the tests read: the agent's last status.
#[derive(serde::Deserialize)]
struct StatusReport {
    last: Option<pi2pi_agent::status::Status>,
}

/// Waits until the guest's sender has nothing pending for any peer and no `sync` pass is running.
pub fn wait_idle(vm: &mut Vm, limit: Duration) -> Result<()> {
    let name = vm.name.clone();
    wait_until(&format!("{name}: the agent going idle"), limit, Duration::from_secs(2), || {
        let (running, _) = vm.exec("pgrep -f 'pi2pi-agent sync' >/dev/null")?;
        let status = vm.ok("pi2pi-agent status --json")?;
        let report: StatusReport = serde_json::from_str(&status).with_context(|| format!("{name}: pi2pi-agent status --json: {status}"))?;
        let idle = report.last.is_some_and(|st| st.peers.iter().all(|p| p.pending.is_empty()));
        Ok(if running != 0 && idle { Ok(()) } else { Err(status) })
    })
}

/// rel path → "size mtime ctime" of every file below `dir` in the guest. The receiver writes a
/// delivery into a new file and renames it into place (and keeps no sender times), so a file
/// delivered again shows new times.
pub fn guest_written(vm: &mut Vm, dir: &str) -> Result<BTreeMap<String, String>> {
    // A temporary renamed into place between find's readdir and its stat is no error (the soak
    // failed on one); the file is listed under its final name next time. find's output goes
    // through a command substitution, not straight to the harness's terminal: on a terminal, in
    // the C locale, find prints every non-ASCII byte as `?` (`日本/ü/x` came back as `??????/??/x`,
    // which no later command could open, so those files went unhashed).
    let out = vm
        .ok(&format!("cd '{dir}' && out=$(find . -ignore_readdir_race -type f -printf '%P\\t%s %T@ %C@\\n') && printf '%s\\n' \"$out\""))?;
    Ok(out.lines().filter_map(|l| l.split_once('\t')).map(|(p, v)| (p.to_string(), v.to_string())).collect())
}

/// Polls `vm` until `path` has the content whose `sha256sum` output is `sum`; returns the wait.
pub fn wait_arrival(vm: &mut Vm, path: &str, sum: &str, limit: Duration) -> Result<Duration> {
    let want = sum.split_whitespace().next().unwrap_or("").to_string();
    let t = Instant::now();
    let what = format!("{path} reaching {}", vm.name);
    wait_until(&what, limit, Duration::from_millis(200), || {
        let (_, got) = vm.exec(&format!("sha256sum < '{path}' 2>/dev/null"))?;
        Ok(if got.split_whitespace().next() == Some(want.as_str()) { Ok(t.elapsed()) } else { Err(got) })
    })
}

/// rel path → sha256 for every regular file below `dir` in the guest (temporaries included, so a
/// leftover would show up as a difference).
pub fn guest_tree(vm: &mut Vm, dir: &str) -> Result<BTreeMap<String, String>> {
    // A temporary can be renamed between find and sha256sum: list what still exists.
    let out = vm.ok(&format!("cd '{dir}' && {{ find . -type f -print0 | sort -z | xargs -0 -r sha256sum 2>/dev/null; true; }}"))?;
    Ok(out.lines().filter_map(|l| l.split_once("  ")).map(|(h, p)| (p.trim_start_matches("./").to_string(), h.to_string())).collect())
}

/// Waits (up to 2 minutes: USB enumerates slowly under emulation) for `fstype` to be mounted at
/// `mount` in the guest; the drive is mounted by udev when it appears, not by the boot itself.
pub fn wait_mounted(vm: &mut Vm, mount: &str, fstype: &str) -> Result<()> {
    let what = format!("{}: {fstype} mounted at {mount}", vm.name);
    let mounted = wait_until(&what, Duration::from_secs(120), Duration::from_secs(2), || {
        let (code, _) = vm.exec(&format!("findmnt -no FSTYPE {mount} | grep -qx {fstype}"))?;
        Ok(if code == 0 { Ok(()) } else { Err(String::new()) })
    });
    mounted.or_else(|e| {
        let (_, why) = vm.exec(&format!("systemctl status --no-pager {mount} 2>&1 | tail -20; lsblk -f"))?;
        Err(e.context(why))
    })
}
