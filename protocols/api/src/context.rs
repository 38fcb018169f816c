//! The [`Adapter`] trait and the [`Context`] the core hands a running adapter.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::event::{Event, EventError, Reply};
use crate::status::AdapterStatus;

/// An event on its way to the core, with the channel the core answers on.
#[derive(Debug)]
pub struct Envelope {
    /// Name of the adapter instance that sent it (for logs).
    pub source: Arc<str>,
    pub event: Event,
    /// Where the core sends its decision; `None` when nobody waits.
    pub reply: Option<oneshot::Sender<Result<Reply, EventError>>>,
}

/// Why an adapter stopped. The core logs it and restarts the adapter with
/// capped exponential backoff (`Config` errors wait the longest).
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work (wrong secret, bad address): retrying
    /// soon will not help.
    #[error("configuration: {0}")]
    Config(String),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("{0}")]
    Other(String),
}

/// A configuration value an adapter cannot work with: the key (as written
/// in the adapter's section, e.g. `max_stanza_size`, or two keys joined
/// with ` and `) and why. The core prefixes the section
/// (`adapters.xmpp[0]: max_stanza_size: must be at least 1024`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why the persistent adapter state failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("adapter state store: {0}")]
pub struct StateError(pub String);

/// Boxed future returned by [`StateStore`] methods.
pub type StateFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StateError>> + Send + 'a>>;

/// A small persistent key-value store, one namespace per adapter instance.
/// The core implements it on its SQLite store; adapters keep what they must
/// remember across restarts in it (e.g. XEP-0357 node → device bindings).
pub trait StateStore: Send + Sync + 'static {
    fn get<'a>(&'a self, namespace: &'a str, key: &'a str) -> StateFuture<'a, Option<String>>;
    fn put<'a>(&'a self, namespace: &'a str, key: &'a str, value: &'a str) -> StateFuture<'a, ()>;
    fn delete<'a>(&'a self, namespace: &'a str, key: &'a str) -> StateFuture<'a, bool>;
    /// All `(key, value)` pairs whose key starts with `prefix`.
    fn list<'a>(&'a self, namespace: &'a str, prefix: &'a str) -> StateFuture<'a, Vec<(String, String)>>;
}

/// An in-memory [`StateStore`] for tests.
#[derive(Default)]
pub struct MemoryState(Mutex<BTreeMap<(String, String), String>>);

impl MemoryState {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl StateStore for MemoryState {
    fn get<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, Option<String>> {
        let v = self.map().get(&(ns.to_owned(), key.to_owned())).cloned();
        Box::pin(async move { Ok(v) })
    }
    fn put<'a>(&'a self, ns: &'a str, key: &'a str, value: &'a str) -> StateFuture<'a, ()> {
        self.map().insert((ns.to_owned(), key.to_owned()), value.to_owned());
        Box::pin(async { Ok(()) })
    }
    fn delete<'a>(&'a self, ns: &'a str, key: &'a str) -> StateFuture<'a, bool> {
        let had = self.map().remove(&(ns.to_owned(), key.to_owned())).is_some();
        Box::pin(async move { Ok(had) })
    }
    fn list<'a>(&'a self, ns: &'a str, prefix: &'a str) -> StateFuture<'a, Vec<(String, String)>> {
        let v = self
            .map()
            .iter()
            .filter(|((n, k), _)| n == ns && k.starts_with(prefix))
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        Box::pin(async move { Ok(v) })
    }
}

/// What a running adapter gets from the core.
pub struct Context<C> {
    /// Instance name, e.g. `line`, `irc:libera`; also the scope of its user ids.
    name: Arc<str>,
    /// The adapter's own config section, already deserialized and checked.
    config: C,
    /// Where events go. Bounded: `submit` waits when the core is busy
    /// (backpressure), it never drops.
    events: mpsc::Sender<Envelope>,
    /// Cancelled when the gateway shuts down; `run` must then return soon.
    /// A child of the gateway's token, so cancelling it stops only this adapter.
    shutdown: CancellationToken,
    /// Persistent key-value state, namespaced by `name`.
    state: Arc<dyn StateStore>,
    /// What the instance reports about itself (metrics, readiness).
    status: Arc<AdapterStatus>,
}

impl<C: Clone> Clone for Context<C> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            config: self.config.clone(),
            events: self.events.clone(),
            shutdown: self.shutdown.clone(),
            state: self.state.clone(),
            status: self.status.clone(),
        }
    }
}

impl<C> Context<C> {
    /// Used by the core to build the context of an adapter instance.
    pub fn new(
        name: impl Into<Arc<str>>,
        config: C,
        events: mpsc::Sender<Envelope>,
        shutdown: CancellationToken,
        state: Arc<dyn StateStore>,
    ) -> Self {
        let name: Arc<str> = name.into();
        Self {
            status: Arc::new(AdapterStatus::new("adapter", name.clone(), false)),
            name,
            config,
            events,
            shutdown,
            state,
        }
    }

    /// Use `status` (kept by the core across restarts) for this instance's
    /// self-report instead of a fresh one.
    pub fn with_status(mut self, status: Arc<AdapterStatus>) -> Self {
        self.status = status;
        self
    }

    /// This instance's self-report: outbound adapters call
    /// [`AdapterStatus::set_connected`] / [`AdapterStatus::set_disconnected`];
    /// inbound ones count connections with
    /// [`AdapterStatus::connection_opened`]. Events are counted by
    /// [`Context::submit`], [`Context::enqueue`] and [`Context::notify`].
    pub fn status(&self) -> &Arc<AdapterStatus> {
        &self.status
    }

    /// A context wired to a channel the test reads, with in-memory state.
    pub fn for_test(name: &str, config: C) -> (Self, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(1024);
        let ctx = Self::new(
            name,
            config,
            tx,
            CancellationToken::new(),
            Arc::new(MemoryState::default()),
        );
        (ctx, rx)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn config(&self) -> &C {
        &self.config
    }

    /// The shutdown signal (clone it into spawned tasks).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Submit an event and wait for the core's decision.
    pub async fn submit(&self, event: Event) -> Result<Reply, EventError> {
        self.enqueue(event)
            .await?
            .await
            .unwrap_or(Err(EventError::ShuttingDown))
    }

    /// Submit an event and return as soon as it is queued to the core; the
    /// returned receiver yields the decision. Lets a connection pipeline many
    /// commands while answering them in order.
    pub async fn enqueue(&self, event: Event) -> Result<oneshot::Receiver<Result<Reply, EventError>>, EventError> {
        let (tx, rx) = oneshot::channel();
        self.status.count(&event);
        let envelope = Envelope {
            source: self.name.clone(),
            event,
            reply: Some(tx),
        };
        self.events.send(envelope).await.map_err(|_| EventError::ShuttingDown)?;
        Ok(rx)
    }

    /// Submit an event nobody waits for (e.g. presence from a watcher).
    pub async fn notify(&self, event: Event) -> Result<(), EventError> {
        self.status.count(&event);
        let envelope = Envelope {
            source: self.name.clone(),
            event,
            reply: None,
        };
        self.events.send(envelope).await.map_err(|_| EventError::ShuttingDown)
    }

    pub async fn state_get(&self, key: &str) -> Result<Option<String>, StateError> {
        self.state.get(&self.name, key).await
    }
    pub async fn state_put(&self, key: &str, value: &str) -> Result<(), StateError> {
        self.state.put(&self.name, key, value).await
    }
    pub async fn state_delete(&self, key: &str) -> Result<bool, StateError> {
        self.state.delete(&self.name, key).await
    }
    pub async fn state_list(&self, prefix: &str) -> Result<Vec<(String, String)>, StateError> {
        self.state.list(&self.name, prefix).await
    }
}

/// One IM protocol. Implement it on a unit struct; the core runs one
/// instance per `[[adapters.<KIND>]]` section.
pub trait Adapter: Send + Sync + 'static {
    /// The adapter's config section. Use `#[serde(deny_unknown_fields)]`.
    type Config: DeserializeOwned + Clone + Send + Sync + 'static;

    /// The adapter kind, as in `[[adapters.<KIND>]]` (`line`, `xmpp`, `irc`).
    const KIND: &'static str;

    /// Whether two instances must have different names (their user ids
    /// would collide). `false` for adapters whose instances may share one
    /// scope on purpose (several line-protocol listeners for one server).
    const UNIQUE_NAMES: bool = true;

    /// Whether an instance connects out to a server (XMPP component, IRC
    /// bot). An outbound instance is not ready (`/readyz`) until it reports
    /// [`AdapterStatus::set_connected`], and is exported as
    /// `pushbridge_adapter_connected`.
    const OUTBOUND: bool = false;

    /// The instance name, which is also the scope of its user ids
    /// (`line` → `line:alice`; `irc:libera` → `irc:libera:alice`).
    fn instance_name(_config: &Self::Config) -> String {
        Self::KIND.to_owned()
    }

    /// Whether this instance must run on exactly one gateway at a time when
    /// several gateways share one PostgreSQL store: an outbound connection
    /// the remote end allows once (an XMPP component for one domain) or
    /// that would double every push if made twice (an IRC bot watching one
    /// network). A singleton runs only on the gateway holding its advisory
    /// lock; the others stand by and take over when it goes. `false` (the
    /// default) for listeners every gateway serves behind a load balancer
    /// (line protocol, Matrix push gateway). With SQLite every instance
    /// runs at once, singleton or not.
    fn singleton(_config: &Self::Config) -> bool {
        false
    }

    /// Checks beyond deserialization (`pushbridge check` and start-up); the
    /// error names the offending key.
    fn check(_config: &Self::Config) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Run until `ctx.shutdown()` is cancelled (return `Ok`) or the adapter
    /// fails (return `Err`; the core restarts it with backoff).
    fn run(ctx: Context<Self::Config>) -> impl Future<Output = Result<(), AdapterError>> + Send;
}
