//! Child processes: the servers a scenario starts, and the instances it kills.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

/// A free TCP port on loopback (bound, read, released; fine for a demo).
pub fn free_port() -> Result<u16> {
    Ok(free_ports(1)?[0])
}

/// `n` distinct free TCP ports on loopback (all held until all are found).
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("finding a free port"))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

/// The path of a binary built next to the running one (`cargo xtask demo`
/// builds the helpers into the same `target/release`), or an error saying
/// how to build it.
pub fn helper_binary(package: &str, binary: &str) -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the running binary")?;
    let path = me
        .parent()
        .context("the running binary has no directory")?
        .join(binary);
    if !path.is_file() {
        bail!(
            "{} is missing: build it with `cargo build --release -p {package} --bin {binary}` \
             (cargo xtask demo does)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process. Its stdout lines arrive on [`Process::next_line`]; its
/// stderr lines are logged under its name. Dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Process {
    /// Starts `command` (stdin, stdout and stderr piped; killed on drop;
    /// `NO_COLOR` set, since its logs end up in ours).
    pub fn spawn(name: impl Into<String>, mut command: Command) -> Result<Process> {
        let name = name.into();
        let mut child = command
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let stdout = child.stdout.take().context("piped stdout")?;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().context("piped stderr")?;
        let who = name.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                tracing::info!("[{who}] {}", line.trim_end());
            }
        });
        let stdin = child.stdin.take();
        Ok(Process {
            name,
            child,
            stdin,
            lines,
        })
    }

    /// The name given at spawn.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id (`None` once reaped).
    #[must_use]
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The next stdout line; `None` once stdout closed; an error after `timeout`.
    pub async fn next_line(&mut self, timeout: Duration) -> Result<Option<String>> {
        tokio::time::timeout(timeout, self.lines.recv())
            .await
            .with_context(|| format!("{} printed nothing for {timeout:?}", self.name))
    }

    /// A stdout line already printed, if any (does not wait).
    pub fn try_line(&mut self) -> Option<String> {
        self.lines.try_recv().ok()
    }

    /// Skips stdout lines until one satisfies `wanted`, for up to `timeout`.
    pub async fn wait_for_line(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_line(left).await? {
                Some(line) if wanted(&line) => return Ok(line),
                Some(_) => {}
                None => bail!("{} closed its stdout (exited?)", self.name),
            }
        }
    }

    /// Closes the child's stdin (the instances of the examples take EOF as
    /// "shut down cleanly").
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// SIGKILL, as a crash: no clean-up runs in the child. Waits for it.
    pub async fn kill(&mut self) -> Result<()> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing {}", self.name))
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        if let Some(pid) = self.child.id().and_then(|p| Pid::from_raw(p as i32)) {
            let _ = kill_process(pid, Signal::TERM);
        }
        self.wait_or_kill(grace).await
    }

    /// Waits up to `grace` for the child to exit by itself, then kills it.
    /// Returns the exit status when it exited by itself.
    pub async fn wait_or_kill(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                tracing::warn!("{} did not exit within {grace:?}; killing it", self.name);
                self.kill().await?;
                Ok(None)
            }
        }
    }
}
