//! How store state is laid out in automerge documents: document keys, map keys, and reading an
//! instance or the registry back. See `spec/data-model.md`.
//!
//! Every document uses only its ROOT map with flat string keys and scalar values, so two nodes
//! that write "the same" key concurrently produce an automerge conflict between scalars, which
//! the readers here resolve (max, or greatest stamp) — never two competing nested objects.

use automerge::{Automerge, ROOT, ReadDoc, ScalarValue, Value};

use crate::blob::BlobHash;
use crate::error::{Error, Result};

/// Instances per message shard document.
pub(crate) const SHARD_SIZE: u32 = 4096;
/// Number of node slots, and so of UID residue classes.
pub const MAX_NODES: u8 = 16;

/// What a document key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DocKind {
    /// The mailbox registry of an account: `<account>/registry`.
    Registry { account: String },
    /// A message shard: `<account>/<mailbox id>/<slot>/<block>`.
    Shard {
        account: String,
        mailbox: String,
        slot: u8,
        block: u32,
    },
}

pub(crate) fn registry_key(account: &str) -> String {
    format!("{account}/registry")
}

pub(crate) fn shard_key(account: &str, mailbox: &str, orig_uid: u32) -> String {
    let slot = (orig_uid - 1) % MAX_NODES as u32;
    let block = orig_uid / (SHARD_SIZE * MAX_NODES as u32);
    format!("{account}/{mailbox}/{slot}/{block}")
}

/// Account names: 1 to 255 bytes, no `/`, no white space or control characters.
pub(crate) fn valid_account(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.contains('/')
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Mailbox ids: 1 to 32 characters of `[a-z0-9]`.
pub(crate) fn valid_mailbox_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl DocKind {
    /// Parses a document key, e.g. one received from a peer.
    pub(crate) fn parse(key: &str) -> Result<DocKind> {
        let bad = || Error::InvalidDocKey(key.to_owned());
        let parts: Vec<&str> = key.split('/').collect();
        match parts.as_slice() {
            [account, "registry"] if valid_account(account) => Ok(DocKind::Registry {
                account: (*account).to_owned(),
            }),
            [account, mailbox, slot, block]
                if valid_account(account) && valid_mailbox_id(mailbox) =>
            {
                let slot: u8 = slot.parse().map_err(|_| bad())?;
                let block: u32 = block.parse().map_err(|_| bad())?;
                if slot >= MAX_NODES {
                    return Err(bad());
                }
                Ok(DocKind::Shard {
                    account: (*account).to_owned(),
                    mailbox: (*mailbox).to_owned(),
                    slot,
                    block,
                })
            }
            _ => Err(bad()),
        }
    }
}

/// The immutable creation record of an instance (`<o>.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Creation {
    pub blob: BlobHash,
    pub date: i64,
    pub modseq: u64,
    pub size: u32,
}

impl Creation {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(52);
        v.extend_from_slice(&self.blob.0);
        v.extend_from_slice(&self.date.to_le_bytes());
        v.extend_from_slice(&self.modseq.to_le_bytes());
        v.extend_from_slice(&self.size.to_le_bytes());
        v
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Creation> {
        if b.len() != 52 {
            return None;
        }
        let mut blob = [0u8; 32];
        blob.copy_from_slice(&b[..32]);
        Some(Creation {
            blob: BlobHash(blob),
            date: i64::from_le_bytes(b[32..40].try_into().ok()?),
            modseq: u64::from_le_bytes(b[40..48].try_into().ok()?),
            size: u32::from_le_bytes(b[48..52].try_into().ok()?),
        })
    }
}

/// An instance's state as the document holds it, conflicts resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct InstanceDoc {
    pub creation: Option<Creation>,
    /// Current UID: max of the original UID and every `.u` value.
    pub uid: u32,
    /// max of `.m` values (re-stamps).
    pub restamp: u64,
    /// Per flag, the winning signed stamp (+set / -cleared).
    pub flags: Vec<(String, i64)>,
    /// Expunge stamp.
    pub expunged: Option<u64>,
    /// UIDs this instance was shown under before a lift, with their stamps.
    pub olds: Vec<(u32, u64)>,
}

impl InstanceDoc {
    /// The instance's MODSEQ: the largest stamp of anything about it.
    pub(crate) fn modseq(&self) -> u64 {
        let mut m = self.creation.map_or(0, |c| c.modseq).max(self.restamp);
        for (_, s) in &self.flags {
            m = m.max(s.unsigned_abs());
        }
        m.max(self.expunged.unwrap_or(0))
    }
}

fn scalar_u64(v: &Value<'_>) -> Option<u64> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Uint(u) => Some(*u),
            ScalarValue::Int(i) if *i >= 0 => Some(*i as u64),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

fn scalar_i64(v: &Value<'_>) -> Option<i64> {
    match v {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Int(i) => Some(*i),
            ScalarValue::Uint(u) => i64::try_from(*u).ok(),
            _ => None,
        },
        Value::Object(_) => None,
    }
}

/// Max of every (conflicting) unsigned value under `key`.
pub(crate) fn max_u64(doc: &Automerge, key: &str) -> Option<u64> {
    doc.get_all(ROOT, key)
        .ok()?
        .iter()
        .filter_map(|(v, _)| scalar_u64(v))
        .max()
}

/// The signed stamp with the greatest magnitude among the values under `key`; on a tie (same
/// stamp set and cleared, which only a buggy peer can produce) the clear wins.
pub(crate) fn winning_stamp(doc: &Automerge, key: &str) -> Option<i64> {
    doc.get_all(ROOT, key)
        .ok()?
        .iter()
        .filter_map(|(v, _)| scalar_i64(v))
        .max_by_key(|s| (s.unsigned_abs(), std::cmp::Reverse(*s)))
}

/// Reads instance `orig` of a shard document.
pub(crate) fn read_instance(doc: &Automerge, orig: u32) -> InstanceDoc {
    let mut out = InstanceDoc {
        uid: orig,
        ..InstanceDoc::default()
    };
    let prefix = format!("{orig}.");
    let end = format!("{orig}/");
    let keys: Vec<String> = doc
        .map_range(ROOT, prefix.clone()..end)
        .map(|item| item.key.into_owned())
        .collect();
    for key in keys {
        let field = &key[prefix.len()..];
        match field.as_bytes().first() {
            Some(b'c') if field.len() == 1 => {
                out.creation = doc
                    .get(ROOT, key.as_str())
                    .ok()
                    .flatten()
                    .and_then(|(v, _)| v.as_bytes().and_then(Creation::decode));
            }
            Some(b'u') if field.len() == 1 => {
                if let Some(u) = max_u64(doc, &key).and_then(|u| u32::try_from(u).ok()) {
                    out.uid = out.uid.max(u);
                }
            }
            Some(b'm') if field.len() == 1 => out.restamp = max_u64(doc, &key).unwrap_or(0),
            Some(b'x') if field.len() == 1 => out.expunged = max_u64(doc, &key),
            Some(b'f') => {
                if let Some(s) = winning_stamp(doc, &key) {
                    out.flags.push((field[1..].to_owned(), s));
                }
            }
            Some(b'o') => {
                if let (Ok(u), Some(s)) = (field[1..].parse::<u32>(), max_u64(doc, &key)) {
                    out.olds.push((u, s));
                }
            }
            _ => {} // a field from a future version: ignored, kept in the document
        }
    }
    out
}

/// The instance (original UID) a root key of a shard document belongs to.
pub(crate) fn instance_of_key(key: &str) -> Option<u32> {
    key.split_once('.').and_then(|(o, _)| o.parse().ok())
}

/// Every instance present in a shard document.
pub(crate) fn instances(doc: &Automerge) -> Vec<u32> {
    let mut v: Vec<u32> = doc
        .map_range(ROOT, ..)
        .filter_map(|item| instance_of_key(&item.key))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// One mailbox as the registry document describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct MailboxDoc {
    pub id: String,
    pub name: String,
    pub uidvalidity: u32,
    pub role: Option<String>,
    pub deleted: Option<u64>,
}

/// The registry document, read back.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistryDoc {
    pub mailboxes: Vec<MailboxDoc>,
    /// Per name, the largest UIDVALIDITY ever used under it.
    pub high_water: std::collections::BTreeMap<String, u32>,
    /// Subscribed names.
    pub subscriptions: std::collections::BTreeSet<String>,
    /// The largest stamp (MODSEQ-like clock value) in the document, for the clock to observe.
    pub max_stamp: u64,
}

/// Reads a registry document. Entries that do not parse are skipped (a future version's keys, or
/// a hostile peer's); they stay in the document untouched.
pub(crate) fn read_registry(doc: &Automerge) -> RegistryDoc {
    use std::collections::BTreeMap;
    let mut out = RegistryDoc::default();
    let mut mbs: BTreeMap<String, MailboxDoc> = BTreeMap::new();
    let keys: Vec<String> = doc
        .map_range(ROOT, ..)
        .map(|i| i.key.into_owned())
        .collect();
    for key in keys {
        if let Some(rest) = key.strip_prefix("mb.") {
            let Some((id, field)) = rest.rsplit_once('.') else {
                continue;
            };
            if !valid_mailbox_id(id) {
                continue;
            }
            let e = mbs.entry(id.to_owned()).or_insert_with(|| MailboxDoc {
                id: id.to_owned(),
                ..MailboxDoc::default()
            });
            match field {
                "n" => {
                    if let Ok(Some((v, _))) = doc.get(ROOT, key.as_str()) {
                        e.name = v.as_str().unwrap_or_default().to_owned();
                    }
                }
                "v" => {
                    e.uidvalidity = max_u64(doc, &key)
                        .and_then(|v| u32::try_from(v).ok())
                        .unwrap_or(0)
                }
                "r" => {
                    if let Ok(Some((v, _))) = doc.get(ROOT, key.as_str()) {
                        e.role = v.as_str().filter(|s| !s.is_empty()).map(str::to_owned);
                    }
                }
                "x" => {
                    e.deleted = max_u64(doc, &key);
                    out.max_stamp = out.max_stamp.max(e.deleted.unwrap_or(0));
                }
                _ => {}
            }
        } else if let Some(name) = key.strip_prefix("hw.") {
            if let Some(v) = max_u64(doc, &key).and_then(|v| u32::try_from(v).ok()) {
                out.high_water.insert(name.to_owned(), v);
            }
        } else if let Some(name) = key.strip_prefix("sub.")
            && let Some(s) = winning_stamp(doc, &key)
        {
            out.max_stamp = out.max_stamp.max(s.unsigned_abs());
            if s > 0 {
                out.subscriptions.insert(name.to_owned());
            }
        }
    }
    out.mailboxes = mbs
        .into_values()
        .filter(|m| !m.name.is_empty() && m.uidvalidity != 0)
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_keys_parse() {
        assert_eq!(
            DocKind::parse("alice/registry").unwrap(),
            DocKind::Registry {
                account: "alice".into()
            }
        );
        let k = shard_key("alice", "inbox", 17);
        assert_eq!(k, "alice/inbox/0/0");
        assert_eq!(shard_key("alice", "inbox", 2), "alice/inbox/1/0");
        assert_eq!(
            shard_key("alice", "inbox", 1 + 16 * 4096),
            "alice/inbox/0/1"
        );
        assert!(matches!(
            DocKind::parse(&k).unwrap(),
            DocKind::Shard {
                slot: 0,
                block: 0,
                ..
            }
        ));
        for bad in [
            "",
            "a",
            "a/b/c",
            "a/INBOX/0/0",
            "a/b/16/0",
            "a/b/x/0",
            "/registry",
            "a b/registry",
        ] {
            assert!(DocKind::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn creation_round_trip() {
        let c = Creation {
            blob: BlobHash([7; 32]),
            date: -3,
            modseq: 99,
            size: 12,
        };
        assert_eq!(Creation::decode(&c.encode()), Some(c));
        assert_eq!(Creation::decode(&[0; 10]), None);
    }
}
