//! A real server on 127.0.0.1 (a tokio runtime on its own thread, a store in a temporary
//! directory) and a small blocking client that speaks raw IMAP lines, for transcript tests.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_imap::{Imap, ImapConfig, Listener, Users};
use tandem_store::{Store, StoreConfig};

pub struct TestServer {
    pub addr: SocketAddr,
    pub tls_addr: Option<SocketAddr>,
    pub imap: Imap,
    pub store: Arc<Mutex<Store>>,
    pub dir: tempfile::TempDir,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.imap.shutdown();
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

pub fn users() -> Users {
    let mut u = Users::new();
    u.set_password("alice", "secret").expect("hash");
    u.set_password("bob", "hunter2").expect("hash");
    u
}

pub fn start() -> TestServer {
    start_with(ImapConfig {
        login_failure_delay: Duration::from_millis(20),
        ..ImapConfig::default()
    })
}

pub fn start_with(cfg: ImapConfig) -> TestServer {
    let dir = tempfile::tempdir().expect("tempdir");
    start_in(dir, cfg, 0)
}

pub fn start_in(dir: tempfile::TempDir, cfg: ImapConfig, slot: u8) -> TestServer {
    let store = Store::open(
        dir.path().join("store"),
        StoreConfig {
            slot,
            durable: false,
            ..StoreConfig::default()
        },
    )
    .expect("open store");
    let store = Arc::new(Mutex::new(store));
    let has_tls = cfg.tls.is_some();
    let imap = Imap::new(store.clone(), users(), cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (addr, tls_addr) = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let i = imap.clone();
        tokio::spawn(async move { i.serve(l, Listener::Plain).await });
        let tls_addr = if has_tls {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let a = l.local_addr().expect("addr");
            let i = imap.clone();
            tokio::spawn(async move { i.serve(l, Listener::ImplicitTls).await });
            Some(a)
        } else {
            None
        };
        (addr, tls_addr)
    });
    TestServer {
        addr,
        tls_addr,
        imap,
        store,
        dir,
        rt: Some(rt),
    }
}

pub struct Client {
    r: BufReader<TcpStream>,
    w: TcpStream,
    n: u32,
    pub greeting: String,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let w = s.try_clone().expect("clone");
        let mut c = Client {
            r: BufReader::new(s),
            w,
            n: 0,
            greeting: String::new(),
        };
        c.greeting = c.line();
        c
    }

    pub fn login(addr: SocketAddr, user: &str, pass: &str) -> Client {
        let mut c = Client::connect(addr);
        let r = c.cmd(&format!("LOGIN {user} {pass}"));
        assert!(r.last().is_some_and(|l| l.contains(" OK ")), "{r:?}");
        c
    }

    /// One response line; a literal at its end is read and appended (so a FETCH response with
    /// a body is one string).
    pub fn line(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut l = String::new();
            let n = self.r.read_line(&mut l).expect("read");
            assert!(n > 0, "connection closed; so far: {out:?}");
            out.push_str(&l);
            let t = l.trim_end();
            if let Some(open) = t.rfind('{')
                && t.ends_with('}')
                && let Ok(len) = t[open + 1..t.len() - 1]
                    .trim_end_matches('+')
                    .parse::<usize>()
            {
                let mut buf = vec![0; len];
                self.r.read_exact(&mut buf).expect("literal");
                out.push_str(&String::from_utf8_lossy(&buf));
                continue;
            }
            return out.trim_end().to_owned();
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).expect("write");
    }

    fn next_tag(&mut self) -> String {
        self.n += 1;
        format!("t{}", self.n)
    }

    /// Sends a command, returns every line up to and including the tagged response.
    pub fn cmd(&mut self, c: &str) -> Vec<String> {
        let tag = self.next_tag();
        self.send_raw(format!("{tag} {c}\r\n").as_bytes());
        self.until(&tag)
    }

    pub fn until(&mut self, tag: &str) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            let done = l.starts_with(&format!("{tag} "));
            lines.push(l);
            if done {
                return lines;
            }
        }
    }

    /// APPEND with a synchronising literal.
    pub fn append(&mut self, mailbox: &str, flags: &str, msg: &[u8]) -> Vec<String> {
        let tag = self.next_tag();
        self.send_raw(format!("{tag} APPEND {mailbox} ({flags}) {{{}}}\r\n", msg.len()).as_bytes());
        let cont = self.line();
        if !cont.starts_with('+') {
            return vec![cont];
        }
        let mut m = msg.to_vec();
        m.extend_from_slice(b"\r\n");
        self.send_raw(&m);
        self.until(&tag)
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.r.get_ref().set_read_timeout(Some(d)).expect("timeout");
    }
}

pub fn ok(lines: &[String]) -> &str {
    let last = lines.last().map(String::as_str).unwrap_or("");
    assert!(
        last.split(' ').nth(1) == Some("OK"),
        "expected OK: {lines:#?}"
    );
    last
}

pub fn status_of(lines: &[String]) -> &str {
    lines.last().and_then(|l| l.split(' ').nth(1)).unwrap_or("")
}

pub fn message(i: usize, subject: &str) -> Vec<u8> {
    format!(
        "From: Sender {i} <sender{i}@example.org>\r\nTo: alice@example.com\r\nSubject: {subject}\r\nDate: Mon, 7 Feb 1994 21:52:25 -0800\r\nMessage-ID: <m{i}@example.org>\r\n\r\nBody of message {i}.\r\nSecond line.\r\n"
    )
    .into_bytes()
}

/// Files of a maildir folder (cur and new), by name.
pub fn maildir(dir: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for sub in ["cur", "new"] {
        if let Ok(rd) = std::fs::read_dir(dir.join(sub)) {
            for e in rd.flatten() {
                out.insert(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    out
}

/// An mbsync configuration syncing every mailbox of alice on 127.0.0.1:`port` into
/// `dir/mail` (sync state kept in the maildir, so pointing it at another port keeps it).
pub fn mbsyncrc(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let mail = dir.join("mail");
    std::fs::create_dir_all(&mail).expect("mkdir");
    let rc = dir.join(format!("mbsyncrc-{port}"));
    std::fs::write(
        &rc,
        format!(
            "IMAPAccount t\nHost 127.0.0.1\nPort {port}\nUser alice\nPass secret\nSSLType None\nAuthMechs LOGIN\n\n\
             IMAPStore remote\nAccount t\n\n\
             MaildirStore local\nPath {m}/\nInbox {m}/INBOX\nSubFolders Verbatim\n\n\
             Channel c\nFar :remote:\nNear :local:\nPatterns *\nCreate Both\nExpunge Both\nSyncState *\n",
            m = mail.display()
        ),
    )
    .expect("write mbsyncrc");
    rc
}

/// Runs mbsync on `rc`; fails the test on an error. Returns what it printed.
pub fn mbsync(rc: &std::path::Path) -> String {
    let out = std::process::Command::new("mbsync")
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
    all
}
