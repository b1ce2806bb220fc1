//! Sync benchmark over QUIC on loopback, JSON lines like the store benchmark:
//!
//! ```text
//! cargo bench -p tandem-net --bench sync              # 10,000 messages, 1,000 lag samples
//! cargo bench -p tandem-net --bench sync -- --quick   # CI size
//! ```
//!
//! - initial sync of N messages of ~4 KB to an empty node (the receiver runs in its own process,
//!   so its peak RSS is its own): wall time, bytes on the wire, receiver peak RSS; and, when
//!   `doveadm` is installed, `doveadm sync` of the same messages between two Dovecot maildirs;
//! - replication lag: append on A until visible in B's store, p50 and p99;
//! - heal: after a partition in which each side took 100 new messages and 1,000 flag changes,
//!   time until both stores hold the same state; and the same workload for `doveadm sync`
//!   between two maildirs (appends as new files, flag changes as maildir renames).
//!
//! `SYNC_N=N` changes the initial-sync size; `SYNC_MSG_KB=K` the message size (default 4); `SYNC_ONLY_INITIAL=1` stops after the initial sync
//! (and its dsync comparison, unless `SYNC_NO_DSYNC=1`); `SYNC_LAG_FILE=path` writes every lag
//! sample (ms, one per line); `SYNC_NODURABLE=1` runs the receiver without fsync (to see what
//! durability costs).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_net::{Identity, Node, NodeConfig, PeerConfig};
use tandem_store::{Flag, FlagOp, NewMessage, Store, StoreConfig, Timestamp};

fn emit(bench: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{{\"bench\":\"{bench}\",\"metric\":\"{metric}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}"
    );
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

fn message(i: u64) -> Vec<u8> {
    let mut m = format!(
        "From: Sender {i} <s{i}@example.org>\r\nTo: alice@example.org\r\nSubject: sync benchmark {i}\r\nDate: Fri, 4 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{i}@sync.bench>\r\n\r\n"
    )
    .into_bytes();
    let size = std::env::var("SYNC_MSG_KB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .map_or(4096, |kb| kb * 1024);
    while m.len() < size {
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n",
        );
    }
    m
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn open(dir: &Path, slot: u8, durable: bool) -> Arc<Mutex<Store>> {
    let mut s = Store::open(
        dir,
        StoreConfig {
            slot,
            durable,
            ..StoreConfig::default()
        },
    )
    .unwrap();
    s.create_account("alice", now()).unwrap();
    Arc::new(Mutex::new(s))
}

fn cfg() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..NodeConfig::default()
    }
}

/// Benchmarks print numbers, never hang: a wait that takes longer than this is a failure.
const GIVE_UP: Duration = Duration::from_secs(600);

fn check_deadline(start: Instant, what: &str) {
    assert!(start.elapsed() < GIVE_UP, "gave up waiting for {what}");
}

fn count(s: &Arc<Mutex<Store>>) -> usize {
    let s = s.lock().unwrap();
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    s.status("alice", &ib).unwrap().exists as usize
}

fn append_many(s: &Arc<Mutex<Store>>, ids: impl Iterator<Item = u64>) {
    let raws: Vec<Vec<u8>> = ids.map(message).collect();
    let mut s = s.lock().unwrap();
    let ib = s.mailbox_id("alice", "INBOX").unwrap();
    for chunk in raws.chunks(500) {
        let msgs: Vec<NewMessage<'_>> = chunk
            .iter()
            .map(|r| NewMessage {
                raw: r,
                flags: vec![],
                internal_date: 0,
            })
            .collect();
        s.append_batch("alice", &ib, &msgs, now()).unwrap();
    }
}

/// Child: the empty receiver (durable store). Prints its figures once it has `n` messages.
async fn receiver(dir: &str, a_id: &str, a_addr: &str, n: usize) {
    let dir = Path::new(dir);
    let identity = Identity::load_or_create(&dir.join("id")).unwrap();
    let store = open(
        &dir.join("store"),
        1,
        std::env::var("SYNC_NODURABLE").is_err(),
    );
    let start = Instant::now();
    let node = Node::start(identity, store.clone(), cfg()).await.unwrap();
    node.add_peer(PeerConfig {
        id: a_id.parse().unwrap(),
        addrs: vec![a_addr.parse().unwrap()],
    });
    while count(&store) < n {
        check_deadline(start, "the initial sync");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let (tx, rx) = node.traffic();
    emit("initial_sync", "time", secs, "s");
    emit("initial_sync", "throughput", n as f64 / secs, "msg/s");
    emit("initial_sync", "bytes_on_wire", (tx + rx) as f64, "B");
    emit("initial_sync", "receiver_peak_rss", peak_rss_mib(), "MiB");
    node.shutdown().await;
}

async fn initial_sync(n: u64) -> Option<f64> {
    let d = tempfile::tempdir().unwrap();
    let a_store = open(&d.path().join("a"), 0, false);
    append_many(&a_store, 0..n);
    a_store.lock().unwrap().compact().unwrap();
    let b_dir = d.path().join("b");
    let b_id = Identity::load_or_create(&b_dir.join("id"))
        .unwrap()
        .node_id();
    let a = Node::start(Identity::generate().unwrap(), a_store, cfg())
        .await
        .unwrap();
    a.add_peer(PeerConfig {
        id: b_id,
        addrs: vec![],
    });
    let exe = std::env::current_exe().unwrap();
    let args = vec![
        "--receiver".to_owned(),
        b_dir.display().to_string(),
        a.node_id().to_string(),
        a.local_addr().unwrap().to_string(),
        n.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || Command::new(exe).args(args).output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{stdout}");
    a.shutdown().await;
    stdout
        .lines()
        .find(|l| l.contains("\"initial_sync\",\"metric\":\"time\""))
        .and_then(|l| l.split("\"value\":").nth(1))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.parse().ok())
}

fn have_doveadm() -> bool {
    if Command::new("doveadm").arg("-V").output().is_err() {
        eprintln!(
            "doveadm not installed: skipping the Dovecot comparison (apt-get install dovecot-core)"
        );
        return false;
    }
    true
}

/// A Dovecot configuration whose mail is the maildir `src`, in `d`. Dovecot will not touch
/// mail as root, so the mail side runs as `nobody` (see [`chown`]).
fn dovecot_conf(d: &Path, src: &Path) -> std::path::PathBuf {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(src.join(sub)).unwrap();
    }
    std::fs::create_dir_all(d.join("run")).unwrap();
    std::fs::create_dir_all(d.join("state")).unwrap();
    let conf = d.join("dovecot.conf");
    std::fs::write(
        &conf,
        format!(
            "mail_location = maildir:{src}\nbase_dir = {run}\nstate_dir = {state}\nlog_path = /dev/stderr\nssl = no\nprotocols =\nmail_uid = nobody\nmail_gid = nogroup\n",
            src = src.display(),
            run = d.join("run").display(),
            state = d.join("state").display(),
        ),
    )
    .unwrap();
    conf
}

fn chown(d: &Path) {
    let _ = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(d)
        .status();
}

/// Times one `doveadm sync` (two-way) between the configured maildir and `dst`.
fn doveadm_sync(d: &Path, conf: &Path, dst: &Path) -> Option<f64> {
    chown(d);
    let start = Instant::now();
    let out = Command::new("doveadm")
        .args([
            "-c",
            conf.to_str().unwrap(),
            "sync",
            &format!("maildir:{}", dst.display()),
        ])
        .env("USER", "nobody")
        .env("HOME", d)
        .output()
        .unwrap();
    let secs = start.elapsed().as_secs_f64();
    if !out.status.success() {
        eprintln!(
            "doveadm sync failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(secs)
}

/// Message files in a maildir (cur and new).
fn maildir_files(m: &Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = ["cur", "new"]
        .iter()
        .flat_map(|s| std::fs::read_dir(m.join(s)).into_iter().flatten().flatten())
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// A temporary directory with a Dovecot configuration whose maildir `src/` holds the
/// benchmark's messages `0..n`, the same bytes Tandem syncs.
fn seeded_maildir(n: u64) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let conf = dovecot_conf(d.path(), &src);
    for i in 0..n {
        std::fs::write(src.join("cur").join(format!("{i}.bench:2,")), message(i)).unwrap();
    }
    (d, conf)
}

/// `doveadm sync` of the same messages from one maildir into an empty one, if Dovecot is here.
fn dsync(n: u64, tandem_secs: Option<f64>) {
    if !have_doveadm() {
        return;
    }
    let (d, conf) = seeded_maildir(n);
    let dst = d.path().join("dst");
    let Some(secs) = doveadm_sync(d.path(), &conf, &dst) else {
        return;
    };
    emit("initial_sync_dovecot_dsync", "time", secs, "s");
    emit(
        "initial_sync_dovecot_dsync",
        "messages",
        maildir_files(&dst).len() as f64,
        "count",
    );
    if let Some(t) = tandem_secs {
        emit("initial_sync", "tandem_over_dsync", t / secs, "ratio");
    }
}

/// The heal workload for dsync: two maildirs synced with `base` messages, then on each side
/// `appends` new messages and `flag_changes` flag changes (maildir renames), then one timed
/// `doveadm sync`.
fn dsync_heal(base: u64, appends: u64, flag_changes: u64, tandem_secs: Option<f64>) {
    if !have_doveadm() {
        return;
    }
    let (d, conf) = seeded_maildir(base);
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    if doveadm_sync(d.path(), &conf, &dst).is_none() {
        return;
    }
    for (k, m) in [(0u64, &src), (1, &dst)] {
        for i in 0..appends {
            let id = 2_000_000 + k * 10_000 + i;
            std::fs::write(m.join("new").join(format!("{id}.heal{k}")), message(id)).unwrap();
        }
        // Dovecot leaves what it synced in new/: a flag change moves a file to cur/ with the
        // flag letters after ":2,", as a mail client would.
        let mut files = maildir_files(m);
        for i in 0..flag_changes as usize {
            let letter = ['S', 'F'][i % 2];
            let at = (i * 7 + k as usize) % files.len();
            let old = files[at].clone();
            let name = old.file_name().unwrap().to_string_lossy().into_owned();
            let (stem, flags) = name.split_once(":2,").unwrap_or((&name, ""));
            if flags.contains(letter) {
                continue;
            }
            let mut f: Vec<char> = flags.chars().chain([letter]).collect();
            f.sort_unstable();
            let new = m
                .join("cur")
                .join(format!("{stem}:2,{}", f.into_iter().collect::<String>()));
            std::fs::rename(&old, &new).unwrap();
            files[at] = new;
        }
    }
    let Some(secs) = doveadm_sync(d.path(), &conf, &dst) else {
        return;
    };
    let (a, b) = (maildir_files(&src).len(), maildir_files(&dst).len());
    assert_eq!(a, b, "dsync left the two maildirs with different counts");
    emit("partition_heal_dovecot_dsync", "time", secs, "s");
    emit(
        "partition_heal_dovecot_dsync",
        "messages_after",
        a as f64,
        "count",
    );
    if let Some(t) = tandem_secs {
        emit("partition_heal", "tandem_over_dsync", t / secs, "ratio");
    }
}

async fn pair(d: &Path) -> (Node, Arc<Mutex<Store>>, Node, Arc<Mutex<Store>>, Identity) {
    let (ia, ib) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (sa, sb) = (open(&d.join("a"), 0, true), open(&d.join("b"), 1, true));
    let a = Node::start(ia, sa.clone(), cfg()).await.unwrap();
    let b = Node::start(ib.clone(), sb.clone(), cfg()).await.unwrap();
    a.add_peer(PeerConfig {
        id: b.node_id(),
        addrs: vec![b.local_addr().unwrap()],
    });
    b.add_peer(PeerConfig {
        id: a.node_id(),
        addrs: vec![a.local_addr().unwrap()],
    });
    let start = Instant::now();
    while a.connected().is_empty() || b.connected().is_empty() {
        check_deadline(start, "the nodes to connect");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (a, sa, b, sb, ib)
}

async fn lag(samples: usize) {
    let d = tempfile::tempdir().unwrap();
    let (a, sa, b, sb, _) = pair(d.path()).await;
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let raw = message(1_000_000 + i as u64);
        let start = Instant::now();
        {
            let mut s = sa.lock().unwrap();
            let ib = s.mailbox_id("alice", "INBOX").unwrap();
            s.append("alice", &ib, &raw, &[], 0, now()).unwrap();
        }
        a.notify_local_change();
        while count(&sb) <= i {
            check_deadline(start, "a replicated append");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        lat.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    if let Ok(path) = std::env::var("SYNC_LAG_FILE") {
        let text: String = lat.iter().map(|l| format!("{l:.3}\n")).collect();
        std::fs::write(path, text).unwrap();
    }
    lat.sort_by(|x, y| x.total_cmp(y));
    emit("replication_lag", "p50", lat[samples / 2], "ms");
    emit("replication_lag", "p99", lat[samples * 99 / 100], "ms");
    emit("replication_lag", "max", lat[samples - 1], "ms");
    a.shutdown().await;
    b.shutdown().await;
}

fn state(s: &Arc<Mutex<Store>>) -> Vec<tandem_store::ChangeHash> {
    s.lock()
        .unwrap()
        .manifest()
        .into_iter()
        .flat_map(|(_, h)| h)
        .collect()
}

async fn heal(base: u64, appends: u64, flag_changes: u64) -> f64 {
    let d = tempfile::tempdir().unwrap();
    let (a, sa, b, sb, ib) = pair(d.path()).await;
    append_many(&sa, 0..base);
    a.notify_local_change();
    let waited = Instant::now();
    while count(&sb) < base as usize {
        check_deadline(waited, "the base messages");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Partition: B's node goes away; both sides write.
    b.shutdown().await;
    for (k, s) in [(0u64, &sa), (1, &sb)] {
        let mut s = s.lock().unwrap();
        let inbox = s.mailbox_id("alice", "INBOX").unwrap();
        for i in 0..appends {
            s.append(
                "alice",
                &inbox,
                &message(2_000_000 + k * 10_000 + i),
                &[],
                0,
                now(),
            )
            .unwrap();
        }
        let uids = s.uids("alice", &inbox).unwrap();
        for i in 0..flag_changes as usize {
            let f = [Flag::Seen, Flag::Flagged][i % 2].clone();
            let u = uids[(i * 7 + k as usize) % uids.len()];
            s.store_flags("alice", &inbox, &[u], FlagOp::Add, &[f], None, now())
                .unwrap();
        }
    }
    let start = Instant::now();
    let b2 = Node::start(ib, sb.clone(), cfg()).await.unwrap();
    b2.add_peer(PeerConfig {
        id: a.node_id(),
        addrs: vec![a.local_addr().unwrap()],
    });
    let mut shown = false;
    loop {
        if std::env::var("SYNC_DEBUG").is_ok() && !shown && !b2.connected().is_empty() {
            eprintln!(
                "connected after {:?}; counts {} {}",
                start.elapsed(),
                count(&sa),
                count(&sb)
            );
            shown = true;
        }
        let same = state(&sa) == state(&sb)
            && sa.lock().unwrap().missing_blobs().is_empty()
            && sb.lock().unwrap().missing_blobs().is_empty();
        if same {
            break;
        }
        check_deadline(start, "convergence after the heal");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if std::env::var("SYNC_DEBUG").is_ok() {
        eprintln!("counts {} {}", count(&sa), count(&sb));
    }
    let secs = start.elapsed().as_secs_f64();
    emit("partition_heal", "time_to_converge", secs, "s");
    emit(
        "partition_heal",
        "messages_after",
        count(&sa) as f64,
        "count",
    );
    a.shutdown().await;
    b2.shutdown().await;
    secs
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--receiver") {
        receiver(
            &args[i + 1],
            &args[i + 2],
            &args[i + 3],
            args[i + 4].parse().unwrap(),
        )
        .await;
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let n = if quick {
        500
    } else {
        std::env::var("SYNC_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000)
    };
    let t = initial_sync(n).await;
    if std::env::var("SYNC_NO_DSYNC").is_err() {
        dsync(n, t);
    }
    if std::env::var("SYNC_ONLY_INITIAL").is_ok() {
        return;
    }
    lag(if quick { 50 } else { 1000 }).await;
    let base = if quick { 200 } else { 1000 };
    let t = heal(base, 100, 1000).await;
    dsync_heal(base, 100, 1000, Some(t));
}
