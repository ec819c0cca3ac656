//! The plan as a table: runtime state in, actions out (in a one-line summary).

use super::*;
use serde_json::json;

const S: i64 = 1_000_000_000;
const NOW: i64 = 10_000 * S;

fn sb(id: &str, attempt: u32, ready: bool) -> ObservedSandbox {
    ObservedSandbox {
        id: id.into(),
        attempt,
        ready,
        created_at: i64::from(attempt) * S,
        ips: vec!["10.42.0.9".into()],
    }
}

/// A container `id` of `name` in `sandbox`: `state` is `run`, `new` (created), or an exit
/// code, exited `ago` seconds before [`NOW`].
fn c(
    id: &str,
    sandbox: &str,
    name: &str,
    attempt: u32,
    state: &str,
    ago: i64,
) -> ObservedContainer {
    let (state, exit_code) = match state {
        "run" => (RunState::Running, 0),
        "new" => (RunState::Created, 0),
        code => (RunState::Exited, code.parse().unwrap()),
    };
    ObservedContainer {
        id: id.into(),
        sandbox_id: sandbox.into(),
        name: name.into(),
        attempt,
        state,
        created_at: NOW - (ago + 5) * S + i64::from(attempt),
        started_at: NOW - (ago + 5) * S,
        finished_at: if state == RunState::Exited {
            NOW - ago * S
        } else {
            0
        },
        exit_code,
        reason: String::new(),
        message: String::new(),
        image: "img".into(),
        image_ref: "sha256:1".into(),
        hash: None,
    }
}

fn pod(policy: &str, inits: &[&str], containers: &[&str]) -> Pod {
    let list = |names: &[&str]| -> Vec<serde_json::Value> {
        names
            .iter()
            .map(|n| json!({"name": n, "image": "img"}))
            .collect()
    };
    serde_json::from_value(json!({
        "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
        "spec": {
            "restartPolicy": policy,
            "initContainers": list(inits),
            "containers": list(containers),
        },
    }))
    .unwrap()
}

fn summary(p: &Plan) -> String {
    let mut out = Vec::new();
    if p.kill_pod {
        out.push("kill-pod".to_string());
    }
    if let Some(a) = p.create_sandbox {
        out.push(format!("sandbox#{a}"));
    }
    for k in &p.kill {
        out.push(format!("kill:{}", k.id));
    }
    for s in &p.start {
        let init = if s.init { "init:" } else { "" };
        let again = if s.after_exit { "!" } else { "" };
        out.push(format!("start:{init}{}#{}{again}", s.name, s.restart_count));
    }
    for name in p.backing_off.keys() {
        out.push(format!("backoff:{name}"));
    }
    if let Some(d) = p.done {
        out.push(format!("{d:?}"));
    }
    for r in &p.remove {
        out.push(format!("rm:{r}"));
    }
    out.join(" ")
}

struct Case {
    what: &'static str,
    pod: Pod,
    sandboxes: Vec<ObservedSandbox>,
    containers: Vec<ObservedContainer>,
    /// Container names restarted this many seconds before NOW (so backing off).
    retried: Vec<(&'static str, i64)>,
    unhealthy: Vec<&'static str>,
    want: &'static str,
}

fn run(case: &Case) -> Plan {
    let mut backoff = Backoff::default();
    for (name, ago) in &case.retried {
        backoff.next(name, NOW - ago * S);
    }
    let unhealthy = case
        .unhealthy
        .iter()
        .map(|id| (id.to_string(), format!("{id} failed liveness probe")))
        .collect();
    let observed = Observed {
        sandboxes: case.sandboxes.clone(),
        containers: case.containers.clone(),
    };
    plan(&PlanInput {
        pod: &case.pod,
        observed: &observed,
        backoff: &backoff,
        unhealthy: &unhealthy,
        restart_counts: &HashMap::new(),
        now: NOW,
    })
}

#[test]
fn plans() {
    let always = |i: &[&str], c: &[&str]| pod("Always", i, c);
    let cases = vec![
        Case {
            what: "a new pod gets a sandbox and all its containers",
            pod: always(&[], &["a", "b"]),
            sandboxes: vec![],
            containers: vec![],
            retried: vec![],
            unhealthy: vec![],
            want: "sandbox#0 start:a#0 start:b#0",
        },
        Case {
            what: "a new pod with init containers starts only the first",
            pod: always(&["i1", "i2"], &["a"]),
            sandboxes: vec![],
            containers: vec![],
            retried: vec![],
            unhealthy: vec![],
            want: "sandbox#0 start:init:i1#0",
        },
        Case {
            what: "a dead sandbox is replaced, its containers killed, counts go on",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, false)],
            containers: vec![c("c1", "s0", "a", 4, "run", 0)],
            retried: vec![],
            unhealthy: vec![],
            want: "kill-pod sandbox#1 start:a#5",
        },
        Case {
            what: "two ready sandboxes: start over in a new one",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true), sb("s1", 1, true)],
            containers: vec![],
            retried: vec![],
            unhealthy: vec![],
            want: "kill-pod sandbox#2 start:a#0",
        },
        Case {
            what: "a running pod needs nothing",
            pod: always(&["i"], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![
                c("c0", "s0", "i", 0, "0", 50),
                c("c1", "s0", "a", 0, "run", 0),
            ],
            retried: vec![],
            unhealthy: vec![],
            want: "",
        },
        Case {
            what: "init containers go one by one",
            pod: always(&["i1", "i2"], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c0", "s0", "i1", 0, "0", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "start:init:i2#0",
        },
        Case {
            what: "a running init container is waited for",
            pod: always(&["i1", "i2"], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c0", "s0", "i1", 0, "run", 0)],
            retried: vec![],
            unhealthy: vec![],
            want: "",
        },
        Case {
            what: "a failed init container restarts (first time at once)",
            pod: always(&["i1"], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c0", "s0", "i1", 0, "1", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "start:init:i1#1!",
        },
        Case {
            what: "a failed init container under Never fails the pod",
            pod: pod("Never", &["i1"], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c0", "s0", "i1", 0, "1", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "kill-pod Failed",
        },
        Case {
            what: "an exited container inside its back-off waits",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 1, "1", 3)],
            retried: vec![("a", 5)],
            unhealthy: vec![],
            want: "backoff:a",
        },
        Case {
            what: "an exited container past its back-off restarts",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 1, "1", 11)],
            retried: vec![("a", 20)],
            unhealthy: vec![],
            want: "start:a#2!",
        },
        Case {
            what: "OnFailure does not restart a success, the pod succeeds when all did",
            pod: pod("OnFailure", &[], &["a", "b"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "0", 1), c("c2", "s0", "b", 0, "0", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "kill-pod Succeeded",
        },
        Case {
            what: "OnFailure restarts a failure",
            pod: pod("OnFailure", &[], &["a", "b"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "0", 1), c("c2", "s0", "b", 0, "3", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "start:b#1!",
        },
        Case {
            what: "Never with one failure and one still running waits",
            pod: pod("Never", &[], &["a", "b"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![
                c("c1", "s0", "a", 0, "3", 1),
                c("c2", "s0", "b", 0, "run", 0),
            ],
            retried: vec![],
            unhealthy: vec![],
            want: "",
        },
        Case {
            what: "Never, all exited, one failed: the pod failed",
            pod: pod("Never", &[], &["a", "b"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "3", 1), c("c2", "s0", "b", 0, "0", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "kill-pod Failed",
        },
        Case {
            what: "a finished OnFailure pod whose sandbox is stopped stays finished",
            pod: pod("OnFailure", &[], &["a"]),
            sandboxes: vec![sb("s0", 0, false)],
            containers: vec![c("c1", "s0", "a", 0, "0", 100)],
            retried: vec![],
            unhealthy: vec![],
            want: "Succeeded",
        },
        Case {
            what: "a Never pod whose sandbox died is not started again",
            pod: pod("Never", &[], &["a"]),
            sandboxes: vec![sb("s0", 0, false)],
            containers: vec![c("c1", "s0", "a", 0, "137", 1)],
            retried: vec![],
            unhealthy: vec![],
            want: "Failed",
        },
        Case {
            what: "an unhealthy container is killed and restarted at once",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "run", 0)],
            retried: vec![],
            unhealthy: vec!["c1"],
            want: "kill:c1 start:a#1",
        },
        Case {
            what: "an unhealthy container under Never is only killed",
            pod: pod("Never", &[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "run", 0)],
            retried: vec![],
            unhealthy: vec!["c1"],
            want: "kill:c1",
        },
        Case {
            what: "a container gone from the spec is killed",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![
                c("c1", "s0", "a", 0, "run", 0),
                c("c2", "s0", "old", 0, "run", 0),
            ],
            retried: vec![],
            unhealthy: vec![],
            want: "kill:c2",
        },
        Case {
            what: "a container whose start failed is retried under back-off rules",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![c("c1", "s0", "a", 0, "new", 0)],
            retried: vec![],
            unhealthy: vec![],
            want: "start:a#1!",
        },
        Case {
            what: "only the newest two exited containers of a name are kept",
            pod: always(&[], &["a"]),
            sandboxes: vec![sb("s0", 0, true)],
            containers: vec![
                c("c1", "s0", "a", 0, "1", 90),
                c("c2", "s0", "a", 1, "1", 60),
                c("c3", "s0", "a", 2, "1", 30),
                c("c4", "s0", "a", 3, "run", 0),
            ],
            retried: vec![],
            unhealthy: vec![],
            want: "rm:c2 rm:c1",
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = summary(&run(case));
        if got != case.want {
            failures.push(format!(
                "{}:\n  want {:?}\n  got  {:?}",
                case.what, case.want, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_changed_container_spec_restarts_the_container() {
    let p = pod("Always", &[], &["a"]);
    let mut running = c("c1", "s0", "a", 0, "run", 0);
    running.hash = Some("0000".into());
    let case = Case {
        what: "",
        pod: p.clone(),
        sandboxes: vec![sb("s0", 0, true)],
        containers: vec![running.clone()],
        retried: vec![],
        unhealthy: vec![],
        want: "",
    };
    assert_eq!(summary(&run(&case)), "kill:c1 start:a#1");
    running.hash = Some(container_hash(&p.spec.as_ref().unwrap().containers[0]));
    let same = Case {
        containers: vec![running],
        ..case
    };
    assert_eq!(summary(&run(&same)), "");
}

#[test]
fn back_off_wakes_the_worker_when_it_ends() {
    let case = Case {
        what: "",
        pod: pod("Always", &[], &["a"]),
        sandboxes: vec![sb("s0", 0, true)],
        containers: vec![c("c1", "s0", "a", 1, "1", 3)],
        retried: vec![("a", 5)],
        unhealthy: vec![],
        want: "",
    };
    let p = run(&case);
    // Exited 3 s ago with a 10 s back-off: 7 s from now.
    assert_eq!(p.wake_at, Some(NOW + 7 * S));
    assert_eq!(
        p.backing_off["a"],
        "back-off 10s restarting failed container=a pod=p_ns(u)"
    );
}
