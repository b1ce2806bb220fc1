//! Model-based property test: one store against a plain in-memory model of IMAP mailboxes.
//!
//! Random mailbox and message operations (with reopen and compaction in between) go to both;
//! after every step the store must show exactly the model's mailboxes, UIDs, flags and bodies,
//! and refuse exactly what the model refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use tandem_store::{Flag, FlagOp, Store, StoreConfig, Timestamp};

const NAMES: [&str; 7] = ["INBOX", "A", "A/B", "A/B/C", "D", "D/E", "Trash"];
const FLAGS: [&str; 4] = ["\\Seen", "\\Flagged", "\\Deleted", "$Label1"];

#[derive(Debug, Clone)]
enum Op {
    Append {
        mbox: usize,
        flags: u8,
    },
    Store {
        mbox: usize,
        pick: usize,
        op: u8,
        flags: u8,
    },
    Expunge {
        mbox: usize,
        pick: usize,
    },
    Copy {
        from: usize,
        pick: usize,
        to: usize,
        mv: bool,
    },
    Create {
        name: usize,
    },
    Rename {
        from: usize,
        to: usize,
    },
    Delete {
        name: usize,
    },
    Reopen {
        compact: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let m = 0..NAMES.len();
    prop_oneof![
        5 => (m.clone(), 0u8..16).prop_map(|(mbox, flags)| Op::Append { mbox, flags }),
        4 => (m.clone(), any::<usize>(), 0u8..3, 0u8..16).prop_map(|(mbox, pick, op, flags)| Op::Store { mbox, pick, op, flags }),
        2 => (m.clone(), any::<usize>()).prop_map(|(mbox, pick)| Op::Expunge { mbox, pick }),
        2 => (m.clone(), any::<usize>(), m.clone(), any::<bool>()).prop_map(|(from, pick, to, mv)| Op::Copy { from, pick, to, mv }),
        2 => m.clone().prop_map(|name| Op::Create { name }),
        1 => (m.clone(), m.clone()).prop_map(|(from, to)| Op::Rename { from, to }),
        1 => m.prop_map(|name| Op::Delete { name }),
        1 => any::<bool>().prop_map(|compact| Op::Reopen { compact }),
    ]
}

fn flags_of(bits: u8) -> BTreeSet<String> {
    (0..4)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| FLAGS[i].to_string())
        .collect()
}

#[derive(Debug, Clone, Default)]
struct MBox {
    max_uid: u32,
    msgs: BTreeMap<u32, (u64, BTreeSet<String>)>,
}

impl MBox {
    fn alloc(&mut self) -> u32 {
        let u = if self.max_uid == 0 {
            1
        } else {
            (self.max_uid - 1) / 16 * 16 + 17
        };
        self.max_uid = u;
        u
    }
}

#[derive(Debug, Default)]
struct Model {
    boxes: BTreeMap<String, MBox>,
}

impl Model {
    fn new() -> Model {
        let mut m = Model::default();
        for n in ["INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"] {
            m.boxes.insert(n.into(), MBox::default());
        }
        m
    }

    fn inside(n: &str, parent: &str) -> bool {
        n.len() > parent.len() && n.starts_with(parent) && n.as_bytes()[parent.len()] == b'/'
    }

    fn ancestors(n: &str) -> Vec<String> {
        let parts: Vec<&str> = n.split('/').collect();
        (1..parts.len()).map(|i| parts[..i].join("/")).collect()
    }

    fn create(&mut self, n: &str) -> bool {
        if self.boxes.contains_key(n) {
            return false;
        }
        for a in Self::ancestors(n) {
            self.boxes.entry(a).or_default();
        }
        self.boxes.insert(n.into(), MBox::default());
        true
    }

    fn rename(&mut self, from: &str, to: &str) -> bool {
        if from == "INBOX"
            || !self.boxes.contains_key(from)
            || self.boxes.contains_key(to)
            || Self::inside(to, from)
        {
            return false;
        }
        let moving: Vec<String> = self
            .boxes
            .keys()
            .filter(|k| *k == from || Self::inside(k, from))
            .cloned()
            .collect();
        for k in moving {
            let b = self.boxes.remove(&k).unwrap();
            self.boxes.insert(format!("{to}{}", &k[from.len()..]), b);
        }
        for a in Self::ancestors(to) {
            self.boxes.entry(a).or_default();
        }
        true
    }

    fn delete(&mut self, n: &str) -> bool {
        if n == "INBOX"
            || !self.boxes.contains_key(n)
            || self.boxes.keys().any(|k| Self::inside(k, n))
        {
            return false;
        }
        self.boxes.remove(n);
        true
    }
}

fn body(c: u64) -> Vec<u8> {
    format!("Subject: model {c}\r\n\r\nbody {c}\r\n").into_bytes()
}

fn cfg() -> StoreConfig {
    StoreConfig {
        slot: 0,
        actor: Some([9; 16]),
        durable: false,
        compact_after_bytes: 16 * 1024,
        ..StoreConfig::default()
    }
}

fn check(s: &Store, m: &Model) -> Result<(), TestCaseError> {
    let names: Vec<String> = s
        .list_mailboxes("u")
        .unwrap()
        .into_iter()
        .map(|x| x.name.to_string())
        .collect();
    let want: Vec<String> = m.boxes.keys().cloned().collect();
    prop_assert_eq!(&names, &want);
    for (name, b) in &m.boxes {
        let id = s.mailbox_id("u", name).unwrap();
        let got: Vec<(u32, Vec<u8>, BTreeSet<String>)> = s
            .messages("u", &id)
            .unwrap()
            .into_iter()
            .map(|x| {
                (
                    x.uid,
                    s.message_bytes(&x.blob).unwrap(),
                    x.flags.iter().map(|f| f.to_string()).collect(),
                )
            })
            .collect();
        let exp: Vec<(u32, Vec<u8>, BTreeSet<String>)> = b
            .msgs
            .iter()
            .map(|(u, (c, f))| (*u, body(*c), f.clone()))
            .collect();
        prop_assert_eq!(got, exp, "mailbox {}", name);
        let st = s.status("u", &id).unwrap();
        prop_assert_eq!(st.exists as usize, b.msgs.len());
        prop_assert!(st.uidnext > b.max_uid);
    }
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), cfg()).unwrap();
    let mut clock = 1_800_000_000_000i64;
    let mut now = || {
        clock += 3;
        Timestamp(clock)
    };
    s.create_account("u", now()).unwrap();
    let mut m = Model::new();
    let mut content = 0u64;
    for op in ops {
        let t = now();
        match op {
            Op::Append { mbox, flags } => {
                let name = NAMES[mbox];
                if let Some(b) = m.boxes.get_mut(name) {
                    content += 1;
                    let fl: Vec<Flag> = flags_of(flags)
                        .iter()
                        .map(|f| Flag::parse(f).unwrap())
                        .collect();
                    let id = s.mailbox_id("u", name).unwrap();
                    let r = s.append("u", &id, &body(content), &fl, 0, t).unwrap();
                    let uid = b.alloc();
                    prop_assert_eq!(r.uid, uid);
                    b.msgs.insert(uid, (content, flags_of(flags)));
                }
            }
            Op::Store {
                mbox,
                pick,
                op,
                flags,
            } => {
                let name = NAMES[mbox];
                if let Some(b) = m.boxes.get_mut(name)
                    && !b.msgs.is_empty()
                {
                    let uid = *b.msgs.keys().nth(pick % b.msgs.len()).unwrap();
                    let fs = flags_of(flags);
                    let (opk, cur) = (op, &mut b.msgs.get_mut(&uid).unwrap().1);
                    let kind = match opk {
                        0 => {
                            cur.extend(fs.iter().cloned());
                            FlagOp::Add
                        }
                        1 => {
                            cur.retain(|f| !fs.contains(f));
                            FlagOp::Remove
                        }
                        _ => {
                            *cur = fs.clone();
                            FlagOp::Replace
                        }
                    };
                    let fl: Vec<Flag> = fs.iter().map(|f| Flag::parse(f).unwrap()).collect();
                    let id = s.mailbox_id("u", name).unwrap();
                    s.store_flags("u", &id, &[uid], kind, &fl, None, t).unwrap();
                }
            }
            Op::Expunge { mbox, pick } => {
                let name = NAMES[mbox];
                if let Some(b) = m.boxes.get_mut(name)
                    && !b.msgs.is_empty()
                {
                    let uid = *b.msgs.keys().nth(pick % b.msgs.len()).unwrap();
                    b.msgs.remove(&uid);
                    let id = s.mailbox_id("u", name).unwrap();
                    prop_assert_eq!(s.expunge("u", &id, &[uid], t).unwrap(), vec![uid]);
                }
            }
            Op::Copy { from, pick, to, mv } => {
                let (fname, tname) = (NAMES[from], NAMES[to]);
                if m.boxes.contains_key(fname)
                    && m.boxes.contains_key(tname)
                    && !m.boxes[fname].msgs.is_empty()
                {
                    let fb = &m.boxes[fname];
                    let uid = *fb.msgs.keys().nth(pick % fb.msgs.len()).unwrap();
                    let msg = fb.msgs[&uid].clone();
                    if mv {
                        m.boxes.get_mut(fname).unwrap().msgs.remove(&uid);
                    }
                    let tb = m.boxes.get_mut(tname).unwrap();
                    let new = tb.alloc();
                    tb.msgs.insert(new, msg);
                    let (fid, tid) = (
                        s.mailbox_id("u", fname).unwrap(),
                        s.mailbox_id("u", tname).unwrap(),
                    );
                    let r = if mv {
                        s.move_messages("u", &fid, &[uid], &tid, t).unwrap()
                    } else {
                        s.copy("u", &fid, &[uid], &tid, t).unwrap()
                    };
                    prop_assert_eq!(r.pairs, vec![(uid, new)]);
                }
            }
            Op::Create { name } => {
                let ok = m.create(NAMES[name]);
                prop_assert_eq!(s.create_mailbox("u", NAMES[name], t).is_ok(), ok);
            }
            Op::Rename { from, to } => {
                let ok = m.rename(NAMES[from], NAMES[to]);
                prop_assert_eq!(s.rename_mailbox("u", NAMES[from], NAMES[to], t).is_ok(), ok);
            }
            Op::Delete { name } => {
                let ok = m.delete(NAMES[name]);
                prop_assert_eq!(s.delete_mailbox("u", NAMES[name], t).is_ok(), ok);
            }
            Op::Reopen { compact } => {
                if compact {
                    s.compact().unwrap();
                }
                drop(s);
                s = Store::open(dir.path(), cfg()).unwrap();
            }
        }
        check(&s, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("TANDEM_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        ..ProptestConfig::default()
    })]

    #[test]
    fn store_matches_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
