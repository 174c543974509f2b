//! How long the harness waits for a guest, in one place, by the machine QEMU emulates. Every
//! boot and every command in a guest is bounded by these; a test asks for more only where it
//! says why (`Vm::exec_within`).

use std::time::Duration;

use crate::build::boards::Machine;

/// A machine the harness boots cards on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guest {
    /// QEMU's `virt` board (the pair, cluster and soak tests).
    Virt,
    /// A model of a Pi (the board test).
    Pi(Machine),
}

/// How long the harness waits for one guest.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// From QEMU's start to systemd's "running".
    pub boot: Duration,
    /// One command in the guest's shell; the guest's own `timeout` ends it there.
    pub cmd: Duration,
    /// From `systemctl poweroff` (or `reboot`) to QEMU's exit.
    pub shutdown: Duration,
}

impl Guest {
    /// Boots measured here alone take 46-124 s (README); these allow for the two cores being
    /// shared by up to five guests while the soak runs beside the other QEMU phases, and for the
    /// raspi2b, the slowest (one emulated core for Debian's LPAE kernel).
    pub fn limits(self) -> Limits {
        let (boot, shutdown) = match self {
            Guest::Virt => (540, 180),
            Guest::Pi(Machine::Raspi2b) => (720, 300),
            Guest::Pi(_) => (600, 300),
        };
        Limits { boot: Duration::from_secs(boot), cmd: Duration::from_secs(120), shutdown: Duration::from_secs(shutdown) }
    }
}
