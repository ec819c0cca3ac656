//! A real etcd for tests: one member on free loopback ports, its own temporary data directory,
//! killed and wiped on drop.
//!
//! The server keeps etcd's production durability settings (every commit is fsynced; the
//! `--unsafe-no-fsync` flag is never passed, and [`EtcdOptions::arg`] refuses it), so what the
//! tests measure is what production gets. Its log (etcd writes it on stderr) goes to a file in
//! the data directory; a start that fails reports its tail, and a server dropped while its test
//! panics prints its tail too.
//!
//! The binary is `$EDGESITE_ETCD` if set, else `etcd` on `PATH`, else `/usr/bin/etcd`. On Linux
//! it is started through `setpriv --pdeathsig KILL` when `setpriv` exists, so that it dies with
//! the test process even when that process is killed without running destructors.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::net::{free_ports, http_get};

/// How many times a start is retried on fresh ports when etcd finds a port already taken.
const PORT_ATTEMPTS: usize = 5;

/// Lines of etcd's log shown in error messages.
const LOG_TAIL_LINES: usize = 30;

/// Settings of an [`EtcdServer`] beyond the defaults.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    extra_args: Vec<String>,
    startup_timeout: Duration,
    binary: Option<PathBuf>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        Self {
            extra_args: Vec::new(),
            startup_timeout: Duration::from_secs(20),
            binary: None,
        }
    }
}

impl EtcdOptions {
    /// The defaults: no extra flag, 20 s to become healthy.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one command-line argument (for example `--auto-compaction-mode=revision`,
    /// `--quota-backend-bytes=…` or `--max-request-bytes=…`); use the `--flag=value` form.
    ///
    /// # Panics
    ///
    /// On `--unsafe-no-fsync`: tests run with production durability.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        let arg = arg.into();
        assert!(
            !arg.contains("unsafe-no-fsync"),
            "tests run etcd with production durability: --unsafe-no-fsync is not allowed"
        );
        self.extra_args.push(arg);
        self
    }

    /// How long etcd may take to answer `/health` (default 20 s).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Runs this etcd binary instead of looking for one (`$EDGESITE_ETCD`, `PATH`,
    /// `/usr/bin/etcd`).
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = Some(path.into());
        self
    }

    /// Starts the server, panicking with etcd's log tail when it cannot (and with the hint to
    /// run `scripts/setup` when the binary is missing): a test that needs etcd fails, never
    /// skips. Blocks until etcd is healthy (well under a second on an idle machine).
    pub fn start(self) -> EtcdServer {
        match self.try_start() {
            Ok(server) => server,
            Err(e) => panic!("cannot start a test etcd: {e:#}"),
        }
    }

    /// Starts the server, returning the failure instead of panicking.
    pub fn try_start(self) -> anyhow::Result<EtcdServer> {
        let binary = match &self.binary {
            Some(path) if path.is_file() => path.clone(),
            Some(path) => bail!(
                "the etcd binary {} does not exist: run `scripts/setup` to install the test \
                 prerequisites",
                path.display()
            ),
            None => etcd_binary()?,
        };
        let mut last_error = None;
        for _ in 0..PORT_ATTEMPTS {
            match EtcdServer::spawn(&binary, &self) {
                Ok(server) => return Ok(server),
                Err(StartError::PortTaken(e)) => last_error = Some(e),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(last_error
            .expect("at least one attempt")
            .context(format!("ports kept colliding in {PORT_ATTEMPTS} attempts")))
    }
}

/// A running single-member etcd on `127.0.0.1`; dropping it kills the process and deletes its
/// data directory.
#[derive(Debug)]
pub struct EtcdServer {
    child: Child,
    client: SocketAddr,
    peer: SocketAddr,
    dir: tempfile::TempDir,
}

enum StartError {
    /// A port was taken between choosing and binding it: retry on fresh ports.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl EtcdServer {
    /// Starts an etcd with default options; see [`EtcdOptions::start`].
    pub fn start() -> Self {
        EtcdOptions::default().start()
    }

    /// Starts an etcd with default options, returning the failure instead of panicking.
    pub fn try_start() -> anyhow::Result<Self> {
        EtcdOptions::default().try_start()
    }

    /// Options to start an etcd with.
    pub fn options() -> EtcdOptions {
        EtcdOptions::default()
    }

    fn spawn(binary: &Path, opts: &EtcdOptions) -> Result<Self, StartError> {
        let other = StartError::Other;
        let dir = tempfile::Builder::new()
            .prefix("edgesite-etcd-")
            .tempdir()
            .context("creating etcd's temporary directory")
            .map_err(other)?;
        let ports = free_ports(2);
        let client = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1]));
        let log_path = dir.path().join("etcd.log");
        let log = File::create(&log_path)
            .context("creating etcd's log file")
            .map_err(other)?;
        let log_err = log
            .try_clone()
            .context("duplicating etcd's log file")
            .map_err(other)?;

        let name = "edgesite-test";
        let client_url = format!("http://{client}");
        let peer_url = format!("http://{peer}");
        let mut cmd = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        cmd.arg(format!("--name={name}"))
            .arg(format!("--data-dir={}", dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster={name}={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=edgesite-test-{}",
                ports[0]
            ))
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .args(&opts.extra_args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // etcd reads its flags from ETCD_* variables too: none of the caller's may leak in.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(key);
            }
        }
        let child = spawn_from_long_lived_thread(cmd)
            .with_context(|| format!("spawning {}", binary.display()))
            .map_err(other)?;
        let mut server = Self {
            child,
            client,
            peer,
            dir,
        };
        match server.wait_healthy(opts.startup_timeout) {
            Ok(()) => Ok(server),
            Err(e) => {
                let tail = server.log_tail(LOG_TAIL_LINES);
                let e = e.context(format!(
                    "etcd ({} {}) did not become healthy; last lines of its log:\n{tail}",
                    binary.display(),
                    opts.extra_args.join(" ")
                ));
                // Dropping `server` kills etcd and removes the directory.
                if tail.contains("address already in use") {
                    Err(StartError::PortTaken(e))
                } else {
                    Err(StartError::Other(e))
                }
            }
        }
    }

    fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited with {status}");
            }
            let Err(e) = self.health() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(e.context(format!("etcd not healthy after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks etcd's `/health` endpoint; `Ok` when it answers 200 with `"health":"true"`.
    pub fn health(&self) -> anyhow::Result<()> {
        let (status, body) = http_get(self.client, "/health", Duration::from_secs(2))?;
        if status == 200 && body.contains(r#""health":"true""#) {
            Ok(())
        } else {
            bail!("/health answered {status}: {body}")
        }
    }

    /// The client URL, `http://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// The client endpoint, `127.0.0.1:PORT` (what `etcd://` datastore URLs take).
    pub fn endpoint(&self) -> String {
        self.client.to_string()
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        self.client
    }

    /// The peer URL, `http://127.0.0.1:PORT`.
    pub fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }

    /// The process id of etcd.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding etcd's data (`data/`) and log (`etcd.log`); removed on
    /// drop.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The last `lines` lines of etcd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read(self.dir.path().join("etcd.log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&log);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last lines of the test etcd's log ({}) ---\n{}\n---",
                self.client_url(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        // SIGKILL, then reap; the TempDir field then removes the directory.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the etcd binary is, or why there is none.
fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("EDGESITE_ETCD") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "$EDGESITE_ETCD is {} which is not a file; run `scripts/setup` to install etcd",
            path.display()
        );
    }
    find_in_path("etcd")
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
        .context(
            "the etcd binary was not found (looked for $EDGESITE_ETCD, `etcd` on PATH and \
             /usr/bin/etcd): run `scripts/setup` to install the test prerequisites",
        )
}

fn setpriv() -> Option<PathBuf> {
    find_in_path("setpriv")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` from a thread that lives as long as the process. The parent-death signal set by
/// `setpriv` fires when the *thread* that forked the child exits, so forking from a short-lived
/// thread (a tokio blocking-pool thread, say) would kill etcd under a running test.
fn spawn_from_long_lived_thread(cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("cannot start the testkit's spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the testkit's spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the testkit's spawner thread is gone"))?
}
