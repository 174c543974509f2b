//! pi2pi-agent: delivers every file in this Pi's `sending/` to each peer's `receiving/`.
//!
//! Sender: [`daemon`] (inotify + rescans) or one [`engine`] pass from cron, talking to the peer
//! over [`transport`] (OpenSSH) with the [`proto`] frames. Receiver: [`serve`], the forced command
//! of the sender's key. See ARCHITECTURE.md for the guarantees and where each is enforced.

pub mod bootslot;
pub mod commit;
pub mod config;
pub mod daemon;
pub mod drive;
pub mod engine;
pub mod fsutil;
pub mod layout;
pub mod lock;
pub mod paths;
pub mod proto;
pub mod reply;
pub mod rules;
pub mod serve;
pub mod session;
pub mod state;
pub mod status;
pub mod transport;
pub mod update;
