//! The system tests `cargo xtask test` runs (`phases`): cards built twice and compared
//! (`verify`), the pair (`pair`), the cluster (`cluster`), every board booted on its QEMU model
//! (`boots`), the fault soak (`soak`), the 32-bit agents' clocks (`time32`) and the agent's fuzz
//! targets for a bounded time (`fuzz`).

pub mod boots;
pub mod cluster;
pub mod fuzz;
pub mod pair;
pub mod phases;
pub mod soak;
pub mod time32;
pub mod verify;
