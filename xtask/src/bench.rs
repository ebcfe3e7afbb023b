//! `cargo xtask bench [--smoke] [NAME...]`: every crate's benchmark in one go.
//!
//! Each benchmark is an example binary that prints a table and ends with a
//! one-line JSON summary. The full run builds in release mode and writes
//! `BENCHMARKS.md` (the tables, the JSON lines and the machine they ran
//! on). `--smoke` runs the same code paths for a few seconds each in the
//! debug build, so that `cargo xtask test` keeps the benchmarks from rotting.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// (package, example) of every benchmark, in the order they run.
pub(crate) const BENCHES: &[(&str, &str)] = &[
    ("double-buffer", "spill_bench"),
    ("mq-reliable", "publish_bench"),
    ("hotkey", "hotkey_bench"),
    ("ratelimit", "cache_bench"),
    ("registry", "registry_bench"),
    ("zab-election", "election_bench"),
];

struct Outcome {
    package: &'static str,
    example: &'static str,
    output: String,
    summary: Option<String>,
    seconds: f64,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let smoke = args.iter().any(|a| a == "--smoke");
    let wanted: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let selected: Vec<(&'static str, &'static str)> = BENCHES
        .iter()
        .copied()
        .filter(|(p, e)| wanted.is_empty() || wanted.iter().any(|w| *w == p || *w == e))
        .collect();
    if selected.is_empty() {
        bail!("no benchmark matches {wanted:?}; known: {BENCHES:?}");
    }
    crate::services::up()?;
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (package, example) in selected {
        println!(
            "\n=== {package} / {example}{} ===",
            if smoke { " (smoke)" } else { "" }
        );
        let started = Instant::now();
        let mut cmd = Command::new(crate::cargo_bin());
        cmd.current_dir(crate::workspace_root()).args([
            "run",
            "--quiet",
            "-p",
            package,
            "--example",
            example,
        ]);
        if !smoke {
            cmd.arg("--release");
        }
        cmd.arg("--");
        if smoke {
            cmd.arg("--smoke");
        }
        let output = cmd
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("running the {example} benchmark of {package}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        print!("{stdout}");
        let summary = stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .filter(|l| l.trim_start().starts_with('{'))
            .map(str::to_owned);
        if !output.status.success() || summary.is_none() {
            failed.push(format!("{package}/{example}"));
        }
        outcomes.push(Outcome {
            package,
            example,
            output: stdout,
            summary,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    if !smoke {
        let path = crate::workspace_root().join("BENCHMARKS.md");
        std::fs::write(&path, report(&outcomes))?;
        println!("\nwrote {}", path.display());
    }
    if !failed.is_empty() {
        bail!(
            "benchmarks failed or printed no JSON summary line: {}",
            failed.join(", ")
        );
    }
    Ok(())
}

fn report(outcomes: &[Outcome]) -> String {
    let mut md = String::from("# Benchmarks\n\n");
    md.push_str(
        "Written by `cargo xtask bench` (release build, every benchmark in one run). \
         Each section is the benchmark's own output: its table, then its one-line \
         JSON summary.\n\n",
    );
    let _ = writeln!(md, "Machine: {}\n", crate::machine_description());
    md.push_str("| benchmark | seconds | summary |\n|---|---|---|\n");
    for o in outcomes {
        let _ = writeln!(
            md,
            "| `{}` / `{}` | {:.0} | `{}` |",
            o.package,
            o.example,
            o.seconds,
            o.summary.as_deref().unwrap_or("(none)")
        );
    }
    for o in outcomes {
        let _ = writeln!(
            md,
            "\n## {} — `{}`\n\n```text\n{}```",
            o.package, o.example, o.output
        );
    }
    md
}
