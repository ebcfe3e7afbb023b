//! Scenario tests of the spill log, each run on disk and in memory.

mod asynch;
mod crash_model;
mod damage;
mod faults;
mod support;

use std::collections::{BTreeMap, HashSet};
use std::thread;
use std::time::Duration;

use double_buffer::{Config, Error};
use support::{Env, both, parse, payload, read_all, small};

both!(
    append_wait_reopen_replay_commit,
    replay_resumes_after_commit_and_deletes_segments,
    eight_writers_every_acknowledged_record_reads_back,
    replay_runs_while_appends_continue,
    bad_input_is_refused_with_typed_errors,
    try_append_would_block_when_both_buffers_are_full,
    linger_makes_unwaited_records_durable,
    keyed_records_keep_their_order,
    a_slice_becomes_durable_in_append_order,
    record_ids_stay_unique_after_every_segment_is_deleted,
    records_larger_than_the_new_buffer_survive_a_config_change,
    dropping_the_log_flushes_what_nobody_waited_for,
);

fn append_wait_reopen_replay_commit(env: &Env) {
    let (log, report) = env.open(small()).unwrap();
    assert_eq!(report.pending_records, 0);
    let mut ids = Vec::new();
    for seq in 0..500 {
        ids.push(log.append(&payload(0, seq)).unwrap().wait().unwrap());
    }
    log.close().unwrap();
    assert!(
        env.segment_files().len() > 1,
        "64 KiB segments must have rotated"
    );

    let (log, report) = env.open(small()).unwrap();
    assert_eq!(report.pending_records, 500);
    assert!(report.torn.is_none(), "{report:?}");
    let records = read_all(&log);
    assert_eq!(
        records.iter().map(|r| r.0).collect::<Vec<_>>(),
        ids.iter().map(|i| i.get()).collect::<Vec<_>>()
    );
    for (i, (_, _, p)) in records.iter().enumerate() {
        assert_eq!(parse(p), (0, i as u32));
    }
    let mut replay = log.replay().unwrap();
    while replay.next_record().unwrap().is_some() {}
    replay.commit().unwrap();
    drop(replay);
    log.close().unwrap();

    let (log, report) = env.open(small()).unwrap();
    assert_eq!(report.pending_records, 0, "{report:?}");
    assert!(read_all(&log).is_empty());
    let files = env.segment_files();
    assert!(files.len() <= 1, "segments left: {files:?}");
    log.close().unwrap();
}

fn replay_resumes_after_commit_and_deletes_segments(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    for seq in 0..600 {
        drop(log.append_keyed(7, &payload(1, seq)).unwrap());
    }
    log.flush().unwrap();
    let before = env.segment_files().len();
    let mut replay = log.replay().unwrap();
    let mut seen = 0;
    let mut commit_at = None;
    while let Some(r) = replay.next_record().unwrap() {
        assert_eq!(parse(r.payload()), (1, seen));
        seen += 1;
        if seen == 400 {
            commit_at = Some(r.position());
        }
    }
    assert_eq!(seen, 600);
    replay.commit_to(commit_at.unwrap()).unwrap();
    assert!(
        env.segment_files().len() < before,
        "replayed segments are deleted on commit"
    );
    // Re-committing the committed position is harmless (positions behind it or beyond the
    // reader are refused: see replay_misuse_is_refused_with_typed_errors).
    replay.commit_to(replay.committed()).unwrap();
    drop(replay);
    log.close().unwrap();

    let (log, report) = env.open(small()).unwrap();
    assert_eq!(report.pending_records, 200);
    let rest: Vec<u32> = read_all(&log).iter().map(|r| parse(&r.2).1).collect();
    assert_eq!(rest, (400..600).collect::<Vec<_>>());
    log.close().unwrap();
}

fn eight_writers_every_acknowledged_record_reads_back(env: &Env) {
    const WRITERS: u32 = 8;
    const EACH: u32 = 400;
    let (log, _) = env
        .open(Config {
            slices: 4,
            ..small()
        })
        .unwrap();
    let acked: Vec<Vec<(u32, u64)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let log = &log;
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let mut window = std::collections::VecDeque::new();
                    for seq in 0..EACH {
                        window.push_back((seq, log.append(&payload(w, seq)).unwrap()));
                        if window.len() > 16 {
                            let (seq, t) = window.pop_front().unwrap();
                            acked.push((seq, t.wait().unwrap().get()));
                        }
                    }
                    for (seq, t) in window {
                        acked.push((seq, t.wait().unwrap().get()));
                    }
                    acked
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    log.close().unwrap();

    let (log, report) = env
        .open(Config {
            slices: 4,
            ..small()
        })
        .unwrap();
    assert_eq!(report.pending_records, u64::from(WRITERS * EACH));
    let records = read_all(&log);
    let by_id: BTreeMap<u64, (u32, u32)> =
        records.iter().map(|(id, _, p)| (*id, parse(p))).collect();
    assert_eq!(by_id.len(), records.len(), "ids are unique");
    for (w, list) in acked.iter().enumerate() {
        for &(seq, id) in list {
            assert_eq!(
                by_id.get(&id),
                Some(&(w as u32, seq)),
                "acknowledged record {id} lost or wrong"
            );
        }
    }
    // Per slice, ids increase in log order.
    let mut last: BTreeMap<usize, u64> = BTreeMap::new();
    for (id, slice, _) in &records {
        let prev = last.insert(*slice, *id).unwrap_or(0);
        assert!(*id > prev, "slice {slice}: id {id} after {prev}");
    }
    log.close().unwrap();
}

fn replay_runs_while_appends_continue(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    const TOTAL: u32 = 3000;
    let mut got = Vec::new();
    thread::scope(|s| {
        let log = &log;
        s.spawn(move || {
            for seq in 0..TOTAL {
                let t = log.append_keyed(0, &payload(2, seq)).unwrap();
                if seq % 100 == 99 {
                    t.wait().unwrap();
                }
            }
            log.flush().unwrap();
        });
        let mut replay = log.replay().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while got.len() < TOTAL as usize {
            assert!(
                std::time::Instant::now() < deadline,
                "replay stalled at {}",
                got.len()
            );
            let mut n = 0;
            while let Some(r) = replay.next_record().unwrap() {
                got.push(parse(r.payload()).1);
                n += 1;
            }
            if n > 0 {
                replay.commit().unwrap();
            } else {
                thread::sleep(Duration::from_millis(1));
            }
        }
    });
    assert_eq!(
        got,
        (0..TOTAL).collect::<Vec<_>>(),
        "keyed records replay once each, in order"
    );
    log.close().unwrap();
    let files = env.segment_files();
    assert!(
        files.len() <= 2,
        "replayed segments were deleted while appending: {files:?}"
    );
}

fn bad_input_is_refused_with_typed_errors(env: &Env) {
    let config = small();
    let max = config.max_record_len();
    let (log, _) = env.open(config.clone()).unwrap();
    assert!(matches!(log.append(b""), Err(Error::EmptyRecord)));
    assert!(
        matches!(log.append(&vec![1; max + 1]), Err(Error::RecordTooLarge { len, max: m }) if len == max + 1 && m == max)
    );
    let id = log.append(&vec![7; max]).unwrap().wait().unwrap();
    log.close().unwrap();
    let bad = Config {
        slices: 0,
        ..small()
    };
    assert!(matches!(
        env.open(bad),
        Err(Error::InvalidConfig {
            field: "slices",
            ..
        })
    ));
    let (log, _) = env.open(config).unwrap();
    let records = read_all(&log);
    assert_eq!(records.len(), 1);
    assert_eq!((records[0].0, records[0].2.len()), (id.get(), max));
    log.close().unwrap();
}

fn try_append_would_block_when_both_buffers_are_full(env: &Env) {
    let config = Config {
        slices: 2,
        flush_thread: false,
        ..small()
    };
    let (log, _) = env.open(config).unwrap();
    let record = vec![3u8; 1000];
    let mut tickets = Vec::new();
    let err = loop {
        match log.try_append(&record) {
            Ok(t) => tickets.push(t),
            Err(e) => break e,
        }
        assert!(tickets.len() < 100, "memory must be bounded");
    };
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    // 2 slices × 2 buffers × 8 KiB hold 16 records of 1020 bytes.
    assert_eq!(tickets.len(), 2 * 2 * 8);
    assert!(tickets.iter().all(|t| !t.is_durable().unwrap()));
    // Without a flusher thread, a blocking append flushes by itself.
    let t = log.append(&record).unwrap();
    log.flush().unwrap();
    assert!(tickets.iter().chain([&t]).all(|t| t.is_durable().unwrap()));
    log.close().unwrap();
}

fn linger_makes_unwaited_records_durable(env: &Env) {
    let (log, _) = env
        .open(Config {
            linger: Duration::from_millis(5),
            ..small()
        })
        .unwrap();
    let t = log.append(b"nobody waits for me").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !t.is_durable().unwrap() {
        assert!(std::time::Instant::now() < deadline, "linger did not flush");
        thread::sleep(Duration::from_millis(1));
    }
    log.close().unwrap();
}

fn keyed_records_keep_their_order(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    thread::scope(|s| {
        for w in 0..4u32 {
            let log = &log;
            s.spawn(move || {
                for seq in 0..300 {
                    drop(log.append_keyed(u64::from(w), &payload(w, seq)).unwrap());
                }
            });
        }
    });
    log.flush().unwrap();
    let mut next = [0u32; 4];
    for (_, slice, p) in read_all(&log) {
        let (w, seq) = parse(&p);
        assert_eq!(slice, w as usize % 4);
        assert_eq!(seq, next[w as usize], "writer {w} out of order");
        next[w as usize] += 1;
    }
    assert_eq!(next, [300; 4]);
    log.close().unwrap();
}

/// The durability-order promise: whenever a slice's record is durable, so is every record
/// appended to that slice before it (mq-reliable awaits only its oldest ticket). Checked while
/// writers on other slices keep the flusher busy, newest ticket first: durability only grows,
/// so a violation seen this way is real.
fn a_slice_becomes_durable_in_append_order(env: &Env) {
    let (log, _) = env.open(small()).unwrap();
    thread::scope(|s| {
        for w in 1..4u32 {
            let log = &log;
            s.spawn(move || {
                for seq in 0..300 {
                    drop(log.append_keyed(u64::from(w), &payload(w, seq)).unwrap());
                }
            });
        }
        let mut tickets = Vec::new();
        for seq in 0..600 {
            tickets.push(log.append_keyed(0, &payload(0, seq)).unwrap());
            if seq % 25 == 0 {
                let newest_durable = tickets
                    .iter()
                    .rposition(|t| t.is_durable().unwrap())
                    .map_or(0, |i| i + 1);
                for (i, t) in tickets[..newest_durable].iter().enumerate() {
                    assert!(
                        t.is_durable().unwrap(),
                        "record {i} is not durable though record {} is",
                        newest_durable - 1
                    );
                }
            }
        }
        // Waiting on the last one alone makes every earlier one durable.
        let last = tickets.pop().unwrap();
        let last_id = last.id();
        assert_eq!(last.wait().unwrap(), last_id);
        assert!(tickets.iter().all(|t| t.is_durable().unwrap()));
    });
    log.close().unwrap();
}

fn record_ids_stay_unique_after_every_segment_is_deleted(env: &Env) {
    let mut seen = HashSet::new();
    for round in 0..3 {
        let (log, _) = env.open(small()).unwrap();
        for seq in 0..50 {
            assert!(seen.insert(log.append(&payload(round, seq)).unwrap().wait().unwrap()));
        }
        let mut replay = log.replay().unwrap();
        while replay.next_record().unwrap().is_some() {}
        replay.commit().unwrap();
        drop(replay);
        log.close().unwrap();
    }
}

/// The crate docs promise that dropping a `SpillLog` (not only `close`) flushes everything
/// first: fire-and-forget records appended just before the drop are all on disk after it.
fn dropping_the_log_flushes_what_nobody_waited_for(env: &Env) {
    let config = Config {
        linger: Duration::from_secs(10), // only the drop can flush them in time
        ..small()
    };
    let (log, _) = env.open(config.clone()).unwrap();
    for seq in 0..100 {
        drop(log.append_keyed(3, &payload(4, seq)).unwrap());
    }
    drop(log);
    let (log, report) = env.open(config).unwrap();
    assert_eq!(report.pending_records, 100, "{report:?}");
    let seqs: Vec<u32> = read_all(&log).iter().map(|r| parse(&r.2).1).collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    log.close().unwrap();
}

#[test]
fn a_directory_is_opened_by_one_log_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = double_buffer::SpillLog::open(dir.path(), small()).unwrap();
    match double_buffer::SpillLog::open(dir.path(), small()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.map(|(_, r)| r)),
    }
    log.close().unwrap();
    let (log, _) = double_buffer::SpillLog::open(dir.path(), small()).unwrap();
    log.close().unwrap();
    // A file where the directory should be is an I/O error naming it, not a panic.
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = double_buffer::SpillLog::open(&file, small()).unwrap_err();
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[test]
fn wait_timeout_takes_any_duration() {
    let env = Env::mem();
    let (log, _) = env.open(small()).unwrap();
    let t = log.append(b"x").unwrap();
    assert!(t.wait_timeout(Duration::MAX).unwrap(), "no overflow panic");
    log.close().unwrap();
}

#[test]
fn replay_misuse_is_refused_with_typed_errors() {
    let env = Env::mem();
    let (log, _) = env.open(small()).unwrap();
    log.append(b"one").unwrap().wait().unwrap();
    let mut replay = log.replay().unwrap();
    assert!(matches!(log.replay(), Err(Error::ReplayBusy)));
    let first = replay.next_record().unwrap().unwrap().position();
    log.append(b"two").unwrap().wait().unwrap();
    let second = replay.next_record().unwrap().unwrap().position();
    replay.commit_to(second).unwrap();
    assert!(
        matches!(replay.commit_to(first), Err(Error::InvalidPosition { .. })),
        "behind the checkpoint"
    );
    log.append(b"three").unwrap().wait().unwrap();
    drop(replay);
    let mut replay = log.replay().unwrap();
    let third = replay.next_record().unwrap().unwrap();
    assert_eq!(third.payload(), b"three");
    let beyond = third.position();
    let mut fresh = {
        drop(replay);
        log.replay().unwrap()
    };
    assert!(
        matches!(fresh.commit_to(beyond), Err(Error::InvalidPosition { .. })),
        "beyond the reader"
    );
    drop(fresh);
    log.close().unwrap();
}

/// Records written under a larger `buffer_size` than the one the log is reopened with (a
/// config change between runs) are recovered and replayed, not mistaken for damage.
fn records_larger_than_the_new_buffer_survive_a_config_change(env: &Env) {
    // One segment: the records sit in the last one, where damage is read as a torn tail.
    let wide = Config {
        buffer_size: 64 << 10,
        segment_size: 1 << 20,
        read_chunk: 16 << 10,
        ..small()
    };
    let big = |i: u8| vec![i; 40 << 10];
    let (log, _) = env.open(wide.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..3u8 {
        ids.push(log.append_keyed(0, &big(i)).unwrap().wait().unwrap().get());
    }
    log.close().unwrap();

    let inspection = double_buffer::inspect_storage(&*env.storage()).unwrap();
    assert!(inspection.problem.is_none(), "{:?}", inspection.problem);
    let (log, report) = env.open(small()).unwrap();
    assert!(
        report.torn.is_none(),
        "acknowledged records were cut: {report:?}"
    );
    assert_eq!(report.pending_records, 3);
    let records = read_all(&log);
    assert_eq!(records.iter().map(|r| r.0).collect::<Vec<_>>(), ids);
    for (i, (_, _, p)) in records.iter().enumerate() {
        assert_eq!(p, &big(i as u8));
    }
    log.close().unwrap();
}
