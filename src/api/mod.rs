//! The `ChangeRequest` custom resource (group `graygate.io`, version `v1alpha1`).

pub mod analysis;
pub mod duration;
pub mod policy;
pub mod validate;
pub mod window;

pub use analysis::*;
pub use duration::Duration;
pub use policy::*;
pub use validate::{FieldError, check_spec};
pub use window::ChangeWindow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Annotation that approves manual batches up to and including the given 1-based batch number.
pub const ANN_APPROVE: &str = "graygate.io/approve";
/// Annotation that holds the change where it is while present.
pub const ANN_PAUSE: &str = "graygate.io/pause";
/// Annotation whose new value resumes a paused change.
pub const ANN_RESUME: &str = "graygate.io/resume";
/// Annotation whose new value rolls the change back now.
pub const ANN_ABORT: &str = "graygate.io/abort";
/// Annotation whose new value restarts a failed or rolled-back change from the first batch.
pub const ANN_RETRY: &str = "graygate.io/retry";
/// Annotation with a person's verdict on the change: `false-alarm`, `real-fault` or `drill`.
pub const ANN_FEEDBACK: &str = "graygate.io/feedback";
/// Label put on every pod of the change group (value: the ChangeRequest's name).
pub const LABEL_CHANGE: &str = "graygate.io/change";
/// Label on the pods of a fresh baseline (old template, started with the canary): the change's name.
pub const LABEL_BASELINE: &str = "graygate.io/baseline";
/// Finalizer that lets graygate roll back before a ChangeRequest goes away.
pub const FINALIZER: &str = "graygate.io/rollback";
/// The field manager graygate writes with.
pub const FIELD_MANAGER: &str = "graygate";

/// Field manager of graygate's writes to Deployments, StatefulSets and pods.
pub const MANAGER_ROLLOUT: &str = "graygate-rollout";
/// Field manager of graygate's finalizer and unreadable-object status writes.
pub const MANAGER_CONTROLLER: &str = "graygate-controller";
/// Field manager of the kubectl plugin's annotations.
pub const MANAGER_PLUGIN: &str = "kubectl-graygate";
/// Field manager of the leader-election Lease.
pub const MANAGER_LEASE: &str = "graygate-leader-election";

/// Patch parameters naming the field manager (so managedFields never says `unknown`).
pub fn patch_params(manager: &str) -> kube::api::PatchParams {
    kube::api::PatchParams {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    }
}

/// Create/replace parameters naming the field manager.
pub fn post_params(manager: &str) -> kube::api::PostParams {
    kube::api::PostParams {
        field_manager: Some(manager.to_string()),
        ..Default::default()
    }
}

/// A change to one workload, rolled out in gray batches with checks between them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "graygate.io",
    version = "v1alpha1",
    kind = "ChangeRequest",
    namespaced,
    status = "ChangeRequestStatus",
    shortname = "chg",
    category = "graygate",
    doc = "A change to one Deployment or StatefulSet, rolled out batch by batch with checks between batches.",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".status.target"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Batch","type":"string","jsonPath":".status.batch"}"#,
    printcolumn = r#"{"name":"Verdict","type":"string","jsonPath":".status.verdict"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("(has(self.images) && size(self.images) > 0) || has(self.patch) || has(self.template) || (has(self.config) && size(self.config) > 0)").message("set images, patch, template or config: the change must alter the pod template or its configuration"),
    validation = Rule::new("size(self.batches) == 0 || !has(self.batches[size(self.batches) - 1].percent) || self.batches[size(self.batches) - 1].percent == 100").message("the last batch must reach 100%")
)]
pub struct ChangeRequestSpec {
    /// The workload to change, in the ChangeRequest's namespace.
    pub target: TargetRef,
    /// New images by container name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub images: BTreeMap<String, String>,
    /// A partial pod template (`metadata` and `spec`) merged strategically into the target's template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub patch: Option<serde_json::Value>,
    /// The whole new pod template (`metadata` and `spec`), replacing the target's before images
    /// and patch apply. graygate writes it into the changes it generates for guarded workloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub template: Option<serde_json::Value>,
    /// New contents for ConfigMaps and Secrets the target's template uses, rolled out in the same
    /// batches as the rest of the change: canary pods start from graygate's immutable copies of
    /// the new contents, the old pods keep the objects they use, and on success graygate writes
    /// the new contents into the objects themselves. Deployments only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config: Vec<ConfigChange>,
    /// Set on the changes graygate generates for a guarded workload: the ChangePolicy's name. The
    /// workload already holds the new template, held by graygate's admission webhook; on success
    /// graygate releases it (no template is written), on failure the old pods keep running and
    /// the workload stays held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The batches, in order. Sizes strictly increase and the last one reaches 100%.
    #[x_kube(validation = Rule::new("size(self) > 0").message("at least one batch is needed"))]
    #[schemars(length(min = 1))]
    pub batches: Vec<BatchSpec>,
    /// What to do when a batch fails its checks: `rollback` (default) or `pause`.
    #[serde(default)]
    pub on_anomaly: OnAnomaly,
    /// What to do when the analysis itself cannot run: `pause` (default, fail-closed) or `continue`.
    #[serde(default)]
    pub on_analysis_error: OnAnalysisError,
    /// How long a batch may take to have all its pods updated, ready and available (default 10m).
    #[serde(default = "default_progress_deadline")]
    pub progress_deadline: Duration,
    /// Times when a batch may start. Without it, any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<ChangeWindow>,
    /// What deleting an active ChangeRequest does: `rollback` (default) or `keep`.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// What the canary is judged against: `control` (default: the pods still on the old
    /// template) or `fresh` (new pods of the old template started beside each batch's canary,
    /// as many as it has, at most 5: young against young). Deployments only.
    #[serde(default, skip_serializing_if = "Baseline::is_control")]
    pub baseline: Baseline,
    /// Metric and log analysis between batches. Without it each batch bakes for its `bake` time and passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Route a share of the requests to the canary, batch by batch (`batches[].traffic`), through
    /// a Gateway API `HTTPRoute`. Without it the canary takes what its share of the pods draws.
    /// Deployments only (a ChangePolicy's `change.traffic` gives it to its generated changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
}

/// Where a change's requests are split between the stable and the canary pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSpec {
    /// A Gateway API `HTTPRoute` rule whose `backendRefs` send to the stable and the canary
    /// Service: graygate sets their two weights at each batch.
    #[serde(rename = "gatewayAPI")]
    pub gateway_api: GatewayApiTraffic,
}

/// The route, rule and Services of a traffic-weighted change.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiTraffic {
    /// The `HTTPRoute` (gateway.networking.k8s.io/v1), in the ChangeRequest's namespace.
    pub http_route: String,
    /// The `name` of the route's rule to weight. Default: the one rule whose `backendRefs` name
    /// both Services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The Service that selects the workload's pods, named by the rule's first backendRef.
    /// While a change runs graygate adds the stable pods' `pod-template-hash` to its selector,
    /// so it never reaches a canary pod.
    pub stable_service: String,
    /// The Service the rule's second backendRef names: graygate sets its selector to the
    /// canary's pods (and creates it, with the stable Service's ports, when it does not exist).
    pub canary_service: String,
    /// Requests carrying this header go to the canary from the first batch on, whatever the
    /// weights (a rule graygate adds for the change and removes at its end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<HeaderMatch>,
}

/// An exact header match.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct HeaderMatch {
    /// Header name, e.g. `x-canary`.
    pub name: String,
    /// Header value, e.g. `always`.
    pub value: String,
}

fn default_progress_deadline() -> Duration {
    Duration::from_secs(600)
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// The workload a change applies to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct TargetRef {
    /// `Deployment` or `StatefulSet`.
    pub kind: TargetKind,
    /// The workload's name.
    pub name: String,
}

impl std::fmt::Display for TargetRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}/{}", self.kind, self.name)
    }
}

/// New contents for one ConfigMap or Secret of the target (`spec.config[]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigChange {
    /// The ConfigMap the target's template uses (set this or `secret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// The Secret the target's template uses (set this or `configMap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Keys to set on the ConfigMap, merged with the keys it has (ConfigMaps only: a Secret's
    /// values do not belong in a ChangeRequest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, String>,
    /// Or: take the whole contents of this object (same kind, same namespace) instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

/// Kinds of workload graygate can change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetKind {
    /// apps/v1 Deployment, rolled out through a canary Deployment.
    Deployment,
    /// apps/v1 StatefulSet, rolled out through `rollingUpdate.partition`.
    StatefulSet,
}

/// One batch of the rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.replicas) != has(self.percent)").message("set exactly one of replicas or percent"))]
pub struct BatchSpec {
    /// Number of pods on the new template after this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub replicas: Option<i32>,
    /// Share of the workload's pods on the new template after this batch (1-100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<i32>,
    /// How long the batch is watched once all its pods are ready (default 1m).
    #[serde(default = "default_bake")]
    pub bake: Duration,
    /// `auto` (default) or `manual`: a manual batch waits for `graygate.io/approve=<batch>` before it starts.
    #[serde(default)]
    pub approval: Approval,
    /// Share of the requests the canary gets in this batch, `5%` or `5` (0–100), through
    /// `spec.traffic`. Default with `spec.traffic`: the batch's share of the pods. The last
    /// batch is the promotion: all requests go to the new pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
}

fn default_bake() -> Duration {
    Duration::from_secs(60)
}

/// Whether a batch starts by itself.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Approval {
    /// Start as soon as the previous batch passed.
    #[default]
    Auto,
    /// Wait for a person to approve.
    Manual,
}

/// Reaction to a failed batch.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnAnomaly {
    /// Undo the change at once.
    #[default]
    Rollback,
    /// Hold where it is and wait for a person.
    Pause,
}

/// Reaction to analysis that cannot run (Prometheus unreachable, query errors).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnAnalysisError {
    /// Fail closed: hold the change until analysis works again.
    #[default]
    Pause,
    /// Fail open: treat the judgement as passed and go on.
    Continue,
}

/// The reference group a canary is judged against.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Baseline {
    /// The pods still on the old template.
    #[default]
    Control,
    /// Pods of the old template started with the canary, as many as it has (at most
    /// [`MAX_BASELINE_PODS`]), removed when the change ends.
    Fresh,
}

impl Baseline {
    /// True for the default.
    pub fn is_control(&self) -> bool {
        *self == Baseline::Control
    }
}

/// The most pods a fresh baseline runs.
pub const MAX_BASELINE_PODS: i32 = 5;

/// What deleting an active ChangeRequest does to the workload.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DeletionPolicy {
    /// Roll the workload back, then let the ChangeRequest go.
    #[default]
    Rollback,
    /// Leave the workload as it is (the canary is orphaned, not deleted).
    Keep,
}

/// Where a ChangeRequest is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema, Hash)]
pub enum Phase {
    /// Accepted, not started yet (waiting for the target, the window or its turn).
    #[default]
    Pending,
    /// A batch is rolling out or baking.
    Progressing,
    /// The next batch waits for `graygate.io/approve`.
    AwaitingApproval,
    /// Held by a person or by a policy; `graygate.io/resume` continues, `graygate.io/abort` rolls back.
    Paused,
    /// The change is being undone.
    RollingBack,
    /// A newer template of the workload replaces this change: its canary is being removed (a
    /// routine step, not a failure), then it ends `Superseded`.
    Superseding,
    /// The change was undone; the workload runs its old template.
    RolledBack,
    /// A newer template of the workload replaced this change before it finished (a guarded
    /// workload's `onNewerChange: supersede`, or a revert to the running template): its canary
    /// was removed and nothing failed.
    Superseded,
    /// Every batch passed and the target runs the new template.
    Succeeded,
    /// The change could not be completed nor undone automatically; see the conditions.
    Failed,
    /// Another ChangeRequest is active on the same target.
    Blocked,
    /// The spec is invalid; nothing was touched.
    Invalid,
}

impl Phase {
    /// All phases, for metrics.
    pub const ALL: [Phase; 12] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::AwaitingApproval,
        Phase::Paused,
        Phase::RollingBack,
        Phase::Superseding,
        Phase::RolledBack,
        Phase::Superseded,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Blocked,
        Phase::Invalid,
    ];

    /// True while the change holds its target (it has touched, or may touch, the workload).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Progressing
                | Phase::AwaitingApproval
                | Phase::Paused
                | Phase::RollingBack
                | Phase::Superseding
        )
    }

    /// True while the change's canary is being removed (rolled back or superseded).
    pub fn is_undoing(self) -> bool {
        matches!(self, Phase::RollingBack | Phase::Superseding)
    }

    /// True once nothing more will happen without a new spec or a retry.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::RolledBack
                | Phase::Superseded
                | Phase::Succeeded
                | Phase::Failed
                | Phase::Invalid
        )
    }

    /// The phase's name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::AwaitingApproval => "AwaitingApproval",
            Phase::Paused => "Paused",
            Phase::RollingBack => "RollingBack",
            Phase::Superseding => "Superseding",
            Phase::RolledBack => "RolledBack",
            Phase::Superseded => "Superseded",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Blocked => "Blocked",
            Phase::Invalid => "Invalid",
        }
    }
}

/// A batch's judgement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Hash)]
pub enum Verdict {
    /// The checks found nothing wrong.
    Pass,
    /// The checks found the change wrong.
    Fail,
    /// Not enough data to say.
    Inconclusive,
}

impl Verdict {
    /// All verdicts, for metrics.
    pub const ALL: [Verdict; 3] = [Verdict::Pass, Verdict::Fail, Verdict::Inconclusive];
    /// The verdict's name as written in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "Pass",
            Verdict::Fail => "Fail",
            Verdict::Inconclusive => "Inconclusive",
        }
    }
}

/// Observed state of a ChangeRequest: all progress lives here so a restarted operator resumes exactly.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRequestStatus {
    /// Where the change is.
    #[serde(default)]
    pub phase: Phase,
    /// When the change entered its current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase_since: Option<Time>,
    /// The spec generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Kind/name` of the target, for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The 1-based batch in progress (0 before the first starts).
    #[serde(default)]
    pub current_batch: u32,
    /// Progress for display, like `2/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// The most recent batch verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// One sentence on what is happening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// One record per batch started so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batches: Vec<BatchStatus>,
    /// The target's replica count when the change started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_replicas: Option<i32>,
    /// The target's revision before the change (Deployment: template hash; StatefulSet: currentRevision).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The target's pod template before the change, restored on rollback after promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_object")]
    pub stable_template: Option<serde_json::Value>,
    /// The StatefulSet's `rollingUpdate.partition` before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_partition: Option<i32>,
    /// Hash of the new pod template; a spec edit that changes it mid-rollout pauses the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_revision: Option<String>,
    /// Name of the canary Deployment (Deployment targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_name: Option<String>,
    /// Label selector of the change group's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_selector: Option<String>,
    /// Label selector of the control group's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_selector: Option<String>,
    /// Name of the fresh baseline's Deployment (`baseline: fresh`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_name: Option<String>,
    /// Label selector of the fresh baseline's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_selector: Option<String>,
    /// When the first batch started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the change reached a terminal phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Time>,
    /// Why the change is paused, failing or rolling back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Last seen values of the resume, abort and retry annotations, so each is acted on once.
    #[serde(default, skip_serializing_if = "HandledSignals::is_empty")]
    pub handled: HandledSignals,
    /// A person's verdict on the change (`graygate.io/feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<Feedback>,
    /// How the first batch's canary departed from the control, kept for the workload's later
    /// changes (the history group); counts once the change is released, or stopped and marked
    /// `false-alarm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<ChangeRecord>,
    /// The record of the run before a `retry`, which counts when the change is marked
    /// `false-alarm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prior_record: Option<ChangeRecord>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// How a change's canary departed from its control group over its first batch: per metric, the
/// canary's value ÷ the control's typical value in each slot since its first judged sample.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    /// Width of a slot in seconds (the analysis interval).
    pub slot_seconds: f64,
    /// One entry per metric.
    #[serde(default)]
    pub metrics: Vec<MetricRecord>,
}

/// One metric of a [`ChangeRecord`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricRecord {
    /// The metric's name.
    pub name: String,
    /// Canary ÷ control per slot, the first slot first; `null` where a slot had no data.
    #[serde(default)]
    pub ratios: Vec<Option<f64>>,
}

/// What a person said the change was, after the fact.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FeedbackVerdict {
    /// The change was fine: graygate stopped it for nothing (or would have).
    FalseAlarm,
    /// The change was broken.
    RealFault,
    /// A deliberate exercise (an injected fault, a game day).
    Drill,
}

impl FeedbackVerdict {
    /// The annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackVerdict::FalseAlarm => "false-alarm",
            FeedbackVerdict::RealFault => "real-fault",
            FeedbackVerdict::Drill => "drill",
        }
    }

    /// Parse an annotation value (surrounding whitespace ignored).
    pub fn parse(v: &str) -> Option<FeedbackVerdict> {
        match v.trim() {
            "false-alarm" => Some(FeedbackVerdict::FalseAlarm),
            "real-fault" => Some(FeedbackVerdict::RealFault),
            "drill" => Some(FeedbackVerdict::Drill),
            _ => None,
        }
    }
}

/// How a change counts in the interception record: graygate `stopped` it on a failed batch, or
/// it was `released` to every pod; `None` while it runs, or when it ended otherwise (aborted by a
/// person, superseded, invalid).
pub fn interception(cr: &ChangeRequest) -> Option<&'static str> {
    cr.status
        .as_ref()
        .and_then(ChangeRequestStatus::interception)
}

/// The feedback label of a change: its recorded verdict, or `none`.
pub fn feedback_label(cr: &ChangeRequest) -> &'static str {
    cr.status
        .as_ref()
        .map_or("none", ChangeRequestStatus::feedback_label)
}

impl ChangeRequestStatus {
    /// See [`interception`].
    pub fn interception(&self) -> Option<&'static str> {
        match self.phase {
            Phase::Succeeded => Some("released"),
            Phase::Paused | Phase::RollingBack | Phase::RolledBack | Phase::Failed
                if self.verdict == Some(Verdict::Fail) =>
            {
                Some("stopped")
            }
            _ => None,
        }
    }

    /// See [`feedback_label`].
    pub fn feedback_label(&self) -> &'static str {
        self.feedback
            .as_ref()
            .map_or("none", |f| f.verdict.as_str())
    }
}

/// A person's verdict, as recorded in status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Feedback {
    /// `false-alarm`, `real-fault` or `drill`.
    pub verdict: FeedbackVerdict,
    /// When graygate recorded it.
    pub recorded_at: Time,
    /// The phase the change was in then.
    pub phase: Phase,
}

/// Annotation values graygate has already acted on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct HandledSignals {
    /// Last `graygate.io/resume` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Last `graygate.io/abort` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<String>,
    /// Last `graygate.io/retry` value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Last `graygate.io/feedback` value acted on (a wrong one is reported once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
}

impl HandledSignals {
    fn is_empty(&self) -> bool {
        self.resume.is_none()
            && self.abort.is_none()
            && self.retry.is_none()
            && self.feedback.is_none()
    }
}

/// What happened to one batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchStatus {
    /// 1-based batch number.
    pub index: u32,
    /// Pods on the new template once this batch is done.
    pub replicas: i32,
    /// The canary's share of the requests in this batch (a change with `spec.traffic`), in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<i32>,
    /// When graygate scaled the workload for this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Change-group pods ready and available, last seen.
    #[serde(default)]
    pub pods_ready: i32,
    /// When all the batch's pods were ready (the bake starts here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// When the bake ended with a verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_ended_at: Option<Time>,
    /// The batch's verdict once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    /// Why the verdict is what it is, in a short sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many analysis judgements ran for this batch.
    #[serde(default)]
    pub judgements: u32,
    /// Failing judgements in a row.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// When the last judgement ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_judged_at: Option<Time>,
    /// The verdict of the last judgement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_judgement: Option<Verdict>,
    /// Evidence of the last judgement: the most severe findings, bounded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// What the last judgement looked at: its window and the pods of each group, so that the
    /// dashboard can query and plot what the judge saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judged: Option<JudgedWindow>,
}

/// The window and pods of one judgement (each group's names bounded to
/// [`JudgedWindow::MAX_PODS`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JudgedWindow {
    /// Start of the judged window.
    pub from: Time,
    /// End of the judged window.
    pub to: Time,
    /// Change-group pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub change: Vec<String>,
    /// Reference pods: the control group, or the fresh baseline.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub control: Vec<String>,
    /// With a fresh baseline, the long-running pods shown beside it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub running: Vec<String>,
    /// Pods left out of the lists above (a group had more than `MAX_PODS`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pods_omitted: u32,
}

impl JudgedWindow {
    /// Pod names kept per group.
    pub const MAX_PODS: usize = 20;
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The ChangeRequest CRD as `graygate crd` prints it: the derived schema, with the unsigned
/// integer formats Kubernetes does not know (`uint32`, which `kubectl apply` warns about)
/// replaced by `minimum: 0`.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let crd = ChangeRequest::crd();
    let mut v = serde_json::to_value(&crd).unwrap_or_default();
    strip_unsigned_formats(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

/// The ChangePolicy CRD as `graygate crd policy` prints it (same clean-up as [`crd`]).
pub fn policy_crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    use kube::CustomResourceExt;
    let crd = ChangePolicy::crd();
    let mut v = serde_json::to_value(&crd).unwrap_or_default();
    strip_unsigned_formats(&mut v);
    serde_json::from_value(v).unwrap_or(crd)
}

fn strip_unsigned_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            let unsigned = m
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"));
            if unsigned {
                m.remove("format");
                m.entry("minimum").or_insert(serde_json::json!(0));
            }
            m.values_mut().for_each(strip_unsigned_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_unsigned_formats),
        _ => {}
    }
}
