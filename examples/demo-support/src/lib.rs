//! What the example apps under `examples/` share, so that each app's code is
//! only its story:
//!
//! * [`init_logging`]: readable logs on stderr (`tracing-subscriber`, time
//!   since start, `RUST_LOG` to filter) that do not tear the progress bars;
//! * [`Phase`] and [`counter_bar`]: `indicatif` progress bars for the long
//!   phases (hidden when stderr is not a terminal);
//! * [`MetricsEndpoint`]: the `metrics` recorder behind a Prometheus
//!   endpoint, scraped at the end to print the key counters; [`scrape`],
//!   [`print_samples`] and [`metric_sum`] read any Prometheus endpoint (a
//!   helper process's too);
//! * [`Process`]: a child process (a `registry-server`, a `zab-node`, an
//!   instance of the app itself) whose stdout lines are read as they come
//!   and whose stderr goes to the log;
//! * [`Promises`]: what the scenario promised and what it measured, printed
//!   as the one JSON line that `cargo xtask demo` reads:
//!   `{"scenario":"...","promises":[{"promise":"...","measured":"...","held":true}]}`.
//!
//! # Quick example
//!
//! ```no_run
//! use demo_support::{MetricsEndpoint, Promises};
//!
//! # async fn story() -> anyhow::Result<std::process::ExitCode> {
//! demo_support::init_logging();
//! let metrics = MetricsEndpoint::install(None)?;
//! let mut promises = Promises::new("my-scenario");
//! promises.check("orders lost", "0 of 100", true);
//! metrics.print_key_metrics(&["mq_reliable_"]).await?;
//! Ok(promises.finish())
//! # }
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]

mod logging;
mod metrics_endpoint;
mod process;
mod promises;

pub use logging::{Phase, counter_bar, demo_setting, init_logging};
pub use metrics_endpoint::{MetricsEndpoint, metric_sum, print_samples, scrape};
pub use process::{Process, free_port, free_ports, helper_binary};
pub use promises::{Promises, exit_code};

/// The progress bar type [`counter_bar`] returns.
pub use indicatif::ProgressBar;

/// A short random suffix for names shared with other users of the same
/// servers (queues, keys, znodes), so that runs never collide.
#[must_use]
pub fn run_id() -> String {
    format!("{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// `1234567` → `"1 234 567"`: counts read at a glance.
#[must_use]
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::thousands;

    #[test]
    fn groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1 000");
        assert_eq!(thousands(100_000), "100 000");
        assert_eq!(thousands(1_234_567), "1 234 567");
    }
}
