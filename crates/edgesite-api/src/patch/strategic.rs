//! Strategic merge patch, written from the behaviour of upstream's
//! `k8s.io/apimachinery/pkg/util/strategicpatch` (apply side only; computing patches is the
//! client's job). Where upstream keeps patch debris in the result (nulls and directives inside
//! newly added values, `$patch` items in replaced lists) we clean it instead, because our store
//! keeps raw JSON and no typed decoding step would drop it later.

use serde_json::{Map, Value};

use super::schema::{NoSchema, PatchMeta, PatchSchema, PatchStrategy};
use super::{PatchError, json_type};

/// `$patch: replace | delete | merge` on a map or a merge-list item.
const DIRECTIVE: &str = "$patch";
/// `$retainKeys: [..]`: fields of the original map not listed are cleared.
const RETAIN_KEYS: &str = "$retainKeys";
/// `$setElementOrder/<list>: [..]`: the order of the merged list.
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
/// `$deleteFromPrimitiveList/<list>: [..]`: values to remove from a list of primitives.
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to `target` and returns the result; `target` is untouched.
///
/// Maps merge recursively and `null` deletes a field. Lists are replaced unless `schema` gives
/// them the `merge` strategy: then lists of objects merge by the merge key (matching items are
/// merged, new ones appended) and lists of primitives become the union. The directives are
/// `$patch` (`replace`, `delete`, `merge`), `$retainKeys`, `$setElementOrder/<list>` and
/// `$deleteFromPrimitiveList/<list>`; none of them is left in the result. A key of the form
/// `$name/…` that is not one of them is an error; a bare `$name` key is an ordinary field, as
/// upstream treats it (CustomResourceDefinition schemas have `$ref` and `$schema` fields).
///
/// The order of a merged list follows upstream: items named by the patch come in patch order
/// (or `$setElementOrder` order), and items only on the server keep their place relative to
/// them. `$setElementOrder` only orders: items it does not name are kept, not deleted.
pub fn strategic_merge_patch(
    target: &Value,
    patch: &Value,
    schema: &dyn PatchSchema,
) -> Result<Value, PatchError> {
    let Value::Object(target) = target else {
        return Err(PatchError::TargetNotAnObject(json_type(target)));
    };
    let Value::Object(patch) = patch else {
        return Err(PatchError::PatchNotAnObject(json_type(patch)));
    };
    merge_map(target.clone(), patch, schema, ".").map(Value::Object)
}

/// Merges `patch` into the map `original`, whose type `schema` describes.
fn merge_map(
    mut original: Map<String, Value>,
    patch: &Map<String, Value>,
    schema: &dyn PatchSchema,
    path: &str,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE) {
        let mut rest = patch.clone();
        rest.remove(DIRECTIVE);
        return match directive.as_str() {
            // Merging into an empty map cleans nulls and nested directives out of the patch.
            Some("replace") => merge_map(Map::new(), &rest, schema, path),
            // Upstream leaves an empty map where a present map is deleted.
            Some("delete") => Ok(Map::new()),
            // The default, spelled out; upstream rejects it on maps, we accept the no-op.
            Some("merge") => merge_map(original, &rest, schema, path),
            _ => Err(PatchError::UnknownDirective {
                path: path.to_owned(),
                value: directive.to_string(),
            }),
        };
    }

    if let Some(retain) = patch.get(RETAIN_KEYS) {
        apply_retain_keys(&mut original, patch, retain, path)?;
    }

    // Lists with a `$setElementOrder` are merged and ordered here, then skipped below.
    let mut ordered: Vec<&str> = Vec::new();
    for (key, order) in patch {
        if let Some(field) = key.strip_prefix(SET_ELEMENT_ORDER)
            && merge_ordered_list(&mut original, patch, field, order, schema, path)?
        {
            ordered.push(field);
        }
    }

    let mut deletions = Vec::new();
    for (key, value) in patch {
        if key == RETAIN_KEYS || key.starts_with(SET_ELEMENT_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_FROM_PRIMITIVE_LIST) {
            deletions.push((field, value));
            continue;
        }
        if key.starts_with('$') && key.contains('/') {
            return Err(PatchError::UnknownDirectiveKey {
                path: path.to_owned(),
                key: key.clone(),
            });
        }
        if ordered.contains(&key.as_str()) {
            continue;
        }
        if value.is_null() {
            remove_keep_order(&mut original, key);
            continue;
        }
        let meta = schema.patch_meta(key);
        let child = child_schema(schema, key);
        let field_path = join(path, key);
        let merged = match original.get_mut(key) {
            Some(slot) => match (std::mem::take(slot), value) {
                (Value::Object(o), Value::Object(p)) if meta.strategy != PatchStrategy::Replace => {
                    Some(Value::Object(merge_map(o, p, &*child, &field_path)?))
                }
                (Value::Array(o), Value::Array(p)) => {
                    Some(Value::Array(merge_list(o, p, &meta, &*child, &field_path)?))
                }
                _ => fresh_value(value, &meta, &*child, &field_path)?,
            },
            None => fresh_value(value, &meta, &*child, &field_path)?,
        };
        match merged {
            Some(v) => {
                original.insert(key.clone(), v);
            }
            None => remove_keep_order(&mut original, key),
        }
    }

    // After the merges, so that a list both extended and pruned in one patch ends up pruned;
    // upstream leaves that order to Go's map iteration.
    for (field, values) in deletions {
        let Value::Array(values) = values else {
            return Err(PatchError::InvalidDeleteFromPrimitiveList {
                path: path.to_owned(),
                field: field.to_owned(),
                reason: format!("it must be a list of values, not {}", json_type(values)),
            });
        };
        if field.is_empty() {
            return Err(PatchError::InvalidDeleteFromPrimitiveList {
                path: path.to_owned(),
                field: String::new(),
                reason: "the directive names no field".to_owned(),
            });
        }
        if let Some(Value::Array(list)) = original.get_mut(field) {
            list.retain(|item| !values.iter().any(|v| same_value(item, v)));
        }
    }
    Ok(original)
}

/// `$retainKeys`: every field the patch sets must be listed, and fields of `original` that are
/// not listed are cleared (used for unions such as a Deployment's `strategy` or a volume's
/// source, where switching variant must drop the old one).
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    retain: &Value,
    path: &str,
) -> Result<(), PatchError> {
    let Value::Array(keep) = retain else {
        return Err(PatchError::InvalidRetainKeys {
            path: path.to_owned(),
            reason: format!(
                "it must be a list of field names, not {}",
                json_type(retain)
            ),
        });
    };
    let listed = |k: &str| keep.iter().any(|v| v.as_str() == Some(k));
    for (key, value) in patch {
        let directive = key == DIRECTIVE
            || key == RETAIN_KEYS
            || key.starts_with(SET_ELEMENT_ORDER)
            || key.starts_with(DELETE_FROM_PRIMITIVE_LIST);
        if !directive && !value.is_null() && !listed(key) {
            return Err(PatchError::InvalidRetainKeys {
                path: path.to_owned(),
                reason: format!("the patch sets {key:?}, which the list does not name"),
            });
        }
    }
    original.retain(|k, _| listed(k));
    Ok(())
}

/// Handles `$setElementOrder/<field>`: merges the patch's list for `field` (if any) and orders
/// the result. Returns whether the list was written, so the main loop skips it.
fn merge_ordered_list(
    original: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    field: &str,
    order: &Value,
    schema: &dyn PatchSchema,
    path: &str,
) -> Result<bool, PatchError> {
    let invalid = |reason: String| PatchError::InvalidSetElementOrder {
        path: path.to_owned(),
        field: field.to_owned(),
        reason,
    };
    if field.is_empty() {
        return Err(invalid("the directive names no field".to_owned()));
    }
    let Value::Array(order) = order else {
        return Err(invalid(format!(
            "it must be a list, not {}",
            json_type(order)
        )));
    };
    let server = match original.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::Array(list)) => Some(list.clone()),
        Some(other) => {
            return Err(invalid(format!(
                "the object's field is {}, not a list",
                json_type(other)
            )));
        }
    };
    let patch_list = match patch.get(field) {
        None => None,
        Some(Value::Array(list)) => Some(list),
        Some(other) => {
            return Err(invalid(format!(
                "the patch's field is {}, not a list",
                json_type(other)
            )));
        }
    };
    let meta = schema.patch_meta(field);
    let child = child_schema(schema, field);
    let field_path = join(path, field);
    let key = meta.merge_key.as_deref();
    let order: Vec<&Value> = order.iter().collect();
    if let Some(list) = patch_list {
        check_patch_follows_order(list, &order, key, &field_path, invalid)?;
    }

    let merged = match (&server, patch_list) {
        (None, None) => return Ok(false),
        (Some(list), None) => list.clone(),
        (server, Some(list)) => merge_list(
            server.clone().unwrap_or_default(),
            list,
            &meta,
            &*child,
            &field_path,
        )?,
    };
    let server = server.unwrap_or_default();
    let merged = normalize_order(merged, &order, &server, key, &field_path)?;
    original.insert(field.to_owned(), Value::Array(merged));
    Ok(true)
}

/// Upstream's consistency check: the patch list's items (deletions and directive items aside)
/// must appear in the `$setElementOrder` list, in the same relative order.
fn check_patch_follows_order(
    list: &[Value],
    order: &[&Value],
    key: Option<&str>,
    path: &str,
    invalid: impl Fn(String) -> PatchError,
) -> Result<(), PatchError> {
    let items: Vec<&Value> = list.iter().filter(|v| v.get(DIRECTIVE).is_none()).collect();
    let (mut p, mut o) = (0, 0);
    while p < items.len() && o < order.len() {
        let equal = match key {
            Some(key) => same_value(
                merge_key_of(items[p], key, path)?,
                merge_key_of(order[o], key, path)?,
            ),
            None => same_value(items[p], order[o]),
        };
        if equal {
            p += 1;
        }
        o += 1;
    }
    if p < items.len() {
        return Err(invalid(format!(
            "the patch list item {} is missing from it or out of its order",
            items[p]
        )));
    }
    Ok(())
}

/// Merges the list `patch` into `original` according to `meta`; `items` describes the items.
fn merge_list(
    original: Vec<Value>,
    patch: &[Value],
    meta: &PatchMeta,
    items: &dyn PatchSchema,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    if meta.strategy != PatchStrategy::Merge {
        // Replaced whole. Directive items make no sense here; upstream drops them too.
        return fresh_items(
            patch.iter().filter(|v| v.get(DIRECTIVE).is_none()),
            items,
            path,
        );
    }
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    if !check_item_types(&original, patch, path)? {
        // Primitives: the union, server values first.
        let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
        for v in original.iter().chain(patch) {
            if !merged.iter().any(|m| same_value(m, v)) {
                merged.push(v.clone());
            }
        }
        let order: Vec<&Value> = patch.iter().collect();
        return normalize_order(merged, &order, &original, None, path);
    }

    let Some(key) = meta.merge_key.as_deref() else {
        return Err(PatchError::NoMergeKey {
            path: path.to_owned(),
        });
    };
    let mut original = original;
    let mut plain: Vec<&Value> = Vec::with_capacity(patch.len());
    let mut replace = false;
    for item in patch {
        let Some(directive) = item.get(DIRECTIVE) else {
            plain.push(item);
            continue;
        };
        match directive.as_str() {
            Some("delete") => {
                let value = merge_key_of(item, key, path)?;
                original.retain(|o| !o.get(key).is_some_and(|v| same_value(v, value)));
            }
            // Keep scanning so that every other directive item is dropped as well.
            Some("replace") => replace = true,
            Some("merge") => {
                return Err(PatchError::MergeDirectiveInList {
                    path: path.to_owned(),
                });
            }
            _ => {
                return Err(PatchError::UnknownDirective {
                    path: path.to_owned(),
                    value: directive.to_string(),
                });
            }
        }
    }
    if replace {
        return fresh_items(plain.into_iter(), items, path);
    }

    let server = original.clone();
    let mut merged = original;
    for item in &plain {
        let value = merge_key_of(item, key, path)?;
        let item_path = format!("{path}[{key}={value}]");
        match merged
            .iter()
            .position(|o| o.get(key).is_some_and(|v| same_value(v, value)))
        {
            Some(i) => {
                let (Value::Object(o), Value::Object(p)) = (std::mem::take(&mut merged[i]), item)
                else {
                    return Err(PatchError::MixedListTypes {
                        path: path.to_owned(),
                    });
                };
                merged[i] = Value::Object(merge_map(o, p, items, &item_path)?);
            }
            None => {
                if let Some(v) = fresh_value(item, &PatchMeta::default(), items, &item_path)? {
                    merged.push(v);
                }
            }
        }
    }
    normalize_order(merged, &plain, &server, Some(key), path)
}

/// Checks that the items of both lists share one JSON type that can be merged; returns
/// whether they are objects (else primitives).
fn check_item_types(original: &[Value], patch: &[Value], path: &str) -> Result<bool, PatchError> {
    let mut first: Option<&Value> = None;
    for v in original.iter().chain(patch) {
        if v.is_array() {
            return Err(PatchError::ListOfLists {
                path: path.to_owned(),
            });
        }
        match first {
            None => first = Some(v),
            Some(f) if std::mem::discriminant(f) != std::mem::discriminant(v) => {
                return Err(PatchError::MixedListTypes {
                    path: path.to_owned(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(first.is_some_and(Value::is_object))
}

/// Orders a merged list as upstream does: the items named in `order` are sorted by it, the
/// others (server-only) keep the order of `server`, and the two runs are interleaved so that a
/// server-only item stays ahead of the named items it preceded on the server.
fn normalize_order(
    merged: Vec<Value>,
    order: &[&Value],
    server: &[Value],
    key: Option<&str>,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    if let Some(key) = key {
        for v in merged.iter().chain(order.iter().copied()) {
            merge_key_of(v, key, path)?;
        }
    }
    let in_order = |item: &Value| position(order.iter().copied(), item, key);
    let in_server = |item: &Value| position(server, item, key);

    let (mut named, mut server_only): (Vec<Value>, Vec<Value>) =
        merged.into_iter().partition(|v| in_order(v).is_some());
    named.sort_by_key(|v| in_order(v).unwrap_or(usize::MAX));
    server_only.sort_by_key(|v| in_server(v).unwrap_or(usize::MAX));

    let mut out = Vec::with_capacity(named.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = named.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => {
                matches!((in_server(l), in_server(r)), (Some(i), Some(j)) if i < j)
            }
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// Where `item` (by identity) first appears in `list`.
fn position<'v>(
    list: impl IntoIterator<Item = &'v Value>,
    item: &Value,
    key: Option<&str>,
) -> Option<usize> {
    let probe = identity(item, key)?;
    list.into_iter()
        .position(|v| identity(v, key).is_some_and(|x| same_value(x, probe)))
}

/// What identifies a list item: its merge key value, or itself for primitives.
fn identity<'v>(item: &'v Value, key: Option<&str>) -> Option<&'v Value> {
    match key {
        Some(key) => item.get(key),
        None => Some(item),
    }
}

/// The value for a field the original lacks (or holds with another JSON type): the patch
/// value merged into an empty one, which drops nulls and directives. `None` when nothing is
/// left (a map carrying `$patch: delete`).
fn fresh_value(
    value: &Value,
    meta: &PatchMeta,
    schema: &dyn PatchSchema,
    path: &str,
) -> Result<Option<Value>, PatchError> {
    Ok(Some(match value {
        Value::Object(p) => {
            if p.get(DIRECTIVE).and_then(Value::as_str) == Some("delete") {
                return Ok(None);
            }
            Value::Object(merge_map(Map::new(), p, schema, path)?)
        }
        Value::Array(p) => Value::Array(merge_list(Vec::new(), p, meta, schema, path)?),
        other => other.clone(),
    }))
}

/// Fresh copies of the items of a replaced list.
fn fresh_items<'v>(
    list: impl Iterator<Item = &'v Value>,
    items: &dyn PatchSchema,
    path: &str,
) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::new();
    for (i, v) in list.enumerate() {
        out.extend(fresh_value(
            v,
            &PatchMeta::default(),
            items,
            &format!("{path}[{i}]"),
        )?);
    }
    Ok(out)
}

fn merge_key_of<'v>(item: &'v Value, key: &str, path: &str) -> Result<&'v Value, PatchError> {
    item.get(key).ok_or_else(|| PatchError::MissingMergeKey {
        path: path.to_owned(),
        key: key.to_owned(),
        item: item.to_string(),
    })
}

/// JSON equality, except that numbers compare by value (`80` equals `80.0`), as they do in
/// upstream's decoded `float64`s.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

fn child_schema<'s>(schema: &'s dyn PatchSchema, field: &str) -> Box<dyn PatchSchema + 's> {
    schema.child(field).unwrap_or_else(|| Box::new(NoSchema))
}

/// Removes `key` without moving the other keys, should serde_json's `preserve_order` feature
/// be on in the build (its `remove` swaps the last key into the hole).
fn remove_keep_order(map: &mut Map<String, Value>, key: &str) {
    if map.contains_key(key) {
        map.retain(|k, _| k != key);
    }
}

/// A jq-style path for error messages: `.spec.template`.
fn join(path: &str, field: &str) -> String {
    if path == "." {
        format!(".{field}")
    } else {
        format!("{path}.{field}")
    }
}
