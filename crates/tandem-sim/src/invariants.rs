//! The invariants of `spec/convergence.md`, checked against everything every node could have
//! shown its clients.
//!
//! After every step, [`Checker::observe`] looks at a node the way an IMAP client could (LIST,
//! STATUS, FETCH, VANISHED) and compares with all earlier observations: I1 (a UID never names
//! two messages, on any node, ever), I2 (new messages appear above every UIDNEXT that node
//! showed), I3 (a change a client has not seen carries a MODSEQ above the HIGHESTMODSEQ it was
//! shown; HIGHESTMODSEQ never goes back; a UID that disappears is reported as vanished), I4
//! (UIDVALIDITY does not change unless the mailbox was renamed). [`visible`] is what I5 compares.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use tandem_store::{BlobHash, Modseq, Store};

/// The account every workload uses.
pub const ACCOUNT: &str = "alice";

/// What one node's clients could have seen of one mailbox.
#[derive(Default)]
struct Seen {
    uidvalidity: u32,
    uidnext: u32,
    hms: u64,
    /// uid -> (modseq, flags) at the last observation.
    msgs: BTreeMap<u32, (u64, String)>,
    /// Every UID ever shown on this node for this mailbox.
    ever: BTreeSet<u32>,
}

/// Accumulated observations of all nodes.
#[derive(Default)]
pub struct Checker {
    /// (mailbox id, uidvalidity, uid) -> blob, over all nodes and all time (I1).
    names: HashMap<(String, u32, u32), BlobHash>,
    /// (node, mailbox id) -> what was seen (I2, I3, I4).
    seen: HashMap<(usize, String), Seen>,
    /// Mailboxes that were renamed (their UIDVALIDITY may change, RFC 3501 2.3.1.1).
    renamed: BTreeSet<String>,
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

impl Checker {
    /// Records that mailbox `id` was renamed.
    pub fn renamed(&mut self, id: &str) {
        self.renamed.insert(id.to_owned());
    }

    /// Observes node `node`; returns the first invariant it breaks.
    pub fn observe(&mut self, node: usize, s: &Store) -> Result<(), String> {
        for mb in s.list_mailboxes(ACCOUNT).map_err(|e| e.to_string())? {
            let st = s.status(ACCOUNT, &mb.id).map_err(|e| e.to_string())?;
            let msgs = s.messages(ACCOUNT, &mb.id).map_err(|e| e.to_string())?;
            for m in &msgs {
                let key = (mb.id.0.clone(), st.uidvalidity, m.uid);
                let prev = self.names.entry(key).or_insert(m.blob);
                ensure!(
                    *prev == m.blob,
                    "I1: UID {} of {} names two messages",
                    m.uid,
                    mb.name
                );
            }
            let seen = self.seen.entry((node, mb.id.0.clone())).or_default();
            if seen.uidvalidity != 0 && seen.uidvalidity != st.uidvalidity {
                ensure!(
                    self.renamed.contains(&mb.id.0),
                    "I4: UIDVALIDITY of {} changed on node {node}",
                    mb.name
                );
                *seen = Seen::default();
            }
            if seen.uidvalidity != 0 {
                ensure!(
                    st.uidnext >= seen.uidnext,
                    "I2: UIDNEXT of {} went back on node {node}",
                    mb.name
                );
                ensure!(
                    st.highest_modseq.0 >= seen.hms,
                    "I3: HIGHESTMODSEQ of {} went back on node {node}",
                    mb.name
                );
                for m in &msgs {
                    if !seen.ever.contains(&m.uid) {
                        ensure!(
                            m.uid >= seen.uidnext,
                            "I2: node {node} showed new UID {} below UIDNEXT {} it had shown ({})",
                            m.uid,
                            seen.uidnext,
                            mb.name
                        );
                    }
                    let flags = format!("{:?}", m.flags);
                    match seen.msgs.get(&m.uid) {
                        Some((modseq, f)) if *f == flags => {
                            ensure!(
                                m.modseq.0 >= *modseq,
                                "I3: MODSEQ of UID {} went back on node {node}",
                                m.uid
                            );
                        }
                        _ => ensure!(
                            m.modseq.0 > seen.hms,
                            "I3: change of UID {} on node {node} has MODSEQ {} <= shown {}",
                            m.uid,
                            m.modseq.0,
                            seen.hms
                        ),
                    }
                }
                let gone: Vec<u32> = seen
                    .msgs
                    .keys()
                    .filter(|u| !msgs.iter().any(|m| m.uid == **u))
                    .copied()
                    .collect();
                if !gone.is_empty() {
                    let vanished = s
                        .vanished_since(ACCOUNT, &mb.id, Modseq(seen.hms))
                        .map_err(|e| e.to_string())?;
                    for u in gone {
                        ensure!(
                            vanished.contains(&u),
                            "I3: UID {u} disappeared on node {node} without being reported vanished"
                        );
                    }
                }
            }
            seen.uidvalidity = st.uidvalidity;
            seen.uidnext = st.uidnext;
            seen.hms = st.highest_modseq.0;
            seen.msgs = msgs
                .iter()
                .map(|m| (m.uid, (m.modseq.0, format!("{:?}", m.flags))))
                .collect();
            seen.ever.extend(msgs.iter().map(|m| m.uid));
        }
        Ok(())
    }
}

/// What I5 compares between converged nodes: mailboxes (name, id, UIDVALIDITY,
/// HIGHESTMODSEQ) and every message (UID, flags, MODSEQ, body). UIDNEXT is left out: it is what
/// a node has shown, which differs when one node showed a message the other only ever saw
/// expunged; I2 checks it per node.
pub fn visible(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for m in s.list_mailboxes(ACCOUNT).unwrap_or_default() {
        let Ok(st) = s.status(ACCOUNT, &m.id) else {
            continue;
        };
        out.push(format!(
            "{} {} {} {}",
            m.name, m.id.0, st.uidvalidity, st.highest_modseq.0
        ));
        for x in s.messages(ACCOUNT, &m.id).unwrap_or_default() {
            out.push(format!(
                "  {} {:?} {} {}",
                x.uid, x.flags, x.modseq.0, x.blob
            ));
        }
    }
    out
}

/// Every body visible on `s`.
pub fn bodies(s: &Store) -> BTreeSet<BlobHash> {
    let mut out = BTreeSet::new();
    for mb in s.list_mailboxes(ACCOUNT).unwrap_or_default() {
        out.extend(
            s.messages(ACCOUNT, &mb.id)
                .unwrap_or_default()
                .iter()
                .map(|m| m.blob),
        );
    }
    out
}
