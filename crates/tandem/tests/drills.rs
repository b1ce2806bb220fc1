//! Failure drills (issue 6) with real `tandem serve` processes and real clients (mbsync, Python's
//! imaplib and smtplib):
//!
//! - a network split between A and B (a UDP relay this test controls carries their QUIC
//!   traffic) with deliveries, flag changes, expunges, moves, a rename and creates on both
//!   sides, mbsync on each node and a client hopping between the nodes before, during and
//!   after; then the heal, timed;
//! - failover: mbsync against A, A killed, the same client state pointed at B;
//! - load: concurrent IMAP clients on both nodes with sync running, then identical dumps;
//! - a full disk (a small tmpfs in a mount namespace of our own) while serving, then space
//!   back; a data directory that turned read-only while the daemon was down.
//!
//! CI runs small sizes; `TANDEM_DRILL_CLIENTS` and `TANDEM_DRILL_SECONDS` make the load drill
//! the issue's 20 clients per node for 60 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn env(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// Carries UDP datagrams to `target`; while `cut` is set it drops them, both ways.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn new(target: u16, cut: Arc<AtomicBool>) -> Relay {
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(("127.0.0.1", target)).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        }
        let port = front.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        let (f2, b2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let (st, c, cu) = (stop.clone(), client.clone(), cut.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    *c.lock().unwrap() = Some(from);
                    if !cu.load(Ordering::Relaxed) {
                        let _ = back.send(&buf[..n]);
                    }
                }
            }
        });
        let st = stop.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                if let Ok(n) = b2.recv(&mut buf) {
                    let to = *client.lock().unwrap();
                    if let Some(to) = to
                        && !cut.load(Ordering::Relaxed)
                    {
                        let _ = f2.send_to(&buf[..n], to);
                    }
                }
            }
        });
        Relay { port, stop }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Each node trusts the other and dials it through the given relay ports.
fn pair_via(a: &Node, b: &Node, to_a: u16, to_b: u16) {
    ok(&tandem(
        a.path(),
        &["peer", "add", &b.id(), &format!("127.0.0.1:{to_b}")],
    ));
    ok(&tandem(
        b.path(),
        &["peer", "add", &a.id(), &format!("127.0.0.1:{to_a}")],
    ));
}

fn drill_py(args: &[String]) -> String {
    let o = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/drill.py"))
        .args(args)
        .output()
        .expect("python3");
    ok(&o)
}

/// Every mailbox of a node: UIDVALIDITY and (UID, Message-ID, flags) of each message.
fn dump(port: u16) -> Value {
    serde_json::from_str(&drill_py(&["dump".into(), port.to_string()])).expect("dump json")
}

/// Waits until both nodes show the same dump; returns the time it took and the dump.
fn converge(a: u16, b: u16, limit: Duration) -> (Duration, Value) {
    let t = Instant::now();
    loop {
        let (da, db) = (dump(a), dump(b));
        if da == db {
            return (t.elapsed(), da);
        }
        assert!(
            t.elapsed() < limit,
            "not converged after {limit:?}:\nA: {da}\nB: {db}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Message-ID → how many times it occurs, over every mailbox of a dump.
fn ids(d: &Value) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for mb in d.as_object().unwrap().values() {
        for m in mb["messages"].as_array().unwrap() {
            *out.entry(m[1].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
    }
    out
}

/// The flags of the message with this Message-ID (the first copy found).
fn flags_of(d: &Value, id: &str) -> BTreeSet<String> {
    for mb in d.as_object().unwrap().values() {
        for m in mb["messages"].as_array().unwrap() {
            if m[1] == id {
                return m[2]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_owned())
                    .collect();
            }
        }
    }
    panic!("{id} not found")
}

fn uidvalidity(d: &Value, mailbox: &str) -> u64 {
    d[mailbox]["uidvalidity"].as_u64().unwrap()
}

fn deliver(port: u16, prefix: &str, from: u64, count: u64) -> Vec<String> {
    let got = python(
        DELIVER,
        &[port.to_string(), from.to_string(), count.to_string()],
    );
    let acked: Vec<String> = got
        .split_whitespace()
        .map(|i| format!("{prefix}{i}@example.org"))
        .collect();
    assert_eq!(acked.len() as u64, count, "every delivery acknowledged");
    acked
}

/// `APPEND` with a LITERAL+ literal, through the tiny client; the body is 100 KB, more than a
/// full file system's slack in partly used pages.
fn append_cmd(mailbox: &str, id: &str) -> String {
    let body = format!("{}\r\n", "y".repeat(98)).repeat(1000);
    let msg = format!("From: a@example.org\r\nSubject: {id}\r\nMessage-ID: <{id}>\r\n\r\n{body}");
    format!("APPEND {mailbox} {{{}+}}\r\n{msg}", msg.len())
}

fn tagged_ok(lines: &[String]) {
    for l in lines {
        if let Some((tag, rest)) = l.split_once(' ')
            && tag.starts_with('e')
            && tag[1..].chars().all(|c| c.is_ascii_digit())
        {
            assert!(rest.starts_with("OK"), "{l}\nin {lines:#?}");
        }
    }
}

fn mbsyncrc(dir: &Path, port: u16) -> PathBuf {
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    let rc = dir.join("mbsyncrc");
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount t\nHost 127.0.0.1\nPort {port}\nUser alice\nPass secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount t\n\n\
             MaildirStore local\nPath {m}/\nInbox {m}/INBOX\nSubFolders Verbatim\n\n\
             Channel c\nFar :remote:\nNear :local:\nPatterns INBOX Work\nCreate Near\nExpunge Both\nSyncState *\n",
            m = mail.display()
        ),
    )
    .unwrap();
    rc
}

/// One mbsync run; fails the test on any error.
fn mbsync(rc: &Path) {
    let out = Command::new("mbsync")
        .arg("-c")
        .arg(rc)
        .arg("-a")
        .output()
        .expect("mbsync is not installed: apt-get install isync");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !all.contains("Error"),
        "mbsync failed:\n{all}"
    );
}

/// Message files in a maildir folder (cur and new), by name without the flags suffix.
fn maildir(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                out.insert(n.split(":2,").next().unwrap_or(&n).to_owned());
            }
        }
    }
    out
}

#[test]
fn drill_partition_with_writes_on_both_sides_heals_and_clients_keep_working() {
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    let cut = Arc::new(AtomicBool::new(false));
    let to_a = Relay::new(a.sync, cut.clone());
    let to_b = Relay::new(b.sync, cut.clone());
    pair_via(&a, &b, to_a.port, to_b.port);
    a.start();
    b.start();
    let work = tempfile::tempdir().unwrap();
    let hop_state = work.path().join("hop.json").display().to_string();
    let hop = |ports: &[u16]| {
        let mut args = vec!["hop".to_owned(), hop_state.clone()];
        args.extend(ports.iter().map(u16::to_string));
        drill_py(&args);
    };

    // Before: 30 messages and two more mailboxes, the same on both; clients in sync.
    let mut expected: BTreeSet<String> = deliver(a.lmtp, "storm", 1, 30).into_iter().collect();
    tagged_ok(&imap(a.imap, &["CREATE Work", "CREATE Old"]));
    let (_, before) = converge(a.imap, b.imap, Duration::from_secs(30));
    let (rc_a, rc_b) = (
        mbsyncrc(&work.path().join("client-a"), a.imap),
        mbsyncrc(&work.path().join("client-b"), b.imap),
    );
    mbsync(&rc_a);
    mbsync(&rc_b);
    hop(&[a.imap, b.imap]);

    // The split, and writes on both sides.
    cut.store(true, Ordering::Relaxed);
    expected.extend(deliver(a.lmtp, "storm", 101, 40));
    expected.extend(deliver(b.lmtp, "storm", 201, 40));
    let on_a = imap(
        a.imap,
        &[
            "SELECT INBOX",
            "STORE 1:10 +FLAGS (\\Flagged)",
            "STORE 11:12 +FLAGS (\\Deleted)",
            "EXPUNGE",
            "MOVE 11:13 Work", // storm13..15 after the expunge
            "RENAME Old Attic",
            "CREATE FromA",
        ],
    );
    tagged_ok(&on_a);
    let on_b = imap(
        b.imap,
        &[
            "SELECT INBOX",
            "STORE 5:20 +FLAGS (\\Seen)",
            "STORE 16:17 +FLAGS (\\Deleted)",
            "EXPUNGE",
            "MOVE 16:17 Work", // storm18..19 after the expunge
            &append_cmd("Old", "into-old@example.org"),
            "CREATE FromB",
        ],
    );
    tagged_ok(&on_b);
    expected.insert("into-old@example.org".into());
    for gone in [11, 12, 16, 17] {
        expected.remove(&format!("storm{gone}@example.org"));
    }
    mbsync(&rc_a);
    mbsync(&rc_b);
    for _ in 0..3 {
        hop(&[a.imap, b.imap]);
    }
    let apart = (dump(a.imap), dump(b.imap));
    assert_ne!(apart.0, apart.1, "the relay really cut them apart");

    // Heal.
    cut.store(false, Ordering::Relaxed);
    let (took, after) = converge(a.imap, b.imap, Duration::from_secs(60));
    eprintln!(
        "{{\"bench\":\"drill_partition\",\"metric\":\"converge_after_heal\",\"value\":{:.3},\"unit\":\"s\"}}",
        took.as_secs_f64()
    );

    // UIDVALIDITY never changed; nothing lost, nothing twice.
    for mb in ["INBOX", "Work"] {
        assert_eq!(uidvalidity(&before, mb), uidvalidity(&after, mb), "{mb}");
    }
    assert_eq!(
        uidvalidity(&before, "Old"),
        uidvalidity(&after, "Attic"),
        "a rename keeps UIDVALIDITY"
    );
    let hop_json: Value =
        serde_json::from_str(&std::fs::read_to_string(&hop_state).unwrap()).unwrap();
    for id in hop_json["appended"].as_array().unwrap() {
        expected.insert(id.as_str().unwrap().to_owned());
    }
    let got = ids(&after);
    for id in &expected {
        assert_eq!(got.get(id), Some(&1), "{id} exactly once in {after}");
    }
    let extra: Vec<_> = got.keys().filter(|k| !expected.contains(*k)).collect();
    assert!(extra.is_empty(), "unexpected messages {extra:?}");
    for gone in [11, 12, 16, 17] {
        assert!(!got.contains_key(&format!("storm{gone}@example.org")));
    }
    // Flags merged per flag: \Flagged from A, \Seen from B.
    let f5 = flags_of(&after, "storm5@example.org");
    assert!(f5.contains("\\Flagged") && f5.contains("\\Seen"), "{f5:?}");
    assert!(after["Attic"]["messages"].as_array().is_some());
    assert!(after.get("Old").is_none(), "the rename won: {after}");
    assert!(after.get("FromA").is_some() && after.get("FromB").is_some());

    // After: the clients sync without an error, the hopper sees no UID reused.
    mbsync(&rc_a);
    mbsync(&rc_b);
    hop(&[a.imap, b.imap, a.imap]);
    let (_, last) = converge(a.imap, b.imap, Duration::from_secs(30));
    // Each client's INBOX now holds what the server's INBOX holds.
    let inbox = last["INBOX"]["messages"].as_array().unwrap().len();
    assert_eq!(
        maildir(&work.path().join("client-a/mail/INBOX")).len() + 3,
        inbox,
        "client A holds the INBOX as it was before the last three hops appended"
    );
    drop((to_a, to_b));
}

#[test]
fn drill_failover_mbsync_from_a_killed_to_b_redownloads_nothing() {
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    pair(&a, &b);
    a.start();
    b.start();
    deliver(a.lmtp, "storm", 1, 25);
    tagged_ok(&imap(
        a.imap,
        &["CREATE Work", "SELECT INBOX", "MOVE 1:5 Work"],
    ));
    converge(a.imap, b.imap, Duration::from_secs(30));
    let work = tempfile::tempdir().unwrap();
    let rc = mbsyncrc(work.path(), a.imap);
    mbsync(&rc);
    let inbox = work.path().join("mail/INBOX");
    let before = (maildir(&inbox), maildir(&work.path().join("mail/Work")));
    assert_eq!((before.0.len(), before.1.len()), (20, 5));

    // A dies; the same client state now talks to B.
    let c = a.child.as_mut().unwrap();
    let _ = c.kill();
    let _ = c.wait();
    a.child = None;
    let text = std::fs::read_to_string(&rc).unwrap();
    std::fs::write(
        &rc,
        text.replace(&format!("Port {}", a.imap), &format!("Port {}", b.imap)),
    )
    .unwrap();
    mbsync(&rc);
    assert_eq!(
        (maildir(&inbox), maildir(&work.path().join("mail/Work"))),
        before,
        "nothing downloaded again, nothing lost"
    );
    // New mail on B reaches the client, and only it.
    deliver(b.lmtp, "storm", 1001, 3);
    mbsync(&rc);
    assert_eq!(maildir(&inbox).len(), 23);
}

#[test]
fn drill_load_on_both_nodes_ends_in_identical_dumps() {
    let clients = env("TANDEM_DRILL_CLIENTS", 4);
    let secs = env("TANDEM_DRILL_SECONDS", 8);
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    pair(&a, &b);
    a.start();
    b.start();
    deliver(a.lmtp, "storm", 1, 50);
    tagged_ok(&imap(a.imap, &["CREATE Work"]));
    converge(a.imap, b.imap, Duration::from_secs(30));
    let run = |port: u16, tag: &'static str, seed: u64| {
        std::thread::spawn(move || {
            let out = drill_py(&[
                "load".into(),
                port.to_string(),
                secs.to_string(),
                clients.to_string(),
                seed.to_string(),
                tag.into(),
            ]);
            serde_json::from_str::<Value>(&out).unwrap()
        })
    };
    let (ra, rb) = (run(a.imap, "a", 1), run(b.imap, "b", 2));
    let (ra, rb) = (ra.join().unwrap(), rb.join().unwrap());
    for (n, r) in [("A", &ra), ("B", &rb)] {
        assert_eq!(r["errors"], 0, "{n}: {}", r["errors"]);
        assert!(r["ops"].as_u64().unwrap() > 0);
    }
    let (took, d) = converge(a.imap, b.imap, Duration::from_secs(120));
    let n: usize = ids(&d).values().sum();
    eprintln!(
        "load: {clients} clients per node for {secs} s: {} + {} operations, {n} messages at the end, identical dumps {:.2} s after the load stopped",
        ra["ops"],
        rb["ops"],
        took.as_secs_f64()
    );
    eprintln!(
        "{{\"bench\":\"drill_load\",\"metric\":\"ops_per_s\",\"value\":{:.1},\"unit\":\"ops/s\"}}",
        (ra["ops"].as_u64().unwrap() + rb["ops"].as_u64().unwrap()) as f64 / secs as f64
    );
    // Appended messages are in the dump unless a client expunged them; none shows up under two
    // UIDs of one mailbox (a dump is keyed by UID, so count Message-IDs per mailbox).
    for (name, mb) in d.as_object().unwrap() {
        let mut seen = BTreeSet::new();
        for m in mb["messages"].as_array().unwrap() {
            assert!(
                seen.insert(m[1].as_str().unwrap().to_owned()),
                "{name}: {} twice",
                m[1]
            );
        }
    }
}

// ---- disk full and read-only -------------------------------------------------------------

/// A child process killed when dropped (a failing assertion must not leave a daemon behind
/// holding the test's output pipe).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A mount namespace of our own holding a small tmpfs at `dir`, kept alive by a `sleep`.
struct Namespace {
    holder: Child,
    dir: PathBuf,
}

impl Namespace {
    fn new(dir: &Path, size_mib: u32) -> Option<Namespace> {
        let usable = Command::new("unshare")
            .args(["-Urm", "true"])
            .status()
            .is_ok_and(|s| s.success());
        if !usable {
            return None;
        }
        let mut holder = Command::new("unshare")
            .args(["-Urm", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs -o size={size_mib}m tmpfs '{}' && echo ready && exec sleep 3600",
                dir.display()
            ))
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "tmpfs mount in a namespace failed");
        Some(Namespace {
            holder,
            dir: dir.to_owned(),
        })
    }

    /// A command run inside the namespace.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.holder.id().to_string(), "-U", "-m", program]);
        c
    }

    /// `dir` as seen from outside the namespace.
    fn outside(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.holder.id()))
            .join(self.dir.strip_prefix("/").unwrap_or(&self.dir))
    }

    fn remount(&self, mode: &str) {
        let st = self
            .cmd("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.dir)
            .status()
            .unwrap();
        assert!(st.success(), "remount {mode}");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

const ONE_LMTP: &str = r#"
import smtplib, sys
port, mid = int(sys.argv[1]), sys.argv[2]
# 200 KB: far more than the slack a full file system keeps in partly used pages.
msg = ("From: d@example.org\r\nSubject: disk\r\nMessage-ID: <%s>\r\n\r\n%s" % (mid, ("x" * 98 + "\r\n") * 2000)).encode()
c = smtplib.LMTP("127.0.0.1", port)
try:
    c.sendmail("d@example.org", ["alice@example.com"], msg)
    print("250")
except smtplib.SMTPDataError as e:
    print(e.smtp_code, e.smtp_error.decode())
except smtplib.SMTPRecipientsRefused as e:
    print(list(e.recipients.values())[0][0])
"#;

#[test]
fn drill_full_disk_and_read_only_data_directory() {
    let base = tempfile::tempdir().unwrap();
    let data = base.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let Some(ns) = Namespace::new(&data, 32) else {
        eprintln!("SKIPPED: unshare -Urm is not permitted here, so no private tmpfs to fill");
        return;
    };
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = ns.cmd(BIN);
        c.arg("--dir").arg(&data).args(args);
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        if let Some(s) = stdin {
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        }
        ok(&child.wait_with_output().unwrap())
    };
    run(&["init", "--slot", "0"], None);
    run(&["user", "add", "alice"], Some("secret\n"));
    let (imap_port, lmtp_port) = (free_port(), free_port());
    std::fs::write(
        ns.outside().join("tandem.toml"),
        format!(
            "[imap]\nlisten = [\"127.0.0.1:{imap_port}\"]\n[lmtp]\nlisten = [\"127.0.0.1:{lmtp_port}\"]\n[sync]\nlisten = \"127.0.0.1:{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n",
            free_udp_port(),
            free_port()
        ),
    )
    .unwrap();
    let start = || {
        let child = Killed(
            ns.cmd(BIN)
                .arg("--dir")
                .arg(&data)
                .arg("serve")
                .spawn()
                .unwrap(),
        );
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", imap_port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "serve did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    };
    let mut serve = start();
    let lmtp = |mid: &str| python(ONE_LMTP, &[lmtp_port.to_string(), mid.to_owned()]);
    let mut acked = Vec::new();
    for i in 0..5 {
        let mid = format!("before{i}@example.org");
        assert_eq!(lmtp(&mid).trim(), "250");
        acked.push(mid);
    }

    // Fill the file system.
    let filler = ns.outside().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while f.write_all(&chunk).is_ok() {}
        while f.write_all(&chunk[..4096]).is_ok() {}
    }
    let full = lmtp("full@example.org");
    assert!(full.starts_with("452"), "a full disk gives 452, got {full}");
    let r = imap(
        imap_port,
        &[&append_cmd("INBOX", "full-append@example.org")],
    );
    let last = r.last().unwrap();
    assert!(
        last.contains("NO") && last.contains("UNAVAILABLE"),
        "a full disk gives NO [UNAVAILABLE]: {r:?}"
    );
    // Reading still works.
    let r = imap(imap_port, &["SELECT INBOX", "FETCH 1:* (FLAGS)"]);
    assert!(r.iter().any(|l| l.contains("* 5 EXISTS")), "{r:?}");
    assert!(r.last().unwrap().contains("OK"), "{r:?}");

    // Space back: service resumes without a restart.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(lmtp("space-back@example.org").trim(), "250");
    acked.push("space-back@example.org".into());
    tagged_ok(&imap(
        imap_port,
        &[&append_cmd("INBOX", "append-back@example.org")],
    ));
    acked.push("append-back@example.org".into());

    // Stopped, the file system turns read-only (a kernel does this after I/O errors): the
    // daemon refuses to start with a message naming the problem, and touches nothing.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(serve.0.id().to_string())
        .status();
    assert!(serve.0.wait().unwrap().success());
    ns.remount("ro");
    let out = ns
        .cmd(BIN)
        .arg("--dir")
        .arg(&data)
        .arg("serve")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "serve on a read-only file system must fail"
    );
    assert!(err.contains("Read-only file system"), "clear error: {err}");
    eprintln!("read-only data directory: {}", err.trim());
    ns.remount("rw");

    // Writable again: everything acknowledged is there once, nothing refused is.
    serve = start();
    let ids = message_ids(imap_port);
    for id in &acked {
        assert_eq!(ids.get(&format!("<{id}>")), Some(&1), "{id}");
    }
    assert_eq!(
        ids.len(),
        acked.len(),
        "nothing refused was stored: {ids:?}"
    );
    drop(serve);
}
