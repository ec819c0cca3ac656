//! Label and field selectors with the syntax and semantics of the Kubernetes API server.
//!
//! Clients send selectors as strings in `?labelSelector=` and `?fieldSelector=`, and objects
//! carry label selectors in structured form (`spec.selector` of a Deployment, a ReplicaSet, a
//! PodDisruptionBudget...). Both must select exactly the objects the upstream API server would
//! select, because controllers written against Kubernetes (kubectl, client-go informers, kube-rs
//! reflectors) rely on it: an object that a selector wrongly excludes is, for them, deleted.
//!
//! - [`LabelSelector`] parses the string form ([`LabelSelector::parse`]) and the structured
//!   `metav1.LabelSelector` form ([`LabelSelector::from_metav1`]), matches a label map or a raw
//!   object, and prints the canonical string form that kubectl shows and the Scale subresource
//!   reports in `status.selector`.
//! - [`FieldSelector`] parses the string form and matches a map of field values. Which fields a
//!   resource supports is the API server's business: it inspects
//!   [`FieldSelector::requirements`] (or calls [`FieldSelector::check_fields`]) and extracts the
//!   fields of each object itself; [`common_fields`] covers the two fields every resource has.
//!
//! ```
//! use std::collections::BTreeMap;
//! use edgesite_api::selector::{FieldSelector, LabelSelector};
//!
//! let selector = LabelSelector::parse("tier in (web, api), env != prod").unwrap();
//! let labels = BTreeMap::from([("tier".to_owned(), "web".to_owned())]);
//! assert!(selector.matches(&labels));
//! assert_eq!(selector.to_string(), "env!=prod,tier in (api,web)");
//!
//! let fields = FieldSelector::parse("metadata.name=x,status.phase!=Failed").unwrap();
//! assert!(fields.check_fields(|f| f.starts_with("metadata.") || f == "status.phase").is_ok());
//! ```

mod field;
mod label;
#[cfg(test)]
mod tests;

pub use field::{FieldOperator, FieldRequirement, FieldSelector, common_fields};
pub use label::{LabelSelector, Operator, Requirement};

/// Why a selector was rejected. Every message names the offending part of the input, because
/// the API server sends it back verbatim in a 400 `BadRequest` Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The label selector string does not follow the grammar; `found` is the token at byte
    /// `offset` where parsing stopped.
    #[error(
        "unable to parse label selector: found {found} at offset {offset}, expected {expected}"
    )]
    UnexpectedToken {
        /// The token that was found, quoted, or `end of string`.
        found: String,
        /// Byte offset of that token in the selector string.
        offset: usize,
        /// What the grammar allows at that point.
        expected: &'static str,
    },

    /// A label key is not a qualified name: an optional DNS-1123 subdomain and `/`, then a name
    /// of at most 63 characters from `[A-Za-z0-9_.-]` that starts and ends alphanumeric.
    #[error("invalid label key {key:?}: {reason}")]
    InvalidLabelKey {
        /// The rejected key.
        key: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// A label value is longer than 63 characters or uses characters outside `[A-Za-z0-9_.-]`
    /// or does not start and end alphanumeric (the empty value is valid).
    #[error("invalid value {value:?} for label key {key:?}: {reason}")]
    InvalidLabelValue {
        /// The key the value belongs to.
        key: String,
        /// The rejected value.
        value: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// An operator got the wrong number of values: `in`/`notin` need at least one, `=`, `==`,
    /// `!=`, `>` and `<` exactly one, exists and does-not-exist none.
    #[error("operator {operator:?} for label key {key:?} takes {expected}, got {got}")]
    InvalidValueCount {
        /// The key of the requirement.
        key: String,
        /// The operator, in its `metav1` spelling where it has one (`In`, `Exists`...).
        operator: String,
        /// How many values the operator takes.
        expected: &'static str,
        /// How many values were given.
        got: usize,
    },

    /// The value of a `>` or `<` requirement is not a decimal 64-bit integer.
    #[error("value {value:?} for label key {key:?} must be an integer for operator {operator:?}")]
    NotAnInteger {
        /// The key of the requirement.
        key: String,
        /// The operator (`>` or `<`).
        operator: String,
        /// The rejected value.
        value: String,
    },

    /// A `matchExpressions` entry names an operator other than `In`, `NotIn`, `Exists` and
    /// `DoesNotExist` (the structured form has no `Gt`/`Lt`).
    #[error("{operator:?} is not a valid label selector operator")]
    UnknownOperator {
        /// The rejected operator.
        operator: String,
    },

    /// A structured label selector does not have the shape of `metav1.LabelSelector`.
    #[error("malformed label selector: {0}")]
    MalformedLabelSelector(String),

    /// A field selector term has none of the operators `=`, `==` and `!=`.
    #[error(
        "invalid field selector term {term:?}: expected <field>=<value>, <field>==<value> or <field>!=<value>"
    )]
    MissingFieldOperator {
        /// The term, as written between commas.
        term: String,
    },

    /// A field selector value contains a backslash that does not start `\\`, `\,` or `\=`.
    #[error("invalid field selector value {value:?}: invalid escape sequence {sequence:?}")]
    InvalidEscapeSequence {
        /// The value, as written.
        value: String,
        /// The offending sequence (a lone trailing `\` included).
        sequence: String,
    },

    /// A field selector value contains `,` or `=` without a backslash before it.
    #[error(
        "invalid field selector value {value:?}: {character:?} must be escaped with a backslash"
    )]
    UnescapedCharacter {
        /// The value, as written.
        value: String,
        /// The character that must be escaped.
        character: char,
    },

    /// A field selector names a field that the resource does not support.
    #[error("field label not supported: {field}")]
    UnsupportedField {
        /// The rejected field name.
        field: String,
    },
}

/// Result of selector parsing and validation.
pub type Result<T, E = SelectorError> = std::result::Result<T, E>;
