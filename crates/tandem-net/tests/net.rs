//! Real sockets on 127.0.0.1 (ports from :0): nodes converge over QUIC with mutual TLS, relay
//! through a middle node, refuse unknown nodes until accepted, and survive hostile peers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_net::{Identity, Node, NodeConfig, NodeId, PeerConfig, tls};
use tandem_store::{BlobHash, Store, StoreConfig, Timestamp};
use tandem_sync::{Frame, PROTOCOL_VERSION};

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    )
}

struct TestNode {
    _dir: tempfile::TempDir,
    identity: Identity,
    store: Arc<Mutex<Store>>,
    node: Node,
}

impl TestNode {
    async fn start(slot: u8) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::load_or_create(&dir.path().join("id")).unwrap();
        let mut store = Store::open(
            dir.path().join("store"),
            StoreConfig {
                slot,
                durable: false,
                ..StoreConfig::default()
            },
        )
        .unwrap();
        store.create_account("alice", now()).unwrap();
        let store = Arc::new(Mutex::new(store));
        let node = Node::start(identity.clone(), store.clone(), cfg())
            .await
            .unwrap();
        TestNode {
            _dir: dir,
            identity,
            store,
            node,
        }
    }

    fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr().unwrap()
    }

    fn trust(&self, other: &TestNode, dial: bool) {
        self.node.add_peer(PeerConfig {
            id: other.id(),
            addrs: if dial { vec![other.addr()] } else { vec![] },
        });
    }

    fn append(&self, n: u32) -> BlobHash {
        let raw = format!("Subject: {n}\r\nMessage-ID: <{n}@net>\r\n\r\nbody {n}\r\n").into_bytes();
        {
            let mut s = self.store.lock().unwrap();
            let ib = s.mailbox_id("alice", "INBOX").unwrap();
            s.append("alice", &ib, &raw, &[], 0, now()).unwrap();
        }
        self.node.notify_local_change();
        BlobHash::of(&raw)
    }

    fn has(&self, h: &BlobHash) -> bool {
        let s = self.store.lock().unwrap();
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        s.messages("alice", &ib)
            .unwrap()
            .iter()
            .any(|m| m.blob == *h)
    }

    fn uids(&self) -> Vec<(u32, BlobHash)> {
        let s = self.store.lock().unwrap();
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        s.messages("alice", &ib)
            .unwrap()
            .iter()
            .map(|m| (m.uid, m.blob))
            .collect()
    }
}

fn cfg() -> NodeConfig {
    NodeConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..NodeConfig::default()
    }
}

/// Nodes A (slot 0) and B (slot 1), each trusting and dialling the other.
async fn paired() -> (TestNode, TestNode) {
    let a = TestNode::start(0).await;
    let b = TestNode::start(1).await;
    a.trust(&b, true);
    b.trust(&a, true);
    (a, b)
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_converge_over_quic() {
    let (a, b) = paired().await;
    let h = a.append(1);
    eventually("B shows A's message", || b.has(&h)).await;
    let h2 = b.append(2);
    eventually("A shows B's message", || a.has(&h2)).await;
    eventually("same UIDs on both", || a.uids() == b.uids()).await;
    assert_eq!(a.node.connected(), vec![b.id()]);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_crosses_in_parts_over_quic() {
    let (a, b) = paired().await;
    // 5 MB with 1 MiB parts (the default): six BlobPart frames on the body streams.
    let raw = format!(
        "Subject: attachment\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n".repeat(80_000)
    )
    .into_bytes();
    let h = BlobHash::of(&raw);
    {
        let mut s = a.store.lock().unwrap();
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        s.append("alice", &ib, &raw, &[], 0, now()).unwrap();
    }
    a.node.notify_local_change();
    eventually("B shows the large message", || b.has(&h)).await;
    assert_eq!(b.store.lock().unwrap().message_bytes(&h).unwrap(), raw);
    assert_eq!(b.store.lock().unwrap().partial_blob_len(&h), 0);
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_disconnected_and_refused() {
    let (a, b) = paired().await;
    eventually("connected", || a.node.connected() == vec![b.id()]).await;
    assert!(a.node.remove_peer(&b.id()));
    eventually("B is refused and pending on A", || {
        a.node.pending().iter().any(|p| p.id == b.id())
    })
    .await;
    assert!(a.node.connected().is_empty());
    // Writes on B no longer reach A.
    let h = b.append(7);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.has(&h));
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_relays_through_the_middle_node() {
    let a = TestNode::start(0).await;
    let b = TestNode::start(1).await;
    let c = TestNode::start(2).await;
    // A and C do not know each other; B knows both.
    a.trust(&b, true);
    b.trust(&a, true);
    b.trust(&c, true);
    c.trust(&b, true);
    let h = a.append(1);
    eventually("C shows A's message via B", || c.has(&h)).await;
    let h2 = c.append(2);
    eventually("A shows C's message via B", || a.has(&h2)).await;
    eventually("all three agree", || {
        a.uids() == b.uids() && b.uids() == c.uids()
    })
    .await;
    for n in [a, b, c] {
        n.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_node_is_pending_until_accepted() {
    let a = TestNode::start(0).await;
    let c = TestNode::start(2).await;
    c.trust(&a, true); // C dials A, but A was never told about C
    eventually("A lists C as pending", || {
        a.node.pending().iter().any(|p| p.id == c.id())
    })
    .await;
    let p = a
        .node
        .pending()
        .into_iter()
        .find(|p| p.id == c.id())
        .unwrap();
    assert_eq!(p.addr.ip(), c.addr().ip());
    let h = a.append(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.has(&h), "nothing syncs before the admin accepts");
    assert!(a.node.connected().is_empty());
    a.trust(&c, false); // accept it
    assert!(a.node.pending().is_empty());
    eventually("C syncs once accepted", || c.has(&h)).await;
    a.node.shutdown().await;
    c.node.shutdown().await;
}

/// A peer A trusts, speaking raw frames.
async fn raw_peer(a: &TestNode, me: &Identity) -> (quinn::Endpoint, quinn::Connection) {
    a.node.add_peer(PeerConfig {
        id: me.node_id(),
        addrs: vec![],
    });
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = ep
        .connect_with(tls::client_config(me, a.id()).unwrap(), a.addr(), "tandem")
        .unwrap()
        .await
        .unwrap();
    (ep, conn)
}

async fn closed_with(conn: &quinn::Connection) -> String {
    tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .expect("peer closes the connection")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_disconnected_and_the_node_keeps_serving() {
    let (a, b) = paired().await;

    // 1. Garbage on the control stream.
    let m = Identity::generate().unwrap();
    let (_ep, conn) = raw_peer(&a, &m).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[3, 0, 0, 0, 0x7f, 1, 2]).await.unwrap();
    let why = closed_with(&conn).await;
    assert!(
        why.contains("malformed frame") || why.contains("unknown frame"),
        "{why}"
    );

    // 2. An oversized frame.
    let m2 = Identity::generate().unwrap();
    let (_ep2, conn) = raw_peer(&a, &m2).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let why = closed_with(&conn).await;
    assert!(why.contains("exceeds"), "{why}");

    // 3. A body that does not match its hash, after a proper Hello.
    let m3 = Identity::generate().unwrap();
    let (_ep3, conn) = raw_peer(&a, &m3).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(
        &Frame::Hello {
            version: PROTOCOL_VERSION,
            slot: 7,
        }
        .encode(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fake = BlobHash::of(b"what was promised");
    let mut uni = conn.open_uni().await.unwrap();
    uni.write_all(
        &Frame::Blob {
            hash: fake,
            data: b"something else".to_vec(),
        }
        .encode(),
    )
    .await
    .unwrap();
    uni.finish().unwrap();
    let why = closed_with(&conn).await;
    assert!(why.contains("does not match its hash"), "{why}");
    assert!(!a.store.lock().unwrap().has_blob(&fake));

    // 4. A peer with another protocol version.
    let m4 = Identity::generate().unwrap();
    let (_ep4, conn) = raw_peer(&a, &m4).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(
        &Frame::Hello {
            version: 99,
            slot: 8,
        }
        .encode(),
    )
    .await
    .unwrap();
    let why = closed_with(&conn).await;
    assert!(
        why.contains("protocol version 99 is not supported"),
        "{why}"
    );

    // The node still serves its real peer.
    let h = a.append(1);
    eventually("B still syncs with A", || b.has(&h)).await;
    a.node.shutdown().await;
    b.node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_writes_on_both_sides_heals() {
    let (a, b) = paired().await;
    let h0 = a.append(0);
    eventually("initial sync", || b.has(&h0)).await;

    // Cut: B's node goes away; both sides keep taking mail.
    b.node.shutdown().await;
    let ha = a.append(1);
    let hb = {
        let raw = b"Subject: on B during the split\r\n\r\nx\r\n".to_vec();
        let mut s = b.store.lock().unwrap();
        let ib = s.mailbox_id("alice", "INBOX").unwrap();
        s.append("alice", &ib, &raw, &[], 0, now()).unwrap();
        BlobHash::of(&raw)
    };
    // Heal: B comes back (same identity and store, new port) and dials A.
    let node = Node::start(b.identity.clone(), b.store.clone(), cfg())
        .await
        .unwrap();
    node.add_peer(PeerConfig {
        id: a.id(),
        addrs: vec![a.addr()],
    });
    a.node.add_peer(PeerConfig {
        id: b.id(),
        addrs: vec![node.local_addr().unwrap()],
    });
    eventually("A has B's split mail", || a.has(&hb)).await;
    eventually("B has A's split mail", || b.has(&ha)).await;
    eventually("same UIDs after heal", || a.uids() == b.uids()).await;
    assert_eq!(a.uids().len(), 3);
    a.node.shutdown().await;
    node.shutdown().await;
}

/// The changes of the node's last write.
fn last_write(n: &TestNode) -> Vec<tandem_store::ChangeHash> {
    n.store
        .lock()
        .unwrap()
        .last_write_heads()
        .iter()
        .flat_map(|(_, h)| h.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_confirms_the_writes_it_holds() {
    let a = TestNode::start(0).await;
    let b = TestNode::start(1).await;
    // Nobody to confirm yet: waiting times out.
    let _ = a.append(1);
    let hashes = last_write(&a);
    assert!(!hashes.is_empty());
    assert!(
        !a.node
            .wait_applied_by_peer(&hashes, Duration::from_millis(300))
            .await
    );
    a.trust(&b, true);
    b.trust(&a, true);
    // Once B has applied the append (and has its body), A hears of it.
    assert!(
        a.node
            .wait_applied_by_peer(&hashes, Duration::from_secs(20))
            .await
    );
    let h = a.append(2);
    let hashes = last_write(&a);
    let t = Instant::now();
    assert!(
        a.node
            .wait_applied_by_peer(&hashes, Duration::from_secs(20))
            .await
    );
    eprintln!("append confirmed by the peer after {:?}", t.elapsed());
    assert!(b.has(&h), "confirmed means B shows it");
    a.node.shutdown().await;
    b.node.shutdown().await;
}
