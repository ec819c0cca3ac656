//! The objects the API-server bench creates: small ConfigMaps and realistic pods (what a
//! Deployment's ReplicaSet stamps out, ~1.5 KB as the server returns them).

use hyper::body::Bytes;
use serde_json::json;

/// A ConfigMap with a few labels and ~250 bytes of data.
pub fn config_map(name: &str) -> Bytes {
    let body = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/name": "bench", "app.kubernetes.io/component": "config"},
        },
        "data": {
            "LOG_LEVEL": "info",
            "settings.yaml": "listen: 0.0.0.0:8080\nupstream: http://backend.shop.svc:9000\n\
                              timeout: 30s\nretries: 3\ncache:\n  size: 128Mi\n  ttl: 5m\n\
                              features:\n  - compression\n  - tracing\n",
        },
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// The node the pods are bound to ([`node`] creates it, so that no controller treats the pods
/// as orphans).
pub const NODE: &str = "edge-node-3";

/// A pod as a Deployment's pods look once bound: labels, annotations, one container with a
/// port, env, resources, probes and mounts, a config and the service-account volume, a node
/// name (~1.35 KB sent; the server adds defaults, `managedFields` and the metadata it owns).
/// No owner reference: the garbage collector would delete a pod whose owner does not exist.
pub fn pod(name: &str) -> Bytes {
    let body = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "web", "pod-template-hash": "7f9c6d5b8", "tier": "frontend"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
        },
        "spec": {
            "containers": [{
                "name": "web",
                "image": "registry.example.com/shop/web:1.24.3",
                "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "LOG_LEVEL", "value": "info"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "256Mi"},
                },
                "readinessProbe": {
                    "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                    "periodSeconds": 10,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/livez", "port": 8080, "scheme": "HTTP"},
                    "initialDelaySeconds": 15,
                    "periodSeconds": 20,
                },
                "volumeMounts": [
                    {"name": "config", "mountPath": "/etc/web"},
                    {
                        "name": "kube-api-access",
                        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                        "readOnly": true,
                    },
                ],
            }],
            "volumes": [
                {"name": "config", "configMap": {"name": "web-config", "defaultMode": 420}},
                {"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                ]}},
            ],
            "nodeName": NODE,
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
        },
    });
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// The node of [`NODE`].
pub fn node() -> Bytes {
    let body = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}});
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// A namespace.
pub fn namespace(name: &str) -> Bytes {
    let body = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// The merge patch of watch round `round`: one annotation whose value is [`round_marker`].
pub fn round_patch(round: usize) -> Bytes {
    let body = json!({"metadata": {"annotations": {"bench/round": round_marker(round)}}});
    Bytes::from(serde_json::to_vec(&body).expect("a JSON value serializes"))
}

/// The annotation value of watch round `round`; watchers look for it, quoted, in event lines.
pub fn round_marker(round: usize) -> String {
    format!("bench-round-{round:05}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_have_the_intended_sizes() {
        let cm = config_map("cm-000001");
        assert!((300..600).contains(&cm.len()), "{}", cm.len());
        // What the client sends; the server adds uid, timestamps and the resource version.
        let pod = pod("web-7f9c6d5b8-000001");
        assert!((1250..1450).contains(&pod.len()), "{}", pod.len());
    }

    #[test]
    fn round_patch_carries_the_marker() {
        let patch = round_patch(7);
        let text = std::str::from_utf8(&patch).unwrap();
        assert!(text.contains(&format!("\"{}\"", round_marker(7))), "{text}");
    }
}
