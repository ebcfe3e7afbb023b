//! `prefetch-tuner`: RabbitMQ's "benchmark it yourself" for `basic.qos`.
//!
//! ```text
//! prefetch-tuner --amqp URL [--handler-ms MS] [--svg PATH]
//!                [--prefetch 1,10,50,100,200,300,1000] [--messages N]
//!                [--concurrency C] [--max-run-secs S]
//! ```
//!
//! For each prefetch value it fills a fresh durable queue, consumes it with
//! manual acks and a handler that takes MS milliseconds, and records the
//! throughput and the peak number of unacknowledged messages. It prints a
//! table, writes the curve as an SVG, and recommends the smallest prefetch
//! within 5% of the best throughput.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mq_reliable::{TunerConfig, tune_prefetch};

#[derive(Parser, Debug)]
#[command(
    name = "prefetch-tuner",
    about = "Measure consumer throughput by prefetch and recommend one"
)]
struct Args {
    /// AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    amqp: String,
    /// Simulated work per message, in milliseconds.
    #[arg(long, default_value_t = 1.0)]
    handler_ms: f64,
    /// Where to write the curve.
    #[arg(long, default_value = "prefetch-tuner.svg")]
    svg: PathBuf,
    /// Prefetch values to try.
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 10, 50, 100, 200, 300, 1000])]
    prefetch: Vec<u16>,
    /// Messages queued per run.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Handlers running at once [default: as many as the prefetch allows].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Longest run per prefetch value, in seconds.
    #[arg(long, default_value_t = 4.0)]
    max_run_secs: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = TunerConfig {
        url: args.amqp,
        prefetch_values: args.prefetch,
        handler_latency: Duration::from_secs_f64(args.handler_ms.max(0.0) / 1000.0),
        concurrency: args.concurrency,
        messages: args.messages,
        max_run: Duration::from_secs_f64(args.max_run_secs.max(0.1)),
        ..TunerConfig::default()
    };
    let report = tune_prefetch(&cfg).await.context("running the tuner")?;
    print!("{}", report.table());
    std::fs::write(&args.svg, report.svg())
        .with_context(|| format!("writing {}", args.svg.display()))?;
    println!("curve written to {}", args.svg.display());
    println!("recommended_prefetch={}", report.recommended);
    Ok(())
}
