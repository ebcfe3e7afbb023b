//! Torn tails are cut and reported; damage anywhere else stops `open` with its position.

use double_buffer::{Config, Error, SegmentState, inspect_storage};

use crate::support::{Env, both, parse, payload, read_all, small};

both!(
    torn_tail_is_cut_and_reported,
    damage_before_valid_data_is_corruption_with_its_offset,
    zeroed_group_in_the_middle_is_corruption,
    lost_end_of_a_sealed_segment_is_corruption,
    damaged_checkpoint_is_refused,
    crash_during_segment_creation_is_cleaned_up,
    rotted_header_of_the_last_segment_is_corruption_not_a_torn_creation,
    a_header_torn_after_its_magic_is_an_interrupted_creation,
    a_stray_file_named_beyond_the_segment_ids_is_left_alone,
);

/// Writes `groups` groups of 3 records each (one flush each) and closes.
fn write_groups(env: &Env, groups: u32, config: &Config) -> Vec<u64> {
    let (log, _) = env.open(config.clone()).unwrap();
    let mut ids = Vec::new();
    for g in 0..groups {
        let tickets: Vec<_> = (0..3)
            .map(|i| log.append_keyed(0, &payload(0, g * 3 + i)).unwrap())
            .collect();
        log.flush().unwrap();
        ids.extend(tickets.into_iter().map(|t| t.wait().unwrap().get()));
    }
    log.close().unwrap();
    ids
}

fn big_segments() -> Config {
    Config {
        segment_size: 1 << 20,
        preallocate: false,
        ..small()
    }
}

fn torn_tail_is_cut_and_reported(env: &Env) {
    let config = big_segments();
    let ids = write_groups(env, 5, &config);
    let seg = env.segment_files().pop().unwrap();
    let bytes = env.read_file(&seg);
    let full = bytes.len();
    // Cut the last group in half: what a crash in the middle of its write leaves.
    let info = inspect_storage(&*env.storage()).unwrap();
    assert!(info.problem.is_none());
    let cut = full - 100;
    env.write_file(&seg, bytes[..cut].to_vec());

    let inspection = inspect_storage(&*env.storage()).unwrap();
    assert!(
        inspection.problem.is_none(),
        "a torn tail is not corruption"
    );
    assert!(matches!(
        inspection.segments[0].state,
        SegmentState::TornTail { .. }
    ));

    let (log, report) = env.open(config.clone()).unwrap();
    let torn = report.torn.clone().expect("the cut is reported");
    assert!(torn.bytes > 0 && torn.offset < cut as u64, "{torn:?}");
    let got: Vec<u64> = read_all(&log).iter().map(|r| r.0).collect();
    assert_eq!(
        got,
        ids[..12].to_vec(),
        "the first four groups survive whole"
    );
    // The log goes on: new records after the cut, and they survive a reopen.
    let id = log.append(b"after the cut").unwrap().wait().unwrap();
    log.close().unwrap();
    let (log, report) = env.open(config).unwrap();
    assert!(report.torn.is_none());
    let all = read_all(&log);
    assert_eq!(all.len(), 13);
    assert_eq!(all.last().unwrap().0, id.get());
    log.close().unwrap();
}

fn damage_before_valid_data_is_corruption_with_its_offset(env: &Env) {
    let config = big_segments();
    write_groups(env, 5, &config);
    let seg = env.segment_files().pop().unwrap();
    let mut bytes = env.read_file(&seg);
    // A payload byte of the second record of the first group.
    let first_record = double_buffer::SEGMENT_HEADER_LEN + double_buffer::GROUP_HEADER_LEN;
    let second = first_record + double_buffer::RECORD_HEADER_LEN + payload(0, 0).len();
    bytes[second + double_buffer::RECORD_HEADER_LEN + 3] ^= 0x40;
    env.write_file(&seg, bytes);

    match env.open(config.clone()) {
        Err(Error::Corrupt {
            offset,
            reason,
            path,
        }) => {
            assert_eq!(offset, second as u64, "{reason}");
            assert!(path.ends_with(&seg), "{path:?}");
            assert!(reason.contains("checksum"), "{reason}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
    let inspection = inspect_storage(&*env.storage()).unwrap();
    assert!(matches!(inspection.problem, Some(Error::Corrupt { .. })));
}

fn zeroed_group_in_the_middle_is_corruption(env: &Env) {
    let config = Config {
        preallocate: true,
        ..big_segments()
    };
    write_groups(env, 4, &config);
    let seg = env.segment_files().pop().unwrap();
    let mut bytes = env.read_file(&seg);
    // Zero the whole second group header: looks like the end of the data, but groups follow.
    let starts = group_starts(&bytes);
    if config.direct_io {
        assert!(
            starts[1..].iter().all(|s| s % 4096 == 0),
            "direct groups start on blocks: {starts:?}"
        );
    }
    let second = starts[1];
    bytes[second..second + double_buffer::GROUP_HEADER_LEN].fill(0);
    env.write_file(&seg, bytes);
    match env.open(config) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, second as u64),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
}

fn lost_end_of_a_sealed_segment_is_corruption(env: &Env) {
    let config = small();
    write_groups(env, 400, &config);
    let segs = env.segment_files();
    assert!(segs.len() >= 3);
    // Drop the last group of the first segment: the next segment's first group no longer follows.
    let info = inspect_storage(&*env.storage()).unwrap();
    let first = &info.segments[0];
    let bytes = env.read_file(&segs[0]);
    let cut = last_group_start(&bytes, first.data_end as usize);
    let mut damaged = bytes[..cut].to_vec();
    damaged.resize(bytes.len(), 0);
    env.write_file(&segs[0], damaged);
    match env.open(config) {
        Err(Error::Corrupt { reason, .. }) => assert!(
            reason.contains("missing") || reason.contains("sealed"),
            "{reason}"
        ),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
}

/// Where the groups start (8-aligned offsets holding the group magic).
fn group_starts(bytes: &[u8]) -> Vec<usize> {
    (double_buffer::SEGMENT_HEADER_LEN..bytes.len() - 4)
        .step_by(8)
        .filter(|&i| &bytes[i..i + 4] == b"GRP1")
        .collect()
}

/// The offset of the last group header before `end` (groups start 8-aligned with magic "GRP1").
fn last_group_start(bytes: &[u8], end: usize) -> usize {
    (double_buffer::SEGMENT_HEADER_LEN..end)
        .step_by(8)
        .rfind(|&i| &bytes[i..i + 4] == b"GRP1")
        .unwrap()
}

fn damaged_checkpoint_is_refused(env: &Env) {
    let config = small();
    write_groups(env, 3, &config);
    let (log, _) = env.open(config.clone()).unwrap();
    let mut replay = log.replay().unwrap();
    replay.next_record().unwrap().unwrap();
    replay.commit().unwrap();
    drop(replay);
    log.close().unwrap();
    let mut ck = env.read_file("checkpoint");
    ck[20] ^= 1;
    env.write_file("checkpoint", ck);
    match env.open(config) {
        Err(Error::Corrupt { path, .. }) => assert!(path.ends_with("checkpoint")),
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
}

fn crash_during_segment_creation_is_cleaned_up(env: &Env) {
    let config = small();
    write_groups(env, 2, &config);
    // A segment file created but whose header never reached the disk.
    let next = "00000000000000000099.seg";
    env.write_file_new(next, vec![0; 30]);
    let (log, report) = env.open(config.clone()).unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.removed[0].ends_with(next));
    assert_eq!(read_all(&log).len(), 6);
    let id = log.append(b"x").unwrap().wait().unwrap();
    log.close().unwrap();
    let (log, _) = env.open(config).unwrap();
    let all = read_all(&log);
    assert_eq!(all.last().unwrap().0, id.get());
    for (_, _, p) in &all[..6] {
        parse(p);
    }
    log.close().unwrap();
}

/// A bad header on the last segment usually means its creation was interrupted (it holds no
/// acknowledged record, and it is removed). But synced groups behind it prove the header was
/// synced and has rotted since: opening must refuse, not delete acknowledged records.
fn rotted_header_of_the_last_segment_is_corruption_not_a_torn_creation(env: &Env) {
    let config = big_segments();
    write_groups(env, 3, &config);
    let segs = env.segment_files();
    assert_eq!(segs.len(), 1);
    let mut bytes = env.read_file(&segs[0]);
    bytes[20] ^= 0x10; // the segment id field: the header checksum no longer matches
    env.write_file(&segs[0], bytes);
    match env.open(config) {
        Err(Error::Corrupt { offset, path, .. }) => {
            assert_eq!(offset, 0);
            assert!(path.ends_with(&segs[0]), "{path:?}");
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|(_, r)| r)),
    }
    assert_eq!(env.segment_files(), segs, "the segment is kept");
    let inspection = inspect_storage(&*env.storage()).unwrap();
    assert!(matches!(inspection.problem, Some(Error::Corrupt { .. })));
}

/// A crash can keep any prefix of the unsynced header write: one that stops right after the
/// magic reads as format version 0. That is a torn creation, not a file of another version.
fn a_header_torn_after_its_magic_is_an_interrupted_creation(env: &Env) {
    let config = small();
    write_groups(env, 2, &config);
    let next = "00000000000000000099.seg";
    let mut torn = b"SPILLSEG".to_vec();
    torn.resize(double_buffer::SEGMENT_HEADER_LEN, 0);
    env.write_file_new(next, torn);
    let (log, report) = env.open(config).unwrap();
    assert_eq!(report.removed.len(), 1, "{report:?}");
    assert!(report.removed[0].ends_with(next));
    assert_eq!(read_all(&log).len(), 6);
    log.close().unwrap();
}

/// A file whose name looks like a segment but whose id is beyond any this crate creates (the
/// next id would overflow) is not taken for a segment: the log opens, and the file stays.
fn a_stray_file_named_beyond_the_segment_ids_is_left_alone(env: &Env) {
    let config = small();
    write_groups(env, 2, &config);
    let stray = format!("{}.seg", u64::MAX);
    env.write_file_new(&stray, b"not ours".to_vec());
    let (log, report) = env.open(config).unwrap();
    assert!(report.removed.is_empty(), "{report:?}");
    assert_eq!(read_all(&log).len(), 6);
    log.append(b"x").unwrap().wait().unwrap();
    log.close().unwrap();
    assert_eq!(env.read_file(&stray), b"not ours");
}
