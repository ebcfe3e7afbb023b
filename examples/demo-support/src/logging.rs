//! Logs and progress bars that share stderr without tearing each other.

use std::fmt::Display;
use std::io::{self, IsTerminal, Write};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::uptime;

/// Every bar is drawn through this, so that a log line can clear them,
/// print, and let them redraw below it.
static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// Logs to stderr with the time since start, `info` unless `RUST_LOG` says
/// otherwise. Call once, first thing in `main`.
pub fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,rdkafka=warn,librdkafka=warn,lapin=off,zookeeper_client=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_timer(uptime())
        .with_target(false)
        .with_ansi(io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(BelowTheBars)
        .init();
}

/// A demo-only setting, said out loud: the demo shortens leases and windows
/// so that it finishes in minutes, and a reader must know which numbers
/// differ from production.
pub fn demo_setting(what: &str, demo: impl Display, production: impl Display) {
    tracing::info!("demo setting: {what} = {demo} (production: {production})");
}

/// A progress bar counting up to `len` items (e.g. orders published).
#[must_use]
pub fn counter_bar(message: &str, len: u64) -> ProgressBar {
    let bar = BARS.add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg:<28} [{bar:30}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    bar
}

/// A phase of known expected length (e.g. "waiting for the lease to run
/// out"), shown as a bar that fills with time; the message can carry live
/// numbers. Needs a tokio runtime.
#[derive(Debug)]
pub struct Phase {
    bar: ProgressBar,
    ticker: JoinHandle<()>,
    started: Instant,
}

impl Phase {
    /// Starts the phase and its bar.
    #[must_use]
    pub fn start(message: &str, expected: Duration) -> Phase {
        let len = u64::try_from(expected.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let bar = BARS.add(ProgressBar::new(len));
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<28} [{bar:30}] {elapsed:>4} {msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(message.to_owned());
        let started = Instant::now();
        let ticking = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                ticking.set_position(ms.min(len));
                ticking.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Phase {
            bar,
            ticker,
            started,
        }
    }

    /// Live numbers shown after the bar.
    pub fn set_message(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }

    /// Time since the phase started.
    #[must_use]
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Ends the phase, removes its bar, and returns how long it took.
    pub fn finish(self) -> Duration {
        self.ticker.abort();
        self.bar.finish_and_clear();
        BARS.remove(&self.bar);
        self.started.elapsed()
    }
}

impl Drop for Phase {
    fn drop(&mut self) {
        self.ticker.abort();
    }
}

/// stderr, written with the bars suspended.
struct BelowTheBars;

impl<'a> MakeWriter<'a> for BelowTheBars {
    type Writer = BelowTheBars;

    fn make_writer(&'a self) -> Self::Writer {
        BelowTheBars
    }
}

impl Write for BelowTheBars {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        BARS.suspend(|| io::stderr().write(buf))
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        BARS.suspend(|| io::stderr().write_all(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
