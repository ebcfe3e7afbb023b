//! `cargo xtask demo [SCENARIO...]`: the example apps, end to end, against
//! the real services, ending with one table row per promise.
//!
//! Each scenario is an example binary under `examples/`. It runs its story,
//! showing progress on the terminal (logs and progress bars on stderr),
//! prints its key metrics, and ends with one JSON line on stdout:
//!
//! ```json
//! {"scenario":"order-service","promises":[{"promise":"no acknowledged order is lost","measured":"orders lost: 0 of 100 000","held":true}]}
//! ```
//!
//! The demo starts the services, builds everything in release, runs the
//! scenarios one after the other, prints the summary table and how long each
//! took, and exits 0 only if every scenario ran and every promise held.
//! Leases and windows are shortened for the demo by each app's own
//! defaults; every app logs them as `demo setting:` lines.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The scenarios in the order they run: (name, package, binary).
const SCENARIOS: &[(&str, &str, &str)] = &[
    ("order-service", "order-service", "order-service"),
    ("hot-cache", "hot-cache", "hot-cache"),
    ("discovery", "discovery", "discovery"),
    ("election", "election", "election"),
];

/// Binaries the scenarios start as separate processes, built up front:
/// (package, binary).
const HELPER_BINARIES: &[(&str, &str)] = &[
    ("registry", "registry-server"),
    ("zab-election", "zab-node"),
];

/// A scenario still running after this is killed and counted as failed.
const SCENARIO_LIMIT: Duration = Duration::from_secs(300);

/// What the whole demo should take once built (the issue's bound).
const DEMO_TARGET: Duration = Duration::from_secs(180);

#[derive(Debug)]
struct Promise {
    scenario: String,
    promise: String,
    measured: String,
    held: bool,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let wanted: Vec<&str> = args.iter().map(String::as_str).collect();
    let known: Vec<&str> = SCENARIOS.iter().map(|s| s.0).collect();
    if let Some(unknown) = wanted.iter().find(|w| !known.contains(w)) {
        bail!("no scenario named {unknown:?}; known: {}", known.join(", "));
    }
    let selected: Vec<_> = SCENARIOS
        .iter()
        .filter(|(name, ..)| wanted.is_empty() || wanted.contains(name))
        .collect();
    crate::services::up()?;
    build(&selected)?;
    println!(
        "\nThe scenarios shorten leases, windows and phases so that the demo runs in minutes; \
         each logs what it changed as `demo setting:` lines."
    );
    let demo_started = Instant::now();
    let mut promises = Vec::new();
    let mut broken = Vec::new();
    let mut timings = Vec::new();
    for (name, _, bin) in selected {
        println!("\n=== scenario: {name} ===");
        let started = Instant::now();
        match run_scenario(bin) {
            Ok(found) if !found.is_empty() => promises.extend(found),
            Ok(_) => broken.push(format!("{name}: printed no promises")),
            Err(e) => broken.push(format!("{name}: {e:#}")),
        }
        let took = started.elapsed();
        println!("=== {name} finished in {:.1} s ===", took.as_secs_f64());
        timings.push((*name, took));
    }
    let total = demo_started.elapsed();
    print_summary(&promises);
    println!();
    for (name, took) in &timings {
        println!("{name:<14} {:>6.1} s", took.as_secs_f64());
    }
    println!(
        "{:<14} {:>6.1} s (after the build; target: under {} s)",
        "all scenarios",
        total.as_secs_f64(),
        DEMO_TARGET.as_secs()
    );
    println!("machine: {}", crate::machine_description());
    let failed = promises.iter().filter(|p| !p.held).count();
    if !broken.is_empty() || failed > 0 {
        for b in &broken {
            println!("scenario failed: {b}");
        }
        bail!(
            "{failed} promise(s) did not hold, {} scenario(s) failed",
            broken.len()
        );
    }
    println!("every promise held");
    Ok(())
}

fn build(selected: &[&(&str, &str, &str)]) -> Result<()> {
    let mut args = vec!["build", "--release"];
    for (_, package, bin) in selected {
        args.extend(["-p", package, "--bin", bin]);
    }
    for (package, bin) in HELPER_BINARIES {
        args.extend(["-p", package, "--bin", bin]);
    }
    println!("building the demo (release)…");
    crate::cargo(&args, &[])
}

/// Runs one scenario binary, echoing its output, and collects its promises.
fn run_scenario(bin: &str) -> Result<Vec<Promise>> {
    let path = crate::target_dir().join("release").join(bin);
    let mut child = Command::new(&path)
        .current_dir(crate::workspace_root())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let stdout = child.stdout.take().context("scenario stdout")?;
    let child = Arc::new(Mutex::new(child));
    let (finished, watchdog) = watchdog(bin, Arc::clone(&child));
    let mut last_json = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if line.trim_start().starts_with("{\"scenario\"") {
            last_json = Some(line);
        }
    }
    let _ = finished.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child
        .lock()
        .map_err(|_| anyhow::anyhow!("the watchdog panicked"))?
        .wait()?;
    if timed_out {
        bail!("killed after {} s", SCENARIO_LIMIT.as_secs());
    }
    let promises = last_json
        .map(|l| parse_promises(&l))
        .transpose()?
        .unwrap_or_default();
    if !status.success() && promises.iter().all(|p| p.held) {
        bail!("exited with {status}");
    }
    Ok(promises)
}

/// Kills the scenario if it has not closed its stdout within
/// [`SCENARIO_LIMIT`]; the thread returns whether it did.
fn watchdog(bin: &str, child: Arc<Mutex<Child>>) -> (mpsc::Sender<()>, thread::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<()>();
    let bin = bin.to_owned();
    let handle = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SCENARIO_LIMIT) {
            eprintln!(
                "{bin} still running after {} s: killing it",
                SCENARIO_LIMIT.as_secs()
            );
            if let Ok(mut c) = child.lock() {
                let _ = c.kill();
            }
            return true;
        }
        false
    });
    (tx, handle)
}

/// Parses the scenario's summary line. The format is ours and flat, so a
/// few string searches do, and keep xtask free of a JSON dependency.
fn parse_promises(line: &str) -> Result<Vec<Promise>> {
    let scenario = field(line, "scenario").context("summary line without \"scenario\"")?;
    let mut promises = Vec::new();
    for item in line.split("{\"promise\"").skip(1) {
        let item = format!("{{\"promise\"{item}");
        promises.push(Promise {
            scenario: scenario.clone(),
            promise: field(&item, "promise").context("promise without text")?,
            measured: field(&item, "measured").unwrap_or_default(),
            held: item.contains("\"held\":true"),
        });
    }
    Ok(promises)
}

/// The string value of `"key":"value"` (JSON escapes undone).
fn field(json: &str, key: &str) -> Option<String> {
    let start = json.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = json[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                'r' => out.push('\r'),
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                other => out.push(other),
            },
            '"' => return Some(out),
            c => out.push(c),
        }
    }
    None
}

/// Widest the promise and measured columns get before they wrap.
const PROMISE_WIDTH: usize = 40;
const MEASURED_WIDTH: usize = 64;

fn print_summary(promises: &[Promise]) {
    let w_s = promises
        .iter()
        .map(|p| p.scenario.chars().count())
        .max()
        .unwrap_or(8)
        .max(8);
    let w_p = PROMISE_WIDTH;
    let w_m = MEASURED_WIDTH;
    println!(
        "\n{:<w_s$}  {:<w_p$}  {:<w_m$}  held",
        "scenario", "promise", "measured"
    );
    println!("{}", "-".repeat(w_s + w_p + w_m + 10));
    for p in promises {
        let promise = wrap(&p.promise, w_p);
        let measured = wrap(&p.measured, w_m);
        let held = if p.held { "yes" } else { "NO" };
        for i in 0..promise.len().max(measured.len()) {
            let (scenario, held) = if i == 0 {
                (p.scenario.as_str(), held)
            } else {
                ("", "")
            };
            let line = format!(
                "{scenario:<w_s$}  {:<w_p$}  {:<w_m$}  {held}",
                promise.get(i).map_or("", String::as_str),
                measured.get(i).map_or("", String::as_str),
            );
            println!("{}", line.trim_end());
        }
    }
}

/// Splits `text` into lines of at most `width` characters at spaces (a
/// longer word gets a line of its own).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let last = lines.last_mut().expect("never empty");
        if !last.is_empty() && last.chars().count() + 1 + word.chars().count() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::{SCENARIOS, field, parse_promises, wrap};

    #[test]
    fn wraps_at_spaces() {
        assert_eq!(
            wrap("orders lost: 0 of 100 000", 14),
            vec!["orders lost: 0", "of 100 000"]
        );
        assert_eq!(wrap("", 5), vec![""]);
        assert_eq!(
            wrap("averyverylongword x", 5),
            vec!["averyverylongword", "x"]
        );
    }

    #[test]
    fn parses_the_summary_line() {
        let line = r#"{"scenario":"orders","promises":[{"promise":"orders lost","measured":"0 of 100","held":true},{"promise":"say \"hi\"","measured":"x","held":false}]}"#;
        let p = parse_promises(line).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].scenario, "orders");
        assert_eq!(p[0].promise, "orders lost");
        assert_eq!(p[0].measured, "0 of 100");
        assert!(p[0].held);
        assert_eq!(p[1].promise, "say \"hi\"");
        assert!(!p[1].held);
    }

    #[test]
    fn undoes_json_escapes() {
        assert_eq!(
            field(r#"{"m":"a\\b \u00e9 \n"}"#, "m").as_deref(),
            Some("a\\b é \n")
        );
        assert_eq!(field(r#"{"m":"unterminated"#, "m"), None);
    }

    #[test]
    fn every_scenario_is_an_example_app() {
        for (name, package, bin) in SCENARIOS {
            let dir = crate::workspace_root().join("examples").join(package);
            let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
                .unwrap_or_else(|e| panic!("scenario {name}: {}: {e}", dir.display()));
            assert!(
                manifest.contains(&format!("name = \"{package}\"")),
                "scenario {name}: examples/{package}/Cargo.toml names another package"
            );
            assert!(
                dir.join("src/main.rs").exists(),
                "scenario {name}: binary {bin} has no src/main.rs"
            );
        }
    }
}
