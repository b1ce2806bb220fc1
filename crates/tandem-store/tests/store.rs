//! Scenario tests of the store's public API: one behaviour per test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tandem_store::{
    Error, Flag, FlagOp, MailboxId, Modseq, NewMessage, PartProgress, SpecialUse, Store,
    StoreConfig, Timestamp,
};

const T0: i64 = 1_800_000_000_000;

fn now(step: i64) -> Timestamp {
    Timestamp(T0 + step)
}

fn cfg(slot: u8) -> StoreConfig {
    StoreConfig {
        slot,
        actor: Some([slot + 1; 16]),
        durable: false,
        ..StoreConfig::default()
    }
}

fn open(dir: &std::path::Path, slot: u8) -> Store {
    Store::open(dir, cfg(slot)).expect("open store")
}

fn msg(n: u32) -> Vec<u8> {
    format!("From: a@example.org\r\nTo: b@example.org\r\nSubject: message {n}\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n").into_bytes()
}

fn new_store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().expect("tempdir");
    let mut s = open(d.path(), 0);
    s.create_account("alice", now(0)).expect("account");
    (d, s)
}

fn inbox(s: &Store) -> MailboxId {
    s.mailbox_id("alice", "INBOX").expect("inbox")
}

#[test]
fn a_new_account_has_inbox_and_special_use_mailboxes() {
    let (_d, s) = new_store();
    let list = s.list_mailboxes("alice").unwrap();
    let names: Vec<&str> = list.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash"]
    );
    let sent = list.iter().find(|m| m.name.as_str() == "Sent").unwrap();
    assert_eq!(sent.role, Some(SpecialUse::Sent));
    assert!(list.iter().all(|m| m.subscribed && m.uidvalidity > 0));
    assert_eq!(s.mailbox_id("alice", "inbox").unwrap(), inbox(&s));
    assert!(matches!(
        s.mailbox_id("bob", "INBOX"),
        Err(Error::NoSuchAccount(_))
    ));
}

#[test]
fn append_assigns_ascending_uids_of_the_nodes_class() {
    let (_d, mut s) = new_store();
    let ib = inbox(&s);
    let a = s.append("alice", &ib, &msg(1), &[], 100, now(1)).unwrap();
    let b = s
        .append("alice", &ib, &msg(2), &[Flag::Seen], 200, now(2))
        .unwrap();
    assert_eq!((a.uid, b.uid), (1, 17));
    assert!(b.modseq > a.modseq);
    let st = s.status("alice", &ib).unwrap();
    assert_eq!((st.exists, st.unseen, st.uidnext), (2, 1, 18));
    assert_eq!(st.highest_modseq, b.modseq);
    let m = s.message("alice", &ib, 17).unwrap();
    assert_eq!(m.internal_date, 200);
    assert!(m.flags.contains(&Flag::Seen));
    assert_eq!(s.message_bytes(&m.blob).unwrap(), msg(2));
    assert_eq!(
        s.message_meta(&m.blob).unwrap().envelope.subject.as_deref(),
        Some("message 2")
    );
}

#[test]
fn identical_bodies_are_stored_once_with_one_emailid() {
    let (d, mut s) = new_store();
    let ib = inbox(&s);
    s.append("alice", &ib, &msg(1), &[], 0, now(1)).unwrap();
    s.append("alice", &ib, &msg(1), &[], 0, now(2)).unwrap();
    let ms = s.messages("alice", &ib).unwrap();
    assert_eq!(ms.len(), 2);
    assert_eq!(ms[0].email_id, ms[1].email_id);
    assert_eq!(s.blob_stats().bodies, 1);
    drop(s);
    let s = open(d.path(), 0);
    assert_eq!(s.blob_stats().bodies, 1);
}

#[test]
fn flag_changes_add_remove_replace_and_unchangedsince() {
    let (_d, mut s) = new_store();
    let ib = inbox(&s);
    let u = s.append("alice", &ib, &msg(1), &[], 0, now(1)).unwrap();
    let kw = Flag::parse("$Work").unwrap();
    let r = s
        .store_flags(
            "alice",
            &ib,
            &[u.uid],
            FlagOp::Add,
            &[Flag::Seen, kw.clone()],
            None,
            now(2),
        )
        .unwrap();
    assert_eq!(r.updated.len(), 1);
    let m1 = r.updated[0].modseq;
    assert!(m1 > u.modseq);
    // No change, no new MODSEQ.
    let r = s
        .store_flags(
            "alice",
            &ib,
            &[u.uid],
            FlagOp::Add,
            &[Flag::Seen],
            None,
            now(3),
        )
        .unwrap();
    assert!(r.updated.is_empty());
    assert_eq!(s.message("alice", &ib, u.uid).unwrap().modseq, m1);
    let r = s
        .store_flags(
            "alice",
            &ib,
            &[u.uid],
            FlagOp::Replace,
            &[Flag::Flagged],
            None,
            now(4),
        )
        .unwrap();
    let f: Vec<String> = r.updated[0].flags.iter().map(|f| f.to_string()).collect();
    assert_eq!(f, ["\\Flagged"]);
    // UNCHANGEDSINCE below the current MODSEQ: refused and reported.
    let r = s
        .store_flags(
            "alice",
            &ib,
            &[u.uid],
            FlagOp::Remove,
            &[Flag::Flagged],
            Some(m1),
            now(5),
        )
        .unwrap();
    assert_eq!(r.modified, vec![u.uid]);
    assert!(
        s.message("alice", &ib, u.uid)
            .unwrap()
            .flags
            .contains(&Flag::Flagged)
    );
    // Unknown UIDs are ignored.
    let r = s
        .store_flags(
            "alice",
            &ib,
            &[999],
            FlagOp::Add,
            &[Flag::Seen],
            None,
            now(6),
        )
        .unwrap();
    assert!(r.updated.is_empty() && r.modified.is_empty());
    let changed = s.changed_since("alice", &ib, m1).unwrap();
    assert_eq!(changed.len(), 1);
}

#[test]
fn expunge_reports_vanished_uids_with_modseqs() {
    let (_d, mut s) = new_store();
    let ib = inbox(&s);
    let a = s.append("alice", &ib, &msg(1), &[], 0, now(1)).unwrap();
    let b = s.append("alice", &ib, &msg(2), &[], 0, now(2)).unwrap();
    let before = s.status("alice", &ib).unwrap().highest_modseq;
    assert_eq!(
        s.expunge("alice", &ib, &[a.uid, 555], now(3)).unwrap(),
        vec![a.uid]
    );
    assert_eq!(s.uids("alice", &ib).unwrap(), vec![b.uid]);
    assert_eq!(s.vanished_since("alice", &ib, before).unwrap(), vec![a.uid]);
    let after = s.status("alice", &ib).unwrap().highest_modseq;
    assert!(after > before);
    assert!(s.vanished_since("alice", &ib, after).unwrap().is_empty());
    // UIDs are never reused after an expunge.
    let c = s.append("alice", &ib, &msg(3), &[], 0, now(4)).unwrap();
    assert!(c.uid > b.uid);
}

#[test]
fn copy_and_move_report_uid_pairs() {
    let (_d, mut s) = new_store();
    let ib = inbox(&s);
    let arch = s.mailbox_id("alice", "Archive").unwrap();
    let a = s
        .append("alice", &ib, &msg(1), &[Flag::Seen], 0, now(1))
        .unwrap();
    let b = s.append("alice", &ib, &msg(2), &[], 0, now(2)).unwrap();
    let c = s.copy("alice", &ib, &[a.uid], &arch, now(3)).unwrap();
    assert_eq!(c.pairs, vec![(a.uid, 1)]);
    assert_eq!(c.uidvalidity, s.status("alice", &arch).unwrap().uidvalidity);
    assert!(
        s.message("alice", &arch, 1)
            .unwrap()
            .flags
            .contains(&Flag::Seen)
    );
    let m = s
        .move_messages("alice", &ib, &[b.uid], &arch, now(4))
        .unwrap();
    assert_eq!(m.pairs, vec![(b.uid, 17)]);
    assert_eq!(s.uids("alice", &ib).unwrap(), vec![a.uid]);
    assert_eq!(s.uids("alice", &arch).unwrap(), vec![1, 17]);
}

#[test]
fn create_rename_delete_with_hierarchy() {
    let (_d, mut s) = new_store();
    let child = s.create_mailbox("alice", "Work/2026/Q4", now(1)).unwrap();
    let names = |s: &Store| {
        s.list_mailboxes("alice")
            .unwrap()
            .into_iter()
            .map(|m| m.name.to_string())
            .collect::<Vec<_>>()
    };
    assert!(names(&s).contains(&"Work".to_string()));
    assert!(names(&s).contains(&"Work/2026".to_string()));
    assert!(matches!(
        s.create_mailbox("alice", "Work", now(2)),
        Err(Error::MailboxExists(_))
    ));
    let uv = s.status("alice", &child).unwrap().uidvalidity;
    s.append("alice", &child, &msg(1), &[], 0, now(3)).unwrap();

    s.rename_mailbox("alice", "Work", "Job", now(4)).unwrap();
    let n = names(&s);
    assert!(n.contains(&"Job/2026/Q4".to_string()) && !n.iter().any(|x| x.starts_with("Work")));
    let st = s.status("alice", &child).unwrap();
    assert_eq!(
        (st.name.as_str(), st.uidvalidity, st.exists),
        ("Job/2026/Q4", uv, 1)
    );

    assert!(matches!(
        s.delete_mailbox("alice", "Job", now(5)),
        Err(Error::HasChildren(_))
    ));
    assert!(matches!(
        s.delete_mailbox("alice", "INBOX", now(5)),
        Err(Error::InboxImmutable(_))
    ));
    assert!(matches!(
        s.rename_mailbox("alice", "INBOX", "X", now(5)),
        Err(Error::InboxImmutable(_))
    ));
    assert!(matches!(
        s.rename_mailbox("alice", "Job", "Job/inner", now(5)),
        Err(Error::InvalidMailboxName { .. })
    ));
    s.delete_mailbox("alice", "Job/2026/Q4", now(6)).unwrap();
    assert!(matches!(
        s.status("alice", &child),
        Err(Error::NoSuchMailbox(_))
    ));

    // Re-creating a name gives a greater UIDVALIDITY (RFC 3501 2.3.1.1).
    let again = s.create_mailbox("alice", "Job/2026/Q4", now(7)).unwrap();
    let uv2 = s.status("alice", &again).unwrap().uidvalidity;
    assert!(uv2 > uv, "{uv2} > {uv}");
    // Renaming a mailbox onto a name used before also gives a greater UIDVALIDITY there.
    s.delete_mailbox("alice", "Job/2026/Q4", now(8)).unwrap();
    let other = s.create_mailbox("alice", "Other", now(9)).unwrap();
    s.rename_mailbox("alice", "Other", "Job/2026/Q4", now(10))
        .unwrap();
    assert!(s.status("alice", &other).unwrap().uidvalidity > uv2);
}

#[test]
fn bad_names_are_refused_with_a_reason() {
    let (_d, mut s) = new_store();
    for bad in ["", "a//b", "x*", "tab\there", "/lead"] {
        let e = s.create_mailbox("alice", bad, now(1)).unwrap_err();
        assert!(
            matches!(e, Error::InvalidMailboxName { .. }),
            "{bad:?}: {e}"
        );
    }
    assert!(matches!(
        s.create_account("a/b", now(1)),
        Err(Error::InvalidAccountName(_))
    ));
    assert!(Flag::parse("bad flag").is_err());
}

#[test]
fn subscriptions_are_by_name() {
    let (_d, mut s) = new_store();
    s.set_subscribed("alice", "Nonexistent", true, now(1))
        .unwrap();
    s.set_subscribed("alice", "Junk", false, now(2)).unwrap();
    let subs = s.subscriptions("alice").unwrap();
    assert!(subs.contains(&"Nonexistent".to_string()));
    assert!(!subs.contains(&"Junk".to_string()));
}

#[test]
fn everything_survives_reopen_with_and_without_compaction() {
    let d = tempfile::tempdir().unwrap();
    let snapshot = |s: &Store| {
        let mut out = Vec::new();
        for m in s.list_mailboxes("alice").unwrap() {
            let st = s.status("alice", &m.id).unwrap();
            out.push(format!(
                "{} {:?} {:?}",
                m.name,
                st,
                s.messages("alice", &m.id).unwrap()
            ));
        }
        out
    };
    let before = {
        let mut s = open(d.path(), 0);
        s.create_account("alice", now(0)).unwrap();
        let ib = inbox(&s);
        for i in 0..20 {
            s.append("alice", &ib, &msg(i), &[], 0, now(i as i64))
                .unwrap();
        }
        s.store_flags(
            "alice",
            &ib,
            &[1, 17],
            FlagOp::Add,
            &[Flag::Seen],
            None,
            now(30),
        )
        .unwrap();
        s.expunge("alice", &ib, &[33], now(31)).unwrap();
        s.create_mailbox("alice", "Lists/rust", now(32)).unwrap();
        snapshot(&s)
    };
    let mut s = open(d.path(), 0);
    assert_eq!(snapshot(&s), before, "after journal replay");
    s.compact().unwrap();
    drop(s);
    let mut s = open(d.path(), 0);
    assert_eq!(snapshot(&s), before, "after compaction");
    // Writes after a compaction land in the new journal and survive too.
    let ib = inbox(&s);
    let a = s.append("alice", &ib, &msg(99), &[], 0, now(40)).unwrap();
    drop(s);
    let s = open(d.path(), 0);
    assert_eq!(s.message("alice", &ib, a.uid).unwrap().uid, a.uid);
    assert!(a.uid > 16 * 20);
}

#[test]
fn a_damaged_view_snapshot_is_rebuilt_from_the_documents() {
    let d = tempfile::tempdir().unwrap();
    let before = {
        let mut s = open(d.path(), 0);
        s.create_account("alice", now(0)).unwrap();
        let ib = inbox(&s);
        for i in 0..5 {
            s.append("alice", &ib, &msg(i), &[Flag::Seen], 0, now(i as i64 + 1))
                .unwrap();
        }
        s.expunge("alice", &ib, &[17], now(10)).unwrap();
        s.compact().unwrap();
        visible(&s)
    };
    let epoch = std::fs::read_to_string(d.path().join("CURRENT")).unwrap();
    let view = d.path().join("state").join(epoch.trim()).join("view.bin");
    let mut bytes = std::fs::read(&view).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&view, &bytes).unwrap();
    let mut s = open(d.path(), 0);
    assert_eq!(visible(&s), before);
    // The rebuilt floor is conservative: new mail still goes above everything shown before.
    let ib = inbox(&s);
    assert!(
        s.append("alice", &ib, &msg(9), &[], 0, now(20))
            .unwrap()
            .uid
            > 65
    );
}

#[test]
fn a_store_refuses_to_open_under_another_slot() {
    let d = tempfile::tempdir().unwrap();
    drop(open(d.path(), 0));
    let e = Store::open(d.path(), cfg(1)).unwrap_err();
    assert!(e.to_string().contains("slot"), "{e}");
    assert!(matches!(
        Store::open(d.path(), StoreConfig { slot: 16, ..cfg(0) }),
        Err(Error::InvalidSlot(16))
    ));
}

#[test]
fn a_store_open_elsewhere_is_refused_not_shared() {
    let d = tempfile::tempdir().unwrap();
    let first = open(d.path(), 0);
    assert!(matches!(
        Store::open(d.path(), cfg(0)),
        Err(Error::Locked(_))
    ));
    drop(first);
    open(d.path(), 0);
}

#[test]
fn oversized_messages_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(
        d.path(),
        StoreConfig {
            max_message_size: 10,
            ..cfg(0)
        },
    )
    .unwrap();
    s.create_account("alice", now(0)).unwrap();
    let ib = inbox(&s);
    assert!(matches!(
        s.append("alice", &ib, &msg(1), &[], 0, now(1)),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(s.uids("alice", &ib).unwrap().is_empty());
}

// ----- two replicas -------------------------------------------------------------------------

fn pair() -> (tempfile::TempDir, Store, Store) {
    let d = tempfile::tempdir().unwrap();
    let mut a = open(&d.path().join("a"), 0);
    let mut b = open(&d.path().join("b"), 1);
    a.create_account("alice", now(0)).unwrap();
    b.create_account("alice", now(0)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(1)).unwrap();
    (d, a, b)
}

fn visible(s: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for m in s.list_mailboxes("alice").unwrap() {
        let st = s.status("alice", &m.id).unwrap();
        out.push(format!(
            "{} {} {} {}",
            m.name, m.id.0, st.uidvalidity, st.highest_modseq.0
        ));
        for x in s.messages("alice", &m.id).unwrap() {
            out.push(format!(
                "  {} {:?} {} {}",
                x.uid, x.flags, x.modseq.0, x.blob
            ));
        }
    }
    out
}

#[test]
fn both_nodes_creating_the_account_converge_on_the_same_mailboxes() {
    let (_d, a, b) = pair();
    assert_eq!(visible(&a), visible(&b));
    assert_eq!(a.list_mailboxes("alice").unwrap().len(), 6);
}

#[test]
fn concurrent_appends_never_share_a_uid_and_uidvalidity_stays() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    let uv = a.status("alice", &ib).unwrap().uidvalidity;
    let x = a.append("alice", &ib, &msg(1), &[], 0, now(2)).unwrap();
    let y = b.append("alice", &ib, &msg(2), &[], 0, now(2)).unwrap();
    assert_ne!(x.uid, y.uid);
    Store::sync_pair(&mut a, &mut b, now(3)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    assert_eq!(a.uids("alice", &ib).unwrap().len(), 2);
    assert_eq!(b.status("alice", &ib).unwrap().uidvalidity, uv);
}

#[test]
fn a_late_message_below_what_a_node_showed_is_lifted_above_it() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    // Partition: B appends one message (UID 2), A appends three (1, 17, 33).
    let late = b.append("alice", &ib, &msg(100), &[], 0, now(2)).unwrap();
    for i in 0..3 {
        a.append("alice", &ib, &msg(i), &[], 0, now(3 + i as i64))
            .unwrap();
    }
    let shown_next = a.status("alice", &ib).unwrap().uidnext;
    let shown_hms = a.status("alice", &ib).unwrap().highest_modseq;
    assert_eq!(late.uid, 2);
    a.pull_from(&mut b, now(10)).unwrap();
    let on_a = a.messages("alice", &ib).unwrap();
    let lifted = on_a
        .iter()
        .find(|m| m.blob == b.message("alice", &ib, 2).unwrap().blob)
        .unwrap();
    assert!(
        lifted.uid >= shown_next,
        "lifted to {} (UIDNEXT shown was {shown_next})",
        lifted.uid
    );
    assert_eq!((lifted.uid - 1) % 16, 0, "lifted into A's own class");
    assert!(lifted.modseq > shown_hms);
    // B learns of the lift: its clients see UID 2 vanish and the new UID appear.
    let b_hms = b.status("alice", &ib).unwrap().highest_modseq;
    Store::sync_pair(&mut a, &mut b, now(11)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    assert!(!b.uids("alice", &ib).unwrap().contains(&2));
    assert!(b.vanished_since("alice", &ib, b_hms).unwrap().contains(&2));
    assert!(
        b.changed_since("alice", &ib, b_hms)
            .unwrap()
            .iter()
            .any(|m| m.uid == lifted.uid)
    );
}

#[test]
fn flag_conflicts_resolve_to_the_later_write_on_both_nodes() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    let m = a.append("alice", &ib, &msg(1), &[], 0, now(2)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(3)).unwrap();
    a.store_flags(
        "alice",
        &ib,
        &[m.uid],
        FlagOp::Add,
        &[Flag::Seen],
        None,
        now(10),
    )
    .unwrap();
    b.store_flags(
        "alice",
        &ib,
        &[m.uid],
        FlagOp::Add,
        &[Flag::Seen],
        None,
        now(20),
    )
    .unwrap();
    b.store_flags(
        "alice",
        &ib,
        &[m.uid],
        FlagOp::Remove,
        &[Flag::Seen],
        None,
        now(21),
    )
    .unwrap();
    Store::sync_pair(&mut a, &mut b, now(30)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    assert!(
        !a.message("alice", &ib, m.uid)
            .unwrap()
            .flags
            .contains(&Flag::Seen)
    );
}

#[test]
fn expunge_wins_over_a_concurrent_flag_change() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    let m = a.append("alice", &ib, &msg(1), &[], 0, now(2)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(3)).unwrap();
    a.expunge("alice", &ib, &[m.uid], now(4)).unwrap();
    b.store_flags(
        "alice",
        &ib,
        &[m.uid],
        FlagOp::Add,
        &[Flag::Flagged],
        None,
        now(5),
    )
    .unwrap();
    Store::sync_pair(&mut a, &mut b, now(6)).unwrap();
    assert!(a.uids("alice", &ib).unwrap().is_empty());
    assert_eq!(visible(&a), visible(&b));
}

#[test]
fn same_name_created_on_both_nodes_is_one_mailbox() {
    let (_d, mut a, mut b) = pair();
    let ida = a.create_mailbox("alice", "Projects", now(2)).unwrap();
    let idb = b.create_mailbox("alice", "Projects", now(3)).unwrap();
    assert_eq!(ida, idb);
    a.append("alice", &ida, &msg(1), &[], 0, now(4)).unwrap();
    b.append("alice", &idb, &msg(2), &[], 0, now(4)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(5)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    assert_eq!(a.uids("alice", &ida).unwrap().len(), 2);
    assert_eq!(
        a.list_mailboxes("alice")
            .unwrap()
            .iter()
            .filter(|m| m.name.as_str() == "Projects")
            .count(),
        1
    );
}

#[test]
fn delete_on_one_node_while_mail_arrives_on_the_other_keeps_the_mail() {
    let (_d, mut a, mut b) = pair();
    let id = a.create_mailbox("alice", "Lists", now(2)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(3)).unwrap();
    a.delete_mailbox("alice", "Lists", now(4)).unwrap();
    let kept = b.append("alice", &id, &msg(7), &[], 0, now(5)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(6)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    let rec = a.mailbox_id("alice", "Recovered/Lists").unwrap();
    assert_eq!(rec, id);
    let info = a
        .list_mailboxes("alice")
        .unwrap()
        .into_iter()
        .find(|m| m.id == id)
        .unwrap();
    assert!(info.recovered);
    assert_eq!(a.uids("alice", &rec).unwrap(), vec![kept.uid]);
    assert!(matches!(
        a.rename_mailbox("alice", "Recovered/Lists", "Lists", now(6)),
        Err(Error::Recovered(_))
    ));
    // Once the mail is moved out, the recovery folder goes away by itself, on both nodes.
    let ib = inbox(&a);
    a.move_messages("alice", &rec, &[kept.uid], &ib, now(7))
        .unwrap();
    assert!(a.mailbox_id("alice", "Recovered/Lists").is_err());
    Store::sync_pair(&mut a, &mut b, now(9)).unwrap();
    assert!(b.mailbox_id("alice", "Recovered/Lists").is_err());
    assert_eq!(b.uids("alice", &ib).unwrap().len(), 1);
}

#[test]
fn concurrent_renames_onto_one_name_keep_both_mailboxes_apart() {
    let (_d, mut a, mut b) = pair();
    a.create_mailbox("alice", "One", now(2)).unwrap();
    a.create_mailbox("alice", "Two", now(2)).unwrap();
    Store::sync_pair(&mut a, &mut b, now(3)).unwrap();
    a.rename_mailbox("alice", "One", "Same", now(4)).unwrap();
    b.rename_mailbox("alice", "Two", "Same", now(4)).unwrap();
    let uv_a = a
        .status("alice", &a.mailbox_id("alice", "Same").unwrap())
        .unwrap()
        .uidvalidity;
    let uv_b = b
        .status("alice", &b.mailbox_id("alice", "Same").unwrap())
        .unwrap()
        .uidvalidity;
    assert_ne!(
        uv_a, uv_b,
        "two mailboxes under one name must not share a UIDVALIDITY"
    );
    Store::sync_pair(&mut a, &mut b, now(5)).unwrap();
    assert_eq!(visible(&a), visible(&b));
    let same: Vec<_> = a
        .list_mailboxes("alice")
        .unwrap()
        .into_iter()
        .filter(|m| m.name.as_str().starts_with("Same"))
        .collect();
    assert_eq!(same.len(), 2);
}

#[test]
fn a_message_is_not_shown_before_its_body_arrives() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    let m = a.append("alice", &ib, &msg(1), &[], 0, now(2)).unwrap();
    // Ship only the documents.
    for (key, _) in a.manifest() {
        let ch = a.changes_for(&key, &b.heads(&key)).unwrap();
        b.apply_changes(&key, ch, now(3)).unwrap();
    }
    assert!(b.uids("alice", &ib).unwrap().is_empty());
    let missing = b.missing_blobs();
    assert_eq!(missing.len(), 1);
    // A corrupted body is refused and changes nothing.
    assert!(matches!(
        b.put_blob(&missing[0], b"garbage", now(4)),
        Err(Error::BlobHashMismatch { .. })
    ));
    assert!(b.uids("alice", &ib).unwrap().is_empty());
    let raw = a.message_bytes(&missing[0]).unwrap();
    b.put_blob(&missing[0], &raw, now(5)).unwrap();
    assert_eq!(b.uids("alice", &ib).unwrap(), vec![m.uid]);
    assert!(b.missing_blobs().is_empty());
}

#[test]
fn a_body_in_parts_is_shown_once_whole_and_its_parts_survive_a_restart() {
    let (d, mut a, mut b) = pair();
    let ib = inbox(&a);
    let raw = format!("Subject: big\r\n\r\n{}\r\n", "q".repeat(10_000)).into_bytes();
    let m = a.append("alice", &ib, &raw, &[], 0, now(2)).unwrap();
    for (key, _) in a.manifest() {
        let ch = a.changes_for(&key, &b.heads(&key)).unwrap();
        b.apply_changes(&key, ch, now(3)).unwrap();
    }
    let h = b.missing_blobs()[0];
    let total = a.blob_size(&h).unwrap();
    a.check_blob(&h).unwrap();
    let part = |a: &Store, at: u64| a.blob_range(&h, at, 4096).unwrap();
    assert_eq!(
        b.put_blob_part(&h, total, 0, &part(&a, 0), now(4)).unwrap(),
        PartProgress::Stored { next: 4096 }
    );
    // A duplicate is ignored; a part past the end is refused.
    assert_eq!(
        b.put_blob_part(&h, total, 0, &part(&a, 0), now(4)).unwrap(),
        PartProgress::Ignored { next: 4096 }
    );
    assert!(matches!(
        b.put_blob_part(&h, total, total - 1, b"xx", now(4)),
        Err(Error::InvalidPart(_))
    ));
    assert!(
        b.uids("alice", &ib).unwrap().is_empty(),
        "not shown while partial"
    );
    // A restart keeps what arrived.
    drop(b);
    let mut b = open(&d.path().join("b"), 1);
    assert_eq!(b.partial_blob_len(&h), 4096);
    let mut at = 4096;
    while at < total {
        let p = part(&a, at);
        at += p.len() as u64;
        b.put_blob_part(&h, total, at - p.len() as u64, &p, now(5))
            .unwrap();
    }
    assert_eq!(b.uids("alice", &ib).unwrap(), vec![m.uid]);
    assert_eq!(b.message_bytes(&h).unwrap(), raw);
    assert_eq!(b.partial_blob_len(&h), 0);

    // Parts that do not add up to the hash are discarded, and the body is asked for anew.
    a.append("alice", &ib, b"Subject: two\r\n\r\nxyz\r\n", &[], 0, now(6))
        .unwrap();
    for (key, _) in a.manifest() {
        let ch = a.changes_for(&key, &b.heads(&key)).unwrap();
        b.apply_changes(&key, ch, now(7)).unwrap();
    }
    let h2 = b.missing_blobs()[0];
    assert!(matches!(
        b.put_blob_part(&h2, 5, 0, b"wrong", now(8)),
        Err(Error::BlobHashMismatch { .. })
    ));
    assert_eq!(b.partial_blob_len(&h2), 0);
    // A body above max_message_size is refused before anything is stored.
    assert!(matches!(
        b.put_blob_part(&h2, u64::MAX, 0, b"x", now(8)),
        Err(Error::MessageTooLarge { .. })
    ));
    assert_eq!(b.partial_blob_len(&h2), 0);

    // Parts of a transfer abandoned long enough are collected; fresh ones are kept.
    b.put_blob_part(&h2, 5, 0, b"ab", now(9)).unwrap();
    let wall = |ms_from_now: i64| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        Timestamp(t + ms_from_now)
    };
    assert_eq!(b.discard_stale_partial_blobs(wall(0), 60_000), 0);
    assert_eq!(b.partial_blob_len(&h2), 2);
    assert_eq!(b.discard_stale_partial_blobs(wall(120_000), 60_000), 1);
    assert_eq!(b.partial_blob_len(&h2), 0);
}

#[test]
fn malformed_changes_from_a_peer_are_refused_and_change_nothing() {
    let (_d, mut a, _b) = pair();
    let before = visible(&a);
    let key = "alice/inbox/1/0";
    assert!(matches!(
        a.apply_changes(key, vec![b"\x85\x6f\x4a\x83garbage".to_vec()], now(2)),
        Err(Error::BadChanges { .. })
    ));
    assert!(matches!(
        a.apply_changes("../../etc/passwd", vec![], now(2)),
        Err(Error::InvalidDocKey(_))
    ));
    assert_eq!(visible(&a), before);
    let ib = inbox(&a);
    a.append("alice", &ib, &msg(1), &[], 0, now(3)).unwrap();
}

#[test]
fn failover_after_convergence_shows_the_same_uids_and_uidvalidity() {
    let (_d, mut a, mut b) = pair();
    let ib = inbox(&a);
    for i in 0..5 {
        a.append("alice", &ib, &msg(i), &[], 0, now(2 + i as i64))
            .unwrap();
        b.append("alice", &ib, &msg(50 + i), &[], 0, now(2 + i as i64))
            .unwrap();
    }
    Store::sync_pair(&mut a, &mut b, now(20)).unwrap();
    let sa = a.status("alice", &ib).unwrap();
    let sb = b.status("alice", &ib).unwrap();
    assert_eq!((sa.uidvalidity, sa.exists), (sb.uidvalidity, sb.exists));
    assert_eq!(
        a.messages("alice", &ib).unwrap(),
        b.messages("alice", &ib).unwrap()
    );
    // Idempotent: syncing again changes nothing.
    let m = a.manifest();
    Store::sync_pair(&mut a, &mut b, now(21)).unwrap();
    assert_eq!(a.manifest(), m);
    let _ = Modseq(0);
}

#[test]
fn import_keeps_uids_and_uidvalidity_across_nodes_and_reopen() {
    let (dir, mut a) = new_store();
    let ib = inbox(&a);
    let m = |n: u32| NewMessage {
        raw: Box::leak(msg(n).into_boxed_slice()),
        flags: vec![Flag::Seen],
        internal_date: 1_700_000_000 + n as i64,
    };
    let out = a
        .import_batch(
            "alice",
            &ib,
            Some(1_796_407_373),
            &[(3, m(3)), (7, m(7)), (100, m(100))],
            now(1),
        )
        .unwrap();
    assert_eq!(
        out.iter().map(|o| o.uid).collect::<Vec<_>>(),
        vec![3, 7, 100]
    );
    let st = a.status("alice", &ib).unwrap();
    assert_eq!(
        (st.uidvalidity, st.uidnext, st.exists),
        (1_796_407_373, 101, 3)
    );
    // New mail goes above the imported UIDs, in this node's class.
    let next = a.append("alice", &ib, &msg(200), &[], 0, now(2)).unwrap();
    assert_eq!(next.uid, 113);
    // Importing again into a used mailbox is refused, and nothing changes.
    let e = a
        .import_batch("alice", &ib, None, &[(500, m(500))], now(3))
        .unwrap_err();
    assert!(matches!(e, Error::InvalidImport(_)), "{e}");
    let trash = a.mailbox_id("alice", "Trash").unwrap();
    assert!(
        a.import_batch("alice", &trash, None, &[(5, m(5)), (5, m(6))], now(3))
            .is_err()
    );
    assert_eq!(a.uids("alice", &trash).unwrap(), Vec::<u32>::new());
    // A second node sees the same UIDs and UIDVALIDITY.
    let bdir = tempfile::tempdir().unwrap();
    let mut b = open(bdir.path(), 1);
    Store::sync_pair(&mut a, &mut b, now(4)).unwrap();
    let ibb = b.mailbox_id("alice", "INBOX").unwrap();
    assert_eq!(b.uids("alice", &ibb).unwrap(), vec![3, 7, 100, 113]);
    assert_eq!(b.status("alice", &ibb).unwrap().uidvalidity, 1_796_407_373);
    drop(a);
    let a = open(dir.path(), 0);
    assert_eq!(a.uids("alice", &ib).unwrap(), vec![3, 7, 100, 113]);
    assert_eq!(a.status("alice", &ib).unwrap().uidvalidity, 1_796_407_373);
}
