//! The apps group (`pkg/apis/apps/validation`): Deployments, ReplicaSets, DaemonSets,
//! StatefulSets and ControllerRevisions.

use serde_json::Value;

use super::core::{min_int, one_of, validate_pod_template};
use super::meta::{selector_is_empty, selector_matches, validate_label_selector};
use super::{FieldPath, get_i64, go_label_selector, go_string_map};
use crate::status::Cause;

const IMMUTABLE: &str = "field is immutable";
const PERCENT_MSG: &str = "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')";

/// The selector of a workload and its template: the selector is required, not empty,
/// valid, and must select the template's labels; the template must restart `Always`.
fn selector_and_template(spec: &Value, kind: &str, errs: &mut Vec<Cause>) {
    let path = FieldPath::new("spec");
    let sp = path.child("selector");
    let sel = spec.get("selector").filter(|s| !s.is_null());
    match sel {
        None => errs.push(Cause::required(sp.as_str(), "")),
        Some(sel) => {
            validate_label_selector(sel, &sp, errs);
            if sel.is_object() && selector_is_empty(sel) {
                errs.push(Cause::invalid_rendered(
                    sp.as_str(),
                    &go_label_selector(Some(sel)),
                    &format!("empty selector is invalid for {}", empty_name(kind)),
                ));
            }
        }
    }
    let tp = path.child("template");
    let Some(template) = spec.get("template").filter(|t| t.is_object()) else {
        errs.push(Cause::required(tp.as_str(), ""));
        return;
    };
    let labels = template.pointer("/metadata/labels");
    if let Some(sel) = sel.filter(|s| s.is_object() && !selector_is_empty(s))
        && !selector_matches(sel, labels)
    {
        errs.push(Cause::invalid_rendered(
            tp.child("metadata").child("labels").as_str(),
            &go_string_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    validate_pod_template(template, &tp, errs);
    let ps = tp.child("spec");
    if let Some(spec) = template.get("spec") {
        if let Some(rp) = spec.get("restartPolicy")
            && rp.as_str() != Some("Always")
        {
            errs.push(Cause::not_supported(
                ps.child("restartPolicy").as_str(),
                rp,
                &["Always"],
            ));
        }
        if spec
            .get("activeDeadlineSeconds")
            .is_some_and(|v| !v.is_null())
        {
            errs.push(Cause::forbidden(
                ps.child("activeDeadlineSeconds").as_str(),
                &format!(
                    "activeDeadlineSeconds in {} is not Supported",
                    if kind == "Deployment" {
                        "ReplicaSet"
                    } else {
                        kind
                    }
                ),
            ));
        }
    }
}

/// The kind as upstream's "empty selector" messages name it (ReplicaSet's reuses the
/// Deployment text).
fn empty_name(kind: &str) -> &'static str {
    match kind {
        "DaemonSet" => "daemonset",
        "StatefulSet" => "statefulset",
        _ => "deployment",
    }
}

/// An int-or-percent rolling-update bound; returns its value (percent number or int).
fn int_or_percent(v: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) -> Option<i64> {
    match v? {
        Value::Number(n) => {
            let n = n.as_i64().unwrap_or(-1);
            if n < 0 {
                errs.push(Cause::invalid_rendered(
                    path.as_str(),
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            Some(n)
        }
        Value::String(s) => {
            let digits = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
            match digits.and_then(|d| d.parse::<i64>().ok()) {
                Some(n) => Some(n),
                None => {
                    errs.push(Cause::invalid_rendered(path.as_str(), s, PERCENT_MSG));
                    None
                }
            }
        }
        other => {
            errs.push(Cause::invalid(path.as_str(), other, PERCENT_MSG));
            None
        }
    }
}

/// `maxUnavailable`/`maxSurge`: valid, not both 0, `maxUnavailable` at most 100%.
fn rolling_update(ru: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let up = path.child("maxUnavailable");
    let unavailable = int_or_percent(ru.get("maxUnavailable"), &up, errs);
    let surge = int_or_percent(ru.get("maxSurge"), &path.child("maxSurge"), errs);
    if unavailable == Some(0) && surge.unwrap_or(0) == 0 {
        let shown = ru.get("maxUnavailable").map_or("0".into(), |v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
        errs.push(Cause::invalid_rendered(
            up.as_str(),
            &shown,
            "may not be 0 when `maxSurge` is 0",
        ));
    }
    if let Some(Value::String(s)) = ru.get("maxUnavailable")
        && unavailable.is_some_and(|n| n > 100)
    {
        errs.push(Cause::invalid_rendered(
            up.as_str(),
            s,
            "must not be greater than 100%",
        ));
    }
}

fn spec_of<'a>(obj: &'a Value, errs: &mut Vec<Cause>) -> Option<&'a Value> {
    let spec = obj.get("spec").filter(|s| s.is_object());
    if spec.is_none() {
        errs.push(Cause::required("spec", ""));
    }
    spec
}

pub(crate) fn validate_deployment(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = spec_of(obj, errs) else {
        return;
    };
    let path = FieldPath::new("spec");
    min_int(spec, "replicas", 0, &path, errs);
    selector_and_template(spec, "Deployment", errs);
    if let Some(strategy) = spec.get("strategy") {
        let sp = path.child("strategy");
        one_of(strategy, "type", &["Recreate", "RollingUpdate"], &sp, errs);
        let ru = strategy.get("rollingUpdate").filter(|v| !v.is_null());
        match (strategy.get("type").and_then(Value::as_str), ru) {
            (Some("Recreate"), Some(_)) => errs.push(Cause::forbidden(
                sp.child("rollingUpdate").as_str(),
                "may not be specified when strategy `type` is 'Recreate'",
            )),
            (Some("RollingUpdate"), Some(ru)) => {
                rolling_update(ru, &sp.child("rollingUpdate"), errs);
            }
            _ => {}
        }
    }
    min_int(spec, "minReadySeconds", 0, &path, errs);
    min_int(spec, "revisionHistoryLimit", 0, &path, errs);
    min_int(spec, "progressDeadlineSeconds", 0, &path, errs);
    if let Some(pd) = get_i64(spec, "progressDeadlineSeconds")
        && pd <= get_i64(spec, "minReadySeconds").unwrap_or(0)
    {
        errs.push(Cause::invalid(
            path.child("progressDeadlineSeconds").as_str(),
            &pd.into(),
            "must be greater than minReadySeconds",
        ));
    }
}

pub(crate) fn validate_replicaset(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = spec_of(obj, errs) else {
        return;
    };
    let path = FieldPath::new("spec");
    min_int(spec, "replicas", 0, &path, errs);
    min_int(spec, "minReadySeconds", 0, &path, errs);
    selector_and_template(spec, "ReplicaSet", errs);
}

pub(crate) fn validate_daemonset(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = spec_of(obj, errs) else {
        return;
    };
    let path = FieldPath::new("spec");
    selector_and_template(spec, "DaemonSet", errs);
    min_int(spec, "minReadySeconds", 0, &path, errs);
    min_int(spec, "revisionHistoryLimit", 0, &path, errs);
    if let Some(us) = spec.get("updateStrategy") {
        let up = path.child("updateStrategy");
        one_of(us, "type", &["OnDelete", "RollingUpdate"], &up, errs);
        if us.get("type").and_then(Value::as_str) == Some("RollingUpdate")
            && let Some(ru) = us.get("rollingUpdate").filter(|v| !v.is_null())
        {
            rolling_update(ru, &up.child("rollingUpdate"), errs);
        }
    }
}

pub(crate) fn validate_statefulset(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = spec_of(obj, errs) else {
        return;
    };
    let path = FieldPath::new("spec");
    min_int(spec, "replicas", 0, &path, errs);
    min_int(spec, "minReadySeconds", 0, &path, errs);
    min_int(spec, "revisionHistoryLimit", 0, &path, errs);
    one_of(
        spec,
        "podManagementPolicy",
        &["OrderedReady", "Parallel"],
        &path,
        errs,
    );
    if let Some(us) = spec.get("updateStrategy") {
        let up = path.child("updateStrategy");
        one_of(us, "type", &["OnDelete", "RollingUpdate"], &up, errs);
        if let Some(ru) = us.get("rollingUpdate").filter(|v| !v.is_null()) {
            min_int(ru, "partition", 0, &up.child("rollingUpdate"), errs);
        }
    }
    if let Some(p) = spec.get("persistentVolumeClaimRetentionPolicy") {
        let pp = path.child("persistentVolumeClaimRetentionPolicy");
        for f in ["whenDeleted", "whenScaled"] {
            one_of(p, f, &["Retain", "Delete"], &pp, errs);
        }
    }
    selector_and_template(spec, "StatefulSet", errs);
}

/// `spec.selector` may not change (apps/v1).
pub(crate) fn validate_selector_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (o, n) = (old.pointer("/spec/selector"), new.pointer("/spec/selector"));
    if o.is_some() && o != n {
        errs.push(Cause::invalid_rendered(
            "spec.selector",
            &go_label_selector(n),
            IMMUTABLE,
        ));
    }
}

pub(crate) fn validate_statefulset_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    const MUTABLE: &[&str] = &[
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "revisionHistoryLimit",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let strip = |v: &Value| -> Value {
        let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = spec.as_object_mut() {
            for k in MUTABLE {
                m.remove(*k);
            }
        }
        spec
    };
    if strip(old) != strip(new) {
        errs.push(Cause::forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
        ));
    }
}

pub(crate) fn validate_revision(obj: &Value, errs: &mut Vec<Cause>) {
    min_int(obj, "revision", 0, &FieldPath::new(""), errs);
}

pub(crate) fn validate_revision_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    if old.get("data") != new.get("data") {
        errs.push(Cause::invalid(
            "data",
            new.get("data").unwrap_or(&Value::Null),
            IMMUTABLE,
        ));
    }
}
