//! The history group of a live change: the records its workload's earlier changes left in their
//! ChangeRequests' status. Kept in the cluster, they survive an operator restart and reach a new
//! leader with the objects themselves.

use crate::analysis::history::{DEFAULT_KEEP, History, Record};
use crate::api::{ChangeRecord, ChangeRequest, FeedbackVerdict, Phase};
use kube::ResourceExt;

/// How many released changes a change learns from: `analysis.baselines.pastChanges`, default
/// [`DEFAULT_KEEP`]; 0 turns the history group off.
pub fn keep(cr: &ChangeRequest) -> usize {
    cr.spec
        .analysis
        .as_ref()
        .and_then(|a| a.baselines.as_ref())
        .and_then(|b| b.past_changes)
        .map_or(DEFAULT_KEEP, |n| n as usize)
}

/// The records of `cr`'s workload that count, oldest first, at most [`keep`]: changes of the same
/// target that were released (unless a person marked them `real-fault` or `drill`), and changes
/// graygate stopped on a failing verdict (the interception record's `stopped`) that a person
/// marked `false-alarm` — including this change's own run before a `retry`. An aborted change
/// never counts, marked or not.
/// A change that failed and was not marked never counts: its canary is no reference. The other
/// workloads of `all` (the namespace) come along as the history's neighbours, by the same rules.
pub fn collect(cr: &ChangeRequest, all: &[ChangeRequest]) -> Option<History> {
    let keep = keep(cr);
    if keep == 0 {
        return None;
    }
    let mut by_target: std::collections::BTreeMap<String, Vec<(jiff::Timestamp, Record)>> =
        Default::default();
    for other in all {
        let Some(st) = &other.status else { continue };
        let dated = by_target.entry(other.spec.target.to_string()).or_default();
        let feedback = st.feedback.as_ref().map(|f| f.verdict);
        let same = other.metadata.uid.is_some() && other.metadata.uid == cr.metadata.uid;
        let false_alarm = feedback == Some(FeedbackVerdict::FalseAlarm);
        let mut take = |r: &Option<ChangeRecord>, at: Option<jiff::Timestamp>| {
            if let Some(r) = r {
                let rec = Record::from_status(&other.name_any(), r);
                if !rec.is_empty() {
                    dated.push((at.unwrap_or(jiff::Timestamp::UNIX_EPOCH), rec));
                }
            }
        };
        let finished = st.finished_at.as_ref().map(|t| t.0);
        // A run before a retry ended before this run started.
        let before_retry = st.started_at.as_ref().map(|t| t.0);
        if false_alarm {
            take(&st.prior_record, before_retry);
        }
        if same {
            continue;
        }
        let released = st.phase == Phase::Succeeded
            && !matches!(
                feedback,
                Some(FeedbackVerdict::RealFault | FeedbackVerdict::Drill)
            );
        // The interception record's rule: a run graygate's own verdict stopped. A run a person
        // aborted, or one stopped for want of pods, was not judged bad, and a false alarm on it
        // says nothing of the judge.
        let stopped = st.interception() == Some("stopped");
        if released || (stopped && false_alarm) {
            take(&st.record, finished);
        }
    }
    let kept = |mut dated: Vec<(jiff::Timestamp, Record)>| {
        dated.sort_by_key(|(at, _)| *at);
        let mut h = History::default();
        for (_, r) in dated {
            h.push(r, keep);
        }
        h.records
    };
    let target = cr.spec.target.to_string();
    let own = by_target.remove(&target).unwrap_or_default();
    Some(History {
        workload: target,
        records: kept(own),
        neighbours: by_target
            .into_values()
            .map(kept)
            .filter(|r| !r.is_empty())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChangeRequestSpec, ChangeRequestStatus, Feedback, MetricRecord};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn change(
        name: &str,
        target: &str,
        phase: Phase,
        feedback: Option<FeedbackVerdict>,
        finished: i64,
        ratio: f64,
    ) -> ChangeRequest {
        let spec: ChangeRequestSpec = serde_yaml::from_str(&format!(
            "target: {{kind: Deployment, name: {target}}}\nimages: {{app: x}}\nbatches: [{{percent: 100}}]"
        ))
        .unwrap();
        let mut cr = ChangeRequest::new(name, spec);
        cr.metadata.uid = Some(format!("uid-{name}"));
        let at = |s| Some(Time(jiff::Timestamp::from_second(s).unwrap()));
        cr.status = Some(ChangeRequestStatus {
            phase,
            finished_at: at(finished),
            started_at: at(finished - 60),
            feedback: feedback.map(|verdict| Feedback {
                verdict,
                recorded_at: Time(jiff::Timestamp::UNIX_EPOCH),
                phase: Phase::Succeeded,
            }),
            record: Some(ChangeRecord {
                slot_seconds: 30.0,
                metrics: vec![MetricRecord {
                    name: "latency".into(),
                    ratios: vec![Some(ratio)],
                }],
            }),
            ..Default::default()
        });
        cr
    }

    /// The same change, stopped by a failing verdict.
    fn stopped(mut cr: ChangeRequest) -> ChangeRequest {
        if let Some(st) = cr.status.as_mut() {
            st.verdict = Some(crate::api::Verdict::Fail);
        }
        cr
    }

    fn names(h: &History) -> Vec<&str> {
        h.records.iter().map(|r| r.change.as_str()).collect()
    }

    #[test]
    fn released_and_false_alarms_of_the_same_target_count_oldest_first() {
        use FeedbackVerdict::*;
        use Phase::*;
        let me = change("me", "web", Progressing, None, 1000, 1.0);
        let all = vec![
            change("released-late", "web", Succeeded, None, 900, 1.5),
            change("released-early", "web", Succeeded, None, 100, 1.4),
            change("failed", "web", RolledBack, None, 200, 9.0),
            stopped(change(
                "false-alarm",
                "web",
                RolledBack,
                Some(FalseAlarm),
                300,
                2.2,
            )),
            // Aborted by a person (no failing verdict): the interception record leaves it out,
            // and so does history, false alarm or not.
            change("aborted", "web", RolledBack, Some(FalseAlarm), 350, 3.3),
            change("real-fault", "web", Succeeded, Some(RealFault), 400, 5.0),
            change("drill", "web", Succeeded, Some(Drill), 500, 5.0),
            change("other-workload", "api", Succeeded, None, 600, 1.0),
            change("running", "web", Progressing, None, 700, 1.0),
            me.clone(),
        ];
        let h = collect(&me, &all).unwrap();
        assert_eq!(h.workload, "Deployment/web");
        assert_eq!(
            names(&h),
            ["released-early", "false-alarm", "released-late"]
        );
        assert_eq!(h.records[1].ratios["latency"][&0], 2.2);
        // The other workload of the namespace comes along as a neighbour, by the same rules
        // (a failed change of it would not).
        let mut all = all;
        all.push(change("api-failed", "api", RolledBack, None, 650, 7.0));
        let h = collect(&me, &all).unwrap();
        let neighbours: Vec<Vec<&str>> = h
            .neighbours
            .iter()
            .map(|r| r.iter().map(|r| r.change.as_str()).collect())
            .collect();
        assert_eq!(neighbours, [["other-workload"]]);
    }

    #[test]
    fn a_retried_false_alarm_is_history_for_its_own_next_run() {
        let mut me = change("me", "web", Phase::Progressing, None, 1000, 1.0);
        let st = me.status.as_mut().unwrap();
        st.prior_record = st.record.take();
        assert!(names(&collect(&me, std::slice::from_ref(&me)).unwrap()).is_empty());
        me.status.as_mut().unwrap().feedback = Some(Feedback {
            verdict: FeedbackVerdict::FalseAlarm,
            recorded_at: Time(jiff::Timestamp::UNIX_EPOCH),
            phase: Phase::RolledBack,
        });
        assert_eq!(
            names(&collect(&me, std::slice::from_ref(&me)).unwrap()),
            ["me"]
        );
    }

    #[test]
    fn past_changes_bounds_the_history_and_zero_turns_it_off() {
        let mut me = change("me", "web", Phase::Progressing, None, 10_000, 1.0);
        let all: Vec<ChangeRequest> = (0..15)
            .map(|i| change(&format!("c{i:02}"), "web", Phase::Succeeded, None, i, 1.1))
            .collect();
        let h = collect(&me, &all).unwrap();
        assert_eq!(h.records.len(), DEFAULT_KEEP);
        assert_eq!(h.records[0].change, "c05");
        let a = me.spec.analysis.get_or_insert_with(Default::default);
        a.baselines
            .get_or_insert_with(Default::default)
            .past_changes = Some(3);
        assert_eq!(names(&collect(&me, &all).unwrap()), ["c12", "c13", "c14"]);
        let a = me.spec.analysis.as_mut().unwrap();
        a.baselines.as_mut().unwrap().past_changes = Some(0);
        assert!(collect(&me, &all).is_none());
    }
}
