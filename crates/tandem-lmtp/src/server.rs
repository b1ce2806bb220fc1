//! The tokio listener: reads lines, runs an [`LmtpSession`], and stores each delivered message
//! in every recipient's INBOX with a durable append before answering 250.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_store::{BlobHash, ChangeHash, Error as StoreError, Store, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

use crate::session::{Delivery, DeliveryError, Event, LmtpSession, SessionConfig};

/// Where LMTP is served: a TCP socket (Postfix's `lmtp:inet:host:port`) or a unix socket
/// (`lmtp:unix:/path`). `TcpListener` and `UnixListener` convert into it.
#[derive(Debug)]
pub enum LmtpListener {
    /// TCP.
    Tcp(TcpListener),
    /// A unix socket (whoever bound it removes its file).
    Unix(UnixListener),
}

impl From<TcpListener> for LmtpListener {
    fn from(l: TcpListener) -> Self {
        LmtpListener::Tcp(l)
    }
}

impl From<UnixListener> for LmtpListener {
    fn from(l: UnixListener) -> Self {
        LmtpListener::Unix(l)
    }
}

/// One accepted connection, whatever the socket.
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

impl LmtpListener {
    async fn accept(&self) -> io::Result<(Box<dyn Conn>, String)> {
        match self {
            LmtpListener::Tcp(l) => {
                let (s, peer) = l.accept().await?;
                let _ = s.set_nodelay(true);
                Ok((Box::new(s), peer.to_string()))
            }
            LmtpListener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), "unix socket".to_owned()))
            }
        }
    }
}

/// Maps a recipient address to the account it delivers to; `None` for an unknown recipient.
pub type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Called after a delivery changed the store (a sync node pushes it to peers).
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

/// Waits until a peer holds these changes (and their bodies), up to the timeout; `true` if it
/// does. The daemon passes `tandem_net::Node::wait_applied_by_peer`.
pub type PeerWait = Arc<
    dyn Fn(
            Vec<ChangeHash>,
            Duration,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

/// When a message counts as delivered.
#[derive(Clone)]
pub enum Durability {
    /// 250 once the message is on this node's disk.
    Local,
    /// 250 only once a peer also holds the message and its body, so acknowledged mail survives
    /// losing this whole box. If no peer confirms within `timeout`, the answer is `451` (the
    /// message stays stored here; the sender's retry of the same message waits for the same
    /// confirmation instead of storing a second copy).
    Peer {
        /// How to wait for a peer.
        wait: PeerWait,
        /// How long to wait.
        timeout: Duration,
    },
}

impl std::fmt::Debug for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Local => f.write_str("Local"),
            Durability::Peer { timeout, .. } => write!(f, "Peer({timeout:?})"),
        }
    }
}

/// Copies stored here awaiting a peer's confirmation: (account, body) -> (changes, since).
type AwaitingPeer =
    std::collections::HashMap<(String, BlobHash), (Vec<ChangeHash>, std::time::Instant)>;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// Session settings (host name, size limit, recipients).
    pub session: SessionConfig,
    /// When to answer 250.
    pub durability: Durability,
    /// Longest command line.
    pub max_command_line: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            session: SessionConfig::default(),
            durability: Durability::Local,
            max_command_line: 4096,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

struct Shared {
    store: Arc<Mutex<Store>>,
    resolve: Resolver,
    on_change: RwLock<Option<ChangeHook>>,
    cfg: LmtpConfig,
    shutdown: watch::Sender<bool>,
    delivered: AtomicU64,
    failed: AtomicU64,
    connections: AtomicU64,
    /// Peer durability: copies stored here whose peer confirmation is still awaited, by
    /// (account, body), with the changes to wait for. A retried delivery of the same message
    /// waits on these instead of storing it again.
    /// Entries older than a day are dropped (a sender retries for days at most; the copy
    /// stored here stays either way).
    awaiting_peer: Mutex<AwaitingPeer>,
}

/// An LMTP server over a shared store. Cheap to clone.
#[derive(Clone)]
pub struct Lmtp {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Lmtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lmtp")
            .field("delivered", &self.delivered())
            .finish()
    }
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

impl Lmtp {
    /// A server that delivers into `store`, to the accounts `resolve` names.
    pub fn new(store: Arc<Mutex<Store>>, resolve: Resolver, cfg: LmtpConfig) -> Lmtp {
        let (shutdown, _) = watch::channel(false);
        Lmtp {
            shared: Arc::new(Shared {
                store,
                resolve,
                on_change: RwLock::new(None),
                cfg,
                shutdown,
                delivered: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                awaiting_peer: Mutex::new(std::collections::HashMap::new()),
            }),
        }
    }

    /// Sets what to call after a delivery changed the store.
    pub fn set_on_change(&self, hook: ChangeHook) {
        *self
            .shared
            .on_change
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Recipient copies stored since start.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    /// Recipient copies refused with a temporary or permanent error since start.
    pub fn failed(&self) -> u64 {
        self.shared.failed.load(Ordering::Relaxed)
    }

    /// Open connections (a graceful shutdown waits for them to reach zero).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting; each connection finishes the transaction in flight (a message being
    /// stored is stored and answered), then gets `421` and is closed.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Accepts connections until [`Lmtp::shutdown`].
    pub async fn serve(&self, listener: impl Into<LmtpListener>) -> io::Result<()> {
        let listener = listener.into();
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            let (conn, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "LMTP accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = wait_shutdown(&mut shutdown) => return Ok(()),
            };
            let shared = self.shared.clone();
            shared.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let r = connection(shared.clone(), conn).await;
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "LMTP connection ended");
                }
            });
        }
    }
}

/// Stores one delivery; one result per recipient, with the changes that hold each stored copy.
fn deliver(shared: &Shared, d: &Delivery) -> Vec<Result<Vec<ChangeHash>, DeliveryError>> {
    let now = now();
    let peer_mode = matches!(shared.cfg.durability, Durability::Peer { .. });
    let blob = BlobHash::of(&d.message);
    let mut store = lock(&shared.store);
    let before = store.change_counter();
    let mut out = Vec::with_capacity(d.recipients.len());
    for r in &d.recipients {
        if peer_mode {
            let waiting = lock(&shared.awaiting_peer)
                .get(&(r.account.clone(), blob))
                .map(|(h, _)| h.clone());
            if let Some(hashes) = waiting {
                // A retry of a message already stored here: wait for the same confirmation.
                out.push(Ok(hashes));
                continue;
            }
        }
        let mut hashes = Vec::new();
        let mut collect = |s: &Store, c0: u64| {
            if s.change_counter() != c0 {
                hashes.extend(
                    s.last_write_heads()
                        .iter()
                        .flat_map(|(_, h)| h.iter().copied()),
                );
            }
        };
        let c0 = store.change_counter();
        let res = store.create_account(&r.account, now);
        collect(&store, c0);
        let res = res
            .and_then(|()| store.mailbox_id(&r.account, "INBOX"))
            .and_then(|inbox| {
                let c0 = store.change_counter();
                let a = store.append(&r.account, &inbox, &d.message, &[], now.as_secs(), now);
                collect(&store, c0);
                a
            });
        out.push(match res {
            Ok(a) => {
                tracing::info!(to = %r.address, account = %r.account, uid = a.uid, size = d.message.len(), "stored");
                if peer_mode {
                    let mut w = lock(&shared.awaiting_peer);
                    let t = std::time::Instant::now();
                    if w.len() >= 10_000 {
                        w.retain(|_, (_, at)| t.duration_since(*at) < Duration::from_secs(86_400));
                    }
                    w.insert((r.account.clone(), blob), (hashes.clone(), t));
                }
                Ok(hashes)
            }
            Err(e) => {
                tracing::warn!(to = %r.address, error = %e, "delivery failed");
                Err(match e {
                    StoreError::MessageTooLarge { .. } => DeliveryError::TooBig,
                    e if e.is_temporary() => DeliveryError::NoSpace(e.to_string()),
                    e => DeliveryError::Temporary(e.to_string()),
                })
            }
        });
    }
    let changed = store.change_counter() != before;
    drop(store);
    if changed {
        let hook = shared
            .on_change
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(h) = hook {
            h();
        }
    }
    out
}

/// Turns stored copies into final results: with peer durability, each waits for a peer.
async fn confirm(
    shared: &Shared,
    d: &Delivery,
    stored: Vec<Result<Vec<ChangeHash>, DeliveryError>>,
) -> Vec<Result<(), DeliveryError>> {
    let mut out = Vec::with_capacity(stored.len());
    let blob = BlobHash::of(&d.message);
    for (r, res) in d.recipients.iter().zip(stored) {
        let res = match (res, &shared.cfg.durability) {
            (Err(e), _) => Err(e),
            (Ok(_), Durability::Local) => Ok(()),
            (Ok(hashes), Durability::Peer { wait, timeout }) => {
                if wait(hashes, *timeout).await {
                    lock(&shared.awaiting_peer).remove(&(r.account.clone(), blob));
                    Ok(())
                } else {
                    Err(DeliveryError::NotReplicated)
                }
            }
        };
        match &res {
            Ok(()) => shared.delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => shared.failed.fetch_add(1, Ordering::Relaxed),
        };
        out.push(res);
    }
    out
}

async fn connection(shared: Arc<Shared>, conn: Box<dyn Conn>) -> io::Result<()> {
    let (r, mut w) = tokio::io::split(conn);
    let mut r = BufReader::new(r);
    let mut session = LmtpSession::new(shared.cfg.session.clone());
    let mut shutdown = shared.shutdown.subscribe();
    let mut out = session.greeting();
    out.push_str("\r\n");
    w.write_all(out.as_bytes()).await?;
    let mut line = Vec::new();
    loop {
        line.clear();
        // Message data may hold lines as long as the message; commands may not.
        let limit = if session.in_data() {
            shared.cfg.session.max_message_size.saturating_add(2)
        } else {
            shared.cfg.max_command_line as u64
        };
        let mut limited = (&mut r).take(limit);
        let n = tokio::select! {
            r = tokio::time::timeout(shared.cfg.idle_timeout, limited.read_until(b'\n', &mut line)) => match r {
                Ok(n) => n?,
                Err(_) => {
                    w.write_all(b"421 4.4.2 idle for too long, closing\r\n").await?;
                    return Ok(());
                }
            },
            _ = wait_shutdown(&mut shutdown), if !session.in_data() => {
                w.write_all(b"421 4.3.2 shutting down, try again later\r\n").await?;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') {
            w.write_all(b"500 5.5.2 line too long, closing\r\n").await?;
            return Ok(());
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let resolve = shared.resolve.clone();
        let mut events = session.line(&line, |a| resolve(a));
        let mut reply = String::new();
        let mut close = false;
        while let Some(ev) = (!events.is_empty()).then(|| events.remove(0)) {
            match ev {
                Event::Reply(s) => {
                    reply.push_str(&s);
                    reply.push_str("\r\n");
                }
                Event::Close => close = true,
                Event::Deliver(d) => {
                    let sh = shared.clone();
                    // Durable appends fsync: keep them off the async workers.
                    let d2 = d.clone();
                    let stored = tokio::task::spawn_blocking(move || deliver(&sh, &d2))
                        .await
                        .map_err(io::Error::other)?;
                    let results = confirm(&shared, &d, stored).await;
                    events.extend(session.delivered(results));
                }
            }
        }
        if !reply.is_empty() {
            w.write_all(reply.as_bytes()).await?;
        }
        if close {
            return Ok(());
        }
    }
}
