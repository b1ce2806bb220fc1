//! The tokio listener: reads lines, runs an [`LmtpSession`], and stores each delivered message
//! in every recipient's INBOX with a durable append before answering 250.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_store::{Error as StoreError, Store, Timestamp};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::session::{Delivery, DeliveryError, Event, LmtpSession, SessionConfig};

/// Maps a recipient address to the account it delivers to; `None` for an unknown recipient.
pub type Resolver = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Called after a delivery changed the store (a sync node pushes it to peers).
pub type ChangeHook = Arc<dyn Fn() + Send + Sync>;

/// Listener settings.
#[derive(Debug, Clone)]
pub struct LmtpConfig {
    /// Session settings (host name, size limit, recipients).
    pub session: SessionConfig,
    /// Longest command line.
    pub max_command_line: usize,
    /// A connection idle this long is closed.
    pub idle_timeout: Duration,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            session: SessionConfig::default(),
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
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        let mut shutdown = self.shared.shutdown.subscribe();
        loop {
            let (tcp, peer) = tokio::select! {
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
            let _ = tcp.set_nodelay(true);
            let shared = self.shared.clone();
            shared.connections.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let r = connection(shared.clone(), tcp).await;
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "LMTP connection ended");
                }
            });
        }
    }
}

/// Stores one delivery; one result per recipient.
fn deliver(shared: &Shared, d: &Delivery) -> Vec<Result<(), DeliveryError>> {
    let now = now();
    let mut store = lock(&shared.store);
    let before = store.change_counter();
    let mut out = Vec::with_capacity(d.recipients.len());
    for r in &d.recipients {
        let res = store
            .create_account(&r.account, now)
            .and_then(|()| store.mailbox_id(&r.account, "INBOX"))
            .and_then(|inbox| {
                store.append(&r.account, &inbox, &d.message, &[], now.as_secs(), now)
            });
        out.push(match res {
            Ok(a) => {
                shared.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::info!(to = %r.address, account = %r.account, uid = a.uid, size = d.message.len(), "delivered");
                Ok(())
            }
            Err(e) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
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

async fn connection(shared: Arc<Shared>, tcp: TcpStream) -> io::Result<()> {
    let (r, mut w) = tcp.into_split();
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
                    let results = tokio::task::spawn_blocking(move || deliver(&sh, &d))
                        .await
                        .map_err(io::Error::other)?;
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
