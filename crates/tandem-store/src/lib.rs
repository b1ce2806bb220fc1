//! # tandem-store
//!
//! An embeddable mail store whose state can be replicated between nodes that all accept writes:
//! accounts, mailboxes, messages, flags, UIDs, UIDVALIDITY and MODSEQs kept as
//! [automerge](https://docs.rs/automerge) CRDT documents, message bodies in a content-addressed
//! blob store. Two stores that exchange their changes (see [`Store::manifest`],
//! [`Store::changes_for`], [`Store::apply_changes_batch`], [`Store::put_blob`]) converge to the same
//! mailboxes, UIDs, MODSEQs and flags, while every IMAP client of either keeps seeing UIDs that
//! never name two messages, never go backwards, and a UIDVALIDITY that does not change.
//!
//! ```
//! use tandem_store::{Flag, Store, StoreConfig, Timestamp};
//!
//! # fn main() -> Result<(), tandem_store::Error> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let now = Timestamp(1_800_000_000_000); // the store never reads the clock: you pass time in
//! let mut store = Store::open(dir.path(), StoreConfig::default())?;
//! store.create_account("alice", now)?;
//! let inbox = store.mailbox_id("alice", "INBOX")?;
//! let raw = b"From: bob@example.org\r\nSubject: hi\r\n\r\nHello Alice\r\n";
//! let added = store.append("alice", &inbox, raw, &[Flag::Flagged], now.as_secs(), now)?;
//! assert_eq!(added.uid, 1);
//!
//! let msg = store.message("alice", &inbox, added.uid)?;
//! assert!(msg.flags.contains(&Flag::Flagged));
//! assert_eq!(store.message_bytes(&msg.blob)?, raw);
//! let meta = store.message_meta(&msg.blob)?;
//! assert_eq!(meta.envelope.subject.as_deref(), Some("hi"));
//! # Ok(()) }
//! ```
//!
//! ## What it does not do
//!
//! - No networking and no clock: time is passed into every write, and moving changes between
//!   nodes is the caller's job (the `tandem-sync` layer, or [`Store::sync_pair`] in-process).
//! - No IMAP parsing: it provides what an IMAP server needs (UID maps, CONDSTORE/QRESYNC data,
//!   parsed envelopes and MIME structure), not the protocol.
//! - No `\Recent` flag, and no removal of expunged-message tombstones (they keep UIDs from ever
//!   being reused).
//! - Sharing a store directory between processes: a second [`Store::open`] of the same
//!   directory fails with [`Error::Locked`].
//!
//! The data model and the convergence rules are specified in `spec/data-model.md` and
//! `spec/convergence.md` of the Tandem repository.

mod blob;
mod clock;
mod codec;
mod doc;
mod error;
mod flags;
mod journal;
mod mailboxes;
mod merge;
mod messages;
mod meta;
mod name;
mod store;
mod view;

pub use automerge::ChangeHash;
pub use blob::{BlobHash, BlobStats};
pub use clock::{Modseq, Timestamp};
pub use codec::CodecError;
pub use doc::MAX_NODES;
pub use error::{Error, Result};
pub use flags::{Flag, FlagOp, FlagSet};
pub use merge::PartProgress;
pub use messages::NewMessage;
pub use meta::{Address, Envelope, MessageMeta, MimePart};
pub use name::{DELIMITER, MailboxName};
pub use store::{Store, StoreConfig, StoreEvent};

/// A mailbox's stable identity: it survives renames, and is the same on every node. Exposed to
/// IMAP clients as MAILBOXID (RFC 8474) with an `F` prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxId(pub String);

/// Special-use roles (RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpecialUse {
    /// `\Sent`
    Sent,
    /// `\Drafts`
    Drafts,
    /// `\Trash`
    Trash,
    /// `\Junk`
    Junk,
    /// `\Archive`
    Archive,
}

impl SpecialUse {
    /// The attribute as IMAP writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
        }
    }

    /// Parses an attribute such as `\Sent` (case-insensitive).
    pub fn parse(s: &str) -> Option<SpecialUse> {
        [
            SpecialUse::Sent,
            SpecialUse::Drafts,
            SpecialUse::Trash,
            SpecialUse::Junk,
            SpecialUse::Archive,
        ]
        .into_iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(s))
    }
}

/// A mailbox as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Stable id.
    pub id: MailboxId,
    /// The name clients see.
    pub name: MailboxName,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// Special-use role.
    pub role: Option<SpecialUse>,
    /// Whether the name is subscribed.
    pub subscribed: bool,
    /// Whether other mailboxes are below it.
    pub has_children: bool,
    /// A mailbox that was deleted on one node while messages arrived on another, kept so that
    /// nothing is lost; shown as `Recovered/<name>`.
    pub recovered: bool,
}

/// SELECT / STATUS data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxStatus {
    /// Stable id.
    pub id: MailboxId,
    /// The name clients see.
    pub name: String,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT: every message this node shows from now on has a UID at least this.
    pub uidnext: u32,
    /// HIGHESTMODSEQ (at least 1).
    pub highest_modseq: Modseq,
    /// Number of messages.
    pub exists: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
}

/// One message as the IMAP view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// UID.
    pub uid: u32,
    /// MODSEQ.
    pub modseq: Modseq,
    /// Flags and keywords.
    pub flags: FlagSet,
    /// INTERNALDATE, seconds since the Unix epoch.
    pub internal_date: i64,
    /// RFC822.SIZE.
    pub size: u32,
    /// The body's blob.
    pub blob: BlobHash,
    /// EMAILID (RFC 8474): the same for every copy of the same message bytes, on every node.
    pub email_id: String,
}

/// Result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// UIDVALIDITY of the mailbox (for APPENDUID).
    pub uidvalidity: u32,
    /// The new message's UID.
    pub uid: u32,
    /// Its MODSEQ.
    pub modseq: Modseq,
}

/// Result of a copy or move (for COPYUID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutcome {
    /// UIDVALIDITY of the target mailbox.
    pub uidvalidity: u32,
    /// (source UID, new UID in the target) pairs.
    pub pairs: Vec<(u32, u32)>,
}

/// Result of a flag change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOutcome {
    /// Messages whose flags changed, with their new state.
    pub updated: Vec<MessageInfo>,
    /// UIDs not changed because they were modified after UNCHANGEDSINCE.
    pub modified: Vec<u32>,
}
