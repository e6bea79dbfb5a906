//! Keeps the ConfigMaps and Secrets that a guarded workload's pods use, or that a running change
//! needs, from being deleted out from under them.
//!
//! A rename of a ConfigMap (kustomize's `configMapGenerator` hash suffix, a new name per release)
//! is a template change: the new template names the new object, and graygate holds and rolls it
//! out in batches. The old pods still mount the old object, and a rollback starts pods of the old
//! template again; a GitOps prune deletes the old object as soon as Git no longer has it — in
//! the same sync that changes the template. So an object that some pod of a guarded workload, or
//! of a workload with a running ChangeRequest, may still need carries the finalizer
//! [`FINALIZER`] for as long as it is needed, and loses it the moment nothing needs it any more:
//! a deletion that came in meanwhile completes then.
//!
//! "Needed" is read from the objects themselves, never guessed:
//! - every template of a guarded Deployment or StatefulSet: its `spec.template` (what Git says),
//!   the templates of its ReplicaSets that keep pods (`spec.replicas > 0`: what its pods run, and
//!   what a rollback goes back to), and for a StatefulSet the revisions named current and update;
//! - for a ChangeRequest that has not ended: the template before the change
//!   (`status.stableTemplate`, or the target's) and the template it rolls out.
//!
//! The finalizer is on an object from the time a guarded workload uses it, not only while a
//! change runs, because the prune comes in the same sync as the template change: there is no
//! moment between the two at which graygate could add it.

use crate::api::{ChangeRequest, TargetKind};
use crate::controller::reconcile::Context;
pub use crate::rollout::config::{ConfigKind, ConfigRef, config_refs};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod, Secret};
use kube::api::{ApiResource, DynamicObject, Patch};
use kube::core::PartialObjectMeta as PartialObjectMetadata;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The finalizer graygate keeps on a ConfigMap or Secret that pods it guards still need.
pub const FINALIZER: &str = "graygate.io/in-use";
/// Everything is looked at again this often even when no watch said anything changed.
const RESYNC: Duration = Duration::from_secs(60);
/// A pass whose writes did not all succeed is tried again after this long.
const RETRY: Duration = Duration::from_secs(2);
/// Watch events that arrive together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A workload as the keeper reads it: which ConfigMaps and Secrets its templates name, not the
/// templates themselves (only its own template is kept, for a change that has not started).
pub struct WorkloadView {
    pub namespace: String,
    pub kind: TargetKind,
    pub name: String,
    /// Labelled `graygate.io/guarded-by`.
    pub guarded: bool,
    /// What its `spec.template` names, and every other template its pods run or a rollback
    /// returns to.
    pub refs: BTreeSet<ConfigRef>,
    /// Its `spec.template`: the base of a change that has not recorded its stable template yet.
    pub template: Option<Value>,
}

/// A ChangeRequest that has not ended, as the keeper reads it.
pub struct ChangeView {
    pub namespace: String,
    pub target: (TargetKind, String),
    /// How the Event names it.
    pub who: String,
    pub needs: ChangeNeeds,
}

/// What a change that has not ended needs, besides its target's own templates.
pub enum ChangeNeeds {
    /// Started: what the template before the change and the one it rolls out name.
    Refs(BTreeSet<ConfigRef>),
    /// Not started: read against the target's template when it is needed.
    Pending(Box<crate::api::ChangeRequestSpec>),
}

/// What a template names: its ConfigMaps and Secrets, and the copies its pods read of them
/// (see [`super::pin`]).
pub fn template_refs(template: &Value) -> BTreeSet<ConfigRef> {
    let mut out = config_refs(template);
    out.extend(
        super::pin::pins_of(template)
            .into_iter()
            .map(|((kind, _), copy)| (kind, copy)),
    );
    out
}

/// What the template before a change and the template it rolls out name.
fn change_refs(base: &Value, spec: &crate::api::ChangeRequestSpec) -> BTreeSet<ConfigRef> {
    let mut out = template_refs(base);
    if let Ok(new) = crate::rollout::template::apply_spec(base, spec, &BTreeMap::new()) {
        out.extend(template_refs(&new));
    }
    out
}

impl ChangeView {
    /// Nothing for a change that has ended: it needs nothing.
    pub fn of(cr: &ChangeRequest) -> Option<ChangeView> {
        let status = cr.status.as_ref();
        if status.is_some_and(|s| s.phase.is_terminal()) {
            return None;
        }
        let target = &cr.spec.target;
        let needs = match status.and_then(|s| s.stable_template.as_ref()) {
            Some(base) => ChangeNeeds::Refs(change_refs(base, &cr.spec)),
            None => ChangeNeeds::Pending(Box::new(cr.spec.clone())),
        };
        Some(ChangeView {
            namespace: cr.namespace()?,
            target: (target.kind, target.name.clone()),
            who: format!(
                "{:?}/{} (ChangeRequest {})",
                target.kind,
                target.name,
                cr.name_any()
            ),
            needs,
        })
    }
}

/// Which ConfigMaps and Secrets are needed, each with who needs it (for the Event that says why
/// a deletion waits): `(namespace, ref) -> users`.
pub type Needed = BTreeMap<(String, ConfigRef), BTreeSet<String>>;

/// What the workloads and ChangeRequests need (see the module's documentation).
pub fn needed(workloads: &[WorkloadView], changes: &[ChangeView]) -> Needed {
    let mut out = Needed::new();
    let mut add = |ns: &str, refs: &BTreeSet<ConfigRef>, who: &str| {
        for r in refs {
            out.entry((ns.to_string(), r.clone()))
                .or_default()
                .insert(who.to_string());
        }
    };
    for w in workloads.iter().filter(|w| w.guarded) {
        add(&w.namespace, &w.refs, &format!("{:?}/{}", w.kind, w.name));
    }
    for c in changes {
        let workload = workloads
            .iter()
            .find(|w| w.namespace == c.namespace && (w.kind, &w.name) == (c.target.0, &c.target.1));
        if let Some(w) = workload {
            add(&c.namespace, &w.refs, &c.who);
        }
        match &c.needs {
            ChangeNeeds::Refs(refs) => add(&c.namespace, refs, &c.who),
            ChangeNeeds::Pending(spec) => {
                // Not started: the target's template stands for the stable one.
                if let Some(base) = workload.and_then(|w| w.template.as_ref()) {
                    add(&c.namespace, &change_refs(base, spec), &c.who);
                } else if let Some(whole) = &spec.template {
                    add(&c.namespace, &template_refs(whole), &c.who);
                }
            }
        }
    }
    out
}

/// One ConfigMap or Secret as the keeper sees it.
#[derive(Clone)]
pub struct Held {
    pub namespace: String,
    pub config: ConfigRef,
    pub has_finalizer: bool,
    pub deleting: bool,
    pub uid: String,
    /// A copy graygate pinned pods to (labelled `graygate.io/pinned-copy`), and since when it
    /// exists: deleted once nothing needs it.
    pub pinned_copy: Option<jiff::Timestamp>,
}

/// A write the keeper makes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Add the finalizer.
    Keep(String, ConfigRef),
    /// Remove it: nothing needs the object any more.
    Free(String, ConfigRef),
    /// Delete a pinned copy nothing needs.
    Delete(String, ConfigRef),
}

/// A pinned copy is made a moment before the template that names it is written: younger than
/// this, one that nothing names is left alone.
const COPY_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// The writes that make every object's finalizer match `needed`. A finalizer cannot be added to
/// an object already being deleted (the API server refuses it), so such an object is left alone.
pub fn plan(objects: &[Held], needed: &Needed, now: jiff::Timestamp) -> Vec<Step> {
    let mut out = Vec::new();
    for o in objects {
        let want = needed.contains_key(&(o.namespace.clone(), o.config.clone()));
        if want && !o.has_finalizer && !o.deleting {
            out.push(Step::Keep(o.namespace.clone(), o.config.clone()));
        } else if !want && o.has_finalizer {
            out.push(Step::Free(o.namespace.clone(), o.config.clone()));
        }
        let old = |t: jiff::Timestamp| {
            now.duration_since(t) >= jiff::SignedDuration::try_from(COPY_GRACE).unwrap_or_default()
        };
        if !want && !o.deleting && o.pinned_copy.is_some_and(old) {
            out.push(Step::Delete(o.namespace.clone(), o.config.clone()));
        }
    }
    out
}

/// What the keeper keeps of each object of one kind, by namespace and name: a summary of a few
/// fields, never the object (a fleet's workloads, ReplicaSets and ChangeRequests, statuses and
/// all, would double graygate's memory). `ready` once the first list has arrived.
struct Shelf<T> {
    ready: bool,
    items: HashMap<(String, String), T>,
    /// A list in progress (after `Init`): it replaces `items` when it is done.
    relist: Option<HashMap<(String, String), T>>,
}

type Shared<T> = Arc<Mutex<Shelf<T>>>;

/// Watch `stream` into a shelf of summaries (`summary` gives none for an object the keeper has no
/// use for), and say on `tx` whenever something changed.
fn shelve<K, T>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    summary: impl Fn(&K) -> Option<T> + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    handles: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Shared<T>
where
    K: Resource + Send + 'static,
    T: Send + 'static,
{
    let shelf: Shared<T> = Arc::new(Mutex::new(Shelf {
        ready: false,
        items: HashMap::new(),
        relist: None,
    }));
    let out = shelf.clone();
    let key = |o: &K| {
        (
            o.meta().namespace.clone().unwrap_or_default(),
            o.meta().name.clone().unwrap_or_default(),
        )
    };
    let stream = stream.default_backoff();
    handles.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let changed = {
                let mut s = shelf.lock().unwrap_or_else(|e| e.into_inner());
                match ev {
                    Ok(watcher::Event::Init) => {
                        s.relist = Some(HashMap::new());
                        false
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        if let Some(t) = summary(&o) {
                            s.relist.get_or_insert_default().insert(key(&o), t);
                        }
                        false
                    }
                    Ok(watcher::Event::InitDone) => {
                        s.items = s.relist.take().unwrap_or_default();
                        s.ready = true;
                        true
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        match summary(&o) {
                            Some(t) => s.items.insert(key(&o), t),
                            None => s.items.remove(&key(&o)),
                        };
                        true
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        s.items.remove(&key(&o));
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "config keeper watch");
                        false
                    }
                }
            };
            if changed && tx.send(()).is_err() {
                return;
            }
        }
    }));
    out
}

fn read<T>(s: &Shared<T>) -> std::sync::MutexGuard<'_, Shelf<T>> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A Deployment or StatefulSet as the keeper keeps it.
struct WorkloadSummary {
    uid: String,
    guarded: bool,
    refs: BTreeSet<ConfigRef>,
    template: Option<Value>,
    /// A StatefulSet's current and update revisions.
    revisions: Vec<String>,
}

fn workload_summary<K: Resource>(
    o: &K,
    template: Option<Value>,
    revisions: Vec<String>,
) -> WorkloadSummary {
    WorkloadSummary {
        uid: o.meta().uid.clone().unwrap_or_default(),
        guarded: o
            .meta()
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(crate::api::LABEL_GUARDED_BY)),
        refs: template.as_ref().map(template_refs).unwrap_or_default(),
        template,
        revisions,
    }
}

/// The ConfigMaps and Secrets of one scope, as the keeper sees them.
type Objects = Shared<Held>;

/// The shelves the keeper reads, for one scope.
struct Stores {
    deployments: Shared<WorkloadSummary>,
    /// Of each ReplicaSet that keeps pods: its owner's uid and what its template names.
    replicasets: Shared<(String, BTreeSet<ConfigRef>)>,
    sets: Shared<WorkloadSummary>,
    /// What each ControllerRevision's template names.
    revisions: Shared<BTreeSet<ConfigRef>>,
    changes: Shared<ChangeView>,
    configmaps: Objects,
    secrets: Objects,
    /// Pods of a pinned template that the pod webhook did not point at their copies, by uid.
    unpinned: Shared<String>,
}

impl Stores {
    fn ready(&self) -> bool {
        read(&self.deployments).ready
            && read(&self.replicasets).ready
            && read(&self.sets).ready
            && read(&self.revisions).ready
            && read(&self.changes).ready
            && read(&self.configmaps).ready
            && read(&self.secrets).ready
            && read(&self.unpinned).ready
    }

    fn workloads(&self) -> Vec<WorkloadView> {
        let mut out = Vec::new();
        let mut by_owner: HashMap<String, BTreeSet<ConfigRef>> = HashMap::new();
        for (owner, refs) in read(&self.replicasets).items.values() {
            by_owner
                .entry(owner.clone())
                .or_default()
                .extend(refs.iter().cloned());
        }
        for ((ns, name), d) in &read(&self.deployments).items {
            let mut refs = d.refs.clone();
            refs.extend(by_owner.get(&d.uid).into_iter().flatten().cloned());
            out.push(WorkloadView {
                namespace: ns.clone(),
                kind: TargetKind::Deployment,
                name: name.clone(),
                guarded: d.guarded,
                refs,
                template: d.template.clone(),
            });
        }
        let revisions = read(&self.revisions);
        for ((ns, name), s) in &read(&self.sets).items {
            let mut refs = s.refs.clone();
            for rev in &s.revisions {
                refs.extend(
                    revisions
                        .items
                        .get(&(ns.clone(), rev.clone()))
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
            }
            out.push(WorkloadView {
                namespace: ns.clone(),
                kind: TargetKind::StatefulSet,
                name: name.clone(),
                guarded: s.guarded,
                refs,
                template: s.template.clone(),
            });
        }
        out
    }

    fn changes(&self) -> Vec<ChangeView> {
        read(&self.changes)
            .items
            .values()
            .map(|c| ChangeView {
                namespace: c.namespace.clone(),
                target: c.target.clone(),
                who: c.who.clone(),
                needs: match &c.needs {
                    ChangeNeeds::Refs(r) => ChangeNeeds::Refs(r.clone()),
                    ChangeNeeds::Pending(s) => ChangeNeeds::Pending(s.clone()),
                },
            })
            .collect()
    }

    fn objects(&self) -> Vec<Held> {
        let mut out: Vec<Held> = read(&self.configmaps).items.values().cloned().collect();
        out.extend(read(&self.secrets).items.values().cloned());
        out
    }
}

fn held<K: Resource>(o: &PartialObjectMetadata<K>, kind: ConfigKind) -> Held {
    Held {
        namespace: o.namespace().unwrap_or_default(),
        config: (kind, o.name_any()),
        has_finalizer: o.finalizers().iter().any(|f| f == FINALIZER),
        deleting: o.meta().deletion_timestamp.is_some(),
        uid: o.uid().unwrap_or_default(),
        pinned_copy: o
            .labels()
            .contains_key(super::pin::LABEL_PINNED_COPY)
            .then(|| o.meta().creation_timestamp.as_ref().map(|t| t.0))
            .flatten(),
    }
}

/// Run until `shutdown`: keep the finalizer on exactly the ConfigMaps and Secrets that are
/// needed, after every change a watch reports (events that come together are handled in one
/// pass) and every [`RESYNC`]. Nothing is written before every shelf has listed once: an object
/// missing from a shelf that has not listed would look unneeded.
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut handles = Vec::new();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let mut all: Vec<Stores> = Vec::new();
    for scope in &scopes {
        fn api<K>(client: &kube::Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let c = &ctx.client;
        let cfg = || watcher::Config::default().any_semantic();
        // ChangeRequests are read untyped, then each on its own: one that cannot be read is
        // Invalid and needs nothing, and must not stop the others being read.
        let ar = ApiResource::erase::<ChangeRequest>(&());
        let changes: Api<DynamicObject> = match scope {
            Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
            None => Api::all_with(c.clone(), &ar),
        };
        let template_of = |t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            t.and_then(|t| serde_json::to_value(t).ok())
        };
        all.push(Stores {
            deployments: shelve(
                watcher(api::<Deployment>(c, scope), cfg()),
                move |d: &Deployment| {
                    Some(workload_summary(
                        d,
                        template_of(d.spec.as_ref().map(|s| &s.template)),
                        Vec::new(),
                    ))
                },
                tx.clone(),
                &mut handles,
            ),
            replicasets: shelve(
                watcher(api::<ReplicaSet>(c, scope), cfg()),
                move |rs: &ReplicaSet| {
                    let spec = rs.spec.as_ref()?;
                    if spec.replicas.unwrap_or(1) == 0 {
                        return None;
                    }
                    let owner = rs
                        .owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true))?;
                    Some((
                        owner.uid.clone(),
                        template_of(spec.template.as_ref())
                            .as_ref()
                            .map(template_refs)
                            .unwrap_or_default(),
                    ))
                },
                tx.clone(),
                &mut handles,
            ),
            sets: shelve(
                watcher(api::<StatefulSet>(c, scope), cfg()),
                move |s: &StatefulSet| {
                    let st = s.status.clone().unwrap_or_default();
                    let revisions = [st.current_revision, st.update_revision]
                        .into_iter()
                        .flatten()
                        .collect();
                    Some(workload_summary(
                        s,
                        template_of(s.spec.as_ref().map(|s| &s.template)),
                        revisions,
                    ))
                },
                tx.clone(),
                &mut handles,
            ),
            revisions: shelve(
                watcher(api::<ControllerRevision>(c, scope), cfg()),
                |r: &ControllerRevision| {
                    r.data
                        .as_ref()?
                        .0
                        .pointer("/spec/template")
                        .map(template_refs)
                },
                tx.clone(),
                &mut handles,
            ),
            changes: shelve(
                watcher(changes, cfg()),
                |o: &DynamicObject| {
                    let ended = o
                        .data
                        .pointer("/status/phase")
                        .and_then(|p| serde_json::from_value::<crate::api::Phase>(p.clone()).ok())
                        .is_some_and(|p| p.is_terminal());
                    if ended {
                        return None;
                    }
                    let cr: ChangeRequest =
                        serde_json::from_value(serde_json::to_value(o).ok()?).ok()?;
                    ChangeView::of(&cr)
                },
                tx.clone(),
                &mut handles,
            ),
            configmaps: shelve(
                watcher(api::<PartialObjectMetadata<ConfigMap>>(c, scope), cfg()),
                |o: &PartialObjectMetadata<ConfigMap>| Some(held(o, ConfigKind::ConfigMap)),
                tx.clone(),
                &mut handles,
            ),
            secrets: shelve(
                watcher(api::<PartialObjectMetadata<Secret>>(c, scope), cfg()),
                |o: &PartialObjectMetadata<Secret>| Some(held(o, ConfigKind::Secret)),
                tx.clone(),
                &mut handles,
            ),
            unpinned: shelve(
                watcher(
                    api::<PartialObjectMetadata<Pod>>(c, scope),
                    cfg().labels(super::pin::LABEL_PINNED),
                ),
                |p: &PartialObjectMetadata<Pod>| {
                    let pinned = p.annotations().contains_key(super::pin::ANN_POD_PINNED);
                    (!pinned && p.meta().deletion_timestamp.is_none())
                        .then(|| p.uid().unwrap_or_default())
                },
                tx.clone(),
                &mut handles,
            ),
        });
    }
    let _stop = super::policy::AbortOnDrop(handles);
    while !all.iter().all(Stores::ready) {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Objects (by uid) whose waiting deletion has been told in an Event.
    let mut told: BTreeSet<String> = BTreeSet::new();
    // Pods (by uid) started unpinned that have been told.
    let mut told_pods: BTreeSet<String> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = resync.tick() => {}
            Some(()) = rx.recv() => {
                tokio::time::sleep(DEBOUNCE).await;
                while rx.try_recv().is_ok() {}
            }
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => {
                retry_at = None;
            }
        }
        let ok = pass(&ctx, &all, &mut told, &mut told_pods).await;
        if !ok && retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + RETRY);
        }
    }
}

/// One pass over every scope; whether every write succeeded.
async fn pass(
    ctx: &Context,
    all: &[Stores],
    told: &mut BTreeSet<String>,
    told_pods: &mut BTreeSet<String>,
) -> bool {
    let mut ok = true;
    for s in all {
        let workloads = s.workloads();
        let changes = s.changes();
        let need = needed(&workloads, &changes);
        let objects = s.objects();
        for step in plan(&objects, &need, jiff::Timestamp::now()) {
            if let Err(e) = write(ctx, &step).await {
                tracing::warn!(error = %e, ?step, "config keeper write");
                ok = false;
            }
        }
        // A deletion that waits for the finalizer is said once, naming who needs the object.
        for o in objects.iter().filter(|o| o.deleting && o.has_finalizer) {
            if let Some(users) = need.get(&(o.namespace.clone(), o.config.clone()))
                && told.insert(o.uid.clone())
            {
                let users: Vec<&str> = users.iter().map(String::as_str).collect();
                kept_event(ctx, o, &users);
            }
        }
        told.retain(|uid| objects.iter().any(|o| &o.uid == uid && o.deleting));
        // A pod started while no graygate replica answered the pod webhook reads the objects
        // themselves: said once per pod.
        let unpinned: Vec<((String, String), String)> = read(&s.unpinned)
            .items
            .iter()
            .map(|(k, uid)| (k.clone(), uid.clone()))
            .collect();
        for ((ns, name), uid) in &unpinned {
            if told_pods.insert(uid.clone()) {
                unpinned_pod(ctx, ns, name, uid);
            }
        }
        told_pods.retain(|uid| unpinned.iter().any(|(_, u)| u == uid));
    }
    ok
}

fn unpinned_pod(ctx: &Context, ns: &str, name: &str, uid: &str) {
    if !ctx.fence.allows() {
        return;
    }
    let msg = format!(
        "pod {name} started without graygate's pod webhook (graygate unreachable; its failure policy is Ignore): it reads its ConfigMaps and Secrets themselves, not the copies its template pins, so an edit made since reaches it outside any batch; it goes with its workload's next change"
    );
    tracing::warn!(namespace = %ns, pod = %name, "{msg}");
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.into()),
        name: Some(name.into()),
        uid: Some(uid.into()),
        ..Default::default()
    };
    ctx.record_event(
        kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "UnguardedChange".into(),
            note: Some(crate::util::trim_to(&msg, 1000)),
            action: "Pin".into(),
            secondary: None,
        },
        reference,
    );
    ctx.notifier.notify(crate::notify::Message {
        event: crate::notify::Event::UnguardedChange,
        namespace: ns.into(),
        name: name.into(),
        target: format!("Pod/{name}"),
        phase: "Unguarded".into(),
        batch: 0,
        summary: msg,
        time: jiff::Timestamp::now().to_string(),
        url: None,
        run: uid.into(),
    });
    ctx.metrics
        .unguarded
        .get_or_create(&crate::controller::metrics::WorkloadLabel {
            namespace: ns.into(),
            kind: "Pod".into(),
        })
        .inc();
}

async fn write(ctx: &Context, step: &Step) -> anyhow::Result<()> {
    if let Step::Delete(ns, (kind, name)) = step {
        ctx.fence.check()?;
        let dp = kube::api::DeleteParams::default();
        let res = match kind {
            ConfigKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
            ConfigKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), ns)
                .delete(name, &dp)
                .await
                .map(|_| ()),
        };
        return match res {
            Ok(()) => {
                tracing::info!(namespace = %ns, kind = kind.as_str(), name = %name, "config keeper: pinned copy no longer needed, deleted");
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    let (ns, (kind, name), patch) = match step {
        Step::Keep(ns, r) => (ns, r, json!({"metadata": {"finalizers": [FINALIZER]}})),
        Step::Free(ns, r) | Step::Delete(ns, r) => (
            ns,
            r,
            json!({"metadata": {"$deleteFromPrimitiveList/finalizers": [FINALIZER]}}),
        ),
    };
    ctx.fence.check()?;
    let pp = crate::api::patch_params(crate::api::MANAGER_GUARD);
    let res = match kind {
        ConfigKind::ConfigMap => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .patch_metadata(name, &pp, &Patch::Strategic(patch))
            .await
            .map(|_| ()),
        ConfigKind::Secret => Api::<Secret>::namespaced(ctx.client.clone(), ns)
            .patch_metadata(name, &pp, &Patch::Strategic(patch))
            .await
            .map(|_| ()),
    };
    match res {
        Ok(()) => {
            tracing::info!(namespace = %ns, kind = kind.as_str(), name = %name, keep = matches!(step, Step::Keep(..)), "config keeper");
            Ok(())
        }
        // Gone meanwhile: nothing to keep or free.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn kept_event(ctx: &Context, o: &Held, users: &[&str]) {
    if !ctx.fence.allows() {
        return;
    }
    let (kind, name) = &o.config;
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some(kind.as_str().into()),
        namespace: Some(o.namespace.clone()),
        name: Some(name.clone()),
        uid: Some(o.uid.clone()),
        ..Default::default()
    };
    let note = format!(
        "deletion waits: still needed by {}; graygate removes its finalizer {FINALIZER} once nothing needs it (the change is released or rolled back and no pod runs a template that uses it)",
        users.join(", ")
    );
    ctx.record_event(
        kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Normal,
            reason: "DeletionWaits".into(),
            note: Some(crate::util::trim_to(&note, 1000)),
            action: "Keep".into(),
            secondary: None,
        },
        reference,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "volumes": [
                    {"name": "a", "configMap": {"name": "web-config-abc"}},
                    {"name": "b", "secret": {"secretName": "web-tls"}},
                    {"name": "c", "projected": {"sources": [
                        {"configMap": {"name": "shared"}},
                        {"secret": {"name": "token"}},
                        {"serviceAccountToken": {"path": "t"}}
                    ]}},
                    {"name": "d", "emptyDir": {}}
                ],
                "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "init-env"}}]}],
                "containers": [{
                    "name": "app",
                    "image": "web:1",
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "flags", "key": "b"}}},
                        {"name": "C", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                        {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
                    ],
                    "envFrom": [{"configMapRef": {"name": "env-config"}, "prefix": "X_"}]
                }]
            }
        })
    }

    #[test]
    fn every_way_a_template_names_a_configmap_or_secret_is_found() {
        let got: Vec<String> = config_refs(&template())
            .into_iter()
            .map(|(k, n)| format!("{}/{n}", k.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                "ConfigMap/env-config",
                "ConfigMap/flags",
                "ConfigMap/shared",
                "ConfigMap/web-config-abc",
                "Secret/db",
                "Secret/init-env",
                "Secret/token",
                "Secret/web-tls",
            ]
        );
        assert!(config_refs(&json!({"spec": {"containers": [{"name": "x"}]}})).is_empty());
    }

    fn renamed(name: &str) -> Value {
        let mut t = template();
        t["spec"]["volumes"][0]["configMap"]["name"] = json!(name);
        t
    }

    fn view(guarded: bool, templates: Vec<Value>) -> WorkloadView {
        WorkloadView {
            namespace: "shop".into(),
            kind: TargetKind::Deployment,
            name: "web".into(),
            guarded,
            refs: templates.iter().flat_map(template_refs).collect(),
            template: templates.first().cloned(),
        }
    }

    /// The change as the keeper keeps it, if it keeps it at all.
    fn change(phase: &str, stable: Option<Value>, new: Value) -> Vec<ChangeView> {
        let mut status = json!({"phase": phase});
        if let Some(s) = stable {
            status["stableTemplate"] = s;
        }
        serde_json::from_value(json!({
            "apiVersion": "graygate.io/v1alpha1",
            "kind": "ChangeRequest",
            "metadata": {"name": "web-1", "namespace": "shop"},
            "spec": {
                "target": {"kind": "Deployment", "name": "web"},
                "template": new,
                "batches": [{"percent": 100}]
            },
            "status": status,
        }))
        .map(|cr: ChangeRequest| ChangeView::of(&cr).into_iter().collect())
        .unwrap()
    }

    fn key(name: &str) -> (String, ConfigRef) {
        ("shop".into(), (ConfigKind::ConfigMap, name.into()))
    }

    #[test]
    fn a_guarded_workload_needs_what_git_says_and_what_its_pods_run() {
        // Held on the renamed template while the old ReplicaSet keeps the pods.
        let w = view(true, vec![renamed("web-config-def"), template()]);
        let n = needed(&[w], &[]);
        assert!(n.contains_key(&key("web-config-abc")));
        assert!(n.contains_key(&key("web-config-def")));
        assert_eq!(
            n[&key("web-config-abc")].iter().collect::<Vec<_>>(),
            ["Deployment/web"]
        );
        // Released: the old ReplicaSet is at 0 and is no longer read.
        let n = needed(&[view(true, vec![renamed("web-config-def")])], &[]);
        assert!(!n.contains_key(&key("web-config-abc")));
        // A workload nobody guards and no change targets needs nothing of graygate.
        assert!(needed(&[view(false, vec![template()])], &[]).is_empty());
    }

    #[test]
    fn a_running_change_needs_both_templates_and_an_ended_one_nothing() {
        let w = view(false, vec![template()]);
        let running = change("Progressing", Some(template()), renamed("web-config-def"));
        let n = needed(std::slice::from_ref(&w), &running);
        assert!(n.contains_key(&key("web-config-abc")));
        assert!(n.contains_key(&key("web-config-def")));
        assert!(
            n[&key("web-config-def")]
                .iter()
                .any(|u| u.contains("ChangeRequest web-1"))
        );
        // Not started yet: the target's template stands for the stable one.
        let pending = change("Pending", None, renamed("web-config-def"));
        let n = needed(std::slice::from_ref(&w), &pending);
        assert!(n.contains_key(&key("web-config-abc")) && n.contains_key(&key("web-config-def")));
        for ended in ["Succeeded", "RolledBack", "Superseded", "Failed", "Invalid"] {
            let c = change(ended, Some(template()), renamed("web-config-def"));
            assert!(c.is_empty(), "{ended}");
            assert!(needed(std::slice::from_ref(&w), &c).is_empty(), "{ended}");
        }
    }

    #[test]
    fn the_plan_adds_and_removes_only_what_differs_and_never_adds_to_a_deletion() {
        let obj = |name: &str, has: bool, deleting: bool| Held {
            namespace: "shop".into(),
            config: (ConfigKind::ConfigMap, name.into()),
            has_finalizer: has,
            deleting,
            uid: name.into(),
            pinned_copy: None,
        };
        let need = needed(&[view(true, vec![template()])], &[]);
        let steps = plan(
            &[
                obj("web-config-abc", false, false),
                obj("flags", true, false),
                obj("old", true, true),
                obj("other", false, false),
                obj("shared", false, true),
            ],
            &need,
            jiff::Timestamp::now(),
        );
        assert_eq!(
            steps,
            [
                Step::Keep(
                    "shop".into(),
                    (ConfigKind::ConfigMap, "web-config-abc".into())
                ),
                Step::Free("shop".into(), (ConfigKind::ConfigMap, "old".into())),
            ]
        );
    }

    #[test]
    fn a_pinned_copy_is_needed_while_a_template_names_it_and_deleted_after() {
        let pins: BTreeMap<ConfigRef, String> = [(
            (ConfigKind::ConfigMap, "web-config-abc".to_string()),
            "web-config-abc-gg-1".to_string(),
        )]
        .into_iter()
        .collect();
        let pinned = super::super::pin::with_pins(&template(), &pins);
        let need = needed(&[view(true, vec![pinned])], &[]);
        assert!(need.contains_key(&key("web-config-abc-gg-1")));
        let now = jiff::Timestamp::now();
        let copy = |name: &str, age: i64| Held {
            namespace: "shop".into(),
            config: (ConfigKind::ConfigMap, name.into()),
            has_finalizer: false,
            deleting: false,
            uid: name.into(),
            pinned_copy: Some(now - jiff::SignedDuration::from_secs(age)),
        };
        let steps = plan(
            &[
                copy("web-config-abc-gg-1", 3600),
                copy("web-config-abc-gg-0", 3600),
                copy("web-config-abc-gg-2", 5),
            ],
            &need,
            now,
        );
        assert_eq!(
            steps,
            [
                Step::Keep(
                    "shop".into(),
                    (ConfigKind::ConfigMap, "web-config-abc-gg-1".into())
                ),
                // Old and named by nothing: deleted. Just made: its template is on its way.
                Step::Delete(
                    "shop".into(),
                    (ConfigKind::ConfigMap, "web-config-abc-gg-0".into())
                ),
            ]
        );
    }
}
