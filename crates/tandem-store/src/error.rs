//! The store's error type: one enum for the public API, one variant per thing a caller can act on.

use std::path::PathBuf;

use crate::codec::CodecError;

/// Everything that can go wrong in a store operation.
///
/// No operation leaves a half-written state behind when it returns an error: either its journal
/// record is durable and the in-memory view reflects it, or neither happened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed (disk full, permissions, read-only file system, ...).
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Another process has this store open.
    #[error("store {0} is in use by another process")]
    Locked(PathBuf),
    /// A mailbox name is not acceptable.
    #[error("invalid mailbox name {name:?}: {reason}")]
    InvalidMailboxName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The named account does not exist.
    #[error("no such account {0:?}")]
    NoSuchAccount(String),
    /// An account name is not acceptable.
    #[error("invalid account name {0:?}")]
    InvalidAccountName(String),
    /// The named mailbox does not exist.
    #[error("no such mailbox {0:?}")]
    NoSuchMailbox(String),
    /// A mailbox of that name already exists.
    #[error("mailbox {0:?} already exists")]
    MailboxExists(String),
    /// The mailbox has child mailboxes and cannot be deleted.
    #[error("mailbox {0:?} has child mailboxes; delete them first")]
    HasChildren(String),
    /// INBOX cannot be deleted or renamed.
    #[error("INBOX cannot be {0}")]
    InboxImmutable(&'static str),
    /// The mailbox is a recovery folder (deleted on one node while mail arrived on another).
    #[error("mailbox {0:?} is a recovery folder: move its messages elsewhere, then delete it")]
    Recovered(String),
    /// A flag or keyword is not a valid IMAP atom.
    #[error("invalid flag {0:?}")]
    InvalidFlag(String),
    /// No message with that UID in the mailbox.
    #[error("no message with UID {0}")]
    NoSuchMessage(u32),
    /// A message is larger than the store accepts.
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The message size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// A node slot outside 0..16.
    #[error("node slot {0} is out of range (0..16)")]
    InvalidSlot(u8),
    /// A blob's content does not match the hash it was announced under.
    #[error("blob content does not match hash {expected}")]
    BlobHashMismatch {
        /// The hash that was expected.
        expected: String,
    },
    /// A blob is missing from the blob store.
    #[error("blob {0} is not in the store")]
    MissingBlob(String),
    /// On-disk state could not be decoded.
    #[error("corrupt store file {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// A document key received from a peer is not one this store understands.
    #[error("invalid document key {0:?}")]
    InvalidDocKey(String),
    /// Changes received from a peer could not be applied.
    #[error("rejected changes for {doc}: {detail}")]
    BadChanges {
        /// The document.
        doc: String,
        /// What automerge said.
        detail: String,
    },
    /// UIDs of this mailbox are exhausted for this node (more than 268 million allocations).
    #[error("UID space of mailbox {0:?} is exhausted on this node")]
    UidsExhausted(String),
    /// An import with kept UIDs cannot be done as asked.
    #[error("import refused: {0}")]
    InvalidImport(String),
    /// A part of a body from a peer does not fit the body it claims to belong to.
    #[error("invalid body part: {0}")]
    InvalidPart(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, detail: impl ToString) -> Self {
        Error::Corrupt {
            path: path.into(),
            detail: detail.to_string(),
        }
    }

    /// True when the error came from the disk being full or read-only: the operation was not
    /// performed and can be retried once space is back (IMAP `NO`, LMTP `452`).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(28) /* ENOSPC */ | Some(30) /* EROFS */ | Some(122) /* EDQUOT */
                ) || matches!(
                    source.kind(),
                    std::io::ErrorKind::StorageFull
                        | std::io::ErrorKind::ReadOnlyFilesystem
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::Interrupted
                )
            }
            _ => false,
        }
    }
}

impl From<(PathBuf, CodecError)> for Error {
    fn from((path, e): (PathBuf, CodecError)) -> Self {
        Error::corrupt(path, e)
    }
}

/// Shorthand for results of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
