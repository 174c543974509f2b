//! The system tests `cargo xtask test` runs (`phases`): cards built twice and compared
//! (`verify`), the pair (`pair`), the cluster (`cluster`), every board booted on its QEMU model
//! (`boots`), the fault soak (`soak`) and the 32-bit agents' clocks (`time32`).

pub mod boots;
pub mod cluster;
pub mod pair;
pub mod phases;
pub mod soak;
pub mod time32;
pub mod verify;
