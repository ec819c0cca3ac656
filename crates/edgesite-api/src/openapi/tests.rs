use serde_json::{Value, json};

use super::*;
use crate::patch::{PatchStrategy, strategic_merge_patch};
use crate::registry;

fn api() -> &'static OpenApi {
    OpenApi::get()
}

fn doc(gv_path: &str) -> Value {
    let (bytes, _) = api().document(gv_path).expect(gv_path);
    serde_json::from_slice(bytes).unwrap()
}

fn path<'a>(node: Node<'a>, fields: &[&str]) -> Node<'a> {
    fields.iter().fold(node, |n, f| {
        let n = match n.shape() {
            Shape::List => n.items().unwrap(),
            _ => n,
        };
        n.field(f).unwrap_or_else(|| panic!("no field {f}"))
    })
}

#[test]
fn discovery_lists_every_group_version_with_its_hash() {
    let root: Value = serde_json::from_str(api().discovery()).unwrap();
    let paths = root["paths"].as_object().unwrap();
    let expected = [
        "api/v1",
        "apis/apps/v1",
        "apis/authentication.k8s.io/v1",
        "apis/authorization.k8s.io/v1",
        "apis/batch/v1",
        "apis/coordination.k8s.io/v1",
        "apis/discovery.k8s.io/v1",
        "apis/events.k8s.io/v1",
        "apis/rbac.authorization.k8s.io/v1",
    ];
    assert_eq!(paths.len(), expected.len());
    for gv in expected {
        let (_, hash) = api().document(gv).unwrap();
        assert_eq!(hash.len(), 16);
        assert_eq!(
            paths[gv]["serverRelativeURL"],
            format!("/openapi/v3/{gv}?hash={hash}")
        );
    }
    assert!(api().document("/apis/apps/v1").is_some());
    assert!(api().document("apis/policy/v1").is_none());
}

#[test]
fn hashes_differ_between_documents_and_are_stable() {
    let hashes: Vec<&str> = api()
        .paths()
        .map(|p| api().document(p).unwrap().1)
        .collect();
    let mut unique = hashes.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hashes.len());
    assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
}

/// Every resource of the registry has a schema for its kind and, where it can be patched, a
/// PATCH operation kubectl accepts: tagged with its GVK, taking `fieldValidation` and
/// strategic merge patch.
#[test]
fn every_registry_resource_has_a_schema_and_the_operations_kubectl_checks() {
    for r in registry::all() {
        assert!(
            api().kind_schema(r.group, r.version, r.kind).is_some(),
            "no schema for {}",
            r.kind
        );
        let gv_path = if r.group.is_empty() {
            format!("api/{}", r.version)
        } else {
            format!("apis/{}/{}", r.group, r.version)
        };
        let d = doc(&gv_path);
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let ops: Vec<(&str, &Value)> = d["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(p, item)| {
                ["get", "put", "post", "patch", "delete"]
                    .into_iter()
                    .filter_map(move |m| item.get(m).map(|op| (p.as_str(), op)))
            })
            .filter(|(_, op)| op["x-kubernetes-group-version-kind"] == gvk)
            .collect();
        let patches: Vec<_> = ops
            .iter()
            .filter(|(_, op)| op["x-kubernetes-action"] == "patch")
            .collect();
        assert_eq!(
            !patches.is_empty(),
            r.supports("patch"),
            "patch operations of {}",
            r.kind
        );
        for (p, op) in patches {
            let names: Vec<&str> = op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap())
                .collect();
            assert!(names.contains(&"fieldValidation"), "{p}");
            assert!(names.contains(&"dryRun"), "{p}");
            assert!(
                op["requestBody"]["content"]
                    .get("application/strategic-merge-patch+json")
                    .is_some(),
                "{p}"
            );
        }
        assert!(
            ops.iter()
                .any(|(_, op)| op["x-kubernetes-action"] == "post")
                == r.supports("create"),
            "create of {}",
            r.kind
        );
    }
}

#[test]
fn documents_carry_the_meta_types_and_resolve_every_ref() {
    for gv in api().paths() {
        let d = doc(gv);
        let schemas = d["components"]["schemas"].as_object().unwrap();
        for name in [
            "Status",
            "DeleteOptions",
            "Patch",
            "ObjectMeta",
            "APIResourceList",
        ] {
            assert!(
                schemas.contains_key(&format!("io.k8s.apimachinery.pkg.apis.meta.v1.{name}")),
                "{gv} lacks {name}"
            );
        }
        let text = serde_json::to_string(&d).unwrap();
        for piece in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &piece[..piece.find('"').unwrap()];
            assert!(schemas.contains_key(name), "{gv}: dangling $ref {name}");
        }
        assert!(!text.contains("#/$defs/"), "{gv}");
    }
}

#[test]
fn pod_fields_and_merge_keys() {
    let pod = api().kind_schema("", "v1", "Pod").unwrap();
    assert_eq!(pod.shape(), Shape::Object);
    let names: Vec<&str> = pod.fields().iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["apiVersion", "kind", "metadata", "spec", "status"]);
    let spec = pod.field("spec").unwrap();
    assert!(spec.required().contains(&"containers"));
    assert!(
        spec.description()
            .unwrap()
            .starts_with("Specification of the desired behavior of the pod")
    );

    let containers = spec.field("containers").unwrap();
    assert_eq!(containers.shape(), Shape::List);
    assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
    assert_eq!(spec.patch_meta("containers"), PatchMeta::merge_by("name"));
    let container = containers.items().unwrap();
    assert_eq!(container.shape(), Shape::Object);
    assert_eq!(
        container.patch_meta("ports"),
        PatchMeta::merge_by("containerPort")
    );
    // Upstream keys container ports by port and protocol for server-side apply.
    assert_eq!(
        container.field("ports").unwrap().list_type(),
        ListType::Map(vec!["containerPort".into(), "protocol".into()])
    );
    assert_eq!(
        container.field("args").unwrap().list_type(),
        ListType::Atomic
    );
    assert_eq!(container.field("image").unwrap().shape(), Shape::Scalar);

    let volumes = spec.patch_meta("volumes");
    assert_eq!(volumes.merge_key.as_deref(), Some("name"));
    assert!(volumes.retain_keys);
    assert_eq!(volumes.strategy, PatchStrategy::Merge);

    let meta = pod.field("metadata").unwrap();
    assert_eq!(meta.field("labels").unwrap().shape(), Shape::Map);
    assert_eq!(
        meta.field("labels").unwrap().items().unwrap().shape(),
        Shape::Scalar
    );
    assert_eq!(meta.patch_meta("finalizers"), PatchMeta::merge_set());
    assert_eq!(meta.field("finalizers").unwrap().list_type(), ListType::Set);
    assert_eq!(
        meta.patch_meta("ownerReferences"),
        PatchMeta::merge_by("uid")
    );
    // managedFields[].fieldsV1 is free-form.
    let fields_v1 = path(meta, &["managedFields", "fieldsV1"]);
    assert_eq!(fields_v1.shape(), Shape::Any);

    let tolerations = spec.field("tolerations").unwrap();
    assert_eq!(tolerations.list_type(), ListType::Atomic);
    assert_eq!(spec.patch_meta("tolerations"), PatchMeta::default());
}

#[test]
fn int_or_string_quantity_and_raw_extension_are_any() {
    let deploy = api().kind_schema("apps", "v1", "Deployment").unwrap();
    let strategy = path(deploy, &["spec", "strategy"]);
    assert_eq!(strategy.shape(), Shape::Object);
    assert!(strategy.patch_meta_of_self().retain_keys);
    let max_surge = path(strategy, &["rollingUpdate", "maxSurge"]);
    assert_eq!(max_surge.shape(), Shape::Any);
    let limits = path(
        deploy,
        &[
            "spec",
            "template",
            "spec",
            "containers",
            "resources",
            "limits",
        ],
    );
    assert_eq!(limits.shape(), Shape::Map);
    assert_eq!(limits.items().unwrap().shape(), Shape::Any);
    let revision = api()
        .kind_schema("apps", "v1", "ControllerRevision")
        .unwrap();
    assert_eq!(revision.field("data").unwrap().shape(), Shape::Any);
    // A struct marked atomic.
    let selector = path(deploy, &["spec", "selector"]);
    assert!(selector.map_atomic());
    assert!(!deploy.field("spec").unwrap().map_atomic());
}

#[test]
fn cronjob_reaches_the_nested_pod_template() {
    let cj = api().kind_schema("batch", "v1", "CronJob").unwrap();
    let containers = path(
        cj,
        &[
            "spec",
            "jobTemplate",
            "spec",
            "template",
            "spec",
            "containers",
        ],
    );
    assert_eq!(containers.list_type(), ListType::Map(vec!["name".into()]));
    let env = path(containers, &["env"]);
    assert_eq!(env.list_type(), ListType::Map(vec!["name".into()]));
    assert!(
        cj.field("spec")
            .unwrap()
            .field("schedule")
            .unwrap()
            .description()
            .unwrap()
            .contains("Cron format")
    );
}

#[test]
fn kinds_are_found_across_documents() {
    assert!(api().kind_schema("autoscaling", "v1", "Scale").is_some());
    assert!(api().kind_schema("policy", "v1", "Eviction").is_some());
    assert!(api().kind_schema("", "v1", "Status").is_some());
    assert!(api().kind_schema("events.k8s.io", "v1", "Event").is_some());
    let core_event = api().kind_schema("", "v1", "Event").unwrap();
    assert!(core_event.field("involvedObject").is_some());
    assert!(api().kind_schema("apps", "v1", "Nope").is_none());
}

#[test]
fn strategic_merge_patch_merges_deployment_containers_by_name() {
    let deploy = api().kind_schema("apps", "v1", "Deployment").unwrap();
    let current = json!({
        "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ]}}, "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}
    });
    let patch = json!({
        "spec": {"template": {"spec": {"containers": [
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 8080}]}
        ]}}, "strategy": {"$retainKeys": ["type"], "type": "Recreate"}}
    });
    let out = strategic_merge_patch(&current, &patch, &deploy).unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"],
        json!([
            {"name": "a", "image": "a:2", "ports": [{"containerPort": 8080}, {"containerPort": 80}]},
            {"name": "b", "image": "b:1"}
        ])
    );
    assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));
}

#[test]
fn strategic_merge_patch_replaces_atomic_lists_and_merges_maps() {
    let pod = api().kind_schema("", "v1", "Pod").unwrap();
    let current = json!({
        "metadata": {"labels": {"a": "1"}},
        "spec": {"tolerations": [{"key": "x"}], "containers": [{"name": "c", "args": ["1", "2"]}]}
    });
    let patch = json!({
        "metadata": {"labels": {"b": "2"}},
        "spec": {"tolerations": [{"key": "y"}], "containers": [{"name": "c", "args": ["3"]}]}
    });
    let out = strategic_merge_patch(&current, &patch, &pod).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    assert_eq!(out["spec"]["tolerations"], json!([{"key": "y"}]));
    assert_eq!(
        out["spec"]["containers"],
        json!([{"name": "c", "args": ["3"]}])
    );
}

#[test]
fn unknown_fields_are_reported_by_dotted_path() {
    let deploy = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "bogus": 1},
        "spec": {
            "foo": true,
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [
                    {"name": "a", "image": "nginx", "resources": {"limits": {"cpu": "1"}}},
                    {"name": "b", "image": "nginx", "foo": 1, "ports": [{"containerPort": 80, "bar": 2}]}
                ]}
            }
        },
        "status": {"replicas": 1, "nope": null}
    });
    assert_eq!(
        api().unknown_fields("apps", "v1", "Deployment", &deploy),
        [
            "metadata.bogus",
            "spec.foo",
            "spec.template.spec.containers[1].foo",
            "spec.template.spec.containers[1].ports[0].bar",
            "status.nope",
        ]
    );
    let clean = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}});
    assert!(api().unknown_fields("", "v1", "Pod", &clean).is_empty());
    // Unknown kinds are not checked.
    assert!(
        api()
            .unknown_fields("x", "v1", "Y", &json!({"a": 1}))
            .is_empty()
    );
}

#[test]
fn unknown_fields_below_free_form_nodes_are_accepted() {
    let rev = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": 1,
        "data": {"anything": {"goes": [1, 2]}},
        "metadata": {"name": "r", "managedFields": [{"manager": "m", "fieldsV1": {"f:spec": {}}}]}
    });
    assert!(
        api()
            .unknown_fields("apps", "v1", "ControllerRevision", &rev)
            .is_empty()
    );
    let cj = json!({"spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
        "spec": {"containers": [{"name": "c", "image": "i", "envv": []}]}}}}}});
    assert_eq!(
        api().unknown_fields("batch", "v1", "CronJob", &cj),
        ["spec.jobTemplate.spec.template.spec.containers[0].envv"]
    );
}

#[test]
fn prune_removes_exactly_the_unknown_fields() {
    let mut obj = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "c", "extra": "x"},
        "data": {"k": "v"}, "foo": {"bar": 1}
    });
    let removed = api().prune_unknown_fields("", "v1", "ConfigMap", &mut obj);
    assert_eq!(removed, ["foo", "metadata.extra"]);
    assert_eq!(
        obj,
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}})
    );
}

#[test]
fn every_embedded_schema_parses_on_first_use_and_is_kept() {
    // A fresh instance: the process-wide one may already hold parsed schemas.
    let api = OpenApi::load();
    let mut count = 0;
    for d in &api.documents {
        assert!(
            d.schemas.by_name.values().all(|(_, p)| p.get().is_none()),
            "{}: nothing is parsed before it is looked at",
            d.gv_path
        );
        for name in d.schemas.by_name.keys() {
            let schema = d.schemas.get(name).unwrap();
            assert!(schema.is_object(), "{} {name}: {schema}", d.gv_path);
            // The second look returns the same parsed value, not a new parse.
            assert!(std::ptr::eq(schema, d.schemas.get(name).unwrap()));
            count += 1;
        }
    }
    assert!(count > 500, "only {count} schemas");
    let pod = api.kind_schema("", "v1", "Pod").unwrap();
    assert_eq!(
        pod.field("spec")
            .unwrap()
            .field("containers")
            .unwrap()
            .shape(),
        Shape::List
    );
}
