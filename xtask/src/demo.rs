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
//! took, and exits 0 only if every scenario ran and every promise held,
//! including the last row: the scenarios together took under
//! [`DEMO_TARGET`] after the build. When only some scenarios are selected
//! (`cargo xtask demo election`) that row is shown as not applicable, neither
//! held nor failed. Leases and windows are shortened for the
//! demo by each app's own defaults; every app logs them as `demo setting:`
//! lines.
//!
//! Each app runs in a process group of its own, which the processes it
//! starts (`registry-server`, `zab-node`, instances of itself) join. A
//! scenario still running after [`SCENARIO_LIMIT`] is killed as a group, so
//! its servers go with it; once the app has exited, whatever it left in its
//! group is killed too. A Ctrl-C on the terminal reaches only the
//! foreground group, not the app's: a small guard process that stays in the
//! foreground group kills the app's group when it gets the Ctrl-C.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::io::{Errno, retry_on_intr};
use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, kill_process_group, waitid};

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
    held: Held,
}

/// Whether a promise held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Yes,
    No,
    /// What the promise is about did not run (the demo's total time when
    /// only some scenarios ran): neither held nor failed.
    NotApplicable,
}

impl From<bool> for Held {
    fn from(held: bool) -> Self {
        if held { Held::Yes } else { Held::No }
    }
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
    promises.push(demo_time_promise(total, timings.len()));
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
    let failed = promises.iter().filter(|p| p.held == Held::No).count();
    if !broken.is_empty() || failed > 0 {
        for b in &broken {
            println!("scenario failed: {b}");
        }
        bail!(
            "{failed} promise(s) did not hold, {} scenario(s) failed",
            broken.len()
        );
    }
    if promises.iter().any(|p| p.held == Held::NotApplicable) {
        println!("every promise judged held (n/a: only some scenarios ran)");
    } else {
        println!("every promise held");
    }
    Ok(())
}

/// The last row: the demo took under [`DEMO_TARGET`] after the build,
/// `total` for the `ran` scenarios. The promise is about the whole demo, so
/// it is only judged when every scenario ran; otherwise it is not
/// applicable (a subset's time says nothing about the whole).
fn demo_time_promise(total: Duration, ran: usize) -> Promise {
    let all_ran = ran == SCENARIOS.len();
    Promise {
        scenario: "demo".to_owned(),
        promise: format!(
            "the demo finishes in under {} s after the build",
            DEMO_TARGET.as_secs()
        ),
        measured: format!(
            "demo finished in {:.1} s (target < {} s){}",
            total.as_secs_f64(),
            DEMO_TARGET.as_secs(),
            if all_ran {
                String::new()
            } else {
                format!("; {ran} of {} scenarios run", SCENARIOS.len())
            }
        ),
        held: if all_ran {
            (total < DEMO_TARGET).into()
        } else {
            Held::NotApplicable
        },
    }
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
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // A group of its own, led by the app: see the module docs.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    let group = Pid::from_child(&child);
    let guard = interrupt_guard(group)
        .inspect_err(|e| {
            eprintln!("no Ctrl-C guard for {bin} ({e:#}); Ctrl-C may leave it running");
        })
        .ok();
    let stdout = child.stdout.take().context("scenario stdout")?;
    let (finished, watchdog) = watchdog(bin, group, SCENARIO_LIMIT);
    let mut last_json = None;
    let mut read_error = None;
    for line in BufReader::new(stdout).lines() {
        match line {
            Ok(line) => {
                println!("{line}");
                if line.trim_start().starts_with("{\"scenario\"") {
                    last_json = Some(line);
                }
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    let _ = finished.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    if read_error.is_some() {
        let _ = kill_process_group(group, Signal::KILL);
    }
    let status = reap_group(&mut child, group);
    if let Some(mut guard) = guard {
        let _ = guard.kill();
        let _ = guard.wait();
    }
    let status = status?;
    if let Some(e) = read_error {
        bail!("reading its output: {e}");
    }
    if timed_out {
        bail!("killed after {} s", SCENARIO_LIMIT.as_secs());
    }
    let promises = last_json
        .map(|l| parse_promises(&l))
        .transpose()?
        .unwrap_or_default();
    if !status.success() && promises.iter().all(|p| p.held != Held::No) {
        bail!("exited with {status}");
    }
    Ok(promises)
}

/// Kills the scenario's process group if the app has not closed its stdout
/// (or the sender was not used or dropped) within `limit`; the thread
/// returns whether it did.
fn watchdog(
    bin: &str,
    group: Pid,
    limit: Duration,
) -> (mpsc::Sender<()>, thread::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<()>();
    let bin = bin.to_owned();
    let handle = thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            eprintln!(
                "{bin} still running after {:.1} s: killing it and every process it started",
                limit.as_secs_f64()
            );
            // The app leads the group and is not reaped before this thread
            // is joined, so the group id cannot name anyone else's group.
            if let Err(e) = kill_process_group(group, Signal::KILL) {
                eprintln!("killing process group {}: {e}", group.as_raw_nonzero());
            }
            return true;
        }
        false
    });
    (tx, handle)
}

/// Waits for the app to exit, kills whatever it left in its group, then
/// reaps it. The app is reaped only after the kill, so that its id still
/// names this group (an id is not reused while its process is a zombie).
fn reap_group(child: &mut Child, group: Pid) -> Result<ExitStatus> {
    retry_on_intr(|| {
        waitid(
            WaitId::Pid(group),
            WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
        )
    })
    .context("waiting for the scenario to exit")?;
    match kill_process_group(group, Signal::KILL) {
        Ok(()) | Err(Errno::SRCH) => {}
        Err(e) => eprintln!(
            "killing what is left of process group {}: {e}",
            group.as_raw_nonzero()
        ),
    }
    child.wait().context("reaping the scenario")
}

/// A `sh` in our own (the terminal's foreground) process group that kills
/// the app's group when a Ctrl-C, hang-up or TERM reaches ours, and ends by
/// itself once that group is empty. Killed with SIGKILL when the scenario
/// ends normally, which runs no trap.
fn interrupt_guard(group: Pid) -> Result<Child> {
    const SCRIPT: &str = "trap 'kill -s KILL -- -$0 2>/dev/null; exit 130' INT HUP TERM; \
                          while kill -s 0 -- -$0 2>/dev/null; do sleep 1; done";
    Command::new("sh")
        .args(["-c", SCRIPT])
        .arg(group.as_raw_nonzero().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting sh")
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
            held: item.contains("\"held\":true").into(),
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
        let held = match p.held {
            Held::Yes => "yes",
            Held::No => "NO",
            Held::NotApplicable => "n/a",
        };
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
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use rustix::process::{Pid, Signal, kill_process};

    use super::{
        DEMO_TARGET, Held, SCENARIOS, demo_time_promise, field, interrupt_guard, parse_promises,
        reap_group, watchdog, wrap,
    };

    /// A stand-in for a scenario app: `sh` leading a group of its own, with
    /// a `sleep` it started in the background (a server it left running);
    /// `then` is what the app does next. Returns the app and the sleep's pid.
    fn app_with_a_server(then: &str) -> (Child, u32) {
        let mut app = Command::new("sh")
            .args(["-c", &format!("sleep 60 & echo $!; {then}")])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("sh runs");
        let mut line = String::new();
        BufReader::new(app.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("sh prints the pid");
        (app, line.trim().parse().expect("a pid"))
    }

    /// Whether `pid` is gone or a zombie (killed, waiting for init), within 5 s.
    fn ends(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => return true,
                Ok(stat)
                    if stat
                        .rsplit_once(") ")
                        .is_some_and(|(_, r)| r.starts_with('Z')) =>
                {
                    return true;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    #[test]
    fn whatever_the_app_leaves_in_its_group_is_killed_once_it_exits() {
        let (mut app, server) = app_with_a_server("exit 3");
        let group = Pid::from_child(&app);
        let status = reap_group(&mut app, group).unwrap();
        assert_eq!(status.code(), Some(3), "the app's own status is kept");
        assert!(
            ends(server),
            "the server the app left (pid {server}) still runs"
        );
    }

    #[test]
    fn the_watchdog_kills_the_app_with_its_servers() {
        let (mut app, server) = app_with_a_server("wait");
        let group = Pid::from_child(&app);
        let (_finished, watchdog) = watchdog("test-app", group, Duration::from_millis(200));
        assert!(watchdog.join().unwrap(), "the watchdog says it fired");
        let status = reap_group(&mut app, group).unwrap();
        assert!(!status.success(), "the app was killed: {status}");
        assert!(ends(server), "the app's server (pid {server}) still runs");
    }

    #[test]
    fn the_watchdog_stays_quiet_when_the_app_finishes() {
        let (mut app, server) = app_with_a_server("exit 0");
        let group = Pid::from_child(&app);
        let (finished, watchdog) = watchdog("test-app", group, Duration::from_secs(60));
        finished.send(()).unwrap();
        assert!(!watchdog.join().unwrap());
        assert!(reap_group(&mut app, group).unwrap().success());
        assert!(ends(server));
    }

    #[test]
    fn a_ctrl_c_to_the_guard_kills_the_app_group() {
        let (mut app, server) = app_with_a_server("wait");
        let group = Pid::from_child(&app);
        let mut guard = interrupt_guard(group).unwrap();
        // As a Ctrl-C does, once the guard has set its trap (SigCgt has
        // SIGINT, bit 1): before that, sh would just die of it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !std::fs::read_to_string(format!("/proc/{}/status", guard.id()))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("SigCgt:"))
            .any(|mask| u64::from_str_radix(mask.trim(), 16).is_ok_and(|m| m & 0b10 != 0))
        {
            assert!(Instant::now() < deadline, "the guard never set its trap");
            std::thread::sleep(Duration::from_millis(5));
        }
        kill_process(Pid::from_child(&guard), Signal::INT).unwrap();
        assert_eq!(
            guard.wait().unwrap().code(),
            Some(130),
            "the guard's trap ran"
        );
        assert!(!reap_group(&mut app, group).unwrap().success());
        assert!(ends(server), "the app's server (pid {server}) still runs");
    }

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
        assert_eq!(p[0].held, Held::Yes);
        assert_eq!(p[1].promise, "say \"hi\"");
        assert_eq!(p[1].held, Held::No);
    }

    #[test]
    fn the_demo_time_is_judged_only_when_every_scenario_ran() {
        let all = SCENARIOS.len();
        let fast = DEMO_TARGET - Duration::from_secs(1);
        let slow = DEMO_TARGET + Duration::from_secs(1);
        assert_eq!(demo_time_promise(fast, all).held, Held::Yes);
        assert_eq!(demo_time_promise(slow, all).held, Held::No);
        assert!(
            !demo_time_promise(fast, all)
                .measured
                .contains("scenarios run")
        );
        for total in [fast, slow] {
            let p = demo_time_promise(total, all - 1);
            assert_eq!(p.held, Held::NotApplicable, "{total:?}");
            assert!(
                p.measured
                    .contains(&format!("{} of {all} scenarios run", all - 1)),
                "{}",
                p.measured
            );
        }
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
