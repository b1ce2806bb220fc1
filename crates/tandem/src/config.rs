//! The configuration file (`tandem.toml`): every key optional, with the defaults documented in
//! [`DEFAULT_CONFIG`]. A bad file names the key and the problem; the daemon does not start
//! half-configured.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The commented configuration `tandem init` writes: every key with its default.
pub const DEFAULT_CONFIG: &str = r#"# Tandem configuration. Every key is optional; the values shown are the defaults.

# Name used in greetings.
# hostname = "localhost"

# This node's slot, 0..15, different on every node of a cluster (UIDs this node allocates
# satisfy (uid - 1) % 16 == slot, so two nodes never allocate the same UID).
# slot = 0

[imap]
# Plain IMAP listeners (STARTTLS is offered when tls_cert/tls_key are set).
# listen = ["0.0.0.0:143"]
# Implicit-TLS listeners (need tls_cert/tls_key).
# listen_tls = []
# tls_cert = "/etc/tandem/cert.pem"
# tls_key = "/etc/tandem/key.pem"
# When plaintext LOGIN is allowed: "never", "loopback" (local clients only) or "always".
# plaintext = "loopback"

[lmtp]
# LMTP listeners (what Postfix's lmtp: transport talks to): "host:port" for lmtp:inet:, or
# "unix:/absolute/path" for lmtp:unix: (a socket file, mode 0666, removed on shutdown).
# listen = ["127.0.0.1:24"]
# Largest message accepted, in bytes.
# max_message_size = 67108864
# When to answer 250: "local" (once on this node's disk) or "peer" (only once a peer also holds
# the message and its body, so acknowledged mail survives losing this whole box; if no peer
# confirms within peer_timeout_secs the answer is 451 and the sender retries).
# durability = "local"
# peer_timeout_secs = 30

[sync]
# QUIC (UDP) address for peer-to-peer sync.
# listen = "0.0.0.0:22000"
# Longest wait between attempts to reach a peer that is down (starts at 0.2 s, doubles): after a
# network split this bounds how long healing can take to start.
# reconnect_max_secs = 30
# Peers can also be added with `tandem peer add`, which writes peers.toml in the data directory.
# [[sync.peers]]
# id = "XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX-XXXXXXX"
# addresses = ["192.0.2.10:22000"]

[log]
# "human" or "json".
# format = "human"
# "error", "warn", "info", "debug" or "trace".
# level = "info"

[metrics]
# Prometheus text at /metrics and a human summary at /status (`tandem status` reads it).
# An empty string turns it off.
# listen = "127.0.0.1:9924"
"#;

/// A configuration problem: which key, and what is wrong.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Name in greetings.
    pub hostname: String,
    /// Node slot.
    pub slot: u8,
    /// IMAP.
    pub imap: ImapSection,
    /// LMTP.
    pub lmtp: LmtpSection,
    /// Sync.
    pub sync: SyncSection,
    /// Logging.
    pub log: LogSection,
    /// Metrics endpoint.
    pub metrics: MetricsSection,
}

/// `[imap]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSection {
    /// Plain listeners.
    pub listen: Vec<String>,
    /// Implicit-TLS listeners.
    pub listen_tls: Vec<String>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// `never`, `loopback`, `always`.
    pub plaintext: String,
}

/// `[lmtp]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpSection {
    /// Listeners.
    pub listen: Vec<String>,
    /// Largest message.
    pub max_message_size: u64,
    /// `local` or `peer`.
    pub durability: String,
    /// With `peer`: how long to wait for a peer's confirmation before answering 451.
    pub peer_timeout_secs: u64,
}

/// `[sync]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// UDP listen address.
    pub listen: String,
    /// Configured peers.
    pub peers: Vec<PeerEntry>,
    /// Longest wait between attempts to reach a peer that is down (the wait starts at 0.2 s
    /// and doubles).
    pub reconnect_max_secs: u64,
}

/// One peer.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Its node ID.
    pub id: String,
    /// Where to dial it (may be empty: only accept its connections).
    #[serde(default)]
    pub addresses: Vec<String>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `human` or `json`.
    pub format: String,
    /// Level.
    pub level: String,
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Listen address, empty for none.
    pub listen: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: "localhost".into(),
            slot: 0,
            imap: ImapSection::default(),
            lmtp: LmtpSection::default(),
            sync: SyncSection::default(),
            log: LogSection::default(),
            metrics: MetricsSection::default(),
        }
    }
}

impl Default for ImapSection {
    fn default() -> Self {
        ImapSection {
            listen: vec!["0.0.0.0:143".into()],
            listen_tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            plaintext: "loopback".into(),
        }
    }
}

impl Default for LmtpSection {
    fn default() -> Self {
        LmtpSection {
            listen: vec!["127.0.0.1:24".into()],
            max_message_size: 64 << 20,
            durability: "local".into(),
            peer_timeout_secs: 30,
        }
    }
}

impl Default for SyncSection {
    fn default() -> Self {
        SyncSection {
            listen: "0.0.0.0:22000".into(),
            peers: Vec::new(),
            reconnect_max_secs: 30,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: "127.0.0.1:9924".into(),
        }
    }
}

/// Resolves `host:port` to one address, naming the key on failure.
pub fn addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError(format!("{key}: {s:?} is not a host:port address")))
}

impl Config {
    /// Parses and checks a configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError(format!("{origin}: {e}")))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{origin}: {}", e.0)))?;
        Ok(cfg)
    }

    /// Loads `path`; a missing file is an error (the caller decides whether one is needed).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Checks values the types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.slot >= tandem_store::MAX_NODES {
            return err(format!(
                "slot: {} is out of range (0..{})",
                self.slot,
                tandem_store::MAX_NODES
            ));
        }
        for (i, l) in self.imap.listen.iter().enumerate() {
            addr(&format!("imap.listen[{i}]"), l)?;
        }
        for (i, l) in self.imap.listen_tls.iter().enumerate() {
            addr(&format!("imap.listen_tls[{i}]"), l)?;
        }
        match (&self.imap.tls_cert, &self.imap.tls_key) {
            (Some(_), None) => return err("imap.tls_key: needed with imap.tls_cert".into()),
            (None, Some(_)) => return err("imap.tls_cert: needed with imap.tls_key".into()),
            (None, None) if !self.imap.listen_tls.is_empty() => {
                return err("imap.listen_tls: needs imap.tls_cert and imap.tls_key".into());
            }
            _ => {}
        }
        if !matches!(
            self.imap.plaintext.as_str(),
            "never" | "loopback" | "always"
        ) {
            return err(format!(
                "imap.plaintext: {:?} is not one of \"never\", \"loopback\", \"always\"",
                self.imap.plaintext
            ));
        }
        for (i, l) in self.lmtp.listen.iter().enumerate() {
            if let Some(path) = l.strip_prefix("unix:") {
                if !path.starts_with('/') {
                    return err(format!(
                        "lmtp.listen[{i}]: {l:?}: a unix socket needs an absolute path (unix:/run/tandem/lmtp)"
                    ));
                }
                continue;
            }
            addr(&format!("lmtp.listen[{i}]"), l)?;
        }
        if self.sync.reconnect_max_secs == 0 || self.sync.reconnect_max_secs > 3600 {
            return err("sync.reconnect_max_secs: must be between 1 and 3600".into());
        }
        if self.lmtp.peer_timeout_secs == 0 || self.lmtp.peer_timeout_secs > 3600 {
            return err("lmtp.peer_timeout_secs: must be between 1 and 3600".into());
        }
        if self.lmtp.max_message_size < 1024 {
            return err("lmtp.max_message_size: must be at least 1024".into());
        }
        match self.lmtp.durability.as_str() {
            "local" | "peer" => {}
            other => {
                return err(format!(
                    "lmtp.durability: {other:?} is not one of \"local\", \"peer\""
                ));
            }
        }
        addr("sync.listen", &self.sync.listen)?;
        for (i, p) in self.sync.peers.iter().enumerate() {
            p.check(&format!("sync.peers[{i}]"))?;
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return err(format!(
                "log.format: {:?} is not one of \"human\", \"json\"",
                self.log.format
            ));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return err(format!(
                "log.level: {:?} is not one of error, warn, info, debug, trace",
                self.log.level
            ));
        }
        if !self.metrics.listen.is_empty() {
            addr("metrics.listen", &self.metrics.listen)?;
        }
        Ok(())
    }
}

impl PeerEntry {
    /// Checks the ID and addresses.
    pub fn check(&self, key: &str) -> Result<(), ConfigError> {
        self.id
            .parse::<tandem_net::NodeId>()
            .map_err(|e| ConfigError(format!("{key}.id: {e}")))?;
        for (j, a) in self.addresses.iter().enumerate() {
            addr(&format!("{key}.addresses[{j}]"), a)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_the_commented_file_agree() {
        let c = Config::parse(DEFAULT_CONFIG, "default").expect("the default file parses");
        assert_eq!(c.imap.listen, vec!["0.0.0.0:143".to_string()]);
        assert_eq!(c.lmtp.durability, "local");
        let empty = Config::parse("", "empty").expect("empty is fine");
        assert_eq!(empty.metrics.listen, "127.0.0.1:9924");
    }

    #[test]
    fn the_shipped_box_config_parses() {
        let text = include_str!("../../../dist/tandem-box-a.toml").replace(
            "REPLACE-WITH-THE-OUTPUT-OF-tandem-id-ON-MAIL-B",
            &tandem_net::Identity::generate()
                .expect("identity")
                .node_id()
                .to_string(),
        );
        let c = Config::parse(&text, "dist/tandem-box-a.toml").expect("parses");
        assert_eq!(c.imap.listen_tls, vec!["0.0.0.0:993".to_string()]);
        assert_eq!(c.sync.peers.len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        let e = |t: &str| Config::parse(t, "f").expect_err("should fail").0;
        assert!(
            e("imap = { lisen = [] }").contains("lisen"),
            "{}",
            e("imap = { lisen = [] }")
        );
        assert!(e("slot = 99").contains("slot"));
        assert!(e("[lmtp]\ndurability = \"sometimes\"").contains("lmtp.durability"));
        assert!(e("[lmtp]\npeer_timeout_secs = 0").contains("lmtp.peer_timeout_secs"));
        assert!(e("[sync]\nreconnect_max_secs = 0").contains("sync.reconnect_max_secs"));
        assert!(e("[lmtp]\nlisten = [\"unix:relative\"]").contains("absolute path"));
        assert!(e("[imap]\nplaintext = \"maybe\"").contains("imap.plaintext"));
        assert!(e("[imap]\nlisten = [\"nowhere\"]").contains("imap.listen[0]"));
        assert!(e("[imap]\ntls_cert = \"/x\"").contains("imap.tls_key"));
        assert!(e("[[sync.peers]]\nid = \"bad\"").contains("sync.peers[0].id"));
    }
}
