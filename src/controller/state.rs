//! The state machine: a pure function from (spec, status, observation) to the next status,
//! the workload steps to ensure, and the Events to record.

use crate::api::*;
use crate::rollout::plan::{PlannedBatch, plan};
use crate::rollout::template::apply_spec;
use crate::util::{count, short_hash, trim_to};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration as StdDuration;

pub use crate::workload::{JudgeWindow, Step, WorkloadObs};

/// What graygate must do to the cluster after recording the new status.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Bring the workload to this step.
    Ensure(Step),
    /// Leave the workload as it is but detach graygate's objects from the ChangeRequest (deletionPolicy keep).
    Orphan,
    /// Let a deleted ChangeRequest go.
    RemoveFinalizer,
}

/// An Event to record on the ChangeRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// Warning rather than Normal.
    pub warning: bool,
    /// A CamelCase reason a person can grep.
    pub reason: &'static str,
    /// What happened.
    pub message: String,
    /// The batch in progress when it happened (0 before the first).
    pub batch: u32,
}

/// Annotation values on the ChangeRequest.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Signals {
    /// `graygate.io/approve`: batches up to this number are approved.
    pub approve: Option<u32>,
    /// `graygate.io/pause` is present.
    pub pause: bool,
    /// `graygate.io/resume` value.
    pub resume: Option<String>,
    /// `graygate.io/abort` value.
    pub abort: Option<String>,
    /// `graygate.io/retry` value.
    pub retry: Option<String>,
    /// `graygate.io/feedback` value.
    pub feedback: Option<String>,
}

impl Signals {
    /// Read the signals from annotations.
    pub fn from_annotations(ann: &BTreeMap<String, String>) -> Signals {
        let non_empty = |k: &str| ann.get(k).filter(|v| !v.is_empty()).cloned();
        Signals {
            approve: ann.get(ANN_APPROVE).and_then(|v| v.trim().parse().ok()),
            pause: ann.get(ANN_PAUSE).is_some_and(|v| v != "false"),
            resume: non_empty(ANN_RESUME),
            abort: non_empty(ANN_ABORT),
            retry: non_empty(ANN_RETRY),
            feedback: non_empty(ANN_FEEDBACK),
        }
    }
}

/// The outcome of one analysis run.
#[derive(Clone, Debug, PartialEq)]
pub enum Judgement {
    /// The analysis ran and reached a verdict, with its evidence.
    Verdict {
        /// pass, fail or inconclusive.
        verdict: Verdict,
        /// One line on why.
        summary: String,
        /// The evidence, most severe first.
        findings: Vec<Finding>,
        /// How the canary departed from the control, for the workload's history (first batch).
        record: Option<crate::api::ChangeRecord>,
    },
    /// The analysis could not run (Prometheus unreachable, …).
    Error(String),
    /// The analysis section is wrong (a template that does not render, a query Prometheus rejects).
    SpecError(FieldError),
}

/// Everything the decision may look at besides spec and status.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// The time of this reconcile.
    pub now: Timestamp,
    /// `metadata.generation` of the ChangeRequest.
    pub generation: i64,
    /// Annotation signals.
    pub signals: Signals,
    /// The ChangeRequest is being deleted.
    pub deleting: bool,
    /// Another ChangeRequest that holds (or is ahead in line for) the same target.
    pub blocker: Option<Blocker>,
    /// The target workload, or None when it does not exist.
    pub workload: Option<WorkloadObs>,
    /// An analysis run made for this reconcile, when one was due.
    pub judgement: Option<Judgement>,
    /// The window and pods that judgement looked at.
    pub judged: Option<crate::api::JudgedWindow>,
    /// A write made to bring the workload to the recorded step came back without the effect it
    /// asked for (a release held by an admission webhook): what happened, in words.
    pub refused: Option<String>,
}

/// The result of a decision.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The status to record.
    pub status: ChangeRequestStatus,
    /// What to do to the cluster, after the status is recorded.
    pub actions: Vec<Action>,
    /// Events to record.
    pub notes: Vec<Note>,
    /// When to look again, at the latest.
    pub requeue: Option<StdDuration>,
}

const MAX_FINDINGS: usize = 20;
const POLL: StdDuration = StdDuration::from_secs(2);
const SLOW_POLL: StdDuration = StdDuration::from_secs(30);

/// Default analysis interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Default consecutive failing judgements before a batch fails.
pub const DEFAULT_FAILURE_LIMIT: u32 = 2;

fn ts(t: &Option<Time>) -> Option<Timestamp> {
    t.as_ref().map(|t| t.0)
}

fn since(now: Timestamp, then: Timestamp) -> StdDuration {
    let ms = now.as_millisecond() - then.as_millisecond();
    StdDuration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn add(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(jiff::SignedDuration::from_millis(d.as_millis_i64()))
        .unwrap_or(t)
}

fn until(now: Timestamp, then: Timestamp) -> StdDuration {
    since(then, now)
}

/// The warm-up skipped after a batch's pods are ready: the spec's `warmup`, or by default one
/// minute (young pods warm caches and JITs) but at most a third of the batch's bake, so that
/// short bakes are still judged.
pub fn effective_warmup(
    spec: &ChangeRequestSpec,
    status: &ChangeRequestStatus,
    batch: u32,
) -> Duration {
    let bake_ms = status
        .original_replicas
        .and_then(|total| plan(&spec.batches, total).ok())
        .and_then(|p| {
            p.get((batch as usize).checked_sub(1)?)
                .map(|b| b.bake.as_millis_i64())
        })
        .unwrap_or(0);
    warmup_for_bake(spec, bake_ms)
}

fn warmup_for_bake(spec: &ChangeRequestSpec, bake_ms: i64) -> Duration {
    if let Some(w) = spec.analysis.as_ref().and_then(|a| a.warmup) {
        return w;
    }
    Duration::from_millis((bake_ms / 3).clamp(0, DEFAULT_WARMUP_MS) as u64)
}

/// The bake a batch gets. With analysis, at least its warm-up plus two analysis intervals: the
/// last judgement of a shorter bake covers one interval, one slot of samples, which no detector
/// can decide on (an inconclusive verdict and a pause of a healthy change). The second value
/// says why it was widened, for the status and the Event; `None` when the spec's bake stands.
pub fn effective_bake(spec: &ChangeRequestSpec, bake: Duration) -> (Duration, Option<String>) {
    let Some(analysis) = spec.analysis.as_ref() else {
        return (bake, None);
    };
    let interval = analysis.interval.unwrap_or(DEFAULT_INTERVAL);
    let warmup = warmup_for_bake(spec, bake.as_millis_i64());
    let least = warmup.std() + 2 * interval.std();
    if bake.std() >= least {
        return (bake, None);
    }
    // Whole seconds, for a bake a person reads.
    let least = Duration::from_secs(least.as_secs() + u64::from(least.subsec_nanos() > 0));
    let warmup = if warmup.std().subsec_millis() == 0 {
        warmup.to_string()
    } else {
        format!("{:.1}s", warmup.std().as_secs_f64())
    };
    (
        least,
        Some(format!(
            "{least}, widened from the spec's {bake}: a judgement needs the {warmup} warm-up plus two {interval} analysis intervals"
        )),
    )
}

/// The default warm-up ceiling, in milliseconds.
pub const DEFAULT_WARMUP_MS: i64 = 60_000;

/// Whether an analysis run is due now, and over which window.
pub fn judgement_due(
    spec: &ChangeRequestSpec,
    status: &ChangeRequestStatus,
    now: Timestamp,
) -> Option<JudgeWindow> {
    let analysis = spec.analysis.as_ref()?;
    // A change held because analysis could not run keeps trying, so it resumes once it works.
    let retrying =
        status.phase == Phase::Paused && status.reason.as_deref() == Some("AnalysisError");
    if !(status.phase == Phase::Progressing || retrying) || status.current_batch == 0 {
        return None;
    }
    let b = status.batches.get(status.current_batch as usize - 1)?;
    if b.verdict.is_some() {
        return None;
    }
    let ready = ts(&b.ready_at)?;
    let interval = analysis.interval.unwrap_or(DEFAULT_INTERVAL);
    let from = add(ready, effective_warmup(spec, status, b.index));
    let next = match ts(&b.last_judged_at) {
        Some(last) => add(last, interval),
        None => add(from, interval),
    };
    (now >= next).then_some(JudgeWindow {
        batch: b.index,
        from,
        to: now,
        looks: planned_looks(spec, status, interval),
    })
}

/// The judgements the whole change holds: in each batch, one every interval from the end of its
/// warm-up to the end of its bake, and at least one.
pub fn planned_looks(
    spec: &ChangeRequestSpec,
    status: &ChangeRequestStatus,
    interval: Duration,
) -> u32 {
    let Some(batches) = status
        .original_replicas
        .and_then(|total| plan(&spec.batches, total).ok())
    else {
        return 1;
    };
    let interval_ms = interval.as_millis_i64().max(1);
    let mut looks = 0u32;
    for b in &batches {
        let bake_ms = effective_bake(spec, b.bake).0.as_millis_i64();
        let warmup_ms = warmup_for_bake(spec, b.bake.as_millis_i64()).as_millis_i64();
        let judged_ms = (bake_ms - warmup_ms).max(0);
        let n = u32::try_from(judged_ms / interval_ms).unwrap_or(u32::MAX);
        looks = looks.saturating_add(n.max(1));
    }
    looks.max(1)
}

/// The ChangeRequest ahead of this one on the same target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blocker {
    /// Its name.
    pub name: String,
    /// It is being superseded (by this change or another newer one): a routine wait for its
    /// canary to go, not a conflict.
    pub superseded: bool,
}

impl From<&str> for Blocker {
    fn from(name: &str) -> Self {
        Blocker {
            name: name.to_string(),
            superseded: false,
        }
    }
}

/// The step the workload should be at for this status, which the shell observes progress against.
pub fn current_step(spec: &ChangeRequestSpec, status: &ChangeRequestStatus) -> Option<Step> {
    match status.phase {
        Phase::RollingBack | Phase::Superseding | Phase::RolledBack | Phase::Superseded => {
            return Some(Step::Restore);
        }
        Phase::Pending | Phase::Blocked | Phase::Invalid => return None,
        _ => {}
    }
    let total = status.original_replicas?;
    let planned = plan(&spec.batches, total).ok()?;
    let k = status.current_batch as usize;
    let pb = planned.get(k.checked_sub(1)?)?;
    Some(if k == planned.len() {
        Step::Promote
    } else {
        batch_step(spec, pb, total)
    })
}

/// The step of a batch that is not the last: its pods, and for a change with `spec.traffic` the
/// canary's share of the requests (the batch's `traffic`, else its share of the pods).
pub fn batch_step(spec: &ChangeRequestSpec, pb: &PlannedBatch, total: i32) -> Step {
    let pod_share =
        (i64::from(pb.replicas) * 100 + i64::from(total.max(1)) / 2) / i64::from(total.max(1));
    Step::Batch {
        changed: pb.replicas,
        traffic: spec
            .traffic
            .as_ref()
            .map(|_| pb.traffic.unwrap_or(pod_share.clamp(0, 100) as i32)),
    }
}

/// Decide what happens next. Pure: the same inputs always give the same decision.
pub fn decide(
    name: &str,
    spec: &ChangeRequestSpec,
    status: &ChangeRequestStatus,
    obs: &Observation,
) -> Decision {
    let mut m = Machine {
        name,
        spec,
        obs,
        st: status.clone(),
        actions: Vec::new(),
        notes: Vec::new(),
        requeue: None,
        resumed: false,
    };
    m.st.target = Some(spec.target.to_string());
    m.run();
    m.finish()
}

struct Machine<'a> {
    name: &'a str,
    spec: &'a ChangeRequestSpec,
    obs: &'a Observation,
    st: ChangeRequestStatus,
    actions: Vec<Action>,
    notes: Vec<Note>,
    requeue: Option<StdDuration>,
    /// A person resumed the change in this decision.
    resumed: bool,
}

impl Machine<'_> {
    fn note(&mut self, warning: bool, reason: &'static str, message: impl Into<String>) {
        self.notes.push(Note {
            warning,
            reason,
            message: trim_to(&message.into(), 1000),
            batch: self.st.current_batch,
        });
    }

    fn wake_in(&mut self, d: StdDuration) {
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn set_phase(&mut self, phase: Phase, reason: Option<&str>, message: impl Into<String>) {
        if self.st.phase != phase || self.st.phase_since.is_none() {
            self.st.phase_since = Some(Time(self.obs.now));
        }
        self.st.phase = phase;
        self.st.reason = reason.map(String::from);
        self.st.message = Some(trim_to(&message.into(), 500));
        if phase.is_terminal() && phase != Phase::Invalid {
            self.st.finished_at = Some(Time(self.obs.now));
        }
    }

    fn run(&mut self) {
        if self.obs.deleting {
            self.on_delete();
            return;
        }
        if let Some(why) = &self.obs.refused {
            // Sending the same write again cannot help (the thing that undid it will undo it
            // again), and waiting it out ends in a rollback of a change nothing was found wrong
            // with: a person has to look.
            if self.st.phase.is_active() {
                let why = why.clone();
                self.pause("WriteNotTaken", &why);
            }
            return;
        }
        self.handle_feedback();
        self.handle_retry();
        if self.handle_spec_change() {
            return;
        }
        if self.handle_abort() {
            return;
        }
        match self.st.phase {
            Phase::Invalid
            | Phase::Succeeded
            | Phase::RolledBack
            | Phase::Superseded
            | Phase::Failed => {}
            Phase::Pending | Phase::Blocked => self.start(),
            Phase::Progressing | Phase::AwaitingApproval => {
                if self.obs.signals.pause {
                    self.pause(
                        "PausedByAnnotation",
                        "paused by the graygate.io/pause annotation",
                    );
                } else {
                    self.progress();
                }
            }
            Phase::Paused => self.paused(),
            Phase::RollingBack | Phase::Superseding => self.rolling_back(),
        }
    }

    fn finish(mut self) -> Decision {
        self.st.observed_generation = Some(self.obs.generation);
        let total = self.planned().map(|p| p.len()).unwrap_or(0);
        self.st.batch = if total > 0 && self.st.phase != Phase::Invalid {
            Some(format!("{}/{}", self.st.current_batch, total))
        } else {
            None
        };
        set_conditions(&mut self.st, self.obs.now, self.obs.generation);
        if self.requeue.is_none() && !self.st.phase.is_terminal() {
            self.requeue = Some(SLOW_POLL);
        }
        Decision {
            status: self.st,
            actions: self.actions,
            notes: self.notes,
            requeue: self.requeue,
        }
    }

    /// The batch plan for the replica count recorded at start (or the target's now, before start).
    fn planned(&self) -> Option<Vec<PlannedBatch>> {
        let total = self
            .st
            .original_replicas
            .or(self.obs.workload.as_ref().map(|w| w.replicas))?;
        plan(&self.spec.batches, total).ok()
    }

    fn on_delete(&mut self) {
        if !self.st.phase.is_active() {
            self.actions.push(Action::RemoveFinalizer);
            return;
        }
        match self.spec.deletion_policy {
            DeletionPolicy::Keep => {
                self.note(
                    true,
                    "DeletedKept",
                    "ChangeRequest deleted with deletionPolicy keep: the workload is left as it is",
                );
                self.actions.push(Action::Orphan);
                self.actions.push(Action::RemoveFinalizer);
            }
            DeletionPolicy::Rollback => {
                if !self.st.phase.is_undoing() {
                    self.begin_rollback("Deleted", "the ChangeRequest was deleted while active");
                    return;
                }
                if self.workload_reached() {
                    self.set_phase(
                        Phase::RolledBack,
                        Some("Deleted"),
                        "rolled back because the ChangeRequest was deleted",
                    );
                    self.note(false, "RolledBack", "rolled back; the ChangeRequest can go");
                    self.actions.push(Action::RemoveFinalizer);
                } else {
                    self.actions.push(Action::Ensure(Step::Restore));
                    self.wake_in(POLL);
                }
            }
        }
    }

    fn workload_reached(&self) -> bool {
        self.obs.workload.as_ref().is_some_and(|w| w.step_reached)
    }

    /// Record a person's verdict on the change, in any phase; a value that is none of the three
    /// is reported once, naming the annotation, and changes nothing.
    fn handle_feedback(&mut self) {
        let Some(raw) = &self.obs.signals.feedback else {
            return;
        };
        match FeedbackVerdict::parse(raw) {
            Some(v) if self.st.feedback.as_ref().map(|f| f.verdict) != Some(v) => {
                self.st.feedback = Some(Feedback {
                    verdict: v,
                    recorded_at: Time(self.obs.now),
                    phase: self.st.phase,
                });
                self.st.handled.feedback = Some(raw.clone());
                let meaning = match v {
                    FeedbackVerdict::FalseAlarm => {
                        "the change was fine; it counts as a released change in its workload's history"
                    }
                    FeedbackVerdict::RealFault => {
                        "the change was broken; it never enters its workload's history"
                    }
                    FeedbackVerdict::Drill => {
                        "a deliberate exercise; it never enters its workload's history"
                    }
                };
                self.note(
                    false,
                    "FeedbackRecorded",
                    format!(
                        "marked {} while {}: {meaning}",
                        v.as_str(),
                        self.st.phase.as_str()
                    ),
                );
            }
            Some(_) => {}
            None if self.st.handled.feedback.as_ref() != Some(raw) => {
                self.st.handled.feedback = Some(raw.clone());
                self.note(
                    true,
                    "FeedbackInvalid",
                    format!(
                        "annotation {ANN_FEEDBACK}={raw:?} is none of false-alarm, real-fault, drill; nothing recorded"
                    ),
                );
            }
            None => {}
        }
    }

    fn handle_retry(&mut self) {
        let Some(token) = &self.obs.signals.retry else {
            return;
        };
        if self.st.handled.retry.as_ref() == Some(token) {
            return;
        }
        self.st.handled.retry = Some(token.clone());
        if matches!(
            self.st.phase,
            Phase::Failed | Phase::RolledBack | Phase::Superseded
        ) {
            let handled = std::mem::take(&mut self.st.handled);
            let feedback = self.st.feedback.take();
            let prior_record = self.st.record.take().or(self.st.prior_record.take());
            self.st = ChangeRequestStatus {
                handled,
                // The person's verdict on the stopped run stays with the change, and so does
                // what its canary showed: marked false-alarm, it is history for the new run.
                feedback,
                prior_record,
                conditions: std::mem::take(&mut self.st.conditions),
                ..Default::default()
            };
            self.note(
                false,
                "Retry",
                "retry requested: starting again from the first batch",
            );
        } else {
            self.note(
                false,
                "RetryIgnored",
                format!(
                    "retry applies to a Failed, RolledBack or Superseded change; this one is {}",
                    self.st.phase.as_str()
                ),
            );
        }
    }

    /// Re-check the spec when it changed. Returns true when nothing more should happen now.
    fn handle_spec_change(&mut self) -> bool {
        let changed = self.st.observed_generation != Some(self.obs.generation);
        if self.st.phase == Phase::Invalid && changed {
            self.st.phase = Phase::Pending;
            self.st.reason = None;
        }
        if let Err(e) = check_spec(self.spec) {
            self.invalid(e);
            return true;
        }
        if changed && self.st.phase.is_active() && !self.st.phase.is_undoing() {
            // The recorded plan stays; a different new template mid-rollout needs a person.
            if let (Some(w), Some(recorded)) = (&self.obs.workload, &self.st.change_revision) {
                let base = self
                    .st
                    .stable_template
                    .clone()
                    .unwrap_or_else(|| w.template.clone());
                match apply_spec(&base, self.spec, &w.selector) {
                    Ok(t) if &short_hash(&t) != recorded => {
                        self.pause(
                            "SpecChanged",
                            "the change (images or patch) was edited mid-rollout; resume to roll out the new template from this batch, or abort",
                        );
                        return true;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.invalid(e);
                        return true;
                    }
                }
            }
        }
        false
    }

    fn invalid(&mut self, e: FieldError) {
        if self.st.phase.is_active() {
            // Already touching the workload: hold it where it is rather than leave it unexplained.
            if self.st.reason.as_deref() != Some("InvalidSpec") {
                self.note(
                    true,
                    "InvalidSpec",
                    format!("{e}; the change is paused where it is"),
                );
            }
            self.set_phase(
                Phase::Paused,
                Some("InvalidSpec"),
                format!("{e}; paused where it is: fix the spec or abort"),
            );
            return;
        }
        if self.st.phase != Phase::Invalid || self.st.message.as_deref() != Some(&e.to_string()) {
            self.note(true, "InvalidSpec", e.to_string());
        }
        self.set_phase(Phase::Invalid, Some("InvalidSpec"), e.to_string());
    }

    fn handle_abort(&mut self) -> bool {
        let Some(token) = &self.obs.signals.abort else {
            return false;
        };
        if self.st.handled.abort.as_ref() == Some(token) {
            return false;
        }
        self.st.handled.abort = Some(token.clone());
        // graygate's policy writes "superseded by …" when a newer template replaces the change:
        // not a failure, and it ends as Superseded.
        let superseded = is_supersede(token);
        if self.st.phase.is_active() && !self.st.phase.is_undoing() {
            if superseded {
                // Routine, not a failure: its own phase and a Normal Event.
                let why = format!("{}; removing its canary", token.trim());
                self.set_phase(Phase::Superseding, Some("Superseded"), why.clone());
                self.note(false, "Superseding", why);
                self.actions.push(Action::Ensure(Step::Restore));
                self.wake_in(POLL);
                return true;
            }
            // A value with words in it is the reason; a bare token (kubectl graygate abort
            // writes a timestamp) is not.
            let why = if token.trim().contains(' ') {
                format!(
                    "aborted by the graygate.io/abort annotation: {}",
                    token.trim()
                )
            } else {
                "aborted by the graygate.io/abort annotation".to_string()
            };
            self.begin_rollback("Aborted", &why);
            return true;
        }
        if matches!(self.st.phase, Phase::Pending | Phase::Blocked) {
            if superseded {
                let why = format!(
                    "{} before its first batch; nothing was changed",
                    token.trim()
                );
                self.note(false, "Superseded", why.clone());
                self.set_phase(Phase::Superseded, Some("Superseded"), why);
                return true;
            }
            self.note(
                false,
                "Aborted",
                "aborted before the first batch: nothing was changed",
            );
            self.set_phase(
                Phase::RolledBack,
                Some("Aborted"),
                "aborted before the first batch; nothing was changed",
            );
            return true;
        }
        false
    }

    fn begin_rollback(&mut self, reason: &'static str, why: &str) {
        self.set_phase(
            Phase::RollingBack,
            Some(reason),
            format!("rolling back: {why}"),
        );
        self.note(true, "RollingBack", format!("rolling back: {why}"));
        self.actions.push(Action::Ensure(Step::Restore));
        self.wake_in(POLL);
    }

    fn rolling_back(&mut self) {
        if self.obs.workload.is_none() {
            self.target_gone();
            return;
        }
        if self.workload_reached() {
            let why = self.st.message.clone().unwrap_or_default();
            let reason = self.st.reason.clone();
            // (A change stored by an older graygate supersedes as RollingBack with this reason.)
            if self.st.phase == Phase::Superseding || reason.as_deref() == Some("Superseded") {
                let why = why
                    .trim_start_matches("rolling back: ")
                    .replace("; removing its canary", "");
                self.set_phase(
                    Phase::Superseded,
                    Some("Superseded"),
                    format!("{why}; its canary is gone and the newer change carries on"),
                );
                self.note(false, "Superseded", why);
                return;
            }
            self.set_phase(
                Phase::RolledBack,
                reason.as_deref(),
                format!(
                    "rolled back; the workload runs its old template ({})",
                    why.trim_start_matches("rolling back: ")
                ),
            );
            self.note(
                false,
                "RolledBack",
                "rolled back: every pod runs the old template again",
            );
        } else {
            self.actions.push(Action::Ensure(Step::Restore));
            self.wake_in(POLL);
        }
    }

    fn target_gone(&mut self) {
        self.note(
            true,
            "TargetGone",
            format!("{} no longer exists", self.spec.target),
        );
        self.set_phase(
            Phase::Failed,
            Some("TargetGone"),
            format!("{} disappeared during the change", self.spec.target),
        );
    }

    fn pause(&mut self, reason: &'static str, message: &str) {
        if self.st.phase != Phase::Paused || self.st.reason.as_deref() != Some(reason) {
            self.note(
                reason != "PausedByAnnotation",
                "Paused",
                format!("paused: {message}"),
            );
        }
        self.set_phase(Phase::Paused, Some(reason), format!("paused: {message}"));
    }

    fn paused(&mut self) {
        if self.obs.workload.is_none() {
            self.target_gone();
            return;
        }
        if self.st.reason.as_deref() == Some("AnalysisError") && !self.obs.signals.pause {
            match &self.obs.judgement {
                Some(Judgement::Verdict { .. }) => {
                    // Nothing was observed during the outage: the bake starts over from now.
                    let now = self.obs.now;
                    if let Some(b) = self.current_mut()
                        && b.ready_at.is_some()
                    {
                        b.ready_at = Some(Time(now));
                        b.consecutive_failures = 0;
                    }
                    self.note(
                        false,
                        "Resumed",
                        "analysis works again; the batch bakes again from now",
                    );
                    self.set_phase(Phase::Progressing, None, "analysis works again");
                    self.progress();
                    return;
                }
                Some(Judgement::Error(e)) => {
                    let now = self.obs.now;
                    if let Some(b) = self.current_mut() {
                        b.last_judged_at = Some(Time(now));
                    }
                    self.st.message = Some(trim_to(
                        &format!(
                            "paused: analysis still cannot run ({e}); retrying every interval"
                        ),
                        500,
                    ));
                }
                _ => {}
            }
            if let Some(a) = &self.spec.analysis {
                self.wake_in(a.interval.unwrap_or(DEFAULT_INTERVAL).std());
            }
        }
        let manual_only = self.st.reason.as_deref() == Some("PausedByAnnotation");
        let resume_token = self.obs.signals.resume.clone();
        let new_resume = resume_token.is_some() && resume_token != self.st.handled.resume;
        if self.obs.signals.pause {
            if new_resume {
                // Resume wins once; the pause annotation keeps holding afterwards only if re-added.
                self.st.handled.resume = resume_token;
            } else {
                return;
            }
        } else if !(manual_only || new_resume) {
            return;
        }
        if new_resume {
            self.st.handled.resume = self.obs.signals.resume.clone();
        }
        let was = self.st.reason.clone().unwrap_or_default();
        if was == "SpecChanged" || was == "InvalidSpec" {
            self.adopt_new_template();
        }
        // Resuming after a failed or inconclusive judgement re-runs the batch's checks.
        let now = self.obs.now;
        if let Some(b) = self.current_mut()
            && b.verdict.is_some()
            && b.verdict != Some(Verdict::Pass)
        {
            b.verdict = None;
            b.ready_at = None;
            // The checks run again: the judgement before the pause does not count for the new
            // bake (a bake shorter than warm-up plus an interval would otherwise end on it and
            // pause again at once, for ever).
            b.last_judgement = None;
            // The deadline counts again from the resume, not from the batch's first start.
            b.started_at = Some(Time(now));
            b.consecutive_failures = 0;
            b.reason = None;
        }
        if was != "PausedByAnnotation"
            && let Some(b) = self.current_mut()
        {
            {
                b.consecutive_failures = 0;
                if b.verdict.is_none() {
                    b.ready_at = None;
                    b.last_judged_at = None;
                    b.last_judgement = None;
                }
            }
        }
        // A batch still waiting for its pods has its deadline counted again from the resume:
        // the pause was a person's time, not the pods'.
        if let Some(b) = self.current_mut()
            && b.ready_at.is_none()
        {
            b.started_at = Some(Time(now));
        }
        self.note(false, "Resumed", format!("resumed (was paused: {was})"));
        self.set_phase(Phase::Progressing, None, "resumed");
        self.resumed = true;
        self.progress();
    }

    fn adopt_new_template(&mut self) {
        if let Some(w) = &self.obs.workload {
            let base = self
                .st
                .stable_template
                .clone()
                .unwrap_or_else(|| w.template.clone());
            if let Ok(t) = apply_spec(&base, self.spec, &w.selector) {
                self.st.change_revision = Some(short_hash(&t));
            }
        }
    }

    fn current_mut(&mut self) -> Option<&mut BatchStatus> {
        let i = self.st.current_batch as usize;
        if i == 0 {
            None
        } else {
            self.st.batches.get_mut(i - 1)
        }
    }

    fn start(&mut self) {
        if let Some(Blocker {
            name: other,
            superseded,
        }) = self.obs.blocker.clone()
        {
            if superseded {
                // A supersede is routine: wait quietly for the older change's canary to go.
                let why = format!(
                    "waiting for ChangeRequest {other}, superseded by a newer template, to remove its canary"
                );
                if self.st.reason.as_deref() != Some("Superseding") {
                    self.note(false, "Waiting", why.clone());
                }
                self.set_phase(Phase::Pending, Some("Superseding"), why);
                self.wake_in(StdDuration::from_secs(2));
            } else {
                if self.st.phase != Phase::Blocked {
                    self.note(
                        true,
                        "Blocked",
                        format!(
                            "ChangeRequest {other} holds {}; waiting for it to end",
                            self.spec.target
                        ),
                    );
                }
                self.set_phase(
                    Phase::Blocked,
                    Some("Blocked"),
                    format!("blocked by ChangeRequest {other}, active on the same target"),
                );
                self.wake_in(StdDuration::from_secs(5));
            }
            return;
        }
        let Some(w) = self.obs.workload.clone() else {
            self.set_phase(
                Phase::Pending,
                Some("TargetNotFound"),
                format!("waiting for {} to exist", self.spec.target),
            );
            self.wake_in(StdDuration::from_secs(10));
            return;
        };
        let planned = match plan(&self.spec.batches, w.replicas) {
            Ok(p) => p,
            Err(e) if e.field == "target" => {
                self.set_phase(Phase::Pending, Some("TargetNotAvailable"), e.message);
                self.wake_in(StdDuration::from_secs(10));
                return;
            }
            Err(e) => {
                self.invalid(e);
                return;
            }
        };
        // A guarded workload already holds the new template; its pods run the stable one.
        let stable = w.running.clone().unwrap_or_else(|| w.template.clone());
        let new_template = match apply_spec(&stable, self.spec, &w.selector) {
            Ok(t) => t,
            Err(e) => {
                self.invalid(e);
                return;
            }
        };
        // Then the objects a config change names must exist (that they are the template's own
        // was checked just above).
        if let Some((field, message)) = &w.config_missing {
            self.invalid(FieldError::new(field.clone(), message.clone()));
            return;
        }
        // And the route, rule and Services a traffic-weighted change names.
        if let Some((field, message)) = &w.traffic_invalid {
            self.invalid(FieldError::new(field.clone(), message.clone()));
            return;
        }
        if !w.healthy {
            self.set_phase(
                Phase::Pending,
                Some("TargetNotAvailable"),
                format!(
                    "waiting for {} to be available: {}",
                    self.spec.target, w.unhealthy_reason
                ),
            );
            self.wake_in(StdDuration::from_secs(5));
            return;
        }
        if let Some(win) = &self.spec.window
            && !win.allows(self.obs.now)
        {
            self.set_phase(
                Phase::Pending,
                Some("OutsideWindow"),
                "waiting for the change window to open",
            );
            self.wake_in(StdDuration::from_secs(60));
            return;
        }
        self.st.original_replicas = Some(w.replicas);
        self.st.stable_revision = Some(w.revision.clone());
        self.st.stable_template = Some(stable);
        self.st.original_partition = w.partition;
        self.st.change_revision = Some(short_hash(&new_template));
        self.st.started_at = Some(Time(self.obs.now));
        let selector: Vec<String> = w.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        match self.spec.target.kind {
            TargetKind::Deployment if self.spec.policy.is_some() => {
                // Guarded: the canary is a ReplicaSet the Deployment adopts on release; the
                // groups are told apart by pod-template-hash, as the Deployment controller does.
                let hash = crate::rollout::template_hash(&new_template);
                self.st.canary_name = Some(format!("{}-{hash}", self.spec.target.name));
                self.st.change_selector =
                    Some(format!("{},pod-template-hash={hash}", selector.join(",")));
                self.st.control_selector = Some(format!(
                    "{},pod-template-hash={}",
                    selector.join(","),
                    w.revision
                ));
            }
            TargetKind::Deployment => {
                self.st.canary_name = Some(canary_name(&self.spec.target.name, self.name));
                self.st.change_selector = Some(format!(
                    "{},{LABEL_CHANGE}={}",
                    selector.join(","),
                    self.name
                ));
                self.st.control_selector = Some(format!("{},!{LABEL_CHANGE}", selector.join(",")));
            }
            TargetKind::StatefulSet => {
                self.st.change_selector = Some(format!(
                    "{},controller-revision-hash!={}",
                    selector.join(","),
                    w.revision
                ));
                self.st.control_selector = Some(format!(
                    "{},controller-revision-hash={}",
                    selector.join(","),
                    w.revision
                ));
            }
        }
        if self.spec.baseline == crate::api::Baseline::Fresh
            && self.spec.target.kind == TargetKind::Deployment
        {
            // Pods of the old template started with each batch's canary: its own Deployment,
            // told apart by its label (the control selector of an explicit change excludes it;
            // a guarded change's control is the stable ReplicaSet's pod-template-hash).
            self.st.baseline_name = Some(baseline_name(&self.spec.target.name, self.name));
            self.st.baseline_selector = Some(format!(
                "{},{LABEL_BASELINE}={}",
                selector.join(","),
                self.name
            ));
            if let Some(control) = self.st.control_selector.as_mut()
                && self.spec.policy.is_none()
            {
                control.push_str(&format!(",!{LABEL_BASELINE}"));
            }
        }
        self.st.current_batch = 1;
        self.st.batches.clear();
        self.note(
            false,
            "Started",
            format!(
                "rolling out to {} in {} ({}: {})",
                self.spec.target,
                count(planned.len() as i64, "batch", "batches"),
                count(w.replicas, "pod", "pods"),
                plan_line(&planned)
            ),
        );
        self.set_phase(Phase::Progressing, None, "started");
        self.progress();
    }

    fn approved(&self, batch: u32) -> bool {
        self.obs.signals.approve.is_some_and(|a| a >= batch)
    }

    fn progress(&mut self) {
        // Weights someone else set are never fought over: a person decides (a resume sets
        // graygate's again).
        if let Some(why) = self
            .obs
            .workload
            .as_ref()
            .and_then(|w| w.traffic_changed.clone())
            && !self.resumed
        {
            self.pause("TrafficChanged", &why);
            return;
        }
        let kept = self
            .obs
            .workload
            .clone()
            .and_then(|w| self.follow_live_replicas(&w));
        // Bounded: at most one batch passes and the next one starts in one decision.
        for _ in 0..2 {
            if !self.progress_once() {
                break;
            }
        }
        if let (Some(kept), Some(m)) = (kept, self.st.message.as_mut()) {
            m.push_str("; ");
            m.push_str(&kept);
        }
    }

    /// When something other than graygate owns the target's replica count (an autoscaler, or
    /// the Deployment of a guarded change), the batches follow it: the plan is made again for
    /// the live count, and the status and an Event say what the batch is now and why. A count
    /// whose plan has another number of batches (rounding merges some) keeps the plan it had;
    /// what to add to the message then is returned.
    fn follow_live_replicas(&mut self, w: &WorkloadObs) -> Option<String> {
        let (Some(live), Some(before)) = (w.live_replicas, self.st.original_replicas) else {
            return None;
        };
        if live == before || live < 1 {
            return None;
        }
        let (Ok(old), Ok(new)) = (
            plan(&self.spec.batches, before),
            plan(&self.spec.batches, live),
        ) else {
            return None;
        };
        let who = w.autoscaler.clone().unwrap_or_else(|| "its owner".into());
        let k = self.st.current_batch.max(1) as usize;
        if old.len() != new.len() {
            return Some(format!(
                "{} now has {live} replicas ({who}); the batches keep the sizes planned for {before}, because for {live} rounding would merge some of them",
                self.spec.target
            ));
        }
        self.st.original_replicas = Some(live);
        for (b, p) in self.st.batches.iter_mut().zip(&new) {
            if b.index as usize >= k {
                b.replicas = p.replicas;
            }
        }
        let (was, now) = (
            old.get(k - 1).map_or(0, |p| p.replicas),
            new.get(k - 1).map_or(0, |p| p.replicas),
        );
        self.note(
            false,
            "Rescaled",
            // The whole plan as it now stands: the Started Event keeps the first one.
            format!(
                "{} now has {live} replicas, was {before} ({who}): batch {k}/{} is {}{}; the plan is now {}",
                self.spec.target,
                new.len(),
                count(now, "pod", "pods"),
                if was == now {
                    String::new()
                } else {
                    format!(", was {was}")
                },
                plan_line(&new)
            ),
        );
        None
    }

    /// One step of the current batch. Returns true when the next batch may start right away.
    fn progress_once(&mut self) -> bool {
        let Some(w) = self.obs.workload.clone() else {
            self.target_gone();
            return false;
        };
        let Some(planned) = self.planned() else {
            self.invalid(FieldError::new(
                "batches",
                "the batches no longer fit the recorded replica count",
            ));
            return false;
        };
        let k = self.st.current_batch.max(1);
        self.st.current_batch = k;
        let last = planned.len() as u32;
        let Some(pb) = planned.get(k as usize - 1).cloned() else {
            self.invalid(FieldError::new(
                "batches",
                "batches were removed mid-rollout",
            ));
            return false;
        };
        let step = if k == last {
            Step::Promote
        } else {
            batch_step(
                self.spec,
                &pb,
                self.st.original_replicas.unwrap_or(pb.replicas),
            )
        };
        while self.st.batches.len() < k as usize {
            let index = self.st.batches.len() as u32 + 1;
            let replicas = planned.get(index as usize - 1).map_or(0, |p| p.replicas);
            // The last batch is the promotion: every request goes to the new pods.
            let traffic = match planned.get(index as usize - 1) {
                Some(p) if index < last => match batch_step(
                    self.spec,
                    p,
                    self.st.original_replicas.unwrap_or(p.replicas),
                ) {
                    Step::Batch { traffic, .. } => traffic,
                    _ => None,
                },
                _ => self.spec.traffic.as_ref().map(|_| 100),
            };
            self.st.batches.push(BatchStatus {
                index,
                replicas,
                traffic,
                ..Default::default()
            });
        }
        let now = self.obs.now;
        let idx = k as usize - 1;

        if self.st.batches[idx].started_at.is_none() {
            if let Some(win) = &self.spec.window
                && !win.allows(now)
            {
                self.st.message = Some(format!("batch {k} waits for the change window to open"));
                self.st.reason = Some("OutsideWindow".into());
                self.wake_in(StdDuration::from_secs(60));
                return false;
            }
            if pb.approval == Approval::Manual && !self.approved(k) {
                if self.st.phase != Phase::AwaitingApproval {
                    self.note(
                        false,
                        "AwaitingApproval",
                        format!("batch {k}/{last} waits for approval: kubectl annotate chg {} {ANN_APPROVE}={k}", self.name),
                    );
                }
                self.set_phase(
                    Phase::AwaitingApproval,
                    Some("AwaitingApproval"),
                    format!(
                        "batch {k}/{last} ({}) waits for {ANN_APPROVE}={k}",
                        count(pb.replicas, "pod", "pods")
                    ),
                );
                return false;
            }
            if self.st.phase == Phase::AwaitingApproval {
                self.note(false, "Approved", format!("batch {k} approved"));
            }
            self.st.batches[idx].started_at = Some(Time(now));
            self.set_phase(
                Phase::Progressing,
                None,
                format!("batch {k}/{last}: scaling to {} new pods", pb.replicas),
            );
            let what = if step == Step::Promote {
                format!(
                    "promoting: writing the new template into {}",
                    self.spec.target
                )
            } else {
                format!(
                    "{} of {} pods on the new template",
                    pb.replicas,
                    self.st.original_replicas.unwrap_or(0)
                )
            };
            self.note(
                false,
                "BatchStarted",
                format!("batch {k}/{last} started: {what}"),
            );
            // The observation describes the previous step; readiness is judged on the next look.
            self.actions.push(Action::Ensure(step));
            self.wake_in(POLL);
            return false;
        }
        self.st.phase = Phase::Progressing;
        self.actions.push(Action::Ensure(step.clone()));
        self.st.batches[idx].pods_ready = w.changed_ready.min(pb.replicas);

        if self.st.batches[idx].ready_at.is_none() {
            if w.step_reached {
                self.st.batches[idx].ready_at = Some(Time(now));
                self.st.batches[idx].pods_ready = pb.replicas;
                let (bake, widened) = effective_bake(self.spec, pb.bake);
                self.note(
                    false,
                    "BatchReady",
                    format!(
                        "batch {k}/{last}: {} ready; baking for {}",
                        if pb.replicas == 1 {
                            "its new pod is".to_string()
                        } else {
                            format!("all {} new pods", pb.replicas)
                        },
                        widened
                            .as_deref()
                            .map_or_else(|| bake.to_string(), str::to_string)
                    ),
                );
                self.st.message = Some(match &widened {
                    Some(w) => format!("batch {k}/{last}: baking {w}"),
                    None => format!("batch {k}/{last}: baking"),
                });
                self.st.reason = None;
            } else {
                let started = ts(&self.st.batches[idx].started_at).unwrap_or(now);
                if since(now, started) > self.spec.progress_deadline.std() {
                    let why = format!(
                        "only {}/{} new pods ready and available after progressDeadline {}",
                        w.changed_ready.min(pb.replicas),
                        pb.replicas,
                        self.spec.progress_deadline
                    );
                    self.fail_batch(idx, "ProgressDeadlineExceeded", &why);
                    return false;
                }
                self.st.message = Some(format!(
                    "batch {k}/{last}: waiting for new pods ({}/{} ready)",
                    w.changed_ready.min(pb.replicas),
                    pb.replicas
                ));
                self.wake_in(POLL);
                return false;
            }
        }

        let ready_at = ts(&self.st.batches[idx].ready_at).unwrap_or(now);
        let bake = effective_bake(self.spec, pb.bake).0;
        let bake_end = add(ready_at, bake);
        let passed = match &self.spec.analysis {
            None => {
                if now >= bake_end {
                    Some(format!("baked {} without analysis", pb.bake))
                } else {
                    self.wake_in(until(now, bake_end).max(StdDuration::from_millis(200)));
                    None
                }
            }
            Some(analysis) => match self.take_judgement(idx, analysis) {
                Flow::Stop => return false,
                Flow::Continue => {
                    let b = &self.st.batches[idx];
                    if now >= bake_end && b.last_judgement == Some(Verdict::Pass) {
                        Some(format!(
                            "{} over {}; the last passed",
                            count(b.judgements, "judgement", "judgements"),
                            bake
                        ))
                    } else if now >= bake_end && b.last_judgement == Some(Verdict::Inconclusive) {
                        let why = b.reason.clone().unwrap_or_else(|| "not enough data".into());
                        self.st.batches[idx].verdict = Some(Verdict::Inconclusive);
                        self.st.verdict = Some(Verdict::Inconclusive);
                        self.pause(
                            "Inconclusive",
                            &format!("batch {k} ended its bake without enough data: {why}"),
                        );
                        return false;
                    } else {
                        let interval = analysis.interval.unwrap_or(DEFAULT_INTERVAL).std();
                        self.wake_in(
                            interval.min(until(now, bake_end).max(StdDuration::from_millis(500))),
                        );
                        None
                    }
                }
            },
        };
        let Some(why) = passed else { return false };
        let b = &mut self.st.batches[idx];
        b.verdict = Some(Verdict::Pass);
        b.bake_ended_at = Some(Time(now));
        b.reason = Some(why.clone());
        self.st.verdict = Some(Verdict::Pass);
        self.note(
            false,
            "BatchPassed",
            format!("batch {k}/{last} passed: {why}"),
        );
        if k == last {
            // A generated change queued behind by a newer template is verified but not released.
            let overtaken = match (&self.spec.template, &self.obs.workload) {
                (Some(t), Some(w)) if self.spec.policy.is_some() => {
                    crate::rollout::template_hash(t) != crate::rollout::template_hash(&w.template)
                }
                _ => false,
            };
            let message = if overtaken {
                format!(
                    "all {last} batches passed, but {} now holds a newer template, which goes out as its own change: this one was not released",
                    self.spec.target
                )
            } else {
                format!(
                    "all {last} batches passed; {} runs the new template",
                    self.spec.target
                )
            };
            self.set_phase(Phase::Succeeded, Some("Succeeded"), message);
            self.note(
                false,
                "Succeeded",
                format!("{} runs the new template on all pods", self.spec.target),
            );
            return false;
        }
        self.st.current_batch = k + 1;
        true
    }

    fn take_judgement(&mut self, idx: usize, analysis: &AnalysisSpec) -> Flow {
        let Some(j) = &self.obs.judgement else {
            return Flow::Continue;
        };
        let now = self.obs.now;
        let k = idx + 1;
        let limit = analysis.failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT);
        match j {
            Judgement::SpecError(e) => {
                self.st.batches[idx].last_judged_at = Some(Time(now));
                self.invalid(e.clone());
                Flow::Stop
            }
            Judgement::Error(e) => {
                self.st.batches[idx].last_judged_at = Some(Time(now));
                match self.spec.on_analysis_error {
                    OnAnalysisError::Pause => {
                        self.pause("AnalysisError", &format!("batch {k}: analysis could not run ({}); holding (onAnalysisError: pause)", trim_to(e, 200)));
                        Flow::Stop
                    }
                    OnAnalysisError::Continue => {
                        let b = &mut self.st.batches[idx];
                        b.judgements += 1;
                        b.last_judgement = Some(Verdict::Pass);
                        b.reason = Some(format!(
                            "analysis error treated as pass (onAnalysisError: continue): {}",
                            trim_to(e, 200)
                        ));
                        self.note(true, "AnalysisError", format!("batch {k}: analysis could not run ({}); continuing (onAnalysisError: continue)", trim_to(e, 200)));
                        Flow::Continue
                    }
                }
            }
            Judgement::Verdict {
                verdict,
                summary,
                findings,
                record,
            } => {
                // The first batch's canary is the young one the workload's history is about; the
                // latest judgement covers the most of it.
                if idx == 0 && record.is_some() {
                    self.st.record.clone_from(record);
                }
                let b = &mut self.st.batches[idx];
                b.judgements += 1;
                b.last_judged_at = Some(Time(now));
                b.last_judgement = Some(*verdict);
                b.findings = findings
                    .iter()
                    .take(MAX_FINDINGS)
                    .cloned()
                    .map(trim_finding)
                    .collect();
                b.reason = Some(trim_to(summary, 300));
                b.judged.clone_from(&self.obs.judged);
                if *verdict == Verdict::Fail {
                    b.consecutive_failures += 1;
                    let n = b.consecutive_failures;
                    if n >= limit {
                        let why =
                            format!("{n} failing judgements in a row: {}", trim_to(summary, 300));
                        self.fail_batch(idx, "AnalysisFailed", &why);
                        return Flow::Stop;
                    }
                    self.note(
                        true,
                        "JudgementFailed",
                        format!(
                            "batch {k}: judgement {n}/{limit} failed: {}",
                            trim_to(summary, 300)
                        ),
                    );
                } else {
                    b.consecutive_failures = 0;
                }
                Flow::Continue
            }
        }
    }

    fn fail_batch(&mut self, idx: usize, reason: &'static str, why: &str) {
        let now = self.obs.now;
        let k = idx + 1;
        let b = &mut self.st.batches[idx];
        b.verdict = Some(Verdict::Fail);
        b.bake_ended_at = Some(Time(now));
        b.reason = Some(trim_to(why, 300));
        self.st.verdict = Some(Verdict::Fail);
        self.note(
            true,
            "BatchFailed",
            format!("batch {k} failed ({reason}): {why}"),
        );
        match self.spec.on_anomaly {
            OnAnomaly::Rollback => self.begin_rollback(reason, &format!("batch {k} failed: {why}")),
            OnAnomaly::Pause => self.pause(
                reason,
                &format!("batch {k} failed: {why} (onAnomaly: pause)"),
            ),
        }
    }
}

enum Flow {
    Continue,
    Stop,
}

fn trim_finding(mut f: Finding) -> Finding {
    f.metric = trim_to(&f.metric, 200);
    f.explanation = trim_to(&f.explanation, 300);
    f
}

/// The canary Deployment's name for a target and a ChangeRequest.
pub fn canary_name(target: &str, change: &str) -> String {
    object_name(format!("{target}-canary-{change}"))
}

/// The pods on the new template after each batch, as "1 → 2 → 4".
fn plan_line(planned: &[PlannedBatch]) -> String {
    planned
        .iter()
        .map(|b| b.replicas.to_string())
        .collect::<Vec<_>>()
        .join(" → ")
}

/// The fresh baseline's Deployment name for a target and a ChangeRequest.
pub fn baseline_name(target: &str, change: &str) -> String {
    object_name(format!("{target}-baseline-{change}"))
}

// A name of at most 63 characters: cut and made unique by a hash when longer.
fn object_name(full: String) -> String {
    if full.len() <= 63 {
        return full;
    }
    let hash = short_hash(&Value::String(full.clone()));
    let keep: String = full.chars().take(63 - 11).collect();
    format!("{}-{hash}", keep.trim_end_matches('-'))
}

fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
    generation: i64,
) -> Condition {
    Condition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.into(),
        message: trim_to(message, 500),
        last_transition_time: Time(now),
        observed_generation: Some(generation),
    }
}

/// Derive Ready, Progressing and Degraded from the phase, keeping transition times that did not change.
pub fn set_conditions(st: &mut ChangeRequestStatus, now: Timestamp, generation: i64) {
    let phase = st.phase;
    let reason = st
        .reason
        .clone()
        .unwrap_or_else(|| phase.as_str().to_string());
    let message = st.message.clone().unwrap_or_default();
    let ready = condition(
        "Ready",
        phase == Phase::Succeeded,
        &reason,
        &message,
        now,
        generation,
    );
    let progressing = condition(
        "Progressing",
        matches!(
            phase,
            Phase::Progressing | Phase::RollingBack | Phase::Superseding
        ),
        &reason,
        &message,
        now,
        generation,
    );
    let degraded_now = (matches!(
        phase,
        Phase::Failed | Phase::RolledBack | Phase::RollingBack
    ) && st.reason.as_deref() != Some("Superseded"))
        || (phase == Phase::Paused && st.reason.as_deref() != Some("PausedByAnnotation"))
        || phase == Phase::Invalid;
    let degraded = condition("Degraded", degraded_now, &reason, &message, now, generation);
    let mut next = Vec::new();
    for mut c in [ready, progressing, degraded] {
        if let Some(old) = st.conditions.iter().find(|o| o.type_ == c.type_)
            && old.status == c.status
        {
            c.last_transition_time = old.last_transition_time.clone();
        }
        next.push(c);
    }
    st.conditions = next;
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
