//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it,
//! so that several servers sharing one etcd run one scheduler and one set of controllers.
//!
//! A candidate takes the Lease when it is free (no holder, after a clean release) or expired;
//! expiry is judged by when *this* process last saw the record change, on [`Clock`] time, never
//! by the holder's `renewTime` (clocks differ between machines). Writes carry the
//! `resourceVersion` read, so two candidates cannot both win. The leader renews every retry
//! period and steps down when it has not managed to for the renew deadline, which is shorter
//! than the lease duration: it stops before anyone else may start.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::Clock;

/// The namespace of the controllers' Lease.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The name of the controllers' Lease.
pub const LEASE_NAME: &str = "edgesite-controller-manager";

/// Completes when the work started by [`run_elected`] must stop (leadership lost or shutdown).
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Who campaigns for which Lease, with which timings.
#[derive(Debug, Clone)]
pub struct LeaderElection {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This candidate's `holderIdentity`; unique per process (see [`default_identity`]).
    pub identity: String,
    /// How long others wait after the last renewal they saw before taking over (15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up leadership (10 s).
    pub renew_deadline: Duration,
    /// How often the leader renews and candidates retry (2 s).
    pub retry_period: Duration,
}

impl LeaderElection {
    /// The controllers' Lease `kube-system/edgesite-controller-manager` with client-go's
    /// default timings (15 s lease, 10 s renew deadline, 2 s retry period).
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            namespace: LEASE_NAMESPACE.to_owned(),
            name: LEASE_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edgesite".to_owned())
}

/// An identity that stays the same across restarts of one installation: the hostname and a
/// hash of `installation` (e.g. the server's data directory). A server restarted after a
/// crash then finds the Lease still in its own name and leads again at once, instead of
/// waiting a lease duration for its previous life to expire. Two live servers must never
/// share an installation string.
pub fn installation_identity(installation: &str) -> String {
    // FNV-1a: stable across Rust versions and processes, unlike the std hasher.
    let hash = installation
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    format!("{}_{hash:016x}", hostname())
}

/// A unique identity for this process: the hostname and a random suffix
/// (`edge-1_4f2a9c0d1b3e5a77`), as kube-controller-manager uses hostname and a UUID.
pub fn default_identity() -> String {
    format!("{}_{:016x}", hostname(), edgesite_clock::Rng::new().u64())
}

/// Campaigns for the Lease and, while this process holds it, runs `lead(stop)`; `stop`
/// completes when leadership is lost (the work must then end promptly) or on `shutdown`.
/// After a loss it campaigns again. On `shutdown` it stops the work, then releases the Lease
/// so a standby takes over at once. Runs until `shutdown` completes.
pub async fn run_elected<F, Fut>(
    client: Client,
    election: LeaderElection,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send,
    mut lead: F,
) where
    F: FnMut(Stop) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    let mut elector = Elector::new(client, election, clock);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = elector.acquire() => {}
        }
        info!(lease = %elector.lease_key(), identity = %elector.election.identity,
              "became leader: starting controllers");
        let (stop_tx, stop_rx) = watch::channel(false);
        let stop: Stop = Box::pin(async move {
            let mut rx = stop_rx;
            let _ = rx.wait_for(|stop| *stop).await;
        });
        let mut work = std::pin::pin!(lead(stop));
        let outcome = tokio::select! {
            () = &mut shutdown => Outcome::Shutdown,
            () = elector.keep_renewing() => Outcome::Lost,
            () = &mut work => Outcome::WorkEnded,
        };
        let _ = stop_tx.send(true);
        if !matches!(outcome, Outcome::WorkEnded) {
            work.await;
        }
        match outcome {
            Outcome::Shutdown => {
                elector.release().await;
                info!(lease = %elector.lease_key(), "leadership released on shutdown");
                return;
            }
            Outcome::Lost => {
                warn!(lease = %elector.lease_key(), "leadership lost: controllers stopped");
            }
            Outcome::WorkEnded => {
                warn!(lease = %elector.lease_key(), "the elected work ended: releasing the lease");
                elector.release().await;
                tokio::select! {
                    () = &mut shutdown => return,
                    () = tokio::time::sleep(elector.election.retry_period) => {}
                }
            }
        }
    }
}

enum Outcome {
    Shutdown,
    Lost,
    WorkEnded,
}

/// What one acquire-or-renew attempt found.
#[derive(Debug)]
enum Attempt {
    /// We hold the Lease now.
    Held,
    /// Someone else holds it and it has not expired.
    HeldByOther(String),
    /// The attempt failed (conflict, API error); try again.
    Failed(String),
}

struct Elector {
    api: Api<Lease>,
    election: LeaderElection,
    clock: Arc<dyn Clock>,
    /// The last Lease spec seen and when (on our clock) it was first seen so.
    observed: Option<(LeaseSpec, SystemTime)>,
}

impl Elector {
    fn new(client: Client, election: LeaderElection, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, &election.namespace),
            election,
            clock,
            observed: None,
        }
    }

    fn lease_key(&self) -> String {
        format!("{}/{}", self.election.namespace, self.election.name)
    }

    /// Retries every retry period until this candidate holds the Lease.
    async fn acquire(&mut self) {
        let mut last_holder = String::new();
        loop {
            match self.try_acquire_or_renew().await {
                Attempt::Held => return,
                Attempt::HeldByOther(holder) => {
                    if holder != last_holder {
                        info!(lease = %self.lease_key(), %holder, "waiting for the leader's lease to expire");
                        last_holder = holder;
                    }
                }
                Attempt::Failed(err) => debug!(lease = %self.lease_key(), %err, "cannot acquire"),
            }
            tokio::time::sleep(self.election.retry_period).await;
        }
    }

    /// Renews every retry period; returns when leadership is lost: someone else holds the
    /// Lease, or no renewal succeeded for the renew deadline (on either the controllers'
    /// clock or the monotonic one, whichever runs out first).
    async fn keep_renewing(&mut self) {
        let deadline = self.election.renew_deadline;
        let mut last_ok = (self.clock.now(), tokio::time::Instant::now());
        loop {
            tokio::time::sleep(self.election.retry_period).await;
            let attempt = tokio::time::timeout(deadline, self.try_acquire_or_renew())
                .await
                .unwrap_or_else(|_| Attempt::Failed("renewal timed out".to_owned()));
            match attempt {
                Attempt::Held => last_ok = (self.clock.now(), tokio::time::Instant::now()),
                Attempt::HeldByOther(holder) => {
                    warn!(lease = %self.lease_key(), %holder, "another candidate took the lease");
                    return;
                }
                Attempt::Failed(err) => {
                    let on_clock = self
                        .clock
                        .now()
                        .duration_since(last_ok.0)
                        .unwrap_or_default();
                    let monotonic = last_ok.1.elapsed();
                    warn!(lease = %self.lease_key(), %err, "cannot renew the lease");
                    if on_clock.max(monotonic) >= deadline {
                        warn!(lease = %self.lease_key(), "renew deadline passed");
                        return;
                    }
                }
            }
        }
    }

    /// client-go's `tryAcquireOrRenew`.
    async fn try_acquire_or_renew(&mut self) -> Attempt {
        let now = self.clock.now();
        let me = self.election.identity.clone();
        let duration_secs =
            i32::try_from(self.election.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let existing = match self.api.get_opt(&self.election.name).await {
            Ok(l) => l,
            Err(e) => return Attempt::Failed(e.to_string()),
        };
        let Some(lease) = existing else {
            let spec = LeaseSpec {
                holder_identity: Some(me),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(micro_time(now)),
                renew_time: Some(micro_time(now)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            };
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.election.name.clone()),
                    namespace: Some(self.election.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(spec.clone()),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = Some((spec, now));
                    Attempt::Held
                }
                Err(e) => Attempt::Failed(e.to_string()),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                self.observed = Some((spec.clone(), now));
                now
            }
        };
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let held_by_other = !holder.is_empty() && holder != me;
        if held_by_other {
            let lasts = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(0)).unwrap_or(0),
            );
            let expires = observed_at + lasts;
            if expires > now {
                return Attempt::HeldByOther(holder);
            }
        }
        let mut new_spec = spec.clone();
        new_spec.holder_identity = Some(me);
        new_spec.lease_duration_seconds = Some(duration_secs);
        new_spec.renew_time = Some(micro_time(now));
        if holder != self.election.identity {
            new_spec.acquire_time = Some(micro_time(now));
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        let mut updated = lease;
        updated.spec = Some(new_spec.clone());
        // `replace` sends the resourceVersion read above: a concurrent writer makes it fail.
        match self
            .api
            .replace(&self.election.name, &PostParams::default(), &updated)
            .await
        {
            Ok(_) => {
                if held_by_other {
                    info!(lease = %self.lease_key(), previous = %holder, "took over an expired lease");
                }
                self.observed = Some((new_spec, now));
                Attempt::Held
            }
            Err(e) => Attempt::Failed(e.to_string()),
        }
    }

    /// Gives the Lease up (empty holder, one-second duration) if we still hold it.
    async fn release(&mut self) {
        let lease = match self.api.get_opt(&self.election.name).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(err) => {
                warn!(lease = %self.lease_key(), %err, "cannot release the lease");
                return;
            }
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.election.identity.as_str()) {
            return;
        }
        let now = micro_time(self.clock.now());
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now.clone());
        spec.acquire_time = Some(now);
        let mut updated = lease;
        updated.spec = Some(spec);
        if let Err(err) = self
            .api
            .replace(&self.election.name, &PostParams::default(), &updated)
            .await
        {
            warn!(lease = %self.lease_key(), %err, "cannot release the lease");
        }
    }
}

/// `metav1.MicroTime` for `t`, at the microsecond precision it is stored with.
fn micro_time(t: SystemTime) -> MicroTime {
    let micros = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    MicroTime(Timestamp::from_microsecond(micros).unwrap_or(Timestamp::UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_unique_and_name_the_host() {
        let x = installation_identity("/var/lib/edgesite");
        assert_eq!(x, installation_identity("/var/lib/edgesite"));
        assert_ne!(x, installation_identity("/var/lib/edgesite-2"));
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        let (host, suffix) = a.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(suffix.len(), 16);
    }
}
