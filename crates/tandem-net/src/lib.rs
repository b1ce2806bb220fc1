//! # tandem-net
//!
//! The QUIC transport of Tandem sync, in the manner of syncthing: every node has a self-signed
//! certificate (created on first start), its node ID is the SHA-256 of that certificate, and
//! connections are QUIC with mutual TLS 1.3 where each side accepts only the node IDs it was
//! given (handshake signatures still verified). A node that is not configured is refused during
//! the handshake and listed as [`Pending`] until an admin accepts it.
//!
//! [`Node`] drives one [`tandem_sync::Session`] per connection: it dials configured peers with
//! capped exponential backoff and jitter, keeps one connection per peer (QUIC keep-alive, 10 s
//! idle timeout), pushes local writes at once ([`Node::notify_local_change`]) and relays what
//! one peer sent to the others, so a mesh converges even when two nodes cannot see each other.
//!
//! What it does not do: NAT traversal, discovery, relays; peers are configured by address.

use std::path::{Path, PathBuf};

mod identity;
mod node;
pub mod tls;

pub use identity::{Identity, NodeId};
pub use node::{Node, NodeConfig, PeerConfig, Pending};

/// Errors of the transport layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// TLS or certificate setup failed.
    #[error("tls: {0}")]
    Tls(String),
    /// A node ID did not parse.
    #[error("invalid node ID {0}")]
    BadNodeId(String),
}

impl NetError {
    pub(crate) fn io(what: impl AsRef<Path>, source: std::io::Error) -> NetError {
        NetError::Io {
            what: PathBuf::from(what.as_ref()).display().to_string(),
            source,
        }
    }
}
