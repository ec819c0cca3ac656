//! A time-bounded mutation fuzzer for the parsers that take untrusted request bodies: the
//! Kubernetes protobuf decoder, the JSON and YAML object parsers and the three patch engines.
//!
//! Runs on stable Rust as an ordinary test, so CI runs it on every build. It mutates a seed
//! corpus of valid bodies (bit flips, byte overwrites, truncation, insertion, deletion,
//! duplication, splicing between inputs, varint insertion), feeds every input to every target
//! and checks that nothing panics and that every error is a proper error value (a 4xx Status
//! with a message). Inputs that still parse are kept (a bounded corpus), so mutations reach
//! deeper.
//!
//! - `EDGESITE_FUZZ_SECONDS` (default 15): how long to run.
//! - `EDGESITE_FUZZ_SEED` (default: from the clock, printed): the PRNG seed. The sequence of
//!   inputs depends only on the seed, so a printed seed and execution number reproduce a
//!   failure.
//! - `EDGESITE_FUZZ_RUNS` (optional): stop after this many executions.
#![allow(clippy::disallowed_methods)] // tests wait and measure in real time

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edgesite_api::patch::{self, KnownMergeKeys, PatchError};
use edgesite_api::status::ApiError;
use edgesite_api::{decode, protobuf};
use serde_json::{Value, json};

/// SplitMix64: small, fast, and good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

// --- seed corpus -------------------------------------------------------------------------------

#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn varint(mut self, mut v: u64) -> Self {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
        self
    }
    fn int(self, field: u32, v: i64) -> Self {
        self.varint(u64::from(field) << 3).varint(v as u64)
    }
    fn bytes(self, field: u32, b: &[u8]) -> Self {
        let mut s = self
            .varint(u64::from(field) << 3 | 2)
            .varint(b.len() as u64);
        s.0.extend_from_slice(b);
        s
    }
    fn str(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }
    fn msg(self, field: u32, m: Enc) -> Self {
        self.bytes(field, &m.0)
    }
    fn entry(self, field: u32, k: &str, v: &str) -> Self {
        self.msg(field, Enc::default().str(1, k).str(2, v))
    }
}

fn envelope(api_version: &str, kind: &str, raw: Enc) -> Vec<u8> {
    let mut out = protobuf::MAGIC.to_vec();
    let unknown = Enc::default()
        .msg(1, Enc::default().str(1, api_version).str(2, kind))
        .msg(2, raw)
        .str(3, "")
        .str(4, "");
    out.extend_from_slice(&unknown.0);
    out
}

fn meta(name: &str, namespace: &str) -> Enc {
    Enc::default()
        .str(1, name)
        .str(2, "")
        .str(3, namespace)
        .str(6, "")
        .int(7, 0)
        .msg(8, Enc::default().int(1, 1_700_000_000))
        .entry(11, "app", name)
}

fn protobuf_corpus() -> Vec<Vec<u8>> {
    let container = Enc::default()
        .str(1, "nginx")
        .str(2, "nginx:1.27")
        .str(4, "-v")
        .msg(6, Enc::default().int(3, 80).str(4, "TCP"))
        .msg(
            8,
            Enc::default().msg(
                1,
                Enc::default()
                    .str(1, "cpu")
                    .msg(2, Enc::default().str(1, "500m")),
            ),
        );
    let deployment = Enc::default().msg(1, meta("web", "demo")).msg(
        2,
        Enc::default()
            .int(1, 2)
            .msg(2, Enc::default().entry(1, "app", "web"))
            .msg(
                3,
                Enc::default()
                    .msg(1, meta("", ""))
                    .msg(2, Enc::default().msg(2, container).str(3, "Always")),
            )
            .msg(
                4,
                Enc::default().str(1, "RollingUpdate").msg(
                    2,
                    Enc::default()
                        .msg(1, Enc::default().int(1, 1).str(3, "25%"))
                        .msg(2, Enc::default().int(2, 1)),
                ),
            ),
    );
    let ssar = Enc::default().msg(1, meta("", "")).msg(
        2,
        Enc::default().msg(
            1,
            Enc::default().str(1, "demo").str(2, "get").str(5, "pods"),
        ),
    );
    let lease = Enc::default().msg(1, meta("node", "kube-node-lease")).msg(
        2,
        Enc::default()
            .str(1, "node")
            .int(2, 40)
            .msg(4, Enc::default().int(1, 1_700_000_000).int(2, 123_000)),
    );
    let namespace = envelope("v1", "Namespace", Enc::default().msg(1, meta("demo", "")));
    let list = envelope(
        "v1",
        "List",
        Enc::default()
            .msg(2, Enc::default().bytes(1, &namespace))
            .msg(2, Enc::default().bytes(1, br#"{"kind":"Pod"}"#)),
    );
    vec![
        namespace,
        list,
        envelope(
            "v1",
            "ConfigMap",
            Enc::default()
                .msg(1, meta("cm", "demo"))
                .entry(2, "a", "b")
                .msg(3, Enc::default().str(1, "bin").bytes(2, &[0, 255])),
        ),
        envelope(
            "v1",
            "Secret",
            Enc::default()
                .msg(1, meta("s", "demo"))
                .msg(2, Enc::default().str(1, "p").bytes(2, b"x"))
                .str(3, "Opaque"),
        ),
        envelope("apps/v1", "Deployment", deployment),
        envelope("authorization.k8s.io/v1", "SelfSubjectAccessReview", ssar),
        envelope(
            "v1",
            "DeleteOptions",
            Enc::default()
                .int(1, 0)
                .msg(2, Enc::default().str(1, "u").str(2, "7"))
                .str(4, "Background")
                .str(5, "All"),
        ),
        envelope("coordination.k8s.io/v1", "Lease", lease),
    ]
}

fn text_corpus() -> Vec<Vec<u8>> {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "nginx", "image": "nginx",
                    "ports": [{"containerPort": 80}], "resources": {"limits": {"cpu": "1"}}}]}}}
    });
    vec![
        deployment.to_string().into_bytes(),
        serde_json::to_vec_pretty(&deployment).unwrap(),
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c"},"data":{"k":"v\n\u00e9"}}"#
            .to_vec(),
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {a: b}\ndata:\n  k: |\n    multi\n    line\n  n: '1'\n".to_vec(),
        b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 3\n  template:\n    spec:\n      containers:\n      - name: a\n        image: b\n        args: [\"x\", y, 1.5, true, null]\n".to_vec(),
        b"a: &anchor {b: [1, 2]}\nc: *anchor\nd: !!str 12\ne: 0x1f\n".to_vec(),
    ]
}

/// (target, patch) pairs: every case of the strategic merge patch fixtures, plus JSON patches.
fn patch_corpus() -> Vec<(Value, Vec<u8>)> {
    let mut out = Vec::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/strategic");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for file in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for case in doc["cases"].as_array().into_iter().flatten() {
            if let (Some(original), Some(patch)) = (case.get("original"), case.get("patch")) {
                out.push((original.clone(), patch.to_string().into_bytes()));
            }
        }
    }
    assert!(
        out.len() > 5,
        "strategic fixtures found in {}",
        dir.display()
    );
    let target = out[0].0.clone();
    for p in [
        json!([{"op": "add", "path": "/metadata/labels/x", "value": "y"},
               {"op": "test", "path": "/metadata/name", "value": "web"}]),
        json!([{"op": "remove", "path": "/spec/template/spec/containers/0"},
               {"op": "replace", "path": "/spec/replicas", "value": 5}]),
        json!([{"op": "move", "from": "/metadata/annotations", "path": "/metadata/labels"},
               {"op": "copy", "from": "/spec", "path": "/status"}]),
        json!([{"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "x"}}]),
        json!({"metadata": {"labels": null}, "spec": {"replicas": 0}}),
    ] {
        out.push((target.clone(), p.to_string().into_bytes()));
    }
    out
}

// --- mutation ----------------------------------------------------------------------------------

const INTERESTING: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'{', b'}', b'[', b'"', b':', b'\n', b'-',
];

fn mutate(rng: &mut Rng, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..=rng.below(4) {
        let len = v.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                v[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                v[i] = if rng.chance(2) {
                    INTERESTING[rng.below(INTERESTING.len())]
                } else {
                    rng.next() as u8
                };
            }
            2 if len > 0 => v.truncate(rng.below(len)),
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                v.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let a = rng.below(len);
                let b = (a + 1 + rng.below(16)).min(len);
                v.drain(a..b);
            }
            5 if len > 0 => {
                // Duplicate a slice in place (repeated fields, nested structures).
                let a = rng.below(len);
                let b = (a + 1 + rng.below(32)).min(len);
                let chunk = v[a..b].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, chunk);
            }
            6 if !others.is_empty() => {
                // Splice: our head with another input's tail.
                let other = &others[rng.below(others.len())];
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            7 => {
                // A protobuf-looking varint: a big length, a field key or a 10-byte number.
                let i = rng.below(len + 1);
                let mut x = match rng.below(3) {
                    0 => rng.next(),
                    1 => rng.next() >> rng.below(64),
                    _ => (rng.below(40) as u64) << 3 | rng.below(8) as u64,
                };
                let mut bytes = Vec::new();
                while x >= 0x80 {
                    bytes.push((x as u8) | 0x80);
                    x >>= 7;
                }
                bytes.push(x as u8);
                v.splice(i..i, bytes);
            }
            _ if len > 1 => {
                // Swap two bytes.
                let (a, b) = (rng.below(len), rng.below(len));
                v.swap(a, b);
            }
            _ => {}
        }
    }
    v
}

// --- targets and oracles -----------------------------------------------------------------------

fn check_api_error(what: &str, e: &ApiError) -> Result<(), String> {
    let code = e.code();
    let status = e.to_status_json();
    if code != 400 {
        return Err(format!(
            "{what}: error with code {code}, want 400: {status}"
        ));
    }
    if e.to_string().is_empty() || status["reason"] != "BadRequest" || status["code"] != 400 {
        return Err(format!("{what}: improper Status {status}"));
    }
    Ok(())
}

fn check_patch_error(what: &str, e: &PatchError) -> Result<(), String> {
    let code = e.status_code();
    if !(400..500).contains(&code) || e.to_string().is_empty() {
        return Err(format!("{what}: patch error {e:?} has code {code}"));
    }
    // It converts into an API error with the same code.
    let api: ApiError = e.clone().into();
    if api.code() != code {
        return Err(format!("{what}: ApiError code {} != {code}", api.code()));
    }
    Ok(())
}

/// Runs the protobuf decoder; returns whether the input decoded.
fn run_protobuf(input: &[u8]) -> Result<bool, String> {
    match protobuf::decode_object(input) {
        Ok(v) => {
            let ok = v["apiVersion"].is_string() && v["kind"].is_string();
            if !ok {
                return Err(format!("decoded object without apiVersion/kind: {v}"));
            }
            // The result must be storable JSON.
            serde_json::to_vec(&v).map_err(|e| format!("unserialisable result: {e}"))?;
            Ok(true)
        }
        Err(e) => {
            if e.to_string().is_empty() {
                return Err(format!("empty protobuf error message: {e:?}"));
            }
            check_api_error(
                "protobuf_object",
                &decode::protobuf_object(input).unwrap_err(),
            )?;
            Ok(false)
        }
    }
}

fn run_text(input: &[u8]) -> Result<bool, String> {
    let mut any = false;
    for (name, parse) in [
        (
            "json_object",
            decode::json_object as fn(&[u8]) -> Result<Value, ApiError>,
        ),
        ("yaml_object", decode::yaml_object),
    ] {
        match parse(input) {
            Ok(v) if v.is_object() => any = true,
            Ok(v) => return Err(format!("{name} returned a non-object {v}")),
            Err(e) => check_api_error(name, &e)?,
        }
    }
    Ok(any)
}

fn run_patches(target: &Value, patch_bytes: &[u8]) -> Result<bool, String> {
    let mut any = false;
    match patch::json_patch(target, patch_bytes) {
        Ok(_) => any = true,
        Err(e) => check_patch_error("json_patch", &e)?,
    }
    if let Ok(p) = serde_json::from_slice::<Value>(patch_bytes) {
        match patch::merge_patch(target, &p) {
            Ok(_) => any = true,
            Err(e) => check_patch_error("merge_patch", &e)?,
        }
        match patch::strategic_merge_patch(target, &p, &KnownMergeKeys) {
            Ok(_) => any = true,
            Err(e) => check_patch_error("strategic_merge_patch", &e)?,
        }
    }
    Ok(any)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Keeps an input that still parses, in a corpus of bounded size.
fn keep(rng: &mut Rng, corpus: &mut Vec<Vec<u8>>, seeds: usize, input: Vec<u8>) {
    const MAX: usize = 256;
    if input.len() > 64 * 1024 {
        return;
    }
    if corpus.len() < MAX {
        corpus.push(input);
    } else {
        let i = seeds + rng.below(MAX - seeds);
        corpus[i] = input;
    }
}

#[test]
fn fuzz_body_parsers_and_patch_engines() {
    let seconds: u64 = std::env::var("EDGESITE_FUZZ_SECONDS")
        .ok()
        .map(|s| s.parse().expect("EDGESITE_FUZZ_SECONDS is a number"))
        .unwrap_or(15);
    let max_runs: Option<u64> = std::env::var("EDGESITE_FUZZ_RUNS")
        .ok()
        .map(|s| s.parse().expect("EDGESITE_FUZZ_RUNS is a number"));
    let seed: u64 = std::env::var("EDGESITE_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("EDGESITE_FUZZ_SEED is a number"))
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("fuzz seed {seed} (EDGESITE_FUZZ_SEED={seed} reproduces), {seconds} s");
    let mut rng = Rng(seed);

    let mut pb = protobuf_corpus();
    for input in &pb {
        assert_eq!(run_protobuf(input), Ok(true), "seed body {}", hex(input));
    }
    let mut text = text_corpus();
    for input in &text {
        assert!(
            run_text(input).unwrap(),
            "seed text {}",
            String::from_utf8_lossy(input)
        );
    }
    let patches = patch_corpus();
    let targets: Vec<Value> = patches.iter().map(|(t, _)| t.clone()).collect();
    let mut patch_inputs: Vec<Vec<u8>> = patches.iter().map(|(_, p)| p.clone()).collect();
    let (pb_seeds, text_seeds, patch_seeds) = (pb.len(), text.len(), patch_inputs.len());

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut runs: u64 = 0;
    let mut accepted = [0u64; 3];
    while Instant::now() < deadline && max_runs.is_none_or(|m| runs < m) {
        let which = rng.below(3);
        let (corpus, seeds) = match which {
            0 => (&mut pb, pb_seeds),
            1 => (&mut text, text_seeds),
            _ => (&mut patch_inputs, patch_seeds),
        };
        let base = corpus[rng.below(corpus.len())].clone();
        let input = mutate(&mut rng, &base, corpus);
        let target = &targets[rng.below(targets.len())];
        let result = catch_unwind(AssertUnwindSafe(|| match which {
            0 => run_protobuf(&input),
            1 => run_text(&input),
            _ => run_patches(target, &input),
        }));
        runs += 1;
        let what = ["protobuf", "json/yaml", "patch"][which];
        match result {
            Ok(Ok(true)) => {
                accepted[which] += 1;
                keep(&mut rng, corpus, seeds, input);
            }
            Ok(Ok(false)) => {}
            Ok(Err(msg)) => panic!(
                "seed {seed}, execution {runs}, {what}: {msg}\ninput (hex): {}\ninput (text): {}",
                hex(&input),
                String::from_utf8_lossy(&input)
            ),
            Err(_) => panic!(
                "seed {seed}, execution {runs}, {what}: PANIC\ninput (hex): {}\ninput (text): {}\ntarget: {target}",
                hex(&input),
                String::from_utf8_lossy(&input)
            ),
        }
    }
    println!(
        "fuzz: {runs} executions in {:.1} s (still accepted: protobuf {}, json/yaml {}, patch {})",
        started.elapsed().as_secs_f64(),
        accepted[0],
        accepted[1],
        accepted[2]
    );
    assert!(runs > 0, "no executions");
}
