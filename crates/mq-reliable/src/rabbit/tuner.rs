//! The prefetch tuner: RabbitMQ's "benchmark it yourself" as a tool.
//!
//! For each prefetch value it fills a fresh durable queue with persistent
//! messages, consumes them with a [`ReliableConsumer`] whose handler takes
//! a configurable time, and records the throughput and the peak number of
//! unacknowledged messages. The recommendation is the smallest prefetch
//! within a tolerance of the best throughput: beyond it, a larger prefetch
//! only buys memory held in the consumer and messages stuck behind a slow
//! one.
//!
//! What the curve measures depends on the handler concurrency, a separate
//! parameter ([`HandlerConcurrency`]) reported with every table and curve:
//! with [`HandlerConcurrency::EqualsPrefetch`] each point changes both the
//! prefetch and the number of handlers running at once, so the curve is
//! mostly the handlers' parallelism; with [`HandlerConcurrency::Fixed`] it
//! shows the prefetch alone — how far ahead the broker must push to keep
//! that many handlers busy.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions};

use crate::error::{Error, Result, invalid};
use crate::rabbit::consumer::{ConsumerConfig, Outcome, ReliableConsumer};
use crate::rabbit::{connect, declare_queue, parse_url, short};
use crate::topology::QueueSpec;

/// RabbitMQ's default `max_message_size`.
const MAX_PAYLOAD: usize = 128 << 20;

/// What to measure.
#[derive(Debug, Clone, PartialEq)]
pub struct TunerConfig {
    /// `amqp://user:pass@host:port/vhost`.
    pub url: String,
    /// The prefetch values to try, in order.
    pub prefetch_values: Vec<u16>,
    /// Time the handler spends per message (simulated work). Default 1 ms.
    pub handler_latency: Duration,
    /// Handlers running at once, for every prefetch value. Default
    /// [`HandlerConcurrency::EqualsPrefetch`].
    pub concurrency: HandlerConcurrency,
    /// Messages put in the queue before each run. Default 20 000.
    pub messages: usize,
    /// A run stops after this long even if messages remain. Default 4 s.
    pub max_run: Duration,
    /// Payload bytes per message. Default 256.
    pub payload_size: usize,
    /// A prefetch counts as good enough within this fraction of the best
    /// throughput. Default 0.95.
    pub tolerance: f64,
    /// Queue name prefix (a unique suffix is added per run).
    pub queue_prefix: String,
}

impl Default for TunerConfig {
    fn default() -> Self {
        TunerConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch_values: vec![1, 10, 50, 100, 200, 300, 1000],
            handler_latency: Duration::from_millis(1),
            concurrency: HandlerConcurrency::EqualsPrefetch,
            messages: 20_000,
            max_run: Duration::from_secs(4),
            payload_size: 256,
            tolerance: 0.95,
            queue_prefix: "mq-reliable-tuner".into(),
        }
    }
}

/// How many handlers the tuner runs at once for a prefetch value: a
/// parameter of its own, because it decides what the curve shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandlerConcurrency {
    /// As many handlers as the prefetch lets the consumer hold: an async
    /// handler doing I/O, which can run one task per delivery. Each point
    /// of the curve then changes the prefetch *and* the parallelism
    /// together; with a handler that waits (sleeps) `handler_latency`,
    /// throughput grows about linearly with the number of handlers until the
    /// broker is the limit, so the curve answers "how many messages should
    /// this consumer have in flight", not "what does prefetch alone buy".
    EqualsPrefetch,
    /// This many handlers at every point (fewer where the prefetch is
    /// smaller: the consumer cannot hold more deliveries than the prefetch).
    /// The curve then shows the prefetch alone: how far ahead the broker
    /// must push deliveries to keep these handlers busy across the network
    /// round trip and the acks.
    Fixed(usize),
}

impl HandlerConcurrency {
    /// The handlers run at once for `prefetch`.
    pub fn for_prefetch(self, prefetch: u16) -> usize {
        match self {
            HandlerConcurrency::EqualsPrefetch => usize::from(prefetch),
            HandlerConcurrency::Fixed(n) => n.min(usize::from(prefetch)),
        }
    }
}

impl std::fmt::Display for HandlerConcurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandlerConcurrency::EqualsPrefetch => f.write_str("= prefetch"),
            HandlerConcurrency::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The suffix the tuner adds to `queue_prefix`: `-p<prefetch>-<8 hex digits>`,
/// at most this long.
const QUEUE_SUFFIX_MAX: usize = "-p65535-ffffffff".len();

/// AMQP's longest queue name (a short string).
const MAX_QUEUE_NAME: usize = 255;

impl TunerConfig {
    /// Checks every field; the error names the field and its value.
    pub fn validate(&self) -> Result<()> {
        if self.prefetch_values.is_empty() || self.prefetch_values.contains(&0) {
            return Err(invalid(
                "prefetch_values",
                &self.prefetch_values,
                "must be non-empty and hold positive values",
            ));
        }
        self.validate_run()
    }

    /// Checks what one run ([`measure`]) uses: every field but
    /// `prefetch_values`.
    fn validate_run(&self) -> Result<()> {
        parse_url(&self.url, Duration::from_secs(10))?;
        if self.concurrency == HandlerConcurrency::Fixed(0) {
            return Err(invalid("concurrency", self.concurrency, "must be positive"));
        }
        if self.messages == 0 {
            return Err(invalid("messages", self.messages, "must be positive"));
        }
        if self.payload_size > MAX_PAYLOAD {
            return Err(invalid(
                "payload_size",
                self.payload_size,
                "must be at most 128 MiB (RabbitMQ's largest message)",
            ));
        }
        if self.max_run < Duration::from_millis(100) {
            return Err(invalid("max_run", self.max_run, "must be at least 100 ms"));
        }
        if !(self.tolerance > 0.0 && self.tolerance <= 1.0) {
            return Err(invalid("tolerance", self.tolerance, "must be in (0, 1]"));
        }
        if self.handler_latency > Duration::from_secs(10) {
            return Err(invalid(
                "handler_latency",
                self.handler_latency,
                "must be at most 10 s",
            ));
        }
        if self.queue_prefix.len() + QUEUE_SUFFIX_MAX > MAX_QUEUE_NAME {
            return Err(invalid(
                "queue_prefix",
                &self.queue_prefix,
                "must be at most 239 bytes (a queue name holds 255, the tuner adds up to 16)",
            ));
        }
        if self.queue_prefix.starts_with("amq.") {
            return Err(invalid(
                "queue_prefix",
                &self.queue_prefix,
                "must not start with `amq.` (reserved by the broker)",
            ));
        }
        Ok(())
    }
}

/// One measured prefetch value.
#[derive(Debug, Clone, PartialEq)]
pub struct TunerRow {
    /// The prefetch.
    pub prefetch: u16,
    /// Handlers run at once for this prefetch
    /// ([`HandlerConcurrency::for_prefetch`] of the configured value).
    pub concurrency: usize,
    /// Messages consumed and acknowledged.
    pub consumed: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Messages per second.
    pub throughput: f64,
    /// Most messages held unacknowledged at once.
    pub peak_unacked: u64,
}

/// The tuner's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TunerReport {
    /// One row per prefetch value, in the order tried.
    pub rows: Vec<TunerRow>,
    /// The recommended prefetch.
    pub recommended: u16,
    /// The handler latency used.
    pub handler_latency: Duration,
    /// The handler concurrency used (each row holds the number it gave).
    pub concurrency: HandlerConcurrency,
    /// The tolerance used for the recommendation.
    pub tolerance: f64,
}

/// Measures every prefetch value of `cfg` against the broker.
pub async fn tune_prefetch(cfg: &TunerConfig) -> Result<TunerReport> {
    cfg.validate()?;
    let mut rows = Vec::new();
    for &prefetch in &cfg.prefetch_values {
        rows.push(measure(cfg, prefetch).await?);
    }
    let recommended = recommend(&rows, cfg.tolerance)?;
    Ok(TunerReport {
        rows,
        recommended,
        handler_latency: cfg.handler_latency,
        concurrency: cfg.concurrency,
        tolerance: cfg.tolerance,
    })
}

/// Consumer throughput and peak unacked for one prefetch value.
///
/// `cfg.prefetch_values` is not used; every other field is checked as
/// [`TunerConfig::validate`] does, and `prefetch` must be positive. The
/// handlers run at once are `cfg.concurrency.for_prefetch(prefetch)` (a
/// fixed number above `prefetch` runs `prefetch` handlers: no more
/// deliveries can be held at once); the row reports the number used.
pub async fn measure(cfg: &TunerConfig, prefetch: u16) -> Result<TunerRow> {
    cfg.validate_run()?;
    if prefetch == 0 {
        return Err(invalid("prefetch", prefetch, "must be positive"));
    }
    let queue = format!(
        "{}-p{prefetch}-{:08x}",
        cfg.queue_prefix,
        rand::random::<u32>()
    );
    let spec = QueueSpec::classic(&queue);
    fill(cfg, &spec).await?;
    // Positive: both are (checked above).
    let concurrency = cfg.concurrency.for_prefetch(prefetch);
    let consumed = Arc::new(AtomicU64::new(0));
    let latency = cfg.handler_latency;
    let ccfg = ConsumerConfig {
        prefetch,
        concurrency,
        declare: false,
        connection_name: "mq-reliable prefetch tuner".into(),
        ..ConsumerConfig::new(cfg.url.clone(), spec.clone())
    };
    let started = Instant::now();
    let counter = Arc::clone(&consumed);
    let consumer = ReliableConsumer::start(ccfg, move |_msg| {
        let counter = Arc::clone(&counter);
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            Outcome::Ack
        }
    })?;
    let target = cfg.messages as u64;
    while consumed.load(Ordering::Relaxed) < target && started.elapsed() < cfg.max_run {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let done = consumed.load(Ordering::Relaxed);
    let stats = consumer.shutdown().await?;
    delete_queue(&cfg.url, &queue).await?;
    Ok(TunerRow {
        prefetch,
        concurrency,
        consumed: done,
        seconds,
        throughput: done as f64 / seconds.max(1e-9),
        peak_unacked: stats.peak_unacked,
    })
}

async fn fill(cfg: &TunerConfig, spec: &QueueSpec) -> Result<()> {
    let conn = connect(
        parse_url(&cfg.url, Duration::from_secs(10))?,
        "mq-reliable tuner fill",
        Duration::from_secs(5),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    declare_queue(&ch, spec).await?;
    let payload = vec![b'x'; cfg.payload_size];
    for chunk in 0..cfg.messages.div_ceil(1000) {
        let n = (cfg.messages - chunk * 1000).min(1000);
        for i in 0..n {
            // The confirm is awaited in bulk by `wait_for_confirms`.
            drop(
                ch.basic_publish(
                    "".into(),
                    short(&spec.name),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_message_id(format!("t{}", chunk * 1000 + i).into()),
                )
                .await?,
            );
        }
        let returned = ch.wait_for_confirms().await?;
        if !returned.is_empty() {
            return Err(Error::InvalidConfig {
                field: "queue_prefix",
                value: spec.name.clone(),
                reason: "the tuner's queue did not receive its messages",
            });
        }
    }
    let _ = conn.close(200, "filled".into()).await;
    Ok(())
}

/// Deletes a queue (tests and the tuner clean up after themselves).
pub(crate) async fn delete_queue(url: &str, queue: &str) -> Result<()> {
    let conn = connect(
        parse_url(url, Duration::from_secs(10))?,
        "mq-reliable cleanup",
        Duration::from_secs(5),
    )
    .await?;
    let ch = conn.create_channel().await?;
    ch.queue_delete(short(queue), QueueDeleteOptions::default())
        .await?;
    let _ = conn.close(200, "cleanup".into()).await;
    Ok(())
}

/// The smallest prefetch whose throughput is within `tolerance` of the
/// best.
///
/// `rows` must not be empty and hold positive prefetch values with finite,
/// non-negative throughputs; `tolerance` must be in `(0, 1]`. The error
/// names the bad value.
pub fn recommend(rows: &[TunerRow], tolerance: f64) -> Result<u16> {
    if !(tolerance > 0.0 && tolerance <= 1.0) {
        return Err(invalid("tolerance", tolerance, "must be in (0, 1]"));
    }
    if rows.is_empty() {
        return Err(invalid("rows", rows.len(), "must hold at least one row"));
    }
    if let Some(r) = rows.iter().find(|r| r.prefetch == 0) {
        return Err(invalid("rows.prefetch", r.prefetch, "must be positive"));
    }
    if let Some(r) = rows
        .iter()
        .find(|r| !(r.throughput.is_finite() && r.throughput >= 0.0))
    {
        return Err(invalid(
            "rows.throughput",
            (r.prefetch, r.throughput),
            "must be finite and non-negative (prefetch, throughput)",
        ));
    }
    let best = rows.iter().map(|r| r.throughput).fold(0.0, f64::max);
    let mut sorted: Vec<&TunerRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.prefetch);
    // Non-empty, and the best row itself qualifies.
    Ok(sorted
        .iter()
        .find(|r| r.throughput >= best * tolerance)
        .map_or(sorted[0].prefetch, |r| r.prefetch))
}

impl TunerReport {
    /// The measurements as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.concurrency_note());
        let _ = writeln!(
            out,
            "{:>9} {:>11} {:>10} {:>8} {:>12} {:>13}",
            "prefetch", "concurrency", "consumed", "seconds", "msgs/s", "peak unacked"
        );
        for r in &self.rows {
            let mark = if r.prefetch == self.recommended {
                "  <- recommended"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "{:>9} {:>11} {:>10} {:>8.2} {:>12.0} {:>13}{mark}",
                r.prefetch, r.concurrency, r.consumed, r.seconds, r.throughput, r.peak_unacked
            );
        }
        let _ = writeln!(
            out,
            "recommended prefetch: {} (smallest within {:.0}% of the best throughput; handler {:?}, \
             handler concurrency {})",
            self.recommended,
            self.tolerance * 100.0,
            self.handler_latency,
            self.concurrency
        );
        out
    }

    /// One line saying what the curve measures, given the concurrency.
    pub fn concurrency_note(&self) -> String {
        match self.concurrency {
            HandlerConcurrency::EqualsPrefetch => {
                "handler concurrency = prefetch: each row changes \
                 the prefetch and the handlers running at once together"
                    .to_owned()
            }
            HandlerConcurrency::Fixed(n) => format!(
                "handler concurrency fixed at {n} (at most the prefetch): the rows show the \
                 prefetch alone"
            ),
        }
    }

    /// The throughput curve (and peak unacked) as a standalone SVG, prefetch
    /// on a log scale.
    pub fn svg(&self) -> String {
        let (w, h) = (720.0_f64, 420.0_f64);
        let (left, right, top, bottom) = (70.0, 30.0, 40.0, 60.0);
        let pw = w - left - right;
        let ph = h - top - bottom;
        let mut rows: Vec<&TunerRow> = self.rows.iter().collect();
        rows.sort_by_key(|r| r.prefetch);
        let xmin = f64::from(rows.first().map_or(1, |r| r.prefetch))
            .max(1.0)
            .log10();
        let xmax = f64::from(rows.last().map_or(10, |r| r.prefetch))
            .max(10.0)
            .log10();
        let span = (xmax - xmin).max(1e-9);
        let ymax = nice_ceiling(rows.iter().map(|r| r.throughput).fold(1.0, f64::max));
        let x = |p: u16| left + (f64::from(p).max(1.0).log10() - xmin) / span * pw;
        let y = |v: f64| top + ph - v / ymax * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Consumer throughput by prefetch (handler {:?}, handler concurrency {})</text>"#,
            w / 2.0,
            self.handler_latency,
            self.concurrency
        );
        // Axes, grid and labels.
        for i in 0..=4 {
            let v = ymax * f64::from(i) / 4.0;
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text>"##,
                left + pw,
                left - 6.0,
                yy + 4.0,
                v
            );
        }
        for r in &rows {
            let xx = x(r.prefetch);
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{top}" x2="{xx:.1}" y2="{:.1}" stroke="#eee"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                top + ph,
                top + ph + 18.0,
                r.prefetch
            );
        }
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{:.1}" stroke="black"/>"##,
            top + ph,
            left + pw,
            top + ph,
            top + ph
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">prefetch (log scale)</text>"#,
            left + pw / 2.0,
            h - 18.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">messages / s</text>"#,
            top + ph / 2.0,
            top + ph / 2.0
        );
        // The curve.
        let points: Vec<String> = rows
            .iter()
            .map(|r| format!("{:.1},{:.1}", x(r.prefetch), y(r.throughput)))
            .collect();
        let _ = writeln!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#1f77b4" stroke-width="2"/>"##,
            points.join(" ")
        );
        for r in &rows {
            let (cx, cy) = (x(r.prefetch), y(r.throughput));
            let rec = r.prefetch == self.recommended;
            let _ = writeln!(
                s,
                r##"<circle cx="{cx:.1}" cy="{cy:.1}" r="{}" fill="{}"><title>prefetch {}: {:.0} msg/s, peak unacked {}</title></circle>"##,
                if rec { 6 } else { 4 },
                if rec { "#d62728" } else { "#1f77b4" },
                r.prefetch,
                r.throughput,
                r.peak_unacked
            );
            let _ = writeln!(
                s,
                r##"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#555" font-size="10">{} unacked</text>"##,
                cy - 10.0,
                r.peak_unacked
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728">recommended: {}</text>"##,
            left + 10.0,
            top + 14.0,
            self.recommended
        );
        s.push_str("</svg>\n");
        s
    }
}

/// A round upper bound for an axis.
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(prefetch: u16, throughput: f64) -> TunerRow {
        TunerRow {
            prefetch,
            concurrency: 1,
            consumed: 100,
            seconds: 1.0,
            throughput,
            peak_unacked: u64::from(prefetch),
        }
    }

    #[test]
    fn recommends_the_knee_of_the_curve() {
        let rows = vec![
            row(1, 900.0),
            row(10, 7_000.0),
            row(50, 9_600.0),
            row(100, 10_000.0),
            row(1000, 9_900.0),
        ];
        assert_eq!(recommend(&rows, 0.95).unwrap(), 50);
        assert_eq!(recommend(&rows, 1.0).unwrap(), 100);
        assert_eq!(recommend(&rows, 0.5).unwrap(), 10);
        // Nothing measured (every throughput 0): the smallest.
        assert_eq!(recommend(&[row(10, 0.0), row(1, 0.0)], 0.95).unwrap(), 1);
    }

    #[test]
    fn recommend_rejects_bad_input_by_name() {
        let rows = vec![row(1, 900.0), row(10, 7_000.0)];
        for (tolerance, shown) in [(0.0, "0.0"), (1.5, "1.5"), (f64::NAN, "NaN")] {
            let e = recommend(&rows, tolerance).unwrap_err();
            assert!(
                matches!(
                    e,
                    Error::InvalidConfig {
                        field: "tolerance",
                        ..
                    }
                ),
                "{e}"
            );
            assert!(e.to_string().contains(shown), "{e}");
        }
        let e = recommend(&[], 0.95).unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "rows", .. }),
            "{e}"
        );
        let e = recommend(&[row(0, 5.0)], 0.95).unwrap_err();
        assert!(e.to_string().contains("rows.prefetch"), "{e}");
        let e = recommend(&[row(1, 900.0), row(10, f64::INFINITY)], 0.95).unwrap_err();
        assert!(
            e.to_string().contains("rows.throughput") && e.to_string().contains("(10, inf)"),
            "{e}"
        );
        let e = recommend(&[row(1, -1.0)], 0.95).unwrap_err();
        assert!(e.to_string().contains("rows.throughput"), "{e}");
    }

    /// `measure` checks its input before it touches the broker: the URL
    /// points nowhere, so any attempt to connect would fail differently.
    #[tokio::test]
    async fn measure_rejects_bad_input_by_name() {
        let cfg = TunerConfig {
            url: "amqp://127.0.0.1:1/%2f".into(),
            ..TunerConfig::default()
        };
        let e = measure(&cfg, 0).await.unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidConfig {
                    field: "prefetch",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("= 0"), "{e}");
        let cases: [(&str, TunerConfig); 7] = [
            (
                "url",
                TunerConfig {
                    url: "not a url".into(),
                    ..cfg.clone()
                },
            ),
            (
                "concurrency",
                TunerConfig {
                    concurrency: HandlerConcurrency::Fixed(0),
                    ..cfg.clone()
                },
            ),
            (
                "messages",
                TunerConfig {
                    messages: 0,
                    ..cfg.clone()
                },
            ),
            (
                "max_run",
                TunerConfig {
                    max_run: Duration::ZERO,
                    ..cfg.clone()
                },
            ),
            (
                "tolerance",
                TunerConfig {
                    tolerance: -1.0,
                    ..cfg.clone()
                },
            ),
            (
                "queue_prefix",
                TunerConfig {
                    queue_prefix: "q".repeat(240),
                    ..cfg.clone()
                },
            ),
            (
                "queue_prefix",
                TunerConfig {
                    queue_prefix: "amq.tuner".into(),
                    ..cfg.clone()
                },
            ),
        ];
        for (field, bad) in cases {
            let e = measure(&bad, 10).await.unwrap_err();
            assert!(
                matches!(&e, Error::InvalidConfig { field: f, .. } if *f == field),
                "{field}: {e}"
            );
        }
        // `measure` ignores `prefetch_values` (it is given its prefetch).
        let e = measure(
            &TunerConfig {
                prefetch_values: vec![],
                url: "not a url".into(),
                ..cfg.clone()
            },
            10,
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e, Error::InvalidConfig { field: "url", .. }),
            "{e}"
        );
        // And `tune_prefetch` checks the whole configuration.
        let e = tune_prefetch(&TunerConfig {
            prefetch_values: vec![10, 0],
            ..cfg.clone()
        })
        .await
        .unwrap_err();
        assert!(
            e.to_string().contains("prefetch_values") && e.to_string().contains("[10, 0]"),
            "{e}"
        );
    }

    #[test]
    fn svg_is_well_formed_and_marks_the_recommendation() {
        let report = TunerReport {
            rows: vec![row(1, 900.0), row(100, 10_000.0), row(1000, 9_000.0)],
            recommended: 100,
            handler_latency: Duration::from_millis(1),
            concurrency: HandlerConcurrency::EqualsPrefetch,
            tolerance: 0.95,
        };
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("recommended: 100"));
        assert_eq!(svg.matches('<').count(), svg.matches('>').count());
        let table = report.table();
        assert!(table.contains("<- recommended"));
        assert!(
            table.starts_with("handler concurrency = prefetch"),
            "{table}"
        );
        assert!(svg.contains("handler concurrency = prefetch"));
        let fixed = TunerReport {
            concurrency: HandlerConcurrency::Fixed(8),
            ..report
        };
        assert!(fixed.table().starts_with("handler concurrency fixed at 8"));
        assert!(fixed.svg().contains("handler concurrency 8"));
        assert!(table.lines().count() >= 4);
    }

    #[test]
    fn handler_concurrency_is_at_most_the_prefetch() {
        assert_eq!(HandlerConcurrency::EqualsPrefetch.for_prefetch(200), 200);
        assert_eq!(HandlerConcurrency::Fixed(8).for_prefetch(200), 8);
        assert_eq!(HandlerConcurrency::Fixed(8).for_prefetch(3), 3);
    }

    #[test]
    fn validation_names_fields() {
        TunerConfig::default().validate().unwrap();
        let e = TunerConfig {
            prefetch_values: vec![0],
            ..TunerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("prefetch_values"), "{e}");
        let e = TunerConfig {
            tolerance: 1.5,
            ..TunerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("tolerance"), "{e}");
        let e = TunerConfig {
            payload_size: usize::MAX,
            ..TunerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("payload_size"), "{e}");
        let e = TunerConfig {
            queue_prefix: "x".repeat(240),
            ..TunerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("queue_prefix"), "{e}");
        TunerConfig {
            queue_prefix: "x".repeat(239),
            ..TunerConfig::default()
        }
        .validate()
        .unwrap();
        assert_eq!(nice_ceiling(7300.0), 10_000.0);
        assert_eq!(nice_ceiling(1200.0), 2000.0);
    }
}
