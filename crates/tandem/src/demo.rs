//! `tandem demo`: two nodes on loopback in one process, paired, with a demo user; a few
//! messages delivered to A over LMTP show up on B; then it stays up for a mail client.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_imap::Users;
use tandem_net::PeerConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::Config;
use crate::daemon::{self, Overrides, Paths};

/// The demo's ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// IMAP of node A.
    pub imap_a: u16,
    /// LMTP of node A.
    pub lmtp_a: u16,
    /// IMAP of node B.
    pub imap_b: u16,
    /// LMTP of node B.
    pub lmtp_b: u16,
}

const SAMPLES: [(&str, &str); 3] = [
    (
        "Welcome to Tandem",
        "This message was delivered to node A over LMTP and synced to node B.",
    ),
    (
        "Two boxes, one mailbox",
        "Read it on either node: both accept writes, and they heal after a split.",
    ),
    (
        "Try it",
        "Flag this message on one node and watch the flag appear on the other.",
    ),
];

fn config(slot: u8, imap: u16, lmtp: u16) -> Config {
    let mut c = Config {
        slot,
        ..Config::default()
    };
    c.imap.listen = vec![format!("127.0.0.1:{imap}")];
    c.lmtp.listen = vec![format!("127.0.0.1:{lmtp}")];
    c.sync.listen = "127.0.0.1:0".into();
    c.metrics.listen = String::new();
    c
}

/// Delivers one message over LMTP, like Postfix would.
async fn lmtp_deliver(port: u16, to: &str, subject: &str, body: &str) -> Result<(), String> {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("LMTP connect: {e}"))?;
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut expect = async |r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
                            code: &str|
           -> Result<(), String> {
        loop {
            line.clear();
            r.read_line(&mut line).await.map_err(|e| e.to_string())?;
            if !line.starts_with(code) {
                return Err(format!("LMTP: expected {code}, got {line:?}"));
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(());
            }
        }
    };
    expect(&mut r, "220").await?;
    let date = utc_now().format("%a, %d %b %Y %H:%M:%S +0000");
    let msg = format!(
        "From: Tandem demo <demo@tandem.invalid>\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{}.{}@tandem.invalid>\r\n\r\n{body}\r\n",
        std::process::id(),
        subject.len() * 7919 + body.len()
    );
    for (cmd, code) in [
        ("LHLO demo".to_owned(), "250"),
        ("MAIL FROM:<demo@tandem.invalid>".to_owned(), "250"),
        (format!("RCPT TO:<{to}>"), "250"),
        ("DATA".to_owned(), "354"),
    ] {
        w.write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        expect(&mut r, code).await?;
    }
    w.write_all(msg.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    w.write_all(b".\r\n").await.map_err(|e| e.to_string())?;
    expect(&mut r, "250").await?;
    w.write_all(b"QUIT\r\n").await.map_err(|e| e.to_string())?;
    Ok(())
}

fn utc_now() -> chrono::DateTime<chrono::Utc> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

fn inbox_count(running: &daemon::Running) -> usize {
    let s = running.store.lock().unwrap_or_else(|p| p.into_inner());
    s.mailbox_id("demo", "INBOX")
        .and_then(|id| s.uids("demo", &id))
        .map_or(0, |u| u.len())
}

/// Runs the demo until Ctrl-C.
pub fn run(ports: Ports, data: Option<PathBuf>) -> Result<(), String> {
    let root = data.unwrap_or_else(|| {
        let stamp = utc_now().format("%Y%m%d-%H%M%S");
        std::env::temp_dir().join(format!("tandem-demo-{stamp}-{}", std::process::id()))
    });
    let a = Paths::new(&root.join("node-a"));
    let b = Paths::new(&root.join("node-b"));
    let mut users = Users::new();
    users
        .set_password("demo", "demo")
        .map_err(|e| e.to_string())?;
    for p in [&a, &b] {
        std::fs::create_dir_all(&p.root).map_err(|e| format!("{}: {e}", p.root.display()))?;
        if !p.users().exists() {
            users.save(&p.users()).map_err(|e| e.to_string())?;
        }
    }
    let cfg_a = config(0, ports.imap_a, ports.lmtp_a);
    let cfg_b = config(1, ports.imap_b, ports.lmtp_b);
    let quiet = Config {
        log: crate::config::LogSection {
            format: "human".into(),
            level: "warn".into(),
        },
        ..Config::default()
    };
    crate::init_logging(&quiet);
    let rt = crate::runtime()?;
    rt.block_on(async {
        let ov = Overrides::default();
        let na = daemon::start(&a, &cfg_a, &ov).await?;
        let nb = daemon::start(&b, &cfg_b, &ov).await?;
        // Pair them: each trusts the other's ID and dials its address.
        na.node.add_peer(PeerConfig {
            id: nb.node_id(),
            addrs: nb.sync_addr.into_iter().collect(),
        });
        nb.node.add_peer(PeerConfig {
            id: na.node_id(),
            addrs: na.sync_addr.into_iter().collect(),
        });
        println!("Tandem demo: two nodes on this machine, paired over QUIC with mutual TLS.");
        println!("  node A  {}  IMAP 127.0.0.1:{}  LMTP 127.0.0.1:{}", na.node_id().short(), ports.imap_a, ports.lmtp_a);
        println!("  node B  {}  IMAP 127.0.0.1:{}  LMTP 127.0.0.1:{}", nb.node_id().short(), ports.imap_b, ports.lmtp_b);
        println!("  data    {}", root.display());
        println!("  user    demo   password demo");
        println!();
        let before = inbox_count(&nb);
        let t = Instant::now();
        for (subject, body) in SAMPLES {
            lmtp_deliver(ports.lmtp_a, "demo@localhost", subject, body).await?;
            println!("delivered to A over LMTP: {subject:?}");
        }
        let want = before + SAMPLES.len();
        while inbox_count(&nb) < want {
            if t.elapsed() > Duration::from_secs(20) {
                return Err("the messages did not reach node B within 20 s".to_owned());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "node B has them: {} messages in demo's INBOX, {} ms after the first delivery to A.",
            inbox_count(&nb),
            t.elapsed().as_millis()
        );
        println!();
        println!("Read them on either node:");
        println!("  curl -s --user demo:demo 'imap://127.0.0.1:{}/INBOX' -X 'FETCH 1:* (FLAGS BODY[HEADER.FIELDS (SUBJECT)])'", ports.imap_b);
        println!("  curl -s --user demo:demo 'imap://127.0.0.1:{}/INBOX;UID=1'", ports.imap_a);
        println!("  mutt -f imap://demo@127.0.0.1:{}/INBOX", ports.imap_a);
        println!("  (any IMAP client: host 127.0.0.1, port {} or {}, no TLS, user demo, password demo)", ports.imap_a, ports.imap_b);
        println!("Deliver more (to B this time):");
        println!("  python3 -c \"import smtplib; smtplib.LMTP('127.0.0.1', {}).sendmail('me@example.org', 'demo@localhost', b'Subject: hello\\r\\n\\r\\nhi\\r\\n')\"", ports.lmtp_b);
        println!();
        println!("ready; Ctrl-C to stop");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        crate::wait_for_signal().await;
        println!("stopping");
        na.stop(Duration::from_secs(5)).await;
        nb.stop(Duration::from_secs(5)).await;
        Ok(())
    })
}
