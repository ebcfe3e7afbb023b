use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::model::{Application, Instance, LeaseInfo, Status};

fn sample() -> InstanceInfo {
    let mut i = InstanceInfo::new("orders", "orders-1", "host-1.example", 8080);
    i.ip_addr = "10.0.0.7".into();
    i.metadata.insert("zone", "a \"quoted\" <zone> & more");
    i.home_page_url = Some("http://host-1.example:8080/".into());
    i.vip_address = Some("orders.vip".into());
    i.secure_vip_address = Some("orders.secure".into());
    i.last_dirty_timestamp = 1_700_000_000_123;
    i.last_updated_timestamp = 1_700_000_000_456;
    i
}

fn doc(info: InstanceInfo) -> Applications {
    let lease = LeaseInfo {
        registration_timestamp: 5,
        last_renewal_timestamp: 6,
        ..LeaseInfo::default()
    };
    let info = Arc::new(info);
    Applications {
        version: 42,
        apps_hashcode: "UP_1_".into(),
        applications: vec![Application {
            name: info.app.clone(),
            instances: vec![Instance { info, lease }],
        }],
    }
}

#[test]
fn json_has_eurekas_field_shapes() {
    let body = String::from_utf8(applications_json(&doc(sample()))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let apps = &v["applications"];
    assert_eq!(apps["versions__delta"], "42");
    assert_eq!(apps["apps__hashcode"], "UP_1_");
    let inst = &apps["application"][0]["instance"][0];
    assert_eq!(
        inst["port"],
        serde_json::json!({"$": 8080, "@enabled": "true"})
    );
    assert_eq!(inst["securePort"]["@enabled"], "false");
    assert_eq!(
        inst["dataCenterInfo"]["@class"],
        "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"
    );
    assert_eq!(inst["dataCenterInfo"]["name"], "MyOwn");
    assert_eq!(inst["leaseInfo"]["durationInSecs"], 90);
    assert_eq!(inst["lastDirtyTimestamp"], "1700000000123");
    assert_eq!(inst["isCoordinatingDiscoveryServer"], "false");
    assert_eq!(inst["actionType"], "ADDED");
    assert_eq!(inst["app"], "ORDERS");
}

#[test]
fn empty_metadata_carries_jacksons_class_marker() {
    let mut i = sample();
    i.metadata.clear();
    let v: serde_json::Value =
        serde_json::from_slice(&instance_json(&i, &LeaseInfo::default())).unwrap();
    assert_eq!(
        v["instance"]["metadata"],
        serde_json::json!({"@class": "java.util.Collections$EmptyMap"})
    );
    let xml = String::from_utf8(instance_xml(&i, &LeaseInfo::default())).unwrap();
    assert!(
        xml.contains("<metadata class=\"java.util.Collections$EmptyMap\"/>"),
        "{xml}"
    );
    assert_eq!(
        decode_instance(xml.as_bytes(), Format::Xml)
            .unwrap()
            .metadata
            .len(),
        0
    );
}

#[test]
fn json_and_xml_round_trip() {
    for format in [Format::Json, Format::Xml] {
        let original = doc(sample());
        let back = decode_applications(&encode_applications(&original, format), format).unwrap();
        assert_eq!(back.version, 42, "{format:?}");
        assert_eq!(back.apps_hashcode, "UP_1_");
        let got = &back.applications[0].instances[0];
        let want = &original.applications[0].instances[0];
        assert_eq!(*got.info, *want.info, "{format:?}");
        assert_eq!(got.lease, want.lease, "{format:?}");
    }
}

#[test]
fn xml_has_xstream_shapes() {
    let xml = String::from_utf8(applications_xml(&doc(sample()))).unwrap();
    for needle in [
        "<applications><versions__delta>42</versions__delta><apps__hashcode>UP_1_</apps__hashcode>",
        "<port enabled=\"true\">8080</port>",
        "<securePort enabled=\"false\">443</securePort>",
        "<dataCenterInfo class=\"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo\"><name>MyOwn</name>",
        "<overriddenstatus>UNKNOWN</overriddenstatus>",
        "<zone>a &quot;quoted&quot; &lt;zone&gt; &amp; more</zone>",
    ] {
        assert!(xml.contains(needle), "missing {needle} in {xml}");
    }
}

#[test]
fn xml_never_carries_characters_xml_forbids() {
    let mut i = sample();
    i.metadata.insert("bell", "ring\u{7}ring");
    i.host_name = "h\u{0}st\u{ffff}".into();
    let xml = String::from_utf8(instance_xml(&i, &LeaseInfo::default())).unwrap();
    let forbidden = |c: char| {
        (c < ' ' && !matches!(c, '\t' | '\n' | '\r')) || matches!(c, '\u{fffe}' | '\u{ffff}')
    };
    assert!(!xml.contains(forbidden), "{xml:?}");
    let back = decode_instance(xml.as_bytes(), Format::Xml).unwrap();
    assert_eq!(back.metadata.get("bell"), Some("ring\u{fffd}ring"));
    assert_eq!(back.host_name, "h\u{fffd}st\u{fffd}");
    // JSON escapes them and keeps them.
    let json = instance_json(&i, &LeaseInfo::default());
    let back = decode_instance(&json, Format::Json).unwrap();
    assert_eq!(back.metadata.get("bell"), Some("ring\u{7}ring"));
}

#[test]
fn reads_what_real_clients_send() {
    // eureka-js-client: plain port numbers as strings, no instanceId (the host name is the id).
    let js = br#"{"instance":{"app":"jqservice","hostName":"localhost","ipAddr":"127.0.0.1",
        "port":{"$":"8080","@enabled":true},"vipAddress":"jq.vip","status":"UP",
        "dataCenterInfo":{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"},
        "leaseInfo":{"renewalIntervalInSecs":"1","durationInSecs":"3"},"countryId":"1"}}"#;
    let i = decode_instance(js, Format::Json).unwrap();
    assert_eq!(
        (i.app.as_str(), i.instance_id.as_str(), i.port.port),
        ("JQSERVICE", "localhost", 8080)
    );
    assert_eq!(
        (
            i.lease_info.renewal_interval_secs,
            i.lease_info.duration_secs
        ),
        (1, 3)
    );
    // Bare port number, metadata numbers, Amazon instance id.
    let aws =
        br#"{"instance":{"app":"a","hostName":"h","port":8081,"metadata":{"weight":3,"@class":"x"},
        "dataCenterInfo":{"name":"Amazon","metadata":{"instance-id":"i-123"}}}}"#;
    let i = decode_instance(aws, Format::Json).unwrap();
    assert_eq!(
        (i.instance_id.as_str(), i.port.port, i.port.enabled),
        ("i-123", 8081, true)
    );
    assert_eq!(i.metadata.get("weight"), Some("3"));
    assert_eq!(
        i.data_center_info.class,
        crate::model::DataCenterInfo::AMAZON_CLASS
    );
    // The Java client's XML.
    let xml = br#"<?xml version="1.0" encoding="UTF-8"?><instance><instanceId>h:a:1</instanceId>
        <hostName>h</hostName><app>A</app><ipAddr>1.2.3.4</ipAddr><status>STARTING</status>
        <overriddenstatus>UNKNOWN</overriddenstatus><port enabled="true">1</port>
        <securePort enabled="false">443</securePort><countryId>1</countryId>
        <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
        <metadata><k1>v1</k1><k2>v2</k2></metadata><lastDirtyTimestamp>77</lastDirtyTimestamp></instance>"#;
    let i = decode_instance(xml, Format::Xml).unwrap();
    assert_eq!(
        (i.instance_id.as_str(), i.status, i.last_dirty_timestamp),
        ("h:a:1", Status::Starting, 77)
    );
    assert_eq!(i.metadata.len(), 2);
}

#[test]
fn bad_input_names_the_problem() {
    let cases: &[(&[u8], Format, &str)] = &[
        (b"{", Format::Json, "malformed json"),
        (b"<instance><app>A</app>", Format::Xml, "malformed xml"),
        (
            br#"{"instance":{"app":"A"}}"#,
            Format::Json,
            "missing field `hostName`",
        ),
        (
            br#"{"instance":{"hostName":"h"}}"#,
            Format::Json,
            "missing field `app`",
        ),
        (
            br#"{"instance":{"app":"A","hostName":"h","port":70000}}"#,
            Format::Json,
            "not a port number",
        ),
        (
            br#"{"instance":{"app":"A","hostName":"h","port":{"$":"x"}}}"#,
            Format::Json,
            "expected an integer",
        ),
        (br#"{"instance":[1]}"#, Format::Json, "expected an object"),
        (
            b"<!DOCTYPE x [<!ENTITY a \"b\">]><instance/>",
            Format::Xml,
            "DOCTYPE",
        ),
        (b"<a></a><b></b>", Format::Xml, "more than one root"),
    ];
    for (body, format, want) in cases {
        let err = decode_instance(body, *format).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{:?}: {err}",
            String::from_utf8_lossy(body)
        );
    }
    let deep = "<a>".repeat(100) + &"</a>".repeat(100);
    assert!(
        decode_instance(deep.as_bytes(), Format::Xml)
            .unwrap_err()
            .to_string()
            .contains("deeper")
    );
}

#[test]
fn negotiation_is_eurekas() {
    assert_eq!(Format::from_accept(None), Format::Xml);
    assert_eq!(Format::from_accept(Some("*/*")), Format::Xml);
    assert_eq!(
        Format::from_accept(Some("application/json, text/plain")),
        Format::Json
    );
    assert_eq!(
        Format::from_content_type(Some("application/xml; charset=utf-8")),
        Format::Xml
    );
    assert_eq!(Format::from_content_type(None), Format::Json);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_instance(&body, Format::Json);
        let _ = decode_instance(&body, Format::Xml);
        let _ = decode_applications(&body, Format::Json);
        let _ = decode_applications(&body, Format::Xml);
    }

    #[test]
    fn mutated_documents_never_panic(
        format in prop_oneof![Just(Format::Json), Just(Format::Xml)],
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut body = encode_applications(&doc(sample()), format);
        for (at, byte) in cuts {
            let i = at.index(body.len());
            body[i] = byte;
        }
        let _ = decode_applications(&body, format);
        let _ = decode_instance(&body, format);
    }

    #[test]
    fn any_valid_instance_round_trips(
        app in "[A-Z][A-Z0-9_-]{0,12}",
        id in "[a-z0-9:.-]{1,20}",
        port in any::<u16>(),
        meta in proptest::collection::btree_map("[a-wyz][a-z0-9._-]{0,8}", "\\PC{0,12}", 0..4),
        status in prop_oneof![Just(Status::Up), Just(Status::Down), Just(Status::Starting),
                              Just(Status::OutOfService), Just(Status::Unknown)],
        dirty in any::<u32>(),
    ) {
        let mut info = InstanceInfo::new(&app, &id, "h", port);
        info.metadata = meta.into_iter().collect();
        info.status = status;
        info.last_dirty_timestamp = u64::from(dirty);
        for format in [Format::Json, Format::Xml] {
            let back = decode_applications(&encode_applications(&doc(info.clone()), format), format).unwrap();
            prop_assert_eq!(&*back.applications[0].instances[0].info, &info);
        }
    }
}
