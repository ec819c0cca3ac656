//! The service account controller: every active namespace has a ServiceAccount named
//! `default`, created with the namespace and put back if deleted. Terminating namespaces are
//! left alone.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt as _};
use tracing::info;

use crate::Error;
use crate::informers::Informers;
use crate::queue;

/// The ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

struct Context {
    client: Client,
}

/// Runs the service account controller until the returned future is dropped.
pub async fn run(client: Client, inf: &Informers) {
    let accounts: Api<ServiceAccount> = Api::all(client.clone());
    let only_default =
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SERVICE_ACCOUNT}"));
    let controller =
        Controller::for_shared_stream(inf.namespaces.objects(), inf.namespaces.store()).watches(
            accounts,
            only_default,
            |sa| sa.namespace().map(|ns| ObjectRef::<Namespace>::new(&ns)),
        );
    let ctx = Arc::new(Context { client });
    queue::run_controller("serviceaccount", controller, reconcile, ctx).await;
}

/// Whether the namespace accepts new objects.
pub(crate) fn active(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !active(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), &name);
    if api.get_opt(DEFAULT_SERVICE_ACCOUNT).await?.is_some() {
        return Ok(Action::await_change());
    }
    let sa = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(DEFAULT_SERVICE_ACCOUNT.to_owned()),
            namespace: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    match api.create(&PostParams::default(), &sa).await {
        Ok(_) => info!(namespace = %name, "created the default service account"),
        // Created meanwhile, or the namespace started terminating.
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 403 || s.code == 404 => {}
        Err(e) => return Err(e.into()),
    }
    Ok(Action::await_change())
}
