//! Building a card: the config and its lock, the base root filesystem, the agent, the layers
//! that make a host of it, the filesystems and disk image, and what ships with the images.

pub mod agent_build;
pub mod arch;
pub mod base;
pub mod boards;
pub mod bundle;
pub mod cache;
pub mod config;
pub mod disk;
pub mod fat;
pub mod image;
pub mod keys;
pub mod layers;
pub mod mac;
pub mod manifest;
pub mod partitions;
pub mod pins;
pub mod rootfs;
pub mod setup;
pub mod ship;
pub mod tools;
pub mod uboot;
