//! The registry core: apps → instances → leases on dashmap, with a change journal.
//!
//! Two paths, by design:
//! - **Heartbeats and single-instance reads** touch only one dashmap shard (a read
//!   lock) and atomics: no global lock, so they scale with cores.
//! - **Visible changes** (register, cancel, status, override, metadata, eviction) take
//!   the journal mutex for a few microseconds, apply the change to the map, adjust the
//!   per-status counts, bump the version and append to the delta queue — all as one
//!   step. A reader that takes the journal mutex therefore sees the map, the counts,
//!   the version and the queue at the same instant, which is what makes every
//!   `(delta, apps__hashcode)` pair consistent under concurrent writers. A full
//!   snapshot copies the map without the mutex and keeps the copy only if the version
//!   did not move meanwhile (see `snapshot`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::lease::{Lease, RenewRate};
use crate::metrics::RegistryMetrics;
use crate::model::{
    ActionType, Application, Applications, Instance, InstanceInfo, LeaseInfo, MAX_METADATA, Millis,
    Status, reconcile_hashcode,
};

/// Called with the new version after every visible change (outside every lock).
pub type ChangeListener = Arc<dyn Fn(u64) + Send + Sync>;

/// The in-memory registry. Every method that depends on time takes `now` (Unix ms).
pub struct Registry {
    cfg: Config,
    apps: DashMap<String, Arc<AppEntry>>,
    journal: Mutex<Journal>,
    renews: RenewRate,
    listener: RwLock<Option<ChangeListener>>,
    full_cache: Mutex<Option<Arc<Applications>>>,
    delta_cache: Mutex<Option<Arc<Applications>>>,
    metrics: RegistryMetrics,
    /// Whether self-preservation held evictions back when last evaluated.
    preserving: AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let j = self.journal.lock();
        f.debug_struct("Registry")
            .field("version", &j.version)
            .field("instances", &j.instances)
            .finish()
    }
}

#[derive(Debug)]
struct AppEntry {
    instances: DashMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    info: Arc<InstanceInfo>,
    lease: Lease,
    /// The operator's status override; survives heartbeats and re-registrations, dropped on cancel.
    override_status: Option<Status>,
    /// This instance's share of the expected renewals per minute, in thousandths.
    expected_milli: u64,
}

#[derive(Debug, Default)]
struct Journal {
    version: u64,
    counts: [u64; 5],
    instances: u64,
    expected_milli: u64,
    changes: VecDeque<Change>,
}

#[derive(Debug, Clone)]
struct Change {
    version: u64,
    at: Millis,
    info: Arc<InstanceInfo>,
    lease: LeaseInfo,
}

/// What a heartbeat found (Eureka's `renew` plus `validateDirtyTimestamp`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Renewal {
    /// Renewed; nothing to reconcile.
    Renewed,
    /// Renewed, but the client's `lastDirtyTimestamp` is newer than ours: it should
    /// register again so that we get its newer record (HTTP 404).
    ClientNewer,
    /// Renewed, but our record is newer than the sender's: a replicating peer should
    /// take ours (HTTP 409 with the record; a plain client just gets 200).
    ServerNewer(Arc<InstanceInfo>),
}

/// What one eviction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct EvictionReport {
    /// Leases found expired.
    pub expired: usize,
    /// The most this pass was allowed to evict.
    pub cap: usize,
    /// `(app, id)` of each evicted instance.
    pub evicted: Vec<(String, String)>,
    /// True when self-preservation stopped the pass before it looked.
    pub self_preservation: bool,
}

/// The registry's counters, as shown on the dashboard.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// The version of the last visible change.
    pub version: u64,
    /// Registered applications.
    pub apps: usize,
    /// Registered instances.
    pub instances: u64,
    /// Renewals received in the last minute (replicated ones included, as in Eureka).
    pub renews_last_min: u64,
    /// Renewals per minute the registered instances promised (Σ 60 / renewal interval).
    pub expected_renews_per_min: f64,
    /// `floor(expected × renewal_percent_threshold)`: fewer renewals than this stop eviction.
    pub renews_threshold: u64,
    /// Whether self-preservation is configured.
    pub self_preservation_enabled: bool,
    /// Whether self-preservation is holding evictions back right now.
    pub self_preservation_active: bool,
    /// Entries in the delta queue.
    pub delta_queue: usize,
    /// `apps__hashcode` of the whole registry.
    pub apps_hashcode: String,
}

impl Registry {
    /// An empty registry; `cfg` is validated.
    pub fn new(cfg: Config) -> Result<Self> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            apps: DashMap::new(),
            journal: Mutex::new(Journal::default()),
            renews: RenewRate::new(),
            listener: RwLock::new(None),
            full_cache: Mutex::new(None),
            delta_cache: Mutex::new(None),
            metrics: RegistryMetrics::new(),
            preserving: AtomicBool::new(false),
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Installs the function called with the new version after each visible change.
    pub fn set_listener(&self, listener: ChangeListener) {
        *self.listener.write() = Some(listener);
    }

    /// The version of the last visible change (0 for a fresh registry).
    #[must_use]
    pub fn version(&self) -> u64 {
        self.journal.lock().version
    }

    /// Number of registered instances.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.journal.lock().instances
    }

    /// Whether no instance is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers (or re-registers) `info`, as Eureka's `AbstractInstanceRegistry.register`.
    ///
    /// If a lease exists and its record has a newer `lastDirtyTimestamp` than `info`, the
    /// existing record wins (the lease is still renewed). A stored status override survives;
    /// a new one can arrive in `info.overridden_status` (replication of an override). The
    /// effective status follows Eureka's rules: a DOWN or STARTING client is believed, then
    /// the override, then (for a client, not a peer) an existing UP or OUT_OF_SERVICE status.
    /// Returns the stored record.
    pub fn register(
        &self,
        mut info: InstanceInfo,
        is_replication: bool,
        now: Millis,
    ) -> Result<Arc<InstanceInfo>> {
        info.validate()?;
        info.app = info.app.to_uppercase();
        if info.last_dirty_timestamp == 0 {
            info.last_dirty_timestamp = now;
        }
        let mut journal = self.journal.lock();
        let app = self
            .apps
            .entry(info.app.clone())
            .or_insert_with(|| {
                Arc::new(AppEntry {
                    instances: DashMap::new(),
                })
            })
            .clone();
        let mut previous: Option<(Status, u64, Millis, Option<Status>)> = None;
        if let Some(existing) = app.instances.get(&info.instance_id) {
            if existing.info.last_dirty_timestamp > info.last_dirty_timestamp {
                info = (*existing.info).clone();
            }
            previous = Some((
                existing.info.status,
                existing.expected_milli,
                existing.lease.service_up_at,
                existing.override_status,
            ));
        }
        let override_status = previous.and_then(|p| p.3).or(match info.overridden_status {
            Status::Unknown => None,
            s => Some(s),
        });
        let status = effective_status(
            info.status,
            override_status,
            previous.map(|p| p.0),
            is_replication,
        );
        info.status = status;
        info.overridden_status = override_status.unwrap_or(Status::Unknown);
        info.action_type = ActionType::Added;
        info.last_updated_timestamp = now;
        let duration_ms = self.duration_ms(&info);
        let service_up_at = match previous {
            Some((_, _, up, _)) if up > 0 => up,
            _ if status == Status::Up => now,
            _ => 0,
        };
        let expected_milli = 60_000_000 / (u64::from(info.lease_info.renewal_interval_secs) * 1000);
        let info = Arc::new(info);
        let lease = Lease::new(now, duration_ms, service_up_at);
        let lease_info = lease_info(&info, &lease, 0);
        app.instances.insert(
            info.instance_id.clone(),
            Slot {
                info: info.clone(),
                lease,
                override_status,
                expected_milli,
            },
        );
        match previous {
            Some((old_status, old_milli, ..)) => {
                journal.counts[old_status.index()] -= 1;
                journal.expected_milli -= old_milli;
            }
            None => {
                journal.instances += 1;
                self.metrics.instances.increment(1.0);
            }
        }
        journal.counts[status.index()] += 1;
        journal.expected_milli += expected_milli;
        let version = self.record(&mut journal, now, info.clone(), lease_info);
        drop(journal);
        self.metrics.registrations.increment(is_replication);
        self.notify(version);
        Ok(info)
    }

    /// Renews a lease (a heartbeat). Lock-free apart from one shard read lock.
    ///
    /// `client_dirty` is the `lastDirtyTimestamp` the sender holds, if it sent one.
    /// Errors with [`Error::UnknownInstance`] when there is no lease, or when the
    /// effective status is UNKNOWN (an override was deleted): either way the client
    /// must register again (HTTP 404).
    pub fn renew(
        &self,
        app: &str,
        id: &str,
        client_dirty: Option<Millis>,
        is_replication: bool,
        now: Millis,
    ) -> Result<Renewal> {
        let entry = self.app_entry(app).ok_or_else(|| unknown(app, id))?;
        let fix_status = {
            let slot = entry.instances.get(id).ok_or_else(|| unknown(app, id))?;
            let own = slot.info.status;
            let status = effective_status(own, slot.override_status, Some(own), is_replication);
            if status == Status::Unknown {
                return Err(unknown(app, id));
            }
            self.renews.increment(now);
            self.metrics.renewals.increment(is_replication);
            slot.lease.renew(now);
            status != own
        };
        if fix_status {
            // Recomputed under the journal lock: the override may have moved meanwhile.
            self.change(app, id, now, |info, slot_override| {
                let status = effective_status(
                    info.status,
                    *slot_override,
                    Some(info.status),
                    is_replication,
                );
                let changed = status != info.status && status != Status::Unknown;
                if changed {
                    info.status = status;
                }
                Ok(changed)
            })?;
        }
        let slot = entry.instances.get(id).ok_or_else(|| unknown(app, id))?;
        Ok(match client_dirty {
            Some(c) if c > slot.info.last_dirty_timestamp => Renewal::ClientNewer,
            Some(c) if c < slot.info.last_dirty_timestamp && is_replication => {
                Renewal::ServerNewer(slot.info.clone())
            }
            _ => Renewal::Renewed,
        })
    }

    /// Cancels a lease (the client shuts down). Its override goes with it.
    pub fn cancel(&self, app: &str, id: &str, now: Millis) -> Result<()> {
        self.cancel_from(app, id, false, now)
    }

    /// [`cancel`](Self::cancel), saying whether a peer replicated it (for
    /// the `origin` label of `registry_cancels_total`).
    pub(crate) fn cancel_from(
        &self,
        app: &str,
        id: &str,
        is_replication: bool,
        now: Millis,
    ) -> Result<()> {
        self.remove(app, id, now, None)?;
        self.metrics.cancels.increment(is_replication);
        Ok(())
    }

    /// Sets an operator's status override (`PUT .../status?value=`); it survives
    /// heartbeats and re-registrations until [`Registry::delete_status_override`].
    pub fn set_status_override(
        &self,
        app: &str,
        id: &str,
        status: Status,
        client_dirty: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        self.change(app, id, now, |info, slot_override| {
            *slot_override = Some(status);
            let changed = info.status != status || info.overridden_status != status;
            info.status = status;
            info.overridden_status = status;
            if let Some(d) = client_dirty.filter(|d| *d > info.last_dirty_timestamp) {
                info.last_dirty_timestamp = d;
            }
            Ok(changed)
        })
        .map(drop)
    }

    /// Removes a status override (`DELETE .../status[?value=]`). The status becomes
    /// `new_status`, UNKNOWN by default, so that the next heartbeat answers 404 and the
    /// client registers again with its own status — Eureka's behaviour.
    pub fn delete_status_override(
        &self,
        app: &str,
        id: &str,
        new_status: Option<Status>,
        client_dirty: Option<Millis>,
        now: Millis,
    ) -> Result<()> {
        self.change(app, id, now, |info, slot_override| {
            if slot_override.take().is_none() {
                return Ok(false);
            }
            info.overridden_status = Status::Unknown;
            info.status = new_status.unwrap_or(Status::Unknown);
            if let Some(d) = client_dirty.filter(|d| *d > info.last_dirty_timestamp) {
                info.last_dirty_timestamp = d;
            }
            Ok(true)
        })
        .map(drop)
    }

    /// Merges `entries` into an instance's metadata (`PUT .../metadata?k=v`); returns
    /// the stored record. The cap of 256 entries is checked under the journal lock,
    /// so concurrent updates cannot pass it together.
    pub fn update_metadata(
        &self,
        app: &str,
        id: &str,
        entries: &BTreeMap<String, String>,
        now: Millis,
    ) -> Result<Arc<InstanceInfo>> {
        if let Some(k) = entries.keys().find(|k| k.is_empty() || k.len() > 256) {
            return Err(Error::invalid(
                "metadata key",
                k,
                "keys must be 1 to 256 bytes",
            ));
        }
        self.change(app, id, now, |info, _| {
            let added = entries
                .keys()
                .filter(|k| info.metadata.get(k).is_none())
                .count();
            if info.metadata.len() + added > MAX_METADATA {
                return Err(Error::invalid(
                    "metadata",
                    (info.metadata.len() + added).to_string(),
                    "an instance holds at most 256 metadata entries",
                ));
            }
            let before = info.metadata.clone();
            info.metadata
                .extend(entries.iter().map(|(k, v)| (k.clone(), v.clone())));
            Ok(info.metadata != before)
        })
    }

    /// Whether leases may expire now: always without self-preservation, else only while
    /// renewals in the last minute exceed `floor(expected × threshold)` (Eureka's
    /// `isLeaseExpirationEnabled`).
    #[must_use]
    pub fn lease_expiration_enabled(&self, now: Millis) -> bool {
        if !self.cfg.self_preservation {
            return true;
        }
        let threshold = self.renews_threshold();
        threshold > 0 && self.renews.last_minute(now) > threshold
    }

    /// One eviction pass at `now`, granting `compensation_ms` extra (see [`crate::EvictionClock`]).
    ///
    /// Does nothing while self-preservation holds. Otherwise evicts expired leases, at
    /// most `size - floor(size × threshold)` of them, picked at random (seeded by `now`)
    /// so that one app is not wiped out first. A lease renewed after the scan is spared.
    /// Evicting lowers the expected renewals, exactly as cancelling does.
    ///
    /// Each evicted lease counts in `registry_evictions_total`, and a pass that
    /// evicts logs one `WARN` event naming them.
    pub fn evict(&self, now: Millis, compensation_ms: u64) -> EvictionReport {
        if self.self_preservation_active(now) {
            return EvictionReport {
                self_preservation: true,
                ..EvictionReport::default()
            };
        }
        let mut expired: Vec<(String, String)> = Vec::new();
        for app in &self.apps {
            for slot in &app.instances {
                if slot.lease.is_expired(now, compensation_ms) {
                    expired.push((app.key().clone(), slot.key().clone()));
                }
            }
        }
        let size = self.len();
        let cap =
            (size - (size as f64 * self.cfg.renewal_percent_threshold).floor() as u64) as usize;
        let mut report = EvictionReport {
            expired: expired.len(),
            cap,
            ..EvictionReport::default()
        };
        let mut rng = now | 1;
        for i in 0..expired.len().min(cap) {
            // xorshift64: cheap, and replayable from `now` in tests.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let j = i + (rng % (expired.len() - i) as u64) as usize;
            expired.swap(i, j);
            let (app, id) = &expired[i];
            if self.remove(app, id, now, Some(compensation_ms)).is_ok() {
                self.metrics.evictions.increment(1);
                report.evicted.push((app.clone(), id.clone()));
            }
        }
        if !report.evicted.is_empty() {
            tracing::warn!(
                evicted = report.evicted.len(),
                expired = report.expired,
                cap = report.cap,
                compensation_ms,
                instances = ?report.evicted,
                "evicted instances whose lease expired"
            );
        }
        report
    }

    /// Whether self-preservation holds evictions back at `now`; keeps the
    /// `registry_self_preservation` gauge and logs when that changes.
    fn self_preservation_active(&self, now: Millis) -> bool {
        let active = self.cfg.self_preservation && !self.lease_expiration_enabled(now);
        if self.preserving.swap(active, Ordering::Relaxed) != active {
            let (renews, threshold) = (self.renews.last_minute(now), self.renews_threshold());
            if active {
                self.metrics.self_preservation.increment(1.0);
                // An empty registry has nothing to protect: not worth a warning.
                if self.is_empty() {
                    tracing::info!(renews_last_min = renews, threshold, "self-preservation on");
                } else {
                    tracing::warn!(
                        renews_last_min = renews,
                        threshold,
                        "self-preservation on: too few renewals in the last minute, \
                         expired leases are kept"
                    );
                }
            } else {
                self.metrics.self_preservation.decrement(1.0);
                tracing::info!(
                    renews_last_min = renews,
                    threshold,
                    "self-preservation off: expired leases are evicted again"
                );
            }
        }
        active
    }

    /// The full registry at one version, with its `apps__hashcode`; cached until the next change.
    #[must_use]
    pub fn applications(&self) -> Arc<Applications> {
        let version = self.version();
        if let Some(c) = self
            .full_cache
            .lock()
            .as_ref()
            .filter(|c| c.version == version)
        {
            return c.clone();
        }
        let snap = Arc::new(self.snapshot(None));
        let mut cache = self.full_cache.lock();
        if cache.as_ref().is_none_or(|c| c.version < snap.version) {
            *cache = Some(snap.clone());
        }
        snap
    }

    /// The full registry with live lease timestamps (not cached; for the dashboard).
    #[must_use]
    pub fn applications_live(&self) -> Applications {
        self.snapshot(None)
    }

    /// One application at one version, or `None` if it has no instance.
    #[must_use]
    pub fn application(&self, app: &str) -> Option<Application> {
        let snap = self.snapshot(Some(&app.to_uppercase()));
        snap.applications.into_iter().next()
    }

    /// One instance, read without the journal lock.
    #[must_use]
    pub fn instance(&self, app: &str, id: &str) -> Option<Instance> {
        let entry = self.app_entry(app)?;
        let slot = entry.instances.get(id)?;
        Some(Instance {
            info: slot.info.clone(),
            lease: lease_info(&slot.info, &slot.lease, 0),
        })
    }

    /// Every instance with this id, in any application (`GET /instances/{id}`).
    #[must_use]
    pub fn instances_by_id(&self, id: &str) -> Vec<Instance> {
        let mut out = Vec::new();
        for app in &self.apps {
            if let Some(slot) = app.instances.get(id) {
                out.push(Instance {
                    info: slot.info.clone(),
                    lease: lease_info(&slot.info, &slot.lease, 0),
                });
            }
        }
        out
    }

    /// Instances serving `vip` (or secure VIP when `secure`), with the subset's own hashcode.
    #[must_use]
    pub fn vip(&self, vip: &str, secure: bool) -> Applications {
        let full = self.applications();
        let applications: Vec<Application> = full
            .applications
            .iter()
            .filter_map(|a| {
                let instances: Vec<Instance> = a
                    .instances
                    .iter()
                    .filter(|i| {
                        if secure {
                            i.info.has_secure_vip(vip)
                        } else {
                            i.info.has_vip(vip)
                        }
                    })
                    .cloned()
                    .collect();
                (!instances.is_empty()).then(|| Application {
                    name: a.name.clone(),
                    instances,
                })
            })
            .collect();
        let mut apps = Applications {
            version: full.version,
            apps_hashcode: String::new(),
            applications,
        };
        apps.apps_hashcode = apps.reconcile_hashcode();
        apps
    }

    /// The delta: every instance changed within the retention window, in its latest
    /// state (`actionType` ADDED, MODIFIED or DELETED), with the whole registry's
    /// `apps__hashcode` at the same version. Cached until the next change.
    ///
    /// A client holding the registry as of any version inside the window that applies
    /// this delta ends up with exactly the registry at `version`, and its reconcile
    /// code then equals `apps_hashcode`.
    #[must_use]
    pub fn delta(&self, now: Millis) -> Arc<Applications> {
        let (version, hashcode, changes) = {
            let mut j = self.journal.lock();
            if let Some(c) = self
                .delta_cache
                .lock()
                .as_ref()
                .filter(|c| c.version == j.version)
            {
                return c.clone();
            }
            self.prune(&mut j, now);
            (
                j.version,
                reconcile_hashcode(&j.counts),
                j.changes.iter().cloned().collect::<Vec<_>>(),
            )
        };
        let delta = Arc::new(Self::coalesce(version, hashcode, &changes));
        let mut cache = self.delta_cache.lock();
        if cache.as_ref().is_none_or(|c| c.version < version) {
            *cache = Some(delta.clone());
        }
        delta
    }

    /// Only the changes after `since` (an extension for long-polling clients, which
    /// know the version they hold): far smaller than the whole window. If changes after
    /// `since` have already left the window, this is the whole window, and the
    /// hashcode check tells the client to fetch everything.
    #[must_use]
    pub fn delta_since(&self, since: u64, now: Millis) -> Applications {
        let (version, hashcode, changes) = {
            let mut j = self.journal.lock();
            self.prune(&mut j, now);
            let complete = j
                .changes
                .front()
                .is_none_or(|c| c.version <= since.saturating_add(1));
            let from = if complete {
                j.changes.partition_point(|c| c.version <= since)
            } else {
                0
            };
            (
                j.version,
                reconcile_hashcode(&j.counts),
                j.changes.range(from..).cloned().collect::<Vec<_>>(),
            )
        };
        Self::coalesce(version, hashcode, &changes)
    }

    /// Copies the records and leases of every app, or of `only`, unsorted.
    fn copy_apps(&self, only: Option<&str>) -> Vec<Application> {
        let copy = |name: &String, app: &AppEntry| Application {
            name: name.clone(),
            instances: app
                .instances
                .iter()
                .map(|s| Instance {
                    info: s.info.clone(),
                    lease: lease_info(&s.info, &s.lease, 0),
                })
                .collect(),
        };
        match only {
            Some(name) => self
                .apps
                .get(name)
                .map(|app| copy(app.key(), app.value()))
                .into_iter()
                .collect(),
            None => self
                .apps
                .iter()
                .map(|app| copy(app.key(), app.value()))
                .collect(),
        }
    }

    /// Keeps the latest change per instance (each is a full-state record), grouped by app.
    fn coalesce(version: u64, apps_hashcode: String, changes: &[Change]) -> Applications {
        let mut latest: HashMap<(&str, &str), usize> = HashMap::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            latest.insert((c.info.app.as_str(), c.info.instance_id.as_str()), i);
        }
        let mut keep: Vec<usize> = latest.into_values().collect();
        keep.sort_unstable();
        let mut by_app: BTreeMap<&str, Vec<Instance>> = BTreeMap::new();
        for i in keep {
            let c = &changes[i];
            by_app
                .entry(c.info.app.as_str())
                .or_default()
                .push(Instance {
                    info: c.info.clone(),
                    lease: c.lease,
                });
        }
        let applications = by_app
            .into_iter()
            .map(|(name, instances)| Application {
                name: name.to_owned(),
                instances,
            })
            .collect();
        Applications {
            version,
            apps_hashcode,
            applications,
        }
    }

    /// Counters for the dashboard and for tests.
    #[must_use]
    pub fn stats(&self, now: Millis) -> Stats {
        let (version, instances, expected_milli, delta_queue, apps_hashcode) = {
            let j = self.journal.lock();
            (
                j.version,
                j.instances,
                j.expected_milli,
                j.changes.len(),
                reconcile_hashcode(&j.counts),
            )
        };
        let renews_threshold = self.renews_threshold();
        Stats {
            version,
            apps: self.apps.len(),
            instances,
            renews_last_min: self.renews.last_minute(now),
            expected_renews_per_min: expected_milli as f64 / 1000.0,
            renews_threshold,
            self_preservation_enabled: self.cfg.self_preservation,
            self_preservation_active: self.self_preservation_active(now),
            delta_queue,
            apps_hashcode,
        }
    }

    fn renews_threshold(&self) -> u64 {
        let expected_milli = self.journal.lock().expected_milli;
        (expected_milli as f64 / 1000.0 * self.cfg.renewal_percent_threshold).floor() as u64
    }

    fn duration_ms(&self, info: &InstanceInfo) -> u64 {
        let max = self.cfg.max_lease_duration.as_millis() as u64;
        (u64::from(info.lease_info.duration_secs) * 1000).min(max)
    }

    fn app_entry(&self, app: &str) -> Option<Arc<AppEntry>> {
        match self.apps.get(app) {
            Some(e) => Some(e.clone()),
            None if app.bytes().any(|b| b.is_ascii_lowercase()) => {
                self.apps.get(&app.to_uppercase()).map(|e| e.clone())
            }
            None => None,
        }
    }

    /// Applies `edit` to an instance's record under the journal lock; records a MODIFIED
    /// change when `edit` says the visible record changed, and returns the stored record.
    /// Unless `edit` refuses the change, the lease is renewed, as Eureka's status
    /// updates do.
    fn change(
        &self,
        app: &str,
        id: &str,
        now: Millis,
        edit: impl FnOnce(&mut InstanceInfo, &mut Option<Status>) -> Result<bool>,
    ) -> Result<Arc<InstanceInfo>> {
        let mut journal = self.journal.lock();
        let entry = self.app_entry(app).ok_or_else(|| unknown(app, id))?;
        let mut slot = entry
            .instances
            .get_mut(id)
            .ok_or_else(|| unknown(app, id))?;
        let mut info = (*slot.info).clone();
        let old_status = info.status;
        let changed = edit(&mut info, &mut slot.override_status)?;
        slot.lease.renew(now);
        if !changed {
            return Ok(slot.info.clone());
        }
        info.action_type = ActionType::Modified;
        info.last_updated_timestamp = now;
        let info = Arc::new(info);
        slot.info = info.clone();
        let lease = lease_info(&info, &slot.lease, 0);
        drop(slot);
        journal.counts[old_status.index()] -= 1;
        journal.counts[info.status.index()] += 1;
        let version = self.record(&mut journal, now, info.clone(), lease);
        drop(journal);
        self.notify(version);
        Ok(info)
    }

    /// Removes an instance (cancel, or eviction when `evict_compensation` is set: then
    /// only if it is still expired under the lock).
    fn remove(
        &self,
        app: &str,
        id: &str,
        now: Millis,
        evict_compensation: Option<u64>,
    ) -> Result<()> {
        let mut journal = self.journal.lock();
        let entry = self.app_entry(app).ok_or_else(|| unknown(app, id))?;
        let (_, slot) = entry
            .instances
            .remove_if(id, |_, s| {
                evict_compensation.is_none_or(|c| s.lease.is_expired(now, c))
            })
            .ok_or_else(|| unknown(app, id))?;
        let mut info = (*slot.info).clone();
        info.action_type = ActionType::Deleted;
        info.last_updated_timestamp = now;
        let info = Arc::new(info);
        let lease = lease_info(&info, &slot.lease, now);
        journal.counts[slot.info.status.index()] -= 1;
        journal.instances -= 1;
        journal.expected_milli -= slot.expected_milli;
        self.metrics.instances.decrement(1.0);
        if entry.instances.is_empty() {
            self.apps
                .remove_if(&info.app, |_, e| e.instances.is_empty());
        }
        let version = self.record(&mut journal, now, info, lease);
        drop(journal);
        self.notify(version);
        Ok(())
    }

    fn record(
        &self,
        journal: &mut Journal,
        now: Millis,
        info: Arc<InstanceInfo>,
        lease: LeaseInfo,
    ) -> u64 {
        journal.version += 1;
        let version = journal.version;
        journal.changes.push_back(Change {
            version,
            at: now,
            info,
            lease,
        });
        self.prune(journal, now);
        journal.version
    }

    fn prune(&self, journal: &mut Journal, now: Millis) {
        let horizon = now.saturating_sub(self.cfg.delta_retention.as_millis() as u64);
        while journal.changes.front().is_some_and(|c| c.at < horizon) {
            journal.changes.pop_front();
        }
    }

    fn notify(&self, version: u64) {
        let listener = self.listener.read().clone();
        if let Some(l) = listener {
            l(version);
        }
    }

    /// A consistent copy of the registry, or of one app. The whole registry carries the
    /// journal's hashcode; one app, its own.
    ///
    /// Every visible change mutates the map and bumps the version inside one journal
    /// critical section, so a copy made between two reads of the version (each under
    /// the lock) that find it unchanged overlapped no change: it is the registry at
    /// that version. The copy is therefore made without the lock, and writers are not
    /// held up for O(instances); only when a change did land meanwhile is it made
    /// again under the lock (once, so that a stream of writers cannot starve it).
    fn snapshot(&self, only: Option<&str>) -> Applications {
        let before = self.journal.lock().version;
        let mut applications = self.copy_apps(only);
        let journal = self.journal.lock();
        if journal.version != before {
            applications = self.copy_apps(only);
        }
        let version = journal.version;
        let apps_hashcode = reconcile_hashcode(&journal.counts);
        drop(journal);
        applications.retain(|a| !a.instances.is_empty());
        applications.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        for a in &mut applications {
            a.instances
                .sort_unstable_by(|x, y| x.info.instance_id.cmp(&y.info.instance_id));
        }
        let mut apps = Applications {
            version,
            apps_hashcode,
            applications,
        };
        if only.is_some() {
            apps.apps_hashcode = apps.reconcile_hashcode();
        }
        apps
    }
}

impl Drop for Registry {
    /// Takes this registry out of the process's gauges (they add up over the
    /// registries of one process).
    fn drop(&mut self) {
        let instances = self.journal.get_mut().instances;
        if instances > 0 {
            self.metrics.instances.decrement(instances as f64);
        }
        if *self.preserving.get_mut() {
            self.metrics.self_preservation.decrement(1.0);
        }
    }
}

/// Eureka's status rules, first match wins: a DOWN/STARTING/UNKNOWN client is believed
/// (`DownOrStartingRule`); then an override (`OverrideExistsRule`); then, for a client
/// but not a peer, an existing UP or OUT_OF_SERVICE (`LeaseExistsRule`); else the client's.
#[must_use]
pub fn effective_status(
    own: Status,
    override_status: Option<Status>,
    existing: Option<Status>,
    is_replication: bool,
) -> Status {
    if !matches!(own, Status::Up | Status::OutOfService) {
        return own;
    }
    if let Some(o) = override_status {
        return o;
    }
    if !is_replication && let Some(e @ (Status::Up | Status::OutOfService)) = existing {
        return e;
    }
    own
}

fn lease_info(info: &InstanceInfo, lease: &Lease, eviction: Millis) -> LeaseInfo {
    LeaseInfo {
        renewal_interval_secs: info.lease_info.renewal_interval_secs,
        duration_secs: (lease.duration_ms / 1000) as u32,
        registration_timestamp: lease.registered_at,
        last_renewal_timestamp: lease.last_renewal(),
        eviction_timestamp: eviction,
        service_up_timestamp: lease.service_up_at,
    }
}

fn unknown(app: &str, id: &str) -> Error {
    Error::UnknownInstance {
        app: app.to_uppercase(),
        id: id.to_owned(),
    }
}

#[cfg(test)]
mod tests;
