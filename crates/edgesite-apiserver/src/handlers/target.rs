//! What a resource request asks for, parsed once from its method and path: the resource, the
//! namespace, the name, the [`Subresource`] and the [`Verb`]. Authorization, the metrics and
//! the handlers all read it from here.

use axum::http::Method;
use edgesite_api::registry::{self, ResourceInfo};

/// The verb of a resource request, as authorization sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one named object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection (or, for authorization, a name) with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH.
    Patch,
    /// DELETE of one named object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
}

impl Verb {
    /// The verb of `method` on a target that names an object (`named`) or not; `watch` is
    /// the query's `watch` flag. `None` for methods no verb stands for (`OPTIONS`...).
    pub fn of(method: &Method, named: bool, watch: bool) -> Option<Self> {
        Some(match (method.as_str(), named) {
            ("GET" | "HEAD", _) if watch => Self::Watch,
            ("GET" | "HEAD", true) => Self::Get,
            ("GET" | "HEAD", false) => Self::List,
            ("POST", _) => Self::Create,
            ("PUT", _) => Self::Update,
            ("PATCH", _) => Self::Patch,
            ("DELETE", true) => Self::Delete,
            ("DELETE", false) => Self::DeleteCollection,
            _ => return None,
        })
    }

    /// The verb's name in authorization rules (`get`, `deletecollection`...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }

    /// The verb's label in upstream's request metrics (`LIST`, `POST`, `DELETECOLLECTION`...).
    pub fn metric_label(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::List => "LIST",
            Self::Watch => "WATCH",
            Self::Create => "POST",
            Self::Update => "PUT",
            Self::Patch => "PATCH",
            Self::Delete => "DELETE",
            Self::DeleteCollection => "DELETECOLLECTION",
        }
    }
}

/// A subresource this server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subresource {
    /// `status`: writes touch only the status.
    Status,
    /// `scale`: an `autoscaling/v1` Scale view of a workload.
    Scale,
    /// `finalize`: a namespace's `spec.finalizers`.
    Finalize,
    /// `binding`: the scheduler assigns a pod to a node.
    Binding,
    /// `eviction`: a pod delete that disruption budgets may refuse.
    Eviction,
    /// `log`: a pod's container log, through the node's tunnel.
    Log,
    /// `exec`: a command in a pod's container, through the node's tunnel.
    Exec,
    /// `attach`: a pod's container's console, through the node's tunnel.
    Attach,
    /// `portforward`: connections to a pod's ports, through the node's tunnel.
    PortForward,
}

impl Subresource {
    /// The subresource named `s`, if served.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "status" => Self::Status,
            "scale" => Self::Scale,
            "finalize" => Self::Finalize,
            "binding" => Self::Binding,
            "eviction" => Self::Eviction,
            "log" => Self::Log,
            "exec" => Self::Exec,
            "attach" => Self::Attach,
            "portforward" => Self::PortForward,
            _ => return None,
        })
    }

    /// Its path segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Scale => "scale",
            Self::Finalize => "finalize",
            Self::Binding => "binding",
            Self::Eviction => "eviction",
            Self::Log => "log",
            Self::Exec => "exec",
            Self::Attach => "attach",
            Self::PortForward => "portforward",
        }
    }
}

/// A request for a resource, parsed from its path.
#[derive(Debug, Clone)]
pub struct Target {
    /// The resource.
    pub resource: &'static ResourceInfo,
    /// The namespace of the path, if any.
    pub namespace: Option<String>,
    /// The object name, if any.
    pub name: Option<String>,
    /// The subresource, if any.
    pub subresource: Option<Subresource>,
}

impl Target {
    /// The verb of `method` on this target, with `query` the raw query string.
    pub fn verb(&self, method: &Method, query: Option<&str>) -> Option<Verb> {
        let watch =
            query.is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        Verb::of(method, self.name.is_some(), watch)
    }
}

/// Parses a resource path. `None`: not a resource path (handled elsewhere); `Some(None)`: a
/// resource path naming nothing this server serves (404).
pub fn parse_path(path: &str) -> Option<Option<Target>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] if !rest.is_empty() => ("", "v1", rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    if rest.iter().any(|s| s.is_empty()) {
        return Some(None);
    }
    let lookup = |plural: &str| registry::lookup(group, version, plural);
    // A subresource segment must name one the resource has and this server serves.
    let target = |r: &'static ResourceInfo, ns: Option<&str>, name: Option<&&str>, sub| {
        let subresource = match sub {
            None => None,
            Some(s) => {
                r.subresource(s)?;
                Some(Subresource::parse(s)?)
            }
        };
        Some(Target {
            resource: r,
            namespace: ns.map(str::to_owned),
            name: name.map(|n| (*n).to_owned()),
            subresource,
        })
    };
    Some(match rest {
        ["namespaces", ns, plural, tail @ ..]
            if tail.len() <= 2 && lookup(plural).is_some_and(|r| r.namespaced) =>
        {
            lookup(plural).and_then(|r| target(r, Some(ns), tail.first(), tail.get(1).copied()))
        }
        [plural] => lookup(plural).and_then(|r| target(r, None, None, None)),
        // Cluster-scoped objects, namespaces themselves (`namespaces/<name>[/finalize]`) too.
        [plural, name, tail @ ..] if tail.len() <= 1 => lookup(plural)
            .filter(|r| !r.namespaced)
            .and_then(|r| target(r, None, Some(name), tail.first().copied())),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plural ns name subresource` of a parsed path, `-` for what is absent.
    fn parsed(path: &str) -> Option<String> {
        let t = parse_path(path)??;
        let or_dash = |s: Option<&str>| s.unwrap_or("-").to_owned();
        Some(format!(
            "{} {} {} {}",
            t.resource.plural,
            or_dash(t.namespace.as_deref()),
            or_dash(t.name.as_deref()),
            or_dash(t.subresource.map(Subresource::as_str)),
        ))
    }

    #[test]
    fn paths_name_resource_namespace_name_and_subresource() {
        let cases = [
            ("/api/v1/pods", Some("pods - - -")),
            ("/api/v1/namespaces/default/pods", Some("pods default - -")),
            (
                "/api/v1/namespaces/default/pods/web",
                Some("pods default web -"),
            ),
            (
                "/api/v1/namespaces/default/pods/web/binding",
                Some("pods default web binding"),
            ),
            (
                "/api/v1/namespaces/default/pods/web/eviction",
                Some("pods default web eviction"),
            ),
            (
                "/apis/apps/v1/namespaces/a/deployments/d/scale",
                Some("deployments a d scale"),
            ),
            (
                "/api/v1/namespaces/kube-system",
                Some("namespaces - kube-system -"),
            ),
            (
                "/api/v1/namespaces/x/finalize",
                Some("namespaces - x finalize"),
            ),
            ("/api/v1/nodes/n1/status", Some("nodes - n1 status")),
            // Not served: an unknown resource, a subresource the resource lacks or this server
            // does not serve, a namespaced path to a cluster resource, too many segments.
            ("/api/v1/widgets", None),
            ("/api/v1/namespaces/default/configmaps/c/status", None),
            ("/api/v1/namespaces/default/pods/web/frobnicate", None),
            ("/api/v1/namespaces/default/nodes/n1", None),
            ("/api/v1/namespaces/default/pods/web/status/extra", None),
            ("/api/v1/namespaces//pods", None),
        ];
        for (path, want) in cases {
            assert_eq!(parsed(path).as_deref(), want, "{path}");
        }
        assert!(parse_path("/version").is_none());
        assert!(parse_path("/api/v1").is_none());
    }

    #[test]
    fn verbs_follow_method_name_and_watch() {
        let cases = [
            (Method::GET, true, false, Some(Verb::Get)),
            (Method::GET, false, false, Some(Verb::List)),
            (Method::GET, false, true, Some(Verb::Watch)),
            (Method::GET, true, true, Some(Verb::Watch)),
            (Method::HEAD, true, false, Some(Verb::Get)),
            (Method::POST, false, false, Some(Verb::Create)),
            (Method::PUT, true, false, Some(Verb::Update)),
            (Method::PATCH, true, false, Some(Verb::Patch)),
            (Method::DELETE, true, false, Some(Verb::Delete)),
            (Method::DELETE, false, false, Some(Verb::DeleteCollection)),
            (Method::OPTIONS, true, false, None),
        ];
        for (method, named, watch, want) in cases {
            assert_eq!(
                Verb::of(&method, named, watch),
                want,
                "{method} named={named} watch={watch}"
            );
        }
        let t = parse_path("/api/v1/pods").flatten().unwrap();
        assert_eq!(
            t.verb(&Method::GET, Some("watch=1&limit=5")),
            Some(Verb::Watch)
        );
        assert_eq!(t.verb(&Method::GET, Some("watch=false")), Some(Verb::List));
        assert_eq!(Verb::DeleteCollection.as_str(), "deletecollection");
        assert_eq!(Verb::Create.metric_label(), "POST");
        for s in ["status", "scale", "finalize", "binding", "eviction"] {
            assert_eq!(Subresource::parse(s).map(Subresource::as_str), Some(s));
        }
    }
}
