//! [`ApplySchema`] over the served OpenAPI documents ([`crate::openapi::Node`]), so that apply
//! merges lists by their `x-kubernetes-list-map-keys` and treats IntOrString, Quantity and
//! `x-kubernetes-map-type: atomic` values as single fields.

use serde_json::Value;

use super::{ApplySchema, ListType, NoSchema};
use crate::openapi::{self, Node, OpenApi, Shape};

impl ApplySchema for Node<'_> {
    fn field(&self, name: &str) -> Option<Box<dyn ApplySchema + '_>> {
        match self.shape() {
            Shape::Object => Node::field(self, name).map(|n| Box::new(n) as Box<_>),
            _ => None,
        }
    }

    fn items(&self) -> Option<Box<dyn ApplySchema + '_>> {
        match self.shape() {
            Shape::List | Shape::Map => Some(match Node::items(self) {
                Some(n) => Box::new(n),
                None => Box::new(NoSchema),
            }),
            _ => None,
        }
    }

    fn is_map(&self) -> bool {
        self.shape() == Shape::Map
    }

    fn list_type(&self) -> ListType {
        match Node::list_type(self) {
            openapi::ListType::Atomic => ListType::Atomic,
            openapi::ListType::Set => ListType::Set,
            openapi::ListType::Map(keys) => ListType::Map(keys),
        }
    }

    fn atomic(&self) -> bool {
        matches!(self.shape(), Shape::Any | Shape::Scalar) || self.map_atomic()
    }

    fn key_default(&self, key: &str) -> Option<Value> {
        // The one defaulted list-map key of the built-in types: ports' `protocol` (upstream's
        // schemas carry `default: TCP`, the embedded documents do not).
        (key == "protocol" && Node::field(self, key).is_some()).then(|| Value::from("TCP"))
    }
}

/// The apply schema of objects of `kind` in `group`/`version` (`""` for core), from the served
/// OpenAPI documents; the fallback [`NoSchema`] when the kind has none.
pub fn for_kind(group: &str, version: &str, kind: &str) -> Box<dyn ApplySchema + 'static> {
    match OpenApi::get().kind_schema(group, version, kind) {
        Some(node) => Box::new(node),
        None => Box::new(NoSchema),
    }
}
