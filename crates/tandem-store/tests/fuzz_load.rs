//! Loading a store whose files hold arbitrary damage (bytes overwritten, truncated, appended,
//! replaced; in the journal, snapshots, view file, node file or a blob): opening either
//! succeeds or fails with an error, never panics, and whatever opens answers reads. (That a
//! torn journal tail loses nothing acknowledged is the crash test's job, `tests/crash.rs`.)
//! `TANDEM_FUZZ_CASES` sets the cases (default 64).

use proptest::prelude::*;
use tandem_store::{Store, StoreConfig, Timestamp};

fn cases() -> u32 {
    std::env::var("TANDEM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

const NOW: Timestamp = Timestamp(1_800_000_000_000);

fn cfg() -> StoreConfig {
    StoreConfig {
        durable: false,
        ..StoreConfig::default()
    }
}

/// A store with a few messages; returns its directory and every file in it.
fn seeded() -> (tempfile::TempDir, Vec<std::path::PathBuf>) {
    let d = tempfile::tempdir().expect("tmp");
    {
        let mut s = Store::open(d.path(), cfg()).expect("store");
        s.create_account("alice", NOW).expect("account");
        let ib = s.mailbox_id("alice", "INBOX").expect("inbox");
        for i in 0..3 {
            s.append(
                "alice",
                &ib,
                format!("Subject: {i}\r\n\r\nbody\r\n").as_bytes(),
                &[],
                0,
                NOW,
            )
            .expect("append");
        }
        s.compact().expect("compact");
        s.append("alice", &ib, b"Subject: after\r\n\r\nx\r\n", &[], 0, NOW)
            .expect("append");
    }
    let mut files = Vec::new();
    let mut stack = vec![d.path().to_owned()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).expect("dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.ends_with("LOCK") {
                files.push(p);
            }
        }
    }
    files.sort();
    (d, files)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn any_damage_to_any_file_is_an_error_or_a_good_open(
        which in any::<prop::sample::Index>(),
        mode in 0u8..4,
        pos in any::<prop::sample::Index>(),
        bytes in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let (d, files) = seeded();
        let f = which.get(&files);
        let mut data = std::fs::read(f).expect("read");
        match mode {
            // Overwrite some bytes in place.
            0 if !data.is_empty() => {
                let at = pos.index(data.len());
                for (i, b) in bytes.iter().enumerate() {
                    if at + i < data.len() {
                        data[at + i] = *b;
                    }
                }
            }
            // Truncate.
            1 => data.truncate(pos.index(data.len() + 1)),
            // Append garbage.
            2 => data.extend_from_slice(&bytes),
            // Replace wholesale.
            _ => data = bytes.clone(),
        }
        std::fs::write(f, &data).expect("write");
        match Store::open(d.path(), cfg()) {
            Ok(s) => {
                // Whatever opened must answer reads without panicking.
                if let Ok(ib) = s.mailbox_id("alice", "INBOX") {
                    for m in s.messages("alice", &ib).unwrap_or_default() {
                        let _ = s.message_bytes(&m.blob);
                        let _ = s.message_meta(&m.blob);
                    }
                }
            }
            Err(e) => {
                // A clear error, naming something.
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
}
