//! The Debian architectures a card can be, and what each means for the toolchain, QEMU and
//! Imager.

use serde::{Deserialize, Serialize};

/// Debian architecture of a base; serde reads it by its Debian name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Arm64,
    Armhf,
    /// ARMv6 and older (Pi 1, Zero, Zero W): Debian's armel port, soft-float.
    Armel,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Arm64, Arch::Armhf, Arch::Armel];

    /// In words, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64 (64-bit)",
            Arch::Armhf => "armhf (32-bit ARMv7)",
            Arch::Armel => "armel (ARMv6)",
        }
    }
    /// The name Debian (and image.toml) use.
    pub fn deb(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
            Arch::Armel => "armel",
        }
    }
    /// Static where the toolchain allows: musl on aarch64, glibc with crt-static on armv7 and
    /// ARMv6 (`arm-unknown-linux-gnueabi` is ARMv6 with armel's soft-float calling convention).
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64-unknown-linux-musl",
            Arch::Armhf => "armv7-unknown-linux-gnueabihf",
            Arch::Armel => "arm-unknown-linux-gnueabi",
        }
    }
    /// rustup serves no prebuilt standard library for the target: the agent's build compiles
    /// it from the toolchain's own `rust-src` (see agent_build.rs).
    pub fn std_from_source(self) -> bool {
        self == Arch::Armel
    }
    /// Its word size, as Raspberry Pi Imager's device tags name it.
    pub fn bits(self) -> u32 {
        match self {
            Arch::Arm64 => 64,
            Arch::Armhf | Arch::Armel => 32,
        }
    }
    /// QEMU's system emulator for boards of this architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::Arm64 => "qemu-system-aarch64",
            Arch::Armhf | Arch::Armel => "qemu-system-arm",
        }
    }
    pub fn binfmt(self) -> &'static str {
        match self {
            Arch::Arm64 => "qemu-aarch64",
            Arch::Armhf | Arch::Armel => "qemu-arm",
        }
    }
}
