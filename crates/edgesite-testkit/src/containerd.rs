//! Test images and a real containerd for tests.
//!
//! - [`busybox_image`]: an OCI tarball of the host's static busybox, built by the agent's own
//!   [`edgesite_agent::oci`] builder (one copy of the builder, used by both).
//! - [`TestContainerd`] (feature `containerd`): the agent's [`ManagedContainerd`] in a short
//!   temporary agent directory. Dropping it — also when the test panics — kills containerd, the
//!   shims and the containers by PID (found in `/proc` by the directory they run from), detaches
//!   every mount under the directory (the pods' network namespaces among them), removes the
//!   agent's pod network (`edgesite_agent::cni::cleanup`: bridge, addresses, masquerade rules)
//!   and the directory. [`TestContainerd::stop`] first lets containerd and its shims end on
//!   their own and reports what did not, so a test can assert the product cleaned up after
//!   itself.
//!
//! Prerequisites are never optional: a missing busybox or containerd panics with the Debian
//! package to install.

use std::path::{Path, PathBuf};

use edgesite_agent::oci;

/// The host's static busybox, or a panic naming the package (`busybox-static`).
pub fn host_busybox() -> PathBuf {
    let path = PathBuf::from(oci::HOST_BUSYBOX);
    assert!(
        path.is_file(),
        "{} is missing: install the Debian package `busybox-static` (run `scripts/setup`)",
        path.display()
    );
    path
}

/// Builds an OCI image-layout tarball named `name` (`edgesite.io/busybox:1`) in `dir` holding
/// the host's static busybox (`/bin/busybox`, `/bin/sh`; entrypoint `/bin/busybox`); returns the
/// tarball's path.
pub fn busybox_image(dir: &Path, name: &str) -> PathBuf {
    let file: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{file}.oci.tar"));
    let built = oci::busybox_image(name, &host_busybox())
        .and_then(|b| b.write(&path))
        .unwrap_or_else(|e| panic!("cannot build the busybox image {name}: {e}"));
    built.path
}

#[cfg(feature = "containerd")]
pub use managed::*;

#[cfg(feature = "containerd")]
mod managed {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    use edgesite_agent::containerd::{ContainerdConfig, ManagedContainerd, log_tail};
    use edgesite_agent::cri::v1 as cri;
    use edgesite_agent::cri::{CriRuntime, Runtime};
    use edgesite_agent::images::ImageImporter;
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    /// What was still there under a test containerd's directory.
    #[derive(Debug, Default, Clone, PartialEq, Eq)]
    pub struct Leftovers {
        /// Processes (pid, command line) running from the directory: containerd, shims,
        /// containers.
        pub processes: Vec<(u32, String)>,
        /// Mount points under the directory.
        pub mounts: Vec<PathBuf>,
    }

    impl Leftovers {
        /// Nothing left.
        pub fn is_empty(&self) -> bool {
            self.processes.is_empty() && self.mounts.is_empty()
        }
    }

    /// A real containerd, run by the agent's supervisor in a temporary agent directory, reaped
    /// on drop (see the module documentation).
    #[derive(Debug)]
    pub struct TestContainerd {
        containerd: Option<ManagedContainerd>,
        dir: Option<tempfile::TempDir>,
    }

    impl TestContainerd {
        /// Starts containerd, panicking with its log when it cannot, and with the package to
        /// install when a binary is missing. Needs root.
        pub async fn start() -> Self {
            match Self::try_start().await {
                Ok(c) => c,
                Err(e) => panic!("cannot start a test containerd: {e:#}"),
            }
        }

        /// Starts containerd, returning the failure instead of panicking.
        pub async fn try_start() -> anyhow::Result<Self> {
            anyhow::ensure!(
                nix::unistd::geteuid().is_root(),
                "a test containerd needs root (it mounts overlays and creates cgroups)"
            );
            // /tmp rather than $TMPDIR: containerd's socket paths must stay under 108 bytes.
            let base = Path::new("/tmp");
            let dir = tempfile::Builder::new()
                .prefix("es-ctd-")
                .tempdir_in(base)?;
            let config = ContainerdConfig::new(dir.path());
            anyhow::ensure!(
                config.binary.is_file(),
                "{} is missing: install the Debian package `containerd` (run `scripts/setup`)",
                config.binary.display()
            );
            anyhow::ensure!(
                config.runc.is_file(),
                "{} is missing: install the Debian package `runc` (run `scripts/setup`)",
                config.runc.display()
            );
            let mut fixture = Self {
                containerd: None,
                dir: Some(dir),
            };
            fixture.containerd = Some(ManagedContainerd::start(config).await?);
            Ok(fixture)
        }

        fn containerd(&self) -> &ManagedContainerd {
            self.containerd
                .as_ref()
                .expect("the containerd runs until the fixture is stopped")
        }

        /// A CRI client connected to it.
        pub fn runtime(&self) -> &CriRuntime {
            self.containerd().runtime()
        }

        /// The agent directory (`ADIR`).
        pub fn dir(&self) -> &Path {
            self.dir
                .as_ref()
                .expect("the directory lives as long as the fixture")
                .path()
        }

        /// Its CRI socket.
        pub fn socket(&self) -> PathBuf {
            self.containerd().socket()
        }

        /// The managed containerd itself.
        pub fn managed(&self) -> &ManagedContainerd {
            self.containerd()
        }

        /// Imports the OCI tarball `tarball` holding `name` into the `k8s.io` namespace,
        /// panicking when it fails; returns the CRI image.
        pub async fn import(&self, tarball: &Path, name: &str) -> cri::Image {
            ImageImporter::new(self.socket())
                .import(self.runtime(), tarball, name)
                .await
                .unwrap_or_else(|e| panic!("cannot import {name}: {e}"))
        }

        /// Builds and imports the agent's pause image.
        pub async fn import_pause_image(&self) -> cri::Image {
            let images = self.dir().join("images");
            std::fs::create_dir_all(&images).expect("creating the images directory");
            ImageImporter::new(self.socket())
                .ensure_pause_image(self.runtime(), &super::host_busybox(), &images)
                .await
                .unwrap_or_else(|e| panic!("cannot import the pause image: {e}"))
        }

        /// What runs from or is mounted under the directory now.
        pub fn leftovers(&self) -> Leftovers {
            leftovers_under(self.dir())
        }

        /// Stops containerd gracefully, waits up to 10 s for everything under the directory to
        /// end, and returns what had not; then reaps that and removes the directory.
        pub async fn stop(mut self) -> Leftovers {
            if let Some(containerd) = self.containerd.take() {
                containerd.shutdown().await;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = self.leftovers();
                if left.is_empty() || Instant::now() >= deadline {
                    return left;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Drop for TestContainerd {
        fn drop(&mut self) {
            let Some(dir) = self.dir.take() else { return };
            if std::thread::panicking() {
                let log = dir.path().join("containerd").join("containerd.log");
                eprintln!(
                    "--- last lines of the test containerd's log ({}) ---\n{}\n---",
                    log.display(),
                    log_tail(&log, 40)
                );
            }
            // First containerd (so nothing restarts the shims), then everything else.
            drop(self.containerd.take());
            reap(dir.path());
            // The pods' network namespaces were unmounted with the directory; what the pod
            // network leaves outside it (the bridge, masquerade rules) goes as the agent's does.
            if let Err(e) = edgesite_agent::cni::cleanup(dir.path()) {
                eprintln!("cannot clean up the test containerd's pod network: {e}");
            }
            // The TempDir removes the directory.
            drop(dir);
        }
    }

    /// Kills every process running from `dir` (and their descendants: the containers, whose
    /// root is their own), removes the containers' cgroups and detaches every mount under it.
    fn reap(dir: &Path) {
        let own_cgroups = cgroups_of("self");
        let mut cgroups = Vec::new();
        let mut killed = Vec::new();
        let mut sockets = Vec::new();
        for _ in 0..50 {
            let left = leftovers_under(dir);
            if left.processes.is_empty() {
                break;
            }
            // Every pid before the first kill: a container whose shim died is reparented and
            // no longer found as a descendant.
            for (pid, _) in &left.processes {
                cgroups.extend(
                    cgroups_of(&pid.to_string())
                        .into_iter()
                        .filter(|c| !own_cgroups.contains(c)),
                );
            }
            for (pid, cmdline) in &left.processes {
                if let Ok(pid) = i32::try_from(*pid) {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                killed.push(*pid);
                sockets.extend(shim_socket(cmdline));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A killed container may take a moment to die (a pid namespace's init waits for the
        // rest of its namespace), and, its shim gone, is no longer found from the directory.
        let deadline = Instant::now() + Duration::from_secs(5);
        while killed.iter().any(|&pid| is_running(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Deepest first, so a mount under another mount goes before it.
        let mut mounts = leftovers_under(dir).mounts;
        mounts.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for mount in mounts {
            let _ = nix::mount::umount2(&mount, nix::mount::MntFlags::MNT_DETACH);
        }
        // A killed shim cannot unlink its socket, which lives outside the directory.
        for socket in sockets {
            let _ = std::fs::remove_file(socket);
        }
        // A cgroup can be removed once its processes are gone; killed ones take a moment.
        cgroups.sort();
        cgroups.dedup();
        for cgroup in cgroups {
            for _ in 0..50 {
                if std::fs::remove_dir(&cgroup).is_ok() || !cgroup.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The socket a containerd 1.6 shim with this command line listens on:
    /// `/run/containerd/s/<sha256 of ADDRESS/NAMESPACE/ID>`, whatever containerd's state
    /// directory (containerd's `runtime/v2/shim.SocketAddress`).
    pub fn shim_socket(cmdline: &str) -> Option<PathBuf> {
        let args: Vec<&str> = cmdline.split(' ').collect();
        if !args.first()?.ends_with("containerd-shim-runc-v2") {
            return None;
        }
        let flag = |name: &str| {
            args.windows(2)
                .find(|w| w[0] == name)
                .map(|w| w[1].to_string())
        };
        let key = format!(
            "{}/{}/{}",
            flag("-address")?,
            flag("-namespace")?,
            flag("-id")?
        );
        let digest = edgesite_agent::oci::digest(key.as_bytes());
        Some(PathBuf::from("/run/containerd/s").join(digest.trim_start_matches("sha256:")))
    }

    /// Whether `pid` exists and is neither a zombie nor dead.
    pub fn is_running(pid: u32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .map(|(_, rest)| rest.trim_start())
            .is_some_and(|state| !state.starts_with('Z') && !state.starts_with('X'))
    }

    /// The cgroup directories (every hierarchy, v1 and v2) of `/proc/<pid>`.
    fn cgroups_of(pid: &str) -> Vec<PathBuf> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let hierarchies: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .chain([PathBuf::from("/sys/fs/cgroup")])
            .collect();
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(path) = line.splitn(3, ':').nth(2) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if rel.is_empty() {
                continue;
            }
            out.extend(
                hierarchies
                    .iter()
                    .map(|h| h.join(rel))
                    .filter(|p| p.join("cgroup.procs").exists()),
            );
        }
        out
    }

    /// Processes whose command line names `dir` or whose root, working directory or binary is
    /// under it, with all their descendants; and mount points under it.
    pub fn leftovers_under(dir: &Path) -> Leftovers {
        let me = std::process::id();
        let needle = dir.to_string_lossy().into_owned();
        let mut all = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == me {
                continue;
            }
            let proc_dir = entry.path();
            let cmdline = std::fs::read(proc_dir.join("cmdline"))
                .map(|raw| {
                    String::from_utf8_lossy(&raw)
                        .split('\0')
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so split after the last ')'.
            let ppid = std::fs::read_to_string(proc_dir.join("stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(')')?.1.to_string();
                    after.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                .unwrap_or(0);
            let under = |link: &str| {
                std::fs::read_link(proc_dir.join(link))
                    .map(|target| target.starts_with(dir))
                    .unwrap_or(false)
            };
            let matched =
                cmdline.contains(&needle) || under("root") || under("cwd") || under("exe");
            all.push((pid, ppid, cmdline, matched));
        }
        let mut chosen: std::collections::BTreeSet<u32> =
            all.iter().filter(|p| p.3).map(|p| p.0).collect();
        loop {
            let before = chosen.len();
            for (pid, ppid, _, _) in &all {
                if chosen.contains(ppid) {
                    chosen.insert(*pid);
                }
            }
            if chosen.len() == before {
                break;
            }
        }
        let processes = all
            .into_iter()
            .filter(|p| chosen.contains(&p.0))
            .map(|p| (p.0, p.2))
            .collect();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|m| PathBuf::from(unescape_mountinfo(m)))
            .filter(|m| m.starts_with(dir))
            .collect();
        Leftovers { processes, mounts }
    }

    /// Mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
    fn unescape_mountinfo(field: &str) -> String {
        let bytes = field.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'\\'
                && let Some(v) = field
                    .get(i + 1..i + 4)
                    .and_then(|o| u8::from_str_radix(o, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// A pod sandbox config on the host network (so no CNI configuration is needed), logging
    /// under `log_directory`.
    pub fn host_network_sandbox(
        name: &str,
        uid: &str,
        log_directory: &Path,
    ) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            // With the node's network the sandbox shares the node's UTS namespace too, where
            // runc refuses to set a hostname.
            hostname: String::new(),
            log_directory: log_directory.to_string_lossy().into_owned(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Node as i32,
                        pid: cri::NamespaceMode::Pod as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A pod sandbox config with a network namespace of its own (the CNI network of the
    /// agent directory), logging under `log_directory`.
    pub fn pod_network_sandbox(
        name: &str,
        uid: &str,
        log_directory: &Path,
    ) -> cri::PodSandboxConfig {
        let mut config = host_network_sandbox(name, uid, log_directory);
        config.hostname = name.into();
        if let Some(ns) = config
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            ns.network = cri::NamespaceMode::Pod as i32;
        }
        config
    }

    /// A container config running `image` with `command` and `args`, logging to `log_path`
    /// (relative to the sandbox's log directory).
    pub fn container(
        name: &str,
        image: &str,
        command: &[&str],
        args: &[&str],
        log_path: &str,
    ) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            log_path: log_path.into(),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    /// CreateContainer then StartContainer of `config` in sandbox `pod` (made from `sandbox`):
    /// the started container's id.
    pub async fn start_container(
        runtime: &dyn Runtime,
        pod: &str,
        sandbox: cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> edgesite_agent::cri::Result<String> {
        let id = runtime.create_container(pod, config, sandbox).await?;
        runtime.start_container(&id).await?;
        Ok(id)
    }

    /// How long a pod start takes straight through CRI: RunPodSandbox (host network) +
    /// CreateContainer + StartContainer of `image` running `sleep`. The pod is stopped and
    /// removed afterwards, outside the measured time; `log_directory` receives its logs.
    pub async fn direct_cri_pod_start(
        runtime: &dyn Runtime,
        image: &str,
        log_directory: &Path,
    ) -> anyhow::Result<Duration> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let name = format!("bench-{}-{n}", std::process::id());
        let sandbox = host_network_sandbox(&name, &name, log_directory);
        let config = container(
            "sleep",
            image,
            &["/bin/busybox"],
            &["sleep", "3600"],
            &format!("{name}.log"),
        );
        let started = Instant::now();
        let pod = runtime.run_pod_sandbox(sandbox.clone(), "").await?;
        let result = start_container(runtime, &pod, sandbox, config).await;
        let elapsed = started.elapsed();
        runtime.stop_pod_sandbox(&pod).await?;
        runtime.remove_pod_sandbox(&pod).await?;
        result?;
        Ok(elapsed)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn mountinfo_escapes_are_decoded() {
            assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), "/tmp/a b");
            assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
            assert_eq!(unescape_mountinfo(r"/x\\"), r"/x\\");
        }

        #[test]
        fn leftovers_are_found_by_directory() {
            let dir = tempfile::tempdir().unwrap();
            assert!(leftovers_under(dir.path()).is_empty());
            let mut child = std::process::Command::new("sleep")
                .arg("30")
                .current_dir(dir.path())
                .spawn()
                .unwrap();
            let found = leftovers_under(dir.path());
            assert!(
                found.processes.iter().any(|(pid, _)| *pid == child.id()),
                "{found:?}"
            );
            reap(dir.path());
            let status = child.wait().unwrap();
            assert!(!status.success());
            assert!(leftovers_under(dir.path()).is_empty());
        }
    }
}
