//! The offline scan behind the `hotkey-scan` binary: runs the detector over
//! an access log on the log's own timestamps.

use std::io::{BufRead, Write};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::ManualClock;
use crate::config::Config;
use crate::detector::{Detector, Event};
use crate::error::{Error, Result};
use crate::rule::{MAX_THRESHOLD, Rule};

/// What to scan for.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanConfig {
    /// Rules tried in order (from `--rules`, then the catch-all from
    /// `--threshold` / `--window-ms`).
    pub rules: Vec<Rule>,
    /// Exact windows per rule at most.
    pub max_candidates: usize,
}

impl ScanConfig {
    /// One catch-all rule: more than `threshold` reads within `window_ms`
    /// (in 10 buckets when the window divides by 10, else fewer).
    pub fn simple(threshold: u64, window_ms: u64) -> Result<Self> {
        Ok(ScanConfig {
            rules: vec![catch_all(threshold, window_ms)?],
            max_candidates: 65_536,
        })
    }
}

/// The catch-all rule of `hotkey-scan`.
pub fn catch_all(threshold: u64, window_ms: u64) -> Result<Rule> {
    if !(1..=u64::from(u32::MAX)).contains(&window_ms) {
        return Err(Error::config(
            "--window-ms",
            window_ms,
            "must be in 1..=4294967295 (49 days)",
        ));
    }
    if !(1..=MAX_THRESHOLD).contains(&threshold) {
        return Err(Error::config(
            "--threshold",
            threshold,
            "must be in 1..=2^32",
        ));
    }
    let buckets = (1..=10u64)
        .rev()
        .find(|b| window_ms.is_multiple_of(*b))
        .unwrap_or(1) as u32;
    let rule = Rule {
        name: "cli".into(),
        window: Duration::from_millis(window_ms),
        buckets,
        threshold,
        cooldown: Duration::from_millis(window_ms),
        ..Rule::default()
    };
    rule.validate()?;
    Ok(rule)
}

/// One detection, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    /// The key as [`display_key`] prints it: UTF-8 as is but `%` written
    /// `%25`, other keys with `%XX` escapes; distinct keys never print the
    /// same.
    pub key: String,
    /// Timestamp of the log line at which the key crossed its threshold.
    pub detected_at_ms: u64,
    /// Reads counted in the window at that moment.
    pub count: u64,
}

/// The last line `hotkey-scan` prints.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ScanSummary {
    /// Lines read (blank lines included).
    pub lines: u64,
    /// Lines that were not `<unix-ms> <key>` (skipped).
    pub malformed: u64,
    /// Reads counted.
    pub reads: u64,
    /// Detections printed (a key that cools down and turns hot again counts twice).
    pub detections: u64,
    /// Distinct keys detected at least once.
    pub hot_keys: u64,
    /// Times a hot key cooled down.
    pub cooled: u64,
    /// Lines whose timestamp was earlier than one before (counted at the
    /// latest time seen).
    pub out_of_order: u64,
    /// First and last timestamps seen.
    pub first_ms: Option<u64>,
    /// Last timestamp seen.
    pub last_ms: Option<u64>,
}

/// How a key is printed, in `hotkey-scan`'s output and in log lines.
///
/// A UTF-8 key is printed as is, except `%`, written `%25`. Any other key
/// is printed with `%` and every byte that is not printable ASCII (space
/// included) written `%XX` (upper-case hex).
///
/// The encoding is injective: percent-decoding the result (each `%XX` to
/// its byte, every other character to its UTF-8 bytes) gives back the key,
/// so two distinct keys never print the same (`"a%FF"` prints `a%25FF`,
/// the byte string `a\xFF` prints `a%FF`).
#[must_use]
pub fn display_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => s.replace('%', "%25"),
        Err(_) => {
            use std::fmt::Write as _;
            let mut out = String::with_capacity(key.len() * 3);
            for &b in key {
                if b.is_ascii_graphic() && b != b'%' || b == b' ' {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            out
        }
    }
}

/// Timestamps of `hotkey-scan` input must be below this: 2^53 ms, about
/// 285,000 years after 1970.
///
/// The bound keeps the detector's time arithmetic (a timestamp plus a window
/// or a bucket of at most 2^32 ms) far from `u64` overflow, and every
/// printed `detected_at_ms` exact in a JSON reader that parses numbers as
/// doubles. A real log in milliseconds is many orders of magnitude below it;
/// a log in nanoseconds is above it and rejected rather than misread.
pub const MAX_TIMESTAMP_MS: u64 = (1 << 53) - 1;

/// Parses line number `line_no` (1-based, used in errors), `<unix-ms> <key>`:
/// the key is everything after the first space (it may contain spaces),
/// without the line ending.
///
/// Returns `Ok(None)` for a line of another shape (no space, or anything but
/// ASCII digits before it), and [`Error::TimestampOutOfRange`] for a
/// timestamp above [`MAX_TIMESTAMP_MS`] (too many digits for a `u64`
/// included).
pub fn parse_line(line: &[u8], line_no: u64) -> Result<Option<(u64, &[u8])>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return Ok(None);
    };
    let digits = &line[..sp];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Ok(None);
    }
    match std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse::<u64>().ok())
    {
        Some(ts) if ts <= MAX_TIMESTAMP_MS => Ok(Some((ts, &line[sp + 1..]))),
        _ => {
            const SHOWN: usize = 40;
            let mut value =
                String::from_utf8_lossy(&digits[..digits.len().min(SHOWN)]).into_owned();
            if digits.len() > SHOWN {
                value.push_str("...");
            }
            Err(Error::TimestampOutOfRange {
                line: line_no,
                value,
            })
        }
    }
}

/// Runs the detector over `input`, writing one JSON line per detection and
/// the summary line to `out`; malformed lines are reported to `errors`
/// (the first ten) and counted.
///
/// A timestamp above [`MAX_TIMESTAMP_MS`] stops the scan with
/// [`Error::TimestampOutOfRange`] (naming the line), before the summary
/// line: it usually means the whole log is in another unit, which skipping
/// line by line would hide.
pub fn scan(
    cfg: &ScanConfig,
    mut input: impl BufRead,
    mut out: impl Write,
    mut errors: impl Write,
) -> Result<ScanSummary> {
    let clock = ManualClock::new(0);
    let config = Config {
        rules: cfg.rules.clone(),
        max_candidates: cfg.max_candidates,
        hash_seed: Some(0x5ca7),
        ..Config::default()
    };
    let detector = Detector::with_clock(config, Arc::new(clock.clone()))?;
    let tick_ms = detector.tick_period().as_millis() as u64;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| Error::Io { what, source }
    };
    let mut summary = ScanSummary::default();
    let mut seen = std::collections::HashSet::new();
    let mut line = Vec::new();
    let mut now = 0u64;
    let mut next_tick = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line).map_err(io("input"))? == 0 {
            break;
        }
        summary.lines += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Some((ts, key)) = parse_line(&line, summary.lines)? else {
            summary.malformed += 1;
            if summary.malformed <= 10 {
                let shown = String::from_utf8_lossy(&line[..line.len().min(80)]);
                writeln!(
                    errors,
                    "line {}: not `<unix-ms> <key>`: {:?}",
                    summary.lines,
                    shown.trim_end()
                )
                .map_err(io("stderr"))?;
            }
            continue;
        };
        summary.first_ms.get_or_insert(ts);
        if ts < now {
            summary.out_of_order += 1;
        } else {
            now = ts;
        }
        if now >= next_tick {
            detector.tick_at(now);
            // Cannot overflow (now <= 2^53, tick_ms <= 2^32); saturating
            // all the same, as the detector's own time arithmetic is.
            next_tick = (now / tick_ms + 1).saturating_mul(tick_ms);
        }
        detector.record_at(key, 1, now);
        summary.reads += 1;
        while let Some(event) = detector.poll_event() {
            match event {
                Event::Hot(h) => {
                    summary.detections += 1;
                    seen.insert(h.key.clone());
                    let d = Detection {
                        key: display_key(&h.key),
                        detected_at_ms: h.detected_at_ms,
                        count: h.rate,
                    };
                    serde_json::to_writer(&mut out, &d).map_err(|e| Error::Io {
                        what: "output".into(),
                        source: e.into(),
                    })?;
                    out.write_all(b"\n").map_err(io("output"))?;
                }
                Event::Cooled(_) => summary.cooled += 1,
            }
        }
    }
    summary.last_ms = (summary.reads > 0).then_some(now);
    summary.hot_keys = seen.len() as u64;
    #[derive(Serialize)]
    struct Line<'a> {
        summary: &'a ScanSummary,
    }
    serde_json::to_writer(&mut out, &Line { summary: &summary }).map_err(|e| Error::Io {
        what: "output".into(),
        source: e.into(),
    })?;
    out.write_all(b"\n").map_err(io("output"))?;
    out.flush().map_err(io("output"))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_keys() {
        let ok = |line: &'static [u8]| parse_line(line, 1).unwrap();
        assert_eq!(
            ok(b"1700000000000 user:1\n"),
            Some((1_700_000_000_000, &b"user:1"[..]))
        );
        assert_eq!(
            ok(b"5 a key with spaces\r\n"),
            Some((5, &b"a key with spaces"[..]))
        );
        assert_eq!(ok(b"5 \n"), Some((5, &b""[..])));
        for bad in [&b"abc key"[..], b"-5 key", b"5", b" key", b"+5 key"] {
            assert_eq!(ok(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            ok(b"9007199254740991 k"),
            Some((MAX_TIMESTAMP_MS, &b"k"[..]))
        );
        // At or above 2^53, in or out of u64: an error naming line and value.
        for (line, value) in [
            (&b"9007199254740992 k"[..], "9007199254740992"),
            (b"18446744073709551615 k", "18446744073709551615"),
            (b"99999999999999999999999 k", "99999999999999999999999"),
        ] {
            let e = parse_line(line, 7).unwrap_err();
            assert!(
                matches!(&e, Error::TimestampOutOfRange { line: 7, value: v } if v == value),
                "{e:?}"
            );
            assert!(
                e.to_string()
                    .starts_with(&format!("line 7: timestamp {value} ")),
                "{e}"
            );
        }
        let long = format!("{} k", "1".repeat(100));
        let e = parse_line(long.as_bytes(), 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{}...", "1".repeat(40))) && e.len() < 120,
            "{e}"
        );
        assert_eq!(display_key(b"plain"), "plain");
        // Each bad argument is named, not reported as another one.
        let e = catch_all(1000, 1 << 40).unwrap_err().to_string();
        assert!(e.contains("--window-ms"), "{e}");
        let e = catch_all(0, 1000).unwrap_err().to_string();
        assert!(e.contains("--threshold = 0"), "{e}");
        assert_eq!(display_key(b"a\xff%b"), "a%FF%25b");
        // `%` is escaped in UTF-8 keys too, so these two differ.
        assert_eq!(display_key(b"a%FF"), "a%25FF");
        assert_eq!(display_key(b"a\xff"), "a%FF");
        assert_eq!(display_key("caf\u{e9} %".as_bytes()), "caf\u{e9} %25");
    }

    /// Percent-decodes a [`display_key`] result (the inverse the docs state).
    fn undisplay(shown: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = shown;
        while let Some(c) = rest.chars().next() {
            if c == '%' {
                out.push(u8::from_str_radix(&rest[1..3], 16).unwrap());
                rest = &rest[3..];
            } else {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }

    /// Bytes that make keys valid or invalid UTF-8, and ones that look like
    /// escapes.
    fn key() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        let byte = proptest::sample::select(vec![
            b'%', b'F', b'2', b'5', b'a', b' ', b'\n', 0x7f, 0xff, 0xc3, 0xa9, 0xe2, 0x82, 0xac,
        ]);
        proptest::collection::vec(byte, 0..8)
    }

    proptest::proptest! {
        /// Decoding gives back the key, hence distinct keys display
        /// differently.
        #[test]
        fn display_key_is_injective(a in key(), b in key()) {
            let (da, db) = (display_key(&a), display_key(&b));
            proptest::prop_assert_eq!(undisplay(&da), a.clone());
            proptest::prop_assert_eq!(a == b, da == db, "{:?} {:?} -> {} {}", a, b, da, db);
        }
    }

    #[test]
    fn an_out_of_range_timestamp_stops_the_scan() {
        // u64::MAX used to overflow the next tick (a panic in debug builds).
        let log = "1000 a\n18446744073709551615 k\n1001 a\n";
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let e = scan(
            &ScanConfig::simple(3, 1000).unwrap(),
            log.as_bytes(),
            &mut out,
            &mut err,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::TimestampOutOfRange { line: 2, value } if value == "18446744073709551615"),
            "{e:?}"
        );
        assert!(out.is_empty(), "no summary after an error");
        // The largest accepted timestamp scans, detects and ticks.
        let log = format!("{MAX_TIMESTAMP_MS} k\n").repeat(4);
        let s = scan(
            &ScanConfig::simple(3, 1000).unwrap(),
            log.as_bytes(),
            &mut out,
            &mut err,
        )
        .unwrap();
        assert_eq!((s.reads, s.detections), (4, 1));
        assert_eq!(s.last_ms, Some(MAX_TIMESTAMP_MS));
    }

    #[test]
    fn scans_a_small_log() {
        let mut lines: Vec<(u64, &str)> = (0..5u64)
            .flat_map(|i| [(1000 + i, "hot"), (1000 + i * 400, "cold")])
            .collect();
        lines.sort_by_key(|(t, _)| *t);
        let mut log: String = lines.iter().map(|(t, k)| format!("{t} {k}\n")).collect();
        log.push_str("garbage\n\n");
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let s = scan(
            &ScanConfig::simple(3, 1000).unwrap(),
            log.as_bytes(),
            &mut out,
            &mut err,
        )
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], r#"{"key":"hot","detected_at_ms":1003,"count":4}"#);
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with(
                r#"{"summary":{"lines":12,"malformed":1,"reads":10,"detections":1,"hot_keys":1"#
            ),
            "{}",
            lines[1]
        );
        assert_eq!(s.malformed, 1);
        assert!(String::from_utf8(err).unwrap().contains("line 11"));
    }
}
