//! A containerd owned by the agent, as k3s runs one: a generated `config.toml` with its own root,
//! state and socket under the agent's directory (`ADIR/containerd/`), so it never meets a
//! system containerd; a supervisor task that restarts it with back-off when it dies; a stop by
//! PID on shutdown or drop. Its PID is kept in `ADIR/containerd/containerd.pid`, so an agent
//! started after one that was killed (SIGKILL, OOM, power to the agent only) stops the
//! containerd left behind before it starts its own. Shims are left running on purpose (pods
//! outlive an agent restart); removing the pods through CRI is what ends them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cri::{CriRuntime, Runtime};

/// `sun_path` holds 108 bytes with the terminating NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// Why the managed containerd could not be set up or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket path would not fit a unix socket address.
    #[error(
        "the containerd socket path {path} is {len} bytes, more than the {MAX_SOCKET_PATH} a unix \
         socket allows: choose a shorter agent directory than {agent_dir}"
    )]
    SocketPathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The agent directory it derives from.
        agent_dir: PathBuf,
    },
    /// A path of the configuration cannot be written into TOML (not UTF-8).
    #[error("the path {0} is not UTF-8 and cannot go into containerd's config.toml")]
    NonUtf8Path(PathBuf),
    /// The containerd binary is missing.
    #[error(
        "the containerd binary {0} does not exist: install the Debian package `containerd` \
         (which brings `runc`)"
    )]
    NoBinary(PathBuf),
    /// A directory or the configuration cannot be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// containerd cannot be spawned.
    #[error("cannot spawn {binary}: {source}")]
    Spawn {
        /// The binary.
        binary: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// containerd exited before its CRI socket answered.
    #[error(
        "containerd exited with {status} before answering on {socket}; last lines of {log}:\n{tail}"
    )]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The CRI socket.
        socket: PathBuf,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
    /// containerd ran but its CRI socket did not answer `Version` in time.
    #[error(
        "containerd at {socket} did not answer CRI Version within {timeout:?}: {last}; last lines of {log}:\n{tail}"
    )]
    NotReady {
        /// The CRI socket.
        socket: PathBuf,
        /// How long it was given.
        timeout: Duration,
        /// The last CRI error.
        last: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        tail: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the managed containerd is configured with. Paths derive from the agent directory.
#[derive(Debug, Clone)]
pub struct ContainerdConfig {
    /// The agent's directory (`ADIR`).
    pub agent_dir: PathBuf,
    /// The containerd binary.
    pub binary: PathBuf,
    /// The runc binary the shims run.
    pub runc: PathBuf,
    /// The CRI plugin's `sandbox_image`: the agent's pause image.
    pub sandbox_image: String,
    /// Where the CNI plugins are.
    pub cni_bin_dir: PathBuf,
    /// How long containerd may take to answer CRI `Version` after a start.
    pub startup_timeout: Duration,
    /// The first wait before a restart; doubles per quick crash up to [`Self::max_backoff`].
    pub initial_backoff: Duration,
    /// The longest wait between restarts.
    pub max_backoff: Duration,
    /// How long containerd may take to exit after SIGTERM before it is killed.
    pub stop_timeout: Duration,
    /// Keep containers' `oom_score_adj` no lower than containerd's own. Needed where the agent
    /// lacks `CAP_SYS_RESOURCE` (some VMs and containers drop it from the bounding set): the
    /// pause container's -998 would otherwise make runc fail with "failed to update
    /// /proc/self/oom_score_adj: Permission denied".
    pub restrict_oom_score_adj: bool,
}

impl ContainerdConfig {
    /// The defaults for an agent directory: `/usr/bin/containerd`, runc from `PATH` (else
    /// `/usr/sbin/runc`), the agent's pause image, CNI plugins in `/usr/lib/cni`.
    pub fn new(agent_dir: impl Into<PathBuf>) -> Self {
        Self {
            agent_dir: agent_dir.into(),
            binary: find_in_path("containerd").unwrap_or_else(|| "/usr/bin/containerd".into()),
            runc: find_in_path("runc").unwrap_or_else(|| "/usr/sbin/runc".into()),
            sandbox_image: crate::oci::PAUSE_IMAGE.into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            startup_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            restrict_oom_score_adj: !has_cap_sys_resource(
                &std::fs::read_to_string("/proc/self/status").unwrap_or_default(),
            ),
        }
    }

    /// `ADIR/containerd`.
    pub fn dir(&self) -> PathBuf {
        self.agent_dir.join("containerd")
    }
    /// `ADIR/containerd/config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }
    /// `ADIR/containerd/root`: images, snapshots, metadata.
    pub fn root(&self) -> PathBuf {
        self.dir().join("root")
    }
    /// `ADIR/containerd/state`: runtime state (task bundles, fifos, runc state).
    pub fn state(&self) -> PathBuf {
        self.dir().join("state")
    }
    /// `ADIR/containerd/containerd.sock`: the gRPC (and CRI) socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("containerd.sock")
    }
    /// `ADIR/containerd/containerd.log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("containerd.log")
    }
    /// `ADIR/containerd/containerd.pid`: the PID of the containerd the agent runs.
    pub fn pid_file(&self) -> PathBuf {
        self.dir().join("containerd.pid")
    }
    /// `ADIR/cni/net.d`: the CNI configuration the CRI plugin reads.
    pub fn cni_conf_dir(&self) -> PathBuf {
        crate::cni::conf_dir(&self.agent_dir)
    }

    /// Checks every socket containerd creates under the agent directory fits a unix address.
    pub fn check_socket_paths(&self) -> Result<()> {
        // containerd also listens on `<address>.ttrpc`, the longest of them.
        let ttrpc = PathBuf::from(format!("{}.ttrpc", self.socket().display()));
        for path in [self.socket(), ttrpc] {
            let len = path.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong {
                    path,
                    len,
                    agent_dir: self.agent_dir.clone(),
                });
            }
        }
        Ok(())
    }

    /// The `config.toml` (containerd 1.6, config version 2).
    pub fn render(&self) -> Result<String> {
        let q = |p: &Path| toml_string(p);
        let state = self.state();
        let mut out = String::new();
        // `write!` to a String cannot fail.
        let _ = write!(
            out,
            r#"# Generated by edgesite-agent; rewritten at every start.
version = 2
root = {root}
state = {state}
# Snapshotters this node never uses: skipping them keeps start-up quiet and quick.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = {socket}

[plugins."io.containerd.internal.v1.opt"]
  path = {opt}

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = {sandbox_image}
  # Port 0: the streaming server takes a free port, so two nodes on one host do not collide.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = {restrict_oom}
  # Pods' network namespaces pinned under the state directory, not /var/run/netns: they stay
  # the agent's, and unmounting the agent directory frees them (and their veths).
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        # cgroup v1 with the cgroupfs driver: no systemd in the loop.
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = {cni_bin}
    conf_dir = {cni_conf}
"#,
            root = q(&self.root())?,
            state = q(&state)?,
            socket = q(&self.socket())?,
            opt = q(&self.dir().join("opt"))?,
            sandbox_image = toml_str(&self.sandbox_image),
            restrict_oom = self.restrict_oom_score_adj,
            runc = q(&self.runc)?,
            runc_root = q(&state.join("runc"))?,
            cni_bin = q(&self.cni_bin_dir)?,
            cni_conf = q(&self.cni_conf_dir())?,
        );
        Ok(out)
    }

    /// Creates the directories and writes `config.toml`.
    pub fn write(&self) -> Result<()> {
        self.check_socket_paths()?;
        for dir in [self.dir(), self.root(), self.state(), self.cni_conf_dir()] {
            std::fs::create_dir_all(&dir).map_err(|source| Error::Write { path: dir, source })?;
        }
        let path = self.config_path();
        std::fs::write(&path, self.render()?).map_err(|source| Error::Write { path, source })
    }
}

/// A running containerd supervised by the agent. Dropping it kills containerd (SIGKILL, by PID);
/// [`ManagedContainerd::shutdown`] stops it gracefully.
#[derive(Debug)]
pub struct ManagedContainerd {
    config: ContainerdConfig,
    runtime: CriRuntime,
    pid: Arc<AtomicU32>,
    stop: watch::Sender<bool>,
    supervisor: Option<JoinHandle<()>>,
}

impl ManagedContainerd {
    /// Stops a containerd an earlier agent left running on this directory, writes the
    /// configuration, starts containerd and waits until its CRI socket answers `Version`;
    /// then supervises it.
    pub async fn start(config: ContainerdConfig) -> Result<Self> {
        if !config.binary.is_file() {
            return Err(Error::NoBinary(config.binary.clone()));
        }
        stop_left_behind(&config).await;
        config.write()?;
        let mut child = spawn(&config)?;
        let runtime = match wait_ready(&config, &mut child).await {
            Ok(runtime) => runtime,
            Err(e) => {
                let _ = child.kill().await;
                return Err(e);
            }
        };
        let pid = Arc::new(AtomicU32::new(child.id().unwrap_or(0)));
        let (stop, stop_rx) = watch::channel(false);
        let supervisor = tokio::spawn(supervise(config.clone(), child, pid.clone(), stop_rx));
        tracing::info!(socket = %config.socket().display(), pid = pid.load(Ordering::SeqCst), "containerd is up");
        Ok(Self {
            config,
            runtime,
            pid,
            stop,
            supervisor: Some(supervisor),
        })
    }

    /// A CRI client connected to this containerd.
    pub fn runtime(&self) -> &CriRuntime {
        &self.runtime
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    /// The CRI socket.
    pub fn socket(&self) -> PathBuf {
        self.config.socket()
    }

    /// The process id of the current containerd (it changes on restart); `None` while it is
    /// being restarted.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::SeqCst)).filter(|&p| p != 0)
    }

    /// Stops containerd: SIGTERM, then SIGKILL after the stop timeout; waits for it to exit.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.await;
        }
    }
}

impl Drop for ManagedContainerd {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
            if let Some(pid) = self.pid() {
                signal(pid, Signal::SIGKILL);
                let _ = std::fs::remove_file(self.config.pid_file());
            }
        }
    }
}

fn spawn(config: &ContainerdConfig) -> Result<tokio::process::Child> {
    let log_path = config.log_path();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| Error::Write {
            path: log_path.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| Error::Write {
        path: log_path,
        source,
    })?;
    // A stale socket from a killed run would make containerd refuse to listen.
    let _ = std::fs::remove_file(config.socket());
    let child = tokio::process::Command::new(&config.binary)
        .arg("--config")
        .arg(config.config_path())
        .current_dir(config.dir())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| Error::Spawn {
            binary: config.binary.clone(),
            source,
        })?;
    if let Some(pid) = child.id() {
        write_pid_file(config, pid);
    }
    Ok(child)
}

/// Records `pid` in the PID file (written aside and renamed, so a reader never sees half of
/// it). A failure is only logged: without the file the next agent still finds the process by
/// its command line.
fn write_pid_file(config: &ContainerdConfig, pid: u32) {
    let path = config.pid_file();
    let tmp = path.with_extension("pid.tmp");
    if let Err(error) =
        std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, &path))
    {
        tracing::warn!(path = %path.display(), %error, "cannot write containerd's PID file");
    }
}

/// Whether `cmdline` (the NUL-separated `/proc/PID/cmdline`) is a containerd running with the
/// configuration `config_path`: a recycled PID, a containerd of another agent directory or a
/// zombie (empty command line) is not.
fn is_containerd_of(cmdline: &[u8], config_path: &Path) -> bool {
    let args: Vec<&[u8]> = cmdline
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .collect();
    let config = config_path.as_os_str().as_encoded_bytes();
    args.windows(3).any(|w| {
        w[0].rsplit(|&b| b == b'/').next() == Some(b"containerd".as_slice())
            && w[1] == b"--config"
            && w[2] == config
    })
}

/// Whether process `pid` is a containerd of `config` (see [`is_containerd_of`]).
fn is_running_containerd(pid: u32, config: &ContainerdConfig) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| is_containerd_of(&cmdline, &config.config_path()))
}

/// The containerd of `config` that runs without this agent: the PID file's process if it
/// still is that containerd, else (no PID file, as agents before it wrote none, or a stale one)
/// any process whose command line names the configuration.
pub fn left_behind(config: &ContainerdConfig) -> Option<u32> {
    let recorded = std::fs::read_to_string(config.pid_file())
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    if let Some(pid) = recorded
        && is_running_containerd(pid, config)
    {
        return Some(pid);
    }
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            is_running_containerd(pid, config).then_some(pid)
        })
}

/// Stops the containerd an earlier agent left running on this directory (SIGTERM, SIGKILL
/// after the stop timeout), so the new one owns the socket and the metadata database. Its
/// containers keep running: their shims outlive it, and the new containerd reconnects to them
/// as after a crash, so the pod workers adopt them.
async fn stop_left_behind(config: &ContainerdConfig) {
    let Some(pid) = left_behind(config) else {
        let _ = std::fs::remove_file(config.pid_file());
        return;
    };
    tracing::info!(
        pid,
        config = %config.config_path().display(),
        "stopping the containerd a previous agent left running; its containers keep running"
    );
    signal(pid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + config.stop_timeout;
    while is_running_containerd(pid, config) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(pid, timeout = ?config.stop_timeout, "the containerd left behind ignored SIGTERM; killing it");
            signal(pid, Signal::SIGKILL);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL takes effect at once, but the exit (and the release of its socket and database
    // lock) may lag a little.
    let settle = tokio::time::Instant::now() + Duration::from_secs(5);
    while is_running_containerd(pid, config) && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(config.pid_file());
}

async fn wait_ready(
    config: &ContainerdConfig,
    child: &mut tokio::process::Child,
) -> Result<CriRuntime> {
    let socket = config.socket();
    let deadline = tokio::time::Instant::now() + config.startup_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(Error::Exited {
                status,
                socket,
                log: config.log_path(),
                tail: log_tail(&config.log_path(), 30),
            });
        }
        let last = match CriRuntime::connect(&socket).await {
            Ok(runtime) => match runtime.version().await {
                Ok(_) => return Ok(runtime),
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotReady {
                socket,
                timeout: config.startup_timeout,
                last,
                log: config.log_path(),
                tail: log_tail(&config.log_path(), 30),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for containerd to exit or to be told to stop; restarts it with back-off when it dies.
async fn supervise(
    config: ContainerdConfig,
    mut child: tokio::process::Child,
    pid: Arc<AtomicU32>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = config.initial_backoff;
    loop {
        let started = tokio::time::Instant::now();
        let status = tokio::select! {
            status = child.wait() => status,
            _ = stop.changed() => {
                terminate(&config, &mut child).await;
                pid.store(0, Ordering::SeqCst);
                let _ = std::fs::remove_file(config.pid_file());
                return;
            }
        };
        pid.store(0, Ordering::SeqCst);
        // A run that lasted a while resets the back-off, as kubelet's crash loop does.
        if started.elapsed() > config.max_backoff * 2 {
            backoff = config.initial_backoff;
        }
        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
        tracing::warn!(%status, ?backoff, log = %config.log_path().display(), "containerd exited; restarting it");
        child = loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(config.max_backoff);
            match spawn(&config) {
                Ok(child) => break child,
                Err(error) => {
                    tracing::error!(%error, ?backoff, "cannot restart containerd; retrying")
                }
            }
        };
        pid.store(child.id().unwrap_or(0), Ordering::SeqCst);
    }
}

/// SIGTERM, then SIGKILL after the stop timeout.
async fn terminate(config: &ContainerdConfig, child: &mut tokio::process::Child) {
    if let Some(id) = child.id() {
        signal(id, Signal::SIGTERM);
    }
    if tokio::time::timeout(config.stop_timeout, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.stop_timeout, "containerd ignored SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let log = std::fs::read(path).unwrap_or_default();
    let log = String::from_utf8_lossy(&log);
    let all: Vec<&str> = log.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `CAP_SYS_RESOURCE` (bit 24) in the effective set of a `/proc/PID/status` text.
fn has_cap_sys_resource(status: &str) -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn toml_string(path: &Path) -> Result<String> {
    let s = path
        .to_str()
        .ok_or_else(|| Error::NonUtf8Path(path.to_path_buf()))?;
    Ok(toml_str(s))
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_config_parses_and_keeps_everything_under_the_agent_dir() {
        let adir = PathBuf::from("/var/lib/edgesite \"agent\"");
        let config = ContainerdConfig::new(&adir);
        let text = config.render().unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let s = |v: &toml::Value| v.as_str().unwrap().to_string();
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert_eq!(
            s(&doc["root"]),
            format!("{}/containerd/root", adir.display())
        );
        assert_eq!(
            s(&doc["state"]),
            format!("{}/containerd/state", adir.display())
        );
        assert_eq!(
            s(&doc["grpc"]["address"]),
            format!("{}/containerd/containerd.sock", adir.display())
        );
        let plugins = &doc["plugins"];
        assert!(
            s(&plugins["io.containerd.internal.v1.opt"]["path"])
                .starts_with(adir.to_str().unwrap())
        );
        let cri = &plugins["io.containerd.grpc.v1.cri"];
        assert_eq!(s(&cri["sandbox_image"]), crate::oci::PAUSE_IMAGE);
        assert_eq!(s(&cri["cni"]["bin_dir"]), "/usr/lib/cni");
        assert_eq!(
            s(&cri["cni"]["conf_dir"]),
            format!("{}/cni/net.d", adir.display())
        );
        assert_eq!(cri["netns_mounts_under_state_dir"].as_bool(), Some(true));
        assert_eq!(s(&cri["containerd"]["snapshotter"]), "overlayfs");
        let runc = &cri["containerd"]["runtimes"]["runc"];
        assert_eq!(s(&runc["runtime_type"]), "io.containerd.runc.v2");
        assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(false));
        assert!(s(&runc["options"]["Root"]).starts_with(adir.to_str().unwrap()));
    }

    #[test]
    fn oom_score_adj_is_restricted_only_without_cap_sys_resource() {
        assert!(has_cap_sys_resource(
            "Name:\tx\nCapEff:\t000001ffffffffff\n"
        ));
        assert!(!has_cap_sys_resource("CapEff:\t000001fffeffffff\n"));
        assert!(!has_cap_sys_resource("no caps line"));
        let mut config = ContainerdConfig::new("/a");
        for restrict in [true, false] {
            config.restrict_oom_score_adj = restrict;
            let doc: toml::Table = toml::from_str(&config.render().unwrap()).unwrap();
            assert_eq!(
                doc["plugins"]["io.containerd.grpc.v1.cri"]["restrict_oom_score_adj"].as_bool(),
                Some(restrict)
            );
        }
    }

    #[tokio::test]
    async fn a_missing_binary_names_the_package_and_an_early_exit_shows_the_log() {
        let dir = tempfile::Builder::new()
            .prefix("es-t-")
            .tempdir_in("/tmp")
            .unwrap();
        let mut config = ContainerdConfig::new(dir.path());
        config.binary = "/nonexistent/containerd".into();
        let err = ManagedContainerd::start(config.clone()).await.unwrap_err();
        assert!(err.to_string().contains("package `containerd`"), "{err}");

        // A "containerd" that prints and exits at once.
        let fake = dir.path().join("fake-containerd");
        std::fs::write(&fake, "#!/bin/sh\necho cannot load config >&2\nexit 7\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        config.binary = fake;
        let err = ManagedContainerd::start(config).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Exited { .. }), "{text}");
        assert!(text.contains("exit status: 7"), "{text}");
        assert!(text.contains("cannot load config"), "{text}");
    }

    #[test]
    fn only_a_containerd_with_this_configuration_counts_as_left_behind() {
        let config = Path::new("/tmp/a/containerd/config.toml");
        let cmdline = |args: &[&str]| args.join("\0").into_bytes();
        for (args, ours) in [
            (
                &[
                    "/usr/bin/containerd",
                    "--config",
                    "/tmp/a/containerd/config.toml",
                ][..],
                true,
            ),
            (
                &["containerd", "--config", "/tmp/a/containerd/config.toml"],
                true,
            ),
            // Another agent directory's containerd.
            (
                &[
                    "/usr/bin/containerd",
                    "--config",
                    "/tmp/b/containerd/config.toml",
                ],
                false,
            ),
            (
                &[
                    "/usr/bin/containerd",
                    "--config",
                    "/tmp/a/containerd/config.toml.old",
                ],
                false,
            ),
            // A shim of this containerd, and what a recycled PID may be.
            (
                &[
                    "/usr/bin/containerd-shim-runc-v2",
                    "-namespace",
                    "k8s.io",
                    "-address",
                    "/tmp/a/containerd/containerd.sock",
                ],
                false,
            ),
            (&["sleep", "30"], false),
            // A zombie's command line is empty.
            (&[], false),
        ] {
            assert_eq!(is_containerd_of(&cmdline(args), config), ours, "{args:?}");
        }
        // /proc ends the command line with a NUL.
        let mut with_nul = cmdline(&[
            "/usr/bin/containerd",
            "--config",
            "/tmp/a/containerd/config.toml",
        ]);
        with_nul.push(0);
        assert!(is_containerd_of(&with_nul, config));
    }

    #[tokio::test]
    async fn a_recycled_pid_in_the_pid_file_is_never_signalled() {
        let dir = tempfile::Builder::new()
            .prefix("es-t-")
            .tempdir_in("/tmp")
            .unwrap();
        let config = ContainerdConfig::new(dir.path());
        config.write().unwrap();
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(config.pid_file(), format!("{}\n", other.id())).unwrap();
        assert_eq!(left_behind(&config), None);
        stop_left_behind(&config).await;
        let still = other.try_wait().unwrap();
        let _ = other.kill();
        let _ = other.wait();
        assert!(
            still.is_none(),
            "the unrelated process was signalled: {still:?}"
        );
        assert!(!config.pid_file().exists(), "the stale PID file is removed");
    }

    #[tokio::test]
    async fn a_containerd_left_behind_is_found_without_a_pid_file_and_stopped_with_sigterm() {
        let dir = tempfile::Builder::new()
            .prefix("es-t-")
            .tempdir_in("/tmp")
            .unwrap();
        let config = ContainerdConfig::new(dir.path());
        config.write().unwrap();
        // A stand-in whose command line is containerd's (`sh -c SCRIPT containerd --config
        // PATH`) and that exits 0 on SIGTERM only; it says when its trap is set.
        let script = "trap 'exit 0' TERM; : > \"$2.ready\"; while :; do sleep 0.05; done";
        let mut stand_in = std::process::Command::new("sh")
            .args(["-c", script, "containerd", "--config"])
            .arg(config.config_path())
            .spawn()
            .unwrap();
        let pid = stand_in.id();
        let ready = config.dir().join("config.toml.ready");
        for _ in 0..100 {
            if ready.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let found = left_behind(&config);
        if found != Some(pid) {
            let _ = stand_in.kill();
            let _ = stand_in.wait();
            panic!("found {found:?}, want {pid}");
        }
        stop_left_behind(&config).await;
        let status = stand_in.try_wait().unwrap();
        let _ = stand_in.kill();
        let _ = stand_in.wait();
        assert!(
            status.is_some_and(|s| s.success()),
            "stopped by SIGTERM within the stop timeout: {status:?}"
        );
        assert_eq!(left_behind(&config), None);
    }

    #[test]
    fn an_agent_dir_too_long_for_unix_sockets_is_refused_by_name() {
        let long = PathBuf::from(format!("/tmp/{}", "d".repeat(80)));
        let config = ContainerdConfig::new(&long);
        let err = config.check_socket_paths().unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("more than the 107 a unix socket allows"),
            "{text}"
        );
        assert!(text.contains(long.to_str().unwrap()), "{text}");
        ContainerdConfig::new("/tmp/short")
            .check_socket_paths()
            .unwrap();
    }
}
