//! The chain's order and its release of reservations.

use std::sync::Mutex;

use edgesite_api::registry;
use serde_json::json;

use super::*;

/// Records each call as `name:phase`; fails the phase named in `fail`.
#[derive(Debug)]
struct Recorder {
    name: &'static str,
    fail: Option<&'static str>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    fn record(&self, phase: &str) -> Result<(), ApiError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{}:{phase}", self.name));
        match self.fail {
            Some(f) if f == phase => Err(ApiError::bad_request(format!("{} refuses", self.name))),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl AdmissionPlugin for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn admit(
        &self,
        _a: &Attributes<'_>,
        obj: &mut Value,
        _reserved: &mut Reservations,
    ) -> Result<(), ApiError> {
        obj[self.name] = json!(true);
        self.record("admit")
    }

    async fn validate(&self, _a: &Attributes<'_>, obj: Option<&Value>) -> Result<(), ApiError> {
        assert!(obj.is_some_and(|o| o["a"] == true && o["b"] == true));
        self.record("validate")
    }

    async fn rollback(&self, _reserved: &mut Reservations) {
        let _ = self.record("rollback");
    }
}

fn chain(fail: &[(&'static str, &'static str)]) -> (AdmissionChain, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let plugin = |name| -> Box<dyn AdmissionPlugin> {
        Box::new(Recorder {
            name,
            fail: fail.iter().find(|(n, _)| *n == name).map(|(_, p)| *p),
            log: log.clone(),
        })
    };
    (AdmissionChain::new(vec![plugin("a"), plugin("b")]), log)
}

fn attrs() -> Attributes<'static> {
    Attributes {
        r: registry::lookup("", "v1", "configmaps").unwrap(),
        namespace: Some("default"),
        name: "c",
        operation: Operation::Create,
        old: None,
        dry_run: false,
        user: None,
    }
}

async fn run(chain: &AdmissionChain) -> Result<(), ApiError> {
    let mut obj = json!({});
    let reserved = chain.admit(&attrs(), &mut obj).await?;
    chain.validate(&attrs(), Some(&obj), reserved).await?;
    Ok(())
}

#[tokio::test]
async fn every_mutation_runs_before_any_validation() {
    let (chain, log) = chain(&[]);
    run(&chain).await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        ["a:admit", "b:admit", "a:validate", "b:validate"]
    );
}

#[tokio::test]
async fn a_refusal_stops_the_chain_and_releases_what_was_reserved() {
    let (chain, log) = chain(&[("b", "validate")]);
    assert_eq!(run(&chain).await.unwrap_err().code(), 400);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "a:admit",
            "b:admit",
            "a:validate",
            "b:validate",
            "a:rollback",
            "b:rollback"
        ]
    );
    let (chain, log) = chain_failing_first_admit();
    assert!(run(&chain).await.is_err());
    assert_eq!(
        *log.lock().unwrap(),
        ["a:admit", "a:rollback", "b:rollback"]
    );
}

fn chain_failing_first_admit() -> (AdmissionChain, Arc<Mutex<Vec<String>>>) {
    chain(&[("a", "admit")])
}

#[test]
fn the_standard_chain_runs_in_upstreams_order() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let names = rt.block_on(async {
        let store = edgesite_store::open(&edgesite_store::DatastoreConfig::embedded(
            dir.path().join("state.redb"),
        ))
        .await
        .unwrap();
        let services = Arc::new(ServiceAllocator::new(
            store.clone(),
            crate::allocator::Ipv4Cidr::default(),
            30000..=32767,
            Arc::new(edgesite_clock::SystemClock),
        ));
        let rbac = crate::rbac::RbacAuthorizer::new();
        let chain = AdmissionChain::standard(store, services, rbac.clone(), rbac);
        chain.names()
    });
    assert_eq!(
        names,
        [
            "NamespaceLifecycle",
            "Defaulting",
            "ServiceAllocation",
            "Validation",
            "RBACEscalation"
        ]
    );
}
