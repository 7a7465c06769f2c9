//! A supervised AMQP connection: connects, notices when the connection dies, reconnects with
//! jittered backoff, trying the URL's hosts round-robin.
//!
//! Users of a link never hold a connection for long: they ask for the current [`Session`] and,
//! when an operation fails because the connection went away, mark it dead and ask again. Each
//! new connection is a new session with a higher generation number, so consumers can tell
//! "the connection I set up on is gone" from "nothing changed".

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::options::AmqpOptions;
use crate::transport::TransportError;
use crate::url::{Scheme, TransportUrl};

/// One live connection and the publishing channel on it.
pub(super) struct Session {
    pub(super) generation: u64,
    pub(super) connection: Connection,
    /// The publishing channel. Every publish takes it, so the lock is a plain one held only to
    /// clone an `Arc` (it was an async lock held across the check, where concurrent publishes
    /// queued); opening a new channel is serialised by `opening` instead.
    publisher: std::sync::Mutex<Option<Arc<Channel>>>,
    opening: Mutex<()>,
    /// Exchanges and queues declared on the current publishing channel.
    declared: std::sync::Mutex<Declared>,
    dead: AtomicBool,
    died: Notify,
}

/// What has been declared on a publishing channel, by name, so that a publish checks with a
/// lookup and no allocation.
#[derive(Debug, Default)]
struct Declared {
    exchanges: HashSet<String>,
    queues: HashSet<String>,
}

/// Which kind of name [`Session::is_declared`] looks up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Declaration {
    Exchange,
    Queue,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("dead", &self.dead.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Marks the connection dead: the link reconnects.
    pub(super) fn mark_dead(&self) {
        if !self.dead.swap(true, Ordering::AcqRel) {
            self.died.notify_waiters();
        }
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire) || !self.connection.status().connected()
    }

    async fn wait_dead(&self) {
        let died = self.died.notified();
        if self.is_dead() {
            return;
        }
        died.await;
    }

    /// The publishing channel (publisher confirms on), opened again if it closed.
    pub(super) async fn publisher(&self) -> Result<Arc<Channel>, lapin::Error> {
        if let Some(channel) = self.open_publisher() {
            return Ok(channel);
        }
        let _opening = self.opening.lock().await;
        // Another publish may have opened it while this one waited.
        if let Some(channel) = self.open_publisher() {
            return Ok(channel);
        }
        let channel = self.connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        {
            let mut declared = self.declared();
            declared.exchanges.clear();
            declared.queues.clear();
        }
        let channel = Arc::new(channel);
        *self.publisher.lock().unwrap_or_else(|e| e.into_inner()) = Some(channel.clone());
        Ok(channel)
    }

    /// The publishing channel if it is open.
    fn open_publisher(&self) -> Option<Arc<Channel>> {
        self.publisher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    fn declared(&self) -> std::sync::MutexGuard<'_, Declared> {
        // Consistent under panic: each operation is a single insert or lookup.
        self.declared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `name` was declared on the current publishing channel.
    pub(super) fn is_declared(&self, kind: Declaration, name: &str) -> bool {
        let declared = self.declared();
        match kind {
            Declaration::Exchange => declared.exchanges.contains(name),
            Declaration::Queue => declared.queues.contains(name),
        }
    }

    /// Records that `name` is declared on the current publishing channel.
    pub(super) fn mark_declared(&self, kind: Declaration, name: &str) {
        let mut declared = self.declared();
        match kind {
            Declaration::Exchange => declared.exchanges.insert(name.to_owned()),
            Declaration::Queue => declared.queues.insert(name.to_owned()),
        };
    }
}

/// A connection kept alive for one purpose (sending or listening).
#[derive(Debug)]
pub(super) struct Link {
    session: watch::Receiver<Option<Arc<Session>>>,
    stop: CancellationToken,
    url: String,
}

impl Link {
    /// Connects once (trying every host), then keeps the connection up in the background.
    pub(super) async fn open(
        url: &TransportUrl,
        options: &AmqpOptions,
        purpose: &'static str,
    ) -> Result<Arc<Link>, TransportError> {
        let uris = amqp_uris(url, options)?;
        let (sender, receiver) = watch::channel(None);
        let stop = CancellationToken::new();
        let keeper = Keeper {
            uris,
            next_host: 0,
            options: options.clone(),
            purpose,
            sender,
            stop: stop.clone(),
            generation: 0,
        };
        let first = tokio::time::timeout(options.connection_timeout, keeper.first_connection())
            .await
            .map_err(|_| {
                TransportError::ConnectionLost(format!(
                    "no broker answered at {url} within {:?}",
                    options.connection_timeout
                ))
            })??;
        tokio::spawn(first.run());
        Ok(Arc::new(Link {
            session: receiver,
            stop,
            url: url.to_string(),
        }))
    }

    /// The current session, waiting up to `patience` for a connection to come back.
    pub(super) async fn session(&self, patience: Duration) -> Result<Arc<Session>, TransportError> {
        let mut watcher = self.session.clone();
        let wait = watcher.wait_for(|s| s.as_ref().is_some_and(|s| !s.is_dead()));
        tokio::select! {
            found = tokio::time::timeout(patience, wait) => match found {
                Ok(Ok(session)) => session.clone().ok_or(TransportError::Closed),
                Ok(Err(_)) => Err(TransportError::Closed),
                Err(_) => Err(TransportError::ConnectionLost(format!(
                    "no connection to {} for {patience:?}", self.url
                ))),
            },
            () = self.stop.cancelled() => Err(TransportError::Closed),
        }
    }

    /// A session newer than `generation`, waiting as long as it takes (until the link closes).
    pub(super) async fn session_after(
        &self,
        generation: u64,
    ) -> Result<Arc<Session>, TransportError> {
        let mut watcher = self.session.clone();
        let wait = watcher.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.generation > generation && !s.is_dead())
        });
        tokio::select! {
            found = wait => match found {
                Ok(session) => session.clone().ok_or(TransportError::Closed),
                Err(_) => Err(TransportError::Closed),
            },
            () = self.stop.cancelled() => Err(TransportError::Closed),
        }
    }

    /// The session now, if there is a live one.
    pub(super) fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone().filter(|s| !s.is_dead())
    }

    /// Closes the connection and stops reconnecting.
    pub(super) async fn close(&self) {
        self.stop.cancel();
        let session = self.session.borrow().clone();
        if let Some(session) = session {
            let _ = session.connection.close(200, "closing".into()).await;
        }
    }
}

/// The background task that owns reconnection.
struct Keeper {
    uris: Vec<AMQPUri>,
    next_host: usize,
    options: AmqpOptions,
    purpose: &'static str,
    sender: watch::Sender<Option<Arc<Session>>>,
    stop: CancellationToken,
    generation: u64,
}

impl Keeper {
    /// Tries every host once, in order, until one connects.
    async fn first_connection(mut self) -> Result<Self, TransportError> {
        let mut last_error = None;
        for _ in 0..self.uris.len() {
            match self.connect_next().await {
                Ok(()) => return Ok(self),
                Err(error) => last_error = Some(error),
            }
        }
        Err(TransportError::ConnectionLost(
            last_error.map_or_else(|| "no hosts".to_owned(), |e| e.to_string()),
        ))
    }

    async fn connect_next(&mut self) -> Result<(), lapin::Error> {
        let uri = self.uris[self.next_host % self.uris.len()].clone();
        self.next_host = self.next_host.wrapping_add(1);
        let host = format!("{}:{}", uri.authority.host, uri.authority.port);
        let properties = ConnectionProperties::default().with_connection_name(
            format!("tidings:{}:{}", self.purpose, std::process::id()).into(),
        );
        let connection = Connection::connect_uri(uri, properties).await?;
        self.generation += 1;
        tracing::info!(%host, purpose = self.purpose, generation = self.generation, "connected to the broker");
        let session = Arc::new(Session {
            generation: self.generation,
            connection,
            publisher: std::sync::Mutex::new(None),
            opening: Mutex::new(()),
            declared: Default::default(),
            dead: AtomicBool::new(false),
            died: Notify::new(),
        });
        watch_connection_events(&session);
        self.sender.send_replace(Some(session));
        Ok(())
    }

    /// Waits for the session to die, then reconnects with jittered exponential backoff.
    async fn run(mut self) {
        loop {
            let current = self.sender.borrow().clone();
            if let Some(session) = current {
                tokio::select! {
                    () = session.wait_dead() => {}
                    () = self.stop.cancelled() => return,
                }
                tracing::warn!(
                    purpose = self.purpose,
                    generation = session.generation,
                    "connection to the broker lost; reconnecting"
                );
            }
            self.sender.send_replace(None);
            let mut delay = self.options.retry_interval;
            loop {
                match self.connect_next().await {
                    Ok(()) => break,
                    Err(error) => {
                        let wait = jitter(delay);
                        tracing::debug!(%error, ?wait, purpose = self.purpose, "reconnect failed");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = self.stop.cancelled() => return,
                        }
                        delay = (delay * 2).min(self.options.retry_interval_max);
                    }
                }
            }
        }
    }
}

/// Marks the session dead on the connection's first error event.
fn watch_connection_events(session: &Arc<Session>) {
    let mut events = session.connection.events_listener();
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                if let Some(session) = weak.upgrade() {
                    tracing::debug!(%error, generation = session.generation, "connection error");
                    session.mark_dead();
                }
                return;
            }
        }
        // The event stream ends with the connection.
        if let Some(session) = weak.upgrade() {
            session.mark_dead();
        }
    });
}

/// ±20% random jitter, so many clients do not reconnect in lock step.
fn jitter(delay: Duration) -> Duration {
    let spread = delay.as_secs_f64() * 0.2;
    let offset = (fastrand::f64() * 2.0 - 1.0) * spread;
    Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0))
}

/// The URL's hosts as lapin URIs, one per host, in order.
fn amqp_uris(url: &TransportUrl, options: &AmqpOptions) -> Result<Vec<AMQPUri>, TransportError> {
    let scheme = match url.scheme() {
        Scheme::Amqps => AMQPScheme::AMQPS,
        Scheme::Rabbit | Scheme::Amqp => AMQPScheme::AMQP,
        Scheme::Memory => return Err(TransportError::UnsupportedScheme("memory".to_owned())),
    };
    let uris: Vec<AMQPUri> = url
        .hosts()
        .iter()
        .map(|host| AMQPUri {
            scheme: scheme.clone(),
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: host.username_or_default().to_owned(),
                    password: host.password_or_default().to_owned(),
                },
                host: host.host().to_owned(),
                port: host.port(),
            },
            vhost: url.effective_vhost().to_owned(),
            query: AMQPQueryString {
                heartbeat: Some(options.heartbeat),
                connection_timeout: Some(
                    u64::try_from(options.connection_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                ..AMQPQueryString::default()
            },
        })
        .collect();
    if uris.is_empty() {
        return Err(TransportError::Driver(format!("{url} names no host")));
    }
    Ok(uris)
}
