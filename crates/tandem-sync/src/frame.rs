//! The wire format: length-prefixed frames.
//!
//! ```text
//! frame   = len:u32-le type:u8 payload      (len counts type + payload; at most MAX_FRAME)
//! string  = len:u32-le utf-8 bytes
//! bytes   = len:u32-le bytes
//! hash    = 32 bytes
//! ```
//!
//! Decoding is incremental ("need more bytes" is `Ok(None)`, not an error) and never panics on
//! hostile input: every length is checked against what is left and against [`MAX_FRAME`].

use tandem_store::{BlobHash, ChangeHash};

/// Protocol version spoken by this build. A peer with another version is refused with a
/// [`Frame::Close`] naming both.
pub const PROTOCOL_VERSION: u16 = 4;

/// Largest frame accepted (type + payload), in bytes. A message body is sent in one frame, so
/// this also bounds the largest body a node can receive.
pub const MAX_FRAME: usize = 96 << 20;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// First frame on a connection, both ways.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// The sender's node slot (its UID residue class).
        slot: u8,
    },
    /// Every document the sender has, with its heads. Sent after Hello, after local writes
    /// and periodically; the receiver answers with the changes the sender lacks.
    Manifest {
        /// (document key, heads)
        docs: Vec<(String, Vec<ChangeHash>)>,
    },
    /// Changes to documents, applied by the receiver as one batch.
    Changes {
        /// (document key, automerge change bytes)
        docs: Vec<(String, Vec<Vec<u8>>)>,
    },
    /// Message bodies the sender needs.
    WantBlobs {
        /// Hashes of the wanted bodies.
        hashes: Vec<BlobHash>,
    },
    /// One message body; the receiver checks it against its hash before storing it.
    Blob {
        /// SHA-256 of `data`.
        hash: BlobHash,
        /// The raw message.
        data: Vec<u8>,
    },
    /// Answer to WantBlobs for bodies the sender does not have: ask another peer.
    Missing {
        /// Hashes of the bodies the sender lacks.
        hashes: Vec<BlobHash>,
    },
    /// Answer to WantBlobs for bodies the sender has but will not send in this answer, which
    /// already carries as many body bytes as it allows: ask again later. Added in protocol
    /// version 3.
    Later {
        /// Hashes of the bodies to ask for again.
        hashes: Vec<BlobHash>,
    },
    /// Asks for the part of a body that starts at `offset` (resuming a transfer in parts).
    /// Added in protocol version 4.
    WantPart {
        /// The body.
        hash: BlobHash,
        /// Where the part starts.
        offset: u64,
    },
    /// A part of a body too large for one Blob frame: `data` is bytes `offset..` of the
    /// `total`-byte body. The receiver checks the whole against `hash` once it has every part.
    /// Added in protocol version 4.
    BlobPart {
        /// SHA-256 of the whole body.
        hash: BlobHash,
        /// The body's size.
        total: u64,
        /// Where `data` starts in the body.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Changes the sender received from the receiver and has now applied durably, with every
    /// message body they refer to: the receiver may count them as held by two nodes (LMTP
    /// `durability = "peer"`). Added in protocol version 2.
    Applied {
        /// Hashes of the applied changes.
        hashes: Vec<ChangeHash>,
    },
    /// The sender is closing the connection, and why.
    Close {
        /// A [`CloseCode`] value.
        code: u16,
        /// Human-readable reason, for the peer's log.
        reason: String,
    },
}

/// Why a connection was closed (also used as the QUIC application close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal shutdown.
    Done = 0,
    /// The peer speaks another protocol version.
    VersionMismatch = 1,
    /// A malformed, oversized or out-of-order frame.
    Protocol = 2,
    /// A body that does not match its hash, or changes that do not apply.
    BadData = 3,
    /// The receiving store failed (disk full, ...): try again later.
    Temporary = 4,
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length is larger than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME}")]
    TooLarge(usize),
    /// The frame type is unknown.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The payload does not parse.
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: usize) {
        self.0.extend_from_slice(&(v as u32).to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len());
        self.0.extend_from_slice(v);
    }
    fn hash(&mut self, v: &[u8; 32]) {
        self.0.extend_from_slice(v);
    }
}

struct R<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> R<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        R { buf, what }
    }
    fn err(&self) -> FrameError {
        FrameError::Malformed(self.what)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<usize, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A count of items of at least `min` bytes each, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize, FrameError> {
        let n = self.u32()?;
        if n.saturating_mul(min) > self.buf.len() {
            return Err(self.err());
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u32()?;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, FrameError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err())
    }
    fn hash(&mut self) -> Result<[u8; 32], FrameError> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32)?);
        Ok(h)
    }
    fn end(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Hello { .. } => 1,
            Frame::Manifest { .. } => 2,
            Frame::Changes { .. } => 3,
            Frame::WantBlobs { .. } => 4,
            Frame::Blob { .. } => 5,
            Frame::Close { .. } => 6,
            Frame::Missing { .. } => 7,
            Frame::Applied { .. } => 8,
            Frame::Later { .. } => 9,
            Frame::WantPart { .. } => 10,
            Frame::BlobPart { .. } => 11,
        }
    }

    /// Encodes the frame, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = W(vec![0, 0, 0, 0]);
        w.u8(self.kind());
        match self {
            Frame::Hello { version, slot } => {
                w.u16(*version);
                w.u8(*slot);
            }
            Frame::Manifest { docs } => {
                w.u32(docs.len());
                for (k, heads) in docs {
                    w.bytes(k.as_bytes());
                    w.u32(heads.len());
                    for h in heads {
                        w.hash(&h.0);
                    }
                }
            }
            Frame::Changes { docs } => {
                w.u32(docs.len());
                for (k, changes) in docs {
                    w.bytes(k.as_bytes());
                    w.u32(changes.len());
                    for c in changes {
                        w.bytes(c);
                    }
                }
            }
            Frame::WantBlobs { hashes } | Frame::Missing { hashes } | Frame::Later { hashes } => {
                w.u32(hashes.len());
                for h in hashes {
                    w.hash(&h.0);
                }
            }
            Frame::Blob { hash, data } => {
                w.hash(&hash.0);
                w.bytes(data);
            }
            Frame::WantPart { hash, offset } => {
                w.hash(&hash.0);
                w.u64(*offset);
            }
            Frame::BlobPart {
                hash,
                total,
                offset,
                data,
            } => {
                w.hash(&hash.0);
                w.u64(*total);
                w.u64(*offset);
                w.bytes(data);
            }
            Frame::Applied { hashes } => {
                w.u32(hashes.len());
                for h in hashes {
                    w.hash(&h.0);
                }
            }
            Frame::Close { code, reason } => {
                w.u16(*code);
                w.bytes(reason.as_bytes());
            }
        }
        let len = w.0.len() - 4;
        w.0[..4].copy_from_slice(&(len as u32).to_le_bytes());
        w.0
    }

    /// Decodes one frame from the start of `buf`: `Ok(None)` if more bytes are needed, else the
    /// frame and how many bytes it used.
    pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if len == 0 {
            return Err(FrameError::Malformed("empty"));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        let body = &buf[4..4 + len];
        let frame = Self::decode_body(body[0], &body[1..])?;
        Ok(Some((frame, 4 + len)))
    }

    fn decode_body(kind: u8, p: &[u8]) -> Result<Frame, FrameError> {
        let frame = match kind {
            1 => {
                let mut r = R::new(p, "Hello");
                let f = Frame::Hello {
                    version: r.u16()?,
                    slot: r.u8()?,
                };
                r.end()?;
                f
            }
            2 => {
                let mut r = R::new(p, "Manifest");
                let n = r.count(8)?;
                let mut docs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.string()?;
                    let nh = r.count(32)?;
                    let mut heads = Vec::with_capacity(nh);
                    for _ in 0..nh {
                        heads.push(ChangeHash(r.hash()?));
                    }
                    docs.push((k, heads));
                }
                r.end()?;
                Frame::Manifest { docs }
            }
            3 => {
                let mut r = R::new(p, "Changes");
                let n = r.count(8)?;
                let mut docs = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.string()?;
                    let nc = r.count(4)?;
                    let mut changes = Vec::with_capacity(nc);
                    for _ in 0..nc {
                        changes.push(r.bytes()?.to_vec());
                    }
                    docs.push((k, changes));
                }
                r.end()?;
                Frame::Changes { docs }
            }
            4 => Frame::WantBlobs {
                hashes: blob_list(p, "WantBlobs")?,
            },
            5 => {
                let mut r = R::new(p, "Blob");
                let hash = BlobHash(r.hash()?);
                let data = r.bytes()?.to_vec();
                r.end()?;
                Frame::Blob { hash, data }
            }
            6 => {
                let mut r = R::new(p, "Close");
                let code = r.u16()?;
                let reason = String::from_utf8_lossy(r.bytes()?).into_owned();
                r.end()?;
                Frame::Close { code, reason }
            }
            7 => Frame::Missing {
                hashes: blob_list(p, "Missing")?,
            },
            8 => Frame::Applied {
                hashes: blob_list(p, "Applied")?
                    .into_iter()
                    .map(|b| ChangeHash(b.0))
                    .collect(),
            },
            9 => Frame::Later {
                hashes: blob_list(p, "Later")?,
            },
            10 => {
                let mut r = R::new(p, "WantPart");
                let hash = BlobHash(r.hash()?);
                let offset = r.u64()?;
                r.end()?;
                Frame::WantPart { hash, offset }
            }
            11 => {
                let mut r = R::new(p, "BlobPart");
                let hash = BlobHash(r.hash()?);
                let total = r.u64()?;
                let offset = r.u64()?;
                let data = r.bytes()?.to_vec();
                r.end()?;
                Frame::BlobPart {
                    hash,
                    total,
                    offset,
                    data,
                }
            }
            other => return Err(FrameError::UnknownType(other)),
        };
        Ok(frame)
    }
}

/// A payload that is a count and that many 32-byte hashes (WantBlobs, Missing, Applied).
fn blob_list(p: &[u8], what: &'static str) -> Result<Vec<BlobHash>, FrameError> {
    let mut r = R::new(p, what);
    let n = r.count(32)?;
    let mut hashes = Vec::with_capacity(n);
    for _ in 0..n {
        hashes.push(BlobHash(r.hash()?));
    }
    r.end()?;
    Ok(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Hello {
                version: 1,
                slot: 3,
            },
            Frame::Manifest {
                docs: vec![
                    ("a/registry".into(), vec![ChangeHash([7; 32])]),
                    ("b".into(), vec![]),
                ],
            },
            Frame::Changes {
                docs: vec![("a/inbox/0/0".into(), vec![vec![1, 2, 3], vec![]])],
            },
            Frame::WantBlobs {
                hashes: vec![BlobHash([9; 32])],
            },
            Frame::Blob {
                hash: BlobHash([1; 32]),
                data: b"Subject: x\r\n\r\n".to_vec(),
            },
            Frame::Close {
                code: 2,
                reason: "bye".into(),
            },
            Frame::Missing {
                hashes: vec![BlobHash([3; 32]), BlobHash([4; 32])],
            },
            Frame::Applied {
                hashes: vec![ChangeHash([5; 32])],
            },
            Frame::Later {
                hashes: vec![BlobHash([6; 32])],
            },
            Frame::WantPart {
                hash: BlobHash([7; 32]),
                offset: 1 << 40,
            },
            Frame::BlobPart {
                hash: BlobHash([8; 32]),
                total: 10,
                offset: 4,
                data: b"body!!".to_vec(),
            },
        ]
    }

    #[test]
    fn round_trip_every_frame() {
        for f in samples() {
            let bytes = f.encode();
            assert_eq!(
                Frame::decode(&bytes),
                Ok(Some((f.clone(), bytes.len()))),
                "{f:?}"
            );
        }
    }

    #[test]
    fn known_answer_hello() {
        let bytes = Frame::Hello {
            version: 1,
            slot: 2,
        }
        .encode();
        assert_eq!(bytes, [4, 0, 0, 0, 1, 1, 0, 2], "got {:02x?}", bytes);
    }

    #[test]
    fn every_prefix_needs_more_bytes_and_every_cut_payload_is_malformed() {
        for f in samples() {
            let bytes = f.encode();
            for cut in 0..bytes.len() {
                assert_eq!(Frame::decode(&bytes[..cut]), Ok(None));
            }
            // Shorten the declared length: the payload no longer parses.
            let len = bytes.len() - 4;
            for short in 1..len {
                let mut b = bytes.clone();
                b[..4].copy_from_slice(&(short as u32).to_le_bytes());
                assert!(
                    Frame::decode(&b[..4 + short]).is_err(),
                    "{f:?} cut to {short}"
                );
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused() {
        let mut b = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        b.push(2);
        assert_eq!(Frame::decode(&b), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        // A Manifest claiming 2^32-1 documents in a few bytes.
        let b = [9, 0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert_eq!(Frame::decode(&b), Err(FrameError::Malformed("Manifest")));
        assert_eq!(
            Frame::decode(&[1, 0, 0, 0, 0x7f]),
            Err(FrameError::UnknownType(0x7f))
        );
        assert!(Frame::decode(&[0, 0, 0, 0]).is_err());
    }
}
