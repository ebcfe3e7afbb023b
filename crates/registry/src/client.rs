//! `RegistryClient`: registers, renews, fetches deltas, reconciles, and picks instances.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use reqwest::{Method, StatusCode};
use tokio::task::JoinHandle;

use crate::auth::Auth;
use crate::codec::{self, Format};
use crate::config::{DAY, bad};
use crate::error::{Error, Result};
use crate::model::{
    ActionType, Application, Applications, Instance, InstanceInfo, Status, reconcile_hashcode,
};

/// A local copy of the registry, fed by full fetches and deltas (pure: no I/O).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalRegistry {
    apps: BTreeMap<String, BTreeMap<String, Instance>>,
    version: u64,
}

impl LocalRegistry {
    /// Replaces everything with a full registry document.
    pub fn replace(&mut self, full: &Applications) {
        self.apps.clear();
        for app in &full.applications {
            let m = self.apps.entry(app.name.clone()).or_default();
            for i in &app.instances {
                m.insert(i.info.instance_id.clone(), i.clone());
            }
        }
        self.apps.retain(|_, m| !m.is_empty());
        self.version = full.version;
    }

    /// Applies a delta (ADDED/MODIFIED replace, DELETED removes) and reports whether the
    /// result's reconcile code equals the delta's `apps__hashcode` — Eureka's check; on
    /// `false` the caller should fetch the full registry.
    #[must_use]
    pub fn apply_delta(&mut self, delta: &Applications) -> bool {
        for app in &delta.applications {
            for i in &app.instances {
                let name = i.info.app.clone();
                match i.info.action_type {
                    ActionType::Added | ActionType::Modified => {
                        self.apps
                            .entry(name)
                            .or_default()
                            .insert(i.info.instance_id.clone(), i.clone());
                    }
                    ActionType::Deleted => {
                        if let Some(m) = self.apps.get_mut(&name) {
                            m.remove(&i.info.instance_id);
                            if m.is_empty() {
                                self.apps.remove(&name);
                            }
                        }
                    }
                }
            }
        }
        self.version = delta.version;
        self.hashcode() == delta.apps_hashcode
    }

    /// The reconcile code of what this copy holds.
    #[must_use]
    pub fn hashcode(&self) -> String {
        let mut counts = [0u64; 5];
        for i in self.apps.values().flat_map(|m| m.values()) {
            counts[i.info.status.index()] += 1;
        }
        reconcile_hashcode(&counts)
    }

    /// The version of the last document applied.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Instances of `app`, sorted by id.
    #[must_use]
    pub fn application(&self, app: &str) -> Vec<Instance> {
        self.apps
            .get(&app.to_uppercase())
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Instances serving `vip` (any status), sorted by app then id.
    #[must_use]
    pub fn vip(&self, vip: &str) -> Vec<Instance> {
        self.apps
            .values()
            .flat_map(|m| m.values())
            .filter(|i| i.info.has_vip(vip))
            .cloned()
            .collect()
    }

    /// The whole copy as a document.
    #[must_use]
    pub fn to_applications(&self) -> Applications {
        Applications {
            version: self.version,
            apps_hashcode: self.hashcode(),
            applications: self
                .apps
                .iter()
                .map(|(name, m)| Application {
                    name: name.clone(),
                    instances: m.values().cloned().collect(),
                })
                .collect(),
        }
    }
}

/// How a [`RegistryClient`] talks to the registry.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Service URLs tried in order, e.g. `http://127.0.0.1:8761/eureka/v2` (no `/apps`).
    pub service_urls: Vec<String>,
    /// The instance to register and keep alive; `None` for a fetch-only client.
    pub instance: Option<InstanceInfo>,
    /// Heartbeat period (default: the instance's `renewalIntervalInSecs`).
    pub renewal_interval: Option<Duration>,
    /// Pause between fetches when not long-polling (Eureka: 30 s).
    pub fetch_interval: Duration,
    /// Long-poll the delta for up to this long (`?wait=`), so changes arrive within
    /// milliseconds; `None` polls every `fetch_interval`.
    pub long_poll: Option<Duration>,
    /// Per-request timeout (long polls get theirs on top).
    pub request_timeout: Duration,
    /// Credentials for registering, renewing and cancelling.
    pub auth: Option<Auth>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            service_urls: vec!["http://127.0.0.1:8761/eureka/v2".into()],
            instance: None,
            renewal_interval: None,
            fetch_interval: Duration::from_secs(30),
            long_poll: None,
            request_timeout: Duration::from_secs(10),
            auth: None,
        }
    }
}

impl ClientConfig {
    /// Checks the URLs, the instance and the intervals.
    pub fn validate(&self) -> Result<()> {
        if self.service_urls.is_empty() {
            return Err(bad(
                "service_urls",
                "[]".into(),
                "at least one URL is needed",
            ));
        }
        for u in &self.service_urls {
            let ok = reqwest::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
            if !ok {
                return Err(bad("service_urls", u.clone(), "not an http(s) URL"));
            }
        }
        if let Some(i) = &self.instance {
            i.validate()?;
        }
        if self.fetch_interval < Duration::from_millis(10) {
            return Err(bad(
                "fetch_interval",
                format!("{:?}", self.fetch_interval),
                "must be at least 10ms",
            ));
        }
        if self
            .renewal_interval
            .is_some_and(|r| !(Duration::from_millis(10)..=DAY).contains(&r))
        {
            return Err(bad(
                "renewal_interval",
                format!("{:?}", self.renewal_interval),
                "must be in 10ms ..= 1 day",
            ));
        }
        if !(Duration::from_millis(1)..=DAY).contains(&self.request_timeout) {
            return Err(bad(
                "request_timeout",
                format!("{:?}", self.request_timeout),
                "must be in 1ms ..= 1 day",
            ));
        }
        if self.long_poll.is_some_and(|w| w > Duration::from_secs(300)) {
            return Err(bad(
                "long_poll",
                format!("{:?}", self.long_poll),
                "must be at most 300s",
            ));
        }
        if let Some(a) = &self.auth {
            a.validate()?;
        }
        Ok(())
    }
}

/// Counters of what a client did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Successful registrations (the first one and each re-registration after a 404).
    pub registrations: u64,
    /// Successful heartbeats.
    pub heartbeats: u64,
    /// Full registry fetches (the first one and each after a hashcode mismatch).
    pub full_fetches: u64,
    /// Deltas applied that reconciled.
    pub delta_fetches: u64,
}

/// A Eureka client: keeps its instance registered and a local copy of the registry.
///
/// Heartbeats that answer 404 re-register. Deltas are applied and checked against
/// `apps__hashcode`; a mismatch triggers a full fetch. [`RegistryClient::next_instance`]
/// picks UP instances of a VIP round-robin. Service URLs are tried in order on failure.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: ClientConfig,
    http: reqwest::Client,
    cache: RwLock<LocalRegistry>,
    have_full: std::sync::atomic::AtomicBool,
    round_robin: Mutex<HashMap<String, usize>>,
    stats: [AtomicU64; 4],
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RegistryClient {
    /// A client; nothing is sent until a method or [`RegistryClient::start`] is called.
    pub fn new(cfg: ClientConfig) -> Result<Self> {
        cfg.validate()?;
        let http = reqwest::Client::builder()
            .timeout(cfg.request_timeout + cfg.long_poll.unwrap_or_default())
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http {
                url: String::new(),
                source: e,
            })?;
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                http,
                cache: RwLock::new(LocalRegistry::default()),
                have_full: false.into(),
                round_robin: Mutex::new(HashMap::new()),
                stats: Default::default(),
                tasks: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Registers the configured instance (`POST /apps/{APP}`, expecting 204).
    pub async fn register(&self) -> Result<()> {
        let info = self.own()?;
        let body = codec::instance_json(info, &info.lease_info);
        let path = format!("apps/{}", enc(&info.app));
        self.send(Method::POST, &path, Some(body), &[204]).await?;
        self.inner.stats[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one heartbeat; on 404 registers again, as Eureka clients do.
    pub async fn renew(&self) -> Result<()> {
        let info = self.own()?;
        let path = format!(
            "apps/{}/{}?status={}&lastDirtyTimestamp={}",
            enc(&info.app),
            enc(&info.instance_id),
            info.status,
            info.last_dirty_timestamp
        );
        match self.send(Method::PUT, &path, None, &[200]).await {
            Ok(_) => {
                self.inner.stats[1].fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(Error::Status { status: 404, .. }) => self.register().await,
            Err(e) => Err(e),
        }
    }

    /// De-registers the instance (`DELETE /apps/{APP}/{ID}`).
    pub async fn cancel(&self) -> Result<()> {
        let info = self.own()?;
        let path = format!("apps/{}/{}", enc(&info.app), enc(&info.instance_id));
        self.send(Method::DELETE, &path, None, &[200])
            .await
            .map(|_| ())
    }

    /// Replaces the local copy with the full registry.
    pub async fn fetch_full(&self) -> Result<()> {
        let body = self.send(Method::GET, "apps", None, &[200]).await?;
        let apps = codec::decode_applications(&body, Format::Json)?;
        self.inner.cache.write().replace(&apps);
        self.inner.have_full.store(true, Ordering::Release);
        self.inner.stats[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Fetches and applies the delta (long-polling when configured); falls back to a
    /// full fetch when there is no local copy yet or the hashcodes disagree.
    pub async fn refresh(&self) -> Result<()> {
        if !self.inner.have_full.load(Ordering::Acquire) {
            return self.fetch_full().await;
        }
        let path = match self.inner.cfg.long_poll {
            Some(wait) => format!(
                "apps/delta?wait={}ms&version={}",
                wait.as_millis(),
                self.inner.cache.read().version()
            ),
            None => "apps/delta".to_owned(),
        };
        let body = self.send(Method::GET, &path, None, &[200]).await?;
        let delta = codec::decode_applications(&body, Format::Json)?;
        let reconciled = self.inner.cache.write().apply_delta(&delta);
        if reconciled {
            self.inner.stats[3].fetch_add(1, Ordering::Relaxed);
            Ok(())
        } else {
            tracing::debug!(
                version = delta.version,
                "hashcode mismatch after delta; fetching the full registry"
            );
            self.fetch_full().await
        }
    }

    /// Starts the background work: register, then heartbeats and registry fetches.
    /// Failures are logged and retried on the next tick.
    pub fn start(&self) {
        let mut tasks = self.inner.tasks.lock();
        if !tasks.is_empty() {
            return;
        }
        if let Some(info) = &self.inner.cfg.instance {
            let every = self
                .inner
                .cfg
                .renewal_interval
                .unwrap_or(Duration::from_secs(u64::from(
                    info.lease_info.renewal_interval_secs,
                )));
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = me.register().await {
                    tracing::warn!("registration failed: {e}");
                }
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = me.renew().await {
                        tracing::warn!("heartbeat failed: {e}");
                    }
                }
            }));
        }
        let me = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let result = me.refresh().await;
                if let Err(e) = &result {
                    tracing::warn!("registry fetch failed: {e}");
                }
                if me.inner.cfg.long_poll.is_none() || result.is_err() {
                    tokio::time::sleep(me.inner.cfg.fetch_interval).await;
                }
            }
        }));
    }

    /// Stops the background work and de-registers the instance (if any).
    pub async fn shutdown(&self) -> Result<()> {
        let tasks: Vec<_> = self.inner.tasks.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        if self.inner.cfg.instance.is_some() {
            self.cancel().await
        } else {
            Ok(())
        }
    }

    /// The next UP instance of `vip`, round-robin over the local copy; `None` if there is none.
    #[must_use]
    pub fn next_instance(&self, vip: &str) -> Option<Instance> {
        let up: Vec<Instance> = self
            .inner
            .cache
            .read()
            .vip(vip)
            .into_iter()
            .filter(|i| i.info.status == Status::Up)
            .collect();
        if up.is_empty() {
            return None;
        }
        let mut rr = self.inner.round_robin.lock();
        let n = rr.entry(vip.to_owned()).or_insert(0);
        let pick = up[*n % up.len()].clone();
        *n = n.wrapping_add(1);
        Some(pick)
    }

    /// Instances of `vip` in the local copy, any status.
    #[must_use]
    pub fn instances_for_vip(&self, vip: &str) -> Vec<Instance> {
        self.inner.cache.read().vip(vip)
    }

    /// Instances of `app` in the local copy.
    #[must_use]
    pub fn application(&self, app: &str) -> Vec<Instance> {
        self.inner.cache.read().application(app)
    }

    /// A copy of the local registry.
    #[must_use]
    pub fn local(&self) -> LocalRegistry {
        self.inner.cache.read().clone()
    }

    /// What the client did so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        let s = &self.inner.stats;
        ClientStats {
            registrations: s[0].load(Ordering::Relaxed),
            heartbeats: s[1].load(Ordering::Relaxed),
            full_fetches: s[2].load(Ordering::Relaxed),
            delta_fetches: s[3].load(Ordering::Relaxed),
        }
    }

    fn own(&self) -> Result<&InstanceInfo> {
        self.inner
            .cfg
            .instance
            .as_ref()
            .ok_or(Error::MissingField("instance"))
    }

    /// Sends to each service URL in turn until one answers one of `ok` (or a 4xx,
    /// which no other server would answer differently).
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        ok: &[u16],
    ) -> Result<bytes::Bytes> {
        let mut last = String::new();
        for base in &self.inner.cfg.service_urls {
            let url = format!("{}/{path}", base.trim_end_matches('/'));
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .header("Accept", "application/json");
            if let Some(b) = &body {
                req = req
                    .header("Content-Type", "application/json")
                    .body(b.clone());
            }
            if method != Method::GET
                && let Some(a) = &self.inner.cfg.auth
            {
                req = req.header("Authorization", a.header_value());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.map_err(|e| Error::Http {
                        url: url.clone(),
                        source: e,
                    })?;
                    if ok.contains(&status.as_u16()) {
                        return Ok(bytes);
                    }
                    let err = Error::Status {
                        url,
                        status: status.as_u16(),
                        body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                    };
                    if status.is_client_error() && status != StatusCode::REQUEST_TIMEOUT {
                        return Err(err);
                    }
                    last = err.to_string();
                }
                Err(e) => last = Error::Http { url, source: e }.to_string(),
            }
        }
        Err(Error::NoServer {
            tried: self.inner.cfg.service_urls.len(),
            last,
        })
    }
}

/// Percent-encodes a path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LeaseInfo;

    fn instance(app: &str, id: &str, status: Status, action: ActionType) -> Instance {
        let mut info = InstanceInfo::new(app, id, id, 80);
        info.status = status;
        info.action_type = action;
        info.vip_address = Some("v".into());
        Instance {
            info: Arc::new(info),
            lease: LeaseInfo::default(),
        }
    }

    fn doc(version: u64, hash: &str, instances: Vec<Instance>) -> Applications {
        let mut by: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for i in instances {
            by.entry(i.info.app.clone()).or_default().push(i);
        }
        Applications {
            version,
            apps_hashcode: hash.into(),
            applications: by
                .into_iter()
                .map(|(name, instances)| Application { name, instances })
                .collect(),
        }
    }

    #[test]
    fn deltas_apply_and_reconcile_by_hashcode() {
        let mut l = LocalRegistry::default();
        l.replace(&doc(
            1,
            "UP_2_",
            vec![
                instance("a", "1", Status::Up, ActionType::Added),
                instance("a", "2", Status::Up, ActionType::Added),
            ],
        ));
        let d = doc(
            3,
            "DOWN_1_UP_1_",
            vec![
                instance("a", "1", Status::Down, ActionType::Modified),
                instance("a", "2", Status::Up, ActionType::Deleted),
                instance("b", "3", Status::Up, ActionType::Added),
            ],
        );
        assert!(l.apply_delta(&d));
        assert_eq!(l.version(), 3);
        assert_eq!(l.application("b").len(), 1);
        // A delta whose hashcode disagrees (we missed a change) says so.
        assert!(!l.apply_delta(&doc(4, "UP_5_", vec![])));
    }

    #[test]
    fn round_robin_skips_instances_that_are_not_up() {
        let c = RegistryClient::new(ClientConfig::default()).unwrap();
        c.inner.cache.write().replace(&doc(
            1,
            "",
            vec![
                instance("a", "1", Status::Up, ActionType::Added),
                instance("a", "2", Status::OutOfService, ActionType::Added),
                instance("a", "3", Status::Up, ActionType::Added),
            ],
        ));
        let picks: Vec<String> = (0..4)
            .map(|_| c.next_instance("v").unwrap().info.instance_id.clone())
            .collect();
        assert_eq!(picks, ["1", "3", "1", "3"]);
        assert!(c.next_instance("none").is_none());
    }

    #[test]
    fn config_is_validated() {
        let bad = ClientConfig {
            service_urls: vec!["ftp://x".into()],
            ..ClientConfig::default()
        };
        assert!(
            RegistryClient::new(bad)
                .unwrap_err()
                .to_string()
                .contains("ftp://x")
        );
        assert!(
            ClientConfig {
                service_urls: vec![],
                ..ClientConfig::default()
            }
            .validate()
            .is_err()
        );
        for bad in [
            ClientConfig {
                request_timeout: Duration::MAX,
                ..ClientConfig::default()
            },
            ClientConfig {
                renewal_interval: Some(Duration::MAX),
                ..ClientConfig::default()
            },
        ] {
            assert!(RegistryClient::new(bad).is_err());
        }
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
