//! Field paths and field sets as server-side apply tracks them, with the `FieldsV1` JSON form of
//! `metadata.managedFields` (`f:<field>`, `k:<key object>`, `v:<value>`, `i:<index>`, and `.`
//! for "this node itself"). The encoding follows structured-merge-diff so that managed fields
//! written here read the same as upstream's.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::{Map, Value};

/// One step of a [`Path`]: a struct field or map key, a list-map item by its keys, a set item by
/// its value, or a list item by its index.
#[derive(Debug, Clone)]
pub enum PathElement {
    /// A field of a struct or a key of a map (`f:name`).
    Field(String),
    /// An item of a list-map, by its key fields sorted by name (`k:{"name":"nginx"}`).
    Key(Vec<(String, Value)>),
    /// An item of a set, by its value (`v:"a"`).
    Value(Value),
    /// An item of a list by position (`i:0`); read from managed fields, never produced here.
    Index(usize),
}

impl PathElement {
    fn rank(&self) -> u8 {
        match self {
            Self::Field(_) => 0,
            Self::Key(_) => 1,
            Self::Value(_) => 2,
            Self::Index(_) => 3,
        }
    }

    /// A list-map key element; the fields are sorted by name, as upstream keys are.
    pub fn key(mut fields: Vec<(String, Value)>) -> Self {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Self::Key(fields)
    }

    fn key_object(fields: &[(String, Value)]) -> Value {
        Value::Object(fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// The `FieldsV1` form: `f:name`, `k:{"name":"x"}`, `v:"x"`, `i:0`.
    pub fn encode(&self) -> String {
        match self {
            Self::Field(name) => format!("f:{name}"),
            Self::Key(fields) => format!("k:{}", Self::key_object(fields)),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses the `FieldsV1` form of one element.
    pub fn decode(s: &str) -> Result<Self, FieldsError> {
        let bad = |why: &str| FieldsError(format!("invalid path element {s:?}: {why}"));
        let (kind, rest) = s.split_at_checked(2).ok_or_else(|| bad("too short"))?;
        match kind {
            "f:" => Ok(Self::Field(rest.to_owned())),
            "v:" => serde_json::from_str(rest)
                .map(Self::Value)
                .map_err(|e| bad(&e.to_string())),
            "k:" => match serde_json::from_str(rest) {
                Ok(Value::Object(m)) => Ok(Self::key(m.into_iter().collect())),
                Ok(_) => Err(bad("a key must be a JSON object")),
                Err(e) => Err(bad(&e.to_string())),
            },
            "i:" => rest.parse().map(Self::Index).map_err(|_| bad("bad index")),
            _ => Err(bad("unknown element type")),
        }
    }
}

/// How Go's `%v` renders a key or set value in a path: strings quoted, the rest as JSON.
fn value_string(v: &Value) -> String {
    v.to_string()
}

impl fmt::Display for PathElement {
    /// The form upstream uses in conflict messages: `.name`, `[name="x"]`, `[="v"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Key(fields) => {
                let parts: Vec<String> = fields
                    .iter()
                    .map(|(k, v)| format!("{k}={}", value_string(v)))
                    .collect();
                write!(f, "[{}]", parts.join(","))
            }
            Self::Value(v) => write!(f, "[={}]", value_string(v)),
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

impl Ord for PathElement {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| match (self, other) {
                (Self::Field(a), Self::Field(b)) => a.cmp(b),
                (Self::Key(a), Self::Key(b)) => Self::key_object(a)
                    .to_string()
                    .cmp(&Self::key_object(b).to_string()),
                (Self::Value(a), Self::Value(b)) => a.to_string().cmp(&b.to_string()),
                (Self::Index(a), Self::Index(b)) => a.cmp(b),
                _ => Ordering::Equal,
            })
    }
}

impl PartialOrd for PathElement {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for PathElement {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for PathElement {}

/// A path from the root of an object to one of its fields or items.
pub type Path = Vec<PathElement>;

/// Renders a path the way upstream's conflict messages do, e.g.
/// `.spec.template.spec.containers[name="nginx"].image`.
pub fn path_string(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A managedFields entry or `fieldsV1` value that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldsError(pub String);

/// A set of field paths, stored as a tree: `members` are the paths ending at this node,
/// `children` the subtrees below it (never empty). A path being a member says nothing about its
/// parents, as upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    members: BTreeSet<PathElement>,
    children: BTreeMap<PathElement, FieldSet>,
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.children.is_empty()
    }

    /// Adds `path` (the empty path, the whole object, is never tracked).
    pub fn insert(&mut self, path: &[PathElement]) {
        match path {
            [] => {}
            [last] => {
                self.members.insert(last.clone());
            }
            [first, rest @ ..] => self.children.entry(first.clone()).or_default().insert(rest),
        }
    }

    /// Whether `path` is in the set.
    pub fn has(&self, path: &[PathElement]) -> bool {
        match path {
            [] => false,
            [last] => self.members.contains(last),
            [first, rest @ ..] => self.children.get(first).is_some_and(|c| c.has(rest)),
        }
    }

    /// Whether `pe` (one step below the root of this set) is a member.
    pub fn has_member(&self, pe: &PathElement) -> bool {
        self.members.contains(pe)
    }

    /// The paths below `pe`, relative to it (empty when none).
    pub fn with_prefix(&self, pe: &PathElement) -> Option<&FieldSet> {
        self.children.get(pe)
    }

    /// The members at this level and the subtrees, for walkers.
    pub(crate) fn parts(&self) -> (&BTreeSet<PathElement>, &BTreeMap<PathElement, FieldSet>) {
        (&self.members, &self.children)
    }

    pub(crate) fn add_member(&mut self, pe: PathElement) {
        self.members.insert(pe);
    }

    pub(crate) fn put_child(&mut self, pe: PathElement, child: FieldSet) {
        if !child.is_empty() {
            self.children.insert(pe, child);
        }
    }

    /// Every path of the set, in order.
    pub fn paths(&self) -> Vec<Path> {
        let mut out = Vec::new();
        self.collect(&mut Vec::new(), &mut out);
        out
    }

    fn collect(&self, prefix: &mut Path, out: &mut Vec<Path>) {
        let mut members = self.members.iter().peekable();
        for (pe, child) in &self.children {
            while let Some(m) = members.next_if(|m| *m <= pe) {
                let mut p = prefix.clone();
                p.push(m.clone());
                out.push(p);
            }
            prefix.push(pe.clone());
            child.collect(prefix, out);
            prefix.pop();
        }
        for m in members {
            let mut p = prefix.clone();
            p.push(m.clone());
            out.push(p);
        }
    }

    /// The paths in `self` or `other`.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.members.extend(other.members.iter().cloned());
        for (pe, child) in &other.children {
            let merged = match out.children.get(pe) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(pe.clone(), merged);
        }
        out
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        out.members = self.members.intersection(&other.members).cloned().collect();
        for (pe, child) in &self.children {
            if let Some(theirs) = other.children.get(pe) {
                out.put_child(pe.clone(), child.intersection(theirs));
            }
        }
        out
    }

    /// The paths of `self` not in `other`. As upstream, a member of `other` removes only that
    /// path, not the paths below it.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        out.members = self.members.difference(&other.members).cloned().collect();
        for (pe, child) in &self.children {
            match other.children.get(pe) {
                Some(theirs) => out.put_child(pe.clone(), child.difference(theirs)),
                None => out.put_child(pe.clone(), child.clone()),
            }
        }
        out
    }

    /// Like [`difference`](Self::difference), but a member of `other` also removes every path
    /// below it.
    pub fn recursive_difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet::new();
        out.members = self.members.difference(&other.members).cloned().collect();
        for (pe, child) in &self.children {
            if other.members.contains(pe) {
                continue;
            }
            match other.children.get(pe) {
                Some(theirs) => out.put_child(pe.clone(), child.recursive_difference(theirs)),
                None => out.put_child(pe.clone(), child.clone()),
            }
        }
        out
    }

    /// The set restricted to the paths under `pe` (kept with their prefix).
    pub fn only_under(&self, pe: &PathElement) -> FieldSet {
        let mut out = FieldSet::new();
        if self.members.contains(pe) {
            out.members.insert(pe.clone());
        }
        if let Some(c) = self.children.get(pe) {
            out.children.insert(pe.clone(), c.clone());
        }
        out
    }

    /// The `fieldsV1` JSON form.
    pub fn to_fields_v1(&self) -> Value {
        Value::Object(self.emit(false))
    }

    fn emit(&self, include_self: bool) -> Map<String, Value> {
        let mut m = Map::new();
        if include_self {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for pe in &self.members {
            if !self.children.contains_key(pe) {
                m.insert(pe.encode(), Value::Object(Map::new()));
            }
        }
        for (pe, child) in &self.children {
            m.insert(
                pe.encode(),
                Value::Object(child.emit(self.members.contains(pe))),
            );
        }
        m
    }

    /// Reads the `fieldsV1` JSON form.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, FieldsError> {
        let m = v
            .as_object()
            .ok_or_else(|| FieldsError("fieldsV1 must be a JSON object".into()))?;
        let mut out = FieldSet::new();
        for (k, child) in m {
            if k == "." {
                continue;
            }
            let pe = PathElement::decode(k)?;
            let cm = child
                .as_object()
                .ok_or_else(|| FieldsError(format!("fieldsV1 entry {k:?} must be an object")))?;
            if cm.is_empty() || cm.contains_key(".") {
                out.members.insert(pe.clone());
            }
            let sub = FieldSet::from_fields_v1(child)?;
            out.put_child(pe, sub);
        }
        Ok(out)
    }
}

impl fmt::Display for FieldSet {
    /// One path per line, as upstream prints sets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in self.paths() {
            writeln!(f, "{}", path_string(&p))?;
        }
        Ok(())
    }
}
