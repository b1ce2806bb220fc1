//! The metrics endpoint: `GET /metrics` (Prometheus text format) and `GET /status` (the summary
//! `tandem status` prints). A minimal HTTP/1.0 responder: one request per connection.

use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::daemon::View;

/// Bytes under a directory (files only, symlinks not followed).
pub fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

fn ago(t: std::time::SystemTime) -> String {
    match t.elapsed() {
        Ok(d) if d.as_secs() < 1 => "just now".into(),
        Ok(d) => format!("{} s ago", d.as_secs()),
        Err(_) => "just now".into(),
    }
}

/// Store figures, gathered under the store lock.
struct StoreFigures {
    accounts: usize,
    mailboxes: usize,
    messages: u64,
    waiting_bodies: usize,
}

fn store_figures(v: &View) -> StoreFigures {
    let s = v.store.lock().unwrap_or_else(|p| p.into_inner());
    let accounts = s.accounts();
    let mut mailboxes = 0;
    let mut messages = 0u64;
    for a in &accounts {
        for m in s.list_mailboxes(a).unwrap_or_default() {
            mailboxes += 1;
            messages += s.status(a, &m.id).map_or(0, |st| u64::from(st.exists));
        }
    }
    StoreFigures {
        accounts: accounts.len(),
        mailboxes,
        messages,
        waiting_bodies: s.missing_blobs().len(),
    }
}

/// The Prometheus text.
pub fn prometheus(v: &View) -> String {
    let f = store_figures(v);
    let (tx, rx) = v.node.traffic();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "tandem_imap_connections",
        "gauge",
        "Open IMAP connections.",
        v.imap.connections().to_string(),
    );
    metric(
        "tandem_lmtp_connections",
        "gauge",
        "Open LMTP connections.",
        v.lmtp.connections().to_string(),
    );
    metric(
        "tandem_lmtp_delivered_total",
        "counter",
        "Recipient copies stored by LMTP.",
        v.lmtp.delivered().to_string(),
    );
    metric(
        "tandem_lmtp_failed_total",
        "counter",
        "Recipient copies refused by LMTP (4xx/5xx).",
        v.lmtp.failed().to_string(),
    );
    metric(
        "tandem_sync_peers_connected",
        "gauge",
        "Peers with a live sync connection.",
        v.node.connected().len().to_string(),
    );
    metric(
        "tandem_sync_pending_nodes",
        "gauge",
        "Unknown nodes that tried to connect.",
        v.node.pending().len().to_string(),
    );
    metric(
        "tandem_sync_sent_bytes",
        "gauge",
        "Bytes sent over the live sync connections.",
        tx.to_string(),
    );
    metric(
        "tandem_sync_received_bytes",
        "gauge",
        "Bytes received over the live sync connections.",
        rx.to_string(),
    );
    if let Some((p50, max)) = v.node.replication_lag() {
        metric(
            "tandem_sync_replication_lag_p50_seconds",
            "gauge",
            "Median time from a local write until a peer holds it (last 256 writes).",
            format!("{:.6}", p50.as_secs_f64()),
        );
        metric(
            "tandem_sync_replication_lag_max_seconds",
            "gauge",
            "Longest time from a local write until a peer held it (last 256 writes).",
            format!("{:.6}", max.as_secs_f64()),
        );
    }
    metric(
        "tandem_imap_errors_total",
        "counter",
        "IMAP commands refused because of a store failure (NO [SERVERBUG] or [UNAVAILABLE]).",
        v.imap.errors().to_string(),
    );
    metric(
        "tandem_store_accounts",
        "gauge",
        "Accounts in the store.",
        f.accounts.to_string(),
    );
    metric(
        "tandem_store_mailboxes",
        "gauge",
        "Mailboxes in the store.",
        f.mailboxes.to_string(),
    );
    metric(
        "tandem_store_messages",
        "gauge",
        "Messages visible in all mailboxes.",
        f.messages.to_string(),
    );
    metric(
        "tandem_store_waiting_bodies",
        "gauge",
        "Messages merged from peers whose body has not arrived yet.",
        f.waiting_bodies.to_string(),
    );
    metric(
        "tandem_uptime_seconds",
        "gauge",
        "Seconds since the daemon started.",
        v.started.elapsed().as_secs().to_string(),
    );
    out
}

/// The human summary.
pub fn status(v: &View) -> String {
    let f = store_figures(v);
    let (tx, rx) = v.node.traffic();
    let connected = v.node.connected();
    let mut out = String::new();
    let _ = writeln!(out, "node      {}", v.node.node_id());
    let _ = writeln!(out, "data      {}", v.paths.root.display());
    let _ = writeln!(out, "uptime    {} s", v.started.elapsed().as_secs());
    let _ = writeln!(out, "imap      {} connections", v.imap.connections());
    let _ = writeln!(
        out,
        "lmtp      {} connections, {} delivered, {} refused",
        v.lmtp.connections(),
        v.lmtp.delivered(),
        v.lmtp.failed()
    );
    let _ = writeln!(
        out,
        "store     {} accounts, {} mailboxes, {} messages, {} waiting for their body, {:.1} MiB on disk",
        f.accounts,
        f.mailboxes,
        f.messages,
        f.waiting_bodies,
        v.disk_bytes.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64
    );
    let _ = writeln!(
        out,
        "sync      {} B sent, {} B received on live connections",
        tx, rx
    );
    match v.node.replication_lag() {
        Some((p50, max)) => {
            let _ = writeln!(
                out,
                "lag       {:.1} ms median, {:.1} ms max: local write until a peer holds it (last 256)",
                p50.as_secs_f64() * 1000.0,
                max.as_secs_f64() * 1000.0
            );
        }
        None => {
            let _ = writeln!(out, "lag       no local write confirmed by a peer yet");
        }
    }
    let peers = crate::daemon::PeersFile::load(&v.paths.peers()).unwrap_or_default();
    let _ = writeln!(out, "peers");
    if peers.peers.is_empty() && connected.is_empty() {
        let _ = writeln!(out, "  (none: add one with `tandem peer add ID ADDRESS`)");
    }
    let seen = v.node.last_seen();
    let last = |id: &str| {
        seen.iter()
            .find(|(n, _)| n.to_string() == id)
            .map_or("nothing received since start".to_owned(), |(_, t)| {
                format!("last frame {}", ago(*t))
            })
    };
    let mut listed = Vec::new();
    for p in &peers.peers {
        let up = connected.iter().any(|c| c.to_string() == p.id);
        listed.push(p.id.clone());
        let _ = writeln!(
            out,
            "  {}  {}, {}  {}",
            p.id,
            if up { "connected" } else { "not connected" },
            last(&p.id),
            p.addresses.join(", ")
        );
    }
    for c in &connected {
        if !listed.contains(&c.to_string()) {
            let _ = writeln!(
                out,
                "  {c}  connected, {}  (from the configuration file)",
                last(&c.to_string())
            );
        }
    }
    let pending = v.node.pending();
    if !pending.is_empty() {
        let _ = writeln!(out, "pending (accept with `tandem peer accept ID`)");
        for p in pending {
            let _ = writeln!(
                out,
                "  {}  from {}  ({} attempts)",
                p.id, p.addr, p.attempts
            );
        }
    }
    out
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, view: View) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        let v = view.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            // Read the request head (bounded), ignore the rest.
            while n < buf.len() {
                match tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    tcp.read(&mut buf[n..]),
                )
                .await
                {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                    Ok(Ok(k)) => {
                        n += k;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n")
                            || buf[..n].contains(&b'\n')
                        {
                            break;
                        }
                    }
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let path = head.split_whitespace().nth(1).unwrap_or("");
            let (code, body) = match path {
                "/metrics" => ("200 OK", prometheus(&v)),
                "/status" => ("200 OK", status(&v)),
                _ => ("404 Not Found", "try /metrics or /status\n".to_owned()),
            };
            let resp = format!(
                "HTTP/1.0 {code}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tcp.write_all(resp.as_bytes()).await;
        });
    }
}
