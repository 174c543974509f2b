//! Booting cards in QEMU: the machine and its links (`qemu`), its monitor (`qmp`), and one card
//! on this terminal for people (`interactive`).

pub mod interactive;
pub mod qemu;
pub mod qmp;
