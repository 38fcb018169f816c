//! The toolkit pushbridge's adapters and core share for talking to peers,
//! so nobody keeps a private copy:
//!
//! - [`codec`]: a byte-level line codec for untrusted input, with a maximum
//!   length and a choice of what an over-long line does ([`OverLong`]).
//! - [`backoff`]: capped exponential backoff with jitter, the one
//!   reconnect/restart policy.
//! - [`tls`]: rustls client configs (system-independent Mozilla roots plus
//!   an optional CA file, optional client certificate) and PEM loading.
//! - [`net`]: TCP connect and TLS handshake, each under a timeout, with
//!   errors that name the peer.
//! - [`redact`]: what protocol traces show instead of secrets, device
//!   tokens and message text.
//! - [`digest`]: header-safe digests of chat data (`apns-collapse-id`).
//! - [`text`]: cutting shown text at grapheme cluster boundaries (never
//!   half a flag or an accent without its letter).
#![forbid(unsafe_code)]

pub mod backoff;
pub mod codec;
pub mod digest;
pub mod net;
pub mod redact;
pub mod text;
pub mod tls;

pub use backoff::Backoff;
pub use codec::{Frame, LineCodec, OverLong};
pub use net::{check_host_port, connect, connect_tls, server_name, AddressError, ConnectError};
pub use tls::{client_config, Identity, TlsError};
