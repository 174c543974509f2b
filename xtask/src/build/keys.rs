//! `cargo xtask keys`: SSH host and user keys for every host, made once with ssh-keygen into
//! `keys/` (ignored by git, never committed), and the deployment's update-signing key and
//! certificate (openssl). Later builds reuse them, so rebuilt or cloned cards keep trusting each
//! other and the updates built for them.

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

/// The deployment's update-signing key (RAUC signs each `<host>.raucb` with it) and its
/// certificate, which every card carries as RAUC's keyring. Files, so no host name can take them.
pub struct UpdateKeys {
    pub key: PathBuf,
    pub cert: PathBuf,
}

pub fn update(sh: &Shell) -> UpdateKeys {
    let d = dir(sh);
    UpdateKeys { key: d.join("update.key.pem"), cert: d.join("update.cert.pem") }
}

impl UpdateKeys {
    /// The certificate, as it goes onto cards.
    pub fn read_cert(&self) -> Result<String> {
        fs_err::read_to_string(&self.cert).with_context(|| format!("reading {} (run `cargo xtask keys`)", self.cert.display()))
    }

    /// A self-signed RSA key and certificate. RSA because its signatures (PKCS#1 v1.5) are
    /// deterministic, so the same bundle gets the same bytes on every build (ECDSA's are random);
    /// valid from 2000 to 2099 because a Pi checks the certificate at the bundle's signing time,
    /// the build's epoch, which may be older than the key (its own clock is no guide offline).
    pub fn make(&self, sh: &Shell) -> Result<()> {
        let (key, cert) = (&self.key, &self.cert);
        anyhow::ensure!(
            !key.exists() && !cert.exists(),
            "{} and {} go together: restore the missing one from where keys/ is kept, or move both aside to make a new pair \
             (cards already deployed trust only the old certificate)",
            key.display(),
            cert.display()
        );
        sh.create_dir(key.parent().unwrap())?;
        let subject = "/O=pi2pi/CN=pi2pi update signing";
        proc::read(cmd!(
            sh,
            "faketime -f '2000-01-01 00:00:00' openssl req -x509 -newkey rsa:3072 -nodes -days 36500 -subj {subject} -keyout {key} -out {cert}"
        ))?;
        eprintln!("keys: made {} and {}", key.display(), cert.display());
        Ok(())
    }
}

/// Makes whatever keys are missing; existing keys are never replaced.
pub fn ensure(sh: &Shell, cfg: &ImageConfig) -> Result<()> {
    let u = update(sh);
    if !(u.key.exists() && u.cert.exists()) {
        u.make(sh)?;
    }
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
