use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::client::LocalRegistry;

const T0: Millis = 1_700_000_000_000;

fn reg(self_preservation: bool) -> Registry {
    Registry::new(Config {
        self_preservation,
        ..Config::default()
    })
    .unwrap()
}

fn inst(app: &str, id: &str) -> InstanceInfo {
    InstanceInfo::new(app, id, &format!("{id}.host"), 8080)
}

#[test]
fn register_renew_cancel() {
    let r = reg(true);
    r.register(inst("orders", "o1"), false, T0).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(
        r.renew("ORDERS", "o1", None, false, T0 + 1).unwrap(),
        Renewal::Renewed
    );
    assert_eq!(
        r.renew("orders", "o1", None, false, T0 + 2).unwrap(),
        Renewal::Renewed,
        "app names are case-insensitive"
    );
    assert!(matches!(
        r.renew("ORDERS", "nope", None, false, T0),
        Err(Error::UnknownInstance { .. })
    ));
    assert!(matches!(
        r.renew("NOPE", "o1", None, false, T0),
        Err(Error::UnknownInstance { .. })
    ));
    r.cancel("ORDERS", "o1", T0 + 3).unwrap();
    assert!(r.is_empty() && r.application("ORDERS").is_none());
    assert!(r.cancel("ORDERS", "o1", T0 + 4).is_err());
    assert_eq!(r.version(), 2);
}

#[test]
fn a_lease_expires_once_its_duration_has_passed_since_the_last_renewal() {
    let r = reg(false);
    let mut i = inst("a", "a1");
    i.lease_info.duration_secs = 10;
    r.register(i, false, T0).unwrap();
    assert_eq!(
        r.renew("A", "a1", None, false, T0 + 5_000).unwrap(),
        Renewal::Renewed
    );
    assert!(
        r.evict(T0 + 15_000, 0).evicted.is_empty(),
        "not before last renewal + duration"
    );
    let report = r.evict(T0 + 15_001, 0);
    assert_eq!(report.evicted, vec![("A".to_owned(), "a1".to_owned())]);
    let d = r.delta(T0 + 15_001);
    let gone = &d.applications[0].instances[0];
    assert_eq!(
        (gone.info.action_type, gone.lease.eviction_timestamp),
        (ActionType::Deleted, T0 + 15_001)
    );
}

#[test]
fn a_late_eviction_tick_grants_its_lateness() {
    let r = reg(false);
    let mut i = inst("a", "a1");
    i.lease_info.duration_secs = 10;
    r.register(i, false, T0).unwrap();
    assert!(r.evict(T0 + 11_000, 2_000).evicted.is_empty());
    assert_eq!(r.evict(T0 + 12_001, 2_000).evicted.len(), 1);
}

#[test]
fn one_pass_evicts_at_most_the_share_self_preservation_allows() {
    let r = reg(false);
    for n in 0..10 {
        r.register(inst("a", &format!("a{n}")), false, T0).unwrap();
    }
    let late = T0 + 91_000;
    let first = r.evict(late, 0);
    assert_eq!((first.expired, first.cap, first.evicted.len()), (10, 2, 2));
    assert_eq!(r.len(), 8);
    // 8 left: cap = 8 - floor(6.8) = 2 again.
    assert_eq!(r.evict(late, 0).evicted.len(), 2);
}

#[test]
fn self_preservation_holds_evictions_and_expected_renews_fall_on_cancel_and_evict() {
    let r = reg(true);
    for n in 0..10 {
        r.register(inst("a", &format!("a{n}")), false, T0).unwrap();
    }
    // 10 instances × 2 renewals/min = 20 expected, threshold floor(17.0) = 17.
    let s = r.stats(T0);
    assert_eq!((s.expected_renews_per_min, s.renews_threshold), (20.0, 17));
    assert!(
        s.self_preservation_active,
        "no renewals yet: leases must not expire"
    );
    let report = r.evict(T0 + 200_000, 0);
    assert!(report.self_preservation && report.evicted.is_empty());
    // Cancelling lowers the expectation: 5 instances → 10 expected, threshold 8.
    for n in 0..5 {
        r.cancel("A", &format!("a{n}"), T0).unwrap();
    }
    assert_eq!(r.stats(T0).renews_threshold, 8);
    // Nine renewals in the last minute beat 8: expiry is back on, and eviction lowers it too.
    let now = T0 + 200_000;
    for k in 0..9 {
        assert_eq!(
            r.renew("A", "a9", None, false, now - 1_000 - k).unwrap(),
            Renewal::Renewed
        );
    }
    assert!(r.lease_expiration_enabled(now));
    let evicted = r.evict(now, 0).evicted.len();
    assert_eq!(evicted, 1, "cap for 5 is 5 - floor(4.25) = 1");
    assert_eq!(r.stats(now).expected_renews_per_min, 8.0);
}

#[test]
fn metrics_follow_registrations_renewals_cancels_evictions_and_self_preservation() {
    use crate::metrics::{
        CANCELS, EVICTIONS, INSTANCES, REGISTRATIONS, RENEWALS, SELF_PRESERVATION,
    };
    let recorder = testkit::TestRecorder::new();
    let r = recorder.scope(|| reg(true));
    let (client, peer) = ([("origin", "client")], [("origin", "peer")]);
    for n in 0..9 {
        r.register(inst("a", &format!("a{n}")), false, T0).unwrap();
    }
    r.register(inst("a", "a9"), true, T0).unwrap();
    r.register(inst("a", "a9"), true, T0).unwrap(); // a re-registration is no new instance
    assert_eq!(recorder.counter(REGISTRATIONS, &client), 9);
    assert_eq!(recorder.counter(REGISTRATIONS, &peer), 2);
    assert_eq!(recorder.gauge(INSTANCES, &[]), Some(10.0));
    assert!(r.stats(T0).self_preservation_active);
    assert_eq!(recorder.gauge(SELF_PRESERVATION, &[]), Some(1.0));
    assert!(r.evict(T0 + 200_000, 0).self_preservation);
    assert_eq!(recorder.counter(EVICTIONS, &[]), 0);

    for n in 0..4 {
        r.cancel("A", &format!("a{n}"), T0).unwrap();
    }
    r.cancel_from("A", "a4", true, T0).unwrap();
    assert!(r.cancel("A", "a4", T0).is_err(), "not counted twice");
    assert_eq!(recorder.counter(CANCELS, &client), 4);
    assert_eq!(recorder.counter(CANCELS, &peer), 1);
    assert_eq!(recorder.gauge(INSTANCES, &[]), Some(5.0));

    // Renewals beat the threshold again: one expired lease is evicted.
    let now = T0 + 200_000;
    for k in 0..8 {
        let _ = r.renew("A", "a9", None, false, now - 1_000 - k).unwrap();
    }
    let _ = r.renew("A", "a9", None, true, now - 1_000).unwrap();
    assert_eq!(recorder.counter(RENEWALS, &client), 8);
    assert_eq!(recorder.counter(RENEWALS, &peer), 1);
    let evicted = r.evict(now, 0).evicted;
    assert_eq!(evicted.len(), 1);
    assert_eq!(recorder.counter(EVICTIONS, &[]), 1);
    assert_eq!(recorder.gauge(SELF_PRESERVATION, &[]), Some(0.0));
    assert_eq!(recorder.gauge(INSTANCES, &[]), Some(4.0));

    // A dropped registry leaves the process's gauges.
    drop(r);
    assert_eq!(recorder.gauge(INSTANCES, &[]), Some(0.0));
}

#[test]
fn expected_renews_follow_each_clients_interval() {
    let r = reg(true);
    let mut fast = inst("a", "fast");
    fast.lease_info.renewal_interval_secs = 1;
    r.register(fast, false, T0).unwrap();
    r.register(inst("a", "slow"), false, T0).unwrap();
    assert_eq!(r.stats(T0).expected_renews_per_min, 62.0);
    // Re-registering with another interval replaces, not adds, its share.
    r.register(inst("a", "fast"), false, T0).unwrap();
    assert_eq!(r.stats(T0).expected_renews_per_min, 4.0);
}

#[test]
fn a_status_override_survives_heartbeats_and_registrations_until_deleted() {
    let r = reg(true);
    r.register(inst("a", "a1"), false, T0).unwrap();
    r.set_status_override("A", "a1", Status::OutOfService, None, T0 + 1)
        .unwrap();
    assert_eq!(
        r.renew("A", "a1", None, false, T0 + 2).unwrap(),
        Renewal::Renewed
    );
    assert_eq!(
        r.instance("A", "a1").unwrap().info.status,
        Status::OutOfService
    );
    r.register(inst("a", "a1"), false, T0 + 3).unwrap();
    let i = r.instance("A", "a1").unwrap().info;
    assert_eq!(
        (i.status, i.overridden_status),
        (Status::OutOfService, Status::OutOfService)
    );
    // A client reporting DOWN is believed over the override.
    let mut down = inst("a", "a1");
    down.status = Status::Down;
    r.register(down, false, T0 + 4).unwrap();
    assert_eq!(r.instance("A", "a1").unwrap().info.status, Status::Down);
    r.register(inst("a", "a1"), false, T0 + 5).unwrap();
    // Deleting the override makes the next heartbeat ask for a registration.
    r.delete_status_override("A", "a1", None, None, T0 + 6)
        .unwrap();
    assert!(matches!(
        r.renew("A", "a1", None, false, T0 + 7),
        Err(Error::UnknownInstance { .. })
    ));
    r.register(inst("a", "a1"), false, T0 + 8).unwrap();
    assert_eq!(r.instance("A", "a1").unwrap().info.status, Status::Up);
    assert_eq!(r.applications().apps_hashcode, "UP_1_");
}

#[test]
fn last_dirty_timestamp_decides_conflicts() {
    let r = reg(true);
    let mut newer = inst("a", "a1");
    newer.last_dirty_timestamp = 200;
    newer.metadata.insert("v", "new");
    r.register(newer, true, T0).unwrap();
    let mut older = inst("a", "a1");
    older.last_dirty_timestamp = 100;
    r.register(older, true, T0 + 1).unwrap();
    assert_eq!(
        r.instance("A", "a1").unwrap().info.metadata["v"],
        "new",
        "an older record never wins"
    );
    assert_eq!(
        r.renew("A", "a1", Some(300), false, T0 + 2).unwrap(),
        Renewal::ClientNewer
    );
    assert!(
        matches!(r.renew("A", "a1", Some(100), true, T0 + 3).unwrap(), Renewal::ServerNewer(i) if i.last_dirty_timestamp == 200)
    );
    assert_eq!(
        r.renew("A", "a1", Some(100), false, T0 + 4).unwrap(),
        Renewal::Renewed
    );
    assert_eq!(
        r.renew("A", "a1", Some(200), true, T0 + 5).unwrap(),
        Renewal::Renewed
    );
}

#[test]
fn metadata_updates_merge_and_show_in_the_delta() {
    let r = reg(true);
    r.register(inst("a", "a1"), false, T0).unwrap();
    let m = BTreeMap::from([("k".to_owned(), "v".to_owned())]);
    let info = r.update_metadata("A", "a1", &m, T0 + 1).unwrap();
    assert_eq!(info.metadata["k"], "v");
    let d = r.delta(T0 + 1);
    assert_eq!(
        d.applications[0].instances[0].info.action_type,
        ActionType::Modified
    );
    assert!(r.update_metadata("A", "zz", &m, T0).is_err());
    let many: BTreeMap<String, String> =
        (0..300).map(|k| (format!("k{k}"), String::new())).collect();
    let err = r
        .update_metadata("A", "a1", &many, T0 + 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("301") && err.contains("at most 256"), "{err}");
    let err = r
        .update_metadata(
            "A",
            "a1",
            &BTreeMap::from([(String::new(), "v".into())]),
            T0,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidField {
                field: "metadata key",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn concurrent_metadata_updates_never_pass_the_cap_together() {
    let r = Arc::new(reg(true));
    r.register(inst("a", "a1"), false, T0).unwrap();
    // Eight updates of 40 new keys each: only six fit under 256.
    let start = Arc::new(std::sync::Barrier::new(8));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (r, start) = (r.clone(), start.clone());
            std::thread::spawn(move || {
                let m: BTreeMap<String, String> = (0..40)
                    .map(|k| (format!("t{t}-{k}"), String::new()))
                    .collect();
                start.wait();
                r.update_metadata("A", "a1", &m, T0 + 1).is_ok()
            })
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    assert_eq!(ok, 6);
    assert_eq!(r.instance("A", "a1").unwrap().info.metadata.len(), 240);
}

#[test]
fn the_delta_keeps_changes_for_the_retention_window_only() {
    let r = Registry::new(Config {
        delta_retention: Duration::from_secs(10),
        ..Config::default()
    })
    .unwrap();
    r.register(inst("a", "a1"), false, T0).unwrap();
    r.register(inst("a", "a2"), false, T0 + 5_000).unwrap();
    assert_eq!(r.delta(T0 + 5_000).instance_count(), 2);
    r.register(inst("b", "b1"), false, T0 + 12_000).unwrap();
    let d = r.delta(T0 + 12_000);
    let ids: Vec<_> = d
        .applications
        .iter()
        .flat_map(|a| &a.instances)
        .map(|i| i.info.instance_id.clone())
        .collect();
    assert_eq!(ids, ["a2", "b1"]);
    assert_eq!(
        d.apps_hashcode, "UP_3_",
        "the hashcode covers the whole registry"
    );
}

#[test]
fn delta_since_returns_only_newer_changes_unless_they_left_the_window() {
    let r = Registry::new(Config {
        delta_retention: Duration::from_secs(10),
        ..Config::default()
    })
    .unwrap();
    r.register(inst("a", "a1"), false, T0).unwrap();
    r.register(inst("a", "a2"), false, T0 + 5_000).unwrap();
    r.register(inst("b", "b1"), false, T0 + 12_000).unwrap();
    let ids = |d: &Applications| -> Vec<String> {
        d.applications
            .iter()
            .flat_map(|a| &a.instances)
            .map(|i| i.info.instance_id.clone())
            .collect()
    };
    let now = T0 + 12_000;
    assert_eq!(ids(&r.delta_since(2, now)), ["b1"]);
    assert!(r.delta_since(3, now).applications.is_empty());
    assert_eq!(r.delta_since(3, now).apps_hashcode, "UP_3_");
    assert_eq!(ids(&r.delta_since(1, now)), ["a2", "b1"]);
    // A client at version 0 missed a1 (it left the window): the hashcode says so.
    let mut empty = LocalRegistry::default();
    assert!(!empty.apply_delta(&r.delta_since(0, now)));
    let mut at_one = LocalRegistry::default();
    let mut first = r.applications().as_ref().clone();
    first.applications[0]
        .instances
        .retain(|i| i.info.instance_id == "a1");
    first.applications.truncate(1);
    first.version = 1;
    at_one.replace(&first);
    assert!(at_one.apply_delta(&r.delta_since(1, now)));
}

#[test]
fn vips_and_ids_are_looked_up_across_apps() {
    let r = reg(true);
    let mut a = inst("a", "x1");
    a.vip_address = Some("shared.vip".into());
    a.secure_vip_address = Some("secure.vip".into());
    let mut b = inst("b", "x1");
    b.vip_address = Some("other,shared.vip".into());
    r.register(a, false, T0).unwrap();
    r.register(b, false, T0).unwrap();
    assert_eq!(r.vip("shared.vip", false).instance_count(), 2);
    assert_eq!(r.vip("secure.vip", true).instance_count(), 1);
    assert_eq!(r.vip("none", false).instance_count(), 0);
    assert_eq!(r.instances_by_id("x1").len(), 2);
}

#[test]
fn deltas_and_hashcodes_agree_under_concurrent_writers() {
    let r = Arc::new(reg(false));
    for n in 0..50 {
        r.register(inst(&format!("app{}", n % 5), &format!("i{n}")), false, T0)
            .unwrap();
    }
    let mut local = LocalRegistry::default();
    local.replace(&r.applications());
    let mut incremental = local.clone();
    // Bounded writers (the delta queue keeps every change for the retention window),
    // started together with the reader and yielding often, so that reads interleave.
    let start = Arc::new(std::sync::Barrier::new(4));
    let writers: Vec<_> = (0..3u64)
        .map(|w| {
            let (r, start) = (r.clone(), start.clone());
            std::thread::spawn(move || {
                let mut x = w + 1;
                start.wait();
                for k in 0..4_000 {
                    if k % 8 == 0 {
                        std::thread::yield_now();
                    }
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let n = (x >> 33) % 80;
                    let (app, id) = (format!("app{}", n % 5), format!("i{n}"));
                    let _ = match (x >> 20) % 4 {
                        0 => r.register(inst(&app, &id), false, T0).map(|_| ()),
                        1 => r.cancel(&app, &id, T0),
                        2 => r.set_status_override(&app, &id, Status::OutOfService, None, T0),
                        _ => r.delete_status_override(&app, &id, Some(Status::Down), None, T0),
                    };
                }
            })
        })
        .collect();
    let mut checked = 0;
    let mut versions_seen = std::collections::BTreeSet::new();
    start.wait();
    while checked < 20 || writers.iter().any(|w| !w.is_finished()) {
        let delta = r.delta(T0);
        versions_seen.insert(delta.version);
        assert!(
            local.apply_delta(&delta),
            "hashcode mismatch at version {}",
            delta.version
        );
        assert_eq!(local.hashcode(), delta.apps_hashcode);
        let since = r.delta_since(incremental.version(), T0);
        assert!(
            incremental.apply_delta(&since),
            "incremental delta mismatch at {}",
            since.version
        );
        let full = r.applications();
        assert_eq!(
            full.reconcile_hashcode(),
            full.apps_hashcode,
            "full snapshot at {}",
            full.version
        );
        checked += 1;
    }
    writers.into_iter().for_each(|t| t.join().unwrap());
    assert!(
        versions_seen.len() >= 20,
        "the reader must run while the writers write: {versions_seen:?}"
    );
    assert!(local.apply_delta(&r.delta(T0)));
    assert_eq!(
        records(&local.to_applications()),
        records(&r.applications())
    );
}

/// `(app, record)` pairs: what a delta carries (lease timestamps move without changes).
fn records(apps: &Applications) -> Vec<(String, InstanceInfo)> {
    apps.applications
        .iter()
        .flat_map(|a| {
            a.instances
                .iter()
                .map(|i| (a.name.clone(), (*i.info).clone()))
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Register(u8, u8, u8),
    Renew(u8),
    Cancel(u8),
    Override(u8, u8),
    DeleteOverride(u8),
    Advance(u16),
    Evict,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<u8>(), 0u8..5, 1u8..40).prop_map(|(i, s, d)| Op::Register(i, s, d)),
        any::<u8>().prop_map(Op::Renew),
        any::<u8>().prop_map(Op::Cancel),
        (any::<u8>(), 0u8..5).prop_map(|(i, s)| Op::Override(i, s)),
        any::<u8>().prop_map(Op::DeleteOverride),
        (0u16..20_000).prop_map(Op::Advance),
        Just(Op::Evict),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// After any sequence of operations: the counts, the expected renewals, the full
    /// snapshot and a replica fed only deltas all agree, and no live lease is expired
    /// past what the last eviction pass was allowed to spare.
    #[test]
    fn invariants_hold_after_any_operations(ops in proptest::collection::vec(op(), 1..60), sp in any::<bool>()) {
        let r = reg(sp);
        let mut now = T0;
        let mut local = LocalRegistry::default();
        local.replace(&r.applications());
        let statuses = Status::ALL_BY_NAME;
        for op in ops {
            let id = |i: u8| format!("i{}", i % 12);
            let app = |i: u8| format!("APP{}", i % 3);
            match op {
                Op::Register(i, s, d) => {
                    let mut info = inst(&app(i), &id(i));
                    info.status = statuses[s as usize];
                    info.lease_info.duration_secs = u32::from(d);
                    r.register(info, false, now).unwrap();
                }
                Op::Renew(i) => { let _ = r.renew(&app(i), &id(i), None, false, now); }
                Op::Cancel(i) => { let _ = r.cancel(&app(i), &id(i), now); }
                Op::Override(i, s) => { let _ = r.set_status_override(&app(i), &id(i), statuses[s as usize], None, now); }
                Op::DeleteOverride(i) => { let _ = r.delete_status_override(&app(i), &id(i), None, None, now); }
                Op::Advance(ms) => now += u64::from(ms),
                Op::Evict => {
                    let report = r.evict(now, 0);
                    if !report.self_preservation && report.expired <= report.cap {
                        for a in &r.applications_live().applications {
                            for i in &a.instances {
                                prop_assert!(!crate::lease::lease_expired(
                                    i.lease.last_renewal_timestamp, u64::from(i.lease.duration_secs) * 1000, now, 0));
                            }
                        }
                    }
                }
            }
            let full = r.applications();
            let stats = r.stats(now);
            prop_assert_eq!(stats.instances as usize, full.instance_count());
            prop_assert_eq!(&full.reconcile_hashcode(), &full.apps_hashcode);
            let expected: f64 = full.applications.iter().flat_map(|a| &a.instances)
                .map(|i| 60.0 / f64::from(i.info.lease_info.renewal_interval_secs)).sum();
            prop_assert!((stats.expected_renews_per_min - expected).abs() < 0.01);
            prop_assert!(local.apply_delta(&r.delta(now)));
            prop_assert_eq!(records(&local.to_applications()), records(&full));
        }
    }
}
