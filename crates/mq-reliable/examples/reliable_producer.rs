//! `reliable-producer`: publishes N messages (ids `0..N-1`) that survive
//! broker outages and process crashes.
//!
//! ```text
//! reliable-producer --amqp URL --queue Q --count N [--size BYTES]
//!                   [--spill-dir DIR] [--wait-confirmed]
//! ```
//!
//! It first replays whatever an earlier run left in the spill directory,
//! then publishes. It exits 0 once all N messages are confirmed by the
//! broker or durably spilled; with `--wait-confirmed`, only once every
//! message (replayed ones included) is confirmed, however long the broker is
//! away. Connection losses and broker restarts are ridden out. The last line
//! on stdout is `confirmed=C spilled=S replayed=R`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use mq_reliable::{
    Message, PublisherConfig, PublisherState, QueueSpec, Receipt, ReliablePublisher, Topology,
};

#[derive(Parser, Debug)]
#[command(
    name = "reliable-producer",
    about = "Publish N messages that are never lost"
)]
struct Args {
    /// AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long)]
    amqp: String,
    /// Durable queue to publish to (declared if missing).
    #[arg(long)]
    queue: String,
    /// Messages to publish; their ids are 0..N-1.
    #[arg(long)]
    count: u64,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Spill log directory [default: <temp dir>/reliable-producer-<queue>].
    #[arg(long)]
    spill_dir: Option<PathBuf>,
    /// Exit only once every message, replayed ones included, is confirmed.
    #[arg(long)]
    wait_confirmed: bool,
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
    let dir = args
        .spill_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("reliable-producer-{}", args.queue)));
    let cfg = PublisherConfig {
        confirm_timeout: Duration::from_secs(5),
        connection_name: "reliable-producer".into(),
        ..PublisherConfig::new(
            &args.amqp,
            Topology::queue(QueueSpec::classic(&args.queue)),
            &dir,
        )
    };
    let publisher = ReliablePublisher::start(cfg).context("starting the publisher")?;

    // First the backlog of an earlier run: wait while the broker answers and
    // the replay makes progress; go on (spilling) if it stays unreachable.
    let mut state = publisher.state();
    let mut degraded_since = Instant::now();
    loop {
        let s = *state.borrow_and_update();
        match s {
            PublisherState::Healthy => break,
            PublisherState::Recovering => degraded_since = Instant::now(),
            PublisherState::Degraded if degraded_since.elapsed() > Duration::from_secs(5) => {
                eprintln!("broker unreachable; publishing to the spill log meanwhile");
                break;
            }
            _ => {}
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), state.changed()).await;
    }

    let padding = "x".repeat(args.size);
    let (mut confirmed, mut spilled) = (0u64, 0u64);
    let mut pending = FuturesUnordered::new();
    let mut tally = |r: mq_reliable::Result<Receipt>| -> Result<()> {
        match r.context("a message was not acknowledged")? {
            Receipt::Confirmed => confirmed += 1,
            Receipt::Spilled(_) => spilled += 1,
        }
        Ok(())
    };
    for id in 0..args.count {
        let mut payload = format!("{id}:").into_bytes();
        payload.extend_from_slice(padding.as_bytes());
        payload.truncate(args.size.max(1));
        let p = publisher
            .submit(Message::new(id.to_string(), payload))
            .await
            .with_context(|| format!("submitting message {id}"))?;
        pending.push(p);
        while pending.len() >= 8192 {
            if let Some(r) = pending.next().await {
                tally(r)?;
            }
        }
    }
    while let Some(r) = pending.next().await {
        tally(r)?;
    }
    if confirmed + spilled != args.count {
        bail!(
            "only {} of {} messages acknowledged",
            confirmed + spilled,
            args.count
        );
    }
    if args.wait_confirmed {
        // Every spilled record (this run's and earlier ones) confirmed.
        publisher
            .flush()
            .await
            .context("waiting for the spill log to drain")?;
    }
    publisher.close().await;
    let replayed = publisher.stats().replayed;
    println!("confirmed={confirmed} spilled={spilled} replayed={replayed}");
    Ok(())
}
