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
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use kube::api::{ApiResource, DynamicObject, Patch};
use kube::core::PartialObjectMeta as PartialObjectMetadata;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// The finalizer graygate keeps on a ConfigMap or Secret that pods it guards still need.
pub const FINALIZER: &str = "graygate.io/in-use";
/// Everything is looked at again this often even when no watch said anything changed.
const RESYNC: Duration = Duration::from_secs(60);
/// A pass whose writes did not all succeed is tried again after this long.
const RETRY: Duration = Duration::from_secs(2);
/// Watch events that arrive together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// A workload as the keeper reads it.
pub struct WorkloadView {
    pub namespace: String,
    pub kind: TargetKind,
    pub name: String,
    /// Labelled `graygate.io/guarded-by`.
    pub guarded: bool,
    /// Its `spec.template`, and every other template its pods run or a rollback returns to.
    pub templates: Vec<Value>,
}

/// Which ConfigMaps and Secrets are needed, each with who needs it (for the Event that says why
/// a deletion waits): `(namespace, ref) -> users`.
pub type Needed = BTreeMap<(String, ConfigRef), BTreeSet<String>>;

/// What the workloads and ChangeRequests need (see the module's documentation).
pub fn needed(workloads: &[WorkloadView], changes: &[ChangeRequest]) -> Needed {
    let mut out = Needed::new();
    let mut add = |ns: &str, template: &Value, who: &str| {
        for r in config_refs(template) {
            out.entry((ns.to_string(), r))
                .or_default()
                .insert(who.to_string());
        }
    };
    let find = |ns: &str, kind: TargetKind, name: &str| {
        workloads
            .iter()
            .find(|w| w.namespace == ns && w.kind == kind && w.name == name)
    };
    for w in workloads.iter().filter(|w| w.guarded) {
        let who = format!("{:?}/{}", w.kind, w.name);
        for t in &w.templates {
            add(&w.namespace, t, &who);
        }
    }
    for cr in changes {
        let status = cr.status.clone().unwrap_or_default();
        if status.phase.is_terminal() {
            continue;
        }
        let Some(ns) = cr.namespace() else { continue };
        let target = &cr.spec.target;
        let who = format!(
            "{:?}/{} (ChangeRequest {})",
            target.kind,
            target.name,
            cr.name_any()
        );
        let workload = find(&ns, target.kind, &target.name);
        if let Some(w) = workload {
            for t in &w.templates {
                add(&ns, t, &who);
            }
        }
        let base = status
            .stable_template
            .clone()
            .or_else(|| workload.and_then(|w| w.templates.first().cloned()));
        if let Some(base) = base {
            add(&ns, &base, &who);
            if let Ok(new) = crate::rollout::template::apply_spec(&base, &cr.spec, &BTreeMap::new())
            {
                add(&ns, &new, &who);
            }
        } else if let Some(whole) = &cr.spec.template {
            add(&ns, whole, &who);
        }
    }
    out
}

/// One ConfigMap or Secret as the keeper sees it.
pub struct Held {
    pub namespace: String,
    pub config: ConfigRef,
    pub has_finalizer: bool,
    pub deleting: bool,
    pub uid: String,
}

/// A write the keeper makes.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Add the finalizer.
    Keep(String, ConfigRef),
    /// Remove it: nothing needs the object any more.
    Free(String, ConfigRef),
}

/// The writes that make every object's finalizer match `needed`. A finalizer cannot be added to
/// an object already being deleted (the API server refuses it), so such an object is left alone.
pub fn plan(objects: &[Held], needed: &Needed) -> Vec<Step> {
    let mut out = Vec::new();
    for o in objects {
        let want = needed.contains_key(&(o.namespace.clone(), o.config.clone()));
        if want && !o.has_finalizer && !o.deleting {
            out.push(Step::Keep(o.namespace.clone(), o.config.clone()));
        } else if !want && o.has_finalizer {
            out.push(Step::Free(o.namespace.clone(), o.config.clone()));
        }
    }
    out
}

/// The stores the keeper reads.
struct Stores {
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    sets: Store<StatefulSet>,
    revisions: Store<ControllerRevision>,
    changes: Store<DynamicObject>,
    configmaps: Store<PartialObjectMetadata<ConfigMap>>,
    secrets: Store<PartialObjectMetadata<Secret>>,
}

impl Stores {
    async fn ready(&self) {
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.replicasets.wait_until_ready().await;
        let _ = self.sets.wait_until_ready().await;
        let _ = self.revisions.wait_until_ready().await;
        let _ = self.changes.wait_until_ready().await;
        let _ = self.configmaps.wait_until_ready().await;
        let _ = self.secrets.wait_until_ready().await;
    }

    fn workloads(&self) -> Vec<WorkloadView> {
        let guarded =
            |labels: &BTreeMap<String, String>| labels.contains_key(crate::api::LABEL_GUARDED_BY);
        let mut out = Vec::new();
        let replicasets = self.replicasets.state();
        for d in self.deployments.state() {
            let Some(uid) = d.uid() else { continue };
            let mut templates: Vec<Value> = Vec::new();
            if let Some(t) = d.spec.as_ref().map(|s| &s.template) {
                templates.extend(serde_json::to_value(t).ok());
            }
            for rs in replicasets.iter().filter(|rs| {
                rs.owner_references().iter().any(|o| o.uid == uid)
                    && rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0
            }) {
                if let Some(t) = rs.spec.as_ref().and_then(|s| s.template.as_ref()) {
                    templates.extend(serde_json::to_value(t).ok());
                }
            }
            out.push(WorkloadView {
                namespace: d.namespace().unwrap_or_default(),
                kind: TargetKind::Deployment,
                name: d.name_any(),
                guarded: guarded(d.labels()),
                templates,
            });
        }
        for s in self.sets.state() {
            let ns = s.namespace().unwrap_or_default();
            let mut templates: Vec<Value> = Vec::new();
            if let Some(t) = s.spec.as_ref().map(|s| &s.template) {
                templates.extend(serde_json::to_value(t).ok());
            }
            let st = s.status.clone().unwrap_or_default();
            for rev in [st.current_revision, st.update_revision]
                .into_iter()
                .flatten()
            {
                let r = self
                    .revisions
                    .get(&reflector::ObjectRef::new(&rev).within(&ns));
                if let Some(t) = r
                    .and_then(|r| r.data.clone())
                    .and_then(|d| d.0.pointer("/spec/template").cloned())
                {
                    templates.push(t);
                }
            }
            out.push(WorkloadView {
                namespace: ns,
                kind: TargetKind::StatefulSet,
                name: s.name_any(),
                guarded: guarded(s.labels()),
                templates,
            });
        }
        out
    }

    fn changes(&self) -> Vec<ChangeRequest> {
        self.changes
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
            // A ChangeRequest that cannot be read is Invalid: it needs nothing.
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    fn objects(&self) -> Vec<Held> {
        fn held<K: Resource>(o: &PartialObjectMetadata<K>, kind: ConfigKind) -> Held {
            Held {
                namespace: o.namespace().unwrap_or_default(),
                config: (kind, o.name_any()),
                has_finalizer: o.finalizers().iter().any(|f| f == FINALIZER),
                deleting: o.meta().deletion_timestamp.is_some(),
                uid: o.uid().unwrap_or_default(),
            }
        }
        let mut out: Vec<Held> = self
            .configmaps
            .state()
            .iter()
            .map(|o| held(o.as_ref(), ConfigKind::ConfigMap))
            .collect();
        out.extend(
            self.secrets
                .state()
                .iter()
                .map(|o| held(o.as_ref(), ConfigKind::Secret)),
        );
        out
    }
}

/// Watch `api` into a store, and say on `tx` whenever something changed.
fn reflect<K>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    tx: tokio::sync::mpsc::UnboundedSender<()>,
    handles: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = stream.default_backoff().reflect(writer);
    handles.push(tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => {
                    if tx.send(()).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::debug!(error = %e, "config keeper watch"),
            }
        }
    }));
    store
}

/// Run until `shutdown`: keep the finalizer on exactly the ConfigMaps and Secrets that are
/// needed, after every change a watch reports (events that come together are handled in one
/// pass) and every [`RESYNC`]. Nothing is written before every store has listed once: an object
/// missing from a store that has not listed would look unneeded.
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
    // One store per kind holds every scope: each scope's watch writes into its own store, so
    // the keeper reads them all.
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
        let ar = ApiResource::erase::<ChangeRequest>(&());
        let changes: Api<DynamicObject> = match scope {
            Some(ns) => Api::namespaced_with(c.clone(), ns, &ar),
            None => Api::all_with(c.clone(), &ar),
        };
        let changes_writer = reflector::store::Writer::<DynamicObject>::new(ar.clone());
        let changes_store = changes_writer.as_reader();
        let changes_stream = watcher(changes, cfg())
            .default_backoff()
            .reflect(changes_writer);
        let ctx_tx = tx.clone();
        handles.push(tokio::spawn(async move {
            futures::pin_mut!(changes_stream);
            while let Some(ev) = changes_stream.next().await {
                if matches!(ev, Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)))
                    && ctx_tx.send(()).is_err()
                {
                    return;
                }
            }
        }));
        all.push(Stores {
            deployments: reflect(
                watcher(api::<Deployment>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
            replicasets: reflect(
                watcher(api::<ReplicaSet>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
            sets: reflect(
                watcher(api::<StatefulSet>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
            revisions: reflect(
                watcher(api::<ControllerRevision>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
            changes: changes_store,
            configmaps: reflect(
                watcher(api::<PartialObjectMetadata<ConfigMap>>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
            secrets: reflect(
                watcher(api::<PartialObjectMetadata<Secret>>(c, scope), cfg()),
                tx.clone(),
                &mut handles,
            ),
        });
    }
    let _stop = super::policy::AbortOnDrop(handles);
    for s in &all {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = s.ready() => {}
        }
    }
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Objects (by uid) whose waiting deletion has been told in an Event.
    let mut told: BTreeSet<String> = BTreeSet::new();
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
        let ok = pass(&ctx, &all, &mut told).await;
        if !ok && retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + RETRY);
        }
    }
}

/// One pass over every scope; whether every write succeeded.
async fn pass(ctx: &Context, all: &[Stores], told: &mut BTreeSet<String>) -> bool {
    let mut ok = true;
    for s in all {
        let workloads = s.workloads();
        let changes = s.changes();
        let need = needed(&workloads, &changes);
        let objects = s.objects();
        for step in plan(&objects, &need) {
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
    }
    ok
}

async fn write(ctx: &Context, step: &Step) -> anyhow::Result<()> {
    let (ns, (kind, name), patch) = match step {
        Step::Keep(ns, r) => (ns, r, json!({"metadata": {"finalizers": [FINALIZER]}})),
        Step::Free(ns, r) => (
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
    let api_version = "v1";
    let reference = ObjectReference {
        api_version: Some(api_version.into()),
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
            templates,
        }
    }

    fn change(phase: &str, stable: Option<Value>, new: Value) -> ChangeRequest {
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
        let n = needed(std::slice::from_ref(&w), &[running]);
        assert!(n.contains_key(&key("web-config-abc")));
        assert!(n.contains_key(&key("web-config-def")));
        assert!(
            n[&key("web-config-def")]
                .iter()
                .any(|u| u.contains("ChangeRequest web-1"))
        );
        // Not started yet: the target's template stands for the stable one.
        let pending = change("Pending", None, renamed("web-config-def"));
        let n = needed(std::slice::from_ref(&w), &[pending]);
        assert!(n.contains_key(&key("web-config-abc")) && n.contains_key(&key("web-config-def")));
        for ended in ["Succeeded", "RolledBack", "Superseded", "Failed", "Invalid"] {
            let c = change(ended, Some(template()), renamed("web-config-def"));
            assert!(needed(std::slice::from_ref(&w), &[c]).is_empty(), "{ended}");
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
}
