//! A container's environment as kubelet builds it: `envFrom` sources first, then `env` in
//! order (a later name replaces an earlier one in place), `$(VAR)` references in `value`,
//! `command`, `args` and `subPathExpr` expanded against what is defined so far; and the
//! downward API fields shared with the downwardAPI volume.
//!
//! Not here: the `KUBERNETES_SERVICE_HOST`/`<SVC>_SERVICE_HOST` service links (`enableServiceLinks`);
//! they need the Service cache, which the node does not hand to the workers yet.

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::config::ConfigError;
use super::resources::resource_field;
use super::{NodeContext, Objects};

/// An ordered environment: names keep the position of their first definition, values the
/// last one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    /// Sets `name` to `value`, replacing an earlier value in place.
    pub fn set(&mut self, name: &str, value: String) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some((_, v)) => *v = value,
            None => self.vars.push((name.to_owned(), value)),
        }
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name=value` pairs in order.
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// `input` with `$(NAME)` replaced by this environment's values (see [`expand`]).
    pub fn expand(&self, input: &str) -> String {
        expand(input, |name| self.get(name).map(str::to_owned))
    }
}

/// Upstream's `$(VAR)` expansion: `$(NAME)` becomes the value of `NAME` when `lookup` knows
/// it and stays as written otherwise; `$$` is an escaped `$`; any other `$` (also an
/// unterminated `$(`) is kept literally.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(input.len());
    let mut checkpoint = 0;
    let mut cursor = 0;
    while cursor < bytes.len() {
        if bytes[cursor] == b'$' && cursor + 1 < bytes.len() {
            // Slicing at ASCII bytes keeps UTF-8 boundaries.
            out.push_str(&input[checkpoint..cursor]);
            match bytes[cursor + 1] {
                b'$' => {
                    out.push('$');
                    cursor += 1;
                }
                b'(' => match input[cursor + 2..].find(')') {
                    Some(len) => {
                        let name = &input[cursor + 2..cursor + 2 + len];
                        match lookup(name) {
                            Some(v) => out.push_str(&v),
                            None => {
                                out.push_str("$(");
                                out.push_str(name);
                                out.push(')');
                            }
                        }
                        cursor += 2 + len;
                    }
                    None => {
                        out.push_str("$(");
                        cursor += 1;
                    }
                },
                _ => out.push('$'),
            }
            checkpoint = cursor + 1;
        }
        cursor += 1;
    }
    out.push_str(&input[checkpoint.min(input.len())..]);
    out
}

/// Whether `name` may be an environment variable name (`[-._a-zA-Z][-._a-zA-Z0-9]*`, upstream's
/// `IsEnvVarName`); envFrom keys that are not are skipped.
pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    (first.is_ascii_alphabetic() || matches!(first, '-' | '.' | '_')) && chars.all(ok)
}

/// The environment of `container` of `pod`, in order.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    objects: &dyn Objects,
    node: &NodeContext,
    pod_ip: Option<&str>,
) -> Result<Env, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.as_deref().unwrap_or("");
        let mut skipped = Vec::new();
        let mut put = |env: &mut Env, key: &str, value: String| {
            let name = format!("{prefix}{key}");
            if is_env_var_name(&name) {
                env.set(&name, value);
            } else {
                skipped.push(name);
            }
        };
        if let Some(r) = &source.config_map_ref {
            match objects.config_map(namespace, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.iter().flatten() {
                        put(&mut env, k, v.clone());
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ConfigError::Missing {
                        kind: "configmap",
                        name: r.name.clone(),
                    });
                }
            }
        }
        if let Some(r) = &source.secret_ref {
            match objects.secret(namespace, &r.name) {
                Some(s) => {
                    for (k, v) in s.data.iter().flatten() {
                        put(&mut env, k, String::from_utf8_lossy(&v.0).into_owned());
                    }
                }
                None if r.optional == Some(true) => {}
                None => {
                    return Err(ConfigError::Missing {
                        kind: "secret",
                        name: r.name.clone(),
                    });
                }
            }
        }
        if !skipped.is_empty() {
            tracing::warn!(
                pod = pod.metadata.name.as_deref().unwrap_or(""),
                container = %container.name,
                keys = ?skipped,
                "envFrom keys that are not valid environment variable names are skipped"
            );
        }
    }
    for var in container.env.iter().flatten() {
        if let Some(value) = env_var_value(var, pod, container, objects, node, pod_ip, &env)? {
            env.set(&var.name, value);
        }
    }
    Ok(env)
}

/// The value of one `env` entry, `None` when an optional source is absent.
fn env_var_value(
    var: &EnvVar,
    pod: &Pod,
    container: &Container,
    objects: &dyn Objects,
    node: &NodeContext,
    pod_ip: Option<&str>,
    so_far: &Env,
) -> Result<Option<String>, ConfigError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let Some(from) = &var.value_from else {
        return Ok(Some(so_far.expand(var.value.as_deref().unwrap_or(""))));
    };
    if let Some(r) = &from.config_map_key_ref {
        let optional = r.optional == Some(true);
        let Some(cm) = objects.config_map(namespace, &r.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(ConfigError::Missing {
                    kind: "configmap",
                    name: r.name.clone(),
                })
            };
        };
        return match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(v.clone())),
            None if optional => Ok(None),
            None => Err(ConfigError::MissingKey {
                kind: "ConfigMap",
                namespace: namespace.to_owned(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(r) = &from.secret_key_ref {
        let optional = r.optional == Some(true);
        let Some(secret) = objects.secret(namespace, &r.name) else {
            return if optional {
                Ok(None)
            } else {
                Err(ConfigError::Missing {
                    kind: "secret",
                    name: r.name.clone(),
                })
            };
        };
        return match secret.data.as_ref().and_then(|d| d.get(&r.key)) {
            Some(v) => Ok(Some(String::from_utf8_lossy(&v.0).into_owned())),
            None if optional => Ok(None),
            None => Err(ConfigError::MissingKey {
                kind: "Secret",
                namespace: namespace.to_owned(),
                name: r.name.clone(),
                key: r.key.clone(),
            }),
        };
    }
    if let Some(f) = &from.field_ref {
        return env_field(pod, node, pod_ip, &f.field_path)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("env {}: {e}", var.name)));
    }
    if let Some(r) = &from.resource_field_ref {
        let name = r.container_name.as_deref().unwrap_or(&container.name);
        return resource_field(pod, name, &r.resource, r.divisor.as_ref(), node)
            .map(Some)
            .map_err(|e| ConfigError::Invalid(format!("env {}: {e}", var.name)));
    }
    Err(ConfigError::Invalid(format!(
        "env {}: valueFrom has no source this node supports",
        var.name
    )))
}

/// A downward API field for an environment variable: the metadata fields of
/// [`metadata_field`] (single labels and annotations only) and `spec.nodeName`,
/// `spec.serviceAccountName`, `status.hostIP(s)`, `status.podIP(s)`.
pub fn env_field(
    pod: &Pod,
    node: &NodeContext,
    pod_ip: Option<&str>,
    path: &str,
) -> Result<String, String> {
    let pod_ips = || -> Vec<String> {
        match pod_ip {
            Some(ip) => vec![ip.to_owned()],
            None => {
                let status = pod.status.as_ref();
                let listed: Vec<String> = status
                    .and_then(|s| s.pod_ips.as_ref())
                    .into_iter()
                    .flatten()
                    .map(|p| p.ip.clone())
                    .collect();
                if listed.is_empty() {
                    status.and_then(|s| s.pod_ip.clone()).into_iter().collect()
                } else {
                    listed
                }
            }
        }
    };
    let spec = pod.spec.as_ref();
    Ok(match path {
        "spec.nodeName" => spec
            .and_then(|s| s.node_name.clone())
            .unwrap_or_else(|| node.node_name.clone()),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => node.node_ip.to_string(),
        "status.podIP" => pod_ips().into_iter().next().unwrap_or_default(),
        "status.podIPs" => pod_ips().join(","),
        "metadata.labels" | "metadata.annotations" => {
            return Err(format!("{path} is only supported in downwardAPI volumes"));
        }
        _ => metadata_field(pod, path)?,
    })
}

/// A metadata field of the downward API: `metadata.name`, `metadata.namespace`,
/// `metadata.uid`, `metadata.labels['k']`, `metadata.annotations['k']`, and (volumes only)
/// all `metadata.labels`/`metadata.annotations` as `k="v"` lines in key order.
pub fn metadata_field(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let keyed = |prefix: &str| -> Option<String> {
        let rest = path
            .strip_prefix(prefix)?
            .strip_prefix('[')?
            .strip_suffix(']')?;
        let key = rest
            .strip_prefix('\'')
            .and_then(|r| r.strip_suffix('\''))
            .or_else(|| rest.strip_prefix('"').and_then(|r| r.strip_suffix('"')))?;
        Some(key.to_owned())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.iter().flatten()),
        "metadata.annotations" => format_map(meta.annotations.iter().flatten()),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else if let Some(k) = keyed("metadata.annotations") {
                meta.annotations
                    .as_ref()
                    .and_then(|l| l.get(&k))
                    .cloned()
                    .unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// `k="v"` lines in key order without a final newline, values quoted as Go's `%q`
/// (upstream `FormatMap`).
fn format_map<'a>(map: impl Iterator<Item = (&'a String, &'a String)>) -> String {
    let mut pairs: Vec<_> = map.collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` as Go's `strconv.Quote` writes it, for the characters labels and annotations hold.
fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
