//! Where the agent and what it keeps are on a card: the one source for the agent's defaults,
//! xtask's layers and templates (through their context) and the tests.

/// The agent's binary.
pub const BINARY: &str = "/usr/local/bin/pi2pi-agent";
/// Its configuration.
pub const CONFIG: &str = "/etc/pi2pi/agent.toml";
/// Its state: delivery journals, status, locks.
pub const STATE_DIR: &str = "/var/lib/pi2pi";
/// The status file in the state directory (`pi2pi-agent status` reads it).
pub const STATUS_FILE: &str = "status.json";
/// What the updater keeps (update.rs): a trial in progress, outcomes not yet on the drive, the
/// bundle being applied, its progress. On the data partition, like the state directory.
pub const UPDATE_DIR: &str = "/var/lib/pi2pi-update";
/// The card's build: its version and the bundles it takes (written by `cargo xtask image`).
pub const BUILD_FILE: &str = "/etc/pi2pi/build";
/// The boot partition's mount point and, on it, the state U-Boot's boot.scr and Linux share:
/// which root slot boots and how many attempts each has left (bootslot.rs).
pub const BOOT_MOUNT: &str = "/boot/firmware";
pub const BOOT_ENV_NAME: &str = "pi2pi-boot.env";
/// `BOOT_MOUNT/BOOT_ENV_NAME` (a literal for clap's default; the test keeps them together).
pub const BOOT_ENV: &str = "/boot/firmware/pi2pi-boot.env";

#[cfg(test)]
mod tests {
    #[test]
    fn the_boot_state_is_on_the_boot_partition() {
        assert_eq!(super::BOOT_ENV, format!("{}/{}", super::BOOT_MOUNT, super::BOOT_ENV_NAME));
    }
}
