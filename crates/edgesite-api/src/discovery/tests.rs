use super::*;
use serde_json::json;

const AGG_ACCEPT: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,\
    application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

#[test]
fn negotiation() {
    assert_eq!(
        negotiate_aggregated(AGG_ACCEPT),
        Some(AggregatedVersion::V2)
    );
    assert_eq!(
        negotiate_aggregated(
            "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
        ),
        Some(AggregatedVersion::V2Beta1)
    );
    assert_eq!(
        negotiate_aggregated(
            "application/json; g=apidiscovery.k8s.io; v=v2; as=APIGroupDiscoveryList"
        ),
        Some(AggregatedVersion::V2)
    );
    for accept in [
        "",
        "application/json",
        "*/*",
        "application/json, */*",
        "application/json;g=apidiscovery.k8s.io;v=v3;as=APIGroupDiscoveryList",
        "application/yaml;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList",
        "application/json;as=Table;g=meta.k8s.io;v=v1",
    ] {
        assert_eq!(negotiate_aggregated(accept), None, "{accept}");
    }
    assert_eq!(
        AggregatedVersion::V2.content_type(),
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    assert_eq!(
        AggregatedVersion::V2Beta1.content_type(),
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
    );
}

#[test]
fn legacy_roots() {
    assert_eq!(
        api_versions("10.0.0.1:6443"),
        json!({"kind":"APIVersions","versions":["v1"],
               "serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":"10.0.0.1:6443"}]})
    );
    let list = api_group_list();
    assert_eq!(list["kind"], "APIGroupList");
    let groups = list["groups"].as_array().unwrap();
    assert_eq!(groups.len(), GROUP_VERSIONS.len());
    assert_eq!(
        groups[0],
        json!({"name":"apps","versions":[{"groupVersion":"apps/v1","version":"v1"}],
               "preferredVersion":{"groupVersion":"apps/v1","version":"v1"}})
    );
    assert!(groups.iter().all(|g| g["name"] != ""));
    assert_eq!(api_group("batch").unwrap()["kind"], "APIGroup");
    assert!(api_group("").is_none());
    assert!(api_group("policy").is_none());
}

#[test]
fn legacy_resource_lists() {
    let core = api_resource_list("", "v1").unwrap();
    assert_eq!(core["groupVersion"], "v1");
    let res = core["resources"].as_array().unwrap();
    let find = |name: &str| res.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(
        find("pods"),
        json!({"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod",
               "verbs":["create","delete","deletecollection","get","list","patch","update","watch"],
               "shortNames":["po"],"categories":["all"]})
    );
    assert_eq!(
        find("pods/log"),
        json!({"name":"pods/log","singularName":"","namespaced":true,"kind":"Pod","verbs":["get"]})
    );
    assert_eq!(
        find("pods/eviction"),
        json!({"name":"pods/eviction","singularName":"","namespaced":true,"group":"policy",
               "version":"v1","kind":"Eviction","verbs":["create"]})
    );
    assert_eq!(
        find("secrets"),
        json!({"name":"secrets","singularName":"secret","namespaced":true,"kind":"Secret",
               "verbs":["create","delete","deletecollection","get","list","patch","update","watch"]})
    );
    assert_eq!(find("namespaces/finalize")["verbs"], json!(["update"]));
    assert_eq!(find("nodes")["namespaced"], false);

    let apps = api_resource_list("apps", "v1").unwrap();
    assert_eq!(apps["groupVersion"], "apps/v1");
    let res = apps["resources"].as_array().unwrap();
    let scale = res
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(
        *scale,
        json!({"name":"deployments/scale","singularName":"","namespaced":true,"group":"autoscaling",
               "version":"v1","kind":"Scale","verbs":["get","patch","update"]})
    );
    let names: Vec<_> = res.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "controllerrevisions",
            "daemonsets",
            "daemonsets/status",
            "deployments",
            "deployments/scale",
            "deployments/status",
            "replicasets",
            "replicasets/scale",
            "replicasets/status",
            "statefulsets",
            "statefulsets/scale",
            "statefulsets/status"
        ]
    );
    assert!(api_resource_list("apps", "v2").is_none());
    assert!(api_resource_list("policy", "v1").is_none());
    for (g, v) in GROUP_VERSIONS {
        assert!(api_resource_list(g, v).is_some(), "{g}/{v}");
    }
}

#[test]
fn aggregated_core() {
    let body = aggregated_api(AggregatedVersion::V2);
    assert_eq!(body["kind"], "APIGroupDiscoveryList");
    assert_eq!(body["apiVersion"], "apidiscovery.k8s.io/v2");
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "");
    let v = &items[0]["versions"][0];
    assert_eq!(v["version"], "v1");
    assert_eq!(v["freshness"], "Current");
    let pods = v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "pods")
        .unwrap();
    assert_eq!(
        *pods,
        json!({
            "resource":"pods",
            "responseKind":{"group":"","version":"v1","kind":"Pod"},
            "scope":"Namespaced",
            "singularResource":"pod",
            "verbs":["create","delete","deletecollection","get","list","patch","update","watch"],
            "shortNames":["po"],
            "categories":["all"],
            "subresources":[
                {"subresource":"attach","responseKind":{"group":"","version":"v1","kind":"PodAttachOptions"},"verbs":["create","get"]},
                {"subresource":"binding","responseKind":{"group":"","version":"v1","kind":"Binding"},"verbs":["create"]},
                {"subresource":"eviction","responseKind":{"group":"policy","version":"v1","kind":"Eviction"},"verbs":["create"]},
                {"subresource":"exec","responseKind":{"group":"","version":"v1","kind":"PodExecOptions"},"verbs":["create","get"]},
                {"subresource":"log","responseKind":{"group":"","version":"v1","kind":"Pod"},"verbs":["get"]},
                {"subresource":"portforward","responseKind":{"group":"","version":"v1","kind":"PodPortForwardOptions"},"verbs":["create","get"]},
                {"subresource":"status","responseKind":{"group":"","version":"v1","kind":"Pod"},"verbs":["get","patch","update"]}
            ]
        })
    );
    assert_eq!(
        aggregated_api(AggregatedVersion::V2Beta1)["apiVersion"],
        "apidiscovery.k8s.io/v2beta1"
    );
}

#[test]
fn aggregated_groups() {
    let body = aggregated_apis(AggregatedVersion::V2);
    let items = body["items"].as_array().unwrap();
    let names: Vec<_> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    let expected: Vec<_> = GROUP_VERSIONS.iter().map(|(g, _)| *g).collect();
    assert_eq!(names, expected);

    let apps = &items[0]["versions"][0]["resources"];
    let deploy = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["resource"] == "deployments")
        .unwrap();
    assert_eq!(
        *deploy,
        json!({
            "resource":"deployments",
            "responseKind":{"group":"apps","version":"v1","kind":"Deployment"},
            "scope":"Namespaced",
            "singularResource":"deployment",
            "verbs":["create","delete","deletecollection","get","list","patch","update","watch"],
            "shortNames":["deploy"],
            "categories":["all"],
            "subresources":[
                {"subresource":"scale","responseKind":{"group":"autoscaling","version":"v1","kind":"Scale"},"verbs":["get","patch","update"]},
                {"subresource":"status","responseKind":{"group":"apps","version":"v1","kind":"Deployment"},"verbs":["get","patch","update"]}
            ]
        })
    );
    let ssar = &items
        .iter()
        .find(|i| i["metadata"]["name"] == "authorization.k8s.io")
        .unwrap()["versions"][0]["resources"][1];
    assert_eq!(
        *ssar,
        json!({"resource":"selfsubjectaccessreviews",
               "responseKind":{"group":"authorization.k8s.io","version":"v1","kind":"SelfSubjectAccessReview"},
               "scope":"Cluster","singularResource":"selfsubjectaccessreview","verbs":["create"]})
    );
}

/// Walks both aggregated documents the way client-go does: every resource and subresource
/// must carry a complete responseKind, and the `all` category must hold exactly the workloads.
#[test]
fn aggregated_every_resource_is_usable() {
    let mut all_category = Vec::new();
    let mut count = 0;
    for body in [
        aggregated_api(AggregatedVersion::V2),
        aggregated_apis(AggregatedVersion::V2),
    ] {
        for item in body["items"].as_array().unwrap() {
            let group = item["metadata"]["name"].as_str().unwrap();
            for v in item["versions"].as_array().unwrap() {
                assert_eq!(v["freshness"], "Current");
                for r in v["resources"].as_array().unwrap() {
                    count += 1;
                    let rk = &r["responseKind"];
                    assert_eq!(rk["group"], group);
                    assert_eq!(rk["version"], v["version"]);
                    assert!(!rk["kind"].as_str().unwrap().is_empty());
                    assert!(["Namespaced", "Cluster"].contains(&r["scope"].as_str().unwrap()));
                    assert!(!r["singularResource"].as_str().unwrap().is_empty());
                    assert!(!r["verbs"].as_array().unwrap().is_empty());
                    for s in r["subresources"].as_array().into_iter().flatten() {
                        let rk = &s["responseKind"];
                        for k in ["group", "version", "kind"] {
                            assert!(
                                rk[k].is_string(),
                                "{} {}: {k}",
                                r["resource"],
                                s["subresource"]
                            );
                        }
                        assert!(!rk["version"].as_str().unwrap().is_empty());
                        assert!(!s["verbs"].as_array().unwrap().is_empty());
                    }
                    if r["categories"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c == "all")
                    {
                        all_category.push(format!("{}.{group}", r["resource"].as_str().unwrap()));
                    }
                }
            }
        }
    }
    assert_eq!(count, registry::all().len());
    all_category.sort();
    assert_eq!(
        all_category,
        [
            "cronjobs.batch",
            "daemonsets.apps",
            "deployments.apps",
            "jobs.batch",
            "pods.",
            "replicasets.apps",
            "services.",
            "statefulsets.apps"
        ]
    );
}

#[test]
fn version_body() {
    let v = version_info("0123abcd", "2025-01-01T00:00:00Z");
    let obj = v.as_object().unwrap();
    let mut keys: Vec<_> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "buildDate",
            "compiler",
            "gitCommit",
            "gitTreeState",
            "gitVersion",
            "goVersion",
            "major",
            "minor",
            "platform"
        ]
    );
    assert!(obj.values().all(|x| x.is_string()));
    assert_eq!(v["major"], "1");
    assert_eq!(v["minor"], "32");
    assert!(v["gitVersion"].as_str().unwrap().starts_with("v1.32."));
    assert_eq!(v["gitCommit"], "0123abcd");
    let platform = v["platform"].as_str().unwrap();
    assert!(
        platform.contains('/') && !platform.contains("x86_64"),
        "{platform}"
    );
}
