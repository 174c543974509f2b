//! The sender↔receiver wire protocol: length-prefixed frames on a byte stream (ssh's stdin/stdout).
//!
//! ```text
//! frame   = len:u32be  tag:u8  body          (len counts tag + body, at most MAX_FRAME)
//! string  = len:u16be  utf8 bytes
//! hash    = 32 bytes (SHA-256)               opt-hash = 0 | 1 hash
//! ```
//! The sender numbers its offers (`id`) and keeps a window of them in flight, so neither side waits
//! for a round trip per file. For each `Offer` the receiver answers once (`Accept` | `Refused` |
//! `Failed`); the sender then sends `Skip`, or `Start` `Data`* (`Done` | `Abort`), in offer order,
//! and may drop offers it no longer wants by going on to a later id. Every `Done` and `Skip` gets
//! one final answer (`Stored` | `Have` | `Refused` | `Failed`); the receiver sends `Stored` only
//! after the file is verified, renamed into place and all of it is on disk, so an ack means
//! "durable". It may batch that work (group commit), so final answers can lag the data.

use std::io::{self, Read, Write};

pub const MAGIC: &[u8; 6] = b"PI2PI\0";
pub const VERSION: u16 = 2;
/// Largest frame accepted: one data chunk plus headroom. Bounds memory on hostile input.
pub const MAX_FRAME: usize = 1 << 20;
pub const CHUNK: usize = 256 * 1024;
/// Offers a sender keeps ahead of the file it is streaming: enough to hide the link's round trip
/// behind the small files, few enough that a peer-wide failure wastes little. A receiver holds a
/// sender to twice this.
pub const WINDOW: usize = 64;

pub type Hash = [u8; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello {
        version: u16,
    },
    Welcome {
        version: u16,
        node: String,
    },
    /// Sender: I have `size` bytes for `path`.
    Offer {
        id: u32,
        path: String,
        size: u64,
    },
    /// Receiver: go ahead. `have` bytes of an earlier attempt are kept, hashing to `have_sha256`;
    /// `existing` is the hash of a file of the offered size already under the final name.
    Accept {
        id: u32,
        have: u64,
        have_sha256: Hash,
        existing: Option<Hash>,
    },
    /// Sender: the file under the final name already is this content.
    Skip {
        id: u32,
    },
    /// Sender: data follows from `from`, which is 0 or the receiver's `have`.
    Start {
        id: u32,
        from: u64,
    },
    Data(Vec<u8>),
    /// Sender: end of data; the SHA-256 of the whole file as it was read.
    Done {
        id: u32,
        sha256: Hash,
    },
    /// Sender: the file changed while it was read; forget this transfer (no answer follows).
    Abort {
        id: u32,
    },
    /// Receiver: verified, in place and on disk.
    Stored {
        id: u32,
    },
    /// Receiver: the answer to `Skip`, once that file is known to be on disk.
    Have {
        id: u32,
    },
    /// Permanent for this content: the path or file is not acceptable. Do not retry until it changes.
    Refused {
        id: u32,
        code: Code,
        message: String,
    },
    /// Transient: disk full, drive missing, checksum mismatch. Retry later. `id` 0 is the session.
    Failed {
        id: u32,
        code: Code,
        message: String,
    },
    Bye,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    BadPath = 1,
    NotRegular = 2,
    NoSpace = 3,
    DriveNotReady = 4,
    Checksum = 5,
    Io = 6,
    Version = 7,
    Protocol = 8,
    TooLarge = 9,
}

impl Code {
    fn from_u8(b: u8) -> Option<Code> {
        use Code::*;
        Some(match b {
            1 => BadPath,
            2 => NotRegular,
            3 => NoSpace,
            4 => DriveNotReady,
            5 => Checksum,
            6 => Io,
            7 => Version,
            8 => Protocol,
            9 => TooLarge,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(usize),
    #[error("empty frame")]
    Empty,
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    #[error("truncated frame body")]
    Truncated,
    #[error("trailing bytes after frame body")]
    Trailing,
    #[error("string is not UTF-8")]
    Utf8,
    #[error("unknown error code {0}")]
    UnknownCode(u8),
    #[error("bad optional-field marker {0}")]
    BadOption(u8),
    #[error("bad magic: the peer does not speak the pi2pi protocol")]
    Magic,
}

const T_HELLO: u8 = 1;
const T_WELCOME: u8 = 2;
const T_OFFER: u8 = 3;
const T_ACCEPT: u8 = 4;
const T_SKIP: u8 = 5;
const T_START: u8 = 6;
const T_DATA: u8 = 7;
const T_DONE: u8 = 8;
const T_ABORT: u8 = 9;
const T_STORED: u8 = 10;
const T_HAVE: u8 = 11;
const T_REFUSED: u8 = 12;
const T_FAILED: u8 = 13;
const T_BYE: u8 = 14;

impl Msg {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; 4];
        let id = |b: &mut Vec<u8>, tag: u8, id: u32| {
            b.push(tag);
            b.extend_from_slice(&id.to_be_bytes());
        };
        match self {
            Msg::Hello { version } => {
                b.push(T_HELLO);
                b.extend_from_slice(MAGIC);
                b.extend_from_slice(&version.to_be_bytes());
            }
            Msg::Welcome { version, node } => {
                b.push(T_WELCOME);
                b.extend_from_slice(MAGIC);
                b.extend_from_slice(&version.to_be_bytes());
                put_str(&mut b, node);
            }
            Msg::Offer { id: i, path, size } => {
                id(&mut b, T_OFFER, *i);
                put_str(&mut b, path);
                b.extend_from_slice(&size.to_be_bytes());
            }
            Msg::Accept { id: i, have, have_sha256, existing } => {
                id(&mut b, T_ACCEPT, *i);
                b.extend_from_slice(&have.to_be_bytes());
                b.extend_from_slice(have_sha256);
                match existing {
                    None => b.push(0),
                    Some(h) => {
                        b.push(1);
                        b.extend_from_slice(h);
                    }
                }
            }
            Msg::Skip { id: i } => id(&mut b, T_SKIP, *i),
            Msg::Start { id: i, from } => {
                id(&mut b, T_START, *i);
                b.extend_from_slice(&from.to_be_bytes());
            }
            Msg::Data(d) => {
                b.push(T_DATA);
                b.extend_from_slice(d);
            }
            Msg::Done { id: i, sha256 } => {
                id(&mut b, T_DONE, *i);
                b.extend_from_slice(sha256);
            }
            Msg::Abort { id: i } => id(&mut b, T_ABORT, *i),
            Msg::Stored { id: i } => id(&mut b, T_STORED, *i),
            Msg::Have { id: i } => id(&mut b, T_HAVE, *i),
            Msg::Refused { id: i, code, message } | Msg::Failed { id: i, code, message } => {
                id(&mut b, if matches!(self, Msg::Refused { .. }) { T_REFUSED } else { T_FAILED }, *i);
                b.push(*code as u8);
                put_str(&mut b, message);
            }
            Msg::Bye => b.push(T_BYE),
        }
        let len = (b.len() - 4) as u32;
        b[..4].copy_from_slice(&len.to_be_bytes());
        b
    }

    /// Decodes one frame body (tag + fields, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Msg, DecodeError> {
        let (&tag, rest) = body.split_first().ok_or(DecodeError::Empty)?;
        let mut r = Reader(rest);
        let msg = match tag {
            T_HELLO => {
                r.magic()?;
                Msg::Hello { version: r.u16()? }
            }
            T_WELCOME => {
                r.magic()?;
                Msg::Welcome { version: r.u16()?, node: r.string()? }
            }
            T_OFFER => Msg::Offer { id: r.u32()?, path: r.string()?, size: r.u64()? },
            T_ACCEPT => Msg::Accept {
                id: r.u32()?,
                have: r.u64()?,
                have_sha256: r.array()?,
                existing: match r.u8()? {
                    0 => None,
                    1 => Some(r.array()?),
                    b => return Err(DecodeError::BadOption(b)),
                },
            },
            T_SKIP => Msg::Skip { id: r.u32()? },
            T_START => Msg::Start { id: r.u32()?, from: r.u64()? },
            T_DATA => Msg::Data(std::mem::take(&mut r.0).to_vec()),
            T_DONE => Msg::Done { id: r.u32()?, sha256: r.array()? },
            T_ABORT => Msg::Abort { id: r.u32()? },
            T_STORED => Msg::Stored { id: r.u32()? },
            T_HAVE => Msg::Have { id: r.u32()? },
            T_REFUSED | T_FAILED => {
                let id = r.u32()?;
                let c = r.u8()?;
                let code = Code::from_u8(c).ok_or(DecodeError::UnknownCode(c))?;
                let message = r.string()?;
                if tag == T_REFUSED {
                    Msg::Refused { id, code, message }
                } else {
                    Msg::Failed { id, code, message }
                }
            }
            T_BYE => Msg::Bye,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(msg)
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    // Paths and messages are short; cut at a char boundary rather than fail to encode an error.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.extend_from_slice(&(end as u16).to_be_bytes());
    b.extend_from_slice(&s.as_bytes()[..end]);
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        Ok(self.take(N)?.try_into().expect("length checked"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.u16()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
    fn magic(&mut self) -> Result<(), DecodeError> {
        if self.take(MAGIC.len()).map_err(|_| DecodeError::Magic)? != MAGIC {
            return Err(DecodeError::Magic);
        }
        Ok(())
    }
}

/// Reads one frame. `Ok(None)` on a clean end of stream between frames.
pub fn read_msg(r: &mut impl Read) -> io::Result<Option<Msg>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut head[1..4])?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    let invalid = |e: DecodeError| io::Error::new(io::ErrorKind::InvalidData, e);
    if len > MAX_FRAME {
        return Err(invalid(DecodeError::TooLong(len)));
    }
    if len == 0 {
        return Err(invalid(DecodeError::Empty));
    }
    r.read_exact(&mut head[4..])?;
    // The hot path: data is read straight into the buffer it is handed on in (one copy, no zeroing).
    if head[4] == T_DATA {
        let mut data = Vec::with_capacity(len - 1);
        r.take(len as u64 - 1).read_to_end(&mut data)?;
        if data.len() != len - 1 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(Some(Msg::Data(data)));
    }
    let mut body = vec![0u8; len];
    body[0] = head[4];
    r.read_exact(&mut body[1..])?;
    Msg::decode(&body).map(Some).map_err(invalid)
}

pub fn write_msg(w: &mut impl Write, m: &Msg) -> io::Result<()> {
    w.write_all(&m.encode())
}

/// Writes a `Data` frame straight from a borrowed buffer (the hot path: no copy into a `Msg`;
/// a `BufWriter` smaller than the chunk passes the data through without copying it either).
pub fn write_data(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    assert!(data.len() < MAX_FRAME, "data chunk larger than a frame");
    let mut head = [T_DATA; 5];
    head[..4].copy_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    w.write_all(&head)?;
    w.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello { version: VERSION },
            Msg::Welcome { version: 1, node: "rpb".into() },
            Msg::Offer { id: 1, path: "a/b c/ü.jpg".into(), size: u64::MAX },
            Msg::Accept { id: 1, have: 12345, have_sha256: [3; 32], existing: None },
            Msg::Accept { id: u32::MAX, have: 0, have_sha256: [0; 32], existing: Some([9; 32]) },
            Msg::Skip { id: 2 },
            Msg::Start { id: 3, from: 7 },
            Msg::Data(vec![1, 2, 3]),
            Msg::Data(vec![]),
            Msg::Done { id: 3, sha256: [7; 32] },
            Msg::Abort { id: 4 },
            Msg::Stored { id: 3 },
            Msg::Have { id: 2 },
            Msg::Refused { id: 5, code: Code::BadPath, message: "no".into() },
            Msg::Failed { id: 0, code: Code::NoSpace, message: "full".into() },
            Msg::Bye,
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream() {
        let mut buf = Vec::new();
        for m in all() {
            write_msg(&mut buf, &m).unwrap();
        }
        write_data(&mut buf, b"raw").unwrap();
        let mut r = &buf[..];
        for m in all() {
            assert_eq!(read_msg(&mut r).unwrap(), Some(m));
        }
        assert_eq!(read_msg(&mut r).unwrap(), Some(Msg::Data(b"raw".to_vec())));
        assert_eq!(read_msg(&mut r).unwrap(), None);
    }

    /// The stable-toolchain cousin of `fuzz/fuzz_targets/frame_decoder.rs`: random and mutated
    /// frames never panic, and whatever decodes re-encodes to the same bytes.
    #[test]
    fn random_and_mutated_frames_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x9192);
        let seeds: Vec<Vec<u8>> = all().iter().map(|m| m.encode()[4..].to_vec()).collect();
        for i in 0..200_000 {
            let mut body =
                if i % 2 == 0 { seeds[rng.usize(0..seeds.len())].clone() } else { (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect() };
            for _ in 0..rng.usize(0..4) {
                if body.is_empty() {
                    break;
                }
                let at = rng.usize(0..body.len());
                match rng.usize(0..3) {
                    0 => body[at] = rng.u8(..),
                    1 => body.truncate(at),
                    _ => body.insert(at, rng.u8(..)),
                }
            }
            if let Ok(m) = Msg::decode(&body) {
                assert_eq!(m.encode()[4..], body[..], "{m:?}");
            }
            let mut framed = (body.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&body);
            let mut r = &framed[..];
            let _ = read_msg(&mut r);
        }
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(matches!(Msg::decode(&[]), Err(DecodeError::Empty)));
        assert!(matches!(Msg::decode(&[99]), Err(DecodeError::UnknownTag(99))));
        assert!(matches!(Msg::decode(&[T_HELLO, b'X']), Err(DecodeError::Magic)));
        assert!(matches!(Msg::decode(&[T_START, 0, 0]), Err(DecodeError::Truncated)));
        assert!(matches!(Msg::decode(&[T_BYE, 0]), Err(DecodeError::Trailing)));
        assert!(matches!(Msg::decode(&[T_OFFER, 0, 0, 0, 1, 0, 2, 0xff, 0xfe]), Err(DecodeError::Utf8)));
        assert!(matches!(Msg::decode(&[T_FAILED, 0, 0, 0, 0, 200, 0, 0]), Err(DecodeError::UnknownCode(200))));
        let mut accept = vec![T_ACCEPT];
        accept.extend_from_slice(&[0; 4 + 8 + 32]);
        accept.push(2);
        assert!(matches!(Msg::decode(&accept), Err(DecodeError::BadOption(2))));
        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        let e = read_msg(&mut &huge[..]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        // A stream cut inside a frame is an error, not a clean end.
        let cut = &Msg::Offer { id: 1, path: "x".into(), size: 1 }.encode()[..10];
        assert!(read_msg(&mut &cut[..]).is_err());
    }
}
