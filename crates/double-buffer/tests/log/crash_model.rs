//! Property: whatever the interleaving of appends, flushes, replays and commits, and wherever a
//! crash strikes (at any storage operation, keeping any prefix of the bytes written but not
//! synced), recovery succeeds and gives back, for each slice, exactly a contiguous run of that
//! slice's appended records that starts at the checkpoint and contains every record that was
//! acknowledged as durable.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::sync::Arc;

use double_buffer::{Config, Fault, MemStorage, SpillLog, Ticket};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { key: u8, len: u16 },
    Flush,
    Replay(u8),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (any::<u8>(), 1..700u16).prop_map(|(key, len)| Op::Append { key, len }),
        1 => Just(Op::Flush),
        1 => (1..30u8).prop_map(Op::Replay),
        1 => Just(Op::Commit),
    ]
}

fn fault() -> impl Strategy<Value = Option<(Fault, u64)>> {
    prop_oneof![
        1 => Just(None),
        3 => (0..40u64).prop_map(|n| Some((Fault::Write, n))),
        3 => (0..20u64).prop_map(|n| Some((Fault::Sync, n))),
        1 => (0..6u64).prop_map(|n| Some((Fault::Create, n))),
        1 => (0..8u64).prop_map(|n| Some((Fault::SyncDir, n))),
        1 => (0..4u64).prop_map(|n| Some((Fault::Remove, n))),
    ]
}

fn payload(n: u32, len: u16) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ n.wrapping_mul(7919)) as u8)
        .collect()
}

struct Run {
    /// Per slice: (id, payload) in append order.
    appended: Vec<Vec<(u64, Vec<u8>)>>,
    acked: HashSet<u64>,
    /// Per slice, records replayed and committed: at the last successful commit, and at a
    /// commit that failed half-way (its checkpoint may or may not have become durable).
    committed: Vec<usize>,
    attempted: Option<Vec<usize>>,
}

fn run(mem: &MemStorage, config: &Config, ops: &[Op], fault: Option<(Fault, u64)>) -> Run {
    let slices = config.slices;
    let (log, _) = SpillLog::open_with_storage(Arc::new(mem.clone()), config.clone()).unwrap();
    if let Some((f, n)) = fault {
        mem.inject(f, n, ErrorKind::Other);
    }
    let mut r = Run {
        appended: vec![Vec::new(); slices],
        acked: HashSet::new(),
        committed: vec![0; slices],
        attempted: None,
    };
    let mut tickets: Vec<Ticket> = Vec::new();
    let mut replay = None;
    let mut replayed = vec![0usize; slices];
    let mut n = 0u32;
    'ops: for op in ops {
        match *op {
            Op::Append { key, len } => {
                let p = payload(n, len);
                n += 1;
                match log.append_keyed(u64::from(key), &p) {
                    Ok(t) => {
                        r.appended[t.slice()].push((t.id().get(), p));
                        tickets.push(t);
                    }
                    Err(_) => break 'ops,
                }
            }
            Op::Flush => {
                if log.flush().is_err() {
                    break 'ops;
                }
            }
            Op::Replay(k) => {
                if replay.is_none() {
                    replay = Some(log.replay().unwrap());
                }
                let rp = replay.as_mut().unwrap();
                for _ in 0..k {
                    match rp.next_record().unwrap() {
                        Some(rec) => replayed[rec.slice()] += 1,
                        None => break,
                    }
                }
            }
            Op::Commit => {
                if let Some(rp) = replay.as_mut() {
                    if rp.commit().is_err() {
                        r.attempted = Some(replayed.clone());
                        break 'ops;
                    }
                    r.committed = replayed.clone();
                }
            }
        }
        tickets.retain(|t| match t.is_durable() {
            Ok(true) => {
                r.acked.insert(t.id().get());
                false
            }
            _ => true,
        });
    }
    drop(replay);
    // The process dies here: the log is forgotten without closing (closing would flush more).
    std::mem::forget(log);
    r
}

/// Each slice's recovered records are the appended ones from the checkpoint on, and include
/// every acknowledged one.
fn check_from(start: &[usize], got: &[Vec<(u64, Vec<u8>)>], r: &Run) -> Result<(), String> {
    for (s, got) in got.iter().enumerate() {
        let appended = &r.appended[s];
        let c = start[s];
        if c + got.len() > appended.len() || got[..] != appended[c..c + got.len()] {
            return Err(format!(
                "slice {s}: recovered ids {:?} are not a run of the appended {:?} from {c}",
                got.iter().map(|x| x.0).collect::<Vec<_>>(),
                appended.iter().map(|x| x.0).collect::<Vec<_>>(),
            ));
        }
        if let Some((id, _)) = appended[c + got.len()..]
            .iter()
            .find(|(id, _)| r.acked.contains(id))
        {
            return Err(format!("slice {s}: acknowledged record {id} lost"));
        }
    }
    Ok(())
}

fn check(image: MemStorage, config: &Config, r: &Run) -> Result<(), TestCaseError> {
    let (log, _report) = SpillLog::open_with_storage(Arc::new(image), config.clone())
        .map_err(|e| TestCaseError::fail(format!("recovery failed: {e}")))?;
    let mut got: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); config.slices];
    let mut replay = log.replay().unwrap();
    while let Some(rec) = replay.next_record().unwrap() {
        got[rec.slice()].push((rec.id().get(), rec.payload().to_vec()));
    }
    drop(replay);
    // CRASH_MODEL_DEBUG=1 prints what a failing case recovered.
    if std::env::var_os("CRASH_MODEL_DEBUG").is_some() {
        eprintln!("report {_report:?}");
        eprintln!(
            "got {:?}",
            got.iter()
                .map(|v| v.iter().map(|x| x.0).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        eprintln!(
            "appended {:?}",
            r.appended
                .iter()
                .map(|v| v.iter().map(|x| x.0).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        eprintln!(
            "acked {:?} committed {:?} attempted {:?}",
            r.acked, r.committed, r.attempted
        );
    }
    // The checkpoint is the last committed one, or the one a failed commit was writing.
    let starts: Vec<&Vec<usize>> = std::iter::once(&r.committed)
        .chain(r.attempted.as_ref())
        .collect();
    let mut verdicts = Vec::new();
    for start in &starts {
        match check_from(start, &got, r) {
            Ok(()) => {
                verdicts.clear();
                break;
            }
            Err(e) => verdicts.push(e),
        }
    }
    if let Some(e) = verdicts.pop() {
        return Err(TestCaseError::fail(e));
    }
    // The recovered log takes new records and keeps them.
    let id = log.append(b"after recovery").unwrap().wait().unwrap();
    log.close().unwrap();
    Ok(id).map(|_| ())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn crash_anywhere_recovers_a_prefix_of_each_slice_with_every_acknowledged_record(
        ops in prop::collection::vec(op(), 1..120),
        fault in fault(),
        keep in 0.0..=1.0f64,
        slices in 1..4usize,
        preallocate in any::<bool>(),
        direct_io in any::<bool>(),
    ) {
        let config = Config {
            slices,
            buffer_size: 4096,
            segment_size: 8192,
            flush_thread: false,
            preallocate,
            direct_io,
            read_chunk: 4096,
            ..Config::default()
        };
        let mem = MemStorage::new();
        let r = run(&mem, &config, &ops, fault);
        let unsynced = mem.unsynced_bytes();
        let image = mem.power_loss((unsynced as f64 * keep) as u64);
        check(image, &config, &r)?;
        // A process crash (nothing lost from the page cache) recovers too.
        check(mem.process_crash(), &config, &r)?;
    }
}
