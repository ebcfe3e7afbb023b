//! `hotkey-scan`: find the hot keys of an access log.
//!
//! ```text
//! hotkey-scan --threshold N --window-ms W [--rules FILE] < access.log
//! ```
//!
//! Each input line is `<unix-ms> <key>`, the timestamp below 2^53
//! ([`hotkey::MAX_TIMESTAMP_MS`]). The detector runs on the log's own
//! timestamps and prints one JSON line per detection,
//! `{"key":"..","detected_at_ms":..,"count":..}`, then a summary line.

use std::io::{self, BufReader};
use std::process::ExitCode;

use hotkey::{ScanConfig, catch_all, scan};

const USAGE: &str = "\
usage: hotkey-scan [--threshold N] [--window-ms W] [--rules FILE] [--max-candidates N] < access.log

Reads lines `<unix-ms> <key>` (the key is the rest of the line) and runs the
hot-key detector on the log's own timestamps, which must be below 2^53 (a
larger one stops the scan with an error naming its line). Prints one JSON line per
detection, {\"key\":..,\"detected_at_ms\":..,\"count\":..}, then a summary line.

  --threshold N       a key is hot with more than N reads in the window (default 1000)
  --window-ms W       window length in ms (default 1000; 10 buckets when W divides by 10)
  --rules FILE        JSON array of rules tried first, e.g.
                      [{\"name\":\"users\",\"prefix\":\"user:\",\"threshold\":500,\"window_ms\":1000}]
                      keys no rule matches fall to --threshold/--window-ms
  --max-candidates N  exact windows per rule at most (default 65536)
  -h, --help          this text";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hotkey-scan: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut threshold = 1000u64;
    let mut window_ms = 1000u64;
    let mut rules_file: Option<String> = None;
    let mut max_candidates = 65_536usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--threshold" => threshold = parse(&value("--threshold")?, "--threshold")?,
            "--window-ms" => window_ms = parse(&value("--window-ms")?, "--window-ms")?,
            "--max-candidates" => {
                max_candidates = parse(&value("--max-candidates")?, "--max-candidates")?;
            }
            "--rules" => rules_file = Some(value("--rules")?),
            other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    let mut rules = match &rules_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))?;
            hotkey::parse_rules(&text, path).map_err(|e| e.to_string())?
        }
        None => Vec::new(),
    };
    rules.push(catch_all(threshold, window_ms).map_err(|e| e.to_string())?);
    let cfg = ScanConfig {
        rules,
        max_candidates,
    };
    let stdin = io::stdin().lock();
    let stdout = io::BufWriter::new(io::stdout().lock());
    scan(
        &cfg,
        BufReader::with_capacity(1 << 16, stdin),
        stdout,
        io::stderr(),
    )
    .map_err(|e| e.to_string())?;
    Ok(())
}

fn parse<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
    s.parse()
        .map_err(|_| format!("{name}: {s:?} is not a valid number"))
}
