//! image.toml as written: serde structs with `deny_unknown_fields` and spans kept, so that
//! validation (`validate.rs`) can name the line of every key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::{Role, Schedule};
use crate::build::arch::Arch;

pub(super) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    pub(super) base: RawBase,
    #[serde(default)]
    pub(super) bases: BTreeMap<String, S<RawBaseOverride>>,
    pub(super) system: RawSystem,
    pub(super) network: RawNetwork,
    pub(super) drive: RawDrive,
    pub(super) agent: RawAgent,
    pub(super) image: RawImage,
    pub(super) host: S<Vec<RawHost>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBase {
    pub(super) suite: S<String>,
    pub(super) architecture: Arch,
    pub(super) mirrors: S<Vec<String>>,
    pub(super) keyring: S<String>,
    pub(super) components: S<Vec<String>>,
    pub(super) kernel: S<String>,
    pub(super) firmware: S<String>,
    pub(super) bootloader: S<String>,
    pub(super) packages: S<Vec<String>>,
    pub(super) initramfs_modules: S<Vec<String>>,
    #[serde(default)]
    pub(super) path_exclude: Vec<S<String>>,
    #[serde(default)]
    pub(super) path_include: Vec<S<String>>,
}

/// `[bases.<name>]`: any of `[base]`'s keys, replacing its value (lists too, whole).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBaseOverride {
    pub(super) suite: Option<S<String>>,
    pub(super) architecture: Option<Arch>,
    pub(super) mirrors: Option<S<Vec<String>>>,
    pub(super) keyring: Option<S<String>>,
    pub(super) components: Option<S<Vec<String>>>,
    pub(super) kernel: Option<S<String>>,
    pub(super) firmware: Option<S<String>>,
    pub(super) bootloader: Option<S<String>>,
    pub(super) packages: Option<S<Vec<String>>>,
    pub(super) initramfs_modules: Option<S<Vec<String>>>,
    pub(super) path_exclude: Option<Vec<S<String>>>,
    pub(super) path_include: Option<Vec<S<String>>>,
}

impl RawBaseOverride {
    pub(super) fn over(&self, b: &RawBase) -> RawBase {
        fn or<T: Clone>(o: &Option<T>, d: &T) -> T {
            o.clone().unwrap_or_else(|| d.clone())
        }
        RawBase {
            suite: or(&self.suite, &b.suite),
            architecture: self.architecture.unwrap_or(b.architecture),
            mirrors: or(&self.mirrors, &b.mirrors),
            keyring: or(&self.keyring, &b.keyring),
            components: or(&self.components, &b.components),
            kernel: or(&self.kernel, &b.kernel),
            firmware: or(&self.firmware, &b.firmware),
            bootloader: or(&self.bootloader, &b.bootloader),
            packages: or(&self.packages, &b.packages),
            initramfs_modules: or(&self.initramfs_modules, &b.initramfs_modules),
            path_exclude: or(&self.path_exclude, &b.path_exclude),
            path_include: or(&self.path_include, &b.path_include),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSystem {
    pub(super) user: S<String>,
    pub(super) password_hash: Option<S<String>>,
    pub(super) locale: S<String>,
    pub(super) timezone: S<String>,
    pub(super) keyboard: S<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) domain: S<String>,
    // The pair's cable: all three or none.
    pub(super) interface: Option<S<String>>,
    pub(super) prefix: Option<S<u8>>,
    pub(super) dhcp_range: Option<S<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDrive {
    pub(super) label: S<String>,
    pub(super) mount_point: S<String>,
    pub(super) update: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAgent {
    pub(super) schedule: Schedule,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawImage {
    pub(super) boot_mib: S<u64>,
    pub(super) root_headroom_mib: S<u64>,
    pub(super) slot_mib: S<u64>,
    pub(super) data_mib: S<u64>,
    pub(super) max_bytes: S<u64>,
    pub(super) download_url: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    pub(super) name: S<String>,
    pub(super) role: S<Role>,
    pub(super) address: Option<S<String>>,
    pub(super) mac: Option<S<String>>,
    pub(super) peers: Option<S<Vec<String>>>,
    pub(super) base: Option<S<String>>,
    pub(super) board: Option<S<String>>,
    pub(super) uplink: Option<S<String>>,
    pub(super) link: Option<S<u32>>,
    pub(super) subnet: Option<S<String>>,
    pub(super) host_mac: Option<S<String>>,
    pub(super) dev_mac: Option<S<String>>,
}

impl RawHost {
    /// The keys only some roles take, with where each is (if set) and the roles it is for.
    pub(super) fn role_keys(&self) -> [(&'static str, Option<usize>, &'static [Role]); 7] {
        const PAIR: &[Role] = &[Role::DhcpServer, Role::DhcpClient];
        fn at<T>(v: &Option<S<T>>) -> Option<usize> {
            v.as_ref().map(|s| s.span().start)
        }
        [
            ("address", at(&self.address), PAIR),
            ("mac", at(&self.mac), &[Role::DhcpClient]),
            ("uplink", at(&self.uplink), &[Role::Manager]),
            ("link", at(&self.link), &[Role::Worker]),
            ("subnet", at(&self.subnet), &[Role::Worker]),
            ("host_mac", at(&self.host_mac), &[Role::Worker]),
            ("dev_mac", at(&self.dev_mac), &[Role::Worker]),
        ]
    }
    /// Where role key `k` is in the file, if it is set.
    pub(super) fn offset(&self, k: &str) -> Option<usize> {
        self.role_keys().into_iter().find(|(key, ..)| *key == k).and_then(|(_, at, _)| at)
    }
}
