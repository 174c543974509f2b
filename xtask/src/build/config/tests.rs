//! image.toml's rules, each shown to refuse what it should, naming the line and key.

use std::path::Path;

use super::validate::macs;
use super::*;

fn text() -> String {
    fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../image.toml")).unwrap()
}

fn parse_str(t: &str) -> Result<ImageConfig, ConfigError> {
    parse(Path::new("image.toml"), t)
}

#[test]
fn the_shipped_image_toml_is_valid() {
    let c = parse_str(&text()).unwrap();
    assert_eq!(c.hosts.len(), 2);
    assert_eq!(c.host("rpb").unwrap().peers, vec!["rpa"]);
    assert_eq!(c.server().unwrap().address, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(c.base.arch, Arch::Arm64);
}

#[test]
fn the_previous_suite_validates_with_only_the_suite_and_kernel_changed() {
    let t = text();
    let other = format!("suite = \"{}\"", crate::systest::phases::OTHER_SUITE);
    let t2 = t
        .replace("suite = \"trixie\"", &other)
        .replace("kernel = \"linux-image-arm64/trixie-backports\"", "kernel = \"linux-image-arm64\"");
    let c = parse_str(&t2).unwrap();
    assert_eq!(c.base.kernel, "linux-image-arm64");
    assert_eq!(c.base.suite, crate::systest::phases::OTHER_SUITE);
    assert_eq!(parse_str(&t).unwrap().base.suite, "trixie", "the shipped default is Debian 13");
}

#[test]
fn a_dhcp_clients_reservation_is_by_its_card_and_optionally_by_a_mac() {
    let t = text();
    let c = parse_str(&t).unwrap();
    let rpb = c.host("rpb").unwrap();
    assert_eq!(rpb.mac, None, "the shipped file ties rpb to no Pi");
    let id = rpb.client_id.as_deref().unwrap();
    assert!(id.starts_with("00:") && id.len() == 16 * 3 - 1, "type 0, 16 bytes: {id}");
    assert_eq!(c.host("rpa").unwrap().client_id, None, "the dhcp-server has a static address");
    let pinned = parse_str(&t.replace("# mac = \"b8:27:eb:12:34:56\"", "mac = \"B8:27:EB:12:34:56\"")).unwrap();
    let rpb2 = pinned.host("rpb").unwrap();
    assert_eq!(rpb2.mac.map(|m| m.to_string()).as_deref(), Some("b8:27:eb:12:34:56"));
    assert_eq!(rpb2.client_id.as_deref(), Some(id), "a pinned MAC keeps the card's identifier too");
    let renamed = parse_str(&t.replace("name = \"rpb\"", "name = \"rpc\"").replace("rpb", "rpc")).unwrap();
    assert_ne!(renamed.host("rpc").unwrap().client_id.as_deref(), Some(id), "each name its own identifier");
    let e = parse_str(&t.replace("address = \"10.0.0.1\"", "address = \"10.0.0.1\"\nmac = \"b8:27:eb:00:00:02\"")).unwrap_err();
    assert_eq!(e.key, "host[0].mac");
    assert!(e.message.contains("only for: dhcp-client"), "{e}");
}

#[test]
fn errors_name_file_line_and_key() {
    let t = text();
    let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
    let e = parse_str(&t.replace("# mac = \"b8:27:eb:12:34:56\"", "mac = \"b8:27:eb:00:00\"")).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("host[1].mac", Some(line_of("# mac = "))));
    assert!(e.to_string().starts_with("image.toml:"), "{e}");
    let e = parse_str(&t.replace("address = \"10.0.0.49\"", "address = \"192.168.1.9\"")).unwrap_err();
    assert_eq!(e.key, "host[1].address");
    assert!(e.message.contains("outside the network 10.0.0.0/8"), "{e}");
    let e = parse_str(&t.replace("schedule = \"systemd\"", "schedule = \"anacron\"")).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("agent.schedule", Some(line_of("schedule = "))));
    let e = parse_str(&t.replace("label = \"PI2PI\"", "label = \"MY DRIVE\"")).unwrap_err();
    assert_eq!(e.key, "drive.label");
    let e = parse_str(&t.replace("[drive]\n", "[drive]\nlabl = 1\n")).unwrap_err();
    assert_eq!(e.key, "labl");
    assert!(e.message.contains("unknown field"), "{e}");
    let e = parse_str(&t.replace("role = \"dhcp-client\"", "role = \"dhcp-server\"")).unwrap_err();
    assert!(e.message.contains("only one host"), "{e}");
    let e = parse_str(&t.replace("timezone = \"America/New_York\"", "timezone = \"Mars/Olympus\"")).unwrap_err();
    assert_eq!(e.key, "system.timezone");
}

#[test]
fn the_download_url_is_a_directory_url() {
    let t = text();
    let with = |u: &str| parse_str(&t.replace("# download_url = \"https://example.org/pi2pi/\"", &format!("download_url = \"{u}\"")));
    assert_eq!(parse_str(&t).unwrap().image.download_url, "", "unset by default: bare file names");
    assert_eq!(with("https://example.org/pi2pi/").unwrap().image.download_url, "https://example.org/pi2pi/");
    assert!(with("file:///srv/pi2pi/").is_ok());
    for bad in ["https://example.org/pi2pi", "ftp://example.org/", "/srv/pi2pi/"] {
        let e = with(bad).unwrap_err();
        assert_eq!(e.key, "image.download_url", "{bad}");
        assert!(e.message.contains("ending in `/`"), "{e}");
    }
}

#[test]
fn enums_are_read_by_serde_and_their_errors_still_name_the_key() {
    let t = text();
    let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
    let e = parse_str(&t.replace("architecture = \"arm64\"", "architecture = \"i386\"")).unwrap_err();
    assert_eq!((e.key.as_str(), e.line), ("base.architecture", Some(line_of("architecture = "))));
    assert!(e.message.contains("arm64") && e.message.contains("armhf"), "the valid values are listed: {e}");
    let e = parse_str(&t.replace("role = \"dhcp-client\"", "role = \"client\"")).unwrap_err();
    assert_eq!(e.key, "host[1].role");
    assert!(e.message.contains("dhcp-client"), "{e}");
}

#[test]
fn the_label_and_name_rules_are_the_agents() {
    let t = text();
    // Lower case would never match what Windows writes; the agent refuses it too.
    let e = parse_str(&t.replace("label = \"PI2PI\"", "label = \"pi2pi\"")).unwrap_err();
    assert_eq!(e.key, "drive.label");
    assert!(pi2pi_agent::rules::fat_label("pi2pi").is_err());
    let e = parse_str(&t.replace("name = \"rpb\"", "name = \"RPB\"")).unwrap_err();
    assert_eq!(e.key, "host[1].name");
    // Values reach the base's hooks through the environment; anything a hash cannot hold is refused.
    let e = parse_str(&t.replace("password_hash = \"\"", "password_hash = \"$y$j9T$a'b\"")).unwrap_err();
    assert_eq!(e.key, "system.password_hash");
    assert!(parse_str(&t.replace("password_hash = \"\"", "password_hash = \"$y$j9T$abc./=\"")).is_ok());
}

fn cluster_text() -> String {
    fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster.toml")).unwrap()
}

#[test]
fn the_cluster_example_is_valid_and_derives_links_and_addresses() {
    let c = parse_str(&cluster_text()).unwrap();
    assert!(c.network.lan.is_none() && c.lan().is_err(), "a cluster has no pair cable");
    let m = c.manager().unwrap();
    assert_eq!((m.uplink.as_deref(), m.address, m.peers.len()), (Some("eth0"), None, 0), "the manager collects");
    let w2 = c.host("worker2").unwrap();
    let l = w2.link.as_ref().unwrap();
    assert_eq!((l.interface.as_str(), l.subnet, l.prefix), ("ethpi2", Ipv4Addr::new(10, 0, 12, 0), 24));
    assert_eq!((l.manager, l.worker, w2.address), (Ipv4Addr::new(10, 0, 12, 1), Ipv4Addr::new(10, 0, 12, 2), Some(l.worker)));
    assert_eq!(w2.peers, vec!["manager"]);
    assert_eq!(c.address_seen_by(w2, m), Some(l.manager), "a worker reaches the manager at its own link's .1");
    // Derived gadget addresses: locally administered unicast, stable, different per end and name.
    let all: Vec<Mac> = c.hosts.iter().flat_map(|h| macs(h).into_iter().map(|(_, m)| m)).collect();
    assert_eq!(all.len(), 6);
    for m in &all {
        assert_eq!(m.0[0] & 3, 2, "{m} is locally administered unicast");
    }
    assert_eq!(all.iter().collect::<std::collections::BTreeSet<_>>().len(), 6, "{all:?}");
    assert_eq!(parse_str(&cluster_text()).unwrap().host("worker2").unwrap().link.as_ref().unwrap().host_mac, l.host_mac);
}

#[test]
fn cluster_mistakes_are_named_by_line_and_key() {
    let t = cluster_text();
    let line_of = |needle: &str| t[..t.find(needle).unwrap()].matches('\n').count() + 1;
    let err = |from: &str, to: &str| {
        assert!(t.contains(from), "{from}");
        parse_str(&t.replacen(from, to, 1)).unwrap_err()
    };
    let e = err("link = 2\n", "link = 2\nsubnet = \"10.0.11.128/25\"\n");
    assert_eq!(e.key, "host[2].subnet");
    assert!(e.message.contains("overlaps worker1's link 10.0.11.0/24"), "{e}");
    let e = err("link = 3", "link = 1");
    assert_eq!((e.key.as_str(), e.line), ("host[3].link", Some(line_of("link = 3"))));
    assert!(e.message.contains("already worker1's"), "{e}");
    let e = err("link = 2\n", "");
    assert_eq!(e.key, "host[2].link");
    assert!(e.message.contains("a worker needs `link = N`"), "{e}");
    let e = err("board = \"pi-zero-2-w\"\nlink = 1", "board = \"pi-zero\"\nlink = 1");
    assert_eq!((e.key.as_str(), e.line), ("host[1].board", Some(line_of("board = \"pi-zero-2-w\""))));
    assert!(e.message.contains("armel (ARMv6)") && e.message.contains("arm64 (64-bit)"), "{e}");
    // A worker listing another worker would make that one a receiver of a second sender.
    let e = err("link = 2\n", "link = 2\npeers = [\"manager\", \"worker1\"]\n");
    assert_eq!(e.key, "host[2].peers");
    assert!(e.message.contains("`worker1` is a worker; a worker delivers to its manager only"), "{e}");
    let e = err("board = \"pi-zero-2-w\"\nlink = 1", "board = \"pi3-b\"\nlink = 1");
    assert!(e.message.contains("no USB port that can be a gadget"), "{e}");
    assert!(parse_str(&t.replacen("link = 2\n", "link = 2\nhost_mac = \"02:00:00:00:00:01\"\n", 1)).is_ok(), "a given MAC");
    let dup = t.replacen("link = 1\n", "link = 1\ndev_mac = \"02:00:00:00:00:01\"\n", 1).replacen(
        "link = 3\n",
        "link = 3\nhost_mac = \"02:00:00:00:00:01\"\n",
        1,
    );
    let e = parse_str(&dup).unwrap_err();
    assert_eq!(e.key, "host[3].host_mac");
    assert!(e.message.contains("02:00:00:00:00:01 is already worker1's"), "{e}");
    let e = err("uplink = \"eth0\"", "");
    assert_eq!(e.key, "host[0].uplink");
    let e = err("link = 3\n", "link = 3\nuplink = \"eth1\"\n");
    assert_eq!(e.key, "host[3].uplink");
    assert!(e.message.contains("not for a worker (only for: manager)"), "{e}");
    let e = err("link = 3\n", "link = 3\naddress = \"10.0.13.9\"\n");
    assert_eq!(e.key, "host[3].address");
    let e = err("role = \"worker\"", "role = \"dhcp-client\"\naddress = \"10.0.0.9\"\nmac = \"b8:27:eb:00:00:09\"");
    assert_eq!(e.key, "host[1].link", "link is for workers: {e}");
    let e = err("uplink = \"eth0\"", "uplink = \"eth0\"\npeers = [\"worker1\"]");
    assert_eq!(e.key, "host[0].peers");
    let e = err("role = \"manager\"", "role = \"worker\"");
    assert_eq!(e.key, "host[0].uplink");
    let pair_in_cluster = format!("{t}\n[[host]]\nname = \"rpx\"\nrole = \"dhcp-server\"\naddress = \"10.0.0.1\"\n");
    let e = parse_str(&pair_in_cluster).unwrap_err();
    assert_eq!(e.key, "host[4].role");
    assert!(e.message.contains("a pair") && e.message.contains("a cluster"), "{e}");
}

#[test]
fn a_pair_needs_its_cable() {
    let t = text();
    let e = parse_str(&t.replace("dhcp_range = [\"10.0.0.100\", \"10.0.0.200\"]\n", "")).unwrap_err();
    assert_eq!(e.key, "network.dhcp_range");
    let no_lan =
        t.replace("interface = \"eth0\"\n", "").replace("prefix = 8\n", "").replace("dhcp_range = [\"10.0.0.100\", \"10.0.0.200\"]\n", "");
    let e = parse_str(&no_lan).unwrap_err();
    assert_eq!(e.key, "network.interface");
    assert!(e.message.contains("a pair needs its cable"), "{e}");
}

#[test]
fn named_bases_change_some_keys_of_base_and_hosts_choose_them() {
    let t = cluster_text();
    let c = parse_str(&t).unwrap();
    let zero = &c.bases["zero"];
    assert_eq!((zero.arch, zero.kernel.as_str(), zero.suite.as_str()), (Arch::Armel, "linux-image-rpi", "bookworm"));
    assert_eq!(zero.packages, c.base.packages, "unchanged keys are [base]'s");
    let w3 = c.host("worker3").unwrap();
    assert_eq!(c.base_of(w3).arch, Arch::Armel);
    assert_eq!(c.bases_in_use().iter().map(|b| b.arch).collect::<Vec<_>>(), [Arch::Arm64, Arch::Armel], "each base once");
    assert_eq!(c.base_of(c.host("worker1").unwrap()).arch, Arch::Arm64);
    let err = |from: &str, to: &str| {
        assert!(t.contains(from), "{from}");
        parse_str(&t.replacen(from, to, 1)).unwrap_err()
    };
    let e = err("base = \"zero\"\nlink", "base = \"zeros\"\nlink");
    assert_eq!(e.key, "host[3].base");
    assert!(e.message.contains("its bases are \"zero\""), "{e}");
    let e = err("kernel = \"linux-image-rpi\"", "kernel = \"Linux Image\"");
    assert_eq!(e.key, "bases.zero.kernel");
    let e = err("suite = \"bookworm\"\narchitecture = \"armel\"", "architecture = \"arm64\"");
    assert_eq!(e.key, "bases.zero");
    assert!(e.message.contains("as [base] does"), "{e}");
    let e = err("[bases.zero]\n", "[bases.zero]\nmirror = \"x\"\n");
    assert!(e.message.contains("unknown field"), "{e}");
    let e = err("base = \"zero\"\nlink", "link");
    assert_eq!(e.key, "host[3].board", "a pi-zero on the arm64 base: {e}");
    assert!(e.message.contains("base = \\\"<name>\\\"") || e.message.contains("[bases.<name>]"), "{e}");
}

/// The config's path is what was given (`--config deploy.cfg` is deploy.cfg in every message),
/// and its lock is derived from it.
#[test]
fn the_config_path_is_kept_and_the_lock_is_beside_it() {
    let c = parse(Path::new("/srv/deploy.cfg"), &text()).unwrap();
    assert_eq!((c.file_name().as_str(), c.lock_file()), ("deploy.cfg", PathBuf::from("/srv/deploy.lock")));
}
