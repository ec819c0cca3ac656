//! Field selectors: the string grammar of `?fieldSelector=` and matching.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::{Result, SelectorError};

/// How a [`FieldRequirement`] compares a field with its value.
///
/// `==` is accepted as a spelling of `=` and, as upstream, prints as `=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FieldOperator {
    /// `field=value` or `field==value`.
    Equals,
    /// `field!=value`.
    NotEquals,
}

impl FieldOperator {
    /// The canonical spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldOperator::Equals => "=",
            FieldOperator::NotEquals => "!=",
        }
    }
}

/// One term of a [`FieldSelector`]: a field name, an operator and a value (unescaped).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    field: String,
    operator: FieldOperator,
    value: String,
}

impl FieldRequirement {
    /// A requirement on `field`. Field names are not validated here: which names exist depends
    /// on the resource, so the API server checks them (see [`FieldSelector::check_fields`]).
    pub fn new(
        field: impl Into<String>,
        operator: FieldOperator,
        value: impl Into<String>,
    ) -> Self {
        FieldRequirement {
            field: field.into(),
            operator,
            value: value.into(),
        }
    }

    /// The field name, exactly as written (no whitespace is trimmed, as upstream).
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The operator.
    pub fn operator(&self) -> FieldOperator {
        self.operator
    }

    /// The value, with escapes removed; may be empty.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Whether a field value satisfies this requirement; `None` (an absent field) counts as
    /// the empty value, as upstream, so that `involvedObject.namespace=` selects objects that
    /// lack the field.
    pub fn matches_value(&self, actual: Option<&str>) -> bool {
        let equal = actual.unwrap_or("") == self.value;
        match self.operator {
            FieldOperator::Equals => equal,
            FieldOperator::NotEquals => !equal,
        }
    }
}

impl fmt::Display for FieldRequirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.field,
            self.operator.as_str(),
            escape_value(&self.value)
        )
    }
}

/// A field selector: the conjunction of its [`FieldRequirement`]s. The empty selector
/// matches everything.
///
/// Terms are kept sorted by their printed form, which makes [`Display`](fmt::Display)
/// canonical: `parse(s.to_string()) == s`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// A selector requiring all of `requirements`.
    pub fn from_requirements(requirements: impl IntoIterator<Item = FieldRequirement>) -> Self {
        let mut requirements: Vec<FieldRequirement> = requirements.into_iter().collect();
        requirements.sort_by_cached_key(ToString::to_string);
        FieldSelector { requirements }
    }

    /// Parses the string form used in `?fieldSelector=`.
    ///
    /// Terms are separated by commas: `field=value`, `field==value` or `field!=value`. Empty
    /// terms are skipped, values may be empty (`involvedObject.namespace=`), and nothing is
    /// trimmed. A term splits at its first operator; the field name cannot contain one. In
    /// values, `\,`, `\=` and `\\` stand for `,`, `=` and `\`; any other backslash and any
    /// unescaped `,` or `=` in a value is an error. The empty string selects everything.
    pub fn parse(selector: &str) -> Result<Self> {
        let mut requirements = Vec::new();
        for term in split_terms(selector) {
            if term.is_empty() {
                continue;
            }
            let Some((field, operator, raw_value)) = split_term(term) else {
                return Err(SelectorError::MissingFieldOperator {
                    term: term.to_owned(),
                });
            };
            requirements.push(FieldRequirement {
                field: field.to_owned(),
                operator,
                value: unescape_value(raw_value)?,
            });
        }
        Ok(Self::from_requirements(requirements))
    }

    /// Whether this selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The terms, in canonical order.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Rejects the selector if it names a field for which `supported` returns false, with
    /// [`SelectorError::UnsupportedField`] naming the first such field — the API server's 400
    /// for `?fieldSelector=spec.foo=x` on a resource that has no such selectable field.
    pub fn check_fields(&self, supported: impl Fn(&str) -> bool) -> Result<()> {
        match self.requirements.iter().find(|r| !supported(&r.field)) {
            Some(r) => Err(SelectorError::UnsupportedField {
                field: r.field.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether an object whose selectable fields are `fields` satisfies every term. A field
    /// missing from the map counts as the empty value.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(fields.get(&r.field).map(String::as_str)))
    }

    /// Like [`FieldSelector::matches`], reading each field through `get`, so that fields can
    /// be extracted lazily from an object.
    pub fn matches_with(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(get(&r.field).as_deref()))
    }

    /// The value `field` must equal for the selector to match, if a `=` term pins it (the
    /// first such term): lets the store serve `metadata.name=x` without a scan.
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && r.operator == FieldOperator::Equals)
            .map(|r| r.value.as_str())
    }
}

impl FromStr for FieldSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for FieldSelector {
    /// The canonical string form: terms sorted, `==` printed as `=`, values escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// The selectable fields every resource has: `metadata.name` and `metadata.namespace` of a raw
/// object, the empty string where the object lacks them (a cluster-scoped object has no
/// namespace). The API server extends this map with each resource's own fields
/// (`spec.nodeName`, `status.phase`, `involvedObject.kind`...).
pub fn common_fields(object: &Value) -> BTreeMap<String, String> {
    let metadata = |name: &str| {
        object
            .get("metadata")
            .and_then(|m| m.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    BTreeMap::from([
        ("metadata.name".to_owned(), metadata("name")),
        ("metadata.namespace".to_owned(), metadata("namespace")),
    ])
}

/// Splits at commas that no backslash escapes, leaving escapes in place for
/// [`unescape_value`].
fn split_terms(selector: &str) -> Vec<&str> {
    if selector.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, b) in selector.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == b',' {
            terms.push(&selector[start..i]);
            start = i + 1;
        }
    }
    terms.push(&selector[start..]);
    terms
}

/// Splits a term at its first operator, preferring `!=` and `==` over `=` at the same
/// position so that `a==b` is not read as field `a`, value `=b`.
fn split_term(term: &str) -> Option<(&str, FieldOperator, &str)> {
    let bytes = term.as_bytes();
    (0..bytes.len()).find_map(|i| match (bytes[i], bytes.get(i + 1)) {
        (b'!', Some(b'=')) => Some((&term[..i], FieldOperator::NotEquals, &term[i + 2..])),
        (b'=', Some(b'=')) => Some((&term[..i], FieldOperator::Equals, &term[i + 2..])),
        (b'=', _) => Some((&term[..i], FieldOperator::Equals, &term[i + 1..])),
        _ => None,
    })
}

fn unescape_value(raw: &str) -> Result<String> {
    let mut value = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ ('\\' | ',' | '=')) => value.push(escaped),
                other => {
                    return Err(SelectorError::InvalidEscapeSequence {
                        value: raw.to_owned(),
                        sequence: other.map_or_else(|| "\\".to_owned(), |c| format!("\\{c}")),
                    });
                }
            },
            // A bare `,` cannot reach here (it splits terms), but a bare `=` can: `a=b=c`.
            ',' | '=' => {
                return Err(SelectorError::UnescapedCharacter {
                    value: raw.to_owned(),
                    character: c,
                });
            }
            c => value.push(c),
        }
    }
    Ok(value)
}

fn escape_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
