//! Eureka's wire formats: JSON (Jackson's shapes) and XML (XStream's), both ways.
//!
//! Decoding is lenient the way Eureka's own codecs are: numbers may come as strings,
//! ports as `{"$":8080,"@enabled":"true"}`, `8080` or `"8080"`, single-element lists
//! as bare objects, and unknown fields are ignored. XML is first turned into the same
//! tree as JSON (attributes become `@name` keys, element text `$`), so both formats
//! go through one validating reader. No input makes these functions panic; malformed
//! input is an [`crate::Error`] naming the field.
//!
//! The writers always produce well-formed documents: characters XML 1.0 cannot
//! carry (controls other than tab, LF and CR) are written as U+FFFD in XML, and
//! escaped in JSON, which keeps them.

mod json;
mod read;
mod xml;

pub use json::{application_json, applications_json, instance_json};
pub(crate) use json::{instance as write_instance_json, string as write_json_string};
use read::applications_from_value;
pub(crate) use read::instance_from_value;
use xml::xml_to_value;
pub use xml::{application_xml, applications_xml, instance_xml};

use crate::error::{Error, Result};
use crate::model::{Applications, InstanceInfo};

/// The optional text fields of an instance, in the order both codecs write them.
pub(crate) fn optional_fields(info: &InstanceInfo) -> [(&'static str, Option<&String>); 6] {
    [
        ("homePageUrl", info.home_page_url.as_ref()),
        ("statusPageUrl", info.status_page_url.as_ref()),
        ("healthCheckUrl", info.health_check_url.as_ref()),
        (
            "secureHealthCheckUrl",
            info.secure_health_check_url.as_ref(),
        ),
        ("vipAddress", info.vip_address.as_ref()),
        ("secureVipAddress", info.secure_vip_address.as_ref()),
    ]
}

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/xml` (Eureka's default).
    Xml,
}

impl Format {
    /// Eureka's negotiation: JSON only when the `Accept` header mentions `json`, else XML.
    #[must_use]
    pub fn from_accept(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("json") => Format::Json,
            _ => Format::Xml,
        }
    }

    /// The body format from a `Content-Type` header: XML when it says `xml`, else JSON.
    #[must_use]
    pub fn from_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(c) if c.to_ascii_lowercase().contains("xml") => Format::Xml,
            _ => Format::Json,
        }
    }

    /// The `Content-Type` to answer with.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Xml => "application/xml",
        }
    }

    /// The lower-case name used in messages.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Xml => "xml",
        }
    }
}

/// Parses a body in `format` into a generic tree.
pub(crate) fn parse_value(body: &[u8], format: Format) -> Result<serde_json::Value> {
    match format {
        Format::Json => serde_json::from_slice(body).map_err(|e| Error::Malformed {
            format: "json",
            reason: e.to_string(),
        }),
        Format::Xml => xml_to_value(body),
    }
}

/// Decodes a registration body (`{"instance":{...}}` or `<instance>...</instance>`).
pub fn decode_instance(body: &[u8], format: Format) -> Result<InstanceInfo> {
    instance_from_value(&parse_value(body, format)?)
}

/// Decodes a registry document (full, delta, or VIP).
pub fn decode_applications(body: &[u8], format: Format) -> Result<Applications> {
    applications_from_value(&parse_value(body, format)?)
}

/// Encodes a registry document.
#[must_use]
pub fn encode_applications(apps: &Applications, format: Format) -> Vec<u8> {
    match format {
        Format::Json => applications_json(apps),
        Format::Xml => applications_xml(apps),
    }
}

#[cfg(test)]
mod tests;
