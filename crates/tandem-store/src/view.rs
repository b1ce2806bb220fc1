//! The materialised IMAP view of each mailbox: every instance's current UID, flags, MODSEQ and
//! state, indexed by UID, plus the derived counters (floor, HIGHESTMODSEQ). Reads are served from
//! here; it is kept up to date from every local transaction and every merged change, and saved in
//! snapshots so that opening a store does not walk automerge documents.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::blob::BlobHash;
use crate::codec::{CodecError, Reader, Writer};
use crate::doc::{Creation, InstanceDoc};
use crate::flags::{Flag, FlagSet};

/// One message instance (a message in a mailbox) as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Instance {
    pub uid: u32,
    pub blob: BlobHash,
    pub date: i64,
    pub size: u32,
    pub modseq: u64,
    pub flags: FlagSet,
    pub expunged: bool,
    /// The body blob is not here yet: the instance is not shown.
    pub pending: bool,
    pub olds: Vec<(u32, u64)>,
}

impl Instance {
    pub(crate) fn visible(&self) -> bool {
        !self.expunged && !self.pending
    }

    /// Builds the view of an instance from its document state; `None` while its creation record
    /// has not arrived (a flag change can arrive before the message it belongs to).
    pub(crate) fn from_doc(
        d: &InstanceDoc,
        blob_present: impl Fn(&BlobHash) -> bool,
    ) -> Option<Instance> {
        let c: Creation = d.creation?;
        let flags = d
            .flags
            .iter()
            .filter(|(_, s)| *s > 0)
            .filter_map(|(name, _)| Flag::parse(name).ok())
            .collect::<Vec<_>>();
        Some(Instance {
            uid: d.uid,
            blob: c.blob,
            date: c.date,
            size: c.size,
            modseq: d.modseq(),
            flags: flags.iter().collect(),
            expunged: d.expunged.is_some(),
            pending: !blob_present(&c.blob),
            olds: d.olds.clone(),
        })
    }
}

/// The view of one mailbox.
#[derive(Debug, Clone, Default)]
pub(crate) struct MailboxView {
    /// Every instance, by original UID: visible, expunged and pending.
    pub instances: HashMap<u32, Instance>,
    /// Visible instances: UID -> original UID.
    pub by_uid: BTreeMap<u32, u32>,
    /// Largest UID of any instance (allocation must go above it).
    pub max_uid: u32,
    /// 1 + largest UID of any instance that is or was visible here (what clients may have been
    /// shown as UIDNEXT). A merged instance below it is lifted before it is shown. Node-local
    /// history, not derived from the documents: kept in the view snapshot, and rebuilt
    /// conservatively (every instance with a body counts) when the snapshot is lost.
    pub floor: u32,
    /// Largest MODSEQ of any instance or vanished record.
    pub highest_modseq: u64,
    /// Shard documents that hold this mailbox's instances.
    pub shards: BTreeSet<String>,
}

impl MailboxView {
    /// Replaces the state of instance `orig`; returns the previous one.
    pub(crate) fn set(&mut self, orig: u32, inst: Instance) -> Option<Instance> {
        self.max_uid = self.max_uid.max(inst.uid);
        // The floor is what this node has shown: an instance counts once it is visible here.
        // One that arrives already expunged was never shown and does not raise it (otherwise
        // the first sync of a mailbox with a moved-away message would lift everything below).
        if inst.visible() {
            self.floor = self.floor.max(inst.uid.saturating_add(1));
        }
        self.highest_modseq = self.highest_modseq.max(inst.modseq);
        for (_, s) in &inst.olds {
            self.highest_modseq = self.highest_modseq.max(*s);
        }
        let old = self.instances.insert(orig, inst);
        if let Some(o) = &old
            && o.visible()
        {
            self.by_uid.remove(&o.uid);
        }
        if let Some(n) = self.instances.get(&orig)
            && n.visible()
        {
            self.by_uid.insert(n.uid, orig);
        }
        old
    }

    pub(crate) fn visible(&self) -> impl DoubleEndedIterator<Item = (u32, &Instance)> {
        self.by_uid
            .iter()
            .filter_map(|(&uid, o)| self.instances.get(o).map(|i| (uid, i)))
    }

    pub(crate) fn by_uid(&self, uid: u32) -> Option<(u32, &Instance)> {
        let o = *self.by_uid.get(&uid)?;
        self.instances.get(&o).map(|i| (o, i))
    }

    pub(crate) fn uidnext(&self) -> u32 {
        self.floor.max(1)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        w.u32(self.max_uid);
        w.u32(self.floor);
        w.u64(self.highest_modseq);
        w.u32(self.shards.len() as u32);
        for s in &self.shards {
            w.str(s);
        }
        w.u32(self.instances.len() as u32);
        let mut origs: Vec<&u32> = self.instances.keys().collect();
        origs.sort_unstable();
        for o in origs {
            let i = &self.instances[o];
            w.u32(*o);
            w.u32(i.uid);
            w.raw(&i.blob.0);
            w.i64(i.date);
            w.u32(i.size);
            w.u64(i.modseq);
            w.u8(i.expunged as u8 | (i.pending as u8) << 1);
            let flags: Vec<Flag> = i.flags.iter().collect();
            w.u32(flags.len() as u32);
            for f in &flags {
                w.str(f.as_str());
            }
            w.u32(i.olds.len() as u32);
            for (u, s) in &i.olds {
                w.u32(*u);
                w.u64(*s);
            }
        }
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<MailboxView, CodecError> {
        let mut v = MailboxView {
            max_uid: r.u32()?,
            floor: r.u32()?,
            highest_modseq: r.u64()?,
            ..MailboxView::default()
        };
        let ns = r.count(4)?;
        for _ in 0..ns {
            v.shards.insert(r.string()?);
        }
        let n = r.count(60)?;
        v.instances.reserve(n);
        for _ in 0..n {
            let orig = r.u32()?;
            let uid = r.u32()?;
            let mut blob = [0u8; 32];
            blob.copy_from_slice(r.take(32)?);
            let date = r.i64()?;
            let size = r.u32()?;
            let modseq = r.u64()?;
            let bits = r.u8()?;
            let nf = r.count(4)?;
            let mut flags = FlagSet::new();
            for _ in 0..nf {
                if let Ok(f) = Flag::parse(r.str()?) {
                    flags.insert(&f);
                }
            }
            let no = r.count(12)?;
            let mut olds = Vec::with_capacity(no);
            for _ in 0..no {
                olds.push((r.u32()?, r.u64()?));
            }
            let inst = Instance {
                uid,
                blob: BlobHash(blob),
                date,
                size,
                modseq,
                flags,
                expunged: bits & 1 != 0,
                pending: bits & 2 != 0,
                olds,
            };
            if inst.visible() {
                v.by_uid.insert(uid, orig);
            }
            v.instances.insert(orig, inst);
        }
        Ok(v)
    }
}
