//! Registry benchmark: the server runs in this process, the load comes from a child
//! process (this same binary in `--loadgen` mode: a raw HTTP/1.1 keep-alive client).
//!
//! ```text
//! cargo run --release -p registry --example registry_bench            # full run (< 3 min)
//! cargo run --release -p registry --example registry_bench -- --smoke # same paths, seconds
//! ```
//!
//! Measures heartbeats/s and registrations/s over HTTP on loopback, full fetches of
//! 10k instances (cached vs. rebuilt per request, the naive way), register-to-visible
//! delay through a long-polled delta while heartbeats load the server, and memory per
//! instance with one million instances. Prints a table, then one JSON line.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use registry::{Clock as _, InstanceInfo, Registry, Server, ServerConfig, SystemClock};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HELP: &str = "\
registry_bench: heartbeats/s, registrations/s, full fetch of 10k instances,
register-to-visible delay and memory per instance, against the real server over
loopback, driven from a separate load-generator process.

usage: registry_bench [--smoke] [--help]
  --smoke   the same code paths with short phases (a few seconds)
  --help    this text

Ends with one JSON line: heartbeats_rps, registrations_rps, visible_p99_ms,
bytes_per_instance (and the other numbers of the table).";

struct Plan {
    phase: Duration,
    heartbeat_instances: usize,
    conns: usize,
    fetch_instances: usize,
    visible_samples: usize,
    mem_instances: usize,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help" | "-h") => {
            println!("{HELP}");
            Ok(())
        }
        Some("--loadgen") => loadgen(args.get(1).context("--loadgen needs a JSON spec")?),
        Some("--mem") => mem_child(args.get(1).context("--mem needs a count")?.parse()?),
        Some("--smoke") => run(&Plan {
            phase: Duration::from_secs(1),
            heartbeat_instances: 200,
            conns: 16,
            fetch_instances: 10_000,
            visible_samples: 30,
            mem_instances: 20_000,
        }),
        None => run(&Plan {
            phase: Duration::from_secs(10),
            heartbeat_instances: 10_000,
            conns: 16,
            fetch_instances: 10_000,
            visible_samples: 400,
            mem_instances: 1_000_000,
        }),
        Some(other) => bail!("unknown argument {other:?}\n\n{HELP}"),
    }
}

fn run(plan: &Plan) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut rows: Vec<(String, String, String)> = Vec::new();

    // 1. Heartbeats: PUT /apps/{APP}/{ID} on pre-registered instances.
    let server = start(&rt)?;
    preload(server.registry(), "HB", plan.heartbeat_instances);
    let cpu0 = cpu_seconds()?;
    let hb = spawn_loadgen(&json!({
        "kind": "heartbeat", "addr": server.local_addr().to_string(), "secs": plan.phase.as_secs_f64(),
        "conns": 8, "app": "HB", "ids": plan.heartbeat_instances,
    }))?
    .finish()?;
    let server_cpu = cpu_seconds()? - cpu0;
    let heartbeats_rps = hb["ok"].as_f64().unwrap_or(0.0) / hb["secs"].as_f64().unwrap_or(1.0);
    check_errors("heartbeats", &hb)?;
    rows.push(row(
        "heartbeats/s (HTTP, keep-alive)",
        format!("{heartbeats_rps:.0}"),
        lat(&hb),
    ));
    let per = |cpu: f64, v: &Value| cpu * 1e6 / v["ok"].as_f64().unwrap_or(1.0).max(1.0);
    let heartbeat_cpu_us = per(server_cpu, &hb);
    rows.push(row(
        "  CPU per heartbeat: server / load generator",
        format!(
            "{heartbeat_cpu_us:.1} µs / {:.1} µs",
            per(hb["cpu_s"].as_f64().unwrap_or(0.0), &hb)
        ),
        format!(
            "server busy {:.0} % of one core",
            server_cpu * 100.0 / hb["secs"].as_f64().unwrap_or(1.0)
        ),
    ));
    rt.block_on(server.shutdown(Duration::from_secs(5)))?;

    // 2. Registrations: POST /apps/{APP} with a ~700-byte JSON body, each a new instance.
    let server = start(&rt)?;
    let cpu0 = cpu_seconds()?;
    let reg = spawn_loadgen(&json!({
        "kind": "register", "addr": server.local_addr().to_string(), "secs": plan.phase.as_secs_f64(),
        "conns": plan.conns,
    }))?
    .finish()?;
    check_errors("registrations", &reg)?;
    let registrations_rps = reg["ok"].as_f64().unwrap_or(0.0) / reg["secs"].as_f64().unwrap_or(1.0);
    let registered = server.registry().len();
    if registered != reg["ok"].as_u64().unwrap_or(0) {
        bail!(
            "{registered} instances registered but the load generator saw {} answers of 204",
            reg["ok"]
        );
    }
    let server_cpu = cpu_seconds()? - cpu0;
    rows.push(row(
        "registrations/s (HTTP, new instances)",
        format!("{registrations_rps:.0}"),
        lat(&reg),
    ));
    rows.push(row(
        "  CPU per registration: server / load generator",
        format!(
            "{:.1} µs / {:.1} µs",
            per(server_cpu, &reg),
            per(reg["cpu_s"].as_f64().unwrap_or(0.0), &reg)
        ),
        format!(
            "server busy {:.0} % of one core",
            server_cpu * 100.0 / reg["secs"].as_f64().unwrap_or(1.0)
        ),
    ));
    rt.block_on(server.shutdown(Duration::from_secs(5)))?;

    // 3. Full fetch of 10k instances: cached per version vs. rebuilt per request (naive).
    let server = start(&rt)?;
    preload(server.registry(), "FETCH", plan.fetch_instances);
    let mut fetch_p99 = 0.0;
    for (gzip, label) in [(false, "JSON"), (true, "JSON+gzip")] {
        let f = spawn_loadgen(&json!({
            "kind": "fetch", "addr": server.local_addr().to_string(), "secs": plan.phase.as_secs_f64() / 2.0,
            "conns": 4, "gzip": gzip,
        }))?
        .finish()?;
        check_errors("full fetch", &f)?;
        let rps = f["ok"].as_f64().unwrap_or(0.0) / f["secs"].as_f64().unwrap_or(1.0);
        if !gzip {
            fetch_p99 = f["p99_us"].as_f64().unwrap_or(0.0) / 1000.0;
        }
        rows.push(row(
            &format!(
                "full fetch {}k instances, {label}, fetches/s",
                plan.fetch_instances / 1000
            ),
            format!("{rps:.0} ({} KiB)", f["bytes"].as_u64().unwrap_or(0) / 1024),
            lat(&f),
        ));
    }
    let naive = naive_full_fetch(
        server.registry(),
        if plan.phase.as_secs() >= 5 { 20 } else { 5 },
    );
    rows.push(row(
        "full fetch rebuilt per request (naive, in-process)",
        format!("{:.0}/s", 1000.0 / naive),
        format!("{naive:.1} ms each"),
    ));
    rt.block_on(server.shutdown(Duration::from_secs(5)))?;

    // 4. Register-to-visible through a long-polled delta, while heartbeats load the server.
    let server = start(&rt)?;
    preload(server.registry(), "HB", plan.heartbeat_instances);
    let background = spawn_loadgen(&json!({
        "kind": "heartbeat", "addr": server.local_addr().to_string(), "secs": 600.0,
        "conns": 8, "app": "HB", "ids": plan.heartbeat_instances, "stop_on_stdin_close": true,
    }))?;
    let vis = spawn_loadgen(&json!({
        "kind": "visible", "addr": server.local_addr().to_string(), "samples": plan.visible_samples,
    }))?
    .finish()?;
    let bg = background.finish()?;
    check_errors("visibility", &vis)?;
    let visible_p99_ms = vis["p99_us"].as_f64().unwrap_or(f64::MAX) / 1000.0;
    rows.push(row(
        &format!(
            "register-to-visible, long-poll delta ({} samples)",
            plan.visible_samples
        ),
        format!("p99 {visible_p99_ms:.1} ms"),
        format!(
            "p50 {:.1} ms, max {:.1} ms",
            vis["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
            vis["max_us"].as_f64().unwrap_or(0.0) / 1000.0
        ),
    ));
    rows.push(row(
        "  background heartbeats/s during it",
        format!(
            "{:.0}",
            bg["ok"].as_f64().unwrap_or(0.0) / bg["secs"].as_f64().unwrap_or(1.0)
        ),
        lat(&bg),
    ));
    rt.block_on(server.shutdown(Duration::from_secs(5)))?;
    drop(rt);

    // 5. Memory per instance, in a fresh process.
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args(["--mem", &plan.mem_instances.to_string()])
        .output()?;
    if !out.status.success() {
        bail!(
            "memory child failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mem: Value = serde_json::from_slice(&out.stdout)?;
    let bytes_per_instance = mem["bytes_per_instance"].as_f64().unwrap_or(0.0);
    rows.push(row(
        &format!("memory, {} instances", plan.mem_instances),
        format!("{bytes_per_instance:.0} B/instance"),
        format!(
            "{:.2} GiB total; {:.0} registrations/s in-process",
            mem["rss_growth"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
            mem["core_registrations_rps"].as_f64().unwrap_or(0.0)
        ),
    ));

    let eureka = [
        (
            "register-to-visible (Eureka defaults)",
            "up to ~60 s",
            "30 s read-only cache + 30 s client fetch (documented, not measured)",
        ),
        (
            "dead instance listed (Eureka defaults)",
            "~3-4 min",
            "lease counted twice (#531) + 60 s eviction + caches (documented)",
        ),
        (
            "dead instance listed (here)",
            "lease + eviction",
            "90 s + <= 5 s by default; tested with a 3 s lease",
        ),
    ];
    for (a, b, c) in eureka {
        rows.push(row(a, b.to_owned(), c.to_owned()));
    }
    print_table(&rows);
    println!(
        "{}",
        json!({
            "heartbeats_rps": heartbeats_rps.round(),
            "registrations_rps": registrations_rps.round(),
            "visible_p99_ms": (visible_p99_ms * 10.0).round() / 10.0,
            "bytes_per_instance": bytes_per_instance.round(),
            "full_fetch_10k_p99_ms": (fetch_p99 * 10.0).round() / 10.0,
            "full_fetch_naive_ms": (naive * 10.0).round() / 10.0,
            "heartbeat_server_cpu_us": (heartbeat_cpu_us * 10.0).round() / 10.0,
            "mem_instances": plan.mem_instances,
        })
    );
    Ok(())
}

fn start(rt: &tokio::runtime::Runtime) -> Result<Server> {
    let mut cfg = ServerConfig {
        bind: "127.0.0.1:0".parse()?,
        ..ServerConfig::default()
    };
    cfg.registry.eviction_interval = Duration::from_secs(3600);
    Ok(rt.block_on(Server::start(cfg))?)
}

fn instance(app: &str, n: usize) -> InstanceInfo {
    let host = format!(
        "ip-10-{}-{}-{}.ec2.internal",
        n >> 16 & 255,
        n >> 8 & 255,
        n & 255
    );
    let mut i = InstanceInfo::new(
        app,
        &format!("{host}:{}:8080", app.to_lowercase()),
        &host,
        8080,
    );
    i.ip_addr = format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255);
    i.home_page_url = Some(format!("http://{host}:8080/"));
    i.status_page_url = Some(format!("http://{host}:8080/actuator/info"));
    i.health_check_url = Some(format!("http://{host}:8080/actuator/health"));
    i.secure_vip_address = i.vip_address.clone();
    i.metadata.insert("management.port", "8080");
    i.metadata.insert("zone", format!("zone-{}", n % 3));
    i
}

fn preload(reg: &Registry, app: &str, n: usize) {
    let now = SystemClock.now();
    for k in 0..n {
        let mut i = instance(app, k);
        i.instance_id = format!("i{k}");
        let _ = reg.register(i, false, now);
    }
}

/// What a server without a response cache pays per full fetch: snapshot + encode.
fn naive_full_fetch(reg: &Registry, rounds: usize) -> f64 {
    let t = Instant::now();
    for _ in 0..rounds {
        let apps = reg.applications_live();
        std::hint::black_box(registry::codec::encode_applications(
            &apps,
            registry::codec::Format::Json,
        ));
    }
    t.elapsed().as_secs_f64() * 1000.0 / rounds as f64
}

fn row(a: &str, b: String, c: String) -> (String, String, String) {
    (a.to_owned(), b, c)
}

fn lat(v: &Value) -> String {
    let ms = |k: &str| v[k].as_f64().unwrap_or(0.0) / 1000.0;
    format!("p50 {:.2} ms, p99 {:.2} ms", ms("p50_us"), ms("p99_us"))
}

fn check_errors(what: &str, v: &Value) -> Result<()> {
    let errors = v["errors"].as_u64().unwrap_or(0);
    if errors > 0 || v["ok"].as_u64().unwrap_or(0) == 0 {
        bail!("{what}: {errors} errors, {} ok: {v}", v["ok"]);
    }
    Ok(())
}

fn print_table(rows: &[(String, String, String)]) {
    println!("| measurement | result | detail |");
    println!("|---|---|---|");
    for (a, b, c) in rows {
        println!("| {a} | {b} | {c} |");
    }
}

struct Child {
    child: std::process::Child,
}

impl Child {
    fn finish(mut self) -> Result<Value> {
        drop(self.child.stdin.take());
        let out = self.child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "load generator failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let line = text
            .lines()
            .last()
            .context("load generator printed nothing")?;
        Ok(serde_json::from_str(line)?)
    }
}

fn spawn_loadgen(spec: &Value) -> Result<Child> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(["--loadgen", &spec.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(Child { child })
}

// ---------------------------------------------------------------- load generator

fn loadgen(spec: &str) -> Result<()> {
    let spec: Value = serde_json::from_str(spec)?;
    // One thread: the generator should take as little of the two cores as it can.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let out = rt.block_on(async move {
        match spec["kind"].as_str() {
            Some("heartbeat" | "register" | "fetch") => closed_loop(&spec).await,
            Some("visible") => visible(&spec).await,
            k => bail!("unknown load kind {k:?}"),
        }
    })?;
    println!("{out}");
    Ok(())
}

/// A keep-alive HTTP/1.1 connection that understands just enough of the answers.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn call(&mut self, req: &[u8]) -> Result<(u16, Vec<u8>)> {
        self.stream.write_all(req).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let status: u16 = head.get(9..12).context("short status line")?.parse()?;
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + len;
                // A Vec grows by 64 bytes per read once full: reserve the whole body.
                self.buf.reserve(total.saturating_sub(self.buf.len()));
                while self.buf.len() < total {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed mid-body");
                    }
                }
                let body = self.buf[end + 4..total].to_vec();
                self.buf.drain(..total);
                return Ok((status, body));
            }
            self.buf.reserve(16 * 1024);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }
}

fn registration(app: &str, id: &str, n: usize) -> Vec<u8> {
    let mut info = instance(app, n);
    info.instance_id = id.to_owned();
    let body = String::from_utf8(registry::codec::instance_json(&info, &info.lease_info))
        .unwrap_or_default();
    format!(
        "POST /eureka/v2/apps/{app} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// `conns` connections, each sending its next request as soon as the last is answered.
async fn closed_loop(spec: &Value) -> Result<Value> {
    let addr = spec["addr"].as_str().context("addr")?.to_owned();
    let secs = spec["secs"].as_f64().unwrap_or(1.0);
    let conns = spec["conns"].as_u64().unwrap_or(16) as usize;
    let kind = spec["kind"].as_str().unwrap_or("").to_owned();
    let stop_on_stdin = spec["stop_on_stdin_close"].as_bool().unwrap_or(false);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if stop_on_stdin {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let _ = std::io::stdin().lock().lines().count();
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (addr, kind, spec, stop) = (addr.clone(), kind.clone(), spec.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await?;
            let (mut ok, mut errors, mut bytes) = (0u64, 0u64, 0usize);
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let ids = spec["ids"].as_u64().unwrap_or(1) as usize;
            let app = spec["app"].as_str().unwrap_or("HB").to_owned();
            let gzip = spec["gzip"].as_bool().unwrap_or(false);
            let fetch = format!(
                "GET /eureka/v2/apps HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n{}\r\n",
                if gzip { "Accept-Encoding: gzip\r\n" } else { "" }
            )
            .into_bytes();
            let mut n = c;
            while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (req, want) = match kind.as_str() {
                    "heartbeat" => {
                        n = (n + conns) % ids;
                        (format!("PUT /eureka/v2/apps/{app}/i{n} HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n").into_bytes(), 200)
                    }
                    "register" => {
                        n += conns;
                        (registration(&format!("REG{}", c % 50), &format!("r{n}"), n), 204)
                    }
                    _ => (fetch.clone(), 200),
                };
                let t = Instant::now();
                let (status, body) = conn.call(&req).await?;
                lat.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                bytes = body.len();
                if status == want { ok += 1 } else { errors += 1 }
            }
            anyhow::Ok((ok, errors, bytes, lat))
        }));
    }
    let (mut ok, mut errors, mut bytes, mut lat) = (0, 0, 0, Vec::new());
    for t in tasks {
        let (o, e, b, l) = t.await??;
        ok += o;
        errors += e;
        bytes = bytes.max(b);
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds()?;
    Ok(summary(
        json!({"ok": ok, "errors": errors, "secs": secs, "bytes": bytes, "cpu_s": cpu_s}),
        &mut lat,
    ))
}

/// Registers a new instance while a long-polled delta waits; the delay is from just
/// before the registration is sent until the delta carrying it has arrived.
async fn visible(spec: &Value) -> Result<Value> {
    let addr = spec["addr"].as_str().context("addr")?.to_owned();
    let samples = spec["samples"].as_u64().unwrap_or(10) as usize;
    let mut writer = Conn::open(&addr).await?;
    let mut poller = Conn::open(&addr).await?;
    let delta = |v: u64| {
        format!("GET /eureka/v2/apps/delta?wait=10s&version={v} HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n\r\n").into_bytes()
    };
    let (_, body) = poller.call(b"GET /eureka/v2/apps/delta HTTP/1.1\r\nHost: bench\r\nAccept: application/json\r\n\r\n").await?;
    let mut version = version_of(&body)?;
    let (mut lat, mut errors) = (Vec::new(), 0u64);
    for k in 0..samples {
        let id = format!("vis-{k}");
        let req = delta(version);
        let poll = tokio::spawn(async move {
            let r = poller.call(&req).await;
            (poller, r, Instant::now())
        });
        // Let the long poll reach the server before the change.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let t0 = Instant::now();
        let (status, _) = writer.call(&registration("VISIBLE", &id, k)).await?;
        let (p, r, arrived) = poll.await?;
        poller = p;
        let (_, body) = r?;
        if status != 204 || !String::from_utf8_lossy(&body).contains(&format!("\"{id}\"")) {
            errors += 1;
        }
        version = version_of(&body)?;
        lat.push(arrived.saturating_duration_since(t0).as_micros() as u32);
    }
    Ok(summary(
        json!({"ok": samples as u64 - errors, "errors": errors}),
        &mut lat,
    ))
}

fn version_of(body: &[u8]) -> Result<u64> {
    let v: Value = serde_json::from_slice(body)?;
    Ok(v["applications"]["versions__delta"]
        .as_str()
        .context("versions__delta")?
        .parse()?)
}

fn summary(mut v: Value, lat: &mut [u32]) -> Value {
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    v["p50_us"] = json!(q(0.50));
    v["p99_us"] = json!(q(0.99));
    v["max_us"] = json!(lat.last().copied().unwrap_or(0));
    v
}

/// User + system CPU time of this process so far (from /proc/self/stat, 100 Hz ticks).
fn cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

// ---------------------------------------------------------------- memory child

fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).context("statm")?.parse()?;
    Ok(pages * 4096)
}

fn mem_child(n: usize) -> Result<()> {
    let reg = Registry::new(registry::Config::default())?;
    let before = rss_bytes()?;
    let now = SystemClock.now();
    let t = Instant::now();
    for k in 0..n {
        reg.register(instance(&format!("APP{}", k % 1000), k), false, now)?;
    }
    let secs = t.elapsed().as_secs_f64();
    let after = rss_bytes()?;
    if reg.len() != n as u64 {
        bail!("registered {} of {n}", reg.len());
    }
    let growth = after.saturating_sub(before);
    println!(
        "{}",
        json!({
            "instances": n, "rss_growth": growth, "bytes_per_instance": growth as f64 / n as f64,
            "core_registrations_rps": n as f64 / secs,
        })
    );
    std::hint::black_box(&reg);
    Ok(())
}
