//! The root CA publisher: every active namespace has a ConfigMap `kube-root-ca.crt` whose
//! `ca.crt` is the cluster CA certificate ([`crate::Config::root_ca_pem`]), so pods can verify
//! the API server. It is created with the namespace, put back if deleted and rewritten if its
//! content drifts. Without a CA in the config the controller does nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::{debug, info};

use crate::Error;
use crate::informers::Informers;
use crate::queue;
use crate::serviceaccount::active;

/// The ConfigMap's name.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The key holding the PEM certificate.
pub const ROOT_CA_KEY: &str = "ca.crt";
/// Upstream's description annotation on the ConfigMap.
const DESCRIPTION_ANNOTATION: &str = "kubernetes.io/description";
const DESCRIPTION: &str = "Contains a CA bundle that can be used to verify the kube-apiserver \
    when using internal endpoints such as the internal service IP or kubernetes.default.svc. \
    No other usage is guaranteed across distributions of Kubernetes clusters.";

struct Context {
    client: Client,
    ca_pem: String,
}

/// Runs the root CA publisher until the returned future is dropped; returns at once (after
/// a log line) when there is no CA to publish.
pub async fn run(client: Client, ca_pem: Option<String>, inf: &Informers) {
    let Some(ca_pem) = ca_pem else {
        info!("no cluster CA configured: kube-root-ca.crt ConfigMaps are not published");
        return;
    };
    let configmaps: Api<ConfigMap> = Api::all(client.clone());
    let only_ours =
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA_CONFIGMAP}"));
    let controller =
        Controller::for_shared_stream(inf.namespaces.objects(), inf.namespaces.store()).watches(
            configmaps,
            only_ours,
            |cm| cm.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        );
    let ctx = Arc::new(Context { client, ca_pem });
    queue::run_controller("root-ca-publisher", controller, reconcile, ctx).await;
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !active(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &name);
    let data = BTreeMap::from([(ROOT_CA_KEY.to_owned(), ctx.ca_pem.clone())]);
    match api.get_opt(ROOT_CA_CONFIGMAP).await? {
        Some(cm) => {
            let described = cm
                .annotations()
                .get(DESCRIPTION_ANNOTATION)
                .map(String::as_str)
                == Some(DESCRIPTION);
            if cm.data.as_ref() == Some(&data) && cm.binary_data.is_none() && described {
                return Ok(Action::await_change());
            }
            let mut fixed = cm;
            fixed.data = Some(data);
            fixed.binary_data = None;
            fixed
                .annotations_mut()
                .insert(DESCRIPTION_ANNOTATION.to_owned(), DESCRIPTION.to_owned());
            match api
                .replace(ROOT_CA_CONFIGMAP, &PostParams::default(), &fixed)
                .await
            {
                Ok(_) => info!(namespace = %name, "rewrote kube-root-ca.crt"),
                Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => {
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.to_owned()),
                    namespace: Some(name.clone()),
                    annotations: Some(BTreeMap::from([(
                        DESCRIPTION_ANNOTATION.to_owned(),
                        DESCRIPTION.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                ..ConfigMap::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(_) => debug!(namespace = %name, "published kube-root-ca.crt"),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Ok(Action::requeue(Duration::from_millis(100)));
                }
                // The namespace started terminating.
                Err(kube::Error::Api(s)) if s.code == 403 || s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Action::await_change())
}
