//! # hot-cache: a flash sale on one product page, and a poster nobody should download
//!
//! Product-page servers read their pages from Redis (design notes §2). The
//! two worst cases for a cache cluster are a *hot key* and a *big value*;
//! this app shows both being handled by the workspace's crates:
//!
//! 1. Three product-page instances (in this process, each with its own
//!    Redis connection) read pages through `ratelimit::ProtectedCache`. Each
//!    reports its reads to Kafka with a `hotkey::KafkaReporter` (aggregated
//!    counts every 100 ms; Kafka here is librdkafka's embedded mock
//!    cluster). A detector consumes the reports (`KafkaSource` into a
//!    `Detector`: "more than 1000 reads within one second is hot") and
//!    publishes hot keys to ZooKeeper (`ZkPublisher`). Every instance watches
//!    ZooKeeper (`HotKeySet::watch`) and its `ProtectedCache` serves hot keys
//!    from a local cache, refreshing them from Redis about once a second.
//! 2. Normal traffic: a Zipf load over 2000 products, 1500 reads/s. The most
//!    read page stays well below the threshold: nothing is hot.
//! 3. A flash sale: one product that nobody read before gets 3000 extra
//!    reads/s. It is detected within a few hundred milliseconds, every
//!    instance learns it from ZooKeeper, and from then on Redis hardly sees
//!    that key. Redis' own `MONITOR` stream counts the reads of that key
//!    before and after; `INFO commandstats` shows the total read load.
//! 4. Someone stores an 8 MiB poster under a product key (bypassing the
//!    guard). `ProtectedCache` answers `TooLarge` after a bounded probe of
//!    16 KiB: `MONITOR` shows Redis never ran a `GET` for it; a plain `GET`
//!    moves all 8 MiB. Writing it through `ProtectedCache` is refused before
//!    anything is sent.
//!
//! The scenario ends with one JSON line of promises and exits non-zero if
//! one failed. The crates' own metrics (`hotkey_*`: detections, hot keys,
//! ZooKeeper writes and watcher re-reads, Kafka reports; `ratelimit_*`:
//! reads by source, blanks, refused big values) are served for Prometheus at
//! the printed URL; the scenario reads `hotkey_detected_total` from that
//! scrape to check for false alarms, and prints the key ones at the end.
//!
//! **Demo settings:** the detection rule and the caches are the crates'
//! defaults (1000 reads in 1 s, 100 ms reports, 1 s local freshness); only
//! the phases are short (seconds, not a day of traffic) and Kafka is the
//! embedded mock cluster. Needs Redis and ZooKeeper
//! (`cargo xtask services up`); run it with `cargo xtask demo hot-cache`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use demo_support::{MetricsEndpoint, Phase, Promises, demo_setting, metric_sum, run_id, thousands};
use futures_util::StreamExt;
use hotkey::{
    Detector, DigestCredentials, EmbeddedKafka, HotKeySet, HotKeyWatch, KafkaReporter, KafkaSource,
    ReporterConfig, Rule, SourceConfig, TaskHandle, ZkConfig, ZkPublisher,
};
use parking_lot::Mutex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ratelimit::redis::AsyncCommands;
use ratelimit::redis::aio::MultiplexedConnection;
use ratelimit::{Error as CacheError, Lookup, ProtectedCache};
use testkit::Service;
use tokio::task::JoinHandle;
use tracing::info;

#[derive(Debug, Parser)]
#[command(
    name = "hot-cache",
    about = "Product pages on Redis: a flash sale's hot key detected and served locally; a huge value refused"
)]
struct Args {
    /// Product-page instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Products in the catalogue.
    #[arg(long, default_value_t = 2000)]
    products: usize,
    /// Zipf exponent of normal traffic.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Normal page reads per second, over all instances.
    #[arg(long, default_value_t = 1500)]
    normal_rate: u64,
    /// Extra reads per second of the flash-sale product.
    #[arg(long, default_value_t = 3000)]
    flash_rate: u64,
    /// A key read more than this many times within one second is hot.
    #[arg(long, default_value_t = 1000)]
    threshold: u64,
    /// Seconds of normal traffic.
    #[arg(long, default_value_t = 4)]
    normal_secs: u64,
    /// Seconds of the flash sale.
    #[arg(long, default_value_t = 8)]
    flash_secs: u64,
    /// Where to serve Prometheus metrics (default: a free loopback port).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

/// Size of a product page in Redis.
const PAGE_BYTES: usize = 512;
/// The poster someone stored under a product key.
const POSTER_BYTES: usize = 8 << 20;

#[tokio::main]
async fn main() -> ExitCode {
    demo_support::init_logging();
    let args = Args::parse();
    demo_support::exit_code("hot-cache", scenario(args).await)
}

async fn scenario(args: Args) -> Result<ExitCode> {
    if args.instances == 0 || args.products < 2 {
        bail!("need at least one instance and two products");
    }
    let metrics = MetricsEndpoint::install(args.metrics_addr)?;
    let redis_url = testkit::require(Service::Redis);
    let zk_connect = testkit::require(Service::ZooKeeper);
    demo_setting(
        "phases",
        format!(
            "{} s normal traffic, {} s flash sale",
            args.normal_secs, args.flash_secs
        ),
        "hours of traffic",
    );
    demo_setting(
        "Kafka",
        "librdkafka's embedded mock cluster",
        "a Kafka cluster",
    );
    let mut promises = Promises::new("hot-cache");
    let run = run_id();
    let prefix = format!("demo:{run}:product:");
    let catalogue = Arc::new(Catalogue::new(&prefix, args.products, args.zipf));
    // The last product: nobody reads it under Zipf, until the sale.
    let flash = catalogue.keys[args.products - 1].clone();
    let poster = format!("{prefix}poster");
    // Keys as a reader would name them, without this run's prefix.
    let short = |key: &str| key.trim_start_matches(&format!("demo:{run}:")).to_owned();
    let flash_name = short(&flash);

    // Redis: the pages, and Redis' own view of what it is asked.
    let redis = ratelimit::redis::Client::open(redis_url.as_str())?;
    // Generous timeouts: this connection also moves an 8 MiB value.
    let mut plain = redis
        .get_multiplexed_async_connection_with_config(
            &ratelimit::redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    seed_pages(&mut plain, &catalogue).await?;
    let monitor = RedisMonitor::start(&redis, &format!("demo:{run}:")).await?;

    // The detector side: Kafka reports in, ZooKeeper out.
    let kafka = EmbeddedKafka::start(&format!("hot-cache-reads-{run}"), 4)?;
    let detector = Arc::new(Detector::new(hotkey::Config::with_rules(vec![
        Rule::prefix("product-pages", &prefix).with_threshold(args.threshold),
    ]))?);
    let (source, source_stats) = KafkaSource::new(
        SourceConfig {
            brokers: kafka.brokers(),
            topic: kafka.topic().to_owned(),
            group_id: format!("hot-cache-detector-{run}"),
            ..SourceConfig::default()
        },
        Arc::clone(&detector),
    )?
    .spawn();
    let zk = ZkConfig {
        connect: zk_connect,
        root: format!("/demo-hot-cache-{run}"),
        app: "shop".into(),
        ..ZkConfig::default()
    };
    let credentials = DigestCredentials {
        user: "detector".into(),
        password: format!("demo-{run}"),
    };
    let publisher = ZkPublisher::connect(ZkConfig {
        credentials: Some(credentials.clone()),
        ..zk.clone()
    })
    .await?
    .spawn(Arc::clone(&detector), true);

    // The product-page instances.
    let mut shop = Vec::new();
    for i in 1..=args.instances {
        shop.push(ShopInstance::start(i, &redis_url, &kafka, &zk).await?);
    }
    info!(
        "{} product-page instances up; detector reads Kafka topic {}, publishes to ZooKeeper {}",
        shop.len(),
        kafka.topic(),
        zk.app_path()
    );

    // The story; whatever happens in it, the clean-up below runs, in an
    // order that stops every Kafka client before the cluster goes away.
    let outcome = async {
        // Kafka's consumer group takes a moment to be assigned.
        let phase = Phase::start("joining the Kafka consumer group", Duration::from_secs(4));
        let warm = format!("demo:{run}:warm-up");
        let joined = Instant::now();
        while source_stats.get().reports == 0 {
            shop[0].reporter.record(warm.as_bytes());
            if joined.elapsed() > Duration::from_secs(60) {
                bail!("the embedded Kafka never delivered a report to the detector");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        phase.finish();

        // Normal traffic.
        let tally = Arc::new(Tally::default());
        let load = Load::start(&shop, &catalogue, &flash, args.normal_rate, &tally);
        let normal_start = unix_ms();
        let stats_before = commandstats(&mut plain).await?;
        let phase = Phase::start(
            "normal traffic (Zipf)",
            Duration::from_secs(args.normal_secs),
        );
        let mut hot_in_normal = BTreeSet::new();
        while phase.elapsed() < Duration::from_secs(args.normal_secs) {
            for h in detector.hot_keys() {
                hot_in_normal.insert(String::from_utf8_lossy(&h.key).into_owned());
            }
            phase.set_message(format!("{} reads", thousands(tally.reads())));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        phase.finish();
        let normal_end = unix_ms();
        let stats_normal = commandstats(&mut plain).await?;
        let normal_redis_rate = (stats_normal.getrange - stats_before.getrange) as f64
            / ((normal_end - normal_start) / 1e3);

        // The flash sale.
        info!("flash sale: {flash} gets {} extra reads/s", args.flash_rate);
        let flash_tally_start = tally.flash.load(Ordering::Relaxed);
        load.set_flash_rate(args.flash_rate);
        let sale_start = unix_ms();
        let sale_started = Instant::now();
        let sale = Duration::from_secs(args.flash_secs);
        let phase = Phase::start("flash sale", sale);
        let mut detected: Option<f64> = None;
        // When the key's reads passed the threshold (the earliest it can be hot).
        let mut crossed: Option<f64> = None;
        let mut learned: Vec<Option<Duration>> = vec![None; shop.len()];
        let mut all_learned_at: Option<f64> = None;
        let mut steady: Option<(f64, Commandstats)> = None;
        let mut hot_in_sale = BTreeSet::new();
        while sale_started.elapsed() < sale {
            if crossed.is_none()
                && tally.flash.load(Ordering::Relaxed) - flash_tally_start > args.threshold
            {
                crossed = Some(unix_ms());
            }
            for h in detector.hot_keys() {
                let key = String::from_utf8_lossy(&h.key).into_owned();
                if key == flash && detected.is_none() {
                    detected = Some(h.detected_at_ms as f64 - sale_start);
                    info!(
                        "detector: {flash} is hot ({} reads in its window), {:.0} ms into the sale",
                        h.rate,
                        h.detected_at_ms as f64 - sale_start
                    );
                }
                hot_in_sale.insert(key);
            }
            for (i, s) in shop.iter().enumerate() {
                if learned[i].is_none() && s.hot.is_hot(flash.as_bytes()) {
                    learned[i] = Some(sale_started.elapsed());
                    info!(
                        "{} learned from ZooKeeper that {flash} is hot, {:.0} ms into the sale",
                        s.name,
                        sale_started.elapsed().as_secs_f64() * 1e3
                    );
                }
            }
            if all_learned_at.is_none() && learned.iter().all(Option::is_some) {
                all_learned_at = Some(unix_ms());
            }
            // One second after every instance knows, the steady state starts.
            if let (Some(t), None) = (all_learned_at, &steady)
                && unix_ms() > t + 1000.0
            {
                steady = Some((unix_ms(), commandstats(&mut plain).await?));
            }
            phase.set_message(format!(
                "{} reads, {} of {} instances serve {flash} locally",
                thousands(tally.reads()),
                learned.iter().flatten().count(),
                shop.len()
            ));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        phase.finish();
        let sale_end = unix_ms();
        let stats_sale = commandstats(&mut plain).await?;
        let flash_reads = tally.flash.load(Ordering::Relaxed) - flash_tally_start;
        load.stop().await;

        // The poster.
        let big = big_value(&shop[0].cache, &mut plain, &monitor, &poster).await?;

        // Let MONITOR's stream catch up before counting.
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Every detection the detector made, from the Prometheus scrape: a
        // false alarm that cooled down between two samples still counts.
        let page = metrics.scrape().await?;
        let detections = metric_sum(&page, "hotkey_detected_total").unwrap_or(0.0) as u64;
        let head = &catalogue.keys[0];
        let head_rate = monitor.count(head, "getrange", normal_start, normal_end) as f64
            / ((normal_end - normal_start) / 1e3);
        promises.check(
            "ordinary traffic raises no false alarm",
            format!(
                "{} hot keys under Zipf traffic (top page {head_rate:.0} reads/s, threshold \
                 {}/s); in the sale: {}; hotkey_detected_total {detections}",
                hot_in_normal.len(),
                args.threshold,
                if hot_in_sale.is_empty() {
                    "none".to_owned()
                } else {
                    hot_in_sale
                        .iter()
                        .map(|k| short(k))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
            hot_in_normal.is_empty()
                && hot_in_sale.len() == 1
                && hot_in_sale.contains(&flash)
                && detections == 1,
        );
        promises.check(
            "a sudden hot key is detected at once",
            match (detected, crossed) {
                (Some(ms), Some(c)) => format!(
                    "{flash_name} hot {:.0} ms after its read number {} ({ms:.0} ms into the \
                     sale at {} reads/s; counts reported every 100 ms via Kafka)",
                    (ms + sale_start - c).max(0.0),
                    args.threshold + 1,
                    args.flash_rate
                ),
                _ => "never detected".to_owned(),
            },
            detected
                .zip(crossed)
                .is_some_and(|(ms, c)| ms + sale_start - c < 2000.0),
        );
        let slowest = learned.iter().flatten().max().copied();
        promises.check(
            "every instance learns it from ZooKeeper",
            match slowest {
                Some(d) if learned.iter().all(Option::is_some) => format!(
                    "{} of {} instances serve it locally {:.0} ms into the sale",
                    shop.len(),
                    shop.len(),
                    d.as_secs_f64() * 1e3
                ),
                _ => format!(
                    "{} of {} instances learned it",
                    learned.iter().flatten().count(),
                    shop.len()
                ),
            },
            learned
                .iter()
                .all(|l| l.is_some_and(|d| d < Duration::from_secs(5))),
        );
        let key_load = match (all_learned_at, &steady) {
            (Some(learned_at), Some((steady_from, steady_stats))) => {
                let before_s = (learned_at - sale_start) / 1e3;
                let after_s = (sale_end - steady_from) / 1e3;
                let before =
                    monitor.count(&flash, "getrange", sale_start, learned_at) as f64 / before_s;
                let after =
                    monitor.count(&flash, "getrange", *steady_from, sale_end) as f64 / after_s;
                let total_after = (stats_sale.getrange - steady_stats.getrange) as f64 / after_s;
                Some((before, after, total_after))
            }
            _ => None,
        };
        info!(
            "{flash_name}: {} page reads in the sale, {} of them reached Redis",
            thousands(flash_reads),
            thousands(monitor.count(&flash, "getrange", sale_start, sale_end) as u64)
        );
        promises.check(
            "Redis load for the hot key drops",
            match key_load {
                Some((before, after, total_after)) => format!(
                    "{flash_name} reads reaching Redis (MONITOR): {before:.0}/s, then {after:.1}/s \
                     once local; all GETRANGE (INFO commandstats): {normal_redis_rate:.0}/s \
                     normal, {total_after:.0}/s in the sale",
                ),
                None => "the hot key was never served locally".to_owned(),
            },
            key_load.is_some_and(|(before, after, _)| before > 0.0 && after <= before * 0.05),
        );
        let (reads, blanks) = (tally.reads(), tally.blanks.load(Ordering::Relaxed));
        promises.check(
            "pages are served throughout",
            format!(
                "{} of {} page reads answered ({} blank, {} errors)",
                thousands(tally.hits.load(Ordering::Relaxed)),
                thousands(reads),
                thousands(blanks),
                tally.errors.load(Ordering::Relaxed)
            ),
            reads > 0
                && tally.errors.load(Ordering::Relaxed) == 0
                && tally.hits.load(Ordering::Relaxed) + blanks == reads
                && blanks * 100 <= reads,
        );
        promises.check(
            "a huge value is refused without being read",
            big.describe(),
            big.held(),
        );

        metrics
            .print_key_metrics(&[
                "ratelimit_reads_total",
                "ratelimit_blank_total",
                "ratelimit_big_values_total",
                "ratelimit_breaker_state",
                "hotkey_detected_total",
                "hotkey_cooled_total",
                "hotkey_hot_keys",
                "hotkey_rejected_promotions_total",
                "hotkey_zk_",
                "hotkey_reporter_reports_total",
                "hotkey_reporter_dropped_reads_total",
                "hotkey_kafka_reports_total",
            ])
            .await?;

        anyhow::Ok(promises)
    }
    .await;

    // Clean up what this run left in the shared servers.
    monitor.stop();
    for s in shop {
        s.stop().await;
    }
    publisher.shutdown().await;
    source.shutdown().await;
    drop(kafka);
    if let Err(e) = delete_pages(&mut plain, &catalogue, &poster).await {
        tracing::warn!("could not delete this run's keys (they expire in 10 min): {e:#}");
    }
    remove_znodes(&zk, &credentials).await;
    Ok(outcome?.finish())
}

/// One product-page server: its cache client, its read reporter, and its
/// view of the hot keys.
struct ShopInstance {
    name: String,
    cache: ProtectedCache,
    reporter: Arc<KafkaReporter>,
    reporting: TaskHandle,
    hot: HotKeySet,
    _watch: HotKeyWatch,
}

impl ShopInstance {
    async fn start(
        i: usize,
        redis_url: &str,
        kafka: &EmbeddedKafka,
        zk: &ZkConfig,
    ) -> Result<ShopInstance> {
        let name = format!("page-{i}");
        let watch = HotKeySet::watch(zk.clone())
            .await
            .with_context(|| format!("{name}: watching ZooKeeper"))?;
        let hot = watch.set();
        let cache = ProtectedCache::builder(ratelimit::Config {
            name: name.clone(),
            ..ratelimit::Config::standalone(redis_url)
        })
        .hot_keys(hot.clone())
        .connect()
        .await
        .with_context(|| format!("{name}: connecting to Redis"))?;
        let reporter = KafkaReporter::new(ReporterConfig {
            brokers: kafka.brokers(),
            topic: kafka.topic().to_owned(),
            instance: name.clone(),
            ..ReporterConfig::default()
        })
        .await?;
        let reporting = reporter.spawn();
        Ok(ShopInstance {
            name,
            cache,
            reporter,
            reporting,
            hot,
            _watch: watch,
        })
    }

    async fn stop(self) {
        self.reporting.shutdown().await;
    }
}

/// The products, and which one a Zipf-distributed reader picks.
struct Catalogue {
    keys: Vec<String>,
    /// Cumulative Zipf probabilities, rank 0 first.
    cdf: Vec<f64>,
}

impl Catalogue {
    fn new(prefix: &str, n: usize, exponent: f64) -> Catalogue {
        let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(exponent)).collect();
        let total: f64 = weights.iter().sum();
        let mut acc = 0.0;
        let cdf = weights
            .iter()
            .map(|w| {
                acc += w / total;
                acc
            })
            .collect();
        Catalogue {
            keys: (0..n).map(|i| format!("{prefix}{i}")).collect(),
            cdf,
        }
    }

    fn pick(&self, rng: &mut impl Rng) -> &str {
        let u: f64 = rng.random();
        let i = self
            .cdf
            .partition_point(|&c| c < u)
            .min(self.keys.len() - 1);
        &self.keys[i]
    }
}

/// What the readers got.
#[derive(Debug, Default)]
struct Tally {
    normal: AtomicU64,
    flash: AtomicU64,
    hits: AtomicU64,
    blanks: AtomicU64,
    errors: AtomicU64,
}

impl Tally {
    fn reads(&self) -> u64 {
        self.normal.load(Ordering::Relaxed) + self.flash.load(Ordering::Relaxed)
    }
}

/// Readers: per instance four tasks, each paced to its share of the rates.
struct Load {
    stop: Arc<AtomicBool>,
    flash_rate: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<()>>,
}

const READERS_PER_INSTANCE: usize = 4;

impl Load {
    fn start(
        shop: &[ShopInstance],
        catalogue: &Arc<Catalogue>,
        flash: &str,
        normal_rate: u64,
        tally: &Arc<Tally>,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flash_rate = Arc::new(AtomicU64::new(0));
        let readers = (shop.len() * READERS_PER_INSTANCE) as f64;
        let mut tasks = Vec::new();
        for (n, s) in shop.iter().enumerate() {
            for r in 0..READERS_PER_INSTANCE {
                let (cache, reporter) = (s.cache.clone(), Arc::clone(&s.reporter));
                let (catalogue, tally) = (Arc::clone(catalogue), Arc::clone(tally));
                let (stop, flash_rate, flash) =
                    (stop.clone(), flash_rate.clone(), flash.to_owned());
                let seed = (n * READERS_PER_INSTANCE + r) as u64;
                tasks.push(tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let (mut normal_credit, mut flash_credit) = (0.0f64, 0.0f64);
                    let mut last = Instant::now();
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let dt = last.elapsed().as_secs_f64().min(0.5);
                        last = Instant::now();
                        normal_credit += normal_rate as f64 / readers * dt;
                        flash_credit += flash_rate.load(Ordering::Relaxed) as f64 / readers * dt;
                        while normal_credit >= 1.0 {
                            normal_credit -= 1.0;
                            let key = catalogue.pick(&mut rng).to_owned();
                            read_page(&cache, &reporter, &key, &tally).await;
                            tally.normal.fetch_add(1, Ordering::Relaxed);
                        }
                        while flash_credit >= 1.0 {
                            flash_credit -= 1.0;
                            read_page(&cache, &reporter, &flash, &tally).await;
                            tally.flash.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        Load {
            stop,
            flash_rate,
            tasks,
        }
    }

    fn set_flash_rate(&self, rate: u64) {
        self.flash_rate.store(rate, Ordering::Relaxed);
    }

    async fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Load {
    /// A story that fails midway must not leave readers running.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One page view: report the read, then read through the protected cache.
async fn read_page(cache: &ProtectedCache, reporter: &KafkaReporter, key: &str, tally: &Tally) {
    reporter.record(key.as_bytes());
    match cache.get(key).await {
        Ok(Lookup::Hit(_)) => tally.hits.fetch_add(1, Ordering::Relaxed),
        Ok(Lookup::Blank(_)) => tally.blanks.fetch_add(1, Ordering::Relaxed),
        Ok(other) => {
            tracing::warn!("{key}: unexpected {other:?}");
            tally.errors.fetch_add(1, Ordering::Relaxed)
        }
        Err(e) => {
            tracing::warn!("{key}: {e}");
            tally.errors.fetch_add(1, Ordering::Relaxed)
        }
    };
}

/// What happened to the poster.
struct BigValue {
    write_refused: bool,
    lookup: String,
    too_large: bool,
    guarded_ms: f64,
    commands: Vec<String>,
    plain_bytes: usize,
    plain_ms: f64,
}

impl BigValue {
    fn held(&self) -> bool {
        self.write_refused
            && self.too_large
            && !self.commands.is_empty()
            && !self.commands.iter().any(|c| c == "get")
    }

    fn describe(&self) -> String {
        format!(
            "8 MiB value: {} in {:.1} ms; Redis ran {} for it, no GET (<= 16 KiB sent; a plain \
             GET: {} bytes in {:.1} ms); write {}",
            self.lookup,
            self.guarded_ms,
            self.commands.join("+"),
            thousands(self.plain_bytes as u64),
            self.plain_ms,
            if self.write_refused {
                "refused before sending"
            } else {
                "NOT refused"
            }
        )
    }
}

async fn big_value(
    cache: &ProtectedCache,
    plain: &mut MultiplexedConnection,
    monitor: &RedisMonitor,
    poster: &str,
) -> Result<BigValue> {
    let value = vec![b'#'; POSTER_BYTES];
    let write_refused = matches!(
        cache.set(poster, value.clone(), None).await,
        Err(CacheError::ValueTooLarge { .. })
    );
    // A legacy writer that does not go through the guard.
    let () = plain.set_ex(poster, value, 600).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let from = unix_ms();
    let started = Instant::now();
    let lookup = cache.get(poster).await?;
    let guarded_ms = started.elapsed().as_secs_f64() * 1e3;
    let to = unix_ms() + 1.0;
    info!("ProtectedCache read of {poster}: {lookup:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let commands = monitor.commands_on(poster, from, to);
    let started = Instant::now();
    let bytes: Vec<u8> = plain.get(poster).await?;
    let plain_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(BigValue {
        write_refused,
        too_large: matches!(lookup, Lookup::TooLarge { .. }),
        lookup: match lookup {
            Lookup::TooLarge { size, limit } => format!("TooLarge ({size} > {limit})"),
            other => format!("{other:?}"),
        },
        guarded_ms,
        commands,
        plain_bytes: bytes.len(),
        plain_ms,
    })
}

/// Redis' `MONITOR` stream: every command Redis executes, with its own
/// timestamp. Only commands on this run's keys are kept.
struct RedisMonitor {
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

/// One command Redis ran on one of our keys.
struct Seen {
    at_ms: f64,
    command: String,
    key: String,
}

impl RedisMonitor {
    async fn start(client: &ratelimit::redis::Client, filter: &str) -> Result<RedisMonitor> {
        let monitor = client
            .get_async_monitor()
            .await
            .context("starting Redis MONITOR")?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (out, filter) = (seen.clone(), filter.to_owned());
        let task = tokio::spawn(async move {
            let mut lines = monitor.into_on_message::<String>();
            while let Some(line) = lines.next().await {
                if line.contains(&filter)
                    && let Some(s) = parse_monitor_line(&line, &filter)
                {
                    out.lock().push(s);
                }
            }
        });
        Ok(RedisMonitor { seen, task })
    }

    /// How many times Redis ran `command` on `key` between two Unix times (ms).
    fn count(&self, key: &str, command: &str, from_ms: f64, to_ms: f64) -> usize {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.key == key && s.command == command && (from_ms..to_ms).contains(&s.at_ms))
            .count()
    }

    /// The commands Redis ran on `key` between two Unix times (ms), in order.
    fn commands_on(&self, key: &str, from_ms: f64, to_ms: f64) -> Vec<String> {
        self.seen
            .lock()
            .iter()
            .filter(|s| s.key == key && (from_ms..to_ms).contains(&s.at_ms))
            .map(|s| s.command.clone())
            .collect()
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// `1732621234.123456 [0 127.0.0.1:51234] "getrange" "key" "0" "16384"`
/// (`[0 lua]` for commands a script ran) → time, command, and the first
/// argument that is one of our keys.
fn parse_monitor_line(line: &str, filter: &str) -> Option<Seen> {
    let (time, rest) = line.trim_start_matches('+').split_once(' ')?;
    let at_ms = time.parse::<f64>().ok()? * 1e3;
    let args = quoted_args(rest.split_once("] ")?.1);
    let command = args.first()?.to_lowercase();
    let key = args.iter().skip(1).find(|a| a.starts_with(filter))?.clone();
    Some(Seen {
        at_ms,
        command,
        key,
    })
}

fn quoted_args(s: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => arg.extend(chars.next()),
                '"' => break,
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    args
}

/// The counters of `INFO commandstats` the story needs (all clients).
#[derive(Debug, Clone, Copy)]
struct Commandstats {
    getrange: u64,
}

async fn commandstats(conn: &mut MultiplexedConnection) -> Result<Commandstats> {
    let info: String = ratelimit::redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    let calls = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Ok(Commandstats {
        getrange: calls("getrange"),
    })
}

async fn seed_pages(conn: &mut MultiplexedConnection, catalogue: &Catalogue) -> Result<()> {
    for chunk in catalogue.keys.chunks(500) {
        let mut pipe = ratelimit::redis::pipe();
        for key in chunk {
            let page = format!("<html>{key}</html>");
            let page = format!("{page:.<PAGE_BYTES$}");
            pipe.set_ex(key, page, 600).ignore();
        }
        let () = pipe.query_async(conn).await?;
    }
    info!(
        "{} product pages of {PAGE_BYTES} bytes stored in Redis",
        catalogue.keys.len()
    );
    Ok(())
}

async fn delete_pages(
    conn: &mut MultiplexedConnection,
    catalogue: &Catalogue,
    poster: &str,
) -> Result<()> {
    for chunk in catalogue.keys.chunks(500) {
        let () = ratelimit::redis::cmd("UNLINK")
            .arg(chunk)
            .query_async::<u64>(conn)
            .await
            .map(|_| ())?;
    }
    let _: u64 = ratelimit::redis::cmd("UNLINK")
        .arg(poster)
        .query_async(conn)
        .await?;
    Ok(())
}

/// Removes this run's znodes (the detector's credentials own them).
async fn remove_znodes(zk: &ZkConfig, credentials: &DigestCredentials) {
    use hotkey::zookeeper_client::Client;
    let auth = format!("{}:{}", credentials.user, credentials.password);
    let client = match Client::connector()
        .with_auth("digest", auth.as_bytes())
        .connect(&zk.connect)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("could not clean up {}: {e}", zk.root);
            return;
        }
    };
    let app = zk.app_path();
    for child in client.list_children(&app).await.unwrap_or_default() {
        let _ = client.delete(&format!("{app}/{child}"), None).await;
    }
    let _ = client.delete(&app, None).await;
    let _ = client.delete(&zk.root, None).await;
}

/// Milliseconds since the Unix epoch (Redis' MONITOR and the detector use it).
fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_parse() {
        let s = parse_monitor_line(
            r#"1732621234.123456 [0 127.0.0.1:51234] "getrange" "demo:x:product:7" "0" "16384""#,
            "demo:x:",
        )
        .unwrap();
        assert_eq!(
            (s.command.as_str(), s.key.as_str()),
            ("getrange", "demo:x:product:7")
        );
        assert!((s.at_ms - 1_732_621_234_123.456).abs() < 0.01);
        let lua = parse_monitor_line(r#"1.5 [0 lua] "strlen" "demo:x:p""#, "demo:x:").unwrap();
        assert_eq!(lua.command, "strlen");
        let sha = parse_monitor_line(
            r#"1.5 [0 127.0.0.1:1] "evalsha" "abc" "1" "demo:x:p" "1048576""#,
            "demo:x:",
        )
        .unwrap();
        assert_eq!(
            (sha.command.as_str(), sha.key.as_str()),
            ("evalsha", "demo:x:p")
        );
        assert!(parse_monitor_line(r#"1.5 [0 127.0.0.1:1] "get" "other""#, "demo:x:").is_none());
        assert_eq!(quoted_args(r#""a\"b" "c""#), vec!["a\"b", "c"]);
    }

    #[test]
    fn zipf_prefers_the_head() {
        let c = Catalogue::new("p:", 100, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let head = (0..10_000).filter(|_| c.pick(&mut rng) == "p:0").count();
        // 1 / H(100) ≈ 19 %.
        assert!((1500..2400).contains(&head), "{head}");
    }
}
