//! Ethernet addresses: the ones a config gives or derives (a cluster's gadget ends, a pinned
//! dhcp-client), and the ones the QEMU harness draws for NICs whose address no card sets, as a
//! real Pi's burned-in address is set by nobody the card knows.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

/// A unicast Ethernet address. Written lower case, colon separated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

/// Raspberry Pi's own OUIs (Raspberry Pi Foundation, then Raspberry Pi Trading/Ltd), from which
/// every Pi's on-board Ethernet address is assigned.
pub const PI_OUIS: [[u8; 3]; 5] = [[0xb8, 0x27, 0xeb], [0xdc, 0xa6, 0x32], [0xe4, 0x5f, 0x01], [0xd8, 0x3a, 0xdd], [0x2c, 0xcf, 0x67]];

impl Mac {
    /// A stable, locally administered unicast address for `what` of host `name`: the same on every
    /// build, different for every name and purpose.
    pub fn derived(name: &str, what: &str) -> Mac {
        let d = Sha256::digest(format!("pi2pi {what} {name}").as_bytes());
        let mut m = [0u8; 6];
        m.copy_from_slice(&d[..6]);
        m[0] = (m[0] & 0xfc) | 0x02;
        Mac(m)
    }

    /// A Raspberry Pi's address: one of its OUIs and three drawn bytes, like the one each real Pi
    /// has from the factory.
    pub fn random_pi(rng: &mut fastrand::Rng) -> Mac {
        let oui = PI_OUIS[rng.usize(..PI_OUIS.len())];
        Mac([oui[0], oui[1], oui[2], rng.u8(..), rng.u8(..), rng.u8(..)])
    }

    #[cfg(test)]
    pub fn is_locally_administered(self) -> bool {
        self.0[0] & 2 == 2
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        let bad = || format!("`{s}` must be a unicast MAC like \"b8:27:eb:00:00:01\"");
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (b, p) in m.iter_mut().zip(&parts) {
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        // Multicast (the group bit) or all zeros is no address a NIC can have.
        if m[0] & 1 == 1 || m == [0; 6] {
            return Err(bad());
        }
        Ok(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Templates see it as its text.
impl Serialize for Mac {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The NIC addresses of one harness run that no card sets, drawn from a seed printed in the log
/// (`PI2PI_MAC_SEED` replays it). A fixed address in the harness hid for months that a real rpb
/// (its own factory address) got no reservation; drawing a new one each run keeps every test
/// honest about which addresses the cards control.
pub struct PiMacs {
    seed: u64,
    rng: fastrand::Rng,
}

/// The variable that replays a run's drawn addresses.
pub const SEED_VAR: &str = "PI2PI_MAC_SEED";

impl PiMacs {
    /// Seeded from `PI2PI_MAC_SEED` when set, else at random; says which, for the replay.
    pub fn for_run(what: &str) -> anyhow::Result<PiMacs> {
        let seed = match std::env::var(SEED_VAR) {
            Ok(s) => s.trim().parse().map_err(|_| anyhow::anyhow!("{SEED_VAR}={s:?} must be a whole number (a seed a run printed)"))?,
            Err(_) => fastrand::u64(..),
        };
        eprintln!("{what}: NICs whose address no card sets get Raspberry Pi addresses from seed {seed} (replay: {SEED_VAR}={seed})");
        Ok(PiMacs::with_seed(seed))
    }

    pub fn with_seed(seed: u64) -> PiMacs {
        PiMacs { seed, rng: fastrand::Rng::with_seed(seed) }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The next Pi's address; `who` names the NIC in the log.
    pub fn next(&mut self, who: &str) -> Mac {
        let m = Mac::random_pi(&mut self.rng);
        eprintln!("  {who}: {m}");
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_and_write_as_text() {
        let m: Mac = "B8:27:EB:00:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "b8:27:eb:00:00:01");
        for bad in
            ["b8:27:eb:00:00", "b8:27:eb:00:00:01:02", "b8-27-eb-00-00-01", "01:00:5e:00:00:01", "00:00:00:00:00:00", "b8:27:eb:0:00:01"]
        {
            let e = bad.parse::<Mac>().unwrap_err();
            assert!(e.contains(bad) && e.contains("unicast MAC like"), "{bad}: {e}");
        }
    }

    #[test]
    fn derived_addresses_are_stable_local_and_distinct() {
        let a = Mac::derived("worker1", "dev_mac");
        assert_eq!(a, Mac::derived("worker1", "dev_mac"));
        assert_ne!(a, Mac::derived("worker1", "host_mac"));
        assert_ne!(a, Mac::derived("worker2", "dev_mac"));
        assert!(a.is_locally_administered() && a.0[0] & 1 == 0, "{a}");
    }

    #[test]
    fn drawn_addresses_are_real_pis_and_a_seed_replays_them() {
        let draw = |seed| {
            let mut p = PiMacs::with_seed(seed);
            (0..20).map(|i| p.next(&format!("nic{i}"))).collect::<Vec<_>>()
        };
        let a = draw(7);
        assert_eq!(a, draw(7), "the printed seed replays the run");
        assert_ne!(a, draw(8));
        for m in &a {
            assert!(PI_OUIS.iter().any(|o| m.0[..3] == o[..]), "{m} is not from a Raspberry Pi OUI");
            assert!(!m.is_locally_administered() && m.0[0] & 1 == 0, "{m} is a universal unicast address, as a Pi's is");
        }
        assert!(a.iter().map(|m| m.0[..3].to_vec()).collect::<std::collections::BTreeSet<_>>().len() > 1, "more than one OUI drawn");
    }
}
