use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

/// A hand-written schema for the tests.
#[derive(Debug, Clone)]
enum S {
    Struct(BTreeMap<&'static str, S>),
    Map(Box<S>),
    List(ListType, Box<S>),
    Scalar,
    Atomic,
}

impl ApplySchema for S {
    fn field(&self, name: &str) -> Option<Box<dyn ApplySchema + '_>> {
        match self {
            S::Struct(m) => m.get(name).map(|s| Box::new(s.clone()) as Box<_>),
            _ => None,
        }
    }
    fn items(&self) -> Option<Box<dyn ApplySchema + '_>> {
        match self {
            S::Map(i) | S::List(_, i) => Some(Box::new((**i).clone())),
            _ => None,
        }
    }
    fn is_map(&self) -> bool {
        matches!(self, S::Map(_))
    }
    fn list_type(&self) -> ListType {
        match self {
            S::List(t, _) => t.clone(),
            _ => ListType::Atomic,
        }
    }
    fn atomic(&self) -> bool {
        matches!(self, S::Atomic | S::Scalar)
    }
    fn key_default(&self, key: &str) -> Option<Value> {
        (key == "protocol").then(|| json!("TCP"))
    }
}

fn st(fields: Vec<(&'static str, S)>) -> S {
    S::Struct(fields.into_iter().collect())
}

fn list_map(keys: &[&str], item: S) -> S {
    S::List(
        ListType::Map(keys.iter().map(|k| (*k).to_owned()).collect()),
        Box::new(item),
    )
}

/// A Deployment-like schema: metadata with labels/annotations maps, a replicas scalar, a
/// selector that is an atomic struct, containers keyed by name with ports keyed by
/// containerPort+protocol, a set of finalizers, an atomic args list, and status.
fn deployment() -> S {
    let strings = || S::Map(Box::new(S::Scalar));
    let port = st(vec![
        ("containerPort", S::Scalar),
        ("protocol", S::Scalar),
        ("name", S::Scalar),
    ]);
    let container = st(vec![
        ("name", S::Scalar),
        ("image", S::Scalar),
        ("args", S::List(ListType::Atomic, Box::new(S::Scalar))),
        ("ports", list_map(&["containerPort", "protocol"], port)),
        (
            "resources",
            st(vec![("limits", S::Map(Box::new(S::Atomic)))]),
        ),
    ]);
    let pod_spec = st(vec![("containers", list_map(&["name"], container))]);
    let metadata = st(vec![
        ("name", S::Scalar),
        ("namespace", S::Scalar),
        ("uid", S::Scalar),
        ("resourceVersion", S::Scalar),
        ("generation", S::Scalar),
        ("creationTimestamp", S::Scalar),
        ("labels", strings()),
        ("annotations", strings()),
        ("finalizers", S::List(ListType::Set, Box::new(S::Scalar))),
        (
            "managedFields",
            S::List(ListType::Atomic, Box::new(S::Atomic)),
        ),
    ]);
    st(vec![
        ("apiVersion", S::Scalar),
        ("kind", S::Scalar),
        ("metadata", metadata.clone()),
        (
            "spec",
            st(vec![
                ("replicas", S::Scalar),
                ("paused", S::Scalar),
                ("selector", S::Atomic),
                (
                    "template",
                    st(vec![("metadata", metadata), ("spec", pod_spec)]),
                ),
            ]),
        ),
        (
            "status",
            st(vec![("replicas", S::Scalar), ("readyReplicas", S::Scalar)]),
        ),
    ])
}

const T0: &str = "2024-01-01T00:00:00Z";
const T1: &str = "2024-01-01T00:01:00Z";

fn fm(s: &S) -> FieldManager<'_> {
    FieldManager::new(s).at_time(T0)
}

fn deploy(labels: Value, replicas: Option<i64>, containers: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": labels},
        "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": containers}
            }
        }
    });
    if let Some(r) = replicas {
        d["spec"]["replicas"] = json!(r);
    }
    d
}

fn nginx() -> Value {
    json!([{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80}]}])
}

fn entry<'a>(obj: &'a Value, manager: &str, op: &str) -> Option<&'a Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == op)
}

fn owned(obj: &Value, manager: &str, op: &str) -> FieldSet {
    FieldSet::from_fields_v1(&entry(obj, manager, op).expect("entry")["fieldsV1"]).unwrap()
}

fn p(parts: &[&str]) -> Path {
    parts
        .iter()
        .map(|s| PathElement::Field((*s).to_owned()))
        .collect()
}

/// A stored object: what the API server keeps after create (server-set metadata).
fn stored(mut obj: Value) -> Value {
    let md = obj["metadata"].as_object_mut().unwrap();
    md.insert("uid".into(), json!("u-1"));
    md.insert("resourceVersion".into(), json!("5"));
    md.insert("creationTimestamp".into(), json!(T0));
    md.insert("generation".into(), json!(1));
    obj
}

#[test]
fn fieldsv1_round_trip_matches_upstream_encoding() {
    let v = json!({
        "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
        "f:spec": {
            "f:replicas": {},
            "f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"nginx\"}": {
                    ".": {},
                    "f:image": {},
                    "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                }
            }}}
        },
        "f:finalizers": {"v:\"a\"": {}},
        "f:list": {"i:3": {}}
    });
    let set = FieldSet::from_fields_v1(&v).unwrap();
    assert_eq!(set.to_fields_v1(), v);
    assert!(set.has(&p(&["metadata", "labels"])));
    assert!(set.has(&p(&["metadata", "labels", "app"])));
    assert!(!set.has(&p(&["metadata"])));
    let key = PathElement::key(vec![("name".into(), json!("nginx"))]);
    let mut item = p(&["spec", "template", "spec", "containers"]);
    item.push(key);
    assert!(set.has(&item));
    assert_eq!(
        path_string(&item),
        ".spec.template.spec.containers[name=\"nginx\"]"
    );
    // Key fields are sorted whatever the input order.
    let pe = PathElement::decode("k:{\"protocol\":\"TCP\",\"containerPort\":80}").unwrap();
    assert_eq!(pe.encode(), "k:{\"containerPort\":80,\"protocol\":\"TCP\"}");
    assert_eq!(pe.to_string(), "[containerPort=80,protocol=\"TCP\"]");
    assert!(FieldSet::from_fields_v1(&json!({"x:y": {}})).is_err());
    assert!(FieldSet::from_fields_v1(&json!({"f:a": 1})).is_err());
}

#[test]
fn set_operations() {
    let mut a = FieldSet::new();
    a.insert(&p(&["a", "b"]));
    a.insert(&p(&["a", "c"]));
    a.insert(&p(&["d"]));
    let mut b = FieldSet::new();
    b.insert(&p(&["a", "c"]));
    b.insert(&p(&["e"]));
    let u = a.union(&b);
    assert_eq!(u.paths().len(), 4);
    let i = a.intersection(&b);
    assert_eq!(i.paths(), vec![p(&["a", "c"])]);
    let d = a.difference(&b);
    assert_eq!(d.paths(), vec![p(&["a", "b"]), p(&["d"])]);
    // Plain difference by a parent keeps the children; recursive difference drops them.
    let mut parent = FieldSet::new();
    parent.insert(&p(&["a"]));
    assert_eq!(a.difference(&parent).paths().len(), 3);
    assert_eq!(a.recursive_difference(&parent).paths(), vec![p(&["d"])]);
    assert!(a.difference(&a).is_empty());
}

#[test]
fn fields_of_tracks_leaves_items_and_map_entries() {
    let s = deployment();
    let d = deploy(json!({"app": "web"}), Some(2), nginx());
    let set = fields_of(&d, &s).unwrap();
    let v = set.to_fields_v1();
    assert_eq!(v["f:metadata"]["f:labels"], json!({"f:app": {}}));
    assert_eq!(v["f:spec"]["f:replicas"], json!({}));
    // The atomic selector is one field.
    assert_eq!(v["f:spec"]["f:selector"], json!({}));
    let c = &v["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
    assert_eq!(c["."], json!({}));
    assert_eq!(c["f:image"], json!({}));
    // Port keyed by containerPort and the defaulted protocol.
    assert_eq!(
        c["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"],
        json!({".": {}, "f:containerPort": {}})
    );
}

#[test]
fn apply_creates_and_records_an_apply_entry() {
    let s = deployment();
    let d = deploy(json!({"app": "web"}), Some(2), nginx());
    let out = fm(&s).apply(None, &d, "kubectl", false).unwrap();
    assert_eq!(out["spec"]["replicas"], 2);
    let e = entry(&out, "kubectl", "Apply").unwrap();
    assert_eq!(e["apiVersion"], "apps/v1");
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(e["time"], T0);
    let fields = &e["fieldsV1"];
    // Identity fields are not owned.
    assert!(fields.get("f:apiVersion").is_none());
    assert!(fields.get("f:kind").is_none());
    assert!(fields["f:metadata"].get("f:name").is_none());
    assert!(fields["f:metadata"].get("f:namespace").is_none());
    assert_eq!(fields["f:metadata"]["f:labels"], json!({"f:app": {}}));
    assert_eq!(
        out["metadata"]["managedFields"].as_array().unwrap().len(),
        1
    );
}

#[test]
fn reapplying_the_same_config_changes_nothing() {
    let s = deployment();
    let d = deploy(json!({"app": "web"}), Some(2), nginx());
    let live = stored(fm(&s).apply(None, &d, "kubectl", false).unwrap());
    let again = FieldManager::new(&s)
        .at_time(T1)
        .apply(Some(&live), &d, "kubectl", false)
        .unwrap();
    assert_eq!(again, live, "time kept, object unchanged");
}

#[test]
fn dropping_a_label_prunes_it() {
    let s = deployment();
    let v1 = deploy(json!({"app": "web", "tier": "front"}), Some(2), nginx());
    let live = stored(fm(&s).apply(None, &v1, "kubectl", false).unwrap());
    let v2 = deploy(json!({"app": "web"}), Some(2), nginx());
    let out = fm(&s).apply(Some(&live), &v2, "kubectl", false).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    // Server-set metadata survives the prune.
    assert_eq!(out["metadata"]["uid"], "u-1");
    assert_eq!(out["metadata"]["name"], "web");
    assert_eq!(out["metadata"]["creationTimestamp"], T0);
    assert!(!owned(&out, "kubectl", "Apply").has(&p(&["metadata", "labels", "tier"])));
}

#[test]
fn dropping_every_label_and_a_container_prunes_them() {
    let s = deployment();
    let two = json!([
        {"name": "nginx", "image": "nginx:1.27"},
        {"name": "sidecar", "image": "busybox"}
    ]);
    let v1 = deploy(json!({"app": "web"}), Some(2), two);
    let live = stored(fm(&s).apply(None, &v1, "kubectl", false).unwrap());
    let mut v2 = deploy(
        json!({}),
        None,
        json!([{"name": "nginx", "image": "nginx:1.27"}]),
    );
    v2["metadata"].as_object_mut().unwrap().remove("labels");
    let out = fm(&s).apply(Some(&live), &v2, "kubectl", false).unwrap();
    assert!(out["metadata"].get("labels").is_none(), "{out:#}");
    assert!(out["spec"].get("replicas").is_none());
    let cs = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0]["name"], "nginx");
    assert_eq!(out["metadata"]["name"], "web");
}

#[test]
fn a_field_dropped_by_one_applier_but_owned_by_another_stays() {
    let s = deployment();
    let v1 = deploy(json!({"app": "web", "team": "a"}), None, nginx());
    let live = stored(fm(&s).apply(None, &v1, "alice", false).unwrap());
    // Bob applies the same label value: shared ownership, no conflict.
    let mut bob = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"team": "a"}}});
    let live = fm(&s).apply(Some(&live), &bob, "bob", false).unwrap();
    assert!(owned(&live, "alice", "Apply").has(&p(&["metadata", "labels", "team"])));
    assert!(owned(&live, "bob", "Apply").has(&p(&["metadata", "labels", "team"])));
    // Alice drops it: Bob still owns it, so it stays.
    let v2 = deploy(json!({"app": "web"}), None, nginx());
    let live = fm(&s).apply(Some(&live), &v2, "alice", false).unwrap();
    assert_eq!(live["metadata"]["labels"]["team"], "a");
    // Bob drops it too: now it goes.
    bob["metadata"]["labels"] = json!({});
    let live = fm(&s).apply(Some(&live), &bob, "bob", false).unwrap();
    assert!(live["metadata"]["labels"].get("team").is_none(), "{live:#}");
    assert_eq!(live["metadata"]["labels"]["app"], "web");
}

#[test]
fn list_maps_merge_by_key() {
    let s = deployment();
    let v1 = deploy(
        json!({}),
        None,
        json!([{"name": "nginx", "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]}]),
    );
    let live = stored(fm(&s).apply(None, &v1, "alice", false).unwrap());
    // Bob adds a sidecar and a UDP port 80 to nginx (a different key from TCP 80).
    let bob = deploy(
        json!({}),
        None,
        json!([
            {"name": "nginx", "ports": [{"containerPort": 80, "protocol": "UDP"}]},
            {"name": "sidecar", "image": "busybox"}
        ]),
    );
    let out = fm(&s).apply(Some(&live), &bob, "bob", false).unwrap();
    let cs = out["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["name"], "nginx");
    assert_eq!(cs[0]["image"], "nginx:1.27", "alice's image kept");
    let ports = cs[0]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(ports[0]["name"], "http");
    assert_eq!(ports[1]["protocol"], "UDP");
    assert_eq!(cs[1]["name"], "sidecar");
    // A missing protocol matches the defaulted TCP key.
    let alice = deploy(
        json!({}),
        None,
        json!([{"name": "nginx", "image": "nginx:1.27", "ports": [{"containerPort": 80, "name": "web"}]}]),
    );
    let err = fm(&s)
        .apply(Some(&out), &alice, "carol", false)
        .unwrap_err();
    let ApplyError::Conflicts(c) = err else {
        panic!("expected conflicts")
    };
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0].field(),
        ".spec.template.spec.containers[name=\"nginx\"].ports[containerPort=80,protocol=\"TCP\"].name"
    );
}

#[test]
fn duplicate_keys_in_the_applied_config_are_rejected() {
    let s = deployment();
    let d = deploy(
        json!({}),
        None,
        json!([{"name": "a", "image": "x"}, {"name": "a", "image": "y"}]),
    );
    let err = fm(&s).apply(None, &d, "m", false).unwrap_err();
    assert!(
        matches!(&err, ApplyError::Invalid(m) if m.contains("duplicate entries for key [name=\"a\"]")),
        "{err}"
    );
    let no_key = deploy(json!({}), None, json!([{"image": "x"}]));
    assert!(matches!(
        fm(&s).apply(None, &no_key, "m", false),
        Err(ApplyError::Invalid(_))
    ));
    let mut mf = deploy(json!({}), None, nginx());
    mf["metadata"]["managedFields"] = json!([]);
    assert!(matches!(
        fm(&s).apply(None, &mf, "m", false),
        Err(ApplyError::Invalid(_))
    ));
}

#[test]
fn sets_merge_as_sets_and_atomic_lists_are_replaced() {
    let s = deployment();
    let mut a = deploy(json!({}), None, json!([{"name": "c", "args": ["a", "b"]}]));
    a["metadata"]["finalizers"] = json!(["x", "y"]);
    let live = stored(fm(&s).apply(None, &a, "alice", false).unwrap());
    let mut b = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "finalizers": ["z", "y"]}});
    b["spec"] = json!({"template": {"spec": {"containers": [{"name": "c", "args": ["q"]}]}}});
    let err = fm(&s).apply(Some(&live), &b, "bob", false).unwrap_err();
    let ApplyError::Conflicts(c) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        c.iter().map(Conflict::field).collect::<Vec<_>>(),
        vec![".spec.template.spec.containers[name=\"c\"].args"]
    );
    let out = fm(&s).apply(Some(&live), &b, "bob", true).unwrap();
    // Upstream order: live-only items keep their place, the rest follow the applied order.
    assert_eq!(out["metadata"]["finalizers"], json!(["x", "z", "y"]));
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["q"])
    );
    let finalizers = owned(&out, "bob", "Apply");
    let mut fy = p(&["metadata", "finalizers"]);
    fy.push(PathElement::Value(json!("y")));
    assert!(finalizers.has(&fy));
    assert!(owned(&out, "alice", "Apply").has(&fy), "y is shared");
}

#[test]
fn conflict_between_appliers_then_force() {
    let s = deployment();
    let live = stored(
        fm(&s)
            .apply(None, &deploy(json!({}), Some(2), nginx()), "alice", false)
            .unwrap(),
    );
    let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}});
    let err = fm(&s).apply(Some(&live), &bob, "bob", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"alice\": .spec.replicas"
    );
    let ApplyError::Conflicts(c) = &err else {
        panic!()
    };
    assert_eq!(c[0].manager, "alice");
    assert_eq!(c[0].cause_message(), "conflict with \"alice\"");
    // Same value: no conflict, shared ownership.
    let same = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 2}});
    let shared = fm(&s).apply(Some(&live), &same, "bob", false).unwrap();
    assert!(owned(&shared, "alice", "Apply").has(&p(&["spec", "replicas"])));
    assert!(owned(&shared, "bob", "Apply").has(&p(&["spec", "replicas"])));
    // Force: the field moves to bob.
    let forced = fm(&s).apply(Some(&live), &bob, "bob", true).unwrap();
    assert_eq!(forced["spec"]["replicas"], 5);
    assert!(!owned(&forced, "alice", "Apply").has(&p(&["spec", "replicas"])));
    assert!(owned(&forced, "bob", "Apply").has(&p(&["spec", "replicas"])));
    // Alice no longer owns replicas, so dropping it from her config does not prune bob's.
    let mut a2 = deploy(json!({}), None, nginx());
    a2["spec"].as_object_mut().unwrap().remove("replicas");
    let after = fm(&s).apply(Some(&forced), &a2, "alice", false).unwrap();
    assert_eq!(after["spec"]["replicas"], 5);
}

#[test]
fn several_conflicts_are_listed_per_manager() {
    let conflicts = vec![
        Conflict {
            manager: "kubectl-client-side-apply".into(),
            operation: Operation::Update,
            api_version: "apps/v1".into(),
            subresource: String::new(),
            path: p(&["spec", "replicas"]),
        },
        Conflict {
            manager: "kubectl-client-side-apply".into(),
            operation: Operation::Update,
            api_version: "apps/v1".into(),
            subresource: String::new(),
            path: p(&["spec", "paused"]),
        },
        Conflict {
            manager: "ctl".into(),
            operation: Operation::Apply,
            api_version: "apps/v1".into(),
            subresource: "status".into(),
            path: p(&["status", "replicas"]),
        },
    ];
    assert_eq!(
        conflicts_message(&conflicts),
        "Apply failed with 3 conflicts: conflict with \"ctl\" with subresource \"status\"\n- .status.replicas\nconflict with \"kubectl-client-side-apply\" using apps/v1\n- .spec.replicas\n- .spec.paused"
    );
}

#[test]
fn update_after_apply_takes_ownership() {
    let s = deployment();
    let live = stored(
        fm(&s)
            .apply(
                None,
                &deploy(json!({"app": "web"}), Some(2), nginx()),
                "kubectl",
                false,
            )
            .unwrap(),
    );
    // `kubectl scale` (merge patch) changes replicas.
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(4);
    FieldManager::new(&s)
        .at_time(T1)
        .record_update(Some(&live), &mut new, "kubectl-scale");
    let upd = entry(&new, "kubectl-scale", "Update").unwrap();
    assert_eq!(upd["apiVersion"], "apps/v1");
    assert_eq!(upd["time"], T1);
    assert_eq!(upd["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(!owned(&new, "kubectl", "Apply").has(&p(&["spec", "replicas"])));
    // Appliers come first.
    assert_eq!(new["metadata"]["managedFields"][0]["operation"], "Apply");
    // Re-applying replicas 2 now conflicts with the updater.
    let err = fm(&s)
        .apply(
            Some(&new),
            &deploy(json!({"app": "web"}), Some(2), nginx()),
            "kubectl",
            false,
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
    );
    // Force: the updater's entry loses its only field and disappears.
    let forced = fm(&s)
        .apply(
            Some(&new),
            &deploy(json!({"app": "web"}), Some(2), nginx()),
            "kubectl",
            true,
        )
        .unwrap();
    assert!(entry(&forced, "kubectl-scale", "Update").is_none());
    assert_eq!(forced["spec"]["replicas"], 2);
}

#[test]
fn updates_on_create_and_unchanged_updates() {
    let s = deployment();
    let mut created = deploy(json!({"app": "web"}), Some(1), nginx());
    record_update(None, &mut created, "kubectl-create", &s);
    let fields = owned(&created, "kubectl-create", "Update");
    assert!(fields.has(&p(&["spec", "replicas"])));
    assert!(fields.has(&p(&["metadata", "labels", "app"])));
    assert!(
        fields.has(&p(&["metadata", "labels"])),
        "new map owned whole, as upstream"
    );
    assert!(!fields.has(&p(&["metadata", "name"])));
    let live = stored(created);
    // A write that changes nothing keeps the entries as they were.
    let mut same = live.clone();
    FieldManager::new(&s)
        .at_time(T1)
        .record_update(Some(&live), &mut same, "other");
    assert_eq!(
        same["metadata"]["managedFields"],
        live["metadata"]["managedFields"]
    );
    // Removing a field drops it from its owner.
    let mut removed = live.clone();
    removed["metadata"]["labels"] = json!({});
    record_update(Some(&live), &mut removed, "editor", &s);
    assert!(!owned(&removed, "kubectl-create", "Update").has(&p(&["metadata", "labels", "app"])));
    assert!(
        entry(&removed, "editor", "Update").is_none(),
        "removal owns nothing"
    );
}

#[test]
fn untracked_objects_stay_untracked_on_update_and_get_before_first_apply() {
    let s = deployment();
    let live = stored(deploy(json!({"app": "web"}), Some(1), nginx()));
    let mut new = live.clone();
    new["spec"]["replicas"] = json!(3);
    record_update(Some(&live), &mut new, "x", &s);
    assert!(new["metadata"].get("managedFields").is_none());
    // Apply on it: the previous state is owned by before-first-apply.
    let bob = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web"}, "spec": {"replicas": 5}});
    let err = fm(&s).apply(Some(&new), &bob, "bob", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn managed_fields_can_be_reset_by_the_client() {
    let s = deployment();
    let mut created = deploy(json!({"app": "web"}), Some(1), nginx());
    record_update(None, &mut created, "c", &s);
    let live = stored(created);
    let mut new = live.clone();
    new["metadata"]["managedFields"] = json!([{}]);
    record_update(Some(&live), &mut new, "c", &s);
    assert!(new["metadata"].get("managedFields").is_none());
    // An empty list does not reset.
    let mut keep = live.clone();
    keep["metadata"]["managedFields"] = json!([]);
    record_update(Some(&live), &mut keep, "c", &s);
    assert_eq!(
        keep["metadata"]["managedFields"],
        live["metadata"]["managedFields"]
    );
}

#[test]
fn status_is_ignored_when_the_resource_has_a_status_subresource() {
    let s = deployment();
    let mut d = deploy(json!({}), Some(1), nginx());
    d["status"] = json!({"replicas": 1});
    let out = FieldManager::new(&s)
        .ignore_status(true)
        .at_time(T0)
        .apply(None, &d, "kubectl", false)
        .unwrap();
    assert!(
        owned(&out, "kubectl", "Apply")
            .to_fields_v1()
            .get("f:status")
            .is_none()
    );
    // The status writer owns status only, recorded with the subresource.
    let live = stored(out);
    let mut new = live.clone();
    new["status"] = json!({"replicas": 1, "readyReplicas": 1});
    new["spec"]["replicas"] = json!(9);
    FieldManager::new(&s)
        .subresource("status")
        .at_time(T1)
        .record_update(Some(&live), &mut new, "controller");
    let e = entry(&new, "controller", "Update").unwrap();
    assert_eq!(e["subresource"], "status");
    assert_eq!(e["fieldsV1"], json!({"f:status": {"f:readyReplicas": {}}}));
}

#[test]
fn no_schema_fallback_treats_lists_as_atomic() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"a": "1"}, "list": [{"name": "x"}, {"name": "y"}]});
    let out = apply(None, &live, "m", false, &NoSchema).unwrap();
    let applied = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
        "data": {"b": "2"}, "list": [{"name": "z"}]});
    let out = apply(Some(&out), &applied, "m", false, &NoSchema).unwrap();
    assert_eq!(out["data"], json!({"b": "2"}));
    assert_eq!(out["list"], json!([{"name": "z"}]));
    let fields = owned(&out, "m", "Apply").to_fields_v1();
    assert_eq!(fields["f:list"], json!({}));
}

#[test]
fn openapi_schema_merges_containers_and_ports() {
    let s = for_kind("apps", "v1", "Deployment");
    let v1 = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web", "x": "y"}},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
                {"name": "nginx", "image": "nginx", "ports": [{"containerPort": 80}],
                 "resources": {"limits": {"cpu": "1"}}}]}}}});
    let fm = FieldManager::new(&*s).ignore_status(true).at_time(T0);
    let live = stored(fm.apply(None, &v1, "kubectl", false).unwrap());
    let f = &live["metadata"]["managedFields"][0]["fieldsV1"];
    let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"nginx\"}"];
    assert_eq!(c["."], json!({}));
    assert!(
        c["f:ports"]
            .get("k:{\"containerPort\":80,\"protocol\":\"TCP\"}")
            .is_some(),
        "{c:#}"
    );
    // Quantities and the label selector are single fields.
    assert_eq!(c["f:resources"]["f:limits"]["f:cpu"], json!({}));
    assert_eq!(f["f:spec"]["f:selector"], json!({}));
    let mut v2 = v1.clone();
    v2["metadata"]["labels"] = json!({"app": "web"});
    v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:2");
    let out = fm.apply(Some(&live), &v2, "kubectl", false).unwrap();
    assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
    assert_eq!(
        out["spec"]["template"]["spec"]["containers"][0]["ports"],
        json!([{"containerPort": 80}])
    );
}

#[test]
fn rfc3339_formats_utc() {
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_704_067_260), T1);
}

#[test]
fn kubectl_takes_over_from_client_side_apply() {
    let s = deployment();
    // Created by client-side apply: the annotation holds the configuration it applied.
    let config = deploy(json!({"app": "web"}), Some(2), nginx());
    let mut created = config.clone();
    created["metadata"]["annotations"] = json!({LAST_APPLIED: format!("{config}\n")});
    record_update(None, &mut created, "kubectl-client-side-apply", &s);
    let live = stored(created);
    // kubectl apply --server-side of a changed file: replicas is still what the annotation
    // says, so kubectl may take it; the annotation follows the new configuration.
    let changed = deploy(json!({"app": "web"}), Some(3), nginx());
    let out = fm(&s)
        .apply(Some(&live), &changed, "kubectl", false)
        .unwrap();
    assert_eq!(out["spec"]["replicas"], 3);
    assert!(owned(&out, "kubectl", "Apply").has(&p(&["spec", "replicas"])));
    let annotation = out["metadata"]["annotations"][LAST_APPLIED]
        .as_str()
        .unwrap();
    let recorded: Value = serde_json::from_str(annotation).unwrap();
    assert_eq!(recorded["spec"]["replicas"], 3);
    // Another manager gets no such pass.
    let err = fm(&s)
        .apply(Some(&live), &changed, "other", false)
        .unwrap_err();
    assert!(matches!(err, ApplyError::Conflicts(_)));
    // Nor does kubectl once someone else changed the field after the client-side apply.
    let mut scaled = live.clone();
    scaled["spec"]["replicas"] = json!(5);
    record_update(Some(&live), &mut scaled, "kubectl-scale", &s);
    let err = fm(&s)
        .apply(Some(&scaled), &changed, "kubectl", false)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Apply failed with 1 conflict: conflict with \"kubectl-scale\" using apps/v1: .spec.replicas"
    );
}

#[test]
fn old_updaters_are_merged_into_ancient_changes() {
    let s = NoSchema;
    let mut live =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {}});
    record_update(None, &mut live, "creator", &s);
    for i in 0..12 {
        let mut new = live.clone();
        new["data"][format!("k{i}")] = json!("v");
        FieldManager::new(&s)
            .at_time(&format!("2024-01-01T00:00:{i:02}Z"))
            .record_update(Some(&live), &mut new, &format!("m{i}"));
        live = new;
    }
    let entries = managed_fields(&live).unwrap();
    assert_eq!(entries.len(), MAX_UPDATE_MANAGERS);
    let ancient = entries
        .iter()
        .find(|e| e.manager == ANCIENT_CHANGES)
        .expect("bucket");
    // The oldest updaters (m0, m1, ...) went into the bucket.
    for k in ["k0", "k1", "k2"] {
        assert!(ancient.fields.has(&p(&["data", k])), "{k}");
    }
    assert!(entries.iter().any(|e| e.manager == "m11"));
    assert!(!entries.iter().any(|e| e.manager == "m0"));
}

mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::super::{FieldSet, PathElement};

    fn element() -> impl Strategy<Value = PathElement> {
        prop_oneof![
            "[a-c]{1,2}".prop_map(PathElement::Field),
            (0u8..3, "[xy]").prop_map(|(n, s)| PathElement::key(vec![
                ("port".into(), json!(n)),
                ("name".into(), json!(s)),
            ])),
            "[a-b\"]{1,2}".prop_map(|s| PathElement::Value(json!(s))),
            (0usize..3).prop_map(PathElement::Index),
        ]
    }

    fn set() -> impl Strategy<Value = FieldSet> {
        prop::collection::vec(prop::collection::vec(element(), 1..4), 0..8).prop_map(|paths| {
            let mut s = FieldSet::new();
            for p in paths {
                s.insert(&p);
            }
            s
        })
    }

    proptest! {
        #[test]
        fn fields_v1_round_trips(s in set()) {
            let encoded = s.to_fields_v1();
            prop_assert_eq!(FieldSet::from_fields_v1(&encoded).unwrap(), s.clone());
            for p in s.paths() {
                prop_assert!(s.has(&p));
            }
        }

        #[test]
        fn set_algebra_holds(a in set(), b in set()) {
            let u = a.union(&b);
            let i = a.intersection(&b);
            let d = a.difference(&b);
            for p in a.paths().into_iter().chain(b.paths()) {
                prop_assert_eq!(u.has(&p), a.has(&p) || b.has(&p));
                prop_assert_eq!(i.has(&p), a.has(&p) && b.has(&p));
                prop_assert_eq!(d.has(&p), a.has(&p) && !b.has(&p));
            }
            prop_assert_eq!(u.paths().len(), a.paths().len() + b.paths().len() - i.paths().len());
            prop_assert!(d.difference(&a).is_empty());
        }
    }
}
