//! Two nodes, each a store + IMAP server + sync node on 127.0.0.1, paired over QUIC. A client
//! that synced against one node is pointed at the other: it must sync without an error and
//! download nothing it already has; a session in IDLE on one node sees mail appended on the
//! other.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, maildir, mbsync, mbsyncrc, message, ok};
use tandem_imap::{Imap, ImapConfig, Listener};
use tandem_net::{Identity, Node, NodeConfig, PeerConfig};
use tandem_store::{Store, StoreConfig};

struct Box_ {
    _dir: tempfile::TempDir,
    store: Arc<Mutex<Store>>,
    imap: Imap,
    node: Node,
    imap_addr: SocketAddr,
}

async fn start_box(slot: u8) -> Box_ {
    let dir = tempfile::tempdir().expect("tmp");
    let identity = Identity::load_or_create(&dir.path().join("id")).expect("identity");
    let store = Store::open(
        dir.path().join("store"),
        StoreConfig {
            slot,
            durable: false,
            ..StoreConfig::default()
        },
    )
    .expect("store");
    let store = Arc::new(Mutex::new(store));
    let node = Node::start(
        identity,
        store.clone(),
        NodeConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..NodeConfig::default()
        },
    )
    .await
    .expect("node");
    let imap = Imap::new(store.clone(), common::users(), ImapConfig::default());
    // IMAP writes go to peers at once; merged changes wake IDLE sessions.
    let n = node.clone();
    imap.set_on_change(Arc::new(move || n.notify_local_change()));
    let mut changes = node.subscribe_changes();
    let i = imap.clone();
    tokio::spawn(async move {
        while let Ok(src) | Err(tokio::sync::broadcast::error::RecvError::Lagged(src)) =
            changes.recv().await
        {
            if src != 0 {
                i.notify_changed();
            }
        }
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let imap_addr = l.local_addr().expect("addr");
    let i = imap.clone();
    tokio::spawn(async move { i.serve(l, Listener::Plain).await });
    Box_ {
        _dir: dir,
        store,
        imap,
        node,
        imap_addr,
    }
}

/// A runtime and two paired boxes on it.
fn pair() -> (tokio::runtime::Runtime, Box_, Box_) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    let (a, b) = rt.block_on(async {
        let a = start_box(0).await;
        let b = start_box(1).await;
        a.node.add_peer(PeerConfig {
            id: b.node.node_id(),
            addrs: vec![b.node.local_addr().expect("addr")],
        });
        b.node.add_peer(PeerConfig {
            id: a.node.node_id(),
            addrs: vec![a.node.local_addr().expect("addr")],
        });
        (a, b)
    });
    (rt, a, b)
}

fn count(store: &Arc<Mutex<Store>>, mailbox: &str) -> usize {
    let s = store.lock().unwrap_or_else(|p| p.into_inner());
    s.mailbox_id("alice", mailbox)
        .and_then(|id| s.uids("alice", &id))
        .map_or(0, |u| u.len())
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn mbsync_fails_over_between_nodes_without_redownloading() {
    let (rt, a, b) = pair();
    let mut ca = Client::login(a.imap_addr, "alice", "secret");
    for i in 0..10 {
        ok(&ca.append(
            "INBOX",
            if i % 2 == 0 { "\\Seen" } else { "" },
            &message(i, "on A"),
        ));
    }
    ok(&ca.cmd("CREATE Projects"));
    ok(&ca.append("Projects", "", &message(50, "project")));
    // B's user logs in once so the account exists there too (it also arrives by sync).
    let _cb = Client::login(b.imap_addr, "alice", "secret");
    wait_for("B to have A's mail", || {
        count(&b.store, "INBOX") == 10 && count(&b.store, "Projects") == 1
    });

    let work = tempfile::tempdir().expect("tmp");
    let rc = mbsyncrc(work.path(), a.imap_addr.port());
    mbsync(&rc);
    let inbox = work.path().join("mail/INBOX");
    let before = maildir(&inbox);
    assert_eq!(before.len(), 10);

    // The same client state, pointed at B.
    let rc = mbsyncrc(work.path(), b.imap_addr.port());
    mbsync(&rc);
    assert_eq!(
        maildir(&inbox),
        before,
        "nothing re-downloaded, nothing lost"
    );
    assert_eq!(maildir(&work.path().join("mail/Projects")).len(), 1);

    // A goes down; new mail arrives on B; the client (still on B) gets exactly that.
    rt.block_on(async {
        a.imap.shutdown();
        a.node.shutdown().await;
    });
    let mut cb = Client::login(b.imap_addr, "alice", "secret");
    for i in 20..23 {
        ok(&cb.append("INBOX", "", &message(i, "on B while A is down")));
    }
    mbsync(&rc);
    let after = maildir(&inbox);
    assert_eq!(after.len(), 13);
    assert!(before.is_subset(&after), "the old files are untouched");
    // And back to A's port is not possible (A is down): the client keeps working on B.
    mbsync(&rc);
    assert_eq!(maildir(&inbox).len(), 13);
    rt.block_on(b.node.shutdown());
}

#[test]
fn idle_on_one_node_sees_mail_appended_on_the_other() {
    let (rt, a, b) = pair();
    let mut ca = Client::login(a.imap_addr, "alice", "secret");
    let mut cb = Client::login(b.imap_addr, "alice", "secret");
    ok(&ca.append("INBOX", "", &message(1, "first")));
    wait_for("B to have the first message", || {
        count(&b.store, "INBOX") == 1
    });
    ok(&cb.cmd("SELECT INBOX"));
    cb.send_raw(b"i IDLE\r\n");
    assert!(cb.line().starts_with('+'));
    let mut lags = Vec::new();
    for n in 2..=6 {
        let t = Instant::now();
        ok(&ca.append("INBOX", "", &message(n, "live")));
        assert_eq!(cb.line(), format!("* {n} EXISTS"));
        lags.push(t.elapsed());
    }
    eprintln!("append on A -> EXISTS in IDLE on B: {lags:?}");
    cb.send_raw(b"DONE\r\n");
    ok(&cb.until("i"));
    rt.block_on(async {
        a.node.shutdown().await;
        b.node.shutdown().await;
    });
}
