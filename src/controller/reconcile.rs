//! The reconciler: observe the cluster, call the pure decision, act idempotently, record.

use super::events::{Event, EventType, Recorder, Reporter};
use super::history;
use super::metrics::{CategoryLabel, Metrics, ResultLabel, VerdictLabel};
use super::state::{
    self, Action, Blocker, Judgement, Observation, Signals, current_step, decide, judgement_due,
};
use crate::analysis::{Analyzer, JudgeRequest};
use crate::api::{ChangeRequest, ChangeRequestStatus, FIELD_MANAGER, FINALIZER, Phase};
use crate::rollout::{self, Ctx, Error};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Events waiting to be written.
    events: super::events::EventQueue,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The analysis behind "is it right?".
    pub analyzer: Arc<dyn Analyzer>,
    /// Consecutive failures per object, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per object, the resourceVersion this replica's last write to it replaced: a copy from the
    /// store still at that version is known to be stale (see [`Context::known_stale`]).
    superseded: Mutex<HashMap<String, String>>,
    /// Writes only while this replica surely holds the Lease.
    pub fence: Arc<crate::controller::lease::Fence>,
    /// Tells people what changes did.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Watch caches the workloads are read from (none: every read goes to the API server).
    pub cache: Option<Arc<crate::cache::Caches>>,
    /// The controller's own store of ChangeRequests (one per watch scope), once it runs.
    changes: std::sync::OnceLock<Vec<kube::runtime::reflector::Store<DynamicObject>>>,
}

impl Context {
    /// This replica wrote `cr` successfully, replacing the version it had read.
    fn wrote(&self, cr: &ChangeRequest) {
        if let (Some(rv), Ok(mut m)) = (cr.resource_version(), self.superseded.lock()) {
            m.insert(key(cr), rv);
        }
    }

    /// Is this copy of `cr` (from the store) one that this replica's own last write already
    /// replaced? Then the watch has not yet brought that write, and the newer version is on its
    /// way (it triggers a reconcile of its own): deciding from this copy could only repeat an
    /// earlier decision and have its status write refused with 409. Equality only:
    /// resourceVersions are opaque, so any other version is taken as current.
    fn known_stale(&self, cr: &ChangeRequest) -> bool {
        let Ok(mut m) = self.superseded.lock() else {
            return false;
        };
        let k = key(cr);
        match (m.get(&k), cr.resource_version()) {
            (Some(old), Some(rv)) if *old == rv => true,
            (Some(_), _) => {
                m.remove(&k);
                false
            }
            _ => false,
        }
    }

    /// Record a Kubernetes Event about `regarding`: queued and written beside the reconcile
    /// (see [`super::events`]), so a busy API server does not hold the change up; counted in
    /// `graygate_events_total` as recorded or dropped.
    pub fn record_event(&self, ev: Event, regarding: k8s_openapi::api::core::v1::ObjectReference) {
        self.events.push(ev, regarding);
    }

    /// Wait (at most `within`) until the queued Events are written: a replica stopping
    /// gracefully does so before it hands the Lease over.
    pub async fn flush_events(&self, within: Duration) -> bool {
        self.events.flush(within).await
    }

    /// A new context.
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        analyzer: Arc<dyn Analyzer>,
        instance: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "graygate".into(),
            instance: Some(instance),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let fence = Arc::new(crate::controller::lease::Fence::open());
        Context {
            events: super::events::EventQueue::new(
                recorder.clone(),
                metrics.clone(),
                fence.clone(),
            ),
            recorder,
            client,
            notifier: Arc::new(crate::notify::Notifier::disabled(metrics.clone())),
            metrics,
            analyzer,
            failures: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            fence,
            cache: None,
            changes: std::sync::OnceLock::new(),
        }
    }

    /// Read workloads from these watch caches.
    pub fn with_cache(mut self, cache: Arc<crate::cache::Caches>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Send notifications through `notifier`.
    pub fn with_notifier(mut self, notifier: Arc<crate::notify::Notifier>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Fence every write of this context with the Lease (the operator; tests keep an open fence).
    pub fn with_fence(mut self, fence: Arc<crate::controller::lease::Fence>) -> Self {
        self.events = super::events::EventQueue::new(
            self.recorder.clone(),
            self.metrics.clone(),
            fence.clone(),
        );
        self.fence = fence;
        self
    }
}

fn key(cr: &ChangeRequest) -> String {
    format!("{}/{}", cr.namespace().unwrap_or_default(), cr.name_any())
}

/// Is `other` ahead of `me` in line for the same target?
fn is_ahead(me: &ChangeRequest, other: &ChangeRequest) -> bool {
    let phase = other.status.as_ref().map(|s| s.phase).unwrap_or_default();
    if phase.is_active() {
        return true;
    }
    if !matches!(phase, Phase::Pending | Phase::Blocked)
        || other.metadata.deletion_timestamp.is_some()
    {
        return false;
    }
    let created = |c: &ChangeRequest| c.metadata.creation_timestamp.as_ref().map(|t| t.0);
    (created(other), other.name_any()) < (created(me), me.name_any())
}

/// The ChangeRequest that holds, or is first in line for, `me`'s target (pure, for tests).
pub fn find_blocker(me: &ChangeRequest, all: &[ChangeRequest]) -> Option<Blocker> {
    all.iter()
        .filter(|o| o.name_any() != me.name_any() && o.namespace() == me.namespace())
        .filter(|o| o.spec.target == me.spec.target)
        .filter(|o| is_ahead(me, o))
        .map(|o| Blocker {
            name: o.name_any(),
            superseded: o.status.as_ref().map(|s| s.phase) == Some(Phase::Superseding)
                || o.annotations()
                    .get(crate::api::ANN_ABORT)
                    .is_some_and(|a| crate::api::is_supersede(a)),
        })
        .min_by(|a, b| a.name.cmp(&b.name))
}

/// Every ChangeRequest of the namespace that graygate can read. Items are read one by one, so
/// one unreadable object (stored before the schema rejected it, say `bake: ""`) neither fails
/// the list for the others nor counts as ahead in line; it is marked Invalid, naming the error.
async fn readable_changes(ctx: &Context, ns: &str) -> Result<Vec<ChangeRequest>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        ns,
        &ApiResource::erase::<ChangeRequest>(&()),
    );
    let mut out = Vec::new();
    for obj in api.list(&Default::default()).await?.items {
        let name = obj.name_any();
        match read_change(&obj) {
            Ok(cr) => out.push(cr),
            Err(e) => mark_unreadable(ctx, &api, &obj, &name, &e.to_string()).await,
        }
    }
    Ok(out)
}

/// How many other ChangeRequests of `me`'s namespace the controller's store holds that are, or
/// may be, for the same target (an unreadable one may be); `None` before the store is there.
///
/// Zero lets a waiting change skip the fresh list of its namespace that deciding its place in
/// line otherwise takes (1,000 such lists at once were the slowest calls of the scale run).
/// That is safe because the store is filled from one watch, in the order the API server stored
/// the objects, and this reconcile was started by `me` arriving in it: every ChangeRequest
/// created before `me` is already there, in its current or an earlier phase — and an earlier
/// phase (Pending, Blocked, active) only ever makes it count as ahead. One created after `me`
/// comes later in line unless it carries the same creation second and a smaller name; a fresh
/// list would miss it as well when it is created a moment after the list, so in either case
/// it is the later one that waits once it sees `me` started.
fn rivals_in_store(ctx: &Context, me: &ChangeRequest) -> Option<usize> {
    let stores = ctx.changes.get()?;
    let ns = me.namespace();
    let mut n = 0;
    for store in stores {
        for obj in store.state() {
            if obj.namespace() != ns || obj.name_any() == me.name_any() {
                continue;
            }
            match read_change(&obj) {
                Ok(other) if other.spec.target != me.spec.target => {}
                _ => n += 1,
            }
        }
    }
    Some(n)
}

/// Read a ChangeRequest watched or listed as plain JSON.
fn read_change(obj: &DynamicObject) -> Result<ChangeRequest, serde_json::Error> {
    serde_json::to_value(obj).and_then(serde_json::from_value)
}

async fn mark_unreadable(
    ctx: &Context,
    api: &Api<DynamicObject>,
    obj: &DynamicObject,
    name: &str,
    error: &str,
) {
    let message = format!(
        "graygate cannot read this ChangeRequest: {error}; fix the spec (kubectl edit) or delete it"
    );
    let already = obj.data.pointer("/status/phase").and_then(|p| p.as_str()) == Some("Invalid")
        && obj.data.pointer("/status/message").and_then(|m| m.as_str()) == Some(message.as_str());
    if already || !ctx.fence.allows() {
        return;
    }
    tracing::warn!(changerequest = %format!("{}/{name}", obj.namespace().unwrap_or_default()), error, "unreadable ChangeRequest marked Invalid");
    let patch = json!({"status": {"phase": "Invalid", "reason": "Unreadable", "message": message}});
    if let Err(e) = api
        .patch_status(
            name,
            &crate::api::patch_params(crate::api::MANAGER_CONTROLLER),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(changerequest = name, error = %e, "could not mark an unreadable ChangeRequest Invalid");
    }
}

fn publish(ctx: &Context, cr: &ChangeRequest, note: &state::Note) {
    if !ctx.fence.allows() {
        return;
    }
    let ev = Event {
        type_: if note.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: note.reason.into(),
        note: Some(note.message.clone()),
        // kube's Recorder folds Events with the same action and reason into one series; the
        // batch number keeps "batch 2 passed" and "batch 3 passed" apart.
        action: format!("{}Batch{}", note.reason, note.batch),
        secondary: None,
    };
    ctx.record_event(ev, cr.object_ref(&()));
}

/// Tell the configured sinks of an event people want to hear of (only the leader, as for Events).
fn notify(ctx: &Context, cr: &ChangeRequest, status: &ChangeRequestStatus, note: &state::Note) {
    let Some(event) = crate::notify::Event::from_reason(note.reason) else {
        return;
    };
    if !ctx.fence.allows() {
        return;
    }
    let ns = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    ctx.notifier.notify(crate::notify::Message {
        event,
        url: ctx.notifier.link(&ns, &name),
        namespace: ns,
        target: format!("{:?}/{}", cr.spec.target.kind, cr.spec.target.name),
        phase: status.phase.as_str().into(),
        batch: note.batch,
        // A stop's Event says what graygate did; status says why: the one-line verdict.
        summary: match event {
            crate::notify::Event::RolledBack | crate::notify::Event::Paused => status
                .message
                .clone()
                .unwrap_or_else(|| note.message.clone()),
            _ => note.message.clone(),
        },
        time: jiff::Timestamp::now().to_string(),
        run: status
            .started_at
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        name,
    });
}

/// Write the status computed from the observation of `observed`: the resourceVersion makes it a
/// precondition, so a status computed from a stale observation (a cache that lags, a replica
/// that woke from a freeze after another took over) is refused with 409 instead of overwriting
/// newer progress.
async fn write_status(
    api: &Api<ChangeRequest>,
    observed: &ChangeRequest,
    status: &ChangeRequestStatus,
) -> Result<ChangeRequest, Error> {
    let body = json!({
        "apiVersion": "graygate.io/v1alpha1",
        "kind": "ChangeRequest",
        "metadata": {"name": observed.name_any(), "resourceVersion": observed.resource_version()},
        "status": status,
    });
    let name = observed.name_any();
    Ok(api
        .patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?)
}

async fn set_finalizer(
    api: &Api<ChangeRequest>,
    cr: &ChangeRequest,
    present: bool,
) -> Result<(), Error> {
    let mut finalizers: Vec<String> = cr.finalizers().to_vec();
    let has = finalizers.iter().any(|f| f == FINALIZER);
    if has == present {
        return Ok(());
    }
    if present {
        finalizers.push(FINALIZER.into());
    } else {
        finalizers.retain(|f| f != FINALIZER);
    }
    // The resourceVersion makes this a guarded update: a concurrent change is retried, not clobbered.
    let patch =
        json!({"metadata": {"finalizers": finalizers, "resourceVersion": cr.resource_version()}});
    api.patch(
        &cr.name_any(),
        &crate::api::patch_params(crate::api::MANAGER_CONTROLLER),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// One reconcile of one ChangeRequest.
pub async fn reconcile(cr: Arc<ChangeRequest>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = Instant::now();
    let result = match reconcile_inner(&cr, &ctx).await {
        // A write to an object deleted meanwhile (its finalizer was just removed, so the queued
        // run saw a stale copy): nothing failed and nothing is left to do.
        Err(Error::Kube(kube::Error::Api(e))) if e.code == 404 && gone(&cr, &ctx).await => {
            tracing::debug!(changerequest = %key(&cr), "the ChangeRequest is gone; nothing left to do");
            Ok(Requeue::await_change())
        }
        r => r,
    };
    ctx.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabel {
            result: label.into(),
        })
        .inc();
    if result.is_ok()
        && let Ok(mut f) = ctx.failures.lock()
    {
        f.remove(&key(&cr));
    }
    result
}

/// Whether this ChangeRequest (this uid) no longer exists.
async fn gone(cr: &ChangeRequest, ctx: &Context) -> bool {
    let Some(ns) = cr.namespace() else {
        return false;
    };
    let api: Api<ChangeRequest> = Api::namespaced(ctx.client.clone(), &ns);
    match api.get_metadata_opt(&cr.name_any()).await {
        Ok(None) => true,
        Ok(Some(m)) => m.metadata.uid != cr.metadata.uid,
        Err(_) => false,
    }
}

async fn reconcile_inner(cr: &ChangeRequest, ctx: &Context) -> Result<Requeue, Error> {
    let ns = cr.namespace().ok_or(Error::NoNamespace)?;
    let name = cr.name_any();
    let api: Api<ChangeRequest> = Api::namespaced(ctx.client.clone(), &ns);
    if ctx.known_stale(cr) {
        tracing::debug!(changerequest = %key(cr), "the store has not yet seen this replica's last write; waiting for the watch");
        return Ok(Requeue::await_change());
    }
    let deleting = cr.metadata.deletion_timestamp.is_some();
    if !deleting && !cr.finalizers().iter().any(|f| f == FINALIZER) {
        ctx.fence.check()?;
        set_finalizer(&api, cr, true).await?;
        ctx.wrote(cr);
        // The update comes back through the watch.
        return Ok(Requeue::await_change());
    }
    let status = cr.status.clone().unwrap_or_default();
    let sctx = Ctx {
        client: &ctx.client,
        fence: &ctx.fence,
        ns: &ns,
        cr,
        cache: ctx.cache.as_deref(),
        confirm_absence: false,
    };
    let step = current_step(&cr.spec, &status);
    let workload = rollout::observe(&sctx, step.as_ref()).await?;
    let blocker = if matches!(status.phase, Phase::Pending | Phase::Blocked) && !deleting {
        if rivals_in_store(ctx, cr) == Some(0) {
            None
        } else {
            find_blocker(cr, &readable_changes(ctx, &ns).await?)
        }
    } else {
        None
    };
    let now = jiff::Timestamp::now();
    let mut judged = None;
    let judgement = match (judgement_due(&cr.spec, &status, now), &cr.spec.analysis) {
        (Some(window), Some(analysis)) if !deleting && workload.is_some() => {
            let t0 = Instant::now();
            let groups = rollout::groups(&sctx, step == Some(state::Step::Promote)).await?;
            judged = Some(rollout::judged_window(&window, &groups));
            // The workload's released changes, read fresh from the cluster for every judgement.
            let history = if history::keep(cr) > 0 {
                history::collect(cr, &readable_changes(ctx, &ns).await?)
            } else {
                None
            };
            let j = ctx
                .analyzer
                .judge(JudgeRequest {
                    cr,
                    analysis,
                    window,
                    groups,
                    change_started: status.started_at.as_ref().map(|t| t.0).unwrap_or(now),
                    history,
                })
                .await;
            ctx.metrics
                .analysis_duration
                .observe(t0.elapsed().as_secs_f64());
            if matches!(j, Judgement::Error(_)) {
                ctx.metrics.analysis_errors.inc();
            }
            Some(j)
        }
        _ => None,
    };
    let obs = Observation {
        now,
        generation: cr.metadata.generation.unwrap_or(0),
        signals: Signals::from_annotations(cr.annotations()),
        deleting,
        blocker,
        workload,
        judgement,
        judged,
        refused: None,
    };
    let d = decide(&name, &cr.spec, &status, &obs);

    // Record first: a crash after this point resumes from the recorded step, and every action is idempotent.
    let mut recorded = None;
    if d.status != status {
        ctx.fence.check()?;
        match write_status(&api, cr, &d.status).await {
            Err(Error::Kube(kube::Error::Api(e))) if e.code == 409 => {
                // The object changed since this observation: the watch brings the newer one,
                // and the decision is made again from it. Nothing was acted on.
                tracing::debug!(changerequest = %key(cr), "status observation was stale; waiting for the watch");
                return Ok(Requeue::await_change());
            }
            r => recorded = Some(r?),
        }
        ctx.wrote(cr);
        record_transition(ctx, &status, &d.status);
    }
    for note in &d.notes {
        tell(ctx, cr, &d.status, note);
    }
    // Act on the recorded status, so strategies see the same plan the decision made.
    let mut acted = cr.clone();
    acted.status = Some(d.status.clone());
    let actx = Ctx {
        client: &ctx.client,
        fence: &ctx.fence,
        ns: &ns,
        cr: &acted,
        cache: ctx.cache.as_deref(),
        confirm_absence: false,
    };
    for action in &d.actions {
        match action {
            Action::Ensure(step) => match rollout::ensure(&actx, step).await {
                Err(Error::NotTaken(why)) => {
                    // The write was undone as it was made: decide again, from what was just
                    // recorded, knowing that (the change pauses for a person).
                    let written = recorded.clone().unwrap_or_else(|| cr.clone());
                    let again = decide(
                        &name,
                        &cr.spec,
                        &d.status,
                        &Observation {
                            refused: Some(why.clone()),
                            ..obs.clone()
                        },
                    );
                    tracing::warn!(changerequest = %key(cr), category = "WriteNotTaken", "{why}");
                    ctx.metrics
                        .errors
                        .get_or_create(&CategoryLabel {
                            category: "WriteNotTaken".into(),
                        })
                        .inc();
                    if again.status != d.status {
                        ctx.fence.check()?;
                        write_status(&api, &written, &again.status).await?;
                        ctx.wrote(&written);
                        record_transition(ctx, &d.status, &again.status);
                    }
                    for note in &again.notes {
                        tell(ctx, cr, &again.status, note);
                    }
                    record_phase(ctx, &ns, &name, &again.status, now);
                    return Ok(Requeue::await_change());
                }
                r => r?,
            },
            Action::Orphan => rollout::orphan(&actx).await?,
            Action::RemoveFinalizer => {
                let fresh = api.get(&name).await?;
                ctx.fence.check()?;
                set_finalizer(&api, &fresh, false).await?;
                ctx.metrics.set_phase(&ns, &name, None);
                ctx.metrics.set_outcome(&ns, &name, None);
                return Ok(Requeue::await_change());
            }
        }
    }
    record_phase(ctx, &ns, &name, &d.status, now);
    Ok(match d.requeue {
        Some(after) => Requeue::requeue(after),
        None => Requeue::await_change(),
    })
}

/// Count a recorded status change in the metrics: the phase entered, each batch verdict reached.
fn record_transition(ctx: &Context, status: &ChangeRequestStatus, new: &ChangeRequestStatus) {
    if new.phase != status.phase {
        ctx.metrics.transition(new.phase);
    }
    for (before, after) in status
        .batches
        .iter()
        .map(Some)
        .chain(std::iter::repeat(None))
        .zip(new.batches.iter())
    {
        if let Some(v) = after.verdict
            && before.and_then(|b| b.verdict) != Some(v)
        {
            ctx.metrics
                .batches
                .get_or_create(&VerdictLabel {
                    verdict: v.as_str().into(),
                })
                .inc();
        }
    }
}

/// The phase and outcome gauges of one ChangeRequest, from the status it now has.
fn record_phase(
    ctx: &Context,
    ns: &str,
    name: &str,
    st: &ChangeRequestStatus,
    now: jiff::Timestamp,
) {
    let since = st
        .phase_since
        .as_ref()
        .or(st.started_at.as_ref())
        .map_or_else(|| now.as_second(), |t| t.0.as_second());
    ctx.metrics.set_phase(ns, name, Some((st.phase, since)));
    ctx.metrics.set_outcome(
        ns,
        name,
        st.interception().map(|o| (o, st.feedback_label())),
    );
}

/// Log a decision's note, record it as an Event and send it to the notification sinks.
fn tell(ctx: &Context, cr: &ChangeRequest, status: &ChangeRequestStatus, note: &state::Note) {
    if note.warning {
        tracing::warn!(changerequest = %key(cr), reason = note.reason, "{}", note.message);
    } else {
        tracing::info!(changerequest = %key(cr), reason = note.reason, "{}", note.message);
    }
    publish(ctx, cr, note);
    notify(ctx, cr, status, note);
}

/// Requeue with a per-object exponential backoff (1s, 2s, 4s … 5m).
fn retry_after_error(object: &str, err: &Error, ctx: &Context) -> Requeue {
    ctx.metrics
        .errors
        .get_or_create(&CategoryLabel {
            category: err.category().into(),
        })
        .inc();
    if matches!(err, Error::NotLeader) {
        // Not this object's fault: the Lease is renewed within a second or this process steps
        // down; no backoff builds up for the object.
        tracing::debug!(changerequest = %object, "write refused while the Lease is not surely held");
        return Requeue::requeue(Duration::from_secs(1));
    }
    if matches!(err, Error::Kube(kube::Error::Api(e)) if e.code == 409) {
        // A write made from a cached read met a newer version of the object (its
        // resourceVersion precondition failed): the watch brings that version within moments,
        // and the next reconcile decides again from it. Counted, not a failure of the object.
        tracing::debug!(changerequest = %object, error = %err, "write refused: the object changed since it was read; reading again");
        return Requeue::requeue(Duration::from_millis(500));
    }
    let n = match ctx.failures.lock() {
        Ok(mut f) => {
            let n = f.entry(object.to_string()).or_insert(0);
            *n += 1;
            *n
        }
        Err(_) => 1,
    };
    let delay =
        Duration::from_secs(1u64 << n.min(8).saturating_sub(1)).min(Duration::from_secs(300));
    tracing::warn!(changerequest = %object, error = %err, category = err.category(), retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

fn dynamic_key(obj: &DynamicObject) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}

/// The controller watches ChangeRequests as plain JSON and reads each one here, so that one
/// object graygate cannot read (stored under an older, looser schema) fails only itself: it is
/// marked Invalid, naming the error, and never breaks the watch of the others.
async fn reconcile_dynamic(obj: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    match read_change(&obj) {
        Ok(cr) => reconcile(Arc::new(cr), ctx).await,
        Err(e) => {
            let ns = obj.namespace().ok_or(Error::NoNamespace)?;
            let api: Api<DynamicObject> = Api::namespaced_with(
                ctx.client.clone(),
                &ns,
                &ApiResource::erase::<ChangeRequest>(&()),
            );
            mark_unreadable(&ctx, &api, &obj, &obj.name_any(), &e.to_string()).await;
            Ok(Requeue::await_change())
        }
    }
}

fn error_policy_dynamic(obj: Arc<DynamicObject>, err: &Error, ctx: Arc<Context>) -> Requeue {
    retry_after_error(&dynamic_key(&obj), err, &ctx)
}

/// Run the controller until `shutdown` resolves: over all namespaces when `namespaces` is empty,
/// else one controller per listed namespace (so namespaced RBAC suffices). `synced` is set once
/// every watch has listed.
pub async fn run_controller(
    ctx: Arc<Context>,
    namespaces: Vec<String>,
    workers: u16,
    synced: tokio::sync::watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let client = ctx.client.clone();
    let ar = ApiResource::erase::<ChangeRequest>(&());
    let scopes: Vec<(Api<DynamicObject>, Api<Deployment>)> = if namespaces.is_empty() {
        vec![(Api::all_with(client.clone(), &ar), Api::all(client.clone()))]
    } else {
        namespaces
            .iter()
            .map(|ns| {
                (
                    Api::namespaced_with(client.clone(), ns, &ar),
                    Api::namespaced(client.clone(), ns),
                )
            })
            .collect()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stores = Vec::new();
    let mut runs = Vec::new();
    for (crs, deployments) in scopes {
        let mut stop = stop_rx.clone();
        let controller = Controller::new_with(crs, watcher::Config::default(), ar.clone())
            .owns(
                deployments,
                watcher::Config::default().labels("app.kubernetes.io/managed-by=graygate"),
            )
            .with_config(kube::runtime::controller::Config::default().concurrency(workers))
            .graceful_shutdown_on(async move {
                let _ = stop.wait_for(|s| *s).await;
            });
        stores.push(controller.store());
        runs.push(
            controller
                .run(reconcile_dynamic, error_policy_dynamic, ctx.clone())
                .for_each(|res| async move {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "controller event");
                    }
                }),
        );
    }
    let cache = ctx.cache.clone();
    let own = ctx.clone();
    tokio::spawn(async move {
        // kube's readiness signal wakes only its most recent waiter (a oneshot receiver shared
        // through a mutex), and the controller's own runner waits on it too; polling again
        // after a timeout re-registers this task, and sees the state once the runner set it.
        if let Some(cache) = &cache {
            while !cache.ready() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        for store in &stores {
            loop {
                match tokio::time::timeout(Duration::from_millis(500), store.wait_until_ready())
                    .await
                {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) => return,
                    Err(_) => continue,
                }
            }
        }
        // Only a store that has listed once can say that no other change waits for a target.
        let _ = own.changes.set(stores);
        tracing::info!("watches synced; ready");
        let _ = synced.send(true);
    });
    futures::future::join_all(runs).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChangeRequestSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cr(name: &str, target: &str, phase: Phase, created: i64) -> ChangeRequest {
        let spec: ChangeRequestSpec = serde_yaml::from_str(&format!(
            "target: {{kind: Deployment, name: {target}}}\nimages: {{a: b}}\nbatches: [{{percent: 100}}]"
        ))
        .unwrap();
        let mut c = ChangeRequest::new(name, spec);
        c.metadata.namespace = Some("ns".into());
        c.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        c.status = Some(ChangeRequestStatus {
            phase,
            ..Default::default()
        });
        c
    }

    #[test]
    fn an_active_change_on_the_same_target_blocks() {
        let me = cr("b", "web", Phase::Pending, 20);
        let all = vec![
            cr("a", "web", Phase::Progressing, 30),
            me.clone(),
            cr("c", "api", Phase::Progressing, 1),
        ];
        assert_eq!(find_blocker(&me, &all), Some("a".into()));
    }

    #[test]
    fn the_older_pending_change_goes_first() {
        let older = cr("a", "web", Phase::Pending, 10);
        let younger = cr("b", "web", Phase::Pending, 20);
        let all = vec![older.clone(), younger.clone()];
        assert_eq!(find_blocker(&younger, &all), Some("a".into()));
        assert_eq!(find_blocker(&older, &all), None);
    }

    #[test]
    fn a_change_being_superseded_is_a_routine_wait() {
        let me = cr("b", "web", Phase::Pending, 20);
        let mut old = cr("a", "web", Phase::Progressing, 10);
        old.metadata.annotations = Some(
            [(
                crate::api::ANN_ABORT.to_string(),
                format!("{} b", crate::api::SUPERSEDED_BY),
            )]
            .into(),
        );
        let got = find_blocker(&me, &[old.clone(), me.clone()]).unwrap();
        assert!(got.superseded && got.name == "a", "{got:?}");
        let going = cr("a", "web", Phase::Superseding, 10);
        assert!(find_blocker(&me, &[going, me.clone()]).unwrap().superseded);
        old.metadata.annotations = None;
        assert!(!find_blocker(&me, &[old, me.clone()]).unwrap().superseded);
    }

    #[test]
    fn finished_changes_do_not_block() {
        let me = cr("b", "web", Phase::Pending, 20);
        let all = vec![
            cr("a", "web", Phase::Succeeded, 10),
            cr("z", "web", Phase::RolledBack, 1),
            cr("i", "web", Phase::Invalid, 1),
        ];
        assert_eq!(find_blocker(&me, &all), None);
    }

    #[tokio::test]
    async fn the_store_decides_only_when_no_other_change_can_be_for_the_target() {
        use kube::runtime::watcher;
        let client =
            Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
        let ctx = Context::new(
            client,
            Arc::new(Metrics::default()),
            Arc::new(crate::analysis::prometheus::PrometheusAnalyzer::new(
                None, None,
            )),
            "test".into(),
        );
        let me = cr("b", "web", Phase::Pending, 20);
        assert_eq!(rivals_in_store(&ctx, &me), None, "no store yet: list");
        let ar = ApiResource::erase::<ChangeRequest>(&());
        let mut writer = kube::runtime::reflector::store::Writer::new(ar);
        let store = writer.as_reader();
        let dynamic = |c: &ChangeRequest| -> DynamicObject {
            let mut v = serde_json::to_value(c).unwrap();
            v["apiVersion"] = "graygate.io/v1alpha1".into();
            v["kind"] = "ChangeRequest".into();
            serde_json::from_value(v).unwrap()
        };
        let mut other_ns = cr("x", "web", Phase::Progressing, 1);
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut objects = vec![
            dynamic(&me),
            dynamic(&cr("c", "api", Phase::Progressing, 1)),
            dynamic(&other_ns),
        ];
        writer.apply_watcher_event(&watcher::Event::Init);
        for o in &objects {
            writer.apply_watcher_event(&watcher::Event::InitApply(o.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let _ = ctx.changes.set(vec![store]);
        assert_eq!(
            rivals_in_store(&ctx, &me),
            Some(0),
            "another target, another namespace"
        );
        // A change for the same target, even a finished one: the fresh list decides.
        objects.push(dynamic(&cr("a", "web", Phase::Succeeded, 10)));
        writer.apply_watcher_event(&watcher::Event::Apply(objects[3].clone()));
        assert_eq!(rivals_in_store(&ctx, &me), Some(1));
        // One graygate cannot read may be for any target.
        let mut unreadable = dynamic(&cr("u", "api", Phase::Pending, 5));
        unreadable.data["spec"]["batches"] = "not a list".into();
        writer.apply_watcher_event(&watcher::Event::Apply(unreadable));
        assert_eq!(rivals_in_store(&ctx, &me), Some(2));
    }
}
