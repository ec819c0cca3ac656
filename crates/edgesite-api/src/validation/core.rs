//! The core group (`pkg/apis/core/validation`): pods and pod templates, services,
//! config maps, secrets, namespaces, nodes, endpoints, events; also leases and endpoint
//! slices, which are as small.

use std::collections::BTreeSet;

use serde_json::Value;

use super::meta::{
    config_map_key, dns1123_label, dns1123_subdomain, label_value, port_name, port_num,
    qualified_name, validate_labels,
};
use super::{FieldPath, get_i64, get_list, get_map, get_str, go_string_slice};
use crate::quantity::Quantity;
use crate::status::Cause;

/// Upstream's `MaxSecretSize`, also the ConfigMap limit (1 MiB).
pub(crate) const MAX_DATA_SIZE: usize = 1024 * 1024;
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];
const IMMUTABLE: &str = "field is immutable";
const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// A required string field: `Required value` when absent or empty.
fn required_str<'a>(v: &'a Value, key: &str, path: &FieldPath, errs: &mut Vec<Cause>) -> &'a str {
    let got = get_str(v, key).unwrap_or_default();
    if got.is_empty() {
        errs.push(Cause::required(path.child(key).as_str(), ""));
    }
    got
}

/// An optional integer field that must be at least `min` (`must be greater than or equal
/// to N`, or for `min == 1` `must be greater than 0`).
pub(crate) fn min_int(v: &Value, key: &str, min: i64, path: &FieldPath, errs: &mut Vec<Cause>) {
    if let Some(n) = get_i64(v, key)
        && n < min
    {
        let msg = if min == 1 {
            "must be greater than 0".to_owned()
        } else {
            format!("must be greater than or equal to {min}")
        };
        errs.push(Cause::invalid(path.child(key).as_str(), &n.into(), &msg));
    }
}

/// An optional enumerated string field.
pub(crate) fn one_of(
    v: &Value,
    key: &str,
    supported: &[&str],
    path: &FieldPath,
    errs: &mut Vec<Cause>,
) {
    if let Some(x) = v.get(key).filter(|x| !x.is_null())
        && !x.as_str().is_some_and(|x| supported.contains(&x))
    {
        errs.push(Cause::not_supported(path.child(key).as_str(), x, supported));
    }
}

/// A pod template (`template` of a workload): its labels and its pod spec.
pub(crate) fn validate_pod_template(t: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    if let Some(md) = t.get("metadata") {
        let mp = path.child("metadata");
        validate_labels(md.get("labels"), &mp.child("labels"), errs);
    }
    match t.get("spec") {
        Some(spec) if spec.is_object() => validate_pod_spec(spec, &path.child("spec"), errs),
        _ => errs.push(Cause::required(path.child("spec").as_str(), "")),
    }
}

/// `ValidatePodSpec`: containers, volumes, policies.
pub(crate) fn validate_pod_spec(spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let mut volumes = BTreeSet::new();
    for (i, v) in get_list(spec, "volumes").iter().enumerate() {
        let p = path.child("volumes").index(i);
        let name = required_str(v, "name", &p, errs);
        if name.is_empty() {
            continue;
        }
        for msg in dns1123_label(name) {
            errs.push(Cause::invalid(p.child("name").as_str(), &s(name), &msg));
        }
        if !volumes.insert(name.to_owned()) {
            errs.push(Cause::duplicate(p.child("name").as_str(), &s(name)));
        }
    }
    let mut names = BTreeSet::new();
    let containers = get_list(spec, "containers");
    if containers.is_empty() {
        errs.push(Cause::required(path.child("containers").as_str(), ""));
    }
    for key in ["initContainers", "containers"] {
        for (i, c) in get_list(spec, key).iter().enumerate() {
            validate_container(c, &path.child(key).index(i), &volumes, &mut names, errs);
        }
    }
    one_of(
        spec,
        "restartPolicy",
        &["Always", "OnFailure", "Never"],
        path,
        errs,
    );
    one_of(
        spec,
        "dnsPolicy",
        &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        path,
        errs,
    );
    min_int(spec, "terminationGracePeriodSeconds", 0, path, errs);
    if let Some(n) = get_i64(spec, "activeDeadlineSeconds")
        && !(1..=i64::from(i32::MAX)).contains(&n)
    {
        errs.push(Cause::invalid(
            path.child("activeDeadlineSeconds").as_str(),
            &n.into(),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    if let Some(sel) = spec.get("nodeSelector") {
        validate_labels(Some(sel), &path.child("nodeSelector"), errs);
    }
    if let Some(sa) = get_str(spec, "serviceAccountName").filter(|n| !n.is_empty()) {
        for msg in dns1123_subdomain(sa) {
            errs.push(Cause::invalid(
                path.child("serviceAccountName").as_str(),
                &s(sa),
                &msg,
            ));
        }
    }
    for (i, t) in get_list(spec, "tolerations").iter().enumerate() {
        let p = path.child("tolerations").index(i);
        if let Some(k) = get_str(t, "key").filter(|k| !k.is_empty()) {
            for msg in qualified_name(k) {
                errs.push(Cause::invalid(p.child("key").as_str(), &s(k), &msg));
            }
        }
        one_of(t, "operator", &["Equal", "Exists"], &p, errs);
        one_of(
            t,
            "effect",
            &["", "NoExecute", "NoSchedule", "PreferNoSchedule"],
            &p,
            errs,
        );
    }
}

fn validate_container(
    c: &Value,
    path: &FieldPath,
    volumes: &BTreeSet<String>,
    names: &mut BTreeSet<String>,
    errs: &mut Vec<Cause>,
) {
    let name = required_str(c, "name", path, errs);
    if !name.is_empty() {
        for msg in dns1123_label(name) {
            errs.push(Cause::invalid(path.child("name").as_str(), &s(name), &msg));
        }
        if !names.insert(name.to_owned()) {
            errs.push(Cause::duplicate(path.child("name").as_str(), &s(name)));
        }
    }
    let image = required_str(c, "image", path, errs);
    if !image.is_empty() && image.trim() != image {
        errs.push(Cause::invalid(
            path.child("image").as_str(),
            &s(image),
            "must not have leading or trailing whitespace",
        ));
    }
    one_of(
        c,
        "imagePullPolicy",
        &["Always", "IfNotPresent", "Never"],
        path,
        errs,
    );
    one_of(
        c,
        "terminationMessagePolicy",
        &["File", "FallbackToLogsOnError"],
        path,
        errs,
    );
    let mut port_names = BTreeSet::new();
    for (i, p) in get_list(c, "ports").iter().enumerate() {
        let pp = path.child("ports").index(i);
        if let Some(n) = get_str(p, "name").filter(|n| !n.is_empty()) {
            for msg in port_name(n) {
                errs.push(Cause::invalid(pp.child("name").as_str(), &s(n), &msg));
            }
            if !port_names.insert(n.to_owned()) {
                errs.push(Cause::duplicate(pp.child("name").as_str(), &s(n)));
            }
        }
        match get_i64(p, "containerPort") {
            None | Some(0) => errs.push(Cause::required(pp.child("containerPort").as_str(), "")),
            Some(n) => {
                for msg in port_num(n) {
                    errs.push(Cause::invalid(
                        pp.child("containerPort").as_str(),
                        &n.into(),
                        &msg,
                    ));
                }
            }
        }
        if let Some(n) = get_i64(p, "hostPort").filter(|n| *n != 0) {
            for msg in port_num(n) {
                errs.push(Cause::invalid(
                    pp.child("hostPort").as_str(),
                    &n.into(),
                    &msg,
                ));
            }
        }
        protocol(p, &pp, errs);
    }
    for (i, e) in get_list(c, "env").iter().enumerate() {
        let ep = path.child("env").index(i);
        let n = required_str(e, "name", &ep, errs);
        if !n.is_empty() && (n.contains('=') || !n.bytes().all(|b| (0x20..0x7f).contains(&b))) {
            errs.push(Cause::invalid(
                ep.child("name").as_str(),
                &s(n),
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
    }
    for (i, m) in get_list(c, "volumeMounts").iter().enumerate() {
        let mp = path.child("volumeMounts").index(i);
        let n = required_str(m, "name", &mp, errs);
        if !n.is_empty() && !volumes.contains(n) {
            errs.push(Cause::not_found(mp.child("name").as_str(), &s(n)));
        }
        required_str(m, "mountPath", &mp, errs);
    }
    validate_resources(c.get("resources"), &path.child("resources"), errs);
}

fn protocol(p: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    match p.get("protocol") {
        None | Some(Value::Null) => errs.push(Cause::required(path.child("protocol").as_str(), "")),
        Some(x) if x.as_str().is_some_and(|x| PROTOCOLS.contains(&x)) => {}
        Some(x) => errs.push(Cause::not_supported(
            path.child("protocol").as_str(),
            x,
            PROTOCOLS,
        )),
    }
}

fn quantity(v: &Value) -> Option<Quantity> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

fn validate_resources(r: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(r) = r else {
        return;
    };
    for key in ["limits", "requests"] {
        for (name, v) in get_map(r, key).into_iter().flatten() {
            let p = path.child(key).key(name);
            match quantity(v) {
                None => errs.push(Cause::invalid(
                    p.as_str(),
                    v,
                    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )),
                Some(q) if q.signum() < 0 => errs.push(Cause::invalid(
                    p.as_str(),
                    v,
                    "must be greater than or equal to 0",
                )),
                Some(_) => {}
            }
        }
    }
    let limits = get_map(r, "limits");
    for (name, req) in get_map(r, "requests").into_iter().flatten() {
        let Some(lim) = limits.and_then(|l| l.get(name)) else {
            continue;
        };
        if let (Some(rq), Some(lq)) = (quantity(req), quantity(lim))
            && rq > lq
        {
            let lim_s = match lim {
                Value::String(x) => x.clone(),
                other => other.to_string(),
            };
            errs.push(Cause::invalid(
                path.child("requests").key(name).as_str(),
                req,
                &format!("must be less than or equal to {name} limit of {lim_s}"),
            ));
        }
    }
}

pub(crate) fn validate_pod(obj: &Value, errs: &mut Vec<Cause>) {
    match obj.get("spec") {
        Some(spec) if spec.is_object() => validate_pod_spec(spec, &FieldPath::new("spec"), errs),
        _ => errs.push(Cause::required("spec", "")),
    }
}

/// `ValidatePodUpdate`'s spec rule: only images, `activeDeadlineSeconds`, added tolerations,
/// removed scheduling gates and a negative grace period raised to 1 may change.
pub(crate) fn validate_pod_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get("spec")) else {
        return;
    };
    let mut normalized = ns.clone();
    let Some(m) = normalized.as_object_mut() else {
        return;
    };
    for key in ["containers", "initContainers"] {
        let old_list = get_list(os, key);
        if let Some(list) = m.get_mut(key).and_then(Value::as_array_mut)
            && list.len() == old_list.len()
        {
            for (c, oc) in list.iter_mut().zip(old_list) {
                if let (Some(c), Some(img)) = (c.as_object_mut(), oc.get("image")) {
                    c.insert("image".into(), img.clone());
                }
            }
        }
    }
    // activeDeadlineSeconds may be set, or lowered, but not removed or raised.
    match (
        get_i64(os, "activeDeadlineSeconds"),
        get_i64(ns, "activeDeadlineSeconds"),
    ) {
        (None, Some(_)) => {
            m.remove("activeDeadlineSeconds");
        }
        (Some(o), Some(n)) if n <= o => {
            m.insert("activeDeadlineSeconds".into(), o.into());
        }
        _ => {}
    }
    let old_tol = get_list(os, "tolerations");
    if old_tol
        .iter()
        .all(|t| get_list(ns, "tolerations").contains(t))
    {
        match os.get("tolerations") {
            Some(t) => m.insert("tolerations".into(), t.clone()),
            None => m.remove("tolerations"),
        };
    }
    let new_gates = get_list(ns, "schedulingGates");
    if new_gates
        .iter()
        .all(|g| get_list(os, "schedulingGates").contains(g))
    {
        match os.get("schedulingGates") {
            Some(g) => m.insert("schedulingGates".into(), g.clone()),
            None => m.remove("schedulingGates"),
        };
    }
    if get_i64(os, "terminationGracePeriodSeconds").is_some_and(|g| g < 0)
        && get_i64(ns, "terminationGracePeriodSeconds") == Some(1)
        && let Some(g) = os.get("terminationGracePeriodSeconds")
    {
        m.insert("terminationGracePeriodSeconds".into(), g.clone());
    }
    if &normalized != os {
        errs.push(Cause::forbidden("spec", POD_UPDATE_MSG));
    }
}

fn is_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

pub(crate) fn validate_service(obj: &Value, errs: &mut Vec<Cause>) {
    let path = FieldPath::new("spec");
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        errs.push(Cause::required("spec", ""));
        return;
    };
    let ty = get_str(spec, "type").unwrap_or("ClusterIP");
    one_of(
        spec,
        "type",
        &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        &path,
        errs,
    );
    one_of(spec, "sessionAffinity", &["ClientIP", "None"], &path, errs);
    let cluster_ip = get_str(spec, "clusterIP").unwrap_or_default();
    let headless = cluster_ip == "None";
    let ports = get_list(spec, "ports");
    if ty == "ExternalName" {
        let ext = get_str(spec, "externalName").unwrap_or_default();
        if ext.is_empty() {
            errs.push(Cause::required(path.child("externalName").as_str(), ""));
        } else {
            for msg in dns1123_subdomain(ext.trim_end_matches('.')) {
                errs.push(Cause::invalid(
                    path.child("externalName").as_str(),
                    &s(ext),
                    &msg,
                ));
            }
        }
    } else if ports.is_empty() && !headless {
        errs.push(Cause::required(path.child("ports").as_str(), ""));
    }
    if !cluster_ip.is_empty() && !headless && !is_ip(cluster_ip) {
        errs.push(Cause::invalid(
            path.child("clusterIPs").index(0).as_str(),
            &s(cluster_ip),
            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
        ));
    }
    let mut names = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        let pp = path.child("ports").index(i);
        let name = get_str(p, "name").unwrap_or_default();
        if name.is_empty() {
            if ports.len() > 1 {
                errs.push(Cause::required(pp.child("name").as_str(), ""));
            }
        } else {
            for msg in dns1123_label(name) {
                errs.push(Cause::invalid(pp.child("name").as_str(), &s(name), &msg));
            }
            if !names.insert(name.to_owned()) {
                errs.push(Cause::duplicate(pp.child("name").as_str(), &s(name)));
            }
        }
        let port = get_i64(p, "port").unwrap_or(0);
        for msg in port_num(port) {
            errs.push(Cause::invalid(
                pp.child("port").as_str(),
                &port.into(),
                &msg,
            ));
        }
        protocol(p, &pp, errs);
        match p.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                for msg in port_num(n) {
                    errs.push(Cause::invalid(
                        pp.child("targetPort").as_str(),
                        &n.into(),
                        &msg,
                    ));
                }
            }
            Some(Value::String(t)) => {
                for msg in port_name(t) {
                    errs.push(Cause::invalid(pp.child("targetPort").as_str(), &s(t), &msg));
                }
            }
            _ => {}
        }
        if let Some(np) = get_i64(p, "nodePort").filter(|n| *n != 0) {
            if ty == "ClusterIP" {
                errs.push(Cause::forbidden(
                    pp.child("nodePort").as_str(),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else {
                for msg in port_num(np) {
                    errs.push(Cause::invalid(
                        pp.child("nodePort").as_str(),
                        &np.into(),
                        &msg,
                    ));
                }
            }
        }
        let key = (port, get_str(p, "protocol").unwrap_or("TCP").to_owned());
        if !seen.insert(key) {
            errs.push(Cause::duplicate(pp.as_str(), p));
        }
    }
    if let Some(sel) = spec.get("selector") {
        validate_labels(Some(sel), &path.child("selector"), errs);
    }
    one_of(
        spec,
        "internalTrafficPolicy",
        &["Cluster", "Local"],
        &path,
        errs,
    );
    one_of(
        spec,
        "ipFamilyPolicy",
        &["PreferDualStack", "RequireDualStack", "SingleStack"],
        &path,
        errs,
    );
}

pub(crate) fn validate_service_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get("spec")) else {
        return;
    };
    let external = |s: &Value| get_str(s, "type") == Some("ExternalName");
    if external(os) || external(ns) {
        return;
    }
    let old_ip = get_str(os, "clusterIP").unwrap_or_default();
    let new_ip = get_str(ns, "clusterIP").unwrap_or_default();
    if !old_ip.is_empty() && old_ip != new_ip {
        errs.push(Cause::invalid("spec.clusterIP", &s(new_ip), IMMUTABLE));
    }
    let old_ips = os.get("clusterIPs");
    if old_ips.is_some_and(|v| v.as_array().is_some_and(|a| !a.is_empty()))
        && ns
            .get("clusterIPs")
            .and_then(|v| v.as_array())
            .and_then(|a| a.first())
            != old_ips.and_then(|v| v.as_array()).and_then(|a| a.first())
    {
        errs.push(Cause::invalid_rendered(
            "spec.clusterIPs[0]",
            &go_string_slice(ns.get("clusterIPs")),
            "may not change once set",
        ));
    }
}

/// Keys and values of the maps `fields` (name, whether its values are base64) at the top
/// level of a ConfigMap or Secret; returns the summed decoded size. With `dup_check`, a key
/// of a later map that is also in the first is an error (ConfigMap `binaryData` vs `data`).
fn validate_data_keys(
    obj: &Value,
    fields: &[(&str, bool)],
    dup_check: bool,
    errs: &mut Vec<Cause>,
) -> usize {
    let mut total = 0;
    let first = fields.first().map(|f| f.0).unwrap_or_default();
    for (i, (key, base64)) in fields.iter().enumerate() {
        let Some(m) = get_map(obj, key) else {
            continue;
        };
        for (k, v) in m {
            let p = FieldPath::new(key).key(k);
            for msg in config_map_key(k) {
                errs.push(Cause::invalid(p.as_str(), &s(k), &msg));
            }
            if dup_check && i > 0 && get_map(obj, first).is_some_and(|f| f.contains_key(k)) {
                errs.push(Cause::invalid(
                    p.as_str(),
                    &s(k),
                    &format!("duplicate of key present in {first}"),
                ));
            }
            match v.as_str() {
                Some(text) if !base64 => total += text.len(),
                Some(text) => match base64_len(text) {
                    Some(n) => total += n,
                    None => errs.push(Cause::invalid(
                        p.as_str(),
                        &s("<secret contents redacted>"),
                        "illegal base64 data",
                    )),
                },
                None => errs.push(Cause::invalid(p.as_str(), v, "must be a string")),
            }
        }
    }
    total
}

/// The decoded length of standard base64 `text`, `None` when it is not base64.
fn base64_len(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    if !b.len().is_multiple_of(4) {
        return None;
    }
    let pad = b.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2
        || !b[..b.len() - pad]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
    {
        return None;
    }
    Some(b.len() / 4 * 3 - pad)
}

pub(crate) fn validate_configmap(obj: &Value, errs: &mut Vec<Cause>) {
    let total = validate_data_keys(obj, &[("data", false), ("binaryData", true)], true, errs);
    if total > MAX_DATA_SIZE {
        errs.push(Cause::too_long("", MAX_DATA_SIZE));
    }
}

fn immutable_data(old: &Value, new: &Value, keys: &[&str], errs: &mut Vec<Cause>) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        errs.push(Cause::forbidden(
            "immutable",
            "field is immutable when `immutable` is set",
        ));
    }
    for key in keys {
        let empty =
            |v: Option<&Value>| v.is_none_or(|v| v.as_object().is_none_or(|m| m.is_empty()));
        let (o, n) = (old.get(*key), new.get(*key));
        if o != n && !(empty(o) && empty(n)) {
            errs.push(Cause::forbidden(
                key,
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

pub(crate) fn validate_configmap_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    immutable_data(old, new, &["data", "binaryData"], errs);
}

pub(crate) fn validate_secret(obj: &Value, errs: &mut Vec<Cause>) {
    let total = validate_data_keys(obj, &[("data", true), ("stringData", false)], false, errs);
    if total > MAX_DATA_SIZE {
        errs.push(Cause::too_long("data", MAX_DATA_SIZE));
    }
    let has = |k: &str| {
        get_map(obj, "data").is_some_and(|m| m.contains_key(k))
            || get_map(obj, "stringData").is_some_and(|m| m.contains_key(k))
    };
    let require = |k: &str, errs: &mut Vec<Cause>| {
        if !has(k) {
            errs.push(Cause::required(FieldPath::new("data").key(k).as_str(), ""));
        }
    };
    match get_str(obj, "type").unwrap_or("Opaque") {
        "kubernetes.io/service-account-token" => {
            let annotated = obj
                .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty());
            if !annotated {
                errs.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "",
                ));
            }
        }
        "kubernetes.io/dockercfg" => require(".dockercfg", errs),
        "kubernetes.io/dockerconfigjson" => require(".dockerconfigjson", errs),
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            for k in ["username", "password"] {
                errs.push(Cause::required(FieldPath::new("data").key(k).as_str(), ""));
            }
        }
        "kubernetes.io/ssh-auth" => require("ssh-privatekey", errs),
        "kubernetes.io/tls" => {
            require("tls.key", errs);
            require("tls.crt", errs);
        }
        _ => {}
    }
}

pub(crate) fn validate_secret_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (o, n) = (
        get_str(old, "type").unwrap_or("Opaque"),
        get_str(new, "type").unwrap_or("Opaque"),
    );
    if o != n {
        errs.push(Cause::invalid("type", &s(n), IMMUTABLE));
    }
    immutable_data(old, new, &["data"], errs);
}

pub(crate) fn validate_namespace(obj: &Value, errs: &mut Vec<Cause>) {
    for f in obj
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = f.as_str().unwrap_or_default();
        for msg in qualified_name(name) {
            errs.push(Cause::invalid("spec.finalizers", f, &msg));
        }
        if !name.contains('/') && name != "kubernetes" {
            errs.push(Cause::invalid(
                "spec.finalizers",
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

pub(crate) fn validate_node(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    let path = FieldPath::new("spec");
    for (i, t) in get_list(spec, "taints").iter().enumerate() {
        let p = path.child("taints").index(i);
        let key = required_str(t, "key", &p, errs);
        if !key.is_empty() {
            for msg in qualified_name(key) {
                errs.push(Cause::invalid(p.child("key").as_str(), &s(key), &msg));
            }
        }
        if let Some(v) = get_str(t, "value") {
            for msg in label_value(v) {
                errs.push(Cause::invalid(p.child("value").as_str(), &s(v), &msg));
            }
        }
        match t.get("effect") {
            None => errs.push(Cause::required(p.child("effect").as_str(), "")),
            Some(_) => one_of(
                t,
                "effect",
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
                &p,
                errs,
            ),
        }
    }
    if let Some(cidr) = get_str(spec, "podCIDR").filter(|c| !c.is_empty()) {
        let ok = cidr
            .split_once('/')
            .is_some_and(|(ip, len)| is_ip(ip) && len.parse::<u8>().is_ok_and(|l| l <= 128));
        if !ok {
            errs.push(Cause::invalid(
                "spec.podCIDR",
                &s(cidr),
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
}

pub(crate) fn validate_endpoints(obj: &Value, errs: &mut Vec<Cause>) {
    for (i, subset) in get_list(obj, "subsets").iter().enumerate() {
        let sp = FieldPath::new("subsets").index(i);
        for key in ["addresses", "notReadyAddresses"] {
            for (j, a) in get_list(subset, key).iter().enumerate() {
                let ap = sp.child(key).index(j);
                let ip = required_str(a, "ip", &ap, errs);
                if !ip.is_empty() && !is_ip(ip) {
                    errs.push(Cause::invalid(
                        ap.child("ip").as_str(),
                        &s(ip),
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                    ));
                }
            }
        }
        for (j, p) in get_list(subset, "ports").iter().enumerate() {
            let pp = sp.child("ports").index(j);
            let port = get_i64(p, "port").unwrap_or(0);
            for msg in port_num(port) {
                errs.push(Cause::invalid(
                    pp.child("port").as_str(),
                    &port.into(),
                    &msg,
                ));
            }
            protocol(p, &pp, errs);
        }
    }
}

pub(crate) fn validate_endpointslice(obj: &Value, errs: &mut Vec<Cause>) {
    const TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
    match obj.get("addressType") {
        None => errs.push(Cause::required("addressType", "")),
        Some(_) => one_of(obj, "addressType", TYPES, &FieldPath::new(""), errs),
    }
    for (i, e) in get_list(obj, "endpoints").iter().enumerate() {
        let ep = FieldPath::new("endpoints").index(i);
        if get_list(e, "addresses").is_empty() {
            errs.push(Cause::required(ep.child("addresses").as_str(), ""));
        }
    }
    for (i, p) in get_list(obj, "ports").iter().enumerate() {
        let pp = FieldPath::new("ports").index(i);
        if let Some(port) = get_i64(p, "port") {
            for msg in port_num(port) {
                errs.push(Cause::invalid(
                    pp.child("port").as_str(),
                    &port.into(),
                    &msg,
                ));
            }
        }
        protocol(p, &pp, errs);
    }
}

pub(crate) fn validate_event(obj: &Value, errs: &mut Vec<Cause>) {
    let ns = obj
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if let Some(io_ns) = obj
        .pointer("/involvedObject/namespace")
        .and_then(Value::as_str)
        && !io_ns.is_empty()
        && io_ns != ns
    {
        errs.push(Cause::invalid(
            "involvedObject.namespace",
            &s(io_ns),
            "does not match event.namespace",
        ));
    }
}

pub(crate) fn validate_lease(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    let path = FieldPath::new("spec");
    min_int(spec, "leaseDurationSeconds", 1, &path, errs);
    min_int(spec, "leaseTransitions", 0, &path, errs);
}
