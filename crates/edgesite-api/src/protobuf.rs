//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), transcoded to
//! the JSON form the rest of EdgeSite works with.
//!
//! kubectl 1.32's typed clients (`create namespace|configmap|secret|deployment…`, `auth can-i`,
//! `auth whoami`, `drain`) send their bodies in this encoding. A body is the magic `k8s\0`
//! followed by a `runtime.Unknown` envelope: `typeMeta` (apiVersion and kind), `raw` (the
//! object's own message, without type information) and `contentEncoding`/`contentType` (empty
//! in practice). [`decode_object`] strips the envelope, finds the message for the apiVersion and
//! kind in a table derived from the upstream `generated.proto` files and Go types
//! (`data/protobuf/k8s-1.32.json`, written by `scripts/gen-protobuf-schema`) and walks `raw`
//! with that table.
//!
//! The JSON produced is what the Kubernetes API server would produce after decoding into its Go
//! types: the well-known types take their JSON forms (`Time` → RFC 3339, `MicroTime` with six
//! fractional digits, `Quantity` → its string, `IntOrString` → number or string, `Duration` → Go
//! duration string, `bytes` → base64, `RawExtension`/`FieldsV1` → the embedded JSON, the slice
//! types `Verbs`/`ExtraValue` → arrays), and since the Go encoder writes every non-pointer field
//! even when it holds its zero value, zero values of non-pointer `omitempty` fields are dropped
//! again, while pointer fields (such as `spec.replicas: 0`) keep them. Unknown fields are
//! skipped; malformed input gives a [`ProtobufError`], never a panic.
//!
//! ```
//! // A Namespace named "demo": typeMeta {apiVersion "v1", kind "Namespace"},
//! // raw = Namespace{metadata: ObjectMeta{name: "demo"}}.
//! let body = b"k8s\0\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x08\x0a\x06\x0a\x04demo";
//! let obj = edgesite_api::protobuf::decode_object(body).unwrap();
//! assert_eq!(obj, serde_json::json!({
//!     "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}
//! }));
//! ```

mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::OnceLock;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::time::civil_from_days;

use wire::{Reader, WireType, WireValue};

/// The four bytes every Kubernetes protobuf body starts with.
pub const MAGIC: &[u8; 4] = b"k8s\0";

/// How deeply messages may nest before the body is rejected. Real objects stay below 20.
pub const MAX_DEPTH: usize = 100;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

const SCHEMA_JSON: &str = include_str!("../data/protobuf/k8s-1.32.json");
const META_V1: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// Why a protobuf body could not be decoded. The `Display` text is meant for the `message` of
/// a `400 BadRequest` Status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtobufError {
    /// The body does not start with [`MAGIC`].
    #[error("the protobuf body does not start with the Kubernetes magic number \"k8s\\x00\"")]
    BadMagic,
    /// The bytes are not valid protobuf, or a value does not fit its field.
    #[error("malformed protobuf body{}: {message}", at(path))]
    Malformed {
        /// Where in the object (JSON field path, e.g. `spec.template.spec.containers[0]`);
        /// empty for the envelope or the top level.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The envelope names a type this server has no protobuf schema for.
    #[error("no protobuf schema for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind {
        /// The envelope's `typeMeta.apiVersion`.
        api_version: String,
        /// The envelope's `typeMeta.kind`.
        kind: String,
    },
    /// Messages nest deeper than [`MAX_DEPTH`].
    #[error("the protobuf body nests messages deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// The envelope asks for something this decoder does not do (a content encoding, or an
    /// inner content type other than protobuf).
    #[error("unsupported protobuf envelope: {0}")]
    Unsupported(String),
    /// The compiled-in schema table could not be loaded (a build defect).
    #[error("the protobuf schema table is unusable: {0}")]
    Schema(String),
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at {path}")
    }
}

impl ProtobufError {
    fn malformed(message: impl Into<String>) -> Self {
        ProtobufError::Malformed {
            path: String::new(),
            message: message.into(),
        }
    }

    /// Prefixes the path of a `Malformed` error with one segment (a field name, `name[3]` or
    /// `name[key]`).
    fn within(self, segment: impl FnOnce() -> String) -> Self {
        match self {
            ProtobufError::Malformed { path, message } => {
                let seg = segment();
                let path = if path.is_empty() {
                    seg
                } else if path.starts_with('[') {
                    format!("{seg}{path}")
                } else {
                    format!("{seg}.{path}")
                };
                ProtobufError::Malformed { path, message }
            }
            other => other,
        }
    }
}

type Result<T, E = ProtobufError> = std::result::Result<T, E>;

/// Decodes a Kubernetes protobuf body (magic, `runtime.Unknown` envelope, object) into the
/// object's JSON form, with `apiVersion` and `kind` taken from the envelope.
pub fn decode_object(body: &[u8]) -> Result<Value> {
    decode_object_at(body, 0)
}

/// Transcodes one message of the fully qualified protobuf type `message` (e.g.
/// `k8s.io.api.core.v1.ConfigMap`) to JSON, without envelope or magic.
pub fn decode_message(message: &str, bytes: &[u8]) -> Result<Value> {
    let schema = schema()?;
    let msg = schema
        .messages
        .get(message)
        .ok_or_else(|| ProtobufError::Schema(format!("no message {message}")))?;
    Ok(schema.message(msg, bytes, 0)?.0)
}

/// The fully qualified protobuf message for an apiVersion and kind, if the table has one.
/// Option kinds such as `DeleteOptions` are found under every apiVersion, as the API server
/// registers them in every group.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static str> {
    let schema = schema().ok()?;
    let package = schema.group_versions.get(api_version)?;
    [package.as_str(), META_V1].into_iter().find_map(|pkg| {
        schema
            .messages
            .get_key_value(format!("{pkg}.{kind}").as_str())
            .map(|(name, _)| name.as_str())
    })
}

fn decode_object_at(body: &[u8], depth: usize) -> Result<Value> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(ProtobufError::BadMagic);
    };
    let schema = schema()?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    let mut content_encoding = String::new();
    let mut content_type = String::new();
    let mut r = Reader::new(rest);
    let wrap = |name: &'static str| move |e: ProtobufError| e.within(|| name.to_owned());
    while !r.is_empty() {
        let (number, value) = r.field()?;
        match number {
            1 => {
                let tm = expect_len(value).map_err(wrap("typeMeta"))?;
                let mut t = Reader::new(tm);
                while !t.is_empty() {
                    let (n, v) = t.field().map_err(wrap("typeMeta"))?;
                    match n {
                        1 => api_version = string(v).map_err(wrap("typeMeta.apiVersion"))?,
                        2 => kind = string(v).map_err(wrap("typeMeta.kind"))?,
                        _ => {}
                    }
                }
            }
            2 => raw = expect_len(value).map_err(wrap("raw"))?,
            3 => content_encoding = string(value).map_err(wrap("contentEncoding"))?,
            4 => content_type = string(value).map_err(wrap("contentType"))?,
            _ => {}
        }
    }
    if !content_encoding.is_empty() {
        return Err(ProtobufError::Unsupported(format!(
            "content encoding {content_encoding:?}"
        )));
    }
    if !content_type.is_empty() && content_type != MEDIA_TYPE {
        return Err(ProtobufError::Unsupported(format!(
            "inner content type {content_type:?}"
        )));
    }
    if api_version.is_empty() || kind.is_empty() {
        return Err(ProtobufError::malformed(
            "the envelope has no typeMeta.apiVersion or typeMeta.kind",
        ));
    }
    let message = message_for(&api_version, &kind).ok_or_else(|| ProtobufError::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let (body, _) = schema.message(&schema.messages[message], raw, depth)?;
    let mut out = Map::new();
    out.insert("apiVersion".into(), api_version.into());
    out.insert("kind".into(), kind.into());
    if let Value::Object(fields) = body {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------------
// The schema table.

#[derive(Debug, Deserialize)]
struct RawSchema {
    group_versions: HashMap<String, String>,
    messages: HashMap<String, RawMessage>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    #[serde(default)]
    slice: bool,
    fields: HashMap<u32, RawField>,
}

#[derive(Debug, Deserialize)]
struct RawField {
    name: String,
    #[serde(rename = "type")]
    ty: String,
    #[serde(default)]
    repeated: bool,
    #[serde(default)]
    map_key: Option<String>,
    #[serde(default)]
    keep_zero: bool,
}

#[derive(Debug)]
struct Schema {
    group_versions: HashMap<String, String>,
    messages: HashMap<String, Message>,
}

#[derive(Debug)]
struct Message {
    special: Special,
    fields: HashMap<u32, Field>,
}

/// Messages whose JSON form is not an object of their fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    None,
    Time,
    MicroTime,
    Duration,
    IntOrString,
    Quantity,
    RawExtension,
    FieldsV1,
    Slice,
}

#[derive(Debug)]
struct Field {
    name: String,
    ty: Ty,
    label: Label,
    keep_zero: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Label {
    Single,
    Repeated,
    Map(Scalar),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ty {
    Scalar(Scalar),
    Message(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scalar {
    Double,
    Float,
    Int32,
    Int64,
    Uint32,
    Uint64,
    Sint32,
    Sint64,
    Fixed32,
    Fixed64,
    Sfixed32,
    Sfixed64,
    Bool,
    String,
    Bytes,
}

impl Scalar {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "double" => Scalar::Double,
            "float" => Scalar::Float,
            "int32" => Scalar::Int32,
            "int64" => Scalar::Int64,
            "uint32" => Scalar::Uint32,
            "uint64" => Scalar::Uint64,
            "sint32" => Scalar::Sint32,
            "sint64" => Scalar::Sint64,
            "fixed32" => Scalar::Fixed32,
            "fixed64" => Scalar::Fixed64,
            "sfixed32" => Scalar::Sfixed32,
            "sfixed64" => Scalar::Sfixed64,
            "bool" => Scalar::Bool,
            "string" => Scalar::String,
            "bytes" => Scalar::Bytes,
            _ => return None,
        })
    }

    fn wire_type(self) -> WireType {
        match self {
            Scalar::Double | Scalar::Fixed64 | Scalar::Sfixed64 => WireType::Fixed64,
            Scalar::Float | Scalar::Fixed32 | Scalar::Sfixed32 => WireType::Fixed32,
            Scalar::String | Scalar::Bytes => WireType::Len,
            _ => WireType::Varint,
        }
    }

    /// The JSON value of a map key or value absent from its entry.
    fn default_value(self) -> Value {
        match self {
            Scalar::String | Scalar::Bytes => Value::String(String::new()),
            Scalar::Bool => Value::Bool(false),
            Scalar::Double | Scalar::Float => Value::from(0.0),
            _ => Value::from(0),
        }
    }
}

fn schema() -> Result<&'static Schema> {
    static SCHEMA: OnceLock<std::result::Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(load_schema)
        .as_ref()
        .map_err(|e| ProtobufError::Schema(e.clone()))
}

fn load_schema() -> std::result::Result<Schema, String> {
    let raw: RawSchema = serde_json::from_str(SCHEMA_JSON).map_err(|e| e.to_string())?;
    let mut messages = HashMap::with_capacity(raw.messages.len());
    for (name, m) in &raw.messages {
        let special = match name.as_str() {
            "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
            "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
            "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => Special::Duration,
            "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => Special::FieldsV1,
            "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
            "k8s.io.apimachinery.pkg.api.resource.Quantity"
            | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => Special::Quantity,
            "k8s.io.apimachinery.pkg.runtime.RawExtension" => Special::RawExtension,
            _ if m.slice => Special::Slice,
            _ => Special::None,
        };
        let mut fields = HashMap::with_capacity(m.fields.len());
        for (&number, f) in &m.fields {
            let ty = match Scalar::parse(&f.ty) {
                Some(s) => Ty::Scalar(s),
                None if raw.messages.contains_key(&f.ty) => Ty::Message(f.ty.clone()),
                None => return Err(format!("{name}.{}: unknown type {}", f.name, f.ty)),
            };
            let label = match (&f.map_key, f.repeated) {
                (Some(k), _) => Label::Map(
                    Scalar::parse(k).ok_or_else(|| format!("{name}.{}: map key {k}", f.name))?,
                ),
                (None, true) => Label::Repeated,
                (None, false) => Label::Single,
            };
            fields.insert(
                number,
                Field {
                    name: f.name.clone(),
                    ty,
                    label,
                    keep_zero: f.keep_zero,
                },
            );
        }
        messages.insert(name.clone(), Message { special, fields });
    }
    Ok(Schema {
        group_versions: raw.group_versions,
        messages,
    })
}

// ---------------------------------------------------------------------------------------------
// Transcoding.

/// Whether a decoded message value is its type's zero value, which decides if the field is
/// written to JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Zero {
    /// Not zero: always written.
    No,
    /// Zero: written only for pointer / non-`omitempty` fields.
    Yes,
    /// A zero value whose JSON form is `null` (zero `Time`, empty `RawExtension`): never
    /// written as a field.
    Null,
}

impl Schema {
    fn message(&self, msg: &Message, buf: &[u8], depth: usize) -> Result<(Value, Zero)> {
        if depth >= MAX_DEPTH {
            return Err(ProtobufError::TooDeep);
        }
        match msg.special {
            Special::None => {}
            Special::Time | Special::MicroTime => return time(buf, msg.special),
            Special::Duration => {
                let nanos = int_field(buf, 1)?;
                return Ok((go_duration(nanos).into(), zero_if(nanos == 0)));
            }
            Special::IntOrString => return int_or_string(buf),
            Special::Quantity => {
                let s = string_field(buf, 1)?;
                return Ok((if s.is_empty() { "0".into() } else { s }.into(), Zero::No));
            }
            Special::RawExtension | Special::FieldsV1 => {
                let raw = bytes_field(buf, 1)?;
                if raw.is_empty() {
                    return Ok((Value::Null, Zero::Null));
                }
                return embedded(raw, depth).map(|v| (v, Zero::No));
            }
            Special::Slice => {
                let (v, _) = self.fields(msg, buf, depth)?;
                let items = match v {
                    Value::Object(mut m) => m.remove("items").unwrap_or(Value::Array(Vec::new())),
                    _ => Value::Array(Vec::new()),
                };
                let empty = items.as_array().is_none_or(Vec::is_empty);
                return Ok((items, zero_if(empty)));
            }
        }
        self.fields(msg, buf, depth)
    }

    fn fields(&self, msg: &Message, buf: &[u8], depth: usize) -> Result<(Value, Zero)> {
        let mut out = Map::new();
        let mut r = Reader::new(buf);
        while !r.is_empty() {
            let (number, value) = r.field()?;
            let Some(field) = msg.fields.get(&number) else {
                continue;
            };
            self.field(field, value, depth, &mut out)
                .map_err(|e| e.within(|| field.name.clone()))?;
        }
        Ok((Value::Object(out), Zero::No))
    }

    fn field(
        &self,
        field: &Field,
        value: WireValue<'_>,
        depth: usize,
        out: &mut Map<String, Value>,
    ) -> Result<()> {
        match &field.label {
            Label::Single => {
                let (v, zero) = self.value(&field.ty, value, depth)?;
                let omit = match zero {
                    Zero::No => false,
                    Zero::Yes => !field.keep_zero,
                    Zero::Null => true,
                };
                if omit {
                    out.remove(&field.name);
                } else {
                    out.insert(field.name.clone(), v);
                }
            }
            Label::Repeated => {
                let Value::Array(items) = out
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Array(Vec::new()))
                else {
                    return Err(ProtobufError::malformed("repeated field is not a list"));
                };
                match (&field.ty, value) {
                    (Ty::Scalar(s), WireValue::Len(packed)) if s.wire_type() != WireType::Len => {
                        let mut r = Reader::new(packed);
                        while !r.is_empty() {
                            let v = match s.wire_type() {
                                WireType::Varint => WireValue::Varint(r.varint()?),
                                WireType::Fixed32 => WireValue::Fixed32(r.fixed32()?),
                                _ => WireValue::Fixed64(r.fixed64()?),
                            };
                            items.push(scalar(*s, v)?);
                        }
                    }
                    (ty, value) => {
                        let index = items.len();
                        let (v, _) = self
                            .value(ty, value, depth)
                            .map_err(|e| e.within(|| format!("[{index}]")))?;
                        items.push(v);
                    }
                }
                if items.is_empty() {
                    out.remove(&field.name);
                }
            }
            Label::Map(key_ty) => {
                let entry = expect_len(value)?;
                let mut key = None;
                let mut val = None;
                let mut r = Reader::new(entry);
                while !r.is_empty() {
                    match r.field()? {
                        (1, v) => key = Some(scalar(*key_ty, v)?),
                        (2, v) => val = Some(v),
                        _ => {}
                    }
                }
                let key = match key.unwrap_or_else(|| key_ty.default_value()) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let v = match (val, &field.ty) {
                    (Some(v), ty) => self.value(ty, v, depth),
                    (None, Ty::Scalar(s)) => Ok((s.default_value(), Zero::Yes)),
                    (None, ty @ Ty::Message(_)) => self.value(ty, WireValue::Len(&[]), depth),
                }
                .map_err(|e| e.within(|| format!("[{key}]")))?
                .0;
                let Value::Object(map) = out
                    .entry(field.name.clone())
                    .or_insert_with(|| Value::Object(Map::new()))
                else {
                    return Err(ProtobufError::malformed("map field is not an object"));
                };
                map.insert(key, v);
            }
        }
        Ok(())
    }

    fn value(&self, ty: &Ty, value: WireValue<'_>, depth: usize) -> Result<(Value, Zero)> {
        match ty {
            Ty::Scalar(s) => {
                let v = scalar(*s, value)?;
                let zero = match &v {
                    Value::String(s) => s.is_empty(),
                    Value::Bool(b) => !b,
                    Value::Number(n) => n.as_f64() == Some(0.0),
                    _ => false,
                };
                Ok((v, zero_if(zero)))
            }
            Ty::Message(name) => {
                let buf = expect_len(value)?;
                self.message(&self.messages[name], buf, depth + 1)
            }
        }
    }
}

fn zero_if(zero: bool) -> Zero {
    if zero { Zero::Yes } else { Zero::No }
}

fn expect(value: WireValue<'_>, want: WireType) -> Result<()> {
    if value.wire_type() == want {
        Ok(())
    } else {
        Err(ProtobufError::malformed(format!(
            "expected wire type {}, found {}",
            want.name(),
            value.wire_type().name()
        )))
    }
}

fn expect_len(value: WireValue<'_>) -> Result<&[u8]> {
    match value {
        WireValue::Len(b) => Ok(b),
        other => {
            expect(other, WireType::Len)?;
            Ok(&[])
        }
    }
}

fn string(value: WireValue<'_>) -> Result<String> {
    let b = expect_len(value)?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::malformed("string is not valid UTF-8"))
}

fn scalar(s: Scalar, value: WireValue<'_>) -> Result<Value> {
    expect(value, s.wire_type())?;
    let float = |f: f64| {
        Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| ProtobufError::malformed(format!("{f} is not a finite number")))
    };
    Ok(match (s, value) {
        (Scalar::Int32, WireValue::Varint(v)) => Value::from(v as i64 as i32),
        (Scalar::Int64, WireValue::Varint(v)) => Value::from(v as i64),
        (Scalar::Uint32, WireValue::Varint(v)) => Value::from(v as u32),
        (Scalar::Uint64, WireValue::Varint(v)) => Value::from(v),
        (Scalar::Sint32, WireValue::Varint(v)) => Value::from(zigzag(v) as i32),
        (Scalar::Sint64, WireValue::Varint(v)) => Value::from(zigzag(v)),
        (Scalar::Bool, WireValue::Varint(v)) => Value::Bool(v != 0),
        (Scalar::Fixed32, WireValue::Fixed32(v)) => Value::from(v),
        (Scalar::Sfixed32, WireValue::Fixed32(v)) => Value::from(v as i32),
        (Scalar::Float, WireValue::Fixed32(v)) => float(f64::from(f32::from_bits(v)))?,
        (Scalar::Fixed64, WireValue::Fixed64(v)) => Value::from(v),
        (Scalar::Sfixed64, WireValue::Fixed64(v)) => Value::from(v as i64),
        (Scalar::Double, WireValue::Fixed64(v)) => float(f64::from_bits(v))?,
        (Scalar::String, v) => Value::String(string(v)?),
        (Scalar::Bytes, WireValue::Len(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        _ => return Err(ProtobufError::malformed("value does not match its type")),
    })
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Reads fields 1 (int64 seconds or duration) and 2 (int32 nanos) style integers: the last
/// varint of field `number`, 0 when absent.
fn int_field(buf: &[u8], number: u32) -> Result<i64> {
    let mut out = 0;
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (n, v) = r.field()?;
        if n == number {
            expect(v, WireType::Varint)?;
            if let WireValue::Varint(x) = v {
                out = x as i64;
            }
        }
    }
    Ok(out)
}

fn bytes_field(buf: &[u8], number: u32) -> Result<&[u8]> {
    let mut out: &[u8] = &[];
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let (n, v) = r.field()?;
        if n == number {
            out = expect_len(v)?;
        }
    }
    Ok(out)
}

fn string_field(buf: &[u8], number: u32) -> Result<String> {
    let b = bytes_field(buf, number)?;
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::malformed("string is not valid UTF-8"))
}

fn int_or_string(buf: &[u8]) -> Result<(Value, Zero)> {
    let mut ty = 0i64;
    let mut int_val = 0i32;
    let mut str_val = String::new();
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        match r.field()? {
            (1, v) => {
                expect(v, WireType::Varint)?;
                if let WireValue::Varint(x) = v {
                    ty = x as i64;
                }
            }
            (2, v) => {
                expect(v, WireType::Varint)?;
                if let WireValue::Varint(x) = v {
                    int_val = x as i64 as i32;
                }
            }
            (3, v) => str_val = string(v)?,
            _ => {}
        }
    }
    match ty {
        0 => Ok((Value::from(int_val), zero_if(int_val == 0))),
        1 => {
            let zero = zero_if(str_val.is_empty());
            Ok((Value::String(str_val), zero))
        }
        t => Err(ProtobufError::malformed(format!(
            "IntOrString has the invalid type {t} (0 is int, 1 is string)"
        ))),
    }
}

/// The JSON value held in a `RawExtension` or `FieldsV1`: JSON, or a nested protobuf object.
fn embedded(raw: &[u8], depth: usize) -> Result<Value> {
    if raw.starts_with(MAGIC) {
        return decode_object_at(raw, depth + 1);
    }
    serde_json::from_slice(raw).map_err(|e| {
        ProtobufError::malformed(format!(
            "embedded object is neither JSON nor Kubernetes protobuf: {e}"
        ))
    })
}

fn time(buf: &[u8], kind: Special) -> Result<(Value, Zero)> {
    let seconds = int_field(buf, 1)?;
    let nanos = int_field(buf, 2)? as i32;
    if seconds == 0 && nanos == 0 {
        return Ok((Value::Null, Zero::Null));
    }
    if !(0..1_000_000_000).contains(&nanos) {
        return Err(ProtobufError::malformed(format!(
            "time has nanos {nanos} outside [0, 1e9)"
        )));
    }
    let days = seconds.div_euclid(86_400);
    let secs = seconds.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return Err(ProtobufError::malformed(format!(
            "time {seconds}s is outside the years 0 to 9999"
        )));
    }
    let (hh, mm, ss) = (secs / 3600, secs / 60 % 60, secs % 60);
    let s = if kind == Special::MicroTime {
        format!(
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
            nanos / 1000
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    };
    Ok((Value::String(s), Zero::No))
}

/// Go's `time.Duration.String()`: `1h2m3.5s`, `1.5ms`, `0s`.
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    let frac = |v: u64, digits: u32| {
        let scale = 10u64.pow(digits);
        let (int, rest) = (v / scale, v % scale);
        if rest == 0 {
            int.to_string()
        } else {
            let f = format!("{rest:0width$}", width = digits as usize);
            format!("{int}.{}", f.trim_end_matches('0'))
        }
    };
    let body = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 3))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 6))
    } else {
        let secs = u / 1_000_000_000;
        let (h, m) = (secs / 3600, secs / 60 % 60);
        let s = frac(u % 60_000_000_000, 9);
        if h > 0 {
            format!("{h}h{m}m{s}s")
        } else if m > 0 {
            format!("{m}m{s}s")
        } else {
            format!("{s}s")
        }
    };
    format!("{sign}{body}")
}
