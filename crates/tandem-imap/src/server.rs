//! The tokio driver: accepts connections, runs imap-next's sans-IO protocol flow and a
//! [`Session`] per connection, checks passwords off the executor, waits in IDLE for store
//! changes, and enforces the limits (connections per IP and per user, login failures, timeouts).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use imap_codec::imap_types::{
    auth::{AuthMechanism, AuthenticateData},
    core::Tag,
    response::{Code, CommandContinuationRequest, Greeting, Response, Status, StatusKind},
};
use imap_next::server::{Error as ServerError, Event, Options, Server};
use imap_next::{Interrupt, Io, State};
use tandem_store::{Store, Timestamp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::session::{Action, ConnInfo, Session, bye, status};
use crate::users::Users;

/// When plaintext (unencrypted) LOGIN and AUTHENTICATE are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plaintext {
    /// Never: clients must use TLS (or STARTTLS).
    Never,
    /// Only from loopback addresses (the default: local tools and tests work, the network
    /// needs TLS).
    LoopbackOnly,
    /// Always (for a trusted network; the admin must say so).
    Always,
}

/// IMAP server settings.
#[derive(Debug, Clone)]
pub struct ImapConfig {
    /// When plaintext logins are allowed.
    pub plaintext: Plaintext,
    /// TLS settings: enables STARTTLS on plain listeners and is required for implicit-TLS ones.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Connections in total.
    pub max_connections: usize,
    /// Connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Logged-in connections of one user.
    pub max_connections_per_user: usize,
    /// The largest literal (and so the largest APPEND) accepted.
    pub max_literal: u32,
    /// Pause after a failed login (doubled for each further failure on the connection).
    pub login_failure_delay: Duration,
    /// Failed logins before the connection is closed.
    pub max_login_failures: u32,
    /// Unauthenticated connections are closed after this long without a command.
    pub login_timeout: Duration,
    /// Authenticated connections are closed after this long without a command (RFC 3501: at
    /// least 30 minutes).
    pub autologout: Duration,
    /// During IDLE, an `* OK` is sent this often so NAT boxes keep the connection.
    pub idle_keepalive: Duration,
    /// Malformed commands in a row before the connection is closed.
    pub max_bad_commands: u32,
    /// Longest line outside literals (imap-next bounds a whole command, literals included, by
    /// `max_literal` + 64 KiB; this keeps a literal-free line from using that much).
    pub max_line_length: usize,
}

impl Default for ImapConfig {
    fn default() -> Self {
        ImapConfig {
            plaintext: Plaintext::LoopbackOnly,
            tls: None,
            max_connections: 1000,
            max_connections_per_ip: 50,
            max_connections_per_user: 20,
            max_literal: 64 << 20,
            login_failure_delay: Duration::from_secs(2),
            max_login_failures: 3,
            login_timeout: Duration::from_secs(60),
            autologout: Duration::from_secs(30 * 60),
            idle_keepalive: Duration::from_secs(120),
            max_bad_commands: 10,
            max_line_length: 64 << 10,
        }
    }
}

/// How a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Plain IMAP (port 143), with STARTTLS if TLS is configured.
    Plain,
    /// Implicit TLS (port 993).
    ImplicitTls,
}

/// Called after an IMAP command changed the store (a sync node pushes the change to peers).
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    store: Arc<Mutex<Store>>,
    on_change: RwLock<Option<ChangeHook>>,
    users: RwLock<Arc<Users>>,
    cfg: ImapConfig,
    changes: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    total: AtomicUsize,
    /// Commands answered NO because of a store failure (SERVERBUG or UNAVAILABLE).
    errors: std::sync::atomic::AtomicU64,
    /// Password checks in flight: argon2 takes ~19 MiB and tens of milliseconds per check, so a
    /// burst of logins is queued rather than run all at once (memory, and CPU for everyone
    /// else).
    hashing: tokio::sync::Semaphore,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_user: Mutex<HashMap<String, usize>>,
}

/// An IMAP server over a shared store. Cheap to clone.
#[derive(Clone)]
pub struct Imap {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Imap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("connections", &self.shared.total.load(Ordering::Relaxed))
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now() -> Timestamp {
    Timestamp(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

/// Releases a per-key connection count when dropped.
struct Slot<'a, K: std::hash::Hash + Eq + Clone> {
    map: &'a Mutex<HashMap<K, usize>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone> Drop for Slot<'_, K> {
    fn drop(&mut self) {
        let mut m = lock(self.map);
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

fn take_slot<'a, K: std::hash::Hash + Eq + Clone>(
    map: &'a Mutex<HashMap<K, usize>>,
    key: K,
    max: usize,
) -> Option<Slot<'a, K>> {
    let mut m = lock(map);
    let n = m.entry(key.clone()).or_insert(0);
    if *n >= max {
        return None;
    }
    *n += 1;
    Some(Slot { map, key })
}

struct TotalGuard<'a>(&'a AtomicUsize);

impl Drop for TotalGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Imap {
    /// A server over `store` for `users`.
    pub fn new(store: Arc<Mutex<Store>>, users: Users, cfg: ImapConfig) -> Imap {
        let (changes, _) = watch::channel(0);
        let (shutdown, _) = watch::channel(false);
        Imap {
            shared: Arc::new(Shared {
                store,
                on_change: RwLock::new(None),
                users: RwLock::new(Arc::new(users)),
                cfg,
                changes,
                shutdown,
                total: AtomicUsize::new(0),
                errors: std::sync::atomic::AtomicU64::new(0),
                hashing: tokio::sync::Semaphore::new(
                    std::thread::available_parallelism().map_or(2, |n| n.get()),
                ),
                per_ip: Mutex::new(HashMap::new()),
                per_user: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Tells sessions waiting in IDLE that the store changed outside IMAP (a sync merge, an
    /// LMTP delivery). IMAP's own writes notify by themselves.
    pub fn notify_changed(&self) {
        self.shared.changes.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Sets what to call after an IMAP command changed the store: typically
    /// `tandem_net::Node::notify_local_change`, so peers get the change at once.
    pub fn set_on_change(&self, hook: ChangeHook) {
        *self
            .shared
            .on_change
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Some(hook);
    }

    /// Replaces the users (after `tandem user add`, say).
    pub fn set_users(&self, users: Users) {
        *self.shared.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(users);
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.shared.total.load(Ordering::Relaxed)
    }

    /// Commands answered `NO [SERVERBUG]` or `NO [UNAVAILABLE]` (a store failure: disk full,
    /// read-only, damage) since start.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// Stops accepting, and asks every connection to say BYE and close once its command in
    /// flight is done.
    pub fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Accepts connections on `listener` until [`Imap::shutdown`].
    pub async fn serve(&self, listener: TcpListener, kind: Listener) -> io::Result<()> {
        if kind == Listener::ImplicitTls && self.shared.cfg.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an implicit-TLS listener needs a certificate and key",
            ));
        }
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = wait_shutdown(&mut shutdown) => return Ok(()),
            };
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            tokio::spawn(async move {
                connection(shared, tcp, peer, kind).await;
            });
        }
    }
}

async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is not Send: drop it here.
    let _ = rx.wait_for(|s| *s).await.map(|_| ());
}

/// A connection, plain or TLS.
enum Transport {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Between taking the plain stream for STARTTLS and putting the TLS one in.
    Closed,
}

impl Transport {
    /// Asks the kernel to acknowledge the next segments at once. Clients such as Python's
    /// imaplib send a literal and its closing CRLF in two writes; with Nagle on their side and
    /// delayed ACKs on ours, the CRLF would wait 40 ms for our ACK. Linux forgets the setting
    /// after it is used, so it is renewed after every read.
    fn quickack(&self) {
        #[cfg(target_os = "linux")]
        {
            let tcp = match self {
                Transport::Plain(t) => Some(t),
                Transport::Tls(t) => Some(t.get_ref().0),
                Transport::Closed => None,
            };
            if let Some(t) = tcp {
                let _ = t.set_quickack(true);
            }
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(t) => Pin::new(t).poll_flush(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
            Transport::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
            Transport::Closed => Poll::Ready(Ok(())),
        }
    }
}

fn options(cfg: &ImapConfig) -> Options {
    let mut o = Options::default();
    o.crlf_relaxed = true;
    o.max_literal_size = cfg.max_literal;
    o.max_command_size = cfg.max_literal.saturating_add(64 << 10);
    o
}

/// A protocol state whose greeting counts as sent: after STARTTLS, the flow restarts on the
/// encrypted stream without a greeting, and without any plaintext the client sent after the
/// STARTTLS command (which an attacker could have injected).
fn fresh_server(cfg: &ImapConfig) -> Server {
    let greeting = Greeting::ok(None, "-").unwrap_or_else(|_| unreachable_greeting());
    let mut s = Server::new(options(cfg), greeting);
    for _ in 0..4 {
        match s.next() {
            Err(Interrupt::Io(Io::Output(_))) => continue,
            _ => break,
        }
    }
    s
}

fn unreachable_greeting() -> Greeting<'static> {
    Greeting {
        kind: imap_codec::imap_types::response::GreetingKind::Ok,
        code: None,
        text: imap_codec::imap_types::core::Text::unvalidated("ready"),
    }
}

fn enqueue(server: &mut Server, out: Vec<Response<'static>>) {
    for r in out {
        match r {
            Response::Data(d) => {
                server.enqueue_data(d);
            }
            Response::Status(s) => {
                server.enqueue_status(s);
            }
            Response::CommandContinuationRequest(c) => {
                server.enqueue_continuation_request(c);
            }
        }
    }
}

/// The tag of a command that could not be decoded, if the bytes start with one.
fn tag_of(bytes: &[u8]) -> Option<Tag<'static>> {
    let end = bytes.iter().position(|&c| c == b' ')?;
    Tag::try_from(String::from_utf8(bytes[..end].to_vec()).ok()?).ok()
}

/// Tracks the input's line lengths outside literals.
#[derive(Debug, Default)]
struct LineGuard {
    line: usize,
    literal: u64,
    tail: Vec<u8>,
}

/// The length of the literal a line announces at its end (`{12}`, `{12+}`, `~{12}`).
fn announced_literal(tail: &[u8]) -> u64 {
    let t = tail.strip_suffix(b"\r").unwrap_or(tail);
    let Some(inner) = t.strip_suffix(b"}") else {
        return 0;
    };
    let Some(open) = inner.iter().rposition(|&c| c == b'{') else {
        return 0;
    };
    let digits = &inner[open + 1..];
    let digits = digits.strip_suffix(b"+").unwrap_or(digits);
    std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

impl LineGuard {
    /// Accounts for `bytes`; `false` once a line outside a literal is longer than `max`.
    fn feed(&mut self, bytes: &[u8], max: usize) -> bool {
        let mut i = 0;
        while i < bytes.len() {
            if self.literal > 0 {
                let n = usize::try_from(self.literal)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len() - i);
                self.literal -= n as u64;
                i += n;
                continue;
            }
            let b = bytes[i];
            i += 1;
            if b == b'\n' {
                self.literal = announced_literal(&self.tail);
                self.line = 0;
                self.tail.clear();
            } else {
                self.line += 1;
                if self.line > max {
                    return false;
                }
                if self.tail.len() >= 32 {
                    self.tail.remove(0);
                }
                self.tail.push(b);
            }
        }
        true
    }
}

struct Conn {
    shared: Arc<Shared>,
    transport: Transport,
    server: Server,
    session: Session,
    out: Vec<u8>,
    failures: u32,
    bads: u32,
    idle: Option<Tag<'static>>,
    auth_tag: Option<Tag<'static>>,
    fetching: bool,
    deferred: VecDeque<Event>,
    closing: bool,
    starttls: bool,
    user_slot: Option<String>,
    peer: SocketAddr,
    lines: LineGuard,
}

async fn connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, kind: Listener) {
    let total = shared.total.fetch_add(1, Ordering::Relaxed) + 1;
    let _total = TotalGuard(&shared.total);
    async fn refuse(mut tcp: TcpStream, msg: &str) {
        let _ = tcp.write_all(format!("* BYE {msg}\r\n").as_bytes()).await;
    }
    if total > shared.cfg.max_connections {
        tracing::warn!(%peer, "refused: too many connections");
        return refuse(tcp, "too many connections").await;
    }
    let Some(_ip_slot) = take_slot(&shared.per_ip, peer.ip(), shared.cfg.max_connections_per_ip)
    else {
        tracing::warn!(%peer, "refused: too many connections from this address");
        return refuse(tcp, "too many connections from your address").await;
    };
    let transport = match kind {
        Listener::Plain => Transport::Plain(tcp),
        Listener::ImplicitTls => {
            let Some(tls) = shared.cfg.tls.clone() else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(s)) => Transport::Tls(Box::new(s)),
                Ok(Err(e)) => {
                    tracing::info!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::info!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    let plaintext_ok = match shared.cfg.plaintext {
        Plaintext::Never => false,
        Plaintext::LoopbackOnly => peer.ip().is_loopback(),
        Plaintext::Always => true,
    };
    let session = Session::new(ConnInfo {
        secure: kind == Listener::ImplicitTls,
        starttls: kind == Listener::Plain && shared.cfg.tls.is_some(),
        plaintext_ok,
    });
    let greeting = Greeting::ok(
        Some(Code::Capability(session.capabilities())),
        "Tandem IMAP ready",
    )
    .unwrap_or_else(|_| unreachable_greeting());
    let server = Server::new(options(&shared.cfg), greeting);
    let mut conn = Conn {
        shared: shared.clone(),
        transport,
        server,
        session,
        out: Vec::new(),
        failures: 0,
        bads: 0,
        idle: None,
        auth_tag: None,
        fetching: false,
        deferred: VecDeque::new(),
        closing: false,
        starttls: false,
        user_slot: None,
        peer,
        lines: LineGuard::default(),
    };
    tracing::debug!(%peer, "connected");
    if let Err(e) = conn.run().await {
        tracing::debug!(%peer, error = %e, "connection ended");
    }
    if let Some(u) = conn.user_slot.take() {
        drop(Slot {
            map: &shared.per_user,
            key: u,
        });
    }
}

impl Conn {
    async fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.transport.write_all(&self.out).await?;
            self.out.clear();
        }
        self.transport.flush().await
    }

    /// Runs `f` on the store and wakes IDLE sessions if it changed anything.
    fn with_store<R>(&mut self, f: impl FnOnce(&mut Session, &mut Store) -> R) -> R {
        let shared = self.shared.clone();
        let mut store = lock(&shared.store);
        let before = store.change_counter();
        let r = f(&mut self.session, &mut store);
        let changed = store.change_counter() != before;
        drop(store);
        if changed {
            shared.changes.send_modify(|v| *v = v.wrapping_add(1));
            let hook = shared
                .on_change
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(h) = hook {
                h();
            }
        }
        r
    }

    async fn run(&mut self) -> io::Result<()> {
        let mut changes = self.shared.changes.subscribe();
        changes.mark_unchanged();
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.server.next() {
                Ok(event) => {
                    if self.fetching {
                        if !matches!(
                            event,
                            Event::GreetingSent { .. } | Event::ResponseSent { .. }
                        ) {
                            self.deferred.push_back(event);
                        }
                        continue;
                    }
                    self.event(event).await?;
                }
                Err(Interrupt::Io(Io::Output(bytes))) => {
                    self.out.extend_from_slice(&bytes);
                    if self.out.len() >= 256 << 10 {
                        self.write_out().await?;
                    }
                }
                Err(Interrupt::Io(Io::NeedMoreInput)) => {
                    if self.fetching {
                        self.write_out().await?;
                        let mut out = Vec::new();
                        let action = self.with_store(|s, st| s.resume(st, now(), &mut out));
                        self.fetching = matches!(action, Action::More);
                        enqueue(&mut self.server, out);
                        continue;
                    }
                    if let Some(ev) = self.deferred.pop_front() {
                        self.event(ev).await?;
                        continue;
                    }
                    self.write_out().await?;
                    if self.closing {
                        let _ = self.transport.shutdown().await;
                        return Ok(());
                    }
                    if self.starttls {
                        self.starttls = false;
                        self.upgrade().await?;
                        continue;
                    }
                    let timeout = if self.idle.is_some() {
                        self.shared.cfg.idle_keepalive
                    } else if self.session.account().is_some() {
                        self.shared.cfg.autologout
                    } else {
                        self.shared.cfg.login_timeout
                    };
                    tokio::select! {
                        r = self.transport.read(&mut buf) => {
                            let n = r?;
                            if n == 0 {
                                return Ok(());
                            }
                            self.transport.quickack();
                            if !self.lines.feed(&buf[..n], self.shared.cfg.max_line_length) {
                                tracing::info!(peer = %self.peer, "line too long");
                                self.enqueue_one(status(
                                    None,
                                    StatusKind::Bad,
                                    None,
                                    format!("line too long (limit {} bytes outside literals)", self.shared.cfg.max_line_length),
                                ));
                                self.server.enqueue_status(bye("line too long"));
                                self.closing = true;
                                continue;
                            }
                            self.server.enqueue_input(&buf[..n]);
                        }
                        r = changes.changed(), if self.idle.is_some() => {
                            if r.is_err() {
                                return Ok(());
                            }
                            let mut out = Vec::new();
                            self.with_store(|s, st| s.updates(st, true, &mut out));
                            enqueue(&mut self.server, out);
                        }
                        _ = tokio::time::sleep(timeout) => {
                            if self.idle.is_some() {
                                self.server.enqueue_status(
                                    Status::ok(None, None, "still here").unwrap_or_else(|_| bye("bye")),
                                );
                            } else {
                                self.server.enqueue_status(bye("autologout: idle for too long"));
                                self.closing = true;
                            }
                        }
                        _ = wait_shutdown(&mut shutdown) => {
                            self.server.enqueue_status(bye("server shutting down"));
                            self.closing = true;
                        }
                    }
                }
                Err(Interrupt::Error(e)) => self.protocol_error(e),
            }
        }
    }

    fn protocol_error(&mut self, e: ServerError) {
        self.bads += 1;
        let (discarded, msg) = match &e {
            ServerError::MalformedMessage { discarded_bytes } => {
                (Some(discarded_bytes), "malformed command")
            }
            ServerError::ExpectedCrlfGotLf { discarded_bytes } => {
                (Some(discarded_bytes), "lines must end in CRLF")
            }
            ServerError::CommandTooLong { discarded_bytes } => {
                (Some(discarded_bytes), "command too long")
            }
            // imap-next has already answered a synchronising literal that is too long.
            ServerError::LiteralTooLong { .. } => (None, ""),
        };
        if let Some(d) = discarded {
            let bytes = d.declassify();
            tracing::debug!(peer = %self.peer, len = bytes.len(), "{msg}");
            let tag = tag_of(bytes);
            let detail = match &tag {
                Some(_) => format!("{msg}: command not understood"),
                None => format!("{msg}: no tag"),
            };
            self.enqueue_one(status(tag.as_ref(), StatusKind::Bad, None, detail));
        }
        if self.bads >= self.shared.cfg.max_bad_commands {
            self.server
                .enqueue_status(bye("too many malformed commands"));
            self.closing = true;
        }
    }

    fn enqueue_one(&mut self, r: Response<'static>) {
        enqueue(&mut self.server, vec![r]);
    }

    async fn upgrade(&mut self) -> io::Result<()> {
        let Some(tls) = self.shared.cfg.tls.clone() else {
            return Err(io::Error::other("no TLS configuration"));
        };
        let Transport::Plain(tcp) = std::mem::replace(&mut self.transport, Transport::Closed)
        else {
            return Err(io::Error::other(
                "STARTTLS on a connection that is not plain",
            ));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
        self.transport = Transport::Tls(Box::new(tls));
        self.server = fresh_server(&self.shared.cfg);
        self.lines = LineGuard::default();
        self.session.set_secure();
        Ok(())
    }

    async fn event(&mut self, event: Event) -> io::Result<()> {
        match event {
            Event::GreetingSent { .. } | Event::ResponseSent { .. } => {}
            Event::CommandReceived { command } => {
                self.bads = 0;
                let mut out = Vec::new();
                let action = self.with_store(|s, st| s.handle(command, st, now(), &mut out));
                let failures = out
                    .iter()
                    .filter(|r| match r {
                        Response::Status(st) => matches!(
                            st.code(),
                            Some(Code::Other(c)) if matches!(c.inner(), b"SERVERBUG" | b"UNAVAILABLE")
                        ),
                        _ => false,
                    })
                    .count();
                if failures > 0 {
                    self.shared
                        .errors
                        .fetch_add(failures as u64, Ordering::Relaxed);
                }
                enqueue(&mut self.server, out);
                match action {
                    Action::None => {}
                    Action::More => self.fetching = true,
                    Action::Logout => self.closing = true,
                    Action::StartTls => self.starttls = true,
                    Action::Login {
                        tag,
                        user,
                        password,
                    } => {
                        let r = self.login(&tag, user, password).await;
                        self.enqueue_one(r);
                        if self.closing {
                            self.server.enqueue_status(bye("too many failed logins"));
                        }
                    }
                }
            }
            Event::CommandAuthenticateReceived {
                command_authenticate,
            } => {
                let tag = command_authenticate.tag;
                if self.session.account().is_some() {
                    let _ = self.server.authenticate_finish(
                        Status::bad(Some(tag), None, "already logged in")
                            .unwrap_or_else(|_| bye("bye")),
                    );
                } else if !self.session.login_allowed() {
                    let _ = self.server.authenticate_finish(
                        Status::no(
                            Some(tag),
                            None,
                            "plaintext authentication is disabled: use TLS",
                        )
                        .unwrap_or_else(|_| bye("bye")),
                    );
                } else if command_authenticate.mechanism != AuthMechanism::Plain {
                    let _ = self.server.authenticate_finish(
                        Status::no(Some(tag), None, "unsupported mechanism: use PLAIN")
                            .unwrap_or_else(|_| bye("bye")),
                    );
                } else if let Some(ir) = command_authenticate.initial_response {
                    let r = self.plain(&tag, ir.declassify()).await;
                    self.finish_auth(r);
                } else {
                    self.auth_tag = Some(tag);
                    let _ = self
                        .server
                        .authenticate_continue(CommandContinuationRequest::base64(b"".as_slice()));
                }
            }
            Event::AuthenticateDataReceived { authenticate_data } => {
                let Some(tag) = self.auth_tag.take() else {
                    return Ok(());
                };
                match authenticate_data {
                    AuthenticateData::Continue(d) => {
                        let r = self.plain(&tag, d.declassify()).await;
                        self.finish_auth(r);
                    }
                    AuthenticateData::Cancel => {
                        let _ = self.server.authenticate_finish(
                            Status::bad(Some(tag), None, "authentication cancelled")
                                .unwrap_or_else(|_| bye("bye")),
                        );
                    }
                }
            }
            Event::IdleCommandReceived { tag } => {
                if self.session.account().is_none() {
                    let _ = self.server.idle_reject(
                        Status::bad(Some(tag), None, "log in first").unwrap_or_else(|_| bye("bye")),
                    );
                } else {
                    let _ = self.server.idle_accept(
                        CommandContinuationRequest::basic(None, "idling")
                            .unwrap_or_else(|_| CommandContinuationRequest::base64(b"".as_slice())),
                    );
                    self.idle = Some(tag);
                    let mut out = Vec::new();
                    self.with_store(|s, st| s.updates(st, true, &mut out));
                    enqueue(&mut self.server, out);
                }
            }
            Event::IdleDoneReceived => {
                if let Some(tag) = self.idle.take() {
                    let mut out = Vec::new();
                    self.with_store(|s, st| s.updates(st, true, &mut out));
                    out.push(status(Some(&tag), StatusKind::Ok, None, "IDLE terminated"));
                    enqueue(&mut self.server, out);
                }
            }
        }
        Ok(())
    }

    fn finish_auth(&mut self, r: Response<'static>) {
        if let Response::Status(s) = r
            && let Err(s) = self.server.authenticate_finish(s)
        {
            self.server.enqueue_status(s);
        }
        if self.closing {
            self.server.enqueue_status(bye("too many failed logins"));
        }
    }

    /// SASL PLAIN: `authzid NUL authcid NUL password`.
    async fn plain(&mut self, tag: &Tag<'static>, data: &[u8]) -> Response<'static> {
        let parts: Vec<&[u8]> = data.split(|&c| c == 0).collect();
        let [authz, authc, pass] = parts.as_slice() else {
            return status(Some(tag), StatusKind::Bad, None, "malformed PLAIN response");
        };
        let (Ok(authz), Ok(authc), Ok(pass)) = (
            std::str::from_utf8(authz),
            std::str::from_utf8(authc),
            std::str::from_utf8(pass),
        ) else {
            return status(
                Some(tag),
                StatusKind::Bad,
                None,
                "PLAIN response is not UTF-8",
            );
        };
        if !authz.is_empty() && authz != authc {
            return status(
                Some(tag),
                StatusKind::No,
                None,
                "logging in as another user is not supported",
            );
        }
        self.login(tag, authc.to_owned(), pass.to_owned()).await
    }

    async fn login(
        &mut self,
        tag: &Tag<'static>,
        user: String,
        password: String,
    ) -> Response<'static> {
        let users = self
            .shared
            .users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let u = user.clone();
        let ok = match self.shared.hashing.acquire().await {
            Ok(_permit) => tokio::task::spawn_blocking(move || users.verify(&u, &password))
                .await
                .unwrap_or(false),
            Err(_) => false,
        };
        if !ok {
            self.failures += 1;
            tracing::info!(peer = %self.peer, user = %user, failures = self.failures, "login failed");
            let delay = self.shared.cfg.login_failure_delay * (1u32 << self.failures.min(5)) / 2;
            tokio::time::sleep(delay).await;
            if self.failures >= self.shared.cfg.max_login_failures {
                self.closing = true;
            }
            return self.session.login_failed(tag);
        }
        match take_slot(
            &self.shared.per_user,
            user.clone(),
            self.shared.cfg.max_connections_per_user,
        ) {
            Some(slot) => std::mem::forget(slot),
            None => {
                return status(
                    Some(tag),
                    StatusKind::No,
                    Some(Code::Other(
                        imap_codec::imap_types::response::CodeOther::unvalidated(
                            b"LIMIT".as_slice(),
                        ),
                    )),
                    "too many connections for this user",
                );
            }
        }
        self.user_slot = Some(user.clone());
        tracing::info!(peer = %self.peer, user = %user, "logged in");
        let tag = tag.clone();
        self.with_store(|s, st| s.login_succeeded(&tag, &user, st, now()))
    }
}
