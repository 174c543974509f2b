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
