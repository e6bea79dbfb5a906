//! The vocabulary the decision (`controller`) and the strategies (`rollout`) share: the step a
//! workload is brought to, what was observed of it, and the window a judgement looks at. It lives
//! below both, so `rollout` needs nothing from `controller`.

use jiff::Timestamp;
use serde_json::Value;
use std::collections::BTreeMap;

/// The partition that holds every pod of a StatefulSet on its current revision, whatever its
/// size becomes (a scale-up through the scale subresource never reaches the webhook). The
/// webhook sets it on a held StatefulSet; its batches lower it.
pub const HOLD_PARTITION: i64 = i32::MAX as i64;

/// The state the workload should be brought to. Strategies make it so, idempotently.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// `changed` pods on the new template, the rest on the old one.
    Batch {
        /// Pods on the new template.
        changed: i32,
        /// The canary's share of the requests (0–100), for a change with `spec.traffic`.
        traffic: Option<i32>,
    },
    /// Every pod on the new template, written into the target; canary removed.
    Promote,
    /// Every pod back on the recorded stable template; canary removed.
    Restore,
}

/// What the workload looks like, as far as the current step is concerned.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct WorkloadObs {
    /// The target's desired replicas as its spec says now.
    pub replicas: i32,
    /// The target is available and not in the middle of another rollout.
    pub healthy: bool,
    /// Why it is not healthy, for the message.
    pub unhealthy_reason: String,
    /// The target's pod template as it is now.
    pub template: Value,
    /// A guarded workload holding a new template: the template its pods run (the stable one).
    pub running: Option<Value>,
    /// The target's selector labels.
    pub selector: BTreeMap<String, String>,
    /// The target's current revision (Deployment: template hash; StatefulSet: currentRevision).
    pub revision: String,
    /// For StatefulSets, the current `rollingUpdate.partition`.
    pub partition: Option<i32>,
    /// Pods on the new template that are ready and available.
    pub changed_ready: i32,
    /// The workload has reached the step the status asks for, and every controller has caught up.
    pub step_reached: bool,
    /// The replica count batches follow when something other than graygate owns it (an
    /// autoscaler, or the Deployment of a guarded change); `None` when graygate sizes the target.
    pub live_replicas: Option<i32>,
    /// The autoscaler that owns the target's replica count, as `Kind/name`.
    pub autoscaler: Option<String>,
    /// Before a config change starts: an object of `spec.config` (or its `from`) that does not
    /// exist, as (field, message).
    pub config_missing: Option<(String, String)>,
    /// Before a traffic-weighted change starts: what in `spec.traffic` does not hold in the
    /// cluster (a missing route, rule, backendRef or Service), as (field, message).
    pub traffic_invalid: Option<(String, String)>,
    /// During a traffic-weighted change: someone other than graygate changed the weights it
    /// set, in words.
    pub traffic_changed: Option<String>,
}

/// The analysis window of a judgement that is due now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JudgeWindow {
    /// The 1-based batch being judged.
    pub batch: u32,
    /// Start of the window (the batch became ready, plus warm-up).
    pub from: Timestamp,
    /// End of the window (now).
    pub to: Timestamp,
    /// How many judgements the whole change holds ([`planned_looks`]). Each judgement tests
    /// again, and a batch's judgements test growing windows of the same data, so the tests'
    /// level is divided by this number (Bonferroni): a healthy change then fails a given test
    /// with probability at most the level, however short the interval or many the batches.
    pub looks: u32,
}
