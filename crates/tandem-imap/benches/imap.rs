//! IMAP benchmark: Tandem against Dovecot (Debian's `dovecot-imapd`, started by the benchmark on
//! loopback), same Python imaplib workload, same machine, same run. JSON lines:
//!
//! ```text
//! cargo bench -p tandem-imap --bench imap              # 2,000 messages, 30 s mixed load
//! cargo bench -p tandem-imap --bench imap -- --quick   # CI size: 300 messages, 5 s
//! ```
//!
//! Figures: APPEND of N × 4 KB (one connection), `FETCH 1:* (FLAGS RFC822.SIZE ENVELOPE)` and
//! `UID FETCH 1:* BODY.PEEK[]` (median of 5 runs each), and 10 concurrent clients doing a mixed load (fetch, store,
//! search, append, noop), as times or operations per second, each with a Tandem/Dovecot ratio
//! (time ratios below 1 and throughput ratios above 1 favour Tandem), plus each server's peak
//! RSS (Dovecot: the sum over its processes, sampled every 50 ms). Both servers acknowledge an
//! APPEND only once it is on disk: Tandem with `durable: true`, Dovecot with its default
//! `mail_fsync = optimized`.
//!
//! The Tandem server runs in a child process (this binary, re-executed), so its RSS is its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tandem_imap::{Imap, ImapConfig, Listener, Users};
use tandem_store::{Store, StoreConfig};

const WORKLOAD: &str = include_str!("imap_workload.py");

fn emit(bench: &str, metric: &str, value: f64, unit: &str) {
    println!(
        "{{\"bench\":\"{bench}\",\"metric\":\"{metric}\",\"value\":{value:.3},\"unit\":\"{unit}\"}}"
    );
}

/// Child mode: a Tandem IMAP server on 127.0.0.1, port printed on stdout.
fn serve(dir: &Path) {
    let store = Store::open(dir.join("store"), StoreConfig::default()).expect("store");
    let mut users = Users::new();
    users.set_password("alice", "secret").expect("hash");
    let imap = Imap::new(Arc::new(Mutex::new(store)), users, ImapConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("{}", l.local_addr().expect("addr").port());
        imap.serve(l, Listener::Plain).await.expect("serve");
    });
}

/// RSS of a process and all its descendants, in KiB.
fn tree_rss_kib(root: u32) -> u64 {
    let mut parent = std::collections::HashMap::<u32, Vec<u32>>::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit(')').next() else {
                continue;
            };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            parent.entry(ppid).or_default().push(pid);
        }
    }
    let mut total = 0;
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        if let Some(kids) = parent.get(&p) {
            stack.extend(kids);
        }
    }
    total
}

/// Samples the RSS of a process tree until stopped; returns the peak.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(tree_rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Relaxed) as f64 / 1024.0
    }
}

#[derive(Debug, Default)]
struct Figures {
    append_s: f64,
    fetch_envelope_s: f64,
    fetch_bodies_s: f64,
    mixed_ops_per_s: f64,
    mixed_errors: f64,
    rss_mib: f64,
}

fn field(json: &str, key: &str) -> f64 {
    json.split(&format!("\"{key}\": "))
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

fn workload(script: &Path, port: u16, n: usize, secs: u32, pid: u32) -> Figures {
    let sampler = Sampler::start(pid);
    let out = Command::new("python3")
        .arg(script)
        .args([
            port.to_string(),
            n.to_string(),
            secs.to_string(),
            "10".into(),
        ])
        .output()
        .expect("python3");
    let rss = sampler.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "workload failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Figures {
        append_s: field(&stdout, "append_s"),
        fetch_envelope_s: field(&stdout, "fetch_envelope_s"),
        fetch_bodies_s: field(&stdout, "fetch_bodies_s"),
        mixed_ops_per_s: field(&stdout, "mixed_ops_per_s"),
        mixed_errors: field(&stdout, "mixed_errors"),
        rss_mib: rss,
    }
}

fn start_tandem(dir: &Path) -> (Child, u16) {
    let mut child = Command::new(std::env::current_exe().expect("exe"))
        .env("TANDEM_IMAP_BENCH_SERVER", dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("port");
    (child, line.trim().parse().expect("port number"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn start_dovecot(dir: &Path) -> Option<(Child, u16)> {
    if Command::new("sh")
        .args(["-c", "command -v dovecot && test -x /usr/lib/dovecot/imap"])
        .output()
        .map_or(true, |o| !o.status.success())
    {
        return None;
    }
    let port = free_port();
    for d in ["run", "state", "home"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    // The mail processes run as nobody (Dovecot refuses root).
    let _ = Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(dir.join("home"))
        .status();
    let d = dir.display();
    let conf = format!(
        "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = imap\nlisten = 127.0.0.1\nssl = no\n\
         disable_plaintext_auth = no\nauth_mechanisms = plain login\nmail_max_userip_connections = 100\n\
         passdb {{\n  driver = static\n  args = password=secret\n}}\n\
         userdb {{\n  driver = static\n  args = uid=nobody gid=nogroup home={d}/home/%u mail=maildir:~/Maildir\n}}\n\
         service imap-login {{\n  chroot =\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
         service anvil {{\n  chroot =\n}}\n"
    );
    let path = dir.join("dovecot.conf");
    std::fs::write(&path, conf).expect("conf");
    let child = Command::new("dovecot")
        .arg("-F")
        .arg("-c")
        .arg(&path)
        .spawn()
        .ok()?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn main() {
    if let Ok(dir) = std::env::var("TANDEM_IMAP_BENCH_SERVER") {
        serve(Path::new(&dir));
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, secs) = if quick { (300, 5) } else { (2000, 30) };
    let tmp = tempfile::tempdir().expect("tmp");
    let script = tmp.path().join("workload.py");
    std::fs::write(&script, WORKLOAD).expect("script");

    let tdir = tmp.path().join("tandem");
    std::fs::create_dir_all(&tdir).expect("mkdir");
    let (mut tchild, tport) = start_tandem(&tdir);
    let t = workload(&script, tport, n, secs, tchild.id());
    let _ = tchild.kill();
    let _ = tchild.wait();

    let b = "imap";
    emit(b, "messages", n as f64, "count");
    emit(b, "tandem_append_s", t.append_s, "s");
    emit(b, "tandem_append_per_s", n as f64 / t.append_s, "msg/s");
    emit(
        b,
        "tandem_fetch_envelope_ms",
        t.fetch_envelope_s * 1000.0,
        "ms",
    );
    emit(b, "tandem_fetch_bodies_ms", t.fetch_bodies_s * 1000.0, "ms");
    emit(b, "tandem_mixed_ops_per_s", t.mixed_ops_per_s, "ops/s");
    emit(b, "tandem_mixed_errors", t.mixed_errors, "count");
    emit(b, "tandem_peak_rss", t.rss_mib, "MiB");

    let ddir = tmp.path().join("dovecot");
    std::fs::create_dir_all(&ddir).expect("mkdir");
    let Some((mut dchild, dport)) = start_dovecot(&ddir) else {
        println!(
            "{{\"bench\":\"{b}\",\"note\":\"dovecot (dovecot-imapd) not available: no comparison\"}}"
        );
        return;
    };
    let d = workload(&script, dport, n, secs, dchild.id());
    let _ = Command::new("doveadm")
        .arg("-c")
        .arg(ddir.join("dovecot.conf"))
        .arg("stop")
        .status();
    let _ = dchild.wait();
    emit(b, "dovecot_append_s", d.append_s, "s");
    emit(
        b,
        "dovecot_fetch_envelope_ms",
        d.fetch_envelope_s * 1000.0,
        "ms",
    );
    emit(
        b,
        "dovecot_fetch_bodies_ms",
        d.fetch_bodies_s * 1000.0,
        "ms",
    );
    emit(b, "dovecot_mixed_ops_per_s", d.mixed_ops_per_s, "ops/s");
    emit(b, "dovecot_mixed_errors", d.mixed_errors, "count");
    emit(b, "dovecot_peak_rss", d.rss_mib, "MiB");
    // Time ratios: below 1 means Tandem is faster. Throughput ratio: above 1 means faster.
    emit(
        b,
        "ratio_append_time",
        t.append_s / d.append_s,
        "tandem/dovecot",
    );
    emit(
        b,
        "ratio_fetch_envelope_time",
        t.fetch_envelope_s / d.fetch_envelope_s,
        "tandem/dovecot",
    );
    emit(
        b,
        "ratio_fetch_bodies_time",
        t.fetch_bodies_s / d.fetch_bodies_s,
        "tandem/dovecot",
    );
    emit(
        b,
        "ratio_mixed_throughput",
        t.mixed_ops_per_s / d.mixed_ops_per_s,
        "tandem/dovecot",
    );
    emit(b, "ratio_peak_rss", t.rss_mib / d.rss_mib, "tandem/dovecot");
}
