//! Pod networking: the CNI configuration the managed containerd's CRI plugin reads, and its
//! cleanup.
//!
//! [`PodNetwork`] writes `ADIR/cni/net.d/10-edgesite.conflist` (CNI spec 1.0.0, which the
//! Debian `containernetworking-plugins` 1.1 answer to `CNI_COMMAND=VERSION`): a `bridge` per
//! agent (the node's gateway, masquerading pods' traffic that leaves the pod CIDR, hairpin so a
//! pod reaches itself through a Service), `host-local` addresses from the node's pod CIDR kept
//! under `ADIR/cni/ipam`, and `portmap` for `hostPort`s. The loopback interface of every pod is
//! brought up by containerd 1.6's CRI plugin itself (it runs the `loopback` plugin from the
//! same `bin_dir` before the conflist), so it is not in the list.
//!
//! Everything that lives outside the agent directory is named after it: the bridge is `es` and
//! 6 hex digits of a hash of ADIR, and the network's name (which the `bridge` plugin writes
//! into its iptables comments and `host-local` uses as its directory) is `edgesite-<bridge>`,
//! so two agents on one host never share a link, an address file or a rule. [`cleanup`]
//! removes them.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// The file name of the conflist under [`conf_dir`]. `10-` so it sorts before anything else an
/// operator drops there: the CRI plugin uses the first one.
pub const CONFLIST_FILE: &str = "10-edgesite.conflist";

/// The CNI spec version of the configuration.
pub const CNI_VERSION: &str = "1.0.0";

/// Linux's `IFNAMSIZ` (16) less the terminating NUL.
pub const MAX_IFNAME: usize = 15;

/// Why the pod network cannot be configured or cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pod CIDR is not an IPv4 network of a size a node can hold.
    #[error(
        "invalid pod CIDR {cidr:?}: {reason} (expected an IPv4 network address with a prefix \
         from /16 to /28, e.g. 10.42.3.0/24)"
    )]
    InvalidCidr {
        /// What was given.
        cidr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A path of the configuration cannot go into JSON as a string (not UTF-8).
    #[error("the path {0} is not UTF-8 and cannot go into the CNI configuration")]
    NonUtf8Path(PathBuf),
    /// A file or directory cannot be written or removed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// `write`, `rename`, `remove`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A network command (`ip`, `iptables`) is missing or failed.
    #[error("`{command}` failed: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and stderr, or why it could not run (a missing binary names the
        /// Debian package).
        reason: String,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An IPv4 network `address/prefix` whose host bits are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    address: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The smallest prefix (largest network) a node's pod CIDR may have.
    pub const MIN_PREFIX: u8 = 16;
    /// The largest prefix (smallest network): 16 addresses, 13 for pods.
    pub const MAX_PREFIX: u8 = 28;

    /// The network address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }
    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }
    /// The first address after the network address: the bridge's, the pods' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) + 1)
    }
    /// Whether `ip` is inside the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.address)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidCidr {
            cidr: s.to_string(),
            reason,
        };
        let (address, prefix) = s
            .split_once('/')
            .ok_or_else(|| invalid("no /prefix".into()))?;
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| invalid(format!("{address:?} is not an IPv4 address")))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| invalid(format!("{prefix:?} is not a prefix length")))?;
        if !(Self::MIN_PREFIX..=Self::MAX_PREFIX).contains(&prefix) {
            return Err(invalid(format!(
                "/{prefix} is outside /{}../{}",
                Self::MIN_PREFIX,
                Self::MAX_PREFIX
            )));
        }
        let cidr = Self { address, prefix };
        let network = Ipv4Addr::from(u32::from(address) & cidr.mask());
        if network != address {
            return Err(invalid(format!(
                "{address} has host bits set; the network address is {network}"
            )));
        }
        Ok(cidr)
    }
}

/// `ADIR/cni/net.d`: where the CRI plugin reads CNI configurations (its `conf_dir`).
pub fn conf_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("cni").join("net.d")
}

/// `ADIR/cni/ipam`: `host-local`'s `dataDir`, one file per allocated address under
/// `<network name>/`.
pub fn ipam_dir(agent_dir: &Path) -> PathBuf {
    agent_dir.join("cni").join("ipam")
}

/// The agent's bridge: `es` and the first 6 hex digits of SHA-256 of the agent directory's path
/// (as given, not canonicalised), 8 characters, well within [`MAX_IFNAME`].
pub fn bridge_name(agent_dir: &Path) -> String {
    let hash = Sha256::digest(agent_dir.as_os_str().as_encoded_bytes());
    format!("es{}", edgesite_api::join::hex(&hash[..3]))
}

/// The CNI network's name: `edgesite-<bridge>`.
pub fn network_name(agent_dir: &Path) -> String {
    format!("edgesite-{}", bridge_name(agent_dir))
}

/// The pod network of one node agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNetwork {
    /// The agent's directory (`ADIR`).
    pub agent_dir: PathBuf,
    /// The node's pod CIDR.
    pub pod_cidr: Ipv4Cidr,
    /// The bridge's name ([`bridge_name`] of the agent directory).
    pub bridge: String,
}

impl PodNetwork {
    /// The network for `agent_dir` with the node's `pod_cidr` (`10.42.3.0/24`), validated.
    pub fn new(agent_dir: impl Into<PathBuf>, pod_cidr: &str) -> Result<Self> {
        let agent_dir = agent_dir.into();
        Ok(Self {
            pod_cidr: pod_cidr.parse()?,
            bridge: bridge_name(&agent_dir),
            agent_dir,
        })
    }

    /// The CNI network's name ([`network_name`]).
    pub fn name(&self) -> String {
        network_name(&self.agent_dir)
    }
    /// `ADIR/cni/net.d/10-edgesite.conflist`.
    pub fn conflist_path(&self) -> PathBuf {
        conf_dir(&self.agent_dir).join(CONFLIST_FILE)
    }
    /// `host-local`'s `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        ipam_dir(&self.agent_dir)
    }
    /// Where `host-local` records that `ip` is allocated.
    pub fn lease_path(&self, ip: Ipv4Addr) -> PathBuf {
        self.ipam_dir().join(self.name()).join(ip.to_string())
    }

    /// The conflist.
    pub fn render(&self) -> Result<serde_json::Value> {
        let data_dir = self.ipam_dir();
        let data_dir = data_dir
            .to_str()
            .ok_or_else(|| Error::NonUtf8Path(data_dir.clone()))?;
        Ok(serde_json::json!({
            "cniVersion": CNI_VERSION,
            "name": self.name(),
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{
                            "subnet": self.pod_cidr.to_string(),
                            "gateway": self.pod_cidr.gateway().to_string(),
                        }]],
                        "routes": [{ "dst": "0.0.0.0/0" }],
                        "dataDir": data_dir,
                    },
                },
                {
                    "type": "portmap",
                    "capabilities": { "portMappings": true },
                    "snat": true,
                },
            ],
        }))
    }

    /// Writes the conflist atomically (a temporary file in the same directory, renamed over
    /// it), so the CRI plugin, which watches the directory, never reads half a file. Returns
    /// its path.
    pub fn write(&self) -> Result<PathBuf> {
        let dir = conf_dir(&self.agent_dir);
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let mut text = serde_json::to_string_pretty(&self.render()?).map_err(|e| Error::Io {
            action: "serialise",
            path: self.conflist_path(),
            source: e.into(),
        })?;
        text.push('\n');
        let path = self.conflist_path();
        // A leading dot and a `.tmp` suffix: libcni only loads `.conf`, `.conflist`, `.json`.
        let tmp = dir.join(format!(".{CONFLIST_FILE}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, text).map_err(|source| Error::Io {
            action: "write",
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Io {
                action: "rename",
                path: path.clone(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), cidr = %self.pod_cidr, bridge = %self.bridge, "wrote the pod network");
        Ok(path)
    }
}

/// Removes what the pod network of `agent_dir` leaves on the host once its pods are gone: the
/// bridge (the `bridge` plugin never deletes it), `host-local`'s address files, and the
/// `bridge` plugin's masquerading rules of pods that were never torn down through CNI (a killed
/// containerd). Idempotent; a missing bridge or directory is not an error. The pods' veths go
/// with their network namespaces.
pub fn cleanup(agent_dir: &Path) -> Result<()> {
    let bridge = bridge_name(agent_dir);
    let mut first_error = None;
    if Path::new("/sys/class/net").join(&bridge).exists()
        && let Err(e) = run("ip", &["link", "del", "dev", &bridge], "iproute2")
    {
        first_error.get_or_insert(e);
    }
    if let Err(e) = remove_masquerade_rules(&network_name(agent_dir)) {
        first_error.get_or_insert(e);
    }
    let ipam = ipam_dir(agent_dir);
    match std::fs::remove_dir_all(&ipam) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            first_error.get_or_insert(Error::Io {
                action: "remove",
                path: ipam,
                source,
            });
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// The `bridge` plugin's `ipMasq` adds, per pod, a `nat POSTROUTING` rule commented
/// `name: "<network>" id: "<container>"` jumping to a `CNI-…` chain. Deletes those rules of
/// `network` and their chains. Without `iptables` there is nothing it could have added.
fn remove_masquerade_rules(network: &str) -> Result<()> {
    if find_in_path("iptables").is_none() {
        return Ok(());
    }
    let rules = run(
        "iptables",
        &["-w", "-t", "nat", "-S", "POSTROUTING"],
        "iptables",
    )?;
    let needle = format!("name: \\\"{network}\\\" ");
    for rule in rules.lines().filter(|r| r.contains(&needle)) {
        let Some(spec) = rule.strip_prefix("-A POSTROUTING ") else {
            continue;
        };
        let args = split_rule(spec);
        let chain = args
            .windows(2)
            .find(|w| w[0] == "-j")
            .map(|w| w[1].clone())
            .filter(|c| c.starts_with("CNI-"));
        let mut delete = vec!["-w", "-t", "nat", "-D", "POSTROUTING"];
        delete.extend(args.iter().map(String::as_str));
        run("iptables", &delete, "iptables")?;
        if let Some(chain) = chain {
            run("iptables", &["-w", "-t", "nat", "-F", &chain], "iptables")?;
            run("iptables", &["-w", "-t", "nat", "-X", &chain], "iptables")?;
        }
    }
    Ok(())
}

/// Splits an `iptables -S` rule into arguments: words, and `"…"` strings with `\"` escapes.
fn split_rule(rule: &str) -> Vec<String> {
    let mut args = Vec::new();
    let mut chars = rule.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c == ' ' {
            chars.next();
            continue;
        }
        let mut arg = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => arg.extend(chars.next()),
                    '"' => break,
                    c => arg.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' {
                    break;
                }
                arg.push(c);
                chars.next();
            }
        }
        args.push(arg);
    }
    args
}

/// Runs `program args`, returning its stdout; a missing binary names `package`.
fn run(program: &str, args: &[&str], package: &str) -> Result<String> {
    let command = format!("{program} {}", args.join(" "));
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| Error::Command {
            command: command.clone(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                format!("{program} is not installed: install the Debian package `{package}`")
            } else {
                e.to_string()
            },
        })?;
    if !output.status.success() {
        return Err(Error::Command {
            command,
            reason: format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conflist_has_the_bridge_the_range_and_state_under_the_agent_dir() {
        let adir = PathBuf::from("/var/lib/edgesite \"agent\"");
        let net = PodNetwork::new(&adir, "10.42.3.0/24").unwrap();
        let text = serde_json::to_string(&net.render().unwrap()).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["cniVersion"], "1.0.0");
        assert_eq!(doc["name"], format!("edgesite-{}", net.bridge));
        let plugins = doc["plugins"].as_array().unwrap();
        let types: Vec<_> = plugins
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["bridge", "portmap"]);
        let bridge = &plugins[0];
        assert_eq!(bridge["bridge"], net.bridge);
        for flag in ["isGateway", "ipMasq", "hairpinMode"] {
            assert_eq!(bridge[flag], true, "{flag}");
        }
        let ipam = &bridge["ipam"];
        assert_eq!(ipam["type"], "host-local");
        assert_eq!(ipam["ranges"][0][0]["subnet"], "10.42.3.0/24");
        assert_eq!(ipam["ranges"][0][0]["gateway"], "10.42.3.1");
        assert_eq!(ipam["routes"][0]["dst"], "0.0.0.0/0");
        let data_dir = PathBuf::from(ipam["dataDir"].as_str().unwrap());
        assert!(data_dir.starts_with(&adir), "{}", data_dir.display());
        assert_eq!(data_dir, adir.join("cni/ipam"));
        let portmap = &plugins[1];
        assert_eq!(portmap["capabilities"]["portMappings"], true);
        assert_eq!(portmap["snat"], true);
        assert_eq!(
            net.lease_path("10.42.3.7".parse().unwrap()),
            adir.join("cni/ipam").join(net.name()).join("10.42.3.7")
        );
    }

    #[test]
    fn bridge_names_fit_an_ifname_and_differ_per_agent_dir() {
        let a = bridge_name(Path::new("/tmp/es-ctd-a"));
        let b = bridge_name(Path::new("/tmp/es-ctd-b"));
        assert_ne!(a, b);
        let long = bridge_name(Path::new(&format!("/{}", "x".repeat(4000))));
        for name in [&a, &b, &long] {
            assert!(name.len() <= MAX_IFNAME, "{name}");
            assert!(name.starts_with("es"), "{name}");
            assert!(name[2..].chars().all(|c| c.is_ascii_hexdigit()), "{name}");
        }
        assert_eq!(a, bridge_name(Path::new("/tmp/es-ctd-a")), "stable");
    }

    #[test]
    fn pod_cidrs_are_validated_with_a_clear_error() {
        for ok in ["10.42.3.0/24", "10.42.0.0/16", "192.168.7.16/28"] {
            let cidr: Ipv4Cidr = ok.parse().unwrap();
            assert_eq!(cidr.to_string(), ok);
        }
        let cidr: Ipv4Cidr = "10.42.3.0/24".parse().unwrap();
        assert_eq!(cidr.gateway(), Ipv4Addr::new(10, 42, 3, 1));
        assert!(cidr.contains(Ipv4Addr::new(10, 42, 3, 254)));
        assert!(!cidr.contains(Ipv4Addr::new(10, 42, 4, 1)));
        for (bad, why) in [
            ("10.42.3.0", "no /prefix"),
            (
                "10.42.3.1/24",
                "host bits set; the network address is 10.42.3.0",
            ),
            ("10.42.0.0/15", "/15 is outside /16../28"),
            ("10.42.3.0/29", "/29 is outside /16../28"),
            ("fd00::/64", "is not an IPv4 address"),
            ("10.42.3.0/x", "is not a prefix length"),
        ] {
            let err = PodNetwork::new("/a", bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains(why), "{bad}: {text}");
            assert!(
                text.starts_with(&format!("invalid pod CIDR {bad:?}")),
                "{text}"
            );
            assert!(text.contains("from /16 to /28"), "{text}");
        }
    }

    #[test]
    fn the_conflist_is_written_atomically_into_the_conf_dir() {
        let dir = tempfile::tempdir().unwrap();
        let net = PodNetwork::new(dir.path(), "10.42.3.0/24").unwrap();
        let path = net.write().unwrap();
        assert_eq!(path, dir.path().join("cni/net.d/10-edgesite.conflist"));
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(doc, net.render().unwrap());
        // Rewriting replaces it and leaves no temporary file.
        let other = PodNetwork::new(dir.path(), "10.42.4.0/24").unwrap();
        other.write().unwrap();
        let names: Vec<_> = std::fs::read_dir(conf_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CONFLIST_FILE]);
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            doc["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.42.4.0/24"
        );
    }

    #[test]
    fn a_missing_network_command_names_its_package() {
        let err = run("edgesite-no-such-ip", &["link"], "iproute2").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("`edgesite-no-such-ip link` failed"),
            "{text}"
        );
        assert!(
            text.contains("install the Debian package `iproute2`"),
            "{text}"
        );
        let err = run("false", &[], "coreutils").unwrap_err();
        assert!(err.to_string().contains("exit status: 1"), "{err}");
    }

    #[test]
    fn cleaning_up_an_agent_dir_without_a_network_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(ipam_dir(dir.path()).join("edgesite-x")).unwrap();
        cleanup(dir.path()).unwrap();
        assert!(!ipam_dir(dir.path()).exists());
        cleanup(dir.path()).unwrap();
    }

    #[test]
    fn iptables_rules_split_into_arguments() {
        let rule = r#"-s 10.88.7.2/32 -m comment --comment "name: \"edgesite-es12ab34\" id: \"abc\"" -j CNI-0123"#;
        assert_eq!(
            split_rule(rule),
            [
                "-s",
                "10.88.7.2/32",
                "-m",
                "comment",
                "--comment",
                r#"name: "edgesite-es12ab34" id: "abc""#,
                "-j",
                "CNI-0123"
            ]
        );
    }
}
