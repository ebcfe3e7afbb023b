//! Reads, writes and types against the shared Redis.

use std::time::Duration;

use ratelimit::bytes::Bytes;
use ratelimit::{BlankReason, Error, Lookup, ProtectedCache, ValueKind};

use crate::support::{admin, shared_redis, test_config, unique_key, unique_name};

#[tokio::test]
async fn set_get_del_round_trip() {
    let url = shared_redis();
    let cache = ProtectedCache::connect(test_config(&unique_name("roundtrip"), &url))
        .await
        .unwrap();
    let key = unique_key("roundtrip");
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Miss);
    cache.set(&key, "value", None).await.unwrap();
    assert_eq!(
        cache.get(&key).await.unwrap(),
        Lookup::Hit(Bytes::from_static(b"value"))
    );
    // An empty string is a value, not a miss.
    cache.set(&key, "", None).await.unwrap();
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit(Bytes::new()));
    assert!(cache.del(&key).await.unwrap());
    assert!(!cache.del(&key).await.unwrap());
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Miss);
}

#[tokio::test]
async fn ttl_expires_values() {
    let url = shared_redis();
    let cache = ProtectedCache::connect(test_config(&unique_name("ttl"), &url))
        .await
        .unwrap();
    let key = unique_key("ttl");
    // Long enough that the read right after the write comes before the expiry even on a
    // loaded machine; Redis counts the TTL from before `set` returned, so the later read is
    // past it.
    let ttl = Duration::from_secs(1);
    cache.set(&key, "short-lived", Some(ttl)).await.unwrap();
    assert!(matches!(cache.get(&key).await.unwrap(), Lookup::Hit(_)));
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Miss);
    let err = cache
        .set(&key, "x", Some(Duration::from_micros(10)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTtl { .. }), "{err}");
}

#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let url = shared_redis();
    let mut cfg = test_config(&unique_name("badinput"), &url);
    cfg.max_key_bytes = 8;
    let cache = ProtectedCache::connect(cfg).await.unwrap();
    let err = cache.get("").await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidKey {
                len: 0,
                reason: "empty",
                ..
            }
        ),
        "{err}"
    );
    let err = cache
        .set("a-key-longer-than-8", "v", None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidKey { len: 19, .. }), "{err}");
    assert!(err.to_string().contains("19"), "{err}");

    let mut bad = test_config("x", &url);
    bad.breaker.half_open_permits = 0;
    let err = ProtectedCache::connect(bad).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Config {
                field: "breaker.half_open_permits",
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn nothing_listening_fails_connect_but_lazy_starts() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let err = ProtectedCache::connect(test_config(&unique_name("noconn"), &url))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. } | Error::ConnectTimeout { .. }),
        "{err}"
    );
    let cache = ProtectedCache::builder(test_config(&unique_name("lazy"), &url))
        .lazy()
        .connect()
        .await
        .unwrap();
    assert_eq!(
        cache.get("k").await.unwrap(),
        Lookup::Blank(BlankReason::Unavailable)
    );
}

#[tokio::test]
async fn other_types_are_reported_not_misread() {
    let url = shared_redis();
    let cache = ProtectedCache::connect(test_config(&unique_name("types"), &url))
        .await
        .unwrap();
    let hash = unique_key("types-hash");
    let list = unique_key("types-list");
    let mut con = admin(&url);
    let _: () = redis::cmd("HSET")
        .arg(&hash)
        .arg("f1")
        .arg("v1")
        .arg("f2")
        .arg("v2")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&list)
        .arg("a")
        .arg("b")
        .arg("c")
        .query(&mut con)
        .unwrap();

    let err = cache.get(&hash).await.unwrap_err();
    assert!(
        matches!(&err, Error::WrongType { found, expected: "string", .. } if found == "hash"),
        "{err}"
    );
    let Lookup::Hit(mut pairs) = cache.get_hash(&hash).await.unwrap() else {
        panic!("hash not read");
    };
    pairs.sort();
    assert_eq!(
        pairs,
        vec![
            (Bytes::from("f1"), Bytes::from("v1")),
            (Bytes::from("f2"), Bytes::from("v2"))
        ]
    );
    let err = cache.get_hash(&list).await.unwrap_err();
    assert!(matches!(err, Error::WrongType { .. }), "{err}");

    let Lookup::Hit(size) = cache.size(&list).await.unwrap() else {
        panic!("no size");
    };
    assert_eq!(size.kind, ValueKind::List);
    assert_eq!(size.elements, Some(3));
    assert!(size.bytes > 0);
    assert_eq!(
        cache.size(unique_key("absent")).await.unwrap(),
        Lookup::Miss
    );
    assert_eq!(
        cache.get_hash(unique_key("absent")).await.unwrap(),
        Lookup::Miss
    );

    let _: () = redis::cmd("DEL")
        .arg(&hash)
        .arg(&list)
        .query(&mut con)
        .unwrap();
}

#[tokio::test]
async fn a_selected_database_is_used() {
    let url = shared_redis();
    let db_url = format!("{}/7", url.trim_end_matches('/'));
    let cache = ProtectedCache::connect(test_config(&unique_name("db"), &db_url))
        .await
        .unwrap();
    let key = unique_key("db");
    cache.set(&key, "in db 7", None).await.unwrap();
    let mut db0 = admin(&url);
    let exists: bool = redis::cmd("EXISTS").arg(&key).query(&mut db0).unwrap();
    assert!(!exists, "written to db 0");
    let mut db7 = admin(&db_url);
    let v: String = redis::cmd("GET").arg(&key).query(&mut db7).unwrap();
    assert_eq!(v, "in db 7");
    assert!(cache.del(&key).await.unwrap());
}
