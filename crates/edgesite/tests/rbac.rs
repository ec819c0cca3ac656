//! RBAC system tests: the built `edgesite server` (the aggregation controller inside) driven by
//! the real kubectl as the admin and as `alice`, a user with a client certificate signed by the
//! cluster CA and no group: 403s with upstream's messages, a RoleBinding to `view` opening one
//! namespace, `auth can-i` (with `--as`, `--list`, `-n`), aggregation of a new ClusterRole into
//! `view`, escalation and bind checks, impersonation, and SubjectAccessReviews.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

mod support;
use support::{KubectlOutput, SystemCluster, kubectl_output};

/// Retries `check` until it succeeds, for at most ten seconds (RBAC changes reach the
/// server's cache through its watch, and aggregation through a controller).
fn until(what: &str, mut check: impl FnMut() -> Result<()>) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.context(format!("timed out waiting for: {what}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A kubeconfig for `user` (in `groups`) with a client certificate from the cluster CA.
fn user_kubeconfig(c: &SystemCluster, user: &str, groups: &[&str]) -> Result<PathBuf> {
    let data = c.kubeconfig.parent().context("data dir")?;
    let pki = edgesite_apiserver::ClusterPki::load_or_create(
        data,
        &edgesite_apiserver::PkiOptions::default(),
    )?;
    let cert = pki.issue_client_cert(user, groups, Duration::from_secs(3600))?;
    let admin = std::fs::read_to_string(&c.kubeconfig)?;
    let server = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("server:"))
        .context("no server in the admin kubeconfig")?
        .trim()
        .trim_matches('"')
        .to_owned();
    let path = c.home.path().join(format!("{user}.kubeconfig"));
    edgesite_apiserver::Kubeconfig::for_client_cert(&server, pki.ca_cert_pem(), user, &cert)
        .write(&path)?;
    Ok(path)
}

fn as_user(c: &SystemCluster, kubeconfig: &Path, args: &[&str]) -> Result<KubectlOutput> {
    kubectl_output(c.home.path(), kubeconfig, args)
}

fn forbidden(out: &KubectlOutput, message: &str) -> Result<()> {
    ensure!(
        !out.status.success(),
        "expected a refusal, got {}",
        out.stdout
    );
    // `kubectl get` prints `Error from server (Forbidden): MESSAGE`, `kubectl create ...`
    // `error: failed to create KIND: MESSAGE`.
    ensure!(
        out.stderr
            .contains(&format!("Error from server (Forbidden): {message}"))
            || out.stderr.contains(&format!(": {message}")),
        "expected {message:?}, got {:?}",
        out.stderr
    );
    Ok(())
}

/// `kubectl auth can-i` as printed: `yes` or `no`.
fn can_i(c: &SystemCluster, args: &[&str]) -> Result<String> {
    let mut all = vec!["auth", "can-i"];
    all.extend(args);
    Ok(c.kubectl_output(&all)?.stdout.trim().to_owned())
}

#[test]
fn a_view_binding_opens_one_namespace_and_can_i_tells_it() -> Result<()> {
    let c = SystemCluster::start(&[])?;
    let alice = user_kubeconfig(&c, "alice", &[])?;
    c.kubectl(&["create", "namespace", "dev"])?;

    let before = as_user(&c, &alice, &["-n", "dev", "get", "pods"])?;
    forbidden(
        &before,
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" in the namespace "dev""#,
    )?;
    assert_eq!(
        can_i(&c, &["--as", "alice", "list", "pods", "-n", "dev"])?,
        "no"
    );
    // Discovery and whoami stay open to every authenticated user.
    let whoami = as_user(
        &c,
        &alice,
        &[
            "auth",
            "whoami",
            "-o",
            "jsonpath={.status.userInfo.username}",
        ],
    )?;
    assert_eq!(whoami.stdout, "alice");

    c.kubectl(&[
        "-n",
        "dev",
        "create",
        "rolebinding",
        "alice-view",
        "--clusterrole=view",
        "--user=alice",
    ])?;
    until("alice lists pods in dev", || {
        let out = as_user(&c, &alice, &["-n", "dev", "get", "pods"])?;
        ensure!(out.status.success(), "{}", out.stderr);
        Ok(())
    })?;
    assert_eq!(
        can_i(&c, &["--as", "alice", "list", "pods", "-n", "dev"])?,
        "yes"
    );
    assert_eq!(
        can_i(&c, &["--as", "alice", "list", "pods", "-n", "default"])?,
        "no"
    );
    assert_eq!(
        can_i(&c, &["--as", "alice", "get", "secrets", "-n", "dev"])?,
        "no"
    );
    assert_eq!(
        can_i(
            &c,
            &[
                "--as",
                "alice",
                "get",
                "pods",
                "--subresource=log",
                "-n",
                "dev"
            ]
        )?,
        "yes"
    );
    forbidden(
        &as_user(&c, &alice, &["get", "pods", "-A"])?,
        r#"pods is forbidden: User "alice" cannot list resource "pods" in API group "" at the cluster scope"#,
    )?;
    forbidden(
        &as_user(
            &c,
            &alice,
            &[
                "-n",
                "dev",
                "create",
                "configmap",
                "x",
                "--from-literal=a=b",
            ],
        )?,
        r#"configmaps is forbidden: User "alice" cannot create resource "configmaps" in API group "" in the namespace "dev""#,
    )?;

    // What alice may do in dev, as `--list` prints it: view's rules plus the defaults.
    let list = as_user(&c, &alice, &["auth", "can-i", "--list", "-n", "dev"])?;
    ensure!(list.status.success(), "{}", list.stderr);
    let pods_row = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some("pods"))
        .context("no pods row")?;
    assert!(pods_row.contains("[get list watch]"), "{pods_row}");
    assert!(
        list.stdout
            .contains("selfsubjectaccessreviews.authorization.k8s.io")
    );
    assert!(list.stdout.contains("[/api/*]"), "{}", list.stdout);
    let admin_list = c.kubectl(&["auth", "can-i", "--list"])?;
    assert!(
        admin_list.lines().any(|l| l.starts_with("*.*")),
        "{admin_list}"
    );

    // A ClusterRole labelled for aggregation joins view (and so alice's binding).
    let secret_reader = c.file(
        "secret-reader.yaml",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: secret-reader\n  labels:\n    rbac.authorization.k8s.io/aggregate-to-view: \"true\"\nrules:\n- apiGroups: [\"\"]\n  resources: [\"secrets\"]\n  verbs: [\"get\", \"list\"]\n",
    )?;
    c.kubectl(&["apply", "-f", &secret_reader])?;
    until("secrets aggregated into view", || {
        let out = as_user(&c, &alice, &["-n", "dev", "get", "secrets"])?;
        ensure!(out.status.success(), "{}", out.stderr);
        Ok(())
    })?;
    let view = c.kubectl(&[
        "get",
        "clusterrole",
        "view",
        "-o",
        "jsonpath={.rules[*].resources}",
    ])?;
    assert!(view.contains("secrets") && view.contains("pods"), "{view}");
    // And leaves it when the role goes.
    c.kubectl(&["delete", "clusterrole", "secret-reader"])?;
    until("secrets gone from view", || {
        ensure!(can_i(&c, &["--as", "alice", "get", "secrets", "-n", "dev"])? == "no");
        Ok(())
    })?;

    // SubjectAccessReviews answer for another user, for admins only.
    let sar = c.file(
        "sar.yaml",
        "apiVersion: authorization.k8s.io/v1\nkind: SubjectAccessReview\nspec:\n  user: alice\n  resourceAttributes:\n    namespace: dev\n    verb: list\n    resource: pods\n",
    )?;
    let allowed = c.kubectl(&[
        "create",
        "--validate=false",
        "-f",
        &sar,
        "-o",
        "jsonpath={.status.allowed}",
    ])?;
    assert_eq!(allowed, "true");
    forbidden(
        &as_user(&c, &alice, &["create", "--validate=false", "-f", &sar])?,
        r#"subjectaccessreviews.authorization.k8s.io is forbidden: User "alice" cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope"#,
    )?;
    c.stop()
}

#[test]
fn escalation_bind_and_impersonation_are_refused_as_upstream() -> Result<()> {
    let c = SystemCluster::start(&[])?;
    let alice = user_kubeconfig(&c, "alice", &[])?;
    c.kubectl(&["create", "namespace", "team"])?;
    c.kubectl(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "alice-admin",
        "--clusterrole=admin",
        "--user=alice",
    ])?;
    until("alice administers team", || {
        ensure!(can_i(&c, &["--as", "alice", "create", "roles", "-n", "team"])? == "yes");
        Ok(())
    })?;

    // Roles and bindings within what alice holds are fine.
    let ok = as_user(
        &c,
        &alice,
        &[
            "-n",
            "team",
            "create",
            "role",
            "pod-reader",
            "--verb=get,list",
            "--resource=pods",
        ],
    )?;
    ensure!(ok.status.success(), "{}", ok.stderr);
    let ok = as_user(
        &c,
        &alice,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "bob-view",
            "--clusterrole=view",
            "--user=bob",
        ],
    )?;
    ensure!(ok.status.success(), "{}", ok.stderr);

    // A role granting what she lacks, and a binding to a role she does not hold: 403.
    forbidden(
        &as_user(
            &c,
            &alice,
            &[
                "-n",
                "team",
                "create",
                "role",
                "node-reader",
                "--verb=get",
                "--resource=nodes",
            ],
        )?,
        "roles.rbac.authorization.k8s.io \"node-reader\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"get\"]}",
    )?;
    let bind = as_user(
        &c,
        &alice,
        &[
            "-n",
            "team",
            "create",
            "rolebinding",
            "me-root",
            "--clusterrole=cluster-admin",
            "--user=alice",
        ],
    )?;
    forbidden(
        &bind,
        "rolebindings.rbac.authorization.k8s.io \"me-root\" is forbidden: user \"alice\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:",
    )?;
    let none = c.kubectl_output(&["-n", "team", "get", "rolebinding", "me-root"])?;
    ensure!(!none.status.success(), "the refused binding was stored");
    // With `bind` on cluster-admin granted by the admin, the same binding goes through.
    c.kubectl(&[
        "-n",
        "team",
        "create",
        "role",
        "may-bind",
        "--verb=bind",
        "--resource=clusterroles",
        "--resource-name=cluster-admin",
    ])?;
    c.kubectl(&[
        "-n",
        "team",
        "create",
        "rolebinding",
        "alice-may-bind",
        "--role=may-bind",
        "--user=alice",
    ])?;
    until("alice may bind cluster-admin in team", || {
        let out = as_user(
            &c,
            &alice,
            &[
                "-n",
                "team",
                "create",
                "rolebinding",
                "me-root",
                "--clusterrole=cluster-admin",
                "--user=alice",
            ],
        )?;
        ensure!(out.status.success(), "{}", out.stderr);
        Ok(())
    })?;

    // roleRef cannot change.
    let changed = c.kubectl_output(&[
        "-n",
        "team",
        "patch",
        "rolebinding",
        "bob-view",
        "--type=merge",
        "-p",
        r#"{"roleRef":{"name":"edit"}}"#,
    ])?;
    ensure!(
        !changed.status.success() && changed.stderr.contains("cannot change roleRef"),
        "{}",
        changed.stderr
    );

    // Impersonation needs `impersonate`: alice may not act as bob, the admin may.
    forbidden(
        &as_user(&c, &alice, &["-n", "team", "get", "pods", "--as", "bob"])?,
        r#"users "bob" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    )?;
    forbidden(
        &as_user(
            &c,
            &alice,
            &[
                "-n",
                "team",
                "get",
                "pods",
                "--as",
                "alice",
                "--as-group",
                "system:masters",
            ],
        )?,
        r#"users "alice" is forbidden: User "alice" cannot impersonate resource "users" in API group "" at the cluster scope"#,
    )?;
    let whoami = c.kubectl(&[
        "auth",
        "whoami",
        "--as",
        "bob",
        "--as-group",
        "dev",
        "-o",
        "jsonpath={.status.userInfo.groups}",
    ])?;
    assert_eq!(whoami, r#"["dev","system:authenticated"]"#);
    let as_bob = c.kubectl(&["-n", "team", "get", "pods", "--as", "bob"])?;
    assert!(
        as_bob.is_empty(),
        "bob sees team's (empty) pod list: {as_bob}"
    );
    forbidden(
        &c.kubectl_output(&["-n", "default", "get", "pods", "--as", "bob"])?,
        r#"pods is forbidden: User "bob" cannot list resource "pods" in API group "" in the namespace "default""#,
    )?;
    c.stop()
}

#[test]
fn default_roles_are_reconciled_at_restart_unless_autoupdate_is_false() -> Result<()> {
    let mut c = SystemCluster::start(&[])?;
    // One default role trimmed and protected, another trimmed only.
    c.kubectl(&["patch", "clusterrole", "system:basic-user", "--type=merge", "-p",
        r#"{"metadata":{"annotations":{"rbac.authorization.kubernetes.io/autoupdate":"false"}},"rules":[{"apiGroups":["authentication.k8s.io"],"resources":["selfsubjectreviews"],"verbs":["create"]}]}"#])?;
    c.kubectl(&[
        "patch",
        "clusterrole",
        "system:discovery",
        "--type=merge",
        "-p",
        r#"{"rules":[{"nonResourceURLs":["/version"],"verbs":["get"]}]}"#,
    ])?;
    c.kubectl(&["delete", "clusterrolebinding", "system:public-info-viewer"])?;
    c.restart(&[])?;
    let basic = c.kubectl(&[
        "get",
        "clusterrole",
        "system:basic-user",
        "-o",
        "jsonpath={.rules[*].resources}",
    ])?;
    assert_eq!(
        basic, r#"["selfsubjectreviews"]"#,
        "protected role kept as the user left it"
    );
    let discovery = c.kubectl(&[
        "get",
        "clusterrole",
        "system:discovery",
        "-o",
        "jsonpath={.rules[*].nonResourceURLs}",
    ])?;
    assert!(
        discovery.contains("/apis/*") && discovery.contains("/version"),
        "{discovery}"
    );
    c.kubectl(&["get", "clusterrolebinding", "system:public-info-viewer"])?;
    c.stop()
}
