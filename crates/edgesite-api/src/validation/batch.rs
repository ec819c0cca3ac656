//! The batch group (`pkg/apis/batch/validation`): Jobs and CronJobs, including the check
//! that a server-generated Job selector is intact and a minimal cron-schedule parser.

use serde_json::Value;

use super::core::{min_int, one_of, validate_pod_template};
use super::defaults::CONTROLLER_UID_LABEL;
use super::meta::{selector_matches, validate_label_selector};
use super::{FieldPath, get_i64, get_str, go_label_selector, go_string_map};
use crate::status::Cause;

const IMMUTABLE: &str = "field is immutable";

/// `validateJobSpec` at `path` (`spec`, or `spec.jobTemplate.spec` in a CronJob).
fn validate_job_spec(spec: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    for f in [
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        min_int(spec, f, 0, path, errs);
    }
    one_of(
        spec,
        "completionMode",
        &["NonIndexed", "Indexed"],
        path,
        errs,
    );
    if get_str(spec, "completionMode") == Some("Indexed")
        && spec.get("completions").is_none_or(Value::is_null)
    {
        errs.push(Cause::required(
            path.child("completions").as_str(),
            "when completion mode is Indexed",
        ));
    }
    one_of(
        spec,
        "podReplacementPolicy",
        &["Failed", "TerminatingOrFailed"],
        path,
        errs,
    );
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    let sel = spec.get("selector").filter(|s| !s.is_null());
    let sp = path.child("selector");
    match sel {
        None if manual => errs.push(Cause::required(sp.as_str(), "")),
        None => {}
        Some(sel) => validate_label_selector(sel, &sp, errs),
    }
    let tp = path.child("template");
    let Some(template) = spec.get("template").filter(|t| t.is_object()) else {
        errs.push(Cause::required(tp.as_str(), ""));
        return;
    };
    let labels = template.pointer("/metadata/labels");
    if let Some(sel) = sel.filter(|s| s.is_object())
        && !selector_matches(sel, labels)
    {
        errs.push(Cause::invalid_rendered(
            tp.child("metadata").child("labels").as_str(),
            &go_string_map(labels),
            "`selector` does not match template `labels`",
        ));
    }
    validate_pod_template(template, &tp, errs);
    let rp = template
        .pointer("/spec/restartPolicy")
        .cloned()
        .unwrap_or(Value::String(String::new()));
    if !matches!(rp.as_str(), Some("OnFailure" | "Never")) {
        errs.push(Cause::not_supported(
            tp.child("spec").child("restartPolicy").as_str(),
            &rp,
            &["OnFailure", "Never"],
        ));
    }
}

/// A generated selector must still select the labels the server put on the template.
fn validate_generated_selector(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true)
        || spec.get("selector").is_none_or(Value::is_null)
    {
        return;
    }
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if uid.is_empty() {
        // Not created yet (a dry-run of a bare object): nothing was generated.
        return;
    }
    let mp = FieldPath::new("spec.template.metadata").child("labels");
    let labels = spec.pointer("/template/metadata/labels");
    for (key, want) in [
        ("controller-uid", uid),
        ("job-name", name),
        (CONTROLLER_UID_LABEL, uid),
        ("batch.kubernetes.io/job-name", name),
    ] {
        let detail = format!("must be '{want}'");
        match labels.and_then(|l| l.get(key)).and_then(Value::as_str) {
            None => errs.push(Cause::required(mp.key(key).as_str(), &detail)),
            Some(got) if got != want => errs.push(Cause::invalid(
                mp.key(key).as_str(),
                &Value::String(got.to_owned()),
                &detail,
            )),
            Some(_) => {}
        }
    }
    let expected = serde_json::json!({"controller-uid": uid, CONTROLLER_UID_LABEL: uid});
    let Some(sel) = spec.get("selector") else {
        return; // checked above
    };
    if !selector_matches(sel, Some(&expected)) {
        errs.push(Cause::invalid_rendered(
            "spec.selector",
            &go_label_selector(Some(sel)),
            "`selector` not auto-generated",
        ));
    }
}

pub(crate) fn validate_job(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        errs.push(Cause::required("spec", ""));
        return;
    };
    validate_job_spec(spec, &FieldPath::new("spec"), errs);
    validate_generated_selector(obj, errs);
}

pub(crate) fn validate_job_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (Some(os), Some(ns)) = (old.get("spec"), new.get("spec")) else {
        return;
    };
    if os.get("selector") != ns.get("selector") {
        errs.push(Cause::invalid_rendered(
            "spec.selector",
            &go_label_selector(ns.get("selector")),
            IMMUTABLE,
        ));
    }
    // A suspended Job that never ran may have its pod template's scheduling adjusted
    // (upstream allows node affinity, selector, tolerations, labels, annotations,
    // scheduling gates); we allow the template to change while it stays suspended.
    let suspended = |s: &Value| s.get("suspend").and_then(Value::as_bool) == Some(true);
    if !(suspended(os) && suspended(ns)) && os.get("template") != ns.get("template") {
        errs.push(Cause::invalid(
            "spec.template",
            ns.get("template").unwrap_or(&Value::Null),
            IMMUTABLE,
        ));
    }
    if os.get("completionMode") != ns.get("completionMode") {
        errs.push(Cause::invalid(
            "spec.completionMode",
            ns.get("completionMode").unwrap_or(&Value::Null),
            IMMUTABLE,
        ));
    }
    let indexed_elastic = get_str(ns, "completionMode") == Some("Indexed")
        && get_i64(ns, "completions") == get_i64(ns, "parallelism");
    if os.get("completions") != ns.get("completions") && !indexed_elastic {
        errs.push(Cause::invalid(
            "spec.completions",
            ns.get("completions").unwrap_or(&Value::Null),
            IMMUTABLE,
        ));
    }
}

pub(crate) fn validate_cronjob(obj: &Value, errs: &mut Vec<Cause>) {
    let Some(spec) = obj.get("spec").filter(|s| s.is_object()) else {
        errs.push(Cause::required("spec", ""));
        return;
    };
    let path = FieldPath::new("spec");
    let schedule = get_str(spec, "schedule").unwrap_or_default();
    if schedule.is_empty() {
        errs.push(Cause::required(path.child("schedule").as_str(), ""));
    } else if schedule.contains("TZ") {
        errs.push(Cause::invalid(
            path.child("schedule").as_str(),
            &Value::String(schedule.to_owned()),
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        ));
    } else if let Err(msg) = parse_schedule(schedule) {
        errs.push(Cause::invalid(
            path.child("schedule").as_str(),
            &Value::String(schedule.to_owned()),
            &msg,
        ));
    }
    match spec.get("concurrencyPolicy") {
        Some(Value::String(s)) if s.is_empty() => {
            errs.push(Cause::required(
                path.child("concurrencyPolicy").as_str(),
                "",
            ));
        }
        _ => one_of(
            spec,
            "concurrencyPolicy",
            &["Allow", "Forbid", "Replace"],
            &path,
            errs,
        ),
    }
    for f in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        min_int(spec, f, 0, &path, errs);
    }
    let jp = path.child("jobTemplate");
    let Some(js) = spec.pointer("/jobTemplate/spec").filter(|s| s.is_object()) else {
        errs.push(Cause::required(jp.child("spec").as_str(), ""));
        return;
    };
    let jsp = jp.child("spec");
    if let Some(sel) = js.get("selector").filter(|s| !s.is_null()) {
        errs.push(Cause::invalid_rendered(
            jsp.child("selector").as_str(),
            &go_label_selector(Some(sel)),
            "`selector` will be auto-generated",
        ));
    }
    if js.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        errs.push(Cause::not_supported(
            jsp.child("manualSelector").as_str(),
            &Value::Bool(true),
            &["nil", "false"],
        ));
    }
    validate_job_spec(js, &jsp, errs);
}

/// Checks a standard five-field cron schedule or a `@descriptor`, with robfig/cron's error
/// messages (what upstream reports).
pub(crate) fn parse_schedule(spec: &str) -> Result<(), String> {
    if let Some(d) = spec.strip_prefix('@') {
        return match d {
            "yearly" | "annually" | "monthly" | "weekly" | "daily" | "midnight" | "hourly" => {
                Ok(())
            }
            _ if d.starts_with("every ") => Ok(()),
            _ => Err(format!("unrecognized descriptor: {spec}")),
        };
    }
    let fields: Vec<&str> = spec.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "expected exactly 5 fields, found {}: {spec}",
            fields.len()
        ));
    }
    const MONTHS: &[&str] = &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let bounds: [(u32, u32, &[&str], u32); 5] = [
        (0, 59, &[], 0),
        (0, 23, &[], 0),
        (1, 31, &[], 0),
        (1, 12, MONTHS, 1),
        (0, 6, DAYS, 0),
    ];
    for (field, (min, max, names, base)) in fields.iter().zip(bounds) {
        for part in field.split(',') {
            parse_range(part, min, max, names, base)?;
        }
    }
    Ok(())
}

fn parse_range(expr: &str, min: u32, max: u32, names: &[&str], base: u32) -> Result<(), String> {
    let num = |s: &str| -> Result<u32, String> {
        if let Some(i) = names.iter().position(|n| n.eq_ignore_ascii_case(s)) {
            return Ok(i as u32 + base);
        }
        s.parse::<u32>().map_err(|_| {
            format!("failed to parse int from {s}: strconv.Atoi: parsing \"{s}\": invalid syntax")
        })
    };
    let (range, step) = match expr.split_once('/') {
        Some((r, s)) => (r, Some(num(s)?)),
        None => (expr, None),
    };
    let (lo, hi) = match range {
        "*" | "?" => (min, max),
        r => match r.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let v = num(r)?;
                (v, if step.is_some() { max } else { v })
            }
        },
    };
    if lo < min {
        return Err(format!(
            "beginning of range ({lo}) below minimum ({min}): {expr}"
        ));
    }
    if hi > max {
        return Err(format!("end of range ({hi}) above maximum ({max}): {expr}"));
    }
    if lo > hi {
        return Err(format!(
            "beginning of range ({lo}) beyond end of range ({hi}): {expr}"
        ));
    }
    if step == Some(0) {
        return Err(format!("step of range should be a positive number: {expr}"));
    }
    Ok(())
}
