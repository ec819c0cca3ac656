//! The CRI configurations of a pod: [`sandbox_config`] and [`container_config`], functions
//! of the pod, the node and what the cache holds, as kubelet's `generatePodSandboxConfig` and
//! `generateContainerConfig`. The only host IO: reading the node's resolv.conf and hosts file,
//! and writing the pod's managed `/etc/hosts` and termination-message files.
//!
//! Choices that differ from kubelet, on purpose:
//! - no cgroup parent per QoS class: containers go under containerd's default parent
//!   (`/k8s.io/<id>` with the cgroupfs driver); limits are per container;
//! - `runAsNonRoot` without `runAsUser` is refused: the image's user is not known here,
//!   so "not root" cannot be verified (kubelet reads it from the image's config);
//! - seccomp defaults to unconfined (kubelet without `SeccompDefault`).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Component, Path, PathBuf};

use k8s_cri::v1 as cri;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, SeccompProfile};

use super::env::{Env, container_env};
use super::resources::linux_resources;
use super::{NodeContext, Objects, PreparedVolumes};

/// Why a container cannot be configured: its waiting reason is `CreateContainerConfigError`
/// (upstream's reason for all of these), with this error's text as the message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A ConfigMap or Secret an env var or envFrom needs is not in the cache (yet).
    #[error("{kind} \"{name}\" not found")]
    Missing {
        /// `configmap` or `secret`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// A key an env var names is not in the object.
    #[error("couldn't find key {key} in {kind} {namespace}/{name}")]
    MissingKey {
        /// `ConfigMap` or `Secret`.
        kind: &'static str,
        /// The object's namespace.
        namespace: String,
        /// The object's name.
        name: String,
        /// The key.
        key: String,
    },
    /// Anything else the spec asks that cannot be configured.
    #[error("{0}")]
    Invalid(String),
    /// The pod's managed files (`/etc/hosts`, termination log) cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Label of a sandbox or container: the pod's name.
pub const LABEL_POD_NAME: &str = "io.kubernetes.pod.name";
/// Label of a sandbox or container: the pod's namespace.
pub const LABEL_POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
/// Label of a sandbox or container: the pod's uid.
pub const LABEL_POD_UID: &str = "io.kubernetes.pod.uid";
/// Label of a container: its name in the pod.
pub const LABEL_CONTAINER_NAME: &str = "io.kubernetes.container.name";
/// Annotation of a container: how many times it was restarted before.
pub const ANNOTATION_RESTART_COUNT: &str = "io.kubernetes.container.restartCount";
/// Annotation of a container: where in it the termination message is.
pub const ANNOTATION_TERMINATION_MESSAGE_PATH: &str =
    "io.kubernetes.container.terminationMessagePath";
/// Annotation of a container: `File` or `FallbackToLogsOnError`.
pub const ANNOTATION_TERMINATION_MESSAGE_POLICY: &str =
    "io.kubernetes.container.terminationMessagePolicy";
/// Annotation of a container: the pod's termination grace period, seconds.
pub const ANNOTATION_TERMINATION_GRACE_PERIOD: &str = "io.kubernetes.pod.terminationGracePeriod";

/// The termination message path of containers that do not set one.
pub const DEFAULT_TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// What containers do not see of /proc and /sys (upstream `defaultMaskedPaths`).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
/// What containers see read-only of /proc (upstream `defaultReadonlyPaths`).
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Most nameservers a resolv.conf may list (glibc's `MAXNS`).
const MAX_NAMESERVERS: usize = 3;
/// Most search domains kubelet passes on.
const MAX_SEARCHES: usize = 32;

fn spec(pod: &Pod) -> Result<&PodSpec, ConfigError> {
    pod.spec
        .as_ref()
        .ok_or_else(|| ConfigError::Invalid("the pod has no spec".into()))
}

fn pod_labels(pod: &Pod) -> HashMap<String, String> {
    let meta = &pod.metadata;
    HashMap::from([
        (
            LABEL_POD_NAME.to_owned(),
            meta.name.clone().unwrap_or_default(),
        ),
        (
            LABEL_POD_NAMESPACE.to_owned(),
            meta.namespace.clone().unwrap_or_default(),
        ),
        (
            LABEL_POD_UID.to_owned(),
            meta.uid.clone().unwrap_or_default(),
        ),
    ])
}

/// The sandbox configuration of `pod`; `attempt` counts sandboxes made for it before.
pub fn sandbox_config(
    pod: &Pod,
    node: &NodeContext,
    attempt: u32,
) -> Result<cri::PodSandboxConfig, ConfigError> {
    let spec = spec(pod)?;
    let meta = &pod.metadata;
    let uid = meta.uid.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);

    let mut labels: HashMap<String, String> = meta
        .labels
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    labels.extend(pod_labels(pod));
    let annotations = meta
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();

    let hostname = if host_network {
        // The sandbox shares the node's UTS namespace, where runc refuses to set a name.
        String::new()
    } else {
        let (hostname, domain) = hostname_and_domain(pod, node);
        match (spec.set_hostname_as_fqdn == Some(true), domain) {
            (true, Some(domain)) => {
                let fqdn = format!("{hostname}.{domain}");
                if fqdn.len() > 64 {
                    return Err(ConfigError::Invalid(format!(
                        "failed to construct FQDN from pod hostname and cluster domain, FQDN \
                         {fqdn} is too long (64 characters is the max, {} characters requested)",
                        fqdn.len()
                    )));
                }
                fqdn
            }
            _ => hostname,
        }
    };

    let host_resolv = match std::fs::read_to_string(&node.resolv_conf) {
        Ok(text) => ResolvConf::parse(&text),
        Err(e) => {
            tracing::warn!(path = %node.resolv_conf.display(), error = %e,
                "cannot read the node's resolv.conf; pods using it get no nameserver");
            ResolvConf::default()
        }
    };
    let dns_config = dns_config(pod, node, &host_resolv);

    let port_mappings = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.host_port.unwrap_or(0) > 0)
        .map(|p| cri::PortMapping {
            protocol: protocol(p.protocol.as_deref()) as i32,
            container_port: p.container_port,
            host_port: p.host_port.unwrap_or(0),
            host_ip: p.host_ip.clone().unwrap_or_default(),
        })
        .collect();

    let psc = spec.security_context.as_ref();
    let sysctls = psc
        .and_then(|s| s.sysctls.as_ref())
        .into_iter()
        .flatten()
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    let privileged = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .any(|c| c.security_context.as_ref().and_then(|s| s.privileged) == Some(true));
    let security_context = cri::LinuxSandboxSecurityContext {
        namespace_options: Some(namespace_options(spec)),
        run_as_user: psc
            .and_then(|s| s.run_as_user)
            .map(|value| cri::Int64Value { value }),
        run_as_group: psc
            .and_then(|s| s.run_as_group)
            .map(|value| cri::Int64Value { value }),
        supplemental_groups: supplemental_groups(spec),
        privileged,
        seccomp: Some(seccomp(psc.and_then(|s| s.seccomp_profile.as_ref()))?),
        ..Default::default()
    };

    Ok(cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: meta.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            attempt,
        }),
        hostname,
        log_directory: node.pod_log_dir(&uid).display().to_string(),
        dns_config: Some(dns_config),
        port_mappings,
        labels,
        annotations,
        linux: Some(cri::LinuxPodSandboxConfig {
            security_context: Some(security_context),
            sysctls,
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn protocol(p: Option<&str>) -> cri::Protocol {
    match p {
        Some("UDP") => cri::Protocol::Udp,
        Some("SCTP") => cri::Protocol::Sctp,
        _ => cri::Protocol::Tcp,
    }
}

/// The pod's host name (`spec.hostname`, else its name cut to 63 characters) and domain
/// (`<subdomain>.<namespace>.svc.<cluster domain>` when `spec.subdomain` is set).
pub fn hostname_and_domain(pod: &Pod, node: &NodeContext) -> (String, Option<String>) {
    let spec = pod.spec.as_ref();
    let hostname = match spec
        .and_then(|s| s.hostname.clone())
        .filter(|h| !h.is_empty())
    {
        Some(h) => h,
        None => {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let mut cut: String = name.chars().take(63).collect();
            while cut.ends_with(['-', '.']) {
                cut.pop();
            }
            cut
        }
    };
    let domain = spec
        .and_then(|s| s.subdomain.clone())
        .filter(|s| !s.is_empty())
        .map(|sub| {
            format!(
                "{sub}.{}.svc.{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                node.cluster_domain
            )
        });
    (hostname, domain)
}

/// Namespaces of the pod's sandbox and containers: the node's for `hostNetwork`/`hostPID`/
/// `hostIPC`, the pod's process namespace with `shareProcessNamespace`, else one per container.
pub fn namespace_options(spec: &PodSpec) -> cri::NamespaceOption {
    let mode = |on: Option<bool>, otherwise: cri::NamespaceMode| {
        if on == Some(true) {
            cri::NamespaceMode::Node as i32
        } else {
            otherwise as i32
        }
    };
    let pid_otherwise = if spec.share_process_namespace == Some(true) {
        cri::NamespaceMode::Pod
    } else {
        cri::NamespaceMode::Container
    };
    cri::NamespaceOption {
        network: mode(spec.host_network, cri::NamespaceMode::Pod),
        pid: mode(spec.host_pid, pid_otherwise),
        ipc: mode(spec.host_ipc, cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

fn supplemental_groups(spec: &PodSpec) -> Vec<i64> {
    let psc = spec.security_context.as_ref();
    let mut groups: Vec<i64> = psc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs_group) = psc.and_then(|s| s.fs_group)
        && !groups.contains(&fs_group)
    {
        groups.push(fs_group);
    }
    groups
}

fn seccomp(profile: Option<&SeccompProfile>) -> Result<cri::SecurityProfile, ConfigError> {
    use cri::security_profile::ProfileType;
    let Some(p) = profile else {
        return Ok(cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            ..Default::default()
        });
    };
    Ok(match p.type_.as_str() {
        "RuntimeDefault" => cri::SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            ..Default::default()
        },
        "Unconfined" => cri::SecurityProfile {
            profile_type: ProfileType::Unconfined as i32,
            ..Default::default()
        },
        "Localhost" => cri::SecurityProfile {
            profile_type: ProfileType::Localhost as i32,
            localhost_ref: p.localhost_profile.clone().ok_or_else(|| {
                ConfigError::Invalid("seccompProfile Localhost without localhostProfile".into())
            })?,
        },
        other => {
            return Err(ConfigError::Invalid(format!(
                "unsupported seccompProfile type {other:?}"
            )));
        }
    })
}

/// What a resolv.conf says: nameservers, search domains, options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    /// `nameserver` lines.
    pub servers: Vec<String>,
    /// The last `search` (or `domain`) line's domains.
    pub searches: Vec<String>,
    /// The `options` lines' options.
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Parses resolv.conf text (comments with `#` or `;`).
    pub fn parse(text: &str) -> Self {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => conf.servers.extend(words.next().map(str::to_owned)),
                // The last search or domain line wins, as in glibc.
                Some("search" | "domain") => {
                    conf.searches = words.map(str::to_owned).collect();
                }
                Some("options") => conf.options.extend(words.map(str::to_owned)),
                _ => {}
            }
        }
        conf
    }
}

/// The DNS configuration of `pod` by its `dnsPolicy` (kubelet's `GetPodDNS`): `ClusterFirst`
/// the cluster's nameserver and search path with `ndots:5` (the host's when the node has no
/// cluster DNS, and for host-network pods unless `ClusterFirstWithHostNet`), `Default` the
/// host's `host` resolv.conf, `None` nothing; then `dnsConfig` merged in.
pub fn dns_config(pod: &Pod, node: &NodeContext, host: &ResolvConf) -> cri::DnsConfig {
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network) == Some(true);
    let policy = spec
        .and_then(|s| s.dns_policy.as_deref())
        .unwrap_or("ClusterFirst");
    let host_config = || cri::DnsConfig {
        servers: host.servers.clone(),
        searches: host.searches.clone(),
        options: host.options.clone(),
    };
    let cluster_first = match policy {
        "None" => None,
        "Default" => Some(false),
        "ClusterFirstWithHostNet" => Some(true),
        // ClusterFirst
        _ => Some(!host_network),
    };
    let mut config = match cluster_first {
        None => cri::DnsConfig::default(),
        Some(false) => host_config(),
        Some(true) => match node.cluster_dns {
            None => {
                tracing::warn!(
                    pod = pod.metadata.name.as_deref().unwrap_or(""),
                    "dnsPolicy ClusterFirst but the node has no cluster DNS: using the host's resolv.conf"
                );
                host_config()
            }
            Some(dns) => {
                let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
                let domain = &node.cluster_domain;
                let mut searches = vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.clone(),
                ];
                searches.extend(host.searches.iter().cloned());
                cri::DnsConfig {
                    servers: vec![dns.to_string()],
                    searches: dedup(searches),
                    options: vec!["ndots:5".into()],
                }
            }
        },
    };
    if let Some(extra) = spec.and_then(|s| s.dns_config.as_ref()) {
        config
            .servers
            .extend(extra.nameservers.iter().flatten().cloned());
        config
            .searches
            .extend(extra.searches.iter().flatten().cloned());
        config.servers = dedup(std::mem::take(&mut config.servers));
        config.searches = dedup(std::mem::take(&mut config.searches));
        for option in extra.options.iter().flatten() {
            let Some(name) = option.name.as_deref() else {
                continue;
            };
            let text = match &option.value {
                Some(v) => format!("{name}:{v}"),
                None => name.to_owned(),
            };
            let same = |o: &String| o.split(':').next() == Some(name);
            match config.options.iter_mut().find(|o| same(o)) {
                Some(o) => *o = text,
                None => config.options.push(text),
            }
        }
    }
    config.servers.truncate(MAX_NAMESERVERS);
    config.searches.truncate(MAX_SEARCHES);
    config
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
}

/// The configuration of `container` of `pod`; `pod_ip` for the downward API and the pod's
/// `/etc/hosts` (host-network pods get a copy of the node's).
#[allow(clippy::too_many_arguments)]
pub fn container_config(
    pod: &Pod,
    container: &Container,
    restart_count: u32,
    volumes: &PreparedVolumes,
    objects: &dyn Objects,
    node: &NodeContext,
    pod_ip: Option<&str>,
) -> Result<cri::ContainerConfig, ConfigError> {
    let spec = spec(pod)?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    // Everything that can refuse the spec before anything is written to the host.
    let security_context = container_security_context(pod, container)?;
    let env = container_env(pod, container, objects, node, pod_ip)?;

    let command = container
        .command
        .iter()
        .flatten()
        .map(|c| env.expand(c))
        .collect();
    let args = container
        .args
        .iter()
        .flatten()
        .map(|c| env.expand(c))
        .collect();

    let mut mounts = volume_mounts(container, volumes, &env)?;
    fn mounted(mounts: &[cri::Mount], path: &str) -> bool {
        mounts.iter().any(|m| m.container_path == path)
    }
    if !mounted(&mounts, "/etc/hosts")
        && let Some(hosts) = etc_hosts(pod, node, pod_ip)?
    {
        mounts.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.display().to_string(),
            ..Default::default()
        });
    }
    let termination_path = container
        .termination_message_path
        .clone()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| DEFAULT_TERMINATION_MESSAGE_PATH.into());
    if !mounted(&mounts, &termination_path) {
        let file = termination_log_file(node, &uid, &container.name, restart_count)?;
        mounts.push(cri::Mount {
            container_path: termination_path.clone(),
            host_path: file.display().to_string(),
            ..Default::default()
        });
    }

    let mut labels = pod_labels(pod);
    labels.insert(LABEL_CONTAINER_NAME.into(), container.name.clone());
    let mut annotations = HashMap::from([
        (
            ANNOTATION_RESTART_COUNT.to_owned(),
            restart_count.to_string(),
        ),
        (
            ANNOTATION_TERMINATION_MESSAGE_PATH.to_owned(),
            termination_path,
        ),
        (
            ANNOTATION_TERMINATION_MESSAGE_POLICY.to_owned(),
            container
                .termination_message_policy
                .clone()
                .unwrap_or_else(|| "File".into()),
        ),
    ]);
    if let Some(grace) = spec.termination_grace_period_seconds {
        annotations.insert(
            ANNOTATION_TERMINATION_GRACE_PERIOD.into(),
            grace.to_string(),
        );
    }

    Ok(cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: container.name.clone(),
            attempt: restart_count,
        }),
        image: Some(cri::ImageSpec {
            image: container.image.clone().unwrap_or_default(),
            ..Default::default()
        }),
        command,
        args,
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: env
            .vars()
            .iter()
            .map(|(key, value)| cri::KeyValue {
                key: key.clone(),
                value: value.clone(),
            })
            .collect(),
        mounts,
        labels,
        annotations,
        log_path: format!("{}/{}.log", container.name, restart_count),
        stdin: container.stdin == Some(true),
        stdin_once: container.stdin_once == Some(true),
        tty: container.tty == Some(true),
        linux: Some(cri::LinuxContainerConfig {
            resources: Some(linux_resources(pod, container, node)),
            security_context: Some(security_context),
        }),
        ..Default::default()
    })
}

/// The CRI mounts of `container`'s volumeMounts over the prepared `volumes`.
fn volume_mounts(
    container: &Container,
    volumes: &PreparedVolumes,
    env: &Env,
) -> Result<Vec<cri::Mount>, ConfigError> {
    let privileged = container
        .security_context
        .as_ref()
        .and_then(|s| s.privileged)
        == Some(true);
    let mut mounts = Vec::new();
    for vm in container.volume_mounts.iter().flatten() {
        let volume = volumes.paths.get(&vm.name).ok_or_else(|| {
            ConfigError::Invalid(format!(
                "cannot find volume {:?} to mount into container {:?}",
                vm.name, container.name
            ))
        })?;
        let sub_path = match (&vm.sub_path, &vm.sub_path_expr) {
            (Some(p), _) if !p.is_empty() => Some(p.clone()),
            (_, Some(e)) if !e.is_empty() => Some(env.expand(e)),
            _ => None,
        };
        let host_path = match sub_path {
            None => volume.host_path.clone(),
            Some(sub) => sub_path_on_host(&volume.host_path, &sub, volume.read_only)?,
        };
        let propagation = match vm.mount_propagation.as_deref() {
            None | Some("None") => cri::MountPropagation::PropagationPrivate,
            Some("HostToContainer") => cri::MountPropagation::PropagationHostToContainer,
            Some("Bidirectional") if privileged => cri::MountPropagation::PropagationBidirectional,
            Some("Bidirectional") => {
                return Err(ConfigError::Invalid(format!(
                    "volumeMount {:?}: Bidirectional mount propagation needs a privileged container",
                    vm.name
                )));
            }
            Some(other) => {
                return Err(ConfigError::Invalid(format!(
                    "volumeMount {:?}: unknown mountPropagation {other:?}",
                    vm.name
                )));
            }
        };
        mounts.push(cri::Mount {
            container_path: vm.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: vm.read_only == Some(true) || volume.read_only,
            propagation: propagation as i32,
            ..Default::default()
        });
    }
    Ok(mounts)
}

/// `sub` inside the volume at `root`: relative without `..`, and (symlinks resolved) still
/// inside the volume, so a container cannot point a later mount at the host. Created as a
/// directory when missing in a writable volume, as kubelet.
fn sub_path_on_host(root: &Path, sub: &str, read_only: bool) -> Result<PathBuf, ConfigError> {
    let rel = Path::new(sub);
    if !rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ConfigError::Invalid(format!(
            "subPath {sub:?} must be a relative path without '..'"
        )));
    }
    let path = root.join(rel);
    let io = |source, path: &Path| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(&path).is_err() && !read_only {
        std::fs::create_dir_all(&path).map_err(|e| io(e, &path))?;
    }
    let real_root = root.canonicalize().map_err(|e| io(e, root))?;
    let real = path.canonicalize().map_err(|e| io(e, &path))?;
    if !real.starts_with(&real_root) {
        return Err(ConfigError::Invalid(format!(
            "subPath {sub:?} resolves to {} outside its volume",
            real.display()
        )));
    }
    Ok(real)
}

/// Writes `content` to `path` unless it already holds it (mode 0644).
fn write_if_changed(path: &Path, content: &[u8]) -> Result<(), ConfigError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if std::fs::read(path).is_ok_and(|c| c == content) {
        return Ok(());
    }
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(content).map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io)
}

/// The pod's `/etc/hosts` as kubelet manages it: localhost entries and the pod's own name on
/// its IP (the node's file for host-network pods), then `hostAliases`. `None` without a pod
/// IP: kubelet mounts none then either.
pub fn etc_hosts_content(
    pod: &Pod,
    node: &NodeContext,
    pod_ip: Option<&str>,
) -> Result<Option<String>, ConfigError> {
    let spec = pod.spec.as_ref();
    let mut out = String::new();
    if spec.and_then(|s| s.host_network) == Some(true) {
        let host =
            std::fs::read_to_string(&node.host_hosts_file).map_err(|source| ConfigError::Io {
                path: node.host_hosts_file.clone(),
                source,
            })?;
        out.push_str(&host);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
    } else {
        let Some(ip) = pod_ip.filter(|ip| !ip.is_empty()) else {
            return Ok(None);
        };
        out.push_str(
            "# Kubernetes-managed hosts file.\n\
             127.0.0.1\tlocalhost\n\
             ::1\tlocalhost ip6-localhost ip6-loopback\n\
             fe00::0\tip6-localnet\n\
             fe00::0\tip6-mcastprefix\n\
             fe00::1\tip6-allnodes\n\
             fe00::2\tip6-allrouters\n",
        );
        let (hostname, domain) = hostname_and_domain(pod, node);
        match domain {
            Some(d) => out.push_str(&format!("{ip}\t{hostname}.{d}\t{hostname}\n")),
            None => out.push_str(&format!("{ip}\t{hostname}\n")),
        }
    }
    let aliases = spec.and_then(|s| s.host_aliases.as_ref());
    if let Some(aliases) = aliases.filter(|a| !a.is_empty()) {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in aliases {
            let names = a.hostnames.clone().unwrap_or_default().join("\t");
            out.push_str(&format!("{}\t{names}\n", a.ip));
        }
    }
    Ok(Some(out))
}

fn etc_hosts(
    pod: &Pod,
    node: &NodeContext,
    pod_ip: Option<&str>,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(content) = etc_hosts_content(pod, node, pod_ip)? else {
        return Ok(None);
    };
    let path = node.pod_etc_hosts(pod.metadata.uid.as_deref().unwrap_or_default());
    write_if_changed(&path, content.as_bytes())?;
    Ok(Some(path))
}

/// The host file of one container instance's termination message,
/// `<pod dir>/containers/<name>/<restart count>`, created empty and writable by anyone (the
/// container may run as any user), as kubelet does.
pub fn termination_log_file(
    node: &NodeContext,
    uid: &str,
    container: &str,
    restart_count: u32,
) -> Result<PathBuf, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = node.pod_dir(uid).join("containers").join(container);
    let path = dir.join(restart_count.to_string());
    let io = |source, path: &Path| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| io(e, &dir))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| io(e, &path))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| io(e, &path))?;
    Ok(path)
}

/// The container's security context: its own settings over the pod's (user, group,
/// non-root, seccomp), the pod's supplemental groups and fsGroup, the pod's namespaces.
pub fn container_security_context(
    pod: &Pod,
    container: &Container,
) -> Result<cri::LinuxContainerSecurityContext, ConfigError> {
    let spec = spec(pod)?;
    let psc = spec.security_context.as_ref();
    let csc = container.security_context.as_ref();
    let run_as_user = csc
        .and_then(|s| s.run_as_user)
        .or(psc.and_then(|s| s.run_as_user));
    let run_as_group = csc
        .and_then(|s| s.run_as_group)
        .or(psc.and_then(|s| s.run_as_group));
    let run_as_non_root = csc
        .and_then(|s| s.run_as_non_root)
        .or(psc.and_then(|s| s.run_as_non_root))
        == Some(true);
    if run_as_non_root {
        match run_as_user {
            Some(0) => {
                return Err(ConfigError::Invalid(format!(
                    "container's runAsUser breaks non-root policy (pod: {:?}, container: {})",
                    pod.metadata.name.as_deref().unwrap_or(""),
                    container.name
                )));
            }
            Some(_) => {}
            None => {
                return Err(ConfigError::Invalid(format!(
                    "container {} has runAsNonRoot without runAsUser: this node cannot verify \
                     that the image's user is not root; set securityContext.runAsUser",
                    container.name
                )));
            }
        }
    }
    let privileged = csc.and_then(|s| s.privileged) == Some(true);
    let unmasked = csc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked");
    let capabilities = csc
        .and_then(|s| s.capabilities.as_ref())
        .map(|c| cri::Capability {
            add_capabilities: c.add.clone().unwrap_or_default(),
            drop_capabilities: c.drop.clone().unwrap_or_default(),
            ..Default::default()
        });
    let profile = csc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or(psc.and_then(|s| s.seccomp_profile.as_ref()));
    Ok(cri::LinuxContainerSecurityContext {
        capabilities,
        privileged,
        namespace_options: Some(namespace_options(spec)),
        run_as_user: run_as_user.map(|value| cri::Int64Value { value }),
        run_as_group: run_as_group.map(|value| cri::Int64Value { value }),
        readonly_rootfs: csc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        supplemental_groups: supplemental_groups(spec),
        // Privilege escalation is allowed unless explicitly refused, and always for
        // privileged containers (upstream `AddNoNewPrivileges`).
        no_new_privs: !privileged && csc.and_then(|s| s.allow_privilege_escalation) == Some(false),
        // Privileged containers see all of /proc and /sys, as upstream. (An empty list
        // reaches containerd as "unset", which keeps its own defaults: `procMount:
        // Unmasked`, which upstream allows only with a user namespace, changes nothing.)
        masked_paths: if privileged || unmasked {
            Vec::new()
        } else {
            DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect()
        },
        readonly_paths: if privileged || unmasked {
            Vec::new()
        } else {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect()
        },
        seccomp: Some(if privileged {
            seccomp(None)?
        } else {
            seccomp(profile)?
        }),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests;
