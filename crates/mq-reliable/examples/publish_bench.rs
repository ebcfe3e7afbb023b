//! Publish throughput, in one run against one broker:
//!
//! * (a) `per_message`: wait for each confirm before the next publish;
//! * (b) `batch`: publish 100, wait for their confirms, repeat;
//! * (c) `streaming`: `ReliablePublisher`'s confirm window, to one queue
//!   and spread over four (a direct exchange, one routing key per queue):
//!   one classic queue is one Erlang process, which bounds the first;
//! * (d) `spill`: the same publisher while the broker is unreachable, next
//!   to the double-buffer log's own durable rate for the same records;
//! * replay: that spill log drained to the broker by a restarted publisher;
//! * the consumer's throughput at the prefetch the tuner recommends.
//!
//! Every message is persistent, to a durable queue, and counted only once
//! confirmed (or fsynced, for the spill). Prints a table, then one line of
//! JSON. `--smoke` runs the same paths on a few thousand messages.
//!
//! ```text
//! cargo run --release -p mq-reliable --example publish_bench [-- --smoke] [--amqp URL]
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use mq_reliable::double_buffer::SpillLog;
use mq_reliable::lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use mq_reliable::lapin::types::FieldTable;
use mq_reliable::lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
};
use mq_reliable::{
    ExchangeType, HandlerConcurrency, Message, PublisherConfig, PublisherState, QueueSpec, Receipt,
    ReliabilityConfig, ReliablePublisher, Topology, TunerConfig, tune_prefetch,
};

/// Queues (c) is spread over in its second row.
const ROUTES: usize = 4;

#[derive(Parser, Debug)]
#[command(
    name = "publish_bench",
    about = "Publish throughput: per-message, batched, streaming, spill, replay"
)]
struct Args {
    /// Same code paths on a few thousand messages (CI).
    #[arg(long)]
    smoke: bool,
    /// AMQP URL [default: $AMQP_URL or the local broker].
    #[arg(long)]
    amqp: Option<String>,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// The publisher's in-flight window for (c) and the replay.
    #[arg(long, default_value_t = 1024)]
    window: usize,
}

struct Sizes {
    per_message: u64,
    per_message_limit: Duration,
    batch: u64,
    streaming: u64,
    spill: u64,
    replay: u64,
    tuner_messages: usize,
    tuner_run: Duration,
    tuner_prefetch: Vec<u16>,
}

struct Row {
    name: &'static str,
    messages: u64,
    seconds: f64,
    note: String,
}

impl Row {
    fn rps(&self) -> f64 {
        self.messages as f64 / self.seconds.max(1e-9)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .init();
    let args = Args::parse();
    let url = args.amqp.clone().unwrap_or_else(|| {
        std::env::var("AMQP_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
    });
    let sizes = if args.smoke {
        Sizes {
            per_message: 50,
            per_message_limit: Duration::from_secs(2),
            batch: 1_000,
            streaming: 5_000,
            spill: 5_000,
            replay: 5_000,
            tuner_messages: 1_000,
            tuner_run: Duration::from_millis(500),
            tuner_prefetch: vec![10, 100],
        }
    } else {
        Sizes {
            per_message: 3_000,
            per_message_limit: Duration::from_secs(6),
            batch: 50_000,
            streaming: 100_000,
            // Long enough (~1 s) that an fsync's jitter does not decide it.
            spill: 1_000_000,
            replay: 100_000,
            tuner_messages: 20_000,
            tuner_run: Duration::from_secs(2),
            tuner_prefetch: vec![1, 10, 50, 100, 200, 300, 1000],
        }
    };
    let payload = vec![b'x'; args.size];
    let tag = format!("{:08x}", rand::random::<u32>());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .with_context(|| {
            format!("connecting to {url} (is RabbitMQ up? `cargo xtask services up`)")
        })?;
    let mut queues = Vec::new();
    let mut rows = Vec::new();

    // (a) Wait for every confirm.
    let q = format!("mqr-bench-a-{tag}");
    let ch = confirm_channel(&conn, &q).await?;
    queues.push(q.clone());
    let start = Instant::now();
    let mut n = 0;
    while n < sizes.per_message && start.elapsed() < sizes.per_message_limit {
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                persistent(n),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            bail!("per-message publish {n} was not acked");
        }
        n += 1;
    }
    rows.push(Row {
        name: "(a) confirm per message",
        messages: n,
        seconds: start.elapsed().as_secs_f64(),
        note: "publish, await its confirm, repeat".into(),
    });

    // (b) Batches of 100 confirms.
    let q = format!("mqr-bench-b-{tag}");
    let ch = confirm_channel(&conn, &q).await?;
    queues.push(q.clone());
    let start = Instant::now();
    let mut n = 0;
    while n < sizes.batch {
        for _ in 0..100 {
            // The confirm is awaited in bulk by `wait_for_confirms`.
            drop(
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    persistent(n),
                )
                .await?,
            );
            n += 1;
        }
        let returned = ch.wait_for_confirms().await?;
        if !returned.is_empty() {
            bail!("batch publish returned messages");
        }
    }
    rows.push(Row {
        name: "(b) batches of 100 confirms",
        messages: n,
        seconds: start.elapsed().as_secs_f64(),
        note: "publish 100, wait_for_confirms, repeat".into(),
    });

    // (c) This crate's streaming window.
    let q = format!("mqr-bench-c-{tag}");
    queues.push(q.clone());
    let dir_c = tempfile::tempdir()?;
    let mut cfg = PublisherConfig::new(&url, Topology::queue(QueueSpec::classic(&q)), dir_c.path());
    cfg.reliability.window = args.window;
    let publisher = ReliablePublisher::start(cfg)?;
    wait_healthy(&publisher).await?;
    let window = args.window;
    let (secs, confirmed) = publish_stream(&publisher, sizes.streaming, &payload, 1).await?;
    if confirmed != sizes.streaming {
        bail!(
            "streaming: only {confirmed} of {} confirmed (broker trouble?)",
            sizes.streaming
        );
    }
    publisher.close().await;
    rows.push(Row {
        name: "(c) ReliablePublisher, streaming",
        messages: sizes.streaming,
        seconds: secs,
        note: format!("window {window}, every message confirmed"),
    });

    // The same over four queues: a direct exchange, queue k bound with
    // routing key "k<k>", messages spread round-robin with
    // `Message::with_routing_key` (order then holds per queue).
    let x = format!("mqr-bench-x-{tag}");
    let setup = conn.create_channel().await?;
    setup
        .exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for k in 0..ROUTES {
        let q = format!("mqr-bench-c{k}-{tag}");
        setup
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        setup
            .queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                format!("k{k}").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        queues.push(q);
    }
    let dir_c4 = tempfile::tempdir()?;
    let mut cfg = PublisherConfig::new(
        &url,
        Topology::exchange(&x, ExchangeType::Direct, "k0"),
        dir_c4.path(),
    );
    cfg.reliability.window = args.window;
    let publisher = ReliablePublisher::start(cfg)?;
    wait_healthy(&publisher).await?;
    let (secs, confirmed) = publish_stream(&publisher, sizes.streaming, &payload, ROUTES).await?;
    if confirmed != sizes.streaming {
        bail!(
            "streaming over {ROUTES} queues: only {confirmed} of {} confirmed",
            sizes.streaming
        );
    }
    publisher.close().await;
    rows.push(Row {
        name: "    the same over 4 queues",
        messages: sizes.streaming,
        seconds: secs,
        note: format!("window {window}, direct exchange, a routing key per queue"),
    });

    // (d) The spill path: the broker unreachable (a port nobody listens on).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let q = format!("mqr-bench-d-{tag}");
    queues.push(q.clone());
    let dead_url = format!("amqp://guest:guest@{dead}/%2f");
    let record_len = 1 + 1 + 8 + 1 + args.size; // the spill record of one message
    let spill = |dir: &std::path::Path, n: u64| {
        let (dir, dead_url, q, payload) = (dir.to_owned(), &dead_url, &q, &payload);
        async move {
            let spilling = ReliablePublisher::start(PublisherConfig::new(
                dead_url,
                Topology::queue(QueueSpec::classic(q)),
                dir,
            ))?;
            let (secs, confirmed) = publish_stream(&spilling, n, payload, 1).await?;
            if confirmed != 0 {
                bail!("spill: {confirmed} confirmed by a broker that does not exist");
            }
            spilling.close().await;
            Ok(secs)
        }
    };
    // Both are disk-bound: three rounds each, taking turns, and the best
    // of each.
    let (mut best_spill, mut best_log) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let dir = tempfile::tempdir()?;
        best_spill = best_spill.min(spill(dir.path(), sizes.spill).await?);
        drop(dir);
        let (secs, _) = spill_log_rate(sizes.spill, record_len).await?;
        best_log = best_log.min(secs);
    }
    // What the replay below drains: a smaller spill made the same way
    // (the broker takes a second per ~10 000 of them).
    let dir_d = tempfile::tempdir()?;
    spill(dir_d.path(), sizes.replay).await?;
    rows.push(Row {
        name: "(d) ReliablePublisher, broker down",
        messages: sizes.spill,
        seconds: best_spill,
        note: "every message fsynced to the spill log (best of 3)".into(),
    });
    rows.push(Row {
        name: "    double-buffer log alone",
        messages: sizes.spill,
        seconds: best_log,
        note: format!("{record_len} B records, one writer, durable waits pipelined (best of 3)"),
    });

    // Replay: a restarted publisher drains a spill log made as in (d). Timed from
    // the start of the replay (connected) to the log being empty and every
    // record confirmed; opening the log (recovery scan) is reported apart.
    let opened = Instant::now();
    let mut cfg = PublisherConfig::new(&url, Topology::queue(QueueSpec::classic(&q)), dir_d.path());
    cfg.reliability.window = args.window;
    let replaying = ReliablePublisher::start(cfg)?;
    let open_secs = opened.elapsed().as_secs_f64();
    let mut st = replaying.state();
    st.wait_for(|s| *s != PublisherState::Degraded).await?;
    let start = Instant::now();
    replaying.flush().await?;
    let secs = start.elapsed().as_secs_f64();
    let replayed = replaying.stats().replayed;
    replaying.close().await;
    if replayed != sizes.replay {
        bail!("replay: {replayed} of {} replayed", sizes.replay);
    }
    rows.push(Row {
        name: "    replay of a spill to the broker",
        messages: replayed,
        seconds: secs,
        note: format!("every record confirmed and checkpointed (log opened in {open_secs:.2} s)"),
    });

    // The consumer at the prefetch the tuner recommends (no handler work).
    let tuner = TunerConfig {
        url: url.clone(),
        prefetch_values: sizes.tuner_prefetch.clone(),
        handler_latency: Duration::ZERO,
        concurrency: HandlerConcurrency::Fixed(1),
        messages: sizes.tuner_messages,
        max_run: sizes.tuner_run,
        queue_prefix: format!("mqr-bench-tuner-{tag}"),
        ..TunerConfig::default()
    };
    let report = tune_prefetch(&tuner).await?;
    let best = report
        .rows
        .iter()
        .find(|r| r.prefetch == report.recommended)
        .context("the recommended prefetch was measured")?;
    rows.push(Row {
        name: "    consumer at tuned prefetch",
        messages: best.consumed,
        seconds: best.seconds,
        note: format!(
            "prefetch {} (tuner), manual acks, 1 handler",
            report.recommended
        ),
    });

    // Clean up the queues.
    let ch = conn.create_channel().await?;
    for q in &queues {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = ch
        .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;

    println!(
        "publish_bench{}: {} B persistent messages, durable classic queues, {url}",
        if args.smoke { " (smoke)" } else { "" },
        args.size
    );
    println!(
        "{:<36} {:>9} {:>9} {:>11}  notes",
        "scenario", "messages", "seconds", "msgs/s"
    );
    for r in &rows {
        println!(
            "{:<36} {:>9} {:>9.2} {:>11.0}  {}",
            r.name,
            r.messages,
            r.seconds,
            r.rps(),
            r.note
        );
    }
    println!("\nprefetch tuner (handler 0 ms, one handler at a time):");
    print!("{}", report.table());
    let rps = |i: usize| rows[i].rps();
    let (a, b, c, c4, d, log, replay, consumer) = (
        rps(0),
        rps(1),
        rps(2),
        rps(3),
        rps(4),
        rps(5),
        rps(6),
        rps(7),
    );
    println!(
        "\nstreaming = {:.1} x per-message ({:.1} x over {ROUTES} queues), {:.2} x batch; \
         spill = {:.2} x the log's own durable rate; replay = {:.2} x streaming",
        c / a,
        c4 / a,
        c / b,
        d / log,
        replay / c
    );
    println!(
        "{{\"per_message_rps\":{a:.0},\"batch_rps\":{b:.0},\"streaming_rps\":{c:.0},\
         \"streaming_4q_rps\":{c4:.0},\"spill_rps\":{d:.0},\
         \"replay_rps\":{replay:.0},\"spill_log_rps\":{log:.0},\"consumer_rps\":{consumer:.0},\
         \"tuned_prefetch\":{},\"streaming_over_per_message\":{:.1},\
         \"streaming_4q_over_per_message\":{:.1},\"streaming_over_batch\":{:.2},\
         \"spill_over_log\":{:.2},\"replay_over_streaming\":{:.2},\"smoke\":{}}}",
        report.recommended,
        c / a,
        c4 / a,
        c / b,
        d / log,
        replay / c,
        args.smoke
    );
    Ok(())
}

fn persistent(n: u64) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(n.to_string().into())
}

async fn confirm_channel(conn: &Connection, queue: &str) -> Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(ch)
}

async fn wait_healthy(p: &ReliablePublisher) -> Result<()> {
    let mut st = p.state();
    tokio::time::timeout(
        Duration::from_secs(20),
        st.wait_for(|s| *s == PublisherState::Healthy),
    )
    .await
    .context("the publisher did not connect within 20 s")??;
    Ok(())
}

/// Publishes `n` messages through `p`, pipelined, round-robin over routing
/// keys `k0..k<routes>` when `routes` > 1; (seconds, confirmed).
///
/// Receipts are awaited oldest first, as a producer that reports progress
/// in order would: they resolve nearly in order, and a `FuturesUnordered`
/// of 16 384 receipts cost this loop more than the publisher's own work
/// (an allocation per entry, and a re-poll storm once tokio's cooperative
/// budget runs out).
async fn publish_stream(
    p: &ReliablePublisher,
    n: u64,
    payload: &[u8],
    routes: usize,
) -> Result<(f64, u64)> {
    let keys: Vec<String> = (0..routes).map(|k| format!("k{k}")).collect();
    let start = Instant::now();
    let mut pending = VecDeque::new();
    let mut confirmed = 0;
    let mut count = |r: mq_reliable::Result<Receipt>| -> Result<()> {
        if r?.is_confirmed() {
            confirmed += 1;
        }
        Ok(())
    };
    for i in 0..n {
        let mut msg = Message::new(i.to_string(), payload.to_vec());
        if routes > 1 {
            msg = msg.with_routing_key(keys[i as usize % routes].clone());
        }
        pending.push_back(p.submit(msg).await?);
        while pending.len() >= 16_384 {
            if let Some(r) = pending.pop_front() {
                count(r.await)?;
            }
        }
    }
    while let Some(r) = pending.pop_front() {
        count(r.await)?;
    }
    Ok((start.elapsed().as_secs_f64(), confirmed))
}

/// The double-buffer log with the publisher's layout, one task appending
/// `n` records of `len` bytes and awaiting their durability with the
/// publisher's spill window.
async fn spill_log_rate(n: u64, len: usize) -> Result<(f64, u64)> {
    let dir = tempfile::tempdir()?;
    let cfg = ReliabilityConfig::default().spill;
    let (log, _) = SpillLog::open(dir.path(), cfg.log)?;
    let window = ReliabilityConfig::default().spill_window;
    let record = vec![7u8; len];
    let start = Instant::now();
    // Awaited oldest first, like `publish_stream`.
    let mut pending = VecDeque::new();
    for _ in 0..n {
        // The publisher's own call: the async append, pinned to one slice.
        pending.push_back(log.append_keyed_async(0, &record).await?.durable());
        while pending.len() >= window {
            if let Some(r) = pending.pop_front() {
                r.await?;
            }
        }
    }
    while let Some(r) = pending.pop_front() {
        r.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    log.close()?;
    Ok((secs, n))
}
