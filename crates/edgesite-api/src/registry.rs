//! The static table of every resource the API server serves, and the lookups built on it.
//!
//! One table drives discovery (`/api/v1`, `/apis/{g}/{v}`, the aggregated form), request
//! routing, the store key layout and, later, a `kubectl`-style name resolver. Keeping it in one
//! place means a resource cannot be routable but undiscoverable (kubectl then says "the server
//! doesn't have a resource type") or discoverable but unroutable.
//!
//! Verbs, short names, categories and subresources copy what kube-apiserver 1.32 reports for
//! the same resources, because clients act on them: kubectl expands `all` from `categories`,
//! resolves `deploy` from `shortNames`, and refuses `kubectl delete --all` without
//! `deletecollection`. Verbs are sorted alphabetically, as upstream serves them.
//!
//! ```
//! use edgesite_api::registry;
//!
//! let deploy = registry::resolve("deploy").unwrap();
//! assert_eq!((deploy.group, deploy.version, deploy.kind), ("apps", "v1", "Deployment"));
//! assert_eq!(
//!     registry::storage_key(deploy, Some("default"), "web").as_deref(),
//!     Some("/registry/apps/deployments/default/web"),
//! );
//! ```

use std::fmt;

mod fields;
pub use fields::{
    is_selectable_field, selectable_field_set, selectable_field_value, selectable_fields,
};

/// Every verb a resource can support, in upstream's (alphabetical) order.
pub(crate) const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Namespaces: upstream has no `deletecollection` for them (deleting every namespace at once
/// would be a cluster wipe).
const NO_DELETECOLLECTION: &[&str] = &[
    "create", "delete", "get", "list", "patch", "update", "watch",
];
/// Review-style resources (access reviews, whoami) and action subresources: create only.
const CREATE_ONLY: &[&str] = &["create"];
/// `/status` and `/scale` subresources.
const GET_PATCH_UPDATE: &[&str] = &["get", "patch", "update"];
/// Streaming subresources (`exec`, `attach`, `portforward`): `get` for the WebSocket upgrade,
/// `create` for SPDY's POST.
const CREATE_GET: &[&str] = &["create", "get"];
/// `pods/log`: read only.
const GET_ONLY: &[&str] = &["get"];
/// The `all` category, which `kubectl get all` expands.
const ALL_CATEGORY: &[&str] = &["all"];

/// A group, version and kind, as discovery reports the type a resource or subresource answers
/// with (`responseKind`). `group` is `""` for the core group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupVersionKind {
    /// API group, `""` for core.
    pub group: &'static str,
    /// API version, e.g. `v1`.
    pub version: &'static str,
    /// Kind, e.g. `Scale`.
    pub kind: &'static str,
}

/// A subresource of a [`ResourceInfo`], e.g. `pods/log` or `deployments/scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubresourceInfo {
    /// The last path segment (`status`, `scale`, `log`...).
    pub name: &'static str,
    /// The type it accepts and returns. It differs from the parent's for `scale`
    /// (autoscaling/v1 Scale), `eviction` (policy/v1 Eviction) and the streaming ones; the
    /// scale client reads it from discovery, so it must be exact.
    pub response: GroupVersionKind,
    /// Verbs, sorted.
    pub verbs: &'static [&'static str],
}

/// One served resource: everything discovery reports about it plus what routing and storage
/// need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResourceInfo {
    /// API group, `""` for core.
    pub group: &'static str,
    /// API version; every resource is served in exactly one version for now.
    pub version: &'static str,
    /// Lower-case plural, the URL segment (`pods`).
    pub plural: &'static str,
    /// Lower-case singular (`pod`), accepted by kubectl.
    pub singular: &'static str,
    /// Kind (`Pod`).
    pub kind: &'static str,
    /// Whether objects live in a namespace.
    pub namespaced: bool,
    /// Verbs, sorted as upstream serves them.
    pub verbs: &'static [&'static str],
    /// Abbreviations kubectl accepts (`po`).
    pub short_names: &'static [&'static str],
    /// Categories (`all`) that kubectl expands to several resources.
    pub categories: &'static [&'static str],
    /// Subresources, sorted by name as upstream lists them.
    pub subresources: &'static [SubresourceInfo],
}

impl ResourceInfo {
    /// `group/version`, or `version` alone for core: the `apiVersion` of objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of the list type (`PodList`), used for list responses.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The group and kind, for `Invalid` errors (`Deployment.apps`).
    pub fn group_kind(&self) -> GroupKind {
        GroupKind::new(self.group, self.kind)
    }

    /// The group and plural, for most error messages (`deployments.apps`).
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(self.group, self.plural)
    }

    /// The type the resource itself answers with.
    pub fn gvk(&self) -> GroupVersionKind {
        GroupVersionKind {
            group: self.group,
            version: self.version,
            kind: self.kind,
        }
    }

    /// Whether the resource supports `verb` (one of the eight upstream verbs).
    pub fn supports(&self, verb: &str) -> bool {
        self.verbs.contains(&verb)
    }

    /// The subresource named `name`, if served.
    pub fn subresource(&self, name: &str) -> Option<&'static SubresourceInfo> {
        self.subresources.iter().find(|s| s.name == name)
    }
}

/// A group and resource (plural), the way upstream names resources in error messages and
/// Status details. Displays as `pods` for core and `deployments.apps` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupResource {
    /// API group, `""` for core.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// A group and resource.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// A resource of the core group.
    pub fn core(resource: impl Into<String>) -> Self {
        Self::new("", resource)
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

impl From<&ResourceInfo> for GroupResource {
    fn from(r: &ResourceInfo) -> Self {
        r.group_resource()
    }
}

/// A group and kind, as upstream names types in `Invalid` errors. Displays as `Pod` for core
/// and `Deployment.apps` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct GroupKind {
    /// API group, `""` for core.
    pub group: String,
    /// Kind.
    pub kind: String,
}

impl GroupKind {
    /// A group and kind.
    pub fn new(group: impl Into<String>, kind: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            kind: kind.into(),
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

impl From<&ResourceInfo> for GroupKind {
    fn from(r: &ResourceInfo) -> Self {
        r.group_kind()
    }
}

const fn gvk(group: &'static str, version: &'static str, kind: &'static str) -> GroupVersionKind {
    GroupVersionKind {
        group,
        version,
        kind,
    }
}

const fn sub(
    name: &'static str,
    response: GroupVersionKind,
    verbs: &'static [&'static str],
) -> SubresourceInfo {
    SubresourceInfo {
        name,
        response,
        verbs,
    }
}

/// `status` subresource answering with the parent's own type.
const fn status(group: &'static str, kind: &'static str) -> SubresourceInfo {
    sub("status", gvk(group, "v1", kind), GET_PATCH_UPDATE)
}

/// `scale` subresource: always autoscaling/v1 Scale, whatever the parent.
const SCALE: SubresourceInfo = sub("scale", gvk("autoscaling", "v1", "Scale"), GET_PATCH_UPDATE);

/// The table, in discovery order: core first, then the groups in [`GROUP_VERSIONS`] order. The
/// order matters for [`resolve`]: where two resources share a name (`events`), the first wins,
/// as kubectl prefers the core group.
static RESOURCES: &[ResourceInfo] = &[
    // ---- core v1 (sorted by plural, as /api/v1 lists them) ----
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "configmaps",
        singular: "configmap",
        kind: "ConfigMap",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["cm"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "endpoints",
        singular: "endpoints",
        kind: "Endpoints",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["ep"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "namespaces",
        singular: "namespace",
        kind: "Namespace",
        namespaced: false,
        verbs: NO_DELETECOLLECTION,
        short_names: &["ns"],
        categories: &[],
        // `finalize` is what the namespace controller uses to drop spec.finalizers.
        subresources: &[
            sub("finalize", gvk("", "v1", "Namespace"), &["update"]),
            status("", "Namespace"),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "nodes",
        singular: "node",
        kind: "Node",
        namespaced: false,
        verbs: ALL_VERBS,
        short_names: &["no"],
        categories: &[],
        subresources: &[status("", "Node")],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "pods",
        singular: "pod",
        kind: "Pod",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["po"],
        categories: ALL_CATEGORY,
        subresources: &[
            sub("attach", gvk("", "v1", "PodAttachOptions"), CREATE_GET),
            sub("binding", gvk("", "v1", "Binding"), CREATE_ONLY),
            sub("eviction", gvk("policy", "v1", "Eviction"), CREATE_ONLY),
            sub("exec", gvk("", "v1", "PodExecOptions"), CREATE_GET),
            sub("log", gvk("", "v1", "Pod"), GET_ONLY),
            sub(
                "portforward",
                gvk("", "v1", "PodPortForwardOptions"),
                CREATE_GET,
            ),
            status("", "Pod"),
        ],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "secrets",
        singular: "secret",
        kind: "Secret",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        singular: "serviceaccount",
        kind: "ServiceAccount",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["sa"],
        categories: &[],
        // `kubectl create token` posts a TokenRequest here.
        subresources: &[sub(
            "token",
            gvk("authentication.k8s.io", "v1", "TokenRequest"),
            CREATE_ONLY,
        )],
    },
    ResourceInfo {
        group: "",
        version: "v1",
        plural: "services",
        singular: "service",
        kind: "Service",
        namespaced: true,
        // Upstream gained `deletecollection` on services in 1.31.
        verbs: ALL_VERBS,
        short_names: &["svc"],
        categories: ALL_CATEGORY,
        subresources: &[status("", "Service")],
    },
    // ---- apps/v1 ----
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "controllerrevisions",
        singular: "controllerrevision",
        kind: "ControllerRevision",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "daemonsets",
        singular: "daemonset",
        kind: "DaemonSet",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["ds"],
        categories: ALL_CATEGORY,
        subresources: &[status("apps", "DaemonSet")],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "deployments",
        singular: "deployment",
        kind: "Deployment",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["deploy"],
        categories: ALL_CATEGORY,
        subresources: &[SCALE, status("apps", "Deployment")],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "replicasets",
        singular: "replicaset",
        kind: "ReplicaSet",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["rs"],
        categories: ALL_CATEGORY,
        subresources: &[SCALE, status("apps", "ReplicaSet")],
    },
    ResourceInfo {
        group: "apps",
        version: "v1",
        plural: "statefulsets",
        singular: "statefulset",
        kind: "StatefulSet",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["sts"],
        categories: ALL_CATEGORY,
        subresources: &[SCALE, status("apps", "StatefulSet")],
    },
    // ---- events.k8s.io/v1 ----
    ResourceInfo {
        group: "events.k8s.io",
        version: "v1",
        plural: "events",
        singular: "event",
        kind: "Event",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["ev"],
        categories: &[],
        subresources: &[],
    },
    // ---- authentication.k8s.io/v1 ----
    ResourceInfo {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    // ---- authorization.k8s.io/v1 ----
    ResourceInfo {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "localsubjectaccessreviews",
        singular: "localsubjectaccessreview",
        kind: "LocalSubjectAccessReview",
        namespaced: true,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        singular: "subjectaccessreview",
        kind: "SubjectAccessReview",
        namespaced: false,
        verbs: CREATE_ONLY,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    // ---- batch/v1 ----
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "cronjobs",
        singular: "cronjob",
        kind: "CronJob",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &["cj"],
        categories: ALL_CATEGORY,
        subresources: &[status("batch", "CronJob")],
    },
    ResourceInfo {
        group: "batch",
        version: "v1",
        plural: "jobs",
        singular: "job",
        kind: "Job",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: ALL_CATEGORY,
        subresources: &[status("batch", "Job")],
    },
    // ---- rbac.authorization.k8s.io/v1 ----
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterrolebindings",
        singular: "clusterrolebinding",
        kind: "ClusterRoleBinding",
        namespaced: false,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "clusterroles",
        singular: "clusterrole",
        kind: "ClusterRole",
        namespaced: false,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "rolebindings",
        singular: "rolebinding",
        kind: "RoleBinding",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    ResourceInfo {
        group: "rbac.authorization.k8s.io",
        version: "v1",
        plural: "roles",
        singular: "role",
        kind: "Role",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    // ---- coordination.k8s.io/v1 ----
    ResourceInfo {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        singular: "lease",
        kind: "Lease",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
    // ---- discovery.k8s.io/v1 ----
    ResourceInfo {
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        singular: "endpointslice",
        kind: "EndpointSlice",
        namespaced: true,
        verbs: ALL_VERBS,
        short_names: &[],
        categories: &[],
        subresources: &[],
    },
];

/// The named groups and their (single, preferred) version, in the order `/apis` lists them.
/// The order follows kube-apiserver's group priority for the groups we serve, so that kubectl
/// resolves ambiguous names the same way against both.
pub const GROUP_VERSIONS: &[(&str, &str)] = &[
    ("apps", "v1"),
    ("events.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("batch", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("discovery.k8s.io", "v1"),
];

/// Every served resource, core first, then named groups in [`GROUP_VERSIONS`] order.
pub fn all() -> &'static [ResourceInfo] {
    RESOURCES
}

/// The resources served under one group-version, in discovery order (empty if not served).
pub fn resources_in(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    let (group, version) = (group.to_owned(), version.to_owned());
    RESOURCES
        .iter()
        .filter(move |r| r.group == group && r.version == version)
}

/// The resource at `/apis/{group}/{version}/{plural}` (group `""` for `/api/v1`): the lookup
/// request routing uses. Exact and case-sensitive, as URL paths are.
pub fn lookup(group: &str, version: &str, plural: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// A resource of the built-in table, for code that names one (`builtin("", "v1", "services")`).
///
/// # Panics
/// When the table has no such resource: a programming error, which the registry's tests catch
/// for every resource the server names ([`BUILTINS_NAMED_BY_THE_SERVER`]).
pub fn builtin(group: &str, version: &str, plural: &str) -> &'static ResourceInfo {
    #[allow(clippy::expect_used)] // the table is static; see the test of the names used
    lookup(group, version, plural).expect("a resource of the built-in table")
}

/// The built-in resources the API server and its admission plugins name directly.
pub const BUILTINS_NAMED_BY_THE_SERVER: &[(&str, &str, &str)] =
    &[("", "v1", "namespaces"), ("", "v1", "services")];

/// The resource serving `kind` in `group`/`version`: maps an object's `apiVersion` and `kind`
/// (as in `kubectl apply -f`, or ownerReferences) to its resource.
pub fn by_gvk(group: &str, version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// The resource for an object's `apiVersion` (`v1`, `apps/v1`) and `kind`.
pub fn by_api_version_kind(api_version: &str, kind: &str) -> Option<&'static ResourceInfo> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    by_gvk(group, version, kind)
}

/// Every resource whose kind is `kind`, in preference order. A kind alone can be ambiguous:
/// `Event` is both core/v1 and events.k8s.io/v1.
pub fn by_kind(kind: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    let kind = kind.to_owned();
    RESOURCES.iter().filter(move |r| r.kind == kind)
}

/// Every resource a user-typed name could mean, in preference order (core group first, then
/// [`GROUP_VERSIONS`] order), as kubectl's resolver would match them: plural, singular, short
/// name or kind, case-insensitively, optionally qualified by a group (`deployments.apps`,
/// `deploy.apps`, `events.events.k8s.io`).
pub fn resolve_all(name: &str) -> Vec<&'static ResourceInfo> {
    let name = name.to_ascii_lowercase();
    let matches_name = |r: &ResourceInfo, n: &str| {
        r.plural == n
            || r.singular == n
            || r.short_names.contains(&n)
            || r.kind.eq_ignore_ascii_case(n)
    };
    let mut found: Vec<&'static ResourceInfo> = RESOURCES
        .iter()
        .filter(|r| matches_name(r, &name))
        .collect();
    // `name.group`: try every split at a dot, since groups contain dots but names do not.
    for (i, _) in name.match_indices('.') {
        let (n, group) = (&name[..i], &name[i + 1..]);
        for r in RESOURCES {
            if r.group == group && matches_name(r, n) && !found.contains(&r) {
                found.push(r);
            }
        }
    }
    found
}

/// The resource a user-typed name means, the first of [`resolve_all`]: what `kubectl get
/// <name>` would pick.
pub fn resolve(name: &str) -> Option<&'static ResourceInfo> {
    resolve_all(name).into_iter().next()
}

/// Every resource in `category` (e.g. `all`), in discovery order.
pub fn in_category(category: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    let category = category.to_owned();
    RESOURCES
        .iter()
        .filter(move |r| r.categories.contains(&category.as_str()))
}

/// Root of every key the API server writes.
pub const STORAGE_ROOT: &str = "/registry";

/// The group segment of store keys: `core` for the core group.
///
/// Why not upstream's etcd layout: kube-apiserver writes core resources without a group
/// segment and with historical names (`/registry/minions/` for nodes, `/registry/services/specs/`
/// for services, `/registry/deployments/` without `apps`), so a core plural can collide with a
/// group name and prefixes need a per-resource table. We are not sharing an etcd with
/// kube-apiserver, so one uniform rule — `/registry/{group or "core"}/{plural}/...` — is simpler
/// to reason about, and `core` can never clash with a real group (those are `apps`, `batch` or
/// contain a dot).
fn group_segment(r: &ResourceInfo) -> &'static str {
    if r.group.is_empty() { "core" } else { r.group }
}

/// Whether `s` can be a key segment: upstream rejects names that are empty, `.`, `..`, or
/// contain `/` or `%` (path segment name validation), and so do we, so that no name can reach
/// outside its own key prefix.
fn valid_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '%'])
}

/// The store key of one object: `/registry/{group or core}/{plural}/{namespace}/{name}` for
/// namespaced resources, `/registry/{group or core}/{plural}/{name}` for cluster-scoped ones
/// (see [`STORAGE_ROOT`] and the module docs for why this differs from kube-apiserver's).
///
/// `None` when `namespace` is given for a cluster-scoped resource or missing for a namespaced
/// one, or when a segment is not a valid path segment name; the API server has rejected such
/// requests before reaching the store, so `None` here is a bug, not user input.
pub fn storage_key(r: &ResourceInfo, namespace: Option<&str>, name: &str) -> Option<String> {
    // A namespaced object always needs its namespace: the all-namespaces prefix is for lists.
    if !valid_segment(name) || (r.namespaced && namespace.is_none()) {
        return None;
    }
    let prefix = storage_prefix(r, namespace)?;
    Some(format!("{prefix}{name}"))
}

/// The key prefix under which every object of `r` is stored, ending in `/` so that namespace
/// `a` does not match `ab`: with `namespace: None`, all objects (all namespaces); with
/// `Some(ns)`, the objects of one namespace (namespaced resources only, else `None`).
pub fn storage_prefix(r: &ResourceInfo, namespace: Option<&str>) -> Option<String> {
    let base = format!("{STORAGE_ROOT}/{}/{}/", group_segment(r), r.plural);
    match namespace {
        None => Some(base),
        Some(ns) if r.namespaced && valid_segment(ns) => Some(format!("{base}{ns}/")),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests;
