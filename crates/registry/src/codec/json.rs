//! JSON as Eureka's Jackson codec writes it.

use std::fmt::Write as _;

use crate::model::{Application, Applications, InstanceInfo, LeaseInfo};

/// `{"applications":{"versions__delta":"7","apps__hashcode":"UP_2_","application":[...]}}`.
#[must_use]
pub fn applications_json(apps: &Applications) -> Vec<u8> {
    let mut out = String::with_capacity(256 + apps.instance_count() * 1100);
    out.push_str("{\"applications\":{\"versions__delta\":");
    string(&mut out, &apps.version.to_string());
    out.push_str(",\"apps__hashcode\":");
    string(&mut out, &apps.apps_hashcode);
    out.push_str(",\"application\":[");
    for (i, app) in apps.applications.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        application(&mut out, app);
    }
    out.push_str("]}}");
    out.into_bytes()
}

/// `{"application":{"name":"APP","instance":[...]}}`.
#[must_use]
pub fn application_json(app: &Application) -> Vec<u8> {
    let mut out = String::with_capacity(64 + app.instances.len() * 1100);
    out.push_str("{\"application\":");
    application(&mut out, app);
    out.push('}');
    out.into_bytes()
}

/// `{"instance":{...}}`.
#[must_use]
pub fn instance_json(info: &InstanceInfo, lease: &LeaseInfo) -> Vec<u8> {
    let mut out = String::with_capacity(1100);
    out.push_str("{\"instance\":");
    instance(&mut out, info, lease);
    out.push('}');
    out.into_bytes()
}

fn application(out: &mut String, app: &Application) {
    out.push_str("{\"name\":");
    string(out, &app.name);
    out.push_str(",\"instance\":[");
    for (i, inst) in app.instances.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        instance(out, &inst.info, &inst.lease);
    }
    out.push_str("]}");
}

pub(crate) fn instance(out: &mut String, info: &InstanceInfo, lease: &LeaseInfo) {
    out.push_str("{\"instanceId\":");
    string(out, &info.instance_id);
    field(out, "hostName", &info.host_name);
    field(out, "app", &info.app);
    if let Some(g) = &info.app_group_name {
        field(out, "appGroupName", g);
    }
    field(out, "ipAddr", &info.ip_addr);
    if let Some(sid) = &info.sid {
        field(out, "sid", sid);
    }
    field(out, "status", info.status.as_str());
    field(out, "overriddenStatus", info.overridden_status.as_str());
    for (name, port) in [
        (",\"port\":{\"$\":", info.port),
        (",\"securePort\":{\"$\":", info.secure_port),
    ] {
        out.push_str(name);
        number(out, u64::from(port.port));
        out.push_str(if port.enabled {
            ",\"@enabled\":\"true\"}"
        } else {
            ",\"@enabled\":\"false\"}"
        });
    }
    let _ = write!(out, ",\"countryId\":{}", info.country_id);
    out.push_str(",\"dataCenterInfo\":{\"@class\":");
    string(out, &info.data_center_info.class);
    field(out, "name", &info.data_center_info.name);
    if !info.data_center_info.metadata.is_empty() {
        out.push_str(",\"metadata\":");
        map(out, info.data_center_info.metadata.iter());
    }
    out.push('}');
    for (name, v) in [
        (
            ",\"leaseInfo\":{\"renewalIntervalInSecs\":",
            u64::from(lease.renewal_interval_secs),
        ),
        (",\"durationInSecs\":", u64::from(lease.duration_secs)),
        (",\"registrationTimestamp\":", lease.registration_timestamp),
        (",\"lastRenewalTimestamp\":", lease.last_renewal_timestamp),
        (",\"evictionTimestamp\":", lease.eviction_timestamp),
        (",\"serviceUpTimestamp\":", lease.service_up_timestamp),
    ] {
        out.push_str(name);
        number(out, v);
    }
    out.push('}');
    out.push_str(",\"metadata\":");
    if info.metadata.is_empty() {
        out.push_str("{\"@class\":\"java.util.Collections$EmptyMap\"}");
    } else {
        map(out, info.metadata.iter());
    }
    for (name, value) in super::optional_fields(info) {
        if let Some(v) = value {
            field(out, name, v);
        }
    }
    field(
        out,
        "isCoordinatingDiscoveryServer",
        if info.is_coordinating_discovery_server {
            "true"
        } else {
            "false"
        },
    );
    out.push_str(",\"lastUpdatedTimestamp\":\"");
    number(out, info.last_updated_timestamp);
    out.push_str("\",\"lastDirtyTimestamp\":\"");
    number(out, info.last_dirty_timestamp);
    out.push('"');
    field(out, "actionType", info.action_type.as_str());
    if let Some(asg) = &info.asg_name {
        field(out, "asgName", asg);
    }
    out.push('}');
}

fn field(out: &mut String, name: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(name);
    out.push_str("\":");
    string(out, value);
}

fn map<'a>(out: &mut String, entries: impl Iterator<Item = (&'a String, &'a String)>) {
    out.push('{');
    for (i, (k, v)) in entries.enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(out, k);
        out.push(':');
        string(out, v);
    }
    out.push('}');
}

/// Writes `s` as a JSON string literal. Only ASCII bytes need escaping, so the
/// scan is over bytes: UTF-8 continuation bytes are never `"`, `\\` or controls.
pub(crate) fn string(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if esc.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(esc);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Appends `n` in decimal without going through `fmt`.
pub(crate) fn number(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or("0"));
}
