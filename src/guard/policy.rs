//! The ChangePolicy controller: labels the workloads a policy guards (so the webhook sees
//! them), turns each template the webhook held into a ChangeRequest, supersedes or queues
//! changes in flight, reports changes that went past the webhook, and lets go of a deleted
//! policy's workloads.

use crate::api::*;
use crate::controller::reconcile::Context;
use crate::rollout::{guarded, template_hash, template_of};
use crate::util::count;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject, ListParams, Patch, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::runtime::watcher;
use kube::{Api, Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Every policy is looked at again this often even when no watch said anything changed (a
/// safety net: a watch event lost between a cut and the re-list, say).
pub const RESYNC: Duration = Duration::from_secs(60);
/// A namespace whose policies could not all be reconciled is tried again after this long.
pub const RETRY: Duration = Duration::from_secs(2);
/// Watch events that arrive together are handled in one pass per namespace.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// One guarded workload, read.
struct Workload {
    kind: TargetKind,
    name: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    template: Value,
    object: Value,
    /// The template its pods run, when it differs from `template` (held workloads).
    running: Option<Value>,
    /// Whether what its pods run is known: a StatefulSet the controller has not reported a
    /// revision for yet is not.
    running_known: bool,
    reference: k8s_openapi::api::core::v1::ObjectReference,
}

/// Run until `shutdown`: reconcile the policies of a namespace whenever a watch says one of
/// its ChangePolicies, Deployments, StatefulSets or ChangeRequests changed (events that come
/// together are handled in one pass), a namespace that failed again after [`RETRY`], and every
/// policy every [`RESYNC`].
pub async fn run(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    tokio::pin!(shutdown);
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().cloned().map(Some).collect()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Changed>();
    let watches: Vec<tokio::task::JoinHandle<()>> = scopes
        .iter()
        .flat_map(|scope| {
            let ar = ApiResource::erase::<ChangePolicy>(&());
            let client = ctx.client.clone();
            let (policies, deployments, sets, changes) = match scope.as_deref() {
                Some(ns) => (
                    Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar),
                    Api::<Deployment>::namespaced(client.clone(), ns),
                    Api::<StatefulSet>::namespaced(client.clone(), ns),
                    Api::<ChangeRequest>::namespaced(client, ns),
                ),
                None => (
                    Api::<DynamicObject>::all_with(client.clone(), &ar),
                    Api::<Deployment>::all(client.clone()),
                    Api::<StatefulSet>::all(client.clone()),
                    Api::<ChangeRequest>::all(client),
                ),
            };
            // An edit of a ConfigMap or Secret may be an edit of a guarded workload's config:
            // their metadata (only) says so.
            type Meta<K> = kube::core::PartialObjectMeta<K>;
            let (configmaps, secrets) = match scope.as_deref() {
                Some(ns) => (
                    Api::<Meta<ConfigMap>>::namespaced(ctx.client.clone(), ns),
                    Api::<Meta<Secret>>::namespaced(ctx.client.clone(), ns),
                ),
                None => (
                    Api::<Meta<ConfigMap>>::all(ctx.client.clone()),
                    Api::<Meta<Secret>>::all(ctx.client.clone()),
                ),
            };
            let cfg = || watcher::Config::default().any_semantic();
            [
                spawn_watch(watcher(policies, cfg()), true, tx.clone()),
                spawn_watch(watcher(deployments, cfg()), false, tx.clone()),
                spawn_watch(watcher(sets, cfg()), false, tx.clone()),
                spawn_watch(watcher(changes, cfg()), false, tx.clone()),
                spawn_watch(watcher(configmaps, cfg()), false, tx.clone()),
                spawn_watch(watcher(secrets, cfg()), false, tx.clone()),
            ]
        })
        .collect();
    let _stop_watches = AbortOnDrop(watches);
    let mut resync = tokio::time::interval(RESYNC);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty: std::collections::BTreeSet<String> = Default::default();
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failed: std::collections::BTreeSet<String> = Default::default();
    // Namespaces that held a policy when last looked at.
    let mut with_policies: std::collections::BTreeSet<String> = Default::default();
    loop {
        let mut everything = false;
        tokio::select! {
            _ = &mut shutdown => return,
            _ = resync.tick() => everything = true,
            Some(c) = rx.recv() => {
                let mut note = |c: Changed| {
                    if c.policy {
                        with_policies.insert(c.ns.clone());
                    }
                    // Only namespaces with a policy have anything to reconcile.
                    if with_policies.contains(&c.ns) {
                        dirty.insert(c.ns);
                    }
                };
                note(c);
                tokio::time::sleep(DEBOUNCE).await;
                while let Ok(c) = rx.try_recv() {
                    note(c);
                }
            }
            _ = async { tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)).await }, if retry_at.is_some() => {
                dirty.append(&mut failed);
                retry_at = None;
            }
        }
        let passes: Vec<Option<String>> = if everything {
            dirty.clear();
            scopes.clone()
        } else {
            std::mem::take(&mut dirty).into_iter().map(Some).collect()
        };
        for scope in passes {
            match pass(&ctx, scope.as_deref()).await {
                Ok(seen) => {
                    // What the pass found replaces what the watches said of its scope.
                    match &scope {
                        Some(ns) => {
                            with_policies.remove(ns);
                        }
                        None => with_policies.clear(),
                    }
                    for (ns, ok) in seen {
                        if !ok {
                            failed.insert(ns.clone());
                        }
                        with_policies.insert(ns);
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "policy pass");
                    match scope {
                        Some(ns) => {
                            failed.insert(ns);
                        }
                        // A failed list of every namespace: the next resync tries again, sooner.
                        None => resync.reset_after(RETRY),
                    }
                }
            }
        }
        if !failed.is_empty() && retry_at.is_none() {
            retry_at = Some(tokio::time::Instant::now() + RETRY);
        }
    }
}

/// A watch saw an object of namespace `ns` change; `policy` when it was a ChangePolicy.
struct Changed {
    ns: String,
    policy: bool,
}

pub(crate) struct AbortOnDrop(pub(crate) Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

/// Watch one kind in one scope and send the namespace of every object that changes.
fn spawn_watch<K>(
    stream: impl futures::Stream<
        Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>,
    > + Send
    + 'static,
    policy: bool,
    tx: tokio::sync::mpsc::UnboundedSender<Changed>,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Send + 'static,
{
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let mut events = std::pin::pin!(stream.default_backoff());
        while let Some(ev) = events.next().await {
            let obj = match ev {
                Ok(
                    watcher::Event::Apply(o)
                    | watcher::Event::Delete(o)
                    | watcher::Event::InitApply(o),
                ) => o,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "policy watch");
                    continue;
                }
            };
            if let Some(ns) = obj.meta().namespace.clone()
                && tx.send(Changed { ns, policy }).is_err()
            {
                return;
            }
        }
    })
}

/// Reconcile every policy of `ns` (or of every namespace); returns each namespace that held a
/// policy, with whether all of its policies were reconciled.
async fn pass(ctx: &Context, ns: Option<&str>) -> anyhow::Result<BTreeMap<String, bool>> {
    let ar = ApiResource::erase::<ChangePolicy>(&());
    let api: Api<DynamicObject> = match ns {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &ar),
        None => Api::all_with(ctx.client.clone(), &ar),
    };
    let mut seen = BTreeMap::new();
    for obj in api.list(&ListParams::default()).await?.items {
        let name = obj.name_any();
        let Some(ns) = obj.namespace() else { continue };
        seen.entry(ns.clone()).or_insert(true);
        let raw = serde_json::to_value(&obj)?;
        match serde_json::from_value::<ChangePolicy>(raw) {
            Ok(p) => {
                if let Err(e) = reconcile(ctx, &ns, &p).await {
                    if !e.is::<ComeBack>() {
                        tracing::warn!(policy = %name, namespace = %ns, error = %e, "policy reconcile failed");
                    }
                    seen.insert(ns, false);
                }
            }
            Err(e) => {
                // One malformed policy is reported on itself and stops no other.
                let msg = format!("the policy cannot be read: {e}");
                let _ = write_status(
                    ctx,
                    &ns,
                    &name,
                    json!({"conditions": [condition(false, "Invalid", &msg)]}),
                )
                .await;
            }
        }
    }
    Ok(seen)
}

fn condition(ok: bool, reason: &str, message: &str) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: message.into(),
        last_transition_time: Time(Timestamp::now()),
        observed_generation: None,
    }
}

async fn write_status(ctx: &Context, ns: &str, name: &str, status: Value) -> anyhow::Result<()> {
    ctx.fence.check()?;
    let api: Api<ChangePolicy> = Api::namespaced(ctx.client.clone(), ns);
    api.patch_status(
        name,
        &patch_params(MANAGER_GUARD),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

fn event(
    ctx: &Context,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
    warning: bool,
    reason: &str,
    note: String,
) {
    related_event(ctx, obj, None, warning, reason, note);
}

/// An Event about `obj` that concerns one change (`related`: the ChangeRequest, or the template
/// hash when there is none). Events of one reason about one object are folded into a series by
/// (reason, action, related object); the change keeps each change's Event its own.
fn related_event(
    ctx: &Context,
    obj: &k8s_openapi::api::core::v1::ObjectReference,
    related: Option<Related<'_>>,
    warning: bool,
    reason: &str,
    note: String,
) {
    if !ctx.fence.allows() {
        return;
    }
    let ev = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.into(),
        note: Some(crate::util::trim_to(&note, 1000)),
        action: match &related {
            Some(Related::Template(hash)) => format!("{reason} {hash}"),
            _ => reason.into(),
        },
        secondary: match related {
            Some(Related::Change(cr)) => Some(cr),
            _ => None,
        },
    };
    ctx.record_event(ev, obj.clone());
}

/// What one change's Event is about besides the workload.
enum Related<'a> {
    /// The ChangeRequest that carries the change.
    Change(k8s_openapi::api::core::v1::ObjectReference),
    /// A template released without a ChangeRequest.
    Template(&'a str),
}

/// A reference to the ChangeRequest `name` in `ns`.
fn change_ref(ns: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    use kube::Resource;
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(ChangeRequest::api_version(&()).into_owned()),
        kind: Some(ChangeRequest::kind(&()).into_owned()),
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        ..Default::default()
    }
}

/// Name of the ChangeRequest for `template` of `workload`.
pub fn change_name(workload: &str, hash: &str) -> String {
    let base: String = workload.chars().take(63 - 11).collect();
    format!("{}-{hash}", base.trim_end_matches('-'))
}

async fn read_workloads(
    ctx: &Context,
    ns: &str,
    policy: &ChangePolicy,
) -> anyhow::Result<(Vec<Workload>, Vec<(TargetKind, String)>)> {
    let me = policy.name_any();
    let mut out = Vec::new();
    let mut stale = Vec::new();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), ns);
    for d in deployments.list(&ListParams::default()).await?.items {
        // graygate's own canaries and fresh baselines belong to their change, not to a policy.
        if d.owner_references()
            .iter()
            .any(|o| o.kind == "ChangeRequest" && o.controller == Some(true))
        {
            continue;
        }
        let labels = d.labels().clone();
        let selected =
            policy
                .spec
                .workloads
                .selects(TargetKind::Deployment, &d.name_any(), &labels);
        if !selected {
            if labels.get(LABEL_GUARDED_BY) == Some(&me) {
                stale.push((TargetKind::Deployment, d.name_any()));
            }
            continue;
        }
        let template = template_of(&d.spec.as_ref().map(|s| &s.template))?;
        let running = if d.annotations().contains_key(ANN_HELD) {
            guarded::running_template(&ctx.client, ctx.cache.as_deref(), ns, &d)
                .await?
                .map(|(t, _)| t)
        } else {
            None
        };
        out.push(Workload {
            kind: TargetKind::Deployment,
            name: d.name_any(),
            labels,
            annotations: d.annotations().clone(),
            template,
            object: serde_json::to_value(&d)?,
            running,
            running_known: true,
            reference: d.object_ref(&()),
        });
    }
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), ns);
    let revisions: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), ns);
    for s in sets.list(&ListParams::default()).await?.items {
        let labels = s.labels().clone();
        if !policy
            .spec
            .workloads
            .selects(TargetKind::StatefulSet, &s.name_any(), &labels)
        {
            if labels.get(LABEL_GUARDED_BY) == Some(&me) {
                stale.push((TargetKind::StatefulSet, s.name_any()));
            }
            continue;
        }
        let template = template_of(&s.spec.as_ref().map(|x| &x.template))?;
        let st = s.status.clone().unwrap_or_default();
        let current = st.current_revision.clone().unwrap_or_default();
        // What the pods run is the current revision, compared with the held template itself.
        // Not with `updateRevision`: the StatefulSet controller sets that only once it has seen
        // the new template, and until then a held template looked like a revert to what runs
        // (and was released, failed template and all).
        let held_now = s.annotations().contains_key(ANN_HELD);
        let mut running_known = !held_now;
        let mut running = None;
        if held_now && !current.is_empty() {
            let revision = revisions
                .get_opt(&current)
                .await?
                .and_then(|r| r.data)
                .and_then(|d| d.0.pointer("/spec/template").cloned());
            if let Some(r) = revision {
                let (a, b) = (
                    crate::guard::webhook::normalized_hash(&r),
                    crate::guard::webhook::normalized_hash(&template),
                );
                running_known = a.is_some() && b.is_some();
                running = (a != b).then_some(r);
            }
        }
        out.push(Workload {
            kind: TargetKind::StatefulSet,
            name: s.name_any(),
            labels,
            annotations: s.annotations().clone(),
            template,
            object: serde_json::to_value(&s)?,
            running,
            running_known,
            reference: s.object_ref(&()),
        });
    }
    Ok((out, stale))
}

/// Set annotations of a workload to `values`, with one patch, only when one of them differs.
async fn annotate(
    ctx: &Context,
    ns: &str,
    w: &Workload,
    values: &[(&str, &str)],
) -> anyhow::Result<()> {
    if values
        .iter()
        .all(|(k, v)| w.annotations.get(*k).map(String::as_str) == Some(*v))
    {
        return Ok(());
    }
    let annotations: serde_json::Map<String, Value> = values
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    patch_workload(
        ctx,
        ns,
        w.kind,
        &w.name,
        json!({"metadata": {"annotations": annotations}}),
    )
    .await
}

async fn patch_workload(
    ctx: &Context,
    ns: &str,
    kind: TargetKind,
    name: &str,
    body: Value,
) -> anyhow::Result<()> {
    ctx.fence.check()?;
    let pp = patch_params(MANAGER_GUARD);
    // A write that lifts the hold must come back without it: the admission webhook holds
    // graygate's own writes too when it does not know graygate's identity.
    let releasing = body
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANN_HELD))
        .is_some_and(Value::is_null);
    let held_after = match kind {
        TargetKind::Deployment => {
            let got = Api::<Deployment>::namespaced(ctx.client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(body))
                .await?;
            got.annotations().contains_key(ANN_HELD)
        }
        TargetKind::StatefulSet => {
            let got = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(body))
                .await?;
            got.annotations().contains_key(ANN_HELD)
        }
    };
    if releasing && held_after {
        anyhow::bail!(
            "graygate's own release of {kind:?}/{name} was held by the admission webhook: its identity is not trusted (each replica's log and graygate_identity_known say why)"
        );
    }
    Ok(())
}

/// Let go of a workload: no label, no hold annotations. A Deployment held on a template graygate
/// never released stays paused (deleting a policy rolls nothing); the Event says so.
async fn release_label(
    ctx: &Context,
    ns: &str,
    w_kind: TargetKind,
    name: &str,
) -> anyhow::Result<()> {
    patch_workload(
        ctx,
        ns,
        w_kind,
        name,
        json!({"metadata": {
            "labels": {LABEL_GUARDED_BY: null},
            "annotations": {ANN_HELD: null, ANN_RUNNING: null, ANN_CHANGE: null}
        }}),
    )
    .await
}

/// Release a held workload whose template is what its pods already run (a revert): nothing to roll.
fn release_body(w: &Workload) -> Value {
    match w.kind {
        TargetKind::Deployment => json!({
            "metadata": {"annotations": {ANN_HELD: null, ANN_RUNNING: null, ANN_CHANGE: null, ANN_FAILED: null}},
            "spec": {"paused": false}
        }),
        TargetKind::StatefulSet => {
            let before: i64 = w
                .annotations
                .get(ANN_PARTITION)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            json!({
                "metadata": {"annotations": {ANN_HELD: null, ANN_RUNNING: null, ANN_PARTITION: null, ANN_CHANGE: null, ANN_FAILED: null}},
                "spec": {"updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": before}}}
            })
        }
    }
}

fn held(w: &Workload) -> bool {
    w.annotations.contains_key(ANN_HELD)
        && match w.kind {
            TargetKind::Deployment => w.object.pointer("/spec/paused") == Some(&json!(true)),
            TargetKind::StatefulSet => true,
        }
}

async fn reconcile(ctx: &Context, ns: &str, policy: &ChangePolicy) -> anyhow::Result<()> {
    let name = policy.name_any();
    let api: Api<ChangePolicy> = Api::namespaced(ctx.client.clone(), ns);
    let (workloads, stale) = read_workloads(ctx, ns, policy).await?;
    if policy.metadata.deletion_timestamp.is_some() {
        for w in &workloads {
            if w.labels.get(LABEL_GUARDED_BY) == Some(&name) {
                release_label(ctx, ns, w.kind, &w.name).await?;
                if held(w) {
                    event(
                        ctx,
                        &w.reference,
                        true,
                        "GuardRemoved",
                        format!(
                            "policy {name} was deleted while {:?}/{} held a template graygate had not released; it stays paused (kubectl rollout resume to roll it)",
                            w.kind, w.name
                        ),
                    );
                }
            }
        }
        for (kind, w) in &stale {
            release_label(ctx, ns, *kind, w).await?;
        }
        let rest: Vec<String> = policy
            .finalizers()
            .iter()
            .filter(|f| *f != POLICY_FINALIZER)
            .cloned()
            .collect();
        ctx.fence.check()?;
        api.patch(
            &name,
            &patch_params(MANAGER_GUARD),
            &Patch::Merge(json!({"metadata": {"finalizers": rest}})),
        )
        .await?;
        return Ok(());
    }
    if !policy.finalizers().iter().any(|f| f == POLICY_FINALIZER) {
        let mut f = policy.finalizers().to_vec();
        f.push(POLICY_FINALIZER.into());
        ctx.fence.check()?;
        api.patch(
            &name,
            &patch_params(MANAGER_GUARD),
            &Patch::Merge(json!({"metadata": {"finalizers": f}})),
        )
        .await?;
    }
    // The selector must be one the API server would take, and the settings every generated
    // change gets must make a valid ChangeRequest.
    let probe = spec_for(policy, TargetKind::Deployment, "probe", json!({"spec": {}}));
    let invalid = policy
        .spec
        .workloads
        .validate()
        .err()
        .or_else(|| traffic_kinds(policy))
        .or_else(|| {
            check_spec(&probe)
                .err()
                .map(|e| format!("spec.change: {e}"))
        });
    if let Some(msg) = invalid {
        write_status(ctx, ns, &name, json!({"observedGeneration": policy.metadata.generation, "conditions": [condition(false, "InvalidSpec", &msg)]})).await?;
        return Ok(());
    }
    for (kind, w) in &stale {
        release_label(ctx, ns, *kind, w).await?;
    }
    let changes: Api<ChangeRequest> = Api::namespaced(ctx.client.clone(), ns);
    let mine: Vec<ChangeRequest> = changes
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|c| c.spec.policy.as_deref() == Some(name.as_str()))
        .collect();
    let known: BTreeMap<String, GuardedWorkload> = policy
        .status
        .clone()
        .unwrap_or_default()
        .workloads
        .into_iter()
        .map(|w| (format!("{}/{}", w.kind, w.name), w))
        .collect();
    // A workload is guarded by one policy: the first that labelled it, while it exists.
    let others: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && p.name_any() != name)
        .map(|p| p.name_any())
        .collect();
    let mut entries = Vec::new();
    let mut overlaps = Vec::new();
    // A workload whose config is being edited: the pass comes back shortly.
    let mut settling = false;
    for w in &workloads {
        if let Some(owner) = w
            .labels
            .get(LABEL_GUARDED_BY)
            .filter(|o| others.contains(o))
        {
            let kind = format!("{:?}", w.kind);
            overlaps.push(format!("{kind}/{} (policy {owner})", w.name));
            entries.push(GuardedWorkload {
                kind,
                name: w.name.clone(),
                state: "Overlap".into(),
                template: None,
                change: None,
                message: Some(format!(
                    "also selected by ChangePolicy {owner}, which guards it (a workload is guarded by the first policy that selects it); narrow one of the two selectors"
                )),
                since: None,
            });
            continue;
        }
        if w.labels.get(LABEL_GUARDED_BY) != Some(&name) {
            patch_workload(
                ctx,
                ns,
                w.kind,
                &w.name,
                json!({"metadata": {"labels": {LABEL_GUARDED_BY: name}}}),
            )
            .await?;
        }
        let kind = format!("{:?}", w.kind);
        // The series an alert on unguarded changes reads exists (at 0) for every namespace
        // and kind that is guarded, before the first such change.
        let _ = ctx
            .metrics
            .unguarded
            .get_or_create(&crate::controller::metrics::WorkloadLabel {
                namespace: ns.into(),
                kind: kind.clone(),
            });
        let hash = template_hash(&w.template);
        let before = known.get(&format!("{kind}/{}", w.name));
        let mut entry = GuardedWorkload {
            kind: kind.clone(),
            name: w.name.clone(),
            state: "Released".into(),
            template: Some(hash.clone()),
            change: None,
            message: None,
            since: before
                .filter(|b| b.template.as_deref() == Some(hash.as_str()))
                .and_then(|b| b.since.clone())
                .or(Some(Time(Timestamp::now()))),
        };
        // Pinned config: contents of its ConfigMaps and Secrets that its template does not pin
        // yet (edited in place, or never pinned) become a template change of graygate's own,
        // held like any other; the next pass turns it into a ChangeRequest.
        match super::pin::sync(ctx, ns, w.kind, &w.object).await? {
            super::pin::Sync::Unchanged => {}
            super::pin::Sync::Settling => {
                settling = true;
                entry.state = before.map_or_else(|| "Released".into(), |b| b.state.clone());
                entry.message =
                    Some("config edited: waiting a moment for the rest of the edit".into());
                entries.push(entry);
                continue;
            }
            super::pin::Sync::Written(what) => {
                related_event(
                    ctx,
                    &w.reference,
                    None,
                    false,
                    "ConfigChanged",
                    format!("{what}: the pod template's pins follow, held as a change"),
                );
                entry.state = "Held".into();
                entry.message = Some(format!("{what}: held as a change"));
                entries.push(entry);
                continue;
            }
        }
        let of_workload: Vec<&ChangeRequest> = mine
            .iter()
            .filter(|c| c.spec.target.name == w.name && c.spec.target.kind == w.kind)
            .collect();
        let in_flight = |cr_name: &str| {
            of_workload.iter().any(|c| {
                let phase = c.status.as_ref().map(|s| s.phase).unwrap_or_default();
                c.name_any() == cr_name
                    && (phase.is_active() || matches!(phase, Phase::Pending | Phase::Blocked))
            })
        };
        if held(w) {
            if !w.running_known {
                // Nothing is decided on a guess: the next watch event (the controller's status)
                // brings the pass back.
                entry.state = before.map_or_else(|| "Held".into(), |b| b.state.clone());
                entry.message = Some(format!(
                    "waiting for the {kind} controller to report the revision its pods run"
                ));
                entries.push(entry);
                continue;
            }
            // What the pods run, for the webhook to recognise a revert to it.
            let running = w
                .running
                .as_ref()
                .and_then(crate::guard::webhook::normalized_hash);
            if let Some(r) = &running {
                annotate(ctx, ns, w, &[(ANN_RUNNING, r)]).await?;
            }
            // While its own change hands the canary over, the held template is already what
            // runs: that is a release in progress, not a revert.
            let releasing = in_flight(&change_name(&w.name, &hash));
            if w.running.is_none() && !releasing {
                // Reverted to what its pods run: nothing to roll out.
                patch_workload(ctx, ns, w.kind, &w.name, release_body(w)).await?;
                related_event(
                    ctx,
                    &w.reference,
                    Some(Related::Template(&hash)),
                    false,
                    "Released",
                    format!(
                        "{kind}/{} holds the template its pods already run ({hash}): released without a change",
                        w.name
                    ),
                );
                entry.message = Some(
                    "the held template equals the running one: released without a change".into(),
                );
                supersede(
                    ctx,
                    ns,
                    &of_workload,
                    "",
                    &format!("{SUPERSEDED_BY} the running template (the workload went back to it)"),
                )
                .await?;
                entries.push(entry);
                continue;
            }
            let cr_name = change_name(&w.name, &hash);
            entry.change = Some(cr_name.clone());
            // The workload names the change that rolls its held template out.
            annotate(ctx, ns, w, &[(ANN_CHANGE, &cr_name)]).await?;
            // The older changes are told first that this template supersedes them: a newer
            // change created before that would find one of them still active and report itself
            // Blocked, a Warning for what is routine.
            if policy.spec.on_newer_change == OnNewerChange::Supersede {
                supersede(
                    ctx,
                    ns,
                    &of_workload,
                    &cr_name,
                    &format!("{SUPERSEDED_BY} {cr_name}"),
                )
                .await?;
            }
            let existing = of_workload.iter().find(|c| c.name_any() == cr_name);
            let failed_before = failed_before(
                w.annotations.get(ANN_FAILED_TEMPLATES).map(String::as_str),
                &hash,
            );
            match existing {
                None if failed_before => {
                    // The template failed before and its ChangeRequest is gone: deleted to stop
                    // it (the deletion rolled it back) or cleaned up afterwards. It rolls
                    // nothing, as when a failed template is applied again; starting it anew
                    // would undo the stop.
                    let failed = format!("{hash} ({cr_name})");
                    annotate(ctx, ns, w, &[(ANN_FAILED, &failed)]).await?;
                    entry.state = "Failed".into();
                    entry.change = None;
                    entry.message = Some(format!(
                        "template {hash} failed before and its ChangeRequest {cr_name} is gone: it rolls nothing; the old pods keep serving and the workload stays held until a new template is applied"
                    ));
                }
                None => {
                    let spec = spec_for(policy, w.kind, &w.name, w.template.clone());
                    // A change of pinned config says which objects and keys it changes.
                    let config = match &w.running {
                        Some(running) => {
                            super::pin::describe(ctx, ns, running, &w.template).await?
                        }
                        None => None,
                    };
                    create_change(ctx, ns, policy, w, &cr_name, spec, config).await?;
                    related_event(
                        ctx,
                        &w.reference,
                        Some(Related::Change(change_ref(ns, &cr_name))),
                        false,
                        "ChangeHeld",
                        format!(
                            "pod template {hash} held; rolling out in gray batches as ChangeRequest {cr_name}"
                        ),
                    );
                    entry.state = "Held".into();
                    entry.message = Some(format!("held; rolling out as ChangeRequest {cr_name}"));
                }
                Some(c)
                    if c.status
                        .as_ref()
                        .is_some_and(|s| s.phase == Phase::Superseded) =>
                {
                    // Replaced by a newer template, now applied again: nothing failed, so it
                    // rolls out again from the first batch (once per time it ended).
                    let token = format!(
                        "held again after {}",
                        c.status
                            .as_ref()
                            .and_then(|s| s.finished_at.as_ref())
                            .map(|t| t.0.to_string())
                            .unwrap_or_default()
                    );
                    if c.annotations().get(ANN_RETRY) != Some(&token) {
                        ctx.fence.check()?;
                        Api::<ChangeRequest>::namespaced(ctx.client.clone(), ns)
                            .patch(
                                &cr_name,
                                &patch_params(MANAGER_GUARD),
                                &Patch::Merge(
                                    json!({"metadata": {"annotations": {ANN_RETRY: token}}}),
                                ),
                            )
                            .await?;
                        related_event(
                            ctx,
                            &w.reference,
                            Some(Related::Change(change_ref(ns, &cr_name))),
                            false,
                            "ChangeHeld",
                            format!(
                                "pod template {hash} held again; ChangeRequest {cr_name} (superseded before) rolls it out again in gray batches"
                            ),
                        );
                    }
                    entry.state = "Held".into();
                    entry.message = Some(format!(
                        "held again; rolling out as ChangeRequest {cr_name}"
                    ));
                }
                Some(c) => {
                    let phase = c.status.as_ref().map(|s| s.phase).unwrap_or_default();
                    if matches!(phase, Phase::RolledBack | Phase::Failed) {
                        // The failure stays on the workload while it holds this template (also
                        // when it comes back after a revert), and the webhook remembers it.
                        let failed = format!("{hash} ({cr_name})");
                        let list = with_failed(w.annotations.get(ANN_FAILED_TEMPLATES), &hash);
                        annotate(
                            ctx,
                            ns,
                            w,
                            &[(ANN_FAILED, &failed), (ANN_FAILED_TEMPLATES, &list)],
                        )
                        .await?;
                    }
                    entry.state = match phase {
                        Phase::RolledBack | Phase::Failed => "Failed",
                        _ => "Held",
                    }
                    .into();
                    entry.message = Some(match phase {
                        Phase::RolledBack | Phase::Failed => format!(
                            "template {hash} failed (ChangeRequest {cr_name}, {}); the old pods keep serving and the workload stays held until a new template is applied",
                            phase.as_str()
                        ),
                        p => format!("ChangeRequest {cr_name} is {}", p.as_str()),
                    });
                }
            }
        } else {
            // Not held: a template different from the last one seen, with no change of graygate's
            // behind it, went past the webhook.
            let ours = of_workload.iter().any(|c| {
                let st = c.status.clone().unwrap_or_default();
                st.change_revision.as_deref() == Some(hash.as_str())
                    || st.stable_template.as_ref().map(template_hash).as_deref()
                        == Some(hash.as_str())
                    || c.spec.template.as_ref().map(template_hash).as_deref() == Some(hash.as_str())
            });
            if let Some(b) = before
                && b.template.as_deref() != Some(hash.as_str())
                && !ours
            {
                let was = b.template.clone().unwrap_or_default();
                let msg = format!(
                    "{kind}/{} changed from pod template {was} to {hash} without graygate: the admission webhook did not hold it (graygate unreachable and failurePolicy Ignore?); Kubernetes rolled it out at once",
                    w.name
                );
                tracing::warn!(namespace = %ns, workload = %w.name, "{msg}");
                event(ctx, &w.reference, true, "UnguardedChange", msg.clone());
                if ctx.fence.allows() {
                    ctx.notifier.notify(crate::notify::Message {
                        event: crate::notify::Event::UnguardedChange,
                        namespace: ns.into(),
                        name: w.name.clone(),
                        target: format!("{kind}/{}", w.name),
                        phase: "Unguarded".into(),
                        batch: 0,
                        summary: msg.clone(),
                        time: jiff::Timestamp::now().to_string(),
                        url: None,
                        run: hash.clone(),
                    });
                }
                event(
                    ctx,
                    &policy.object_ref(&()),
                    true,
                    "UnguardedChange",
                    msg.clone(),
                );
                ctx.metrics
                    .unguarded
                    .get_or_create(&crate::controller::metrics::WorkloadLabel {
                        namespace: ns.into(),
                        kind: kind.clone(),
                    })
                    .inc();
                entry.state = "Unguarded".into();
                entry.message = Some(msg);
            } else if before.is_some_and(|b| {
                b.state == "Unguarded" && b.template.as_deref() == Some(hash.as_str())
            }) {
                entry.state = "Unguarded".into();
                entry.message = before.and_then(|b| b.message.clone());
            }
        }
        entries.push(entry);
    }
    let held_count = entries
        .iter()
        .filter(|e| e.state == "Held" || e.state == "Failed")
        .count();
    let guarded = entries.len() - overlaps.len();
    let ready = if overlaps.is_empty() {
        condition(
            true,
            "Guarding",
            &format!(
                "guarding {}",
                count(guarded as i64, "workload", "workloads")
            ),
        )
    } else {
        condition(
            true,
            "Overlap",
            &format!(
                "guarding {}; {} selected here guarded by another policy: {}",
                count(guarded as i64, "workload", "workloads"),
                overlaps.len(),
                overlaps.join(", ")
            ),
        )
    };
    let status = json!({
        "observedGeneration": policy.metadata.generation,
        "guarded": guarded,
        "held": held_count,
        "workloads": entries,
        "conditions": [ready],
    });
    let current = serde_json::to_value(policy.status.clone().unwrap_or_default())?;
    let unchanged = current.get("workloads") == status.get("workloads")
        && current.get("guarded") == status.get("guarded")
        && current.pointer("/conditions/0/message") == status.pointer("/conditions/0/message")
        && current.get("observedGeneration") == status.get("observedGeneration");
    if !unchanged {
        write_status(ctx, ns, &name, status).await?;
    }
    if settling {
        return Err(ComeBack.into());
    }
    Ok(())
}

/// Not a failure: a config edit is settling, and the namespace is looked at again shortly.
#[derive(Debug)]
struct ComeBack;

impl std::fmt::Display for ComeBack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a config edit is settling")
    }
}

impl std::error::Error for ComeBack {}

/// Roll back the workload's other changes in flight (their canary goes), newest template wins.
async fn supersede(
    ctx: &Context,
    ns: &str,
    changes: &[&ChangeRequest],
    keep: &str,
    why: &str,
) -> anyhow::Result<()> {
    let api: Api<ChangeRequest> = Api::namespaced(ctx.client.clone(), ns);
    for c in changes {
        let phase = c.status.as_ref().map(|s| s.phase).unwrap_or_default();
        let open = phase.is_active() || matches!(phase, Phase::Pending | Phase::Blocked);
        if c.name_any() == keep
            || !open
            || c.annotations().get(ANN_ABORT).map(String::as_str) == Some(why)
        {
            continue;
        }
        ctx.fence.check()?;
        api.patch(
            &c.name_any(),
            &patch_params(MANAGER_GUARD),
            &Patch::Merge(json!({"metadata": {"annotations": {ANN_ABORT: why}}})),
        )
        .await?;
    }
    Ok(())
}

/// A policy whose changes are traffic-weighted must guard Deployments only: what is wrong, naming
/// the field.
fn traffic_kinds(policy: &ChangePolicy) -> Option<String> {
    let kinds = &policy.spec.workloads.kinds;
    (policy.spec.change.traffic.is_some()
        && (kinds.is_empty() || kinds.iter().any(|k| *k != TargetKind::Deployment)))
    .then(|| {
        "spec.workloads.kinds: a policy with change.traffic guards Deployments only: set kinds: [Deployment] (traffic shares do not work for StatefulSets yet)".to_string()
    })
}

/// The ChangeRequest spec a policy gives a held template.
pub fn spec_for(
    policy: &ChangePolicy,
    kind: TargetKind,
    workload: &str,
    template: Value,
) -> ChangeRequestSpec {
    let c = &policy.spec.change;
    let mut template = template;
    if let Some(Value::Object(l)) = template.pointer_mut("/metadata/labels") {
        l.remove("pod-template-hash");
    }
    ChangeRequestSpec {
        target: TargetRef {
            kind,
            name: workload.into(),
        },
        images: BTreeMap::new(),
        patch: None,
        template: Some(template),
        config: Vec::new(),
        policy: Some(policy.name_any()),
        batches: c.batches.clone(),
        on_anomaly: c.on_anomaly,
        on_analysis_error: c.on_analysis_error,
        progress_deadline: c
            .progress_deadline
            .unwrap_or(crate::api::Duration(Duration::from_secs(600))),
        window: c.window.clone(),
        deletion_policy: c.deletion_policy,
        baseline: c.baseline,
        analysis: c.analysis.clone(),
        // A policy with traffic guards Deployments only (its validation says so).
        traffic: c
            .traffic
            .as_ref()
            .filter(|_| kind == TargetKind::Deployment)
            .map(|t| t.for_workload(workload)),
    }
}

async fn create_change(
    ctx: &Context,
    ns: &str,
    policy: &ChangePolicy,
    w: &Workload,
    name: &str,
    spec: ChangeRequestSpec,
    config: Option<String>,
) -> anyhow::Result<()> {
    let mut cr = ChangeRequest::new(name, spec);
    cr.metadata.namespace = Some(ns.into());
    if let Some(c) = config {
        cr.metadata.annotations = Some(BTreeMap::from([(
            super::pin::ANN_CONFIG_CHANGED.to_string(),
            c,
        )]));
    }
    cr.metadata.labels = Some(BTreeMap::from([
        (LABEL_WORKLOAD.to_string(), w.name.clone()),
        (LABEL_GUARDED_BY.to_string(), policy.name_any()),
    ]));
    cr.metadata.owner_references = policy.controller_owner_ref(&()).map(|o| vec![o]);
    ctx.fence.check()?;
    let api: Api<ChangeRequest> = Api::namespaced(ctx.client.clone(), ns);
    match api
        .create(
            &PostParams {
                field_manager: Some(MANAGER_GUARD.into()),
                ..Default::default()
            },
            &cr,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_templates_list_keeps_the_last_ten_once_each() {
        assert_eq!(with_failed(None, "a"), "a");
        let l = with_failed(Some(&"a,b".to_string()), "a");
        assert_eq!(l, "b,a", "a failed again moves last, once");
        let mut l = String::new();
        for i in 0..12 {
            l = with_failed(Some(&l), &format!("h{i}"));
        }
        assert_eq!(l.split(',').count(), MAX_FAILED_TEMPLATES);
        assert!(l.starts_with("h2,") && l.ends_with(",h11"), "{l}");
        assert!(failed_before(Some(&l), "h11") && failed_before(Some(" h2 ,h3"), "h2"));
        assert!(!failed_before(Some(&l), "h1"), "pushed out of the last ten");
        assert!(!failed_before(Some("ab"), "a") && !failed_before(None, "a"));
    }

    fn policy(workloads: &str) -> ChangePolicy {
        let spec = serde_yaml::from_str(&format!(
            "workloads: {workloads}\nchange:\n  traffic: {{gatewayAPI: {{httpRoute: $(workload), rule: main, stableService: $(workload), canaryService: $(workload)-canary, header: {{name: x-canary, value: $(workload)}}}}}}\n  batches: [{{replicas: 1, traffic: 5%}}, {{percent: 100}}]"
        ))
        .unwrap();
        ChangePolicy::new("p", spec)
    }

    #[test]
    fn a_policys_traffic_names_the_route_and_services_of_each_workload() {
        let p = policy("{kinds: [Deployment], names: [web]}");
        assert_eq!(traffic_kinds(&p), None);
        let spec = spec_for(&p, TargetKind::Deployment, "web", json!({"spec": {}}));
        let t = spec.traffic.clone().unwrap().gateway_api;
        assert_eq!(
            (
                t.http_route.as_str(),
                t.rule.as_deref(),
                t.stable_service.as_str(),
                t.canary_service.as_str()
            ),
            ("web", Some("main"), "web", "web-canary")
        );
        // A header value is the user's, not a name: left as written.
        assert_eq!(t.header.unwrap().value, "$(workload)");
        assert!(check_spec(&spec).is_ok(), "{:?}", check_spec(&spec));
        // The probe the policy is validated with is a valid change too.
        let probe = spec_for(&p, TargetKind::Deployment, "probe", json!({"spec": {}}));
        assert!(check_spec(&probe).is_ok());
    }

    #[test]
    fn a_policy_with_traffic_must_guard_deployments_only() {
        for workloads in [
            "{names: [web]}",
            "{kinds: [Deployment, StatefulSet], names: [web]}",
        ] {
            let msg = traffic_kinds(&policy(workloads)).unwrap();
            assert!(msg.starts_with("spec.workloads.kinds:"), "{msg}");
        }
        // A guarded canary goes with its ChangeRequest: keep would cut off the requests routed
        // to it, so the policy is refused naming the field.
        let mut p = policy("{kinds: [Deployment], names: [web]}");
        p.spec.change.deletion_policy = crate::api::DeletionPolicy::Keep;
        let probe = spec_for(&p, TargetKind::Deployment, "probe", json!({"spec": {}}));
        assert_eq!(check_spec(&probe).unwrap_err().field, "deletionPolicy");
        let mut p = policy("{names: [web]}");
        p.spec.change.traffic = None;
        p.spec.change.batches = serde_yaml::from_str("[{percent: 100}]").unwrap();
        assert_eq!(traffic_kinds(&p), None);
    }
}
