"""Drives an EdgeSite API server with the official Python `kubernetes` client.

Usage: python client_check.py KUBECONFIG

Prints one `ok:` line per check and exits non-zero (with a traceback) on the first failure.
The client deserializes every response into its typed models, which reject responses lacking
OpenAPI-required fields, so a clean run also checks the server's response shapes.
"""

import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "default"


def ok(what):
    print(f"ok: {what}", flush=True)


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"expected HTTP {code}, got {e.status}: {e.body}"
        return e
    raise AssertionError(f"expected HTTP {code}, the call succeeded")


def check_version():
    info = client.VersionApi().get_code()
    fields = [
        "major",
        "minor",
        "git_version",
        "git_commit",
        "git_tree_state",
        "build_date",
        "go_version",
        "compiler",
        "platform",
    ]
    for f in fields:
        assert getattr(info, f), f"version field {f} is empty: {info}"
    assert info.major == "1", info
    ok(f"version {info.git_version} with all {len(fields)} fields")


def check_namespaces(v1):
    names = {n.metadata.name for n in v1.list_namespace().items}
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"]:
        assert want in names, names
    for n in v1.list_namespace().items:
        assert n.status.phase == "Active", n
    ok(f"namespaces {sorted(names)}")


def configmap(name, data, labels=None):
    return client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name=name, labels=labels or {}), data=data
    )


def check_configmaps(v1):
    created = v1.create_namespaced_config_map(NS, configmap("py-a", {"k": "1"}, {"app": "py"}))
    assert created.metadata.name == "py-a" and created.metadata.uid, created
    assert created.metadata.resource_version, created
    assert created.metadata.creation_timestamp is not None, created
    v1.create_namespaced_config_map(NS, configmap("py-b", {"k": "2"}))
    ok("create")

    e = expect_status(409, v1.create_namespaced_config_map, NS, configmap("py-a", {}))
    assert "AlreadyExists" in e.body, e.body
    e = expect_status(404, v1.read_namespaced_config_map, "nope", NS)
    assert "NotFound" in e.body, e.body
    ok("409 on a duplicate create, 404 on a missing object")

    got = v1.read_namespaced_config_map("py-a", NS)
    assert got.data == {"k": "1"}, got
    listed = v1.list_namespaced_config_map(NS, label_selector="app=py")
    assert [c.metadata.name for c in listed.items] == ["py-a"], listed
    assert listed.metadata.resource_version, listed.metadata
    ok("read and list with a label selector")

    # A dict body is sent as a strategic merge patch.
    p = v1.patch_namespaced_config_map("py-a", NS, {"data": {"s": "smp"}})
    assert p.data == {"k": "1", "s": "smp"}, p.data
    p = v1.patch_namespaced_config_map(
        "py-a",
        NS,
        {"data": {"k": None, "m": "merge"}},
        _content_type="application/merge-patch+json",
    )
    assert p.data == {"s": "smp", "m": "merge"}, p.data
    # A list body is sent as a JSON patch.
    p = v1.patch_namespaced_config_map(
        "py-a",
        NS,
        [
            {"op": "add", "path": "/data/j", "value": "json"},
            {"op": "remove", "path": "/data/s"},
        ],
    )
    assert p.data == {"m": "merge", "j": "json"}, p.data
    e = expect_status(
        409,
        v1.replace_namespaced_config_map,
        "py-a",
        NS,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="py-a", resource_version=created.metadata.resource_version),
            data={},
        ),
    )
    ok("strategic, merge and JSON patches; a stale replace is a 409")

    v1.delete_namespaced_config_map("py-b", NS)
    expect_status(404, v1.read_namespaced_config_map, "py-b", NS)
    expect_status(404, v1.delete_namespaced_config_map, "py-b", NS)
    ok("delete")


def check_watch(v1):
    for name in ["py-c", "py-d"]:
        v1.create_namespaced_config_map(NS, configmap(name, {"k": name}))
    existing = {c.metadata.name for c in v1.list_namespaced_config_map(NS).items}
    assert {"py-a", "py-c", "py-d"} <= existing, existing

    def patch_later():
        time.sleep(1.0)
        v1.patch_namespaced_config_map("py-a", NS, {"data": {"w": "watched"}})

    t = threading.Thread(target=patch_later)
    t.start()
    events = []
    started = time.monotonic()
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, NS, timeout_seconds=5):
        obj = ev["object"]
        assert isinstance(obj, client.V1ConfigMap), type(obj)
        events.append((ev["type"], obj.metadata.name, dict(obj.data or {})))
    elapsed = time.monotonic() - started
    t.join()
    added = {name for (kind, name, _) in events if kind == "ADDED"}
    assert added == existing, (added, existing, events)
    modified = [e for e in events if e[0] == "MODIFIED"]
    assert len(modified) == 1 and modified[0][1] == "py-a", events
    assert modified[0][2].get("w") == "watched", modified
    assert 4.0 <= elapsed < 15.0, f"the watch ended after {elapsed:.1f} s"
    ok(f"watch: {len(added)} ADDED, then MODIFIED from another thread; ended after {elapsed:.1f} s")


def check_deployments(apps):
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="py-web", labels={"app": "py-web"}),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "py-web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "py-web"}),
                spec=client.V1PodSpec(
                    containers=[
                        client.V1Container(
                            name="web",
                            image="nginx:1.27",
                            ports=[client.V1ContainerPort(container_port=80)],
                        )
                    ]
                ),
            ),
        ),
    )
    d = apps.create_namespaced_deployment(NS, body)
    assert d.spec.selector.match_labels == {"app": "py-web"}, d.spec
    assert d.spec.template.spec.containers[0].image == "nginx:1.27", d.spec
    expect_status(409, apps.create_namespaced_deployment, NS, body)
    names = [x.metadata.name for x in apps.list_namespaced_deployment(NS).items]
    assert names == ["py-web"], names
    assert [x.metadata.name for x in apps.list_deployment_for_all_namespaces().items] == ["py-web"]
    ok("deployment create and list")

    # Strategic merge: the container list merges by name, so the ports survive.
    d = apps.patch_namespaced_deployment(
        "py-web",
        NS,
        {"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "nginx:1.28"}]}}}},
    )
    c = d.spec.template.spec.containers
    assert len(c) == 1 and c[0].image == "nginx:1.28", c
    assert c[0].ports and c[0].ports[0].container_port == 80, c
    d = apps.patch_namespaced_deployment(
        "py-web", NS, {"spec": {"replicas": 2}}, _content_type="application/merge-patch+json"
    )
    assert d.spec.replicas == 2, d.spec
    d = apps.patch_namespaced_deployment(
        "py-web", NS, [{"op": "add", "path": "/spec/paused", "value": True}]
    )
    assert d.spec.paused is True, d.spec
    ok("deployment strategic, merge and JSON patches")

    s = apps.read_namespaced_deployment_scale("py-web", NS)
    assert s.spec.replicas == 2, s
    s = apps.patch_namespaced_deployment_scale("py-web", NS, {"spec": {"replicas": 4}})
    assert s.spec.replicas == 4, s
    assert apps.read_namespaced_deployment("py-web", NS).spec.replicas == 4
    ok("deployment scale subresource")

    apps.delete_namespaced_deployment("py-web", NS)
    expect_status(404, apps.read_namespaced_deployment, "py-web", NS)
    ok("deployment delete")


def check_pods_and_services(v1):
    for name in ["pod-a", "pod-b"]:
        v1.create_namespaced_pod(
            NS,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, labels={"app": "py"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="busybox")]),
            ),
        )
    pods = v1.list_pod_for_all_namespaces(label_selector="app=py").items
    assert sorted(p.metadata.name for p in pods) == ["pod-a", "pod-b"], pods
    assert pods[0].spec.containers[0].name == "c", pods[0].spec
    v1.patch_namespaced_pod_status("pod-a", NS, {"status": {"phase": "Running"}})
    running = v1.list_namespaced_pod(NS, field_selector="status.phase=Running").items
    assert [p.metadata.name for p in running] == ["pod-a"], running
    assert v1.read_namespaced_pod_status("pod-a", NS).status.phase == "Running"
    # Check 39 without exec: the pod watch yields ADDED per existing pod, then ends.
    events = [
        (ev["type"], ev["object"].metadata.name)
        for ev in watch.Watch().stream(v1.list_namespaced_pod, NS, timeout_seconds=2)
    ]
    assert sorted(events) == [("ADDED", "pod-a"), ("ADDED", "pod-b")], events
    ok("pods: create, list, status patch, field selector, watch")

    svc = v1.read_namespaced_service("kubernetes", NS)
    assert svc.spec.ports[0].port == 443, svc.spec
    assert v1.read_namespace("kube-system").status.phase == "Active"
    ok("the kubernetes service and a namespace read")


def main():
    config.load_kube_config(config_file=sys.argv[1])
    v1 = client.CoreV1Api()
    apps = client.AppsV1Api()
    check_version()
    check_namespaces(v1)
    check_configmaps(v1)
    check_watch(v1)
    check_deployments(apps)
    check_pods_and_services(v1)
    print("all checks passed", flush=True)


if __name__ == "__main__":
    main()
