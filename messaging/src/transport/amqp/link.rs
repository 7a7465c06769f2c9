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
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Mutex, Notify};
use tokio_util::sync::CancellationToken;

use super::options::{AmqpOptions, TlsOptions};
use super::Counters;
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
    /// The channel of mandatory requests, taken by one publish at a time until its confirm.
    /// lapin hands a returned message to whichever confirm of the channel completes next, so
    /// on a shared channel one request's return could fail another request (and pass itself
    /// off as routed); alone on its channel a request can only be handed its own.
    exclusive: Arc<Mutex<Option<Channel>>>,
    /// Exchanges and queues declared on the current publishing channel.
    declared: std::sync::Mutex<Declared>,
    dead: AtomicBool,
    died: Notify,
}

/// The mandatory requests' channel, held by one request until its confirm is in (dropping
/// this hands it to the next request).
pub(super) struct ExclusivePublisher {
    slot: tokio::sync::OwnedMutexGuard<Option<Channel>>,
    channel: Channel,
}

impl ExclusivePublisher {
    /// Takes the channel out of use and lets the next request open another, while the holder
    /// keeps this one for the confirm still due on it. Closed when the holder drops it.
    pub(super) fn retire(mut self) -> Channel {
        *self.slot = None;
        self.channel
    }

    /// What retires this channel later, after its holder is gone, if it is still in use then.
    pub(super) fn handle(&self) -> ExclusiveHandle {
        ExclusiveHandle {
            home: tokio::sync::OwnedMutexGuard::mutex(&self.slot).clone(),
            id: self.channel.id(),
        }
    }
}

/// The mandatory requests' channel as one publish on it knew it, for retiring it later.
pub(super) struct ExclusiveHandle {
    home: Arc<Mutex<Option<Channel>>>,
    id: lapin::types::ChannelId,
}

impl ExclusiveHandle {
    /// Takes the channel out of use unless it was already replaced; whether it was.
    pub(super) async fn retire(self) -> bool {
        let mut slot = self.home.lock().await;
        let current = slot.as_ref().is_some_and(|open| open.id() == self.id);
        if current {
            *slot = None;
        }
        current
    }
}

impl std::ops::Deref for ExclusivePublisher {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.channel
    }
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

    /// The channel for a mandatory request, held by the caller until its confirm is in;
    /// opened (with confirms) when there is none or it closed.
    pub(super) async fn exclusive_publisher(&self) -> Result<ExclusivePublisher, lapin::Error> {
        let mut slot = self.exclusive.clone().lock_owned().await;
        let channel = match slot.take() {
            Some(open) if open.status().connected() => open,
            _ => {
                let channel = self.connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                channel
            }
        };
        *slot = Some(channel.clone());
        Ok(ExclusivePublisher { slot, channel })
    }

    /// Stops publishing on `channel` (it was refused): the next publish opens a new one. The
    /// old one is closed a little later, when confirms still in flight on it have come back.
    pub(super) fn discard_publisher(&self, channel: &Arc<Channel>) {
        if self.retire_publisher(channel) {
            let channel = channel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DISCARDED_CHANNEL_GRACE).await;
                if channel.status().connected() {
                    let _ = channel.close(200, "refused publishes".into()).await;
                }
            });
        }
    }

    /// Stops publishing on `channel` (a confirm on it is overdue): the next publish opens a
    /// new one. The publishes still waiting on it hold it, and it closes when the last is done.
    /// False when it was no longer in use.
    pub(super) fn retire_publisher(&self, channel: &Arc<Channel>) -> bool {
        let mut slot = self.publisher.lock().unwrap_or_else(|e| e.into_inner());
        let current = slot
            .as_ref()
            .is_some_and(|current| Arc::ptr_eq(current, channel));
        if current {
            *slot = None;
        }
        current
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

/// How long closing a connection waits for the broker's answer.
const CLOSE_PATIENCE: Duration = Duration::from_secs(5);

/// How long a discarded publishing channel stays open for the confirms still due on it.
const DISCARDED_CHANNEL_GRACE: Duration = Duration::from_secs(5);

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
        counters: Arc<Counters>,
    ) -> Result<Arc<Link>, TransportError> {
        let uris = amqp_uris(url, options)?;
        let tls = if options.tls.enabled {
            Some(tls_config(&options.tls).await?)
        } else {
            None
        };
        let (sender, receiver) = watch::channel(None);
        let stop = CancellationToken::new();
        let keeper = Keeper {
            uris,
            next_host: 0,
            options: options.clone(),
            tls,
            purpose,
            sender,
            stop: stop.clone(),
            generation: 0,
            counters,
        };
        let first = tokio::time::timeout(options.connection_timeout, keeper.first_connection())
            .await
            .map_err(|_| {
                TransportError::Unreachable(format!(
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

    /// Whether [`close`](Self::close) was called.
    pub(super) fn is_closed(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Closes the connection and stops reconnecting.
    pub(super) async fn close(&self) {
        self.stop.cancel();
        let session = self.session.borrow().clone();
        if let Some(session) = session {
            // Bounded: a connection whose I/O has already ended may never answer, and a
            // transport's close must not hang its caller.
            let closing = session.connection.close(200, "closing".into());
            let _ = tokio::time::timeout(CLOSE_PATIENCE, closing).await;
        }
    }
}

/// The background task that owns reconnection.
struct Keeper {
    uris: Vec<AMQPUri>,
    next_host: usize,
    options: AmqpOptions,
    /// Certificates and key when the connection is TLS.
    tls: Option<OwnedTLSConfig>,
    purpose: &'static str,
    sender: watch::Sender<Option<Arc<Session>>>,
    stop: CancellationToken,
    generation: u64,
    counters: Arc<Counters>,
}

/// A session that dies sooner than this after it opened counts as a failed connect for the
/// backoff: a broker that accepts connections and closes them at once (a refused declaration
/// in a loop, an exhausted resource) must not be met with a reconnection storm.
pub(super) const STABLE_SESSION: Duration = Duration::from_secs(10);

impl Keeper {
    /// Tries every host once, in order, until one connects.
    async fn first_connection(mut self) -> Result<Self, TransportError> {
        let mut errors = Vec::new();
        for _ in 0..self.uris.len() {
            match self.connect_next().await {
                Ok(()) => return Ok(self),
                Err((host, error)) => errors.push(format!("{host}: {error}")),
            }
        }
        let over = if self.tls.is_some() { " over TLS" } else { "" };
        Err(TransportError::Unreachable(format!(
            "could not connect{over} to any host ({})",
            errors.join("; ")
        )))
    }

    /// Connects to the next host in turn; on failure, says which host refused, and why.
    ///
    /// Each attempt is bounded by `connection_timeout`: lapin has had releases whose connect
    /// never resolved when the broker refused the handshake, and a keeper stuck in one would
    /// never reconnect.
    async fn connect_next(&mut self) -> Result<(), (String, String)> {
        let uri = self.uris[self.next_host % self.uris.len()].clone();
        self.next_host = self.next_host.wrapping_add(1);
        let host = format!("{}:{}", uri.authority.host, uri.authority.port);
        let properties = ConnectionProperties::default().with_connection_name(
            format!("tidings:{}:{}", self.purpose, std::process::id()).into(),
        );
        self.counters.add(&self.counters.connections_opened);
        let connecting = async {
            match &self.tls {
                Some(tls) => match lapin::runtime::default_runtime() {
                    Ok(runtime) => {
                        Connection::connect_uri_with_config(uri, properties, tls.clone(), runtime)
                            .await
                    }
                    Err(error) => Err(error),
                },
                None => Connection::connect_uri(uri, properties).await,
            }
        };
        let patience = self.options.connection_timeout;
        let connection = match tokio::time::timeout(patience, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(error)) => return Err((host, error.to_string())),
            Err(_) => return Err((host, format!("no answer within {patience:?}"))),
        };
        self.generation += 1;
        tracing::info!(%host, purpose = self.purpose, generation = self.generation, "connected to the broker");
        let session = Arc::new(Session {
            generation: self.generation,
            connection,
            publisher: std::sync::Mutex::new(None),
            opening: Mutex::new(()),
            exclusive: Arc::default(),
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
        // The delay before the next connect grows across failed connects and sessions that die
        // young, and starts over once a session has lasted.
        let mut backoff = Backoff::new(&self.options);
        let mut opened = Instant::now();
        loop {
            let current = self.sender.borrow().clone();
            if let Some(session) = current {
                tokio::select! {
                    () = session.wait_dead() => {}
                    () = self.stop.cancelled() => return,
                }
                let lived = opened.elapsed();
                tracing::warn!(
                    purpose = self.purpose,
                    generation = session.generation,
                    ?lived,
                    "connection to the broker lost; reconnecting"
                );
                if lived < STABLE_SESSION {
                    let wait = backoff.next_wait();
                    tracing::debug!(
                        ?wait,
                        purpose = self.purpose,
                        "the connection died young; backing off"
                    );
                    self.sender.send_replace(None);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.stop.cancelled() => return,
                    }
                } else {
                    backoff.reset();
                }
            }
            self.sender.send_replace(None);
            loop {
                match self.connect_next().await {
                    Ok(()) => {
                        crate::metrics::count(crate::metrics::AMQP_RECONNECTS);
                        break;
                    }
                    Err((host, error)) => {
                        let wait = backoff.next_wait();
                        tracing::debug!(%host, %error, ?wait, purpose = self.purpose, "reconnect failed");
                        tokio::select! {
                            () = tokio::time::sleep(wait) => {}
                            () = self.stop.cancelled() => return,
                        }
                    }
                }
            }
            opened = Instant::now();
        }
    }
}

/// Marks the session dead on the connection's first error event.
///
/// lapin reports a channel's error (a refused declaration, say) on the same event stream, with
/// the connection still up: that one is the channel owner's to handle. Taken for a lost
/// connection, it made every refused declaration a reconnection.
fn watch_connection_events(session: &Arc<Session>) {
    let mut events = session.connection.events_listener();
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(error) = event {
                let Some(session) = weak.upgrade() else {
                    return;
                };
                if session.connection.status().connected() {
                    tracing::debug!(%error, generation = session.generation, "channel error");
                    continue;
                }
                tracing::debug!(%error, generation = session.generation, "connection error");
                session.mark_dead();
                return;
            }
        }
        // The event stream ends with the connection.
        if let Some(session) = weak.upgrade() {
            session.mark_dead();
        }
    });
}

/// The TLS settings of a connection: the CA file's certificates trusted beside the system's,
/// and the client certificate when one is configured. Files are read once, when the transport
/// opens, so a missing or unreadable one is an error at start, not at the first reconnect.
async fn tls_config(tls: &TlsOptions) -> Result<OwnedTLSConfig, TransportError> {
    async fn read(key: &str, path: &std::path::Path) -> Result<Vec<u8>, TransportError> {
        let bytes = tokio::fs::read(path).await.map_err(|error| {
            TransportError::Tls(format!("cannot read {key} {}: {error}", path.display()))
        })?;
        if !bytes.starts_with(b"-----BEGIN") && !bytes.windows(10).any(|w| w == b"-----BEGIN") {
            return Err(TransportError::Tls(format!(
                "{key} {} is not a PEM file",
                path.display()
            )));
        }
        Ok(bytes)
    }
    let cert_chain = match &tls.ca_file {
        Some(path) => {
            let pem = read("ssl_ca_file", path).await?;
            Some(String::from_utf8(pem).map_err(|_| {
                TransportError::Tls(format!("ssl_ca_file {} is not text", path.display()))
            })?)
        }
        None => None,
    };
    let identity = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
            pem: read("ssl_cert_file", cert).await?,
            key: read("ssl_key_file", key).await?,
        }),
        _ => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Jittered exponential backoff between attempts: from the first delay, doubling up to a cap.
#[derive(Debug)]
pub(super) struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(options: &AmqpOptions) -> Self {
        Self {
            first: options.retry_interval,
            cap: options.retry_interval_max,
            next: options.retry_interval,
        }
    }

    /// How long to wait before the next attempt; the one after waits twice as long.
    pub(super) fn next_wait(&mut self) -> Duration {
        let wait = jitter(self.next);
        self.next = (self.next * 2).min(self.cap);
        wait
    }

    /// Starts over from the first delay (after a success that lasted).
    pub(super) fn reset(&mut self) {
        self.next = self.first;
    }
}

/// ±20% random jitter, so many clients do not reconnect in lock step.
fn jitter(delay: Duration) -> Duration {
    let spread = delay.as_secs_f64() * 0.2;
    let offset = (fastrand::f64() * 2.0 - 1.0) * spread;
    Duration::from_secs_f64((delay.as_secs_f64() + offset).max(0.0))
}

/// The largest frame we ask the broker for. lapin sizes each connection's read and write buffers
/// by it, so the broker's default (128 KiB) cost an idle agent with a handful of connections
/// about 15 MiB of RSS; a larger message is only split into more frames.
const FRAME_MAX: u32 = 16 * 1024;

/// The URL's hosts as lapin URIs, one per host, in order.
fn amqp_uris(url: &TransportUrl, options: &AmqpOptions) -> Result<Vec<AMQPUri>, TransportError> {
    let scheme = match url.scheme() {
        Scheme::Memory => return Err(TransportError::UnsupportedScheme("memory".to_owned())),
        Scheme::Rabbit | Scheme::Amqp | Scheme::Amqps if options.tls.enabled => AMQPScheme::AMQPS,
        Scheme::Rabbit | Scheme::Amqp | Scheme::Amqps => AMQPScheme::AMQP,
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
                frame_max: Some(FRAME_MAX),
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
