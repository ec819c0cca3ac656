//! What strategic merge patch needs to know about a type: for each field, how a list or map is
//! patched. The API server implements [`PatchSchema`] over the upstream OpenAPI v3 documents;
//! [`KnownMergeKeys`] is a small hard-coded table for tests and for code that runs before the
//! OpenAPI data is loaded.

use super::PatchError;

/// How a field is patched, from `x-kubernetes-patch-strategy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PatchStrategy {
    /// No strategy declared: maps merge, lists are replaced whole.
    #[default]
    Default,
    /// `merge`: lists merge by merge key (lists of objects) or as a set (lists of primitives).
    Merge,
    /// `replace`: the patch value replaces the field, maps included.
    Replace,
}

/// Patch metadata of one field: the strategy, the merge key and whether `retainKeys` is
/// declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PatchMeta {
    /// The strategy (`x-kubernetes-patch-strategy` without `retainKeys`).
    pub strategy: PatchStrategy,
    /// `x-kubernetes-patch-merge-key`, for lists of objects merged by key.
    pub merge_key: Option<String>,
    /// Whether the strategy includes `retainKeys`. Applying a patch honours a `$retainKeys`
    /// directive wherever it appears, as upstream does, so this is informational for appliers
    /// and matters only to code that computes patches.
    pub retain_keys: bool,
}

impl PatchMeta {
    /// A list merged by `key`.
    pub fn merge_by(key: &str) -> Self {
        Self {
            strategy: PatchStrategy::Merge,
            merge_key: Some(key.to_owned()),
            retain_keys: false,
        }
    }

    /// A list of primitives merged as a set.
    pub fn merge_set() -> Self {
        Self {
            strategy: PatchStrategy::Merge,
            merge_key: None,
            retain_keys: false,
        }
    }

    /// Builds the metadata from the OpenAPI extensions `x-kubernetes-patch-strategy` (a comma
    /// separated list such as `merge,retainKeys`) and `x-kubernetes-patch-merge-key`, so that
    /// OpenAPI-backed schemas parse them the way upstream does.
    pub fn from_extensions(
        strategy: Option<&str>,
        merge_key: Option<&str>,
    ) -> Result<Self, PatchError> {
        let mut meta = Self {
            merge_key: merge_key.map(str::to_owned),
            ..Self::default()
        };
        let parts: Vec<&str> = strategy
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        if parts.len() > 2 {
            return Err(bad_strategy(strategy));
        }
        let mut main = None;
        for part in parts {
            match part {
                "retainKeys" if !meta.retain_keys => meta.retain_keys = true,
                "merge" if main.is_none() => main = Some(PatchStrategy::Merge),
                "replace" if main.is_none() => main = Some(PatchStrategy::Replace),
                _ => return Err(bad_strategy(strategy)),
            }
        }
        meta.strategy = main.unwrap_or_default();
        Ok(meta)
    }
}

fn bad_strategy(strategy: Option<&str>) -> PatchError {
    PatchError::InvalidSchema(format!(
        "unexpected x-kubernetes-patch-strategy {:?} in the schema",
        strategy.unwrap_or("")
    ))
}

/// The schema of one JSON object type, as strategic merge patch walks it from the root of the
/// patched object. `child` steps into a field (into the items of a list field), so an OpenAPI
/// implementation can be a light cursor that resolves `$ref`s lazily; the `'_` lifetime lets
/// that cursor borrow the loaded documents instead of copying them.
pub trait PatchSchema {
    /// Patch metadata of `field` in objects of this type; [`PatchMeta::default`] when unknown.
    fn patch_meta(&self, field: &str) -> PatchMeta;

    /// The schema of the value of `field`; for a list field, of its items. `None` when the
    /// field's type is unknown or not an object: everything below it then gets the defaults
    /// (maps merge, lists are replaced).
    fn child(&self, field: &str) -> Option<Box<dyn PatchSchema + '_>>;
}

/// A schema that knows nothing: every map merges and every list is replaced, which makes
/// strategic merge patch behave like merge patch plus the `$patch`-style directives.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSchema;

impl PatchSchema for NoSchema {
    fn patch_meta(&self, _field: &str) -> PatchMeta {
        PatchMeta::default()
    }

    fn child(&self, _field: &str) -> Option<Box<dyn PatchSchema + '_>> {
        None
    }
}

/// The common merge keys of core/v1, apps/v1 and batch/v1 (Pod, PodTemplate, Deployment,
/// ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, Service, Node), copied as data from the
/// upstream `x-kubernetes-patch-*` extensions. It is kind-agnostic: one `spec` node holds the
/// fields of PodSpec, ServiceSpec, NodeSpec and the workload specs, which is safe because those
/// share no field name with different metadata. Lists it does not know are replaced, as they
/// are upstream for `tolerations`, `taints`, `envFrom` and `containerStatuses`.
#[derive(Debug, Clone, Copy, Default)]
pub struct KnownMergeKeys;

impl PatchSchema for KnownMergeKeys {
    fn patch_meta(&self, field: &str) -> PatchMeta {
        Known::Object.patch_meta(field)
    }

    fn child(&self, field: &str) -> Option<Box<dyn PatchSchema + '_>> {
        Known::Object.child(field)
    }
}

/// The node types of [`KnownMergeKeys`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// Any top-level object.
    Object,
    ObjectMeta,
    /// Union of PodSpec, ServiceSpec, NodeSpec, DeploymentSpec, JobSpec, CronJobSpec….
    Spec,
    /// PodTemplateSpec and JobTemplateSpec.
    Template,
    Container,
    /// Union of the statuses: PodStatus, NodeStatus, DeploymentStatus, JobStatus….
    Status,
}

/// How a field is described in [`KNOWN_FIELDS`].
enum Rule {
    /// A map whose fields are described by the given node.
    Map(Known),
    /// A list merged by key, whose items are described by the node if any.
    MergeBy(&'static str, Option<Known>),
    /// Like `MergeBy`, with `retainKeys` in the strategy too.
    MergeByRetainKeys(&'static str),
    /// A list of primitives merged as a set.
    MergeSet,
    /// A map with the `retainKeys` strategy.
    RetainKeys,
}

/// (node, field, rule). Upstream names in the comments.
const KNOWN_FIELDS: &[(Known, &str, Rule)] = &[
    (Known::Object, "metadata", Rule::Map(Known::ObjectMeta)),
    (Known::Object, "spec", Rule::Map(Known::Spec)),
    (Known::Object, "status", Rule::Map(Known::Status)),
    // PodTemplate.template
    (Known::Object, "template", Rule::Map(Known::Template)),
    // ObjectMeta
    (Known::ObjectMeta, "finalizers", Rule::MergeSet),
    (
        Known::ObjectMeta,
        "ownerReferences",
        Rule::MergeBy("uid", None),
    ),
    // PodSpec
    (
        Known::Spec,
        "containers",
        Rule::MergeBy("name", Some(Known::Container)),
    ),
    (
        Known::Spec,
        "initContainers",
        Rule::MergeBy("name", Some(Known::Container)),
    ),
    (
        Known::Spec,
        "ephemeralContainers",
        Rule::MergeBy("name", Some(Known::Container)),
    ),
    (Known::Spec, "volumes", Rule::MergeByRetainKeys("name")),
    (Known::Spec, "imagePullSecrets", Rule::MergeBy("name", None)),
    (Known::Spec, "hostAliases", Rule::MergeBy("ip", None)),
    (Known::Spec, "schedulingGates", Rule::MergeBy("name", None)),
    (
        Known::Spec,
        "resourceClaims",
        Rule::MergeByRetainKeys("name"),
    ),
    (
        Known::Spec,
        "topologySpreadConstraints",
        Rule::MergeBy("topologyKey", None),
    ),
    // ServiceSpec
    (Known::Spec, "ports", Rule::MergeBy("port", None)),
    // NodeSpec
    (Known::Spec, "podCIDRs", Rule::MergeSet),
    // DeploymentSpec, ReplicaSetSpec, StatefulSetSpec, DaemonSetSpec, JobSpec
    (Known::Spec, "template", Rule::Map(Known::Template)),
    (Known::Spec, "strategy", Rule::RetainKeys),
    // CronJobSpec
    (Known::Spec, "jobTemplate", Rule::Map(Known::Template)),
    // PodTemplateSpec, JobTemplateSpec
    (Known::Template, "metadata", Rule::Map(Known::ObjectMeta)),
    (Known::Template, "spec", Rule::Map(Known::Spec)),
    // Container, EphemeralContainer
    (Known::Container, "env", Rule::MergeBy("name", None)),
    (
        Known::Container,
        "ports",
        Rule::MergeBy("containerPort", None),
    ),
    (
        Known::Container,
        "volumeMounts",
        Rule::MergeBy("mountPath", None),
    ),
    (
        Known::Container,
        "volumeDevices",
        Rule::MergeBy("devicePath", None),
    ),
    // PodStatus, NodeStatus, DeploymentStatus, JobStatus, NamespaceStatus…
    (Known::Status, "conditions", Rule::MergeBy("type", None)),
    (Known::Status, "addresses", Rule::MergeBy("type", None)),
    (Known::Status, "podIPs", Rule::MergeBy("ip", None)),
    (Known::Status, "hostIPs", Rule::MergeBy("ip", None)),
];

impl Known {
    fn rule(self, field: &str) -> Option<&'static Rule> {
        KNOWN_FIELDS
            .iter()
            .find(|(node, name, _)| *node == self && *name == field)
            .map(|(_, _, r)| r)
    }
}

impl PatchSchema for Known {
    fn patch_meta(&self, field: &str) -> PatchMeta {
        match self.rule(field) {
            None | Some(Rule::Map(_)) => PatchMeta::default(),
            Some(Rule::MergeBy(key, _)) => PatchMeta::merge_by(key),
            Some(Rule::MergeByRetainKeys(key)) => PatchMeta {
                retain_keys: true,
                ..PatchMeta::merge_by(key)
            },
            Some(Rule::MergeSet) => PatchMeta::merge_set(),
            Some(Rule::RetainKeys) => PatchMeta {
                retain_keys: true,
                ..PatchMeta::default()
            },
        }
    }

    fn child(&self, field: &str) -> Option<Box<dyn PatchSchema + '_>> {
        match self.rule(field)? {
            Rule::Map(node) | Rule::MergeBy(_, Some(node)) => Some(Box::new(*node)),
            _ => None,
        }
    }
}
