//! [`Node`]: the QUIC driver around [`tandem_sync::Session`]s — listens, dials configured peers
//! with capped exponential backoff and jitter, keeps one connection per peer, and moves frames
//! between sockets and sessions: control frames on one bidirectional stream, message bodies on
//! unidirectional streams of their own.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tandem_store::{ChangeHash, Store, Timestamp};
use tandem_sync::{CloseCode, Frame, Session, SessionConfig};
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::NetError;
use crate::identity::{Identity, NodeId};
use crate::tls;

/// Most nodes remembered as pending at once.
const MAX_PENDING: usize = 256;

/// How long a connected peer has to send its Hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A peer this node syncs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's node ID: only a certificate with this hash is accepted.
    pub id: NodeId,
    /// Where to dial it (empty: only accept its connections).
    pub addrs: Vec<SocketAddr>,
}

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// UDP address to listen on (`127.0.0.1:0` picks a port).
    pub listen: SocketAddr,
    /// Configured peers.
    pub peers: Vec<PeerConfig>,
    /// Sync session settings.
    pub session: SessionConfig,
    /// First reconnect delay; doubles per failure up to `backoff_max`, with ±25 % jitter.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 22_000)),
            peers: Vec::new(),
            session: SessionConfig::default(),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// A node that connected but is not a configured peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its ID.
    pub id: NodeId,
    /// Where it connected from, last time.
    pub addr: SocketAddr,
    /// How many times it was refused.
    pub attempts: u64,
}

/// What a connection task announces: the store changed, caused by connection `source` (0: a
/// local write), so sessions push what their peers lack.
type Changed = u64;

struct Inner {
    identity: Identity,
    store: Arc<Mutex<Store>>,
    endpoint: Endpoint,
    cfg: NodeConfig,
    peers: RwLock<BTreeMap<NodeId, PeerConfig>>,
    pending: Mutex<BTreeMap<NodeId, Pending>>,
    /// Live connections: peer -> (connection, who dialed).
    conns: Mutex<BTreeMap<NodeId, (Connection, NodeId)>>,
    changed: broadcast::Sender<Changed>,
    next_conn: std::sync::atomic::AtomicU64,
    /// Our changes some peer reported as applied durably with their bodies, and when.
    applied: Mutex<HashMap<ChangeHash, Instant>>,
    applied_notify: tokio::sync::Notify,
    /// Local writes announced with notify_local_change and not yet confirmed by a peer.
    written_at: Mutex<HashMap<ChangeHash, Instant>>,
    /// The last replication lags measured (write announced here until a peer's Applied).
    lags: Mutex<std::collections::VecDeque<Duration>>,
    /// When each peer last sent a frame.
    last_seen: Mutex<HashMap<NodeId, SystemTime>>,
}

/// A running sync node. Dropping it does not stop it; call [`Node::shutdown`].
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

/// Aborts a task when dropped (the connection's helper tasks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the store lock is a bug elsewhere; keep serving with the state
    // as it was left (the store itself never has a half-applied operation in memory).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Starts listening and dialing. Must run inside a tokio runtime.
    pub async fn start(
        identity: Identity,
        store: Arc<Mutex<Store>>,
        cfg: NodeConfig,
    ) -> Result<Node, NetError> {
        let peers: BTreeMap<NodeId, PeerConfig> =
            cfg.peers.iter().map(|p| (p.id, p.clone())).collect();
        // The endpoint's default server config admits nobody; each incoming connection gets
        // its own config that knows the remote address (for the pending list).
        let deny: tls::Admit = Arc::new(|_| false);
        let server = tls::server_config(&identity, deny)?;
        let endpoint = Endpoint::server(server, cfg.listen)
            .map_err(|e| NetError::io(format!("UDP {}", cfg.listen), e))?;
        let (changed, _) = broadcast::channel(1024);
        let inner = Arc::new(Inner {
            identity,
            store,
            endpoint,
            cfg,
            peers: RwLock::new(peers),
            pending: Mutex::new(BTreeMap::new()),
            conns: Mutex::new(BTreeMap::new()),
            changed,
            next_conn: std::sync::atomic::AtomicU64::new(1),
            applied: Mutex::new(HashMap::new()),
            applied_notify: tokio::sync::Notify::new(),
            written_at: Mutex::new(HashMap::new()),
            lags: Mutex::new(std::collections::VecDeque::new()),
            last_seen: Mutex::new(HashMap::new()),
        });
        let node = Node {
            inner,
            tasks: Arc::new(Mutex::new(Vec::new())),
        };
        let accept = tokio::spawn(accept_loop(node.inner.clone()));
        lock(&node.tasks).push(accept);
        let ids: Vec<NodeId> = node
            .inner
            .peers
            .read()
            .map(|p| p.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            node.spawn_dialer(id);
        }
        info!(node = %node.inner.identity.node_id(), addr = ?node.local_addr(), "sync node started");
        Ok(node)
    }

    fn spawn_dialer(&self, id: NodeId) {
        let t = tokio::spawn(dial_loop(self.inner.clone(), id));
        lock(&self.tasks).push(t);
    }

    /// This node's ID.
    pub fn node_id(&self) -> NodeId {
        self.inner.identity.node_id()
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.inner.endpoint.local_addr().ok()
    }

    /// Peers with a live connection.
    pub fn connected(&self) -> Vec<NodeId> {
        lock(&self.inner.conns).keys().copied().collect()
    }

    /// Bytes sent and received over the live connections (UDP payload, QUIC overhead and
    /// retransmissions included).
    pub fn traffic(&self) -> (u64, u64) {
        lock(&self.inner.conns)
            .values()
            .fold((0, 0), |(tx, rx), (c, _)| {
                let s = c.stats();
                (tx + s.udp_tx.bytes, rx + s.udp_rx.bytes)
            })
    }

    /// Nodes that tried to connect and were refused, for an admin to accept.
    pub fn pending(&self) -> Vec<Pending> {
        lock(&self.inner.pending).values().cloned().collect()
    }

    /// Accepts a node as a peer (from the pending list or not), optionally with addresses to
    /// dial. It can connect from now on.
    pub fn add_peer(&self, peer: PeerConfig) {
        lock(&self.inner.pending).remove(&peer.id);
        let id = peer.id;
        let dials = !peer.addrs.is_empty();
        // A dialer runs for every peer with addresses; an accept-only peer that now gets
        // addresses needs one started.
        let had_dialer = match self.inner.peers.write() {
            Ok(mut p) => p.insert(id, peer).is_some_and(|old| !old.addrs.is_empty()),
            Err(_) => true,
        };
        if dials && !had_dialer {
            self.spawn_dialer(id);
        }
    }

    /// Stops trusting a node: its live connection is closed, it is no longer dialed, and its
    /// next handshake is refused (so it shows as pending if it keeps trying). Returns whether
    /// it was a peer.
    pub fn remove_peer(&self, id: &NodeId) -> bool {
        let was = match self.inner.peers.write() {
            Ok(mut p) => p.remove(id).is_some(),
            Err(_) => false,
        };
        if let Some((conn, _)) = lock(&self.inner.conns).remove(id) {
            conn.close(
                quinn::VarInt::from_u32(CloseCode::Done as u32),
                b"no longer a peer",
            );
        }
        was
    }

    /// Tells the node that the store was written locally: connected peers get the changes now.
    pub fn notify_local_change(&self) {
        // Remember when this write happened, to measure how long until a peer holds it.
        let heads: Vec<ChangeHash> = lock(&self.inner.store)
            .last_write_heads()
            .iter()
            .flat_map(|(_, h)| h.iter().copied())
            .collect();
        if !heads.is_empty() {
            let t = Instant::now();
            let mut w = lock(&self.inner.written_at);
            if w.len() > 10_000 {
                w.retain(|_, at| t.duration_since(*at) < Duration::from_secs(600));
            }
            for h in heads {
                w.entry(h).or_insert(t);
            }
        }
        let _ = self.inner.changed.send(0);
    }

    /// When each peer last sent us a frame (since this node started).
    pub fn last_seen(&self) -> Vec<(NodeId, SystemTime)> {
        lock(&self.inner.last_seen)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    /// Replication lag of recent local writes: time from the write until a peer reported it
    /// applied, as (median, maximum) over the last 256 confirmed writes.
    pub fn replication_lag(&self) -> Option<(Duration, Duration)> {
        let lags = lock(&self.inner.lags);
        if lags.is_empty() {
            return None;
        }
        let mut v: Vec<Duration> = lags.iter().copied().collect();
        v.sort_unstable();
        Some((v[v.len() / 2], v[v.len() - 1]))
    }

    /// Every change to the store the node knows of: `0` for a local write announced with
    /// [`Node::notify_local_change`], another value for changes merged from a peer (an IMAP
    /// server waits on these to wake its IDLE sessions).
    pub fn subscribe_changes(&self) -> broadcast::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    /// Waits until some peer has applied every one of `hashes` (changes written here, e.g. by
    /// [`tandem_store::Store::last_write_heads`]) durably, bodies included, or `timeout`
    /// passes. This is what lets LMTP answer 250 only once a message is on two nodes.
    pub async fn wait_applied_by_peer(&self, hashes: &[ChangeHash], timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Register for the wake-up before checking, so none is missed in between.
            let notified = self.inner.applied_notify.notified();
            {
                let applied = lock(&self.inner.applied);
                if hashes.iter().all(|h| applied.contains_key(h)) {
                    return true;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Closes every connection and stops all tasks.
    pub async fn shutdown(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.inner.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::Done as u32),
            b"shutting down",
        );
        lock(&self.inner.conns).clear();
        self.inner.endpoint.wait_idle().await;
    }
}

async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let admit_inner = inner.clone();
            let admit: tls::Admit = Arc::new(move |id: NodeId| {
                let known = admit_inner
                    .peers
                    .read()
                    .map(|p| p.contains_key(&id))
                    .unwrap_or(false);
                if !known {
                    let mut pending = lock(&admit_inner.pending);
                    // Anyone who can reach the port can mint certificates: keep the list bounded
                    // (the node with the fewest attempts makes room).
                    if pending.len() >= MAX_PENDING && !pending.contains_key(&id) {
                        let evict = pending.values().min_by_key(|p| p.attempts).map(|p| p.id);
                        if let Some(evict) = evict {
                            pending.remove(&evict);
                        }
                    }
                    let e = pending.entry(id).or_insert(Pending {
                        id,
                        addr,
                        attempts: 0,
                    });
                    e.addr = addr;
                    e.attempts += 1;
                    warn!(peer = %id, %addr, "refused a node that is not a configured peer; listed as pending");
                }
                known
            });
            let cfg = match tls::server_config(&inner.identity, admit) {
                Ok(c) => Arc::new(c),
                Err(e) => {
                    warn!(%addr, "cannot build TLS config: {e}");
                    return;
                }
            };
            let conn = match incoming.accept_with(cfg) {
                Ok(c) => c.await,
                Err(e) => {
                    warn!(%addr, "incoming connection failed: {e}");
                    return;
                }
            };
            match conn {
                Ok(conn) => {
                    if let Some(id) = tls::peer_id(&conn) {
                        run_connection(inner, conn, id, id).await;
                    }
                }
                Err(e) => info!(%addr, "handshake failed: {e}"),
            }
        });
    }
}

async fn dial_loop(inner: Arc<Inner>, id: NodeId) {
    let mut failures: u32 = 0;
    let mut rng = jitter_seed(&inner.identity.node_id(), &id);
    loop {
        let addrs = inner
            .peers
            .read()
            .ok()
            .and_then(|p| p.get(&id).map(|p| p.addrs.clone()))
            .unwrap_or_default();
        if addrs.is_empty() {
            return; // accept-only peer
        }
        if !lock(&inner.conns).contains_key(&id) {
            let mut connected = false;
            for addr in &addrs {
                let Ok(cfg) = tls::client_config(&inner.identity, id) else {
                    return;
                };
                let attempt = match inner.endpoint.connect_with(cfg, *addr, "tandem") {
                    Ok(c) => c.await,
                    Err(e) => {
                        warn!(peer = %id, %addr, "cannot dial: {e}");
                        continue;
                    }
                };
                match attempt {
                    Ok(conn) => {
                        connected = true;
                        let began = std::time::Instant::now();
                        run_connection(inner.clone(), conn, id, inner.identity.node_id()).await;
                        // A connection the session ended quickly (version mismatch, a store
                        // error, a full disk) backs off like a failed dial, not a redial storm.
                        if began.elapsed() >= Duration::from_secs(30) {
                            failures = 0;
                        } else {
                            failures = failures.saturating_add(1);
                        }
                        break;
                    }
                    Err(e) => info!(peer = %id, %addr, "connect failed: {e}"),
                }
            }
            if !connected {
                failures = failures.saturating_add(1);
            }
        }
        // Capped exponential backoff with ±25 % jitter, so two nodes restarting together do
        // not dial each other in lockstep forever.
        let base = inner.cfg.backoff_min.as_millis() as u64;
        let cap = inner.cfg.backoff_max.as_millis() as u64;
        let delay = base
            .saturating_mul(1u64 << failures.min(16))
            .min(cap.max(base));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let jitter = (delay / 4).max(1);
        let d = delay.saturating_sub(jitter) + rng % (2 * jitter);
        tokio::time::sleep(Duration::from_millis(d)).await;
    }
}

fn jitter_seed(a: &NodeId, b: &NodeId) -> u64 {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for (i, byte) in a.0.iter().chain(b.0.iter()).enumerate() {
        x ^= (*byte as u64) << ((i % 8) * 8);
        x = x.rotate_left(5).wrapping_mul(0x100_0000_01B3);
    }
    x | 1
}

/// Registers the connection (one per peer: a redial replaces the dialer's old connection; of
/// two simultaneous ones, both sides keep the one dialed by the lower node ID), then runs the
/// session until either side closes.
async fn run_connection(inner: Arc<Inner>, conn: Connection, peer: NodeId, dialer: NodeId) {
    {
        let mut conns = lock(&inner.conns);
        if let Some((old, old_dialer)) = conns.get(&peer)
            && old.close_reason().is_none()
        {
            // Same dialer again: it redialed because it considers the old connection dead
            // (a restart), so the new one wins. Different dialers: a simultaneous dial, and
            // both sides keep the one dialed by the lower node ID.
            if *old_dialer != dialer && *old_dialer < dialer {
                conn.close(
                    quinn::VarInt::from_u32(CloseCode::Done as u32),
                    b"duplicate connection",
                );
                return;
            }
            old.close(
                quinn::VarInt::from_u32(CloseCode::Done as u32),
                b"duplicate connection",
            );
        }
        conns.insert(peer, (conn.clone(), dialer));
    }
    let me = inner
        .next_conn
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    info!(peer = %peer, remote = %conn.remote_address(), "connected");
    let we_dialed = dialer == inner.identity.node_id();
    let streams = if we_dialed {
        conn.open_bi().await
    } else {
        conn.accept_bi().await
    };
    let reason = match streams {
        Ok((send, recv)) => drive(&inner, &conn, me, peer, send, recv).await,
        Err(e) => format!("no control stream: {e}"),
    };
    info!(peer = %peer, "disconnected: {reason}");
    let mut conns = lock(&inner.conns);
    if conns
        .get(&peer)
        .is_some_and(|(c, _)| c.stable_id() == conn.stable_id())
    {
        conns.remove(&peer);
    }
}

/// Moves frames until the connection ends; returns why it ended.
async fn drive(
    inner: &Arc<Inner>,
    conn: &Connection,
    me: u64,
    peer: NodeId,
    send: SendStream,
    mut recv: RecvStream,
) -> String {
    let mut session = Session::new(&lock(&inner.store), inner.cfg.session.clone());
    let mut changed = inner.changed.subscribe();
    // Control frames are written by a task of their own: if this loop waited in write_all while
    // both peers' receive windows were full, neither would ever read again.
    let (control_tx, mut control_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let writer = tokio::spawn(async move {
        let mut send = send;
        while let Some(bytes) = control_rx.recv().await {
            if send.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = send.finish();
    });
    let _writer = AbortOnDrop(writer);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (bodies_tx, mut bodies_rx) = tokio::sync::mpsc::channel::<Result<Frame, String>>(256);
    // A peer that completes TLS but never says Hello is not kept (keep-alives would).
    let hello_deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Err(e) = flush(conn, &mut session, &control_tx).await {
            return e;
        }
        if let Some(c) = session.closed() {
            conn.close(quinn::VarInt::from_u32(c.code as u32), c.reason.as_bytes());
            return c.to_string();
        }
        if !session.is_ready() && tokio::time::Instant::now() >= hello_deadline {
            session.close(CloseCode::Protocol, "no Hello within the handshake timeout");
            continue;
        }
        let mut sleep = session
            .poll_timeout()
            .map(|t| Duration::from_millis((t.0 - now().0).max(0) as u64))
            .unwrap_or(Duration::from_secs(3600));
        if !session.is_ready() {
            sleep =
                sleep.min(hello_deadline.saturating_duration_since(tokio::time::Instant::now()));
        }
        tokio::select! {
            read = recv.read(&mut chunk) => {
                match read {
                    Ok(Some(n)) => {
                        buf.extend_from_slice(&chunk[..n]);
                        loop {
                            match Frame::decode(&buf) {
                                Ok(Some((frame, used))) => {
                                    buf.drain(..used);
                                    handle(inner, &mut session, frame, me, peer);
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    let reason = format!("malformed frame from peer: {e}");
                                    warn!("{reason}");
                                    session.close(CloseCode::Protocol, reason);
                                    break;
                                }
                            }
                        }
                    }
                    Ok(None) => return "control stream finished by peer".into(),
                    Err(e) => return format!("control stream: {e}"),
                }
            }
            uni = conn.accept_uni() => {
                match uni {
                    // Each body stream is read by a task of its own, so a slow or large one
                    // holds up neither control frames nor other bodies.
                    Ok(r) => {
                        tokio::spawn(read_bodies(r, bodies_tx.clone()));
                    }
                    Err(e) => return format!("connection: {e}"),
                }
            }
            Some(body) = bodies_rx.recv() => {
                match body {
                    Ok(frame) => handle(inner, &mut session, frame, me, peer),
                    Err(reason) => session.close(CloseCode::Protocol, reason),
                }
            }
            msg = changed.recv() => {
                match msg {
                    Ok(source) if source == me => {}
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                        session.local_change(&mut lock(&inner.store));
                    }
                    Err(broadcast::error::RecvError::Closed) => return "node shut down".into(),
                }
            }
            _ = tokio::time::sleep(sleep) => {
                let mut store = lock(&inner.store);
                let before = store.change_counter();
                session.handle_timeout(&mut store, now());
                if store.change_counter() != before {
                    // Held changes released by the timer: fix-ups back, relay onwards.
                    session.local_change(&mut store);
                    drop(store);
                    let _ = inner.changed.send(me);
                }
            }
        }
    }
}

fn handle(inner: &Arc<Inner>, session: &mut Session, frame: Frame, me: u64, peer: NodeId) {
    lock(&inner.last_seen).insert(peer, SystemTime::now());
    let mut store = lock(&inner.store);
    let before = store.change_counter();
    session.handle_frame(&mut store, frame, now());
    let applied = session.take_applied_by_peer();
    if !applied.is_empty() {
        let mut map = lock(&inner.applied);
        let t = Instant::now();
        // Forget acknowledgements nobody waited for within ten minutes.
        if map.len() > 100_000 {
            map.retain(|_, at| t.duration_since(*at) < Duration::from_secs(600));
        }
        {
            let mut written = lock(&inner.written_at);
            let mut lags = lock(&inner.lags);
            for h in &applied {
                if let Some(at) = written.remove(h) {
                    if lags.len() >= 256 {
                        lags.pop_front();
                    }
                    lags.push_back(t.duration_since(at));
                }
            }
        }
        map.extend(applied.into_iter().map(|h| (h, t)));
        drop(map);
        inner.applied_notify.notify_waiters();
    }
    // Compare a counter rather than draining events: those belong to the embedding
    // application (an IMAP server waiting in IDLE, say).
    if store.change_counter() != before {
        // What we just merged may have needed fix-ups (lifts, re-stamps): the sender needs
        // those at once, not at the next manifest (the session knows what the sender has, so
        // nothing is echoed). And relay it all to the other peers.
        session.local_change(&mut store);
        drop(store);
        let _ = inner.changed.send(me);
    }
}

/// Sends what the session has queued: control frames on the control stream, bodies each on a
/// new unidirectional stream.
async fn flush(
    conn: &Connection,
    session: &mut Session,
    control: &tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) -> Result<(), String> {
    // Bodies queued together (the answer to one WantBlobs) share one stream, up to a few MiB.
    let mut bodies: Vec<u8> = Vec::new();
    while let Some(frame) = session.poll_frame() {
        let bytes = frame.encode();
        if matches!(frame, Frame::Blob { .. } | Frame::BlobPart { .. }) {
            bodies.extend_from_slice(&bytes);
            if bodies.len() >= BODY_STREAM_BYTES {
                send_bodies(conn, std::mem::take(&mut bodies)).await?;
            }
        } else {
            control
                .send(bytes)
                .map_err(|_| "control stream writer stopped".to_owned())?;
        }
    }
    if !bodies.is_empty() {
        send_bodies(conn, bodies).await?;
    }
    Ok(())
}

/// Bytes of bodies sent on one stream before another is opened.
const BODY_STREAM_BYTES: usize = 4 << 20;

/// Writes Blob frames on a new unidirectional stream, in the background so that large bodies do
/// not hold up control frames.
async fn send_bodies(conn: &Connection, bytes: Vec<u8>) -> Result<(), String> {
    let mut s = conn
        .open_uni()
        .await
        .map_err(|e| format!("opening a body stream: {e}"))?;
    tokio::spawn(async move {
        if s.write_all(&bytes).await.is_ok() {
            let _ = s.finish();
        }
    });
    Ok(())
}

/// Reads a body stream: Blob frames only, each handed to the connection's loop as it
/// completes. A cut stream loses the bodies not yet complete; they are asked for again.
async fn read_bodies(mut r: RecvStream, tx: tokio::sync::mpsc::Sender<Result<Frame, String>>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut chunk).await {
            Ok(Some(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(None) => {
                if !buf.is_empty() {
                    let _ = tx
                        .send(Err("body stream ended inside a frame".into()))
                        .await;
                }
                return;
            }
            Err(e) => {
                warn!("body stream cut: {e}");
                return;
            }
        }
        loop {
            match Frame::decode(&buf) {
                Ok(Some((frame @ (Frame::Blob { .. } | Frame::BlobPart { .. }), used))) => {
                    buf.drain(..used);
                    if tx.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(Some(_)) => {
                    let _ = tx
                        .send(Err(
                            "a body stream may carry only Blob and BlobPart frames".into()
                        ))
                        .await;
                    return;
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(format!("malformed body frame: {e}"))).await;
                    return;
                }
            }
        }
    }
}
