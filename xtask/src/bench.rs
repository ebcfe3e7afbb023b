//! `cargo xtask bench [--smoke] [NAME...]`: every crate's benchmark in one go.
//!
//! Each benchmark is an example binary that prints a table and ends with a
//! one-line JSON summary. The full run builds in release mode and writes
//! `BENCHMARKS.md` (the tables, the JSON lines and the machine they ran
//! on). `--smoke` runs the same code paths for a few seconds each in the
//! debug build, so that CI keeps the benchmarks from rotting. The full run
//! also draws the curves under `docs/benchmarks/` (durable rate against
//! writers, consumer throughput against prefetch).
//!
//! Every selected benchmark is built first, in one `cargo build
//! --workspace` (see `build`), then run from `target/`: the seconds
//! reported are the run's alone.

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
    build(&selected, smoke)?;
    let mut outcomes = Vec::new();
    let mut failed = Vec::new();
    for (package, example) in selected {
        println!(
            "\n=== {package} / {example}{} ===",
            if smoke { " (smoke)" } else { "" }
        );
        let started = Instant::now();
        let mut cmd = Command::new(example_path(example, smoke));
        cmd.current_dir(crate::workspace_root());
        if smoke {
            cmd.arg("--smoke");
        } else if example == "spill_bench" {
            let csv = spill_csv();
            if let Some(dir) = csv.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            cmd.arg("--csv").arg(csv);
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
        let charts = draw_charts(&mut outcomes, &mut failed)?;
        let path = crate::workspace_root().join("BENCHMARKS.md");
        std::fs::write(&path, report(&outcomes, &charts))?;
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

/// The example that draws the prefetch curve in a full run.
const TUNER: &str = "prefetch-tuner";

/// Builds every selected benchmark (and, for a full run, the tuner) in one
/// cargo invocation over the whole workspace. One `cargo run -p` per
/// benchmark resolved features per package: each rebuilt tokio, lapin and
/// librdkafka's C code with its own feature set, which took CI's smoke stage
/// longer than the tests. With `--workspace` the features are those of
/// `cargo test --workspace`, so after the tests the smoke build is a no-op.
fn build(selected: &[(&str, &str)], smoke: bool) -> Result<()> {
    let mut args = vec!["build", "--workspace"];
    if !smoke {
        args.push("--release");
    }
    for (_, example) in selected {
        args.extend(["--example", example]);
    }
    if !smoke {
        // `draw_charts` runs it in every full run.
        args.extend(["--example", TUNER]);
    }
    crate::cargo(&args, &[])
}

/// The binary `build` made for `example`.
fn example_path(example: &str, smoke: bool) -> std::path::PathBuf {
    let profile = if smoke { "debug" } else { "release" };
    crate::target_dir()
        .join(profile)
        .join("examples")
        .join(example)
}

/// Where spill_bench leaves its rows for the durable-rate chart.
fn spill_csv() -> std::path::PathBuf {
    crate::target_dir().join("bench").join("spill.csv")
}

/// Draws the curves that say more than a table, into `docs/benchmarks/`:
/// durable records/s against writers (from spill_bench's rows) and
/// consumer throughput against prefetch (mq-reliable's prefetch tuner, run
/// here against the real broker). Returns the charts' relative paths.
fn draw_charts(
    outcomes: &mut Vec<Outcome>,
    failed: &mut Vec<String>,
) -> Result<Vec<(String, String)>> {
    let dir = crate::workspace_root().join("docs").join("benchmarks");
    std::fs::create_dir_all(&dir)?;
    let mut charts = Vec::new();

    if let Ok(csv) = std::fs::read_to_string(spill_csv()) {
        let mut series: Vec<crate::chart::Series> = Vec::new();
        for line in csv.lines().skip(1) {
            let cols: Vec<&str> = line.split(',').collect();
            let (Some(variant), Some(writers), Some("256"), Some(rps)) =
                (cols.first(), cols.get(1), cols.get(2).copied(), cols.get(3))
            else {
                continue;
            };
            let (Ok(x), Ok(y)) = (writers.parse::<f64>(), rps.parse::<f64>()) else {
                continue;
            };
            if variant.contains("half peak") || variant.contains("fire-and-forget") {
                continue;
            }
            match series.iter_mut().find(|s| s.name == *variant) {
                Some(s) => s.points.push((x, y)),
                None => series.push(crate::chart::Series {
                    name: (*variant).to_owned(),
                    points: vec![(x, y)],
                }),
            }
        }
        let svg = crate::chart::log_line_chart(
            "Durable records/s by writers (256 B records, each waited on until fsynced)",
            "writers",
            "records/s (log scale)",
            &series,
        );
        std::fs::write(dir.join("durable-vs-writers.svg"), svg)?;
        charts.push((
            "Durable rate against writers (double-buffer)".to_owned(),
            "docs/benchmarks/durable-vs-writers.svg".to_owned(),
        ));
    }

    println!("\n=== mq-reliable / prefetch-tuner ===");
    let started = Instant::now();
    let svg = dir.join("prefetch.svg");
    let output = Command::new(example_path(TUNER, false))
        .current_dir(crate::workspace_root())
        .arg("--amqp")
        .arg(testkit::Service::RabbitMq.url())
        .arg("--svg")
        .arg(&svg)
        .stderr(Stdio::inherit())
        .output()
        .context("running mq-reliable's prefetch-tuner")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if output.status.success() {
        charts.push((
            "Consumer throughput against prefetch (mq-reliable)".to_owned(),
            "docs/benchmarks/prefetch.svg".to_owned(),
        ));
    } else {
        failed.push("mq-reliable/prefetch-tuner".to_owned());
    }
    outcomes.push(Outcome {
        package: "mq-reliable",
        example: "prefetch-tuner",
        output: stdout,
        summary: None,
        seconds: started.elapsed().as_secs_f64(),
    });
    Ok(charts)
}

fn report(outcomes: &[Outcome], charts: &[(String, String)]) -> String {
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
    for (title, path) in charts {
        let _ = writeln!(md, "\n### {title}\n\n![{title}]({path})");
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
