//! What the detector reports through the `metrics` facade (the ZooKeeper
//! and Kafka drivers' metrics are checked in their own tests).

use std::sync::Arc;
use std::time::Duration;

use hotkey::metrics::{COOLED, DETECTED, HOT_KEYS, PROMOTIONS, REJECTED_PROMOTIONS};
use hotkey::{Config, Detector, Event, ManualClock, Rule};
use testkit::TestRecorder;

#[test]
fn detection_cool_down_and_a_full_table_move_the_detector_metrics() {
    let recorder = TestRecorder::new();
    let clock = ManualClock::new(1_000_000);
    let rules = vec![
        Rule::prefix("users", "user:")
            .with_threshold(10)
            .with_cooldown(Duration::from_millis(500)),
        Rule::default().with_threshold(8),
    ];
    let cfg = Config {
        rules,
        // One candidate per shard: the second rule's table fills up.
        max_candidates: 1,
        sketch_bytes: 1 << 20,
        hash_seed: Some(9),
        ..Config::default()
    };
    let detector = recorder
        .scope(|| Detector::with_clock(cfg, Arc::new(clock.clone())))
        .unwrap();
    let users = [("rule", "users")];

    for _ in 0..11 {
        detector.record(b"user:1");
    }
    assert!(matches!(detector.poll_event(), Some(Event::Hot(_))));
    assert_eq!(recorder.counter(DETECTED, &users), 1);
    assert_eq!(recorder.gauge(HOT_KEYS, &users), Some(1.0));
    for _ in 0..20 {
        detector.record(b"user:1"); // still hot: no second detection
    }
    assert_eq!(recorder.counter(DETECTED, &users), 1);

    // Out of the window, then the cool-down.
    clock.advance_ms(1_000);
    detector.tick();
    clock.advance_ms(500);
    detector.tick();
    assert!(matches!(detector.poll_event(), Some(Event::Cooled(_))));
    assert_eq!(recorder.counter(COOLED, &users), 1);
    assert_eq!(recorder.gauge(HOT_KEYS, &users), Some(0.0));

    // 400 keys read 9 times each under the catch-all rule: every shard's
    // one candidate turns hot, the other keys' promotions are refused.
    for k in 0..400u32 {
        detector.record_n(&k.to_le_bytes(), 9);
    }
    let hot = detector.drain_events().len() as u64;
    assert!(hot > 0);
    let default = [("rule", "default")];
    assert_eq!(recorder.counter(DETECTED, &default), hot);
    assert_eq!(recorder.gauge(HOT_KEYS, &default), Some(hot as f64));
    // The table's counters are published per tick, not per read.
    assert_eq!(recorder.counter(REJECTED_PROMOTIONS, &[]), 0);
    detector.tick();
    let stats = detector.stats();
    assert!(stats.rejected_promotions > 0, "{stats:?}");
    assert_eq!(
        recorder.counter(REJECTED_PROMOTIONS, &[]),
        stats.rejected_promotions
    );
    assert_eq!(recorder.counter(PROMOTIONS, &[]), stats.promotions);

    // A dropped detector takes its hot keys out of the process's gauge.
    drop(detector);
    assert_eq!(recorder.gauge(HOT_KEYS, &default), Some(0.0));
}
