//! XML as Eureka's XStream converters write it, and a reader into the JSON tree.

use std::borrow::Cow;
use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{Application, Applications, InstanceInfo, LeaseInfo};

/// How deep an XML document may nest; Eureka documents need 5 levels.
const MAX_DEPTH: usize = 32;

/// `<applications><versions__delta>..</versions__delta><apps__hashcode>..` and the apps.
#[must_use]
pub fn applications_xml(apps: &Applications) -> Vec<u8> {
    let mut out = String::with_capacity(256 + apps.instance_count() * 1400);
    out.push_str("<applications>");
    element(&mut out, "versions__delta", &apps.version.to_string());
    element(&mut out, "apps__hashcode", &apps.apps_hashcode);
    for app in &apps.applications {
        application(&mut out, app);
    }
    out.push_str("</applications>");
    out.into_bytes()
}

/// `<application><name>APP</name><instance>...</instance>...</application>`.
#[must_use]
pub fn application_xml(app: &Application) -> Vec<u8> {
    let mut out = String::with_capacity(64 + app.instances.len() * 1400);
    application(&mut out, app);
    out.into_bytes()
}

/// `<instance>...</instance>`.
#[must_use]
pub fn instance_xml(info: &InstanceInfo, lease: &LeaseInfo) -> Vec<u8> {
    let mut out = String::with_capacity(1400);
    instance(&mut out, info, lease);
    out.into_bytes()
}

fn application(out: &mut String, app: &Application) {
    out.push_str("<application>");
    element(out, "name", &app.name);
    for inst in &app.instances {
        instance(out, &inst.info, &inst.lease);
    }
    out.push_str("</application>");
}

fn instance(out: &mut String, info: &InstanceInfo, lease: &LeaseInfo) {
    out.push_str("<instance>");
    element(out, "instanceId", &info.instance_id);
    element(out, "hostName", &info.host_name);
    element(out, "app", &info.app);
    if let Some(g) = &info.app_group_name {
        element(out, "appGroupName", g);
    }
    element(out, "ipAddr", &info.ip_addr);
    if let Some(sid) = &info.sid {
        element(out, "sid", sid);
    }
    element(out, "status", info.status.as_str());
    element(out, "overriddenstatus", info.overridden_status.as_str());
    let _ = write!(
        out,
        "<port enabled=\"{}\">{}</port><securePort enabled=\"{}\">{}</securePort><countryId>{}</countryId>",
        info.port.enabled,
        info.port.port,
        info.secure_port.enabled,
        info.secure_port.port,
        info.country_id
    );
    let _ = write!(
        out,
        "<dataCenterInfo class=\"{}\">",
        text(&info.data_center_info.class)
    );
    element(out, "name", &info.data_center_info.name);
    if !info.data_center_info.metadata.is_empty() {
        out.push_str("<metadata>");
        map(out, info.data_center_info.metadata.iter());
        out.push_str("</metadata>");
    }
    out.push_str("</dataCenterInfo>");
    let _ = write!(
        out,
        "<leaseInfo><renewalIntervalInSecs>{}</renewalIntervalInSecs><durationInSecs>{}</durationInSecs>\
         <registrationTimestamp>{}</registrationTimestamp><lastRenewalTimestamp>{}</lastRenewalTimestamp>\
         <evictionTimestamp>{}</evictionTimestamp><serviceUpTimestamp>{}</serviceUpTimestamp></leaseInfo>",
        lease.renewal_interval_secs,
        lease.duration_secs,
        lease.registration_timestamp,
        lease.last_renewal_timestamp,
        lease.eviction_timestamp,
        lease.service_up_timestamp
    );
    if info.metadata.is_empty() {
        out.push_str("<metadata class=\"java.util.Collections$EmptyMap\"/>");
    } else {
        out.push_str("<metadata>");
        map(out, info.metadata.iter());
        out.push_str("</metadata>");
    }
    for (name, value) in super::optional_fields(info) {
        if let Some(v) = value {
            element(out, name, v);
        }
    }
    element(
        out,
        "isCoordinatingDiscoveryServer",
        if info.is_coordinating_discovery_server {
            "true"
        } else {
            "false"
        },
    );
    element(
        out,
        "lastUpdatedTimestamp",
        &info.last_updated_timestamp.to_string(),
    );
    element(
        out,
        "lastDirtyTimestamp",
        &info.last_dirty_timestamp.to_string(),
    );
    element(out, "actionType", info.action_type.as_str());
    if let Some(asg) = &info.asg_name {
        element(out, "asgName", asg);
    }
    out.push_str("</instance>");
}

/// Metadata keys become element names; a key that is not a valid XML name cannot be
/// written as one and is left out of the XML form (JSON carries every key).
fn map<'a>(out: &mut String, m: impl Iterator<Item = (&'a String, &'a String)>) {
    for (k, v) in m {
        if is_xml_name(k) {
            element(out, k, v);
        }
    }
}

fn is_xml_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
        && !s.to_ascii_lowercase().starts_with("xml")
}

fn element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push('>');
    out.push_str(&text(value));
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// `s` escaped for XML text or an attribute. Characters XML 1.0 cannot carry at
/// all, even escaped (controls other than tab, LF and CR; U+FFFE; U+FFFF), are
/// written as U+FFFD: one registration holding such a character in, say, a
/// metadata value must not make the whole registry unreadable to XML clients.
fn text(s: &str) -> Cow<'_, str> {
    let illegal = |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}');
    if !s.contains(illegal) {
        return escape(s);
    }
    let clean: String = s
        .chars()
        .map(|c| if illegal(c) { '\u{fffd}' } else { c })
        .collect();
    Cow::Owned(escape(&clean).into_owned())
}

/// Turns an XML document into the JSON tree the reader understands.
///
/// `<port enabled="true">8080</port>` becomes `{"port":{"@enabled":"true","$":"8080"}}`,
/// a leaf element becomes a string, repeated elements become an array. DOCTYPEs are
/// refused (no entity tricks), and nesting deeper than 32 levels is an error.
pub(crate) fn xml_to_value(body: &[u8]) -> Result<Value> {
    let text = std::str::from_utf8(body).map_err(|e| malformed(format!("not UTF-8: {e}")))?;
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut root: Option<(String, Value)> = None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| malformed(format!("at byte {}: {e}", reader.buffer_position())))?;
        match event {
            Event::Start(e) => {
                if root.is_some() {
                    return Err(malformed("more than one root element".into()));
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(malformed(format!("nested deeper than {MAX_DEPTH} levels")));
                }
                stack.push(Frame::open(&e)?);
            }
            Event::Empty(e) => {
                let frame = Frame::open(&e)?;
                let (name, value) = frame.close();
                attach(&mut stack, &mut root, name, value)?;
            }
            Event::End(_) => {
                let frame = stack
                    .pop()
                    .ok_or_else(|| malformed("unbalanced end tag".into()))?;
                let (name, value) = frame.close();
                attach(&mut stack, &mut root, name, value)?;
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| malformed(e.to_string()))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err(malformed("text outside the root element".into())),
                }
            }
            Event::CData(c) => {
                let bytes = c.into_inner();
                let s = std::str::from_utf8(&bytes).map_err(|e| malformed(e.to_string()))?;
                match stack.last_mut() {
                    Some(top) => top.text.push_str(s),
                    None => return Err(malformed("CDATA outside the root element".into())),
                }
            }
            Event::DocType(_) => return Err(malformed("DOCTYPE is not accepted".into())),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err(malformed("unexpected end of document".into()));
    }
    let (name, value) = root.ok_or_else(|| malformed("no root element".into()))?;
    let mut m = Map::new();
    m.insert(name, value);
    Ok(Value::Object(m))
}

struct Frame {
    name: String,
    map: Map<String, Value>,
    text: String,
}

impl Frame {
    fn open(e: &BytesStart<'_>) -> Result<Self> {
        let name = std::str::from_utf8(e.name().as_ref())
            .map_err(|e| malformed(e.to_string()))?
            .to_owned();
        let mut map = Map::new();
        for attr in e.attributes() {
            let attr = attr.map_err(|e| malformed(e.to_string()))?;
            let key =
                std::str::from_utf8(attr.key.as_ref()).map_err(|e| malformed(e.to_string()))?;
            let value = attr
                .unescape_value()
                .map_err(|e| malformed(e.to_string()))?;
            map.insert(format!("@{key}"), Value::String(value.into_owned()));
        }
        Ok(Self {
            name,
            map,
            text: String::new(),
        })
    }

    fn close(mut self) -> (String, Value) {
        let value = if self.map.is_empty() {
            Value::String(self.text)
        } else {
            if !self.text.trim().is_empty() {
                self.map.insert("$".into(), Value::String(self.text));
            }
            Value::Object(self.map)
        };
        (self.name, value)
    }
}

fn attach(
    stack: &mut [Frame],
    root: &mut Option<(String, Value)>,
    name: String,
    value: Value,
) -> Result<()> {
    let Some(parent) = stack.last_mut() else {
        if root.is_some() {
            return Err(malformed("more than one root element".into()));
        }
        *root = Some((name, value));
        return Ok(());
    };
    match parent.map.get_mut(&name) {
        None => {
            parent.map.insert(name, value);
        }
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
    Ok(())
}

fn malformed(reason: String) -> Error {
    Error::Malformed {
        format: "xml",
        reason,
    }
}
