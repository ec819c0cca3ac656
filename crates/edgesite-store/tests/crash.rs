//! Crash test of the embedded engine: a child process writes concurrently and is killed with
//! SIGKILL at a random moment, many times over the same file. After each kill the store must
//! open quickly, hold every acknowledged write and nothing that was never asked for, apply
//! each interrupted write entirely or not at all, and keep a change log without a hole or a
//! duplicate revision: every revision from the compaction point to the current one is the
//! revision of exactly one write transaction, with exactly that transaction's events.
//!
//! The child is this test binary run again on the hidden `crash_child` test, which does nothing
//! unless `EDGESITE_CRASH_CHILD` names a database. It announces each write on stdout before
//! issuing it (`BEGIN …`) and once it is acknowledged (`ACK …`); the parent counts only lines
//! it received whole. Each key is written by one task only and created once, so the parent
//! knows the exact expected state, except for the one write per task in flight at the kill,
//! which it resolves from what the store holds (all of it or none of it).
//!
//! `EDGESITE_CRASH_ITERATIONS` (default 20) sets the number of kills, `EDGESITE_CRASH_SEED` the
//! random seed (printed, to replay the kill timings and the child's choices).
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use edgesite_store::embedded::{CompactionPolicy, EmbeddedConfig, EmbeddedStore};
use edgesite_store::{
    Compare, CompareOp, CompareTarget, EventType, KeyRange, KeyValue, RangeRequest, Revision,
    Store, Txn, TxnOp, WatchRequest,
};
use futures::StreamExt;

const CHILD_ENV: &str = "EDGESITE_CRASH_CHILD";
const RUN_ENV: &str = "EDGESITE_CRASH_RUN";
const SEED_ENV: &str = "EDGESITE_CRASH_SEED";
/// Concurrent writers in the child.
const TASKS: u64 = 16;
/// Every this many of its writes, task 0 compacts the history older than `COMPACT_KEEP`.
const COMPACT_EVERY: u64 = 40;
const COMPACT_KEEP: Revision = 300;
/// The kill comes this long after the child reports it is ready.
const KILL_AFTER_MS: std::ops::Range<u64> = 50..800;
/// A store that needs longer than this to open after a crash is a failure.
const MAX_REOPEN: Duration = Duration::from_secs(3);

/// splitmix64: small, seedable, good enough to pick timings and operations.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn config(path: &Path) -> EmbeddedConfig {
    // Only the child's explicit compactions, so that what the history must hold is known.
    EmbeddedConfig::new(path).with_compaction(CompactionPolicy {
        keep_revisions: None,
        keep_duration: None,
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// The child
// ---------------------------------------------------------------------------------------------

/// Marks the child's protocol lines: the test harness prints `test crash_child ... ` without a
/// newline before the first one.
const MARK: &str = "@@ ";

/// One whole line on stdout, flushed before returning (so a `BEGIN` is out before its write
/// starts). Written to the real stdout, not through the test harness's capture.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{MARK}{line}\n").as_bytes())
        .and_then(|()| out.flush())
        .expect("write to the parent");
}

/// The child's entry point: does nothing (and passes) unless run by `killed_writers_lose_nothing`.
#[test]
fn crash_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let run: u64 = std::env::var(RUN_ENV).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(SEED_ENV).unwrap().parse().unwrap();
    // Never outlive a parent that failed to kill us.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(30));
        say("ERROR the child was not killed within 30 s");
        std::process::exit(3);
    });
    runtime().block_on(async move {
        let store = match EmbeddedStore::open(config(Path::new(&path))).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                say(&format!("ERROR open: {e}"));
                std::process::exit(2);
            }
        };
        say("READY");
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let store = store.clone();
                tokio::spawn(child_task(store, run, task, Rng(seed ^ (task << 32) ^ run)))
            })
            .collect();
        for t in tasks {
            if let Err(e) = t.await {
                say(&format!("ERROR task panicked: {e}"));
                std::process::exit(2);
            }
        }
    });
}

async fn child_task(store: Arc<EmbeddedStore>, run: u64, task: u64, mut rng: Rng) {
    // This task's live keys and their mod_revision.
    let mut live: Vec<(String, Revision)> = Vec::new();
    let fail = |what: &str, e: &dyn std::fmt::Display| -> ! {
        say(&format!("ERROR task {task}: {what}: {e}"));
        std::process::exit(2);
    };
    for seq in 0u64.. {
        let key = format!("/crash/{run}/{task}/{seq}");
        let value = format!("r{run}t{task}s{seq}");
        if task == 0 && seq % COMPACT_EVERY == COMPACT_EVERY - 1 {
            let st = store.status().await.unwrap_or_else(|e| fail("status", &e));
            let target = st.revision - COMPACT_KEEP;
            if target > st.compact_revision {
                say(&format!("BEGIN {task} {seq} X {target}"));
                store
                    .compact(target)
                    .await
                    .unwrap_or_else(|e| fail("compact", &e));
                say(&format!("ACK {task} {seq} 0"));
            }
            continue;
        }
        let dice = rng.below(100);
        let rev = if dice < 20 && !live.is_empty() {
            let i = rng.below(live.len() as u64) as usize;
            let (k, m) = live[i].clone();
            say(&format!("BEGIN {task} {seq} U {k} {value}"));
            let rev = store
                .update(k.as_bytes(), value.into_bytes(), m, 0)
                .await
                .unwrap_or_else(|e| fail("update", &e));
            live[i].1 = rev;
            rev
        } else if dice < 40 && !live.is_empty() {
            let i = rng.below(live.len() as u64) as usize;
            let (k, m) = live.swap_remove(i);
            say(&format!("BEGIN {task} {seq} D {k}"));
            let (_, rev) = store
                .delete(k.as_bytes(), Some(m))
                .await
                .unwrap_or_else(|e| fail("delete", &e));
            rev
        } else if dice < 55 {
            // Two keys in one transaction: one revision, two events.
            let k2 = format!("{key}b");
            say(&format!("BEGIN {task} {seq} T {key} {k2} {value}"));
            let absent =
                |k: &str| Compare::new(k, CompareOp::Equal, CompareTarget::CreateRevision(0));
            let txn = Txn::new()
                .when(absent(&key))
                .when(absent(&k2))
                .and_then(vec![
                    TxnOp::put(key.as_bytes(), value.as_bytes()),
                    TxnOp::put(k2.as_bytes(), value.as_bytes()),
                ]);
            let resp = store.txn(txn).await.unwrap_or_else(|e| fail("txn", &e));
            if !resp.succeeded {
                fail("txn", &"the keys already exist");
            }
            live.push((key, resp.revision));
            live.push((k2, resp.revision));
            resp.revision
        } else {
            say(&format!("BEGIN {task} {seq} C {key} {value}"));
            let rev = store
                .create(key.as_bytes(), value.into_bytes(), 0)
                .await
                .unwrap_or_else(|e| fail("create", &e));
            live.push((key, rev));
            rev
        };
        say(&format!("ACK {task} {seq} {rev}"));
    }
}

// ---------------------------------------------------------------------------------------------
// The parent
// ---------------------------------------------------------------------------------------------

/// A write announced by the child.
#[derive(Debug, Clone)]
enum ChildOp {
    Create {
        key: String,
        value: String,
    },
    Update {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Pair {
        k1: String,
        k2: String,
        value: String,
    },
    Compact {
        rev: Revision,
    },
}

fn parse_op(words: &[&str]) -> ChildOp {
    let s = |i: usize| words[i].to_string();
    match words[0] {
        "C" => ChildOp::Create {
            key: s(1),
            value: s(2),
        },
        "U" => ChildOp::Update {
            key: s(1),
            value: s(2),
        },
        "D" => ChildOp::Delete { key: s(1) },
        "T" => ChildOp::Pair {
            k1: s(1),
            k2: s(2),
            value: s(3),
        },
        "X" => ChildOp::Compact {
            rev: words[1].parse().unwrap(),
        },
        other => panic!("unknown op {other:?} in {words:?}"),
    }
}

type Ev = (EventType, String, String);

/// What the store must hold: the live keys, and the events of every write by revision.
#[derive(Debug, Default)]
struct Expected {
    state: BTreeMap<String, KeyValue>,
    by_rev: BTreeMap<Revision, Vec<Ev>>,
    /// Deletes that were in flight at a kill and turned out applied: their revision is found
    /// in the change log.
    deletes_to_place: Vec<String>,
    /// The highest acknowledged compaction.
    compact: Revision,
    acked: u64,
    /// Writes in flight at a kill, found applied / not applied after it.
    in_flight_applied: u64,
    in_flight_lost: u64,
}

impl Expected {
    fn record(&mut self, rev: Revision, events: Vec<Ev>, what: &dyn std::fmt::Debug) {
        if let Some(other) = self.by_rev.insert(rev, events) {
            panic!("revision {rev} acknowledged twice: for {other:?} and for {what:?}");
        }
    }

    fn put(&mut self, key: &str, value: &str, rev: Revision) {
        let prev = self.state.get(key);
        let kv = KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: prev.map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.map_or(0, |p| p.version) + 1,
            lease: 0,
        };
        self.state.insert(key.to_string(), kv);
    }

    /// Applies a write known to have committed at `rev`.
    fn apply(&mut self, op: &ChildOp, rev: Revision) {
        let put = |k: &str, v: &str| (EventType::Put, k.to_string(), v.to_string());
        match op {
            ChildOp::Create { key, value } | ChildOp::Update { key, value } => {
                assert_eq!(
                    matches!(op, ChildOp::Update { .. }),
                    self.state.contains_key(key),
                    "{op:?}"
                );
                self.put(key, value, rev);
                self.record(rev, vec![put(key, value)], op);
            }
            ChildOp::Delete { key } => {
                assert!(self.state.remove(key).is_some(), "{op:?} of a missing key");
                self.record(
                    rev,
                    vec![(EventType::Delete, key.clone(), String::new())],
                    op,
                );
            }
            ChildOp::Pair { k1, k2, value } => {
                self.put(k1, value, rev);
                self.put(k2, value, rev);
                self.record(rev, vec![put(k1, value), put(k2, value)], op);
            }
            ChildOp::Compact { rev } => self.compact = self.compact.max(*rev),
        }
    }

    /// Settles a write that was in flight at the kill from what the store holds: it must be
    /// there entirely or not at all.
    fn resolve(&mut self, op: &ChildOp, actual: &HashMap<String, Option<KeyValue>>) -> bool {
        let get = |k: &String| actual[k].clone();
        let fresh = |kv: &KeyValue, value: &str| {
            kv.value == value.as_bytes()
                && kv.version == 1
                && kv.create_revision == kv.mod_revision
                && kv.lease == 0
        };
        match op {
            ChildOp::Create { key, value } => match get(key) {
                None => false,
                Some(kv) => {
                    assert!(fresh(&kv, value), "interrupted {op:?} left {kv:?}");
                    self.apply(op, kv.mod_revision);
                    true
                }
            },
            ChildOp::Update { key, value } => {
                let old = self.state[key].clone();
                let kv = get(key).unwrap_or_else(|| panic!("interrupted {op:?} lost the key"));
                if kv == old {
                    return false;
                }
                assert!(
                    kv.value == value.as_bytes()
                        && kv.version == old.version + 1
                        && kv.create_revision == old.create_revision
                        && kv.mod_revision > old.mod_revision,
                    "interrupted {op:?} left {kv:?}, was {old:?}"
                );
                self.apply(op, kv.mod_revision);
                true
            }
            ChildOp::Delete { key } => match get(key) {
                Some(kv) => {
                    assert_eq!(kv, self.state[key], "interrupted {op:?}");
                    false
                }
                None => {
                    self.state.remove(key);
                    self.deletes_to_place.push(key.clone());
                    true
                }
            },
            ChildOp::Pair { k1, k2, value } => match (get(k1), get(k2)) {
                (None, None) => false,
                (Some(a), Some(b)) => {
                    assert!(
                        fresh(&a, value) && fresh(&b, value) && a.mod_revision == b.mod_revision,
                        "interrupted {op:?} left {a:?} and {b:?}"
                    );
                    self.apply(op, a.mod_revision);
                    true
                }
                (a, b) => panic!("interrupted {op:?} is half applied: {a:?}, {b:?}"),
            },
            ChildOp::Compact { .. } => false,
        }
    }
}

/// What one run of the child reported before it was killed.
#[derive(Debug, Default)]
struct Report {
    acked: Vec<(ChildOp, Revision)>,
    in_flight: Vec<ChildOp>,
}

fn parse_report(lines: &[String]) -> Report {
    let mut begun: HashMap<(u64, u64), ChildOp> = HashMap::new();
    let mut report = Report::default();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words[0] {
            "BEGIN" => {
                let id = (words[1].parse().unwrap(), words[2].parse().unwrap());
                begun.insert(id, parse_op(&words[3..]));
            }
            "ACK" => {
                let id = (words[1].parse().unwrap(), words[2].parse().unwrap());
                let op = begun
                    .remove(&id)
                    .unwrap_or_else(|| panic!("ACK without BEGIN: {line}"));
                report.acked.push((op, words[3].parse().unwrap()));
            }
            "ERROR" => panic!("the child failed: {line}"),
            "READY" => {}
            _ => panic!("unexpected line from the child: {line}"),
        }
    }
    assert!(
        begun.len() <= TASKS as usize,
        "more writes in flight than tasks: {begun:?}"
    );
    report.in_flight = begun.into_values().collect();
    report
}

/// Runs the child on `path` until a random moment after it is ready, then kills it; returns
/// the whole lines it printed.
fn run_child_and_kill(exe: &Path, path: &Path, run: u64, seed: u64, rng: &mut Rng) -> Vec<String> {
    let mut child = Command::new(exe)
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, path)
        .env(RUN_ENV, run.to_string())
        .env(SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                // Only whole lines count; a line cut by the kill is dropped.
                Ok(_) if buf.last() == Some(&b'\n') => {
                    let line = String::from_utf8_lossy(&buf[..buf.len() - 1]).into_owned();
                    // Lines of the test harness itself have no mark.
                    if let Some((_, msg)) = line.split_once(MARK)
                        && tx.send(msg.to_string()).is_err()
                    {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the child did not report ready");
        let ready = line == "READY";
        assert!(!line.starts_with("ERROR"), "the child failed: {line}");
        lines.push(line);
        if ready {
            break;
        }
    }
    let delay = KILL_AFTER_MS.start + rng.below(KILL_AFTER_MS.end - KILL_AFTER_MS.start);
    std::thread::sleep(Duration::from_millis(delay));
    if let Ok(Some(status)) = child.try_wait() {
        panic!("the child exited by itself ({status}) before the kill");
    }
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    lines
}

/// All events from `start` up to `current`, in order.
async fn history(store: &EmbeddedStore, start: Revision, current: Revision) -> Vec<(Revision, Ev)> {
    let mut out = Vec::new();
    if current < start.max(2) {
        return out;
    }
    let mut watch = store
        .watch(WatchRequest::new(KeyRange::prefix("/crash/")).from_revision(start))
        .await
        .expect("watch from the compaction point");
    while out.last().is_none_or(|(r, _)| *r < current) {
        let resp = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("the watch stalled")
            .expect("the watch ended")
            .expect("the watch failed");
        for e in resp.events {
            let key = String::from_utf8(e.kv.key).unwrap();
            let value = String::from_utf8(e.kv.value).unwrap();
            out.push((e.kv.mod_revision, (e.kind, key, value)));
        }
    }
    out
}

/// Reopens the store after a kill and checks everything; returns the reopen time.
async fn check_after_kill(path: &Path, exp: &mut Expected, report: &Report, run: u64) -> Duration {
    let t0 = Instant::now();
    let store = EmbeddedStore::open(config(path))
        .await
        .expect("reopen after the kill");
    let reopen = t0.elapsed();

    for (op, rev) in &report.acked {
        exp.apply(op, *rev);
        if !matches!(op, ChildOp::Compact { .. }) {
            exp.acked += 1;
        }
    }
    // Settle the writes in flight from the current state of their keys.
    let mut actual = HashMap::new();
    for op in &report.in_flight {
        let keys = match op {
            ChildOp::Create { key, .. } | ChildOp::Update { key, .. } | ChildOp::Delete { key } => {
                vec![key.clone()]
            }
            ChildOp::Pair { k1, k2, .. } => vec![k1.clone(), k2.clone()],
            ChildOp::Compact { .. } => vec![],
        };
        for k in keys {
            actual.insert(k.clone(), store.get(k.as_bytes()).await.unwrap());
        }
    }
    for op in &report.in_flight {
        if matches!(op, ChildOp::Compact { .. }) {
            continue;
        }
        if exp.resolve(op, &actual) {
            exp.in_flight_applied += 1;
        } else {
            exp.in_flight_lost += 1;
        }
    }

    // The current state: every acknowledged write, nothing else.
    let all = store
        .range(RangeRequest::new(KeyRange::prefix("/crash/")))
        .await
        .unwrap();
    let expected_kvs: Vec<KeyValue> = exp.state.values().cloned().collect();
    if all.kvs != expected_kvs {
        let got: BTreeMap<String, KeyValue> = all
            .kvs
            .iter()
            .map(|kv| (String::from_utf8_lossy(&kv.key).into_owned(), kv.clone()))
            .collect();
        let missing: Vec<_> = exp
            .state
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(v))
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|(k, v)| exp.state.get(*k) != Some(v))
            .collect();
        panic!(
            "run {run}: state differs\n  expected but missing or different: {missing:#?}\n  present but unexpected: {extra:#?}"
        );
    }

    // The change log: from the compaction point, one transaction per revision, no hole.
    let st = store.status().await.unwrap();
    assert!(
        st.compact_revision >= exp.compact,
        "run {run}: acknowledged compaction to {} lost: {st:?}",
        exp.compact
    );
    assert_eq!(st.key_count as usize, exp.state.len(), "run {run}");
    let start = st.compact_revision.max(1);
    let events = history(&store, start, st.revision).await;
    let mut logged: BTreeMap<Revision, Vec<Ev>> = BTreeMap::new();
    let mut last = 0;
    for (rev, ev) in events {
        assert!(rev >= last, "run {run}: events out of order at {rev}");
        last = rev;
        logged.entry(rev).or_default().push(ev);
    }
    for key in std::mem::take(&mut exp.deletes_to_place) {
        let found = logged.iter().find(|(_, evs)| {
            evs.iter()
                .any(|(t, k, _)| *t == EventType::Delete && *k == key)
        });
        if let Some((rev, _)) = found {
            let op = ChildOp::Delete { key: key.clone() };
            exp.record(*rev, vec![(EventType::Delete, key, String::new())], &op);
        }
    }
    let revs: Vec<Revision> = logged.keys().copied().collect();
    let want: Vec<Revision> = (start.max(2)..=st.revision).collect();
    if revs != want {
        let holes: Vec<_> = want.iter().filter(|r| !logged.contains_key(r)).collect();
        panic!(
            "run {run}: change log from {start} to {} has holes at {holes:?}",
            st.revision
        );
    }
    for (rev, evs) in &logged {
        match exp.by_rev.get(rev) {
            Some(e) => assert_eq!(evs, e, "run {run}: events at revision {rev}"),
            None => panic!("run {run}: revision {rev} holds {evs:?}, which no write made"),
        }
    }
    let last_write = exp.by_rev.keys().next_back().copied().unwrap_or(1);
    assert_eq!(
        st.revision, last_write,
        "run {run}: the store's revision is not its last write's"
    );

    // Writes continue at the next revision.
    let key = format!("/crash/parent/{run}");
    let rev = store
        .put(key.as_bytes(), b"parent".to_vec(), 0)
        .await
        .unwrap();
    assert_eq!(
        rev,
        st.revision + 1,
        "run {run}: first write after the restart"
    );
    exp.put(&key, "parent", rev);
    exp.record(
        rev,
        vec![(EventType::Put, key, "parent".into())],
        &"parent put",
    );
    drop(store);
    reopen
}

#[test]
fn killed_writers_lose_nothing() {
    let iterations: u64 = std::env::var("EDGESITE_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash test: {iterations} iterations, {SEED_ENV}={seed}");
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("db");
    // Run the child from a copy: a build in the shared target directory may replace this
    // binary while the test runs.
    let exe = dir.path().join("crash-child");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).expect("copy the test binary");
    let rt = runtime();
    let mut rng = Rng(seed);
    let mut exp = Expected::default();
    let mut max_reopen = Duration::ZERO;
    let started = Instant::now();
    for run in 0..iterations {
        let lines = run_child_and_kill(&exe, &path, run, seed, &mut rng);
        let report = parse_report(&lines);
        let reopen = rt.block_on(check_after_kill(&path, &mut exp, &report, run));
        eprintln!(
            "run {run}: {} acknowledged, {} in flight at the kill, revision {}, file {} KiB, \
             reopened in {:.1} ms",
            report.acked.len(),
            report.in_flight.len(),
            exp.by_rev.keys().next_back().copied().unwrap_or(1),
            std::fs::metadata(&path).map_or(0, |m| m.len() >> 10),
            reopen.as_secs_f64() * 1e3
        );
        assert!(
            reopen < MAX_REOPEN,
            "run {run}: reopening after the kill took {reopen:?}"
        );
        max_reopen = max_reopen.max(reopen);
    }
    eprintln!(
        "crash test: {iterations} kills, {} acknowledged writes, {} writes in flight at a kill \
         ({} found applied, {} not), max reopen {:.1} ms, {:.1} s",
        exp.acked,
        exp.in_flight_applied + exp.in_flight_lost,
        exp.in_flight_applied,
        exp.in_flight_lost,
        max_reopen.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
    assert!(exp.acked > 0, "the child never got a write acknowledged");
}
