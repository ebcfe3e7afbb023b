//! `prefetch-tuner`: RabbitMQ's "benchmark it yourself" for `basic.qos`.
//!
//! ```text
//! prefetch-tuner --amqp URL [--handler-ms MS] [--svg PATH]
//!                [--prefetch 1,10,50,100,200,300,1000] [--messages N]
//!                [--concurrency prefetch|N] [--max-run-secs S]
//! ```
//!
//! For each prefetch value it fills a fresh durable queue, consumes it with
//! manual acks and a handler that takes MS milliseconds, and records the
//! throughput and the peak number of unacknowledged messages. It prints a
//! table, writes the curve as an SVG, and recommends the smallest prefetch
//! within 5% of the best throughput.
//!
//! `--concurrency` is the number of handlers running at once. `prefetch`
//! (the default) runs as many as each prefetch value allows, so the curve
//! measures prefetch and handler parallelism together; a number N keeps N
//! handlers (at most the prefetch) at every point, so the curve shows what
//! the prefetch alone buys a consumer with that parallelism.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use mq_reliable::{HandlerConcurrency, TunerConfig, tune_prefetch};

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
    /// Handlers running at once: `prefetch` (as many as each prefetch value
    /// allows; the curve then measures both together) or a number N (N at
    /// every point, at most the prefetch; the curve then shows prefetch alone).
    #[arg(long, default_value = "prefetch", value_parser = parse_concurrency)]
    concurrency: HandlerConcurrency,
    /// Longest run per prefetch value, in seconds.
    #[arg(long, default_value_t = 4.0)]
    max_run_secs: f64,
}

fn parse_concurrency(s: &str) -> Result<HandlerConcurrency, String> {
    match s {
        "prefetch" => Ok(HandlerConcurrency::EqualsPrefetch),
        n => match n.parse::<usize>() {
            Ok(0) | Err(_) => Err(format!(
                "`{s}`: expected `prefetch` or a positive number of handlers"
            )),
            Ok(n) => Ok(HandlerConcurrency::Fixed(n)),
        },
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // Out-of-range durations are the tuner's to name (`TunerConfig::validate`);
    // only what is no duration at all (negative, NaN, infinite) stops here.
    let handler_latency = Duration::try_from_secs_f64(args.handler_ms / 1000.0)
        .with_context(|| format!("--handler-ms {}: not a duration", args.handler_ms))?;
    let max_run = Duration::try_from_secs_f64(args.max_run_secs)
        .with_context(|| format!("--max-run-secs {}: not a duration", args.max_run_secs))?;
    let cfg = TunerConfig {
        url: args.amqp,
        prefetch_values: args.prefetch,
        handler_latency,
        concurrency: args.concurrency,
        messages: args.messages,
        max_run,
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
