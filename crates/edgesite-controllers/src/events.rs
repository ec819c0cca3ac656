//! Best-effort core/v1 Events written by the controllers (the Job, CronJob and node lifecycle
//! controllers): one new Event per occurrence, timestamped on the controllers' clock. A
//! failure to write one is only logged. The scheduler batches and bumps its own events (see
//! [`crate::scheduler`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use k8s_openapi::api::core::v1::Event as CoreEvent;
use kube::api::PostParams;
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::debug;

use crate::Clock;

/// One occurrence to record.
pub(crate) struct Event<'a> {
    /// The namespace the Event goes to.
    pub namespace: &'a str,
    /// The involved object's name: the Event is named `<object>.<unique hex>`.
    pub object: &'a str,
    /// The `involvedObject` reference.
    pub involved: Value,
    /// `Normal` or `Warning`.
    pub type_: &'a str,
    /// The machine-readable reason.
    pub reason: &'a str,
    /// The human-readable message.
    pub message: &'a str,
    /// The reporting component (`source.component` and `reportingComponent`).
    pub component: &'a str,
}

/// The `involvedObject` reference to `obj`.
pub(crate) fn involved<K>(obj: &K) -> Value
where
    K: kube::Resource<DynamicType = ()>,
{
    json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "name": obj.name_any(),
        "namespace": obj.namespace(),
        "uid": obj.uid(),
        "resourceVersion": obj.resource_version(),
    })
}

/// Creates a core/v1 Event for `ev` (best effort: a failure is only logged).
pub(crate) async fn record(client: &Client, clock: &dyn Clock, ev: Event<'_>) {
    // Clock nanoseconds, made unique: a manual clock stands still between events.
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let nanos = clock
        .now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
        + u128::from(SEQUENCE.fetch_add(1, Ordering::Relaxed));
    let ts = clock.rfc3339();
    let body = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{nanos:x}", ev.object), "namespace": ev.namespace},
        "involvedObject": ev.involved,
        "reason": ev.reason,
        "message": ev.message,
        "type": ev.type_,
        "source": {"component": ev.component},
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
        "reportingComponent": ev.component,
        "reportingInstance": "",
    });
    let api: Api<CoreEvent> = Api::namespaced(client.clone(), ev.namespace);
    let result = match serde_json::from_value(body) {
        Ok(e) => api.create(&PostParams::default(), &e).await.map(|_| ()),
        Err(e) => Err(kube::Error::SerdeError(e)),
    };
    if let Err(err) = result {
        debug!(reason = %ev.reason, %err, "cannot record an event");
    }
}
