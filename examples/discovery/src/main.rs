//! # discovery: services find each other, and forget the dead ones
//!
//! A shop runs its services behind a Eureka-compatible registry
//! (`crates/registry`). The story:
//!
//! 1. Three `registry-server` processes start and replicate to each other.
//!    The dashboard of each is printed.
//! 2. Five service instances start as processes of their own (this same
//!    binary, `discovery instance ...`): three of `inventory`, two of
//!    `pricing`. Each registers and heartbeats with `RegistryClient`, each
//!    talking to a different node first, so the nodes only learn of most
//!    instances through replication. Every node soon lists all five.
//! 3. A storefront (a fetch-only `RegistryClient` that long-polls the
//!    registry's delta) calls `inventory` round-robin, fifty times a second.
//!    An instance answers a call with its id.
//! 4. `inventory-2` is killed with SIGKILL, as a crashed machine would be:
//!    it cannot de-register. Calls that pick it fail and are retried on the
//!    next instance (what Ribbon does for a Eureka client). Every node keeps
//!    listing it until its lease runs out, then evicts it; the storefront's
//!    copy drops it within milliseconds (the long-polled delta) and it is
//!    never picked again. The healthy instances stay listed.
//! 5. The other instances shut down cleanly: they de-register, and every
//!    node forgets them at once, without waiting for a lease.
//!
//! The scenario ends with one JSON line of promises (what was promised,
//! what was measured, whether it held) and exits non-zero if one failed.
//!
//! **Demo settings**, so that it runs in seconds: a lease of 5 s with a
//! heartbeat every second (Eureka: 90 s and 30 s), an eviction pass every
//! second (here 5 s by default, Eureka 60 s) and self-preservation off (a
//! fresh cluster has no minute of renewal history yet, so it would hold every
//! eviction back). All are flags.
//!
//! Run it with `cargo xtask demo discovery`, or build `registry-server` and
//! this binary in release and run `target/release/discovery`.
//! Each registry node serves its own metrics (`registry_*`: registrations,
//! renewals and cancels by origin, evictions, instances, replication) for
//! Prometheus (`registry-server --metrics-addr`); the scenario reads every
//! node's `registry_evictions_total` to check that only the dead instance was
//! evicted, and prints each node's counters at the end. The storefront's own
//! metrics (`discovery_*`: calls, failures, retries) are served at the
//! printed URL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use demo_support::{
    MetricsEndpoint, Phase, Process, Promises, demo_setting, free_ports, helper_binary, metric_sum,
    print_samples, scrape, thousands,
};
use registry::{ClientConfig, InstanceInfo, RegistryClient};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tracing::info;

/// The services of the shop and how many instances each runs.
const SERVICES: [(&str, usize); 2] = [("inventory", 3), ("pricing", 2)];
/// The instance that crashes.
const VICTIM: &str = "inventory-2";
/// The service the storefront calls.
const CALLED: &str = "inventory";
/// How many registry nodes.
const NODES: usize = 3;

#[derive(Debug, Parser)]
#[command(
    name = "discovery",
    about = "Three replicated registry nodes; services register, heartbeat, crash and are evicted"
)]
struct Args {
    #[command(subcommand)]
    role: Option<Role>,
    /// Lease of each instance, in seconds (Eureka's default: 90).
    #[arg(long, default_value_t = 5)]
    lease_secs: u32,
    /// Heartbeat interval, in seconds (Eureka's default: 30).
    #[arg(long, default_value_t = 1)]
    renew_secs: u32,
    /// How often the registry nodes evict expired leases, in ms.
    #[arg(long, default_value_t = 1000)]
    eviction_interval_ms: u64,
    /// Where to serve Prometheus metrics (default: a free loopback port).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// One service instance: registers, heartbeats, answers each TCP
    /// connection with its id, and de-registers when stdin closes.
    #[command(hide = true)]
    Instance(InstanceArgs),
}

#[derive(Debug, clap::Args)]
struct InstanceArgs {
    #[arg(long)]
    app: String,
    #[arg(long)]
    id: String,
    /// Registry service URLs, tried in order.
    #[arg(long, value_delimiter = ',')]
    registry: Vec<String>,
    #[arg(long)]
    lease_secs: u32,
    #[arg(long)]
    renew_secs: u32,
}

#[tokio::main]
async fn main() -> ExitCode {
    demo_support::init_logging();
    let args = Args::parse();
    let result = match args.role {
        Some(Role::Instance(a)) => run_instance(a).await.map(|()| ExitCode::SUCCESS),
        None => scenario(args).await,
    };
    demo_support::exit_code("discovery", result)
}

async fn scenario(args: Args) -> Result<ExitCode> {
    let metrics = MetricsEndpoint::install(args.metrics_addr)?;
    let server_bin = helper_binary("registry", "registry-server")?;
    let me = std::env::current_exe()?;
    let lease = Duration::from_secs(args.lease_secs.into());
    let renew = Duration::from_secs(args.renew_secs.into());
    let eviction = Duration::from_millis(args.eviction_interval_ms);
    demo_setting("instance lease", format!("{lease:?}"), "90 s (Eureka)");
    demo_setting("heartbeat interval", format!("{renew:?}"), "30 s (Eureka)");
    demo_setting("eviction pass", format!("every {eviction:?}"), "every 5 s");
    demo_setting(
        "self-preservation",
        "off (a fresh cluster has no minute of renewals yet)",
        "on",
    );
    let mut promises = Promises::new("discovery");

    // 1. Three registry nodes, each with the other two as peers.
    let mut nodes = start_nodes(&server_bin, eviction).await?;
    let urls: Vec<String> = nodes.iter().map(|n| n.service_url.clone()).collect();
    for n in &nodes {
        info!("registry node {} dashboard: {}/", n.index + 1, n.base_url);
    }

    // One fetch-only client per node shows what that node lists.
    let views = urls
        .iter()
        .map(|u| fetch_only(vec![u.clone()]))
        .collect::<Result<Vec<_>>>()?;

    // 2. The service instances register, each with a different node first.
    let started = Instant::now();
    let mut instances = start_instances(&me, &urls, &args).await?;
    let ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    let phase = Phase::start("replicating registrations", Duration::from_secs(3));
    let replicated = wait_until(Duration::from_secs(15), || {
        let listing = views.iter().filter(|v| ids.iter().all(|id| listed(v, id)));
        let n = listing.count();
        phase.set_message(format!("{n} of {NODES} nodes list all {}", ids.len()));
        n == NODES
    })
    .await;
    phase.finish();
    let replicated_in = started.elapsed();
    promises.check(
        "every registration reaches every node",
        format!(
            "{} instances on {} of {NODES} nodes, {:.2} s after the first started",
            ids.len(),
            views
                .iter()
                .filter(|v| ids.iter().all(|id| listed(v, id)))
                .count(),
            replicated_in.as_secs_f64()
        ),
        replicated,
    );
    if !replicated {
        bail!("the registrations never reached every node; see the log above");
    }

    // 3. The storefront calls inventory round-robin.
    let storefront = fetch_only(urls.clone())?;
    if !wait_until(Duration::from_secs(10), || {
        storefront.instances_for_vip(CALLED).len() == SERVICES[0].1
    })
    .await
    {
        bail!("the storefront never saw the {CALLED} instances");
    }
    let traffic = Traffic::start(storefront.clone());
    let warm = Phase::start("storefront traffic", Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    warm.finish();

    // 4. The victim crashes: no de-registration, only missing heartbeats.
    let victim = instances
        .iter_mut()
        .find(|i| i.id == VICTIM)
        .context("the victim instance")?;
    victim.process.kill().await?;
    let killed = Instant::now();
    info!("SIGKILL {VICTIM}: it cannot de-register; the nodes must notice its silence");
    let bound = lease + eviction + Duration::from_secs(4);
    let phase = Phase::start("waiting for the lease to expire", lease + eviction);
    let mut evicted: Vec<Option<Duration>> = vec![None; NODES];
    let mut storefront_dropped = None;
    while killed.elapsed() < bound {
        for (i, view) in views.iter().enumerate() {
            if evicted[i].is_none() && !listed(view, VICTIM) {
                evicted[i] = Some(killed.elapsed());
                info!(
                    "node {} evicted {VICTIM} {:.2} s after the kill",
                    i + 1,
                    killed.elapsed().as_secs_f64()
                );
            }
        }
        if storefront_dropped.is_none() && !listed(&storefront, VICTIM) {
            storefront_dropped = Some(killed.elapsed());
            traffic.victim_dropped.store(true, Ordering::Relaxed);
        }
        let done = evicted.iter().flatten().count();
        phase.set_message(format!("{done} of {NODES} nodes evicted {VICTIM}"));
        if done == NODES && storefront_dropped.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    phase.finish();
    let after = Phase::start("traffic after the eviction", Duration::from_secs(2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    after.finish();
    let report = traffic.stop().await?;
    let survivors: Vec<&String> = ids.iter().filter(|id| *id != VICTIM).collect();
    let kept = views
        .iter()
        .filter(|v| survivors.iter().all(|id| listed(v, id)))
        .count();
    // What each node itself counted, from its Prometheus endpoint.
    let mut node_evictions = Vec::new();
    for n in &nodes {
        let page = scrape(n.metrics_addr).await?;
        node_evictions.push(metric_sum(&page, "registry_evictions_total").unwrap_or(0.0) as u64);
    }

    let secs: Vec<f64> = evicted
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    let (first, last) = secs
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let earliest = lease.saturating_sub(renew).as_secs_f64() - 0.5;
    let latest = (lease + eviction).as_secs_f64() + 1.5;
    promises.check(
        "a dead instance is evicted after its lease, not before",
        if secs.is_empty() {
            format!("never evicted within {:.0} s", bound.as_secs_f64())
        } else {
            format!(
                "gone from {} of {NODES} nodes {} s after SIGKILL \
                 (lease {} s, heartbeat {} s, eviction pass {:.1} s)",
                secs.len(),
                if last - first < 0.05 {
                    format!("{last:.1}")
                } else {
                    format!("{first:.1}-{last:.1}")
                },
                lease.as_secs(),
                renew.as_secs(),
                eviction.as_secs_f64()
            )
        },
        secs.len() == NODES && first >= earliest && last <= latest,
    );
    promises.check(
        "only the dead instance is evicted",
        format!(
            "{} live instances still listed on {kept} of {NODES} nodes; \
             registry_evictions_total per node: {}",
            survivors.len(),
            node_evictions
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        kept == NODES && node_evictions.iter().all(|&n| n == 1),
    );
    let node1_evicted = evicted[0].map(|d| d.as_secs_f64());
    promises.check(
        "clients stop picking a dead instance once the registry evicts it",
        match (storefront_dropped, node1_evicted) {
            (Some(d), Some(e)) => format!(
                "storefront dropped {VICTIM} {:.0} ms after its node did; {} of {} calls \
                 since went to it",
                (d.as_secs_f64() - e).max(0.0) * 1000.0,
                report.to_victim_after_drop,
                report.after_drop
            ),
            _ => format!("the storefront still lists {VICTIM}"),
        },
        storefront_dropped.is_some() && report.to_victim_after_drop == 0 && report.after_drop > 0,
    );
    promises.check(
        "every storefront call is answered by a live instance",
        format!(
            "{} of {} answered ({} retried on another instance during the lease)",
            thousands(report.answered),
            thousands(report.calls),
            report.retried
        ),
        report.calls > 0 && report.answered == report.calls,
    );
    let spread: Vec<String> = report
        .per_instance
        .iter()
        .map(|(id, n)| format!("{id} {n}"))
        .collect();
    info!("calls answered per instance: {}", spread.join(", "));

    // 5. The others shut down cleanly and de-register.
    let stopping = Instant::now();
    for i in instances.iter_mut().filter(|i| i.id != VICTIM) {
        i.process.close_stdin();
    }
    let phase = Phase::start("clean shutdown", Duration::from_secs(1));
    let forgotten = wait_until(Duration::from_secs(5), || {
        views
            .iter()
            .all(|v| survivors.iter().all(|id| !listed(v, id)))
    })
    .await;
    phase.finish();
    promises.check(
        "a clean shutdown de-registers without waiting for the lease",
        if forgotten {
            format!(
                "{} instances gone from {NODES} of {NODES} nodes in {:.2} s",
                survivors.len(),
                stopping.elapsed().as_secs_f64()
            )
        } else {
            "some instances were still listed after 5 s".to_owned()
        },
        forgotten,
    );
    for i in &mut instances {
        i.process.wait_or_kill(Duration::from_secs(5)).await?;
    }

    // The dashboard serves what the node holds.
    let page = registry::reqwest::get(format!("{}/", nodes[0].base_url))
        .await
        .context("fetching the dashboard")?;
    info!(
        "dashboard {}/ answered {}",
        nodes[0].base_url,
        page.status()
    );

    println!("dashboard: {}/", nodes[0].base_url);
    for n in &nodes {
        let page = scrape(n.metrics_addr).await?;
        print_samples(
            &format!(
                "registry node {} metrics (scraped from http://{}/metrics)",
                n.index + 1,
                n.metrics_addr
            ),
            &page,
            &[
                "registry_registrations_total",
                "registry_renewals_total",
                "registry_cancels_total",
                "registry_evictions_total",
                "registry_instances",
                "registry_self_preservation",
                "registry_replication_",
            ],
        );
    }
    metrics.print_key_metrics(&["discovery_"]).await?;
    storefront.shutdown().await.ok();
    for v in &views {
        v.shutdown().await.ok();
    }
    for n in &mut nodes {
        n.process.terminate(Duration::from_secs(10)).await?;
    }
    Ok(promises.finish())
}

/// A running `registry-server`.
struct Node {
    index: usize,
    base_url: String,
    service_url: String,
    /// Where it serves its `registry_*` metrics for Prometheus.
    metrics_addr: SocketAddr,
    process: Process,
}

/// Starts the nodes one after the other (each copies the registry from a
/// peer that already serves, as a restarted node would).
async fn start_nodes(binary: &std::path::Path, eviction: Duration) -> Result<Vec<Node>> {
    let all = free_ports(2 * NODES)?;
    let (ports, metrics_ports) = all.split_at(NODES);
    let url = |p: u16| format!("http://127.0.0.1:{p}/eureka/v2");
    let mut nodes = Vec::new();
    for (index, &port) in ports.iter().enumerate() {
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_ports[index]));
        let peers: Vec<String> = ports
            .iter()
            .filter(|&&p| p != port)
            .map(|&p| url(p))
            .collect();
        let mut cmd = Command::new(binary);
        cmd.args(["--port", &port.to_string()])
            .args(["--peers", &peers.join(",")])
            .args([
                "--eviction-interval",
                &format!("{}ms", eviction.as_millis()),
            ])
            .arg("--no-self-preservation")
            .args(["--metrics-addr", &metrics_addr.to_string()])
            .env("RUST_LOG", "warn");
        let mut process = Process::spawn(format!("registry-{}", index + 1), cmd)?;
        let line = process
            .wait_for_line(Duration::from_secs(20), |l| l.contains("listening on"))
            .await?;
        let base_url = line
            .rsplit(' ')
            .next()
            .context("the listening line names no URL")?
            .to_owned();
        info!("registry node {} serves {base_url}", index + 1);
        nodes.push(Node {
            index,
            service_url: format!("{base_url}/eureka/v2"),
            base_url,
            metrics_addr,
            process,
        });
    }
    Ok(nodes)
}

/// A service instance process.
struct Instance {
    id: String,
    /// The registry node it registers with (the others get it by replication).
    first_node: String,
    process: Process,
}

async fn start_instances(
    me: &std::path::Path,
    urls: &[String],
    args: &Args,
) -> Result<Vec<Instance>> {
    let mut instances = Vec::new();
    for (app, count) in SERVICES {
        for n in 1..=count {
            let id = format!("{app}-{n}");
            // Each instance talks to a different node first.
            let mut order = urls.to_vec();
            order.rotate_left(instances.len() % urls.len());
            let mut cmd = Command::new(me);
            cmd.args(["instance", "--app", app, "--id", &id])
                .args(["--registry", &order.join(",")])
                .args(["--lease-secs", &args.lease_secs.to_string()])
                .args(["--renew-secs", &args.renew_secs.to_string()])
                .env("RUST_LOG", "warn");
            instances.push(Instance {
                id: id.clone(),
                first_node: order[0].clone(),
                process: Process::spawn(id, cmd)?,
            });
        }
    }
    for i in &mut instances {
        let line = i
            .process
            .wait_for_line(Duration::from_secs(15), |l| l.starts_with("registered"))
            .await?;
        info!("{} {line}, via {}", i.id, i.first_node);
    }
    Ok(instances)
}

/// A client that registers nothing and keeps a copy of the registry,
/// updated by long-polled deltas.
fn fetch_only(service_urls: Vec<String>) -> Result<RegistryClient> {
    let client = RegistryClient::new(ClientConfig {
        service_urls,
        instance: None,
        long_poll: Some(Duration::from_secs(10)),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    })?;
    client.start();
    Ok(client)
}

/// Whether the client's copy lists instance `id` (of any service).
fn listed(client: &RegistryClient, id: &str) -> bool {
    SERVICES.iter().any(|(app, _)| {
        client
            .application(app)
            .iter()
            .any(|i| i.info.instance_id == id)
    })
}

/// Polls `done` every 10 ms until it holds (true) or `timeout` passes (false).
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The storefront's calls to `inventory`, 50 a second.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Set once the storefront's copy no longer lists the victim.
    victim_dropped: Arc<AtomicBool>,
    task: JoinHandle<TrafficReport>,
}

#[derive(Debug, Default)]
struct TrafficReport {
    calls: u64,
    answered: u64,
    retried: u64,
    after_drop: u64,
    to_victim_after_drop: u64,
    per_instance: BTreeMap<String, u64>,
}

impl Traffic {
    fn start(client: RegistryClient) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let victim_dropped = Arc::new(AtomicBool::new(false));
        let (s, d) = (stop.clone(), victim_dropped.clone());
        let task = tokio::spawn(async move {
            let mut report = TrafficReport::default();
            let mut every = tokio::time::interval(Duration::from_millis(20));
            while !s.load(Ordering::Relaxed) {
                every.tick().await;
                let dropped = d.load(Ordering::Relaxed);
                report.calls += 1;
                report.after_drop += u64::from(dropped);
                // A failed call is retried on the next instance, up to 3 tries.
                for attempt in 0..3 {
                    let Some(pick) = client.next_instance(CALLED) else {
                        break;
                    };
                    let id = pick.info.instance_id.clone();
                    if dropped && id == VICTIM {
                        report.to_victim_after_drop += 1;
                    }
                    let addr = format!("{}:{}", pick.info.host_name, pick.info.port.port);
                    match call(&addr).await {
                        Ok(answer) if answer == id => {
                            metrics::counter!("discovery_calls_total", "instance" => id.clone())
                                .increment(1);
                            report.answered += 1;
                            *report.per_instance.entry(id).or_default() += 1;
                            break;
                        }
                        Ok(other) => {
                            tracing::warn!("{addr} answered {other:?}, expected {id}");
                        }
                        Err(e) => {
                            metrics::counter!("discovery_call_failures_total", "instance" => id.clone())
                                .increment(1);
                            tracing::debug!("call to {id} failed: {e:#}");
                        }
                    }
                    if attempt == 0 {
                        report.retried += 1;
                        metrics::counter!("discovery_call_retries_total").increment(1);
                    }
                }
            }
            report
        });
        Traffic {
            stop,
            victim_dropped,
            task,
        }
    }

    async fn stop(self) -> Result<TrafficReport> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// One call: connect, read the instance's id line.
async fn call(addr: &str) -> Result<String> {
    let limit = Duration::from_millis(500);
    let mut stream = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .context("connect timed out")??;
    let mut answer = String::new();
    tokio::time::timeout(limit, stream.read_to_string(&mut answer))
        .await
        .context("read timed out")??;
    Ok(answer.trim().to_owned())
}

/// The instance process: register, heartbeat, answer calls until stdin closes.
async fn run_instance(a: InstanceArgs) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut info = InstanceInfo::new(&a.app, &a.id, "127.0.0.1", port);
    info.lease_info.renewal_interval_secs = a.renew_secs;
    info.lease_info.duration_secs = a.lease_secs;
    let client = RegistryClient::new(ClientConfig {
        service_urls: a.registry,
        instance: Some(info),
        request_timeout: Duration::from_secs(2),
        ..ClientConfig::default()
    })?;
    client.start();
    if !wait_until(Duration::from_secs(10), || client.stats().registrations > 0).await {
        bail!("{} could not register within 10 s", a.id);
    }
    println!("registered on port {port}");
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((mut stream, _)) = accepted {
                    let _ = stream.write_all(format!("{}\n", a.id).as_bytes()).await;
                }
            }
            read = stdin.read_line(&mut line) => {
                if matches!(read, Ok(0) | Err(_)) {
                    break; // stdin closed: shut down cleanly
                }
                line.clear();
            }
        }
    }
    client.shutdown().await?; // de-registers
    Ok(())
}
