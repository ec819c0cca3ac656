//! Facts about the machine for the header (date, commit, CPU, memory, disk) and memory figures
//! of processes, all from `/proc` so that no extra dependency is needed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};

/// The filesystem a path lives on, from `/proc/mounts`.
#[derive(Debug, Clone)]
pub struct Filesystem {
    pub device: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

impl Filesystem {
    pub fn is_tmpfs(&self) -> bool {
        matches!(self.fs_type.as_str(), "tmpfs" | "ramfs")
    }
}

impl std::fmt::Display for Filesystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {} mounted at {}",
            self.fs_type,
            self.device,
            self.mount_point.display()
        )
    }
}

/// The mount holding `path` (the longest mount point that is a prefix of it).
pub fn filesystem(path: &Path) -> Option<Filesystem> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (device, mount_point, fs_type) = (f.next()?, f.next()?, f.next()?);
            let mount_point = PathBuf::from(mount_point.replace("\\040", " "));
            path.starts_with(&mount_point).then(|| Filesystem {
                device: device.to_string(),
                mount_point,
                fs_type: fs_type.to_string(),
            })
        })
        .max_by_key(|fs| fs.mount_point.components().count())
}

/// What the header says about the run's environment.
#[derive(Debug)]
pub struct Facts {
    date: String,
    commit: String,
    cpus: usize,
    cpu_model: String,
    mem_total_kib: u64,
    kernel: String,
    data_dir: PathBuf,
    data_fs: Option<Filesystem>,
    etcd_parent: PathBuf,
    etcd_fs: Option<Filesystem>,
    etcd_version: String,
}

impl Facts {
    pub fn collect(data_dir: &Path) -> Self {
        let etcd_parent = std::env::temp_dir();
        Self {
            date: utc_now(),
            commit: git_commit(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model: proc_field("/proc/cpuinfo", "model name")
                .unwrap_or_else(|| "unknown CPU".into()),
            mem_total_kib: proc_field("/proc/meminfo", "MemTotal")
                .and_then(|v| kib(&v))
                .unwrap_or(0),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            data_dir: data_dir.to_path_buf(),
            data_fs: filesystem(data_dir),
            etcd_fs: filesystem(&etcd_parent),
            etcd_parent,
            etcd_version: etcd_version(),
        }
    }

    pub fn header_lines(&self, settings: &str, quota_arg: &str) -> Vec<String> {
        let fs = |f: &Option<Filesystem>| f.as_ref().map_or("unknown fs".into(), |f| f.to_string());
        vec![
            format!("date      {}", self.date),
            format!("commit    {}", self.commit),
            format!(
                "machine   {} cores ({}), {:.1} GiB RAM, Linux {}",
                self.cpus,
                self.cpu_model,
                self.mem_total_kib as f64 / 1048576.0,
                self.kernel
            ),
            format!(
                "disk      embedded in {} ({}); etcd in {} ({})",
                self.data_dir.display(),
                fs(&self.data_fs),
                self.etcd_parent.display(),
                fs(&self.etcd_fs)
            ),
            format!(
                "etcd      {}, fsync on every commit (production durability), {quota_arg}",
                self.etcd_version
            ),
            "embedded  redb + write-ahead log, fsync on every group commit, redb checkpoint every \
             250 ms, 32 MiB cache"
                .to_string(),
            format!("load      {} (1/5/15 min) at start", load_average()),
            format!("run       {settings}"),
        ]
    }

    /// Conditions that make the figures meaningless or unfair.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (what, fs) in [("embedded", &self.data_fs), ("etcd", &self.etcd_fs)] {
            if fs.as_ref().is_some_and(Filesystem::is_tmpfs) {
                w.push(format!(
                    "the {what} data is on tmpfs: fsync costs nothing there; use --data-dir"
                ));
            }
        }
        if let (Some(a), Some(b)) = (&self.data_fs, &self.etcd_fs)
            && a.device != b.device
        {
            w.push(format!(
                "the backends' data are on different devices ({} and {})",
                a.device, b.device
            ));
        }
        w
    }
}

/// Memory figures of a process, from `/proc/<pid>/status` and `/proc/<pid>/smaps_rollup`, in
/// KiB. PSS (proportional set size) charges each shared page to its sharers in equal parts, so
/// the PSS of several processes sums to what they use together, where their RSS counts the pages
/// of a shared executable (the server and the agent are one binary; every containerd shim is the
/// same one) once per process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
    pub hwm_kib: u64,
    /// 0 where `smaps_rollup` is not readable.
    pub pss_kib: u64,
}

impl Memory {
    /// This process (`None`) or another one.
    pub fn of_process(pid: Option<u32>) -> anyhow::Result<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/status"),
            None => "/proc/self/status".into(),
        };
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let rollup = path.replace("/status", "/smaps_rollup");
        let pss_kib = proc_field(&rollup, "Pss")
            .and_then(|v| kib(&v))
            .unwrap_or(0);
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(kib)
                .with_context(|| format!("no {name} in {path}"))
        };
        Ok(Self {
            rss_kib: field("VmRSS")?,
            anon_kib: field("RssAnon")?,
            file_kib: field("RssFile")?,
            hwm_kib: field("VmHWM")?,
            pss_kib,
        })
    }

    /// The line the RSS child prints.
    pub fn to_line(self) -> String {
        format!(
            "memory rss_kib={} anon_kib={} file_kib={} hwm_kib={} pss_kib={}",
            self.rss_kib, self.anon_kib, self.file_kib, self.hwm_kib, self.pss_kib
        )
    }

    /// Parses [`Self::to_line`] out of the RSS child's output.
    pub fn parse_line(out: &str) -> anyhow::Result<Self> {
        let Some(line) = out.lines().find(|l| l.starts_with("memory ")) else {
            bail!("the RSS child printed no memory line: {out:?}");
        };
        let get = |name: &str| -> anyhow::Result<u64> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .context(format!("no {name} in {line:?}"))?
                .parse()
                .with_context(|| format!("bad {name} in {line:?}"))
        };
        Ok(Self {
            rss_kib: get("rss_kib")?,
            anon_kib: get("anon_kib")?,
            file_kib: get("file_kib")?,
            hwm_kib: get("hwm_kib")?,
            pss_kib: get("pss_kib")?,
        })
    }
}

/// The load averages of `/proc/loadavg`: other work on the machine skews the figures.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// `"  123 kB"` -> 123.
fn kib(v: &str) -> Option<u64> {
    v.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The value of the first `name: value` line of a `/proc` file.
fn proc_field(file: &str, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == name).then(|| v.trim().to_string())
    })
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(commit) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{commit} (with uncommitted changes)")
            } else {
                commit
            }
        }
        None => "unknown (not a git checkout)".into(),
    }
}

fn etcd_version() -> String {
    let binary = std::env::var_os("EDGESITE_ETCD")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("PATH").and_then(|p| {
                std::env::split_paths(&p)
                    .map(|d| d.join("etcd"))
                    .find(|p| p.is_file())
            })
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout).lines().find_map(|l| {
                l.strip_prefix("etcd Version:")
                    .map(|v| v.trim().to_string())
            })
        })
        .unwrap_or_else(|| "(version unknown)".into());
    format!("{} {version}", binary.display())
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_418), (2025, 11, 26));
    }

    #[test]
    fn memory_line_round_trips() {
        let m = Memory {
            rss_kib: 1,
            anon_kib: 2,
            file_kib: 3,
            hwm_kib: 4,
            pss_kib: 5,
        };
        let back = Memory::parse_line(&format!("noise\n{}\n", m.to_line())).unwrap();
        assert_eq!(
            (
                back.rss_kib,
                back.anon_kib,
                back.file_kib,
                back.hwm_kib,
                back.pss_kib
            ),
            (1, 2, 3, 4, 5)
        );
    }

    #[test]
    fn own_memory_is_readable() {
        let m = Memory::of_process(None).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib);
    }

    #[test]
    fn root_is_on_some_filesystem() {
        assert!(filesystem(Path::new("/")).is_some());
    }
}
