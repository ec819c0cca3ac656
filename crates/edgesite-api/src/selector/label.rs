//! Label selectors: the string grammar of `?labelSelector=`, the structured
//! `metav1.LabelSelector`, matching and the canonical string form.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use serde_json::Value;

use super::{Result, SelectorError};

/// Longest name part of a label key, and longest label value.
const MAX_NAME_LEN: usize = 63;
/// Longest DNS-1123 subdomain, the optional prefix of a label key.
const MAX_PREFIX_LEN: usize = 253;

/// How a [`Requirement`] relates a label key to its values.
///
/// `=` and `==` select the same objects but are kept apart so that a selector prints back the
/// way the client wrote it, as upstream does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key=value`: the label is present and equal to the value.
    Equals,
    /// `key==value`: same as [`Operator::Equals`].
    DoubleEquals,
    /// `key!=value`: the label is absent or different from the value.
    NotEquals,
    /// `key in (a,b)` / `In`: the label is present and equal to one of the values.
    In,
    /// `key notin (a,b)` / `NotIn`: the label is absent or equal to none of the values.
    NotIn,
    /// `key` / `Exists`: the label is present, whatever its value.
    Exists,
    /// `!key` / `DoesNotExist`: the label is absent.
    DoesNotExist,
    /// `key>n`: the label is present, an integer, and greater than `n`.
    GreaterThan,
    /// `key<n`: the label is present, an integer, and less than `n`.
    LessThan,
}

impl Operator {
    /// The spelling used in error messages: the string syntax for the binary operators, the
    /// `metav1` name for the unary ones, which have no operator token of their own.
    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => "in",
            Operator::NotIn => "notin",
            Operator::Exists => "Exists",
            Operator::DoesNotExist => "DoesNotExist",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition of a [`LabelSelector`]: a label key, an [`Operator`] and its values.
///
/// Values are kept as a sorted set: upstream de-duplicates them while parsing and prints them
/// sorted, and neither their order nor repetitions change what matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: BTreeSet<String>,
}

impl Requirement {
    /// Builds a requirement, validating it as upstream `NewRequirement` does: the key must be a
    /// qualified name, every value a valid label value, `in`/`notin` need at least one value,
    /// `=`/`==`/`!=` exactly one, `>`/`<` exactly one integer, exists/does-not-exist none.
    /// Counts are checked before duplicates collapse, so `=` with `["a", "a"]` is rejected.
    pub fn new<I>(key: impl Into<String>, operator: Operator, values: I) -> Result<Self>
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let key = key.into();
        let values: Vec<String> = values.into_iter().map(Into::into).collect();
        validate_key(&key)?;
        let expected = match operator {
            Operator::In | Operator::NotIn => (values.is_empty()).then_some("at least one value"),
            Operator::Exists | Operator::DoesNotExist => {
                (!values.is_empty()).then_some("no values")
            }
            Operator::Equals
            | Operator::DoubleEquals
            | Operator::NotEquals
            | Operator::GreaterThan
            | Operator::LessThan => (values.len() != 1).then_some("exactly one value"),
        };
        if let Some(expected) = expected {
            return Err(SelectorError::InvalidValueCount {
                key,
                operator: operator.as_str().to_owned(),
                expected,
                got: values.len(),
            });
        }
        for value in &values {
            validate_value(&key, value)?;
            if matches!(operator, Operator::GreaterThan | Operator::LessThan)
                && value.parse::<i64>().is_err()
            {
                return Err(SelectorError::NotAnInteger {
                    key,
                    operator: operator.as_str().to_owned(),
                    value: value.clone(),
                });
            }
        }
        Ok(Requirement {
            key,
            operator,
            values: values.into_iter().collect(),
        })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values, sorted and de-duplicated; empty for exists and does-not-exist.
    pub fn values(&self) -> &BTreeSet<String> {
        &self.values
    }

    /// Whether a label set satisfies this requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Like [`Requirement::matches`], reading labels through `get`, which returns `None` for an
    /// absent label.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        let value = get(&self.key);
        match self.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In => {
                value.is_some_and(|v| self.values.contains(v))
            }
            // Absence satisfies the negative operators: `env!=prod` must keep selecting
            // objects that carry no `env` label at all, as upstream does.
            Operator::NotEquals | Operator::NotIn => {
                !value.is_some_and(|v| self.values.contains(v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                // A label that is not an integer simply does not match; it is not an error,
                // because labels are written by users long before anyone selects on them.
                let (Some(actual), Some(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    actual > bound
                } else {
                    actual < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let infix = match self.operator {
            Operator::Exists => return f.write_str(&self.key),
            Operator::DoesNotExist => return write!(f, "!{}", self.key),
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::Equals
            | Operator::DoubleEquals
            | Operator::NotEquals
            | Operator::GreaterThan
            | Operator::LessThan => self.operator.as_str(),
        };
        f.write_str(&self.key)?;
        f.write_str(infix)?;
        let set_based = matches!(self.operator, Operator::In | Operator::NotIn);
        if set_based {
            f.write_str("(")?;
        }
        // A set holding only "" prints as `()`, which parses back to exactly that set.
        for (i, value) in self.values.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(value)?;
        }
        if set_based {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: the conjunction of its [`Requirement`]s, or the selector that matches
/// nothing.
///
/// Three cases that look alike are kept apart, as upstream does:
/// - the empty string and a structured `{}` select **everything** ([`LabelSelector::everything`]);
/// - a structured `null` (an absent `spec.selector`) selects **nothing**
///   ([`LabelSelector::nothing`]), so that a controller with no selector adopts no pods.
///
/// Requirements are kept sorted by key (stably, so requirements on the same key keep their
/// order), which makes [`Display`](fmt::Display) canonical: `parse(s.to_string()) == s` for
/// every selector except [`LabelSelector::nothing`], which prints as the empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    // `None` is the selector that matches nothing; it has no string form of its own.
    requirements: Option<Vec<Requirement>>,
}

impl LabelSelector {
    /// The selector that matches every label set: the empty string, or a structured `{}`.
    pub fn everything() -> Self {
        LabelSelector {
            requirements: Some(Vec::new()),
        }
    }

    /// The selector that matches no label set, as upstream makes of a `null` structured
    /// selector.
    pub fn nothing() -> Self {
        LabelSelector { requirements: None }
    }

    /// A selector requiring all of `requirements`.
    pub fn from_requirements(requirements: impl IntoIterator<Item = Requirement>) -> Self {
        let mut requirements: Vec<Requirement> = requirements.into_iter().collect();
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        LabelSelector {
            requirements: Some(requirements),
        }
    }

    /// A selector requiring every label of `labels` with its value (`k1=v1,k2=v2`), the form
    /// of a Service's or a ReplicationController's `spec.selector`. An empty map selects
    /// everything. Keys and values are validated.
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Result<Self> {
        let requirements = labels
            .iter()
            .map(|(key, value)| Requirement::new(key.clone(), Operator::Equals, [value.clone()]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::from_requirements(requirements))
    }

    /// Parses the string form used in `?labelSelector=`.
    ///
    /// Requirements are separated by commas: `key=value`, `key==value`, `key!=value`,
    /// `key in (v1,v2)`, `key notin (v1,v2)`, `key` (exists), `!key` (does not exist),
    /// `key>n` and `key<n` (integers). Spaces, tabs, CR and LF may surround every token. The
    /// empty string selects everything. Values may be empty (`key=`, `key in (a,)`, `key in ()`
    /// is the set holding only the empty value). `in` and `notin` are keywords only where an
    /// operator is expected, so `in=x` selects on a label named `in`.
    pub fn parse(selector: &str) -> Result<Self> {
        let tokens = lex(selector);
        let requirements = Parser { tokens, pos: 0 }.parse()?;
        Ok(Self::from_requirements(requirements))
    }

    /// Converts a structured `metav1.LabelSelector` as found in objects, for example the
    /// `spec.selector` of a Deployment:
    /// `{"matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "In",
    /// "values": ["web"]}]}`.
    ///
    /// `null` selects nothing and `{}` everything, as upstream `LabelSelectorAsSelector` does;
    /// pass `Value::Null` for an absent field. Operators are `In`, `NotIn` (at least one value),
    /// `Exists` and `DoesNotExist` (no values). Unknown fields are ignored, like the JSON
    /// decoder upstream; a missing `key` or `operator` counts as empty and is rejected by
    /// validation.
    pub fn from_metav1(selector: &Value) -> Result<Self> {
        let object = match selector {
            Value::Null => return Ok(Self::nothing()),
            Value::Object(object) => object,
            other => {
                return Err(SelectorError::MalformedLabelSelector(format!(
                    "expected an object or null, got {}",
                    json_type(other)
                )));
            }
        };
        let mut requirements = Vec::new();
        match object.get("matchLabels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(labels)) => {
                for (key, value) in labels {
                    let Some(value) = value.as_str() else {
                        return Err(SelectorError::MalformedLabelSelector(format!(
                            "matchLabels[{key:?}] must be a string, got {}",
                            json_type(value)
                        )));
                    };
                    requirements.push(Requirement::new(key.clone(), Operator::Equals, [value])?);
                }
            }
            Some(other) => {
                return Err(SelectorError::MalformedLabelSelector(format!(
                    "matchLabels must be an object, got {}",
                    json_type(other)
                )));
            }
        }
        match object.get("matchExpressions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(expressions)) => {
                for (i, expression) in expressions.iter().enumerate() {
                    requirements.push(expression_requirement(i, expression)?);
                }
            }
            Some(other) => {
                return Err(SelectorError::MalformedLabelSelector(format!(
                    "matchExpressions must be an array, got {}",
                    json_type(other)
                )));
            }
        }
        Ok(Self::from_requirements(requirements))
    }

    /// Whether this selector matches every label set (upstream `Empty()`).
    pub fn is_everything(&self) -> bool {
        self.requirements.as_ref().is_some_and(Vec::is_empty)
    }

    /// Whether this is [`LabelSelector::nothing`].
    pub fn is_nothing(&self) -> bool {
        self.requirements.is_none()
    }

    /// The requirements, sorted by key; empty for both everything and nothing.
    pub fn requirements(&self) -> &[Requirement] {
        self.requirements.as_deref().unwrap_or_default()
    }

    /// Whether a label set satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Whether the `metadata.labels` of a raw object satisfy every requirement. An object
    /// without labels has an empty label set; labels that are not strings count as absent.
    pub fn matches_object(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        self.matches_with(|key| labels.and_then(|l| l.get(key)).and_then(Value::as_str))
    }

    /// Like [`LabelSelector::matches`], reading labels through `get`, which returns `None`
    /// for an absent label; lets callers match label storage of any shape without copying it.
    pub fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
        match &self.requirements {
            None => false,
            Some(requirements) => requirements.iter().all(|r| r.matches_with(&get)),
        }
    }

    /// The single value `key` must have for the selector to match, if the selector pins it
    /// (`key=v`, `key==v` or `key in (v)`): lets a store answer from an index instead of a
    /// scan. Only the first requirement on `key` is consulted, as upstream.
    pub fn requires_exact_match(&self, key: &str) -> Option<&str> {
        let requirement = self.requirements().iter().find(|r| r.key == key)?;
        match requirement.operator {
            Operator::Equals | Operator::DoubleEquals | Operator::In
                if requirement.values.len() == 1 =>
            {
                requirement.values.first().map(String::as_str)
            }
            _ => None,
        }
    }
}

impl Default for LabelSelector {
    /// The empty selector, which matches everything.
    fn default() -> Self {
        Self::everything()
    }
}

impl FromStr for LabelSelector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for LabelSelector {
    /// The canonical string form: requirements sorted by key, `in`/`notin` values sorted,
    /// no spaces except around `in`/`notin`. [`LabelSelector::nothing`] prints as the empty
    /// string, like upstream, although that string parses to everything.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

/// Converts one `matchExpressions` entry; `index` only serves error messages.
fn expression_requirement(index: usize, expression: &Value) -> Result<Requirement> {
    let malformed = |what: String| {
        SelectorError::MalformedLabelSelector(format!("matchExpressions[{index}]{what}"))
    };
    let Value::Object(expression) = expression else {
        return Err(malformed(format!(
            " must be an object, got {}",
            json_type(expression)
        )));
    };
    let string_field = |name: &str| match expression.get(name) {
        None | Some(Value::Null) => Ok(""),
        Some(Value::String(s)) => Ok(s.as_str()),
        Some(other) => Err(malformed(format!(
            ".{name} must be a string, got {}",
            json_type(other)
        ))),
    };
    let key = string_field("key")?;
    let operator = match string_field("operator")? {
        "In" => Operator::In,
        "NotIn" => Operator::NotIn,
        "Exists" => Operator::Exists,
        "DoesNotExist" => Operator::DoesNotExist,
        other => {
            return Err(SelectorError::UnknownOperator {
                operator: other.to_owned(),
            });
        }
    };
    let values = match expression.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(values)) => values
            .iter()
            .enumerate()
            .map(|(j, value)| {
                value.as_str().ok_or_else(|| {
                    malformed(format!(
                        ".values[{j}] must be a string, got {}",
                        json_type(value)
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?,
        Some(other) => {
            return Err(malformed(format!(
                ".values must be an array, got {}",
                json_type(other)
            )));
        }
    };
    Requirement::new(key, operator, values)
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks that `key` is a qualified name: `[prefix/]name` where the prefix is a DNS-1123
/// subdomain and the name a label-value-like word of at most 63 characters.
fn validate_key(key: &str) -> Result<()> {
    let reason = |reason: String| SelectorError::InvalidLabelKey {
        key: key.to_owned(),
        reason,
    };
    let mut parts = key.split('/');
    let (prefix, name) = match (parts.next(), parts.next(), parts.next()) {
        (Some(name), None, _) => (None, name),
        (Some(prefix), Some(name), None) => (Some(prefix), name),
        _ => {
            return Err(reason(
                "must be a name with an optional DNS subdomain prefix and a single '/' \
                 (e.g. 'app' or 'example.com/app')"
                    .to_owned(),
            ));
        }
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err(reason("prefix before '/' must not be empty".to_owned()));
        }
        if prefix.len() > MAX_PREFIX_LEN {
            return Err(reason(format!(
                "prefix must be no more than {MAX_PREFIX_LEN} characters"
            )));
        }
        if !is_dns1123_subdomain(prefix) {
            return Err(reason(format!(
                "prefix {prefix:?} must be a DNS-1123 subdomain: lowercase alphanumerics, '-' \
                 and '.', each dot-separated part starting and ending with an alphanumeric"
            )));
        }
    }
    if name.is_empty() {
        return Err(reason("name part must not be empty".to_owned()));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(reason(format!(
            "name part must be no more than {MAX_NAME_LEN} characters"
        )));
    }
    if !is_label_word(name) {
        return Err(reason(format!(
            "name part {name:?} must consist of alphanumerics, '-', '_' and '.', and start and \
             end with an alphanumeric"
        )));
    }
    Ok(())
}

/// Checks that `value` is a label value: empty, or at most 63 characters from
/// `[A-Za-z0-9_.-]` starting and ending with an alphanumeric.
fn validate_value(key: &str, value: &str) -> Result<()> {
    let reason = if value.len() > MAX_NAME_LEN {
        format!("must be no more than {MAX_NAME_LEN} characters")
    } else if !value.is_empty() && !is_label_word(value) {
        "must be empty or consist of alphanumerics, '-', '_' and '.', and start and end with an \
         alphanumeric"
            .to_owned()
    } else {
        return Ok(());
    };
    Err(SelectorError::InvalidLabelValue {
        key: key.to_owned(),
        value: value.to_owned(),
        reason,
    })
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn is_label_word(s: &str) -> bool {
    let bytes = s.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain(s: &str) -> bool {
    let lower_alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    s.split('.').all(|part| {
        let bytes = part.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                lower_alnum(first)
                    && lower_alnum(last)
                    && bytes.iter().all(|b| lower_alnum(b) || *b == b'-')
            }
            _ => false,
        }
    })
}

/// Tokens of the string grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    End,
    Identifier,
    In,
    NotIn,
    Comma,
    Open,
    Close,
    Bang,
    Equals,
    DoubleEquals,
    NotEquals,
    Greater,
    Less,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    text: &'a str,
    offset: usize,
}

/// Where the parser stands: `in` and `notin` are operators only where an operator is
/// expected, and plain words everywhere else (keys and values may be called `in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Context {
    Operator,
    Word,
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_symbol(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

/// Splits the selector into tokens, ending with [`Kind::End`]. Words run up to whitespace or
/// a symbol, whatever they contain; validation of keys and values rejects the bad ones later,
/// with a message that names them.
fn lex(s: &str) -> Vec<Token<'_>> {
    let bytes = s.as_bytes();
    let mut tokens = Vec::new();
    let mut pos = 0;
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        let start = pos;
        let Some(&b) = bytes.get(pos) else {
            tokens.push(Token {
                kind: Kind::End,
                text: "",
                offset: start,
            });
            return tokens;
        };
        let kind = if is_symbol(b) {
            // Only `==` and `!=` span two symbols; every single symbol is a token of its own.
            let next = bytes.get(pos + 1).copied();
            pos += 1;
            match (b, next) {
                (b'=', Some(b'=')) => {
                    pos += 1;
                    Kind::DoubleEquals
                }
                (b'!', Some(b'=')) => {
                    pos += 1;
                    Kind::NotEquals
                }
                (b'=', _) => Kind::Equals,
                (b'!', _) => Kind::Bang,
                (b'(', _) => Kind::Open,
                (b')', _) => Kind::Close,
                (b',', _) => Kind::Comma,
                (b'>', _) => Kind::Greater,
                _ => Kind::Less,
            }
        } else {
            while pos < bytes.len() && !is_whitespace(bytes[pos]) && !is_symbol(bytes[pos]) {
                pos += 1;
            }
            match &s[start..pos] {
                "in" => Kind::In,
                "notin" => Kind::NotIn,
                _ => Kind::Identifier,
            }
        };
        tokens.push(Token {
            kind,
            text: &s[start..pos],
            offset: start,
        });
    }
}

/// Recursive-descent parser over the tokens, with the same acceptance as upstream, including
/// its corner cases (`x in ()`, `x in (a,)`, `x in (,a)` are accepted, `x in (a,,)` is not).
struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self, context: Context) -> (Kind, Token<'a>) {
        // The lexer always ends with `End`, and nothing consumes past it.
        let token = self.tokens[self.pos.min(self.tokens.len() - 1)];
        let kind = match (context, token.kind) {
            (Context::Word, Kind::In | Kind::NotIn) => Kind::Identifier,
            (_, kind) => kind,
        };
        (kind, token)
    }

    fn next(&mut self, context: Context) -> (Kind, Token<'a>) {
        let item = self.peek(context);
        if item.0 != Kind::End {
            self.pos += 1;
        }
        item
    }

    fn parse(mut self) -> Result<Vec<Requirement>> {
        let mut requirements = Vec::new();
        match self.peek(Context::Word) {
            (Kind::End, _) => return Ok(requirements),
            (Kind::Identifier | Kind::Bang, _) => {}
            (_, token) => return Err(unexpected(token, "'!', a label key or end of string")),
        }
        loop {
            requirements.push(self.requirement()?);
            match self.next(Context::Word) {
                (Kind::End, _) => return Ok(requirements),
                (Kind::Comma, _) => match self.peek(Context::Word) {
                    (Kind::Identifier | Kind::Bang, _) => {}
                    (_, token) => return Err(unexpected(token, "'!' or a label key after ','")),
                },
                (_, token) => return Err(unexpected(token, "',' or end of string")),
            }
        }
    }

    fn requirement(&mut self) -> Result<Requirement> {
        let mut negated = false;
        let (mut kind, mut token) = self.next(Context::Word);
        if kind == Kind::Bang {
            negated = true;
            (kind, token) = self.next(Context::Word);
        }
        if kind != Kind::Identifier {
            return Err(unexpected(token, "a label key"));
        }
        let key = token.text;
        // The key is checked before the rest is parsed, so that `a/b/c=x,(` reports the key.
        validate_key(key)?;
        if negated {
            return Requirement::new(key, Operator::DoesNotExist, Vec::<String>::new());
        }
        if let (Kind::End | Kind::Comma, _) = self.peek(Context::Word) {
            return Requirement::new(key, Operator::Exists, Vec::<String>::new());
        }
        let operator = match self.next(Context::Operator) {
            (Kind::Equals, _) => Operator::Equals,
            (Kind::DoubleEquals, _) => Operator::DoubleEquals,
            (Kind::NotEquals, _) => Operator::NotEquals,
            (Kind::In, _) => Operator::In,
            (Kind::NotIn, _) => Operator::NotIn,
            (Kind::Greater, _) => Operator::GreaterThan,
            (Kind::Less, _) => Operator::LessThan,
            (_, token) => {
                return Err(unexpected(
                    token,
                    "an operator ('=', '==', '!=', 'in', 'notin', '>' or '<'), ',' or end of \
                     string",
                ));
            }
        };
        let values = match operator {
            Operator::In | Operator::NotIn => self.value_set()?,
            _ => vec![self.single_value()?],
        };
        Requirement::new(key, operator, values)
    }

    /// The value after `=`, `==`, `!=`, `>` or `<`; nothing before `,` or the end is the empty
    /// value.
    fn single_value(&mut self) -> Result<&'a str> {
        match self.peek(Context::Word) {
            (Kind::End | Kind::Comma, _) => Ok(""),
            (Kind::Identifier, token) => {
                self.pos += 1;
                Ok(token.text)
            }
            (_, token) => Err(unexpected(token, "a value, ',' or end of string")),
        }
    }

    /// `(v1,v2,...)` where any value may be empty; `()` is the set of the empty value.
    fn value_set(&mut self) -> Result<Vec<&'a str>> {
        match self.next(Context::Word) {
            (Kind::Open, _) => {}
            (_, token) => return Err(unexpected(token, "'('")),
        }
        match self.peek(Context::Word) {
            (Kind::Close, _) => {
                self.pos += 1;
                return Ok(vec![""]);
            }
            (Kind::Identifier | Kind::Comma, _) => {}
            (_, token) => return Err(unexpected(token, "a value, ',' or ')'")),
        }
        let mut values = Vec::new();
        loop {
            match self.next(Context::Word) {
                (Kind::Identifier, token) => {
                    values.push(token.text);
                    match self.peek(Context::Word) {
                        (Kind::Comma, _) => {}
                        (Kind::Close, _) => {
                            self.pos += 1;
                            return Ok(values);
                        }
                        (_, token) => return Err(unexpected(token, "',' or ')'")),
                    }
                }
                (Kind::Comma, _) => {
                    // A comma with nothing before it, before `)` or before another comma
                    // stands for an empty value; upstream then expects a value after `,,`,
                    // so `(a,,)` is rejected while `(a,)` and `(,,a)` are not.
                    if values.is_empty() {
                        values.push("");
                    }
                    match self.peek(Context::Word) {
                        (Kind::Close, _) => {
                            self.pos += 1;
                            values.push("");
                            return Ok(values);
                        }
                        (Kind::Comma, _) => {
                            self.pos += 1;
                            values.push("");
                        }
                        _ => {}
                    }
                }
                (_, token) => return Err(unexpected(token, "a value or ','")),
            }
        }
    }
}

fn unexpected(token: Token<'_>, expected: &'static str) -> SelectorError {
    let found = if token.kind == Kind::End {
        "end of string".to_owned()
    } else {
        format!("'{}'", token.text)
    };
    SelectorError::UnexpectedToken {
        found,
        offset: token.offset,
        expected,
    }
}
