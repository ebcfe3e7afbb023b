//! `reliable-consumer`: consumes with manual acks until it holds N distinct
//! message ids.
//!
//! ```text
//! reliable-consumer --amqp URL --queue Q --expect N [--prefetch P]
//! ```
//!
//! Every delivery is acknowledged after it was counted (duplicates too).
//! Connection losses are ridden out. The last line on stdout is
//! `received=N duplicates=D`.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use clap::Parser;
use mq_reliable::{ConsumerConfig, Dedupe, Outcome, QueueSpec, ReliableConsumer};

#[derive(Parser, Debug)]
#[command(
    name = "reliable-consumer",
    about = "Consume until N distinct ids arrived"
)]
struct Args {
    /// AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    amqp: String,
    /// Durable queue to consume (declared if missing).
    #[arg(long)]
    queue: String,
    /// Distinct message ids to wait for.
    #[arg(long)]
    expect: usize,
    /// basic.qos prefetch.
    #[arg(long, default_value_t = 200)]
    prefetch: u16,
}

#[derive(Default)]
struct Tally {
    distinct: usize,
    duplicates: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("mq_reliable=info")),
        )
        .init();
    let args = Args::parse();
    let expect = args.expect;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let seen = Arc::new(Mutex::new(Dedupe::new(expect.max(1))));
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(expect == 0);
    let cfg = ConsumerConfig {
        prefetch: args.prefetch,
        connection_name: "reliable-consumer".into(),
        ..ConsumerConfig::new(&args.amqp, QueueSpec::classic(&args.queue))
    };
    let (t, s) = (Arc::clone(&tally), Arc::clone(&seen));
    let consumer = ReliableConsumer::start(cfg, move |msg| {
        let (t, s, done) = (Arc::clone(&t), Arc::clone(&s), done_tx.clone());
        async move {
            if let Some(id) = msg.id {
                let first = s.lock().unwrap_or_else(|e| e.into_inner()).first_seen(&id);
                let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
                if first {
                    t.distinct += 1;
                } else {
                    t.duplicates += 1;
                }
                if t.distinct >= expect {
                    let _ = done.send(true);
                }
            }
            Outcome::Ack
        }
    })
    .context("starting the consumer")?;
    done_rx.wait_for(|d| *d).await.context("consumer stopped")?;
    consumer.shutdown().await.context("shutting down")?;
    let t = tally.lock().unwrap_or_else(|e| e.into_inner());
    println!("received={} duplicates={}", t.distinct, t.duplicates);
    Ok(())
}
