//! `cargo xtask`: the workspace's single entry point.
//!
//! ```text
//! cargo xtask services up|status|down   RabbitMQ, Redis, ZooKeeper on loopback
//! cargo xtask test [-- ARGS]            services up, then every test of the workspace
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod services;
#[cfg(test)]
mod tidy;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  services up|status|down   make RabbitMQ, Redis and ZooKeeper answer on loopback
                            (endpoints from AMQP_URL, REDIS_URL, ZK_CONNECT)
  test [-- ARGS]            services up, then `cargo test --workspace` (unit,
                            integration and doc tests); ARGS go to cargo test";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = args.split_first().map_or(("", &[][..]), |(c, r)| (c.as_str(), r));
    match command {
        "services" => services::run(rest),
        "test" => test(rest),
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
    let extra = args.strip_prefix(&["--".to_owned()][..]).unwrap_or(args);
    cargo(&["test", "--workspace"], extra)
}

/// Runs `cargo <args> <extra>` in the workspace root, failing on failure.
fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(&cargo)
        .args(args)
        .args(extra)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {} {}` failed with {status}", args.join(" "), extra.join(" "));
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
