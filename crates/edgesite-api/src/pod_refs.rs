//! The objects a pod references: the ConfigMaps, Secrets, PersistentVolumeClaims and the
//! ServiceAccount a node needs to run it. The agent watches exactly these (never a whole
//! namespace), and a node authorizer allows a node exactly these.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{Container, Pod, Volume, VolumeProjection};

/// The kind of a referenced object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefKind {
    /// core/v1 ConfigMap.
    ConfigMap,
    /// core/v1 Secret.
    Secret,
    /// core/v1 PersistentVolumeClaim.
    PersistentVolumeClaim,
    /// core/v1 ServiceAccount.
    ServiceAccount,
}

/// One object a pod references, in the pod's namespace.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodRef {
    /// Its kind.
    pub kind: RefKind,
    /// Its namespace (the pod's).
    pub namespace: String,
    /// Its name.
    pub name: String,
}

/// Everything `pod` references: volumes (configMap, secret, projected sources,
/// persistentVolumeClaim), env `valueFrom` and `envFrom` of init, regular and ephemeral
/// containers, imagePullSecrets and the service account.
pub fn pod_refs(pod: &Pod) -> BTreeSet<PodRef> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeSet::new();
    let mut add = |kind: RefKind, name: &str| {
        if !name.is_empty() {
            out.insert(PodRef {
                kind,
                namespace: ns.clone(),
                name: name.to_owned(),
            });
        }
    };
    let Some(spec) = &pod.spec else { return out };
    for v in spec.volumes.iter().flatten() {
        volume_refs(v, &mut add);
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter());
    for c in containers {
        container_refs(c, &mut add);
    }
    for c in spec.ephemeral_containers.iter().flatten() {
        for e in c.env.iter().flatten() {
            if let Some(from) = &e.value_from {
                if let Some(r) = &from.config_map_key_ref {
                    add(RefKind::ConfigMap, &r.name);
                }
                if let Some(r) = &from.secret_key_ref {
                    add(RefKind::Secret, &r.name);
                }
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                add(RefKind::ConfigMap, &r.name);
            }
            if let Some(r) = &f.secret_ref {
                add(RefKind::Secret, &r.name);
            }
        }
    }
    for s in spec.image_pull_secrets.iter().flatten() {
        add(RefKind::Secret, &s.name);
    }
    if let Some(sa) = spec
        .service_account_name
        .as_deref()
        .or(spec.service_account.as_deref())
    {
        add(RefKind::ServiceAccount, sa);
    }
    out
}

fn volume_refs(v: &Volume, add: &mut impl FnMut(RefKind, &str)) {
    if let Some(cm) = &v.config_map {
        add(RefKind::ConfigMap, &cm.name);
    }
    if let Some(s) = &v.secret {
        add(RefKind::Secret, s.secret_name.as_deref().unwrap_or(""));
    }
    if let Some(pvc) = &v.persistent_volume_claim {
        add(RefKind::PersistentVolumeClaim, &pvc.claim_name);
    }
    // A generic ephemeral volume's claim (`<pod>-<volume>`) is left to the storage work.
    for p in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
        projection_refs(p, add);
    }
}

fn projection_refs(p: &VolumeProjection, add: &mut impl FnMut(RefKind, &str)) {
    if let Some(cm) = &p.config_map {
        add(RefKind::ConfigMap, &cm.name);
    }
    if let Some(s) = &p.secret {
        add(RefKind::Secret, &s.name);
    }
}

fn container_refs(c: &Container, add: &mut impl FnMut(RefKind, &str)) {
    for e in c.env.iter().flatten() {
        if let Some(from) = &e.value_from {
            if let Some(r) = &from.config_map_key_ref {
                add(RefKind::ConfigMap, &r.name);
            }
            if let Some(r) = &from.secret_key_ref {
                add(RefKind::Secret, &r.name);
            }
        }
    }
    for f in c.env_from.iter().flatten() {
        if let Some(r) = &f.config_map_ref {
            add(RefKind::ConfigMap, &r.name);
        }
        if let Some(r) = &f.secret_ref {
            add(RefKind::Secret, &r.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_place_a_pod_names_an_object_is_found() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {
                "serviceAccountName": "robot",
                "imagePullSecrets": [{"name": "pull"}],
                "volumes": [
                    {"name": "a", "configMap": {"name": "cm-vol"}},
                    {"name": "b", "secret": {"secretName": "s-vol"}},
                    {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "d", "projected": {"sources": [
                        {"configMap": {"name": "cm-proj"}},
                        {"secret": {"name": "s-proj"}},
                        {"serviceAccountToken": {"path": "token"}}
                    ]}},
                    {"name": "e", "emptyDir": {}}
                ],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "s-init"}}]}],
                "containers": [{"name": "c", "env": [
                    {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "cm-env", "key": "k"}}},
                    {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s-env", "key": "k"}}},
                    {"name": "Z", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "W", "value": "plain"}
                ], "envFrom": [{"configMapRef": {"name": "cm-from"}, "prefix": "P_"}]}]
            }
        }))
        .unwrap();
        let got: Vec<String> = pod_refs(&pod)
            .into_iter()
            .map(|r| {
                assert_eq!(r.namespace, "shop");
                format!("{:?}/{}", r.kind, r.name)
            })
            .collect();
        assert_eq!(
            got,
            [
                "ConfigMap/cm-env",
                "ConfigMap/cm-from",
                "ConfigMap/cm-proj",
                "ConfigMap/cm-vol",
                "Secret/pull",
                "Secret/s-env",
                "Secret/s-init",
                "Secret/s-proj",
                "Secret/s-vol",
                "PersistentVolumeClaim/data",
                "ServiceAccount/robot",
            ]
        );
    }

    #[test]
    fn a_pod_without_references_has_none() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "d"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap();
        assert!(pod_refs(&pod).is_empty());
    }
}
