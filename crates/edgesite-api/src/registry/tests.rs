use super::*;

/// Every name kubectl users type for the resources we serve, and what it must resolve to.
#[test]
fn kubectl_names_resolve() {
    let table: &[(&str, &str, &str)] = &[
        ("po", "", "pods"),
        ("pod", "", "pods"),
        ("pods", "", "pods"),
        ("Pod", "", "pods"),
        ("svc", "", "services"),
        ("service", "", "services"),
        ("deploy", "apps", "deployments"),
        ("deployment", "apps", "deployments"),
        ("deployments.apps", "apps", "deployments"),
        ("deploy.apps", "apps", "deployments"),
        ("rs", "apps", "replicasets"),
        ("ds", "apps", "daemonsets"),
        ("sts", "apps", "statefulsets"),
        ("controllerrevision", "apps", "controllerrevisions"),
        ("cm", "", "configmaps"),
        ("ns", "", "namespaces"),
        ("no", "", "nodes"),
        ("node", "", "nodes"),
        ("ep", "", "endpoints"),
        ("endpoints", "", "endpoints"),
        ("sa", "", "serviceaccounts"),
        ("secret", "", "secrets"),
        ("ev", "", "events"),
        ("events", "", "events"),
        ("Event", "", "events"),
        ("events.events.k8s.io", "events.k8s.io", "events"),
        ("ev.events.k8s.io", "events.k8s.io", "events"),
        ("cj", "batch", "cronjobs"),
        ("cronjob", "batch", "cronjobs"),
        ("job", "batch", "jobs"),
        ("jobs.batch", "batch", "jobs"),
        ("lease", "coordination.k8s.io", "leases"),
        ("endpointslices", "discovery.k8s.io", "endpointslices"),
        (
            "endpointslice.discovery.k8s.io",
            "discovery.k8s.io",
            "endpointslices",
        ),
        (
            "selfsubjectaccessreviews",
            "authorization.k8s.io",
            "selfsubjectaccessreviews",
        ),
        (
            "selfsubjectreview",
            "authentication.k8s.io",
            "selfsubjectreviews",
        ),
    ];
    for &(name, group, plural) in table {
        let r = resolve(name).unwrap_or_else(|| panic!("{name} does not resolve"));
        assert_eq!((r.group, r.plural), (group, plural), "{name}");
    }
    for name in [
        "",
        "all",
        "foo",
        "pods.apps",
        "deploy.batch",
        "rc",
        "pvc",
        ".",
    ] {
        assert!(resolve(name).is_none(), "{name} should not resolve");
    }
    // `events` is ambiguous; the core group comes first, as in kubectl.
    let events: Vec<_> = resolve_all("ev").iter().map(|r| r.group).collect();
    assert_eq!(events, ["", "events.k8s.io"]);
}

#[test]
fn every_short_name_and_singular_is_unique_within_its_meaning() {
    for r in all() {
        for n in r.short_names.iter().chain([&r.singular, &r.plural]) {
            let first = resolve(n).unwrap();
            // Only the two Event resources share names.
            if first != r {
                assert_eq!((first.kind, r.kind), ("Event", "Event"), "{n}");
            }
        }
    }
}

#[test]
fn lookup_by_path_and_kind() {
    let pods = lookup("", "v1", "pods").unwrap();
    assert_eq!(pods.kind, "Pod");
    assert!(pods.namespaced);
    assert_eq!(pods.api_version(), "v1");
    assert_eq!(pods.list_kind(), "PodList");
    assert!(lookup("", "v1", "Pods").is_none());
    assert!(lookup("apps", "v1", "pods").is_none());
    assert!(lookup("", "v2", "pods").is_none());

    let d = by_api_version_kind("apps/v1", "Deployment").unwrap();
    assert_eq!(d.plural, "deployments");
    assert_eq!(d.api_version(), "apps/v1");
    assert_eq!(by_gvk("", "v1", "Namespace").unwrap().plural, "namespaces");
    assert!(by_api_version_kind("v1", "Deployment").is_none());
    assert_eq!(by_kind("Event").count(), 2);
    assert_eq!(
        by_kind("Lease").next().unwrap().group,
        "coordination.k8s.io"
    );

    for r in all() {
        assert_eq!(lookup(r.group, r.version, r.plural), Some(r));
        assert_eq!(by_gvk(r.group, r.version, r.kind), Some(r));
        assert_eq!(by_api_version_kind(&r.api_version(), r.kind), Some(r));
    }
}

#[test]
fn verbs_follow_upstream() {
    let verbs = |g: &str, p: &str| lookup(g, "v1", p).unwrap().verbs.to_vec();
    assert_eq!(verbs("", "pods"), ALL_VERBS);
    assert_eq!(
        verbs("", "namespaces"),
        [
            "create", "delete", "get", "list", "patch", "update", "watch"
        ]
    );
    assert_eq!(
        verbs("authorization.k8s.io", "selfsubjectaccessreviews"),
        ["create"]
    );
    assert_eq!(
        verbs("authentication.k8s.io", "selfsubjectreviews"),
        ["create"]
    );
    assert!(
        !lookup("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
            .unwrap()
            .namespaced
    );
    for r in all() {
        let mut sorted = r.verbs.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, r.verbs, "{} verbs are served sorted", r.plural);
        assert!(r.verbs.iter().all(|v| ALL_VERBS.contains(v)));
        let names: Vec<_> = r.subresources.iter().map(|s| s.name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted, "{} subresources sorted", r.plural);
        for s in r.subresources {
            let mut v = s.verbs.to_vec();
            v.sort_unstable();
            assert_eq!(v, s.verbs);
        }
    }
}

#[test]
fn subresources() {
    let pods = lookup("", "v1", "pods").unwrap();
    let names: Vec<_> = pods.subresources.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [
            "attach",
            "binding",
            "eviction",
            "exec",
            "log",
            "portforward",
            "status"
        ]
    );
    assert_eq!(
        pods.subresource("eviction").unwrap().response,
        GroupVersionKind {
            group: "policy",
            version: "v1",
            kind: "Eviction"
        }
    );
    assert_eq!(pods.subresource("log").unwrap().verbs, ["get"]);
    assert!(pods.subresource("proxy").is_none());
    for plural in ["deployments", "replicasets", "statefulsets"] {
        let r = lookup("apps", "v1", plural).unwrap();
        let scale = r.subresource("scale").unwrap();
        assert_eq!(
            scale.response,
            GroupVersionKind {
                group: "autoscaling",
                version: "v1",
                kind: "Scale"
            }
        );
        assert_eq!(scale.verbs, ["get", "patch", "update"]);
        assert_eq!(r.subresource("status").unwrap().response, r.gvk());
    }
    for (g, p) in [
        ("", "nodes"),
        ("", "services"),
        ("", "namespaces"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("apps", "daemonsets"),
    ] {
        let r = lookup(g, "v1", p).unwrap();
        assert_eq!(r.subresource("status").unwrap().response, r.gvk(), "{p}");
    }
    assert!(
        lookup("apps", "v1", "daemonsets")
            .unwrap()
            .subresource("scale")
            .is_none()
    );
}

#[test]
fn all_category_is_exactly_the_workloads() {
    let mut all_cat: Vec<_> = in_category("all").map(|r| r.plural).collect();
    all_cat.sort_unstable();
    assert_eq!(
        all_cat,
        [
            "cronjobs",
            "daemonsets",
            "deployments",
            "jobs",
            "pods",
            "replicasets",
            "services",
            "statefulsets"
        ]
    );
    assert_eq!(in_category("none").count(), 0);
}

#[test]
fn table_order_matches_group_versions() {
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for r in all() {
        if seen.last() != Some(&(r.group, r.version)) {
            assert!(
                !seen.contains(&(r.group, r.version)),
                "{} not contiguous",
                r.group
            );
            seen.push((r.group, r.version));
        }
    }
    assert_eq!(seen[0], ("", "v1"));
    assert_eq!(&seen[1..], GROUP_VERSIONS);
    let core: Vec<_> = resources_in("", "v1").map(|r| r.plural).collect();
    let mut sorted = core.clone();
    sorted.sort_unstable();
    assert_eq!(core, sorted);
    assert_eq!(core.len(), 9);
    assert_eq!(resources_in("apps", "v1").count(), 5);
    assert_eq!(resources_in("apps", "v2").count(), 0);
}

#[test]
fn names_in_messages() {
    let d = lookup("apps", "v1", "deployments").unwrap();
    assert_eq!(d.group_resource().to_string(), "deployments.apps");
    assert_eq!(d.group_kind().to_string(), "Deployment.apps");
    let p = lookup("", "v1", "pods").unwrap();
    assert_eq!(GroupResource::from(p).to_string(), "pods");
    assert_eq!(GroupKind::from(p).to_string(), "Pod");
}

#[test]
fn storage_keys() {
    let pods = lookup("", "v1", "pods").unwrap();
    let nodes = lookup("", "v1", "nodes").unwrap();
    let deploy = lookup("apps", "v1", "deployments").unwrap();
    let lease = lookup("coordination.k8s.io", "v1", "leases").unwrap();
    let cases: &[(&ResourceInfo, Option<&str>, &str, Option<&str>)] = &[
        (
            pods,
            Some("default"),
            "web-0",
            Some("/registry/core/pods/default/web-0"),
        ),
        (nodes, None, "n1", Some("/registry/core/nodes/n1")),
        (
            deploy,
            Some("kube-system"),
            "dns",
            Some("/registry/apps/deployments/kube-system/dns"),
        ),
        (
            lease,
            Some("kube-node-lease"),
            "n1",
            Some("/registry/coordination.k8s.io/leases/kube-node-lease/n1"),
        ),
        (pods, None, "x", None),
        (nodes, Some("default"), "n1", None),
        (pods, Some("default"), "", None),
        (pods, Some("default"), "..", None),
        (pods, Some("default"), "a/b", None),
        (pods, Some("a/b"), "x", None),
        (pods, Some(""), "x", None),
        (pods, Some("default"), "a%2f", None),
    ];
    for &(r, ns, name, want) in cases {
        assert_eq!(
            storage_key(r, ns, name).as_deref(),
            want,
            "{} {ns:?} {name}",
            r.plural
        );
    }
    assert_eq!(storage_prefix(pods, None).unwrap(), "/registry/core/pods/");
    assert_eq!(
        storage_prefix(pods, Some("a")).unwrap(),
        "/registry/core/pods/a/"
    );
    assert_eq!(storage_prefix(nodes, Some("a")), None);
    assert_eq!(
        storage_prefix(nodes, None).unwrap(),
        "/registry/core/nodes/"
    );

    // Keys of different resources never share a prefix, and every key lies under both of its
    // list prefixes.
    for a in all() {
        for b in all() {
            if a != b {
                let (pa, pb) = (
                    storage_prefix(a, None).unwrap(),
                    storage_prefix(b, None).unwrap(),
                );
                assert!(!pa.starts_with(&pb), "{pa} under {pb}");
            }
        }
        let ns = a.namespaced.then_some("ns1");
        let key = storage_key(a, ns, "obj").unwrap();
        assert!(key.starts_with(&storage_prefix(a, None).unwrap()));
        assert!(key.starts_with(&storage_prefix(a, ns).unwrap()));
        if a.namespaced {
            assert!(!key.starts_with(&storage_prefix(a, Some("ns")).unwrap()));
        }
    }
}

#[test]
fn every_builtin_the_server_names_is_in_the_table() {
    for (group, version, plural) in BUILTINS_NAMED_BY_THE_SERVER {
        assert_eq!(builtin(group, version, plural).plural, *plural);
    }
}
