//! Real drives (loop-mounted images, so root is needed, as in CI): the agent waits for an
//! unmounted, read-only or foreign drive without writing into the bare mountpoint, a full
//! receiver costs nothing but a retry, and a file the receiver cannot write or read fails alone.
//!
//! The images are ext4 because the CI host's kernel has no vfat driver; the mount, label and
//! read-only logic does not depend on the filesystem (`fstypes` names what is acceptable). Real
//! FAT32 drives are exercised by the QEMU pair test, whose guest kernels have vfat.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use pi2pi_agent::proto::{read_msg, write_msg, Code, Msg, VERSION};

/// A filesystem image attached to a loop device, optionally mounted; cleaned up on drop.
struct Drive {
    loopdev: String,
    mount: Option<PathBuf>,
}

impl Drive {
    fn new(dir: &Path, name: &str, label: &str, mib: u64) -> Drive {
        let img = dir.join(format!("{name}.img"));
        // -m 0: no root reserve, so "full" means full for the (root) test process too.
        sh(&format!("truncate -s {mib}M '{0}' && mkfs.ext4 -q -m 0 -L {label} '{0}'", img.display()));
        let out = sh(&format!("losetup --find --show '{}'", img.display()));
        Drive { loopdev: String::from_utf8(out.stdout).unwrap().trim().to_string(), mount: None }
    }

    fn mount(&mut self, at: &Path, opts: &str) {
        sh(&format!("mount -t ext4 -o {opts} {} '{}'", self.loopdev, at.display()));
        self.mount = Some(at.into());
    }

    fn umount(&mut self) {
        if let Some(m) = self.mount.take() {
            sh(&format!("umount '{}'", m.display()));
        }
    }
}

impl Drop for Drive {
    fn drop(&mut self) {
        self.umount();
        let _ = std::process::Command::new("losetup").args(["-d", &self.loopdev]).status();
    }
}

/// Config lines pointing the label check at a test directory of udev-style links.
fn drive_conf(by_label: &Path) -> String {
    format!("require_mount = true\nfstypes = [\"ext4\"]\nby_label_dir = \"{}\"", by_label.display())
}

fn label_link(by_label: &Path, label: &str, d: &Drive) {
    let link = by_label.join(label);
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&d.loopdev, link).unwrap();
}

/// A plain-directory sender `a` piping to a receiver `b` whose mountpoint is bare (no drive
/// plugged in) and whose label check looks in the returned by-label directory.
fn bare_receiver() -> (tempfile::TempDir, PathBuf, Node, Node) {
    let t = tempfile::tempdir().unwrap();
    let by_label = t.path().join("by-label");
    fs::create_dir(&by_label).unwrap();
    let a = Node::new(t.path(), "rpa");
    let b = Node::new(t.path(), "rpb");
    fs::remove_dir_all(&b.drive).unwrap();
    fs::create_dir(&b.drive).unwrap();
    b.write_config(&drive_conf(&by_label), "");
    a.write_config("require_mount = false", &pipe_peer(&b));
    (t, by_label, a, b)
}

/// True when this test cannot run here (not root): it says so, and under CI (`CI` set), where
/// it must run, it fails instead of passing silently.
fn skip_unless_root() -> bool {
    if is_root() {
        return false;
    }
    let why = "loop-mounting drive images needs root";
    assert!(std::env::var_os("CI").is_none(), "{why}, and CI must run this test");
    eprintln!("SKIPPED: {why} (CI runs as root)");
    true
}

#[test]
fn unmounted_readonly_and_foreign_drives_are_waited_for_and_never_written() {
    if skip_unless_root() {
        return;
    }
    let (t, by_label, a, b) = bare_receiver();
    write_file(&a.sending(), "photo.jpg", &content(1, 100_000));

    let o = a.sync_once();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nothing is mounted at"), "{}", stderr(&o));
    assert_eq!(fs::read_dir(&b.drive).unwrap().count(), 0, "wrote into the bare mountpoint");

    // The sender's own drive missing: it waits too, and creates nothing.
    let c = Node::new(t.path(), "rpc");
    fs::remove_dir_all(&c.drive).unwrap();
    fs::create_dir(&c.drive).unwrap();
    c.write_config(&drive_conf(&by_label), &pipe_peer(&b));
    let o = c.sync_once();
    assert!(stderr(&o).contains("waiting for the drive") && stderr(&o).contains("nothing is mounted"), "{}", stderr(&o));
    assert_eq!(fs::read_dir(&c.drive).unwrap().count(), 0);

    // A drive with another label mounted there: refused.
    let mut other = Drive::new(t.path(), "other", "OTHER", 40);
    let mut good = Drive::new(t.path(), "good", "PI2PI", 40);
    label_link(&by_label, "PI2PI", &good);
    other.mount(&b.drive, "rw");
    let o = a.sync_once();
    assert!(stderr(&o).contains("but the drive labelled PI2PI is"), "{}", stderr(&o));
    assert!(!b.drive.join("receiving").exists(), "wrote into the wrong drive");
    other.umount();

    // The right drive, read-only (as after a dirty unplug): refused.
    good.mount(&b.drive, "ro");
    let o = a.sync_once();
    assert!(stderr(&o).contains("mounted read-only"), "{}", stderr(&o));
    good.umount();

    // Mounted properly: sync resumes and receiving/ is created on the drive itself.
    good.mount(&b.drive, "rw");
    let o = a.sync_once();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(b.receiving().join("photo.jpg")).unwrap(), content(1, 100_000));
    good.umount();
    assert_eq!(fs::read_dir(&b.drive).unwrap().count(), 0, "the file must be on the drive, not under it");
    good.mount(&b.drive, "ro");
    assert_eq!(fs::read(b.receiving().join("photo.jpg")).unwrap(), content(1, 100_000));
}

#[test]
fn full_receiver_is_a_clear_error_and_a_later_retry_loses_nothing() {
    if skip_unless_root() {
        return;
    }
    let (t, by_label, a, b) = bare_receiver();
    let mut d = Drive::new(t.path(), "small", "PI2PI", 34);
    label_link(&by_label, "PI2PI", &d);
    d.mount(&b.drive, "rw");

    let free = || rustix::fs::statvfs(&b.drive).map(|s| s.f_bavail * s.f_frsize).unwrap();
    let filler = b.drive.join("filler.bin");
    fs::write(&filler, vec![0u8; (free() - (2 << 20)) as usize]).unwrap();
    let big = content(3, 6 << 20);
    write_file(&a.sending(), "big.bin", &big);
    write_file(&a.sending(), "a-small.txt", b"fits");
    write_file(&a.sending(), "new/dirs/big.bin", &big);

    let o = a.sync_once();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("receiver's drive is full"), "{}", stderr(&o));
    assert_eq!(fs::read(b.receiving().join("a-small.txt")).unwrap(), b"fits");
    assert!(!b.receiving().join("big.bin").exists());
    assert!(!b.receiving().join("new").exists(), "directories made for a file that does not fit");
    assert!(temps(&b.receiving()).is_empty(), "temporary left behind on a full drive");
    assert_eq!(fs::read(a.sending().join("big.bin")).unwrap(), big, "sender's file touched");

    fs::remove_file(&filler).unwrap();
    std::thread::sleep(Duration::from_secs(2)); // past the retry backoff
    let o = a.sync_once();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(fs::read(b.receiving().join("big.bin")).unwrap(), big);
    assert_eq!(fs::read(b.receiving().join("new/dirs/big.bin")).unwrap(), big);
}

/// A `serve` session with one offer made and left open (its promise stands while it lives):
/// the session, and the answer to the offer.
fn offer_and_hold(b: &Node, path: &str, size: u64) -> (KillOnDrop, Msg) {
    use std::process::Stdio;
    let mut child = b.cmd(&["serve"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut frames = Vec::new();
    write_msg(&mut frames, &Msg::Hello { version: VERSION }).unwrap();
    write_msg(&mut frames, &Msg::Offer { id: 1, path: path.into(), size }).unwrap();
    std::io::Write::write_all(&mut input, &frames).unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    assert!(matches!(read_msg(&mut out).unwrap(), Some(Msg::Welcome { .. })));
    let answer = read_msg(&mut out).unwrap().expect("an answer to the offer");
    // Both ends stay open with the child: the session lives until the child is killed.
    std::mem::forget((input, out));
    (KillOnDrop(child), answer)
}

/// Space promised to one session is not promised to another: two sessions (two senders, or a
/// reconnect) offering files that fit alone but not together, the second is told at once that the
/// drive is full, and may have the space once the first session is gone. Before, both were
/// accepted and one failed in the middle of its transfer.
#[test]
fn space_promised_to_one_session_is_not_promised_to_another() {
    if skip_unless_root() {
        return;
    }
    let (t, by_label, _a, b) = bare_receiver();
    let mut d = Drive::new(t.path(), "promise", "PI2PI", 34);
    label_link(&by_label, "PI2PI", &d);
    d.mount(&b.drive, "rw");
    fs::create_dir_all(b.receiving()).unwrap();
    let free = rustix::fs::statvfs(&b.drive).map(|s| s.f_bavail * s.f_frsize).unwrap();
    let size = free * 2 / 3;
    let (first, accepted) = offer_and_hold(&b, "one.bin", size);
    assert!(matches!(accepted, Msg::Accept { id: 1, .. }), "first session: {accepted:?}");
    let (second, refused) = offer_and_hold(&b, "two.bin", size);
    match refused {
        Msg::Failed { code: Code::NoSpace, message, .. } => assert!(message.contains("promised"), "{message}"),
        other => panic!("a second session offered space promised to the first: {other:?}"),
    }
    drop((second, first));
    let (_third, again) = offer_and_hold(&b, "two.bin", size);
    assert!(matches!(again, Msg::Accept { id: 1, .. }), "once the first session is gone: {again:?}");
}

/// One file the receiver cannot write (here: its directory is a read-only bind mount, EROFS; on a
/// Pi, a bad sector's EIO) fails alone. The files around it are delivered, it stays pending, a
/// new file goes over at once (the failure is that file's, not the peer's: no peer-wide backoff),
/// and it goes over once it can be written.
#[test]
fn an_io_error_on_one_file_at_the_receiver_does_not_hold_up_the_others() {
    if skip_unless_root() {
        return;
    }
    let (_t, a, b) = pipe_pair();
    // A long retry cap, so that a peer-wide backoff would be seen in the new file's delay.
    let cfg = fs::read_to_string(&a.config).unwrap().replace("retry_max_secs = 2", "retry_max_secs = 30");
    fs::write(&a.config, cfg).unwrap();
    let stuck = b.receiving().join("stuck");
    fs::create_dir_all(&stuck).unwrap();
    sh(&format!("mount --bind '{0}' '{0}' && mount -o remount,bind,ro '{0}'", stuck.display()));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let mut ro = Some(Unmount(stuck.clone()));
    write_file(&a.sending(), "a-before.txt", &content(10, 50_000));
    write_file(&a.sending(), "stuck/photo.jpg", &content(11, 50_000));
    write_file(&a.sending(), "z-after.txt", &content(12, 50_000));

    let mut daemon = KillOnDrop(a.spawn_run());
    let arrived = |rel: &str, seed: u64| fs::read(b.receiving().join(rel)).ok() == Some(content(seed, 50_000));
    assert!(
        wait_until(Duration::from_secs(10), || arrived("a-before.txt", 10) && arrived("z-after.txt", 12)),
        "held up by another file's I/O error"
    );
    // Let the stuck file fail a few times (a peer-wide backoff would be 8-16 s by now).
    std::thread::sleep(Duration::from_secs(8));
    assert!(!stuck.join("photo.jpg").exists());
    assert_eq!(peer_status(&a).pending, vec!["stuck/photo.jpg".to_string()], "the failed file is not pending");
    write_file(&a.sending(), "late.txt", &content(13, 50_000));
    let t0 = std::time::Instant::now();
    assert!(wait_until(Duration::from_secs(20), || arrived("late.txt", 13)));
    let late = t0.elapsed();
    assert!(late < Duration::from_secs(5), "a new file waited {late:?}: the peer was backed off over one file");

    ro.take();
    assert!(
        wait_until(Duration::from_secs(35), || fs::read(stuck.join("photo.jpg")).ok() == Some(content(11, 50_000))),
        "never delivered once writable"
    );
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
}

/// A read-only filesystem in userspace holding one file that every read fails with EIO, as a
/// bad sector under it would: the drive tests' stand-in for a device-mapper `error` target,
/// which this host's kernel lacks.
struct UnreadableFile {
    name: String,
    size: u64,
    mtime: std::time::SystemTime,
}

impl UnreadableFile {
    /// Mounts one such file at `dir` (which must exist) until the returned session is dropped.
    fn mount(dir: &Path, name: &str, size: u64) -> fuser::BackgroundSession {
        // Written just now, as a transfer's kept prefix would be (an old one is swept away).
        let fs = UnreadableFile { name: name.to_string(), size, mtime: std::time::SystemTime::now() };
        // Read-write, as a drive with a bad sector is: opening the file to write succeeds (the
        // receiver claims a temporary so), reads fail, and so does every change (fuser's
        // defaults answer them ENOSYS).
        let opts = [fuser::MountOption::FSName("pi2pi-unreadable".into())];
        let session = fuser::spawn_mount2(fs, dir, &opts).expect("mounting the unreadable file (FUSE)");
        assert_eq!(
            fs::read(dir.join(name)).map_err(|e| e.raw_os_error()),
            Err(Some(rustix::io::Errno::IO.raw_os_error())),
            "the stand-in drive reads"
        );
        session
    }

    const ROOT: u64 = fuser::FUSE_ROOT_ID;
    const FILE: u64 = 2;
    const TTL: Duration = Duration::from_secs(1);

    fn attr(&self, ino: u64) -> fuser::FileAttr {
        let (kind, perm, size) =
            if ino == Self::ROOT { (fuser::FileType::Directory, 0o555, 0) } else { (fuser::FileType::RegularFile, 0o444, self.size) };
        let t = self.mtime;
        fuser::FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl fuser::Filesystem for UnreadableFile {
    fn lookup(&mut self, _: &fuser::Request<'_>, parent: u64, name: &std::ffi::OsStr, reply: fuser::ReplyEntry) {
        if parent == Self::ROOT && name == self.name.as_str() {
            reply.entry(&Self::TTL, &self.attr(Self::FILE), 0);
        } else {
            reply.error(rustix::io::Errno::NOENT.raw_os_error());
        }
    }

    fn getattr(&mut self, _: &fuser::Request<'_>, ino: u64, _: Option<u64>, reply: fuser::ReplyAttr) {
        reply.attr(&Self::TTL, &self.attr(ino));
    }

    fn readdir(&mut self, _: &fuser::Request<'_>, ino: u64, _: u64, offset: i64, mut reply: fuser::ReplyDirectory) {
        let entries = [
            (Self::ROOT, fuser::FileType::Directory, "."),
            (Self::ROOT, fuser::FileType::Directory, ".."),
            (Self::FILE, fuser::FileType::RegularFile, self.name.as_str()),
        ];
        if ino == Self::ROOT {
            for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(*ino, i as i64 + 1, *kind, name) {
                    break;
                }
            }
        }
        reply.ok();
    }

    /// Room to spare (the default says 0 blocks free, which the receiver rightly takes for a
    /// full drive and stops the whole batch for).
    fn statfs(&mut self, _: &fuser::Request<'_>, _: u64, reply: fuser::ReplyStatfs) {
        reply.statfs(1 << 20, 1 << 19, 1 << 19, 16, 14, 4096, 255, 4096);
    }

    #[allow(clippy::too_many_arguments)] // the trait's signature
    fn read(&mut self, _: &fuser::Request<'_>, _: u64, _: u64, _: i64, _: u32, _: i32, _: Option<u64>, reply: fuser::ReplyData) {
        reply.error(rustix::io::Errno::IO.raw_os_error());
    }
}

/// A sender offering bad/photo.jpg between two good files to a receiver whose receiving/bad/
/// holds `name` (`size` bytes), unreadable; one sync. The good files must arrive whatever
/// happens to the bad one. Returns the sync's log and what is left pending.
fn sync_past_an_unreadable(name: &str, size: u64) -> (String, Vec<String>) {
    let (_t, a, b) = pipe_pair();
    let bad = b.receiving().join("bad");
    fs::create_dir_all(&bad).unwrap();
    let mount = UnreadableFile::mount(&bad, name, size);
    let files = [("a-before.txt", 20), ("bad/photo.jpg", 21), ("z-after.txt", 22)];
    for (rel, seed) in files {
        write_file(&a.sending(), rel, &content(seed, 50_000));
    }
    let o = a.sync_once();
    let arrived = |rel: &str, seed: u64| fs::read(b.receiving().join(rel)).ok() == Some(content(seed, 50_000));
    assert!(arrived("a-before.txt", 20) && arrived("z-after.txt", 22), "held up by an unreadable {name}: {}", stderr(&o));
    let pending = peer_status(&a).pending;
    drop(mount);
    (stderr(&o), pending)
}

/// The receiver already has a file of the offered size that it cannot read (EIO on every read,
/// the bad sector #10 describes): hashing it to see whether it is the same content fails. That
/// file alone fails with "cannot read"; the files around it are delivered, and the session goes
/// on (before the fix, the error ended the session and the sender re-offered the same batch).
#[test]
fn an_unreadable_file_at_the_receiver_fails_alone() {
    if skip_unless_root() {
        return;
    }
    let (log, pending) = sync_past_an_unreadable("photo.jpg", 50_000);
    assert_eq!(pending, vec!["bad/photo.jpg".to_string()], "the unreadable file is not pending");
    assert!(log.contains("cannot read"), "no 'cannot read' for the file: {log}");
}

/// An earlier attempt's kept prefix (the temporary) that cannot be read back: the receiver does
/// not trust it and starts that transfer over, and the session goes on. Here the temporary cannot
/// be written either, so starting over fails too, and only that file: it stays pending and the
/// files around it are delivered.
#[test]
fn an_unreadable_partial_copy_is_started_over_and_holds_up_nothing() {
    if skip_unless_root() {
        return;
    }
    let (log, pending) = sync_past_an_unreadable(&pi2pi_agent::serve::temp_name("photo.jpg"), 20_000);
    assert!(log.contains("the partial copy cannot be read"), "the kept prefix was not read: {log}");
    assert_eq!(pending, vec!["bad/photo.jpg".to_string()], "the file is not pending");
}
