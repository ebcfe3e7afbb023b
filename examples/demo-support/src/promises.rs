//! What a scenario promised, what it measured, and whether it held.

use std::process::ExitCode;

use serde::Serialize;

/// The promises of one scenario. [`Promises::finish`] prints them, then the
/// one JSON line `cargo xtask demo` reads, and gives the exit code: 0 only if
/// every promise held.
#[derive(Debug)]
pub struct Promises {
    scenario: String,
    list: Vec<Promise>,
}

#[derive(Debug, Serialize)]
struct Promise {
    promise: String,
    measured: String,
    held: bool,
}

/// The summary line; fields in this order (the demo looks for a line that
/// starts with `{"scenario"`).
#[derive(Serialize)]
struct Summary<'a> {
    scenario: &'a str,
    promises: &'a [Promise],
}

impl Promises {
    /// No promise checked yet.
    #[must_use]
    pub fn new(scenario: &str) -> Promises {
        Promises {
            scenario: scenario.to_owned(),
            list: Vec::new(),
        }
    }

    /// Records a promise with what was measured; logs it at once.
    pub fn check(&mut self, promise: impl Into<String>, measured: impl Into<String>, held: bool) {
        let (promise, measured) = (promise.into(), measured.into());
        if held {
            tracing::info!("promise held: {promise}: {measured}");
        } else {
            tracing::error!("promise BROKEN: {promise}: {measured}");
        }
        self.list.push(Promise {
            promise,
            measured,
            held,
        });
    }

    /// Whether every promise recorded so far held.
    #[must_use]
    pub fn all_held(&self) -> bool {
        self.list.iter().all(|p| p.held)
    }

    /// Prints the promises and the summary line on stdout; the exit code is
    /// a failure if a promise did not hold or none was checked.
    #[must_use]
    pub fn finish(self) -> ExitCode {
        println!("promises of {}:", self.scenario);
        for p in &self.list {
            let held = if p.held { "held" } else { "BROKEN" };
            println!("  [{held}] {}: {}", p.promise, p.measured);
        }
        let line = serde_json::to_string(&Summary {
            scenario: &self.scenario,
            promises: &self.list,
        })
        .expect("strings and booleans always serialize");
        println!("{line}");
        if !self.list.is_empty() && self.all_held() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// The exit code of a scenario's `main`: its own, or a failure (logged)
/// when it stopped with an error before checking its promises.
#[must_use]
pub fn exit_code(scenario: &str, result: anyhow::Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        tracing::error!("{scenario} failed: {e:#}");
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_starts_with_the_scenario() {
        let mut p = Promises::new("x");
        p.check("say \"hi\"", "1 of 1", true);
        let line = serde_json::to_string(&Summary {
            scenario: &p.scenario,
            promises: &p.list,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"scenario":"x","promises":[{"promise":"say \"hi\"","measured":"1 of 1","held":true}]}"#
        );
        assert!(p.all_held());
        p.check("b", "0", false);
        assert!(!p.all_held());
    }
}
