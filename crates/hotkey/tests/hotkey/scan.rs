//! `hotkey-scan` end to end: the binary on a generated access log.

use std::io::Write;
use std::process::{Command, Stdio};

fn run(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hotkey-scan"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// 3 s of traffic: 20k background reads over 5000 keys, "user:1" read 1500
/// times in its first second, "item:9" 600 times within 500 ms.
fn access_log() -> (Vec<u8>, u64) {
    let start = 1_700_000_000_000u64;
    let mut lines: Vec<(u64, String)> = Vec::new();
    for i in 0..20_000u64 {
        lines.push((
            start + i * 3000 / 20_000,
            format!("bg:{}", (i * 7919) % 5000),
        ));
    }
    for i in 0..1500u64 {
        lines.push((start + i * 1000 / 1500, "user:1".into()));
    }
    for i in 0..600u64 {
        lines.push((start + 2000 + i * 500 / 600, "item:9 with spaces".into()));
    }
    lines.sort_by_key(|(t, _)| *t);
    let user_1001st = lines
        .iter()
        .filter(|(_, k)| k == "user:1")
        .nth(1000)
        .unwrap()
        .0;
    let mut log = Vec::new();
    for (t, k) in lines {
        writeln!(log, "{t} {k}").unwrap();
    }
    (log, user_1001st)
}

#[test]
fn finds_the_planted_keys_on_the_logs_own_clock() {
    let (log, user_at) = access_log();
    let (code, out, err) = run(&["--threshold", "1000", "--window-ms", "1000"], &log);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0],
        format!(r#"{{"key":"user:1","detected_at_ms":{user_at},"count":1001}}"#)
    );
    let summary: serde_json::Value = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(summary["summary"]["reads"], 22_100);
    assert_eq!(summary["summary"]["detections"], 1);
    assert_eq!(summary["summary"]["malformed"], 0);

    // Deterministic: the same log gives the same output.
    assert_eq!(
        run(&["--threshold", "1000", "--window-ms", "1000"], &log).1,
        out
    );
}

#[test]
fn rules_file_adds_a_stricter_rule() {
    let (log, _) = access_log();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"[{"name":"items","prefix":"item:","threshold":500,"window_ms":1000}]"#,
    )
    .unwrap();
    let (code, out, err) = run(
        &[
            "--threshold",
            "1000",
            "--window-ms",
            "1000",
            "--rules",
            rules.to_str().unwrap(),
        ],
        &log,
    );
    assert_eq!(code, 0, "{err}");
    let keys: Vec<String> = out
        .lines()
        .filter_map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()?
                .get("key")
                .map(|k| k.as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        keys,
        vec!["user:1".to_owned(), "item:9 with spaces".to_owned()]
    );
    let item: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(item["count"], 501);
}

#[test]
fn bad_input_and_arguments_are_reported() {
    let (code, out, err) = run(&[], b"1 a\nnot a line\n2 a\n");
    assert_eq!(code, 0);
    assert!(err.contains("line 2"), "{err}");
    assert!(out.contains(r#""malformed":1"#), "{out}");
    // A timestamp at or above 2^53 ms (here u64::MAX, which used to overflow)
    // stops the scan with the line and the value.
    let (code, _, err) = run(&[], b"1 a\n18446744073709551615 k\n");
    assert_eq!(code, 2);
    assert!(
        err.contains("line 2: timestamp 18446744073709551615 is out of range"),
        "{err}"
    );
    let (code, _, err) = run(&["--threshold", "x"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("--threshold"), "{err}");
    let (code, _, err) = run(&["--window-ms", "0"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("window"), "{err}");
    let (code, _, err) = run(&["--rules", "/nonexistent/rules.json"], b"");
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/rules.json"), "{err}");
    let (code, out, _) = run(&["--help"], b"");
    assert_eq!(code, 0);
    assert!(out.contains("usage: hotkey-scan"));
}
