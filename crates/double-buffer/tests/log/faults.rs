//! I/O failures reach every waiting writer as typed errors; nothing unsynced is called durable.

use std::io::ErrorKind;
use std::sync::Arc;
use std::thread;

use double_buffer::{Config, Error, Fault, MemStorage, SpillLog, Storage};

use crate::support::{parse, payload, small};

fn open(mem: &MemStorage, config: Config) -> SpillLog {
    SpillLog::open_with_storage(Arc::new(mem.clone()), config)
        .unwrap()
        .0
}

/// Eight writers waiting on their records while the fault strikes: each ticket is either
/// durable before the fault or gets the fault's kind; every durable one survives a reopen.
fn writers_see(fault: Fault, kind: ErrorKind, after: u64) {
    let mem = MemStorage::new();
    let log = open(&mem, small());
    mem.inject(fault, after, kind);
    let results: Vec<Vec<(u32, Result<u64, Error>)>> = thread::scope(|s| {
        let hs: Vec<_> = (0..8u32)
            .map(|w| {
                let log = &log;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for seq in 0..200 {
                        match log.append(&payload(w, seq)) {
                            Ok(t) => out.push((seq, t.wait().map(|id| id.get()))),
                            Err(e) => {
                                out.push((seq, Err(e)));
                                break;
                            }
                        }
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut durable = Vec::new();
    let mut failed = 0;
    for (w, list) in results.iter().enumerate() {
        for (seq, r) in list {
            match r {
                Ok(id) => durable.push((*id, w as u32, *seq)),
                Err(e) => {
                    failed += 1;
                    assert_eq!(e.io_kind(), Some(kind), "writer {w} got {e}");
                }
            }
        }
    }
    assert!(
        failed >= 8,
        "every writer hears of the failure ({failed} errors)"
    );
    // The log refuses more work, saying why.
    match log.append(b"more") {
        Err(e @ Error::Failed { .. }) => assert_eq!(e.io_kind(), Some(kind)),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(log.stats().failed);
    assert_eq!(log.close().unwrap_err().io_kind(), Some(kind));

    // What was acknowledged survives, also a power loss right after the failure.
    for image in [mem.process_crash(), mem.power_loss(0)] {
        image.heal();
        let (log, _) = SpillLog::open_with_storage(Arc::new(image), small()).unwrap();
        let mut replay = log.replay().unwrap();
        let mut found = std::collections::HashMap::new();
        while let Some(r) = replay.next_record().unwrap() {
            found.insert(r.id().get(), parse(r.payload()));
        }
        for (id, w, seq) in &durable {
            assert_eq!(
                found.get(id),
                Some(&(*w, *seq)),
                "acknowledged record {id} lost"
            );
        }
        drop(replay);
        log.close().unwrap();
    }
}

#[test]
fn disk_full_on_fsync_reaches_every_waiter() {
    writers_see(Fault::Sync, ErrorKind::StorageFull, 20);
}

/// When a flush fails, the records of a slice that get the error are exactly those after
/// the ones already durable: the outcomes of one key's tickets, in append order, are a run of
/// successes followed by a run of errors.
#[test]
fn a_failed_flush_fails_a_suffix_of_each_slice() {
    let mem = MemStorage::new();
    let log = open(&mem, small());
    mem.inject(Fault::Sync, 15, ErrorKind::StorageFull);
    let mut tickets = Vec::new();
    for seq in 0..2_000 {
        match log.append_keyed(0, &payload(0, seq)) {
            Ok(t) => tickets.push(t),
            Err(_) => break, // the log failed and refuses appends
        }
    }
    let outcomes: Vec<bool> = tickets.into_iter().map(|t| t.wait().is_ok()).collect();
    let durable = outcomes.iter().take_while(|ok| **ok).count();
    assert!(durable > 0, "some flushes succeeded before the fault");
    assert!(
        outcomes[durable..].iter().all(|ok| !ok),
        "a record after a failed one was reported durable: {outcomes:?}"
    );
    assert!(durable < outcomes.len(), "the fault struck");
}

#[test]
fn io_error_on_write_reaches_every_waiter() {
    writers_see(Fault::Write, ErrorKind::Other, 30);
}

#[test]
fn permission_denied_creating_a_segment_reaches_every_waiter() {
    // small() rotates every 64 KiB: the second or third segment cannot be created.
    writers_see(Fault::Create, ErrorKind::PermissionDenied, 2);
}

#[test]
fn failed_fsync_is_never_reported_durable_nor_replayed_nor_deleted() {
    let mem = MemStorage::new();
    let log = open(
        &mem,
        Config {
            flush_thread: false,
            ..small()
        },
    );
    let ok = log.append(b"synced").unwrap();
    log.flush().unwrap();
    mem.inject(Fault::Sync, 0, ErrorKind::Other);
    let doomed = log.append(b"written, never synced").unwrap();
    assert_eq!(log.flush().unwrap_err().io_kind(), Some(ErrorKind::Other));
    assert!(ok.is_durable().unwrap());
    assert!(doomed.is_durable().is_err());
    assert!(doomed.wait().is_err());
    mem.heal();
    // The reader sees only what was synced, and a commit deletes nothing it has not passed.
    let mut replay = log.replay().unwrap();
    assert_eq!(replay.next_record().unwrap().unwrap().payload(), b"synced");
    assert!(replay.next_record().unwrap().is_none());
    replay.commit().unwrap();
    drop(replay);
    let segments = mem
        .list()
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".seg"))
        .count();
    assert_eq!(segments, 1);
    drop(log);
}

#[test]
fn directory_sync_failure_fails_the_rotation() {
    let mem = MemStorage::new();
    mem.inject(Fault::SyncDir, 0, ErrorKind::Other);
    let log = open(&mem, small());
    let t = log.append(b"x").unwrap();
    assert_eq!(t.wait().unwrap_err().io_kind(), Some(ErrorKind::Other));
    drop(log);
}

/// The owner's recovery from a failed log: close it, open the directory again, go on. The
/// bytes of the group whose write or fsync failed may sit in the page cache, readable but never
/// durable; the new log must not build on them, or a power loss later leaves a gap before the
/// records acknowledged after the reopen (it did: "groups are missing"). Swept over where the
/// fault strikes — mid-segment and while rotating to a new segment — for each kind of fault,
/// buffered and direct.
#[test]
fn a_reopen_after_a_failed_flush_survives_a_later_power_loss() {
    let faults = [Fault::Sync, Fault::Write, Fault::Create, Fault::SyncDir];
    for direct in [false, true] {
        let config = Config {
            direct_io: direct,
            ..small()
        };
        // ~7 KiB records: one group each, nine to a 64 KiB segment.
        for before in 0..12u32 {
            for fault in faults {
                reopen_after(&config, before, fault);
            }
        }
    }
}

fn reopen_after(config: &Config, before: u32, fault: Fault) {
    let big = |seq: u32| {
        let mut p = payload(0, seq);
        p.resize(7 << 10, seq as u8);
        p
    };
    let what = format!(
        "{fault:?} after {before} records, direct {}",
        config.direct_io
    );
    let mem = MemStorage::new();
    let log = open(&mem, config.clone());
    let mut acked = Vec::new();
    for seq in 0..before {
        let t = log.append_keyed(0, &big(seq)).unwrap();
        acked.push((t.wait().unwrap().get(), seq));
    }
    mem.inject(fault, 0, ErrorKind::StorageFull);
    // A fault on creating a segment strikes only at a rotation: write until one happens.
    let mut seq = before;
    let failed = loop {
        let t = log.append_keyed(0, &big(seq)).unwrap();
        match t.wait() {
            Ok(id) => acked.push((id.get(), seq)),
            Err(e) => break e,
        }
        seq += 1;
    };
    assert_eq!(failed.io_kind(), Some(ErrorKind::StorageFull), "{what}");
    assert!(log.close().is_err(), "{what}");
    mem.heal();
    let log = open(&mem, config.clone());
    for seq in seq + 1..seq + 12 {
        let t = log.append_keyed(0, &big(seq)).unwrap();
        acked.push((t.wait().unwrap().get(), seq));
    }
    drop(log);
    for keep in [0, 5000, u64::MAX] {
        let image = mem.power_loss(keep);
        let (log, _) = SpillLog::open_with_storage(Arc::new(image), config.clone())
            .unwrap_or_else(|e| panic!("{what}, keep {keep}: {e}"));
        let found: std::collections::HashMap<u64, Vec<u8>> = crate::support::read_all(&log)
            .into_iter()
            .map(|(id, _, p)| (id, p))
            .collect();
        for (id, seq) in &acked {
            assert_eq!(
                found.get(id),
                Some(&big(*seq)),
                "{what}, keep {keep}: acknowledged record {id} lost"
            );
        }
        log.close().unwrap();
    }
}
