//! One watch and one cache per resource for the whole process, shared by every controller
//! that needs it (client-go's `SharedInformerFactory`): without it, each controller watching
//! Pods kept its own watch and its own copy of every pod.
//!
//! An [`Informer`] owns one `watcher` and one kube-runtime [`Store`], and fans the watch
//! events out to its subscribers after applying them to the store, so a subscriber that
//! looks an object up finds at least the version it was told about. A subscriber that falls
//! behind, or subscribes after the first list, is given the store's content as a relist
//! (`Init`, `InitApply`…, `InitDone`), so it sees what a watcher of its own would.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::{Stream, StreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::serde::de::DeserializeOwned;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt as _, watcher::watcher};
use kube::{Api, Client, Resource};
use tokio::sync::Notify;
use tracing::debug;

/// How many events an informer holds for a subscriber that has not read them yet; one that
/// falls further behind is resynced from the store. Each subscriber's queue grows only as far
/// as it falls behind, so an idle informer holds no ring of slots.
const BUFFER: usize = 4096;

/// What an informer's resource type must be.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Watched for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// One shared watch and cache of a resource type.
pub struct Informer<K: Watched> {
    api: Api<K>,
    writer: Mutex<Writer<K>>,
    store: Store<K>,
    subscribers: Mutex<Vec<Weak<Queue<K>>>>,
    /// Whether the first list is complete (the store is whole).
    listed: AtomicBool,
    /// Whether a list is being applied (between `Init` and `InitDone`): the store is not
    /// whole until it ends.
    listing: Arc<AtomicBool>,
}

impl<K: Watched> Drop for Informer<K> {
    fn drop(&mut self) {
        let subs = self
            .subscribers
            .get_mut()
            .unwrap_or_else(|e| e.into_inner());
        for queue in subs.drain(..).filter_map(|q| q.upgrade()) {
            queue.state.lock().unwrap_or_else(|e| e.into_inner()).closed = true;
            queue.ready.notify_one();
        }
    }
}

/// The events one subscriber has not read yet.
struct Queue<K: Watched> {
    state: Mutex<QueueState<K>>,
    ready: Notify,
}

struct QueueState<K: Watched> {
    events: VecDeque<Event<Arc<K>>>,
    /// Events were dropped because the subscriber fell [`BUFFER`] behind.
    lagged: bool,
    /// The informer is gone: no event will come.
    closed: bool,
}

impl<K: Watched> Queue<K> {
    fn push(&self, ev: Event<Arc<K>>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.events.len() >= BUFFER {
            st.events = VecDeque::new();
            st.lagged = true;
        } else if !st.lagged {
            st.events.push_back(ev);
        }
        drop(st);
        self.ready.notify_one();
    }
}

impl<K: Watched> Debug for Informer<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informer")
            .field("kind", &K::kind(&()))
            .field("objects", &self.store.len())
            .finish_non_exhaustive()
    }
}

impl<K: Watched> Informer<K> {
    /// An informer of every `K` `api` can see; it watches once [`Informer::run`] runs.
    pub fn new(api: Api<K>) -> Arc<Self> {
        let writer = Writer::default();
        let store = writer.as_reader();
        Arc::new(Self {
            api,
            writer: Mutex::new(writer),
            store,
            subscribers: Mutex::new(Vec::new()),
            listed: AtomicBool::new(false),
            listing: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The shared cache.
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Watches until dropped, feeding the store and the subscribers. Can be run again after
    /// it was dropped (the store is kept, and replaced on the next list).
    pub async fn run(self: Arc<Self>) {
        let mut events =
            std::pin::pin!(watcher(self.api.clone(), watcher::Config::default()).default_backoff());
        while let Some(ev) = events.next().await {
            match ev {
                Ok(ev) => self.apply(ev),
                Err(err) => debug!(kind = %K::kind(&()), %err, "watch failed; retrying"),
            }
        }
    }

    fn apply(&self, ev: Event<K>) {
        self.writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply_watcher_event(&ev);
        let shared = match ev {
            // The store's own Arc, so subscribers keeping it share the cached copy.
            Event::Apply(obj) => Event::Apply(
                self.store
                    .get(&ObjectRef::from_obj(&obj))
                    .unwrap_or_else(|| Arc::new(obj)),
            ),
            Event::Delete(obj) => Event::Delete(Arc::new(obj)),
            Event::Init => {
                self.listing.store(true, Ordering::Release);
                Event::Init
            }
            Event::InitApply(obj) => Event::InitApply(Arc::new(obj)),
            Event::InitDone => {
                self.listing.store(false, Ordering::Release);
                self.listed.store(true, Ordering::Release);
                Event::InitDone
            }
        };
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|sub| match sub.upgrade() {
            Some(queue) => {
                queue.push(shared.clone());
                true
            }
            None => false,
        });
    }

    /// The watch events, as a watcher of the subscriber's own would give them (starting
    /// with a list of the store's content when the informer has listed already).
    pub fn events(&self) -> impl Stream<Item = Event<Arc<K>>> + Send + 'static {
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState {
                events: VecDeque::new(),
                lagged: false,
                closed: false,
            }),
            ready: Notify::new(),
        });
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&queue));
        let mut sub = Subscriber {
            queue,
            informer_listing: self.listing.clone(),
            store: self.store.clone(),
            pending: VecDeque::new(),
            in_list: false,
        };
        if self.listed.load(Ordering::Acquire) {
            sub.relist();
        }
        futures::stream::unfold(sub, |mut sub| async move {
            sub.next().await.map(|ev| (ev, sub))
        })
    }

    /// The objects that changed (applied or deleted), and every object after each list: the
    /// trigger of a kube-runtime `Controller` (`for_shared_stream`, `owns_shared_stream`,
    /// `watches_shared_stream`), which looks them up in [`Informer::store`].
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        let store = self.store.clone();
        self.events().flat_map(move |ev| {
            let objs = match ev {
                Event::Apply(o) | Event::Delete(o) => vec![o],
                Event::InitDone => store.state(),
                Event::Init | Event::InitApply(_) => Vec::new(),
            };
            futures::stream::iter(objs)
        })
    }
}

/// One subscriber's position in an informer's events.
struct Subscriber<K: Watched> {
    queue: Arc<Queue<K>>,
    /// The informer's [`Informer::listing`].
    informer_listing: Arc<AtomicBool>,
    store: Store<K>,
    /// A relist being handed out.
    pending: VecDeque<Event<Arc<K>>>,
    /// Whether the subscriber saw the `Init` of the list in progress.
    in_list: bool,
}

impl<K: Watched> Subscriber<K> {
    /// Hands out the store's content as one list.
    fn relist(&mut self) {
        self.pending.clear();
        self.pending.push_back(Event::Init);
        self.pending
            .extend(self.store.state().into_iter().map(Event::InitApply));
        self.pending.push_back(Event::InitDone);
        self.in_list = false;
    }

    /// The next queued event, waiting for one; `Err(())` when events were dropped, `None`
    /// when the informer is gone.
    async fn recv(&self) -> Option<Result<Event<Arc<K>>, ()>> {
        loop {
            let notified = self.queue.ready.notified();
            {
                let mut st = self.queue.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.lagged {
                    st.lagged = false;
                    return Some(Err(()));
                }
                if let Some(ev) = st.events.pop_front() {
                    if st.events.is_empty() && st.events.capacity() > 64 {
                        // A burst is over: give its memory back.
                        st.events = VecDeque::new();
                    }
                    return Some(Ok(ev));
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    async fn next(&mut self) -> Option<Event<Arc<K>>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(ev);
            }
            match self.recv().await? {
                Ok(Event::Init) => {
                    self.in_list = true;
                    return Some(Event::Init);
                }
                Ok(Event::InitApply(o)) => {
                    if self.in_list {
                        return Some(Event::InitApply(o));
                    }
                }
                Ok(Event::InitDone) => {
                    if self.in_list {
                        self.in_list = false;
                        return Some(Event::InitDone);
                    }
                    // The end of a list whose start this subscriber missed: the store is
                    // whole now, hand it out instead.
                    self.relist();
                }
                Ok(ev) => return Some(ev),
                Err(()) => {
                    debug!(kind = %K::kind(&()), "subscriber fell behind; relisting from the cache");
                    self.in_list = false;
                    // Mid-list, the store is not whole yet: that list's end relists. Else
                    // the store holds everything missed: hand it out now.
                    if !self.informer_listing.load(Ordering::Acquire) {
                        self.relist();
                    }
                }
            }
        }
    }
}

/// Clones the object out of a shared event, for code that wants owned watcher events.
pub fn owned<K: Clone>(ev: Event<Arc<K>>) -> Event<K> {
    map_event(ev, |o| (*o).clone())
}

/// The same event with its object turned into `f(object)`.
pub fn map_event<K, T>(ev: Event<K>, f: impl FnOnce(K) -> T) -> Event<T> {
    match ev {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
    }
}

/// The informers [`crate::run_all`] shares between its controllers: the cluster-wide
/// resources several of them watch.
#[derive(Debug, Clone)]
pub struct Informers {
    /// Every Pod: the scheduler, the workload controllers, endpoints and endpoint slices, the
    /// garbage collector.
    pub pods: Arc<Informer<Pod>>,
    /// Every Node: the scheduler, the DaemonSet and node lifecycle controllers, the garbage
    /// collector.
    pub nodes: Arc<Informer<Node>>,
    /// Every Namespace: the namespace, service account and root CA controllers, the garbage
    /// collector.
    pub namespaces: Arc<Informer<Namespace>>,
    /// Every Service: the endpoints and endpoint slice controllers, the garbage collector.
    pub services: Arc<Informer<Service>>,
}

impl Informers {
    /// The informers of `client`, not watching yet (see [`Informers::watches`]).
    pub fn new(client: &Client) -> Self {
        Self {
            pods: Informer::new(Api::all(client.clone())),
            nodes: Informer::new(Api::all(client.clone())),
            namespaces: Informer::new(Api::all(client.clone())),
            services: Informer::new(Api::all(client.clone())),
        }
    }

    /// Each informer's watch loop with its name, to run next to the controllers.
    pub fn watches(&self) -> Vec<(&'static str, crate::TaskFactory)> {
        vec![
            ("informer-pods", factory(&self.pods)),
            ("informer-nodes", factory(&self.nodes)),
            ("informer-namespaces", factory(&self.namespaces)),
            ("informer-services", factory(&self.services)),
        ]
    }
}

fn factory<K: Watched>(informer: &Arc<Informer<K>>) -> crate::TaskFactory {
    let informer = informer.clone();
    Box::new(move || Box::pin(informer.clone().run()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    fn names(evs: &[Event<Arc<Pod>>]) -> Vec<String> {
        evs.iter()
            .map(|e| match e {
                Event::Apply(p) => format!("apply {}", p.metadata.name.as_deref().unwrap_or("")),
                Event::Delete(p) => format!("delete {}", p.metadata.name.as_deref().unwrap_or("")),
                Event::Init => "init".into(),
                Event::InitApply(p) => {
                    format!("list {}", p.metadata.name.as_deref().unwrap_or(""))
                }
                Event::InitDone => "done".into(),
            })
            .collect()
    }

    async fn take(
        s: &mut (impl Stream<Item = Event<Arc<Pod>>> + Unpin),
        n: usize,
    ) -> Vec<Event<Arc<Pod>>> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(s.next().await.unwrap());
        }
        out
    }

    fn informer() -> Arc<Informer<Pod>> {
        // Never run: the tests feed events by hand.
        let url = "http://127.0.0.1:9".parse().unwrap();
        let client = kube::Client::try_from(kube::Config::new(url)).unwrap();
        Informer::new(Api::all(client))
    }

    #[tokio::test]
    async fn subscribers_share_one_store_and_see_every_event() {
        let inf = informer();
        let mut a = Box::pin(inf.events());
        let mut b = Box::pin(inf.events());
        inf.apply(Event::Init);
        inf.apply(Event::InitApply(pod("p1")));
        inf.apply(Event::InitDone);
        inf.apply(Event::Apply(pod("p2")));
        inf.apply(Event::Delete(pod("p1")));
        let want = ["init", "list p1", "done", "apply p2", "delete p1"];
        assert_eq!(names(&take(&mut a, 5).await), want);
        assert_eq!(names(&take(&mut b, 5).await), want);
        assert_eq!(inf.store().len(), 1);
        // The subscriber's object is the store's, not a copy.
        let cached = inf
            .store()
            .get(&ObjectRef::new("p2").within("default"))
            .unwrap();
        inf.apply(Event::Apply(pod("p2")));
        let Event::Apply(seen) = a.next().await.unwrap() else {
            panic!()
        };
        assert!(
            !Arc::ptr_eq(&cached, &seen),
            "a new version is a new object"
        );
        assert!(Arc::ptr_eq(
            &inf.store()
                .get(&ObjectRef::new("p2").within("default"))
                .unwrap(),
            &seen
        ));
    }

    #[tokio::test]
    async fn late_subscribers_start_with_a_list_of_the_store() {
        let inf = informer();
        inf.apply(Event::Init);
        inf.apply(Event::InitApply(pod("p1")));
        inf.apply(Event::InitDone);
        let mut late = Box::pin(inf.events());
        assert_eq!(
            names(&take(&mut late, 3).await),
            ["init", "list p1", "done"]
        );
        // Subscribed mid-list: the list's end brings the whole store.
        let inf = informer();
        inf.apply(Event::Init);
        let mut mid = Box::pin(inf.events());
        inf.apply(Event::InitApply(pod("p1")));
        inf.apply(Event::InitApply(pod("p2")));
        inf.apply(Event::InitDone);
        let mut got = names(&take(&mut mid, 4).await);
        got[1..3].sort();
        assert_eq!(got, ["init", "list p1", "list p2", "done"]);
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_relisted() {
        let inf = informer();
        let mut slow = Box::pin(inf.events());
        inf.apply(Event::Init);
        inf.apply(Event::InitDone);
        for i in 0..BUFFER + 10 {
            inf.apply(Event::Apply(pod(&format!("p{}", i % 3))));
        }
        inf.apply(Event::Init);
        inf.apply(Event::InitApply(pod("p0")));
        inf.apply(Event::InitDone);
        // Whatever was missed, the subscriber ends with a list equal to the store.
        let mut seen = Vec::new();
        while !seen.ends_with(&["init", "list p0", "done"].map(String::from)) {
            let ev = tokio::time::timeout(std::time::Duration::from_secs(5), slow.next())
                .await
                .expect("the subscriber catches up")
                .unwrap();
            seen.extend(names(&[ev]));
        }
        assert!(
            seen.len() < BUFFER + 10,
            "events were skipped, not all replayed"
        );
        assert_eq!(inf.store().len(), 1);
    }

    #[tokio::test]
    async fn falling_behind_between_lists_relists_from_the_store_at_once() {
        let inf = informer();
        inf.apply(Event::Init);
        inf.apply(Event::InitApply(pod("p0")));
        inf.apply(Event::InitDone);
        let mut slow = Box::pin(inf.events());
        assert_eq!(
            names(&take(&mut slow, 3).await),
            ["init", "list p0", "done"]
        );
        for i in 0..BUFFER + 10 {
            inf.apply(Event::Apply(pod(&format!("q{i}"))));
        }
        // No list comes from the watch: the missed events come as a list of the store.
        let relist = take(&mut slow, BUFFER + 13).await;
        let names = names(&relist);
        assert_eq!(names[0], "init");
        assert_eq!(names[BUFFER + 12], "done");
        assert!(names.contains(&format!("list q{}", BUFFER + 9)));
        assert_eq!(inf.store().len(), BUFFER + 11);
    }

    #[tokio::test]
    async fn subscribers_end_when_the_informer_is_gone() {
        let inf = informer();
        let mut sub = Box::pin(inf.events());
        inf.apply(Event::Init);
        inf.apply(Event::InitDone);
        drop(inf);
        assert_eq!(names(&take(&mut sub, 2).await), ["init", "done"]);
        assert!(sub.next().await.is_none());
    }

    #[tokio::test]
    async fn objects_trigger_on_changes_and_on_every_list() {
        let inf = informer();
        let mut objs = Box::pin(inf.objects());
        inf.apply(Event::Init);
        inf.apply(Event::InitApply(pod("p1")));
        inf.apply(Event::InitDone);
        let a = objs.next().await.unwrap();
        inf.apply(Event::Delete(pod("p1")));
        let b = objs.next().await.unwrap();
        assert_eq!(a.metadata.name.as_deref(), Some("p1"));
        assert_eq!(b.metadata.name.as_deref(), Some("p1"));
        assert!(inf.store().is_empty());
    }
}
