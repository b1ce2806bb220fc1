//! Store benchmark: prints one JSON line per figure,
//! `{"bench":…,"metric":…,"value":…,"unit":…}`.
//!
//! ```text
//! cargo bench -p tandem-store --bench store              # full: 100,000 and 1,000,000 messages
//! cargo bench -p tandem-store --bench store -- --quick   # CI size: 10,000 messages
//! ```
//!
//! Figures: durable appends per second (each acknowledged after fsync), durable flag changes
//! per second, open time and peak RSS of a store with one big mailbox (measured in a fresh child
//! process so that building the store does not count), metadata bytes on disk per message, and
//! the time to merge 10,000 remote changes. Benchmarks print numbers; nothing here asserts a time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use tandem_store::{Flag, FlagOp, NewMessage, Store, StoreConfig, Timestamp};

fn emit(bench: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{{\"bench\":\"{bench}\",\"metric\":\"{metric}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}"
    );
}

fn message(i: u64, size: usize) -> Vec<u8> {
    let head = format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: alice@example.org\r\nSubject: benchmark message {i}\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{i}@bench.example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    );
    let mut m = head.into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again.\r\n");
    }
    m
}

fn cfg(durable: bool) -> StoreConfig {
    StoreConfig {
        slot: 0,
        actor: Some([1; 16]),
        durable,
        ..StoreConfig::default()
    }
}

fn t(ms: i64) -> Timestamp {
    Timestamp(1_800_000_000_000 + ms)
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_size(p: &Path, skip: &str) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.file_name().is_some_and(|f| f == skip) {
                continue;
            }
            if path.is_dir() {
                n += dir_size(&path, skip);
            } else if let Ok(m) = e.metadata() {
                n += m.len();
            }
        }
    }
    n
}

/// Child mode: open the store, touch the mailbox, report open time and peak RSS.
fn open_child(dir: &str, bench: &str) {
    let start = Instant::now();
    let s = Store::open(dir, cfg(true)).unwrap();
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    let st = s.status("alice", &ib).unwrap();
    let uids = s.uids("alice", &ib).unwrap();
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(uids.len() as u32, st.exists);
    emit(bench, "messages", st.exists as f64, "count");
    emit(bench, "open_time", ms, "ms");
    emit(bench, "open_peak_rss", peak_rss_mib(), "MiB");
}

fn durable_appends(n: u64) {
    let d = tempfile::tempdir().unwrap();
    let mut s = Store::open(d.path(), cfg(true)).unwrap();
    s.create_account("alice", t(0)).unwrap();
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    let msgs: Vec<Vec<u8>> = (0..n).map(|i| message(i, 4096)).collect();
    let start = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        s.append("alice", &ib, m, &[], 0, t(i as i64)).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    emit("append_durable_4k", "throughput", n as f64 / secs, "msg/s");
    emit(
        "append_durable_4k",
        "latency_mean",
        secs * 1000.0 / n as f64,
        "ms",
    );

    let uids = s.uids("alice", &ib).unwrap();
    let start = Instant::now();
    for (i, u) in uids.iter().enumerate() {
        let op = if i % 2 == 0 {
            FlagOp::Add
        } else {
            FlagOp::Remove
        };
        s.store_flags(
            "alice",
            &ib,
            &[*u],
            op,
            &[Flag::Seen, Flag::Flagged],
            None,
            t(n as i64 + i as i64),
        )
        .unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    emit(
        "flag_change_durable",
        "throughput",
        uids.len() as f64 / secs,
        "changes/s",
    );
}

/// Builds a store with `n` messages in INBOX (durability off: this is setup, not the figure),
/// compacts it, then measures open time and RSS in a fresh process.
fn big_mailbox(n: u64, exe: &Path) {
    let bench = format!("mailbox_{n}");
    let d = tempfile::tempdir().unwrap();
    let start = Instant::now();
    {
        let mut s = Store::open(d.path(), cfg(false)).unwrap();
        s.create_account("alice", t(0)).unwrap();
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        let batch = 2000u64;
        let mut i = 0u64;
        while i < n {
            let raws: Vec<Vec<u8>> = (i..(i + batch).min(n)).map(|k| message(k, 600)).collect();
            let msgs: Vec<NewMessage<'_>> = raws
                .iter()
                .enumerate()
                .map(|(k, r)| NewMessage {
                    raw: r,
                    flags: if k % 3 == 0 { vec![Flag::Seen] } else { vec![] },
                    internal_date: 1_800_000_000,
                })
                .collect();
            s.append_batch("alice", &ib, &msgs, t(i as i64)).unwrap();
            i += batch;
        }
        s.compact().unwrap();
    }
    emit(&bench, "build_time", start.elapsed().as_secs_f64(), "s");
    let meta = dir_size(d.path(), "blobs");
    emit(
        &bench,
        "metadata_on_disk_per_message",
        meta as f64 / n as f64,
        "B",
    );
    let out = Command::new(exe)
        .args(["--open-child", d.path().to_str().unwrap(), &bench])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// Two replicas share `base` messages; A makes `changes` flag changes (one change each); time
/// for B to merge them.
fn merge_remote(base: u64, changes: u64) {
    let d = tempfile::tempdir().unwrap();
    let mut a = Store::open(d.path().join("a"), cfg(false)).unwrap();
    let mut b = Store::open(
        d.path().join("b"),
        StoreConfig {
            slot: 1,
            actor: Some([2; 16]),
            ..cfg(false)
        },
    )
    .unwrap();
    a.create_account("alice", t(0)).unwrap();
    let ib = a.mailbox_id("alice", "INBOX").unwrap();
    let raws: Vec<Vec<u8>> = (0..base).map(|k| message(k, 600)).collect();
    for chunk in raws.chunks(1000) {
        let msgs: Vec<NewMessage<'_>> = chunk
            .iter()
            .map(|r| NewMessage {
                raw: r,
                flags: vec![],
                internal_date: 0,
            })
            .collect();
        a.append_batch("alice", &ib, &msgs, t(1)).unwrap();
    }
    Store::sync_pair(&mut a, &mut b, t(2)).unwrap();
    let uids = a.uids("alice", &ib).unwrap();
    for i in 0..changes as usize {
        let u = uids[i % uids.len()];
        let op = if (i / uids.len()).is_multiple_of(2) {
            FlagOp::Add
        } else {
            FlagOp::Remove
        };
        a.store_flags(
            "alice",
            &ib,
            &[u],
            op,
            &[Flag::Seen],
            None,
            t(10 + i as i64),
        )
        .unwrap();
    }
    let start = Instant::now();
    b.pull_from(&mut a, t(1_000_000)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(
        a.messages("alice", &ib).unwrap(),
        b.messages("alice", &ib).unwrap()
    );
    emit(
        &format!("merge_{changes}_remote_changes"),
        "time",
        secs * 1000.0,
        "ms",
    );
    emit(
        &format!("merge_{changes}_remote_changes"),
        "throughput",
        changes as f64 / secs,
        "changes/s",
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--open-child") {
        open_child(&args[i + 1], &args[i + 2]);
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let exe = std::env::current_exe().unwrap();
    durable_appends(if quick { 200 } else { 2000 });
    merge_remote(if quick { 2000 } else { 10_000 }, 10_000);
    if quick {
        big_mailbox(10_000, &exe);
    } else {
        big_mailbox(100_000, &exe);
        big_mailbox(1_000_000, &exe);
    }
}
