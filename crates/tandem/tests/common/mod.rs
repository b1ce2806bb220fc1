//! Helpers shared by the end-to-end tests and the drills: `tandem serve` processes on loopback,
//! a tiny IMAP client, and Python's smtplib/imaplib as real clients.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tandem");

pub fn tandem(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .output()
        .expect("run tandem")
}

pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

pub struct Node {
    pub dir: tempfile::TempDir,
    pub imap: u16,
    pub lmtp: u16,
    pub sync: u16,
    pub metrics: u16,
    pub child: Option<Child>,
}

impl Node {
    pub fn new(slot: u8) -> Node {
        let dir = tempfile::tempdir().expect("tmp");
        ok(&tandem(dir.path(), &["init", "--slot", &slot.to_string()]));
        let n = Node {
            dir,
            imap: free_port(),
            lmtp: free_port(),
            sync: free_udp_port(),
            metrics: free_port(),
            child: None,
        };
        std::fs::write(
            n.dir.path().join("tandem.toml"),
            format!(
                "slot = {slot}\n[imap]\nlisten = [\"127.0.0.1:{}\"]\n[lmtp]\nlisten = [\"127.0.0.1:{}\"]\n[sync]\nlisten = \"127.0.0.1:{}\"\nreconnect_max_secs = 1\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[log]\nlevel = \"warn\"\n",
                n.imap, n.lmtp, n.sync, n.metrics
            ),
        )
        .expect("config");
        let mut c = Command::new(BIN)
            .arg("--dir")
            .arg(n.dir.path())
            .args(["user", "add", "alice"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("user add");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(b"secret\n")
            .expect("pw");
        assert!(c.wait().expect("wait").success());
        n
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn id(&self) -> String {
        ok(&tandem(self.path(), &["id"])).trim().to_owned()
    }

    pub fn start(&mut self) {
        let child = Command::new(BIN)
            .arg("--dir")
            .arg(self.path())
            .arg("serve")
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve");
        self.child = Some(child);
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.imap)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                let mut err = String::new();
                if let Some(mut e) = self.child.as_mut().and_then(|c| c.stderr.take()) {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("tandem serve exited ({st}): {err}");
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "serve did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn sigterm(&mut self) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return st;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "serve did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Each node trusts the other and dials its sync address.
pub fn pair(a: &Node, b: &Node) {
    ok(&tandem(
        a.path(),
        &["peer", "add", &b.id(), &format!("127.0.0.1:{}", b.sync)],
    ));
    ok(&tandem(
        b.path(),
        &["peer", "add", &a.id(), &format!("127.0.0.1:{}", a.sync)],
    ));
}

/// A tiny IMAP client: one command, lines until the tagged reply.
pub fn imap(port: u16, cmds: &[&str]) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("imap connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut out = Vec::new();
    let mut line = String::new();
    r.read_line(&mut line).expect("greeting");
    for (i, c) in ["LOGIN alice secret"].iter().chain(cmds).enumerate() {
        let tag = format!("e{i}");
        w.write_all(format!("{tag} {c}\r\n").as_bytes())
            .expect("write");
        loop {
            line.clear();
            if r.read_line(&mut line).expect("read") == 0 {
                panic!("connection closed; so far {out:?}");
            }
            let l = line.trim_end().to_owned();
            let done = l.starts_with(&format!("{tag} "));
            out.push(l);
            if done {
                break;
            }
        }
    }
    out
}

pub fn python(script: &str, args: &[String]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3");
    ok(&o)
}

pub const DELIVER: &str = r#"
import smtplib, sys
port, start, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
acked = []
try:
    c = smtplib.LMTP("127.0.0.1", port)
    for i in range(start, start + count):
        msg = ("From: storm@example.org\r\nSubject: storm %d\r\nMessage-ID: <storm%d@example.org>\r\n\r\nbody %d\r\n" % (i, i, i)).encode()
        try:
            c.sendmail("storm@example.org", ["alice@example.com"], msg)
            acked.append(i)
        except smtplib.SMTPException:
            break
except (OSError, smtplib.SMTPException):
    pass
print(" ".join(map(str, acked)))
"#;

/// Every Message-ID in a node's INBOX, with how many times each occurs.
pub fn message_ids(port: u16) -> std::collections::HashMap<String, usize> {
    let r = imap(
        port,
        &[
            "SELECT INBOX",
            "FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])",
        ],
    );
    let mut out = std::collections::HashMap::new();
    for l in r {
        if let Some(id) = l.strip_prefix("Message-ID: ") {
            *out.entry(id.trim().to_owned()).or_insert(0) += 1;
        }
    }
    out
}
