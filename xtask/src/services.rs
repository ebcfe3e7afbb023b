//! `cargo xtask services up|status|down`: RabbitMQ, Redis and ZooKeeper on
//! loopback, from Debian's packages.
//!
//! A service that already answers at its endpoint is used as it is. One that
//! does not is started with its data and log under `target/services/<name>/`,
//! after installing its package with `apt-get` when we are root. A marker file
//! (`started-by-xtask`) records what `up` started, so that `down` stops only
//! that and never a server somebody else runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::{Service, ZooKeeperServer};

/// What `up` found or did for one service.
enum Origin {
    External,
    StartedNow,
    StartedEarlier,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("status") => status(),
        Some("down") => down(),
        _ => bail!("usage: cargo xtask services up|status|down"),
    }
}

/// Makes every service answer, starting (and installing) what is missing.
pub(crate) fn up() -> Result<()> {
    for service in Service::ALL {
        let origin = up_one(service)?;
        let how = match origin {
            Origin::External => "already running, used as is",
            Origin::StartedNow => "started by xtask",
            Origin::StartedEarlier => "started earlier by xtask",
        };
        println!("{:<10} up    {:<22} {how}", service.name(), service.addr()?);
    }
    Ok(())
}

fn status() -> Result<()> {
    let mut all_up = true;
    for service in Service::ALL {
        let addr = service.addr()?;
        let answering = service.probe(Duration::from_secs(2)).is_ok();
        all_up &= answering;
        let owner = match marker(service).exists() {
            true => format!("started by xtask, log {}", log_file(service).display()),
            false => "not started by xtask".to_owned(),
        };
        let state = if answering { "up" } else { "down" };
        println!("{:<10} {state:<5} {addr:<22} {owner}", service.name());
    }
    if !all_up {
        println!("start what is down with `cargo xtask services up`");
    }
    Ok(())
}

/// Stops what `up` started. A service that `up` started but that no longer
/// answers (it died, or its data was wiped) is treated as stopped: what may
/// be left of it is stopped on a best-effort basis, its marker is removed,
/// and `down` says so instead of failing on every later run.
fn down() -> Result<()> {
    for service in Service::ALL {
        if !marker(service).exists() {
            println!("{:<10} left alone (not started by xtask)", service.name());
            continue;
        }
        if service.probe(Duration::from_secs(2)).is_ok() {
            stop(service, false)?;
            fs::remove_file(marker(service))?;
            println!("{:<10} stopped", service.name());
            continue;
        }
        let leftover = match stop(service, true) {
            Ok(()) => String::new(),
            Err(e) => format!("; stopping what was left: {e:#}"),
        };
        fs::remove_file(marker(service))?;
        println!(
            "{:<10} not answering at {}: treated as stopped, marker removed{leftover}",
            service.name(),
            service.addr()?
        );
    }
    Ok(())
}

fn up_one(service: Service) -> Result<Origin> {
    let addr = service.addr()?;
    if service.probe(Duration::from_secs(2)).is_ok() {
        return Ok(match marker(service).exists() {
            true => Origin::StartedEarlier,
            false => Origin::External,
        });
    }
    if !addr.ip().is_loopback() {
        bail!(
            "{service} is not answering at {addr} ({}={}), and xtask only starts \
             services on loopback",
            service.env_var(),
            service.url()
        );
    }
    ensure_installed(service)?;
    let dir = service_dir(service);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "{:<10} starting on port {} (log {})",
        service.name(),
        addr.port(),
        log_file(service).display()
    );
    start(service, addr.port(), &dir)?;
    fs::write(marker(service), addr.port().to_string())?;
    let wait = match service {
        Service::RabbitMq => Duration::from_secs(90),
        Service::Redis => Duration::from_secs(15),
        Service::ZooKeeper => Duration::from_secs(60),
    };
    service.wait_ready(wait).with_context(|| {
        format!(
            "{service} did not become ready at {addr} within {wait:?}; see {}",
            log_file(service).display()
        )
    })?;
    Ok(Origin::StartedNow)
}

fn start(service: Service, port: u16, dir: &Path) -> Result<()> {
    let dir = fs::canonicalize(dir)?;
    let log = log_file(service);
    match service {
        Service::Redis => {
            let status = Command::new("redis-server")
                .args([
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .arg("--port")
                .arg(port.to_string())
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log)
                .arg("--pidfile")
                .arg(dir.join("redis.pid"))
                .status()
                .context("running redis-server")?;
            if !status.success() {
                bail!("redis-server exited with {status}; see {}", log.display());
            }
        }
        Service::RabbitMq => {
            // The package's /usr/sbin wrapper switches to the rabbitmq user and
            // drops our environment, so the real script is run directly, with
            // a config and env file of its own instead of /etc/rabbitmq's.
            fs::write(
                dir.join("rabbitmq.conf"),
                format!("listeners.tcp.local = 127.0.0.1:{port}\n"),
            )?;
            fs::write(dir.join("rabbitmq-env.conf"), "")?;
            let status = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
                .arg("-detached")
                .envs(rabbit_env(port, &dir))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .context("running rabbitmq-server")?;
            if !status.success() {
                bail!(
                    "rabbitmq-server exited with {status}; see {}",
                    log.display()
                );
            }
        }
        Service::ZooKeeper => {
            let server = ZooKeeperServer::standalone(&dir, port);
            let out = fs::File::create(server.log_file())?;
            let mut cmd = server.command()?;
            cmd.stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out);
            // Its own process group: the server outlives this command and is
            // not hit by a Ctrl-C meant for cargo.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().context("running java for ZooKeeper")?;
            fs::write(dir.join("zookeeper.pid"), child.id().to_string())?;
        }
    }
    Ok(())
}

/// Stops a service `up` started. `quiet`: the stop is a best effort for a
/// service that no longer answers, so the tools' own complaints about a
/// node that is not running are not shown.
fn stop(service: Service, quiet: bool) -> Result<()> {
    let dir = service_dir(service);
    match service {
        Service::Redis => kill_pidfile(&dir.join("redis.pid"), "redis-server"),
        Service::ZooKeeper => {
            kill_pidfile(&dir.join("zookeeper.pid"), testkit::ZOOKEEPER_MAIN_CLASS)
        }
        Service::RabbitMq => {
            let port: u16 = fs::read_to_string(marker(service))?.trim().parse()?;
            let dir = fs::canonicalize(&dir)?;
            let status = Command::new("/usr/lib/rabbitmq/bin/rabbitmqctl")
                .arg("stop")
                .envs(rabbit_env(port, &dir))
                .stdout(Stdio::null())
                .stderr(if quiet {
                    Stdio::null()
                } else {
                    Stdio::inherit()
                })
                .status()
                .context("running rabbitmqctl stop")?;
            if !status.success() {
                bail!("rabbitmqctl stop exited with {status}");
            }
            Ok(())
        }
    }
}

/// Environment that gives a RabbitMQ node of its own, under `dir`.
fn rabbit_env(port: u16, dir: &Path) -> Vec<(&'static str, String)> {
    let d = |sub: &str| dir.join(sub).display().to_string();
    vec![
        ("RABBITMQ_NODENAME", format!("xtask{port}@localhost")),
        ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
        ("RABBITMQ_NODE_PORT", port.to_string()),
        (
            "RABBITMQ_DIST_PORT",
            (u32::from(port) + 20_000).min(65_535).to_string(),
        ),
        ("RABBITMQ_MNESIA_BASE", d("mnesia")),
        ("RABBITMQ_LOG_BASE", d("log")),
        ("RABBITMQ_PID_FILE", d("rabbitmq.pid")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins")),
        ("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf")),
        ("RABBITMQ_CONF_ENV_FILE", d("rabbitmq-env.conf")),
    ]
}

/// Stops the process named in `pidfile` if it is still the server we
/// started: its command line contains `expected`. A process that is gone,
/// or whose id now belongs to another program, is left alone.
fn kill_pidfile(pidfile: &Path, expected: &str) -> Result<()> {
    let pid =
        fs::read_to_string(pidfile).with_context(|| format!("reading {}", pidfile.display()))?;
    let pid = pid.trim();
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !String::from_utf8_lossy(&cmdline).contains(expected) {
        println!("process {pid} ({expected}) was already gone");
        return Ok(());
    }
    let status = Command::new("kill").arg(pid).status()?;
    if !status.success() {
        println!("process {pid} was already gone");
    }
    Ok(())
}

fn ensure_installed(service: Service) -> Result<()> {
    let (package, probe): (&str, &str) = match service {
        Service::RabbitMq => ("rabbitmq-server", "/usr/lib/rabbitmq/bin/rabbitmq-server"),
        Service::Redis => ("redis-server", "/usr/bin/redis-server"),
        Service::ZooKeeper => ("zookeeper", testkit::ZOOKEEPER_JAR),
    };
    if Path::new(probe).exists() {
        return Ok(());
    }
    apt_install(&[package])
}

/// Installs Debian packages when we are root (saying so), or fails naming
/// them and the command that installs them.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    let names = packages
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let list = packages.join(" ");
    let (plural, verb) = if packages.len() == 1 {
        ("", "is")
    } else {
        ("s", "are")
    };
    if !is_root() {
        bail!(
            "Debian package{plural} {names} {verb} not installed and we are not root; \
             install with `sudo apt-get install -y {list}`"
        );
    }
    println!("installing Debian package{plural} {names} with apt-get (we are root)");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if install()?.success() {
        return Ok(());
    }
    println!("apt-get install failed; refreshing the package lists and retrying");
    let _ = Command::new("apt-get").args(["update", "-q"]).status()?;
    if !install()?.success() {
        bail!("`apt-get install -y {list}` failed");
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn service_dir(service: Service) -> PathBuf {
    crate::target_dir().join("services").join(service.name())
}

fn marker(service: Service) -> PathBuf {
    service_dir(service).join("started-by-xtask")
}

fn log_file(service: Service) -> PathBuf {
    let dir = service_dir(service);
    match service {
        Service::Redis => dir.join("redis.log"),
        Service::RabbitMq => dir.join("log"),
        Service::ZooKeeper => dir.join("zookeeper.log"),
    }
}
