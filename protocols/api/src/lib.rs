//! The adapter API of pushbridge.
//!
//! An *adapter* speaks one instant-messaging protocol and translates what it
//! sees into protocol-neutral [`Event`]s. It holds no push logic: the core
//! decides who is notified, with what payload, and delivers it to Apple.
//!
//! Layout:
//! - [`types`]: validated value types ([`UserId`], [`DeviceToken`],
//!   [`Presence`], [`Environment`]).
//! - [`event`]: the [`Event`] enum, the [`Reply`] the core answers with and
//!   the [`EventError`]s it can refuse an event with.
//! - [`push`]: [`Push`], a notification the IM server already decided on,
//!   for one explicit device ([`Event::Push`]).
//! - [`delivery`]: [`Receipts`], delivery tracking as a type: what became
//!   of the notifications an event queued, awaited with a deadline.
//! - [`context`]: the [`Context`] handed to a running adapter (event
//!   submission, shutdown signal, its own config, a small persistent
//!   key-value state) and the [`Adapter`] trait itself.
//! - [`settings`]: a user's notification settings (muted conversations,
//!   [`settings::QuietHours`]) as events carry them.
//! - [`status`]: what a running instance reports about itself (connected,
//!   inbound connections, events by kind) for metrics and readiness.
//! - [`fields`]: the log field vocabulary shared by the core and every
//!   adapter (documentation only).
#![forbid(unsafe_code)]

pub mod context;
pub mod delivery;
pub mod event;
pub mod fields;
pub mod push;
pub mod settings;
pub mod status;
pub mod types;

pub use context::{Adapter, AdapterError, ConfigError, Context, Envelope, StateError, StateStore};
pub use delivery::{Delivery, DurabilityHook, Receipts, WeakReceipts};
pub use event::{Device, Event, EventError, Message, Reply};
pub use push::{Priority, Push, PushAlert, PushBody};
pub use status::{AdapterStatus, ConnectionGuard};
pub use types::{DeviceToken, Environment, Presence, TokenError, UserId, UserIdError};
