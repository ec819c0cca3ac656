use super::*;
use crate::pod::PreparedVolume;
use crate::pod::test_support::{FakeObjects, node, pod};
use serde_json::json;

fn host() -> ResolvConf {
    ResolvConf::parse(
        "# generated\nnameserver 192.0.2.53\nnameserver 192.0.2.54 ; second\n\
         search corp.example lab.example\noptions edns0 ndots:2\n",
    )
}

fn dns(spec: serde_json::Value, cluster_dns: bool) -> cri::DnsConfig {
    let mut n = node(Path::new("/nonexistent"));
    if !cluster_dns {
        n.cluster_dns = None;
    }
    dns_config(&pod(spec), &n, &host())
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn resolv_conf_is_parsed() {
    assert_eq!(
        host(),
        ResolvConf {
            servers: strs(&["192.0.2.53", "192.0.2.54"]),
            searches: strs(&["corp.example", "lab.example"]),
            options: strs(&["edns0", "ndots:2"]),
        }
    );
}

#[test]
fn dns_config_follows_the_pod_dns_policy() {
    let cluster = cri::DnsConfig {
        servers: strs(&["10.43.0.10"]),
        searches: strs(&[
            "ns.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example",
            "lab.example",
        ]),
        options: strs(&["ndots:5"]),
    };
    let host_config = cri::DnsConfig {
        servers: strs(&["192.0.2.53", "192.0.2.54"]),
        searches: strs(&["corp.example", "lab.example"]),
        options: strs(&["edns0", "ndots:2"]),
    };
    let cases = [
        (
            "default policy",
            json!({"containers": []}),
            true,
            cluster.clone(),
        ),
        (
            "ClusterFirst",
            json!({"dnsPolicy": "ClusterFirst", "containers": []}),
            true,
            cluster.clone(),
        ),
        (
            "ClusterFirst without cluster DNS",
            json!({"dnsPolicy": "ClusterFirst", "containers": []}),
            false,
            host_config.clone(),
        ),
        (
            "ClusterFirst on the host network",
            json!({"hostNetwork": true, "containers": []}),
            true,
            host_config.clone(),
        ),
        (
            "ClusterFirstWithHostNet",
            json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet", "containers": []}),
            true,
            cluster.clone(),
        ),
        (
            "Default",
            json!({"dnsPolicy": "Default", "containers": []}),
            true,
            host_config.clone(),
        ),
        (
            "None",
            json!({"dnsPolicy": "None", "containers": []}),
            true,
            cri::DnsConfig::default(),
        ),
        (
            "None with dnsConfig",
            json!({"dnsPolicy": "None", "dnsConfig": {"nameservers": ["1.1.1.1"], "searches": ["a.example"], "options": [{"name": "ndots", "value": "1"}, {"name": "rotate"}]}, "containers": []}),
            true,
            cri::DnsConfig {
                servers: strs(&["1.1.1.1"]),
                searches: strs(&["a.example"]),
                options: strs(&["ndots:1", "rotate"]),
            },
        ),
        (
            "ClusterFirst with dnsConfig merged",
            json!({"dnsConfig": {"nameservers": ["10.43.0.10", "9.9.9.9", "8.8.8.8", "8.8.4.4"], "searches": ["cluster.local", "x.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}, "containers": []}),
            true,
            cri::DnsConfig {
                // Duplicates dropped, at most three nameservers.
                servers: strs(&["10.43.0.10", "9.9.9.9", "8.8.8.8"]),
                searches: strs(&[
                    "ns.svc.cluster.local",
                    "svc.cluster.local",
                    "cluster.local",
                    "corp.example",
                    "lab.example",
                    "x.example",
                ]),
                options: strs(&["ndots:2", "edns0"]),
            },
        ),
    ];
    for (name, spec, cluster_dns, want) in cases {
        assert_eq!(dns(spec, cluster_dns), want, "{name}");
    }
}

#[test]
fn sandbox_config_carries_identity_network_and_security() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path());
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    n.resolv_conf = resolv;
    let p = pod(json!({
        "subdomain": "sub",
        "shareProcessNamespace": true,
        "securityContext": {
            "runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000],
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [
            {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
            {"name": "b", "ports": [{"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "127.0.0.1"}]},
        ],
    }));
    let c = sandbox_config(&p, &n, 2).unwrap();
    let meta = c.metadata.unwrap();
    assert_eq!(
        (
            meta.name.as_str(),
            meta.namespace.as_str(),
            meta.uid.as_str(),
            meta.attempt
        ),
        ("web-1", "ns", "uid-1", 2)
    );
    assert_eq!(c.hostname, "web-1");
    assert_eq!(
        c.log_directory,
        dir.path().join("uid-1/logs").display().to_string()
    );
    assert_eq!(c.labels["app"], "web");
    assert_eq!(c.labels[LABEL_POD_NAME], "web-1");
    assert_eq!(c.labels[LABEL_POD_NAMESPACE], "ns");
    assert_eq!(c.labels[LABEL_POD_UID], "uid-1");
    assert_eq!(c.annotations["note"], "say \"hi\"");
    assert_eq!(c.dns_config.unwrap().servers, strs(&["10.43.0.10"]));
    assert_eq!(
        c.port_mappings,
        vec![
            cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 80,
                host_port: 8080,
                host_ip: String::new()
            },
            cri::PortMapping {
                protocol: cri::Protocol::Udp as i32,
                container_port: 53,
                host_port: 5353,
                host_ip: "127.0.0.1".into()
            },
        ]
    );
    let linux = c.linux.unwrap();
    assert_eq!(linux.sysctls["net.ipv4.ip_unprivileged_port_start"], "0");
    let sc = linux.security_context.unwrap();
    let ns = sc.namespace_options.unwrap();
    assert_eq!(
        (ns.network, ns.pid, ns.ipc),
        (
            cri::NamespaceMode::Pod as i32,
            cri::NamespaceMode::Pod as i32,
            cri::NamespaceMode::Pod as i32
        )
    );
    assert_eq!(sc.run_as_user.map(|v| v.value), Some(1000));
    assert_eq!(sc.run_as_group.map(|v| v.value), Some(3000));
    assert_eq!(sc.supplemental_groups, vec![4000, 2000]);
    assert!(!sc.privileged);
    assert_eq!(
        sc.seccomp.unwrap().profile_type,
        cri::security_profile::ProfileType::Unconfined as i32
    );

    // The host network: the node's namespaces, an empty hostname (runc cannot set one in
    // the node's UTS namespace), the host's resolv.conf.
    let p = pod(
        json!({"hostNetwork": true, "hostPID": true, "hostIPC": true, "hostname": "h", "containers": [{"name": "a", "securityContext": {"privileged": true}}]}),
    );
    let c = sandbox_config(&p, &n, 0).unwrap();
    assert_eq!(c.hostname, "");
    assert_eq!(c.dns_config.unwrap().servers, strs(&["192.0.2.53"]));
    let sc = c.linux.unwrap().security_context.unwrap();
    let ns = sc.namespace_options.unwrap();
    let node_mode = cri::NamespaceMode::Node as i32;
    assert_eq!(
        (ns.network, ns.pid, ns.ipc),
        (node_mode, node_mode, node_mode)
    );
    assert!(sc.privileged);
}

#[test]
fn hostnames_follow_spec_hostname_subdomain_and_fqdn() {
    let n = node(Path::new("/nonexistent"));
    let p = pod(json!({"hostname": "db-0", "subdomain": "db", "containers": []}));
    assert_eq!(
        hostname_and_domain(&p, &n),
        ("db-0".into(), Some("db.ns.svc.cluster.local".into()))
    );
    let mut p = pod(json!({"containers": []}));
    p.metadata.name = Some(format!("{}-.x", "a".repeat(62)));
    assert_eq!(hostname_and_domain(&p, &n).0, "a".repeat(62));
    let mut n2 = n.clone();
    n2.resolv_conf = "/dev/null".into();
    let p = pod(
        json!({"hostname": "db-0", "subdomain": "db", "setHostnameAsFQDN": true, "containers": []}),
    );
    assert_eq!(
        sandbox_config(&p, &n2, 0).unwrap().hostname,
        "db-0.db.ns.svc.cluster.local"
    );
    let p = pod(
        json!({"hostname": "h".repeat(50), "subdomain": "db", "setHostnameAsFQDN": true, "containers": []}),
    );
    let err = sandbox_config(&p, &n2, 0).unwrap_err().to_string();
    assert!(err.contains("is too long"), "{err}");
}

fn security(
    pod_sc: serde_json::Value,
    container_sc: serde_json::Value,
) -> Result<cri::LinuxContainerSecurityContext, ConfigError> {
    let p = pod(
        json!({"securityContext": pod_sc, "containers": [{"name": "c", "securityContext": container_sc}]}),
    );
    container_security_context(&p, &p.spec.as_ref().unwrap().containers[0])
}

#[test]
fn security_contexts_map_to_cri() {
    let sc = security(
        json!({"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true, "supplementalGroups": [5], "seccompProfile": {"type": "RuntimeDefault"}}),
        json!({"runAsUser": 2000, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_ADMIN"], "drop": ["ALL"]}}),
    )
    .unwrap();
    assert_eq!(sc.run_as_user.map(|v| v.value), Some(2000));
    assert_eq!(sc.run_as_group.map(|v| v.value), Some(1000));
    assert!(sc.readonly_rootfs);
    assert!(sc.no_new_privs);
    assert!(!sc.privileged);
    assert_eq!(sc.supplemental_groups, vec![5]);
    let caps = sc.capabilities.unwrap();
    assert_eq!(
        (caps.add_capabilities, caps.drop_capabilities),
        (strs(&["NET_ADMIN"]), strs(&["ALL"]))
    );
    assert_eq!(
        sc.seccomp.unwrap().profile_type,
        cri::security_profile::ProfileType::RuntimeDefault as i32
    );
    assert!(
        sc.masked_paths.iter().any(|p| p == "/proc/kcore"),
        "{:?}",
        sc.masked_paths
    );
    assert!(
        sc.readonly_paths.iter().any(|p| p == "/proc/sys"),
        "{:?}",
        sc.readonly_paths
    );

    // Defaults: escalation allowed, unconfined, the image's user.
    let sc = security(json!({}), json!({})).unwrap();
    assert!(
        !sc.no_new_privs
            && !sc.readonly_rootfs
            && sc.run_as_user.is_none()
            && sc.capabilities.is_none()
    );
    assert_eq!(
        sc.seccomp.unwrap().profile_type,
        cri::security_profile::ProfileType::Unconfined as i32
    );

    // Privileged: no_new_privs never, even when escalation is refused.
    let sc = security(
        json!({}),
        json!({"privileged": true, "allowPrivilegeEscalation": false}),
    )
    .unwrap();
    assert!(sc.privileged && !sc.no_new_privs);
    assert!(sc.masked_paths.is_empty() && sc.readonly_paths.is_empty());

    let sc = security(
        json!({}),
        json!({"seccompProfile": {"type": "Localhost", "localhostProfile": "p.json"}}),
    )
    .unwrap();
    assert_eq!(sc.seccomp.unwrap().localhost_ref, "p.json");

    // runAsNonRoot: root refused, and an unknown (image) user too, with what to do.
    let err = security(json!({"runAsNonRoot": true}), json!({"runAsUser": 0}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("runAsUser breaks non-root policy"), "{err}");
    let err = security(json!({}), json!({"runAsNonRoot": true}))
        .unwrap_err()
        .to_string();
    assert!(err.contains("set securityContext.runAsUser"), "{err}");
    assert!(
        security(
            json!({"runAsNonRoot": true}),
            json!({"runAsNonRoot": false})
        )
        .is_ok()
    );
}

#[test]
fn container_config_resolves_command_mounts_and_managed_files() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path());
    let objects = FakeObjects::default().with_config_map("ns", "cfg", &[("greeting", "hello")]);
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("logs")).unwrap();
    let cfg = dir.path().join("cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let volumes = PreparedVolumes {
        paths: [
            (
                "data".to_string(),
                PreparedVolume {
                    host_path: data.clone(),
                    read_only: false,
                },
            ),
            (
                "cfg".to_string(),
                PreparedVolume {
                    host_path: cfg.clone(),
                    read_only: true,
                },
            ),
        ]
        .into(),
    };
    let p = pod(json!({
        "terminationGracePeriodSeconds": 30,
        "hostAliases": [{"ip": "192.0.2.1", "hostnames": ["db", "db.local"]}],
        "containers": [{
            "name": "app",
            "image": "edgesite.io/busybox:1",
            "command": ["/bin/sh", "-c"],
            "args": ["echo $(GREETING) $$(GREETING) $(NOPE)"],
            "workingDir": "/work",
            "stdin": true, "tty": true,
            "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}}],
            "volumeMounts": [
                {"name": "data", "mountPath": "/data"},
                {"name": "data", "mountPath": "/logs", "subPath": "logs", "readOnly": true},
                {"name": "data", "mountPath": "/new", "subPathExpr": "$(GREETING)"},
                {"name": "cfg", "mountPath": "/etc/app", "mountPropagation": "HostToContainer"},
            ],
        }],
    }));
    let container = &p.spec.as_ref().unwrap().containers[0];
    let c = container_config(&p, container, 3, &volumes, &objects, &n, Some("10.42.0.9")).unwrap();
    assert_eq!(c.metadata.as_ref().unwrap().attempt, 3);
    assert_eq!(c.image.as_ref().unwrap().image, "edgesite.io/busybox:1");
    assert_eq!(c.command, strs(&["/bin/sh", "-c"]));
    assert_eq!(c.args, strs(&["echo hello $(GREETING) $(NOPE)"]));
    assert_eq!(c.working_dir, "/work");
    assert!(c.stdin && c.tty && !c.stdin_once);
    assert_eq!(
        c.envs,
        vec![cri::KeyValue {
            key: "GREETING".into(),
            value: "hello".into()
        }]
    );
    assert_eq!(c.log_path, "app/3.log");
    assert_eq!(c.labels[LABEL_CONTAINER_NAME], "app");
    assert_eq!(c.labels[LABEL_POD_UID], "uid-1");
    assert_eq!(c.annotations[ANNOTATION_RESTART_COUNT], "3");
    assert_eq!(
        c.annotations[ANNOTATION_TERMINATION_MESSAGE_PATH],
        "/dev/termination-log"
    );
    assert_eq!(c.annotations[ANNOTATION_TERMINATION_GRACE_PERIOD], "30");

    let m: Vec<_> = c
        .mounts
        .iter()
        .map(|m| {
            (
                m.container_path.as_str(),
                m.host_path.clone(),
                m.readonly,
                m.propagation,
            )
        })
        .collect();
    let private = cri::MountPropagation::PropagationPrivate as i32;
    let real = |p: &Path| p.canonicalize().unwrap().display().to_string();
    assert_eq!(m[0], ("/data", data.display().to_string(), false, private));
    assert_eq!(m[1], ("/logs", real(&data.join("logs")), true, private));
    assert_eq!(m[2], ("/new", real(&data.join("hello")), false, private));
    assert!(
        data.join("hello").is_dir(),
        "the subPath directory is created"
    );
    assert_eq!(
        m[3],
        (
            "/etc/app",
            cfg.display().to_string(),
            true,
            cri::MountPropagation::PropagationHostToContainer as i32
        )
    );
    let hosts = n.pod_etc_hosts("uid-1");
    assert_eq!(
        m[4],
        ("/etc/hosts", hosts.display().to_string(), false, private)
    );
    let text = std::fs::read_to_string(&hosts).unwrap();
    assert!(
        text.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"),
        "{text}"
    );
    assert!(text.contains("\n10.42.0.9\tweb-1\n"), "{text}");
    assert!(
        text.ends_with("# Entries added by HostAliases.\n192.0.2.1\tdb\tdb.local\n"),
        "{text}"
    );
    let log = dir.path().join("uid-1/containers/app/3");
    assert_eq!(
        m[5],
        (
            "/dev/termination-log",
            log.display().to_string(),
            false,
            private
        )
    );
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o666
    );
    assert_eq!(c.mounts.len(), 6);

    let r = c.linux.as_ref().unwrap().resources.as_ref().unwrap();
    assert_eq!((r.cpu_shares, r.oom_score_adj), (2, 1000));

    // Without a pod IP there is no managed /etc/hosts (kubelet mounts none either).
    let c = container_config(&p, container, 0, &volumes, &objects, &n, None).unwrap();
    assert!(c.mounts.iter().all(|m| m.container_path != "/etc/hosts"));
}

#[test]
fn container_config_refuses_what_cannot_be_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let n = node(dir.path());
    let vol = dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    std::os::unix::fs::symlink("/etc", vol.join("escape")).unwrap();
    let volumes = PreparedVolumes {
        paths: [(
            "v".to_string(),
            PreparedVolume {
                host_path: vol,
                read_only: false,
            },
        )]
        .into(),
    };
    let run = |mount: serde_json::Value, sc: serde_json::Value| {
        let p = pod(
            json!({"containers": [{"name": "c", "volumeMounts": [mount], "securityContext": sc}]}),
        );
        let c = &p.spec.as_ref().unwrap().containers[0];
        container_config(&p, c, 0, &volumes, &FakeObjects::default(), &n, None)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let cases = [
        (
            json!({"name": "nope", "mountPath": "/x"}),
            "cannot find volume \"nope\"",
        ),
        (
            json!({"name": "v", "mountPath": "/x", "subPath": "../up"}),
            "without '..'",
        ),
        (
            json!({"name": "v", "mountPath": "/x", "subPath": "/abs"}),
            "without '..'",
        ),
        (
            json!({"name": "v", "mountPath": "/x", "subPath": "escape"}),
            "outside its volume",
        ),
        (
            json!({"name": "v", "mountPath": "/x", "mountPropagation": "Bidirectional"}),
            "needs a privileged container",
        ),
    ];
    for (mount, want) in cases {
        let err = run(mount.clone(), json!({})).unwrap_err();
        assert!(err.contains(want), "{mount}: {err}");
    }
    run(
        json!({"name": "v", "mountPath": "/x", "mountPropagation": "Bidirectional"}),
        json!({"privileged": true}),
    )
    .unwrap();
    // A refused spec writes nothing to the host (no /etc/hosts, no termination log).
    let mut p =
        pod(json!({"containers": [{"name": "c", "securityContext": {"runAsNonRoot": true}}]}));
    p.metadata.uid = Some("uid-refused".into());
    let c = &p.spec.as_ref().unwrap().containers[0];
    container_config(
        &p,
        c,
        0,
        &volumes,
        &FakeObjects::default(),
        &n,
        Some("10.42.0.9"),
    )
    .unwrap_err();
    assert!(!n.pod_dir("uid-refused").exists());
    // A missing ConfigMap is the config error the worker reports as CreateContainerConfigError.
    let p = pod(
        json!({"containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "gone", "key": "k"}}}]}]}),
    );
    let err = container_config(
        &p,
        &p.spec.as_ref().unwrap().containers[0],
        0,
        &volumes,
        &FakeObjects::default(),
        &n,
        None,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConfigError::Missing {
                kind: "configmap",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn host_network_pods_get_the_nodes_hosts_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = node(dir.path());
    n.host_hosts_file = dir.path().join("hosts");
    std::fs::write(&n.host_hosts_file, "127.0.0.1 localhost\n192.0.2.10 node-1").unwrap();
    let p = pod(
        json!({"hostNetwork": true, "hostAliases": [{"ip": "192.0.2.2", "hostnames": ["x"]}], "containers": [{"name": "c"}]}),
    );
    let text = etc_hosts_content(&p, &n, None).unwrap().unwrap();
    assert_eq!(
        text,
        "127.0.0.1 localhost\n192.0.2.10 node-1\n\n# Entries added by HostAliases.\n192.0.2.2\tx\n"
    );
}
