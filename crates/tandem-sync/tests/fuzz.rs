//! Fuzzing sync frames without a nightly toolchain: arbitrary bytes into the frame decoder, and
//! arbitrary (well-framed) frames into a session over a real store. Nothing may panic, the
//! store must stay readable, and a hostile peer ends with a Close, not a crash.
//! `TANDEM_FUZZ_CASES` sets the cases (default 64).

use proptest::prelude::*;
use tandem_store::{BlobHash, ChangeHash, Store, StoreConfig, Timestamp};
use tandem_sync::{Frame, Session, SessionConfig};

fn cases() -> u32 {
    std::env::var("TANDEM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn hash() -> impl Strategy<Value = [u8; 32]> {
    prop::array::uniform32(any::<u8>())
}

fn frame() -> impl Strategy<Value = Frame> {
    let key = prop::sample::select(vec![
        "alice/registry".to_owned(),
        "alice/inbox/0/0".to_owned(),
        "alice/inbox/1/0".to_owned(),
        "bob/x/99/7".to_owned(),
        "../../etc".to_owned(),
        String::new(),
    ]);
    prop_oneof![
        (any::<u16>(), any::<u8>()).prop_map(|(version, slot)| Frame::Hello { version, slot }),
        prop::collection::vec(
            (
                key.clone(),
                prop::collection::vec(hash().prop_map(ChangeHash), 0..3)
            ),
            0..4
        )
        .prop_map(|docs| Frame::Manifest { docs }),
        prop::collection::vec(
            (
                key,
                prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..3)
            ),
            0..3
        )
        .prop_map(|docs| Frame::Changes { docs }),
        prop::collection::vec(hash().prop_map(BlobHash), 0..4)
            .prop_map(|hashes| Frame::WantBlobs { hashes }),
        (hash(), prop::collection::vec(any::<u8>(), 0..100)).prop_map(|(h, data)| Frame::Blob {
            hash: BlobHash(h),
            data
        }),
        prop::collection::vec(hash().prop_map(BlobHash), 0..4)
            .prop_map(|hashes| Frame::Missing { hashes }),
        prop::collection::vec(hash().prop_map(BlobHash), 0..4)
            .prop_map(|hashes| Frame::Later { hashes }),
        (hash(), any::<u64>()).prop_map(|(h, offset)| Frame::WantPart {
            hash: BlobHash(h),
            offset
        }),
        (
            hash(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(h, total, offset, data)| Frame::BlobPart {
                hash: BlobHash(h),
                total,
                offset,
                data
            }),
        prop::collection::vec(hash().prop_map(ChangeHash), 0..4)
            .prop_map(|hashes| Frame::Applied { hashes }),
        (any::<u16>(), "[ -~]{0,20}").prop_map(|(code, reason)| Frame::Close { code, reason }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let mut rest: &[u8] = &bytes;
        while let Ok(Some((_, used))) = Frame::decode(rest) {
            prop_assert!(used > 0 && used <= rest.len());
            rest = &rest[used..];
        }
    }

    #[test]
    fn every_frame_round_trips(f in frame()) {
        let bytes = f.encode();
        prop_assert_eq!(Frame::decode(&bytes), Ok(Some((f, bytes.len()))));
    }

    #[test]
    fn a_hostile_peer_cannot_panic_or_corrupt_a_session(frames in prop::collection::vec(frame(), 1..12)) {
        let dir = tempfile::tempdir().expect("tmp");
        let mut store = Store::open(dir.path(), StoreConfig { durable: false, ..StoreConfig::default() }).expect("store");
        store.create_account("alice", NOW).expect("account");
        let ib = store.mailbox_id("alice", "INBOX").expect("inbox");
        store.append("alice", &ib, b"Subject: x\r\n\r\nbody\r\n", &[], 0, NOW).expect("append");
        let mut s = Session::new(&store, SessionConfig::default());
        // Half the cases start with a valid Hello, so the frames reach the Ready phase.
        let mut t = NOW;
        if frames.len() % 2 == 0 {
            s.handle_frame(&mut store, Frame::Hello { version: tandem_sync::PROTOCOL_VERSION, slot: 5 }, t);
        }
        for f in frames {
            t = Timestamp(t.0 + 1000);
            s.handle_frame(&mut store, f, t);
            s.handle_timeout(&mut store, t);
            while s.poll_frame().is_some() {}
        }
        // The store still answers, and its own message is intact.
        prop_assert_eq!(store.uids("alice", &ib).expect("uids").len(), 1);
        drop(store);
        let again = Store::open(dir.path(), StoreConfig { durable: false, ..StoreConfig::default() });
        prop_assert!(again.is_ok(), "{:?}", again.err());
    }
}
