//! SEARCH: every RFC 3501 key, plus MODSEQ (RFC 7162). Flag, size, date and set keys are answered
//! from the store's view; header keys from the message's header; BODY and TEXT read the raw
//! message (a case-insensitive substring match on the bytes as stored; encoded bodies such as
//! base64 are not decoded).

use std::cell::RefCell;

use chrono::NaiveDate;
use imap_codec::imap_types::search::SearchKey;
use tandem_store::{Error as StoreError, Flag, MessageInfo, MessageMeta, Store};

use crate::convert::{in_ranges, ranges};
use crate::message::{contains_ci, header_values};

/// Why a search could not be answered.
#[derive(Debug)]
pub(crate) enum SearchError {
    Store(StoreError),
}

/// Evaluates search keys against messages.
pub(crate) struct Matcher<'k> {
    keys: &'k [SearchKey<'k>],
    count: u32,
    max_uid: u32,
}

/// What has been read of one message so far.
struct Loaded<'s> {
    store: &'s Store,
    info: &'s MessageInfo,
    raw: RefCell<Option<Vec<u8>>>,
    meta: RefCell<Option<std::sync::Arc<MessageMeta>>>,
}

impl Loaded<'_> {
    fn raw(&self) -> Result<Vec<u8>, SearchError> {
        if let Some(r) = self.raw.borrow().as_ref() {
            return Ok(r.clone());
        }
        let r = self
            .store
            .message_bytes(&self.info.blob)
            .map_err(SearchError::Store)?;
        *self.raw.borrow_mut() = Some(r.clone());
        Ok(r)
    }

    fn header(&self) -> Result<Vec<u8>, SearchError> {
        let raw = self.raw()?;
        let end = self.meta()?.root.body_offset as usize;
        Ok(raw[..end.min(raw.len())].to_vec())
    }

    fn meta(&self) -> Result<std::sync::Arc<MessageMeta>, SearchError> {
        if let Some(m) = self.meta.borrow().as_ref() {
            return Ok(m.clone());
        }
        let m = self
            .store
            .message_meta(&self.info.blob)
            .map_err(SearchError::Store)?;
        *self.meta.borrow_mut() = Some(m.clone());
        Ok(m)
    }

    /// The date of the Date: header (in its own time zone), or the internal date.
    fn sent_date(&self) -> Result<NaiveDate, SearchError> {
        let meta = self.meta()?;
        if let Some(d) = meta.envelope.date.as_deref()
            && let Ok(dt) = chrono::DateTime::parse_from_rfc2822(d.trim())
        {
            return Ok(dt.date_naive());
        }
        Ok(internal_date(self.info))
    }
}

fn internal_date(m: &MessageInfo) -> NaiveDate {
    chrono::DateTime::from_timestamp(m.internal_date, 0)
        .map(|d| d.date_naive())
        .unwrap_or_default()
}

fn text_of(a: &impl AsRef<[u8]>) -> Vec<u8> {
    a.as_ref().to_vec()
}

impl<'k> Matcher<'k> {
    pub(crate) fn new(keys: &'k [SearchKey<'k>], count: u32, max_uid: u32) -> Self {
        Matcher {
            keys,
            count,
            max_uid,
        }
    }

    /// Whether any key is MODSEQ (the response then carries the highest MODSEQ).
    pub(crate) fn uses_modseq(&self) -> bool {
        fn any(k: &SearchKey<'_>) -> bool {
            match k {
                SearchKey::ModSequence { .. } => true,
                SearchKey::And(v) => v.as_ref().iter().any(any),
                SearchKey::Or(a, b) => any(a) || any(b),
                SearchKey::Not(a) => any(a),
                _ => false,
            }
        }
        self.keys.iter().any(any)
    }

    pub(crate) fn matches(
        &self,
        store: &Store,
        seq: u32,
        info: &MessageInfo,
    ) -> Result<bool, SearchError> {
        let l = Loaded {
            store,
            info,
            raw: RefCell::new(None),
            meta: RefCell::new(None),
        };
        for k in self.keys {
            if !self.eval(k, seq, &l)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn header_has(&self, l: &Loaded<'_>, field: &str, needle: &[u8]) -> Result<bool, SearchError> {
        let header = l.header()?;
        let values = header_values(&header, field);
        if needle.is_empty() {
            return Ok(!values.is_empty());
        }
        if values.iter().any(|v| contains_ci(v.as_bytes(), needle)) {
            return Ok(true);
        }
        // Also match the decoded form (RFC 2047 encoded words) the parser produced.
        let meta = l.meta()?;
        let e = &meta.envelope;
        let addrs = |v: &[tandem_store::Address]| {
            v.iter().any(|a| {
                let full = format!(
                    "{} <{}@{}>",
                    a.name.as_deref().unwrap_or(""),
                    a.mailbox.as_deref().unwrap_or(""),
                    a.host.as_deref().unwrap_or("")
                );
                contains_ci(full.as_bytes(), needle)
            })
        };
        Ok(match field.to_ascii_lowercase().as_str() {
            "subject" => e
                .subject
                .as_deref()
                .is_some_and(|s| contains_ci(s.as_bytes(), needle)),
            "from" => addrs(&e.from),
            "to" => addrs(&e.to),
            "cc" => addrs(&e.cc),
            "bcc" => addrs(&e.bcc),
            _ => false,
        })
    }

    fn eval(&self, k: &SearchKey<'_>, seq: u32, l: &Loaded<'_>) -> Result<bool, SearchError> {
        let m = l.info;
        let has = |f: Flag| m.flags.contains(&f);
        Ok(match k {
            SearchKey::All => true,
            SearchKey::And(v) => {
                for k in v.as_ref() {
                    if !self.eval(k, seq, l)? {
                        return Ok(false);
                    }
                }
                true
            }
            SearchKey::Or(a, b) => self.eval(a, seq, l)? || self.eval(b, seq, l)?,
            SearchKey::Not(a) => !self.eval(a, seq, l)?,
            SearchKey::SequenceSet(s) => in_ranges(&ranges(s, self.count), seq),
            SearchKey::Uid(s) => in_ranges(&ranges(s, self.max_uid), m.uid),
            SearchKey::Answered => has(Flag::Answered),
            SearchKey::Unanswered => !has(Flag::Answered),
            SearchKey::Deleted => has(Flag::Deleted),
            SearchKey::Undeleted => !has(Flag::Deleted),
            SearchKey::Draft => has(Flag::Draft),
            SearchKey::Undraft => !has(Flag::Draft),
            SearchKey::Flagged => has(Flag::Flagged),
            SearchKey::Unflagged => !has(Flag::Flagged),
            SearchKey::Seen => has(Flag::Seen),
            SearchKey::Unseen => !has(Flag::Seen),
            // \Recent is not kept (see spec/imap.md): nothing is recent, everything is old.
            SearchKey::Recent | SearchKey::New => false,
            SearchKey::Old => true,
            SearchKey::Keyword(a) => has(Flag::Keyword(a.inner().to_owned())),
            SearchKey::Unkeyword(a) => !has(Flag::Keyword(a.inner().to_owned())),
            SearchKey::Larger(n) => m.size > *n,
            SearchKey::Smaller(n) => m.size < *n,
            SearchKey::Before(d) => internal_date(m) < *d.as_ref(),
            SearchKey::On(d) => internal_date(m) == *d.as_ref(),
            SearchKey::Since(d) => internal_date(m) >= *d.as_ref(),
            SearchKey::SentBefore(d) => l.sent_date()? < *d.as_ref(),
            SearchKey::SentOn(d) => l.sent_date()? == *d.as_ref(),
            SearchKey::SentSince(d) => l.sent_date()? >= *d.as_ref(),
            SearchKey::From(s) => self.header_has(l, "from", &text_of(s))?,
            SearchKey::To(s) => self.header_has(l, "to", &text_of(s))?,
            SearchKey::Cc(s) => self.header_has(l, "cc", &text_of(s))?,
            SearchKey::Bcc(s) => self.header_has(l, "bcc", &text_of(s))?,
            SearchKey::Subject(s) => self.header_has(l, "subject", &text_of(s))?,
            SearchKey::Header(name, value) => {
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                self.header_has(l, &name, &text_of(value))?
            }
            SearchKey::Body(s) => {
                let raw = l.raw()?;
                let start = (l.meta()?.root.body_offset as usize).min(raw.len());
                contains_ci(&raw[start..], &text_of(s))
            }
            SearchKey::Text(s) => contains_ci(&l.raw()?, &text_of(s)),
            SearchKey::ModSequence { modseq, .. } => m.modseq.0 >= *modseq,
        })
    }
}
