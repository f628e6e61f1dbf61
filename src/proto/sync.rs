//! The wire of `/git-p2p/sync/1` (catching up on what was said while away): what a sync set
//! holds (the signed envelopes of a repository's announcements, room and commit threads, each
//! named by a 32-byte id and ordered by its signed time), and the frames two nodes exchange.
//!
//! A session (the initiator opens the stream): `Hello` lists (repository, kind, window, count,
//! fingerprint of the whole set); the responder answers `Differ` with the entries whose sets are
//! not the same (two nodes in sync stop here, a few hundred bytes whatever the history size).
//! For each of those, negentropy rounds (`Neg` both ways) tell the initiator what each side
//! lacks; it sends what the responder lacks (`Items`) and asks for the rest (`Want`), answered
//! by `Items` frames and an `End`. Frames are binary, length-prefixed and bounded.

use sha2::Digest;

use super::envelope::Envelope;
use super::repo::RepoId;

/// The stream protocol.
pub const PROTOCOL: &str = "/git-p2p/sync/1";
/// Largest frame (an `Items` frame holds envelopes of at most 16 KiB each).
pub const MAX_FRAME: usize = 1024 * 1024;
/// Entries (repository × kind) one `Hello` may list.
pub const MAX_ENTRIES: usize = 3 * 256;
/// Ids one `Want` asks for at most.
pub const MAX_WANT: usize = 1024;

/// What a sync set holds: each kind has its own bound, the same as the store's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The repository's announcements (its feed).
    Announcements,
    /// Its room.
    Room,
    /// Every commit thread of it, together.
    Threads,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Announcements, Kind::Room, Kind::Threads];

    pub fn byte(self) -> u8 {
        match self {
            Kind::Announcements => 0,
            Kind::Room => 1,
            Kind::Threads => 2,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.byte() == b)
    }

    /// The kind of a signed envelope: an announcement, a room message, a thread's message.
    /// None for anything else.
    pub fn of(envelope: &Envelope) -> Option<Self> {
        if envelope.kind == super::announce::KIND {
            return Some(Kind::Announcements);
        }
        let message = super::chat::ChatMessage::from_envelope(envelope).ok()?;
        Some(if message.thread.is_some() { Kind::Threads } else { Kind::Room })
    }
}

/// An item's id in a sync set: SHA-256 of its signature (whose first 16 bytes, in hex, are
/// [`Envelope::id`]).
pub fn item_id(envelope: &Envelope) -> [u8; 32] {
    sha2::Sha256::digest(envelope.sig.as_bytes()).into()
}

/// The sum (mod 2^256, little-endian, as negentropy's accumulator) of a set's ids: kept with
/// the set, so that a set's fingerprint costs no read of its items.
pub fn add_id(sum: &mut [u8; 32], id: &[u8; 32]) {
    let mut carry = 0u16;
    for i in 0..32 {
        let v = sum[i] as u16 + id[i] as u16 + carry;
        sum[i] = v as u8;
        carry = v >> 8;
    }
}

/// Takes an id back out of a sum.
pub fn sub_id(sum: &mut [u8; 32], id: &[u8; 32]) {
    let mut borrow = 0i16;
    for i in 0..32 {
        let v = sum[i] as i16 - id[i] as i16 - borrow;
        sum[i] = v.rem_euclid(256) as u8;
        borrow = (v < 0) as i16;
    }
}

/// A set's fingerprint in `Hello`: its size and the sum of its ids, hashed.
pub fn fingerprint(count: u64, sum: &[u8; 32]) -> [u8; 16] {
    let mut h = sha2::Sha256::new();
    h.update(sum);
    h.update(count.to_be_bytes());
    h.finalize()[..16].try_into().expect("16 of 32 bytes")
}

/// One envelope as a sync set keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncItem {
    pub repo: RepoId,
    pub kind: Kind,
    /// The signed time (Unix ms).
    pub ts: u64,
    pub id: [u8; 32],
    /// The envelope as it was signed and sent.
    pub envelope: Vec<u8>,
}

impl SyncItem {
    /// The item of a signed envelope (of the kind it is).
    pub fn of(envelope: &Envelope) -> Option<Self> {
        Some(Self {
            repo: envelope.repo.clone(),
            kind: Kind::of(envelope)?,
            ts: envelope.ts,
            id: item_id(envelope),
            envelope: envelope.encode(),
        })
    }
}

/// One set as `Hello` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub repo: RepoId,
    pub kind: Kind,
    /// Items signed before this (Unix ms) are outside the window.
    pub since: u64,
    pub count: u32,
    pub fingerprint: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Vec<Entry>),
    /// Indices (into `Hello`) of the sets that differ.
    Differ(Vec<u16>),
    /// A negentropy message about set `index`.
    Neg {
        index: u16,
        msg: Vec<u8>,
    },
    Want {
        index: u16,
        ids: Vec<[u8; 32]>,
    },
    /// Encoded envelopes of set `index`.
    Items {
        index: u16,
        envelopes: Vec<Vec<u8>>,
    },
    /// The answer to a `Want` is complete.
    End {
        index: u16,
    },
    /// The peer will not go on, and why.
    Refused(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes (at most {MAX_FRAME})")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

impl Frame {
    /// The frame with its 4-byte length in front.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Frame::Hello(entries) => {
                body.push(1);
                body.extend_from_slice(&(entries.len() as u16).to_be_bytes());
                for e in entries {
                    let repo = e.repo.as_str().as_bytes();
                    body.push(repo.len() as u8);
                    body.extend_from_slice(repo);
                    body.push(e.kind.byte());
                    body.extend_from_slice(&e.since.to_be_bytes());
                    body.extend_from_slice(&e.count.to_be_bytes());
                    body.extend_from_slice(&e.fingerprint);
                }
            }
            Frame::Differ(indices) => {
                body.push(2);
                body.extend_from_slice(&(indices.len() as u16).to_be_bytes());
                indices.iter().for_each(|i| body.extend_from_slice(&i.to_be_bytes()));
            }
            Frame::Neg { index, msg } => {
                body.push(3);
                body.extend_from_slice(&index.to_be_bytes());
                body.extend_from_slice(msg);
            }
            Frame::Want { index, ids } => {
                body.push(4);
                body.extend_from_slice(&index.to_be_bytes());
                ids.iter().for_each(|id| body.extend_from_slice(id));
            }
            Frame::Items { index, envelopes } => {
                body.push(5);
                body.extend_from_slice(&index.to_be_bytes());
                envelopes.iter().for_each(|e| put_bytes(&mut body, e));
            }
            Frame::End { index } => {
                body.push(6);
                body.extend_from_slice(&index.to_be_bytes());
            }
            Frame::Refused(why) => {
                body.push(7);
                body.extend_from_slice(why.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Parses one frame's body (without its length).
    pub fn decode(body: &[u8]) -> Result<Self, FrameError> {
        if body.len() > MAX_FRAME {
            return Err(FrameError::TooLarge(body.len()));
        }
        let mut r = Reader(body);
        let frame = match r.u8()? {
            1 => {
                let n = r.u16()? as usize;
                if n > MAX_ENTRIES {
                    return Err(FrameError::Malformed("too many entries"));
                }
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.u8()? as usize;
                    let repo = std::str::from_utf8(r.take(len)?).map_err(|_| FrameError::Malformed("repository"))?;
                    let repo = RepoId::try_from(repo).map_err(|_| FrameError::Malformed("repository"))?;
                    let kind = Kind::from_byte(r.u8()?).ok_or(FrameError::Malformed("kind"))?;
                    let since = r.u64()?;
                    let count = r.u32()?;
                    let fingerprint = r.take(16)?.try_into().map_err(|_| FrameError::Malformed("fingerprint"))?;
                    entries.push(Entry { repo, kind, since, count, fingerprint });
                }
                Frame::Hello(entries)
            }
            2 => {
                let n = r.u16()? as usize;
                Frame::Differ((0..n).map(|_| r.u16()).collect::<Result<_, _>>()?)
            }
            3 => Frame::Neg { index: r.u16()?, msg: r.rest().to_vec() },
            4 => {
                let index = r.u16()?;
                let rest = r.rest();
                if rest.len() % 32 != 0 || rest.len() / 32 > MAX_WANT {
                    return Err(FrameError::Malformed("ids"));
                }
                let ids = rest.chunks_exact(32).map(|c| c.try_into().expect("chunks of 32")).collect();
                Frame::Want { index, ids }
            }
            5 => {
                let index = r.u16()?;
                let mut envelopes = Vec::new();
                while !r.0.is_empty() {
                    let len = r.u32()? as usize;
                    envelopes.push(r.take(len)?.to_vec());
                }
                Frame::Items { index, envelopes }
            }
            6 => Frame::End { index: r.u16()? },
            7 => Frame::Refused(String::from_utf8_lossy(r.rest()).chars().take(200).collect()),
            _ => return Err(FrameError::Malformed("unknown frame")),
        };
        if !r.0.is_empty() {
            return Err(FrameError::Malformed("trailing bytes"));
        }
        Ok(frame)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.0.len() < n {
            return Err(FrameError::Malformed("ends early"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_ids_carry_and_come_back() {
        let mut sum = [0u8; 32];
        let (a, b) = ([0xff; 32], [1; 32]);
        add_id(&mut sum, &a);
        add_id(&mut sum, &b);
        let mut expected = [1u8; 32];
        expected[0] = 0;
        // 0xff..ff + 0x01..01 = 0x01..0100 (mod 2^256), little-endian.
        assert_eq!(sum, expected);
        sub_id(&mut sum, &a);
        assert_eq!(sum, b);
        sub_id(&mut sum, &b);
        assert_eq!(sum, [0; 32]);
        assert_ne!(fingerprint(1, &sum), fingerprint(0, &sum));
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let repo = RepoId::try_from("ab".repeat(20)).unwrap();
        let frames = [
            Frame::Hello(vec![Entry { repo, kind: Kind::Threads, since: 7, count: 3, fingerprint: [9; 16] }]),
            Frame::Differ(vec![0, 2]),
            Frame::Neg { index: 1, msg: vec![0x61, 1, 2] },
            Frame::Want { index: 0, ids: vec![[1; 32], [2; 32]] },
            Frame::Items { index: 0, envelopes: vec![b"{}".to_vec(), vec![]] },
            Frame::End { index: 4 },
            Frame::Refused("busy".into()),
        ];
        for frame in frames {
            let bytes = frame.encode();
            let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(len, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[4..]), Ok(frame));
        }
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::decode(&[9]).is_err());
        assert!(Frame::decode(&[4, 0, 0, 1]).is_err(), "an id of one byte");
        assert!(Frame::decode(&[5, 0, 0, 0, 0, 0, 9, 1]).is_err(), "an envelope longer than the frame");
        assert!(Frame::decode(&[6, 0, 0, 0]).is_err(), "trailing bytes");
    }
}
