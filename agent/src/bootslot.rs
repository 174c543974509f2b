//! Which root slot the card boots: the state U-Boot's boot.scr and Linux share.
//!
//! A card has two root slots, A (partition 2) and B (partition 3). `pi2pi-boot.env` on the boot
//! partition holds, as U-Boot's `env export -t` writes it, the order to try them in and how many
//! boot attempts each has left (the scheme RAUC documents for U-Boot: `BOOT_ORDER`,
//! `BOOT_A_LEFT`, `BOOT_B_LEFT`). boot.scr takes one attempt from the first slot in the order
//! that has any, and boots it; a booted system that is healthy gives its slot its attempts back
//! (`mark-good`). A slot that fails to come up [`ATTEMPTS`] times in a row is passed over, and the
//! other slot boots: the rollback needs no one at the Pi.
//!
//! The same operations are RAUC's custom boot-loader interface (`get-primary`, `set-primary`,
//! `get-state`, `set-state`, `get-current`), so RAUC can drive the switch through
//! `pi2pi-agent boot`.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Attempts a slot gets when it is made primary or marked good.
pub const ATTEMPTS: u8 = 3;

/// A root slot, named as boot.scr and RAUC's `bootname` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Slot {
    #[value(name = "A")]
    A,
    #[value(name = "B")]
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Its partition on the card (the boot partition is 1, the data partition 4).
    pub fn partition(self) -> u32 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn from_name(s: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|slot| slot.to_string() == s)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// RAUC's word for whether a slot may be booted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Health {
    Good,
    Bad,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Good => "good",
            Health::Bad => "bad",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The slots in the order boot.scr tries them.
    pub order: Vec<Slot>,
    /// Attempts left, by slot (A, B).
    pub left: [u8; 2],
}

impl BootState {
    /// A new card's: slot A holds the system, slot B nothing yet.
    pub fn fresh() -> BootState {
        BootState { order: vec![Slot::A, Slot::B], left: [ATTEMPTS, 0] }
    }

    /// What boot.scr starts from when the file is missing: both slots, A first. A slot that holds
    /// no kernel loses its attempts in the script, so this is safe on any card.
    fn defaults() -> BootState {
        BootState { order: vec![Slot::A, Slot::B], left: [ATTEMPTS, ATTEMPTS] }
    }

    /// Reads the file as boot.scr does: `NAME=value` lines; a variable that is missing keeps its
    /// default, a count that is not a number counts as none left (U-Boot's `test -gt` is false),
    /// an unknown word in the order is never booted.
    pub fn parse(text: &str) -> BootState {
        let mut s = BootState::defaults();
        for line in text.split(['\n', '\0']) {
            let Some((name, value)) = line.split_once('=') else { continue };
            match name {
                "BOOT_ORDER" => s.order = value.split_whitespace().filter_map(Slot::from_name).collect(),
                "BOOT_A_LEFT" => s.left[Slot::A.index()] = value.trim().parse().unwrap_or(0),
                "BOOT_B_LEFT" => s.left[Slot::B.index()] = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        s
    }

    /// The file's text, as `env export -t` writes it (sorted names).
    pub fn render(&self) -> String {
        let order: Vec<String> = self.order.iter().map(Slot::to_string).collect();
        format!("BOOT_A_LEFT={}\nBOOT_B_LEFT={}\nBOOT_ORDER={}\n", self.left[Slot::A.index()], self.left[Slot::B.index()], order.join(" "))
    }

    pub fn left(&self, slot: Slot) -> u8 {
        self.left[slot.index()]
    }

    /// The slot the next boot starts: the first in the order with attempts left.
    pub fn primary(&self) -> Option<Slot> {
        self.order.iter().copied().find(|s| self.left(*s) > 0)
    }

    /// Boot `slot` next, with all its attempts; the other stays behind it as the fallback.
    pub fn set_primary(&mut self, slot: Slot) {
        self.order = vec![slot, slot.other()];
        self.left[slot.index()] = ATTEMPTS;
    }

    pub fn health(&self, slot: Slot) -> Health {
        if self.left(slot) > 0 && self.order.contains(&slot) {
            Health::Good
        } else {
            Health::Bad
        }
    }

    /// Good: its attempts back (and in the order if it was dropped). Bad: none left, so boot.scr
    /// passes it over.
    pub fn set_health(&mut self, slot: Slot, health: Health) {
        match health {
            Health::Good => {
                self.left[slot.index()] = ATTEMPTS;
                if !self.order.contains(&slot) {
                    self.order.push(slot);
                }
            }
            Health::Bad => self.left[slot.index()] = 0,
        }
    }
}

/// The slot this system was booted from: boot.scr puts `rauc.slot=<A|B>` on the kernel's
/// command line (where RAUC looks for it too).
pub fn booted(cmdline: &str) -> Option<Slot> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix("rauc.slot=")).and_then(Slot::from_name)
}

pub fn booted_here() -> Result<Slot> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").context("reading /proc/cmdline")?;
    booted(&cmdline).with_context(|| format!("the kernel's command line names no slot (no rauc.slot=A or B): {}", cmdline.trim()))
}

/// The state in `path`; boot.scr's defaults if there is no file.
pub fn load(path: &Path) -> Result<BootState> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(BootState::parse(&String::from_utf8_lossy(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootState::defaults()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Replaces the file whole (a new file renamed over it, both synced), and only on the mounted
/// boot partition: never into the bare mount point of a partition that did not mount.
pub fn store(path: &Path, state: &BootState) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    ensure_mount_point(dir)?;
    crate::fsutil::replace_file(path, state.render().as_bytes()).with_context(|| format!("writing {}", path.display()))
}

fn ensure_mount_point(dir: &Path) -> Result<()> {
    let md = std::fs::metadata(dir).with_context(|| format!("{} (the boot partition's mount point)", dir.display()))?;
    let parent = dir.join("..");
    let up = std::fs::metadata(&parent).with_context(|| format!("reading {}", parent.display()))?;
    if md.dev() == up.dev() && md.ino() != up.ino() {
        bail!("{} is not mounted: the boot partition holds the boot state (is it in /etc/fstab, and did it mount?)", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_card_boots_a_and_has_nothing_in_b() {
        let s = BootState::fresh();
        assert_eq!(s.primary(), Some(Slot::A));
        assert_eq!(s.health(Slot::B), Health::Bad);
        assert_eq!(BootState::parse(&s.render()), s);
    }

    #[test]
    fn reads_what_u_boot_exports() {
        // `env export -t` ends its text with a NUL.
        let s = BootState::parse("BOOT_A_LEFT=2\nBOOT_B_LEFT=3\nBOOT_ORDER=B A\n\0");
        assert_eq!(s.order, vec![Slot::B, Slot::A]);
        assert_eq!(s.left, [2, 3]);
        assert_eq!(s.primary(), Some(Slot::B));
    }

    #[test]
    fn reads_damage_as_boot_scr_does() {
        assert_eq!(BootState::parse(""), BootState::defaults());
        let s = BootState::parse("BOOT_A_LEFT=x\nBOOT_ORDER=C B\n");
        assert_eq!(s.left(Slot::A), 0);
        assert_eq!(s.order, vec![Slot::B]);
        assert_eq!(s.primary(), Some(Slot::B));
        assert_eq!(s.health(Slot::A), Health::Bad);
    }

    #[test]
    fn switching_keeps_the_old_slot_as_fallback() {
        let mut s = BootState::fresh();
        s.set_primary(Slot::B);
        assert_eq!((s.primary(), s.order.clone(), s.left), (Some(Slot::B), vec![Slot::B, Slot::A], [ATTEMPTS, ATTEMPTS]));
        // B's attempts run out without a good boot: A boots.
        s.left = [ATTEMPTS, 0];
        assert_eq!(s.primary(), Some(Slot::A));
        s.set_health(Slot::B, Health::Bad);
        s.set_health(Slot::A, Health::Good);
        assert_eq!(s.primary(), Some(Slot::A));
    }

    #[test]
    fn a_good_slot_dropped_from_the_order_returns_to_it() {
        let mut s = BootState::parse("BOOT_ORDER=B\nBOOT_A_LEFT=0\nBOOT_B_LEFT=1\n");
        s.set_health(Slot::A, Health::Good);
        assert_eq!(s.order, vec![Slot::B, Slot::A]);
        assert_eq!(s.health(Slot::A), Health::Good);
    }

    #[test]
    fn the_booted_slot_is_read_from_the_command_line() {
        assert_eq!(booted("console=ttyS0 root=PARTUUID=1-03 rauc.slot=B rw"), Some(Slot::B));
        assert_eq!(booted("console=ttyS0 root=/dev/vda2"), None);
    }

    #[test]
    fn store_writes_only_into_a_mount_point() {
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("firmware");
        std::fs::create_dir(&plain).unwrap();
        let err = store(&plain.join("pi2pi-boot.env"), &BootState::fresh()).unwrap_err();
        assert!(format!("{err:#}").contains("is not mounted"), "{err:#}");
        assert!(!plain.join("pi2pi-boot.env").exists());
    }

    #[test]
    fn load_without_a_file_is_boot_scr_s_defaults() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(load(&d.path().join("none")).unwrap(), BootState::defaults());
    }
}
