//! Serialized responses, cached per registry version and gzipped once on demand.
//!
//! Eureka's `ResponseCacheImpl` serves a read-only copy refreshed every 30 s, which is
//! why a new instance can take that long to appear. Here an entry is valid exactly while
//! the registry version it was built at is current: the next read after any change
//! rebuilds it, so a change is visible to the next read.

use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use dashmap::DashMap;
use flate2::Compression;
use flate2::write::GzEncoder;

use super::Node;
use crate::codec::{self, Format};

/// Entries beyond which the per-app and per-VIP ones are dropped.
const MAX_ENTRIES: usize = 4096;
/// Bodies larger than this are encoded and gzipped off the async workers.
const BLOCKING_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Full(Format),
    Delta(Format),
    App(String, Format),
    Vip(String, bool, Format),
}

/// One serialized document.
#[derive(Debug)]
pub(crate) struct Payload {
    pub(crate) version: u64,
    pub(crate) body: Bytes,
    pub(crate) etag: String,
    gzip: OnceLock<Bytes>,
}

impl Payload {
    fn new(version: u64, body: Vec<u8>, kind: &str, format: Format) -> Self {
        Self {
            version,
            etag: format!("\"{kind}-{}-{version}\"", format.name()),
            body: Bytes::from(body),
            gzip: OnceLock::new(),
        }
    }

    /// The gzipped body, compressed on first use.
    pub(crate) async fn gzipped(self: &Arc<Self>) -> Bytes {
        if let Some(g) = self.gzip.get() {
            return g.clone();
        }
        let me = self.clone();
        let compress = move || me.gzip.get_or_init(|| gzip(&me.body)).clone();
        if self.body.len() > BLOCKING_BYTES {
            tokio::task::spawn_blocking(compress)
                .await
                .unwrap_or_else(|_| gzip(&self.body))
        } else {
            compress()
        }
    }
}

fn gzip(body: &[u8]) -> Bytes {
    let mut enc = GzEncoder::new(Vec::with_capacity(body.len() / 6), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = enc.write_all(body);
    Bytes::from(enc.finish().unwrap_or_default())
}

/// The cache.
#[derive(Debug, Default)]
pub(crate) struct ResponseCache {
    entries: DashMap<Key, Arc<Payload>>,
    building: tokio::sync::Mutex<()>,
}

impl ResponseCache {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The full registry.
    pub(crate) async fn full(&self, node: &Arc<Node>, format: Format) -> Arc<Payload> {
        let key = Key::Full(format);
        if let Some(p) = self.fresh(&key, node.registry.version()) {
            return p;
        }
        // One build at a time: readers that queue behind it find it fresh.
        let _one = self.building.lock().await;
        if let Some(p) = self.fresh(&key, node.registry.version()) {
            return p;
        }
        let registry = node.registry.clone();
        let build = move || {
            let apps = registry.applications();
            Payload::new(
                apps.version,
                codec::encode_applications(&apps, format),
                "full",
                format,
            )
        };
        let big = node.registry.len() > 2_000;
        let payload = Arc::new(if big { blocking(build).await } else { build() });
        self.entries.insert(key, payload.clone());
        payload
    }

    /// The delta.
    pub(crate) async fn delta(&self, node: &Arc<Node>, format: Format) -> Arc<Payload> {
        let key = Key::Delta(format);
        if let Some(p) = self.fresh(&key, node.registry.version()) {
            return p;
        }
        let registry = node.registry.clone();
        let now = node.now();
        let payload = Arc::new(
            blocking(move || {
                let d = registry.delta(now);
                Payload::new(
                    d.version,
                    codec::encode_applications(&d, format),
                    "delta",
                    format,
                )
            })
            .await,
        );
        self.entries.insert(key, payload.clone());
        payload
    }

    /// One application, or `None` when it has no instance.
    pub(crate) fn app(&self, node: &Node, app: &str, format: Format) -> Option<Arc<Payload>> {
        let key = Key::App(app.to_owned(), format);
        let version = node.registry.version();
        if let Some(p) = self.fresh(&key, version) {
            return Some(p);
        }
        let a = node.registry.application(app)?;
        let body = match format {
            Format::Json => codec::application_json(&a),
            Format::Xml => codec::application_xml(&a),
        };
        Some(self.insert(key, Payload::new(version, body, "app", format)))
    }

    /// The instances of a VIP (or secure VIP).
    pub(crate) fn vip(&self, node: &Node, vip: &str, secure: bool, format: Format) -> Arc<Payload> {
        let key = Key::Vip(vip.to_owned(), secure, format);
        let version = node.registry.version();
        if let Some(p) = self.fresh(&key, version) {
            return p;
        }
        let apps = node.registry.vip(vip, secure);
        let body = codec::encode_applications(&apps, format);
        let payload = Payload::new(version, body, if secure { "svip" } else { "vip" }, format);
        if apps.applications.is_empty() {
            // Unknown VIPs are not cached: callers choose the names.
            return Arc::new(payload);
        }
        self.insert(key, payload)
    }

    fn fresh(&self, key: &Key, version: u64) -> Option<Arc<Payload>> {
        self.entries
            .get(key)
            .filter(|p| p.version == version)
            .map(|p| p.clone())
    }

    fn insert(&self, key: Key, payload: Payload) -> Arc<Payload> {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries
                .retain(|k, _| matches!(k, Key::Full(_) | Key::Delta(_)));
        }
        let payload = Arc::new(payload);
        self.entries.insert(key, payload.clone());
        payload
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let _ = tx.send(f());
    });
    // The closure cannot panic on valid registry data; if it did, fail loudly.
    rx.await.expect("response build task panicked")
}
