//! Eureka REST API v2 against a real server: shapes, negotiation, gzip, errors, auth.

use std::io::Read as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use registry::{Auth, ManualClock, Server, Status};
use serde_json::Value;

use crate::support::{cfg, code, eventually, http, instance_json, register, start};

#[tokio::test]
async fn full_cycle_under_both_prefixes_in_json_and_xml() {
    let server = start(cfg()).await;
    let addr = server.local_addr();
    for prefix in ["eureka", "eureka/v2"] {
        let base = format!("http://{addr}/{prefix}");
        let app = format!("SHOP-{}", prefix.len());
        assert_eq!(register(&base, &app, "s1").await.status(), 204);
        // JSON only when Accept asks for it, XML otherwise.
        let json: Value = http()
            .get(format!("{base}/apps/"))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let apps = json["applications"]["application"].as_array().unwrap();
        let inst = &apps.iter().find(|a| a["name"] == app.as_str()).unwrap()["instance"][0];
        assert_eq!(
            inst["port"],
            serde_json::json!({"$": 8080, "@enabled": "true"})
        );
        assert_eq!(inst["leaseInfo"]["durationInSecs"], 30);
        let xml = http().get(format!("{base}/apps")).send().await.unwrap();
        assert_eq!(xml.headers()["content-type"], "application/xml");
        let xml = xml.text().await.unwrap();
        assert!(xml.starts_with("<applications><versions__delta>"), "{xml}");
        assert!(xml.contains("<port enabled=\"true\">8080</port>"));
        // Per app, per instance, by id.
        let one = http()
            .get(format!("{base}/apps/{}", app.to_lowercase()))
            .header("Accept", "json")
            .send()
            .await
            .unwrap();
        assert_eq!(one.status(), 200);
        assert_eq!(
            one.json::<Value>().await.unwrap()["application"]["instance"][0]["instanceId"],
            "s1"
        );
        let by_id = http()
            .get(format!("{base}/instances/s1"))
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(
            by_id.json::<Value>().await.unwrap()["instance"]["app"],
            app.as_str()
        );
        let inst_xml = http()
            .get(format!("{base}/apps/{app}/s1"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            inst_xml.starts_with("<instance><instanceId>s1</instanceId>"),
            "{inst_xml}"
        );
        // Heartbeat, cancel, then 404s.
        let c = http();
        assert_eq!(code(c.put(format!("{base}/apps/{app}/s1"))).await, 200);
        assert_eq!(code(c.delete(format!("{base}/apps/{app}/s1"))).await, 200);
        assert_eq!(code(c.put(format!("{base}/apps/{app}/s1"))).await, 404);
        assert_eq!(code(c.delete(format!("{base}/apps/{app}/s1"))).await, 404);
        let gone = c.get(format!("{base}/apps/{app}")).send().await.unwrap();
        assert_eq!(gone.status(), 404);
        assert!(gone.text().await.unwrap().contains("unknown app"));
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn xml_registration_vips_and_the_delta() {
    let server = start(cfg()).await;
    let base = server.service_url();
    let xml = r#"<instance><instanceId>x1</instanceId><hostName>h1</hostName><app>XAPP</app>
        <ipAddr>10.1.1.1</ipAddr><status>UP</status><port enabled="true">9090</port>
        <securePort enabled="true">9443</securePort><vipAddress>x.vip</vipAddress>
        <secureVipAddress>x.svip</secureVipAddress>
        <dataCenterInfo class="com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo"><name>MyOwn</name></dataCenterInfo>
        <metadata><owner>team-x</owner></metadata></instance>"#;
    let r = http()
        .post(format!("{base}/apps/XAPP"))
        .header("Content-Type", "application/xml")
        .body(xml)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    let json = |path: String| async move {
        http()
            .get(path)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let vip = json(format!("{base}/vips/x.vip")).await;
    assert_eq!(
        vip["applications"]["application"][0]["instance"][0]["metadata"]["owner"],
        "team-x"
    );
    let svip = json(format!("{base}/svips/x.svip")).await;
    assert_eq!(svip["applications"]["apps__hashcode"], "UP_1_");
    let none = json(format!("{base}/vips/nothing")).await;
    assert_eq!(none["applications"]["application"], serde_json::json!([]));
    let delta = json(format!("{base}/apps/delta")).await;
    let d = &delta["applications"];
    assert_eq!(d["apps__hashcode"], "UP_1_");
    assert_eq!(d["application"][0]["instance"][0]["actionType"], "ADDED");
    assert_eq!(d["versions__delta"], "1");
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn overrides_metadata_and_dirty_timestamps_over_http() {
    let server = start(cfg()).await;
    let base = server.service_url();
    assert_eq!(register(&base, "OPS", "o1").await.status(), 204);
    let c = http();
    let put = |path: &str| c.put(format!("{base}/apps/OPS/o1{path}"));
    assert_eq!(
        put("/status?value=OUT_OF_SERVICE")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(put("").send().await.unwrap().status(), 200);
    let info = server.registry().instance("OPS", "o1").unwrap().info;
    assert_eq!(
        (info.status, info.overridden_status),
        (Status::OutOfService, Status::OutOfService)
    );
    let bad = put("/status?value=SLEEPY").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("SLEEPY"));
    assert_eq!(
        put("/status").send().await.unwrap().status(),
        400,
        "value is required"
    );
    assert_eq!(
        code(c.put(format!("{base}/apps/OPS/zz/status?value=UP"))).await,
        404
    );
    assert_eq!(
        put("/metadata?weight=5&zone=b")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        server
            .registry()
            .instance("OPS", "o1")
            .unwrap()
            .info
            .metadata["weight"],
        "5"
    );
    // Deleting the override: the next heartbeat answers 404 so that the client registers again.
    assert_eq!(
        code(c.delete(format!("{base}/apps/OPS/o1/status"))).await,
        200
    );
    assert_eq!(put("").send().await.unwrap().status(), 404);
    assert_eq!(register(&base, "OPS", "o1").await.status(), 204);
    assert_eq!(
        server.registry().instance("OPS", "o1").unwrap().info.status,
        Status::Up
    );
    // A heartbeat carrying a newer lastDirtyTimestamp asks for a registration (404).
    let newer = u64::MAX / 2;
    assert_eq!(
        put(&format!("?status=UP&lastDirtyTimestamp={newer}"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        put("?lastDirtyTimestamp=yesterday")
            .send()
            .await
            .unwrap()
            .status(),
        400
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn gzip_etags_and_visibility_without_a_cache_delay() {
    let server = start(cfg()).await;
    let base = server.service_url();
    for n in 0..20 {
        assert_eq!(register(&base, "GZ", &format!("g{n}")).await.status(), 204);
    }
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(format!("{base}/apps"))
        .header("Accept", "application/json")
        .header("Accept-Encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    let zipped = r.bytes().await.unwrap();
    let mut plain = String::new();
    flate2::read::GzDecoder::new(&zipped[..])
        .read_to_string(&mut plain)
        .unwrap();
    let v: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(v["applications"]["apps__hashcode"], "UP_20_");
    let again = raw
        .get(format!("{base}/apps"))
        .header("Accept", "application/json")
        .header("If-None-Match", &etag);
    assert_eq!(again.send().await.unwrap().status(), 304);
    // A registration is visible to the very next read: no 30 s response cache.
    assert_eq!(register(&base, "GZ", "late").await.status(), 204);
    let after = raw
        .get(format!("{base}/apps"))
        .header("Accept", "application/json")
        .header("If-None-Match", &etag);
    let body = after.send().await.unwrap().text().await.unwrap();
    assert!(
        body.contains("\"late\""),
        "new instance missing from the next read"
    );
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn a_delta_long_poll_returns_as_soon_as_the_version_moves() {
    let server = start(cfg()).await;
    let base = server.service_url();
    assert_eq!(register(&base, "LP", "l1").await.status(), 204);
    let version = server.registry().version();
    let url = format!("{base}/apps/delta?wait=20s&version={version}");
    let poll = tokio::spawn(async move {
        let t = Instant::now();
        let v: Value = http()
            .get(url)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (t.elapsed(), v)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !poll.is_finished(),
        "the long poll must wait while nothing changes"
    );
    assert_eq!(register(&base, "LP", "l2").await.status(), 204);
    let (took, v) = poll.await.unwrap();
    // Returned on the change, not at its 20 s wait (generous for a loaded machine).
    assert!(took < Duration::from_secs(12), "long poll took {took:?}");
    assert!(v.to_string().contains("\"l2\""));
    // Without a change the poll ends at its wait; a missing version is a 400.
    let t = Instant::now();
    let version = server.registry().version();
    let r = http()
        .get(format!("{base}/apps/delta?wait=300ms&version={version}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() >= Duration::from_millis(250));
    let r = http()
        .get(format!("{base}/apps/delta?wait=1s"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn bad_input_gets_a_4xx_that_says_what_is_wrong() {
    let mut c = cfg();
    c.max_body_bytes = 4096;
    let server = start(c).await;
    let base = server.service_url();
    let post = |app: &str, ctype: &str, body: Vec<u8>| {
        http()
            .post(format!("{base}/apps/{app}"))
            .header("Content-Type", ctype)
            .body(body)
            .send()
    };
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        (
            "A",
            "application/json",
            b"{not json".to_vec(),
            400,
            "malformed json",
        ),
        (
            "A",
            "application/xml",
            b"<instance><app>A</app>".to_vec(),
            400,
            "malformed xml",
        ),
        (
            "A",
            "application/json",
            br#"{"instance":{"app":"A"}}"#.to_vec(),
            400,
            "hostName",
        ),
        (
            "B",
            "application/json",
            instance_json("A", "a1", 1).into_bytes(),
            400,
            "mismatched app name",
        ),
        (
            "A",
            "application/json",
            br#"{"instance":{"app":"A","hostName":"h","port":99999}}"#.to_vec(),
            400,
            "port",
        ),
        ("A", "application/json", vec![b' '; 10_000], 413, ""),
    ];
    for (app, ctype, body, want, needle) in cases {
        let r = post(app, ctype, body).await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, want, "{text}");
        assert!(text.contains(needle), "{needle:?} not in {text:?}");
    }
    let r = http()
        .get(format!("{base}/apps/NOPE/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("NOPE/x"));
    let r = http()
        .get(format!("http://{}/nowhere", server.local_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http()
        .post(format!("{base}/peerreplication/batch"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "batches need the replication header");
    // Gzipped bodies are accepted, and limited after decompression.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, instance_json("ZIP", "z1", 1).as_bytes()).unwrap();
    let r = http()
        .post(format!("{base}/apps/ZIP"))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(enc.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![b' '; 1 << 20]).unwrap();
    let r = http()
        .post(format!("{base}/apps/ZIP"))
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(bomb.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        413,
        "a small gzip body that inflates past the limit is refused"
    );
    // Odd requests of every kind: each gets a 4xx with a message (a panicking
    // handler would drop the connection instead).
    let c = http();
    let odd = [
        c.post(format!("{base}/apps/ZIP"))
            .header("Content-Type", "application/json")
            .header("Content-Encoding", "gzip")
            .body("not gzip at all"),
        c.post(format!("{base}/apps/ZIP"))
            .header("Content-Encoding", "zstd-or-something")
            .body("{}"),
        c.get(format!("{base}/apps/%FF%FE")),
        c.put(format!(
            "{base}/apps/ZIP/z1?lastDirtyTimestamp=99999999999999999999999"
        )),
        c.put(format!("{base}/apps/ZIP/z1/status?value=%00")),
        c.put(format!("{base}/apps/ZIP/z1/metadata")),
        c.get(format!("{base}/apps/delta?version=-1")),
        c.get(format!("{base}/apps/delta?version=1&wait=forever")),
        c.post(format!("{base}/apps/ZIP"))
            .header("Content-Type", "application/xml")
            .body("<instance><port enabled=\"maybe\">1</port></instance>"),
    ];
    // A batch answers per task: a bad task is a 400 inside a 200.
    let r = c
        .post(format!("{base}/peerreplication/batch"))
        .header(registry::REPLICATION_HEADER, "true")
        .body(r#"{"replicationList":[{"action":"Register","appName":"A","id":"x"},7,null]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let codes: Value = r.json().await.unwrap();
    assert_eq!(
        codes,
        serde_json::json!({"responseList":[{"statusCode":400},{"statusCode":400},{"statusCode":400}]})
    );
    for req in odd {
        let r = req
            .send()
            .await
            .expect("an answer, not a dropped connection");
        let (status, url) = (r.status(), r.url().clone());
        let text = r.text().await.unwrap();
        assert!(
            status.is_client_error() && !text.trim().is_empty(),
            "{url}: {status} {text:?}"
        );
    }
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn mutations_need_credentials_when_configured_and_reads_do_not() {
    for auth in [
        Auth::Bearer("t0ken".into()),
        Auth::Basic {
            user: "ops".into(),
            password: "pw".into(),
        },
    ] {
        let mut c = cfg();
        c.auth = Some(auth.clone());
        let server = start(c).await;
        let base = server.service_url();
        let body = instance_json("SEC", "s1", 1);
        let send = |auth: Option<String>| {
            let mut r = http()
                .post(format!("{base}/apps/SEC"))
                .header("Content-Type", "application/json")
                .body(body.clone());
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send()
        };
        let r = send(None).await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
        assert_eq!(
            send(Some("Bearer wrong".into())).await.unwrap().status(),
            401
        );
        assert_eq!(send(Some(auth.header_value())).await.unwrap().status(), 204);
        assert_eq!(code(http().get(format!("{base}/apps/SEC"))).await, 200);
        assert_eq!(
            code(http().delete(format!("{base}/apps/SEC/s1"))).await,
            401
        );
        assert!(server.registry().instance("SEC", "s1").is_some());
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test]
async fn a_dead_instance_is_evicted_one_lease_duration_after_its_last_heartbeat() {
    // The server runs on an injected clock, so the test measures the lease in the
    // server's own time and no wall-clock bound can flake on a loaded machine.
    let mut c = cfg();
    c.registry.self_preservation = false;
    let clock = ManualClock::new(1_700_000_000_000);
    let server = Server::start_with_clock(c, Arc::new(clock.clone()))
        .await
        .unwrap();
    let base = server.service_url();
    let body =
        instance_json("DEAD", "d1", 1).replace("\"durationInSecs\":30", "\"durationInSecs\":3");
    let r = http()
        .post(format!("{base}/apps/DEAD"))
        .header("Content-Type", "application/json")
        .body(body)
        .send();
    assert_eq!(r.await.unwrap().status(), 204);
    // Exactly one lease duration after the registration (its last renewal): still
    // listed, whatever the eviction passes (every 200 ms) do meanwhile.
    clock.advance(3_000);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.registry().instance("DEAD", "d1").is_some(),
        "evicted before its lease ran out"
    );
    // Half a lease later it is expired, since the duration counts once (Eureka
    // counts it twice, Netflix/eureka#531: it would stay until 6 s). A pass
    // running more than 1.5 s late grants its lateness, so allow for a few.
    clock.advance(1_500);
    eventually(Duration::from_secs(30), "eviction of DEAD/d1", || async {
        server.registry().instance("DEAD", "d1").is_none()
    })
    .await;
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}
