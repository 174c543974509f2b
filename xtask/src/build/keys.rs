//! `cargo xtask keys`: SSH host and user keys for every host, made once with ssh-keygen into
//! `keys/` (ignored by git, never committed). Later builds reuse them, so rebuilt or cloned cards
//! keep trusting each other.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::{cmd, Shell};

use crate::build::config::ImageConfig;
use crate::proc;

pub struct HostKeys {
    pub host_key: PathBuf,
    pub user_key: PathBuf,
}

/// One host's key material as it goes onto cards: its own private keys, and the public halves
/// its peers trust.
pub struct Identity {
    pub host_key: Vec<u8>,
    pub host_pub: String,
    pub user_key: Vec<u8>,
    pub user_pub: String,
}

impl HostKeys {
    pub fn read(&self) -> Result<Identity> {
        let private = |p: &Path| fs_err::read(p).with_context(|| format!("reading {} (run `cargo xtask keys`)", p.display()));
        Ok(Identity {
            host_key: private(&self.host_key)?,
            host_pub: read_pub(&self.host_key)?,
            user_key: private(&self.user_key)?,
            user_pub: read_pub(&self.user_key)?,
        })
    }
}

fn read_pub(key: &Path) -> Result<String> {
    let p = key.with_extension("pub");
    let s = fs_err::read_to_string(&p).with_context(|| format!("reading {} (run `cargo xtask keys`)", p.display()))?;
    Ok(s.trim().to_string())
}

pub fn dir(sh: &Shell) -> PathBuf {
    std::env::var_os("PI2PI_KEYS").map(PathBuf::from).unwrap_or_else(|| sh.current_dir().join("keys"))
}

pub fn for_host(sh: &Shell, host: &str) -> HostKeys {
    let d = dir(sh).join(host);
    HostKeys { host_key: d.join("ssh_host_ed25519_key"), user_key: d.join("id_ed25519") }
}

/// Makes whatever keys are missing; existing keys are never replaced.
pub fn ensure(sh: &Shell, cfg: &ImageConfig) -> Result<()> {
    for h in &cfg.hosts {
        let k = for_host(sh, &h.name);
        for (key, comment) in [(&k.host_key, format!("root@{}", h.name)), (&k.user_key, format!("{}@{}", cfg.system.user, h.name))] {
            if key.exists() {
                continue;
            }
            sh.create_dir(key.parent().unwrap())?;
            proc::read(cmd!(sh, "ssh-keygen -q -t ed25519 -N '' -C {comment} -f {key}"))?;
            eprintln!("keys: made {}", key.display());
        }
    }
    Ok(())
}
