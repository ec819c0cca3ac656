//! The EndpointSlice controller: for every Service with a selector, `discovery.k8s.io/v1`
//! EndpointSlices (IPv4) named `<service>-<random>`, labelled with the Service's name and
//! this controller as manager, owned by the Service (so the garbage collector removes them
//! with it), listing every selected pod with an IP and its ready/serving/terminating
//! conditions, at most [`MAX_ENDPOINTS_PER_SLICE`] per slice and one slice per set of
//! resolved ports. Endpoints stay in the slice they are in while they exist, so a new pod
//! rewrites one slice, not all. A Service that selects nothing keeps one empty slice, as
//! upstream. Runs on the loop of [`crate::endpoints`].

use std::collections::BTreeMap;
use std::sync::Arc;

use edgesite_api::predicates::is_pod_ready;
use futures::StreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use tracing::debug;

use crate::Error;
use crate::endpoints::{
    ServiceKey, ServiceSync, drive, hostname, output_labels, pod_ref, selected, selector,
    serving_ip, target_port, terminating,
};

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming a slice's manager.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`] (upstream's).
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// The EndpointSlice controller (see the module docs).
pub(crate) struct EndpointSliceSync {
    client: Client,
}

/// Runs the EndpointSlice controller until the returned future is dropped.
pub async fn run(client: Client, inf: &crate::informers::Informers) {
    drive(inf, EndpointSliceSync { client }).await;
}

/// The ports of a slice reaching `pod`, in the Service's order; `None` when the Service has
/// ports and none resolves on the pod.
fn slice_ports(ports: &[ServicePort], pod: &Pod) -> Option<Vec<EndpointPort>> {
    let out: Vec<EndpointPort> = ports
        .iter()
        .filter_map(|sp| {
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(target_port(sp, pod)?),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    (ports.is_empty() || !out.is_empty()).then_some(out)
}

fn endpoint(pod: &Pod, ip: &str, svc: &Service, publish_not_ready: bool) -> Endpoint {
    let ready = is_pod_ready(pod);
    let terminating = terminating(pod);
    Endpoint {
        addresses: vec![ip.to_owned()],
        conditions: Some(EndpointConditions {
            // Never ready while terminating, unless not-ready addresses are published.
            ready: Some(publish_not_ready || (ready && !terminating)),
            serving: Some(ready),
            terminating: Some(terminating),
        }),
        hostname: hostname(pod, svc),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(pod_ref(pod)),
        ..Endpoint::default()
    }
}

/// Identifies an endpoint across syncs: its pod.
fn endpoint_key(e: &Endpoint) -> String {
    match e.target_ref.as_ref() {
        Some(r) => format!(
            "{}/{}",
            r.name.as_deref().unwrap_or_default(),
            r.uid.as_deref().unwrap_or_default()
        ),
        None => e.addresses.join(","),
    }
}

fn ports_key(ports: &[EndpointPort]) -> String {
    serde_json::to_string(ports).unwrap_or_default()
}

/// Desired endpoints per port set: ports key → (ports, endpoint key → endpoint).
type Groups = BTreeMap<String, (Vec<EndpointPort>, BTreeMap<String, Endpoint>)>;

fn desired(svc: &Service, pods: &[Arc<Pod>]) -> Groups {
    let spec = svc.spec.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let ports = spec.ports.unwrap_or_default();
    let mut groups = Groups::new();
    for pod in selected(svc, pods) {
        let Some(ip) = serving_ip(pod).filter(|ip| !ip.contains(':')) else {
            continue;
        };
        let Some(eps) = slice_ports(&ports, pod) else {
            continue;
        };
        let e = endpoint(pod, ip, svc, publish_not_ready);
        groups
            .entry(ports_key(&eps))
            .or_insert_with(|| (eps, BTreeMap::new()))
            .1
            .insert(endpoint_key(&e), e);
    }
    groups
}

/// What to do with the slices of one Service.
#[derive(Debug, Default)]
struct Plan {
    /// Existing slices to write with new content.
    update: Vec<EndpointSlice>,
    /// Existing slices whose content stays (their labels may still need a write).
    keep: Vec<EndpointSlice>,
    /// New slices (ports, endpoints).
    create: Vec<(Option<Vec<EndpointPort>>, Vec<Endpoint>)>,
    /// Existing slices to delete.
    delete: Vec<String>,
}

/// Fits the desired endpoints into the existing slices, keeping each endpoint in the slice
/// it is in, filling slices with room before making new ones.
fn plan(mut groups: Groups, mut existing: Vec<EndpointSlice>) -> Plan {
    let mut plan = Plan::default();
    existing.sort_by_key(|s| s.name_any());
    let mut by_ports: BTreeMap<String, Vec<EndpointSlice>> = BTreeMap::new();
    for s in existing {
        let key = ports_key(s.ports.as_deref().unwrap_or_default());
        by_ports.entry(key).or_default().push(s);
    }
    if groups.is_empty() {
        // Keep (or make) one empty placeholder slice.
        let mut placeholder = None;
        for (_, slices) in by_ports {
            for s in slices {
                if placeholder.is_none() {
                    placeholder = Some(s);
                } else {
                    plan.delete.push(s.name_any());
                }
            }
        }
        match placeholder {
            Some(s) if s.endpoints.is_empty() && s.ports.as_ref().is_none_or(Vec::is_empty) => {
                plan.keep.push(s);
            }
            Some(mut s) => {
                s.endpoints = Vec::new();
                s.ports = None;
                plan.update.push(s);
            }
            None => plan.create.push((None, Vec::new())),
        }
        return plan;
    }
    for (key, (ports, mut want)) in std::mem::take(&mut groups) {
        let mut slices = by_ports.remove(&key).unwrap_or_default();
        let mut contents: Vec<Vec<Endpoint>> = slices
            .iter()
            .map(|s| {
                s.endpoints
                    .iter()
                    .filter_map(|e| want.remove(&endpoint_key(e)).map(|w| (e, w)))
                    .map(|(_, w)| w)
                    .collect()
            })
            .collect();
        let mut rest = want.into_values();
        for c in contents.iter_mut() {
            while c.len() < MAX_ENDPOINTS_PER_SLICE {
                match rest.next() {
                    Some(e) => c.push(e),
                    None => break,
                }
            }
        }
        let rest: Vec<Endpoint> = rest.collect();
        for chunk in rest.chunks(MAX_ENDPOINTS_PER_SLICE) {
            plan.create.push((Some(ports.clone()), chunk.to_vec()));
        }
        for (s, c) in slices.drain(..).zip(contents) {
            if c.is_empty() {
                plan.delete.push(s.name_any());
            } else if s.endpoints != c {
                let mut s = s;
                s.endpoints = c;
                plan.update.push(s);
            } else {
                plan.keep.push(s);
            }
        }
    }
    // Slices whose port set no pod has any more.
    for (_, slices) in by_ports {
        plan.delete.extend(slices.iter().map(|s| s.name_any()));
    }
    plan
}

fn owner(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn slice_labels(svc: &Service) -> BTreeMap<String, String> {
    let mut labels = output_labels(svc);
    labels.insert(SERVICE_NAME_LABEL.to_owned(), svc.name_any());
    labels.insert(MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned());
    labels
}

/// `<service>-`, shortened so the generated name stays within 63 characters.
fn generate_name(svc: &str) -> String {
    let mut prefix: String = svc.chars().take(57).collect();
    prefix.push('-');
    prefix
}

impl ServiceSync for EndpointSliceSync {
    const NAME: &'static str = "endpointslice";

    async fn sync(
        &self,
        key: &ServiceKey,
        svc: Option<&Service>,
        pods: &[Arc<Pod>],
    ) -> Result<(), Error> {
        let (ns, name) = key;
        // A deleted Service's slices go with it through their ownerReference.
        let Some(svc) = svc else { return Ok(()) };
        if selector(svc).is_none() {
            return Ok(());
        }
        let api: Api<EndpointSlice> = Api::namespaced(self.client.clone(), ns);
        let lp = ListParams::default().labels(&format!(
            "{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        ));
        let uid = svc.uid().unwrap_or_default();
        let mut existing = Vec::new();
        for s in api.list(&lp).await?.items {
            let ours = s.address_type == "IPv4"
                && s.owner_references()
                    .iter()
                    .any(|o| o.kind == "Service" && o.uid == uid);
            if ours {
                existing.push(s);
            } else if s.address_type == "IPv4" {
                // Left by an earlier Service of the same name.
                delete(&api, &s.name_any()).await?;
            }
        }
        let labels = slice_labels(svc);
        let plan = plan(desired(svc, pods), existing);
        for name in &plan.delete {
            delete(&api, name).await?;
        }
        let owners = vec![owner(svc)];
        let drifted = plan.keep.into_iter().filter(|s| {
            *s.labels() != labels || s.metadata.owner_references.as_ref() != Some(&owners)
        });
        for mut s in plan.update.into_iter().chain(drifted) {
            s.metadata.labels = Some(labels.clone());
            s.metadata.owner_references = Some(vec![owner(svc)]);
            api.replace(&s.name_any(), &PostParams::default(), &s)
                .await?;
        }
        for (ports, endpoints) in plan.create {
            let s = EndpointSlice {
                metadata: ObjectMeta {
                    generate_name: Some(generate_name(name)),
                    namespace: Some(ns.clone()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner(svc)]),
                    ..ObjectMeta::default()
                },
                address_type: "IPv4".to_owned(),
                endpoints,
                ports,
            };
            match api.create(&PostParams::default(), &s).await {
                Ok(created) => {
                    debug!(namespace = %ns, slice = %created.name_any(), "created endpoint slice");
                }
                Err(kube::Error::Api(s)) if s.code == 403 => {
                    debug!(namespace = %ns, %name, "namespace terminating; no endpoint slices");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn own_events(&self) -> BoxStream<'static, ServiceKey> {
        // Managed slices deleted by someone else are put back.
        let wc = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
        watcher(Api::<EndpointSlice>::all(self.client.clone()), wc)
            .default_backoff()
            .filter_map(|e| async move {
                match e {
                    Ok(watcher::Event::Delete(s)) => {
                        let svc = s.labels().get(SERVICE_NAME_LABEL)?.clone();
                        Some((s.namespace().unwrap_or_default(), svc))
                    }
                    _ => None,
                }
            })
            .boxed()
    }

    async fn leftovers(&self) -> Vec<ServiceKey> {
        Vec::new()
    }
}

async fn delete(api: &Api<EndpointSlice>, name: &str) -> Result<(), Error> {
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str) -> Endpoint {
        Endpoint {
            addresses: vec![format!("10.0.0.{}", name.len())],
            target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                name: Some(name.to_owned()),
                uid: Some(name.to_owned()),
                ..Default::default()
            }),
            ..Endpoint::default()
        }
    }

    fn port(p: i32) -> Vec<EndpointPort> {
        vec![EndpointPort {
            name: Some(String::new()),
            port: Some(p),
            protocol: Some("TCP".into()),
            app_protocol: None,
        }]
    }

    fn groups(p: i32, names: &[String]) -> Groups {
        let mut g = Groups::new();
        let eps = names
            .iter()
            .map(|n| (endpoint_key(&ep(n)), ep(n)))
            .collect();
        g.insert(ports_key(&port(p)), (port(p), eps));
        g
    }

    fn slice(name: &str, p: i32, eps: Vec<Endpoint>) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(port(p)),
        }
    }

    #[test]
    fn slices_fill_up_to_the_limit_and_endpoints_stay_put() {
        let names: Vec<String> = (0..250).map(|i| format!("p{i:03}")).collect();
        let p = plan(groups(80, &names), Vec::new());
        let sizes: Vec<usize> = p.create.iter().map(|(_, e)| e.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);

        // One pod gone from the first slice and a new one: only that slice changes.
        let first: Vec<Endpoint> = p.create[0].1.clone();
        let second: Vec<Endpoint> = p.create[1].1.clone();
        let mut now: Vec<String> = names.clone();
        now.retain(|n| n != "p000");
        now.push("zzz".into());
        let existing = vec![
            slice("a", 80, first.clone()),
            slice("b", 80, second.clone()),
        ];
        let p2 = plan(groups(80, &now), existing);
        let a = p2.update.iter().find(|s| s.name_any() == "a").unwrap();
        // `b` keeps its content.
        assert_eq!(p2.update.len(), 1);
        assert_eq!(p2.keep.len(), 1);
        assert_eq!(p2.keep[0].name_any(), "b");
        assert_eq!(p2.keep[0].endpoints, second);
        assert_eq!(a.endpoints.len(), 100);
        assert_eq!(a.endpoints[..99], first[1..]);
        assert_eq!(p2.create.iter().map(|(_, e)| e.len()).sum::<usize>(), 50);
        assert!(p2.delete.is_empty());
    }

    #[test]
    fn no_endpoints_leaves_one_empty_slice() {
        let p = plan(Groups::new(), Vec::new());
        assert_eq!(p.create.len(), 1);
        assert!(p.create[0].1.is_empty() && p.create[0].0.is_none());
        let existing = vec![slice("a", 80, vec![ep("x")]), slice("b", 81, vec![ep("y")])];
        let p = plan(Groups::new(), existing);
        assert_eq!(p.delete, vec!["b".to_owned()]);
        assert_eq!(p.update.len(), 1);
        assert!(p.update[0].endpoints.is_empty() && p.update[0].ports.is_none());
        // A port change moves endpoints to a new slice and drops the old one.
        let p = plan(
            groups(90, &["x".to_owned()]),
            vec![slice("a", 80, vec![ep("x")])],
        );
        assert_eq!(p.delete, vec!["a".to_owned()]);
        assert_eq!(p.create.len(), 1);
    }
}
