//! What the webhook knows of the cluster: SidecarTemplates and namespace labels, kept in
//! memory by kube-runtime reflectors, so the request path reads memory only.
//!
//! A namespace created a moment before its first pod may not have reached the namespace
//! reflector yet; only then is it fetched with one GET (cached briefly).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use remora_api::crd::SidecarTemplate;

type Labels = BTreeMap<String, String>;
/// Namespaces fetched on a reflector miss: when, and their labels (`None`: not found).
type Misses = HashMap<String, (Instant, Option<Labels>)>;

/// How long a namespace fetched on a reflector miss is remembered.
const MISS_TTL: Duration = Duration::from_secs(5);
/// The longest a reflector miss may hold a request.
const MISS_TIMEOUT: Duration = Duration::from_secs(2);

/// SidecarTemplates by namespace: rebuilt when a template changes, read without locks,
/// so a request looks at its own namespaces only, however many templates the cluster has.
type TemplateIndex = HashMap<String, Vec<Arc<SidecarTemplate>>>;

#[derive(Clone)]
pub struct Catalog {
    templates: Store<SidecarTemplate>,
    index: Arc<ArcSwap<TemplateIndex>>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    client: Option<Client>,
    misses: Arc<Mutex<Misses>>,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("templates", &self.templates.state().len())
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Starts watching SidecarTemplates and namespaces cluster-wide on the current tokio
    /// runtime. Ready once both have listed.
    pub fn watch(client: Client) -> Catalog {
        let (templates, template_writer) = reflector::store();
        let (namespaces, namespace_writer) = reflector::store();
        let ready = Arc::new(AtomicBool::new(false));

        let index = Arc::new(ArcSwap::from_pointee(TemplateIndex::new()));
        let api: Api<SidecarTemplate> = Api::all(client.clone());
        let events = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(template_writer);
        let (store, idx) = (templates.clone(), index.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    // The store has applied the event when it reaches us.
                    Ok(
                        watcher::Event::Apply(_)
                        | watcher::Event::Delete(_)
                        | watcher::Event::InitDone,
                    ) => {
                        idx.store(Arc::new(index_by_namespace(&store)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(kind = "SidecarTemplate", error = %e, "watch failed; retrying with backoff")
                    }
                }
            }
        });

        let api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default().any_semantic())
            .default_backoff()
            .reflect(namespace_writer)
            .applied_objects();
        tokio::spawn(drain("Namespace", stream));

        let (t, n, r) = (templates.clone(), namespaces.clone(), ready.clone());
        tokio::spawn(async move {
            if t.wait_until_ready().await.is_ok() && n.wait_until_ready().await.is_ok() {
                r.store(true, Ordering::Release);
                tracing::info!(templates = t.state().len(), "catalog synced");
            }
        });
        Catalog {
            templates,
            index,
            namespaces,
            client: Some(client),
            misses: Default::default(),
            ready,
        }
    }

    /// A catalog of fixed content, for tests, benchmarks and `remoractl inject`.
    pub fn fixed(templates: Vec<SidecarTemplate>, namespaces: Vec<(String, Labels)>) -> Catalog {
        let (template_store, mut tw) = reflector::store();
        let (namespace_store, mut nw) = reflector::store();
        tw.apply_watcher_event(&watcher::Event::Init);
        for t in templates {
            tw.apply_watcher_event(&watcher::Event::InitApply(t));
        }
        tw.apply_watcher_event(&watcher::Event::InitDone);
        nw.apply_watcher_event(&watcher::Event::Init);
        for (name, labels) in namespaces {
            let mut ns = PartialObjectMeta::<Namespace>::default();
            ns.metadata.name = Some(name);
            ns.metadata.labels = Some(labels);
            nw.apply_watcher_event(&watcher::Event::InitApply(ns));
        }
        nw.apply_watcher_event(&watcher::Event::InitDone);
        let index = index_by_namespace(&template_store);
        Catalog {
            index: Arc::new(ArcSwap::from_pointee(index)),
            templates: template_store,
            namespaces: namespace_store,
            client: None,
            misses: Default::default(),
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// True once the initial lists are in memory.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Every SidecarTemplate, all namespaces.
    pub fn templates(&self) -> Vec<Arc<SidecarTemplate>> {
        self.templates.state()
    }

    /// The SidecarTemplates of these namespaces (the pod's, the mesh's, an annotated one).
    pub fn templates_in(&self, namespaces: &[&str]) -> Vec<Arc<SidecarTemplate>> {
        let index = self.index.load();
        let mut out = Vec::new();
        for (i, ns) in namespaces.iter().enumerate() {
            if !namespaces[..i].contains(ns) {
                out.extend(index.get(*ns).into_iter().flatten().cloned());
            }
        }
        out
    }

    /// The labels of namespace `name`; `None` when it does not exist (or cannot be read).
    pub async fn namespace_labels(&self, name: &str) -> Option<Labels> {
        if let Some(ns) = self.namespaces.get(&ObjectRef::new(name)) {
            return Some(ns.metadata.labels.clone().unwrap_or_default());
        }
        let client = self.client.as_ref()?;
        if let Some((at, labels)) = self.misses.lock().expect("not poisoned").get(name)
            && at.elapsed() < MISS_TTL
        {
            return labels.clone();
        }
        let api: Api<Namespace> = Api::all(client.clone());
        let labels = match tokio::time::timeout(MISS_TIMEOUT, api.get_metadata_opt(name)).await {
            Ok(Ok(found)) => found.map(|ns| ns.metadata.labels.unwrap_or_default()),
            Ok(Err(e)) => {
                tracing::warn!(namespace = name, error = %e, "reading namespace labels");
                None
            }
            Err(_) => {
                tracing::warn!(namespace = name, "reading namespace labels timed out");
                None
            }
        };
        let mut misses = self.misses.lock().expect("not poisoned");
        misses.retain(|_, (at, _)| at.elapsed() < MISS_TTL);
        misses.insert(name.to_owned(), (Instant::now(), labels.clone()));
        labels
    }
}

fn index_by_namespace(store: &Store<SidecarTemplate>) -> TemplateIndex {
    let mut index = TemplateIndex::new();
    for t in store.state() {
        let ns = t.metadata.namespace.clone().unwrap_or_default();
        index.entry(ns).or_default().push(t);
    }
    index
}

async fn drain<S, K, E>(kind: &'static str, stream: S)
where
    S: futures::Stream<Item = Result<K, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
        }
    }
}
