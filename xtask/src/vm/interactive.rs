//! `cargo xtask run <host>`: boots one built image on this terminal, with the pair test's QEMU
//! command line, so people can poke at it. The console gets a root shell (requested on the kernel
//! command line, as the harness does; a real Pi's cmdline.txt has no such thing). A fresh blank
//! USB drive is attached; the NIC's link has no peer. Quit with Ctrl-A X.

use anyhow::Result;
use xshell::Shell;

use crate::build::config::ImageConfig;
use crate::build::fat::Fat;
use crate::build::mac::PiMacs;
use crate::proc;
use crate::vm::qemu;

pub fn run(sh: &Shell, cfg: &ImageConfig, host: &str) -> Result<()> {
    let h = cfg.host(host)?;
    let image = sh.current_dir().join(format!("target/images/{host}.img"));
    anyhow::ensure!(image.exists(), "{} is missing: run `cargo xtask image {host}` first", image.display());
    let dir = sh.current_dir().join(format!("target/qemu/run-{host}"));
    fs_err::create_dir_all(&dir)?;
    let usb = dir.join("usb.img");
    if !usb.exists() {
        Fat::create(sh, &usb, &cfg.drive.label, 131072, None)?;
    }
    let boot = qemu::virt_boot_files(sh, &image, &dir.join("boot"))?;
    let overlay = dir.join("overlay.qcow2");
    qemu::overlay(sh, &image, &overlay)?;
    let spec = qemu::Spec {
        name: h.name.clone(),
        image,
        usb: Some(usb),
        usb_unplugged: false,
        // A NIC on a link with nobody at the other end: eth0 and dnsmasq come up as on a Pi
        // whose cable is unplugged, and nothing can leave the VM.
        nics: vec![qemu::Nic {
            mac: h.card_mac().unwrap_or_else(|| PiMacs::with_seed(fastrand::u64(..)).next(&format!("{host} eth0"))),
            local: dir.join("self.link"),
            remote: dir.join("nobody.link"),
        }],
        dir: dir.clone(),
        memory_mib: 768,
        rtc_base: None,
        cpus: qemu::CPUS_ALONE,
    };
    let append = qemu::qemu_cmdline(&boot.cmdline, "systemd.debug_shell=ttyAMA0 systemd.mask=serial-getty@ttyAMA0.service");
    let mut argv = qemu::argv(&spec, &boot, &append, &overlay, "stdio,id=con,mux=on,signal=off");
    argv.extend(["-mon".into(), "chardev=con,mode=readline".into()]);
    eprintln!("Booting {host} (Ctrl-A X quits; a root shell appears on this console once systemd starts)");
    let status = proc::run_inherited(&argv, &[])?;
    anyhow::ensure!(status.success(), "QEMU exited with {status}");
    Ok(())
}
