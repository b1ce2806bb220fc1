//! Messages: append, flags, expunge, copy, move, and the IMAP view reads.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{ROOT, ScalarValue, transaction::Transactable};

use crate::blob::BlobHash;
use crate::clock::{Modseq, Timestamp};
use crate::doc::{self, Creation, MAX_NODES};
use crate::error::{Error, Result};
use crate::flags::{Flag, FlagOp, FlagSet};
use crate::meta::MessageMeta;
use crate::store::Store;
use crate::view::{Instance, MailboxView};
use crate::{AppendOutcome, CopyOutcome, MailboxId, MailboxStatus, MessageInfo, StoreOutcome};

/// A message to append.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The raw RFC 5322 bytes, stored unchanged.
    pub raw: &'a [u8],
    /// Initial flags.
    pub flags: Vec<Flag>,
    /// INTERNALDATE, seconds since the Unix epoch.
    pub internal_date: i64,
}

/// Writes to shard documents, grouped by document, applied as one durable step.
#[derive(Default)]
pub(crate) struct Batch {
    puts: BTreeMap<String, Vec<(String, ScalarValue)>>,
    touched: BTreeMap<String, BTreeSet<u32>>,
}

impl Batch {
    pub(crate) fn put(
        &mut self,
        account: &str,
        mailbox: &str,
        orig: u32,
        field: String,
        v: ScalarValue,
    ) {
        let key = doc::shard_key(account, mailbox, orig);
        self.touched.entry(key.clone()).or_default().insert(orig);
        self.puts
            .entry(key)
            .or_default()
            .push((format!("{orig}.{field}"), v));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.puts.is_empty()
    }
}

/// The smallest UID of `slot`'s residue class above `base`.
pub(crate) fn next_uid(base: u32, slot: u8) -> Option<u32> {
    let n = MAX_NODES as i64;
    let q = ((base as i64 - slot as i64 - 1).div_euclid(n) + 1).max(0);
    u32::try_from(q * n + slot as i64 + 1).ok()
}

pub(crate) fn email_id(blob: &BlobHash) -> String {
    format!("M{}", &blob.to_hex()[..24])
}

fn info(uid: u32, i: &Instance) -> MessageInfo {
    MessageInfo {
        uid,
        modseq: Modseq(i.modseq),
        flags: i.flags.clone(),
        internal_date: i.date,
        size: i.size,
        blob: i.blob,
        email_id: email_id(&i.blob),
    }
}

impl Store {
    /// Appends one message to `mailbox` and returns its UID once it is durable.
    pub fn append(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        raw: &[u8],
        flags: &[Flag],
        internal_date: i64,
        now: Timestamp,
    ) -> Result<AppendOutcome> {
        let msg = NewMessage {
            raw,
            flags: flags.to_vec(),
            internal_date,
        };
        let mut out = self.append_batch(account, mailbox, &[msg], now)?;
        out.pop()
            .ok_or_else(|| Error::NoSuchMailbox(mailbox.0.clone()))
    }

    /// Appends several messages as one durable step (one journal fsync): for imports.
    pub fn append_batch(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        msgs: &[NewMessage<'_>],
        now: Timestamp,
    ) -> Result<Vec<AppendOutcome>> {
        let limit = self.cfg.max_message_size;
        for m in msgs {
            if m.raw.len() as u64 > limit {
                return Err(Error::MessageTooLarge {
                    size: m.raw.len() as u64,
                    limit,
                });
            }
        }
        let (uidvalidity, mut base) = {
            let (uv, view) = self.writable(account, mailbox)?;
            (uv, view.max_uid.max(view.floor.saturating_sub(1)))
        };
        let mut items = Vec::with_capacity(msgs.len());
        for m in msgs {
            let uid = next_uid(base, self.cfg.slot)
                .ok_or_else(|| Error::UidsExhausted(mailbox.0.clone()))?;
            base = uid;
            items.push((uid, m));
        }
        self.write_new(account, mailbox, uidvalidity, &items, now)
    }

    /// Stores the bodies and writes one instance per `(uid, message)` in one durable step.
    fn write_new(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        uidvalidity: u32,
        items: &[(u32, &NewMessage<'_>)],
        now: Timestamp,
    ) -> Result<Vec<AppendOutcome>> {
        let mut stored = Vec::with_capacity(items.len());
        for (_, m) in items {
            let (h, meta) = self.blobs.put(m.raw)?;
            stored.push((h, meta.size));
        }
        let modseq = self.hlc.tick(now);
        let mut batch = Batch::default();
        let mut out = Vec::with_capacity(items.len());
        for ((uid, m), (blob, size)) in items.iter().zip(stored) {
            let c = Creation {
                blob,
                date: m.internal_date,
                modseq: modseq.0,
                size,
            };
            batch.put(
                account,
                &mailbox.0,
                *uid,
                "c".into(),
                ScalarValue::Bytes(c.encode()),
            );
            for f in m.flags.iter().collect::<FlagSet>().iter() {
                batch.put(
                    account,
                    &mailbox.0,
                    *uid,
                    format!("f{f}"),
                    ScalarValue::Int(modseq.0 as i64),
                );
            }
            out.push(AppendOutcome {
                uidvalidity,
                uid: *uid,
                modseq,
            });
        }
        self.apply_batch(batch, now)?;
        Ok(out)
    }

    /// Imports messages with the UIDs (and optionally the UIDVALIDITY) they had on another
    /// server, so that clients switching to Tandem keep their caches (from a Dovecot maildir's
    /// `dovecot-uidlist`, say). One durable step.
    ///
    /// The mailbox must never have held a message (no UID was ever used in it), and the UIDs
    /// must be strictly ascending. An import is an administrator's operation: run it on one
    /// node before clients or deliveries use that mailbox on any node, because a UID chosen here
    /// is not from this node's residue class and another node delivering into the same mailbox
    /// at the same moment could pick the same one. Returns [`Error::InvalidImport`] when the
    /// preconditions do not hold (nothing is written then).
    pub fn import_batch(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        uidvalidity: Option<u32>,
        msgs: &[(u32, NewMessage<'_>)],
        now: Timestamp,
    ) -> Result<Vec<AppendOutcome>> {
        let limit = self.cfg.max_message_size;
        let (current_uv, max_uid, used) = {
            let (uv, view) = self.writable(account, mailbox)?;
            (uv, view.max_uid, !view.instances.is_empty())
        };
        if used || max_uid > 0 {
            return Err(Error::InvalidImport(
                "the mailbox already holds (or held) messages: UIDs cannot be kept".into(),
            ));
        }
        let mut last = 0u32;
        for (uid, m) in msgs {
            if *uid <= last {
                return Err(Error::InvalidImport(format!(
                    "UIDs must be ascending and non-zero ({uid} after {last})"
                )));
            }
            last = *uid;
            if m.raw.len() as u64 > limit {
                return Err(Error::MessageTooLarge {
                    size: m.raw.len() as u64,
                    limit,
                });
            }
        }
        if uidvalidity == Some(0) {
            return Err(Error::InvalidImport("UIDVALIDITY 0 is not valid".into()));
        }
        if let Some(uv) = uidvalidity
            && uv != current_uv
        {
            self.set_uidvalidity(account, mailbox, uv, now)?;
        }
        let uidvalidity = uidvalidity.unwrap_or(current_uv);
        let items: Vec<(u32, &NewMessage<'_>)> = msgs.iter().map(|(u, m)| (*u, m)).collect();
        self.write_new(account, mailbox, uidvalidity, &items, now)
    }

    /// Changes flags of the messages with `uids` (`+FLAGS`, `-FLAGS` or `FLAGS`). With
    /// `unchanged_since` (CONDSTORE), messages modified after it are left alone and reported.
    /// UIDs that do not exist are ignored, as IMAP requires.
    #[allow(clippy::too_many_arguments)]
    pub fn store_flags(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        uids: &[u32],
        op: FlagOp,
        flags: &[Flag],
        unchanged_since: Option<Modseq>,
        now: Timestamp,
    ) -> Result<StoreOutcome> {
        let wanted: FlagSet = flags.iter().collect();
        // (uid, original uid, flags to set (true) or clear (false))
        type Plan = Vec<(u32, u32, Vec<(Flag, bool)>)>;
        let mut plan: Plan = Vec::new();
        let mut modified = Vec::new();
        {
            let (_, view) = self.writable(account, mailbox)?;
            for &uid in uids {
                let Some((orig, inst)) = view.by_uid(uid) else {
                    continue;
                };
                if unchanged_since.is_some_and(|u| inst.modseq > u.0) {
                    modified.push(uid);
                    continue;
                }
                let mut changes = Vec::new();
                match op {
                    FlagOp::Add => changes.extend(
                        wanted
                            .iter()
                            .filter(|f| !inst.flags.contains(f))
                            .map(|f| (f, true)),
                    ),
                    FlagOp::Remove => changes.extend(
                        wanted
                            .iter()
                            .filter(|f| inst.flags.contains(f))
                            .map(|f| (f, false)),
                    ),
                    FlagOp::Replace => {
                        changes.extend(
                            wanted
                                .iter()
                                .filter(|f| !inst.flags.contains(f))
                                .map(|f| (f, true)),
                        );
                        changes.extend(
                            inst.flags
                                .iter()
                                .filter(|f| !wanted.contains(f))
                                .map(|f| (f, false)),
                        );
                    }
                }
                if !changes.is_empty() {
                    plan.push((uid, orig, changes));
                }
            }
        }
        let mut updated_uids = Vec::new();
        if !plan.is_empty() {
            let m = self.hlc.tick(now).0 as i64;
            let mut batch = Batch::default();
            for (uid, orig, changes) in plan {
                for (f, set) in changes {
                    batch.put(
                        account,
                        &mailbox.0,
                        orig,
                        format!("f{f}"),
                        ScalarValue::Int(if set { m } else { -m }),
                    );
                }
                updated_uids.push(uid);
            }
            self.apply_batch(batch, now)?;
        }
        let view = self.view(account, mailbox)?;
        let updated = updated_uids
            .into_iter()
            .filter_map(|u| view.by_uid(u).map(|(_, i)| info(u, i)))
            .collect();
        Ok(StoreOutcome { updated, modified })
    }

    /// Expunges the messages with `uids`; returns the UIDs that were expunged.
    pub fn expunge(
        &mut self,
        account: &str,
        mailbox: &MailboxId,
        uids: &[u32],
        now: Timestamp,
    ) -> Result<Vec<u32>> {
        let targets: Vec<(u32, u32)> = {
            let (_, view) = self.writable(account, mailbox)?;
            uids.iter()
                .filter_map(|&u| view.by_uid(u).map(|(o, _)| (u, o)))
                .collect()
        };
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let m = self.hlc.tick(now);
        let mut batch = Batch::default();
        for (_, o) in &targets {
            batch.put(account, &mailbox.0, *o, "x".into(), ScalarValue::Uint(m.0));
        }
        self.apply_batch(batch, now)?;
        Ok(targets.into_iter().map(|(u, _)| u).collect())
    }

    /// Copies the messages with `uids` from `from` into `to` (RFC 3501 COPY; the response data
    /// of UIDPLUS COPYUID). Bodies are not copied: both instances name the same blob.
    pub fn copy(
        &mut self,
        account: &str,
        from: &MailboxId,
        uids: &[u32],
        to: &MailboxId,
        now: Timestamp,
    ) -> Result<CopyOutcome> {
        self.copy_or_move(account, from, uids, to, false, now)
    }

    /// Moves the messages with `uids` from `from` to `to` (RFC 6851): a copy and an expunge in
    /// one durable step.
    pub fn move_messages(
        &mut self,
        account: &str,
        from: &MailboxId,
        uids: &[u32],
        to: &MailboxId,
        now: Timestamp,
    ) -> Result<CopyOutcome> {
        self.copy_or_move(account, from, uids, to, true, now)
    }

    fn copy_or_move(
        &mut self,
        account: &str,
        from: &MailboxId,
        uids: &[u32],
        to: &MailboxId,
        expunge: bool,
        now: Timestamp,
    ) -> Result<CopyOutcome> {
        let sources: Vec<(u32, u32, Instance)> = {
            let (_, view) = self.writable(account, from)?;
            uids.iter()
                .filter_map(|&u| view.by_uid(u).map(|(o, i)| (u, o, i.clone())))
                .collect()
        };
        let (uidvalidity, mut base) = {
            let (uv, view) = self.writable(account, to)?;
            (uv, view.max_uid.max(view.floor.saturating_sub(1)))
        };
        if sources.is_empty() {
            return Ok(CopyOutcome {
                uidvalidity,
                pairs: Vec::new(),
            });
        }
        let m = self.hlc.tick(now);
        let mut batch = Batch::default();
        let mut pairs = Vec::new();
        for (uid, orig, inst) in sources {
            let new =
                next_uid(base, self.cfg.slot).ok_or_else(|| Error::UidsExhausted(to.0.clone()))?;
            base = new;
            let c = Creation {
                blob: inst.blob,
                date: inst.date,
                modseq: m.0,
                size: inst.size,
            };
            batch.put(
                account,
                &to.0,
                new,
                "c".into(),
                ScalarValue::Bytes(c.encode()),
            );
            for f in inst.flags.iter() {
                batch.put(
                    account,
                    &to.0,
                    new,
                    format!("f{f}"),
                    ScalarValue::Int(m.0 as i64),
                );
            }
            if expunge {
                batch.put(account, &from.0, orig, "x".into(), ScalarValue::Uint(m.0));
            }
            pairs.push((uid, new));
        }
        self.apply_batch(batch, now)?;
        Ok(CopyOutcome { uidvalidity, pairs })
    }

    /// Commits `batch`: one automerge change per document, one journal record for all.
    pub(crate) fn apply_batch(&mut self, batch: Batch, now: Timestamp) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut record = Vec::new();
        for (key, puts) in batch.puts {
            let res = (|| -> Result<()> {
                let d = self.doc_mut(&key)?;
                let mut tx = d.transaction();
                for (k, v) in puts {
                    tx.put(ROOT, k, v).map_err(|e| Error::corrupt(&key, e))?;
                }
                tx.commit_with(Store::commit_opts(now));
                if let Some(c) = d.get_last_local_change() {
                    record.push((key.clone(), c.raw_bytes().to_vec()));
                }
                Ok(())
            })();
            if let Err(e) = res {
                self.evict(record.into_iter().map(|(k, _)| k).chain([key]));
                return Err(e);
            }
        }
        self.persist(record)?;
        for (key, origs) in batch.touched {
            self.refresh_instances(&key, origs.into_iter().collect())?;
        }
        self.maybe_compact()
    }

    // ----- reads -------------------------------------------------------------------------

    /// The view of a mailbox that clients can see.
    pub(crate) fn view(&self, account: &str, mailbox: &MailboxId) -> Result<&MailboxView> {
        self.writable(account, mailbox).map(|(_, v)| v)
    }

    fn writable(&self, account: &str, mailbox: &MailboxId) -> Result<(u32, &MailboxView)> {
        let acct = self.account(account)?;
        let m = acct
            .mailboxes
            .get(&mailbox.0)
            .filter(|m| m.display.is_some())
            .ok_or_else(|| Error::NoSuchMailbox(mailbox.0.clone()))?;
        let uv = m.doc.as_ref().map_or(0, |d| d.uidvalidity);
        Ok((uv, &m.view))
    }

    /// SELECT/STATUS data of a mailbox.
    pub fn status(&self, account: &str, mailbox: &MailboxId) -> Result<MailboxStatus> {
        let (uidvalidity, v) = self.writable(account, mailbox)?;
        let exists = v.by_uid.len() as u32;
        let unseen = v
            .visible()
            .filter(|(_, i)| !i.flags.contains(&Flag::Seen))
            .count() as u32;
        let name = self
            .account(account)?
            .mailboxes
            .get(&mailbox.0)
            .and_then(|m| m.display.clone())
            .unwrap_or_default();
        Ok(MailboxStatus {
            id: mailbox.clone(),
            name,
            uidvalidity,
            uidnext: v.uidnext(),
            highest_modseq: Modseq(v.highest_modseq.max(1)),
            exists,
            unseen,
        })
    }

    /// EXISTS and HIGHESTMODSEQ only: what a session checks after every command to see
    /// whether anything changed. Unlike [`Store::status`] it does not count unseen messages,
    /// so it costs nothing per message.
    pub fn counters(&self, account: &str, mailbox: &MailboxId) -> Result<(u32, Modseq)> {
        let v = self.view(account, mailbox)?;
        Ok((v.by_uid.len() as u32, Modseq(v.highest_modseq.max(1))))
    }

    /// UIDs of the messages in the mailbox, ascending (message sequence number = index + 1).
    pub fn uids(&self, account: &str, mailbox: &MailboxId) -> Result<Vec<u32>> {
        Ok(self
            .view(account, mailbox)?
            .by_uid
            .keys()
            .copied()
            .collect())
    }

    /// One message by UID.
    pub fn message(&self, account: &str, mailbox: &MailboxId, uid: u32) -> Result<MessageInfo> {
        let v = self.view(account, mailbox)?;
        v.by_uid(uid)
            .map(|(_, i)| info(uid, i))
            .ok_or(Error::NoSuchMessage(uid))
    }

    /// Every message of the mailbox, in UID order.
    pub fn messages(&self, account: &str, mailbox: &MailboxId) -> Result<Vec<MessageInfo>> {
        Ok(self
            .view(account, mailbox)?
            .visible()
            .map(|(u, i)| info(u, i))
            .collect())
    }

    /// Messages whose MODSEQ is greater than `since` (CONDSTORE CHANGEDSINCE), in UID order.
    pub fn changed_since(
        &self,
        account: &str,
        mailbox: &MailboxId,
        since: Modseq,
    ) -> Result<Vec<MessageInfo>> {
        Ok(self
            .view(account, mailbox)?
            .visible()
            .filter(|(_, i)| i.modseq > since.0)
            .map(|(u, i)| info(u, i))
            .collect())
    }

    /// UIDs that stopped naming a message after `since` (QRESYNC VANISHED): expunged messages,
    /// and UIDs a message was shown under before it was renumbered. Ascending, no duplicates.
    pub fn vanished_since(
        &self,
        account: &str,
        mailbox: &MailboxId,
        since: Modseq,
    ) -> Result<Vec<u32>> {
        let v = self.view(account, mailbox)?;
        let mut out: Vec<u32> = Vec::new();
        for i in v.instances.values() {
            if i.expunged && !i.pending && i.modseq > since.0 {
                out.push(i.uid);
            }
            out.extend(i.olds.iter().filter(|(_, s)| *s > since.0).map(|(u, _)| *u));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// The raw bytes of a message, verified against its hash.
    pub fn message_bytes(&self, blob: &BlobHash) -> Result<Vec<u8>> {
        self.blobs.raw(blob)
    }

    /// The parsed metadata of a message (envelope, MIME structure).
    pub fn message_meta(&self, blob: &BlobHash) -> Result<std::sync::Arc<MessageMeta>> {
        self.blobs.meta(blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_classes() {
        assert_eq!(next_uid(0, 0), Some(1));
        assert_eq!(next_uid(1, 0), Some(17));
        assert_eq!(next_uid(16, 0), Some(17));
        assert_eq!(next_uid(17, 0), Some(33));
        assert_eq!(next_uid(0, 1), Some(2));
        assert_eq!(next_uid(2, 1), Some(18));
        assert_eq!(next_uid(5, 15), Some(16));
        assert_eq!(next_uid(16, 15), Some(32));
        assert_eq!(next_uid(u32::MAX - 3, 0), None);
        for slot in 0..16u8 {
            for base in 0..200u32 {
                let u = next_uid(base, slot).unwrap();
                assert!(u > base && (u - 1) % 16 == slot as u32 && u - base <= 16);
            }
        }
    }
}
