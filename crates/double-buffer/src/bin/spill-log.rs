//! `spill-log`: look inside a spill-log directory without changing it.
//!
//! ```text
//! spill-log inspect DIR                 segments, record counts, checkpoint, first problem
//! spill-log verify DIR                  exit 0 if the log opens cleanly, 1 if it is corrupt
//! spill-log dump DIR [--all] [--hex] [--limit N]
//!                                       records waiting to be replayed (all with --all)
//! ```
//!
//! It takes no lock, so it can look at the directory of a running log (the tail being
//! written may then show as torn).

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;

use double_buffer::{DiskStorage, Inspection, SegmentState, inspect, read_records};

const USAGE: &str = "\
usage: spill-log <command> DIR [options]

commands:
  inspect DIR     list segments (records, ids, sizes, state), the checkpoint and the
                  records waiting to be replayed; name the first problem if any
  verify DIR      check every record; exit 0 if the log would open (a torn tail is
                  reported and would be cut), 1 if it is corrupt
  dump DIR        print the records waiting to be replayed: the position just after
                  each (its commit point), id, slice, length, UTF-8 or hex preview
      --all       from the first record on disk, not from the checkpoint
      --hex       always show payloads in hex
      --limit N   stop after N records

exit status: 0 fine, 1 corruption found, 2 usage or I/O error";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("spill-log: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, String> {
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return Ok(if args.is_empty() {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let command = args[0].as_str();
    let mut dir = None;
    let (mut all, mut hex, mut limit) = (false, false, u64::MAX);
    let mut rest = args[1..].iter();
    while let Some(a) = rest.next() {
        match a.as_str() {
            "--all" if command == "dump" => all = true,
            "--hex" if command == "dump" => hex = true,
            "--limit" if command == "dump" => {
                let v = rest.next().ok_or("--limit needs a number")?;
                limit = v
                    .parse()
                    .map_err(|_| format!("--limit needs a number, got {v:?}"))?;
            }
            s if s.starts_with('-') => {
                return Err(format!("unknown option {s:?} for {command}\n\n{USAGE}"));
            }
            s if dir.is_none() => dir = Some(s.to_owned()),
            s => return Err(format!("unexpected argument {s:?}\n\n{USAGE}")),
        }
    }
    let dir = dir.ok_or_else(|| format!("{command} needs a directory\n\n{USAGE}"))?;
    match command {
        "inspect" => {
            let inspection = inspect(&dir).map_err(|e| e.to_string())?;
            print!("{}", render(&inspection));
            Ok(if inspection.problem.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        "verify" => {
            let inspection = inspect(&dir).map_err(|e| e.to_string())?;
            let records: u64 = inspection.segments.iter().map(|s| s.records).sum();
            if let Some(problem) = &inspection.problem {
                println!("CORRUPT: {problem}");
                return Ok(ExitCode::from(1));
            }
            for s in &inspection.segments {
                if let SegmentState::TornTail { offset, bytes } = s.state {
                    println!(
                        "torn tail: {} at {offset} ({bytes} bytes; cut when the log is opened)",
                        s.path.display()
                    );
                }
            }
            println!(
                "ok: {} segments, {records} records verified, {} waiting to be replayed",
                inspection.segments.len(),
                inspection.pending_records
            );
            Ok(ExitCode::SUCCESS)
        }
        "dump" => {
            let storage = DiskStorage::read_only(&dir).map_err(|e| e.to_string())?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let mut n = 0u64;
            let mut write_error = None;
            let result = read_records(&storage, !all, |r| {
                let line = format!(
                    "{:<32} id={:<10} slice={:<3} len={:<7} {}",
                    r.position().to_string(),
                    r.id(),
                    r.slice(),
                    r.payload().len(),
                    preview(r.payload(), hex)
                );
                if let Err(e) = writeln!(out, "{line}") {
                    write_error = Some(e);
                    return false;
                }
                n += 1;
                n < limit
            });
            let _ = out.flush();
            if let Some(e) = write_error {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e.to_string());
            }
            match result {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(e @ double_buffer::Error::Corrupt { .. }) => {
                    println!("CORRUPT: {e}");
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.to_string()),
            }
        }
        other => Err(format!("unknown command {other:?}\n\n{USAGE}")),
    }
}

fn render(i: &Inspection) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "checkpoint: {}",
        i.checkpoint.map_or_else(
            || "none (replay starts at the first segment)".to_owned(),
            |p| p.to_string()
        )
    );
    let _ = writeln!(
        s,
        "waiting to be replayed: {} records, {} payload bytes",
        i.pending_records, i.pending_bytes
    );
    let _ = writeln!(
        s,
        "{:<26} {:>12} {:>12} {:>8} {:>9} {:>23}  state",
        "segment", "file bytes", "data bytes", "groups", "records", "ids"
    );
    for seg in &i.segments {
        let name = seg
            .path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let ids = seg
            .ids
            .map_or_else(|| "-".to_owned(), |(a, b)| format!("{a}..={b}"));
        let state = match &seg.state {
            SegmentState::Ok => "ok".to_owned(),
            SegmentState::Replayed => "replayed (removed at next open)".to_owned(),
            SegmentState::TornTail { offset, bytes } => {
                format!("torn tail at {offset}: {bytes} bytes to cut")
            }
            SegmentState::IncompleteHeader => "incomplete header (removed at next open)".to_owned(),
            SegmentState::Corrupt(e) => format!("CORRUPT: {e}"),
            other => format!("{other:?}"),
        };
        let _ = writeln!(
            s,
            "{name:<26} {:>12} {:>12} {:>8} {:>9} {ids:>23}  {state}",
            seg.file_len, seg.data_end, seg.groups, seg.records
        );
    }
    match &i.problem {
        Some(p) => {
            let _ = writeln!(s, "first problem: {p}");
        }
        None => {
            let _ = writeln!(s, "no corruption found");
        }
    }
    s
}

fn preview(payload: &[u8], hex: bool) -> String {
    const MAX: usize = 64;
    if !hex
        && let Ok(text) = std::str::from_utf8(payload)
        && text
            .chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\t')
    {
        let cut: String = text.chars().take(MAX).collect();
        let more = if cut.len() < text.len() { "…" } else { "" };
        return format!("{cut:?}{more}");
    }
    let shown = &payload[..payload.len().min(MAX / 2)];
    let mut s = String::from("0x");
    for b in shown {
        let _ = write!(s, "{b:02x}");
    }
    if shown.len() < payload.len() {
        s.push('…');
    }
    s
}
