//! The `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap: present in every
//! active namespace, put back after deletion, and the ConfigMap's content restored after a
//! change.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use anyhow::Result;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

mod support;
use support::{Cluster, eventually};

#[tokio::test]
async fn every_namespace_gets_a_default_service_account_and_the_root_ca() -> Result<()> {
    let c = Cluster::start().await?;
    let ca = c.server.ca_cert_pem().to_owned();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));

    // The built-in namespaces and a new one.
    let namespaces: Api<Namespace> = Api::all(c.client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "team-a"}}))?,
        )
        .await?;
    for ns in ["default", "kube-system", "kube-public", "team-a"] {
        let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), ns);
        let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), ns);
        eventually(10, &format!("default SA and root CA in {ns}"), || async {
            let sa = sas.get_opt("default").await?;
            let cm = cms.get_opt("kube-root-ca.crt").await?;
            Ok(sa.is_some()
                && cm.is_some_and(|cm| cm.data.as_ref().and_then(|d| d.get("ca.crt")) == Some(&ca)))
        })
        .await?;
    }

    // Deleted: they come back (as new objects).
    let sas: Api<ServiceAccount> = Api::namespaced(c.client.clone(), "team-a");
    let cms: Api<ConfigMap> = Api::namespaced(c.client.clone(), "team-a");
    let old_sa = sas.get("default").await?.uid();
    let old_cm = cms.get("kube-root-ca.crt").await?.uid();
    sas.delete("default", &DeleteParams::default()).await?;
    cms.delete("kube-root-ca.crt", &DeleteParams::default())
        .await?;
    eventually(10, "default SA and root CA recreated", || async {
        let sa = sas.get_opt("default").await?;
        let cm = cms.get_opt("kube-root-ca.crt").await?;
        Ok(sa.is_some_and(|s| s.uid() != old_sa) && cm.is_some_and(|m| m.uid() != old_cm))
    })
    .await?;

    // Drift: the certificate is put back, extra keys dropped.
    cms.patch(
        "kube-root-ca.crt",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"ca.crt": "tampered", "extra": "x"}})),
    )
    .await?;
    eventually(10, "root CA content restored", || async {
        let cm = cms.get("kube-root-ca.crt").await?;
        let data = cm.data.unwrap_or_default();
        Ok(data.len() == 1 && data.get("ca.crt") == Some(&ca))
    })
    .await?;

    // A terminating namespace gets nothing back, and goes away.
    namespaces
        .delete("team-a", &DeleteParams::default())
        .await?;
    eventually(20, "team-a deleted", || async {
        Ok(namespaces.get_opt("team-a").await?.is_none())
    })
    .await?;
    c.stop().await;
    Ok(())
}
