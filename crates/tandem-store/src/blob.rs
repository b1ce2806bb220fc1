//! The content-addressed blob store: message bodies appended to pack files and found through
//! an in-memory index that opening rebuilds.
//!
//! Packs instead of one file per body: creating a file costs an inode allocation, a directory
//! entry and its own fsync, and a profile of a 3,000-message first sync put about 70 % of the
//! CPU time in ext4's inode allocator; serving a body cost a file open. An append to an open
//! pack costs one `pwrite`, a read one `pread`, and many bodies share one `fdatasync`.
//!
//! Layout: `blobs/pack-<8 digits>`, starting with `TDP1`, then records:
//!
//! ```text
//! magic:4 ("TDR1" live, "TDX1" dead)  hash:32  meta_len:u32  raw_len:u64  crc:u32  meta  raw
//! ```
//!
//! `crc` is the CRC-32 of hash, both lengths and the metadata (not of the magic, so marking a
//! record dead does not change it); the body is checked against its SHA-256 on every read. A
//! process appends only to a pack it created, so after a crash only the last pack can hold a
//! torn record: opening verifies every body of that pack, and marks a record that fails dead.
//! A damaged header anywhere is skipped by searching for the next valid one. Packs are never
//! rewritten; a record that turns out damaged later is dropped from the index when a read finds
//! it, so the body counts as missing and a peer sends it again.
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use sha2::{Digest, Sha256};

use crate::codec::{Reader, Writer, crc32, hex};
use crate::error::{Error, Result};
use crate::meta::MessageMeta;

/// SHA-256 of a message's raw bytes: the name of its blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// Hashes `raw`.
    pub fn of(raw: &[u8]) -> BlobHash {
        BlobHash(Sha256::digest(raw).into())
    }

    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<BlobHash> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(BlobHash(out))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Where a record lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    pack: u32,
    /// Offset of the record's magic.
    off: u64,
    meta_len: u32,
    raw_len: u64,
}

impl Loc {
    fn meta_at(&self) -> u64 {
        self.off + HDR
    }

    fn raw_at(&self) -> u64 {
        self.off + HDR + u64::from(self.meta_len)
    }

    fn end(&self) -> u64 {
        self.raw_at() + self.raw_len
    }
}

/// The pack this process appends to.
#[derive(Debug)]
struct Active {
    no: u32,
    file: Arc<File>,
    len: u64,
    /// Everything below this is on disk (fdatasync returned).
    synced: u64,
    /// What this pack holds, for its index file once it is full.
    records: Vec<(BlobHash, Loc)>,
}

#[derive(Debug)]
struct WriteState {
    active: Option<Active>,
    next_no: u32,
    /// A pack was created since the directory was last fsynced.
    new_file: bool,
}

/// Counts for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlobStats {
    /// Distinct bodies stored.
    pub bodies: u64,
    /// Pack files.
    pub packs: u64,
    /// Damaged records found since the store was opened (at open or by a read); their bodies
    /// count as missing, so peers send them again.
    pub damaged: u64,
}

/// The blob directory of a store.
#[derive(Debug)]
pub(crate) struct BlobStore {
    dir: PathBuf,
    /// Whether appends are fsynced at [`BlobStore::commit_staged`] (off only for bulk
    /// benchmarks and tests that say so).
    sync: bool,
    index: RwLock<HashMap<BlobHash, Loc>>,
    packs: RwLock<HashMap<u32, Arc<File>>>,
    write: Mutex<WriteState>,
    damaged: AtomicU64,
    /// Parsed metadata of recently read blobs (bodies never change, so entries never go
    /// stale): FETCH ENVELOPE/BODYSTRUCTURE and SEARCH read it for every message.
    meta_cache: Mutex<HashMap<BlobHash, Arc<MessageMeta>>>,
}

const PACK_MAGIC: &[u8; 4] = b"TDP1";
const LIVE: &[u8; 4] = b"TDR1";
const DEAD: &[u8; 4] = b"TDX1";
/// Record header: magic, hash, meta_len, raw_len, crc.
const HDR: u64 = 4 + 32 + 4 + 8 + 4;
/// A new pack is started once the active one reaches this size.
const PACK_TARGET: u64 = 64 << 20;
/// Metadata longer than this is not believed (real metadata is a few hundred bytes).
const MAX_META: u32 = 16 << 20;
/// Reads of a body for [`BlobStore::check`] go this many bytes at a time.
const PART_READ: u64 = 1 << 20;
/// Entries in the metadata cache (a few hundred bytes each).
const META_CACHE_ENTRIES: usize = 50_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}

fn pack_name(no: u32) -> String {
    format!("pack-{no:08}")
}

/// The CRC a record header carries: of hash, lengths and metadata.
fn record_crc(hash: &[u8], meta_len: u32, raw_len: u64, meta: &[u8]) -> u32 {
    let mut b = Vec::with_capacity(44 + meta.len());
    b.extend_from_slice(hash);
    b.extend_from_slice(&meta_len.to_le_bytes());
    b.extend_from_slice(&raw_len.to_le_bytes());
    b.extend_from_slice(meta);
    crc32(&b)
}

/// A record header that checked out.
struct Header {
    hash: BlobHash,
    live: bool,
    loc: Loc,
}

impl BlobStore {
    pub(crate) fn open(dir: PathBuf, sync: bool) -> Result<Self> {
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut numbers = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .flatten()
        {
            let name = e.file_name();
            if let Some(n) = name.to_str().and_then(|n| n.strip_prefix("pack-"))
                && n.len() == 8
                && let Ok(no) = n.parse::<u32>()
            {
                numbers.push(no);
            }
        }
        numbers.sort_unstable();
        let bs = BlobStore {
            sync,
            index: RwLock::new(HashMap::new()),
            packs: RwLock::new(HashMap::new()),
            write: Mutex::new(WriteState {
                active: None,
                next_no: numbers.last().map_or(1, |n| n.saturating_add(1)),
                new_file: false,
            }),
            damaged: AtomicU64::new(0),
            meta_cache: Mutex::new(HashMap::new()),
            dir,
        };
        for (i, &no) in numbers.iter().enumerate() {
            if !bs.load_index(no)? {
                let records = bs.scan(no, i + 1 == numbers.len())?;
                bs.write_index(no, &records);
            }
        }
        bs.migrate_files()?;
        Ok(bs)
    }

    fn pack_path(&self, no: u32) -> PathBuf {
        self.dir.join(pack_name(no))
    }

    fn index_path(&self, no: u32) -> PathBuf {
        self.dir.join(format!("{}.idx", pack_name(no)))
    }

    /// Loads pack `no`'s index file if it describes the pack as it is (same length); returns
    /// whether it did. A missing, damaged or stale index is not an error: the pack is scanned.
    fn load_index(&self, no: u32) -> Result<bool> {
        let path = self.pack_path(no);
        let Ok(bytes) = fs::read(self.index_path(no)) else {
            return Ok(false);
        };
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let Some(entries) = Self::decode_index(&bytes, no, len) else {
            return Ok(false);
        };
        write(&self.packs).insert(no, Arc::new(file));
        let mut index = write(&self.index);
        for (h, loc) in entries {
            index.insert(h, loc);
        }
        Ok(true)
    }

    /// `TDI1`, pack length u64, count u32, count × (hash, offset u64, meta_len u32, raw_len
    /// u64), CRC-32 of everything before it.
    fn decode_index(bytes: &[u8], no: u32, pack_len: u64) -> Option<Vec<(BlobHash, Loc)>> {
        let (body, crc) = bytes.split_at_checked(bytes.len().checked_sub(4)?)?;
        if crc32(body).to_le_bytes() != crc {
            return None;
        }
        let mut r = Reader::new(body, "pack index");
        if r.take(4).ok()? != b"TDI1" || r.u64().ok()? != pack_len {
            return None;
        }
        let n = r.count(52).ok()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(r.take(32).ok()?);
            let loc = Loc {
                pack: no,
                off: r.u64().ok()?,
                meta_len: r.u32().ok()?,
                raw_len: r.u64().ok()?,
            };
            if loc.meta_len > MAX_META
                || loc
                    .off
                    .checked_add(HDR + u64::from(loc.meta_len))
                    .and_then(|x| x.checked_add(loc.raw_len))
                    .is_none_or(|end| end > pack_len)
            {
                return None;
            }
            out.push((BlobHash(hash), loc));
        }
        Some(out)
    }

    /// Writes the index of a pack that will not grow again, so the next open reads it instead
    /// of every record header. Best effort: without it, opening scans the pack.
    fn write_index(&self, no: u32, records: &[(BlobHash, Loc)]) {
        let Ok(len) = fs::metadata(self.pack_path(no)).map(|m| m.len()) else {
            return;
        };
        // Only what the index still points at: a record found damaged since (marked dead) or
        // superseded by a later copy stays out.
        let records: Vec<&(BlobHash, Loc)> = {
            let index = read(&self.index);
            records
                .iter()
                .filter(|(h, loc)| index.get(h) == Some(loc))
                .collect()
        };
        let mut w = Writer::new();
        w.raw(b"TDI1");
        w.u64(len);
        w.u32(records.len() as u32);
        for (h, loc) in records {
            w.raw(&h.0);
            w.u64(loc.off);
            w.u32(loc.meta_len);
            w.u64(loc.raw_len);
        }
        let mut bytes = w.finish();
        let crc = crc32(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        let tmp = self.dir.join(format!("{}.idx.tmp", pack_name(no)));
        if fs::write(&tmp, &bytes).is_ok() {
            let _ = fs::rename(&tmp, self.index_path(no));
        } else {
            let _ = fs::remove_file(&tmp);
        }
    }

    /// Indexes the records of pack `no` and returns them; with `verify`, checks every body
    /// against its hash and marks the ones that fail dead.
    ///
    /// In durable mode the pack is flushed first: after a crash of the process (not of the
    /// machine) bytes it wrote but never flushed are still in the page cache and would verify,
    /// and nothing else would ever flush them before a journal record relies on them.
    fn scan(&self, no: u32, verify: bool) -> Result<Vec<(BlobHash, Loc)>> {
        let path = self.pack_path(no);
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        if self.sync {
            file.sync_all().map_err(|e| Error::io(&path, e))?;
        }
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut magic = [0u8; 4];
        if len > 0
            && (len < 4 || file.read_exact_at(&mut magic, 0).is_err() || &magic != PACK_MAGIC)
        {
            // Not a pack we wrote (or its first bytes are gone): its records are still found
            // by searching for their headers.
            self.damaged.fetch_add(1, Ordering::Relaxed);
        }
        let file = Arc::new(file);
        write(&self.packs).insert(no, file.clone());
        let mut records = Vec::new();
        let mut pos = 4.min(len);
        while pos < len {
            let Some(h) = Self::header_at(&file, no, pos, len) else {
                self.damaged.fetch_add(1, Ordering::Relaxed);
                match Self::next_header(&file, no, pos + 1, len) {
                    Some(p) => {
                        pos = p;
                        continue;
                    }
                    None => break,
                }
            };
            pos = h.loc.end();
            if !h.live {
                continue;
            }
            if verify {
                match Self::hash_matches(&file, &h.hash, &h.loc) {
                    Ok(true) => {}
                    Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => {
                        // Unreadable now: not indexed (a peer sends it again), not marked dead.
                        continue;
                    }
                    Ok(false) | Err(_) => {
                        self.damaged.fetch_add(1, Ordering::Relaxed);
                        self.mark_dead(&h.loc);
                        continue;
                    }
                }
            }
            write(&self.index).insert(h.hash, h.loc);
            records.push((h.hash, h.loc));
        }
        Ok(records)
    }

    /// The record header at `pos`, if it is one: magic, sane lengths inside the file, CRC.
    fn header_at(file: &File, pack: u32, pos: u64, len: u64) -> Option<Header> {
        if pos.checked_add(HDR)? > len {
            return None;
        }
        let mut h = [0u8; HDR as usize];
        file.read_exact_at(&mut h, pos).ok()?;
        let live = match &h[..4] {
            m if m == LIVE => true,
            m if m == DEAD => false,
            _ => return None,
        };
        let meta_len = u32::from_le_bytes(h[36..40].try_into().ok()?);
        let raw_len = u64::from_le_bytes(h[40..48].try_into().ok()?);
        let crc = u32::from_le_bytes(h[48..52].try_into().ok()?);
        if meta_len > MAX_META {
            return None;
        }
        let loc = Loc {
            pack,
            off: pos,
            meta_len,
            raw_len,
        };
        if loc.raw_at().checked_add(raw_len)? > len {
            return None;
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut meta, loc.meta_at()).ok()?;
        if record_crc(&h[4..36], meta_len, raw_len, &meta) != crc {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&h[4..36]);
        Some(Header {
            hash: BlobHash(hash),
            live,
            loc,
        })
    }

    /// The offset of the next valid record header at or after `from`.
    fn next_header(file: &File, pack: u32, from: u64, len: u64) -> Option<u64> {
        const CHUNK: u64 = 1 << 20;
        let mut at = from;
        let mut buf = vec![0u8; CHUNK as usize + 3];
        while at < len {
            let n = (len - at).min(CHUNK + 3) as usize;
            file.read_exact_at(&mut buf[..n], at).ok()?;
            for i in 0..n.saturating_sub(3) {
                let m = &buf[i..i + 4];
                if (m == LIVE || m == DEAD)
                    && Self::header_at(file, pack, at + i as u64, len).is_some()
                {
                    return Some(at + i as u64);
                }
            }
            at += CHUNK;
        }
        None
    }

    /// Hashes the body at `loc`, a MiB at a time (a large body is never held whole), and says
    /// whether it matches `h`. An error is the read's: `UnexpectedEof` means the record is cut
    /// short; anything else says nothing about the bytes.
    fn hash_matches(file: &File, h: &BlobHash, loc: &Loc) -> std::io::Result<bool> {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; PART_READ.min(loc.raw_len) as usize];
        let mut at = 0u64;
        while at < loc.raw_len {
            let n = (loc.raw_len - at).min(PART_READ) as usize;
            file.read_exact_at(&mut buf[..n], loc.raw_at() + at)?;
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        Ok(BlobHash(hasher.finalize().into()) == *h)
    }

    /// Overwrites a damaged record's magic with the dead one, so no later open indexes it, and
    /// drops the pack's index file, which still lists it. Best effort: the record is useless
    /// either way.
    fn mark_dead(&self, loc: &Loc) {
        let _ = fs::remove_file(self.index_path(loc.pack));
        if let Ok(f) = fs::OpenOptions::new()
            .write(true)
            .open(self.pack_path(loc.pack))
        {
            let _ = f.write_all_at(DEAD, loc.off);
            if self.sync {
                let _ = f.sync_data();
            }
        }
    }

    /// Moves bodies stored one file each (`blobs/ab/cdef…`, the layout before packs) into a
    /// pack, then deletes those files.
    fn migrate_files(&self) -> Result<()> {
        let _ = fs::remove_dir_all(self.dir.join("tmp"));
        let mut moved = Vec::new();
        let mut dirs = Vec::new();
        for e in fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .flatten()
        {
            let name = e.file_name();
            let Some(prefix) = name.to_str() else {
                continue;
            };
            if prefix.len() != 2 || !e.path().is_dir() {
                continue;
            }
            dirs.push(e.path());
            for f in fs::read_dir(e.path())
                .map_err(|err| Error::io(e.path(), err))?
                .flatten()
            {
                let Some(rest) = f.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Some(h) = BlobHash::from_hex(&format!("{prefix}{rest}")) else {
                    continue;
                };
                let Ok(buf) = fs::read(f.path()) else {
                    continue;
                };
                match Self::split_file(&buf) {
                    Some((meta, raw)) if BlobHash::of(raw) == h => {
                        let meta = MessageMeta::decode(&mut Reader::new(meta, "message metadata"))
                            .unwrap_or_else(|_| MessageMeta::parse(raw));
                        if !self.contains(&h) {
                            self.append(&h, &meta, raw)?;
                        }
                        moved.push(f.path());
                    }
                    // Damaged: left where it is; a peer will send the body again.
                    _ => {
                        self.damaged.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        self.commit_staged()?;
        for p in moved {
            let _ = fs::remove_file(p);
        }
        for d in dirs {
            let _ = fs::remove_dir(d);
        }
        Ok(())
    }

    /// A pre-pack body file: `TDB1`, u32 length, metadata, raw message.
    fn split_file(buf: &[u8]) -> Option<(&[u8], &[u8])> {
        let mut r = Reader::new(buf, "blob file");
        if r.take(4).ok()? != b"TDB1" {
            return None;
        }
        let meta = r.bytes().ok()?;
        let raw = r.take(r.remaining()).ok()?;
        Some((meta, raw))
    }

    pub(crate) fn contains(&self, h: &BlobHash) -> bool {
        read(&self.index).contains_key(h)
    }

    /// Counts for metrics.
    pub(crate) fn stats(&self) -> BlobStats {
        BlobStats {
            bodies: read(&self.index).len() as u64,
            packs: read(&self.packs).len() as u64,
            damaged: self.damaged.load(Ordering::Relaxed),
        }
    }

    /// Makes every body appended so far durable: one fdatasync of the active pack (and of the
    /// directory if a pack was created). Called before any journal record that can show them
    /// is written. If the flush fails, the pack is abandoned and the bodies written to it
    /// since the last good flush are forgotten (they are stored again when offered again):
    /// after a failed fsync nothing says what reached the disk.
    pub(crate) fn commit_staged(&self) -> Result<()> {
        if !self.sync {
            return Ok(());
        }
        let mut w = lock(&self.write);
        if let Some(a) = &mut w.active
            && a.synced < a.len
        {
            let no = a.no;
            let synced = a.synced;
            if let Err(e) = a.file.sync_data() {
                w.active = None;
                write(&self.index).retain(|_, l| !(l.pack == no && l.off >= synced));
                return Err(Error::io(self.pack_path(no), e));
            }
            a.synced = a.len;
        }
        if w.new_file {
            sync_dir(&self.dir)?;
            w.new_file = false;
        }
        Ok(())
    }

    /// Stores `raw` (if not already there) and returns its hash and metadata.
    pub(crate) fn put(&self, raw: &[u8]) -> Result<(BlobHash, MessageMeta)> {
        let h = BlobHash::of(raw);
        // A damaged copy under this name is replaced by the good one we were just given.
        if self.contains(&h)
            && let Ok(meta) = self.verified_meta(&h)
        {
            return Ok((h, meta));
        }
        let meta = MessageMeta::parse(raw);
        self.append(&h, &meta, raw)?;
        Ok((h, meta))
    }

    /// Stores `raw`, which a peer announced as `expected`; refuses it if the hash differs.
    pub(crate) fn put_verified(&self, expected: &BlobHash, raw: &[u8]) -> Result<MessageMeta> {
        if BlobHash::of(raw) != *expected {
            return Err(Error::BlobHashMismatch {
                expected: expected.to_hex(),
            });
        }
        Ok(self.put(raw)?.1)
    }

    fn append(&self, h: &BlobHash, meta: &MessageMeta, raw: &[u8]) -> Result<()> {
        let mut mw = Writer::new();
        meta.encode(&mut mw);
        let meta = mw.finish();
        let meta_len = u32::try_from(meta.len())
            .ok()
            .filter(|&l| l <= MAX_META)
            .ok_or_else(|| Error::io(&self.dir, std::io::Error::other("metadata too large")))?;
        let raw_len = raw.len() as u64;
        let mut head = Vec::with_capacity(HDR as usize + meta.len());
        head.extend_from_slice(LIVE);
        head.extend_from_slice(&h.0);
        head.extend_from_slice(&meta_len.to_le_bytes());
        head.extend_from_slice(&raw_len.to_le_bytes());
        head.extend_from_slice(&record_crc(&h.0, meta_len, raw_len, &meta).to_le_bytes());
        head.extend_from_slice(&meta);

        let mut w = lock(&self.write);
        if w.active.as_ref().is_some_and(|a| a.len >= PACK_TARGET) {
            // Full: flush it now, so that commit only ever has one pack to flush.
            if let Some(a) = w.active.take() {
                if self.sync
                    && a.synced < a.len
                    && let Err(e) = a.file.sync_data()
                {
                    write(&self.index).retain(|_, l| !(l.pack == a.no && l.off >= a.synced));
                    return Err(Error::io(self.pack_path(a.no), e));
                }
                self.write_index(a.no, &a.records);
            }
        }
        if w.active.is_none() {
            let no = w.next_no;
            let path = self.pack_path(no);
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .and_then(|f| f.write_all_at(PACK_MAGIC, 0).map(|()| f))
                .map_err(|e| {
                    let _ = fs::remove_file(&path);
                    Error::io(&path, e)
                })?;
            let file = Arc::new(file);
            write(&self.packs).insert(no, file.clone());
            w.next_no = no.saturating_add(1);
            w.new_file = true;
            w.active = Some(Active {
                no,
                file,
                len: 4,
                synced: 0,
                records: Vec::new(),
            });
        }
        let Some(a) = w.active.as_mut() else {
            return Err(Error::io(&self.dir, std::io::Error::other("no pack")));
        };
        let off = a.len;
        let res = a
            .file
            .write_all_at(&head, off)
            .and_then(|()| a.file.write_all_at(raw, off + head.len() as u64));
        if let Err(e) = res {
            // Cut back what was written (a full disk, say); the pack stays usable.
            let _ = a.file.set_len(off);
            return Err(Error::io(self.pack_path(a.no), e));
        }
        let loc = Loc {
            pack: a.no,
            off,
            meta_len,
            raw_len,
        };
        a.len = loc.end();
        a.records.push((*h, loc));
        write(&self.index).insert(*h, loc);
        Ok(())
    }

    fn locate(&self, h: &BlobHash) -> Result<(Loc, Arc<File>)> {
        let loc = read(&self.index)
            .get(h)
            .copied()
            .ok_or_else(|| Error::MissingBlob(h.to_hex()))?;
        let file = read(&self.packs)
            .get(&loc.pack)
            .cloned()
            .ok_or_else(|| Error::MissingBlob(h.to_hex()))?;
        Ok((loc, file))
    }

    /// A read found the record damaged: forget it (so the body counts as missing and a peer
    /// sends it again, or the next `put` of the same bytes stores a good copy), mark it dead,
    /// and report it.
    fn damaged_record(&self, h: &BlobHash, loc: &Loc, detail: &str) -> Error {
        {
            let mut index = write(&self.index);
            if index.get(h) == Some(loc) {
                index.remove(h);
            }
        }
        lock(&self.meta_cache).remove(h);
        self.damaged.fetch_add(1, Ordering::Relaxed);
        self.mark_dead(loc);
        Error::corrupt(self.pack_path(loc.pack), format!("body {h:?}: {detail}"))
    }

    /// Reads `buf.len()` bytes of record `loc` (of body `h`) at `at`: a record cut short is
    /// handled as damage ([`BlobStore::damaged_record`]), any other failure is an I/O error.
    fn read_record(
        &self,
        h: &BlobHash,
        loc: &Loc,
        file: &File,
        buf: &mut [u8],
        at: u64,
    ) -> Result<()> {
        file.read_exact_at(buf, at).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.damaged_record(h, loc, "record cut short (truncated?)")
            } else {
                Error::io(self.pack_path(loc.pack), e)
            }
        })
    }

    fn read_meta(&self, h: &BlobHash) -> Result<MessageMeta> {
        let (loc, file) = self.locate(h)?;
        let mut head = vec![0u8; HDR as usize + loc.meta_len as usize];
        self.read_record(h, &loc, &file, &mut head, loc.off)?;
        let meta = &head[HDR as usize..];
        let crc = u32::from_le_bytes([head[48], head[49], head[50], head[51]]);
        if &head[..4] != LIVE
            || head[4..36] != h.0
            || record_crc(&h.0, loc.meta_len, loc.raw_len, meta) != crc
        {
            return Err(self.damaged_record(h, &loc, "header damaged"));
        }
        // The CRC holds, so the bytes are as written: a decode failure is a format this
        // build does not read (a downgrade, say), not damage. Report it, keep the record.
        MessageMeta::decode(&mut Reader::new(meta, "message metadata"))
            .map_err(|e| Error::corrupt(self.pack_path(loc.pack), e))
    }

    /// The metadata of blob `h` (from the cache, or read from the record's header only).
    pub(crate) fn meta(&self, h: &BlobHash) -> Result<Arc<MessageMeta>> {
        if let Some(m) = lock(&self.meta_cache).get(h) {
            return Ok(m.clone());
        }
        let m = Arc::new(self.read_meta(h)?);
        let mut c = lock(&self.meta_cache);
        if c.len() >= META_CACHE_ENTRIES
            && let Some(k) = c.keys().next().copied()
        {
            c.remove(&k);
        }
        c.insert(*h, m.clone());
        Ok(m)
    }

    /// The metadata of blob `h`, after checking that the whole record is intact.
    fn verified_meta(&self, h: &BlobHash) -> Result<MessageMeta> {
        self.raw(h)?;
        self.read_meta(h)
    }

    /// The raw message of blob `h`, verified against its hash on every read: a truncated or
    /// damaged record is reported as [`Error::Corrupt`], never returned. (Hashing is about an
    /// eighth of the server's CPU in a `FETCH 1:* BODY[]`; remembering which blobs were
    /// verified would save it, at the price of not noticing damage that happens later. Not
    /// taken: the client-visible time did not change measurably.)
    pub(crate) fn raw(&self, h: &BlobHash) -> Result<Vec<u8>> {
        let (loc, file) = self.locate(h)?;
        let n = usize::try_from(loc.raw_len)
            .map_err(|_| self.damaged_record(h, &loc, "length out of range"))?;
        let mut raw = vec![0u8; n];
        self.read_record(h, &loc, &file, &mut raw, loc.raw_at())?;
        if BlobHash::of(&raw) != *h {
            return Err(self.damaged_record(h, &loc, "content does not match its hash"));
        }
        Ok(raw)
    }

    /// The size of body `h`, if this store has it.
    pub(crate) fn size(&self, h: &BlobHash) -> Option<u64> {
        read(&self.index).get(h).map(|l| l.raw_len)
    }

    /// Checks body `h` against its hash, reading it a MiB at a time (a large body is never
    /// held whole). A damaged body is handled as [`BlobStore::raw`] handles it.
    pub(crate) fn check(&self, h: &BlobHash) -> Result<()> {
        let (loc, file) = self.locate(h)?;
        match Self::hash_matches(&file, h, &loc) {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.damaged_record(h, &loc, "content does not match its hash")),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(self.damaged_record(h, &loc, "record cut short (truncated?)"))
            }
            Err(e) => Err(Error::io(self.pack_path(loc.pack), e)),
        }
    }

    /// Bytes `offset..offset + len` of body `h` (cut at its end), unverified: the receiver
    /// checks the whole body against its hash once every part is there.
    pub(crate) fn range(&self, h: &BlobHash, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (loc, file) = self.locate(h)?;
        if offset > loc.raw_len {
            return Err(Error::InvalidPart(format!(
                "offset {offset} beyond the end of a {} byte body",
                loc.raw_len
            )));
        }
        let n = len.min(loc.raw_len - offset) as usize;
        let mut buf = vec![0u8; n];
        self.read_record(h, &loc, &file, &mut buf, loc.raw_at() + offset)?;
        Ok(buf)
    }

    fn partial_path(&self, h: &BlobHash) -> PathBuf {
        self.dir.join("partial").join(h.to_hex())
    }

    /// How many bytes of body `h` a partial transfer has stored (0 if none).
    pub(crate) fn partial_len(&self, h: &BlobHash) -> u64 {
        fs::metadata(self.partial_path(h)).map_or(0, |m| m.len())
    }

    /// Stores `data` at `offset` of body `h` (of `total` bytes) in its partial file, which
    /// outlives connections and restarts so a cut transfer resumes where it stopped. A part
    /// that does not start where the file ends is ignored. Returns the bytes held afterwards
    /// and whether this part was stored; once that is `total`, [`BlobStore::take_partial`]
    /// hands the body over.
    pub(crate) fn put_part(
        &self,
        h: &BlobHash,
        total: u64,
        offset: u64,
        data: &[u8],
    ) -> Result<(u64, bool)> {
        if offset.saturating_add(data.len() as u64) > total || (data.is_empty() && offset < total) {
            return Err(Error::InvalidPart(format!(
                "{} bytes at {offset} of a {total} byte body",
                data.len()
            )));
        }
        let path = self.partial_path(h);
        let have = self.partial_len(h);
        if offset != have {
            return Ok((have, false));
        }
        if have == 0 {
            let dir = self.dir.join("partial");
            fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        let res = (|| -> std::io::Result<()> {
            let f = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(false)
                .open(&path)?;
            f.write_all_at(data, offset)?;
            // Durable part by part (one flush per MiB): after a crash the file holds what it
            // says it holds, so the transfer resumes rather than failing its hash at the end.
            if self.sync {
                f.sync_data()?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            if let Ok(f) = fs::OpenOptions::new().write(true).open(&path) {
                let _ = f.set_len(have);
            }
            return Err(Error::io(&path, e));
        }
        Ok((have + data.len() as u64, true))
    }

    /// The whole body of a finished partial transfer. The caller checks it against its hash
    /// and stores it, then discards the partial file (also when the check fails).
    pub(crate) fn read_partial(&self, h: &BlobHash) -> Result<Vec<u8>> {
        let path = self.partial_path(h);
        fs::read(&path).map_err(|e| Error::io(&path, e))
    }

    /// Deletes partial files last written before `before_ms` (milliseconds since the epoch),
    /// and those of bodies stored since (or not named by a hash); returns how many.
    pub(crate) fn discard_stale_partials(&self, before_ms: i64) -> usize {
        let Ok(rd) = fs::read_dir(self.dir.join("partial")) else {
            return 0;
        };
        let mut n = 0;
        for e in rd.flatten() {
            let hash = e.file_name().to_str().and_then(BlobHash::from_hex);
            let stale = e
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX) < before_ms);
            if (stale || hash.is_none_or(|h| self.contains(&h)))
                && fs::remove_file(e.path()).is_ok()
            {
                n += 1;
            }
        }
        n
    }

    /// Forgets the stored parts of body `h`, if any.
    pub(crate) fn discard_partial(&self, h: &BlobHash) {
        let _ = fs::remove_file(self.partial_path(h));
    }

    /// Where the body of `h` sits: its pack file, and the offset and length of the raw bytes.
    #[cfg(test)]
    pub(crate) fn body_location(&self, h: &BlobHash) -> Option<(PathBuf, u64, u64)> {
        let loc = read(&self.index).get(h).copied()?;
        Some((self.pack_path(loc.pack), loc.raw_at(), loc.raw_len))
    }
}

impl Drop for BlobStore {
    /// A clean close flushes the active pack and writes its index file, so the next open
    /// neither scans nor verifies it.
    fn drop(&mut self) {
        let mut w = lock(&self.write);
        if let Some(a) = w.active.take()
            && (!self.sync || a.synced == a.len || a.file.sync_data().is_ok())
        {
            self.write_index(a.no, &a.records);
        }
    }
}

/// fsyncs a directory so that a rename or create inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] = b"Subject: x\r\n\r\nsome body text\r\n";

    /// Applies `f` to the bytes of pack file `p`.
    fn edit(p: &Path, f: impl FnOnce(&mut Vec<u8>)) {
        let mut bytes = fs::read(p).unwrap();
        f(&mut bytes);
        fs::write(p, &bytes).unwrap();
    }

    #[test]
    fn stores_once_and_reads_back() {
        let d = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(d.path().join("blobs"), true).unwrap();
        let raw = b"Subject: x\r\n\r\nbody\r\n";
        let (h, meta) = bs.put(raw).unwrap();
        let (h2, _) = bs.put(raw).unwrap();
        assert_eq!(h, h2);
        bs.commit_staged().unwrap();
        assert_eq!(bs.raw(&h).unwrap(), raw);
        assert_eq!(*bs.meta(&h).unwrap(), meta);
        assert_eq!(BlobHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(bs.stats().bodies, 1);
        drop(bs);
        // Reopened: found again from the pack alone.
        let bs = BlobStore::open(d.path().join("blobs"), true).unwrap();
        assert_eq!(bs.raw(&h).unwrap(), raw);
        assert_eq!(*bs.meta(&h).unwrap(), meta);
        assert_eq!(
            bs.stats(),
            BlobStats {
                bodies: 1,
                packs: 1,
                damaged: 0
            }
        );
    }

    #[test]
    fn many_bodies_share_a_pack_and_a_new_process_starts_a_new_one() {
        let d = tempfile::tempdir().unwrap();
        let bodies: Vec<Vec<u8>> = (0..200)
            .map(|i| format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 7)).into_bytes())
            .collect();
        let mut hashes = Vec::new();
        {
            let bs = BlobStore::open(d.path().join("blobs"), true).unwrap();
            for b in &bodies[..100] {
                hashes.push(bs.put(b).unwrap().0);
            }
            bs.commit_staged().unwrap();
        }
        let bs = BlobStore::open(d.path().join("blobs"), true).unwrap();
        for b in &bodies[100..] {
            hashes.push(bs.put(b).unwrap().0);
        }
        bs.commit_staged().unwrap();
        assert_eq!(bs.stats().packs, 2);
        for (h, b) in hashes.iter().zip(&bodies) {
            assert_eq!(&bs.raw(h).unwrap(), b);
        }
    }

    #[test]
    fn truncated_blob_is_an_error_not_data() {
        let d = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(d.path().join("blobs"), false).unwrap();
        let (h, _) = bs.put(BODY).unwrap();
        let (p, _, _) = bs.body_location(&h).unwrap();
        let len = fs::metadata(&p).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        assert!(matches!(bs.raw(&h), Err(Error::Corrupt { .. })));
        // Forgotten, so a peer would send it again; re-delivering the same bytes repairs it.
        assert!(!bs.contains(&h));
        bs.put(BODY).unwrap();
        assert_eq!(bs.raw(&h).unwrap(), BODY);
        assert_eq!(bs.stats().damaged, 1);
    }

    #[test]
    fn damage_is_caught_before_and_after_a_first_read() {
        let d = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(d.path().join("blobs"), false).unwrap();
        let (h, _) = bs.put(BODY).unwrap();
        let (p, at, _) = bs.body_location(&h).unwrap();
        // A flipped byte, same length, before the first read: the hash check catches it.
        edit(&p, |b| b[at as usize + 3] ^= 0x20);
        assert!(matches!(bs.raw(&h), Err(Error::Corrupt { .. })));
        bs.put(BODY).unwrap();
        assert_eq!(bs.raw(&h).unwrap(), BODY);
        // Damaged after it was read (and verified) once: caught again.
        let (p, at, _) = bs.body_location(&h).unwrap();
        edit(&p, |b| b[at as usize + 5] ^= 0x01);
        assert!(matches!(bs.raw(&h), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn a_torn_last_pack_loses_only_its_torn_records() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("blobs");
        let (h1, h2, h3);
        {
            let bs = BlobStore::open(dir.clone(), true).unwrap();
            h1 = bs.put(b"Subject: 1\r\n\r\none\r\n").unwrap().0;
            h2 = bs.put(b"Subject: 2\r\n\r\ntwo\r\n").unwrap().0;
            h3 = bs.put(b"Subject: 3\r\n\r\nthree\r\n").unwrap().0;
            bs.commit_staged().unwrap();
            // A crash before the last two records reached the disk: the middle one's body
            // is zeros (its header made it), the last one is cut in half.
            let (p, at, len) = bs.body_location(&h2).unwrap();
            edit(&p, |b| {
                b[at as usize..(at + len) as usize].fill(0);
            });
            let (_, at3, _) = bs.body_location(&h3).unwrap();
            let f = fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(at3 - 5).unwrap();
            // A crash: no clean close, so no index file for this pack.
            std::mem::forget(bs);
        }
        let bs = BlobStore::open(dir.clone(), true).unwrap();
        assert_eq!(bs.raw(&h1).unwrap(), b"Subject: 1\r\n\r\none\r\n");
        assert!(
            !bs.contains(&h2),
            "a record whose body is torn is not indexed"
        );
        assert!(!bs.contains(&h3));
        assert_eq!(bs.stats().damaged, 2);
        bs.put(b"Subject: 4\r\n\r\nfour\r\n").unwrap();
        bs.commit_staged().unwrap();
        drop(bs);
        // The torn record was marked dead, so it stays out although its pack is no longer the
        // last one (which is the only one whose bodies opening verifies).
        let bs = BlobStore::open(dir, true).unwrap();
        assert!(!bs.contains(&h2));
        assert!(bs.contains(&h1));
        assert_eq!(bs.stats().packs, 2);
    }

    #[test]
    fn a_closed_pack_gets_an_index_file_and_a_stale_one_is_ignored() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("blobs");
        let bodies: Vec<Vec<u8>> = (0..20)
            .map(|i| format!("Subject: {i}\r\n\r\nbody {i}\r\n").into_bytes())
            .collect();
        let hs: Vec<BlobHash> = {
            let bs = BlobStore::open(dir.clone(), true).unwrap();
            bodies.iter().map(|b| bs.put(b).unwrap().0).collect()
        };
        assert!(dir.join("pack-00000001.idx").is_file());
        {
            let bs = BlobStore::open(dir.clone(), true).unwrap();
            for (h, b) in hs.iter().zip(&bodies) {
                assert_eq!(&bs.raw(h).unwrap(), b);
            }
        }
        // The pack grew behind the index's back: the index is stale and the pack is scanned.
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("pack-00000001"))
            .unwrap();
        std::io::Write::write_all(&mut f, b"junk").unwrap();
        let bs = BlobStore::open(dir.clone(), true).unwrap();
        for (h, b) in hs.iter().zip(&bodies) {
            assert_eq!(&bs.raw(h).unwrap(), b);
        }
        // A damaged index file is ignored too.
        drop(bs);
        edit(&dir.join("pack-00000001.idx"), |b| b[10] ^= 0xff);
        let bs = BlobStore::open(dir, true).unwrap();
        assert_eq!(bs.stats().bodies, 20);
    }

    #[test]
    fn a_damaged_header_is_skipped_and_the_records_after_it_are_found() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("blobs");
        let mut hs = Vec::new();
        {
            let bs = BlobStore::open(dir.clone(), true).unwrap();
            for i in 0..5 {
                hs.push(
                    bs.put(format!("Subject: {i}\r\n\r\nb\r\n").as_bytes())
                        .unwrap()
                        .0,
                );
            }
            bs.commit_staged().unwrap();
            let (p, at, _) = bs.body_location(&hs[1]).unwrap();
            // Garbage over the start of record 1's metadata breaks its CRC; then a crash (no
            // index file), so opening scans the pack.
            edit(&p, |b| b[at as usize - 10..at as usize].fill(0xAB));
            std::mem::forget(bs);
        }
        let bs = BlobStore::open(dir, true).unwrap();
        assert!(!bs.contains(&hs[1]));
        for h in [0, 2, 3, 4] {
            assert!(bs.raw(&hs[h]).is_ok(), "record {h}");
        }
    }

    #[test]
    fn bodies_in_the_old_one_file_each_layout_move_into_a_pack() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("blobs");
        let raw = b"Subject: old\r\n\r\nlayout\r\n";
        let h = BlobHash::of(raw);
        let meta = MessageMeta::parse(raw);
        let mut mw = Writer::new();
        meta.encode(&mut mw);
        let mut w = Writer::new();
        w.raw(b"TDB1");
        w.bytes(&mw.finish());
        let mut file = w.finish();
        file.extend_from_slice(raw);
        let x = h.to_hex();
        fs::create_dir_all(dir.join(&x[..2])).unwrap();
        fs::write(dir.join(&x[..2]).join(&x[2..]), &file).unwrap();
        let bs = BlobStore::open(dir.clone(), true).unwrap();
        assert_eq!(bs.raw(&h).unwrap(), raw);
        assert_eq!(*bs.meta(&h).unwrap(), meta);
        assert!(!dir.join(&x[..2]).exists(), "the old file is gone");
    }

    #[test]
    fn wrong_hash_from_a_peer_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let bs = BlobStore::open(d.path().join("blobs"), false).unwrap();
        let h = BlobHash::of(b"one");
        assert!(matches!(
            bs.put_verified(&h, b"two"),
            Err(Error::BlobHashMismatch { .. })
        ));
        assert!(!bs.contains(&h));
    }
}
