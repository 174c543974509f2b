//! `pi2pi-agent serve`: the receiving end, run by sshd as the forced command of the sender's key.
//!
//! Its whole authority is "write regular files inside receiving/". Every open goes through
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` from a descriptor of receiving/, so neither a
//! hostile path nor a symlink planted on the drive can lead it outside.
//!
//! A file is written to a hidden temporary name in its final directory, fsynced, checked against
//! the sender's SHA-256, renamed into place and the directory fsynced; only then is `Stored` sent.
//! The temporary name is derived from the path and the content hash, so a transfer cut by a crash
//! resumes from the bytes already there.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};

use anyhow::{bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::proto::{read_msg, write_msg, Code, Msg, VERSION};
use crate::{drive, fsutil, paths};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_SYMLINKS).union(ResolveFlags::NO_MAGICLINKS);

/// Runs one session on the given streams until the sender says `Bye` or closes the stream.
pub fn serve(cfg: &Config, input: impl Read, output: impl Write) -> Result<()> {
    let mut r = BufReader::with_capacity(1 << 20, input);
    let mut w = BufWriter::new(output);
    match read_msg(&mut r)? {
        Some(Msg::Hello { version: VERSION }) => {}
        Some(Msg::Hello { version }) => {
            let m = format!("protocol version {version} is not supported (this receiver speaks {VERSION})");
            send(&mut w, Msg::Failed { code: Code::Version, message: m.clone() })?;
            bail!(m);
        }
        other => bail!("expected Hello, got {other:?}"),
    }
    send(&mut w, Msg::Welcome { version: VERSION, node: cfg.node.clone() })?;
    let mut probed = false;
    loop {
        match read_msg(&mut r)? {
            None | Some(Msg::Bye) => return Ok(()),
            Some(Msg::Offer { path, size, sha256 }) => {
                let reply = match receive(cfg, &mut probed, &mut r, &mut w, &path, size, &sha256) {
                    Ok(reply) => reply,
                    Err(Reply::Send(m)) => m,
                    Err(Reply::Fatal(e)) => return Err(e),
                };
                if let Msg::Refused { message, .. } | Msg::Failed { message, .. } = &reply {
                    tracing::warn!(path, "{message}");
                } else {
                    tracing::info!(path, size, "stored");
                }
                send(&mut w, reply)?;
            }
            Some(m) => bail!("protocol error: unexpected {m:?} outside a transfer"),
        }
    }
}

fn send(w: &mut impl Write, m: Msg) -> io::Result<()> {
    write_msg(w, &m)?;
    w.flush()
}

/// Why a transfer did not end in `Stored`: an answer for the sender, or a broken session.
enum Reply {
    Send(Msg),
    Fatal(anyhow::Error),
}

impl From<io::Error> for Reply {
    fn from(e: io::Error) -> Reply {
        Reply::Fatal(e.into())
    }
}

fn refused(code: Code, message: impl Into<String>) -> Reply {
    Reply::Send(Msg::Refused { code, message: message.into() })
}
fn failed(code: Code, message: impl Into<String>) -> Reply {
    Reply::Send(Msg::Failed { code, message: message.into() })
}
fn io_failed(what: &str, path: &str, e: io::Error) -> Reply {
    let code = if fsutil::is_no_space(&e) { Code::NoSpace } else { Code::Io };
    let what = if code == Code::NoSpace { "receiver's drive is full" } else { what };
    failed(code, format!("{what}: {path}: {e}"))
}

fn receive(
    cfg: &Config,
    probed: &mut bool,
    r: &mut impl Read,
    w: &mut impl Write,
    path: &str,
    size: u64,
    sha256: &[u8; 32],
) -> Result<Msg, Reply> {
    let parts = paths::check_relative(path).map_err(|e| refused(Code::BadPath, format!("{path}: {e}")))?;
    if size > paths::FAT32_MAX_FILE {
        return Err(refused(Code::TooLarge, format!("{path}: {size} bytes is over FAT32's 4 GiB - 1 limit")));
    }
    let root_dir = &cfg.drive.receiving;
    // The mount is checked for every file (the drive can be pulled mid-session); the write probe,
    // a create and unlink on the drive, once per session.
    let probe = (!*probed).then_some(root_dir.as_path());
    drive::check(&cfg.drive, probe).map_err(|e| failed(Code::DriveNotReady, e.to_string()))?;
    *probed = true;

    let root = rustix::fs::open(root_dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| failed(Code::DriveNotReady, format!("{}: {e}", root_dir.display())))?;
    let (dirs, name) = parts.split_at(parts.len() - 1);
    let name = name[0];
    let dir = open_dirs(&root, dirs).map_err(|e| match e.kind() {
        io::ErrorKind::NotADirectory => refused(Code::NotRegular, format!("{path}: a parent is not a directory")),
        _ if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error())
            || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) =>
        {
            refused(Code::BadPath, format!("{path}: a parent is a symlink; refusing to follow it"))
        }
        _ => io_failed("cannot create directory", path, e),
    })?;

    // Already here with the same content (e.g. our `Stored` was lost in a crash): don't write twice.
    match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => {
            return Err(refused(Code::NotRegular, format!("{path}: exists and is not a regular file")));
        }
        Ok(st) if st.st_size as u64 == size => {
            let f = open_beneath(&dir, name, OFlags::RDONLY).map_err(|e| io_failed("cannot read", path, e))?;
            let (h, _) = fsutil::hash_reader(&mut File::from(f), u64::MAX)?;
            if h.finalize().as_slice() == sha256 {
                remove_stale_temps(&dir, name, None);
                return Ok(Msg::Have);
            }
        }
        _ => {}
    }

    let temp = temp_name(name, sha256);
    remove_stale_temps(&dir, name, Some(&temp));
    let fd = open_beneath(&dir, &temp, OFlags::RDWR | OFlags::CREATE).map_err(|e| io_failed("cannot create", path, e))?;
    let mut file = File::from(fd);
    let mut have = file.metadata()?.len();
    if have > size {
        file.set_len(0)?;
        have = 0;
    }
    // Re-hash what a previous attempt left, so the final check covers the whole file.
    let (mut hasher, got) = fsutil::hash_reader(&mut file, have)?;
    if got != have {
        return Err(Reply::Fatal(anyhow::anyhow!("{path}: temporary file shrank while reading it")));
    }
    let free = rustix::fs::fstatvfs(&dir).map(|s| s.f_bavail.saturating_mul(s.f_frsize)).unwrap_or(u64::MAX);
    if free < size - have {
        drop(file);
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
        return Err(failed(Code::NoSpace, format!("receiver's drive is full: {path} needs {} bytes, {free} free", size - have)));
    }
    file.seek(SeekFrom::Start(have))?;
    send(w, Msg::Resume { offset: have })?;

    let outcome = copy_in(r, &mut file, &mut hasher, size - have, path);
    let unlink_temp = || {
        let _ = rustix::fs::unlinkat(&dir, temp.as_str(), AtFlags::empty());
    };
    match outcome {
        Ok(()) => {}
        Err(Reply::Send(m)) => {
            // Full disk or a bad stream: drop the partial data, the sender keeps the original.
            unlink_temp();
            return Err(Reply::Send(m));
        }
        // The link died: keep the temporary file so the next attempt resumes.
        Err(fatal) => return Err(fatal),
    }
    if let Err(e) = file.sync_all() {
        unlink_temp();
        return Err(io_failed("cannot sync", path, e));
    }
    if hasher.finalize().as_slice() != sha256 {
        unlink_temp();
        return Err(failed(Code::Checksum, format!("{path}: SHA-256 mismatch (file changed at the sender during transfer?)")));
    }
    drop(file);
    rustix::fs::renameat(&dir, temp.as_str(), &dir, name).map_err(|e| io_failed("cannot rename into place", path, e.into()))?;
    rustix::fs::fsync(&dir).map_err(|e| io_failed("cannot sync directory", path, e.into()))?;
    Ok(Msg::Stored)
}

/// Reads `Data` frames up to `Done` into the file. Errors with `Reply::Send` leave a stream that
/// is still in sync (the whole transfer was read); `Reply::Fatal` means the session is over.
fn copy_in(r: &mut impl Read, file: &mut File, hasher: &mut Sha256, mut left: u64, path: &str) -> Result<(), Reply> {
    let mut write_err: Option<io::Error> = None;
    loop {
        match read_msg(r).context("reading data").map_err(Reply::Fatal)? {
            Some(Msg::Data(d)) => {
                if d.len() as u64 > left {
                    return Err(Reply::Fatal(anyhow::anyhow!("{path}: sender sent more than the offered size")));
                }
                left -= d.len() as u64;
                // After a write error keep draining the stream so the session stays usable.
                if write_err.is_none() {
                    if let Err(e) = file.write_all(&d) {
                        write_err = Some(e);
                    }
                    hasher.update(&d);
                }
            }
            Some(Msg::Done) => break,
            None => return Err(Reply::Fatal(anyhow::anyhow!("{path}: sender went away mid-transfer"))),
            Some(m) => return Err(Reply::Fatal(anyhow::anyhow!("{path}: unexpected {m:?} during transfer"))),
        }
    }
    if let Some(e) = write_err {
        return Err(io_failed("cannot write", path, e));
    }
    if left != 0 {
        return Err(failed(Code::Protocol, format!("{path}: transfer ended {left} bytes short (file shrank at the sender?)")));
    }
    Ok(())
}

fn open_beneath(dir: &OwnedFd, name: &str, flags: OFlags) -> io::Result<OwnedFd> {
    // openat2 insists on a zero mode unless it may create the file.
    let mode = if flags.contains(OFlags::CREATE) { Mode::from_raw_mode(0o644) } else { Mode::empty() };
    Ok(rustix::fs::openat2(dir, name, flags | OFlags::CLOEXEC | OFlags::NOFOLLOW, mode, RESOLVE)?)
}

/// Opens (creating as needed) each directory below `root`, never following a symlink.
fn open_dirs(root: &OwnedFd, dirs: &[&str]) -> io::Result<OwnedFd> {
    let mut cur = rustix::io::dup(root)?;
    for d in dirs {
        match rustix::fs::mkdirat(&cur, *d, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        cur = rustix::fs::openat2(&cur, *d, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty(), RESOLVE)?;
    }
    Ok(cur)
}

/// `.pi2pi-<hash of name>-<content hash>.part`: hidden, unique per name and content, short enough
/// for FAT32 whatever the name's length.
pub fn temp_name(name: &str, sha256: &[u8; 32]) -> String {
    format!("{}{}-{}{}", paths::TEMP_PREFIX, name_tag(name), hex::encode(&sha256[..12]), paths::TEMP_SUFFIX)
}

fn name_tag(name: &str) -> String {
    hex::encode(&Sha256::digest(name.as_bytes())[..6])
}

/// Removes temporaries left for `name` by earlier versions of the file (other content hashes).
fn remove_stale_temps(dir: &OwnedFd, name: &str, keep: Option<&str>) {
    let prefix = format!("{}{}-", paths::TEMP_PREFIX, name_tag(name));
    let Ok(fd) = rustix::io::dup(dir.as_fd()) else { return };
    let Ok(mut entries) = rustix::fs::Dir::read_from(&fd) else { return };
    let mut stale = Vec::new();
    while let Some(Ok(e)) = entries.next() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(paths::TEMP_SUFFIX) && Some(n.as_str()) != keep {
            stale.push(n);
        }
    }
    for n in stale {
        let _ = rustix::fs::unlinkat(dir, n.as_str(), AtFlags::empty());
    }
}
