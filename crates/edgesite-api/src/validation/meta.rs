//! Object metadata and the string formats behind it (apimachinery `pkg/util/validation` and
//! `pkg/api/validation`): names, label keys and values, annotations, finalizers, label
//! selectors. The messages are upstream's, since kubectl users and tests read them.

use serde_json::Value;

use super::{FieldPath, get_list, get_map, get_str, go_label_selector};
use crate::registry::ResourceInfo;
use crate::selector::LabelSelector;
use crate::status::Cause;

const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1035_LABEL_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character";
const DNS1035_LABEL_FMT: &str = "[a-z]([-a-z0-9]*[a-z0-9])?";
const QUALIFIED_NAME_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const QUALIFIED_NAME_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const CONFIG_KEY_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";

/// Upstream's limit on the summed size of annotation keys and values (256 KiB).
pub(crate) const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;
/// Finalizers that need no domain prefix.
const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// `msg (e.g. 'a',  or 'b', regex used for validation is 'fmt')`, upstream's `RegexError`
/// (the doubled space is theirs).
pub(crate) fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    let mut out = format!("{msg} (");
    if !examples.is_empty() {
        out.push_str("e.g. ");
        for (i, e) in examples.iter().enumerate() {
            if i > 0 {
                out.push_str(" or ");
            }
            out.push_str(&format!("'{e}', "));
        }
    }
    out.push_str(&format!("regex used for validation is '{fmt}')"));
    out
}

pub(crate) fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

fn matches_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        && is_alnum_lower(b[0])
        && is_alnum_lower(b[b.len() - 1])
}

/// DNS-1123 label (namespaces, container and port names).
pub(crate) fn dns1123_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    if !matches_label(s) {
        out.push(regex_error(
            DNS1123_LABEL_MSG,
            DNS1123_LABEL_FMT,
            &["my-name", "123-abc"],
        ));
    }
    out
}

/// DNS-1123 subdomain (most object names).
pub(crate) fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len_error(253));
    }
    if !s.split('.').all(matches_label) {
        out.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    out
}

/// DNS-1035 label (service names: they become DNS names that must not start with a digit).
pub(crate) fn dns1035_label(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    if !(matches_label(s) && s.as_bytes()[0].is_ascii_lowercase()) {
        out.push(regex_error(
            DNS1035_LABEL_MSG,
            DNS1035_LABEL_FMT,
            &["my-name", "abc-123"],
        ));
    }
    out
}

fn is_qname_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

fn matches_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|&c| is_qname_char(c) || matches!(c, b'-' | b'_' | b'.'))
        && is_qname_char(b[0])
        && is_qname_char(b[b.len() - 1])
}

/// A qualified name, `[prefix/]name` (label keys, annotation keys, finalizers).
pub(crate) fn qualified_name(s: &str) -> Vec<String> {
    let parts: Vec<&str> = s.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [name] => (None, *name),
        [prefix, name] => (Some(*prefix), *name),
        _ => {
            return vec![format!(
                "a qualified name {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(
                    QUALIFIED_NAME_MSG,
                    QUALIFIED_NAME_FMT,
                    &["MyName", "my.name", "123-abc"]
                )
            )];
        }
    };
    let mut out = Vec::new();
    match prefix {
        Some("") => out.push("prefix part must be non-empty".to_owned()),
        Some(p) => out.extend(
            dns1123_subdomain(p)
                .into_iter()
                .map(|m| format!("prefix part {m}")),
        ),
        None => {}
    }
    if name.is_empty() {
        out.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        out.push(format!("name part {}", max_len_error(63)));
    }
    if !name.is_empty() && !matches_qualified_name_part(name) {
        out.push(format!(
            "name part {}",
            regex_error(
                QUALIFIED_NAME_MSG,
                QUALIFIED_NAME_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    out
}

/// A label value: empty, or a qualified-name part of at most 63 characters.
pub(crate) fn label_value(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 63 {
        out.push(max_len_error(63));
    }
    if !s.is_empty() && !matches_qualified_name_part(s) {
        out.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    out
}

/// A ConfigMap or Secret key (also a file name when mounted).
pub(crate) fn config_map_key(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push(max_len_error(253));
    }
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        out.push(regex_error(
            CONFIG_KEY_MSG,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    if s == "." {
        out.push("must not be '.'".into());
    } else if s == ".." {
        out.push("must not be '..'".into());
    } else if s.starts_with("..") {
        out.push("must not start with '..'".into());
    }
    out
}

/// A port number, 1–65535.
pub(crate) fn port_num(n: i64) -> Vec<String> {
    if (1..=65535).contains(&n) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".into()]
    }
}

/// An IANA service name, the form of named ports.
pub(crate) fn port_name(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 15 {
        out.push(max_len_error(15));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        out.push("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".into());
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        out.push("must contain at least one letter (a-z)".into());
    }
    if s.contains("--") {
        out.push("must not contain consecutive hyphens".into());
    }
    if s.starts_with('-') || s.ends_with('-') {
        out.push("must not begin or end with a hyphen".into());
    }
    out
}

/// Which rule an object name of `r` follows.
fn name_rule(r: &ResourceInfo) -> fn(&str) -> Vec<String> {
    match (r.group, r.kind) {
        ("", "Namespace") => dns1123_label,
        ("", "Service") => dns1035_label,
        (crate::rbac::GROUP, _) => super::rbac::path_segment_name,
        _ => dns1123_subdomain,
    }
}

/// The causes for `name` (or a generateName prefix) at `field`.
pub(crate) fn name_causes(r: &ResourceInfo, name: &str, field: &str, prefix: bool) -> Vec<Cause> {
    // A generateName prefix may end in '-': upstream masks the trailing dash.
    let checked = if prefix && name.len() > 1 && name.ends_with('-') {
        format!("{}a", &name[..name.len() - 1])
    } else {
        name.to_owned()
    };
    let v = Value::String(name.to_owned());
    let mut out: Vec<Cause> = name_rule(r)(&checked)
        .into_iter()
        .map(|m| Cause::invalid(field, &v, &m))
        .collect();
    if !prefix && (r.group, r.kind) == ("batch", "CronJob") && name.len() > 52 {
        // Jobs are named `<cronjob>-<11 digits>` and that must stay a 63-character label.
        out.push(Cause::invalid(field, &v, &max_len_error(52)));
    }
    out
}

/// Label keys and values of the map at `v` (absent is fine).
pub(crate) fn validate_labels(v: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(m) = v.as_object() else {
        errs.push(Cause::invalid(path.as_str(), v, "must be a map of strings"));
        return;
    };
    for (k, val) in m {
        for msg in qualified_name(k) {
            errs.push(Cause::invalid(
                path.as_str(),
                &Value::String(k.clone()),
                &msg,
            ));
        }
        match val.as_str() {
            Some(s) => {
                for msg in label_value(s) {
                    errs.push(Cause::invalid(path.as_str(), val, &msg));
                }
            }
            None => errs.push(Cause::invalid(path.as_str(), val, "must be a string")),
        }
    }
}

fn validate_annotations(v: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return;
    };
    let Some(m) = v.as_object() else {
        errs.push(Cause::invalid(path.as_str(), v, "must be a map of strings"));
        return;
    };
    let mut total = 0;
    for (k, val) in m {
        for msg in qualified_name(&k.to_ascii_lowercase()) {
            errs.push(Cause::invalid(
                path.as_str(),
                &Value::String(k.clone()),
                &msg,
            ));
        }
        total += k.len() + val.as_str().map_or(0, str::len);
        if !val.is_string() {
            errs.push(Cause::invalid(
                path.key(k).as_str(),
                val,
                "must be a string",
            ));
        }
    }
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(Cause::too_long(path.as_str(), TOTAL_ANNOTATION_SIZE));
    }
}

fn validate_finalizers(v: Option<&Value>, path: &FieldPath, errs: &mut Vec<Cause>) {
    for f in v.and_then(Value::as_array).into_iter().flatten() {
        let Some(s) = f.as_str() else {
            errs.push(Cause::invalid(path.as_str(), f, "must be a string"));
            continue;
        };
        let msgs = qualified_name(s);
        for msg in &msgs {
            errs.push(Cause::invalid(path.as_str(), f, msg));
        }
        if msgs.is_empty() && !s.contains('/') && !STANDARD_FINALIZERS.contains(&s) {
            errs.push(Cause::invalid(
                path.as_str(),
                f,
                "name is neither a standard finalizer name nor is it fully qualified",
            ));
        }
    }
}

/// `metadata` of an object being written.
pub(crate) fn validate_object_meta(r: &ResourceInfo, obj: &Value, errs: &mut Vec<Cause>) {
    let path = FieldPath::new("metadata");
    let Some(md) = obj.get("metadata").filter(|m| m.is_object()) else {
        errs.push(Cause::required("metadata", ""));
        return;
    };
    let name = get_str(md, "name").unwrap_or_default();
    let generate = get_str(md, "generateName").unwrap_or_default();
    if !generate.is_empty() {
        errs.extend(name_causes(
            r,
            generate,
            path.child("generateName").as_str(),
            true,
        ));
    }
    if name.is_empty() {
        errs.push(Cause::required(
            path.child("name").as_str(),
            "name or generateName is required",
        ));
    } else {
        errs.extend(name_causes(r, name, path.child("name").as_str(), false));
    }
    let ns = get_str(md, "namespace").unwrap_or_default();
    let ns_path = path.child("namespace");
    if r.namespaced {
        if ns.is_empty() {
            errs.push(Cause::required(ns_path.as_str(), ""));
        } else {
            for msg in dns1123_label(ns) {
                errs.push(Cause::invalid(
                    ns_path.as_str(),
                    &Value::String(ns.to_owned()),
                    &msg,
                ));
            }
        }
    } else if !ns.is_empty() {
        errs.push(Cause::forbidden(
            ns_path.as_str(),
            "not allowed on this type",
        ));
    }
    if let Some(g) = md.get("generation").and_then(Value::as_i64)
        && g < 0
    {
        errs.push(Cause::invalid(
            path.child("generation").as_str(),
            &g.into(),
            "must be greater than or equal to 0",
        ));
    }
    validate_labels(md.get("labels"), &path.child("labels"), errs);
    validate_annotations(md.get("annotations"), &path.child("annotations"), errs);
    validate_finalizers(md.get("finalizers"), &path.child("finalizers"), errs);
    validate_owner_references(md, &path.child("ownerReferences"), errs);
}

fn validate_owner_references(md: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    let refs = get_list(md, "ownerReferences");
    let mut first_controller: Option<String> = None;
    for r in refs {
        for (field, detail) in [
            ("apiVersion", "version must not be empty"),
            ("kind", "must not be empty"),
            ("name", "must not be empty"),
            ("uid", "must not be empty"),
        ] {
            let got = get_str(r, field).unwrap_or_default();
            // `group/` without a version is as bad as nothing.
            let empty = got.is_empty() || (field == "apiVersion" && got.ends_with('/'));
            if empty {
                errs.push(Cause::invalid(
                    path.child(field).as_str(),
                    &Value::String(got.to_owned()),
                    detail,
                ));
            }
        }
        if r.get("controller").and_then(Value::as_bool) == Some(true) {
            let this = format!(
                "{}/{}",
                get_str(r, "kind").unwrap_or_default(),
                get_str(r, "name").unwrap_or_default()
            );
            match &first_controller {
                Some(first) => errs.push(Cause::invalid(
                    path.as_str(),
                    &Value::Array(refs.to_vec()),
                    &format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"
                    ),
                )),
                None => first_controller = Some(this),
            }
        }
    }
}

/// What may not change in `metadata` on an update.
pub(crate) fn validate_object_meta_update(old: &Value, new: &Value, errs: &mut Vec<Cause>) {
    let (Some(om), Some(nm)) = (old.get("metadata"), new.get("metadata")) else {
        return;
    };
    for f in ["name", "namespace", "uid", "creationTimestamp"] {
        let (o, n) = (om.get(f), nm.get(f));
        if o != n {
            errs.push(Cause::invalid(
                &format!("metadata.{f}"),
                n.unwrap_or(&Value::String(String::new())),
                "field is immutable",
            ));
        }
    }
    if om.get("deletionTimestamp").is_some() {
        let old_f: Vec<&Value> = get_list(om, "finalizers").iter().collect();
        if get_list(nm, "finalizers")
            .iter()
            .any(|f| !old_f.contains(&f))
        {
            errs.push(Cause::forbidden(
                "metadata.finalizers",
                "no new finalizers can be added if the object is being deleted",
            ));
        }
    }
}

/// A `metav1.LabelSelector` at `path`: label keys and values, operators and their values.
pub(crate) fn validate_label_selector(sel: &Value, path: &FieldPath, errs: &mut Vec<Cause>) {
    if !sel.is_object() {
        errs.push(Cause::invalid_rendered(
            path.as_str(),
            &go_label_selector(Some(sel)),
            "invalid label selector",
        ));
        return;
    }
    validate_labels(sel.get("matchLabels"), &path.child("matchLabels"), errs);
    for (i, e) in get_list(sel, "matchExpressions").iter().enumerate() {
        let p = path.child("matchExpressions").index(i);
        let op = get_str(e, "operator").unwrap_or_default();
        let values = get_list(e, "values");
        match op {
            "In" | "NotIn" => {
                if values.is_empty() {
                    errs.push(Cause::required(
                        p.child("values").as_str(),
                        "must be specified when `operator` is 'In' or 'NotIn'",
                    ));
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    errs.push(Cause::forbidden(
                        p.child("values").as_str(),
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                    ));
                }
            }
            _ => errs.push(Cause::invalid(
                p.child("operator").as_str(),
                &Value::String(op.to_owned()),
                "not a valid selector operator",
            )),
        }
        let key = get_str(e, "key").unwrap_or_default();
        for msg in qualified_name(key) {
            errs.push(Cause::invalid(
                p.child("key").as_str(),
                &Value::String(key.to_owned()),
                &msg,
            ));
        }
    }
}

/// Whether a selector selects nothing-in-particular (no labels, no expressions).
pub(crate) fn selector_is_empty(sel: &Value) -> bool {
    get_map(sel, "matchLabels").is_none_or(|m| m.is_empty())
        && get_list(sel, "matchExpressions").is_empty()
}

/// Whether `sel` (a `metav1.LabelSelector`) selects the label map `labels`. A selector that
/// does not convert is not held against the labels: [`validate_label_selector`] reports what
/// is wrong with it, as upstream, which checks the template only against a valid selector.
pub(crate) fn selector_matches(sel: &Value, labels: Option<&Value>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
    match LabelSelector::from_metav1(sel) {
        Ok(selector) => selector.matches_with(get),
        Err(_) => true,
    }
}
