//! Property tests over random operations on 2–3 replicas, merged in random orders.
//!
//! After every step, every node is observed the way its IMAP clients could observe it, and the
//! invariants of `spec/convergence.md` are checked against everything observed so far:
//! I1 (a UID never names two messages), I2 (new messages appear above every UIDNEXT shown on
//! that node), I3 (unseen changes carry MODSEQs above every HIGHESTMODSEQ shown, vanished UIDs
//! are reported), I4 (UIDVALIDITY of a mailbox does not change unless it was renamed).
//! At the end all nodes sync to quiescence and must show identical state (I5), re-syncing must
//! change nothing (idempotence), and no message that no operation removed may be missing (I6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use tandem_sim::{Action, Checker, NAMES, Workload, visible};
use tandem_store::{BlobHash, Store, StoreConfig, Timestamp};

#[derive(Debug, Clone)]
enum Op {
    /// A client operation on one node.
    Client { node: usize, action: Action },
    /// One node pulls everything from another (one batch).
    Pull { into: usize, from: usize },
    /// Both nodes send what the other lacks at the same moment; the messages cross in flight.
    Exchange { a: usize, b: usize },
    /// Restart a node, optionally compacting first.
    Reopen { node: usize, compact: bool },
}

fn action() -> impl Strategy<Value = Action> {
    let m = 0..NAMES.len();
    prop_oneof![
        6 => m.clone().prop_map(|mbox| Action::Append { mbox }),
        4 => (m.clone(), any::<usize>(), 0..3usize, any::<bool>())
            .prop_map(|(mbox, pick, flag, set)| Action::Flag { mbox, pick, flag, set }),
        2 => (m.clone(), any::<usize>()).prop_map(|(mbox, pick)| Action::Expunge { mbox, pick }),
        2 => (m.clone(), any::<usize>(), m.clone(), any::<bool>())
            .prop_map(|(from, pick, to, mv)| Action::Copy { from, pick, to, mv }),
        1 => m.clone().prop_map(|name| Action::Create { name }),
        1 => (m.clone(), m.clone()).prop_map(|(from, to)| Action::Rename { from, to }),
        1 => m.prop_map(|name| Action::Delete { name }),
    ]
}

fn op(nodes: usize) -> impl Strategy<Value = Op> {
    let n = 0..nodes;
    prop_oneof![
        17 => (n.clone(), action()).prop_map(|(node, action)| Op::Client { node, action }),
        4 => (n.clone(), n.clone()).prop_map(|(into, from)| Op::Pull { into, from }),
        3 => (n.clone(), n.clone()).prop_map(|(a, b)| Op::Exchange { a, b }),
        1 => (n, any::<bool>()).prop_map(|(node, compact)| Op::Reopen { node, compact }),
    ]
}

struct Node {
    dir: tempfile::TempDir,
    slot: u8,
    store: Option<Store>,
}

impl Node {
    fn s(&mut self) -> &mut Store {
        self.store.as_mut().expect("store is open")
    }
}

fn cfg(slot: u8) -> StoreConfig {
    StoreConfig {
        slot,
        actor: Some([slot + 1; 16]),
        durable: false,
        compact_after_bytes: 1 << 20,
        ..StoreConfig::default()
    }
}

/// Everything `from` has that `to` lacks, as it would be put on the wire.
type Outgoing = (Vec<(String, Vec<Vec<u8>>)>, Vec<(BlobHash, Vec<u8>)>);

fn outgoing(from: &mut Store, to: &Store) -> Outgoing {
    let mut docs = Vec::new();
    for (key, heads) in from.manifest() {
        if to.heads(&key) != heads {
            docs.push((
                key.clone(),
                from.changes_for(&key, &to.heads(&key)).expect("changes"),
            ));
        }
    }
    let blobs = to
        .missing_blobs()
        .into_iter()
        .filter(|h| from.has_blob(h))
        .map(|h| (h, from.message_bytes(&h).expect("blob")))
        .collect();
    (docs, blobs)
}

fn deliver(to: &mut Store, (docs, blobs): Outgoing, now: Timestamp) {
    for (key, changes) in docs {
        to.apply_changes(&key, changes, now).expect("apply");
    }
    for (h, raw) in blobs {
        to.put_blob(&h, &raw, now).expect("blob");
    }
}

fn pair_mut(ns: &mut [Node], a: usize, b: usize) -> (&mut Node, &mut Node) {
    if a < b {
        let (l, r) = ns.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = ns.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

fn run(nodes: usize, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut ns: Vec<Node> = (0..nodes)
        .map(|i| {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = Store::open(dir.path(), cfg(i as u8)).expect("open");
            Node {
                dir,
                slot: i as u8,
                store: Some(store),
            }
        })
        .collect();
    let mut t = 1_800_000_000_000i64;
    let mut tick = || {
        t += 7;
        Timestamp(t)
    };
    for n in ns.iter_mut() {
        n.s().create_account("alice", tick()).expect("account");
    }
    let mut chk = Checker::default();
    let mut work = Workload::default();
    let observe = |chk: &mut Checker, ns: &mut [Node]| -> Result<(), TestCaseError> {
        for (i, n) in ns.iter_mut().enumerate() {
            chk.observe(i, n.s()).map_err(TestCaseError::fail)?;
        }
        Ok(())
    };
    for op in ops {
        let now = tick();
        match op {
            Op::Client { node, action } => {
                work.apply(ns[node].s(), &action, now, &mut chk)
                    .map_err(TestCaseError::fail)?;
            }
            Op::Pull { into, from } => {
                if into != from {
                    let (a, b) = pair_mut(&mut ns, into, from);
                    a.s().pull_from(b.s(), now).expect("pull");
                }
            }
            Op::Exchange { a, b } => {
                if a != b {
                    let (x, y) = pair_mut(&mut ns, a, b);
                    let (sx, sy) = (x.s(), y.s());
                    let to_y = outgoing(sx, sy);
                    let to_x = outgoing(sy, sx);
                    deliver(sy, to_y, now);
                    deliver(sx, to_x, now);
                }
            }
            Op::Reopen { node, compact } => {
                let n = &mut ns[node];
                if compact {
                    n.s().compact().expect("compact");
                }
                n.store = None;
                n.store = Some(Store::open(n.dir.path(), cfg(n.slot)).expect("reopen"));
            }
        }
        observe(&mut chk, &mut ns)?;
    }
    // Heal: full mesh until quiescent (fix-ups made while merging are changes too).
    let mut rounds = 0;
    loop {
        rounds += 1;
        prop_assert!(
            rounds <= 12,
            "no quiescence after {rounds} full-mesh rounds"
        );
        for i in 0..nodes {
            for j in 0..nodes {
                if i != j {
                    let now = tick();
                    let (a, b) = pair_mut(&mut ns, i, j);
                    a.s().pull_from(b.s(), now).expect("pull");
                }
            }
            observe(&mut chk, &mut ns)?;
        }
        let m0 = ns[0].s().manifest();
        if ns
            .iter_mut()
            .all(|n| n.s().manifest() == m0 && n.s().missing_blobs().is_empty())
        {
            break;
        }
    }
    let first = visible(ns[0].s());
    for n in ns.iter_mut().skip(1) {
        prop_assert_eq!(&visible(n.s()), &first, "I5: nodes differ after heal");
    }
    // Idempotence: one more round changes nothing.
    let manifest = ns[0].s().manifest();
    for i in 1..nodes {
        let now = tick();
        let (l, r) = ns.split_at_mut(i);
        l[0].s().pull_from(r[0].s(), now).expect("pull");
    }
    prop_assert_eq!(ns[0].s().manifest(), manifest, "re-sync changed state");
    work.check_nothing_lost(ns[0].s())
        .map_err(TestCaseError::fail)?;
    Ok(())
}

fn cases() -> u32 {
    std::env::var("TANDEM_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn two_replicas_keep_the_invariants(ops in proptest::collection::vec(op(2), 1..60)) {
        run(2, ops)?;
    }

    #[test]
    fn three_replicas_keep_the_invariants(ops in proptest::collection::vec(op(3), 1..60)) {
        run(3, ops)?;
    }
}
