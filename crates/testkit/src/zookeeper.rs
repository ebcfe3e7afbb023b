//! Launching ZooKeeper servers from Debian's `zookeeper` package.
//!
//! Debian's `zkServer.sh` ignores `--config`, so servers are started the
//! way the package's own scripts end up doing it: `java` on the package's
//! jar (whose manifest names every dependency) with `QuorumPeerMain` and a
//! `zoo.cfg` written here. `cargo xtask services up` starts a standalone
//! server this way; benchmarks start whole ensembles.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The jar installed by Debian's `zookeeper` package.
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

/// The main class [`ZooKeeperServer::command`] runs; a stopper that finds a
/// ZooKeeper JVM by its command line matches this string, so both name it
/// from here.
pub const ZOOKEEPER_MAIN_CLASS: &str = "org.apache.zookeeper.server.quorum.QuorumPeerMain";

/// One ZooKeeper server's configuration, written to `<dir>/conf/zoo.cfg`.
#[derive(Debug, Clone)]
pub struct ZooKeeperServer {
    /// Holds `conf/`, `data/` and the server's log.
    pub dir: PathBuf,
    /// Port for client connections, on 127.0.0.1.
    pub client_port: u16,
    /// For an ensemble member: its id and every member. `None`: standalone.
    pub ensemble: Option<Ensemble>,
    /// `tickTime` in milliseconds (ZooKeeper's default is 2000).
    pub tick_ms: u32,
}

/// The membership of a ZooKeeper ensemble, as seen by one member.
#[derive(Debug, Clone)]
pub struct Ensemble {
    /// This server's id (`myid`).
    pub myid: u64,
    /// Every member, this one included, on 127.0.0.1.
    pub members: Vec<EnsembleMember>,
}

/// One `server.<id>=127.0.0.1:<quorum>:<election>` line of `zoo.cfg`.
#[derive(Debug, Clone, Copy)]
pub struct EnsembleMember {
    /// The member's id.
    pub id: u64,
    /// Port followers use to talk to the leader.
    pub quorum_port: u16,
    /// Port used for leader election.
    pub election_port: u16,
}

impl ZooKeeperServer {
    /// A standalone server on `client_port` keeping everything in `dir`.
    pub fn standalone(dir: impl Into<PathBuf>, client_port: u16) -> Self {
        ZooKeeperServer {
            dir: dir.into(),
            client_port,
            ensemble: None,
            tick_ms: 2000,
        }
    }

    /// The file the server's stdout and stderr go to.
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("zookeeper.log")
    }

    /// Writes `zoo.cfg` (and `myid` for an ensemble) and returns the command
    /// that runs the server in the foreground. The caller spawns it and
    /// redirects its output, typically to [`ZooKeeperServer::log_file`].
    pub fn command(&self) -> io::Result<Command> {
        if !Path::new(ZOOKEEPER_JAR).exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{ZOOKEEPER_JAR} is missing: install Debian's package with \
                     `apt-get install -y zookeeper`"
                ),
            ));
        }
        let conf = self.dir.join("conf");
        let data = self.dir.join("data");
        fs::create_dir_all(&conf)?;
        fs::create_dir_all(&data)?;
        let data = fs::canonicalize(&data)?;
        let mut cfg = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(cfg, "tickTime={}", self.tick_ms);
        let _ = writeln!(cfg, "initLimit=10\nsyncLimit=5");
        let _ = writeln!(cfg, "dataDir={}", data.display());
        let _ = writeln!(cfg, "clientPort={}", self.client_port);
        let _ = writeln!(cfg, "clientPortAddress=127.0.0.1");
        let _ = writeln!(cfg, "maxClientCnxns=0");
        let _ = writeln!(cfg, "admin.enableServer=false");
        let _ = writeln!(
            cfg,
            "4lw.commands.whitelist=ruok,srvr,stat,mntr,conf,cons,wchs"
        );
        if let Some(ensemble) = &self.ensemble {
            for m in &ensemble.members {
                let _ = writeln!(
                    cfg,
                    "server.{}=127.0.0.1:{}:{}",
                    m.id, m.quorum_port, m.election_port
                );
            }
            fs::write(data.join("myid"), format!("{}\n", ensemble.myid))?;
        }
        let zoo_cfg = conf.join("zoo.cfg");
        fs::write(&zoo_cfg, cfg)?;
        let mut cmd = Command::new("java");
        cmd.arg("-Xmx256m")
            .arg("-Dzookeeper.log.dir=".to_owned() + &self.dir.display().to_string())
            .arg("-cp")
            .arg(format!("{}:{ZOOKEEPER_JAR}", conf.display()))
            .arg(ZOOKEEPER_MAIN_CLASS)
            .arg(zoo_cfg);
        Ok(cmd)
    }
}
