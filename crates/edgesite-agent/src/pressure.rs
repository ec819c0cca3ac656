//! The node's resource pressure: `MemoryPressure`, `DiskPressure` and `PIDPressure`, from what
//! the host has left, with kubelet's default hard eviction thresholds (`memory.available<100Mi`,
//! `nodefs.available<10%`, `nodefs.inodesFree<5%`) and a process-id threshold of its own
//! (`pid.available<10%` of `kernel.pid_max`; kubelet has none by default).
//!
//! [`sample`] reads the host; [`Thresholds::pressure`] is pure, so the decisions are tested on
//! numbers. The thresholds are set as kubelet's `--eviction-hard`
//! (`memory.available<200Mi,nodefs.available<5%`); a signal not named keeps its default.

use std::path::Path;
use std::str::FromStr;

/// A `--eviction-hard` value that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "bad eviction threshold {0:?}: want SIGNAL<AMOUNT, comma-separated, with SIGNAL one of memory.available (a quantity like 100Mi), nodefs.available, nodefs.inodesFree, pid.available (a percentage like 10%)"
)]
pub struct BadThreshold(pub String);

/// What the host has, as read at one moment; `None` for what could not be read (which never
/// counts as pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// `MemAvailable` of `/proc/meminfo`, bytes.
    pub memory_available: Option<u64>,
    /// Bytes available to unprivileged users and in total on the agent's filesystem.
    pub disk: Option<(u64, u64)>,
    /// Inodes free and in total on the agent's filesystem (a filesystem without a fixed
    /// number of inodes reports 0 in total: no inode pressure).
    pub inodes: Option<(u64, u64)>,
    /// Processes and threads alive, and `kernel.pid_max`.
    pub pids: Option<(u64, u64)>,
}

/// When a resource counts as short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Memory pressure below this many bytes available.
    pub memory_available: u64,
    /// Disk pressure below this percentage of the filesystem available...
    pub disk_available_percent: u64,
    /// ... or below this percentage of its inodes free.
    pub inodes_free_percent: u64,
    /// PID pressure below this percentage of `pid_max` left.
    pub pids_available_percent: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            memory_available: 100 << 20,
            disk_available_percent: 10,
            inodes_free_percent: 5,
            pids_available_percent: 10,
        }
    }
}

impl FromStr for Thresholds {
    type Err = BadThreshold;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut t = Thresholds::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || BadThreshold(item.to_owned());
            let (signal, amount) = item.split_once('<').ok_or_else(bad)?;
            let percent = || {
                amount
                    .trim()
                    .strip_suffix('%')
                    .and_then(|p| p.parse::<u64>().ok())
                    .filter(|&p| p <= 100)
                    .ok_or_else(bad)
            };
            match signal.trim() {
                "memory.available" => {
                    let q = edgesite_api::quantity::Quantity::from_str(amount.trim())
                        .map_err(|_| bad())?;
                    t.memory_available = u64::try_from(q.value()).map_err(|_| bad())?;
                }
                "nodefs.available" => t.disk_available_percent = percent()?,
                "nodefs.inodesFree" => t.inodes_free_percent = percent()?,
                "pid.available" => t.pids_available_percent = percent()?,
                _ => return Err(bad()),
            }
        }
        Ok(t)
    }
}

/// The three pressure conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pressure {
    /// `MemoryPressure=True`.
    pub memory: bool,
    /// `DiskPressure=True`.
    pub disk: bool,
    /// `PIDPressure=True`.
    pub pid: bool,
}

impl Thresholds {
    /// Which resources of `sample` are short.
    pub fn pressure(&self, sample: &Sample) -> Pressure {
        let below = |(left, total): (u64, u64), percent: u64| {
            total > 0 && u128::from(left) * 100 < u128::from(total) * u128::from(percent)
        };
        Pressure {
            memory: sample
                .memory_available
                .is_some_and(|m| m < self.memory_available),
            disk: sample
                .disk
                .is_some_and(|d| below(d, self.disk_available_percent))
                || sample
                    .inodes
                    .is_some_and(|i| below(i, self.inodes_free_percent)),
            pid: sample.pids.is_some_and(|(used, max)| {
                below((max.saturating_sub(used), max), self.pids_available_percent)
            }),
        }
    }
}

/// Reads the host: memory from `/proc/meminfo`, the filesystem holding `dir`, the processes
/// alive (`/proc/loadavg`) and `/proc/sys/kernel/pid_max`.
pub fn sample(dir: &Path) -> Sample {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let fs = nix::sys::statvfs::statvfs(dir).ok();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max").unwrap_or_default();
    Sample {
        memory_available: mem_available(&meminfo),
        disk: fs.as_ref().map(|s| {
            let block = s.fragment_size();
            (
                s.blocks_available().saturating_mul(block),
                s.blocks().saturating_mul(block),
            )
        }),
        inodes: fs.as_ref().map(|s| (s.files_available(), s.files())),
        pids: processes_alive(&loadavg).zip(pid_max.trim().parse().ok()),
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb.saturating_mul(1024))
}

/// The scheduling entities alive: the denominator of `/proc/loadavg`'s fourth field
/// (`running/total`).
fn processes_alive(loadavg: &str) -> Option<u64> {
    loadavg
        .split_whitespace()
        .nth(3)
        .and_then(|f| f.split_once('/'))
        .and_then(|(_, total)| total.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    #[test]
    fn thresholds_follow_kubelets_defaults() {
        let t = Thresholds::default();
        let ok = Sample {
            memory_available: Some(2048 * MI),
            disk: Some((50, 100)),
            inodes: Some((50, 100)),
            pids: Some((300, 4_194_304)),
        };
        assert_eq!(t.pressure(&ok), Pressure::default());
        let cases = [
            (
                Sample {
                    memory_available: Some(99 * MI),
                    ..ok
                },
                Pressure {
                    memory: true,
                    ..Pressure::default()
                },
            ),
            (
                Sample {
                    memory_available: Some(100 * MI),
                    ..ok
                },
                Pressure::default(),
            ),
            (
                Sample {
                    disk: Some((9, 100)),
                    ..ok
                },
                Pressure {
                    disk: true,
                    ..Pressure::default()
                },
            ),
            (
                Sample {
                    disk: Some((10, 100)),
                    ..ok
                },
                Pressure::default(),
            ),
            (
                Sample {
                    inodes: Some((4, 100)),
                    ..ok
                },
                Pressure {
                    disk: true,
                    ..Pressure::default()
                },
            ),
            // No fixed inode count (btrfs, tmpfs with nr_inodes=0): never inode pressure.
            (
                Sample {
                    inodes: Some((0, 0)),
                    ..ok
                },
                Pressure::default(),
            ),
            (
                Sample {
                    pids: Some((30_000, 32_768)),
                    ..ok
                },
                Pressure {
                    pid: true,
                    ..Pressure::default()
                },
            ),
            // Unreadable numbers are not pressure.
            (Sample::default(), Pressure::default()),
        ];
        for (sample, want) in cases {
            assert_eq!(t.pressure(&sample), want, "{sample:?}");
        }
    }

    #[test]
    fn eviction_hard_sets_the_named_signals_and_keeps_the_others() {
        let t: Thresholds = "memory.available<200Mi, nodefs.available<5%"
            .parse()
            .unwrap();
        assert_eq!(
            t,
            Thresholds {
                memory_available: 200 * MI,
                disk_available_percent: 5,
                ..Thresholds::default()
            }
        );
        let t: Thresholds = "nodefs.inodesFree<1%,pid.available<20%,memory.available<1G"
            .parse()
            .unwrap();
        assert_eq!(
            (
                t.inodes_free_percent,
                t.pids_available_percent,
                t.memory_available
            ),
            (1, 20, 1_000_000_000)
        );
        assert_eq!("".parse::<Thresholds>(), Ok(Thresholds::default()));
        for bad in [
            "memory.available>1Gi",
            "memory.available<lots",
            "memory.available<-1Gi",
            "nodefs.available<5",
            "nodefs.available<101%",
            "imagefs.available<15%",
            "nodefs.available",
        ] {
            let err = bad.parse::<Thresholds>().unwrap_err();
            assert!(err.to_string().contains("SIGNAL<AMOUNT"), "{bad}: {err}");
        }
    }

    #[test]
    fn proc_files_are_parsed() {
        let meminfo =
            "MemTotal:       24576000 kB\nMemFree:  100 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(mem_available(meminfo), Some(20_480_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(processes_alive("0.52 0.58 0.59 3/612 12345\n"), Some(612));
        assert_eq!(processes_alive("garbage"), None);
    }

    #[test]
    fn this_host_can_be_sampled() {
        let s = sample(Path::new("/"));
        assert!(s.memory_available.is_some_and(|m| m > 0), "{s:?}");
        assert!(s.disk.is_some_and(|(a, t)| a <= t && t > 0), "{s:?}");
        assert!(s.pids.is_some_and(|(u, m)| u > 0 && u < m), "{s:?}");
    }
}
