//! # tandem-imap
//!
//! An IMAP4rev1 server (RFC 3501) over a [`tandem_store::Store`], with IDLE, UIDPLUS, MOVE,
//! CONDSTORE, QRESYNC, ENABLE, LITERAL+, NAMESPACE, ID, UNSELECT, SASL-IR, SPECIAL-USE and
//! CHILDREN. Commands are decoded by [imap-codec](https://docs.rs/imap-codec) and the protocol
//! flows (literals, AUTHENTICATE, IDLE) run through [imap-next](https://docs.rs/imap-next)'s
//! sans-IO server.
//!
//! - [`Session`] is one session as a state machine: a decoded command and the store in,
//!   responses out; no sockets, no clock.
//! - [`Imap`] is the tokio driver: listeners, TLS (implicit and STARTTLS, rustls), argon2
//!   password checks off the executor, IDLE wake-ups, and limits.
//!
//! What clients see of replication is specified in `spec/imap.md` of the Tandem repository.

mod convert;
mod message;
mod search;
mod server;
mod session;
pub mod tls;
mod users;

pub use server::{ChangeHook, Imap, ImapConfig, Listener, Plaintext};
pub use session::{Action, ConnInfo, Session};
pub use users::{Users, UsersError, valid_user_name};
