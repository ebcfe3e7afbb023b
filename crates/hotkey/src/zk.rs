//! Publishing hot keys to ZooKeeper ([`ZkPublisher`]) and mirroring them in
//! every instance ([`HotKeySet::watch`]).
//!
//! # Layout
//!
//! ```text
//! <root>                      persistent, ACL: digest(detector) ALL, world READ
//! <root>/<app>                persistent, same ACL; one per application
//! <root>/<app>/k-<key>        persistent, same ACL; one per hot key, data =
//!                             {"rule":..,"rate":..,"detected_at_ms":..}
//! ```
//!
//! One znode per key rather than one znode holding the whole set, because:
//! * a watcher learns *which* key changed from the event path alone (the key
//!   is encoded in the name, see [`encode_key`](crate::encode_key)), with no
//!   read and no diffing of a large blob on every change;
//! * the set is not capped by the 1 MB znode limit (`jute.maxbuffer`);
//! * writes are still coalesced: all creations and deletions of one interval
//!   go in **one** `multi` transaction, at most one per app per
//!   `min_write_interval` (100 ms), and capped at `max_ops_per_write`
//!   operations, so a surge of hot keys costs ZooKeeper a bounded write rate
//!   (the failure that made JD.com drop ZooKeeper).
//!
//! Key znodes are persistent, not ephemeral: if the detector's session is
//! lost, instances keep serving the published hot keys from their local
//! caches (failing static) instead of all keys turning cold at once and
//! hitting Redis together. While disconnected the publisher keeps only the
//! latest desired set (no backlog); after a reconnect, or a new session after
//! expiry, it re-reads the app's children and writes the difference. A
//! publisher that starts (or restarts) adopts the keys it finds and removes
//! them after `adopt_grace` unless its own detector finds them hot.
//!
//! One publisher per app: it treats every key znode of the app as its own,
//! so two publishers of one app (say, two detectors of one Kafka consumer
//! group) would each remove the other's keys after a re-read or the grace.
//! Several detectors feed one publisher, or publish under different apps.
//!
//! # Access control
//!
//! The publisher authenticates with `digest` credentials and creates every
//! node with the ACL `auth:ALL` (expanded by the server to its digest id)
//! plus `world:anyone READ`: only the detector can write, every instance can
//! read without credentials. An existing node whose ACL lets `world` write is
//! refused with [`Error::AclTooOpen`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zookeeper_client::{
    Acl, AddWatchMode, AuthId, Client, CreateMode, EventType, MultiWriteError, Permission,
    SessionState,
};

use crate::detector::{Detector, HotKey};
use crate::error::{Error, Result};
use crate::hotset::{HotKeySet, HotKeySetUpdater, SetChange};
use crate::metrics::{PublisherMetrics, WatchMetrics};
use crate::znode::{decode_key, encode_key, validate_root, validate_segment};

/// Digest credentials of the detector (the only writer).
#[derive(Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    /// User name.
    pub user: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for DigestCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestCredentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Where and how hot keys are kept in ZooKeeper.
#[derive(Debug, Clone, PartialEq)]
pub struct ZkConfig {
    /// Connect string, e.g. `127.0.0.1:2181` (comma-separated for an ensemble).
    pub connect: String,
    /// Root znode of all apps' hot keys.
    pub root: String,
    /// This application's name: its keys live under `<root>/<app>`.
    pub app: String,
    /// Session timeout asked of the server (it clamps it to 2..20 ticks).
    pub session_timeout: Duration,
    /// How long one connection attempt may take.
    pub connection_timeout: Duration,
    /// The detector's credentials: required to publish, unused to watch.
    pub credentials: Option<DigestCredentials>,
    /// At most one write transaction per this interval (default 100 ms).
    pub min_write_interval: Duration,
    /// Operations in one transaction at most; the rest waits for the next.
    pub max_ops_per_write: usize,
    /// Longer keys are not published (and counted in the stats).
    pub max_key_len: usize,
    /// How long a starting publisher keeps the keys it found.
    pub adopt_grace: Duration,
}

impl Default for ZkConfig {
    fn default() -> Self {
        ZkConfig {
            connect: "127.0.0.1:2181".into(),
            root: "/hotkeys".into(),
            app: "default".into(),
            session_timeout: Duration::from_secs(6),
            connection_timeout: Duration::from_secs(2),
            credentials: None,
            min_write_interval: Duration::from_millis(100),
            max_ops_per_write: 500,
            max_key_len: 1024,
            adopt_grace: Duration::from_secs(5),
        }
    }
}

impl ZkConfig {
    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.connect.trim().is_empty() {
            return Err(Error::config(
                "connect",
                &self.connect,
                "must name at least one server",
            ));
        }
        validate_root("root", &self.root)?;
        validate_segment("app", &self.app)?;
        // Upper bounds keep every deadline computed from these representable.
        if !(Duration::from_millis(100)..=HOUR).contains(&self.session_timeout) {
            return Err(Error::config(
                "session_timeout",
                self.session_timeout,
                "must be in 100 ms ..= 1 h",
            ));
        }
        if !(Duration::from_millis(1)..=HOUR).contains(&self.connection_timeout) {
            return Err(Error::config(
                "connection_timeout",
                self.connection_timeout,
                "must be in 1 ms ..= 1 h",
            ));
        }
        if !(Duration::from_millis(10)..=HOUR).contains(&self.min_write_interval) {
            return Err(Error::config(
                "min_write_interval",
                self.min_write_interval,
                "must be in 10 ms ..= 1 h",
            ));
        }
        if self.adopt_grace > 24 * HOUR {
            return Err(Error::config(
                "adopt_grace",
                self.adopt_grace,
                "must be at most 1 day",
            ));
        }
        if !(1..=10_000).contains(&self.max_ops_per_write) {
            return Err(Error::config(
                "max_ops_per_write",
                self.max_ops_per_write,
                "must be in 1..=10000",
            ));
        }
        if !(1..=64 * 1024).contains(&self.max_key_len) {
            return Err(Error::config(
                "max_key_len",
                self.max_key_len,
                "must be in 1..=65536",
            ));
        }
        if let Some(c) = &self.credentials {
            if c.user.is_empty() || c.user.contains(':') {
                return Err(Error::config(
                    "credentials.user",
                    &c.user,
                    "must be non-empty without ':'",
                ));
            }
            if c.password.is_empty() {
                return Err(Error::config(
                    "credentials.password",
                    "<redacted>",
                    "must be non-empty",
                ));
            }
        }
        Ok(())
    }

    /// `<root>/<app>`.
    #[must_use]
    pub fn app_path(&self) -> String {
        format!("{}/{}", self.root, self.app)
    }

    async fn connect(&self, auth: bool) -> Result<Client> {
        let mut connector = Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(self.connection_timeout);
        if let (true, Some(c)) = (auth, &self.credentials) {
            connector =
                connector.with_auth("digest", format!("{}:{}", c.user, c.password).as_bytes());
        }
        let deadline = self.connection_timeout + self.session_timeout;
        match tokio::time::timeout(deadline, connector.connect(&self.connect)).await {
            Ok(r) => r.map_err(|source| Error::ZooKeeper {
                op: "connect",
                path: self.connect.clone(),
                source,
            }),
            Err(_) => Err(Error::Timeout {
                op: "zookeeper connect",
                after: deadline,
            }),
        }
    }
}

fn zk_err<'a>(
    op: &'static str,
    path: &'a str,
) -> impl FnOnce(zookeeper_client::Error) -> Error + 'a {
    move |source| Error::ZooKeeper {
        op,
        path: path.to_owned(),
        source,
    }
}

/// The data of a key znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyNodeData {
    /// Rule that fired.
    pub rule: String,
    /// Count in the window at detection.
    pub rate: u64,
    /// Detection time (ms since the epoch).
    pub detected_at_ms: u64,
}

/// Counters of a [`ZkPublisher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PublisherStats {
    /// Write transactions committed (each one `multi`).
    pub writes: u64,
    /// Key znodes created.
    pub created: u64,
    /// Key znodes deleted.
    pub deleted: u64,
    /// Transactions refused because the znodes were not as expected (then
    /// the children are re-read).
    pub conflicts: u64,
    /// Failed attempts (connection loss, expiry, ...).
    pub errors: u64,
    /// New sessions opened after the first.
    pub reconnects: u64,
    /// Hot keys not published because they exceed `max_key_len`.
    pub skipped_long_keys: u64,
    /// Keys published right now.
    pub published: u64,
}

/// What one [`ZkPublisher::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum SyncOutcome {
    /// ZooKeeper already held the desired set.
    UpToDate,
    /// One transaction created and deleted these many key znodes; `pending`
    /// changes were left for the next call (over `max_ops_per_write`).
    Written {
        /// Znodes created.
        created: usize,
        /// Znodes deleted.
        deleted: usize,
        /// Changes left over.
        pending: usize,
    },
    /// The znodes were not as expected; the publisher re-read them and the
    /// next call writes the difference.
    Conflict,
}

/// Writes the detector's hot set to ZooKeeper, coalesced.
///
/// Use [`ZkPublisher::spawn`] to run it next to a [`Detector`]; or call
/// [`sync`](Self::sync) yourself.
pub struct ZkPublisher {
    cfg: ZkConfig,
    app_path: String,
    client: Option<Client>,
    /// What we believe is in ZooKeeper.
    published: HashSet<Vec<u8>>,
    /// Keys found at start-up, kept until the instant.
    adopted: HashMap<Vec<u8>, Instant>,
    reread: bool,
    last_write: Option<Instant>,
    stats: PublisherStats,
    metrics: PublisherMetrics,
}

impl fmt::Debug for ZkPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkPublisher")
            .field("app_path", &self.app_path)
            .field("published", &self.published.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The upper bound of most configured intervals.
const HOUR: Duration = Duration::from_secs(3600);

/// Request size one write transaction stays under.
const MAX_MULTI_BYTES: usize = 512 * 1024;

fn node_acls() -> [Acl; 2] {
    [
        Acl::new(Permission::ALL, AuthId::authed()),
        Acl::new(Permission::READ, AuthId::anyone()),
    ]
}

impl ZkPublisher {
    /// Connects with the configured credentials, creates the layout if
    /// needed (checking the ACL of existing nodes) and adopts the keys
    /// already published.
    pub async fn connect(cfg: ZkConfig) -> Result<Self> {
        cfg.validate()?;
        if cfg.credentials.is_none() {
            return Err(Error::config(
                "credentials",
                "None",
                "the publisher needs digest credentials",
            ));
        }
        let mut p = ZkPublisher {
            app_path: cfg.app_path(),
            metrics: PublisherMetrics::new(&cfg.app),
            cfg,
            client: None,
            published: HashSet::new(),
            adopted: HashMap::new(),
            reread: true,
            last_write: None,
            stats: PublisherStats::default(),
        };
        p.ensure_session().await?;
        let until = Instant::now() + p.cfg.adopt_grace;
        p.adopted = p.published.iter().map(|k| (k.clone(), until)).collect();
        if !p.adopted.is_empty() {
            info!(app = %p.app_path, keys = p.adopted.len(), "adopted published hot keys");
        }
        Ok(p)
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ZkConfig {
        &self.cfg
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> PublisherStats {
        PublisherStats {
            published: self.published.len() as u64,
            ..self.stats
        }
    }

    /// When the last write transaction was sent (the coalescing interval
    /// counts from there).
    #[must_use]
    pub fn last_write_sent(&self) -> Option<Instant> {
        self.last_write
    }

    /// The keys believed published, sorted.
    #[must_use]
    pub fn published(&self) -> Vec<Vec<u8>> {
        let mut v: Vec<_> = self.published.iter().cloned().collect();
        v.sort();
        v
    }

    async fn ensure_session(&mut self) -> Result<()> {
        let alive = self
            .client
            .as_ref()
            .is_some_and(|c| !c.state().is_terminated());
        if !alive {
            if self.client.take().is_some() {
                self.stats.reconnects += 1;
                self.metrics.reconnects.increment(1);
                warn!(app = %self.app_path, "zookeeper session lost; opening a new one");
            }
            let client = self.cfg.connect(true).await?;
            ensure_layout(&client, &self.cfg).await?;
            self.client = Some(client);
            self.reread = true;
        }
        if self.reread {
            let client = self.client.as_ref().expect("session ensured above");
            self.published = read_keys(client, &self.app_path).await?.0;
            self.reread = false;
        }
        Ok(())
    }

    /// Makes ZooKeeper hold `hot` (plus adopted keys still in their grace
    /// period) with at most one write transaction. Waits first if the last
    /// write was less than `min_write_interval` ago, so that whatever the
    /// caller does, writes stay coalesced.
    pub async fn sync(&mut self, hot: &[HotKey]) -> Result<SyncOutcome> {
        let result = self.sync_inner(hot).await;
        self.metrics.published.set(self.published.len() as f64);
        if result.is_err() {
            self.stats.errors += 1;
            self.metrics.errors.increment(1);
            // The transaction may or may not have been applied.
            self.reread = true;
        }
        result
    }

    async fn sync_inner(&mut self, hot: &[HotKey]) -> Result<SyncOutcome> {
        self.ensure_session().await?;
        let now = Instant::now();
        self.adopted.retain(|_, until| *until > now);
        let mut desired: HashMap<&[u8], Option<&HotKey>> = HashMap::with_capacity(hot.len());
        let mut skipped = 0;
        for h in hot {
            if h.key.len() > self.cfg.max_key_len {
                skipped += 1;
                continue;
            }
            desired.insert(&h.key, Some(h));
        }
        for k in self.adopted.keys() {
            desired.entry(k).or_insert(None);
        }
        self.stats.skipped_long_keys += skipped;
        self.metrics.skipped_long_keys.increment(skipped);
        let creates: Vec<(&[u8], Option<&HotKey>)> = desired
            .iter()
            .filter(|(k, _)| !self.published.contains(**k))
            .map(|(k, h)| (*k, *h))
            .collect();
        let deletes: Vec<&Vec<u8>> = self
            .published
            .iter()
            .filter(|k| !desired.contains_key(k.as_slice()))
            .collect();
        if creates.is_empty() && deletes.is_empty() {
            return Ok(SyncOutcome::UpToDate);
        }
        let total = creates.len() + deletes.len();
        // Bounded by operations and by bytes (a request must stay well below
        // the server's 1 MiB jute.maxbuffer): creations first, they matter most.
        let max = self.cfg.max_ops_per_write;
        let op_bytes = |key: &[u8]| self.app_path.len() + 3 * key.len() + 160;
        let mut budget = MAX_MULTI_BYTES;
        let fits = |key: &[u8], budget: &mut usize| {
            let cost = op_bytes(key);
            let ok = cost <= *budget;
            *budget = budget.saturating_sub(cost);
            ok
        };
        let n_creates = creates
            .iter()
            .take(max)
            .take_while(|(k, _)| fits(k, &mut budget))
            .count();
        let creates = &creates[..n_creates];
        let n_deletes = deletes
            .iter()
            .take(max - n_creates)
            .take_while(|k| fits(k, &mut budget))
            .count();
        let deletes = &deletes[..n_deletes];

        if let Some(last) = self.last_write {
            tokio::time::sleep_until(last + self.cfg.min_write_interval).await;
        }
        let client = self.client.as_ref().expect("session ensured above");
        let acls = node_acls();
        let options = CreateMode::Persistent.with_acls((&acls[..]).into());
        let mut multi = client.new_multi_writer();
        let mut paths = Vec::with_capacity(creates.len() + deletes.len());
        for (key, hot) in creates {
            let path = format!("{}/{}", self.app_path, encode_key(key));
            let data = hot.map_or(Vec::new(), |h| {
                serde_json::to_vec(&KeyNodeData {
                    rule: h.rule.clone(),
                    rate: h.rate,
                    detected_at_ms: h.detected_at_ms,
                })
                .expect("plain struct serializes")
            });
            multi
                .add_create(&path, &data, &options)
                .map_err(zk_err("create", &path))?;
            paths.push(path);
        }
        for key in deletes {
            let path = format!("{}/{}", self.app_path, encode_key(key));
            multi
                .add_delete(&path, None)
                .map_err(zk_err("delete", &path))?;
            paths.push(path);
        }
        self.last_write = Some(Instant::now());
        match multi.commit().await {
            Ok(_) => {
                self.stats.writes += 1;
                self.stats.created += creates.len() as u64;
                self.stats.deleted += deletes.len() as u64;
                self.metrics.writes.increment(1);
                self.metrics.created.increment(creates.len() as u64);
                self.metrics.deleted.increment(deletes.len() as u64);
                let (created, deleted) = (creates.len(), deletes.len());
                let new: Vec<Vec<u8>> = creates.iter().map(|(k, _)| k.to_vec()).collect();
                let gone: Vec<Vec<u8>> = deletes.iter().map(|k| (*k).clone()).collect();
                self.published.extend(new);
                for k in gone {
                    self.published.remove(&k);
                }
                debug!(app = %self.app_path, created, deleted, "published hot keys");
                Ok(SyncOutcome::Written {
                    created,
                    deleted,
                    pending: total - created - deleted,
                })
            }
            Err(MultiWriteError::OperationFailed { index, source }) => {
                self.stats.conflicts += 1;
                self.metrics.conflicts.increment(1);
                // The index comes from the server's answer: not trusted as an index.
                let path = paths.get(index).unwrap_or(&self.app_path).clone();
                warn!(app = %self.app_path, %path, error = %source, "hot-key transaction refused; re-reading");
                if source == zookeeper_client::Error::NoAuth {
                    return Err(Error::ZooKeeper {
                        op: "multi",
                        path,
                        source,
                    });
                }
                self.reread = true;
                Ok(SyncOutcome::Conflict)
            }
            Err(MultiWriteError::RequestFailed { source }) => Err(Error::ZooKeeper {
                op: "multi",
                path: self.app_path.clone(),
                source,
            }),
        }
    }

    /// Runs the publisher next to `detector`: every `min_write_interval` it
    /// syncs ZooKeeper to [`Detector::hot_keys`], retrying failures on the
    /// next interval. Also ticks the detector when `tick` is true (so one
    /// task drives cool-down and publication).
    pub fn spawn(self, detector: Arc<Detector>, tick: bool) -> PublisherHandle {
        let shared = Arc::new(PublisherShared::default());
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task_shared = Arc::clone(&shared);
        let mut publisher = self;
        let task = tokio::spawn(async move {
            let mut every =
                tokio::time::interval(publisher.cfg.min_write_interval.min(detector.tick_period()));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                if tick {
                    detector.tick();
                }
                let hot = detector.hot_keys();
                match publisher.sync(&hot).await {
                    Ok(SyncOutcome::Written { .. }) => {
                        task_shared.write_seq.fetch_add(1, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "hot-key publication failed; retrying"),
                }
                task_shared
                    .connected
                    .store(publisher.client.is_some(), Ordering::Relaxed);
                *task_shared.stats.lock() = publisher.stats();
            }
        });
        PublisherHandle {
            shared,
            stop: stop_tx,
            task: Some(task),
        }
    }
}

#[derive(Default)]
struct PublisherShared {
    stats: parking_lot::Mutex<PublisherStats>,
    write_seq: AtomicU64,
    connected: AtomicBool,
}

/// A running [`ZkPublisher`] (see [`ZkPublisher::spawn`]); dropping it stops
/// the task. Published keys stay in ZooKeeper.
pub struct PublisherHandle {
    shared: Arc<PublisherShared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for PublisherHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublisherHandle")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl PublisherHandle {
    /// Counters as of the last interval.
    #[must_use]
    pub fn stats(&self) -> PublisherStats {
        *self.shared.stats.lock()
    }

    /// Stops the task and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PublisherHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Creates `<root>` and `<root>/<app>` with the detector's ACL, or checks
/// that existing ones let nobody else write.
async fn ensure_layout(client: &Client, cfg: &ZkConfig) -> Result<()> {
    let acls = node_acls();
    let options = CreateMode::Persistent.with_acls((&acls[..]).into());
    let app_path = cfg.app_path();
    client
        .mkdir(&app_path, &options)
        .await
        .map_err(zk_err("mkdir", &app_path))?;
    for path in [cfg.root.as_str(), app_path.as_str()] {
        let (acl, _) = client
            .get_acl(path)
            .await
            .map_err(zk_err("get_acl", path))?;
        for a in acl {
            let writes = a.permission()
                & (Permission::WRITE | Permission::CREATE | Permission::DELETE | Permission::ADMIN);
            if a.scheme() == "world" && writes != Permission::NONE {
                return Err(Error::AclTooOpen {
                    path: path.to_owned(),
                    id: format!("{}:{}", a.scheme(), a.id()),
                    grant: a.permission().to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The keys under `app_path` (empty if it does not exist) and how many
/// children could not be decoded.
async fn read_keys(client: &Client, app_path: &str) -> Result<(HashSet<Vec<u8>>, u64)> {
    let children = match client.list_children(app_path).await {
        Ok(c) => c,
        Err(zookeeper_client::Error::NoNode) => Vec::new(),
        Err(source) => {
            return Err(Error::ZooKeeper {
                op: "list_children",
                path: app_path.to_owned(),
                source,
            });
        }
    };
    let mut bad = 0;
    let keys = children
        .iter()
        .filter_map(|name| match decode_key(name) {
            Ok(k) => Some(k),
            Err(e) => {
                bad += 1;
                warn!(error = %e, "ignoring a child that is not a hot key");
                None
            }
        })
        .collect();
    Ok((keys, bad))
}

/// Counters of a [`HotKeyWatch`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WatchStats {
    /// Full re-reads of the app's children (the first one included).
    pub resyncs: u64,
    /// Sessions opened after the first (after expiry).
    pub reconnects: u64,
    /// Node events applied incrementally.
    pub events: u64,
    /// Children whose names are not encoded keys (ignored).
    pub bad_names: u64,
    /// Whether the session is connected right now.
    pub connected: bool,
}

struct WatchShared {
    resyncs: AtomicU64,
    reconnects: AtomicU64,
    events: AtomicU64,
    bad_names: AtomicU64,
    connected: AtomicBool,
    metrics: WatchMetrics,
}

impl WatchShared {
    fn new(app: &str) -> Self {
        WatchShared {
            resyncs: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            events: AtomicU64::new(0),
            bad_names: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            metrics: WatchMetrics::new(app),
        }
    }

    fn count_bad_names(&self, n: u64) {
        self.bad_names.fetch_add(n, Ordering::Relaxed);
        self.metrics.bad_names.increment(n);
    }
}

/// A [`HotKeySet`] kept in sync with ZooKeeper by a background task; see
/// [`HotKeySet::watch`]. Dropping it stops the task (the set keeps its last
/// contents).
pub struct HotKeyWatch {
    set: HotKeySet,
    shared: Arc<WatchShared>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for HotKeyWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HotKeyWatch")
            .field("set", &self.set)
            .field("stats", &self.stats())
            .finish()
    }
}

impl HotKeyWatch {
    /// The set (clone it freely).
    #[must_use]
    pub fn set(&self) -> HotKeySet {
        self.set.clone()
    }

    /// Counters.
    #[must_use]
    pub fn stats(&self) -> WatchStats {
        let s = &self.shared;
        WatchStats {
            resyncs: s.resyncs.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            bad_names: s.bad_names.load(Ordering::Relaxed),
            connected: s.connected.load(Ordering::Relaxed),
        }
    }
}

impl Drop for HotKeyWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl HotKeySet {
    /// A set that mirrors `<root>/<app>` in ZooKeeper.
    ///
    /// It registers a persistent recursive watch on the app node, then reads
    /// its children; from then on each created or deleted key znode updates
    /// the set. On a disconnect the set keeps its contents; once connected
    /// again it re-reads every child (events may have been missed while
    /// disconnected, ZOOKEEPER-4698), and after a session expiry it opens a
    /// new session, watches again and re-reads. Returns once the first read
    /// is done, or the error of the first connection attempt.
    pub async fn watch(cfg: ZkConfig) -> Result<HotKeyWatch> {
        cfg.validate()?;
        let (set, updater) = HotKeySet::manual();
        let shared = Arc::new(WatchShared::new(&cfg.app));
        let client = cfg.connect(false).await?;
        let app_path = cfg.app_path();
        let watcher = client
            .watch(&app_path, AddWatchMode::PersistentRecursive)
            .await
            .map_err(zk_err("watch", &app_path))?;
        resync(&client, &app_path, &updater, &shared).await?;
        shared.connected.store(true, Ordering::Relaxed);
        let task_shared = Arc::clone(&shared);
        let task = tokio::spawn(watch_loop(cfg, client, watcher, updater, task_shared));
        Ok(HotKeyWatch {
            set,
            shared,
            task: Some(task),
        })
    }
}

async fn resync(
    client: &Client,
    app_path: &str,
    updater: &HotKeySetUpdater,
    shared: &WatchShared,
) -> Result<()> {
    let (keys, bad) = read_keys(client, app_path).await?;
    shared.count_bad_names(bad);
    updater.replace(keys);
    shared.resyncs.fetch_add(1, Ordering::Relaxed);
    shared.metrics.resyncs.increment(1);
    Ok(())
}

async fn watch_loop(
    cfg: ZkConfig,
    mut client: Client,
    mut watcher: zookeeper_client::PersistentWatcher,
    updater: HotKeySetUpdater,
    shared: Arc<WatchShared>,
) {
    let app_path = cfg.app_path();
    let child_prefix = format!("{app_path}/");
    let mut backoff = Duration::from_millis(50);
    loop {
        // Serve events until the session ends.
        loop {
            let event = watcher.changed().await;
            match event.event_type {
                EventType::Session => match event.session_state {
                    SessionState::Disconnected => {
                        shared.connected.store(false, Ordering::Relaxed);
                        debug!(app = %app_path, "zookeeper disconnected; keeping the last hot set");
                    }
                    SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                        shared.connected.store(true, Ordering::Relaxed);
                        // zookeeper-client 0.11.2 does not re-register
                        // persistent watches on reconnect (`resend_watches`
                        // computes `index.max(index)`, so it sends the old
                        // SetWatches without the persistent lists). Add the
                        // watch again; the server keeps one per session and
                        // path, and dropping the old watcher afterwards
                        // sends no removal while the new one exists.
                        match client
                            .watch(&app_path, AddWatchMode::PersistentRecursive)
                            .await
                        {
                            Ok(w) => watcher = w,
                            Err(e) => warn!(error = %e, "re-adding the hot-key watch failed"),
                        }
                        // Events may have been lost while disconnected.
                        if let Err(e) = resync(&client, &app_path, &updater, &shared).await {
                            warn!(error = %e, "re-reading hot keys after reconnect failed");
                        }
                    }
                    _ => break, // terminal: expired, closed or auth failed
                },
                EventType::NodeCreated | EventType::NodeDeleted => {
                    shared.events.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.events.increment(1);
                    if event.path == app_path {
                        if event.event_type == EventType::NodeDeleted {
                            updater.replace(std::iter::empty::<&[u8]>());
                        } else if let Err(e) = resync(&client, &app_path, &updater, &shared).await {
                            warn!(error = %e, "reading hot keys failed");
                        }
                        continue;
                    }
                    let Some(name) = event.path.strip_prefix(&child_prefix) else {
                        continue;
                    };
                    if name.contains('/') {
                        continue;
                    }
                    match decode_key(name) {
                        Ok(key) if event.event_type == EventType::NodeCreated => {
                            updater.apply([SetChange::Insert(key)]);
                        }
                        Ok(key) => {
                            updater.apply([SetChange::Remove(key)]);
                        }
                        Err(e) => {
                            shared.count_bad_names(1);
                            warn!(error = %e, "ignoring a child that is not a hot key");
                        }
                    }
                }
                EventType::NodeDataChanged | EventType::NodeChildrenChanged => {}
            }
        }
        // The session is over: open a new one, watch again, re-read.
        shared.connected.store(false, Ordering::Relaxed);
        warn!(app = %app_path, "zookeeper session ended; reconnecting");
        loop {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            let attempt = async {
                let c = cfg.connect(false).await?;
                let w = c
                    .watch(&app_path, AddWatchMode::PersistentRecursive)
                    .await
                    .map_err(zk_err("watch", &app_path))?;
                resync(&c, &app_path, &updater, &shared).await?;
                Ok::<_, Error>((c, w))
            };
            match attempt.await {
                Ok((c, w)) => {
                    client = c;
                    watcher = w;
                    backoff = Duration::from_millis(50);
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    shared.metrics.reconnects.increment(1);
                    shared.connected.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => debug!(error = %e, "reconnecting to zookeeper failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated_and_errors_name_the_field() {
        ZkConfig::default().validate().unwrap();
        let cases: [(&str, ZkConfig); 6] = [
            (
                "session_timeout",
                ZkConfig {
                    session_timeout: Duration::MAX,
                    ..ZkConfig::default()
                },
            ),
            (
                "connection_timeout",
                ZkConfig {
                    connection_timeout: Duration::ZERO,
                    ..ZkConfig::default()
                },
            ),
            (
                "min_write_interval",
                ZkConfig {
                    min_write_interval: Duration::MAX,
                    ..ZkConfig::default()
                },
            ),
            (
                "adopt_grace",
                ZkConfig {
                    adopt_grace: Duration::MAX,
                    ..ZkConfig::default()
                },
            ),
            (
                "root",
                ZkConfig {
                    root: "hotkeys".into(),
                    ..ZkConfig::default()
                },
            ),
            (
                "credentials.user",
                ZkConfig {
                    credentials: Some(DigestCredentials {
                        user: "a:b".into(),
                        password: "p".into(),
                    }),
                    ..ZkConfig::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
    }
}
