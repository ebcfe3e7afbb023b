//! `registry-server`: a Eureka-compatible registry node.
//!
//! ```text
//! registry-server --port 8761 [--peers http://127.0.0.1:8762/eureka/v2,...] [--eviction-interval 5s]
//!                 [--metrics-addr 127.0.0.1:9761]
//! ```
//!
//! Prints `registry-server listening on http://ADDR` once it serves; SIGTERM or Ctrl-C
//! stops it cleanly (in-flight requests finish, replication queues drain) with exit 0.
//! With `--metrics-addr` it serves the `registry_*` metrics (see `registry::metrics`)
//! for Prometheus at `http://ADDR/metrics`, and prints `registry-server metrics on
//! http://ADDR/metrics` next.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use registry::{Auth, Server, ServerConfig};

/// A Eureka-compatible service registry held in memory.
#[derive(Debug, Parser)]
#[command(name = "registry-server", version)]
struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Peer service URLs, comma-separated (e.g. http://127.0.0.1:8762/eureka/v2).
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// How often expired leases are evicted (e.g. 5s, 500ms, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    eviction_interval: Duration,
    /// How long changes stay in the delta queue.
    #[arg(long, value_parser = parse_duration, default_value = "180s")]
    delta_retention: Duration,
    /// Self-preservation threshold (share of expected renewals per minute).
    #[arg(long, default_value_t = 0.85)]
    renewal_percent_threshold: f64,
    /// Turn self-preservation off (expired leases always evicted).
    #[arg(long)]
    no_self_preservation: bool,
    /// Require credentials for mutating requests: `bearer:TOKEN` or `basic:USER:PASSWORD`.
    /// Also read from REGISTRY_AUTH, which keeps it out of `ps`.
    #[arg(long, env = "REGISTRY_AUTH", hide_env_values = true)]
    auth: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// How long shutdown waits for in-flight requests and replication.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    shutdown_grace: Duration,
    /// Serve the `registry_*` metrics for Prometheus on this address (e.g. 127.0.0.1:9761).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit())
        .map_or((t, "s"), |i| t.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long")),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s or m)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("registry-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> registry::Result<()> {
    // Before the server: the registry registers its metric handles when built.
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| std::io::Error::other(format!("metrics endpoint on {addr}: {e}")))?;
    }
    let mut cfg = ServerConfig {
        bind: SocketAddr::new(args.bind, args.port),
        peers: args
            .peers
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .collect(),
        auth: args.auth.as_deref().map(Auth::parse).transpose()?,
        max_body_bytes: args.max_body_bytes,
        ..ServerConfig::default()
    };
    cfg.max_batch_body_bytes = cfg.max_batch_body_bytes.max(cfg.max_body_bytes);
    cfg.registry.eviction_interval = args.eviction_interval;
    cfg.registry.delta_retention = args.delta_retention;
    cfg.registry.renewal_percent_threshold = args.renewal_percent_threshold;
    cfg.registry.self_preservation = !args.no_self_preservation;
    let server = Server::start(cfg).await?;
    println!(
        "registry-server listening on http://{}",
        server.local_addr()
    );
    if let Some(addr) = args.metrics_addr {
        println!("registry-server metrics on http://{addr}/metrics");
    }
    wait_for_signal().await;
    eprintln!("registry-server: shutting down");
    server.shutdown(args.shutdown_grace).await?;
    println!("registry-server stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("registry-server: cannot watch SIGTERM ({e}); Ctrl-C still works");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
