//! Benchmark of `hotkey`: `record()` throughput, memory at 10 M distinct
//! keys, detection delay, publish-to-watcher delay through the real
//! ZooKeeper, and recall / false positives on Zipf workloads.
//!
//! ```text
//! cargo run --release -p hotkey --example hotkey_bench            # full run (< 3 min)
//! cargo run --release -p hotkey --example hotkey_bench -- --smoke # same paths, a few seconds
//! ```
//!
//! Compares the detector with the naive exact way (a `DashMap` of per-key
//! bucket rings: what JD.com's workers do, unbounded state). Prints a table,
//! then one JSON line.

#[path = "../tests/support/workload.rs"]
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use hotkey::zookeeper_client::Client;
use hotkey::{
    Clock, CoarseClock, Config, Detector, DigestCredentials, EmbeddedKafka, Event, HotKey,
    HotKeySet, KafkaReporter, KafkaSource, ManualClock, ReporterConfig, SourceConfig, SyncOutcome,
    ZkConfig, ZkPublisher,
};
use rand::{Rng, SeedableRng};

const HELP: &str = "\
hotkey_bench: throughput, memory, delays and accuracy of the hot-key detector

usage: cargo run --release -p hotkey --example hotkey_bench [-- --smoke]

  --smoke   run every code path briefly (CI); numbers are not meaningful
  --help    this text

Needs ZooKeeper at $ZK_CONNECT (default 127.0.0.1:2181): `cargo xtask services up`.";

struct Params {
    smoke: bool,
    run_for: Duration,
    samples: usize,
    mem_keys: u64,
    naive_mem_keys: u64,
    watch_trials: usize,
    detect_trials: usize,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--memory-child") {
        // Measured in a fresh process so that memory freed by earlier phases
        // and kept by the allocator does not hide the growth.
        let n: u64 = args[2].parse().unwrap();
        let (grown, acct) = if args[1] == "ours" {
            memory_ours(n)
        } else {
            (memory_naive(n), 0.0)
        };
        println!("{grown} {acct}");
        return;
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{HELP}");
        return;
    }
    if let Some(bad) = args.iter().find(|a| *a != "--smoke") {
        eprintln!("unknown argument {bad:?}\n\n{HELP}");
        std::process::exit(2);
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let p = if smoke {
        Params {
            smoke,
            run_for: Duration::from_millis(200),
            samples: 1 << 16,
            mem_keys: 50_000,
            naive_mem_keys: 50_000,
            watch_trials: 5,
            detect_trials: 3,
        }
    } else {
        Params {
            smoke,
            run_for: Duration::from_secs(2),
            samples: 1 << 22,
            mem_keys: 10_000_000,
            naive_mem_keys: 10_000_000,
            watch_trials: 200,
            detect_trials: 20,
        }
    };
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut row = |what: &str, ours: String, naive: String| {
        eprintln!("  {what:<44} {ours:>16} {naive:>16}");
        rows.push((what.to_owned(), ours, naive));
    };
    eprintln!("running ({}):", if smoke { "smoke" } else { "full" });

    // Throughput.
    let ranks = if p.smoke { 50_000 } else { 1_000_000 };
    let u64_keys = zipf_keys(p.samples, ranks, 1.0, 8);
    let str_keys = zipf_keys(p.samples, ranks, 1.0, 32);
    let mut record_u64 = 0.0f64;
    let mut record_str = 0.0f64;
    for (name, keys) in [("u64", &u64_keys), ("str32", &str_keys)] {
        for threads in [1, 2] {
            let (ours, ours_cpu) = throughput(threads, keys, p.run_for, Ours::make);
            let (naive, naive_cpu) = throughput(threads, keys, p.run_for, Naive::make);
            row(
                &format!("record() {name} keys, {threads} thread(s), M/s"),
                format!("{:.1}", ours / 1e6),
                format!("{:.1}", naive / 1e6),
            );
            row(
                "  per CPU-second of the recording threads, M/s",
                format!("{:.1}", ours_cpu / 1e6),
                format!("{:.1}", naive_cpu / 1e6),
            );
            // Per core: the best of 1 and 2 threads divided by the threads.
            let per_core = ours / threads as f64;
            if name == "u64" {
                record_u64 = record_u64.max(per_core);
            } else {
                record_str = record_str.max(per_core);
            }
        }
    }

    // Memory at many distinct keys.
    let (ours_mib, ours_acct) = memory_child("ours", p.mem_keys);
    let (naive_mib, _) = memory_child("naive", p.naive_mem_keys);
    row(
        &format!("memory, {} distinct keys, MiB (RSS)", p.mem_keys),
        format!("{ours_mib:.1}"),
        format!("{naive_mib:.1}"),
    );
    row(
        "  of which the detector accounts for, MiB",
        format!("{ours_acct:.1}"),
        "-".into(),
    );

    // Detection delay under load.
    let (detect_p50, detect) = detection_delay(p.detect_trials, &u64_keys);
    row(
        "detection delay: crossing read to event, ms (p50)",
        format!("{detect_p50:.4}"),
        "-".into(),
    );
    row(
        "detection delay: crossing read to event, ms (max)",
        format!("{detect:.4}"),
        "-".into(),
    );

    // Publish-to-watcher delay through ZooKeeper.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (dist_p50, dist_max) = rt.block_on(distributed_delay(p.detect_trials));
    row(
        "distributed: instance read to detector event, ms (p50)",
        format!("{dist_p50:.1}"),
        "-".into(),
    );
    row(
        "distributed: instance read to detector event, ms (max)",
        format!("{dist_max:.1}"),
        "-".into(),
    );
    let (watch_p50, watch_p99) = rt.block_on(watch_delay(p.watch_trials));
    row(
        "publish-to-watcher delay p50, ms",
        format!("{watch_p50:.2}"),
        "-".into(),
    );
    row(
        "publish-to-watcher delay p99, ms",
        format!("{watch_p99:.2}"),
        "-".into(),
    );

    // Accuracy.
    let mut recall = 1.0f64;
    let mut fpr = 0.0f64;
    for s in [1.0, 1.2] {
        let top = if s == 1.0 { 200_000.0 } else { 600_000.0 };
        let distinct = if p.smoke { 20_000 } else { 1_000_000 };
        let w = workload::Workload::zipf(s, distinct, top, 20, 100, 10);
        let (r, f, grey) = accuracy(&w);
        row(
            &format!("Zipf({s}) {distinct} keys: recall / false-pos. rate"),
            format!("{r:.4} / {f:.1e}"),
            format!("grey {grey}"),
        );
        recall = recall.min(r);
        fpr = fpr.max(f);
    }

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    println!();
    println!(
        "hotkey benchmark ({}; {} cpus, {cpu})",
        if p.smoke { "smoke" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| measurement | hotkey | naive DashMap of rings |");
    println!("|---|---:|---:|");
    for (what, ours, naive) in &rows {
        println!("| {} | {ours} | {naive} |", what.trim());
    }
    println!();
    println!(
        "{}",
        serde_json::json!({
            "record_u64_rps": record_u64.round(),
            "record_str32_rps": record_str.round(),
            "mem_10m_keys_mib": (ours_mib * 10.0).round() / 10.0,
            // In-process: crossing record() to its event (max).
            "detect_delay_ms": (detect * 1000.0).round() / 1000.0,
            // Distributed: instance read through KafkaReporter, Kafka and
            // KafkaSource to the detector's event (max); the issue's 100 ms
            // target applies to it too.
            "distributed_detect_ms": (dist_max * 10.0).round() / 10.0,
            "watch_delay_p99_ms": (watch_p99 * 100.0).round() / 100.0,
            "recall": recall,
            "false_positive_rate": fpr,
        })
    );
}

/// `n` keys drawn from Zipf(`s`) over `distinct` ranks, each `len` bytes,
/// stored back to back (so that reading the input is not what is measured).
struct Keys {
    flat: Vec<u8>,
    len: usize,
}

impl Keys {
    fn count(&self) -> usize {
        self.flat.len() / self.len
    }

    #[inline]
    fn get(&self, i: usize) -> &[u8] {
        &self.flat[i * self.len..(i + 1) * self.len]
    }
}

fn zipf_keys(n: usize, distinct: u64, s: f64, len: usize) -> Arc<Keys> {
    let mut cdf = Vec::with_capacity(distinct as usize);
    let mut acc = 0.0;
    for r in 1..=distinct {
        acc += 1.0 / (r as f64).powf(s);
        cdf.push(acc);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut flat = Vec::with_capacity(n * len);
    for _ in 0..n {
        let u = rng.random::<f64>() * acc;
        let r = cdf.partition_point(|c| *c < u) as u64 + 1;
        if len > 8 {
            flat.extend_from_slice(format!("{:0>width$}", r, width = len).as_bytes());
        } else {
            flat.extend_from_slice(&r.to_le_bytes());
        }
    }
    Arc::new(Keys { flat, len })
}

trait Counter: Send + Sync + 'static {
    fn record(&self, key: &[u8]);
}

struct Ours(Detector);

impl Ours {
    fn make() -> Arc<dyn Counter> {
        let d = Detector::with_clock(Config::default(), Arc::new(CoarseClock::start())).unwrap();
        Arc::new(Ours(d))
    }
}

impl Counter for Ours {
    #[inline]
    fn record(&self, key: &[u8]) {
        self.0.record(key);
    }
}

/// The naive exact way: every key gets a ring of 10 buckets in a DashMap.
struct Naive {
    map: DashMap<Box<[u8]>, [u64; 10]>,
    clock: CoarseClock,
}

impl Naive {
    fn make() -> Arc<dyn Counter> {
        Arc::new(Naive {
            map: DashMap::new(),
            clock: CoarseClock::start(),
        })
    }
}

impl Counter for Naive {
    #[inline]
    fn record(&self, key: &[u8]) {
        let bucket = self.clock.now_ms() / 100;
        let slot = (bucket % 10) as usize;
        let tag = bucket << 32;
        let add = |ring: &mut [u64; 10]| {
            if ring[slot] >> 32 != bucket & 0xFFFF_FFFF {
                ring[slot] = tag;
            }
            ring[slot] += 1;
        };
        if let Some(mut ring) = self.map.get_mut(key) {
            add(&mut ring);
            return;
        }
        add(&mut self.map.entry(key.into()).or_insert([0; 10]));
    }
}

/// CPU time of the calling thread (user + system), from /proc, in seconds
/// (10 ms resolution). On a shared machine this says how fast the code is
/// when it runs, apart from how often it gets to run.
fn thread_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map_or("", |i| &stat[i + 2..])
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Records per second of wall time, and per second of the recording
/// threads' CPU time.
fn throughput(
    threads: usize,
    keys: &Arc<Keys>,
    run_for: Duration,
    make: fn() -> Arc<dyn Counter>,
) -> (f64, f64) {
    let counter = make();
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let cpu_ms = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (counter, keys, stop, total, cpu_ms) = (
                Arc::clone(&counter),
                Arc::clone(keys),
                Arc::clone(&stop),
                Arc::clone(&total),
                Arc::clone(&cpu_ms),
            );
            std::thread::spawn(move || {
                let cpu0 = thread_cpu_secs();
                let mut i = t * keys.count() / 2;
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..4096 {
                        counter.record(keys.get(i));
                        i += 1;
                        if i == keys.count() {
                            i = 0;
                        }
                    }
                    n += 4096;
                }
                total.fetch_add(n, Ordering::Relaxed);
                cpu_ms.fetch_add(
                    ((thread_cpu_secs() - cpu0) * 1000.0) as u64,
                    Ordering::Relaxed,
                );
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    let n = total.load(Ordering::Relaxed) as f64;
    (
        n / start.elapsed().as_secs_f64(),
        n / (cpu_ms.load(Ordering::Relaxed).max(1) as f64 / 1000.0),
    )
}

fn memory_child(which: &str, n: u64) -> (f64, f64) {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["--memory-child", which, &n.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text
        .split_whitespace()
        .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
    (it.next().unwrap_or(f64::NAN), it.next().unwrap_or(f64::NAN))
}

fn rss_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// RSS growth and the detector's own accounting after `n` distinct keys
/// were each read once within one window.
fn memory_ours(n: u64) -> (f64, f64) {
    let before = rss_mib();
    let d = Detector::with_clock(
        Config::default(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    )
    .unwrap();
    let base = 1_700_000_000_000u64;
    for k in 0..n {
        d.record_at(&k.to_le_bytes(), 1, base + k * 900 / n);
    }
    let grown = rss_mib() - before;
    let acct = d.stats().memory_bytes as f64 / (1024.0 * 1024.0);
    drop(d);
    (grown, acct)
}

fn memory_naive(n: u64) -> f64 {
    let before = rss_mib();
    let map: DashMap<Box<[u8]>, [u64; 10]> = DashMap::new();
    for k in 0..n {
        map.insert(Box::from(&k.to_le_bytes()[..]), [1; 10]);
    }
    let grown = rss_mib() - before;
    drop(map);
    grown
}

/// Wall-clock delay between the start of the read that crosses the
/// threshold and its event being available to `poll_event`, while another
/// thread records Zipf background traffic into the same detector. Returns
/// the median and the worst of `trials`.
fn detection_delay(trials: usize, background: &Arc<Keys>) -> (f64, f64) {
    let detector =
        Arc::new(Detector::with_clock(Config::default(), Arc::new(CoarseClock::start())).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let (d, keys, stop) = (
            Arc::clone(&detector),
            Arc::clone(background),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                d.record(keys.get(i % keys.count()));
                i += 1;
            }
        })
    };
    let mut delays = Vec::with_capacity(trials);
    for trial in 0..trials {
        let key = format!("planted-{trial}").into_bytes();
        for _ in 0..1000 {
            detector.record(&key);
        }
        let t0 = Instant::now();
        detector.record(&key);
        // Background keys may turn hot too: look for ours.
        let mut found = false;
        while !found {
            match detector.poll_event() {
                Some(Event::Hot(h)) => found = h.key == key,
                Some(Event::Cooled(_)) => {}
                None => panic!("the crossing read returned without its event"),
            }
        }
        delays.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    delays.sort_by(f64::total_cmp);
    (delays[delays.len() / 2], delays[delays.len() - 1])
}

/// End-to-end delay of the distributed set-up: an instance's crossing read
/// goes through its `KafkaReporter` (100 ms interval; the key is urgent, so
/// its reads are sent early), the embedded Kafka cluster and a `KafkaSource`
/// into the detector, whose event a task awaits.
async fn distributed_delay(trials: usize) -> (f64, f64) {
    let kafka = EmbeddedKafka::start("hotkey-bench", 4).unwrap();
    let reporter = KafkaReporter::new(ReporterConfig {
        brokers: kafka.brokers(),
        topic: kafka.topic().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let flusher = reporter.spawn();
    let detector = Arc::new(Detector::new(Config::default()).unwrap());
    let source_cfg = SourceConfig {
        brokers: kafka.brokers(),
        topic: kafka.topic().into(),
        ..Default::default()
    };
    let (source, stats) = KafkaSource::new(source_cfg, Arc::clone(&detector))
        .unwrap()
        .spawn();
    // Wait for the consumer group to be assigned before timing anything.
    let warm_up = Instant::now();
    while stats.get().reports == 0 {
        reporter.record(b"warm-up");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            warm_up.elapsed() < Duration::from_secs(30),
            "the embedded Kafka never delivered"
        );
    }
    let mut delays = Vec::with_capacity(trials);
    for trial in 0..trials {
        let key = format!("distributed-{trial}").into_bytes();
        reporter.record_n(&key, 1000);
        let t0 = Instant::now();
        reporter.record(&key);
        loop {
            if let Event::Hot(h) = detector.next_event().await
                && h.key == key
            {
                break;
            }
        }
        delays.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    // Stop the clients before the embedded cluster goes away, so that
    // nothing waits on a broker that no longer exists.
    flusher.shutdown().await;
    source.shutdown().await;
    drop(reporter);
    drop(kafka);
    delays.sort_by(f64::total_cmp);
    (delays[delays.len() / 2], delays[delays.len() - 1])
}

/// Delay between starting a publication (one `multi`) and three watchers
/// seeing it, over `trials` publications.
async fn watch_delay(trials: usize) -> (f64, f64) {
    let connect = std::env::var("ZK_CONNECT").unwrap_or_else(|_| "127.0.0.1:2181".into());
    let cfg = ZkConfig {
        connect: connect.clone(),
        root: format!("/hotkey-bench-{:08x}", rand::random::<u32>()),
        app: "bench".into(),
        credentials: Some(DigestCredentials {
            user: "bench".into(),
            password: "bench".into(),
        }),
        ..ZkConfig::default()
    };
    let mut publisher = match ZkPublisher::connect(cfg.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("ZooKeeper at {connect} is needed (cargo xtask services up): {e}");
            std::process::exit(1);
        }
    };
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(
            HotKeySet::watch(ZkConfig {
                credentials: None,
                ..cfg.clone()
            })
            .await
            .unwrap(),
        );
    }
    let mut samples = Vec::with_capacity(trials * watchers.len());
    let mut hot: Vec<HotKey> = Vec::new();
    for i in 0..trials {
        let key = format!("bench-key-{i}").into_bytes();
        hot.push(HotKey {
            key: key.clone(),
            rate: 1001,
            rule: "default".into(),
            detected_at_ms: 0,
        });
        if hot.len() > 20 {
            hot.remove(0);
        }
        // Respect the coalescing interval before starting the clock.
        tokio::time::sleep(Duration::from_millis(101)).await;
        // Each watcher's change notification is awaited by its own task, so
        // nothing spins while the watchers work.
        let t0 = Instant::now();
        let waiters: Vec<_> = watchers
            .iter()
            .map(|w| {
                let (set, key) = (w.set(), key.clone());
                let mut changes = set.subscribe();
                tokio::spawn(async move {
                    while !set.is_hot(&key) {
                        if tokio::time::timeout(Duration::from_secs(10), changes.changed())
                            .await
                            .is_err()
                        {
                            panic!(
                                "a watcher did not see {} within 10 s",
                                String::from_utf8_lossy(&key)
                            );
                        }
                    }
                    t0.elapsed().as_secs_f64() * 1000.0
                })
            })
            .collect();
        let outcome = publisher.sync(&hot).await.unwrap();
        assert!(
            matches!(outcome, SyncOutcome::Written { .. }),
            "{outcome:?}"
        );
        for w in waiters {
            samples.push(w.await.unwrap());
        }
    }
    // Clean up: remove the keys, then the nodes.
    let _ = publisher.sync(&[]).await;
    drop(watchers);
    let client = Client::connector()
        .with_auth("digest", b"bench:bench")
        .connect(&connect)
        .await
        .unwrap();
    let app = cfg.app_path();
    for c in client.list_children(&app).await.unwrap_or_default() {
        let _ = client.delete(&format!("{app}/{c}"), None).await;
    }
    let _ = client.delete(&app, None).await;
    let _ = client.delete(&cfg.root, None).await;
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (pct(0.5), pct(0.99))
}

/// Recall, false-positive rate and the number of keys between half the
/// threshold and the threshold that were reported.
fn accuracy(w: &workload::Workload) -> (f64, f64, usize) {
    let (reported, _) = workload::detect(w, 1_700_000_000_000);
    let s = workload::score(&w.truth(), &reported, 1000);
    (s.recall(), s.false_positive_rate(), s.grey_reported)
}
