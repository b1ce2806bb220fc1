//! Two sessions over an in-memory pipe: the protocol flows, and what a hostile or mismatched
//! peer gets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use tandem_store::{BlobHash, Store, StoreConfig, Timestamp};
use tandem_sync::{CloseCode, Frame, PROTOCOL_VERSION, Session, SessionConfig};

fn store(dir: &std::path::Path, slot: u8) -> Store {
    let mut s = Store::open(
        dir,
        StoreConfig {
            slot,
            actor: Some([slot + 1; 16]),
            durable: false,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    s.create_account("alice", Timestamp(1_800_000_000_000))
        .unwrap();
    s
}

fn msg(n: u32) -> Vec<u8> {
    format!("Subject: {n}\r\nMessage-ID: <{n}@x>\r\n\r\nbody {n}\r\n").into_bytes()
}

/// Moves frames both ways (through their byte encoding) until both sides are quiet.
fn pump(a: &mut Store, sa: &mut Session, b: &mut Store, sb: &mut Session, now: Timestamp) -> usize {
    let mut frames = 0;
    loop {
        let mut moved = false;
        while let Some(f) = sa.poll_frame() {
            let bytes = f.encode();
            let (f, _) = Frame::decode(&bytes).unwrap().unwrap();
            sb.handle_frame(b, f, now);
            frames += 1;
            moved = true;
        }
        while let Some(f) = sb.poll_frame() {
            let bytes = f.encode();
            let (f, _) = Frame::decode(&bytes).unwrap().unwrap();
            sa.handle_frame(a, f, now);
            frames += 1;
            moved = true;
        }
        if !moved {
            return frames;
        }
    }
}

struct Pair {
    _d: tempfile::TempDir,
    a: Store,
    b: Store,
    sa: Session,
    sb: Session,
}

fn pair() -> Pair {
    let d = tempfile::tempdir().unwrap();
    let a = store(&d.path().join("a"), 0);
    let b = store(&d.path().join("b"), 1);
    let sa = Session::new(&a, SessionConfig::default());
    let sb = Session::new(&b, SessionConfig::default());
    Pair {
        _d: d,
        a,
        b,
        sa,
        sb,
    }
}

/// Appends messages 0..n to INBOX; returns INBOX's id.
fn fill(s: &mut Store, n: u32) -> tandem_store::MailboxId {
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    for i in 0..n {
        let t = Timestamp(1_800_000_000_100 + i as i64);
        s.append("alice", &ib, &msg(i), &[], 0, t).unwrap();
    }
    ib
}

fn view(s: &Store) -> Vec<(u32, BlobHash)> {
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    s.messages("alice", &ib)
        .unwrap()
        .iter()
        .map(|m| (m.uid, m.blob))
        .collect()
}

#[test]
fn first_sync_brings_documents_and_bodies() {
    let mut p = pair();
    fill(&mut p.a, 20);
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    assert_eq!(view(&p.b).len(), 20);
    assert_eq!(view(&p.a), view(&p.b));
    assert_eq!(p.a.manifest(), p.b.manifest());
    assert_eq!(p.sb.stats().blobs_in, 20);
    assert!(p.sa.closed().is_none() && p.sb.closed().is_none());
}

#[test]
fn large_bodies_are_answered_within_a_byte_budget() {
    let d = tempfile::tempdir().unwrap();
    let mut a = store(&d.path().join("a"), 0);
    let mut b = store(&d.path().join("b"), 1);
    let budget = 1 << 20;
    let cfg = SessionConfig {
        max_blob_bytes_per_answer: budget,
        ..SessionConfig::default()
    };
    let ib = a.mailbox_id("alice", "INBOX").unwrap();
    let body = 300_000;
    for i in 0..20 {
        let raw = format!("Subject: {i}\r\n\r\n{}\r\n", "z".repeat(body)).into_bytes();
        a.append("alice", &ib, &raw, &[], 0, Timestamp(1_800_000_000_000))
            .unwrap();
    }
    let (mut sa, mut sb) = (Session::new(&a, cfg.clone()), Session::new(&b, cfg));
    let now = Timestamp(1_800_000_001_000);
    // As pump(), measuring the body bytes A queues in one go (one answer per round here).
    let mut most = 0;
    let mut laters = 0;
    loop {
        let mut moved = false;
        let mut blob_bytes = 0;
        while let Some(f) = sa.poll_frame() {
            match &f {
                Frame::Blob { data, .. } => blob_bytes += data.len(),
                Frame::Later { .. } => laters += 1,
                _ => {}
            }
            sb.handle_frame(&mut b, f, now);
            moved = true;
        }
        most = most.max(blob_bytes);
        while let Some(f) = sb.poll_frame() {
            sa.handle_frame(&mut a, f, now);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(view(&b).len(), 20, "every message arrived, without a timer");
    assert_eq!(view(&a), view(&b));
    assert!(laters > 0, "the budget was used");
    assert!(
        most <= budget + body + 100,
        "one answer held {most} body bytes, budget {budget}"
    );
    assert_eq!(sb.stats().blobs_in, 20, "no body was sent twice");
}

#[test]
fn large_bodies_travel_in_parts_and_a_cut_transfer_resumes() {
    let d = tempfile::tempdir().unwrap();
    let mut a = store(&d.path().join("a"), 0);
    let mut b = store(&d.path().join("b"), 1);
    let cfg = SessionConfig {
        part_bytes: 64 << 10,
        ..SessionConfig::default()
    };
    let ib = a.mailbox_id("alice", "INBOX").unwrap();
    let raw = format!("Subject: big\r\n\r\n{}\r\n", "p".repeat(300_000)).into_bytes();
    a.append("alice", &ib, &raw, &[], 0, Timestamp(1_800_000_000_000))
        .unwrap();
    let h = view(&a)[0].1;
    let now = Timestamp(1_800_000_001_000);

    // First connection: cut after two parts reached B.
    let (mut sa, mut sb) = (Session::new(&a, cfg.clone()), Session::new(&b, cfg.clone()));
    let mut parts = 0;
    'cut: loop {
        while let Some(f) = sa.poll_frame() {
            if let Frame::BlobPart { data, .. } = &f {
                assert!(data.len() <= 64 << 10, "a part is at most part_bytes");
                parts += 1;
            }
            sb.handle_frame(&mut b, f, now);
            if parts == 2 {
                break 'cut;
            }
        }
        let mut moved = false;
        while let Some(f) = sb.poll_frame() {
            sa.handle_frame(&mut a, f, now);
            moved = true;
        }
        assert!(moved, "stalled before two parts");
    }
    assert_eq!(b.partial_blob_len(&h), 128 << 10);
    assert!(
        view(&b).is_empty(),
        "a message is not shown before its whole body is here"
    );

    // Second connection: B asks for the rest from where it stopped, not from the start.
    let (mut sa, mut sb) = (Session::new(&a, cfg.clone()), Session::new(&b, cfg));
    let mut first_offset = None;
    loop {
        let mut moved = false;
        while let Some(f) = sa.poll_frame() {
            if let Frame::BlobPart { offset, .. } = &f {
                first_offset.get_or_insert(*offset);
            }
            sb.handle_frame(&mut b, f, now);
            moved = true;
        }
        while let Some(f) = sb.poll_frame() {
            sa.handle_frame(&mut a, f, now);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert_eq!(first_offset, Some(128 << 10), "resumed, not restarted");
    assert_eq!(view(&b), view(&a));
    assert_eq!(b.message_bytes(&h).unwrap(), raw);
    assert!(sa.closed().is_none() && sb.closed().is_none());
}

#[test]
fn parts_nobody_asked_for_are_dropped_and_a_repeated_request_is_answered_once() {
    let mut p = pair();
    fill(&mut p.a, 1);
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    // A peer pushing parts of a body B never asked for: nothing is written.
    let stranger = BlobHash([42; 32]);
    p.sb.handle_frame(
        &mut p.b,
        Frame::BlobPart {
            hash: stranger,
            total: 1 << 20,
            offset: 0,
            data: vec![0; 4096],
        },
        now,
    );
    assert_eq!(p.b.partial_blob_len(&stranger), 0);
    assert!(p.sb.closed().is_none());
    // The same hash sixteen times in one request: one body in the answer.
    let h = view(&p.a)[0].1;
    p.sa.handle_frame(
        &mut p.a,
        Frame::WantBlobs {
            hashes: vec![h; 16],
        },
        now,
    );
    let mut blobs = 0;
    while let Some(f) = p.sa.poll_frame() {
        if matches!(f, Frame::Blob { .. } | Frame::BlobPart { .. }) {
            blobs += 1;
        }
    }
    assert_eq!(blobs, 1);
}

#[test]
fn a_local_write_is_pushed_without_waiting_for_a_timer() {
    let mut p = pair();
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    let ib = p.a.mailbox_id("alice", "INBOX").unwrap();
    p.a.append("alice", &ib, &msg(1), &[], 0, now).unwrap();
    p.sa.local_change(&mut p.a);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    assert_eq!(view(&p.b), view(&p.a));
    assert_eq!(view(&p.b).len(), 1);
}

#[test]
fn a_reconnect_sends_only_what_differs() {
    let mut p = pair();
    let ib = fill(&mut p.a, 50);
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    p.a.append("alice", &ib, &msg(99), &[], 0, now).unwrap();
    // New connection.
    let mut sa = Session::new(&p.a, SessionConfig::default());
    let mut sb = Session::new(&p.b, SessionConfig::default());
    pump(&mut p.a, &mut sa, &mut p.b, &mut sb, now);
    assert_eq!(view(&p.b), view(&p.a));
    assert_eq!(
        sa.stats().changes_out,
        1,
        "only the new append's change is sent"
    );
    assert_eq!(sb.stats().blobs_in, 1);
}

#[test]
fn a_peer_with_another_protocol_version_is_refused_with_a_reason() {
    let mut p = pair();
    let now = Timestamp(1_800_000_001_000);
    p.sb.handle_frame(
        &mut p.b,
        Frame::Hello {
            version: PROTOCOL_VERSION + 1,
            slot: 0,
        },
        now,
    );
    let closed = p.sb.closed().unwrap();
    assert_eq!(closed.code, CloseCode::VersionMismatch);
    assert!(closed.reason.contains("not supported"), "{}", closed.reason);
    let mut frames = Vec::new();
    while let Some(f) = p.sb.poll_frame() {
        frames.push(f);
    }
    assert!(matches!(frames.last(), Some(Frame::Close { code: 1, .. })));
}

#[test]
fn a_peer_claiming_our_slot_is_refused() {
    let mut p = pair();
    p.sb.handle_frame(
        &mut p.b,
        Frame::Hello {
            version: PROTOCOL_VERSION,
            slot: 1,
        },
        Timestamp(0),
    );
    assert_eq!(p.sb.closed().unwrap().code, CloseCode::Protocol);
}

#[test]
fn frames_before_hello_are_a_protocol_error() {
    let mut p = pair();
    p.sb.handle_frame(&mut p.b, Frame::Manifest { docs: vec![] }, Timestamp(0));
    assert_eq!(p.sb.closed().unwrap().code, CloseCode::Protocol);
}

#[test]
fn a_body_that_does_not_match_its_hash_closes_the_session_and_stores_nothing() {
    let mut p = pair();
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    let h = BlobHash::of(b"the real body");
    p.sb.handle_frame(
        &mut p.b,
        Frame::Blob {
            hash: h,
            data: b"something else".to_vec(),
        },
        now,
    );
    assert_eq!(p.sb.closed().unwrap().code, CloseCode::BadData);
    assert!(!p.b.has_blob(&h));
    // The store keeps serving.
    let ib = p.b.mailbox_id("alice", "INBOX").unwrap();
    p.b.append("alice", &ib, &msg(5), &[], 0, now).unwrap();
}

#[test]
fn malformed_changes_close_the_session_and_change_nothing() {
    let mut p = pair();
    let now = Timestamp(1_800_000_001_000);
    pump(&mut p.a, &mut p.sa, &mut p.b, &mut p.sb, now);
    let before = p.b.manifest();
    p.sb.handle_frame(
        &mut p.b,
        Frame::Changes {
            docs: vec![(
                "alice/inbox/0/0".into(),
                vec![b"not an automerge change".to_vec()],
            )],
        },
        now,
    );
    assert_eq!(p.sb.closed().unwrap().code, CloseCode::BadData);
    assert_eq!(p.b.manifest(), before);
    let mut p2 = pair();
    p2.sb.handle_frame(
        &mut p2.b,
        Frame::Hello {
            version: PROTOCOL_VERSION,
            slot: 0,
        },
        now,
    );
    p2.sb.handle_frame(
        &mut p2.b,
        Frame::Changes {
            docs: vec![("../../etc".into(), vec![vec![1]])],
        },
        now,
    );
    assert_eq!(p2.sb.closed().unwrap().code, CloseCode::BadData);
}
