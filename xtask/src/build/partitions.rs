//! The card's partitions, and what of the root lives on the data partition instead.
//!
//! 1: the boot FAT (firmware, U-Boot, boot.scr and the boot state, the Pi 5's kernel);
//! 2 and 3: root slots A and B (`pi2pi_agent::bootslot::Slot`), each a whole system with its
//! kernel in /boot; an update writes the slot that is not running. 4: data, which no update
//! replaces: the directories below are bind-mounted from it over the running slot's, so both
//! slots see the same agent state and leases.

use pi2pi_agent::bootslot::Slot;
use pi2pi_agent::layout;
use serde::Serialize;

/// (The boot partition is 1 wherever it is named: the Pi's boot ROM reads the first.)
pub const DATA: u32 = 4;
/// Where the data partition is mounted.
pub const DATA_MOUNT: &str = "/data";

/// A root directory kept on the data partition, at `/data/<name>`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Persisted {
    /// Its path in the root.
    pub path: &'static str,
    pub name: &'static str,
}

/// What must outlive an update: the agent's journals and state, the updater's (a trial in
/// progress, outcomes not yet on the drive), the DHCP leases (dnsmasq's on a
/// server, dhcpcd's on a client) and chrony's drift. The SSH host keys are not here: they come
/// from keys/ with every build, so an update keeps them, or rotates them when keys/ did. The
/// clock file is not here either: fake-hwclock reads it before any partition but the root is
/// mounted, so the update carries the time into the new slot instead.
pub const PERSISTED: &[Persisted] = &[
    Persisted { path: layout::STATE_DIR, name: "pi2pi" },
    Persisted { path: layout::UPDATE_DIR, name: "pi2pi-update" },
    Persisted { path: "/var/lib/misc", name: "misc" },
    Persisted { path: "/var/lib/dhcpcd", name: "dhcpcd" },
    Persisted { path: "/var/lib/chrony", name: "chrony" },
];

/// Where an entry of the root tarball (a path without its leading `/`) goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    Root,
    /// Onto the data partition, at this path there.
    Data(String),
    /// A persisted directory itself: the root keeps it (empty, the bind mount's mount point) and
    /// the data partition gets it as `<name>` with the same owner and mode.
    Both(String),
}

pub fn route(path: &str) -> Route {
    for p in PERSISTED {
        let dir = p.path.trim_start_matches('/');
        if path == dir {
            return Route::Both(p.name.to_string());
        }
        if let Some(rest) = path.strip_prefix(dir).and_then(|r| r.strip_prefix('/')) {
            return Route::Data(format!("{}/{rest}", p.name));
        }
    }
    Route::Root
}

/// The slots' partitions, in slot order, for templates and the tests.
pub fn slot_partitions() -> [(Slot, u32); 2] {
    Slot::ALL.map(|s| (s, s.partition()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persisted_directories_move_and_leave_their_mount_point() {
        assert_eq!(route("var/lib/pi2pi"), Route::Both("pi2pi".into()));
        assert_eq!(route("var/lib/pi2pi/journal/rpb"), Route::Data("pi2pi/journal/rpb".into()));
        assert_eq!(route("var/lib/misc/dnsmasq.leases"), Route::Data("misc/dnsmasq.leases".into()));
        assert_eq!(route("var/lib/pi2pi2"), Route::Root);
        assert_eq!(route("var/lib"), Route::Root);
    }

    #[test]
    fn partitions_are_distinct() {
        let mut all = vec![1, DATA];
        all.extend(slot_partitions().map(|(_, p)| p));
        all.sort();
        assert_eq!(all, vec![1, 2, 3, 4]);
    }
}
