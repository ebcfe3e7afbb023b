//! Spill-log benchmark: on one disk, in one run, compares
//! (a) a mutex + write + fdatasync per record, (b) a single-slice double buffer and
//! (c) the sharded double buffer with group commit, at 1, 2, 4 and 8 writers with 256 B and
//! 4 KiB records, every record waited on until durable; then fire-and-forget appends, the
//! append-to-durable latency at half the peak rate, replay speed, and the disk's raw sequential
//! write bandwidth. Prints a table and a final one-line JSON summary.
//!
//! ```sh
//! cargo run --release -p double-buffer --example spill_bench            # full run, < 3 min
//! cargo run --release -p double-buffer --example spill_bench -- --smoke # same paths, seconds
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use double_buffer::{Config, SpillLog, Ticket};

const USAGE: &str = "\
usage: spill_bench [--smoke] [--dir DIR] [--seconds S] [--csv FILE]

  --smoke      run every scenario briefly (a few seconds in all); for CI
  --dir DIR    where to write (default: the system temp dir); the same disk for every run
  --seconds S  length of each timed run (default 2, smoke 0.1)
  --csv FILE   also write the table's rows as CSV (variant,writers,bytes,records_s,mb_s,
               p50_us,p99_us), e.g. for `cargo xtask bench` to draw rate against writers

Runs (a) lock + write + fdatasync per record, (b) a single-slice double buffer, (c) the
sharded double buffer (and, at 8 writers, the same with O_DIRECT), at 1/2/4/8 writers, 256 B
and 4 KiB records, each record waited on until durable (a writer keeps up to 256 records in
flight, like as many async tasks); the variants of a cell take turns in 3 rounds; then latency at half the peak rate, fire-and-forget appends,
replay, raw disk bandwidth (page cache + fdatasync, and O_DIRECT).
Ends with a one-line JSON summary.";

struct Opts {
    smoke: bool,
    dir: PathBuf,
    run: Duration,
    csv: Option<PathBuf>,
}

fn parse() -> Result<Opts> {
    let mut opts = Opts {
        smoke: false,
        dir: std::env::temp_dir(),
        run: Duration::from_secs(2),
        csv: None,
    };
    let mut seconds = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--smoke" => opts.smoke = true,
            "--dir" => opts.dir = PathBuf::from(args.next().context("--dir needs a directory")?),
            "--csv" => opts.csv = Some(PathBuf::from(args.next().context("--csv needs a file")?)),
            "--seconds" => {
                let v = args.next().context("--seconds needs a number")?;
                seconds = Some(
                    v.parse::<f64>()
                        .with_context(|| format!("--seconds: not a number: {v}"))?,
                );
            }
            other => {
                eprintln!("spill_bench: unknown argument {other:?}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    opts.run = Duration::from_secs_f64(seconds.unwrap_or(if opts.smoke { 0.1 } else { 2.0 }));
    Ok(opts)
}

/// What one timed run measured.
#[derive(Clone, Copy, Default)]
struct Outcome {
    records: u64,
    bytes: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Outcome {
    fn rps(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn mb_s(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i])
}

fn summarize(records: u64, bytes: u64, secs: f64, mut lat: Vec<u32>) -> Outcome {
    lat.sort_unstable();
    Outcome {
        records,
        bytes,
        secs,
        p50_us: percentile(&lat, 0.50),
        p99_us: percentile(&lat, 0.99),
    }
}

fn payload(size: usize, n: u64) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u64 ^ n.wrapping_mul(0x9e37)) as u8)
        .collect()
}

/// (a) The naive way: one lock, and a write plus `fdatasync` per record, into a preallocated
/// file (so that it pays no size update per sync: its best case).
struct Naive {
    file: Mutex<(File, u64)>,
}

impl Naive {
    fn open(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 256 << 20)?;
        file.sync_all()?;
        Ok(Naive {
            file: Mutex::new((file, 0)),
        })
    }

    fn append(&self, record: &[u8]) -> Result<()> {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&(record.len() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&crc32c::crc32c(record).to_le_bytes());
        let mut g = self.file.lock().unwrap();
        let pos = g.1;
        g.0.write_all_at(&header, pos)?;
        g.0.write_all_at(record, pos + 16)?;
        g.0.sync_data()?;
        g.1 = pos + 16 + record.len() as u64;
        Ok(())
    }
}

enum Sink<'a> {
    Naive(&'a Naive),
    Log(&'a SpillLog),
}

/// One writer: appends `size`-byte records until `stop`, keeping up to `window` in flight
/// and waiting on the oldest when full; with `rate`, paces itself to that many records per
/// second (in 1 ms bursts) and waits on its records while idle, so that each latency is taken
/// when the record turns durable. Returns (records, latencies in µs).
fn writer(
    sink: &Sink<'_>,
    size: usize,
    window: usize,
    rate: Option<f64>,
    stop: &AtomicBool,
    seed: u64,
) -> Result<(u64, Vec<u32>)> {
    let record = payload(size, seed);
    let mut inflight: VecDeque<(Instant, Ticket)> = VecDeque::with_capacity(window);
    let mut lat = Vec::with_capacity(1 << 16);
    let mut n = 0u64;
    let started = Instant::now();
    let record_latency = |t0: Instant, lat: &mut Vec<u32>| {
        lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
    };
    while !stop.load(Ordering::Relaxed) {
        // How many records are due now.
        let due = match rate {
            None => 1,
            Some(r) => {
                let target = (started.elapsed().as_secs_f64() * r) as u64;
                target.saturating_sub(n).min(1024)
            }
        };
        for _ in 0..due {
            let t0 = Instant::now();
            match sink {
                Sink::Naive(naive) => {
                    naive.append(&record)?;
                    record_latency(t0, &mut lat);
                }
                Sink::Log(log) => {
                    if inflight.len() >= window {
                        let (t, ticket) = inflight.pop_front().expect("window is full");
                        ticket.wait()?;
                        record_latency(t, &mut lat);
                    }
                    inflight.push_back((t0, log.append(&record)?));
                }
            }
            n += 1;
        }
        if let Some(r) = rate {
            // Wait for in-flight records until the next burst is due (bursts of about 200 µs
            // of records, so that pacing does not cost a wake-up per record).
            let next = started + Duration::from_secs_f64((n as f64 + (r * 0.0002).max(1.0)) / r);
            while let Some((t, ticket)) = inflight.front() {
                let now = Instant::now();
                if now >= next {
                    break;
                }
                if ticket.wait_timeout(next - now)? {
                    record_latency(*t, &mut lat);
                    inflight.pop_front();
                } else {
                    break;
                }
            }
            let now = Instant::now();
            if inflight.is_empty() && now < next {
                std::thread::sleep(next - now);
            }
        }
    }
    for (t, ticket) in inflight {
        ticket.wait()?;
        record_latency(t, &mut lat);
    }
    Ok((n, lat))
}

/// What one timed run collected, before percentiles: runs of one cell are merged.
#[derive(Default)]
struct Sample {
    records: u64,
    secs: f64,
    lat: Vec<u32>,
}

impl Sample {
    fn merge(samples: Vec<Sample>, size: usize) -> Outcome {
        let mut all = Sample::default();
        for s in samples {
            all.records += s.records;
            all.secs += s.secs;
            all.lat.extend(s.lat);
        }
        summarize(all.records, all.records * size as u64, all.secs, all.lat)
    }
}

/// Runs `writers` threads against `sink` for `run`.
fn timed(
    sink: &Sink<'_>,
    writers: usize,
    size: usize,
    rate: Option<f64>,
    run: Duration,
) -> Result<Outcome> {
    Ok(Sample::merge(
        vec![timed_raw(sink, writers, size, rate, run)?],
        size,
    ))
}

fn timed_raw(
    sink: &Sink<'_>,
    writers: usize,
    size: usize,
    rate: Option<f64>,
    run: Duration,
) -> Result<Sample> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let results: Vec<Result<(u64, Vec<u32>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let stop = &stop;
                let per_writer = rate.map(|r| r / writers as f64);
                s.spawn(move || writer(sink, size, 256, per_writer, stop, w as u64))
            })
            .collect();
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect()
    });
    let secs = started.elapsed().as_secs_f64();
    let mut sample = Sample {
        records: 0,
        secs,
        lat: Vec::new(),
    };
    for r in results {
        let (n, l) = r?;
        sample.records += n;
        sample.lat.extend(l);
    }
    Ok(sample)
}

/// The ways of writing that are compared.
#[derive(Clone, Copy)]
enum Variant {
    Naive,
    Log { slices: usize, direct: bool },
}

/// One run of `variant` in a fresh directory.
fn run_variant(
    base: &Path,
    variant: Variant,
    writers: usize,
    size: usize,
    run: Duration,
) -> Result<Sample> {
    let dir = scratch(base, "run")?;
    match variant {
        Variant::Naive => {
            let naive = Naive::open(&dir.path().join("naive.log"))?;
            timed_raw(&Sink::Naive(&naive), writers, size, None, run)
        }
        Variant::Log { slices, direct } => {
            let (log, _) = SpillLog::open(
                dir.path(),
                Config {
                    direct_io: direct,
                    ..config(slices)
                },
            )?;
            let sample = timed_raw(&Sink::Log(&log), writers, size, None, run)?;
            log.close()?;
            Ok(sample)
        }
    }
}

fn config(slices: usize) -> Config {
    Config {
        slices,
        ..Config::default()
    }
}

/// A fresh directory for one run, removed afterwards.
fn scratch(base: &Path, name: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("spill-bench-{name}-"))
        .tempdir_in(base)
        .context("creating a scratch directory")
}

/// Raw sequential write bandwidth through the page cache, the path the log takes: `total`
/// bytes in 1 MiB writes, then one `fdatasync` (what `dd bs=1M conv=fdatasync` measures).
fn disk_bandwidth(base: &Path, total: usize) -> Result<f64> {
    let dir = scratch(base, "disk")?;
    let file = File::create(dir.path().join("raw"))?;
    let chunk = vec![0x5au8; 1 << 20];
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        file.write_all_at(&chunk, written as u64)?;
        written += chunk.len();
    }
    file.sync_data()?;
    Ok(written as f64 / started.elapsed().as_secs_f64() / 1e6)
}

/// The same with `O_DIRECT` (no page cache), for reference; `None` where unsupported.
fn direct_bandwidth(base: &Path, total: usize) -> Result<Option<f64>> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = scratch(base, "direct")?;
    let flags = rustix::fs::OFlags::DIRECT.bits() as i32;
    let Ok(file) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(flags)
        .open(dir.path().join("raw"))
    else {
        return Ok(None);
    };
    // An aligned 4 MiB window inside a larger allocation: O_DIRECT wants aligned memory.
    let mut backing = vec![0x5au8; (4 << 20) + 4096];
    let skip = backing.as_ptr().align_offset(4096);
    let chunk = &mut backing[skip..skip + (4 << 20)];
    let started = Instant::now();
    let mut written = 0;
    while written < total {
        if file.write_all_at(chunk, written as u64).is_err() {
            return Ok(None);
        }
        written += chunk.len();
    }
    file.sync_data()?;
    Ok(Some(written as f64 / started.elapsed().as_secs_f64() / 1e6))
}

/// Prints one row of the table and keeps it as a CSV line for `--csv`.
fn row(csv: &mut Vec<String>, variant: &str, writers: usize, size: usize, o: &Outcome) {
    println!(
        "{variant:<22} {writers:>7} {size:>6} {:>12.0} {:>9.1} {:>9.0} {:>9.0}",
        o.rps(),
        o.mb_s(),
        o.p50_us,
        o.p99_us
    );
    csv.push(format!(
        "{variant},{writers},{size},{:.0},{:.1},{:.0},{:.0}",
        o.rps(),
        o.mb_s(),
        o.p50_us,
        o.p99_us
    ));
}

fn main() -> Result<()> {
    let opts = parse()?;
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let sharded_slices = Config::default().slices;
    println!(
        "spill_bench: dir {} · {cpus} CPUs · sharded = {sharded_slices} slices · {} per run{}",
        opts.dir.display(),
        humantime(opts.run),
        if opts.smoke { " · SMOKE" } else { "" }
    );

    let disk_bytes = if opts.smoke { 32 << 20 } else { 512 << 20 };
    let disk_before = disk_bandwidth(&opts.dir, disk_bytes)?;
    println!("raw sequential write (1 MiB writes + fdatasync): {disk_before:.0} MB/s\n");

    let header = format!(
        "{:<22} {:>7} {:>6} {:>12} {:>9} {:>9} {:>9}",
        "variant", "writers", "bytes", "records/s", "MB/s", "p50 µs", "p99 µs"
    );
    println!("{header}");
    let mut table = vec!["variant,writers,bytes,records_s,mb_s,p50_us,p99_us".to_owned()];
    let writer_counts = [1usize, 2, 4, 8];
    // Each cell runs its variants in turn, in `rounds` rounds of `run / rounds`, so that the
    // shared machine's drifting load hits them alike; a cell's rounds are merged.
    let rounds: u32 = if opts.smoke { 1 } else { 3 };
    let slot = opts.run / rounds;
    let variants = [
        ("(a) lock+write+fsync", Variant::Naive),
        (
            "(b) single slice",
            Variant::Log {
                slices: 1,
                direct: false,
            },
        ),
        (
            "(c) sharded",
            Variant::Log {
                slices: sharded_slices,
                direct: false,
            },
        ),
        (
            "(c) sharded, O_DIRECT",
            Variant::Log {
                slices: sharded_slices,
                direct: true,
            },
        ),
    ];
    let mut at_8 = std::collections::HashMap::new();
    for size in [256usize, 4096] {
        for &writers in &writer_counts {
            // O_DIRECT only at 8 writers: it is the same design with another write path.
            let cell: Vec<_> = variants
                .iter()
                .filter(|(name, _)| writers == 8 || !name.contains("O_DIRECT"))
                .collect();
            let mut samples: Vec<Vec<Sample>> = cell.iter().map(|_| Vec::new()).collect();
            for _ in 0..rounds {
                for (i, (_, variant)) in cell.iter().enumerate() {
                    samples[i].push(run_variant(&opts.dir, *variant, writers, size, slot)?);
                }
            }
            for ((name, _), samples) in cell.iter().zip(samples) {
                let o = Sample::merge(samples, size);
                row(&mut table, name, writers, size, &o);
                if writers == 8 {
                    at_8.insert((*name, size), o);
                }
            }
        }
    }
    let naive_8 = at_8[&("(a) lock+write+fsync", 256)];
    let single_8 = at_8[&("(b) single slice", 256)];
    let sharded_8 = at_8[&("(c) sharded", 256)];
    let sharded_4k_8 = at_8[&("(c) sharded", 4096)];
    let direct_rows = [
        at_8[&("(c) sharded, O_DIRECT", 256)],
        at_8[&("(c) sharded, O_DIRECT", 4096)],
    ];

    // Latency at half the peak durable rate (sharded, 256 B, 8 writers).
    let half = sharded_8.rps() / 2.0;
    let dir = scratch(&opts.dir, "latency")?;
    let (log, _) = SpillLog::open(dir.path(), config(sharded_slices))?;
    let lat = timed(&Sink::Log(&log), 8, 256, Some(half), opts.run)?;
    log.close()?;
    row(&mut table, "(c) at half peak rate", 8, 256, &lat);

    // Fire and forget: appends whose tickets are dropped, then one flush at the end (counted).
    let mut ff = Vec::new();
    for size in [32usize, 256] {
        let dir = scratch(&opts.dir, "fire")?;
        let (log, _) = SpillLog::open(dir.path(), config(sharded_slices))?;
        let o = fire_and_forget(&log, cpus.max(2), size, opts.run)?;
        log.close()?;
        row(&mut table, "(c) fire-and-forget", cpus.max(2), size, &o);
        ff.push(o);
    }

    // Replay: write 4 KiB records, reopen (recovery scan), replay everything.
    let dir = scratch(&opts.dir, "replay")?;
    let (replay_mb_s, recovery_mb_s, replayed) =
        replay_speed(dir.path(), if opts.smoke { 32 << 20 } else { 1 << 30 })?;
    println!(
        "\nreplay of {replayed} MB (4 KiB records, page cache warm): {replay_mb_s:.0} MB/s; recovery scan at open: {recovery_mb_s:.0} MB/s"
    );

    // The disk again, after everything: the shared machine's disk varies; the better of the
    // two measurements is the yardstick (the less flattering one for the log).
    let disk_after = disk_bandwidth(&opts.dir, disk_bytes)?;
    let disk_mb_s = disk_before.max(disk_after);
    let direct = direct_bandwidth(&opts.dir, disk_bytes)?;
    println!(
        "raw sequential write: {disk_before:.0} MB/s before, {disk_after:.0} MB/s after the runs; with O_DIRECT: {}",
        direct.map_or_else(|| "unsupported here".to_owned(), |d| format!("{d:.0} MB/s"))
    );

    if let Some(path) = &opts.csv {
        std::fs::write(path, table.join("\n") + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }

    let speedup = sharded_8.rps() / naive_8.rps();
    println!(
        "\n(c) / (a) at 256 B, 8 writers: {speedup:.0}×; (c) 4 KiB at 8 writers: {:.0}% of raw disk bandwidth",
        sharded_4k_8.mb_s() / disk_mb_s * 100.0
    );
    println!(
        "{{\"naive_rps\":{:.0},\"single_slice_rps\":{:.0},\"sharded_rps\":{:.0},\"p99_durable_us\":{:.0},\"sharded_4k_mb_s\":{:.1},\"disk_write_mb_s\":{:.1},\"fire_and_forget_rps\":{:.0},\"replay_mb_s\":{:.0},\"speedup_vs_naive\":{:.1},\"p50_durable_us\":{:.0},\"half_peak_rps\":{:.0},\"fire_and_forget_256_rps\":{:.0},\"fire_and_forget_record_bytes\":32,\"recovery_scan_mb_s\":{:.0},\"direct_write_mb_s\":{:.0},\"sharded_direct_rps\":{:.0},\"sharded_4k_direct_mb_s\":{:.1},\"slices\":{sharded_slices},\"cpus\":{cpus},\"smoke\":{}}}",
        naive_8.rps(),
        single_8.rps(),
        sharded_8.rps(),
        lat.p99_us,
        sharded_4k_8.mb_s(),
        disk_mb_s,
        ff[0].rps(),
        replay_mb_s,
        speedup,
        lat.p50_us,
        lat.rps(),
        ff[1].rps(),
        recovery_mb_s,
        direct.unwrap_or(0.0),
        direct_rows[0].rps(),
        direct_rows[1].mb_s(),
        opts.smoke,
    );
    Ok(())
}

fn humantime(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// `threads` writers append `size`-byte records and drop the tickets; the clock stops after a
/// final flush, so what is counted was also written.
fn fire_and_forget(log: &SpillLog, threads: usize, size: usize, run: Duration) -> Result<Outcome> {
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let counts: Vec<Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|w| {
                let stop = &stop;
                s.spawn(move || -> Result<u64> {
                    let record = payload(size, w as u64);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            drop(log.append(&record)?);
                        }
                        n += 64;
                    }
                    Ok(n)
                })
            })
            .collect();
        std::thread::sleep(run);
        stop.store(true, Ordering::Relaxed);
        hs.into_iter()
            .map(|h| h.join().expect("writer panicked"))
            .collect()
    });
    log.flush()?;
    let secs = started.elapsed().as_secs_f64();
    let records: u64 = counts.into_iter().sum::<Result<u64>>()?;
    Ok(summarize(records, records * size as u64, secs, Vec::new()))
}

/// Returns (replay MB/s, recovery scan MB/s, MB replayed).
fn replay_speed(dir: &Path, total: usize) -> Result<(f64, f64, usize)> {
    let record = payload(4096, 7);
    {
        let (log, _) = SpillLog::open(dir, Config::default())?;
        for _ in 0..total / record.len() {
            drop(log.append(&record)?);
        }
        log.close()?;
    }
    let started = Instant::now();
    let (log, report) = SpillLog::open(dir, Config::default())?;
    let recovery = started.elapsed().as_secs_f64();
    let mut replay = log.replay()?;
    let started = Instant::now();
    let mut bytes = 0u64;
    while let Some(r) = replay.next_record()? {
        bytes += r.payload().len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    if bytes != report.pending_bytes {
        bail!(
            "replayed {bytes} bytes, recovery counted {}",
            report.pending_bytes
        );
    }
    drop(replay);
    log.close()?;
    Ok((
        bytes as f64 / secs / 1e6,
        bytes as f64 / recovery / 1e6,
        bytes as usize >> 20,
    ))
}
