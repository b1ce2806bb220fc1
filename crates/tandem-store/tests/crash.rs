//! Crash test: a child process appends in a loop and is killed with SIGKILL at random moments;
//! after reopening, every acknowledged message must be there, intact, exactly once.
//!
//! The child is this same test binary, started with `TANDEM_CRASH_CHILD` set, running only
//! `crash_child`. Compaction is set to run every few dozen appends so that kills also land in
//! the middle of snapshots. `TANDEM_CRASH_ITERS` and `TANDEM_CRASH_SEED` change the run.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use tandem_store::{BlobHash, Flag, Store, StoreConfig, Timestamp};

fn cfg() -> StoreConfig {
    StoreConfig {
        slot: 0,
        actor: Some([1; 16]),
        durable: true,
        compact_after_bytes: 24 * 1024,
        ..StoreConfig::default()
    }
}

fn body(i: u64) -> Vec<u8> {
    format!(
        "From: crash@test\r\nSubject: message {i}\r\nMessage-ID: <{i}@crash>\r\n\r\n{}\r\n",
        "x".repeat((i % 7 * 100) as usize)
    )
    .into_bytes()
}

/// The child: appends forever, printing `ack N` once append N returned Ok.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("TANDEM_CRASH_CHILD") else {
        return;
    };
    let start: u64 = std::env::var("TANDEM_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let mut s = Store::open(&dir, cfg()).unwrap();
    let now = Timestamp(1_800_000_000_000 + start as i64);
    s.create_account("alice", now).unwrap();
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    let mut out = std::io::stdout().lock();
    for i in start.. {
        let flags = if i % 3 == 0 { vec![Flag::Seen] } else { vec![] };
        s.append(
            "alice",
            &ib,
            &body(i),
            &flags,
            0,
            Timestamp(now.0 + i as i64),
        )
        .unwrap();
        writeln!(out, "ack {i}").unwrap();
        out.flush().unwrap();
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn acknowledged_appends_survive_sigkill() {
    if std::env::var("TANDEM_CRASH_CHILD").is_ok() {
        return;
    }
    let iters: u64 = std::env::var("TANDEM_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let seed: u64 = std::env::var("TANDEM_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7a3d_e5c1);
    eprintln!("crash test: {iters} kills, seed {seed} (TANDEM_CRASH_SEED to replay)");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: BTreeMap<BlobHash, u64> = BTreeMap::new();
    let mut total_kills_mid_run = 0;
    for iter in 0..iters {
        let start = iter * 1_000_000;
        let mut child = Command::new(&exe)
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env("TANDEM_CRASH_CHILD", dir.path())
            .env("TANDEM_CRASH_START", start.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse::<u64>().ok()))
                .collect::<Vec<u64>>()
        });
        std::thread::sleep(Duration::from_millis(30 + rng.next() % 300));
        let still_running = child.try_wait().unwrap().is_none();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert!(still_running, "child exited on its own: it failed");
        total_kills_mid_run += 1;
        let acks = reader.join().unwrap();
        for i in &acks {
            acked.insert(BlobHash::of(&body(*i)), *i);
        }

        // Reopen: recovery must succeed, and every acknowledged message be there exactly once.
        let s = Store::open(dir.path(), cfg())
            .unwrap_or_else(|e| panic!("reopen after kill {iter}: {e}"));
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        let mut seen: BTreeMap<BlobHash, usize> = BTreeMap::new();
        for m in s.messages("alice", &ib).unwrap() {
            *seen.entry(m.blob).or_default() += 1;
            let raw = s
                .message_bytes(&m.blob)
                .unwrap_or_else(|e| panic!("message {} unreadable: {e}", m.uid));
            assert_eq!(BlobHash::of(&raw), m.blob);
        }
        for (h, i) in &acked {
            assert_eq!(
                seen.get(h).copied().unwrap_or(0),
                1,
                "acknowledged message {i} missing or duplicated after kill {iter}"
            );
        }
        for (h, n) in &seen {
            assert_eq!(*n, 1, "message {h} stored {n} times");
        }
        eprintln!(
            "kill {iter}: {} acknowledged in this run, {} in all, {} stored",
            acks.len(),
            acked.len(),
            seen.len()
        );
    }
    assert_eq!(total_kills_mid_run, iters);
    assert!(!acked.is_empty(), "the child never acknowledged anything");
}
