//! [`Store`]: opening, persistence (journal, snapshots, compaction) and document management.
//! The operations live in `mailboxes.rs`, `messages.rs` and `merge.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use automerge::{ActorId, Automerge, Change, ChangeHash};

use crate::blob::{BlobHash, BlobStore, sync_dir};
use crate::clock::{Hlc, Modseq, Timestamp};
use crate::codec::{Reader, Writer, hex};
use crate::doc::{self, DocKind, MAX_NODES, RegistryDoc};
use crate::error::{Error, Result};
use crate::journal::{Journal, Record};
use crate::view::{Instance, MailboxView};

/// How a store is opened.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This node's slot, `0..16`, unique within a cluster. UIDs this node allocates satisfy
    /// `(uid - 1) % 16 == slot`, so two nodes never allocate the same UID. A store remembers its
    /// slot and refuses to open with another one.
    pub slot: u8,
    /// The automerge actor id of this node (16 bytes). `None`: generated on first open and kept
    /// in the store directory.
    pub actor: Option<[u8; 16]>,
    /// fsync before acknowledging writes. Turn off only for throw-away data (benchmarks that
    /// build huge stores, tests).
    pub durable: bool,
    /// The largest message accepted, in bytes.
    pub max_message_size: u64,
    /// Compact (snapshot the documents and start a new journal) once the journal is this large.
    pub compact_after_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            slot: 0,
            actor: None,
            durable: true,
            max_message_size: 64 << 20,
            compact_after_bytes: 64 << 20,
        }
    }
}

/// Something changed that readers (IMAP sessions waiting in IDLE, say) may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// Mailboxes of the account were created, renamed, deleted or (un)subscribed.
    Mailboxes {
        /// The account.
        account: String,
    },
    /// Messages of the mailbox changed (new, expunged, flags), locally or through a merge.
    Messages {
        /// The account.
        account: String,
        /// The mailbox.
        mailbox: crate::MailboxId,
        /// The mailbox's HIGHESTMODSEQ after the change.
        highest_modseq: Modseq,
    },
}

/// One automerge document and what we know about it without loading it.
#[derive(Debug, Default)]
pub(crate) struct DocEntry {
    /// Loaded lazily: `None` until a write or a sync needs it, and again after compaction.
    pub doc: Option<Automerge>,
    /// Heads as of the last change, so a manifest needs no loading.
    pub heads: Vec<ChangeHash>,
    /// Changed since the snapshot of the current epoch.
    pub changed: bool,
}

/// Per-account state derived from the registry document and the shard documents.
#[derive(Debug, Default)]
pub(crate) struct AccountState {
    pub registry: RegistryDoc,
    pub mailboxes: BTreeMap<String, MailboxState>,
    /// Resolved display name -> mailbox id, for every mailbox a client can see.
    pub names: BTreeMap<String, String>,
}

/// One mailbox: its registry entry (if it has arrived) and its view.
#[derive(Debug, Default)]
pub(crate) struct MailboxState {
    pub doc: Option<doc::MailboxDoc>,
    /// The name clients see, after resolving clashes and recovery; `None` if not shown.
    pub display: Option<String>,
    pub recovered: bool,
    pub view: MailboxView,
}

/// An embeddable, replicated mail store. See the crate documentation.
#[derive(Debug)]
pub struct Store {
    /// Held for the store's lifetime: a second process opening the same directory is refused
    /// instead of interleaving its journal writes with ours.
    _lock: fs::File,
    pub(crate) dir: PathBuf,
    pub(crate) cfg: StoreConfig,
    pub(crate) actor: ActorId,
    pub(crate) blobs: BlobStore,
    pub(crate) journal: Journal,
    pub(crate) epoch: u64,
    pub(crate) hlc: Hlc,
    pub(crate) docs: BTreeMap<String, DocEntry>,
    pub(crate) accounts: BTreeMap<String, AccountState>,
    /// Instances waiting for their body: blob -> (account, mailbox id, original UID).
    pub(crate) pending: HashMap<BlobHash, Vec<(String, String, u32)>>,
    pub(crate) events: VecDeque<StoreEvent>,
    /// See [`Store::change_counter`].
    pub(crate) change_counter: u64,
    /// See [`Store::last_compaction_error`].
    pub(crate) compaction_error: Option<String>,
    /// See [`Store::last_write_heads`].
    pub(crate) last_write: Vec<(String, Vec<ChangeHash>)>,
}

const VIEW_MAGIC: &[u8; 8] = b"TDVIEW01";

impl Store {
    /// Opens the store in `dir`, creating it if needed.
    ///
    /// Recovery is part of opening: a torn journal tail left by a crash is dropped (it was never
    /// acknowledged) and every intact record is replayed.
    pub fn open(dir: impl AsRef<Path>, cfg: StoreConfig) -> Result<Store> {
        let dir = dir.as_ref().to_owned();
        if cfg.slot >= MAX_NODES {
            return Err(Error::InvalidSlot(cfg.slot));
        }
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock = lock_dir(&dir)?;
        let actor = node_identity(&dir, &cfg)?;
        let epoch = read_current(&dir)?;
        let docs_dir = epoch_dir(&dir, epoch).join("docs");
        fs::create_dir_all(&docs_dir).map_err(|e| Error::io(&docs_dir, e))?;
        let blobs = BlobStore::open(dir.join("blobs"), cfg.durable)?;
        let (journal, records) = Journal::open(&journal_path(&dir, epoch), cfg.durable)?;

        let mut store = Store {
            _lock: lock,
            hlc: Hlc::new(cfg.slot),
            dir,
            cfg,
            actor,
            blobs,
            journal,
            epoch,
            docs: BTreeMap::new(),
            accounts: BTreeMap::new(),
            pending: HashMap::new(),
            events: VecDeque::new(),
            change_counter: 0,
            compaction_error: None,
            last_write: Vec::new(),
        };
        for key in list_docs(&docs_dir)? {
            store.docs.insert(key, DocEntry::default());
        }
        if !store.load_view()? {
            store.rebuild_views()?;
        }
        let registries: Vec<String> = store
            .docs
            .keys()
            .filter(|k| k.ends_with("/registry"))
            .cloned()
            .collect();
        for key in &registries {
            store.refresh_registry(key)?;
        }
        store.replay(records)?;
        let max = store
            .accounts
            .values()
            .flat_map(|a| a.mailboxes.values())
            .map(|m| m.view.highest_modseq)
            .max()
            .unwrap_or(0);
        store.hlc.observe(Modseq(max));
        store.events.clear();
        Ok(store)
    }

    /// This node's slot.
    pub fn slot(&self) -> u8 {
        self.cfg.slot
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Takes the events produced since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<StoreEvent> {
        self.events.drain(..).collect()
    }

    // ----- documents -----------------------------------------------------------------------

    fn doc_file(&self, epoch: u64, key: &str) -> PathBuf {
        epoch_dir(&self.dir, epoch)
            .join("docs")
            .join(format!("{}.am", hex(key.as_bytes())))
    }

    /// The document `key`, loaded from the snapshot if needed, created empty if new.
    pub(crate) fn doc_mut(&mut self, key: &str) -> Result<&mut Automerge> {
        let path = self.doc_file(self.epoch, key);
        let actor = self.actor.clone();
        let entry = self.docs.entry(key.to_owned()).or_default();
        if entry.doc.is_none() {
            let doc = match fs::read(&path) {
                Ok(bytes) => Automerge::load(&bytes)
                    .map_err(|e| Error::corrupt(&path, e))?
                    .with_actor(actor),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Automerge::new().with_actor(actor)
                }
                Err(e) => return Err(Error::io(&path, e)),
            };
            entry.heads = doc.get_heads();
            entry.doc = Some(doc);
        }
        match entry.doc.as_mut() {
            Some(d) => Ok(d),
            None => Err(Error::corrupt(&path, "document vanished while loading")),
        }
    }

    /// Forgets the in-memory copy of documents whose changes could not be journaled, so that
    /// the next use reloads them from what is on disk (snapshot + journal).
    pub(crate) fn evict(&mut self, keys: impl IntoIterator<Item = String>) {
        let keys: BTreeSet<String> = keys.into_iter().collect();
        let records = self.journal.records().unwrap_or_default();
        for key in &keys {
            if let Some(e) = self.docs.get_mut(key) {
                e.doc = None;
            }
        }
        for key in &keys {
            let changes: Vec<Change> = records
                .iter()
                .flatten()
                .filter(|(k, _)| k == key)
                .filter_map(|(_, b)| Change::from_bytes(b.clone()).ok())
                .collect();
            if let Ok(d) = self.doc_mut(key) {
                let _ = d.apply_changes(changes);
                let heads = d.get_heads();
                if let Some(e) = self.docs.get_mut(key) {
                    e.heads = heads;
                }
            }
        }
    }

    /// Makes `record` durable; on failure, drops the in-memory effects on its documents.
    pub(crate) fn persist(&mut self, record: Record) -> Result<()> {
        // Bodies first: nothing durable may refer to a body that is not.
        if let Err(e) = self.blobs.commit_staged() {
            self.evict(record.into_iter().map(|(k, _)| k));
            return Err(e);
        }
        if record.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.journal.append(&record) {
            self.evict(record.into_iter().map(|(k, _)| k));
            return Err(e);
        }
        self.last_write.clear();
        for (k, _) in &record {
            if let Some(e) = self.docs.get_mut(k) {
                e.changed = true;
                if let Some(d) = &e.doc {
                    e.heads = d.get_heads();
                }
                self.last_write.push((k.clone(), e.heads.clone()));
            }
        }
        Ok(())
    }

    /// The documents the last durable write touched, with their heads right after it. After a
    /// local write (an append, say) each head set is exactly that write's change, so a peer
    /// that has applied these hashes holds the write (see `tandem_net::Node::
    /// wait_applied_by_peer`).
    pub fn last_write_heads(&self) -> &[(String, Vec<ChangeHash>)] {
        &self.last_write
    }

    /// Compacts if the journal has grown past the configured size. Called after writes.
    ///
    /// The write that called it is already durable, so a failed compaction (a full disk while
    /// writing the snapshot, say) must not turn it into an error: the journal stays valid,
    /// the failure is kept for [`Store::last_compaction_error`], and the next write retries.
    pub(crate) fn maybe_compact(&mut self) -> Result<()> {
        if self.journal.len() >= self.cfg.compact_after_bytes {
            self.compaction_error = self.compact().err().map(|e| e.to_string());
        }
        Ok(())
    }

    /// Bodies, pack files and damaged records found in the blob store (see
    /// [`BlobStats`](crate::BlobStats)).
    pub fn blob_stats(&self) -> crate::BlobStats {
        self.blobs.stats()
    }

    /// Why the last automatic compaction failed, if it did (it is retried on later writes).
    pub fn last_compaction_error(&self) -> Option<&str> {
        self.compaction_error.as_deref()
    }

    /// A counter that grows whenever the visible state changes (local writes and merges):
    /// cheap change detection for drivers that must not consume [`Store::take_events`].
    pub fn change_counter(&self) -> u64 {
        self.change_counter
    }

    /// Writes a snapshot of every document and of the view, then starts a new, empty journal.
    /// Opening afterwards reads the view snapshot instead of replaying history. Documents are
    /// dropped from memory afterwards and reloaded on demand.
    pub fn compact(&mut self) -> Result<()> {
        let new = self.epoch + 1;
        let new_dir = epoch_dir(&self.dir, new);
        let new_docs = new_dir.join("docs");
        if new_dir.exists() {
            fs::remove_dir_all(&new_dir).map_err(|e| Error::io(&new_dir, e))?;
        }
        fs::create_dir_all(&new_docs).map_err(|e| Error::io(&new_docs, e))?;
        let keys: Vec<String> = self.docs.keys().cloned().collect();
        for key in &keys {
            let old_file = self.doc_file(self.epoch, key);
            let new_file = self.doc_file(new, key);
            let unchanged = self.docs.get(key).is_some_and(|e| !e.changed) && old_file.exists();
            if unchanged && fs::hard_link(&old_file, &new_file).is_ok() {
                continue;
            }
            let bytes = self.doc_mut(key)?.save();
            write_file(&new_file, &bytes, self.cfg.durable)?;
        }
        let view = self.encode_view();
        write_file(&new_dir.join("view.bin"), &view, self.cfg.durable)?;
        let (journal, _) = Journal::open(&journal_path(&self.dir, new), self.cfg.durable)?;
        if self.cfg.durable {
            sync_dir(&new_docs)?;
            sync_dir(&new_dir)?;
            sync_dir(&self.dir.join("state"))?;
        }
        write_file(
            &self.dir.join("CURRENT.tmp"),
            new.to_string().as_bytes(),
            self.cfg.durable,
        )?;
        let cur = self.dir.join("CURRENT");
        fs::rename(self.dir.join("CURRENT.tmp"), &cur).map_err(|e| Error::io(&cur, e))?;
        // From here on CURRENT names the new epoch: switch to it before anything can fail, so
        // writes never go to a journal that CURRENT no longer points at.
        let old = self.epoch;
        self.epoch = new;
        self.journal = journal;
        let synced = if self.cfg.durable {
            sync_dir(&self.dir)
        } else {
            Ok(())
        };
        for (key, e) in self.docs.iter_mut() {
            e.changed = false;
            if !key.ends_with("/registry") {
                e.doc = None;
            }
        }
        synced?;
        let _ = fs::remove_dir_all(epoch_dir(&self.dir, old));
        let _ = fs::remove_file(journal_path(&self.dir, old));
        Ok(())
    }

    // ----- the view snapshot ---------------------------------------------------------------

    fn encode_view(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(VIEW_MAGIC);
        w.u32(self.docs.len() as u32);
        for (k, e) in &self.docs {
            w.str(k);
            w.u32(e.heads.len() as u32);
            for h in &e.heads {
                w.raw(&h.0);
            }
        }
        let mbs: Vec<(&String, &String, &MailboxState)> = self
            .accounts
            .iter()
            .flat_map(|(a, st)| st.mailboxes.iter().map(move |(id, m)| (a, id, m)))
            .collect();
        w.u32(mbs.len() as u32);
        for (a, id, m) in mbs {
            w.str(a);
            w.str(id);
            m.view.encode(&mut w);
        }
        let body = w.finish();
        let mut out = Writer::new();
        out.raw(&body);
        out.u32(crate::codec::crc32(&body));
        out.finish()
    }

    /// Loads `view.bin` of the current epoch. Returns false if there is none or it is unusable
    /// (then the view is rebuilt from the documents, which is slower but always correct).
    fn load_view(&mut self) -> Result<bool> {
        let path = epoch_dir(&self.dir, self.epoch).join("view.bin");
        let Ok(buf) = fs::read(&path) else {
            return Ok(false);
        };
        if buf.len() < 12 {
            return Ok(false);
        }
        let (body, crc) = buf.split_at(buf.len() - 4);
        if crate::codec::crc32(body).to_le_bytes() != crc {
            return Ok(false);
        }
        let mut r = Reader::new(body, "view snapshot");
        let parsed = (|| -> std::result::Result<(), crate::codec::CodecError> {
            if r.take(8)? != VIEW_MAGIC {
                return Err(crate::codec::CodecError {
                    what: "view magic",
                    at: 0,
                });
            }
            let nd = r.count(8)?;
            for _ in 0..nd {
                let k = r.string()?;
                let nh = r.count(32)?;
                let mut heads = Vec::with_capacity(nh);
                for _ in 0..nh {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(r.take(32)?);
                    heads.push(ChangeHash(h));
                }
                self.docs.entry(k).or_default().heads = heads;
            }
            let nm = r.count(16)?;
            for _ in 0..nm {
                let a = r.string()?;
                let id = r.string()?;
                let view = MailboxView::decode(&mut r)?;
                for (o, i) in &view.instances {
                    if i.pending && !i.expunged {
                        self.pending
                            .entry(i.blob)
                            .or_default()
                            .push((a.clone(), id.clone(), *o));
                    }
                }
                self.accounts
                    .entry(a)
                    .or_default()
                    .mailboxes
                    .entry(id)
                    .or_default()
                    .view = view;
            }
            Ok(())
        })();
        if parsed.is_err() {
            self.accounts.clear();
            self.pending.clear();
            return Ok(false);
        }
        Ok(true)
    }

    /// Rebuilds every mailbox view by reading every shard document.
    fn rebuild_views(&mut self) -> Result<()> {
        let keys: Vec<String> = self.docs.keys().cloned().collect();
        for key in keys {
            if let Ok(DocKind::Shard { .. }) = DocKind::parse(&key) {
                let d = self.doc_mut(&key)?;
                let origs = doc::instances(d);
                self.refresh_instances(&key, origs)?;
            }
        }
        // Which instances were shown before is lost with the snapshot: assume every one whose
        // body is here was, which can only cause extra lifts, never a UID below a shown UIDNEXT.
        for acct in self.accounts.values_mut() {
            for mb in acct.mailboxes.values_mut() {
                let v = &mut mb.view;
                let shown = v
                    .instances
                    .values()
                    .filter(|i| !i.pending)
                    .map(|i| i.uid.saturating_add(1));
                v.floor = shown.fold(v.floor, u32::max);
            }
        }
        Ok(())
    }

    /// Applies journal records on open. Local fix-ups (lifts, re-stamps) were journaled as
    /// changes of their own, so replay only applies and refreshes.
    fn replay(&mut self, records: Vec<Record>) -> Result<()> {
        for rec in records {
            // Refresh after each record, as when it was first applied: the floor (what clients
            // were shown) must see an instance that was visible and then expunged later on.
            let mut touched: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
            for (key, bytes) in rec {
                let change = Change::from_bytes(bytes)
                    .map_err(|e| Error::corrupt(journal_path(&self.dir, self.epoch), e))?;
                let kind = DocKind::parse(&key)?;
                let origs = changed_keys(&change);
                let d = self.doc_mut(&key)?;
                d.apply_changes([change])
                    .map_err(|e| Error::corrupt(journal_path(&self.dir, self.epoch), e))?;
                let entry = touched.entry(key.clone()).or_default();
                if let DocKind::Shard { .. } = kind {
                    entry.extend(origs.iter().filter_map(|k| doc::instance_of_key(k)));
                }
                if let Some(e) = self.docs.get_mut(&key) {
                    e.changed = true;
                }
            }
            for (key, origs) in touched {
                let heads = self.doc_mut(&key)?.get_heads();
                if let Some(e) = self.docs.get_mut(&key) {
                    e.heads = heads;
                }
                if key.ends_with("/registry") {
                    self.refresh_registry(&key)?;
                } else {
                    self.refresh_instances(&key, origs.into_iter().collect())?;
                }
            }
        }
        Ok(())
    }

    // ----- keeping the view in step with the documents -------------------------------------

    /// Re-reads a registry document and re-resolves the account's mailbox names.
    pub(crate) fn refresh_registry(&mut self, key: &str) -> Result<()> {
        let DocKind::Registry { account } = DocKind::parse(key)? else {
            return Ok(());
        };
        let reg = doc::read_registry(self.doc_mut(key)?);
        self.hlc.observe(Modseq(reg.max_stamp));
        let acct = self.accounts.entry(account.clone()).or_default();
        for m in &reg.mailboxes {
            acct.mailboxes.entry(m.id.clone()).or_default().doc = Some(m.clone());
        }
        acct.registry = reg;
        self.resolve_names(&account);
        self.events.push_back(StoreEvent::Mailboxes { account });
        self.change_counter += 1;
        Ok(())
    }

    /// Re-reads instances `origs` of shard `key` into the view (no fix-ups).
    pub(crate) fn refresh_instances(&mut self, key: &str, origs: Vec<u32>) -> Result<()> {
        let DocKind::Shard {
            account, mailbox, ..
        } = DocKind::parse(key)?
        else {
            return Ok(());
        };
        let docs: Vec<(u32, doc::InstanceDoc)> = {
            let d = self.doc_mut(key)?;
            origs
                .into_iter()
                .filter(|&o| o >= 1 && doc::shard_key(&account, &mailbox, o) == key)
                .map(|o| (o, doc::read_instance(d, o)))
                .collect()
        };
        let blobs = &self.blobs;
        let acct = self.accounts.entry(account.clone()).or_default();
        let mb = acct.mailboxes.entry(mailbox.clone()).or_default();
        mb.view.shards.insert(key.to_owned());
        let was_live = mb.view.instances.values().any(|i| !i.expunged);
        for (o, d) in docs {
            let Some(inst) = Instance::from_doc(&d, |h| blobs.contains(h)) else {
                continue;
            };
            if inst.pending && !inst.expunged {
                let waiting = self.pending.entry(inst.blob).or_default();
                if !waiting
                    .iter()
                    .any(|(a, m, x)| *x == o && *a == account && *m == mailbox)
                {
                    waiting.push((account.clone(), mailbox.clone(), o));
                }
            }
            mb.view.set(o, inst);
        }
        let hms = Modseq(mb.view.highest_modseq);
        self.hlc.observe(hms);
        let now_live = mb.view.instances.values().any(|i| !i.expunged);
        let deleted = mb.doc.as_ref().is_some_and(|d| d.deleted.is_some());
        if deleted && was_live != now_live {
            self.resolve_names(&account);
        }
        self.change_counter += 1;
        self.events.push_back(StoreEvent::Messages {
            account,
            mailbox: crate::MailboxId(mailbox),
            highest_modseq: hms,
        });
        Ok(())
    }

    /// Computes the names clients see: live mailboxes under their names, deleted mailboxes that
    /// still hold messages under `Recovered/<name>`, clashes resolved by id order.
    pub(crate) fn resolve_names(&mut self, account: &str) {
        let Some(acct) = self.accounts.get_mut(account) else {
            return;
        };
        let mut wanted: Vec<(String, String, bool)> = Vec::new();
        for (id, m) in &acct.mailboxes {
            let Some(d) = &m.doc else { continue };
            if d.deleted.is_none() {
                wanted.push((d.name.clone(), id.clone(), false));
            } else if m.view.instances.values().any(|i| !i.expunged) {
                wanted.push((format!("Recovered/{}", d.name), id.clone(), true));
            }
        }
        wanted.sort();
        acct.names.clear();
        for m in acct.mailboxes.values_mut() {
            m.display = None;
            m.recovered = false;
        }
        for (name, id, recovered) in wanted {
            let shown = if acct.names.contains_key(&name) {
                format!("{name}~{}", &id[..id.len().min(6)])
            } else {
                name
            };
            if let Some(m) = acct.mailboxes.get_mut(&id) {
                m.display = Some(shown.clone());
                m.recovered = recovered;
            }
            acct.names.insert(shown, id);
        }
    }
}

/// Root-map keys written by `change`.
pub(crate) fn changed_keys(change: &Change) -> Vec<String> {
    change
        .decode()
        .operations
        .iter()
        .filter_map(|op| match &op.key {
            automerge::legacy::Key::Map(k) => Some(k.to_string()),
            automerge::legacy::Key::Seq(_) => None,
        })
        .collect()
}

fn epoch_dir(dir: &Path, epoch: u64) -> PathBuf {
    dir.join("state").join(epoch.to_string())
}

fn journal_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("journal.{epoch}"))
}

fn read_current(dir: &Path) -> Result<u64> {
    let p = dir.join("CURRENT");
    match fs::read_to_string(&p) {
        Ok(s) => s
            .trim()
            .parse()
            .map_err(|_| Error::corrupt(&p, "not a number")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(&p, e)),
    }
}

fn list_docs(docs_dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let rd = fs::read_dir(docs_dir).map_err(|e| Error::io(docs_dir, e))?;
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".am")) else {
            continue;
        };
        if let Some(key) = unhex(stem).and_then(|b| String::from_utf8(b).ok())
            && DocKind::parse(&key).is_ok()
        {
            out.push(key);
        }
    }
    Ok(out)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn write_file(path: &Path, bytes: &[u8], sync: bool) -> Result<()> {
    let mut f = fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes).map_err(|e| Error::io(path, e))?;
    if sync {
        f.sync_all().map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// Takes the store's exclusive lock (`LOCK`, an advisory file lock released when the process
/// exits, however it exits).
fn lock_dir(dir: &Path) -> Result<fs::File> {
    let p = dir.join("LOCK");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

/// Reads or creates the `node` file: the slot this store was created with and its actor id.
fn node_identity(dir: &Path, cfg: &StoreConfig) -> Result<ActorId> {
    let p = dir.join("node");
    match fs::read(&p) {
        Ok(b) if b.len() == 17 => {
            if b[0] != cfg.slot {
                return Err(Error::corrupt(
                    &p,
                    format!(
                        "store was created for node slot {}, opened as slot {}; changing a node's slot would let two nodes allocate the same UIDs",
                        b[0], cfg.slot
                    ),
                ));
            }
            if let Some(a) = cfg.actor
                && a[..] != b[1..]
            {
                return Err(Error::corrupt(
                    &p,
                    "store was created with another actor id",
                ));
            }
            Ok(ActorId::from(&b[1..]))
        }
        Ok(_) => Err(Error::corrupt(&p, "bad node file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let actor = match cfg.actor {
                Some(a) => a,
                None => random_actor(dir)?,
            };
            let mut b = vec![cfg.slot];
            b.extend_from_slice(&actor);
            // Temp file and rename: a crash leaves either no `node` file or a whole one.
            let tmp = dir.join("node.tmp");
            write_file(&tmp, &b, cfg.durable)?;
            fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
            if cfg.durable {
                sync_dir(dir)?;
            }
            Ok(ActorId::from(&actor[..]))
        }
        Err(e) => Err(Error::io(&p, e)),
    }
}

fn random_actor(dir: &Path) -> Result<[u8; 16]> {
    let mut a = [0u8; 16];
    let mut f = fs::File::open("/dev/urandom").map_err(|e| Error::io("/dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut a).map_err(|e| Error::io(dir, e))?;
    Ok(a)
}

impl Store {
    /// The current time for automerge's advisory commit timestamps, in seconds.
    pub(crate) fn commit_opts(now: Timestamp) -> automerge::transaction::CommitOptions {
        automerge::transaction::CommitOptions::default().with_time(now.as_secs())
    }
}
