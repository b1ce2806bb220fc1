//! A running node: the store, the sync node, IMAP and LMTP listeners and the metrics endpoint,
//! wired together, plus the background chores (reloading users and peers, recording pending
//! nodes).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tandem_imap::{Imap, ImapConfig, Listener, Plaintext, Users};
use tandem_lmtp::{Durability, Lmtp, LmtpConfig, SessionConfig};
use tandem_net::{Identity, Node, NodeConfig, NodeId, PeerConfig};
use tandem_store::{Error as StoreError, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, PeerEntry, addr};

/// Where things live in a data directory.
#[derive(Debug, Clone)]
pub struct Paths {
    /// The data directory.
    pub root: PathBuf,
}

impl Paths {
    /// Paths under `root`.
    pub fn new(root: &Path) -> Paths {
        Paths {
            root: root.to_owned(),
        }
    }
    /// The store.
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    /// Certificate and key.
    pub fn identity(&self) -> PathBuf {
        self.root.join("identity")
    }
    /// Users and password hashes.
    pub fn users(&self) -> PathBuf {
        self.root.join("users")
    }
    /// Peers added with `tandem peer add/accept`.
    pub fn peers(&self) -> PathBuf {
        self.root.join("peers.toml")
    }
    /// Nodes that tried to connect, written by the daemon.
    pub fn pending(&self) -> PathBuf {
        self.root.join("pending.toml")
    }
    /// The default configuration file.
    pub fn config(&self) -> PathBuf {
        self.root.join("tandem.toml")
    }
}

/// The peers file: `[[peers]]` entries.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeersFile {
    /// Entries.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
}

impl PeersFile {
    /// Loads the file (missing: empty).
    pub fn load(path: &Path) -> Result<PeersFile, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => {
                let f: PeersFile =
                    toml::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?;
                for (i, p) in f.peers.iter().enumerate() {
                    p.check(&format!("peers[{i}]"))
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
                Ok(f)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PeersFile::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the file atomically.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let text = toml::to_string(self).map_err(|e| e.to_string())?;
        write_atomic(path, text.as_bytes())
    }
}

/// Writes a file through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Settings that are not in the configuration file (the demo and tests set them).
#[derive(Debug, Clone)]
pub struct Overrides {
    /// fsync every write (only the crash-free demo and tests may turn it off).
    pub durable: bool,
    /// Pause after a failed IMAP login.
    pub login_failure_delay: Duration,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            durable: true,
            login_failure_delay: Duration::from_secs(2),
        }
    }
}

/// A running node.
pub struct Running {
    /// The store.
    pub store: Arc<Mutex<Store>>,
    /// The sync node.
    pub node: Node,
    /// The IMAP server.
    pub imap: Imap,
    /// The LMTP server.
    pub lmtp: Lmtp,
    /// Where IMAP listens (plain listeners first, then TLS ones).
    pub imap_addrs: Vec<SocketAddr>,
    /// Where LMTP listens.
    pub lmtp_addrs: Vec<String>,
    /// Unix socket files of the LMTP listeners, removed on stop.
    pub lmtp_sockets: Vec<PathBuf>,
    /// Where sync listens.
    pub sync_addr: Option<SocketAddr>,
    /// Where the metrics endpoint listens.
    pub metrics_addr: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
    paths: Paths,
    started: Instant,
    disk_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("imap", &self.imap_addrs)
            .field("lmtp", &self.lmtp_addrs)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Opens the store of a data directory, with errors an admin can act on.
pub fn open_store(paths: &Paths, slot: u8, durable: bool) -> Result<Store, String> {
    Store::open(
        paths.store(),
        StoreConfig {
            slot,
            durable,
            ..StoreConfig::default()
        },
    )
    .map_err(|e| match e {
        StoreError::Locked(_) => format!(
            "{} is in use by another tandem process (stop it first)",
            paths.root.display()
        ),
        StoreError::InvalidSlot(s) => format!(
            "the store in {} belongs to another slot than {s}: set `slot` in the configuration to the one it was created with",
            paths.root.display()
        ),
        e => format!("opening the store in {}: {e}", paths.root.display()),
    })
}

/// The account a recipient address delivers to: the full address if it is a user, else its
/// local part without a `+detail`.
pub fn resolve_recipient(users: &Users, address: &str) -> Option<String> {
    if users.contains(address) {
        return Some(address.to_owned());
    }
    let local = address.split('@').next()?;
    let base = local.split('+').next()?;
    users.contains(base).then(|| base.to_owned())
}

async fn bind(key: &str, a: &str) -> Result<TcpListener, String> {
    let sa = addr(key, a).map_err(|e| e.0)?;
    TcpListener::bind(sa)
        .await
        .map_err(|e| format!("cannot listen on {a} ({key}): {e}"))
}

/// A unix socket for LMTP (Postfix's `lmtp:unix:`). A socket file left by an earlier run is
/// replaced; any other file there is an error. Mode 0666, like a loopback TCP port: any local
/// user may connect (restrict the directory to restrict it).
fn bind_unix(key: &str, path: &Path) -> Result<tokio::net::UnixListener, String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "cannot listen on unix:{} ({key}): a file that is not a socket is in the way",
                path.display()
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let l = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on unix:{} ({key}): {e}", path.display()))?;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666));
    Ok(l)
}

fn peer_config(p: &PeerEntry) -> Option<PeerConfig> {
    Some(PeerConfig {
        id: p.id.parse().ok()?,
        addrs: p
            .addresses
            .iter()
            .filter_map(|a| addr("peer", a).ok())
            .collect(),
    })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Starts everything. Must run inside a tokio runtime.
pub async fn start(paths: &Paths, cfg: &Config, ov: &Overrides) -> Result<Running, String> {
    if !paths.root.is_dir() {
        return Err(format!(
            "data directory {} does not exist: run `tandem init --dir {}` first",
            paths.root.display(),
            paths.root.display()
        ));
    }
    let store = Arc::new(Mutex::new(open_store(paths, cfg.slot, ov.durable)?));
    let identity = Identity::load_or_create(&paths.identity())
        .map_err(|e| format!("node identity in {}: {e}", paths.identity().display()))?;
    let users_file = paths.users();
    let users = Users::load(&users_file).map_err(|e| e.to_string())?;
    let shared_users = Arc::new(RwLock::new(users.clone()));

    let mut peers: Vec<PeerConfig> = cfg.sync.peers.iter().filter_map(peer_config).collect();
    let peers_file = PeersFile::load(&paths.peers())?;
    peers.extend(peers_file.peers.iter().filter_map(peer_config));
    let sync_listen = addr("sync.listen", &cfg.sync.listen).map_err(|e| e.0)?;
    let node = Node::start(
        identity,
        store.clone(),
        NodeConfig {
            listen: sync_listen,
            peers,
            backoff_max: Duration::from_secs(cfg.sync.reconnect_max_secs),
            ..NodeConfig::default()
        },
    )
    .await
    .map_err(|e| {
        format!(
            "cannot start sync on {} (sync.listen): {e}",
            cfg.sync.listen
        )
    })?;

    let tls = match (&cfg.imap.tls_cert, &cfg.imap.tls_key) {
        (Some(c), Some(k)) => {
            Some(tandem_imap::tls::server_config(c, k).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let imap = Imap::new(
        store.clone(),
        users,
        ImapConfig {
            plaintext: match cfg.imap.plaintext.as_str() {
                "never" => Plaintext::Never,
                "always" => Plaintext::Always,
                _ => Plaintext::LoopbackOnly,
            },
            tls,
            max_literal: u32::try_from(cfg.lmtp.max_message_size).unwrap_or(u32::MAX),
            login_failure_delay: ov.login_failure_delay,
            ..ImapConfig::default()
        },
    );
    let n = node.clone();
    imap.set_on_change(Arc::new(move || n.notify_local_change()));
    let resolver_users = shared_users.clone();
    let lmtp = Lmtp::new(
        store.clone(),
        Arc::new(move |a: &str| {
            let u = resolver_users.read().unwrap_or_else(|p| p.into_inner());
            resolve_recipient(&u, a)
        }),
        LmtpConfig {
            session: SessionConfig {
                hostname: cfg.hostname.clone(),
                max_message_size: cfg.lmtp.max_message_size,
                ..SessionConfig::default()
            },
            durability: if cfg.lmtp.durability == "peer" {
                let n = node.clone();
                Durability::Peer {
                    wait: Arc::new(move |hashes, timeout| {
                        let n = n.clone();
                        Box::pin(async move { n.wait_applied_by_peer(&hashes, timeout).await })
                    }),
                    timeout: Duration::from_secs(cfg.lmtp.peer_timeout_secs),
                }
            } else {
                Durability::Local
            },
            ..LmtpConfig::default()
        },
    );
    let n = node.clone();
    let i = imap.clone();
    lmtp.set_on_change(Arc::new(move || {
        n.notify_local_change();
        i.notify_changed();
    }));

    let mut tasks = Vec::new();
    // Changes merged from peers wake IMAP sessions in IDLE.
    let mut changes = node.subscribe_changes();
    let i = imap.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(0) => {}
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    i.notify_changed()
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }));

    let mut imap_addrs = Vec::new();
    for (list, kind, key) in [
        (&cfg.imap.listen, Listener::Plain, "imap.listen"),
        (
            &cfg.imap.listen_tls,
            Listener::ImplicitTls,
            "imap.listen_tls",
        ),
    ] {
        for (idx, a) in list.iter().enumerate() {
            let l = bind(&format!("{key}[{idx}]"), a).await?;
            imap_addrs.push(l.local_addr().map_err(|e| e.to_string())?);
            let i = imap.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = i.serve(l, kind).await {
                    tracing::error!(error = %e, "IMAP listener stopped");
                }
            }));
        }
    }
    let mut lmtp_addrs = Vec::new();
    let mut lmtp_sockets = Vec::new();
    for (idx, a) in cfg.lmtp.listen.iter().enumerate() {
        let key = format!("lmtp.listen[{idx}]");
        let l: tandem_lmtp::LmtpListener = match a.strip_prefix("unix:") {
            Some(path) => {
                let l = bind_unix(&key, Path::new(path))?;
                lmtp_sockets.push(PathBuf::from(path));
                l.into()
            }
            None => bind(&key, a).await?.into(),
        };
        lmtp_addrs.push(match &l {
            tandem_lmtp::LmtpListener::Tcp(t) => {
                t.local_addr().map_err(|e| e.to_string())?.to_string()
            }
            tandem_lmtp::LmtpListener::Unix(_) => a.clone(),
        });
        let s = lmtp.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = s.serve(l).await {
                tracing::error!(error = %e, "LMTP listener stopped");
            }
        }));
    }

    let mut running = Running {
        store,
        node,
        imap,
        lmtp,
        imap_addrs,
        lmtp_addrs,
        lmtp_sockets,
        sync_addr: None,
        metrics_addr: None,
        tasks,
        paths: paths.clone(),
        started: Instant::now(),
        disk_bytes: Arc::new(std::sync::atomic::AtomicU64::new(0)),
    };
    // The store's size on disk: a walk of the store directory, so in the background, once a
    // minute. Hourly, parts of body transfers abandoned for a week are deleted.
    let (db, store_dir, store2) = (
        running.disk_bytes.clone(),
        paths.store(),
        running.store.clone(),
    );
    running.tasks.push(tokio::spawn(async move {
        let mut minutes = 0u64;
        loop {
            let d = store_dir.clone();
            if let Ok(n) = tokio::task::spawn_blocking(move || crate::metrics::dir_size(&d)).await {
                db.store(n, std::sync::atomic::Ordering::Relaxed);
            }
            if minutes.is_multiple_of(60) {
                let s = store2.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let n = lock(&s).discard_stale_partial_blobs(crate::now(), 7 * 86_400_000);
                    if n > 0 {
                        tracing::info!(files = n, "deleted parts of abandoned body transfers");
                    }
                })
                .await;
            }
            minutes += 1;
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    }));
    running.sync_addr = running.node.local_addr();
    if !cfg.metrics.listen.is_empty() {
        let l = bind("metrics.listen", &cfg.metrics.listen).await?;
        running.metrics_addr = l.local_addr().ok();
        let view = running.view();
        running
            .tasks
            .push(tokio::spawn(crate::metrics::serve(l, view)));
    }

    // Chores: users and peers files edited by the CLI take effect without a restart; nodes
    // that were refused are written down for `tandem peer pending`.
    let (imap2, node2, paths2) = (running.imap.clone(), running.node.clone(), paths.clone());
    let cfg_peers = cfg.sync.peers.clone();
    let users2 = shared_users;
    running.tasks.push(tokio::spawn(async move {
        let mut users_seen = mtime(&paths2.users());
        let mut peers_seen = mtime(&paths2.peers());
        // Peers from peers.toml as last loaded; one that disappears from it is dropped (unless
        // tandem.toml names it too).
        let static_peers: std::collections::BTreeSet<String> =
            cfg_peers.iter().map(|p| p.id.clone()).collect();
        let mut file_peers: std::collections::BTreeSet<String> = PeersFile::load(&paths2.peers())
            .map(|f| f.peers.into_iter().map(|p| p.id).collect())
            .unwrap_or_default();
        let mut pending_written = String::new();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let m = mtime(&paths2.users());
            if m != users_seen {
                users_seen = m;
                match Users::load(&paths2.users()) {
                    Ok(u) => {
                        *users2.write().unwrap_or_else(|p| p.into_inner()) = u.clone();
                        imap2.set_users(u);
                        tracing::info!("users reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "users file not reloaded"),
                }
            }
            let m = mtime(&paths2.peers());
            if m != peers_seen {
                peers_seen = m;
                match PeersFile::load(&paths2.peers()) {
                    Ok(f) => {
                        for p in f.peers.iter().filter_map(peer_config) {
                            node2.add_peer(p);
                        }
                        let now: std::collections::BTreeSet<String> =
                            f.peers.iter().map(|p| p.id.clone()).collect();
                        for gone in file_peers.difference(&now) {
                            if static_peers.contains(gone) {
                                continue;
                            }
                            if let Ok(id) = gone.parse::<NodeId>()
                                && node2.remove_peer(&id)
                            {
                                tracing::info!(peer = %id, "peer removed; disconnected");
                            }
                        }
                        file_peers = now;
                        tracing::info!("peers reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "peers file not reloaded"),
                }
            }
            let pending = node2.pending();
            let text: String = pending
                .iter()
                .map(|p| {
                    format!(
                        "[[pending]]\nid = \"{}\"\naddress = \"{}\"\nattempts = {}\n\n",
                        p.id, p.addr, p.attempts
                    )
                })
                .collect();
            if text != pending_written {
                if let Err(e) = write_atomic(&paths2.pending(), text.as_bytes()) {
                    tracing::warn!(error = %e, "cannot record pending nodes");
                }
                pending_written = text;
            }
        }
    }));
    tracing::info!(
        node = %running.node.node_id(),
        imap = ?running.imap_addrs,
        lmtp = ?running.lmtp_addrs,
        sync = ?running.sync_addr,
        "tandem is running"
    );
    Ok(running)
}

/// What the metrics endpoint reads.
#[derive(Clone)]
pub struct View {
    /// The store.
    pub store: Arc<Mutex<Store>>,
    /// The node.
    pub node: Node,
    /// IMAP.
    pub imap: Imap,
    /// LMTP.
    pub lmtp: Lmtp,
    /// Peers configured at start or added since (from the peers file).
    pub paths: Paths,
    /// When the daemon started.
    pub started: Instant,
    /// Bytes the store uses on disk, measured in the background.
    pub disk_bytes: Arc<std::sync::atomic::AtomicU64>,
}

impl Running {
    /// A handle for reporting.
    pub fn view(&self) -> View {
        View {
            store: self.store.clone(),
            node: self.node.clone(),
            imap: self.imap.clone(),
            lmtp: self.lmtp.clone(),
            paths: self.paths.clone(),
            started: self.started,
            disk_bytes: self.disk_bytes.clone(),
        }
    }

    /// The node's ID.
    pub fn node_id(&self) -> NodeId {
        self.node.node_id()
    }

    /// Graceful stop: no new connections; commands and deliveries in flight finish (up to
    /// `grace`); then sync stops. Every acknowledged write is already on disk.
    pub async fn stop(self, grace: Duration) {
        self.imap.shutdown();
        self.lmtp.shutdown();
        let deadline = Instant::now() + grace;
        while (self.imap.connections() > 0 || self.lmtp.connections() > 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.node.shutdown().await;
        for t in &self.tasks {
            t.abort();
        }
        for p in &self.lmtp_sockets {
            let _ = std::fs::remove_file(p);
        }
        // A last compaction is not needed: the journal is replayed on open.
        let _ = lock(&self.store).change_counter();
        tracing::info!("stopped");
    }
}
