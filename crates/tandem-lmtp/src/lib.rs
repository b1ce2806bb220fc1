//! # tandem-lmtp
//!
//! LMTP (RFC 2033), the protocol Postfix's `lmtp:` transport uses to hand mail to a message
//! store, delivering into a [`tandem_store::Store`]. A message gets one reply per recipient,
//! and `250` only once it is durable in that recipient's INBOX. Unknown recipients get `550`,
//! over-size messages `552`, and a full or read-only disk `452`; any other failure is a
//! temporary `451`, so the sender keeps the message and retries.
//!
//! [`LmtpSession`] is the conversation as a sans-IO state machine; [`Lmtp`] is the tokio
//! listener.

mod server;
mod session;

pub use server::{ChangeHook, Durability, Lmtp, LmtpConfig, LmtpListener, PeerWait, Resolver};
pub use session::{Delivery, DeliveryError, Event, LmtpSession, Recipient, SessionConfig};
