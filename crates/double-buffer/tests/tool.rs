//! The operator's tool, run as a process on real directories.

use std::process::{Command, Output};

use double_buffer::{Config, SpillLog};

fn tool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_spill-log"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn config() -> Config {
    Config {
        slices: 2,
        buffer_size: 8 << 10,
        segment_size: 16 << 10,
        ..Config::default()
    }
}

/// A log with 1000 text records and one binary record, half of them replayed and committed.
fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = SpillLog::open(dir.path(), config()).unwrap();
    for i in 0..1000 {
        drop(
            log.append_keyed(0, format!("order {i}: widget").as_bytes())
                .unwrap(),
        );
    }
    log.append_keyed(0, &[0, 1, 2, 255])
        .unwrap()
        .wait()
        .unwrap();
    log.flush().unwrap();
    let mut replay = log.replay().unwrap();
    for _ in 0..100 {
        replay.next_record().unwrap().unwrap();
    }
    replay.commit().unwrap();
    drop(replay);
    log.close().unwrap();
    dir
}

#[test]
fn inspect_lists_segments_checkpoint_and_pending_records() {
    let dir = sample();
    let path = dir.path().to_str().unwrap();
    let o = tool(&["inspect", path]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("waiting to be replayed: 901 records"), "{out}");
    assert!(out.contains("checkpoint: 0000"), "{out}");
    assert!(out.contains("no corruption found"), "{out}");
    assert!(
        out.lines().filter(|l| l.contains(".seg")).count() >= 2,
        "{out}"
    );
}

#[test]
fn dump_shows_what_waits_for_replay() {
    let dir = sample();
    let path = dir.path().to_str().unwrap();
    let out = stdout(&tool(&["dump", path]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 901, "{out}");
    assert!(
        lines[0].contains("\"order 100: widget\"") && lines[0].contains("slice=0"),
        "{}",
        lines[0]
    );
    assert!(
        lines[900].contains("0x000102ff") && lines[900].contains("len=4"),
        "{}",
        lines[900]
    );
    assert_eq!(
        stdout(&tool(&["dump", path, "--all"])).lines().count(),
        1001
    );
    assert_eq!(
        stdout(&tool(&["dump", path, "--all", "--limit", "3"]))
            .lines()
            .count(),
        3
    );
    assert!(stdout(&tool(&["dump", path, "--hex", "--limit", "1"])).contains("0x6f72646572"));
}

#[test]
fn verify_reports_a_torn_tail_and_fails_on_corruption() {
    let dir = sample();
    let path = dir.path().to_str().unwrap();
    let o = tool(&["verify", path]);
    assert!(o.status.success());
    assert!(stdout(&o).starts_with("ok: "), "{}", stdout(&o));

    let mut segs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    // A torn tail: the last segment's last group cut short (files are preallocated: zero it).
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap();
    bytes[end - 5..=end].fill(0);
    std::fs::write(last, &bytes).unwrap();
    let o = tool(&["verify", path]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("torn tail"), "{}", stdout(&o));

    // Corruption in the middle of an earlier segment.
    assert!(segs.len() >= 2, "{segs:?}");
    let first = &segs[segs.len() - 2];
    let mut bytes = std::fs::read(first).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(first, &bytes).unwrap();
    let o = tool(&["verify", path]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.starts_with("CORRUPT: corrupt spill log at") && out.contains(":100")
            || out.contains("at "),
        "{out}"
    );
    let o = tool(&["inspect", path]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("first problem: corrupt spill log"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn usage_errors_exit_2_and_say_why() {
    let o = tool(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(tool(&["--help"]).status.success());
    let o = tool(&["frobnicate", "/tmp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown command"));
    let o = tool(&["inspect", "/nonexistent/spill/dir"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/spill/dir"));
    let o = tool(&["dump", "/tmp", "--limit", "x"]);
    assert_eq!(o.status.code(), Some(2));
}
