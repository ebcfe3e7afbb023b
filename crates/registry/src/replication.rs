//! Peer replication, Eureka's AP way: each node applies a client's request, then
//! forwards it to every peer in batches marked with the replication header; a peer
//! applies a replicated request and never forwards it again. A starting node first
//! copies the registry from a peer.
//!
//! Guarantees, precisely: replication is best effort and asynchronous. A node answers
//! its client before its peers have the change; a peer that is down or slow receives
//! it later (retried with backoff while the node runs, up to `replication_queue` tasks
//! per peer; beyond that tasks are dropped and counted). Heartbeats older than 30 s are
//! not resent. Losses heal: a heartbeat the peer does not know answers 404 and the
//! sender replicates a registration in its place, and a restarted node syncs on start.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::clock::Clock;
use crate::codec::{self, Format, write_instance_json, write_json_string};
use crate::config::bad;
use crate::error::{Error, Result};
use crate::metrics::PeerMetrics;
use crate::model::{InstanceInfo, LeaseInfo, Millis, Status};
use crate::registry::{Registry, Renewal};
use crate::server::{REPLICATION_HEADER, ServerConfig};

/// Heartbeats older than this are not worth sending any more.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(30);

/// One replicated action (Eureka's `PeerEurekaNode` actions).
#[derive(Debug, Clone)]
pub(crate) enum Task {
    Register(Arc<InstanceInfo>),
    Heartbeat {
        app: String,
        id: String,
        dirty: Millis,
        status: Status,
        overridden: Status,
    },
    Cancel {
        app: String,
        id: String,
    },
    StatusUpdate {
        app: String,
        id: String,
        status: Status,
        dirty: Option<Millis>,
    },
    DeleteStatusOverride {
        app: String,
        id: String,
        status: Option<Status>,
        dirty: Option<Millis>,
    },
}

impl Task {
    pub(crate) fn heartbeat(info: &InstanceInfo) -> Self {
        Task::Heartbeat {
            app: info.app.clone(),
            id: info.instance_id.clone(),
            dirty: info.last_dirty_timestamp,
            status: info.status,
            overridden: info.overridden_status,
        }
    }

    fn write(&self, out: &mut String) {
        let (action, app, id) = match self {
            Task::Register(i) => ("Register", i.app.as_str(), i.instance_id.as_str()),
            Task::Heartbeat { app, id, .. } => ("Heartbeat", app.as_str(), id.as_str()),
            Task::Cancel { app, id } => ("Cancel", app.as_str(), id.as_str()),
            Task::StatusUpdate { app, id, .. } => ("StatusUpdate", app.as_str(), id.as_str()),
            Task::DeleteStatusOverride { app, id, .. } => {
                ("DeleteStatusOverride", app.as_str(), id.as_str())
            }
        };
        out.push_str("{\"action\":\"");
        out.push_str(action);
        out.push_str("\",\"appName\":");
        write_json_string(out, app);
        out.push_str(",\"id\":");
        write_json_string(out, id);
        let field = |out: &mut String, name: &str, v: &str| {
            out.push_str(",\"");
            out.push_str(name);
            out.push_str("\":");
            write_json_string(out, v);
        };
        match self {
            Task::Register(info) => {
                field(
                    out,
                    "lastDirtyTimestamp",
                    &info.last_dirty_timestamp.to_string(),
                );
                out.push_str(",\"instanceInfo\":");
                write_instance_json(out, info, &info.lease_info);
            }
            Task::Heartbeat {
                dirty,
                status,
                overridden,
                ..
            } => {
                field(out, "lastDirtyTimestamp", &dirty.to_string());
                field(out, "status", status.as_str());
                field(out, "overriddenStatus", overridden.as_str());
            }
            Task::Cancel { .. } => {}
            Task::StatusUpdate { status, dirty, .. } => {
                field(out, "status", status.as_str());
                if let Some(d) = dirty {
                    field(out, "lastDirtyTimestamp", &d.to_string());
                }
            }
            Task::DeleteStatusOverride { status, dirty, .. } => {
                if let Some(s) = status {
                    field(out, "status", s.as_str());
                }
                if let Some(d) = dirty {
                    field(out, "lastDirtyTimestamp", &d.to_string());
                }
            }
        }
        out.push('}');
    }
}

/// Accepts `http://host:port` (then `/eureka/v2` is added) or a full service URL.
pub(crate) fn normalize_peer_url(url: &str) -> Result<String> {
    let parsed =
        reqwest::Url::parse(url.trim()).map_err(|_| bad("peers", url.to_owned(), "not a URL"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(bad(
            "peers",
            url.to_owned(),
            "expected http(s)://host:port[/eureka/v2]",
        ));
    }
    let s = parsed.as_str().trim_end_matches('/').to_owned();
    Ok(if parsed.path() == "/" || parsed.path().is_empty() {
        format!("{s}/eureka/v2")
    } else {
        s
    })
}

fn http_client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Error::Http {
            url: String::new(),
            source: e,
        })
}

#[derive(Debug)]
struct Peer {
    url: String,
    tx: Mutex<Option<mpsc::Sender<(Instant, Task)>>>,
    dropped: AtomicU64,
    metrics: PeerMetrics,
}

/// Per-peer queues and the workers that drain them.
#[derive(Debug)]
pub(crate) struct Replicator {
    peers: Vec<Arc<Peer>>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Replicator {
    pub(crate) fn start(
        urls: Vec<String>,
        registry: &Arc<Registry>,
        clock: &Arc<dyn Clock>,
        cfg: &ServerConfig,
    ) -> Result<Self> {
        let http = http_client()?;
        let mut peers = Vec::new();
        let mut workers = Vec::new();
        for url in urls {
            let (tx, rx) = mpsc::channel(cfg.replication_queue);
            let peer = Arc::new(Peer {
                metrics: PeerMetrics::new(&url),
                url,
                tx: Mutex::new(Some(tx)),
                dropped: AtomicU64::new(0),
            });
            let worker = Worker {
                peer: peer.clone(),
                rx,
                registry: registry.clone(),
                clock: clock.clone(),
                http: http.clone(),
                batch: cfg.replication_batch,
                auth: cfg.auth.clone(),
                pending: VecDeque::new(),
            };
            workers.push(tokio::spawn(worker.run()));
            peers.push(peer);
        }
        Ok(Self {
            peers,
            workers: Mutex::new(workers),
        })
    }

    /// Queues a task for every peer without waiting; a full queue drops it (counted).
    pub(crate) fn enqueue(&self, task: &Task) {
        let now = Instant::now();
        for p in &self.peers {
            let sent =
                p.tx.lock()
                    .as_ref()
                    .map(|tx| tx.try_send((now, task.clone())));
            if let Some(Err(mpsc::error::TrySendError::Full(_))) = sent {
                p.metrics.queue_full.increment(1);
                if p.dropped.fetch_add(1, Ordering::Relaxed) % 1000 == 0 {
                    tracing::warn!("replication queue to {} is full; dropping tasks", p.url);
                }
            }
        }
    }

    pub(crate) fn dropped(&self) -> Vec<(String, u64)> {
        self.peers
            .iter()
            .map(|p| (p.url.clone(), p.dropped.load(Ordering::Relaxed)))
            .collect()
    }

    /// Closes the queues and lets the workers drain them for up to `grace`.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        for p in &self.peers {
            p.tx.lock().take();
        }
        let workers: Vec<_> = self.workers.lock().drain(..).collect();
        let deadline = tokio::time::Instant::now() + grace;
        for mut w in workers {
            if tokio::time::timeout_at(deadline, &mut w).await.is_err() {
                w.abort();
            }
        }
    }
}

struct Worker {
    peer: Arc<Peer>,
    rx: mpsc::Receiver<(Instant, Task)>,
    registry: Arc<Registry>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    batch: usize,
    auth: Option<Auth>,
    /// Registrations to send in place of heartbeats the peer did not know.
    pending: VecDeque<(Instant, Task)>,
}

impl Worker {
    async fn run(mut self) {
        let url = format!("{}/peerreplication/batch", self.peer.url);
        loop {
            let mut batch: Vec<(Instant, Task)> = self.pending.drain(..).collect();
            if batch.is_empty() {
                match self.rx.recv().await {
                    Some(t) => batch.push(t),
                    None => return,
                }
            }
            while batch.len() < self.batch {
                match self.rx.try_recv() {
                    Ok(t) => batch.push(t),
                    Err(_) => break,
                }
            }
            self.peer.metrics.pending.set(self.rx.len() as f64);
            let mut backoff = Duration::from_millis(50);
            loop {
                let before = batch.len();
                batch.retain(|(at, t)| {
                    !matches!(t, Task::Heartbeat { .. }) || at.elapsed() < HEARTBEAT_MAX_AGE
                });
                self.peer
                    .metrics
                    .expired
                    .increment((before - batch.len()) as u64);
                if batch.is_empty() {
                    break;
                }
                match self.send(&url, &batch).await {
                    Ok(answers) => {
                        self.peer.metrics.batches.increment(1);
                        self.peer.metrics.tasks.increment(batch.len() as u64);
                        self.handle(&batch, &answers);
                        break;
                    }
                    Err(e) => {
                        self.peer.metrics.failures.increment(1);
                        tracing::debug!(
                            "replication to {} failed, retrying in {backoff:?}: {e}",
                            self.peer.url
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    async fn send(&self, url: &str, batch: &[(Instant, Task)]) -> Result<Vec<Value>> {
        let mut body = String::from("{\"replicationList\":[");
        for (i, (_, t)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            t.write(&mut body);
        }
        body.push_str("]}");
        let mut req = self
            .http
            .post(url)
            .header(REPLICATION_HEADER, "true")
            .header("Content-Type", "application/json")
            .header("Accept", "application/json")
            .body(body);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a.header_value());
        }
        let resp = req.send().await.map_err(|e| Error::Http {
            url: url.to_owned(),
            source: e,
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| Error::Http {
            url: url.to_owned(),
            source: e,
        })?;
        if status != 200 {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned();
            return Err(Error::Status {
                url: url.to_owned(),
                status,
                body,
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| Error::Malformed {
            format: "json",
            reason: e.to_string(),
        })?;
        Ok(v.get("responseList")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Eureka's `PeerEurekaNode` failure handling: 404 on a heartbeat → register there;
    /// 409 with a newer record → take the peer's record.
    fn handle(&mut self, batch: &[(Instant, Task)], answers: &[Value]) {
        for ((_, task), answer) in batch.iter().zip(answers) {
            let code = answer
                .get("statusCode")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            match (task, code) {
                (_, 200..=299) => {}
                (Task::Heartbeat { app, id, .. }, 404) => {
                    if let Some(inst) = self.registry.instance(app, id) {
                        self.pending
                            .push_back((Instant::now(), Task::Register(inst.info)));
                    }
                }
                (Task::Heartbeat { .. }, 409) => {
                    let newer = answer.get("responseEntity").map(codec::instance_from_value);
                    if let Some(Ok(info)) = newer
                        && let Err(e) = self.registry.register(info, true, self.clock.now())
                    {
                        tracing::debug!("could not take a peer's newer record: {e}");
                    }
                }
                (t, code) => tracing::debug!("peer {} answered {code} to {t:?}", self.peer.url),
            }
        }
    }
}

/// Applies a peer's batch; returns the `responseList` document.
pub(crate) fn apply_batch(registry: &Registry, body: &[u8], now: Millis) -> Result<Vec<u8>> {
    let v: Value = codec::parse_value(body, Format::Json)?;
    let list = v
        .get("replicationList")
        .and_then(Value::as_array)
        .ok_or(Error::MissingField("replicationList"))?;
    let mut out = String::from("{\"responseList\":[");
    for (i, item) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (code, entity) = apply_one(registry, item, now).unwrap_or_else(|e| {
            tracing::debug!("replicated task refused: {e}");
            (
                if matches!(e, Error::UnknownInstance { .. }) {
                    404
                } else {
                    400
                },
                None,
            )
        });
        out.push_str("{\"statusCode\":");
        out.push_str(&code.to_string());
        if let Some(info) = entity {
            out.push_str(",\"responseEntity\":");
            write_instance_json(&mut out, &info, &info.lease_info);
        }
        out.push('}');
    }
    out.push_str("]}");
    Ok(out.into_bytes())
}

fn apply_one(
    registry: &Registry,
    item: &Value,
    now: Millis,
) -> Result<(u16, Option<Arc<InstanceInfo>>)> {
    let text = |k: &'static str| -> Option<String> {
        match item.get(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    };
    let action = text("action").ok_or(Error::MissingField("action"))?;
    let app = text("appName").ok_or(Error::MissingField("appName"))?;
    let id = text("id").ok_or(Error::MissingField("id"))?;
    let dirty = match text("lastDirtyTimestamp") {
        Some(d) => Some(
            d.trim()
                .parse()
                .map_err(|_| Error::invalid("lastDirtyTimestamp", &d, "expected milliseconds"))?,
        ),
        None => None,
    };
    let status = text("status").map(|s| Status::parse(&s)).transpose()?;
    match action.as_str() {
        "Register" => {
            let info = codec::instance_from_value(
                item.get("instanceInfo")
                    .ok_or(Error::MissingField("instanceInfo"))?,
            )?;
            registry.register(info, true, now)?;
            Ok((200, None))
        }
        "Heartbeat" => match registry.renew(&app, &id, dirty, true, now)? {
            Renewal::Renewed => Ok((200, None)),
            Renewal::ClientNewer => Ok((404, None)),
            Renewal::ServerNewer(info) => Ok((409, Some(info))),
        },
        "Cancel" => registry
            .cancel_from(&app, &id, true, now)
            .map(|()| (200, None)),
        "StatusUpdate" => {
            let status = status.ok_or(Error::MissingField("status"))?;
            registry
                .set_status_override(&app, &id, status, dirty, now)
                .map(|()| (200, None))
        }
        "DeleteStatusOverride" => registry
            .delete_status_override(&app, &id, status, dirty, now)
            .map(|()| (200, None)),
        other => Err(Error::invalid(
            "action",
            other,
            "unknown replication action",
        )),
    }
}

/// Copies the registry from the peers (Eureka's `syncUp`), trying `sync_retries` more
/// times while none answers. Returns how many instances were registered.
pub(crate) async fn sync_from_peers(
    peers: &[String],
    registry: &Registry,
    clock: &dyn Clock,
    cfg: &ServerConfig,
) -> usize {
    let Ok(http) = http_client() else { return 0 };
    for attempt in 0..=cfg.sync_retries {
        let mut answered = false;
        let mut count = 0;
        for peer in peers {
            let url = format!("{peer}/apps");
            let fetched = async {
                let resp = http
                    .get(&url)
                    .header("Accept", "application/json")
                    .send()
                    .await
                    .map_err(|e| Error::Http {
                        url: url.clone(),
                        source: e,
                    })?;
                let status = resp.status().as_u16();
                let bytes = resp.bytes().await.map_err(|e| Error::Http {
                    url: url.clone(),
                    source: e,
                })?;
                if status != 200 {
                    return Err(Error::Status {
                        url: url.clone(),
                        status,
                        body: String::new(),
                    });
                }
                codec::decode_applications(&bytes, Format::Json)
            }
            .await;
            match fetched {
                Ok(apps) => {
                    answered = true;
                    for inst in apps.applications.iter().flat_map(|a| &a.instances) {
                        let mut info = (*inst.info).clone();
                        info.lease_info = LeaseInfo {
                            renewal_interval_secs: inst.lease.renewal_interval_secs,
                            duration_secs: inst.lease.duration_secs.max(1),
                            ..LeaseInfo::default()
                        };
                        if registry.register(info, true, clock.now()).is_ok() {
                            count += 1;
                        }
                    }
                }
                Err(e) => tracing::info!("sync from {peer} (attempt {}) failed: {e}", attempt + 1),
            }
        }
        if answered {
            return count;
        }
        if attempt < cfg.sync_retries {
            tokio::time::sleep(cfg.sync_retry_wait).await;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn peer_urls_are_normalized() {
        assert_eq!(
            normalize_peer_url("http://127.0.0.1:8762").unwrap(),
            "http://127.0.0.1:8762/eureka/v2"
        );
        assert_eq!(
            normalize_peer_url("http://h:1/eureka/").unwrap(),
            "http://h:1/eureka"
        );
        assert!(normalize_peer_url("ftp://h").is_err() && normalize_peer_url("nope").is_err());
    }

    #[test]
    fn batches_round_trip_through_the_receiving_side() {
        let sender = Registry::new(Config::default()).unwrap();
        let receiver = Registry::new(Config::default()).unwrap();
        let info = sender
            .register(InstanceInfo::new("a", "a1", "h", 80), false, 1_000)
            .unwrap();
        let tasks = [
            Task::heartbeat(&info),
            Task::Register(info.clone()),
            Task::heartbeat(&info),
            Task::StatusUpdate {
                app: "A".into(),
                id: "a1".into(),
                status: Status::OutOfService,
                dirty: None,
            },
            Task::Cancel {
                app: "A".into(),
                id: "nope".into(),
            },
            Task::DeleteStatusOverride {
                app: "A".into(),
                id: "a1".into(),
                status: Some(Status::Up),
                dirty: None,
            },
        ];
        let mut body = String::from("{\"replicationList\":[");
        for (i, t) in tasks.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            t.write(&mut body);
        }
        body.push_str("]}");
        let answer: Value =
            serde_json::from_slice(&apply_batch(&receiver, body.as_bytes(), 2_000).unwrap())
                .unwrap();
        let codes: Vec<u64> = answer["responseList"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["statusCode"].as_u64().unwrap())
            .collect();
        assert_eq!(codes, [404, 200, 200, 200, 404, 200]);
        assert_eq!(
            receiver.instance("A", "a1").unwrap().info.status,
            Status::Up
        );
        assert!(apply_batch(&receiver, b"{\"x\":1}", 0).is_err());
        assert!(apply_batch(&receiver, b"{", 0).is_err());
    }
}
