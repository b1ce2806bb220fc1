//! LMTP over a real socket: Python's `smtplib.LMTP` (what scripts and tests use; Postfix speaks
//! the same protocol) delivers into the store.

use std::process::Command;
use std::sync::{Arc, Mutex};

use tandem_lmtp::{Lmtp, LmtpConfig, SessionConfig};
use tandem_store::{Store, StoreConfig};

#[test]
fn python_lmtp_delivers_with_one_reply_per_recipient() {
    let dir = tempfile::tempdir().expect("tmp");
    let store = Arc::new(Mutex::new(
        Store::open(dir.path(), StoreConfig::default()).expect("store"),
    ));
    let resolve: tandem_lmtp::Resolver = Arc::new(|a: &str| {
        let user = a
            .split('@')
            .next()
            .unwrap_or("")
            .split('+')
            .next()
            .unwrap_or("");
        matches!(user, "alice" | "bob").then(|| user.to_owned())
    });
    let lmtp = Lmtp::new(
        store.clone(),
        resolve,
        LmtpConfig {
            session: SessionConfig {
                max_message_size: 10_000,
                ..SessionConfig::default()
            },
            ..LmtpConfig::default()
        },
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let port = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = l.local_addr().expect("addr").port();
        let s = lmtp.clone();
        tokio::spawn(async move { s.serve(l).await });
        port
    });
    let script = r#"
import smtplib, socket, sys
port = int(sys.argv[1])
c = smtplib.LMTP("127.0.0.1", port)
msg = b"From: x@example.org\r\nSubject: via lmtp\r\n\r\n.dot line\r\nbody\r\n"
# smtplib reads a single reply after DATA, so give it one accepted recipient at a time.
refused = c.sendmail("x@example.org", ["alice@example.com", "nobody@example.com"], msg)
assert set(refused) == {"nobody@example.com"}, refused
try:
    c.sendmail("x@example.org", ["alice@example.com"], b"Subject: big\r\n\r\n" + b"x" * 20000 + b"\r\n")
    raise SystemExit("a too-big message was accepted")
except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
    assert e.smtp_code == 552, e
c.quit()
# Two recipients in one transaction: one reply each after the data (RFC 2033 4.2).
s = socket.create_connection(("127.0.0.1", port))
f = s.makefile("rb")
assert f.readline().startswith(b"220")
s.sendall(b"LHLO test\r\n")
while not f.readline().startswith(b"250 "):
    pass
s.sendall(b"MAIL FROM:<x@example.org>\r\nRCPT TO:<bob+tag@example.com>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
for want in (b"250", b"250", b"250", b"354"):
    line = f.readline()
    assert line.startswith(want), line
s.sendall(b"Subject: two\r\n\r\nfor both\r\n.\r\n")
r1, r2 = f.readline(), f.readline()
assert r1.startswith(b"250 2.0.0 <bob+tag@") and r2.startswith(b"250 2.0.0 <alice@"), (r1, r2)
s.sendall(b"QUIT\r\n")
assert f.readline().startswith(b"221")
print("ok")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(port.to_string())
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let s = store.lock().expect("lock");
    let inbox = s.mailbox_id("alice", "INBOX").expect("inbox");
    let msgs = s.messages("alice", &inbox).expect("messages");
    assert_eq!(msgs.len(), 2);
    let raw = s.message_bytes(&msgs[0].blob).expect("body");
    assert_eq!(
        raw,
        b"Return-Path: <x@example.org>\r\nFrom: x@example.org\r\nSubject: via lmtp\r\n\r\n.dot line\r\nbody\r\n"
    );
    let inbox = s.mailbox_id("bob", "INBOX").expect("inbox");
    assert_eq!(s.messages("bob", &inbox).expect("messages").len(), 1);
    assert_eq!(lmtp.delivered(), 3);
    drop(s);
    lmtp.shutdown();
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
}
