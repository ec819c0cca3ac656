//! Best-effort reporting: core/v1 Events (`Scheduled`, `FailedScheduling`) and the pod's
//! `PodScheduled=False` condition. Written by a task of their own fed through a bounded
//! channel, so scheduling never waits on them; when the channel is full, reports are dropped
//! (upstream's event broadcaster drops too).

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::debug;

/// The component name in events and the pod's scheduler name this scheduler serves.
pub const COMPONENT: &str = "default-scheduler";

/// How many reports may be written at once.
const CONCURRENCY: usize = 8;

/// One thing to write.
#[derive(Debug)]
pub enum Report {
    /// Create an event.
    Create {
        /// Its namespace.
        namespace: String,
        /// The event.
        event: Value,
    },
    /// Bump `count` and `lastTimestamp` of an event this scheduler created; create it if it
    /// is gone (or was never written).
    Bump {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// The new count.
        count: u32,
        /// The new `lastTimestamp`.
        last: String,
        /// The whole event, for when it must be created.
        event: Value,
    },
    /// Set the pod's `PodScheduled` condition to False/Unschedulable.
    Unschedulable {
        /// Pod namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The failure summary.
        message: String,
        /// Now.
        time: String,
    },
}

/// Builds a core/v1 event about `pod`.
#[allow(clippy::too_many_arguments)]
pub fn event(
    namespace: &str,
    pod: &str,
    uid: &str,
    event_name: &str,
    type_: &str,
    reason: &str,
    message: &str,
    count: u32,
    first: &str,
    last: &str,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name, "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": namespace,
            "name": pod, "uid": uid},
        "reason": reason,
        "message": message,
        "type": type_,
        "source": {"component": COMPONENT},
        "firstTimestamp": first,
        "lastTimestamp": last,
        "count": count,
    })
}

/// Writes reports from `rx` until every sender is gone.
pub async fn write_reports(client: Client, mut rx: mpsc::Receiver<Report>) {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .for_each_concurrent(CONCURRENCY, |r| {
            let client = client.clone();
            async move {
                if let Err(err) = write(&client, r).await {
                    debug!(%err, "scheduler report not written");
                }
            }
        })
        .await;
}

async fn write(client: &Client, r: Report) -> Result<(), kube::Error> {
    let pp = PostParams::default();
    match r {
        Report::Create { namespace, event } => {
            create(client, &namespace, event, &pp).await?;
        }
        Report::Bump {
            namespace,
            name,
            count,
            last,
            event,
        } => {
            let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
            let patch = json!({"count": count, "lastTimestamp": last});
            match api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    create(client, &namespace, event, &pp).await?;
                }
                other => {
                    other?;
                }
            }
        }
        Report::Unschedulable {
            namespace,
            name,
            message,
            time,
        } => {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
            let patch = json!({"status": {"conditions": [{
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": message,
                "lastProbeTime": null,
                "lastTransitionTime": time,
            }]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                .await?;
        }
    }
    Ok(())
}

async fn create(
    client: &Client,
    namespace: &str,
    event: Value,
    pp: &PostParams,
) -> Result<(), kube::Error> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let event: Event = serde_json::from_value(event).map_err(kube::Error::SerdeError)?;
    match api.create(pp, &event).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}
