//! `cargo xtask`: the workspace's single entry point.
//!
//! ```text
//! cargo xtask services up|status|down   RabbitMQ, Redis, ZooKeeper on loopback
//! cargo xtask test [-- ARGS]            services up, then every test of the workspace
//! cargo xtask demo [SCENARIO...]        the example apps end to end, one row per promise
//! cargo xtask bench [--smoke] [NAME...] every crate's benchmark, into BENCHMARKS.md
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench;
mod chart;
mod demo;
mod prereqs;
mod services;
#[cfg(test)]
mod tidy;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  services up|status|down   make RabbitMQ, Redis and ZooKeeper answer on loopback
                            (endpoints from AMQP_URL, REDIS_URL, ZK_CONNECT)
  test [-- ARGS]            services up, test tools (chromium, eureka-js-client)
                            installed, then `cargo test --workspace` (unit,
                            integration and doc tests); ARGS go to cargo test
  bench [--smoke] [NAME...] every crate's benchmark (release) and BENCHMARKS.md;
                            --smoke: a few seconds each, debug build, no file
  demo [SCENARIO...]        services up, build the example apps (release), run
                            order-service, hot-cache, discovery, election (or
                            those named) and print one row per promise";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args
        .split_first()
        .map_or(("", &[][..]), |(c, r)| (c.as_str(), r));
    match command {
        "services" => services::run(rest),
        "test" => test(rest),
        "bench" => bench::run(rest),
        "demo" => demo::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        _ => bail!("{USAGE}"),
    }
}

/// `services up`, then every test of the workspace, doctests included.
fn test(args: &[String]) -> Result<()> {
    services::up()?;
    prereqs::ensure()?;
    let extra = args.strip_prefix(&["--".to_owned()][..]).unwrap_or(args);
    cargo(&["test", "--workspace"], extra)
}

/// The cargo that runs us, so that nested builds use the same toolchain.
fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// One line naming the machine: CPU model, cores, memory, kernel.
fn machine_description() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / (1024 * 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {mem_gib} GiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Runs `cargo <args> <extra>` in the workspace root, failing on failure.
fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let cargo = cargo_bin();
    let status = Command::new(&cargo)
        .args(args)
        .args(extra)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!(
            "`cargo {} {}` failed with {status}",
            args.join(" "),
            extra.join(" ")
        );
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
