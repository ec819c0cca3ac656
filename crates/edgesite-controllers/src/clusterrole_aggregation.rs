//! The ClusterRole aggregation controller (upstream's `clusterrole-aggregation`): a ClusterRole
//! with `aggregationRule.clusterRoleSelectors` gets as `rules` the union of the rules of every
//! other ClusterRole its selectors match, kept current as those roles come, change and go.
//! This is how `admin`, `edit` and `view` are filled, and how a CRD's roles join them.

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client, ResourceExt as _};
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::Error;
use crate::informers::Informer;

/// Runs the controller until the returned future is dropped.
pub async fn run(client: Client) {
    let api: Api<ClusterRole> = Api::all(client);
    let informer = Informer::new(api.clone());
    let store = informer.store();
    let events = informer.objects();
    let watching = informer.run();
    futures::pin_mut!(events, watching);
    loop {
        tokio::select! {
            () = &mut watching => return,
            changed = events.next() => {
                if changed.is_none() {
                    return;
                }
                // One pass for every change that is already queued.
                while let Some(Some(_)) = events.next().now_or_never() {}
                while let Err(err) = sync(&api, &store).await {
                    warn!(%err, "cannot aggregate cluster roles; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Rewrites the rules of every aggregated ClusterRole whose rules are not those its
/// selectors gather.
async fn sync(api: &Api<ClusterRole>, store: &Store<ClusterRole>) -> Result<(), Error> {
    let roles: Vec<Arc<ClusterRole>> = store.state();
    let values: Vec<Value> = roles
        .iter()
        .filter_map(|r| serde_json::to_value(r.as_ref()).ok())
        .collect();
    for (role, value) in roles.iter().zip(&values) {
        let Some(rules) = edgesite_api::rbac::aggregated_rules(value, &values) else {
            continue;
        };
        let want: Vec<Value> = rules
            .iter()
            .map(edgesite_api::rbac::PolicyRule::to_json)
            .collect();
        let have: Vec<edgesite_api::rbac::PolicyRule> = edgesite_api::rbac::rules_of(value);
        if have == rules {
            continue;
        }
        let name = role.name_any();
        match api
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"rules": want})),
            )
            .await
        {
            Ok(_) => {
                info!(clusterrole = %name, rules = want.len(), "aggregated cluster role rules")
            }
            Err(kube::Error::Api(s)) if s.code == 404 => debug!(clusterrole = %name, "gone"),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
