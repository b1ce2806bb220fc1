//! End-to-end tests of the real `tandem` binary: two `tandem serve` processes paired on
//! loopback, LMTP in on one and IMAP out on the other, import and export, bad configurations,
//! SIGTERM during a delivery storm, and the README's first command.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

#[test]
fn two_serve_processes_lmtp_on_a_is_imap_on_b() {
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    pair(&a, &b);
    a.start();
    b.start();
    let acked = python(DELIVER, &[a.lmtp.to_string(), "1".into(), "5".into()]);
    assert_eq!(acked.split_whitespace().count(), 5, "{acked}");
    let t = Instant::now();
    loop {
        let r = imap(b.imap, &["SELECT INBOX", "SEARCH SUBJECT storm"]);
        if r.iter().any(|l| l == "* SEARCH 1 2 3 4 5") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "B never showed A's mail: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = imap(
        b.imap,
        &[
            "SELECT INBOX",
            "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
        ],
    );
    assert!(
        r.iter()
            .any(|l| l.contains("BODY[HEADER.FIELDS (SUBJECT)]")),
        "{r:?}"
    );
    // tandem status talks to the running daemon.
    let st = ok(&tandem(a.path(), &["status"]));
    assert!(
        st.contains("connected") && st.contains("5 delivered"),
        "{st}"
    );
    assert!(
        st.contains("ms median"),
        "replication lag is measured: {st}"
    );
    assert!(
        st.contains("last frame") && st.contains("MiB on disk"),
        "{st}"
    );
    eprintln!("{st}");
    let metrics = {
        let mut s = TcpStream::connect(("127.0.0.1", a.metrics)).expect("metrics");
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").expect("get");
        let mut m = String::new();
        s.read_to_string(&mut m).expect("read");
        m
    };
    assert!(
        metrics.contains("tandem_lmtp_delivered_total 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_sync_peers_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_sync_replication_lag_p50_seconds"),
        "{metrics}"
    );
    assert!(a.sigterm().success());
    assert!(b.sigterm().success());
}

#[test]
fn an_unknown_node_is_pending_until_accepted() {
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    // Only B trusts A; A refuses B and lists it as pending.
    ok(&tandem(
        b.path(),
        &["peer", "add", &a.id(), &format!("127.0.0.1:{}", a.sync)],
    ));
    a.start();
    b.start();
    let t = Instant::now();
    let b_id = b.id();
    loop {
        let p = ok(&tandem(a.path(), &["peer", "pending"]));
        if p.contains(&b_id) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "B never became pending on A: {p}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(&tandem(a.path(), &["peer", "accept", &b_id]));
    python(DELIVER, &[b.lmtp.to_string(), "1".into(), "1".into()]);
    let messages = |n: u32| {
        let r = imap(a.imap, &["STATUS INBOX (MESSAGES)"]);
        r.iter().any(|l| l.contains(&format!("MESSAGES {n}")))
    };
    let t = Instant::now();
    while !messages(1) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "accepted peer did not sync"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Removed again while connected: the running daemon drops it, and it is pending again.
    std::thread::sleep(Duration::from_millis(600));
    ok(&tandem(a.path(), &["peer", "remove", &b_id]));
    let t = Instant::now();
    while !ok(&tandem(a.path(), &["peer", "pending"])).contains(&b_id) {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "a removed peer was not refused"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    python(DELIVER, &[b.lmtp.to_string(), "2".into(), "1".into()]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(messages(1), "nothing reaches A from a removed peer");
}

#[test]
fn sigterm_during_an_lmtp_storm_keeps_everything_acknowledged() {
    let mut a = Node::new(0);
    a.start();
    let port = a.lmtp.to_string();
    let storm = std::thread::spawn(move || python(DELIVER, &[port, "1".into(), "400".into()]));
    std::thread::sleep(Duration::from_millis(400));
    let st = a.sigterm();
    assert!(st.success(), "{st}");
    let acked: Vec<u32> = storm
        .join()
        .expect("storm")
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(!acked.is_empty(), "nothing was delivered before SIGTERM");
    a.start();
    let r = imap(a.imap, &["SELECT INBOX", "SEARCH SUBJECT storm"]);
    let found = r
        .iter()
        .find(|l| l.starts_with("* SEARCH"))
        .map(|l| l.split_whitespace().count() - 2)
        .unwrap_or(0);
    assert!(
        found >= acked.len(),
        "acknowledged {} but found {found}",
        acked.len()
    );
    for i in [acked[0], acked[acked.len() / 2], acked[acked.len() - 1]] {
        let r = imap(
            a.imap,
            &[
                "SELECT INBOX",
                &format!("SEARCH HEADER Message-ID <storm{i}@example.org>"),
            ],
        );
        assert!(
            r.iter().any(|l| l.starts_with("* SEARCH ") && l.len() > 9),
            "storm {i} missing: {r:?}"
        );
    }
    eprintln!(
        "SIGTERM after {} acknowledged deliveries; all present after restart",
        acked.len()
    );
}

fn write_maildir(root: &Path) {
    for d in ["cur", "new", "tmp", ".Work/cur", ".Work/new", ".Work/tmp"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    let files = [
        ("1700000001.M1.host:2,S", 5, "one"),
        ("1700000002.M2.host:2,FS", 9, "two"),
        ("1700000003.M3.host:2,", 12, "three"),
    ];
    let mut uidlist = String::from("3 V1234567 N13 G0123456789abcdef\n");
    for (name, uid, subj) in files {
        std::fs::write(
            root.join("cur").join(name),
            format!("From: a@example.org\nSubject: {subj}\nMessage-ID: <{subj}@example.org>\n\nbody {subj}\n"),
        )
        .expect("write");
        let base = name.split(':').next().unwrap_or(name);
        uidlist.push_str(&format!("{uid} W100 :{base}\n"));
    }
    std::fs::write(root.join("dovecot-uidlist"), uidlist).expect("uidlist");
    std::fs::write(
        root.join(".Work/new/1700000010.M9.host"),
        "Subject: work\n\nwork body\n",
    )
    .expect("write");
}

#[test]
fn import_dovecot_maildir_and_mbox_then_export() {
    let mut a = Node::new(0);
    let src = tempfile::tempdir().expect("tmp");
    write_maildir(&src.path().join("Maildir"));
    let out = ok(&tandem(
        a.path(),
        &[
            "import",
            "--user",
            "alice",
            src.path().join("Maildir").to_str().unwrap_or(""),
        ],
    ));
    assert!(
        out.contains("imported 4 messages into 2 mailboxes") && out.contains("1 kept"),
        "{out}"
    );
    let mbox = src.path().join("old.mbox");
    std::fs::write(
        &mbox,
        "From a@example.org Sat Jan  3 01:05:34 1996\nSubject: m1\nStatus: RO\n\nfirst\n>From the start\n\nFrom b@example.org Sun Jan  4 01:05:34 1996\nSubject: m2\nX-Status: F\n\nsecond\n",
    )
    .expect("mbox");
    let out = ok(&tandem(
        a.path(),
        &[
            "import",
            "--user",
            "alice",
            "--mailbox",
            "Old",
            mbox.to_str().unwrap_or(""),
        ],
    ));
    assert!(out.contains("imported 2 messages"), "{out}");
    a.start();
    let r = imap(
        a.imap,
        &[
            "SELECT INBOX",
            "UID FETCH 1:* (UID FLAGS)",
            "STATUS Work (MESSAGES)",
        ],
    );
    assert!(
        r.iter().any(|l| l.contains("[UIDVALIDITY 1234567]")),
        "{r:?}"
    );
    assert!(
        r.iter().any(|l| l.contains("UID 5 FLAGS (\\Seen)")),
        "{r:?}"
    );
    assert!(
        r.iter()
            .any(|l| l.contains("UID 9 FLAGS (\\Seen \\Flagged)")
                || l.contains("UID 9 FLAGS (\\Flagged \\Seen)")),
        "{r:?}"
    );
    assert!(r.iter().any(|l| l.contains("UID 12 FLAGS ()")), "{r:?}");
    assert!(r.iter().any(|l| l.contains("MESSAGES 1")), "{r:?}");
    let r = imap(
        a.imap,
        &[
            "SELECT Old",
            "FETCH 1:* (FLAGS INTERNALDATE BODY.PEEK[TEXT])",
        ],
    );
    let joined = r.join("\n");
    assert!(
        joined.contains("03-Jan-1996 01:05:34 +0000") && joined.contains("\\Seen"),
        "{joined}"
    );
    assert!(joined.contains("\\Flagged"), "{joined}");
    // Export needs the store to itself.
    assert!(a.sigterm().success());
    let dst = src.path().join("export");
    let out = ok(&tandem(
        a.path(),
        &["export", "--user", "alice", dst.to_str().unwrap_or("")],
    ));
    assert!(out.contains("exported 6 messages"), "{out}");
    let uidlist = std::fs::read_to_string(dst.join("dovecot-uidlist")).expect("uidlist");
    assert!(uidlist.starts_with("3 V1234567 "), "{uidlist}");
    assert_eq!(
        std::fs::read_dir(dst.join("cur"))
            .map(|d| d.count())
            .unwrap_or(0),
        3
    );
    assert!(dst.join(".Old/cur").is_dir() && dst.join(".Work/cur").is_dir());
}

#[test]
fn bad_setups_fail_clearly() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("nope");
    let o = tandem(&missing, &["serve"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not exist") && err.contains("tandem init"),
        "{err}"
    );

    ok(&tandem(dir.path(), &["init"]));
    std::fs::write(
        dir.path().join("tandem.toml"),
        "[imap]\nlisten = [\"127.0.0.1:0\"]\nlisen = 1\n",
    )
    .expect("cfg");
    let o = tandem(dir.path(), &["serve"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lisen"), "{err}");
    std::fs::write(
        dir.path().join("tandem.toml"),
        "[lmtp]\ndurability = \"sometimes\"\n",
    )
    .expect("cfg");
    let err = String::from_utf8_lossy(&tandem(dir.path(), &["serve"]).stderr).into_owned();
    assert!(err.contains("lmtp.durability"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = busy.local_addr().expect("addr").port();
    std::fs::write(
        dir.path().join("tandem.toml"),
        format!("[imap]\nlisten = [\"127.0.0.1:{port}\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n[sync]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n"),
    )
    .expect("cfg");
    let o = tandem(dir.path(), &["serve"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (imap.listen[0])"
        )),
        "{err}"
    );
    let err = String::from_utf8_lossy(&tandem(&missing, &["id"]).stderr).into_owned();
    assert!(err.contains("tandem init"), "{err}");
}

/// The README's first command, `cargo run --release -- demo`, is this binary with no flags.
#[test]
fn the_demo_runs_on_its_default_ports() {
    let data = tempfile::tempdir().expect("tmp");
    let mut child = Command::new(BIN)
        .args(["demo", "--data"])
        .arg(data.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("demo");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut seen = String::new();
    let t = Instant::now();
    loop {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap_or(0) == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
            panic!("demo ended early:\n{seen}\n{err}");
        }
        seen.push_str(&l);
        if l.starts_with("ready") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60));
    }
    assert!(seen.contains("node B has them: 3 messages"), "{seen}");
    for port in [1143, 2143] {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("imap");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut w = s.try_clone().expect("clone");
        let mut r = BufReader::new(s);
        let mut l = String::new();
        r.read_line(&mut l).expect("greeting");
        w.write_all(b"a LOGIN demo demo\r\nb STATUS INBOX (MESSAGES)\r\n")
            .expect("write");
        let mut got = String::new();
        while !got.contains("b OK") {
            l.clear();
            assert!(r.read_line(&mut l).expect("read") > 0);
            got.push_str(&l);
        }
        assert!(got.contains("MESSAGES 3"), "{port}: {got}");
    }
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let st = child.wait().expect("wait");
    assert!(st.success(), "{st}");
}

const ONE: &str = r#"
import smtplib, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
msg = ("From: p@example.org\r\nSubject: peer %d\r\nMessage-ID: <peer%d@example.org>\r\n\r\nbody\r\n" % (n, n)).encode()
c = smtplib.LMTP("127.0.0.1", port)
try:
    c.sendmail("p@example.org", ["alice@example.com"], msg)
    print(250)
except smtplib.SMTPDataError as e:
    print(e.smtp_code)
c.quit()
"#;

#[test]
fn peer_durability_answers_250_only_once_a_peer_holds_the_message() {
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    let cfg = std::fs::read_to_string(a.path().join("tandem.toml")).expect("cfg");
    std::fs::write(
        a.path().join("tandem.toml"),
        cfg.replace(
            "[lmtp]\n",
            "[lmtp]\ndurability = \"peer\"\npeer_timeout_secs = 2\n",
        ),
    )
    .expect("cfg");
    pair(&a, &b);
    a.start();
    b.start();
    let count = |port: u16, n: u32| {
        let r = imap(
            port,
            &[
                "SELECT INBOX",
                &format!("SEARCH HEADER Message-ID <peer{n}@example.org>"),
            ],
        );
        r.iter()
            .find(|l| l.starts_with("* SEARCH"))
            .map_or(0, |l| l.split_whitespace().count() - 2)
    };
    // Both up: 250, and B has it by then.
    let t = Instant::now();
    loop {
        let code = python(ONE, &[a.lmtp.to_string(), "1".into()]);
        if code.trim() == "250" {
            break;
        }
        // The first try may come before the two nodes connected.
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "never confirmed: {code}"
        );
    }
    assert_eq!(count(b.imap, 1), 1, "250 means B holds it");
    // B down: A stores the message but answers 451, so the sender keeps it.
    assert!(b.sigterm().success());
    assert_eq!(python(ONE, &[a.lmtp.to_string(), "2".into()]).trim(), "451");
    // B back: the sender's retry of the same message gets 250 without a second copy on A.
    b.start();
    let t = Instant::now();
    loop {
        let code = python(ONE, &[a.lmtp.to_string(), "2".into()]);
        if code.trim() == "250" {
            break;
        }
        assert_eq!(code.trim(), "451");
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "retry never confirmed"
        );
    }
    assert_eq!(count(a.imap, 2), 1, "the retry did not store a second copy");
    assert_eq!(count(b.imap, 2), 1);
}

/// Failure drill (issue 6): SIGKILL node A at random moments during LMTP storms. After each
/// restart every message that got a 250 is on A, and after sync on B, exactly once.
/// `TANDEM_DRILL_KILLS` (default 3), `TANDEM_DRILL_MESSAGES` per storm (default 1,000; the
/// kill comes long before a storm ends) and
/// `TANDEM_DRILL_SEED` make it larger or replay one.
#[test]
fn drill_sigkill_during_lmtp_storms_loses_and_duplicates_nothing() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let kills = env("TANDEM_DRILL_KILLS", 3);
    let per = env("TANDEM_DRILL_MESSAGES", 1000);
    let mut seed = env("TANDEM_DRILL_SEED", 0x5eed);
    let mut a = Node::new(0);
    let mut b = Node::new(1);
    pair(&a, &b);
    a.start();
    b.start();
    let mut acked: Vec<u64> = Vec::new();
    for round in 0..kills {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = 100 + (seed >> 33) % 500;
        let port = a.lmtp.to_string();
        let start = (round * per + 1).to_string();
        let storm = std::thread::spawn(move || python(DELIVER, &[port, start, per.to_string()]));
        std::thread::sleep(Duration::from_millis(delay));
        let c = a.child.as_mut().expect("running");
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
        a.child = None;
        let got: Vec<u64> = storm
            .join()
            .expect("storm")
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        eprintln!(
            "round {round}: killed after {delay} ms, {} acknowledged",
            got.len()
        );
        assert!(
            (got.len() as u64) < per,
            "the kill came after the storm ended: make it longer"
        );
        acked.extend(got);
        a.start();
        let ids = message_ids(a.imap);
        for i in &acked {
            let id = format!("<storm{i}@example.org>");
            assert_eq!(
                ids.get(&id),
                Some(&1),
                "A after restart: {id} (seed {seed})"
            );
        }
    }
    assert!(
        !acked.is_empty(),
        "no delivery was acknowledged in any round"
    );
    let t = Instant::now();
    loop {
        let ids = message_ids(b.imap);
        let missing = acked
            .iter()
            .filter(|i| !ids.contains_key(&format!("<storm{i}@example.org>")))
            .count();
        if missing == 0 {
            for i in &acked {
                let id = format!("<storm{i}@example.org>");
                assert_eq!(ids.get(&id), Some(&1), "B: {id} exactly once");
            }
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "B still misses {missing} acknowledged messages"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "{} acknowledged messages over {kills} kills: all on A and on B, once each",
        acked.len()
    );
}

/// Postfix's `lmtp:unix:` transport: a unix socket listener, replaced after a crash left its
/// file behind, removed on a clean stop.
#[test]
fn lmtp_over_a_unix_socket() {
    let mut a = Node::new(0);
    let sock = a.path().join("lmtp.sock");
    let conf = a.path().join("tandem.toml");
    let text = std::fs::read_to_string(&conf).expect("config");
    let tcp = format!("listen = [\"127.0.0.1:{}\"]", a.lmtp);
    assert!(text.contains(&tcp));
    std::fs::write(
        &conf,
        text.replace(
            &tcp,
            &format!(
                "listen = [\"127.0.0.1:{}\", \"unix:{}\"]",
                a.lmtp,
                sock.display()
            ),
        ),
    )
    .expect("config");
    let send = |id: &str| {
        python(
            r#"
import smtplib, sys
c = smtplib.LMTP(sys.argv[1])
c.sendmail("x@example.org", ["alice@example.com"], ("Subject: unix\r\nMessage-ID: <%s>\r\n\r\nhi\r\n" % sys.argv[2]).encode())
c.quit()
"#,
            &[sock.display().to_string(), id.to_owned()],
        )
    };
    a.start();
    send("unix1@example.org");
    // A crash leaves the socket file; the next start replaces it.
    let c = a.child.as_mut().expect("running");
    let _ = c.kill();
    let _ = c.wait();
    a.child = None;
    assert!(sock.exists());
    a.start();
    send("unix2@example.org");
    let ids = message_ids(a.imap);
    assert_eq!(ids.get("<unix1@example.org>"), Some(&1));
    assert_eq!(ids.get("<unix2@example.org>"), Some(&1));
    assert!(a.sigterm().success());
    assert!(!sock.exists(), "a clean stop removes the socket file");
}
