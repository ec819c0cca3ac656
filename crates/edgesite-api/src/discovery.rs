//! Discovery documents built from the [`crate::registry`]: the legacy form
//! (`/api`, `/apis`, `/api/v1`, `/apis/{g}/{v}`), the aggregated form (`APIGroupDiscoveryList`)
//! and `/version`.
//!
//! Without `/api` and `/apis` kubectl fails outright ("couldn't get current server API group
//! list"); it then reads verbs, short names and categories from these documents to resolve
//! `deploy`, expand `all` and find `/scale`. The aggregated form answers all of that in one
//! request per root instead of one per group-version, so kubectl prefers it when the response
//! carries the exact [`AggregatedVersion::content_type`].
//!
//! ```
//! use edgesite_api::discovery::{self, AggregatedVersion};
//!
//! let accept = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json";
//! let v = discovery::negotiate_aggregated(accept).unwrap();
//! assert_eq!(v.content_type(), "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList");
//! let body = discovery::aggregated_apis(v);
//! assert_eq!(body["items"][0]["metadata"]["name"], "apps");
//! ```

use serde_json::{Map, Value, json};

use crate::registry::{self, GROUP_VERSIONS, GroupVersionKind, ResourceInfo};

/// The Kubernetes version we claim. The kubectl dispatcher picks its bundled kubectl by
/// `minor`, and the compatibility spec targets kubectl 1.32, so this must stay 1.32.
pub const KUBE_MAJOR: &str = "1";
/// See [`KUBE_MAJOR`].
pub const KUBE_MINOR: &str = "32";
/// `gitVersion`: upstream 1.32.4 plus `+edgesite` as *build metadata*, like k3s's `+k3s1`.
/// Build metadata keeps semver precedence equal to v1.32.4, so Helm `kubeVersion` constraints
/// such as `>=1.32.0` hold; a `-edgesite` pre-release suffix would sort below 1.32.4 and fail
/// them.
pub const GIT_VERSION: &str = "v1.32.4+edgesite";

/// The aggregated discovery API version a client asked for. kubectl 1.32 offers v2 and
/// v2beta1; the bodies differ only in `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggregatedVersion {
    /// `apidiscovery.k8s.io/v2` (GA since 1.30).
    V2,
    /// `apidiscovery.k8s.io/v2beta1`, for older clients.
    V2Beta1,
}

impl AggregatedVersion {
    /// The exact response Content-Type. client-go picks its parser by comparing this string
    /// (`discovery_client.go`), so the parameters and their order must be exactly these.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::V2 => AGGREGATED_V2_CONTENT_TYPE,
            Self::V2Beta1 => AGGREGATED_V2BETA1_CONTENT_TYPE,
        }
    }

    /// The body's `apiVersion`.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::V2 => "apidiscovery.k8s.io/v2",
            Self::V2Beta1 => "apidiscovery.k8s.io/v2beta1",
        }
    }
}

/// Content-Type of the aggregated v2 form (see [`AggregatedVersion::content_type`]).
pub const AGGREGATED_V2_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// Content-Type of the aggregated v2beta1 form.
pub const AGGREGATED_V2BETA1_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Which aggregated form the `Accept` header asks for, if any: the first media range (in the
/// client's order) that is `application/json` with `g=apidiscovery.k8s.io`,
/// `as=APIGroupDiscoveryList` and `v=v2` or `v=v2beta1`. `None` means: answer the legacy form
/// with `application/json`. Quality values are ignored because the clients that ask for the
/// aggregated form list it first and send none.
pub fn negotiate_aggregated(accept: &str) -> Option<AggregatedVersion> {
    accept.split(',').find_map(|range| {
        let mut parts = range.split(';').map(str::trim);
        if !parts.next()?.eq_ignore_ascii_case("application/json") {
            return None;
        }
        let (mut g, mut v, mut as_) = (None, None, None);
        for p in parts {
            match p.split_once('=') {
                Some(("g", x)) => g = Some(x),
                Some(("v", x)) => v = Some(x),
                Some(("as", x)) => as_ = Some(x),
                _ => {}
            }
        }
        if g != Some("apidiscovery.k8s.io") || as_ != Some("APIGroupDiscoveryList") {
            return None;
        }
        match v {
            Some("v2") => Some(AggregatedVersion::V2),
            Some("v2beta1") => Some(AggregatedVersion::V2Beta1),
            _ => None,
        }
    })
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| json!(s)).collect())
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// `GET /api`: `APIVersions{versions:["v1"]}`. `serverAddressByClientCIDRs` is required by the
/// OpenAPI schema, and the Python client (pydantic) rejects the body without it, so the caller
/// passes the address clients should use (`host:port`).
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ]
    })
}

/// `GET /apis/{group}`: one `APIGroup`, or `None` for a group we do not serve.
pub fn api_group(group: &str) -> Option<Value> {
    let &(name, version) = GROUP_VERSIONS.iter().find(|(g, _)| *g == group)?;
    let gv = json!({"groupVersion": group_version(name, version), "version": version});
    Some(json!({
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": name,
        "versions": [gv],
        "preferredVersion": gv,
    }))
}

/// `GET /apis` (legacy form): `APIGroupList` with every named group, its versions and
/// `preferredVersion`.
pub fn api_group_list() -> Value {
    let groups: Vec<Value> = GROUP_VERSIONS
        .iter()
        .filter_map(|(g, _)| api_group(g))
        .map(|mut g| {
            // Inside the list the entries carry no kind/apiVersion, as upstream's.
            if let Some(m) = g.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            g
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// The legacy `APIResource` entry of a resource.
fn api_resource(r: &ResourceInfo) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(r.plural));
    m.insert("singularName".into(), json!(r.singular));
    m.insert("namespaced".into(), json!(r.namespaced));
    m.insert("kind".into(), json!(r.kind));
    m.insert("verbs".into(), strs(r.verbs));
    // Upstream omits empty shortNames/categories.
    if !r.short_names.is_empty() {
        m.insert("shortNames".into(), strs(r.short_names));
    }
    if !r.categories.is_empty() {
        m.insert("categories".into(), strs(r.categories));
    }
    Value::Object(m)
}

/// The legacy entry of a subresource: `pods/log` style name, empty singularName, and
/// `group`/`version` only when the response type lives in another group-version (e.g.
/// `deployments/scale` → autoscaling/v1 Scale, which the scale client reads).
fn api_subresource(r: &ResourceInfo, s: &registry::SubresourceInfo) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(format!("{}/{}", r.plural, s.name)));
    m.insert("singularName".into(), json!(""));
    m.insert("namespaced".into(), json!(r.namespaced));
    if (s.response.group, s.response.version) != (r.group, r.version) {
        m.insert("group".into(), json!(s.response.group));
        m.insert("version".into(), json!(s.response.version));
    }
    m.insert("kind".into(), json!(s.response.kind));
    m.insert("verbs".into(), strs(s.verbs));
    Value::Object(m)
}

/// `GET /api/v1` (group `""`) or `GET /apis/{group}/{version}`: the `APIResourceList`, each
/// resource followed by its subresources (sorted by name, as upstream lists them). `None` for
/// a group-version we do not serve.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for r in registry::resources_in(group, version) {
        resources.push(api_resource(r));
        for s in r.subresources {
            resources.push(api_subresource(r, s));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

fn response_kind(k: GroupVersionKind) -> Value {
    json!({"group": k.group, "version": k.version, "kind": k.kind})
}

/// The aggregated `APIResourceDiscovery` entry of a resource. `responseKind` is always set,
/// with group and version filled in: client-go drops resources without it.
fn resource_discovery(r: &ResourceInfo) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), json!(r.plural));
    m.insert("responseKind".into(), response_kind(r.gvk()));
    m.insert(
        "scope".into(),
        json!(if r.namespaced {
            "Namespaced"
        } else {
            "Cluster"
        }),
    );
    m.insert("singularResource".into(), json!(r.singular));
    m.insert("verbs".into(), strs(r.verbs));
    if !r.short_names.is_empty() {
        m.insert("shortNames".into(), strs(r.short_names));
    }
    if !r.categories.is_empty() {
        m.insert("categories".into(), strs(r.categories));
    }
    if !r.subresources.is_empty() {
        let subs: Vec<Value> = r
            .subresources
            .iter()
            .map(|s| {
                json!({
                    "subresource": s.name,
                    "responseKind": response_kind(s.response),
                    "verbs": strs(s.verbs),
                })
            })
            .collect();
        m.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(m)
}

/// One `APIGroupDiscovery` item (`metadata.name` is `""` for core).
fn group_discovery(group: &str, version: &str) -> Value {
    let resources: Vec<Value> = registry::resources_in(group, version)
        .map(resource_discovery)
        .collect();
    json!({
        "metadata": {"name": group},
        "versions": [{
            "version": version,
            "resources": resources,
            "freshness": "Current",
        }],
    })
}

fn group_discovery_list(av: AggregatedVersion, items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": av.api_version(),
        "metadata": {},
        "items": items,
    })
}

/// `GET /api` in the aggregated form: one item, the core group (`name: ""`) with `v1`.
/// Send with [`AggregatedVersion::content_type`].
pub fn aggregated_api(av: AggregatedVersion) -> Value {
    group_discovery_list(av, vec![group_discovery("", "v1")])
}

/// `GET /apis` in the aggregated form: every named group, in [`GROUP_VERSIONS`] order.
/// Send with [`AggregatedVersion::content_type`].
pub fn aggregated_apis(av: AggregatedVersion) -> Value {
    let items = GROUP_VERSIONS
        .iter()
        .map(|(g, v)| group_discovery(g, v))
        .collect();
    group_discovery_list(av, items)
}

/// `platform` as Go spells it (`linux/amd64`), from the target this binary was compiled for.
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// `GET /version` (and `/version/`, which the Python client uses): all nine fields of
/// `version.Info`, since the Python client fails when one is missing. `git_commit` and
/// `build_date` (RFC 3339) come from the build; `goVersion` and `compiler` say honestly that
/// this is not a Go binary — no client parses them.
pub fn version_info(git_commit: &str, build_date: &str) -> Value {
    json!({
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": git_commit,
        "gitTreeState": "clean",
        "buildDate": build_date,
        "goVersion": "none (rust)",
        "compiler": "rustc",
        "platform": platform(),
    })
}

#[cfg(test)]
mod tests;
