//! `tandem`: the mail daemon and its admin CLI. See `tandem --help`.

mod config;
mod daemon;
mod demo;
mod metrics;
mod transfer;

/// The wall clock as a store timestamp (the store and the sync logic have no clock of their
/// own; the daemon and the import/export commands pass it in).
pub(crate) fn now() -> tandem_store::Timestamp {
    tandem_store::Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    )
}

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use config::{Config, DEFAULT_CONFIG, PeerEntry};
use daemon::{Overrides, Paths, PeersFile};
use tandem_imap::Users;

#[derive(Parser)]
#[command(
    name = "tandem",
    version,
    about = "A replicated mail store: IMAP, LMTP and peer-to-peer sync between boxes that all accept writes",
    after_help = "Start with `tandem demo`: two nodes on this machine, paired, with a demo user."
)]
struct Cli {
    /// Data directory.
    #[arg(
        long,
        global = true,
        env = "TANDEM_DIR",
        default_value = "/var/lib/tandem"
    )]
    dir: PathBuf,
    /// Configuration file (default: tandem.toml in the data directory, if it exists).
    #[arg(long, global = true, env = "TANDEM_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Two paired nodes on loopback with a demo user: the quickest look at Tandem.
    Demo {
        /// IMAP port of node A.
        #[arg(long, default_value_t = 1143)]
        imap_a: u16,
        /// LMTP port of node A.
        #[arg(long, default_value_t = 1124)]
        lmtp_a: u16,
        /// IMAP port of node B.
        #[arg(long, default_value_t = 2143)]
        imap_b: u16,
        /// LMTP port of node B.
        #[arg(long, default_value_t = 2124)]
        lmtp_b: u16,
        /// Where to keep the demo's data (default: a fresh folder under the temporary
        /// directory; `--dir` is ignored unless given here).
        #[arg(long = "data")]
        data: Option<PathBuf>,
    },
    /// Create a data directory: node identity, store and a commented tandem.toml.
    Init {
        /// This node's slot, 0..15, different on each node of a cluster.
        #[arg(long, default_value_t = 0)]
        slot: u8,
    },
    /// Print this node's ID (give it to the other node's `tandem peer add`).
    Id,
    /// Run the daemon (IMAP, LMTP, sync, metrics) until SIGTERM or Ctrl-C.
    Serve,
    /// Show what the running daemon is doing.
    Status,
    /// Manage users.
    User {
        #[command(subcommand)]
        cmd: UserCmd,
    },
    /// Manage peers.
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Import a maildir (Dovecot's keeps its UIDs) or an mbox into a user's mailboxes. Run it
    /// with the daemon stopped.
    Import {
        /// The user to import into.
        #[arg(long)]
        user: String,
        /// `maildir` or `mbox` (default: guessed from the path).
        #[arg(long)]
        format: Option<String>,
        /// For mbox: the mailbox to import into.
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
        /// The maildir root or mbox file.
        path: PathBuf,
    },
    /// Export a user's mailboxes to a maildir tree (with dovecot-uidlist files). Run it with
    /// the daemon stopped.
    Export {
        /// The user.
        #[arg(long)]
        user: String,
        /// The maildir root to create.
        path: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user (password from --password, or read from standard input).
    Add {
        /// User name.
        name: String,
        /// Password (visible in the process list: prefer standard input).
        #[arg(long)]
        password: Option<String>,
    },
    /// Change a user's password.
    Passwd {
        /// User name.
        name: String,
        /// Password.
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Remove a user (their mail stays in the store).
    Remove {
        /// User name.
        name: String,
    },
}

#[derive(Subcommand)]
enum PeerCmd {
    /// Trust a node and (with addresses) dial it.
    Add {
        /// Its node ID (`tandem id` on that node).
        id: String,
        /// host:port addresses of its sync listener.
        addresses: Vec<String>,
    },
    /// Stop trusting a node (a running daemon drops its connection within a second).
    Remove {
        /// Its node ID.
        id: String,
    },
    /// List trusted nodes.
    List,
    /// Nodes that tried to connect and were refused.
    Pending,
    /// Trust a pending node.
    Accept {
        /// Its node ID.
        id: String,
        /// Addresses to dial it at (optional: it can keep dialing us).
        addresses: Vec<String>,
    },
}

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("tandem: {msg}");
    ExitCode::FAILURE
}

fn load_config(cli: &Cli) -> Result<Config, String> {
    let paths = Paths::new(&cli.dir);
    match &cli.config {
        Some(p) => Config::load(p).map_err(|e| e.0),
        None if paths.config().exists() => Config::load(&paths.config()).map_err(|e| e.0),
        None => Ok(Config::default()),
    }
}

fn init_logging(cfg: &Config) {
    let level = match cfg.log.level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let b = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr);
    if cfg.log.format == "json" {
        b.json().init();
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn read_password(given: Option<String>) -> Result<String, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if std::io::stdin().is_terminal() {
        eprint!("Password (shown as typed): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        return Err("empty password".into());
    }
    Ok(p)
}

fn progress_printer() -> impl FnMut(usize, usize, &str) {
    let tty = std::io::stderr().is_terminal();
    let mut last = std::time::Instant::now();
    move |done, total, mailbox| {
        if tty && (done == total || last.elapsed() > Duration::from_millis(100)) {
            last = std::time::Instant::now();
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r[{}{}] {done}/{total} {mailbox:<20}",
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
            if done == total {
                eprintln!();
            }
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| {
        format!(
            "cannot reach the daemon's metrics endpoint at {addr} ({e}): is `tandem serve` running?"
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or(out))
}

fn serve(cli: &Cli) -> Result<(), String> {
    let cfg = load_config(cli)?;
    init_logging(&cfg);
    let rt = runtime()?;
    rt.block_on(async {
        let running = daemon::start(&Paths::new(&cli.dir), &cfg, &Overrides::default()).await?;
        wait_for_signal().await;
        tracing::info!("shutting down: finishing commands and deliveries in flight");
        running.stop(Duration::from_secs(20)).await;
        Ok(())
    })
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn init(cli: &Cli, slot: u8) -> Result<(), String> {
    let paths = Paths::new(&cli.dir);
    std::fs::create_dir_all(&paths.root).map_err(|e| format!("{}: {e}", paths.root.display()))?;
    if slot >= tandem_store::MAX_NODES {
        return Err(format!(
            "--slot {slot} is out of range (0..{})",
            tandem_store::MAX_NODES
        ));
    }
    let identity = tandem_net::Identity::load_or_create(&paths.identity())
        .map_err(|e| format!("{}: {e}", paths.identity().display()))?;
    drop(daemon::open_store(&paths, slot, true)?);
    if !paths.config().exists() {
        let text = DEFAULT_CONFIG.replacen("# slot = 0", &format!("slot = {slot}"), 1);
        daemon::write_atomic(&paths.config(), text.as_bytes())?;
    }
    println!("data directory {}", paths.root.display());
    println!("node ID        {}", identity.node_id());
    println!("next: `tandem user add NAME`, `tandem peer add ID ADDRESS`, `tandem serve`");
    Ok(())
}

fn users_path(cli: &Cli) -> Result<PathBuf, String> {
    let paths = Paths::new(&cli.dir);
    if !paths.root.is_dir() {
        return Err(format!(
            "data directory {} does not exist: run `tandem init --dir {}` first",
            paths.root.display(),
            paths.root.display()
        ));
    }
    Ok(paths.users())
}

fn user(cli: &Cli, cmd: &UserCmd) -> Result<(), String> {
    let path = users_path(cli)?;
    let mut users = Users::load(&path).map_err(|e| e.to_string())?;
    match cmd {
        UserCmd::Add { name, password } => {
            if users.contains(name) {
                return Err(format!("user {name} exists (use `tandem user passwd`)"));
            }
            let p = read_password(password.clone())?;
            users.set_password(name, &p).map_err(|e| e.to_string())?;
            users.save(&path).map_err(|e| e.to_string())?;
            println!("added {name}");
        }
        UserCmd::Passwd { name, password } => {
            if !users.contains(name) {
                return Err(format!("no such user {name}"));
            }
            let p = read_password(password.clone())?;
            users.set_password(name, &p).map_err(|e| e.to_string())?;
            users.save(&path).map_err(|e| e.to_string())?;
            println!("password of {name} changed");
        }
        UserCmd::List => {
            for n in users.names() {
                println!("{n}");
            }
        }
        UserCmd::Remove { name } => {
            users.remove(name).map_err(|e| e.to_string())?;
            users.save(&path).map_err(|e| e.to_string())?;
            println!("removed {name} (their mail stays in the store)");
        }
    }
    Ok(())
}

fn peer(cli: &Cli, cmd: &PeerCmd) -> Result<(), String> {
    let paths = Paths::new(&cli.dir);
    if !paths.root.is_dir() {
        return Err(format!(
            "data directory {} does not exist",
            paths.root.display()
        ));
    }
    let mut file = PeersFile::load(&paths.peers())?;
    match cmd {
        PeerCmd::Add { id, addresses } | PeerCmd::Accept { id, addresses } => {
            let e = PeerEntry {
                id: id.trim().to_owned(),
                addresses: addresses.clone(),
            };
            e.check("peer").map_err(|e| e.0)?;
            let norm: tandem_net::NodeId = e.id.parse().map_err(|e| format!("{e}"))?;
            let e = PeerEntry {
                id: norm.to_string(),
                ..e
            };
            file.peers.retain(|p| p.id != e.id);
            file.peers.push(e.clone());
            file.save(&paths.peers())?;
            println!("trusting {} {}", e.id, e.addresses.join(", "));
        }
        PeerCmd::Remove { id } => {
            let before = file.peers.len();
            file.peers.retain(|p| p.id != id.trim());
            if file.peers.len() == before {
                return Err(format!("{id} is not in {}", paths.peers().display()));
            }
            file.save(&paths.peers())?;
            println!("removed {id}; a running daemon disconnects it within a second");
        }
        PeerCmd::List => {
            let cfg = load_config(cli)?;
            for p in cfg.sync.peers.iter().chain(file.peers.iter()) {
                println!("{}  {}", p.id, p.addresses.join(", "));
            }
        }
        PeerCmd::Pending => match std::fs::read_to_string(paths.pending()) {
            Ok(t) if !t.trim().is_empty() => print!("{t}"),
            _ => println!("no pending nodes"),
        },
    }
    Ok(())
}

fn import(
    cli: &Cli,
    user: &str,
    format: Option<&str>,
    mailbox: &str,
    path: &Path,
) -> Result<(), String> {
    let cfg = load_config(cli)?;
    let paths = Paths::new(&cli.dir);
    if !paths.root.is_dir() {
        return Err(format!(
            "data directory {} does not exist: run `tandem init` first",
            paths.root.display()
        ));
    }
    let format = match format {
        Some(f) => f.to_owned(),
        None if path.is_dir() => "maildir".into(),
        None => "mbox".into(),
    };
    let mut store = daemon::open_store(&paths, cfg.slot, true)?;
    let mut progress = progress_printer();
    let report = match format.as_str() {
        "maildir" => transfer::import_maildir(
            &mut store,
            user,
            path,
            cfg.lmtp.max_message_size,
            &mut progress,
        )?,
        "mbox" => transfer::import_mbox(
            &mut store,
            user,
            path,
            mailbox,
            cfg.lmtp.max_message_size,
            &mut progress,
        )?,
        other => return Err(format!("--format {other}: use maildir or mbox")),
    };
    println!(
        "imported {} messages into {} mailboxes of {user} ({} kept their UIDs and UIDVALIDITY)",
        report.messages, report.mailboxes, report.kept_uids
    );
    for s in &report.skipped {
        println!("skipped {s}");
    }
    if !Users::load(&paths.users())
        .map(|u| u.contains(user))
        .unwrap_or(false)
    {
        println!("note: {user} cannot log in yet: `tandem user add {user}`");
    }
    Ok(())
}

fn export(cli: &Cli, user: &str, path: &Path) -> Result<(), String> {
    let cfg = load_config(cli)?;
    let paths = Paths::new(&cli.dir);
    let store = daemon::open_store(&paths, cfg.slot, true)?;
    let mut progress = progress_printer();
    let n = transfer::export_maildir(&store, user, path, &mut progress)?;
    println!("exported {n} messages of {user} to {}", path.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Demo {
            imap_a,
            lmtp_a,
            imap_b,
            lmtp_b,
            data,
        } => demo::run(
            demo::Ports {
                imap_a: *imap_a,
                lmtp_a: *lmtp_a,
                imap_b: *imap_b,
                lmtp_b: *lmtp_b,
            },
            data.clone(),
        ),
        Cmd::Init { slot } => init(&cli, *slot),
        Cmd::Id => {
            let p = Paths::new(&cli.dir).identity();
            if p.join("node-cert.der").exists() {
                tandem_net::Identity::load_or_create(&p)
                    .map(|i| println!("{}", i.node_id()))
                    .map_err(|e| e.to_string())
            } else {
                Err(format!(
                    "no node identity in {}: run `tandem init --dir {}` first",
                    cli.dir.display(),
                    cli.dir.display()
                ))
            }
        }
        Cmd::Serve => serve(&cli),
        Cmd::Status => load_config(&cli).and_then(|cfg| {
            if cfg.metrics.listen.is_empty() {
                return Err(
                    "the metrics endpoint is off (metrics.listen = \"\"): no status to read".into(),
                );
            }
            let a = cfg.metrics.listen.replace("0.0.0.0", "127.0.0.1");
            http_get(&a, "/status").map(|s| print!("{s}"))
        }),
        Cmd::User { cmd } => user(&cli, cmd),
        Cmd::Peer { cmd } => peer(&cli, cmd),
        Cmd::Import {
            user,
            format,
            mailbox,
            path,
        } => import(&cli, user, format.as_deref(), mailbox, path),
        Cmd::Export { user, path } => export(&cli, user, path),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}
