//! Workload strategies and the pure pieces they share.

pub mod baseline;
pub mod config;
pub mod deployment;
pub mod guarded;
pub mod plan;
pub mod statefulset;
pub mod template;
pub mod traffic;

use crate::api::{ChangeRequest, LABEL_CHANGE, TargetKind};
use crate::workload::{Step, WorkloadObs};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client};
use serde_json::Value;
use std::collections::BTreeMap;

/// Errors from talking to the cluster about a workload.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a call.
    #[error("kubernetes API: {0}")]
    Kube(kube::Error),
    /// An object did not have the expected shape.
    #[error("unexpected object shape: {0}")]
    Shape(#[from] serde_json::Error),
    /// The ChangeRequest has no namespace (it is namespaced, so the API server broke a promise).
    #[error("the ChangeRequest has no namespace")]
    NoNamespace,
    /// The change cannot be applied to the workload any more.
    #[error("{0}")]
    Spec(String),
    /// This replica may no longer hold the Lease: it must not write.
    #[error("not the leader (the Lease may have expired): write refused")]
    NotLeader,
    /// A write was accepted but the object came back without its effect (an admission webhook
    /// undid it): sending it again cannot help.
    #[error("{0}")]
    NotTaken(String),
}

impl From<kube::Error> for Error {
    /// A write the fenced client refused is "not the leader", whatever call it was.
    fn from(e: kube::Error) -> Error {
        if crate::fence::is_not_leader(&e) {
            Error::NotLeader
        } else {
            Error::Kube(e)
        }
    }
}

impl From<crate::fence::NotLeader> for Error {
    fn from(_: crate::fence::NotLeader) -> Error {
        Error::NotLeader
    }
}

impl Error {
    /// A stable category, used as a metric label and Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(e)) if e.code == 409 => "Conflict",
            Error::Kube(kube::Error::Api(e)) if e.code == 429 => "Throttled",
            Error::Kube(kube::Error::Api(e)) if e.code >= 500 => "ApiServerError",
            Error::Kube(kube::Error::Api(_)) => "ApiRejected",
            Error::Kube(kube::Error::SerdeError(_)) => "UnexpectedObject",
            Error::Kube(_) => "ApiUnreachable",
            Error::Shape(_) => "UnexpectedObject",
            Error::NoNamespace => "NoNamespace",
            Error::Spec(_) => "InvalidSpec",
            Error::NotLeader => "NotLeader",
            Error::NotTaken(_) => "WriteNotTaken",
        }
    }
}

/// Check the object a write to a workload came back as: an admission webhook that does not
/// trust graygate's identity holds graygate's own writes as it holds anyone's (a guarded
/// Deployment paused again, a StatefulSet's partition raised again, the `held` annotation put
/// back), and the API server still answers 200. `releasing`: the write was to lift graygate's
/// hold, so the hold must be gone. Sent again, the write would be undone again, so this is an
/// error that pauses the change (see `Error::NotTaken`), never a wait.
pub fn check_not_held<K: kube::Resource<DynamicType = ()>>(
    what: &str,
    before: &K,
    after: &K,
    releasing: bool,
) -> Result<(), Error> {
    use kube::ResourceExt;
    let held_after = after.annotations().get(crate::api::ANN_HELD);
    let held_before = before.annotations().get(crate::api::ANN_HELD);
    if held_after.is_some() && (releasing || held_after != held_before) {
        return Err(Error::NotTaken(format!(
            "graygate's own {what} of {}/{} was held by the admission webhook: its identity is not trusted (a replica serving the webhook does not know graygate's user name, or --trusted-user lacks it; each replica's log and graygate_identity_known say so); fix it, then resume the change",
            K::kind(&()),
            after.meta().name.as_deref().unwrap_or_default(),
        )));
    }
    Ok(())
}

/// What a strategy needs to act on one ChangeRequest.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    /// Kubernetes client.
    pub client: &'a Client,
    /// The write fence: checked before every write.
    pub fence: &'a crate::fence::Fence,
    /// The ChangeRequest's namespace.
    pub ns: &'a str,
    /// The ChangeRequest, with its recorded status.
    pub cr: &'a ChangeRequest,
    /// Watch caches to read workloads from; without them every read goes to the API server.
    pub cache: Option<&'a crate::cache::Caches>,
    /// An object the cache does not hold is looked up on the API server before it counts as
    /// absent (set while confirming that a change has ended).
    pub confirm_absence: bool,
}

impl Ctx<'_> {
    /// `name` in the change's namespace as the watch cache holds it: `None` when the cache has
    /// listed and does not hold it (a canary not created yet, or deleted). Read from the API
    /// server when there is no cache or it has not listed yet. Writes made from the object carry
    /// its version (`cache::fenced_*`); a step that is reached because something is absent is
    /// confirmed by looking up what the cache lacks (`observe`).
    pub async fn read<K: crate::cache::Cached>(&self, name: &str) -> Result<Option<K>, Error> {
        if let Some(cache) = self.cache.filter(|c| c.listed::<K>(self.ns)) {
            if let Some(o) = cache.get::<K>(self.ns, name) {
                return Ok(Some((*o).clone()));
            }
            if !self.confirm_absence {
                return Ok(None);
            }
        }
        let api: Api<K> = Api::namespaced(self.client.clone(), self.ns);
        Ok(api.get_opt(name).await?)
    }

    /// `name` from the watch cache, or from the API server when the cache does not hold it: for
    /// objects whose absence would end the change (its target), which a cache that has not seen
    /// them yet must not decide.
    pub async fn read_existing<K: crate::cache::Cached>(
        &self,
        name: &str,
    ) -> Result<Option<K>, Error> {
        Ctx {
            confirm_absence: true,
            ..*self
        }
        .read(name)
        .await
    }

    /// The objects of the change's namespace that carry every label of `labels` (see
    /// `list_labelled`).
    pub async fn list<K: crate::cache::Cached>(
        &self,
        labels: &std::collections::BTreeMap<String, String>,
    ) -> Result<Vec<K>, Error> {
        list_labelled(self.client, self.cache, self.ns, labels).await
    }
}

/// The objects of `ns` that carry every label of `labels`: from the watch cache once it has
/// listed, else listed from the API server.
pub async fn list_labelled<K: crate::cache::Cached>(
    client: &Client,
    cache: Option<&crate::cache::Caches>,
    ns: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<K>, Error> {
    if let Some(all) = cache.and_then(|c| c.list::<K>(ns)) {
        return Ok(all
            .into_iter()
            .filter(|o| {
                labels
                    .iter()
                    .all(|(k, v)| o.meta().labels.as_ref().and_then(|l| l.get(k)) == Some(v))
            })
            .map(|o| (*o).clone())
            .collect());
    }
    let sel: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&sel.join(",")))
        .await?
        .items)
}

/// A pod template as plain JSON (what graygate compares, hashes and records).
pub fn template_of(t: &Option<&PodTemplateSpec>) -> Result<Value, Error> {
    Ok(match t {
        Some(t) => serde_json::to_value(t)?,
        None => Value::Object(Default::default()),
    })
}

/// Two templates are the same rollout target when they differ at most in graygate's own label.
pub fn same_template(a: &Value, b: &Value) -> bool {
    fn without_label(v: &Value) -> Value {
        let mut v = v.clone();
        if let Some(Value::Object(l)) = v.pointer_mut("/metadata/labels") {
            l.remove(LABEL_CHANGE);
        }
        strip_empty(&mut v);
        v
    }
    without_label(a) == without_label(b)
}

/// The hash graygate names a pod template by (webhook annotations, generated ChangeRequests,
/// guarded canaries): over the template without graygate's label, the Deployment controller's
/// `pod-template-hash` label, nulls and empty maps, so every path to the same template agrees.
pub fn template_hash(template: &Value) -> String {
    let mut v = template.clone();
    if let Some(Value::Object(l)) = v.pointer_mut("/metadata/labels") {
        l.remove(LABEL_CHANGE);
        l.remove("pod-template-hash");
    }
    strip_empty(&mut v);
    crate::util::short_hash(&v)
}

// API servers drop empty maps and nulls on the way in; compare without them.
fn strip_empty(v: &mut Value) {
    if let Value::Object(m) = v {
        for x in m.values_mut() {
            strip_empty(x);
        }
        m.retain(|_, x| !(x.is_null() || x.as_object().is_some_and(|o| o.is_empty())));
    } else if let Value::Array(a) = v {
        a.iter_mut().for_each(strip_empty);
    }
}

/// Delete a canary object (Deployment or ReplicaSet) in the background; gone already is fine.
pub async fn delete_in_background<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let dp = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Observe the target against `step`.
pub async fn observe(ctx: &Ctx<'_>, step: Option<&Step>) -> Result<Option<WorkloadObs>, Error> {
    let mut obs = match ctx.cr.spec.target.kind {
        TargetKind::Deployment if ctx.cr.spec.policy.is_some() => {
            guarded::observe(ctx, step).await?
        }
        TargetKind::Deployment => deployment::observe(ctx, step).await?,
        TargetKind::StatefulSet => statefulset::observe(ctx, step).await?,
    };
    // A config change that has not started: every object it names must exist.
    if let Some(o) = obs.as_mut()
        && !ctx.cr.spec.config.is_empty()
        && step.is_none()
    {
        o.config_missing = config::missing(ctx).await?;
    }
    // A traffic-weighted change: its route and Services before it starts; weights someone
    // else set, and whether the route carries the step's, while it runs.
    if let Some(o) = obs.as_mut() {
        traffic::observe(ctx, step, o).await?;
    }
    // A batch with a fresh baseline bakes once the baseline is ready too; the change ends
    // once it is gone.
    if let Some(o) = obs.as_mut()
        && o.step_reached
        && step.is_some()
    {
        o.step_reached = baseline::reached(ctx, step).await?;
    }
    // Promotion and rollback are reached when the canary (and baseline) are gone and the
    // target has settled: the end of the change. A cache may not have seen a canary created a
    // moment ago, so what is absent from it is looked up on the API server before that end
    // counts.
    // Only the Deployment strategies read from the caches; a StatefulSet's observation was
    // read from the API server already.
    if ctx.cache.is_some()
        && !ctx.confirm_absence
        && ctx.cr.spec.target.kind == TargetKind::Deployment
        && matches!(step, Some(Step::Promote | Step::Restore))
        && obs.as_ref().is_some_and(|o| o.step_reached)
    {
        let confirm = Ctx {
            confirm_absence: true,
            ..*ctx
        };
        return Box::pin(observe(&confirm, step)).await;
    }
    Ok(obs)
}

/// The HorizontalPodAutoscaler whose scale target is this Deployment, as `Kind/name`.
pub async fn autoscaler(ctx: &Ctx<'_>) -> Result<Option<String>, Error> {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    if ctx.cr.spec.target.kind != TargetKind::Deployment {
        return Ok(None);
    }
    Ok(ctx
        .list::<HorizontalPodAutoscaler>(&Default::default())
        .await?
        .into_iter()
        .find(|h| {
            h.spec.as_ref().is_some_and(|s| {
                s.scale_target_ref.kind == "Deployment"
                    && s.scale_target_ref.name == ctx.cr.spec.target.name
            })
        })
        .map(|h| {
            format!(
                "HorizontalPodAutoscaler/{}",
                h.metadata.name.unwrap_or_default()
            )
        }))
}

/// Bring the workload to `step`, idempotently.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    // The end of a traffic-weighted change moves the requests before any pod: off the canary
    // before its pods go (a rollback), onto every pod before the target changes (a promotion).
    // A batch moves them once its pods are there.
    if matches!(step, Step::Promote | Step::Restore) {
        traffic::ensure(ctx, step).await?;
        // A rollback's canary pods go once the gateway has had the time to stop sending them
        // requests (the next reconcile comes within seconds).
        if *step == Step::Restore && !traffic::settled(ctx).await? {
            return Ok(());
        }
    }
    match ctx.cr.spec.target.kind {
        TargetKind::Deployment if ctx.cr.spec.policy.is_some() => {
            guarded::ensure(ctx, step).await?
        }
        TargetKind::Deployment => deployment::ensure(ctx, step).await?,
        TargetKind::StatefulSet => statefulset::ensure(ctx, step).await?,
    }
    if matches!(step, Step::Batch { .. }) {
        traffic::ensure(ctx, step).await?;
    }
    baseline::ensure(ctx, step).await
}

/// Detach graygate's objects so they outlive the ChangeRequest (deletionPolicy keep).
pub async fn orphan(ctx: &Ctx<'_>) -> Result<(), Error> {
    baseline::remove(ctx).await?;
    match ctx.cr.spec.target.kind {
        TargetKind::Deployment => deployment::orphan(ctx).await,
        TargetKind::StatefulSet => Ok(()),
    }
}

/// A pod in a comparison group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPod {
    /// Pod name.
    pub name: String,
    /// Pod labels.
    pub labels: BTreeMap<String, String>,
    /// When the pod became ready, if it did.
    pub ready_since: Option<jiff::Timestamp>,
}

/// The change and control pods of the current batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Groups {
    /// Pods on the new template.
    pub change: Vec<GroupPod>,
    /// The reference: pods of the same workload still on the old template, or, with a fresh
    /// baseline, the baseline's pods (old template, as young as the canary).
    pub control: Vec<GroupPod>,
    /// With a fresh baseline: the long-running pods still on the old template (shown beside it).
    pub running: Vec<GroupPod>,
}

/// What a judgement over `window` of `groups` looked at, for status (pod names bounded).
pub fn judged_window(
    window: &crate::workload::JudgeWindow,
    groups: &Groups,
) -> crate::api::JudgedWindow {
    use crate::api::JudgedWindow;
    let mut omitted = 0;
    let mut names = |pods: &[GroupPod]| {
        omitted += pods.len().saturating_sub(JudgedWindow::MAX_PODS);
        pods.iter()
            .take(JudgedWindow::MAX_PODS)
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    JudgedWindow {
        from: Time(window.from),
        to: Time(window.to),
        change: names(&groups.change),
        control: names(&groups.control),
        running: names(&groups.running),
        pods_omitted: u32::try_from(omitted).unwrap_or(u32::MAX),
    }
}

/// List the change and control pods from the selectors recorded in status. Once promoted
/// (`promoted`), every pod of the target runs the new template: they are the change group and
/// no control group is left (the analysis falls back to the background).
pub async fn groups(ctx: &Ctx<'_>, promoted: bool) -> Result<Groups, Error> {
    let status = ctx.cr.status.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let list = |sel: Option<String>| {
        let api = api.clone();
        async move {
            let Some(sel) = sel else {
                return Ok::<_, Error>(Vec::new());
            };
            let pods = api.list(&ListParams::default().labels(&sel)).await?;
            Ok(pods
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| GroupPod {
                    name: p.metadata.name.clone().unwrap_or_default(),
                    labels: p.metadata.labels.clone().unwrap_or_default(),
                    ready_since: p
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
                        .and_then(|c| c.last_transition_time.as_ref().map(|t| t.0)),
                })
                .collect())
        }
    };
    // A guarded Deployment's canary is adopted at release: its selector names every new pod.
    let deployment_promoted = promoted
        && ctx.cr.spec.target.kind == TargetKind::Deployment
        && ctx.cr.spec.policy.is_none();
    let guarded_promoted = promoted && ctx.cr.spec.policy.is_some();
    let (change_sel, control_sel) = if deployment_promoted {
        (status.control_selector.clone(), None)
    } else if guarded_promoted {
        (status.change_selector.clone(), None)
    } else {
        (
            status.change_selector.clone(),
            status.control_selector.clone(),
        )
    };
    let mut change = list(change_sel).await?;
    let mut control = list(control_sel).await?;
    if ctx.cr.spec.target.kind == TargetKind::StatefulSet {
        // Partition rollouts label by revision: the change group is the pods not at the stable one.
        control.retain(|p| !p.labels.contains_key(LABEL_CHANGE));
        change.retain(|p| p.labels.contains_key("controller-revision-hash"));
    }
    change.sort_by(|a, b| a.name.cmp(&b.name));
    control.sort_by(|a, b| a.name.cmp(&b.name));
    // A fresh baseline, once its pods exist, is the reference; the long-running pods are shown.
    let mut baseline = if promoted {
        Vec::new()
    } else {
        list(status.baseline_selector.clone()).await?
    };
    if baseline.is_empty() {
        return Ok(Groups {
            change,
            control,
            running: Vec::new(),
        });
    }
    baseline.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Groups {
        change,
        control: baseline,
        running: control,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_write_the_fenced_client_refused_is_not_the_leader() {
        let refused = kube::Error::Service(Box::new(crate::fence::NotLeader));
        assert!(matches!(Error::from(refused), Error::NotLeader));
        let other = kube::Error::Service("connection reset".into());
        assert!(matches!(Error::from(other), Error::Kube(_)));
    }

    #[test]
    fn same_template_ignores_graygate_label_and_empty_maps() {
        let a = json!({"metadata": {"labels": {"app": "w", "graygate.io/change": "c"}}, "spec": {"containers": [{"name": "a", "resources": {}}]}});
        let b =
            json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "a"}]}});
        assert!(same_template(&a, &b));
        let c =
            json!({"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "b"}]}});
        assert!(!same_template(&b, &c));
    }
}
