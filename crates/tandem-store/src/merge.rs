//! Exchanging state between stores: what the sync layer puts on the wire, and the fix-ups
//! (UID lifts, MODSEQ re-stamps) that keep invariants I1–I3 when a peer's changes arrive.
//! See `spec/convergence.md`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use automerge::{Change, ChangeHash, ROOT, ScalarValue, transaction::Transactable};

use crate::blob::BlobHash;
use crate::clock::{Modseq, Timestamp};
use crate::doc::{self, DocKind};
use crate::error::{Error, Result};
use crate::messages::next_uid;
use crate::store::Store;
use crate::view::Instance;

/// How far above everything known the first lift of a batch lands, per slot rank.
///
/// Two nodes that lift concurrently from the same knowledge then place their lifts in
/// disjoint, slot-ordered ranges: the lower slot sees the higher slot's lifts above its own and
/// accepts them, the higher slot re-lifts the lower's once, and it settles. Without the gap,
/// crossing lifts can push each other below the other's floor forever (found by the replica
/// property test with three nodes).
const LIFT_GAP: u32 = 4096;

/// What [`Store::put_blob_part`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartProgress {
    /// The part was stored; the body's stored bytes now end at `next`, where the next part
    /// starts.
    Stored {
        /// Where the next part starts.
        next: u64,
    },
    /// The part did not start where the stored bytes end (a duplicate, or one from before a
    /// cut), so it was not stored; they end at `next`.
    Ignored {
        /// Where the next part starts.
        next: u64,
    },
    /// The body is stored (now, or it already was).
    Complete,
}

/// Where the next lift of a mailbox goes within one batch of merged changes.
pub(crate) struct LiftBase {
    /// Every UID allocated so far is at most this.
    base: u32,
    /// Added once, to the first lift of the batch.
    gap: u32,
}

impl Store {
    /// Every document this store holds, with its heads. Two stores whose manifests are equal
    /// hold the same state; a sync only needs to touch documents whose heads differ.
    pub fn manifest(&self) -> Vec<(String, Vec<ChangeHash>)> {
        self.docs
            .iter()
            .map(|(k, e)| (k.clone(), e.heads.clone()))
            .collect()
    }

    /// The heads of one document (empty if this store does not have it).
    pub fn heads(&self, key: &str) -> Vec<ChangeHash> {
        self.docs
            .get(key)
            .map(|e| e.heads.clone())
            .unwrap_or_default()
    }

    /// Changes of document `key` that a peer whose heads are `have` lacks, as automerge change
    /// bytes (causal order). Heads this store does not know are ignored, which at worst resends
    /// changes the peer already has; applying those is a no-op.
    pub fn changes_for(&mut self, key: &str, have: &[ChangeHash]) -> Result<Vec<Vec<u8>>> {
        DocKind::parse(key)?;
        if !self.docs.contains_key(key) {
            return Ok(Vec::new());
        }
        let d = self.doc_mut(key)?;
        let known: Vec<ChangeHash> = have
            .iter()
            .filter(|h| d.get_change_meta_by_hash(h).is_some())
            .copied()
            .collect();
        Ok(d.get_changes(&known)
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect())
    }

    /// Applies a peer's changes to document `key`: [`Store::apply_changes_batch`] with one
    /// document.
    pub fn apply_changes(
        &mut self,
        key: &str,
        changes: Vec<Vec<u8>>,
        now: Timestamp,
    ) -> Result<()> {
        self.apply_changes_batch(vec![(key.to_owned(), changes)], now)
            .map(|_| ())
    }

    /// Applies a peer's changes to several documents as one step, then makes the fix-ups this
    /// node owes its clients before anything is shown: a message that would appear below a UID
    /// this node has shown gets a fresh UID of this node's class, and a change that would hide
    /// below a HIGHESTMODSEQ this node has shown gets a fresh MODSEQ. The floor and
    /// HIGHESTMODSEQ are those from before the batch, so documents of one batch do not cause
    /// fix-ups for each other. Everything is journaled as one record before the view changes.
    ///
    /// Returns, per document, the hashes of the changes given (applied now or before): what
    /// the peer is known to have, so a sync layer does not echo them back.
    ///
    /// Malformed input (a bad document key, undecodable change bytes) is refused as a whole
    /// ([`Error::InvalidDocKey`], [`Error::BadChanges`]) and changes nothing.
    pub fn apply_changes_batch(
        &mut self,
        batch: Vec<(String, Vec<Vec<u8>>)>,
        now: Timestamp,
    ) -> Result<Vec<(String, Vec<ChangeHash>)>> {
        let mut decoded = Vec::with_capacity(batch.len());
        let mut given: Vec<(String, Vec<ChangeHash>)> = Vec::with_capacity(batch.len());
        for (key, changes) in batch {
            let kind = DocKind::parse(&key)?;
            let changes: Vec<Change> = changes
                .into_iter()
                .map(|b| {
                    Change::from_bytes(b).map_err(|e| Error::BadChanges {
                        doc: key.clone(),
                        detail: e.to_string(),
                    })
                })
                .collect::<Result<_>>()?;
            if !changes.is_empty() {
                given.push((key.clone(), changes.iter().map(Change::hash).collect()));
                decoded.push((key, kind, changes));
            }
        }
        let mut record: Vec<(String, Vec<u8>)> = Vec::new();
        let mut touched_keys: Vec<String> = Vec::new();
        let mut refresh: Vec<(String, Option<Vec<u32>>)> = Vec::new();
        let mut bases: HashMap<(String, String), LiftBase> = HashMap::new();
        let res = (|| -> Result<()> {
            for (key, kind, changes) in decoded {
                touched_keys.push(key.clone());
                let d = self.doc_mut(&key)?;
                let before = d.get_heads();
                d.apply_changes(changes).map_err(|e| Error::BadChanges {
                    doc: key.clone(),
                    detail: e.to_string(),
                })?;
                // Duplicates, or changes still waiting for their dependencies, apply nothing;
                // waiting ones are journaled once they apply.
                let applied = d.get_changes(&before);
                if applied.is_empty() {
                    continue;
                }
                record.extend(
                    applied
                        .iter()
                        .map(|c| (key.clone(), c.raw_bytes().to_vec())),
                );
                match kind {
                    DocKind::Registry { .. } => refresh.push((key, None)),
                    DocKind::Shard {
                        account, mailbox, ..
                    } => {
                        let origs: BTreeSet<u32> = applied
                            .iter()
                            .flat_map(crate::store::changed_keys)
                            .filter_map(|k| doc::instance_of_key(&k))
                            .filter(|&o| o >= 1 && doc::shard_key(&account, &mailbox, o) == key)
                            .collect();
                        let origs: Vec<u32> = origs.into_iter().collect();
                        if let Some(local) =
                            self.fix_up(&key, &account, &mailbox, &origs, now, &mut bases)?
                        {
                            record.push((key.clone(), local));
                        }
                        refresh.push((key, Some(origs)));
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            self.evict(touched_keys);
            return Err(e);
        }
        self.persist(record)?;
        for (key, origs) in refresh {
            match origs {
                None => self.refresh_registry(&key)?,
                Some(origs) => self.refresh_instances(&key, origs)?,
            }
        }
        self.maybe_compact()?;
        Ok(given)
    }

    /// Blobs that instances here refer to but that this store does not have yet. Until its blob
    /// arrives, an instance is not shown.
    pub fn missing_blobs(&self) -> Vec<BlobHash> {
        let mut v: Vec<BlobHash> = self
            .pending
            .iter()
            .filter(|(_, waiting)| {
                waiting.iter().any(|(a, m, o)| {
                    self.accounts
                        .get(a)
                        .and_then(|acct| acct.mailboxes.get(m))
                        .and_then(|mb| mb.view.instances.get(o))
                        .is_some_and(|i| i.pending && !i.expunged)
                })
            })
            .map(|(h, _)| *h)
            .collect();
        v.sort();
        v
    }

    /// Blobs that messages created by these changes refer to and this store lacks: what a sync
    /// layer should fetch before applying the batch, so the messages can be shown at once.
    /// Undecodable changes are skipped here (applying them reports the error).
    pub fn blobs_needed(&self, batch: &[(String, Vec<Vec<u8>>)]) -> Vec<BlobHash> {
        let mut out = BTreeSet::new();
        for (_, changes) in batch {
            for bytes in changes {
                let Ok(change) = Change::from_bytes(bytes.clone()) else {
                    continue;
                };
                for op in change.decode().operations {
                    let automerge::legacy::Key::Map(k) = &op.key else {
                        continue;
                    };
                    if !k.ends_with(".c") {
                        continue;
                    }
                    if let automerge::legacy::OpType::Put(ScalarValue::Bytes(b)) = &op.action
                        && let Some(c) = doc::Creation::decode(b)
                        && !self.blobs.contains(&c.blob)
                    {
                        out.insert(c.blob);
                    }
                }
            }
        }
        out.into_iter().collect()
    }

    /// Whether this store has blob `h`.
    pub fn has_blob(&self, h: &BlobHash) -> bool {
        self.blobs.contains(h)
    }

    /// The size in bytes of blob `h`, if this store has it.
    pub fn blob_size(&self, h: &BlobHash) -> Option<u64> {
        self.blobs.size(h)
    }

    /// Checks blob `h` against its hash without holding it whole (a MiB at a time): what a
    /// node does before sending a large body in parts, which the peer can check only at the
    /// end. A damaged blob is reported as [`Error::Corrupt`] and counts as missing afterwards.
    pub fn check_blob(&self, h: &BlobHash) -> Result<()> {
        self.blobs.check(h)
    }

    /// Bytes `offset..offset + len` of blob `h` (cut at its end), not verified: see
    /// [`Store::check_blob`].
    pub fn blob_range(&self, h: &BlobHash, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.blobs.range(h, offset, len)
    }

    /// How many bytes of blob `h` an unfinished transfer in parts has stored (0 if none). The
    /// bytes survive restarts, so a transfer resumes from here.
    pub fn partial_blob_len(&self, h: &BlobHash) -> u64 {
        self.blobs.partial_len(h)
    }

    /// Deletes the stored parts of transfers not continued for `max_age_ms` before `now` (a
    /// body whose last peer went away for good), and of bodies stored since; returns how many.
    /// The daemon calls it hourly with a week.
    pub fn discard_stale_partial_blobs(&self, now: Timestamp, max_age_ms: i64) -> usize {
        self.blobs
            .discard_stale_partials(now.0.saturating_sub(max_age_ms))
    }

    /// Forgets the stored parts of blob `h` (a peer could not continue them), so the next
    /// request starts over.
    pub fn discard_partial_blob(&self, h: &BlobHash) {
        self.blobs.discard_partial(h);
    }

    /// Stores a part of blob `h` received from a peer: `data` at `offset` of a `total`-byte
    /// body. A part not starting where the stored bytes end is ignored. When the last part
    /// arrives the whole body is checked against `h` and stored as [`Store::put_blob`] does
    /// (instances waiting for it are shown); if it does not match, the parts are discarded and
    /// [`Error::BlobHashMismatch`] returned. A part that does not fit (past `total`) is
    /// [`Error::InvalidPart`]; a `total` above `max_message_size` is
    /// [`Error::MessageTooLarge`].
    pub fn put_blob_part(
        &mut self,
        h: &BlobHash,
        total: u64,
        offset: u64,
        data: &[u8],
        now: Timestamp,
    ) -> Result<PartProgress> {
        if self.blobs.contains(h) {
            return Ok(PartProgress::Complete);
        }
        if total > self.cfg.max_message_size {
            return Err(Error::MessageTooLarge {
                size: total,
                limit: self.cfg.max_message_size,
            });
        }
        let (have, stored) = self.blobs.put_part(h, total, offset, data)?;
        if !stored {
            return Ok(PartProgress::Ignored { next: have });
        }
        if have < total {
            return Ok(PartProgress::Stored { next: have });
        }
        let raw = self.blobs.read_partial(h)?;
        match self.put_blob(h, &raw, now) {
            // Stored (or refused as not matching its hash): the parts are done with. Any other
            // failure (a full disk) keeps them, to finish from them later.
            Ok(()) => {}
            Err(e @ Error::BlobHashMismatch { .. }) => {
                self.blobs.discard_partial(h);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(PartProgress::Complete)
    }

    /// Stores a blob received from a peer, after checking it against `h`, and shows the
    /// instances that were waiting for it (with the same fix-ups as a merge).
    pub fn put_blob(&mut self, h: &BlobHash, raw: &[u8], now: Timestamp) -> Result<()> {
        self.blobs.put_verified(h, raw)?;
        // Had it been arriving in parts (from another peer, say), those are not needed now.
        self.blobs.discard_partial(h);
        let Some(waiting) = self.pending.remove(h) else {
            return Ok(());
        };
        let mut bases = HashMap::new();
        let mut by_shard: BTreeMap<String, (String, String, Vec<u32>)> = BTreeMap::new();
        for (a, m, o) in waiting {
            let key = doc::shard_key(&a, &m, o);
            by_shard
                .entry(key)
                .or_insert_with(|| (a, m, Vec::new()))
                .2
                .push(o);
        }
        // One batch, like a merge: every shard's fix-ups measured against the view from before
        // the body arrived, one journal record (which also makes the body durable), then the
        // view. On failure nothing is shown and everything keeps waiting.
        let mut record = Vec::new();
        let res = (|| -> Result<()> {
            for (key, (a, m, origs)) in &by_shard {
                if let Some(local) = self.fix_up(key, a, m, origs, now, &mut bases)? {
                    record.push((key.clone(), local));
                }
            }
            Ok(())
        })()
        .and_then(|()| self.persist(record));
        if let Err(e) = res {
            self.evict(by_shard.keys().cloned());
            let waiting = self.pending.entry(*h).or_default();
            for (a, m, origs) in by_shard.values() {
                waiting.extend(origs.iter().map(|o| (a.clone(), m.clone(), *o)));
            }
            return Err(e);
        }
        for (key, (_, _, origs)) in by_shard {
            self.refresh_instances(&key, origs)?;
        }
        self.maybe_compact()
    }

    /// Computes and commits (in memory) the fix-ups for instances `origs` of shard `key`, whose
    /// document state has just changed but whose view has not been refreshed yet. Returns the
    /// local change to journal, if any.
    fn fix_up(
        &mut self,
        key: &str,
        account: &str,
        mailbox: &str,
        origs: &[u32],
        now: Timestamp,
        bases: &mut HashMap<(String, String), LiftBase>,
    ) -> Result<Option<Vec<u8>>> {
        let slot = self.cfg.slot;
        let (floor, hms, mut base, olds): (u32, u64, u32, HashMap<u32, Instance>) = {
            let view = self
                .accounts
                .get(account)
                .and_then(|a| a.mailboxes.get(mailbox))
                .map(|m| &m.view);
            match view {
                Some(v) => (
                    v.floor,
                    v.highest_modseq,
                    v.max_uid.max(v.floor.saturating_sub(1)),
                    origs
                        .iter()
                        .filter_map(|o| v.instances.get(o).map(|i| (*o, i.clone())))
                        .collect(),
                ),
                None => (0, 0, 0, HashMap::new()),
            }
        };
        self.doc_mut(key)?;
        let blobs = &self.blobs;
        let news: Vec<(u32, Instance)> = {
            let Some(d) = self.docs.get(key).and_then(|e| e.doc.as_ref()) else {
                return Ok(None);
            };
            origs
                .iter()
                .filter_map(|&o| {
                    let idoc = doc::read_instance(d, o);
                    Instance::from_doc(&idoc, |h| blobs.contains(h)).map(|i| (o, i))
                })
                .collect()
        };
        let max_new = news.iter().map(|(_, i)| i.modseq).max().unwrap_or(0);
        self.hlc.observe(Modseq(max_new.max(hms)));
        base = base.max(news.iter().map(|(_, i)| i.uid).max().unwrap_or(0));
        // One allocation base per mailbox and batch, so lifts in different shards of a batch
        // never pick the same UID.
        let lb = bases
            .entry((account.to_owned(), mailbox.to_owned()))
            .or_insert(LiftBase {
                base,
                gap: LIFT_GAP * (slot as u32 + 1),
            });
        lb.base = lb.base.max(base);

        let mut puts: Vec<(String, ScalarValue)> = Vec::new();
        let mut stamp: Option<u64> = None;
        for (o, new) in &news {
            let old = olds.get(o);
            let shown_uid = old.filter(|i| i.visible()).map(|i| i.uid);
            let mut lifted = false;
            if new.visible() {
                let appears = shown_uid.is_none();
                let moved = shown_uid.is_some_and(|u| u != new.uid);
                if (appears || moved) && new.uid < floor {
                    let fresh = next_uid(lb.base.saturating_add(std::mem::take(&mut lb.gap)), slot)
                        .ok_or_else(|| Error::UidsExhausted(mailbox.to_owned()))?;
                    lb.base = fresh;
                    puts.push((format!("{o}.u"), ScalarValue::Uint(fresh.into())));
                    lifted = true;
                }
            }
            // The UID this node has reported for the instance, as a message or as expunged.
            let reported = old.filter(|i| !i.pending || i.expunged).map(|i| i.uid);
            let vanished = reported.filter(|&u| lifted || u != new.uid);
            // A change clients must be told about: not a bare MODSEQ difference (a peer's own
            // re-stamp), or re-stamps would answer each other forever.
            let changed = old.is_none_or(|i| {
                i.flags != new.flags
                    || i.uid != new.uid
                    || i.expunged != new.expunged
                    || i.pending != new.pending
            });
            let matters = new.visible() || (new.expunged && shown_uid.is_some());
            let restamp = lifted || (changed && matters && new.modseq <= hms);
            if vanished.is_none() && !restamp {
                continue;
            }
            let s = *stamp.get_or_insert_with(|| self.hlc.tick(now).0);
            if let Some(u) = vanished {
                puts.push((format!("{o}.o{u}"), ScalarValue::Uint(s)));
            }
            if restamp {
                puts.push((format!("{o}.m"), ScalarValue::Uint(s)));
            }
        }
        if puts.is_empty() {
            return Ok(None);
        }
        let d = self.doc_mut(key)?;
        let mut tx = d.transaction();
        for (k, v) in puts {
            tx.put(ROOT, k, v).map_err(|e| Error::corrupt(key, e))?;
        }
        tx.commit_with(Store::commit_opts(now));
        Ok(d.get_last_local_change().map(|c| c.raw_bytes().to_vec()))
    }

    /// Brings this store up to date with `other` (one direction): every document change and
    /// every blob this store lacks. For tests, tools and embedding two replicas in one process;
    /// across a network the sync layer does the same through [`Store::manifest`],
    /// [`Store::changes_for`], [`Store::blobs_needed`], [`Store::put_blob`] and
    /// [`Store::apply_changes_batch`].
    pub fn pull_from(&mut self, other: &mut Store, now: Timestamp) -> Result<()> {
        let mut batch = Vec::new();
        for (key, heads) in other.manifest() {
            let mine = self.heads(&key);
            if mine != heads {
                batch.push((key.clone(), other.changes_for(&key, &mine)?));
            }
        }
        // Bodies first, so that the messages are shown as the documents arrive and one fix-up
        // pass covers them all.
        for h in self.blobs_needed(&batch) {
            if other.has_blob(&h) {
                let raw = other.message_bytes(&h)?;
                self.put_blob(&h, &raw, now)?;
            }
        }
        self.apply_changes_batch(batch, now)?;
        for h in self.missing_blobs() {
            if other.has_blob(&h) {
                let raw = other.message_bytes(&h)?;
                self.put_blob(&h, &raw, now)?;
            }
        }
        Ok(())
    }

    /// Pulls in both directions until neither store has anything the other lacks.
    pub fn sync_pair(a: &mut Store, b: &mut Store, now: Timestamp) -> Result<()> {
        // Fix-ups made while pulling are themselves changes the other side needs; a few rounds
        // settle it (each round's fix-ups only react to the previous round's).
        for _ in 0..8 {
            a.pull_from(b, now)?;
            b.pull_from(a, now)?;
            if a.manifest() == b.manifest()
                && a.missing_blobs().is_empty()
                && b.missing_blobs().is_empty()
            {
                return Ok(());
            }
        }
        Ok(())
    }
}
