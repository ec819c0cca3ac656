//! The workloads, written once against the `Store` trait and run on both backends.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use edgesite_store::{KeyRange, RangeRequest, Store, Txn, TxnOp, WatchRequest};
use futures::StreamExt;
use hdrhistogram::Histogram;

/// `len` pseudo-random bytes (incompressible, in case a backend ever compresses).
pub fn value_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The outcome of a write-rate run.
#[derive(Debug)]
pub struct WriteRate {
    pub per_sec: f64,
    pub ops: u64,
    pub window: Duration,
}

/// `writers` concurrent loops of plain puts of distinct keys; counts the writes acknowledged
/// within `duration` after `warmup`.
pub async fn write_rate(
    store: Arc<dyn Store>,
    writers: usize,
    warmup: Duration,
    duration: Duration,
    value: Arc<Vec<u8>>,
) -> anyhow::Result<WriteRate> {
    let next = Arc::new(AtomicU64::new(0));
    let measure_from = Instant::now() + warmup;
    let end = measure_from + duration;
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, next, value) = (store.clone(), next.clone(), value.clone());
            tokio::spawn(async move {
                let mut counted = 0u64;
                while Instant::now() < end {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let key = format!("/bench/writes/{n:012}");
                    store.put(key.as_bytes(), value.to_vec(), 0).await?;
                    let done = Instant::now();
                    if done >= measure_from && done <= end {
                        counted += 1;
                    }
                }
                Ok::<u64, anyhow::Error>(counted)
            })
        })
        .collect();
    let mut ops = 0;
    for task in tasks {
        ops += task.await.context("a writer panicked")??;
    }
    Ok(WriteRate {
        per_sec: ops as f64 / duration.as_secs_f64(),
        ops,
        window: duration,
    })
}

/// Percentiles of one latency distribution.
#[derive(Debug, Clone, Copy)]
pub struct Percentiles {
    pub p50: Duration,
    pub p99: Duration,
    pub mean: Duration,
    pub max: Duration,
}

impl Percentiles {
    fn of(hist: &Histogram<u64>) -> Self {
        let us = Duration::from_micros;
        Self {
            p50: us(hist.value_at_quantile(0.50)),
            p99: us(hist.value_at_quantile(0.99)),
            mean: Duration::from_secs_f64(hist.mean() / 1e6),
            max: us(hist.max()),
        }
    }
}

/// Watch delivery latencies.
#[derive(Debug)]
pub struct WatchLatency {
    /// From the put's acknowledgement to the event's arrival (0 when the event came first).
    pub from_ack: Percentiles,
    /// From the moment the put was sent to the event's arrival (includes the commit).
    pub from_send: Percentiles,
    pub events: u64,
    /// Events received before the put that made them returned.
    pub early: u64,
}

/// One writer puts `writes` keys one after the other under a prefix a watcher watches; the
/// latency of each is from the put's acknowledgement (and, second figure, from the moment the
/// put was sent) to the event's arrival at the watcher.
pub async fn watch_latency(
    store: Arc<dyn Store>,
    writes: usize,
    value: Arc<Vec<u8>>,
) -> anyhow::Result<WatchLatency> {
    const PREFIX: &str = "/bench/watch/";
    let mut stream = store
        .watch(WatchRequest::new(KeyRange::prefix(PREFIX)))
        .await?;
    // One write first, to know the watch is live before measuring.
    let warm_rev = store
        .put(format!("{PREFIX}warmup").as_bytes(), value.to_vec(), 0)
        .await?;
    loop {
        let resp = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .context("no watch event within 30 s")?
            .context("the watch ended")??;
        if resp.events.iter().any(|e| e.kv.mod_revision >= warm_rev) {
            break;
        }
    }
    let receiver = tokio::spawn(async move {
        let mut received: HashMap<i64, Instant> = HashMap::with_capacity(writes);
        while received.len() < writes {
            let resp = tokio::time::timeout(Duration::from_secs(30), stream.next())
                .await
                .context("no watch event within 30 s")?
                .context("the watch ended")??;
            let now = Instant::now();
            for ev in resp.events {
                received.insert(ev.kv.mod_revision, now);
            }
        }
        Ok::<_, anyhow::Error>(received)
    });
    let mut acked = Vec::with_capacity(writes);
    for i in 0..writes {
        let key = format!("{PREFIX}{i:08}");
        let sent = Instant::now();
        let rev = store.put(key.as_bytes(), value.to_vec(), 0).await?;
        acked.push((rev, sent, Instant::now()));
    }
    let received = receiver.await.context("the watcher panicked")??;
    let new_hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
    let (mut from_ack, mut from_send) = (new_hist()?, new_hist()?);
    let micros = |d: Duration| (d.as_micros() as u64).clamp(1, 60_000_000);
    let mut early = 0;
    for (rev, sent, ack) in &acked {
        let Some(got) = received.get(rev) else {
            bail!("no event for revision {rev}");
        };
        if got < ack {
            early += 1;
        }
        from_ack.record(micros(got.saturating_duration_since(*ack)))?;
        from_send.record(micros(got.saturating_duration_since(*sent)))?;
    }
    Ok(WatchLatency {
        from_ack: Percentiles::of(&from_ack),
        from_send: Percentiles::of(&from_send),
        events: from_ack.len(),
        early,
    })
}

/// Writes `n` keys `prefix{i}` in transactions of `per_txn` puts, `concurrency` at a time.
pub async fn load(
    store: Arc<dyn Store>,
    prefix: &[u8],
    n: u64,
    value: Arc<Vec<u8>>,
    per_txn: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let prefix = String::from_utf8_lossy(prefix).into_owned();
    let chunks: Vec<(u64, u64)> = (0..n)
        .step_by(per_txn)
        .map(|start| (start, (start + per_txn as u64).min(n)))
        .collect();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(chunks)
        .map(|(from, to)| {
            let (store, value, prefix) = (store.clone(), value.clone(), prefix.clone());
            async move {
                let ops = (from..to)
                    .map(|i| TxnOp::put(format!("{prefix}{i:010}"), value.to_vec()))
                    .collect();
                let resp = store.txn(Txn::new().and_then(ops)).await?;
                ensure!(resp.succeeded, "a load transaction did not succeed");
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Median time of `runs` reads of every key under `prefix` (after two warm-up reads).
pub async fn range_median(
    store: Arc<dyn Store>,
    prefix: &[u8],
    expected: u64,
    runs: usize,
) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 2 {
        let t = Instant::now();
        let resp = store
            .range(RangeRequest::new(KeyRange::prefix(prefix)))
            .await?;
        let took = t.elapsed();
        ensure!(
            resp.kvs.len() as u64 == expected,
            "range returned {} keys, expected {expected}",
            resp.kvs.len()
        );
        if i >= 2 {
            times.push(took);
        }
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// The outcome of an update run.
#[derive(Debug)]
pub struct UpdateRun {
    pub done: u64,
    pub elapsed: Duration,
    pub cut_by_time: bool,
}

/// `total` plain puts spread round-robin over `keys` keys by `writers` concurrent loops,
/// stopped early at `limit`. `progress` is called about every 15 s.
pub async fn updates(
    store: Arc<dyn Store>,
    total: u64,
    keys: u64,
    writers: usize,
    limit: Duration,
    value: Arc<Vec<u8>>,
    progress: impl Fn(u64, Duration),
) -> anyhow::Result<UpdateRun> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + limit;
    let mut tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (store, next, done, value) =
                (store.clone(), next.clone(), done.clone(), value.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        break;
                    }
                    let key = format!("/bench/updates/{:06}", n % keys);
                    store.put(key.as_bytes(), value.to_vec(), 0).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), anyhow::Error>(())
            })
        })
        .collect();
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(15),
        Duration::from_secs(15),
    );
    for task in &mut tasks {
        loop {
            tokio::select! {
                r = &mut *task => {
                    r.context("an updater panicked")??;
                    break;
                }
                _ = tick.tick() => progress(done.load(Ordering::Relaxed), start.elapsed()),
            }
        }
    }
    let done = done.load(Ordering::Relaxed);
    Ok(UpdateRun {
        done,
        elapsed: start.elapsed(),
        cut_by_time: done < total,
    })
}
