//! The HTTP server: Eureka's REST API v2 over the registry core, a dashboard,
//! the eviction task and peer replication. A thin layer: every decision is the core's.

mod cache;
mod dashboard;
mod handlers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Layer;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::normalize_path::NormalizePathLayer;

use crate::auth::Auth;
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, bad};
use crate::error::Result;
use crate::lease::EvictionClock;
use crate::metrics::ServerMetrics;
use crate::registry::Registry;
use crate::replication::{Replicator, normalize_peer_url, sync_from_peers};

pub(crate) use cache::ResponseCache;

/// The header Eureka peers mark replicated requests with.
pub const REPLICATION_HEADER: &str = "x-netflix-discovery-replication";

/// How a [`Server`] runs: the registry's [`Config`] plus HTTP, peers and limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The registry core's configuration.
    pub registry: Config,
    /// Where to listen (port 0 picks a free one).
    pub bind: SocketAddr,
    /// Peer service URLs, e.g. `http://127.0.0.1:8762/eureka` (`/eureka/v2` is added to a bare host).
    pub peers: Vec<String>,
    /// Credentials required for mutating requests (and sent to peers); `None` leaves them open.
    pub auth: Option<Auth>,
    /// Largest accepted request body (after gzip decoding), except replication batches.
    pub max_body_bytes: usize,
    /// Largest accepted replication batch body.
    pub max_batch_body_bytes: usize,
    /// Longest `?wait=` a delta long-poll may ask for.
    pub max_long_poll: Duration,
    /// How many times a starting node tries its peers for the registry (Eureka: `registrySyncRetries`).
    pub sync_retries: u32,
    /// Pause between those tries.
    pub sync_retry_wait: Duration,
    /// Most tasks sent to a peer in one batch.
    pub replication_batch: usize,
    /// Most tasks queued for one peer; beyond it new tasks are dropped (and counted).
    pub replication_queue: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            registry: Config::default(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8761)),
            peers: Vec::new(),
            auth: None,
            max_body_bytes: 64 * 1024,
            max_batch_body_bytes: 8 * 1024 * 1024,
            max_long_poll: Duration::from_secs(60),
            sync_retries: 3,
            sync_retry_wait: Duration::from_millis(500),
            replication_batch: 250,
            replication_queue: 100_000,
        }
    }
}

impl ServerConfig {
    /// Checks every field, the registry's included.
    pub fn validate(&self) -> Result<()> {
        self.registry.validate()?;
        for p in &self.peers {
            normalize_peer_url(p)?;
        }
        if let Some(a) = &self.auth {
            a.validate()?;
        }
        if !(256..=64 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(bad(
                "max_body_bytes",
                self.max_body_bytes.to_string(),
                "must be in 256..=64 MiB",
            ));
        }
        if self.max_batch_body_bytes < self.max_body_bytes {
            return Err(bad(
                "max_batch_body_bytes",
                self.max_batch_body_bytes.to_string(),
                "must be >= max_body_bytes",
            ));
        }
        if self.max_long_poll > Duration::from_secs(300) {
            return Err(bad(
                "max_long_poll",
                format!("{:?}", self.max_long_poll),
                "must be at most 300s",
            ));
        }
        if self.replication_batch == 0 || self.replication_queue == 0 {
            return Err(bad(
                "replication_batch",
                self.replication_batch.to_string(),
                "batch and queue must be positive",
            ));
        }
        Ok(())
    }
}

/// Requests a node has served, by kind. Requests that carry the replication header
/// count like any other; tasks applied from a peer's replication batch do not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounters {
    /// `GET /apps`.
    pub full_fetches: u64,
    /// `GET /apps/delta`.
    pub delta_fetches: u64,
    /// Successful registrations.
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Successful cancellations.
    pub cancels: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) full_fetches: AtomicU64,
    pub(crate) delta_fetches: AtomicU64,
    pub(crate) registrations: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) cancels: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ServerCounters {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ServerCounters {
            full_fetches: l(&self.full_fetches),
            delta_fetches: l(&self.delta_fetches),
            registrations: l(&self.registrations),
            heartbeats: l(&self.heartbeats),
            cancels: l(&self.cancels),
        }
    }
}

/// Shared state of one node.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) registry: Arc<Registry>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) cfg: ServerConfig,
    pub(crate) versions: watch::Receiver<u64>,
    pub(crate) cache: ResponseCache,
    pub(crate) replicator: Option<Replicator>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) started_at: crate::model::Millis,
    pub(crate) counters: Counters,
    pub(crate) metrics: ServerMetrics,
}

impl Node {
    pub(crate) fn now(&self) -> crate::model::Millis {
        self.clock.now()
    }
}

/// A running registry server.
#[derive(Debug)]
pub struct Server {
    node: Arc<Node>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    serve: JoinHandle<std::io::Result<()>>,
    evictor: JoinHandle<()>,
}

impl Server {
    /// Binds, syncs the registry from the peers, starts eviction and replication, and serves.
    pub async fn start(cfg: ServerConfig) -> Result<Self> {
        Self::start_with_clock(cfg, Arc::new(SystemClock)).await
    }

    /// [`Server::start`] with an injected wall clock.
    pub async fn start_with_clock(cfg: ServerConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        cfg.validate()?;
        let listener = TcpListener::bind(cfg.bind).await?;
        let addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(cfg.registry.clone())?);
        let (version_tx, versions) = watch::channel(0u64);
        registry.set_listener(Arc::new(move |v| {
            version_tx.send_if_modified(|cur| {
                let newer = v > *cur;
                if newer {
                    *cur = v;
                }
                newer
            });
        }));
        let (shutdown_tx, shutdown) = watch::channel(false);
        let peers: Vec<String> = cfg
            .peers
            .iter()
            .map(|p| normalize_peer_url(p))
            .collect::<Result<_>>()?;
        let replicator = (!peers.is_empty())
            .then(|| Replicator::start(peers.clone(), &registry, &clock, &cfg))
            .transpose()?;
        if !peers.is_empty() {
            let n = sync_from_peers(&peers, &registry, clock.as_ref(), &cfg).await;
            tracing::info!("synced {n} instances from peers");
        }
        let node = Arc::new(Node {
            registry,
            started_at: clock.now(),
            clock,
            cfg,
            versions,
            cache: ResponseCache::new(),
            replicator,
            shutdown: shutdown.clone(),
            counters: Counters::default(),
            metrics: ServerMetrics::new(),
        });
        let app = NormalizePathLayer::trim_trailing_slash().layer(router(node.clone()));
        let mut stop = shutdown.clone();
        let serve = tokio::spawn(async move {
            axum::serve(
                listener,
                axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
            )
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        });
        let evictor = tokio::spawn(evict_loop(node.clone(), shutdown));
        tracing::info!("registry listening on http://{addr}");
        Ok(Self {
            node,
            addr,
            shutdown: shutdown_tx,
            serve,
            evictor,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The Eureka service URL of this node: `http://ADDR/eureka/v2`.
    #[must_use]
    pub fn service_url(&self) -> String {
        format!("http://{}/eureka/v2", self.addr)
    }

    /// The registry core (for embedding and tests).
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.node.registry
    }

    /// Requests served so far, by kind.
    #[must_use]
    pub fn counters(&self) -> ServerCounters {
        self.node.counters.snapshot()
    }

    /// Tasks dropped because a peer's queue was full, per peer URL.
    #[must_use]
    pub fn replication_dropped(&self) -> Vec<(String, u64)> {
        self.node
            .replicator
            .as_ref()
            .map(Replicator::dropped)
            .unwrap_or_default()
    }

    /// Stops accepting, finishes in-flight requests (long-polls return at once), stops
    /// the eviction task and gives queued replication up to `grace` to reach the peers.
    pub async fn shutdown(self, grace: Duration) -> Result<()> {
        let _ = self.shutdown.send(true);
        let deadline = Instant::now() + grace;
        let served = tokio::time::timeout(grace, self.serve).await;
        self.evictor.abort();
        let _ = self.evictor.await;
        if let Some(r) = &self.node.replicator {
            r.shutdown(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        match served {
            Ok(Ok(r)) => r.map_err(Into::into),
            Ok(Err(join)) => Err(std::io::Error::other(join.to_string()).into()),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "in-flight requests outlived the grace",
            )
            .into()),
        }
    }
}

/// The routes, under both `/eureka` and `/eureka/v2`, plus the dashboard at `/`.
fn router(node: Arc<Node>) -> Router {
    use handlers::*;
    let api = Router::new()
        .route("/apps", get(all_apps))
        .route("/apps/delta", get(delta))
        .route("/apps/{app}", get(one_app).post(register))
        .route(
            "/apps/{app}/{id}",
            get(one_instance).put(renew).delete(cancel),
        )
        .route(
            "/apps/{app}/{id}/status",
            put(status_update).delete(status_delete),
        )
        .route("/apps/{app}/{id}/metadata", put(metadata_update))
        .route("/instances/{id}", get(instance_by_id))
        .route("/vips/{vip}", get(vip))
        .route("/svips/{svip}", get(svip))
        .layer(DefaultBodyLimit::max(node.cfg.max_body_bytes))
        .route(
            "/peerreplication/batch",
            post(replication_batch).layer(DefaultBodyLimit::max(node.cfg.max_batch_body_bytes)),
        );
    let mut app = Router::new()
        .route("/", get(dashboard::page))
        .nest("/eureka", api.clone())
        .nest("/eureka/v2", api)
        .fallback(not_found);
    // Without credentials configured, mutations skip the auth layer altogether.
    if node.cfg.auth.is_some() {
        app = app.layer(axum::middleware::from_fn_with_state(
            node.clone(),
            require_auth,
        ));
    }
    app.layer(RequestBodyLimitLayer::new(node.cfg.max_batch_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn(check_content_encoding))
        .layer(CompressionLayer::new())
        .with_state(node)
}

async fn evict_loop(node: Arc<Node>, mut shutdown: watch::Receiver<bool>) {
    let interval = node.cfg.registry.eviction_interval;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut clock = EvictionClock::default();
    let origin = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let comp = clock.tick(
            origin.elapsed().as_millis() as u64,
            interval.as_millis() as u64,
        );
        // The core counts and logs what it evicts (WARN).
        let _ = node.registry.evict(node.now(), comp);
    }
}
