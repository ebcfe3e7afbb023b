//! The registry's data: Eureka's `InstanceInfo` and the documents built from it.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch: the unit of every Eureka timestamp.
pub type Millis = u64;

/// An instance's status, as Eureka spells it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Status {
    /// Ready to take traffic.
    Up,
    /// Not working (the instance's own health check failed).
    Down,
    /// Starting up; not yet ready.
    Starting,
    /// Taken out of traffic by an operator (usually as a status override).
    OutOfService,
    /// Unknown; a heartbeat that finds this status asks the client to register again.
    #[default]
    Unknown,
}

impl Status {
    /// Every status, in the order of their names (the order of `apps__hashcode`).
    pub const ALL_BY_NAME: [Status; 5] = [
        Status::Down,
        Status::OutOfService,
        Status::Starting,
        Status::Unknown,
        Status::Up,
    ];

    /// The wire name: `UP`, `DOWN`, `STARTING`, `OUT_OF_SERVICE`, `UNKNOWN`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "UP",
            Status::Down => "DOWN",
            Status::Starting => "STARTING",
            Status::OutOfService => "OUT_OF_SERVICE",
            Status::Unknown => "UNKNOWN",
        }
    }

    /// Parses a wire name (ASCII case-insensitive); anything else is an error.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim();
        Status::ALL_BY_NAME
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| Error::InvalidStatus(s.chars().take(40).collect()))
    }

    /// Parses like Eureka's `InstanceStatus.toEnum`: an unknown name is [`Status::Unknown`].
    #[must_use]
    pub fn parse_lenient(s: &str) -> Self {
        Status::parse(s).unwrap_or(Status::Unknown)
    }

    /// Index into a per-status counter array (`[u64; 5]`, ordered as [`Status::ALL_BY_NAME`]).
    #[must_use]
    pub(crate) fn index(self) -> usize {
        match self {
            Status::Down => 0,
            Status::OutOfService => 1,
            Status::Starting => 2,
            Status::Unknown => 3,
            Status::Up => 4,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to an instance, as carried in a delta (`actionType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActionType {
    /// Registered (or registered again).
    #[default]
    Added,
    /// Changed: status, override or metadata.
    Modified,
    /// Cancelled or evicted.
    Deleted,
}

impl ActionType {
    /// The wire name: `ADDED`, `MODIFIED`, `DELETED`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ActionType::Added => "ADDED",
            ActionType::Modified => "MODIFIED",
            ActionType::Deleted => "DELETED",
        }
    }

    /// Parses a wire name (ASCII case-insensitive).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        [ActionType::Added, ActionType::Modified, ActionType::Deleted]
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// A port and whether it is enabled: `{"$":8080,"@enabled":"true"}` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    /// The port number.
    pub port: u16,
    /// Whether clients may use it.
    pub enabled: bool,
}

/// Where an instance runs: `dataCenterInfo` with Jackson's `@class` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataCenterInfo {
    /// `MyOwn`, `Amazon` or `Netflix` (the usual names are not allocated per instance).
    pub name: Cow<'static, str>,
    /// The Java class name Eureka's codecs expect (the two usual ones are not allocated).
    pub class: Cow<'static, str>,
    /// Amazon metadata (`instance-id`, `availability-zone`, ...), empty elsewhere.
    pub metadata: BTreeMap<String, String>,
}

impl DataCenterInfo {
    /// The `@class` of a data centre that is not Amazon's.
    pub const DEFAULT_CLASS: &'static str =
        "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo";
    /// The `@class` of Amazon's data centre.
    pub const AMAZON_CLASS: &'static str = "com.netflix.appinfo.AmazonInfo";

    /// A `MyOwn` data centre, as most non-AWS clients send.
    #[must_use]
    pub fn my_own() -> Self {
        Self {
            name: "MyOwn".into(),
            class: Self::DEFAULT_CLASS.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// Whether this is Amazon's data centre (name compared case-insensitively, as clients do).
    #[must_use]
    pub fn is_amazon(&self) -> bool {
        self.name.eq_ignore_ascii_case("amazon")
    }
}

impl Default for DataCenterInfo {
    fn default() -> Self {
        Self::my_own()
    }
}

/// Lease terms and timestamps: `leaseInfo` on the wire.
///
/// On registration only the two intervals matter (what the client promises); the
/// server fills in the timestamps when it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseInfo {
    /// How often the client promises to renew.
    pub renewal_interval_secs: u32,
    /// How long after the last renewal the lease expires.
    pub duration_secs: u32,
    /// When the lease was (last) registered.
    pub registration_timestamp: Millis,
    /// When the lease was last renewed.
    pub last_renewal_timestamp: Millis,
    /// When the lease was cancelled or evicted; 0 while it is alive.
    pub eviction_timestamp: Millis,
    /// When the instance was first seen UP under this lease.
    pub service_up_timestamp: Millis,
}

impl LeaseInfo {
    /// Eureka's default renewal interval.
    pub const DEFAULT_RENEWAL_INTERVAL_SECS: u32 = 30;
    /// Eureka's default lease duration.
    pub const DEFAULT_DURATION_SECS: u32 = 90;
}

impl Default for LeaseInfo {
    fn default() -> Self {
        Self {
            renewal_interval_secs: Self::DEFAULT_RENEWAL_INTERVAL_SECS,
            duration_secs: Self::DEFAULT_DURATION_SECS,
            registration_timestamp: 0,
            last_renewal_timestamp: 0,
            eviction_timestamp: 0,
            service_up_timestamp: 0,
        }
    }
}

/// An instance's metadata: a string map kept as a sorted vector, because instances
/// carry a handful of entries and a `BTreeMap` node costs ~500 bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Metadata(Vec<(String, String)>);

impl Metadata {
    /// Sets `key` to `value`; returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Option<String> {
        let (key, value) = (key.into(), value.into());
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    /// The value of `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let i = self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)).ok()?;
        Some(self.0.remove(i).1)
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Number of entries.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Entries, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl std::ops::Index<&str> for Metadata {
    type Output = String;

    /// Panics when `key` is absent, like `BTreeMap`'s index; use [`Metadata::get`] otherwise.
    fn index(&self, key: &str) -> &String {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(key)) {
            Ok(i) => &self.0[i].1,
            Err(_) => panic!("no metadata key {key:?}"),
        }
    }
}

impl<K: Into<String>, V: Into<String>> Extend<(K, V)> for Metadata {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Metadata::default();
        m.extend(iter);
        m.0.shrink_to_fit();
        m
    }
}

/// One instance of an application: Eureka's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// The instance's id (`instanceId`, else Amazon's `instance-id`, else `hostName`).
    pub instance_id: String,
    /// The application name, upper-cased as Eureka does.
    pub app: String,
    /// Optional application group.
    pub app_group_name: Option<String>,
    /// Host name (required).
    pub host_name: String,
    /// IP address.
    pub ip_addr: String,
    /// Security group id, if any.
    pub sid: Option<String>,
    /// The effective status (after override rules).
    pub status: Status,
    /// The override an operator set; [`Status::Unknown`] when there is none.
    pub overridden_status: Status,
    /// Plain port.
    pub port: Port,
    /// TLS port.
    pub secure_port: Port,
    /// Country id (Eureka always sends 1).
    pub country_id: i32,
    /// Data centre.
    pub data_center_info: DataCenterInfo,
    /// Lease terms the client asked for (timestamps are the server's, see [`Instance`]).
    pub lease_info: LeaseInfo,
    /// User metadata.
    pub metadata: Metadata,
    /// Home page URL.
    pub home_page_url: Option<String>,
    /// Status page URL.
    pub status_page_url: Option<String>,
    /// Health check URL.
    pub health_check_url: Option<String>,
    /// Secure health check URL.
    pub secure_health_check_url: Option<String>,
    /// VIP addresses (comma-separated).
    pub vip_address: Option<String>,
    /// Secure VIP addresses (comma-separated).
    pub secure_vip_address: Option<String>,
    /// Whether the instance is itself a discovery server.
    pub is_coordinating_discovery_server: bool,
    /// When the server last changed this record.
    pub last_updated_timestamp: Millis,
    /// When the client last changed this record (the conflict-resolution clock).
    pub last_dirty_timestamp: Millis,
    /// The last change, as carried in deltas.
    pub action_type: ActionType,
    /// Auto-scaling group, if any.
    pub asg_name: Option<String>,
}

impl InstanceInfo {
    /// A minimal UP instance of `app` on `host_name:port`, with id `instance_id`.
    #[must_use]
    pub fn new(app: &str, instance_id: &str, host_name: &str, port: u16) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            app: app.to_uppercase(),
            app_group_name: None,
            host_name: host_name.to_owned(),
            ip_addr: host_name.to_owned(),
            sid: None,
            status: Status::Up,
            overridden_status: Status::Unknown,
            port: Port {
                port,
                enabled: true,
            },
            secure_port: Port {
                port: 443,
                enabled: false,
            },
            country_id: 1,
            data_center_info: DataCenterInfo::my_own(),
            lease_info: LeaseInfo::default(),
            metadata: Metadata::default(),
            home_page_url: None,
            status_page_url: None,
            health_check_url: None,
            secure_health_check_url: None,
            vip_address: Some(app.to_lowercase()),
            secure_vip_address: None,
            is_coordinating_discovery_server: false,
            last_updated_timestamp: 0,
            last_dirty_timestamp: 0,
            action_type: ActionType::Added,
            asg_name: None,
        }
    }

    /// Whether `vip` is one of this instance's (comma-separated) VIP addresses.
    #[must_use]
    pub fn has_vip(&self, vip: &str) -> bool {
        has_address(self.vip_address.as_deref(), vip)
    }

    /// Whether `svip` is one of this instance's secure VIP addresses.
    #[must_use]
    pub fn has_secure_vip(&self, svip: &str) -> bool {
        has_address(self.secure_vip_address.as_deref(), svip)
    }

    /// Checks what the server needs: non-blank, bounded id, app and host; sane lease terms.
    pub fn validate(&self) -> Result<()> {
        check_name("instanceId", &self.instance_id)?;
        check_name("app", &self.app)?;
        if self.host_name.trim().is_empty() {
            return Err(Error::MissingField("hostName"));
        }
        if self.host_name.len() > MAX_NAME {
            return Err(Error::invalid(
                "hostName",
                &self.host_name,
                "longer than 256 bytes",
            ));
        }
        if self.lease_info.renewal_interval_secs == 0 {
            return Err(Error::invalid(
                "leaseInfo.renewalIntervalInSecs",
                "0",
                "must be positive",
            ));
        }
        if self.lease_info.duration_secs == 0 {
            return Err(Error::invalid(
                "leaseInfo.durationInSecs",
                "0",
                "must be positive",
            ));
        }
        if self.metadata.len() > MAX_METADATA {
            return Err(Error::invalid(
                "metadata",
                self.metadata.len().to_string(),
                "more than 256 entries",
            ));
        }
        Ok(())
    }
}

const MAX_NAME: usize = 256;
/// The most metadata entries an instance may hold (registrations and updates).
pub(crate) const MAX_METADATA: usize = 256;

fn check_name(field: &'static str, v: &str) -> Result<()> {
    if v.trim().is_empty() {
        return Err(Error::MissingField(field));
    }
    if v.len() > MAX_NAME {
        return Err(Error::invalid(field, v, "longer than 256 bytes"));
    }
    if v.chars().any(|c| c == '/' || c.is_control()) {
        return Err(Error::invalid(
            field,
            v,
            "contains '/' or a control character",
        ));
    }
    Ok(())
}

fn has_address(list: Option<&str>, wanted: &str) -> bool {
    list.is_some_and(|l| l.split(',').any(|a| a.trim().eq_ignore_ascii_case(wanted)))
}

/// An instance as served: its record and its lease as of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance's record (shared, immutable).
    pub info: Arc<InstanceInfo>,
    /// Lease terms and timestamps.
    pub lease: LeaseInfo,
}

/// All instances of one application.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Application {
    /// The upper-cased name.
    pub name: String,
    /// Its instances, sorted by id.
    pub instances: Vec<Instance>,
}

/// A registry document: the full registry, a delta, or a VIP's instances.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applications {
    /// The registry version this document was taken at (`versions__delta`).
    pub version: u64,
    /// Eureka's reconcile code of the *whole* registry at that version (`apps__hashcode`).
    pub apps_hashcode: String,
    /// Applications, sorted by name.
    pub applications: Vec<Application>,
}

impl Applications {
    /// Number of instances across all applications.
    #[must_use]
    pub fn instance_count(&self) -> usize {
        self.applications.iter().map(|a| a.instances.len()).sum()
    }

    /// Eureka's reconcile code computed over this document's own instances.
    #[must_use]
    pub fn reconcile_hashcode(&self) -> String {
        let mut counts = [0u64; 5];
        for inst in self.applications.iter().flat_map(|a| &a.instances) {
            counts[inst.info.status.index()] += 1;
        }
        reconcile_hashcode(&counts)
    }
}

/// Eureka's `apps__hashcode`: `STATUS_count_` for each status present, by status name.
///
/// `[DOWN, OUT_OF_SERVICE, STARTING, UNKNOWN, UP]` counts of `[1, 0, 0, 0, 3]` give
/// `DOWN_1_UP_3_`, exactly as Eureka's `Applications.getReconcileHashCode` (a `TreeMap`).
#[must_use]
pub fn reconcile_hashcode(counts: &[u64; 5]) -> String {
    let mut s = String::new();
    for st in Status::ALL_BY_NAME {
        let n = counts[st.index()];
        if n > 0 {
            s.push_str(st.as_str());
            s.push('_');
            s.push_str(&n.to_string());
            s.push('_');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashcode_matches_eurekas_tree_map_order() {
        let mut counts = [0; 5];
        counts[Status::Up.index()] = 3;
        counts[Status::Down.index()] = 1;
        assert_eq!(reconcile_hashcode(&counts), "DOWN_1_UP_3_");
        assert_eq!(reconcile_hashcode(&[0; 5]), "");
    }

    #[test]
    fn status_parsing_is_strict_or_lenient_on_request() {
        assert_eq!(
            Status::parse("out_of_service").unwrap(),
            Status::OutOfService
        );
        assert!(matches!(Status::parse("BOGUS"), Err(Error::InvalidStatus(s)) if s == "BOGUS"));
        assert_eq!(Status::parse_lenient("BOGUS"), Status::Unknown);
    }

    #[test]
    fn vip_lists_are_comma_separated() {
        let mut i = InstanceInfo::new("a", "i1", "h", 80);
        i.vip_address = Some("x.vip, y.vip".into());
        assert!(i.has_vip("y.vip") && i.has_vip("X.VIP") && !i.has_vip("z"));
    }

    #[test]
    fn validation_names_the_field() {
        let mut i = InstanceInfo::new("a", "i1", "h", 80);
        i.host_name.clear();
        assert!(matches!(i.validate(), Err(Error::MissingField("hostName"))));
        let mut i = InstanceInfo::new("a/b", "i1", "h", 80);
        assert!(matches!(
            i.validate(),
            Err(Error::InvalidField { field: "app", .. })
        ));
        i.app = "A".into();
        i.lease_info.duration_secs = 0;
        assert!(i.validate().is_err());
    }
}
