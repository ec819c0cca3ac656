//! The bridge from EdgeSite's resource registry to kube-rs's dynamic API.

use edgesite_api::registry::{self, ResourceInfo};
use kube::Api;
use kube::core::{ApiResource, DynamicObject};

/// The kube-rs description of a registry resource.
pub fn api_resource(r: &ResourceInfo) -> ApiResource {
    ApiResource {
        group: r.group.to_owned(),
        version: r.version.to_owned(),
        api_version: r.api_version(),
        kind: r.kind.to_owned(),
        plural: r.plural.to_owned(),
    }
}

/// Every resource that can be listed and watched (what the garbage collector follows).
pub fn watchable() -> impl Iterator<Item = &'static ResourceInfo> {
    registry::all()
        .iter()
        .filter(|r| r.supports("list") && r.supports("watch"))
}

/// Every namespaced resource the namespace controller must empty: listable and deletable.
pub fn namespaced_deletable() -> impl Iterator<Item = &'static ResourceInfo> {
    registry::all()
        .iter()
        .filter(|r| r.namespaced && r.supports("list") && r.supports("deletecollection"))
}

/// A dynamic API for `r` in `namespace` (ignored for cluster-scoped resources), or across all
/// namespaces when `None`.
pub fn dynamic_api(
    client: &kube::Client,
    r: &ResourceInfo,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let ar = api_resource(r);
    match namespace {
        Some(ns) if r.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    }
}
