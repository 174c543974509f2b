use pi2pi_agent::layout::BINARY;

use super::*;
use crate::build::config::{self, ImageConfig, Schedule};

fn shipped(schedule: Schedule) -> ImageConfig {
    ImageConfig { schedule, ..config::shipped() }
}

fn cluster() -> ImageConfig {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    config::load(&root.join("examples/cluster.toml")).unwrap()
}

fn identity(name: &str) -> Identity {
    Identity {
        host_key: format!("HOST-PRIVATE-{name}").into_bytes(),
        host_pub: format!("ssh-ed25519 HOSTPUB{name} root@{name}"),
        user_key: format!("USER-PRIVATE-{name}").into_bytes(),
        user_pub: format!("ssh-ed25519 USERPUB{name} pi@{name}"),
    }
}

/// The layer for `host` as the image stage would build it, with stand-in keys and agent.
fn layer_for(cfg: &ImageConfig, host: &str) -> Layer {
    let h = cfg.host(host).unwrap();
    let overlays = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays");
    let id = identity(host);
    let others = cfg.hosts.iter().filter(|o| o.name != h.name).map(|o| (o, identity(&o.name))).collect();
    build(&Inputs {
        cfg,
        host: h,
        overlays: &overlays,
        identity: &id,
        others,
        agent: b"AGENT",
        disk_id: 0x1234abcd,
        user_ids: (1000, 1000),
        kernel: "vmlinuz-6.12.0-arm64".into(),
        initrd: "initrd.img-6.12.0-arm64".into(),
        firmware_lines: crate::build::boards::firmware_lines(cfg.base_of(h).arch, (7, 3), "vmlinuz-7.3.0-arm64", "initrd.img-7.3.0-arm64"),
        epoch: 1_700_000_000,
        update: Update { compatible: crate::build::bundle::compatible(host), version: 1_700_000_100, cert: "CERT" },
    })
    .unwrap()
}

fn text<'a>(l: &'a Layer, path: &str) -> &'a str {
    match l.root.get(path).map(|e| &e.kind) {
        Some(Kind::File(b)) => std::str::from_utf8(b).unwrap(),
        other => panic!("{path}: {other:?}"),
    }
}

fn enabled(l: &Layer, target: &str, unit: &str) -> bool {
    l.root.contains_key(&format!("etc/systemd/system/{target}.wants/{unit}"))
}

#[test]
fn the_dhcp_server_gets_a_static_address_and_dnsmasq_with_the_clients_reservation() {
    let cfg = shipped(Schedule::Systemd);
    let a = layer_for(&cfg, "rpa");
    assert!(text(&a, "etc/dhcpcd.conf").contains("static ip_address=10.0.0.1/8"));
    // Every name resolves to its address on every host, its own included (the pair test
    // checks `getent hosts rpa.local` on rpa too).
    let hosts = text(&a, "etc/hosts");
    assert!(hosts.contains("10.0.0.1\trpa.local rpa\n") && hosts.contains("10.0.0.49\trpb.local rpb\n"), "{hosts}");
    let dns = text(&a, "etc/pi2pi/dnsmasq.conf");
    // rpb's address is reserved by the identifier its card sends, whatever Pi it is in.
    let id = cfg.host("rpb").unwrap().client_id.clone().unwrap();
    assert!(dns.contains(&format!("\ndhcp-host=id:{id},10.0.0.49,rpb\n")), "{dns}");
    assert_eq!(dns.matches("dhcp-host=").count(), 1, "{dns}");
    assert!(dns.contains("dhcp-range=10.0.0.100,10.0.0.200,255.0.0.0,12h"), "{dns}");
    assert!(enabled(&a, "multi-user.target", "pi2pi-dnsmasq.service"));
    let b = layer_for(&cfg, "rpb");
    assert!(!b.root.contains_key("etc/pi2pi/dnsmasq.conf") && !b.root.contains_key("etc/systemd/system/pi2pi-dnsmasq.service"));
    assert!(!enabled(&b, "multi-user.target", "pi2pi-dnsmasq.service"));
    let dhcpcd = text(&b, "etc/dhcpcd.conf");
    assert!(!dhcpcd.contains("static ip_address"));
    assert!(dhcpcd.contains(&format!("\nclientid {id}\npersistent\n")), "{dhcpcd}");
    assert!(text(&a, "etc/dhcpcd.conf").contains("\nclientid\npersistent\n"));
    // A pinned MAC is honoured beside the identifier.
    let mut pinned = cfg.clone();
    pinned.hosts[1].mac = Some("b8:27:eb:12:34:56".parse().unwrap());
    let a = layer_for(&pinned, "rpa");
    let dns = text(&a, "etc/pi2pi/dnsmasq.conf");
    assert!(dns.contains(&format!("\ndhcp-host=b8:27:eb:12:34:56,id:{id},10.0.0.49,rpb\n")), "{dns}");
}

#[test]
fn the_schedule_picks_the_daemon_or_the_cron_job_never_both() {
    for host in ["rpa", "rpb"] {
        let d = layer_for(&shipped(Schedule::Systemd), host);
        assert!(enabled(&d, "multi-user.target", "pi2pi-agent.service"));
        assert!(text(&d, "etc/systemd/system/pi2pi-agent.service").contains(&format!("ExecStart={BINARY} run")));
        assert!(!d.root.contains_key("etc/cron.d/pi2pi-agent"));
        let c = layer_for(&shipped(Schedule::Cron), host);
        assert!(!enabled(&c, "multi-user.target", "pi2pi-agent.service"));
        assert!(!c.root.contains_key("etc/systemd/system/pi2pi-agent.service"));
        assert!(text(&c, "etc/cron.d/pi2pi-agent").contains(&format!("* * * * * pi {BINARY} sync ")));
    }
}

/// A pair with a second dhcp-client: each host then receives from two senders (a pair's
/// hosts deliver to all the others), so each sender gets its own directory there, fixed by
/// the receiver's authorized_keys. A two-host pair keeps receiving/ itself (the test above).
#[test]
fn a_host_with_two_senders_gives_each_its_own_directory() {
    let shipped = fs_err::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../image.toml")).unwrap();
    let three = format!("{shipped}\n[[host]]\nname = \"rpc\"\nrole = \"dhcp-client\"\naddress = \"10.0.0.50\"\n");
    let cfg = config::parse(Path::new("image.toml"), &three).unwrap();
    for (me, senders) in [("rpa", ["rpb", "rpc"]), ("rpb", ["rpa", "rpc"]), ("rpc", ["rpa", "rpb"])] {
        let auth = text(&layer_for(&cfg, me), "home/pi/.ssh/authorized_keys").to_string();
        for s in senders {
            let line = format!("restrict,command=\"{BINARY} serve --into {s}\" ssh-ed25519 USERPUB{s} pi@{s}");
            assert!(auth.lines().any(|l| l == line), "{me}: {auth}");
        }
        assert!(!auth.contains("serve\""), "{me} lets a sender into receiving/ itself: {auth}");
    }
}

#[test]
fn ssh_trust_is_the_peers_keys_only_and_the_agent_key_runs_the_receiver_only() {
    let l = layer_for(&shipped(Schedule::Systemd), "rpb");
    let auth = text(&l, "home/pi/.ssh/authorized_keys");
    assert!(auth.contains(&format!("restrict,command=\"{BINARY} serve\" ssh-ed25519 USERPUBrpa pi@rpa")), "{auth}");
    assert!(!auth.contains("USERPUBrpb"), "a host does not trust itself");
    let known = text(&l, "etc/ssh/ssh_known_hosts");
    assert!(known.contains("rpa,rpa.local,10.0.0.1 ssh-ed25519 HOSTPUBrpa"), "{known}");
    assert_eq!(l.root["home/pi/.ssh/id_ed25519"].mode, 0o600);
    assert_eq!((l.root["home/pi/.ssh"].uid, l.root["home/pi/.ssh"].mode), (1000, 0o700));
    assert_eq!(l.root["etc/ssh/ssh_host_ed25519_key"].kind, Kind::File(b"HOST-PRIVATE-rpb".to_vec()));
    assert_eq!(l.root[BINARY.trim_start_matches('/')], Entry { kind: Kind::File(b"AGENT".to_vec()), mode: 0o755, uid: 0, gid: 0 });
}

#[test]
fn agent_config_drive_and_boot_files_follow_the_config() {
    let cfg = shipped(Schedule::Systemd);
    let l = layer_for(&cfg, "rpa");
    let agent = pi2pi_agent::config::Config::parse(Path::new("agent.toml"), text(&l, "etc/pi2pi/agent.toml")).unwrap();
    assert_eq!((agent.node.as_str(), agent.peers.len(), agent.peers[0].name.as_str()), ("rpa", 1, "rpb"));
    assert_eq!(agent.drive.label, cfg.drive.label);
    assert!(text(&l, "etc/fstab").contains("LABEL=PI2PI\t/media/pi/PI2PI\tvfat\tnoauto,nofail"));
    assert!(text(&l, "etc/udev/rules.d/90-pi2pi-drive.rules").contains("media-pi-PI2PI.mount"));
    assert!(text(&l, "etc/systemd/system/media-pi-PI2PI.mount.d/pi2pi.conf").contains("[Mount]\nLazyUnmount=yes"));
    let boot_cfg = std::str::from_utf8(&l.boot["config.txt"]).unwrap();
    assert!(boot_cfg.contains("\nkernel=u-boot-rpi_arm64.bin\n[pi5]\nkernel=vmlinuz-7.3.0-arm64\n"), "{boot_cfg}");
    let script = std::str::from_utf8(&l.boot["boot.cmd"]).unwrap();
    // U-Boot loads the slot's own kernel (apt keeps /vmlinuz pointing at the newest).
    assert!(script.contains(":${pi2pi_part} ${pi2pi_at} /vmlinuz && ") && script.contains("\nbooti "), "{script}");
    let cmdline = std::str::from_utf8(&l.boot["cmdline.txt"]).unwrap();
    assert!(
        cmdline.starts_with("console=tty0 console=ttyAMA0,115200 console=ttyAMA10,115200 console=ttyS1,115200 root=PARTUUID=1234abcd-02 "),
        "{cmdline}"
    );
    // raspi-firmware's hooks (diverted in the base) would point the firmware past U-Boot: pi2pi's stand in.
    for hook in RASPI_FIRMWARE_HOOKS {
        let e = &l.root[hook.trim_start_matches('/')];
        assert_eq!(e.mode, 0o755, "{hook}");
        assert!(matches!(&e.kind, Kind::File(t) if String::from_utf8_lossy(t).contains("exit 0")), "{hook}");
    }
    assert_eq!(l.root["etc/localtime"].kind, Kind::Symlink("/usr/share/zoneinfo/America/New_York".into()));
    assert_eq!(l.root["etc/systemd/system/apt-daily.timer"].kind, Kind::Symlink("/dev/null".into()), "offline: no apt timers");
    for unit in ["getty-static.service", "e2scrub_reap.service"] {
        assert_eq!(l.root[&format!("etc/systemd/system/{unit}")].kind, Kind::Symlink("/dev/null".into()), "{unit}");
    }
    // /usr (mtime: the epoch) is no newer than these, so ldconfig & co. skip the first boot.
    for stamp in ["etc/.updated", "var/.updated"] {
        assert!(text(&l, stamp).ends_with("\nTIMESTAMP_NSEC=1700000000000000000\n"), "{stamp}");
    }
}

/// systemd-growfs@data (from `x-systemd.growfs` on /data) resizes ext4 to its partition once; if
/// it ran before pi2pi-grow has grown the partition it would find nothing to do, and the card
/// would stay small until a second boot (seen with the root on `raspi3b`: "resizing filesystem
/// from 177152 to 177152 blocks", then "Starting pi2pi-growroot"). Debian 12's systemd (252, the
/// cluster example's Pi Zero base) and 13's (257) name that job the same for /data.
#[test]
fn the_data_partition_grows_before_its_filesystem_in_the_same_boot() {
    let l = layer_for(&shipped(Schedule::Systemd), "rpa");
    let fstab = text(&l, "etc/fstab");
    let mount = |at: &str| fstab.lines().find(|f| f.split_whitespace().nth(1) == Some(at)).map(str::to_string);
    assert!(mount("/data").is_some_and(|f| f.contains("x-systemd.growfs") && f.ends_with(" 2")), "fstab: {fstab}");
    // The root is whichever slot booted: not in fstab (its options are on the command line).
    assert_eq!(mount("/"), None, "fstab: {fstab}");
    let cmdline = String::from_utf8(l.boot["cmdline.txt"].clone()).unwrap();
    assert!(cmdline.split_whitespace().any(|w| w == "rw") && cmdline.contains("rootflags=noatime"), "{cmdline}");
    let unit = text(&l, "etc/systemd/system/pi2pi-grow.service");
    let values = |key: &str| -> Vec<String> {
        unit.lines().filter_map(|u| u.strip_prefix(key)).flat_map(str::split_whitespace).map(str::to_string).collect()
    };
    assert!(values("Before=").contains(&"systemd-growfs@data.service".to_string()), "{unit}");
    assert_eq!(values("RequiresMountsFor="), vec!["/data"], "its flag is on /data: {unit}");
    assert!(unit.contains("DefaultDependencies=no"), "with default dependencies it could not run before local-fs.target");
    assert!(enabled(&l, "local-fs.target", "pi2pi-grow.service"));
}

/// RAUC on the card takes only this host's bundles, signed with the deployment's certificate,
/// checked at their signing time; it writes the two root slots and switches them through
/// `pi2pi-agent boot`.
#[test]
fn rauc_writes_the_slots_and_switches_them_through_the_agent() {
    let l = layer_for(&shipped(Schedule::Systemd), "rpb");
    let conf = text(&l, "etc/rauc/system.conf");
    for want in [
        "compatible=pi2pi-rpb",
        "bootloader=custom",
        "bootloader-custom-backend=/usr/local/lib/pi2pi/rauc-boot",
        "path=/etc/rauc/keyring.pem",
        "use-bundle-signing-time=true",
        "statusfile=/data/rauc.status",
    ] {
        assert!(conf.lines().any(|l| l == want), "system.conf lacks {want}:\n{conf}");
    }
    for (slot, part) in [("A", 2), ("B", 3)] {
        assert!(conf.contains(&format!("device=/dev/disk/by-partuuid/1234abcd-0{part}\ntype=ext4\nbootname={slot}\n")), "{conf}");
    }
    assert_eq!(text(&l, "etc/rauc/keyring.pem"), "CERT");
    let backend = &l.root["usr/local/lib/pi2pi/rauc-boot"];
    assert_eq!(backend.mode, 0o755);
    assert!(text(&l, "usr/local/lib/pi2pi/rauc-boot").contains(&format!("exec {BINARY} boot \"$@\"")));
    assert!(text(&l, "etc/pi2pi/build").contains("\nversion=1700000100\ncompatible=pi2pi-rpb\n"));
}

/// Each persisted directory is bound from the data partition, after it is mounted.
#[test]
fn persisted_directories_are_bound_from_the_data_partition() {
    let l = layer_for(&shipped(Schedule::Systemd), "rpa");
    let fstab = text(&l, "etc/fstab");
    for p in crate::build::partitions::PERSISTED {
        let line = fstab
            .lines()
            .find(|f| f.split_whitespace().nth(1) == Some(p.path))
            .unwrap_or_else(|| panic!("{} not in fstab:\n{fstab}", p.path));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], format!("/data/{}", p.name));
        assert!(f[3].split(',').any(|o| o == "bind") && f[3].contains("x-systemd.requires-mounts-for=/data"), "{line}");
    }
    assert!(enabled(&l, "timers.target", "pi2pi-update.timer"));
    let guard = text(&l, "etc/systemd/system/pi2pi-trial-guard.timer");
    assert!(guard.contains("\nOnBootSec=420s\n"), "the guard fires after the agent's health window: {guard}");
    assert!(enabled(&l, "timers.target", "pi2pi-trial-guard.timer"));
}

#[test]
fn mount_unit_names_follow_systemd_escaping() {
    assert_eq!(mount_unit("/media/pi/PI2PI"), "media-pi-PI2PI.mount");
    assert_eq!(mount_unit("/media/pi/my-drive"), "media-pi-my\\x2ddrive.mount");
}

/// The manager: a link per worker named by its gadget's host-side MAC, static .1 on each,
/// forwarding, NAT out of the uplink only, DNS and time for the links, each worker's files in
/// their own directory, and a login on every worker with pinned host keys.
#[test]
fn the_manager_names_routes_and_nats_its_workers_links() {
    let cfg = cluster();
    let m = layer_for(&cfg, "manager");
    let w1 = cfg.host("worker1").unwrap().link.clone().unwrap();
    let rules = text(&m, "etc/udev/rules.d/70-pi2pi-links.rules");
    assert!(rules.contains(&format!("ATTR{{address}}==\"{}\", NAME=\"ethpi1\"", w1.host_mac)), "{rules}");
    assert_eq!(rules.matches("NAME=\"ethpi").count(), 3, "{rules}");
    let dhcpcd = text(&m, "etc/dhcpcd.conf");
    assert!(dhcpcd.contains("interface ethpi3\nstatic ip_address=10.0.13.1/24\nnolink"), "{dhcpcd}");
    assert!(!dhcpcd.contains("interface eth0"), "the uplink is left to DHCP: {dhcpcd}");
    assert_eq!(text(&m, "etc/sysctl.d/90-pi2pi-router.conf").lines().last(), Some("net.ipv4.ip_forward = 1"));
    let nft = text(&m, "etc/nftables.conf");
    assert!(nft.contains("define links = { 10.0.11.0/24, 10.0.12.0/24, 10.0.13.0/24 }"), "{nft}");
    assert!(nft.contains("ip saddr $links oifname \"eth0\" masquerade"), "{nft}");
    assert!(enabled(&m, "sysinit.target", "nftables.service"));
    let dns = text(&m, "etc/pi2pi/dnsmasq.conf");
    assert!(dns.contains("interface=ethpi2\n") && !dns.contains("dhcp-range"), "{dns}");
    assert!(enabled(&m, "multi-user.target", "pi2pi-dnsmasq.service"));
    let chrony = text(&m, "etc/chrony/chrony.conf");
    assert!(chrony.contains("local stratum 10") && chrony.contains("allow 10.0.12.0/24"), "{chrony}");
    let hosts = text(&m, "etc/hosts");
    assert!(hosts.contains("10.0.12.2\tworker2.local worker2"), "{hosts}");
    assert_eq!(hosts.matches("manager.local").count(), 1, "the manager is only 127.0.1.1 to itself: {hosts}");
    let auth = text(&m, "home/pi/.ssh/authorized_keys");
    assert!(auth.contains(&format!("restrict,command=\"{BINARY} serve --into worker2\" ssh-ed25519 USERPUBworker2")), "{auth}");
    let known = text(&m, "etc/ssh/ssh_known_hosts");
    assert!(known.contains("worker3,worker3.local,10.0.13.2 ssh-ed25519 HOSTPUBworker3"), "{known}");
    // It collects: no peers, so no agent daemon; the receiver runs from sshd.
    assert!(!enabled(&m, "multi-user.target", "pi2pi-agent.service"));
    assert!(!m.boot.get("config.txt").is_some_and(|c| String::from_utf8_lossy(c).contains("gpu_mem")));
}

/// A worker: its gadget with the configured addresses, usb0 static with the manager as
/// gateway, DNS and clock, its agent delivering to the manager, the manager let in.
#[test]
fn a_worker_is_a_gadget_with_the_manager_as_gateway_clock_and_peer() {
    let cfg = cluster();
    let w = layer_for(&cfg, "worker2");
    let l = cfg.host("worker2").unwrap().link.clone().unwrap();
    assert_eq!(text(&w, "etc/modules-load.d/pi2pi-gadget.conf").lines().last(), Some("g_ether"));
    let opts = text(&w, "etc/modprobe.d/pi2pi-gadget.conf");
    assert!(opts.contains(&format!("options g_ether host_addr={} dev_addr={}", l.host_mac, l.dev_mac)), "{opts}");
    let rules = text(&w, "etc/udev/rules.d/70-pi2pi-links.rules");
    assert!(rules.contains(&format!("ATTR{{address}}==\"{}\", NAME=\"usb0\"", l.dev_mac)), "{rules}");
    let dhcpcd = text(&w, "etc/dhcpcd.conf");
    for want in
        ["allowinterfaces usb0", "static ip_address=10.0.12.2/24", "static routers=10.0.12.1", "static domain_name_servers=10.0.12.1"]
    {
        assert!(dhcpcd.contains(want), "{want}: {dhcpcd}");
    }
    let chrony = text(&w, "etc/chrony/chrony.conf");
    assert!(chrony.contains("server 10.0.12.1 iburst") && chrony.contains("makestep 1 -1") && !chrony.contains("pool"), "{chrony}");
    let hosts = text(&w, "etc/hosts");
    assert!(hosts.contains("10.0.12.1\tmanager.local manager") && hosts.contains("10.0.11.2\tworker1.local"), "{hosts}");
    let agent = pi2pi_agent::config::Config::parse(Path::new("agent.toml"), text(&w, "etc/pi2pi/agent.toml")).unwrap();
    assert_eq!(agent.peers.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), ["manager"]);
    assert!(enabled(&w, "multi-user.target", "pi2pi-agent.service"));
    let auth = text(&w, "home/pi/.ssh/authorized_keys");
    assert!(auth.lines().any(|a| a == "ssh-ed25519 USERPUBmanager pi@manager"), "the manager logs in: {auth}");
    assert!(!auth.contains("worker"), "no other worker does: {auth}");
    let known = text(&w, "etc/ssh/ssh_known_hosts");
    assert!(known.contains("manager,manager.local,10.0.12.1 ssh-ed25519 HOSTPUBmanager") && !known.contains("worker"), "{known}");
    for absent in ["etc/nftables.conf", "etc/sysctl.d/90-pi2pi-router.conf", "etc/pi2pi/dnsmasq.conf"] {
        assert!(!w.root.contains_key(absent), "{absent}");
    }
    assert!(String::from_utf8_lossy(&w.boot["config.txt"]).contains("\ngpu_mem=16\n"));
}
