//! Booting cards in QEMU: what a card boots (`boot`), the machine and its links (`qemu`), its monitor (`qmp`), what tests do
//! in a guest (`guest`), how long they wait for one (`limits`), the USB drives they get
//! (`drive`), and one card on this terminal for people (`interactive`).

pub mod boot;
pub mod drive;
pub mod guest;
pub mod interactive;
pub mod limits;
pub mod qemu;
pub mod qmp;
