//! Client operations on one node, as a workload: appends, flag changes, expunges, copies,
//! moves and mailbox operations, with the bookkeeping the invariant checks need (what was
//! acknowledged, what an operation removed, which mailboxes were renamed).

use std::collections::BTreeSet;

use tandem_store::{BlobHash, Flag, FlagOp, MailboxId, Store, Timestamp};

use crate::invariants::{ACCOUNT, Checker};

/// Mailbox names the workload uses (hierarchy included, so renames move children).
pub const NAMES: [&str; 6] = ["INBOX", "Archive", "Work", "Lists", "Lists/rust", "Old"];

/// One client operation. Indices pick names (`mbox`, `name`, `from`, `to` into [`NAMES`]),
/// messages (`pick`, modulo the mailbox size) and flags (`flag`: \\Seen, \\Flagged, `$Work`).
#[derive(Debug, Clone)]
#[allow(missing_docs)] // the fields are described above
pub enum Action {
    /// APPEND a new message.
    Append { mbox: usize },
    /// STORE +FLAGS / -FLAGS on one message.
    Flag {
        mbox: usize,
        pick: usize,
        flag: usize,
        set: bool,
    },
    /// EXPUNGE one message.
    Expunge { mbox: usize, pick: usize },
    /// COPY or MOVE one message.
    Copy {
        from: usize,
        pick: usize,
        to: usize,
        mv: bool,
    },
    /// CREATE.
    Create { name: usize },
    /// RENAME.
    Rename { from: usize, to: usize },
    /// DELETE.
    Delete { name: usize },
}

/// Bookkeeping across a run.
#[derive(Default)]
pub struct Workload {
    counter: u32,
    /// Bodies of every acknowledged APPEND.
    pub appended: BTreeSet<BlobHash>,
    /// Bodies an operation removed (expunged, moved away, in a deleted mailbox).
    pub removed: BTreeSet<BlobHash>,
}

fn body(n: u32) -> Vec<u8> {
    format!("Subject: m{n}\r\nMessage-ID: <{n}@sim>\r\n\r\nbody {n}\r\n").into_bytes()
}

impl Workload {
    /// Runs `a` on `s`. Refusals a client could get (no such mailbox, name taken) are not
    /// errors; anything else the store returns is.
    pub fn apply(
        &mut self,
        s: &mut Store,
        a: &Action,
        now: Timestamp,
        chk: &mut Checker,
    ) -> Result<(), String> {
        let id_of = |s: &Store, i: usize| s.mailbox_id(ACCOUNT, NAMES[i]).ok();
        let pick_uid = |s: &Store, mb: &MailboxId, pick: usize| {
            let uids = s.uids(ACCOUNT, mb).unwrap_or_default();
            (!uids.is_empty()).then(|| uids[pick % uids.len()])
        };
        let e = |e: tandem_store::Error| e.to_string();
        match *a {
            Action::Append { mbox } => {
                if let Some(mb) = id_of(s, mbox) {
                    self.counter += 1;
                    let raw = body(self.counter);
                    s.append(ACCOUNT, &mb, &raw, &[], 0, now).map_err(e)?;
                    self.appended.insert(BlobHash::of(&raw));
                }
            }
            Action::Flag {
                mbox,
                pick,
                flag,
                set,
            } => {
                if let Some(mb) = id_of(s, mbox)
                    && let Some(u) = pick_uid(s, &mb, pick)
                {
                    let f = [Flag::Seen, Flag::Flagged, Flag::Keyword("$Work".into())][flag % 3]
                        .clone();
                    let op = if set { FlagOp::Add } else { FlagOp::Remove };
                    s.store_flags(ACCOUNT, &mb, &[u], op, &[f], None, now)
                        .map_err(e)?;
                }
            }
            Action::Expunge { mbox, pick } => {
                if let Some(mb) = id_of(s, mbox)
                    && let Some(u) = pick_uid(s, &mb, pick)
                {
                    self.removed
                        .insert(s.message(ACCOUNT, &mb, u).map_err(e)?.blob);
                    s.expunge(ACCOUNT, &mb, &[u], now).map_err(e)?;
                }
            }
            Action::Copy { from, pick, to, mv } => {
                if let (Some(a), Some(b)) = (id_of(s, from), id_of(s, to))
                    && let Some(u) = pick_uid(s, &a, pick)
                {
                    if mv {
                        s.move_messages(ACCOUNT, &a, &[u], &b, now).map_err(e)?;
                    } else {
                        s.copy(ACCOUNT, &a, &[u], &b, now).map_err(e)?;
                    }
                }
            }
            Action::Create { name } => {
                let _ = s.create_mailbox(ACCOUNT, NAMES[name], now);
            }
            Action::Rename { from, to } => {
                let prefix = format!("{}/", NAMES[from]);
                let moving: Vec<MailboxId> = s
                    .list_mailboxes(ACCOUNT)
                    .map_err(e)?
                    .into_iter()
                    .filter(|m| {
                        m.name.as_str() == NAMES[from] || m.name.as_str().starts_with(&prefix)
                    })
                    .map(|m| m.id)
                    .collect();
                if s.rename_mailbox(ACCOUNT, NAMES[from], NAMES[to], now)
                    .is_ok()
                {
                    for m in moving {
                        chk.renamed(&m.0);
                    }
                }
            }
            Action::Delete { name } => {
                if let Some(mb) = id_of(s, name) {
                    let blobs: Vec<BlobHash> = s
                        .messages(ACCOUNT, &mb)
                        .map_err(e)?
                        .iter()
                        .map(|m| m.blob)
                        .collect();
                    if s.delete_mailbox(ACCOUNT, NAMES[name], now).is_ok() {
                        self.removed.extend(blobs);
                    }
                }
            }
        }
        Ok(())
    }

    /// I6: every acknowledged message that no operation removed is visible on `s`.
    pub fn check_nothing_lost(&self, s: &Store) -> Result<(), String> {
        let present = crate::invariants::bodies(s);
        for b in self.appended.difference(&self.removed) {
            if !present.contains(b) {
                return Err(format!("I6: message {b} lost"));
            }
        }
        Ok(())
    }
}
