//! Shared helpers: servers on ephemeral ports, tool lookup, polling.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use registry::{Server, ServerConfig};

/// A server config for tests: ephemeral port, fast eviction, no peers.
pub fn cfg() -> ServerConfig {
    let mut c = ServerConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        sync_retries: 0,
        ..ServerConfig::default()
    };
    c.registry.eviction_interval = Duration::from_millis(200);
    c
}

pub async fn start(cfg: ServerConfig) -> Server {
    Server::start(cfg).await.expect("server starts")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A registration body in Eureka's JSON.
pub fn instance_json(app: &str, id: &str, port: u16) -> String {
    format!(
        r#"{{"instance":{{"instanceId":"{id}","hostName":"{id}.local","app":"{app}","ipAddr":"127.0.0.1",
        "status":"UP","port":{{"$":{port},"@enabled":"true"}},"vipAddress":"{vip}","secureVipAddress":"{vip}.secure",
        "dataCenterInfo":{{"@class":"com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo","name":"MyOwn"}},
        "leaseInfo":{{"renewalIntervalInSecs":1,"durationInSecs":30}}}}}}"#,
        vip = app.to_lowercase()
    )
}

pub async fn register(base: &str, app: &str, id: &str) -> reqwest::Response {
    http()
        .post(format!("{base}/apps/{app}"))
        .header("Content-Type", "application/json")
        .body(instance_json(app, id, 8080))
        .send()
        .await
        .unwrap()
}

/// Polls `check` until it is true or `limit` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from)
}

/// `target/test-deps/node_modules`, holding `package`; fails loudly if it is missing.
pub fn node_modules(package: &str) -> PathBuf {
    let dir = target_dir().join("test-deps").join("node_modules");
    assert!(
        dir.join(package).join("package.json").exists(),
        "npm package `{package}` is missing from {} — run `cargo xtask test`, which installs the test \
         tools (or: npm install --prefix {} {package}@4.5.0)",
        dir.display(),
        target_dir().join("test-deps").display()
    );
    dir
}

/// Debian's `chromium` at /usr/bin/chromium; fails loudly if it is missing.
pub fn chromium() -> PathBuf {
    let p = PathBuf::from("/usr/bin/chromium");
    assert!(
        p.exists(),
        "Debian's `chromium` is missing (/usr/bin/chromium) — run `cargo xtask test`, which installs it \
         (or: apt-get install -y chromium)"
    );
    p
}

/// Sends a request and returns its status code.
pub async fn code(req: reqwest::RequestBuilder) -> u16 {
    req.send().await.expect("request sent").status().as_u16()
}
