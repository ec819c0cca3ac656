//! Server-side apply and `metadata.managedFields`: which manager owns which field of an object.
//!
//! [`FieldManager::apply`] merges an applied configuration into the live object by the type's
//! schema (list-maps by their keys, sets as sets, atomic values replaced), prunes the fields the
//! manager applied before and no longer applies (unless someone else owns them), detects
//! conflicts with other managers and records ownership. [`FieldManager::record_update`] records
//! ownership for every other write (create, update, patch). The semantics follow upstream's
//! structured-merge-diff; the schema comes through the [`ApplySchema`] trait, so this module has
//! no idea where types come from (OpenAPI in the API server, hand-written schemas in tests).
//!
//! ```
//! use edgesite_api::apply::{FieldManager, NoSchema};
//! use serde_json::json;
//!
//! let fm = FieldManager::new(&NoSchema).at_time("2024-01-01T00:00:00Z");
//! let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "c", "labels": {"a": "1", "b": "2"}}});
//! let live = fm.apply(None, &applied, "me", false).unwrap();
//! let applied = json!({"apiVersion": "v1", "kind": "ConfigMap",
//!     "metadata": {"name": "c", "labels": {"a": "1"}}});
//! let live = fm.apply(Some(&live), &applied, "me", false).unwrap();
//! assert_eq!(live["metadata"]["labels"], json!({"a": "1"}));
//! ```

mod fieldpath;
mod openapi_schema;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

pub use fieldpath::{FieldSet, FieldsError, Path, PathElement, path_string};
pub use openapi_schema::for_kind;

/// How a list is merged, from `x-kubernetes-list-type` and `x-kubernetes-list-map-keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListType {
    /// Replaced whole; owned as one field.
    Atomic,
    /// A set of scalars; each value is owned on its own.
    Set,
    /// A list of objects identified by these key fields; merged item by item.
    Map(Vec<String>),
}

/// What apply needs to know about a type, at one position in an object. Schemas are shared
/// with request handlers running on any thread, hence `Send + Sync`.
pub trait ApplySchema: Send + Sync {
    /// The schema of the property `name` of a struct (`None`: not a declared property).
    fn field(&self, name: &str) -> Option<Box<dyn ApplySchema + '_>>;
    /// The schema of a list's items or of a map's values.
    fn items(&self) -> Option<Box<dyn ApplySchema + '_>>;
    /// Whether this is a map whose keys are data (`additionalProperties`), not fields.
    fn is_map(&self) -> bool;
    /// How a list at this position is merged.
    fn list_type(&self) -> ListType;
    /// Whether the value is replaced and owned whole (`x-kubernetes-map-type: atomic`, and
    /// scalar-like types such as IntOrString and Quantity).
    fn atomic(&self) -> bool;
    /// For a list-map item schema: the value a missing key field defaults to (upstream uses the
    /// schema's `default`, e.g. `protocol: TCP` for ports).
    fn key_default(&self, _key: &str) -> Option<Value> {
        None
    }
}

/// The fallback schema: objects are structs of unknown fields, lists are atomic.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSchema;

impl ApplySchema for NoSchema {
    fn field(&self, _name: &str) -> Option<Box<dyn ApplySchema + '_>> {
        Some(Box::new(NoSchema))
    }
    fn items(&self) -> Option<Box<dyn ApplySchema + '_>> {
        Some(Box::new(NoSchema))
    }
    fn is_map(&self) -> bool {
        false
    }
    fn list_type(&self) -> ListType {
        ListType::Atomic
    }
    fn atomic(&self) -> bool {
        false
    }
}

type Schema<'s> = Box<dyn ApplySchema + 's>;

/// The schema of the value at `key` of an object, and whether `key` is a named field (as
/// opposed to a map key, which is data).
fn child_schema<'s>(s: &'s dyn ApplySchema, key: &str) -> (Schema<'s>, bool) {
    if !s.is_map()
        && let Some(f) = s.field(key)
    {
        return (f, true);
    }
    match s.items() {
        Some(i) => (i, false),
        None => (Box::new(NoSchema), !s.is_map()),
    }
}

fn item_schema<'s>(s: &'s dyn ApplySchema) -> Schema<'s> {
    s.items().unwrap_or_else(|| Box::new(NoSchema))
}

/// The operation a managedFields entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write.
    Update,
}

impl Operation {
    /// The wire form, `Apply` or `Update`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// Another manager owns a field that the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The other manager's name.
    pub manager: String,
    /// How it acquired the field.
    pub operation: Operation,
    /// The API version it wrote with.
    pub api_version: String,
    /// The subresource it wrote through (empty: the main resource).
    pub subresource: String,
    /// The field.
    pub path: Path,
}

impl Conflict {
    /// The manager as upstream prints it: `"kubectl"`, `"x" with subresource "status"`, and
    /// ` using apps/v1` for updaters.
    pub fn manager_description(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }

    /// The field path, e.g. `.spec.replicas`.
    pub fn field(&self) -> String {
        path_string(&self.path)
    }

    /// The per-conflict cause message: `conflict with "kubectl" using apps/v1`.
    pub fn cause_message(&self) -> String {
        format!("conflict with {}", self.manager_description())
    }
}

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    /// Fields owned by other managers would change; retry with `force` to take them.
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration is not valid for apply (not an object, managedFields set,
    /// duplicate or missing list-map keys…).
    #[error("{0}")]
    Invalid(String),
}

/// Upstream's conflict message: `Apply failed with 1 conflict: conflict with "m": .spec.x`, or
/// for several, one block per manager listing its fields.
pub fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: {}: {}",
            c.cause_message(),
            c.field()
        );
    }
    let mut by_manager: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for c in conflicts {
        by_manager
            .entry(c.cause_message())
            .or_default()
            .push(c.field());
    }
    let mut blocks: Vec<String> = by_manager
        .into_iter()
        .map(|(m, fields)| {
            let mut b = m;
            for f in fields {
                b.push_str("\n- ");
                b.push_str(&f);
            }
            b
        })
        .collect();
    blocks.sort();
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        blocks.join("\n")
    )
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedEntry {
    /// Who (the `fieldManager`).
    pub manager: String,
    /// How.
    pub operation: Operation,
    /// The API version of the write.
    pub api_version: String,
    /// When the entry last changed (RFC 3339), if known.
    pub time: Option<String>,
    /// The subresource written through (empty: main resource).
    pub subresource: String,
    /// The owned fields.
    pub fields: FieldSet,
}

impl ManagedEntry {
    /// Whether two entries belong to the same manager identity: appliers are one identity
    /// whatever their API version, updaters one per API version (as upstream).
    fn same_identity(&self, manager: &str, op: Operation, api_version: &str, sub: &str) -> bool {
        self.manager == manager
            && self.operation == op
            && self.subresource == sub
            && (op == Operation::Apply || self.api_version == api_version)
    }

    /// The JSON form.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("manager".into(), json!(self.manager));
        m.insert("operation".into(), json!(self.operation.as_str()));
        m.insert("apiVersion".into(), json!(self.api_version));
        if let Some(t) = &self.time {
            m.insert("time".into(), json!(t));
        }
        m.insert("fieldsType".into(), json!("FieldsV1"));
        m.insert("fieldsV1".into(), self.fields.to_fields_v1());
        if !self.subresource.is_empty() {
            m.insert("subresource".into(), json!(self.subresource));
        }
        Value::Object(m)
    }

    /// Reads one entry.
    pub fn from_json(v: &Value) -> Result<Self, FieldsError> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let operation = match s("operation").as_deref() {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => return Err(FieldsError(format!("unknown operation {other:?}"))),
        };
        if let Some(t) = s("fieldsType")
            && t != "FieldsV1"
        {
            return Err(FieldsError(format!("unsupported fieldsType {t:?}")));
        }
        let fields = match v.get("fieldsV1") {
            Some(f) => FieldSet::from_fields_v1(f)?,
            None => FieldSet::new(),
        };
        Ok(Self {
            manager: s("manager").unwrap_or_default(),
            operation,
            api_version: s("apiVersion").unwrap_or_default(),
            time: s("time"),
            subresource: s("subresource").unwrap_or_default(),
            fields,
        })
    }
}

/// Reads `metadata.managedFields` of `obj` (empty when absent).
pub fn managed_fields(obj: &Value) -> Result<Vec<ManagedEntry>, FieldsError> {
    match obj.pointer("/metadata/managedFields") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(ManagedEntry::from_json).collect(),
        Some(_) => Err(FieldsError("metadata.managedFields must be a list".into())),
    }
}

/// Writes `entries` as `metadata.managedFields` of `obj`, sorted as upstream sorts them
/// (appliers first, then by time, manager, API version); no entries removes the field.
pub fn set_managed_fields(obj: &mut Value, mut entries: Vec<ManagedEntry>) {
    entries.retain(|e| !e.fields.is_empty());
    entries.sort_by(|a, b| {
        (
            a.operation,
            &a.time,
            &a.manager,
            &a.api_version,
            &a.subresource,
        )
            .cmp(&(
                b.operation,
                &b.time,
                &b.manager,
                &b.api_version,
                &b.subresource,
            ))
    });
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let md = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(md) = md.as_object_mut() else {
        return;
    };
    if entries.is_empty() {
        md.remove("managedFields");
    } else {
        md.insert(
            "managedFields".into(),
            Value::Array(entries.iter().map(ManagedEntry::to_json).collect()),
        );
    }
}

fn without_managed_fields(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(md) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        md.remove("managedFields");
    }
    o
}

fn f(name: &str) -> PathElement {
    PathElement::Field(name.to_owned())
}

/// The metadata fields nobody owns (upstream's stripMeta).
fn strip_set() -> FieldSet {
    let mut s = FieldSet::new();
    for p in [
        vec![f("apiVersion")],
        vec![f("kind")],
        vec![f("metadata")],
        vec![f("metadata"), f("name")],
        vec![f("metadata"), f("namespace")],
        vec![f("metadata"), f("creationTimestamp")],
        vec![f("metadata"), f("selfLink")],
        vec![f("metadata"), f("uid")],
        vec![f("metadata"), f("clusterName")],
        vec![f("metadata"), f("generation")],
        vec![f("metadata"), f("managedFields")],
        vec![f("metadata"), f("resourceVersion")],
    ] {
        s.insert(&p);
    }
    s
}

/// The fields of `obj` as apply tracks them: leaves (scalars, atomic values, empty objects),
/// list items (list-map items by key, set items by value) and map entries. Struct fields that
/// hold other fields are implied, not listed, as upstream.
pub fn fields_of(obj: &Value, schema: &dyn ApplySchema) -> Result<FieldSet, ApplyError> {
    let mut set = FieldSet::new();
    walk_fields(obj, schema, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn walk_fields(
    v: &Value,
    s: &dyn ApplySchema,
    path: &mut Path,
    set: &mut FieldSet,
) -> Result<(), ApplyError> {
    if s.atomic() {
        set.insert(path);
        return Ok(());
    }
    match v {
        Value::Object(m) => {
            for (k, cv) in m {
                let (cs, named) = child_schema(s, k);
                path.push(f(k));
                walk_fields(cv, &*cs, path, set)?;
                let empty = cv.is_null() || cv.as_object().is_some_and(Map::is_empty);
                if empty || !named {
                    set.insert(path);
                }
                path.pop();
            }
        }
        Value::Array(items) => match s.list_type() {
            ListType::Atomic => set.insert(path),
            ListType::Set => {
                for item in items {
                    path.push(PathElement::Value(item.clone()));
                    set.insert(path);
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                let is = item_schema(s);
                for item in items {
                    let pe = key_of(item, &keys, &*is, path)?;
                    path.push(pe);
                    walk_fields(item, &*is, path, set)?;
                    set.insert(path);
                    path.pop();
                }
            }
        },
        _ => set.insert(path),
    }
    Ok(())
}

/// The key element of a list-map item.
fn key_of(
    item: &Value,
    keys: &[String],
    s: &dyn ApplySchema,
    path: &[PathElement],
) -> Result<PathElement, ApplyError> {
    let where_ = || path_string(path);
    let obj = item.as_object().ok_or_else(|| {
        ApplyError::Invalid(format!(
            "{}: the items of an associative list must be objects",
            where_()
        ))
    })?;
    let mut fields = Vec::new();
    for k in keys {
        match obj.get(k) {
            Some(v) if !v.is_null() => fields.push((k.clone(), v.clone())),
            _ => {
                if let Some(d) = s.key_default(k) {
                    fields.push((k.clone(), d));
                }
            }
        }
    }
    if fields.is_empty() {
        return Err(ApplyError::Invalid(format!(
            "{}: associative list with keys has an element that omits key field {:?}",
            where_(),
            keys.first().map(String::as_str).unwrap_or_default()
        )));
    }
    Ok(PathElement::key(fields))
}

/// The path element of each item of a non-atomic list (`None` for atomic lists).
fn list_elements(
    items: &[Value],
    s: &dyn ApplySchema,
    path: &[PathElement],
) -> Result<Option<Vec<PathElement>>, ApplyError> {
    match s.list_type() {
        ListType::Atomic => Ok(None),
        ListType::Map(keys) if keys.is_empty() => Ok(None),
        ListType::Set => Ok(Some(
            items
                .iter()
                .map(|v| PathElement::Value(v.clone()))
                .collect(),
        )),
        ListType::Map(keys) => {
            let is = item_schema(s);
            items
                .iter()
                .map(|i| key_of(i, &keys, &*is, path))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        }
    }
}

fn strip_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_nulls).collect()),
        other => other.clone(),
    }
}

/// Merges `applied` into `live`: objects field by field, list-maps and sets item by item
/// (items only in `live` keep their place, items only in `applied` follow the shared item they
/// were next to), everything else replaced. A `null` in `applied` removes the field.
pub fn merge(live: &Value, applied: &Value, schema: &dyn ApplySchema) -> Result<Value, ApplyError> {
    merge_at(live, applied, schema, &mut Vec::new())
}

fn merge_at(
    live: &Value,
    applied: &Value,
    s: &dyn ApplySchema,
    path: &mut Path,
) -> Result<Value, ApplyError> {
    if s.atomic() {
        return Ok(strip_nulls(applied));
    }
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, av) in a {
                if av.is_null() {
                    out.remove(k);
                    continue;
                }
                let (cs, _) = child_schema(s, k);
                path.push(f(k));
                let nv = match l.get(k) {
                    Some(lv) if !lv.is_null() => merge_at(lv, av, &*cs, path)?,
                    _ => {
                        // Validate keys of new lists too (duplicates are an error).
                        merge_at(&Value::Null, av, &*cs, path)?
                    }
                };
                path.pop();
                out.insert(k.clone(), nv);
            }
            Ok(Value::Object(out))
        }
        (_, Value::Array(a)) => {
            let l: &[Value] = live.as_array().map_or(&[], Vec::as_slice);
            let Some(a_pes) = list_elements(a, s, path)? else {
                return Ok(strip_nulls(applied));
            };
            for (i, pe) in a_pes.iter().enumerate() {
                if a_pes[..i].contains(pe) {
                    return Err(ApplyError::Invalid(format!(
                        "{}: duplicate entries for key {pe}",
                        path_string(path)
                    )));
                }
            }
            let l_pes = list_elements(l, s, path)?.unwrap_or_default();
            let is = item_schema(s);
            // Upstream's interleaving: live-only items keep their place, shared items follow the
            // applied order, applied-only items come where the configuration puts them.
            let find_l = |pe: &PathElement| l_pes.iter().position(|p| p == pe);
            let in_a = |pe: &PathElement| a_pes.contains(pe);
            let mut shared = a_pes.iter().filter(|pe| find_l(pe).is_some());
            let mut next_shared = shared.next();
            let mut merged_a: Vec<&PathElement> = Vec::new();
            let mut out = Vec::with_capacity(l.len().max(a.len()));
            let (mut li, mut ri) = (0, 0);
            let merge_item = |lv: Option<&Value>, ai: usize, path: &mut Path| {
                path.push(a_pes[ai].clone());
                let r = merge_at(lv.unwrap_or(&Value::Null), &a[ai], &*is, path);
                path.pop();
                r
            };
            while li < l.len() || ri < a.len() {
                if li < l.len() && ri < a.len() {
                    let pe = &l_pes[li];
                    if *pe == a_pes[ri] {
                        merged_a.push(pe);
                        out.push(merge_item(Some(&l[li]), ri, path)?);
                        li += 1;
                        ri += 1;
                        next_shared = shared.next();
                        continue;
                    }
                    if in_a(pe) && next_shared.is_some_and(|n| n != pe) {
                        li += 1;
                        continue;
                    }
                }
                if li < l.len() {
                    let pe = &l_pes[li];
                    if !in_a(pe) {
                        out.push(l[li].clone());
                        li += 1;
                        continue;
                    } else if merged_a.contains(&pe) {
                        li += 1;
                    }
                }
                if ri < a.len() {
                    let pe = &a_pes[ri];
                    merged_a.push(pe);
                    out.push(merge_item(find_l(pe).map(|j| &l[j]), ri, path)?);
                    ri += 1;
                    if next_shared == Some(pe) {
                        next_shared = shared.next();
                    }
                }
            }
            Ok(Value::Array(out))
        }
        (_, Value::Object(a)) => {
            // Nothing live to merge with: still walk to validate nested lists.
            let mut out = Map::new();
            for (k, av) in a {
                if av.is_null() {
                    continue;
                }
                let (cs, _) = child_schema(s, k);
                path.push(f(k));
                out.insert(k.clone(), merge_at(&Value::Null, av, &*cs, path)?);
                path.pop();
            }
            Ok(Value::Object(out))
        }
        _ => Ok(applied.clone()),
    }
}

/// What changed between two objects, as field sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Fields present only in the new object.
    pub added: FieldSet,
    /// Leaf fields whose value changed.
    pub modified: FieldSet,
    /// Fields present only in the old object.
    pub removed: FieldSet,
}

impl Comparison {
    fn filter(self, filter: &dyn Fn(&FieldSet) -> FieldSet) -> Self {
        Self {
            added: filter(&self.added),
            modified: filter(&self.modified),
            removed: filter(&self.removed),
        }
    }

    fn changed(&self) -> FieldSet {
        self.added.union(&self.modified)
    }
}

/// Compares `old` with `new` field by field.
pub fn compare(old: &Value, new: &Value, schema: &dyn ApplySchema) -> Comparison {
    let mut c = Comparison::default();
    compare_at(Some(old), Some(new), schema, &mut Vec::new(), true, &mut c);
    c
}

fn is_empty_container(v: Option<&Value>) -> bool {
    match v {
        None => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn compare_at(
    l: Option<&Value>,
    r: Option<&Value>,
    s: &dyn ApplySchema,
    path: &mut Path,
    struct_field: bool,
    out: &mut Comparison,
) {
    let l = l.filter(|v| !v.is_null());
    let r = r.filter(|v| !v.is_null());
    if l.is_none() && r.is_none() {
        return;
    }
    let both_objects = l.is_none_or(Value::is_object) && r.is_none_or(Value::is_object);
    let both_lists = l.is_none_or(Value::is_array) && r.is_none_or(Value::is_array);
    let leaf = s.atomic()
        || !(both_objects || both_lists)
        || (both_lists && s.list_type() == ListType::Atomic)
        || (is_empty_container(l) && is_empty_container(r));
    if !leaf && both_lists {
        let la: &[Value] = l.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        let ra: &[Value] = r.and_then(Value::as_array).map_or(&[], Vec::as_slice);
        match (list_elements(la, s, path), list_elements(ra, s, path)) {
            (Ok(Some(lp)), Ok(Some(rp))) => {
                let is = item_schema(s);
                let mut order: Vec<&PathElement> = Vec::new();
                for pe in lp.iter().chain(rp.iter()) {
                    if !order.contains(&pe) {
                        order.push(pe);
                    }
                }
                for pe in order {
                    let lv = lp.iter().position(|p| p == pe).map(|i| &la[i]);
                    let rv = rp.iter().position(|p| p == pe).map(|i| &ra[i]);
                    path.push(pe.clone());
                    compare_at(lv, rv, &*is, path, false, out);
                    path.pop();
                }
            }
            _ => return compare_leaf(l, r, path, out),
        }
    } else if !leaf {
        let lm = l.and_then(Value::as_object);
        let rm = r.and_then(Value::as_object);
        let mut keys: Vec<&String> = lm.map(|m| m.keys().collect()).unwrap_or_default();
        for k in rm.into_iter().flat_map(|m| m.keys()) {
            if lm.is_none_or(|m| !m.contains_key(k)) {
                keys.push(k);
            }
        }
        for k in keys {
            let (cs, named) = child_schema(s, k);
            let lv = lm.and_then(|m| m.get(k));
            let rv = rm.and_then(|m| m.get(k));
            let is_struct = named && !cs.is_map() && lv.or(rv).is_some_and(Value::is_object);
            path.push(f(k));
            compare_at(lv, rv, &*cs, path, is_struct, out);
            path.pop();
        }
    } else {
        return compare_leaf(l, r, path, out);
    }
    // A whole container appeared or went away. Upstream records the container itself too,
    // except for struct fields (its typed zero values always have them).
    if !struct_field {
        if l.is_none() {
            out.added.insert(path);
        } else if r.is_none() {
            out.removed.insert(path);
        }
    }
}

fn compare_leaf(l: Option<&Value>, r: Option<&Value>, path: &Path, out: &mut Comparison) {
    match (l, r) {
        (None, Some(_)) => out.added.insert(path),
        (Some(_), None) => out.removed.insert(path),
        (Some(a), Some(b)) if a != b => out.modified.insert(path),
        _ => {}
    }
}

/// `v` without the fields and items of `set`; a container emptied by the removal disappears.
pub fn remove_items(v: &Value, set: &FieldSet, schema: &dyn ApplySchema) -> Value {
    remove_at(v, set, schema).unwrap_or_else(|| Value::Object(Map::new()))
}

fn remove_at(v: &Value, set: &FieldSet, s: &dyn ApplySchema) -> Option<Value> {
    if s.atomic() {
        return Some(v.clone());
    }
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, cv) in m {
                let pe = f(k);
                if set.has_member(&pe) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        let (cs, _) = child_schema(s, k);
                        if let Some(nv) = remove_at(cv, sub, &*cs) {
                            out.insert(k.clone(), nv);
                        }
                    }
                    None => {
                        out.insert(k.clone(), cv.clone());
                    }
                }
            }
            (!out.is_empty()).then_some(Value::Object(out))
        }
        Value::Array(items) => {
            let Ok(Some(pes)) = list_elements(items, s, &[]) else {
                return Some(v.clone());
            };
            let is = item_schema(s);
            let mut out = Vec::new();
            for (item, pe) in items.iter().zip(pes) {
                if set.has_member(&pe) {
                    continue;
                }
                match set.with_prefix(&pe) {
                    Some(sub) => {
                        if let Some(nv) = remove_at(item, sub, &*is) {
                            out.push(nv);
                        }
                    }
                    None => out.push(item.clone()),
                }
            }
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => Some(other.clone()),
    }
}

/// `set` plus every named struct field that has paths below it (upstream's
/// EnsureNamedFieldsAreMembers), so that removing by the set keeps or drops whole structs.
fn ensure_named(set: &FieldSet, s: &dyn ApplySchema) -> FieldSet {
    let (members, children) = set.parts();
    let mut out = FieldSet::new();
    for m in members {
        out.add_member(m.clone());
    }
    for (pe, child) in children {
        let cs = match pe {
            PathElement::Field(name) => {
                let (cs, named) = child_schema(s, name);
                if named {
                    out.add_member(pe.clone());
                }
                cs
            }
            _ => item_schema(s),
        };
        out.put_child(pe.clone(), ensure_named(child, &*cs));
    }
    out
}

/// Server-side apply and managed-fields tracking for one type.
pub struct FieldManager<'s> {
    schema: &'s dyn ApplySchema,
    ignore_status: bool,
    subresource: String,
    now: Option<String>,
}

impl std::fmt::Debug for FieldManager<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FieldManager")
            .field("ignore_status", &self.ignore_status)
            .field("subresource", &self.subresource)
            .finish_non_exhaustive()
    }
}

const BEFORE_FIRST_APPLY: &str = "before-first-apply";

/// The manager kubectl uses for `apply --server-side`; only it keeps client-side apply's
/// annotation in step, as upstream.
const KUBECTL: &str = "kubectl";

/// Client-side apply's record of the last applied configuration.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Upstream keeps at most this many `Update` entries; older ones are merged into
/// [`ANCIENT_CHANGES`] entries (one per API version).
pub const MAX_UPDATE_MANAGERS: usize = 10;

/// The manager that collects the oldest updaters' fields beyond [`MAX_UPDATE_MANAGERS`].
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// Merges the oldest `Update` entries into per-version `ancient-changes` entries until at most
/// [`MAX_UPDATE_MANAGERS`] updaters remain, as upstream caps them.
fn cap_updaters(entries: &mut Vec<ManagedEntry>) {
    let count = |e: &[ManagedEntry]| {
        e.iter()
            .filter(|x| x.operation == Operation::Update && !x.fields.is_empty())
            .count()
    };
    while count(entries) > MAX_UPDATE_MANAGERS {
        // The oldest updater that is not a bucket itself (entries without time count as oldest).
        let Some(oldest) = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                e.operation == Operation::Update
                    && e.manager != ANCIENT_CHANGES
                    && !e.fields.is_empty()
            })
            .min_by(|a, b| a.1.time.cmp(&b.1.time))
            .map(|(i, _)| i)
        else {
            return;
        };
        let old = entries.remove(oldest);
        match entries.iter_mut().find(|e| {
            e.same_identity(
                ANCIENT_CHANGES,
                Operation::Update,
                &old.api_version,
                &old.subresource,
            )
        }) {
            Some(bucket) => {
                bucket.fields = bucket.fields.union(&old.fields);
                bucket.time = old.time.max(bucket.time.clone());
            }
            None => entries.push(ManagedEntry {
                manager: ANCIENT_CHANGES.into(),
                ..old
            }),
        }
    }
}

/// Rewrites an existing client-side apply annotation of `obj` to the configuration just
/// applied (without the annotation itself), so a later client-side apply diffs against it.
fn sync_last_applied(obj: &mut Value, applied: &Value) {
    let has = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .is_some();
    if !has {
        return;
    }
    let mut config = applied.clone();
    if let Some(a) = config
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove(LAST_APPLIED);
        if a.is_empty()
            && let Some(md) = config.get_mut("metadata").and_then(Value::as_object_mut)
        {
            md.remove("annotations");
        }
    }
    let text = format!("{config}\n");
    if let Some(a) = obj
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.insert(LAST_APPLIED.into(), Value::String(text));
    }
}

impl<'s> FieldManager<'s> {
    /// A field manager over `schema`, tracking every field, for the main resource.
    pub fn new(schema: &'s dyn ApplySchema) -> Self {
        Self {
            schema,
            ignore_status: false,
            subresource: String::new(),
            now: None,
        }
    }

    /// Whether `status` is left out of tracking (resources with a status subresource: writes
    /// to the main resource cannot change it).
    pub fn ignore_status(mut self, ignore: bool) -> Self {
        self.ignore_status = ignore;
        self
    }

    /// Writes go through a subresource (`status`): entries record it, and for `status` only
    /// the `status` field is tracked.
    pub fn subresource(mut self, sub: &str) -> Self {
        self.subresource = sub.to_owned();
        self
    }

    /// The timestamp (RFC 3339) written into changed entries; default: none (this crate reads
    /// no clock, so callers pass their now).
    pub fn at_time(mut self, now: &str) -> Self {
        self.now = Some(now.to_owned());
        self
    }

    fn now(&self) -> Option<String> {
        self.now.clone()
    }

    /// The fields this manager tracks out of `set` (status or everything-but-status dropped
    /// per the subresource).
    fn reset_filter(&self, set: &FieldSet) -> FieldSet {
        let status = f("status");
        if self.subresource == "status" {
            return set.only_under(&status);
        }
        if self.ignore_status {
            let mut st = FieldSet::new();
            st.insert(std::slice::from_ref(&status));
            return set.recursive_difference(&st);
        }
        set.clone()
    }

    fn api_version_of(obj: &Value) -> String {
        obj.get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    /// Applies `applied` (the configuration `manager` wants) onto `live` (`None`: the object
    /// does not exist yet) and returns the object to store, with `metadata.managedFields`
    /// updated. Fields other managers own with a different value are conflicts unless `force`
    /// (then they change hands).
    pub fn apply(
        &self,
        live: Option<&Value>,
        applied: &Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApplyError> {
        if !applied.is_object() {
            return Err(ApplyError::Invalid(
                "the applied configuration must be an object".into(),
            ));
        }
        if applied
            .pointer("/metadata/managedFields")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApplyError::Invalid(
                "metadata.managedFields must be nil".into(),
            ));
        }
        let api_version = Self::api_version_of(applied);
        let now = self.now();
        let mut entries = match live {
            Some(l) => managed_fields(l).unwrap_or_default(),
            None => Vec::new(),
        };
        let live_obj = live.map_or_else(|| json!({}), without_managed_fields);
        if live.is_some() && entries.is_empty() {
            // An object nobody tracked yet: whoever wrote it owns everything it has.
            let cmp = compare(&json!({}), &live_obj, self.schema);
            let set = self.reset_filter(&cmp.changed());
            entries.push(ManagedEntry {
                manager: BEFORE_FIRST_APPLY.into(),
                operation: Operation::Update,
                api_version: Self::api_version_of(&live_obj),
                time: now.clone(),
                subresource: self.subresource.clone(),
                fields: set.difference(&strip_set()),
            });
        }
        let applied = without_managed_fields(applied);
        let merged = merge(&live_obj, &applied, self.schema)?;
        let new_set = self.reset_filter(&fields_of(&applied, self.schema)?);
        let idx = entries
            .iter()
            .position(|e| e.same_identity(manager, Operation::Apply, "", &self.subresource));
        let last_set = idx.map(|i| entries[i].fields.clone());
        let old_time = idx.and_then(|i| entries[i].time.clone());
        if let Some(i) = idx {
            entries.remove(i);
        }
        let mine = ManagedEntry {
            manager: manager.into(),
            operation: Operation::Apply,
            api_version: api_version.clone(),
            time: old_time,
            subresource: self.subresource.clone(),
            fields: new_set,
        };
        let merged = match &last_set {
            Some(last) if !last.is_empty() => self.prune(&merged, &entries, &mine, last),
            _ => merged,
        };
        let cmp = compare(&live_obj, &merged, self.schema).filter(&|s| self.reset_filter(s));
        let changed = cmp.changed();
        let mut conflicts = Vec::new();
        for e in &entries {
            for path in e.fields.intersection(&changed).paths() {
                conflicts.push(Conflict {
                    manager: e.manager.clone(),
                    operation: e.operation,
                    api_version: e.api_version.clone(),
                    subresource: e.subresource.clone(),
                    path,
                });
            }
        }
        if !force && !conflicts.is_empty() {
            // kubectl moving an object from client-side to server-side apply: fields whose
            // value is still what the last client-side apply set are its to take.
            let allowed = (manager == KUBECTL)
                .then(|| self.allowed_by_last_applied(&live_obj, &api_version))
                .flatten();
            conflicts.retain(|c| !allowed.as_ref().is_some_and(|a| a.has(&c.path)));
            if !conflicts.is_empty() {
                return Err(ApplyError::Conflicts(conflicts));
            }
        }
        for e in &mut entries {
            e.fields = e.fields.difference(&changed).difference(&cmp.removed);
        }
        let object_changed = live_obj != merged;
        let mut mine = mine;
        mine.fields = mine.fields.difference(&strip_set());
        if object_changed || mine.time.is_none() || last_set.as_ref() != Some(&mine.fields) {
            mine.time = now;
        }
        entries.push(mine);
        cap_updaters(&mut entries);
        let mut out = merged;
        set_managed_fields(&mut out, entries);
        if manager == KUBECTL {
            sync_last_applied(&mut out, &applied);
        }
        Ok(out)
    }

    /// The fields of the client-side apply annotation of `live` that still have the value it
    /// set (upstream's lastAppliedManager); `None` without a usable annotation.
    fn allowed_by_last_applied(&self, live: &Value, api_version: &str) -> Option<FieldSet> {
        let text = live
            .pointer("/metadata/annotations")?
            .get(LAST_APPLIED)?
            .as_str()?;
        let last: Value = serde_json::from_str(text).ok()?;
        if last.get("apiVersion").and_then(Value::as_str) != Some(api_version) {
            return None;
        }
        let set = fields_of(&last, self.schema).ok()?;
        let cmp = compare(&last, live, self.schema);
        Some(
            set.difference(&cmp.modified)
                .difference(&cmp.added)
                .difference(&cmp.removed),
        )
    }

    /// Removes from `merged` what `last` (the manager's previous applied set) had and nobody,
    /// the manager's new set included, owns any more.
    fn prune(
        &self,
        merged: &Value,
        others: &[ManagedEntry],
        mine: &ManagedEntry,
        last: &FieldSet,
    ) -> Value {
        let s = self.schema;
        let named = |set: &FieldSet| ensure_named(set, s);
        let set_of = |v: &Value| fields_of(v, s).map(|x| named(&x)).unwrap_or_default();
        let last_n = named(last);
        let mut managed = mine.fields.clone();
        for e in others {
            managed = managed.union(&e.fields);
        }
        let managed_n = named(&managed);
        let merged_set = set_of(merged);
        let pruned = remove_items(merged, &last_n, s);
        let keep = set_of(&pruned).union(&managed_n);
        let pruned = remove_items(merged, &merged_set.difference(&keep), s);
        let gone = merged_set
            .difference(&set_of(&pruned))
            .intersection(&last_n);
        remove_items(merged, &gone, s)
    }

    /// Records a non-apply write: `old` (`None` on create) became `new`. The fields that
    /// changed now belong to `manager` (operation `Update`) and to nobody else; entries left
    /// without fields are dropped. Objects whose managed fields were never tracked stay
    /// untracked on update, as upstream. A client may also replace `managedFields` itself; an
    /// empty list keeps the stored entries, `[{}]` resets them. Writes through a subresource
    /// always start from the stored entries.
    pub fn record_update(&self, old: Option<&Value>, new: &mut Value, manager: &str) {
        let reset = self.subresource.is_empty()
            && matches!(
                new.pointer("/metadata/managedFields"),
                Some(Value::Array(a)) if a.len() == 1 && a[0].as_object().is_some_and(Map::is_empty)
            );
        let given = if reset {
            Some(Vec::new())
        } else if self.subresource.is_empty() {
            managed_fields(new).ok().filter(|e| !e.is_empty())
        } else {
            None
        };
        let mut entries = match given {
            Some(e) => e,
            None => old
                .map(|o| managed_fields(o).unwrap_or_default())
                .unwrap_or_default(),
        };
        if entries.is_empty() && old.is_some() {
            // Never tracked: leave it so (only apply starts tracking such objects).
            set_managed_fields(new, Vec::new());
            return;
        }
        let old_obj = old.map_or_else(|| json!({}), without_managed_fields);
        let new_obj = without_managed_fields(new);
        let cmp = compare(&old_obj, &new_obj, self.schema).filter(&|s| self.reset_filter(s));
        let changed = cmp.changed();
        for e in &mut entries {
            e.fields = e.fields.difference(&changed).difference(&cmp.removed);
        }
        let taken = changed.difference(&strip_set());
        if !taken.is_empty() {
            let api_version = Self::api_version_of(&new_obj);
            let now = self.now();
            match entries.iter_mut().find(|e| {
                e.same_identity(manager, Operation::Update, &api_version, &self.subresource)
            }) {
                Some(e) => {
                    e.fields = e.fields.union(&taken);
                    e.time = now.clone();
                }
                None => entries.push(ManagedEntry {
                    manager: manager.into(),
                    operation: Operation::Update,
                    api_version,
                    time: now,
                    subresource: self.subresource.clone(),
                    fields: taken,
                }),
            }
        }
        cap_updaters(&mut entries);
        set_managed_fields(new, entries);
    }
}

/// [`FieldManager::apply`] with default settings (everything tracked, main resource).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    schema: &dyn ApplySchema,
) -> Result<Value, ApplyError> {
    FieldManager::new(schema).apply(live, applied, manager, force)
}

/// [`FieldManager::record_update`] with default settings (everything tracked, main resource).
pub fn record_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    schema: &dyn ApplySchema,
) {
    FieldManager::new(schema).record_update(old, new, manager);
}

/// Unix seconds as RFC 3339 UTC (`2024-01-02T03:04:05Z`).
#[cfg(test)]
fn rfc3339(secs: i64) -> String {
    crate::time::format_rfc3339(secs)
}
