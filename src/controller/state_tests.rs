use super::*;
use serde_json::json;

fn spec(yaml: &str) -> ChangeRequestSpec {
    serde_yaml::from_str(yaml).unwrap()
}

const BASIC: &str = r#"
target: {kind: Deployment, name: web}
images: {app: "web:2"}
batches: [{percent: 25, bake: 30s}, {percent: 50, bake: 30s}, {percent: 100, bake: 30s}]
"#;

fn t(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

fn workload(reached: bool, ready: i32) -> WorkloadObs {
    WorkloadObs {
        replicas: 4,
        healthy: true,
        unhealthy_reason: String::new(),
        template: json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:1"}]}}),
        running: None,
        selector: [("app".to_string(), "web".to_string())].into(),
        revision: "abc".into(),
        partition: None,
        changed_ready: ready,
        step_reached: reached,
        live_replicas: None,
        autoscaler: None,
        ..Default::default()
    }
}

fn obs(now: i64) -> Observation {
    Observation {
        now: t(now),
        generation: 1,
        signals: Signals::default(),
        deleting: false,
        blocker: None,
        workload: Some(workload(false, 0)),
        judgement: None,
        judged: None,
        refused: None,
    }
}

fn reasons(d: &Decision) -> Vec<&'static str> {
    d.notes.iter().map(|n| n.reason).collect()
}

fn cond<'a>(st: &'a ChangeRequestStatus, t: &str) -> &'a Condition {
    st.conditions.iter().find(|c| c.type_ == t).unwrap()
}

/// Start a basic change and return the status with batch 1 started.
fn started(s: &ChangeRequestSpec) -> ChangeRequestStatus {
    let d = decide("chg", s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.phase, Phase::Progressing);
    d.status
}

#[test]
fn pending_to_progressing_starts_batch_one() {
    let s = spec(BASIC);
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.current_batch, 1);
    assert_eq!(d.status.batch.as_deref(), Some("1/3"));
    assert_eq!(d.status.original_replicas, Some(4));
    assert_eq!(d.status.stable_revision.as_deref(), Some("abc"));
    assert_eq!(d.status.canary_name.as_deref(), Some("web-canary-chg"));
    assert_eq!(
        d.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 1,
            traffic: None
        })]
    );
    assert_eq!(reasons(&d), vec!["Started", "BatchStarted"]);
    assert_eq!(cond(&d.status, "Progressing").status, "True");
    assert_eq!(
        d.status.change_selector.as_deref(),
        Some("app=web,graygate.io/change=chg")
    );
    assert_eq!(
        d.status.control_selector.as_deref(),
        Some("app=web,!graygate.io/change")
    );
}

#[test]
fn a_fresh_baseline_gets_its_own_deployment_and_selector_and_leaves_the_control() {
    let mut s = spec(BASIC);
    s.baseline = Baseline::Fresh;
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.baseline_name.as_deref(), Some("web-baseline-chg"));
    assert_eq!(
        d.status.baseline_selector.as_deref(),
        Some("app=web,graygate.io/baseline=chg")
    );
    assert_eq!(
        d.status.control_selector.as_deref(),
        Some("app=web,!graygate.io/change,!graygate.io/baseline")
    );
    // Without it, nothing of the kind.
    let d = decide(
        "chg",
        &spec(BASIC),
        &ChangeRequestStatus::default(),
        &obs(0),
    );
    assert_eq!(d.status.baseline_name, None);
    assert_eq!(d.status.baseline_selector, None);
}

#[test]
fn batches_follow_an_autoscaler_and_say_so() {
    let s = spec(BASIC);
    let st = started(&s);
    // The autoscaler takes the target from 4 to 8 replicas during batch 1 (25%: 1 → 2 pods).
    let mut o = obs(5);
    o.workload = Some(WorkloadObs {
        replicas: 8,
        live_replicas: Some(8),
        autoscaler: Some("HorizontalPodAutoscaler/web".into()),
        ..workload(false, 0)
    });
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.original_replicas, Some(8));
    assert_eq!(d.status.batches[0].replicas, 2);
    assert_eq!(
        d.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 2,
            traffic: None
        })]
    );
    let n = d.notes.iter().find(|n| n.reason == "Rescaled").unwrap();
    assert_eq!(
        n.message,
        "Deployment/web now has 8 replicas, was 4 (HorizontalPodAutoscaler/web): batch 1/3 is 2 pods, was 1; the plan is now 2 → 4 → 8"
    );
    // Down to 2: for 2 replicas 25% and 50% would both be 1 pod and merge; the plan stays and
    // the message says why.
    let mut o = obs(6);
    o.workload = Some(WorkloadObs {
        replicas: 2,
        live_replicas: Some(2),
        autoscaler: Some("HorizontalPodAutoscaler/web".into()),
        ..workload(false, 0)
    });
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.original_replicas, Some(8));
    assert!(
        d.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains("keep the sizes planned for 8")),
        "{:?}",
        d.status.message
    );
    // graygate sizing the target itself (no live count): nothing follows.
    let d = decide("chg", &s, &st, &obs(5));
    assert_eq!(d.status.original_replicas, Some(4));
}

#[test]
fn invalid_spec_touches_nothing_and_names_the_field() {
    let s = spec(
        "target: {kind: Deployment, name: web}\nimages: {db: 'pg:16'}\nbatches: [{percent: 100}]",
    );
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.phase, Phase::Invalid);
    assert!(d.actions.is_empty());
    // No batch column for a change that cannot start, whichever field is wrong (it used to
    // show `0/1` here and nothing when the batches themselves were wrong).
    assert_eq!(d.status.batch, None);
    let ready = cond(&d.status, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("spec.images.db"),
        "{}",
        ready.message
    );
    assert_eq!(
        d.requeue, None,
        "an invalid object waits for a change instead of looping"
    );
    // The same generation again: still invalid, no new Event.
    let d2 = decide("chg", &s, &d.status, &obs(5));
    assert_eq!(d2.status.phase, Phase::Invalid);
    assert!(d2.notes.is_empty());
}

#[test]
fn a_config_change_whose_object_is_missing_is_invalid_before_anything_starts() {
    let s = spec(
        "target: {kind: Deployment, name: web}\nconfig: [{secret: web-db, from: web-db-v2}]\nbatches: [{percent: 100}]",
    );
    let mut o = obs(0);
    o.workload = Some(WorkloadObs {
        config_missing: Some((
            "config[0].from".into(),
            "Secret web-db-v2 does not exist".into(),
        )),
        template: json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [
            {"name": "app", "image": "web:1", "envFrom": [{"secretRef": {"name": "web-db"}}]}
        ]}}),
        ..workload(false, 0)
    });
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(d.status.phase, Phase::Invalid);
    assert!(d.actions.is_empty());
    assert_eq!(
        d.status.message.as_deref(),
        Some("spec.config[0].from: Secret web-db-v2 does not exist")
    );
}

#[test]
fn invalid_becomes_pending_again_on_a_new_generation() {
    let bad = spec(
        "target: {kind: Deployment, name: web}\nimages: {db: 'pg:16'}\nbatches: [{percent: 100}]",
    );
    let d = decide("chg", &bad, &ChangeRequestStatus::default(), &obs(0));
    let mut o = obs(10);
    o.generation = 2;
    let d2 = decide("chg", &spec(BASIC), &d.status, &o);
    assert_eq!(d2.status.phase, Phase::Progressing);
}

#[test]
fn static_spec_errors_are_invalid_too() {
    let s = spec(
        "target: {kind: Deployment, name: web}\nimages: {app: 'web:2'}\nbatches: [{percent: 60}, {percent: 50}, {percent: 100}]",
    );
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.phase, Phase::Invalid);
    assert_eq!(d.status.batch, None);
    assert!(
        d.status
            .message
            .unwrap()
            .contains("spec.batches[1].percent")
    );
}

#[test]
fn blocked_while_another_change_holds_the_target() {
    let s = spec(BASIC);
    let mut o = obs(0);
    o.blocker = Some("first".into());
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(d.status.phase, Phase::Blocked);
    assert!(d.actions.is_empty());
    assert!(d.status.message.as_ref().unwrap().contains("first"));
    assert_eq!(reasons(&d), vec!["Blocked"]);
    // The first one ended: this one starts.
    let d2 = decide("chg", &s, &d.status, &obs(10));
    assert_eq!(d2.status.phase, Phase::Progressing);
}

#[test]
fn pending_waits_for_target_health_and_window() {
    let s = spec(BASIC);
    let mut o = obs(0);
    o.workload = None;
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Pending, Some("TargetNotFound"))
    );
    let mut o = obs(0);
    o.workload.as_mut().unwrap().healthy = false;
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Pending, Some("TargetNotAvailable"))
    );
    assert!(d.actions.is_empty());
    let mut ws = s.clone();
    // t(0) is 2027-01-15T08:00:00Z, a Friday.
    ws.window = Some(ChangeWindow {
        time_zone: "UTC".into(),
        days: vec!["Sat".into()],
        start: "00:00".into(),
        end: "23:59".into(),
    });
    let d = decide("chg", &ws, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Pending, Some("OutsideWindow"))
    );
    assert!(d.actions.is_empty());
}

#[test]
fn zero_replicas_waits_instead_of_invalid() {
    let mut o = obs(0);
    o.workload.as_mut().unwrap().replicas = 0;
    let d = decide("chg", &spec(BASIC), &ChangeRequestStatus::default(), &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Pending, Some("TargetNotAvailable"))
    );
}

#[test]
fn batch_becomes_ready_then_bakes_then_passes_and_next_starts() {
    let s = spec(BASIC);
    let st = started(&s);
    // Not ready yet: keep ensuring, wait.
    let d = decide("chg", &s, &st, &obs(1));
    assert_eq!(
        d.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 1,
            traffic: None
        })]
    );
    assert!(d.status.batches[0].ready_at.is_none());
    // Ready.
    let mut o = obs(5);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.batches[0].ready_at, Some(Time(t(5))));
    assert_eq!(reasons(&d), vec!["BatchReady"]);
    // Baking, not over.
    let mut o = obs(20);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &d.status, &o);
    assert!(d.status.batches[0].verdict.is_none());
    assert!(d.requeue.unwrap() <= StdDuration::from_secs(15));
    // Bake over: pass, batch 2 starts in the same decision.
    let mut o = obs(36);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
    assert_eq!(d.status.current_batch, 2);
    assert_eq!(d.status.batch.as_deref(), Some("2/3"));
    assert_eq!(
        d.actions,
        vec![
            Action::Ensure(Step::Batch {
                changed: 1,
                traffic: None
            }),
            Action::Ensure(Step::Batch {
                changed: 2,
                traffic: None
            })
        ]
    );
    assert_eq!(reasons(&d), vec!["BatchPassed", "BatchStarted"]);
    assert!(
        d.status.batches[1].ready_at.is_none(),
        "batch 2 is not ready on batch 1's observation"
    );
    assert_eq!(
        current_step(&s, &d.status),
        Some(Step::Batch {
            changed: 2,
            traffic: None
        })
    );
}

/// Run a change through with a workload that reaches each step at once.
fn run_to_end(s: &ChangeRequestSpec) -> (ChangeRequestStatus, Vec<Action>, Vec<&'static str>) {
    let mut st = ChangeRequestStatus::default();
    let mut actions = Vec::new();
    let mut notes = Vec::new();
    for i in 0..200 {
        let mut o = obs(i * 10);
        o.workload = Some(workload(i > 0, 4));
        let d = decide("chg", s, &st, &o);
        actions.extend(d.actions.clone());
        notes.extend(reasons(&d));
        st = d.status;
        if st.phase.is_terminal() {
            break;
        }
    }
    (st, actions, notes)
}

#[test]
fn last_batch_promotes_and_succeeds() {
    let (st, actions, notes) = run_to_end(&spec(BASIC));
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(actions.contains(&Action::Ensure(Step::Promote)));
    assert!(!actions.contains(&Action::Ensure(Step::Restore)));
    assert_eq!(
        st.batches.iter().map(|b| b.verdict).collect::<Vec<_>>(),
        vec![Some(Verdict::Pass); 3]
    );
    assert_eq!(notes.last(), Some(&"Succeeded"));
    assert_eq!(cond(&st, "Ready").status, "True");
    assert_eq!(cond(&st, "Degraded").status, "False");
    assert!(st.finished_at.is_some());
}

#[test]
fn deadline_rolls_back_or_pauses() {
    let s = spec(BASIC);
    let st = started(&s);
    let mut o = obs(601);
    o.workload = Some(workload(false, 0));
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.phase, Phase::RollingBack);
    assert_eq!(d.status.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Fail));
    assert!(d.actions.contains(&Action::Ensure(Step::Restore)));
    assert_eq!(reasons(&d), vec!["BatchFailed", "RollingBack"]);
    // Rollback completes.
    let mut o = obs(610);
    o.workload = Some(workload(true, 0));
    let d2 = decide("chg", &s, &d.status, &o);
    assert_eq!(d2.status.phase, Phase::RolledBack);
    assert_eq!(cond(&d2.status, "Degraded").status, "True");
    assert_eq!(d2.requeue, None);

    let mut ps = s.clone();
    ps.on_anomaly = OnAnomaly::Pause;
    let d = decide("chg", &ps, &started(&ps), &obs(601));
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("ProgressDeadlineExceeded"))
    );
    assert!(!d.actions.contains(&Action::Ensure(Step::Restore)));
}

#[test]
fn manual_approval_waits_for_the_annotation() {
    let s = spec(
        "target: {kind: Deployment, name: web}\nimages: {app: 'web:2'}\nbatches: [{percent: 25, bake: 0s, approval: manual}, {percent: 100, bake: 0s, approval: manual}]",
    );
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.phase, Phase::AwaitingApproval);
    assert!(d.actions.is_empty());
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("graygate.io/approve=1")
    );
    let d = decide("chg", &s, &d.status, &obs(5));
    assert_eq!(d.status.phase, Phase::AwaitingApproval);
    let mut o = obs(10);
    o.signals.approve = Some(1);
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(
        d.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 1,
            traffic: None
        })]
    );
    assert_eq!(reasons(&d), vec!["Approved", "BatchStarted"]);
    // Batch 1 passes; batch 2 needs approve=2, approve=1 is not enough.
    let mut o = obs(20);
    o.signals.approve = Some(1);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
    assert_eq!(
        (d.status.phase, d.status.current_batch),
        (Phase::AwaitingApproval, 2)
    );
}

#[test]
fn pause_annotation_holds_and_removal_continues() {
    let s = spec(BASIC);
    let st = started(&s);
    let mut o = obs(5);
    o.signals.pause = true;
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("PausedByAnnotation"))
    );
    assert!(d.actions.is_empty());
    assert_eq!(
        cond(&d.status, "Degraded").status,
        "False",
        "a manual pause is not degradation"
    );
    assert_eq!(d.status.phase_since, Some(Time(t(5))));
    let mut later = o.clone();
    later.now = t(8);
    let d = decide("chg", &s, &d.status, &later);
    assert_eq!(d.status.phase, Phase::Paused);
    assert_eq!(
        d.status.phase_since,
        Some(Time(t(5))),
        "staying paused keeps the time it paused"
    );
    let d = decide("chg", &s, &d.status, &obs(10));
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.phase_since, Some(Time(t(10))));
    assert_eq!(reasons(&d), vec!["Resumed"]);
}

#[test]
fn abort_rolls_back_once() {
    let s = spec(BASIC);
    let st = started(&s);
    let mut o = obs(5);
    o.signals.abort = Some("now".into());
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::RollingBack, Some("Aborted"))
    );
    assert_eq!(d.actions, vec![Action::Ensure(Step::Restore)]);
    o.workload = Some(workload(true, 0));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::RolledBack);
    // A handled abort token does nothing more.
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(d.actions.is_empty() && d.notes.is_empty());
}

#[test]
fn abort_before_start_changes_nothing() {
    let s = spec(BASIC);
    let mut o = obs(0);
    o.blocker = Some("other".into());
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    o.signals.abort = Some("x".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(d.actions.is_empty());
}

/// A change aborted in its first batch (annotation `abort=a`) and rolled back.
fn rolled_back(s: &ChangeRequestSpec) -> ChangeRequestStatus {
    let mut o = obs(5);
    o.signals.abort = Some("a".into());
    let d = decide("chg", s, &started(s), &o);
    o.workload = Some(workload(true, 0));
    let rolled = decide("chg", s, &d.status, &o).status;
    assert_eq!(rolled.phase, Phase::RolledBack);
    rolled
}

#[test]
fn retry_restarts_a_rolled_back_change() {
    let s = spec(BASIC);
    let rolled = rolled_back(&s);
    let mut o = obs(20);
    o.signals.abort = Some("a".into());
    o.signals.retry = Some("r1".into());
    let d = decide("chg", &s, &rolled, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.current_batch, 1);
    assert_eq!(d.status.batches.len(), 1);
    assert_eq!(reasons(&d), vec!["Retry", "Started", "BatchStarted"]);
    assert_eq!(
        d.status.handled.abort.as_deref(),
        Some("a"),
        "the old abort is not acted on again"
    );
    // Retry on an active change is ignored with an Event.
    let d2 = decide("chg", &s, &d.status, &{
        let mut o = obs(21);
        o.signals.retry = Some("r2".into());
        o
    });
    assert_eq!(reasons(&d2), vec!["RetryIgnored"]);
    assert_eq!(d2.status.phase, Phase::Progressing);
}

#[test]
fn feedback_is_recorded_in_any_phase_and_a_wrong_value_is_reported_once() {
    let s = spec(BASIC);
    let rolled = rolled_back(&s);
    // A typo: an Event naming the annotation, nothing recorded, and only once.
    let mut o = obs(20);
    o.signals.abort = Some("a".into());
    o.signals.feedback = Some("false alarm".into());
    let d = decide("chg", &s, &rolled, &o);
    assert_eq!(reasons(&d), vec!["FeedbackInvalid"]);
    assert!(d.notes[0].warning);
    assert!(
        d.notes[0].message.contains("graygate.io/feedback"),
        "{}",
        d.notes[0].message
    );
    assert_eq!(d.status.feedback, None);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert!(decide("chg", &s, &d.status, &o).notes.is_empty());
    // The right value: recorded with the phase it was given in, once.
    o.signals.feedback = Some("false-alarm".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(reasons(&d), vec!["FeedbackRecorded"]);
    let f = d.status.feedback.clone().unwrap();
    assert_eq!(f.verdict, FeedbackVerdict::FalseAlarm);
    assert_eq!(f.phase, Phase::RolledBack);
    assert_eq!(f.recorded_at, Time(t(20)));
    assert!(decide("chg", &s, &d.status, &o).notes.is_empty());
    // A retry keeps the verdict on the run it stopped.
    o.signals.retry = Some("r1".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(
        d.status.feedback.map(|f| f.verdict),
        Some(FeedbackVerdict::FalseAlarm)
    );
}

fn analysis_spec(extra: &str) -> ChangeRequestSpec {
    spec(&format!(
        "{BASIC}analysis: {{interval: 10s, failureLimit: 2}}\n{extra}"
    ))
}

fn ready_status(s: &ChangeRequestSpec) -> ChangeRequestStatus {
    let mut o = obs(1);
    o.workload = Some(workload(true, 1));
    decide("chg", s, &started(s), &o).status
}

fn verdict(v: Verdict) -> Option<Judgement> {
    Some(Judgement::Verdict {
        record: None,
        verdict: v,
        summary: format!("{v:?} summary"),
        findings: vec![Finding {
            metric: "errors".into(),
            detector: "proportion".into(),
            groups: "change vs control".into(),
            outcome: Some(v),
            explanation: "x".into(),
            ..Default::default()
        }],
    })
}

#[test]
fn judgement_is_due_every_interval_after_ready() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    // Ready at 1s; the default warm-up is a third of the 30s bake (at most a minute): 10s.
    assert_eq!(judgement_due(&s, &st, t(15)), None);
    let w = judgement_due(&s, &st, t(21)).unwrap();
    assert_eq!((w.batch, w.from, w.to), (1, t(11), t(21)));
    let mut o = obs(21);
    o.workload = Some(workload(true, 1));
    o.judgement = verdict(Verdict::Pass);
    let st = decide("chg", &s, &st, &o).status;
    assert_eq!(judgement_due(&s, &st, t(25)), None);
    assert!(judgement_due(&s, &st, t(31)).is_some());
    assert_eq!(
        judgement_due(&spec(BASIC), &st, t(100)),
        None,
        "no analysis, no judgement"
    );
}

#[test]
fn a_bake_too_short_to_judge_is_widened_and_says_so() {
    // 10s bakes judged every 5s: the default warm-up is 3.3s, and the last judgement of a 10s
    // bake would cover one interval. The bake becomes 14s (3.3s + 2 × 5s, whole seconds).
    let s = spec(
        "target: {kind: Deployment, name: web}\nimages: {app: \"web:2\"}\nbatches: [{percent: 25, bake: 10s}, {percent: 100, bake: 10s}]\nanalysis: {interval: 5s}\n",
    );
    let (bake, why) = effective_bake(&s, Duration::from_secs(10));
    assert_eq!(bake, Duration::from_secs(14));
    let why = why.unwrap();
    assert_eq!(
        why,
        "14s, widened from the spec's 10s: a judgement needs the 3.3s warm-up plus two 5s analysis intervals"
    );
    // Long enough, or without analysis: the spec's bake stands.
    assert_eq!(
        effective_bake(&s, Duration::from_secs(30)),
        (Duration::from_secs(30), None)
    );
    assert_eq!(
        effective_bake(&spec(BASIC), Duration::from_secs(1)),
        (Duration::from_secs(1), None)
    );
    // Ready at 1s: the Event and the status say so.
    let mut o = obs(1);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &started(&s), &o);
    let ready = d.notes.iter().find(|n| n.reason == "BatchReady").unwrap();
    assert!(
        ready
            .message
            .starts_with("batch 1/2: its new pod is ready;"),
        "{}",
        ready.message
    );
    assert!(
        ready.message.ends_with(&format!("baking for {why}")),
        "{}",
        ready.message
    );
    assert_eq!(
        d.status.message.as_deref(),
        Some(format!("batch 1/2: baking {why}").as_str())
    );
    // A passing judgement at 10s (its window one interval long) does not end the bake, even
    // past the spec's 10s; the next, at 15s, does, over a window of two intervals.
    let mut st = d.status;
    let mut o = obs(10);
    o.workload = Some(workload(true, 1));
    o.judgement = verdict(Verdict::Pass);
    st = decide("chg", &s, &st, &o).status;
    let mut o = obs(12);
    o.workload = Some(workload(true, 1));
    st = decide("chg", &s, &st, &o).status;
    assert_eq!((st.current_batch, st.batches[0].verdict), (1, None));
    let w = judgement_due(&s, &st, t(15)).unwrap();
    assert!(w.to.as_second() - w.from.as_second() >= 10, "{w:?}");
    let mut o = obs(15);
    o.workload = Some(workload(true, 1));
    o.judgement = verdict(Verdict::Pass);
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
}

#[test]
fn an_explicit_warmup_replaces_the_default() {
    let s = spec(&format!("{BASIC}analysis: {{interval: 10s, warmup: 0s}}\n"));
    let st = ready_status(&s);
    let w = judgement_due(&s, &st, t(11)).unwrap();
    assert_eq!(w.from, t(1));
    let long = spec(
        "target: {kind: Deployment, name: web}\nimages: {app: \"web:2\"}\nbatches: [{percent: 25, bake: 10m}, {percent: 100, bake: 10m}]\nanalysis: {interval: 10s}\n",
    );
    let st = ready_status(&long);
    assert_eq!(
        judgement_due(&long, &st, t(65)),
        None,
        "a minute of warm-up at most"
    );
    assert_eq!(judgement_due(&long, &st, t(71)).unwrap().from, t(61));
}

#[test]
fn failing_judgements_reach_the_failure_limit_and_roll_back() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(11);
    o.workload = Some(workload(true, 1));
    o.judgement = verdict(Verdict::Fail);
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.batches[0].consecutive_failures, 1);
    assert_eq!(reasons(&d), vec!["JudgementFailed"]);
    assert_eq!(d.status.batches[0].findings.len(), 1);
    o.now = t(21);
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::RollingBack, Some("AnalysisFailed"))
    );
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Fail));
    assert!(d.actions.contains(&Action::Ensure(Step::Restore)));
}

#[test]
fn a_passing_judgement_resets_the_failure_count() {
    let s = analysis_spec("");
    let mut st = ready_status(&s);
    for (i, v) in [Verdict::Fail, Verdict::Pass, Verdict::Fail]
        .into_iter()
        .enumerate()
    {
        let mut o = obs(11 + 10 * i as i64);
        o.workload = Some(workload(true, 1));
        o.judgement = verdict(v);
        st = decide("chg", &s, &st, &o).status;
    }
    assert_eq!(st.phase, Phase::Progressing);
    assert_eq!(st.batches[0].consecutive_failures, 1);
}

#[test]
fn bake_end_passes_only_on_a_passing_last_judgement() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(32);
    o.workload = Some(workload(true, 1));
    // Bake over but no judgement yet: keep waiting.
    let d = decide("chg", &s, &st, &o);
    assert!(d.status.batches[0].verdict.is_none());
    o.judgement = verdict(Verdict::Pass);
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
    assert_eq!(d.status.current_batch, 2);
}

#[test]
fn inconclusive_at_bake_end_pauses_with_the_reason() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(32);
    o.workload = Some(workload(true, 1));
    o.judgement = verdict(Verdict::Inconclusive);
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("Inconclusive"))
    );
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("Inconclusive summary")
    );
    // A resume re-runs the batch's checks.
    let mut o = obs(40);
    o.workload = Some(workload(true, 1));
    o.signals.resume = Some("1".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.batches[0].verdict, None);
    assert_eq!(d.status.batches[0].ready_at, Some(Time(t(40))));
    // The new bake ends before its first judgement: the one before the pause does not decide
    // it (it would pause again at once, for ever); the batch waits for a fresh one.
    let mut o = obs(71);
    o.workload = Some(workload(true, 1));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing, "{:?}", d.status.message);
    o.judgement = verdict(Verdict::Pass);
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
}

#[test]
fn analysis_error_pauses_fail_closed_or_continues_fail_open() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(11);
    o.workload = Some(workload(true, 1));
    o.judgement = Some(Judgement::Error("connection refused".into()));
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("AnalysisError"))
    );
    assert!(
        d.status
            .message
            .as_ref()
            .unwrap()
            .contains("connection refused")
    );

    let open = analysis_spec("onAnalysisError: continue");
    let st = ready_status(&open);
    let mut o = obs(32);
    o.workload = Some(workload(true, 1));
    o.judgement = Some(Judgement::Error("connection refused".into()));
    let d = decide("chg", &open, &st, &o);
    assert_eq!(d.status.batches[0].verdict, Some(Verdict::Pass));
    assert_eq!(reasons(&d)[0], "AnalysisError");
}

#[test]
fn deleting_an_active_change_rolls_back_before_letting_go() {
    let s = spec(BASIC);
    let st = started(&s);
    let mut o = obs(5);
    o.deleting = true;
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.phase, Phase::RollingBack);
    assert_eq!(d.actions, vec![Action::Ensure(Step::Restore)]);
    o.workload = Some(workload(true, 0));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::RolledBack);
    assert_eq!(d.actions, vec![Action::RemoveFinalizer]);

    let mut keep = s.clone();
    keep.deletion_policy = DeletionPolicy::Keep;
    let mut o = obs(5);
    o.deleting = true;
    let d = decide("chg", &keep, &started(&keep), &o);
    assert_eq!(d.actions, vec![Action::Orphan, Action::RemoveFinalizer]);

    let d = decide(
        "chg",
        &s,
        &ChangeRequestStatus {
            phase: Phase::Succeeded,
            ..Default::default()
        },
        &o,
    );
    assert_eq!(d.actions, vec![Action::RemoveFinalizer]);
}

#[test]
fn target_disappearing_mid_rollout_fails() {
    let s = spec(BASIC);
    let mut o = obs(5);
    o.workload = None;
    let d = decide("chg", &s, &started(&s), &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Failed, Some("TargetGone"))
    );
    assert_eq!(cond(&d.status, "Degraded").status, "True");
}

#[test]
fn editing_the_change_mid_rollout_pauses_and_resume_adopts_it() {
    let s = spec(BASIC);
    let st = started(&s);
    let mut edited = s.clone();
    edited.images.insert("app".into(), "web:3".into());
    let mut o = obs(5);
    o.generation = 2;
    let d = decide("chg", &edited, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("SpecChanged"))
    );
    assert!(d.actions.is_empty());
    let mut o = obs(6);
    o.generation = 2;
    o.signals.resume = Some("go".into());
    let d2 = decide("chg", &edited, &d.status, &o);
    assert_eq!(d2.status.phase, Phase::Progressing);
    assert_ne!(d2.status.change_revision, st.change_revision);
    // Editing only the bake time does not pause.
    let mut baked = s.clone();
    baked.batches[0].bake = Duration::from_secs(5);
    let mut o = obs(5);
    o.generation = 2;
    assert_eq!(
        decide("chg", &baked, &st, &o).status.phase,
        Phase::Progressing
    );
}

#[test]
fn a_restarted_operator_repeats_no_batch_and_skips_none() {
    // Feeding the recorded status back in (as after a restart) gives the same step, not a new batch.
    let s = spec(BASIC);
    let mut o = obs(5);
    o.workload = Some(workload(true, 1));
    let st = decide("chg", &s, &started(&s), &o).status;
    let a = decide("chg", &s, &st, &obs(10));
    let b = decide("chg", &s, &a.status, &obs(10));
    assert_eq!(a.actions, b.actions);
    assert_eq!(a.status.current_batch, 1);
    assert_eq!(b.status.batches, a.status.batches);
    assert!(b.notes.is_empty(), "nothing new happened, so no Event");
}

#[test]
fn conditions_keep_their_transition_time_while_unchanged() {
    let s = spec(BASIC);
    let st = started(&s);
    let before = cond(&st, "Progressing").last_transition_time.clone();
    let d = decide("chg", &s, &st, &obs(50));
    assert_eq!(cond(&d.status, "Progressing").last_transition_time, before);
}

#[test]
fn statefulset_selectors_use_the_revision_label() {
    let s = spec(
        "target: {kind: StatefulSet, name: db}\nimages: {app: 'web:2'}\nbatches: [{replicas: 1}, {percent: 100}]",
    );
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &obs(0));
    assert_eq!(d.status.canary_name, None);
    assert_eq!(
        d.status.control_selector.as_deref(),
        Some("app=web,controller-revision-hash=abc")
    );
}

#[test]
fn long_names_give_a_valid_canary_name() {
    let n = canary_name(&"a".repeat(50), &"b".repeat(40));
    assert!(n.len() <= 63, "{n}");
    assert_ne!(n, canary_name(&"a".repeat(50), &"c".repeat(40)));
}

#[test]
fn signals_parse_from_annotations() {
    let ann: BTreeMap<String, String> = [
        (ANN_APPROVE.to_string(), "3".to_string()),
        (ANN_PAUSE.to_string(), "".to_string()),
        (ANN_ABORT.to_string(), "".to_string()),
    ]
    .into();
    let s = Signals::from_annotations(&ann);
    assert_eq!(s.approve, Some(3));
    assert!(s.pause);
    assert_eq!(s.abort, None);
    let off: BTreeMap<String, String> = [(ANN_PAUSE.to_string(), "false".to_string())].into();
    assert!(!Signals::from_annotations(&off).pause);
}

#[test]
fn analysis_outage_resumes_by_itself_once_analysis_works() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(11);
    o.workload = Some(workload(true, 1));
    o.judgement = Some(Judgement::Error("connection refused".into()));
    let paused = decide("chg", &s, &st, &o).status;
    assert_eq!(paused.reason.as_deref(), Some("AnalysisError"));
    // Still down: stays paused, keeps retrying each interval.
    assert!(judgement_due(&s, &paused, t(22)).is_some());
    o.now = t(22);
    let still = decide("chg", &s, &paused, &o);
    assert_eq!(still.status.phase, Phase::Paused);
    assert!(still.requeue.unwrap() <= StdDuration::from_secs(10));
    // Back: the change continues, and the bake starts over because the outage left a gap.
    o.now = t(33);
    o.judgement = verdict(Verdict::Pass);
    let d = decide("chg", &s, &still.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.batches[0].verdict, None);
    assert_eq!(d.status.batches[0].ready_at, Some(Time(t(33))));
    assert!(reasons(&d).contains(&"Resumed"));
    o.now = t(64);
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(
        d.status.batches[0].verdict,
        Some(Verdict::Pass),
        "a full bake with evidence after the outage"
    );
}

#[test]
fn a_rejected_query_is_a_spec_error_not_an_anomaly() {
    let s = analysis_spec("");
    let st = ready_status(&s);
    let mut o = obs(11);
    o.workload = Some(workload(true, 1));
    o.judgement = Some(Judgement::SpecError(FieldError::new(
        "analysis.metrics[0].query",
        "Prometheus rejected the query: parse error",
    )));
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("InvalidSpec"))
    );
    assert!(
        d.status
            .message
            .unwrap()
            .contains("spec.analysis.metrics[0].query")
    );
    assert!(
        !d.actions.contains(&Action::Ensure(Step::Restore)),
        "a spec error does not roll back"
    );
}

#[test]
fn every_judgement_of_the_change_counts_in_its_looks() {
    // Three batches baking 30s; each skips a 10s warm-up and is judged every 10s: 2 looks each.
    let s = analysis_spec("");
    let st = ready_status(&s);
    let w = judgement_due(&s, &st, t(21)).unwrap();
    assert_eq!(w.looks, 6);
    assert_eq!(planned_looks(&s, &st, Duration::from_secs(10)), 6);
    // An interval longer than what is left after warm-up still judges each batch once.
    assert_eq!(planned_looks(&s, &st, Duration::from_secs(60)), 3);
    // A 10m bake with a 1m warm-up judged every 30s holds 18 looks; the 2s bake, widened to
    // its warm-up plus two intervals, two.
    let long = spec(
        "target: {kind: Deployment, name: web}\nimages: {app: \"web:2\"}\nbatches: [{percent: 25, bake: 10m}, {percent: 100, bake: 2s}]\nanalysis: {interval: 30s}\n",
    );
    let st = ready_status(&long);
    assert_eq!(planned_looks(&long, &st, Duration::from_secs(30)), 20);
    // Before the workload is measured nothing is planned yet: one look.
    assert_eq!(
        planned_looks(&s, &ChangeRequestStatus::default(), Duration::from_secs(10)),
        1
    );
}

#[test]
fn an_abort_with_words_carries_them_into_the_message() {
    let s = spec(BASIC);
    let mut o = obs(5);
    o.signals.abort = Some("the build was wrong".into());
    let d = decide("chg", &s, &started(&s), &o);
    assert!(
        d.status
            .message
            .as_deref()
            .is_some_and(|m| m.contains(": the build was wrong")),
        "{:?}",
        d.status.message
    );
    o.signals.abort = Some("1732000000".into());
    let d = decide("chg", &s, &started(&s), &o);
    assert!(!d.status.message.unwrap_or_default().contains("1732000000"));
}

#[test]
fn a_generated_change_overtaken_by_a_newer_template_says_it_was_not_released() {
    let held = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:3"}]}});
    let mine = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": "web:2"}]}});
    let mut s = spec(&BASIC.replace("images: {app: \"web:2\"}\n", ""));
    s.template = Some(mine.clone());
    s.policy = Some("web-policy".into());
    let run = |workload_template: &serde_json::Value| {
        let mut st = ChangeRequestStatus::default();
        for i in 0..200 {
            let mut o = obs(i * 10);
            let mut w = workload(i > 0, 4);
            // Held: the pods run the old template, the workload holds a newer one.
            w.running = Some(w.template.clone());
            w.template = workload_template.clone();
            o.workload = Some(w);
            st = decide("chg", &s, &st, &o).status;
            if st.phase.is_terminal() {
                break;
            }
        }
        st
    };
    let st = run(&held);
    assert_eq!(st.phase, Phase::Succeeded);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("newer template") && m.contains("not released")),
        "{:?}",
        st.message
    );
    let st = run(&mine);
    assert!(
        st.message
            .as_deref()
            .is_some_and(|m| m.contains("runs the new template")),
        "{:?}",
        st.message
    );
}

#[test]
fn the_first_batch_judgement_leaves_the_record_and_a_retry_keeps_it_as_prior() {
    let s = analysis_spec("");
    let record = |r: f64| crate::api::ChangeRecord {
        slot_seconds: 10.0,
        metrics: vec![crate::api::MetricRecord {
            name: "latency".into(),
            ratios: vec![Some(r)],
        }],
    };
    let with_record = |v: Verdict, r: f64| {
        let mut j = verdict(v);
        if let Some(Judgement::Verdict { record: slot, .. }) = &mut j {
            *slot = Some(record(r));
        }
        j
    };
    let st = ready_status(&s);
    let mut o = obs(21);
    o.workload = Some(workload(true, 1));
    o.judgement = with_record(Verdict::Pass, 1.5);
    let st = decide("chg", &s, &st, &o).status;
    assert_eq!(st.record, Some(record(1.5)));
    // A later judgement of the first batch covers more of the canary's life: it replaces it.
    o.now = t(31);
    o.judgement = with_record(Verdict::Fail, 2.0);
    let st = decide("chg", &s, &st, &o).status;
    assert_eq!(st.record, Some(record(2.0)));
    // Rolled back and retried: the stopped run's record waits in priorRecord for feedback.
    let mut rolled = st.clone();
    rolled.phase = Phase::RolledBack;
    let mut o = obs(40);
    o.workload = Some(workload(true, 1));
    o.signals.retry = Some("r1".into());
    let d = decide("chg", &s, &rolled, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.record, None);
    assert_eq!(d.status.prior_record, Some(record(2.0)));
}

#[test]
fn a_superseded_change_ends_superseded_not_rolled_back_and_can_roll_again() {
    let s = spec(BASIC);
    let mut o = obs(5);
    o.signals.abort = Some("superseded by web-abc".into());
    let d = decide("chg", &s, &started(&s), &o);
    // Its own phase and a Normal Event: a supersede is routine, not a rollback.
    assert_eq!(d.status.phase, Phase::Superseding);
    assert_eq!(d.status.reason.as_deref(), Some("Superseded"));
    assert_eq!(reasons(&d), vec!["Superseding"]);
    assert!(!d.notes[0].warning, "a supersede is routine");
    assert_eq!(
        d.status.message.as_deref(),
        Some("superseded by web-abc; removing its canary")
    );
    assert!(d.actions.contains(&Action::Ensure(Step::Restore)));
    assert_eq!(cond(&d.status, "Degraded").status, "False");
    // Still superseding while its canary goes: no new Event.
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Superseding);
    assert!(d.notes.is_empty());
    o.workload = Some(workload(true, 0));
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Superseded);
    assert!(d.status.phase.is_terminal());
    assert_eq!(reasons(&d), vec!["Superseded"]);
    assert!(!d.notes[0].warning, "a supersede is routine");
    let msg = d.status.message.clone().unwrap();
    assert_eq!(
        msg,
        "superseded by web-abc; its canary is gone and the newer change carries on"
    );
    assert_eq!(cond(&d.status, "Degraded").status, "False");
    // Applied again later: a retry starts it from the first batch.
    o.signals.retry = Some("held again".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert_eq!(d.status.current_batch, 1);
    // Superseded before it started: nothing was changed, and it says so.
    let mut o = obs(0);
    o.blocker = Some("other".into());
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    o.signals.abort = Some("superseded by web-def".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Superseded);
    assert!(d.actions.is_empty());
    // The change that supersedes waits for the older one's canary quietly: Pending, a Normal
    // Event once, never a Blocked warning.
    let mut o = obs(0);
    o.blocker = Some(Blocker {
        name: "older".into(),
        superseded: true,
    });
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Pending, Some("Superseding"))
    );
    assert_eq!(reasons(&d), vec!["Waiting"]);
    assert!(!d.notes[0].warning);
    let again = decide("chg", &s, &d.status, &o);
    assert!(again.notes.is_empty(), "one Event for the wait");
    // A change that is not being superseded still blocks, with a warning.
    o.blocker = Some("older".into());
    let d = decide("chg", &s, &d.status, &o);
    assert_eq!(d.status.phase, Phase::Blocked);
    assert!(d.notes[0].warning);
}

#[test]
fn a_release_that_did_not_take_pauses_at_once_and_a_resume_sends_it_again() {
    let s = spec(BASIC);
    // Run to the last batch: the workload reaches every step but the promotion.
    let mut st = ChangeRequestStatus::default();
    for i in 0..100 {
        let mut o = obs(i * 10);
        o.workload = Some(workload(i > 0, 4));
        st = decide("chg", &s, &st, &o).status;
        if st.current_batch == 3 {
            break;
        }
    }
    assert_eq!((st.phase, st.current_batch), (Phase::Progressing, 3));
    let why = "graygate's own release of Deployment/web was held by the admission webhook: its identity is not trusted";
    let mut o = obs(1000);
    o.refused = Some(why.into());
    let d = decide("chg", &s, &st, &o);
    assert_eq!(
        (d.status.phase, d.status.reason.as_deref()),
        (Phase::Paused, Some("WriteNotTaken"))
    );
    assert!(d.status.message.as_deref().unwrap().contains(why));
    assert!(
        d.actions.is_empty(),
        "nothing is sent again: {:?}",
        d.actions
    );
    assert_eq!(reasons(&d), vec!["Paused"]);
    assert!(d.notes[0].warning, "a warning Event");
    // Long past the progress deadline, a paused change is not rolled back.
    let mut o = obs(5000);
    o.workload = Some(workload(false, 1));
    let paused = decide("chg", &s, &d.status, &o);
    assert_eq!(paused.status.phase, Phase::Paused);
    assert!(!paused.actions.contains(&Action::Ensure(Step::Restore)));
    // A person resumes: the release is sent again.
    o.signals.resume = Some("1".into());
    let d = decide("chg", &s, &paused.status, &o);
    assert_eq!(d.status.phase, Phase::Progressing);
    assert!(d.actions.contains(&Action::Ensure(Step::Promote)));
    // A change that already ended is not touched by a late refusal.
    let (done, _, _) = run_to_end(&s);
    let mut o = obs(3000);
    o.refused = Some(why.into());
    assert_eq!(decide("chg", &s, &done, &o).status.phase, Phase::Succeeded);
}

#[test]
fn messages_count_in_the_right_number() {
    let s = spec(
        r#"
target: {kind: Deployment, name: web}
images: {app: "web:2"}
batches: [{percent: 100, bake: 30s, approval: manual}]
"#,
    );
    let mut o = obs(0);
    o.workload = Some(WorkloadObs {
        replicas: 1,
        ..workload(false, 0)
    });
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    let started = &d
        .notes
        .iter()
        .find(|n| n.reason == "Started")
        .unwrap()
        .message;
    assert_eq!(
        started, "rolling out to Deployment/web in 1 batch (1 pod: 1)",
        "{started}"
    );
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("(1 pod) waits for graygate.io/approve=1"),
        "{:?}",
        d.status.message
    );
}

const TRAFFIC: &str = r#"
target: {kind: Deployment, name: web}
images: {app: "web:2"}
traffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web-canary}}
batches: [{replicas: 1, traffic: 5%, bake: 30s}, {percent: 50, bake: 30s}, {percent: 100, bake: 30s}]
"#;

#[test]
fn a_traffic_weighted_batch_carries_its_share_or_its_share_of_the_pods() {
    let s = spec(TRAFFIC);
    let st = started(&s);
    let d = decide("chg", &s, &st, &obs(1));
    assert_eq!(
        d.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 1,
            traffic: Some(5)
        })]
    );
    // Batch 2 names no share: half of the pods, half of the requests.
    let mut st2 = st.clone();
    st2.current_batch = 2;
    assert_eq!(
        current_step(&s, &st2),
        Some(Step::Batch {
            changed: 2,
            traffic: Some(50)
        })
    );
}

#[test]
fn weights_someone_else_set_pause_the_change_and_a_resume_sets_graygates_again() {
    let s = spec(TRAFFIC);
    let st = started(&s);
    let mut o = obs(5);
    o.workload.as_mut().unwrap().traffic_changed = Some("the weights were changed".into());
    let d = decide("chg", &s, &st, &o);
    assert_eq!(d.status.phase, Phase::Paused);
    assert_eq!(d.status.reason.as_deref(), Some("TrafficChanged"));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    // Still changed: the pause holds, no fight.
    let d2 = decide("chg", &s, &d.status, &o);
    assert_eq!(d2.status.phase, Phase::Paused);
    assert!(d2.actions.is_empty());
    // A person resumes: graygate's weights are written again.
    o.signals.resume = Some("1".into());
    let d3 = decide("chg", &s, &d2.status, &o);
    assert_eq!(d3.status.phase, Phase::Progressing);
    assert_eq!(
        d3.actions,
        vec![Action::Ensure(Step::Batch {
            changed: 1,
            traffic: Some(5)
        })]
    );
}

#[test]
fn a_route_that_does_not_hold_makes_the_change_invalid_naming_the_field() {
    let s = spec(TRAFFIC);
    let mut o = obs(0);
    o.workload.as_mut().unwrap().traffic_invalid = Some((
        "spec.traffic.gatewayAPI.httpRoute".into(),
        "HTTPRoute web does not exist".into(),
    ));
    let d = decide("chg", &s, &ChangeRequestStatus::default(), &o);
    assert_eq!(d.status.phase, Phase::Invalid);
    assert!(d.actions.is_empty());
    assert!(
        d.status
            .message
            .as_deref()
            .unwrap_or_default()
            .contains("spec.traffic.gatewayAPI.httpRoute"),
        "{:?}",
        d.status.message
    );
}
