//! The write-ahead journal: every change to any document is appended here and fdatasync'd before
//! the operation that made it is acknowledged.
//!
//! A record is `[len u32][crc32 u32][payload]`, the payload a list of `(document key, automerge
//! change bytes)`. A crash can leave at most one torn record at the end; opening detects it by
//! length or CRC and truncates it. Such a record was never acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::codec::{Reader, Writer, crc32};
use crate::error::{Error, Result};

/// One journal record: the changes of one store operation, applied together.
pub(crate) type Record = Vec<(String, Vec<u8>)>;

/// Records larger than this are refused on write and treated as corruption on read.
const MAX_RECORD: usize = 1 << 30;

#[derive(Debug)]
pub(crate) struct Journal {
    path: PathBuf,
    file: File,
    /// Length of the valid prefix: where the next record goes.
    len: u64,
    sync: bool,
    /// Set when a failed write could not be rolled back; further writes are refused until the
    /// store is reopened (which truncates the torn tail).
    poisoned: bool,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` and returns the intact records.
    pub(crate) fn open(path: &Path, sync: bool) -> Result<(Journal, Vec<Record>)> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(|e| Error::io(path, e))?;
        let (records, valid) = parse_records(&buf);
        if !torn_tail(&buf[valid as usize..]) {
            // A bad record with intact-looking data after it is not a crash mid-write (that
            // only ever damages the last record): cutting here would drop acknowledged writes.
            return Err(Error::corrupt(
                path,
                format!(
                    "damaged record at byte {valid} followed by more data; refusing to truncate {} bytes of acknowledged writes",
                    buf.len() as u64 - valid
                ),
            ));
        }
        if (valid as usize) < buf.len() {
            // A torn tail from a crash mid-write: never acknowledged, so dropping it loses
            // nothing that was promised.
            file.set_len(valid).map_err(|e| Error::io(path, e))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        file.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(path, e))?;
        Ok((
            Journal {
                path: path.to_owned(),
                file,
                len: valid,
                sync,
                poisoned: false,
            },
            records,
        ))
    }

    /// Appends one record and makes it durable.
    pub(crate) fn append(&mut self, record: &[(String, Vec<u8>)]) -> Result<()> {
        if self.poisoned {
            return Err(Error::io(
                &self.path,
                std::io::Error::other("journal needs reopening after a failed write"),
            ));
        }
        let mut w = Writer::new();
        w.u32(record.len() as u32);
        for (k, v) in record {
            w.str(k);
            w.bytes(v);
        }
        let payload = w.finish();
        if payload.len() > MAX_RECORD {
            return Err(Error::io(
                &self.path,
                std::io::Error::other("record too large"),
            ));
        }
        let mut out = Writer::new();
        out.u32(payload.len() as u32);
        out.u32(crc32(&payload));
        out.raw(&payload);
        let bytes = out.finish();
        let res = self.file.write_all(&bytes).and_then(|()| {
            if self.sync {
                self.file.sync_data()
            } else {
                Ok(())
            }
        });
        match res {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Roll the file back so the next record does not follow garbage.
                if self.file.set_len(self.len).is_err() {
                    self.poisoned = true;
                }
                Err(Error::io(&self.path, e))
            }
        }
    }

    /// Bytes of intact records.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Reads every intact record again (used to rebuild one document after a failed write).
    pub(crate) fn records(&self) -> Result<Vec<Record>> {
        let mut buf = Vec::new();
        File::open(&self.path)
            .and_then(|mut f| f.read_to_end(&mut buf))
            .map_err(|e| Error::io(&self.path, e))?;
        buf.truncate(self.len as usize);
        Ok(parse_records(&buf).0)
    }
}

/// Parses records from the start of `buf`; returns them and the length of the intact prefix.
fn parse_records(buf: &[u8]) -> (Vec<Record>, u64) {
    let mut records = Vec::new();
    let mut pos = 0usize;
    loop {
        let mut r = Reader::new(&buf[pos..], "journal");
        let Ok(len) = r.u32() else { break };
        let Ok(crc) = r.u32() else { break };
        let len = len as usize;
        if len > MAX_RECORD {
            break;
        }
        let Ok(payload) = r.take(len) else { break };
        if crc32(payload) != crc {
            break;
        }
        let Some(rec) = parse_payload(payload) else {
            break;
        };
        records.push(rec);
        pos += 8 + len;
    }
    (records, pos as u64)
}

/// Whether `rest`, the bytes after the last intact record, can be what a crash mid-append
/// leaves: nothing, a header cut short, or one record (whole or cut short) that ends the file.
fn torn_tail(rest: &[u8]) -> bool {
    // After a power loss the file can end in zeros (its size was updated, its data not).
    if rest.len() < 8 || rest.iter().all(|&b| b == 0) {
        return true;
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    // A record reaching to (or past) the end of the file is the last one written.
    len > MAX_RECORD || 8 + len >= rest.len()
}

fn parse_payload(payload: &[u8]) -> Option<Record> {
    let mut r = Reader::new(payload, "journal record");
    let n = r.count(8).ok()?;
    let mut rec = Vec::with_capacity(n);
    for _ in 0..n {
        let k = r.string().ok()?;
        let v = r.bytes().ok()?.to_vec();
        rec.push((k, v));
    }
    (r.remaining() == 0).then_some(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &[u8]) -> Record {
        vec![(k.to_owned(), v.to_vec())]
    }

    #[test]
    fn torn_tail_is_dropped_and_the_rest_kept() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        {
            let (mut j, recs) = Journal::open(&p, true).unwrap();
            assert!(recs.is_empty());
            j.append(&rec("a", b"one")).unwrap();
            j.append(&rec("b", b"two")).unwrap();
        }
        let full = std::fs::read(&p).unwrap();
        // Every possible cut of the last record leaves exactly the first one.
        let first_len = 8 + 4 + 4 + 1 + 4 + 3;
        for cut in first_len..full.len() {
            std::fs::write(&p, &full[..cut]).unwrap();
            let (j, recs) = Journal::open(&p, false).unwrap();
            assert_eq!(recs, vec![rec("a", b"one")], "cut {cut}");
            assert_eq!(j.len(), first_len as u64);
            assert_eq!(std::fs::metadata(&p).unwrap().len(), first_len as u64);
        }
        // A flipped bit in the last record is caught by the CRC.
        let mut bad = full.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        std::fs::write(&p, &bad).unwrap();
        let (_, recs) = Journal::open(&p, false).unwrap();
        assert_eq!(recs.len(), 1);
    }

    #[test]
    fn damage_in_the_middle_is_refused_not_truncated() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        {
            let (mut j, _) = Journal::open(&p, false).unwrap();
            for i in 0..3u8 {
                j.append(&rec("a", &[i; 10])).unwrap();
            }
        }
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[12] ^= 0xff; // inside the first record's payload
        std::fs::write(&p, &bytes).unwrap();
        let e = Journal::open(&p, false).unwrap_err();
        assert!(e.to_string().contains("refusing to truncate"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), bytes, "file left as it was");
    }

    #[test]
    fn appends_after_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("j");
        Journal::open(&p, false)
            .unwrap()
            .0
            .append(&rec("a", b"1"))
            .unwrap();
        let (mut j, _) = Journal::open(&p, false).unwrap();
        j.append(&rec("b", b"2")).unwrap();
        assert_eq!(j.records().unwrap().len(), 2);
        assert_eq!(Journal::open(&p, false).unwrap().1.len(), 2);
    }
}
