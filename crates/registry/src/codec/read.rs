//! One lenient, validating reader over the JSON tree (XML is converted to it first).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::model::{
    ActionType, Application, Applications, DataCenterInfo, Instance, InstanceInfo, LeaseInfo,
    Metadata, Port, Status,
};

/// Reads an instance from `{"instance":{...}}` or from the bare object.
///
/// Only the lease *terms* (`renewalIntervalInSecs`, `durationInSecs`) are kept in
/// [`InstanceInfo::lease_info`]; lease timestamps are the server's business.
pub(crate) fn instance_from_value(v: &Value) -> Result<InstanceInfo> {
    instance_and_lease(v).map(|(info, _)| info)
}

/// Reads an instance and the full `leaseInfo` it carries.
fn instance_and_lease(v: &Value) -> Result<(InstanceInfo, LeaseInfo)> {
    let obj = match v.get("instance") {
        Some(inner) => inner,
        None => v,
    };
    let Value::Object(map) = obj else {
        return Err(Error::invalid("instance", kind(obj), "expected an object"));
    };
    let get = |k: &str| map.get(k).filter(|v| !v.is_null());
    let text =
        |k: &'static str| -> Result<Option<String>> { get(k).map(|v| string(k, v)).transpose() };

    let host_name = text("hostName")?
        .filter(|h| !h.trim().is_empty())
        .ok_or(Error::MissingField("hostName"))?;
    let app = text("app")?
        .filter(|a| !a.trim().is_empty())
        .ok_or(Error::MissingField("app"))?
        .to_uppercase();
    let data_center_info = match get("dataCenterInfo") {
        Some(dc) => data_center(dc)?,
        None => DataCenterInfo::my_own(),
    };
    let explicit_id = text("instanceId")?.filter(|i| !i.trim().is_empty());
    let instance_id = explicit_id
        .or_else(|| {
            data_center_info
                .is_amazon()
                .then(|| data_center_info.metadata.get("instance-id").cloned())
                .flatten()
        })
        .unwrap_or_else(|| host_name.clone());
    let status = match text("status")? {
        Some(s) => Status::parse_lenient(&s),
        None => Status::Up,
    };
    let overridden = text("overriddenStatus")?.or(text("overriddenstatus")?);
    let full_lease = match get("leaseInfo") {
        Some(l) => lease(l)?,
        None => LeaseInfo::default(),
    };
    let info = InstanceInfo {
        instance_id,
        app,
        app_group_name: text("appGroupName")?,
        ip_addr: text("ipAddr")?.unwrap_or_else(|| host_name.clone()),
        host_name,
        sid: text("sid")?,
        status,
        overridden_status: overridden.map_or(Status::Unknown, |s| Status::parse_lenient(&s)),
        port: match get("port") {
            Some(p) => port("port", p, true)?,
            None => Port {
                port: 7001,
                enabled: true,
            },
        },
        secure_port: match get("securePort") {
            Some(p) => port("securePort", p, false)?,
            None => Port {
                port: 7002,
                enabled: false,
            },
        },
        country_id: match get("countryId") {
            Some(c) => i32::try_from(integer("countryId", c)?)
                .map_err(|_| Error::invalid("countryId", c.to_string(), "out of range"))?,
            None => 1,
        },
        data_center_info,
        lease_info: LeaseInfo {
            renewal_interval_secs: full_lease.renewal_interval_secs,
            duration_secs: full_lease.duration_secs,
            ..LeaseInfo::default()
        },
        metadata: match get("metadata") {
            Some(m) => string_map("metadata", m)?.into_iter().collect(),
            None => Metadata::default(),
        },
        home_page_url: text("homePageUrl")?,
        status_page_url: text("statusPageUrl")?,
        health_check_url: text("healthCheckUrl")?,
        secure_health_check_url: text("secureHealthCheckUrl")?,
        vip_address: text("vipAddress")?,
        secure_vip_address: text("secureVipAddress")?,
        is_coordinating_discovery_server: match get("isCoordinatingDiscoveryServer") {
            Some(b) => boolean("isCoordinatingDiscoveryServer", b)?,
            None => false,
        },
        last_updated_timestamp: opt_u64("lastUpdatedTimestamp", get("lastUpdatedTimestamp"))?,
        last_dirty_timestamp: opt_u64("lastDirtyTimestamp", get("lastDirtyTimestamp"))?,
        action_type: match text("actionType")? {
            Some(a) => ActionType::parse(&a).ok_or_else(|| {
                Error::invalid("actionType", &a, "expected ADDED, MODIFIED or DELETED")
            })?,
            None => ActionType::Added,
        },
        asg_name: text("asgName")?,
    };
    info.validate()?;
    Ok((info, full_lease))
}

/// Reads a registry document: `{"applications":{...}}` (or an `<applications>` tree).
pub(crate) fn applications_from_value(v: &Value) -> Result<Applications> {
    let root = v.get("applications").unwrap_or(v);
    if !root.is_object() {
        return Err(Error::invalid(
            "applications",
            kind(root),
            "expected an object",
        ));
    }
    let version = opt_u64("versions__delta", root.get("versions__delta"))?;
    let apps_hashcode = match root.get("apps__hashcode").filter(|v| !v.is_null()) {
        Some(h) => string("apps__hashcode", h)?,
        None => String::new(),
    };
    let mut applications = Vec::new();
    for app in list(root.get("application")) {
        let name = match app.get("name") {
            Some(n) => string("application.name", n)?.to_uppercase(),
            None => return Err(Error::MissingField("application.name")),
        };
        let mut instances = Vec::new();
        for inst in list(app.get("instance")) {
            let (info, lease) = instance_and_lease(inst)?;
            instances.push(Instance {
                info: Arc::new(info),
                lease,
            });
        }
        applications.push(Application { name, instances });
    }
    Ok(Applications {
        version,
        apps_hashcode,
        applications,
    })
}

/// A shared constant when `s` is one of `known`, so that each instance does not keep a copy.
fn interned(s: String, known: &[&'static str]) -> Cow<'static, str> {
    match known.iter().find(|k| **k == s) {
        Some(k) => Cow::Borrowed(k),
        None => Cow::Owned(s),
    }
}

/// A list that Eureka may send as an array, a single object, or not at all.
fn list(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(Value::Null) | None => Vec::new(),
        Some(one) => vec![one],
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Text from a string, a number or a boolean; XML's `{"$": text}` is unwrapped.
fn string(field: &'static str, v: &Value) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Object(m) if m.contains_key("$") => string(field, &m["$"]),
        Value::Object(m) if m.keys().all(|k| k.starts_with('@')) => Ok(String::new()),
        other => Err(Error::invalid(field, kind(other), "expected text")),
    }
}

fn integer(field: &'static str, v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e18)
                    .map(|f| f as i64)
            })
            .ok_or_else(|| Error::invalid(field, n.to_string(), "expected an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| Error::invalid(field, s, "expected an integer")),
        Value::Object(m) if m.contains_key("$") => integer(field, &m["$"]),
        other => Err(Error::invalid(field, kind(other), "expected an integer")),
    }
}

fn opt_u64(field: &'static str, v: Option<&Value>) -> Result<u64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(0),
        Some(v) => u64::try_from(integer(field, v)?)
            .map_err(|_| Error::invalid(field, v.to_string(), "must not be negative")),
    }
}

fn boolean(field: &'static str, v: &Value) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.trim().eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.trim().eq_ignore_ascii_case("false") => Ok(false),
        Value::Object(m) if m.contains_key("$") => boolean(field, &m["$"]),
        other => Err(Error::invalid(
            field,
            other.to_string(),
            "expected true or false",
        )),
    }
}

fn port(field: &'static str, v: &Value, default_enabled: bool) -> Result<Port> {
    let (number, enabled) = match v {
        Value::Object(m) => {
            let n = m.get("$").ok_or(Error::MissingField(field))?;
            let enabled = match m.get("@enabled").filter(|e| !e.is_null()) {
                Some(e) => boolean(field, e)?,
                None => default_enabled,
            };
            (integer(field, n)?, enabled)
        }
        other => (integer(field, other)?, default_enabled),
    };
    let port = u16::try_from(number)
        .map_err(|_| Error::invalid(field, number.to_string(), "not a port number"))?;
    Ok(Port { port, enabled })
}

fn data_center(v: &Value) -> Result<DataCenterInfo> {
    let Value::Object(m) = v else {
        return Err(Error::invalid(
            "dataCenterInfo",
            kind(v),
            "expected an object",
        ));
    };
    let name = match m.get("name") {
        Some(n) => interned(
            string("dataCenterInfo.name", n)?,
            &["MyOwn", "Amazon", "Netflix"],
        ),
        None => Cow::Borrowed("MyOwn"),
    };
    let class = match m.get("@class") {
        Some(c) => interned(
            string("dataCenterInfo.@class", c)?,
            &[DataCenterInfo::DEFAULT_CLASS, DataCenterInfo::AMAZON_CLASS],
        ),
        None if name.eq_ignore_ascii_case("amazon") => Cow::Borrowed(DataCenterInfo::AMAZON_CLASS),
        None => Cow::Borrowed(DataCenterInfo::DEFAULT_CLASS),
    };
    let metadata = match m.get("metadata") {
        Some(md) if !md.is_null() => string_map("dataCenterInfo.metadata", md)?,
        _ => BTreeMap::new(),
    };
    Ok(DataCenterInfo {
        name,
        class,
        metadata,
    })
}

fn lease(v: &Value) -> Result<LeaseInfo> {
    if !v.is_object() {
        return Err(Error::invalid("leaseInfo", kind(v), "expected an object"));
    }
    let secs = |k: &'static str, default: u32| -> Result<u32> {
        match v.get(k).filter(|x| !x.is_null()) {
            None => Ok(default),
            Some(x) => {
                let n = integer(k, x)?;
                u32::try_from(n).map_err(|_| Error::invalid(k, n.to_string(), "out of range"))
            }
        }
    };
    Ok(LeaseInfo {
        renewal_interval_secs: secs(
            "renewalIntervalInSecs",
            LeaseInfo::DEFAULT_RENEWAL_INTERVAL_SECS,
        )?,
        duration_secs: secs("durationInSecs", LeaseInfo::DEFAULT_DURATION_SECS)?,
        registration_timestamp: opt_u64("registrationTimestamp", v.get("registrationTimestamp"))?,
        last_renewal_timestamp: opt_u64("lastRenewalTimestamp", v.get("lastRenewalTimestamp"))?,
        eviction_timestamp: opt_u64("evictionTimestamp", v.get("evictionTimestamp"))?,
        service_up_timestamp: opt_u64("serviceUpTimestamp", v.get("serviceUpTimestamp"))?,
    })
}

/// A string map; Jackson's `"@class"` marker (and XML attributes) are dropped.
fn string_map(field: &'static str, v: &Value) -> Result<BTreeMap<String, String>> {
    let Value::Object(m) = v else {
        return match v {
            Value::String(s) if s.trim().is_empty() => Ok(BTreeMap::new()),
            other => Err(Error::invalid(field, kind(other), "expected an object")),
        };
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        if k.starts_with('@') {
            continue;
        }
        let s = match val {
            Value::Null => String::new(),
            Value::Array(_) => return Err(Error::invalid(field, k, "a value is a list")),
            other => string(field, other)?,
        };
        out.insert(k.clone(), s);
    }
    Ok(out)
}
