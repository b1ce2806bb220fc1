//! # tandem-sync
//!
//! The protocol by which Tandem nodes converge: a sans-IO [`Session`] per connection that
//! exchanges document manifests, automerge changes and message bodies with one peer, applying
//! what arrives through the store's merge API (so every UID lift and MODSEQ re-stamp the store
//! owes its clients happens on the way in). The wire format is in [`frame`]; the whole protocol
//! is specified in `spec/sync-protocol.md`.
//!
//! What it does not do: sockets, TLS, node identity, reconnecting, timers. A driver (the
//! `tandem-net` QUIC layer, or the deterministic simulation in `tandem-sim`) moves frames and
//! calls [`Session::handle_timeout`] when [`Session::poll_timeout`] says so.

pub mod frame;
mod session;

pub use frame::{CloseCode, Frame, FrameError, MAX_FRAME, PROTOCOL_VERSION};
pub use session::{Closed, Session, SessionConfig, SessionStats};
