//! The `metrics` facade's recorder, served to Prometheus.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A Prometheus endpoint (`GET /metrics` or any path) serving every counter,
/// gauge and histogram recorded through the `metrics` facade in this
/// process: the crates' own (`mq_reliable_*`, `ratelimit_*`,
/// `spill_log_*`, ...) and the app's.
#[derive(Debug)]
pub struct MetricsEndpoint {
    addr: SocketAddr,
    handle: PrometheusHandle,
}

impl MetricsEndpoint {
    /// Installs the global recorder and starts serving on `addr` (a free
    /// loopback port when `None`). Must run inside a tokio runtime, before
    /// the crates build their metric handles (ratelimit registers them when
    /// a cache is built).
    pub fn install(addr: Option<SocketAddr>) -> Result<MetricsEndpoint> {
        let addr = match addr {
            Some(a) => a,
            None => SocketAddr::from(([127, 0, 0, 1], crate::free_port()?)),
        };
        let (recorder, exporter) = PrometheusBuilder::new()
            .with_http_listener(addr)
            .build()
            .with_context(|| format!("starting the Prometheus endpoint on {addr}"))?;
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder)
            .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
        tokio::spawn(async move {
            if let Err(e) = exporter.await {
                tracing::warn!("the Prometheus endpoint stopped: {e:?}");
            }
        });
        tracing::info!("metrics for Prometheus: http://{addr}/metrics");
        Ok(MetricsEndpoint { addr, handle })
    }

    /// The endpoint's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("http://{}/metrics", self.addr)
    }

    /// What the recorder holds now, rendered in-process.
    #[must_use]
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Fetches the endpoint over HTTP, as Prometheus would.
    pub async fn scrape(&self) -> Result<String> {
        scrape(self.addr).await
    }

    /// Scrapes the endpoint and prints (on stdout) the samples whose metric
    /// name starts with one of `prefixes`, leaving out those still at zero.
    pub async fn print_key_metrics(&self, prefixes: &[&str]) -> Result<()> {
        let body = self.scrape().await?;
        print_samples(
            &format!("key metrics (scraped from {})", self.url()),
            &body,
            prefixes,
        );
        Ok(())
    }
}

/// Fetches `http://ADDR/metrics` (any Prometheus endpoint, this process's or
/// another's, such as a `registry-server --metrics-addr`) and returns the
/// text page.
pub async fn scrape(addr: SocketAddr) -> Result<String> {
    let url = format!("http://{addr}/metrics");
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    // HTTP/1.0: the server closes after the response, with no chunking.
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("{url} answered without headers"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{url} answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Prints (on stdout) `title:` and the samples of a scraped page whose
/// metric name starts with one of `prefixes`, leaving out those at zero.
pub fn print_samples(title: &str, body: &str, prefixes: &[&str]) {
    println!("{title}:");
    let (mut shown, mut zeros) = (0, 0);
    for line in body.lines() {
        if line.starts_with('#') || !prefixes.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        if line.ends_with(" 0") {
            zeros += 1;
        } else {
            println!("  {line}");
            shown += 1;
        }
    }
    if shown == 0 {
        println!("  (none above zero with prefixes {prefixes:?})");
    }
    if zeros > 0 {
        println!("  ({zeros} more samples at zero)");
    }
}

/// The sum of every sample of metric `name` (whatever its labels) in a
/// scraped page; `None` when the page has none.
#[must_use]
pub fn metric_sum(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.rsplit_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn sums_a_metric_over_its_labels_and_only_that_metric() {
        let page = "# HELP x_total things\n# TYPE x_total counter\n\
                    x_total{peer=\"a\"} 2\nx_total{peer=\"b {odd}\"} 3\n\
                    x_total_more 7\ny 1\n";
        assert_eq!(metric_sum(page, "x_total"), Some(5.0));
        assert_eq!(metric_sum(page, "y"), Some(1.0));
        assert_eq!(metric_sum(page, "z"), None);
    }
}
