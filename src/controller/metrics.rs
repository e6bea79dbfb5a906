//! The operator's own Prometheus metrics.

use crate::api::{Phase, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::Mutex;

/// Label set with one `result` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// ok or error (reconciles); recorded or dropped (Events).
    pub result: String,
}

/// Label set with one `category` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabel {
    /// A stable error category.
    pub category: String,
}

/// Label set with one `phase` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// A ChangeRequest phase.
    pub phase: String,
}

/// Label set with one `verdict` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// A batch verdict.
    pub verdict: String,
}

/// Label set naming one ChangeRequest and its phase.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChangeLabel {
    /// The ChangeRequest's namespace.
    pub namespace: String,
    /// The ChangeRequest's name.
    pub name: String,
    /// Its phase.
    pub phase: String,
}

/// Label set naming a workload kind (and, for unguarded changes, its namespace).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadLabel {
    /// The workload's namespace ("" when not known).
    pub namespace: String,
    /// Deployment or StatefulSet.
    pub kind: String,
}

/// Every metric graygate exports.
pub struct Metrics {
    /// The registry they are in.
    pub registry: Registry,
    /// Reconciles by result.
    pub reconciles: Family<ResultLabel, Counter>,
    /// Reconcile errors by category.
    pub errors: Family<CategoryLabel, Counter>,
    /// Reconcile duration.
    pub duration: Histogram,
    /// ChangeRequests by phase.
    pub by_phase: Family<PhaseLabel, Gauge>,
    /// Batch verdicts reached.
    pub batches: Family<VerdictLabel, Counter>,
    /// Analysis runs that could not judge.
    pub analysis_errors: Counter,
    /// Analysis run duration.
    pub analysis_duration: Histogram,
    /// 1 while this replica holds the Lease.
    pub leader: Gauge,
    /// Phase changes, by the phase entered.
    pub transitions: Family<PhaseLabel, Counter>,
    /// For each ChangeRequest, labelled with its current phase: when it entered that phase (Unix seconds).
    pub change_phase: Family<ChangeLabel, Gauge>,
    /// Template changes the admission webhook held, by kind.
    pub webhook_held: Family<WorkloadLabel, Counter>,
    /// Changes to guarded workloads that went past the webhook (made while it was unreachable
    /// with failurePolicy Ignore), found afterwards.
    pub unguarded: Family<WorkloadLabel, Counter>,
    /// The interception record: ChangeRequests graygate stopped on a failed batch or released,
    /// by namespace, outcome and the feedback people gave.
    pub interceptions: Family<OutcomeLabel, Gauge>,
    /// Time the admission webhook took to answer a review (decoding to answer).
    pub admission_duration: Histogram,
    /// Notifications by sink and result (sent, failed after every retry, dropped on a full queue).
    pub notifications: Family<SinkResultLabel, Counter>,
    /// Notification attempts that failed (each retry counts), by sink.
    pub notification_errors: Family<SinkLabel, Counter>,
    /// Kubernetes Events graygate wrote (`recorded`) or gave up on after a retry (`dropped`).
    pub events: Family<ResultLabel, Counter>,
    /// 1 once this replica knows the user name the API server knows it by (its webhook trusts
    /// that name); 0 while it is still asking.
    pub identity_known: Gauge,
    /// Start-up steps that failed and were tried again, by step.
    pub startup_retries: Family<StepLabel, Counter>,
    phases: Mutex<HashMap<String, Phase>>,
    outcomes: Mutex<HashMap<String, OutcomeLabel>>,
}

/// Label set naming a notification sink and a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkResultLabel {
    /// The sink's name (`-` for a message dropped before any sink).
    pub sink: String,
    /// sent, failed or dropped.
    pub result: String,
}

/// Label set naming a start-up step (`identity`, `certificate`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabel {
    /// The step.
    pub step: String,
}

/// Every category of `graygate_reconcile_errors_total` (`rollout::Error::category`), each
/// series there from the start at 0, so that an alert on its increase has a series to read.
pub const ERROR_CATEGORIES: [&str; 10] = [
    "Conflict",
    "Throttled",
    "ApiServerError",
    "ApiRejected",
    "ApiUnreachable",
    "UnexpectedObject",
    "NoNamespace",
    "InvalidSpec",
    "NotLeader",
    "WriteNotTaken",
];

/// The start-up steps a replica retries until they work.
pub const STARTUP_STEPS: [&str; 2] = ["identity", "certificate"];

/// Label set naming a notification sink.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabel {
    /// The sink's name.
    pub sink: String,
}

/// Label set of the interception record.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The ChangeRequests' namespace.
    pub namespace: String,
    /// `stopped` (a batch failed) or `released`.
    pub outcome: String,
    /// `real-fault`, `false-alarm`, `drill` or `none`.
    pub feedback: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("graygate");
        let reconciles = Family::<ResultLabel, Counter>::default();
        let errors = Family::<CategoryLabel, Counter>::default();
        // Up to a minute: a reconcile includes its analysis (Prometheus timeouts of up to 30 s)
        // and, on a saturated API server, several seconds of requests.
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ]);
        let by_phase = Family::<PhaseLabel, Gauge>::default();
        let batches = Family::<VerdictLabel, Counter>::default();
        let analysis_errors = Counter::default();
        let analysis_duration =
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let leader = Gauge::default();
        let transitions = Family::<PhaseLabel, Counter>::default();
        let change_phase = Family::<ChangeLabel, Gauge>::default();
        registry.register(
            "reconcile",
            "Reconciles of ChangeRequests by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconcile errors by category",
            errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            duration.clone(),
        );
        registry.register(
            "changerequests",
            "ChangeRequests known to this operator, by phase",
            by_phase.clone(),
        );
        registry.register("batches", "Batch verdicts reached", batches.clone());
        registry.register(
            "analysis_errors",
            "Analysis runs that could not judge",
            analysis_errors.clone(),
        );
        registry.register(
            "analysis_duration_seconds",
            "Time spent in one analysis run",
            analysis_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        registry.register(
            "phase_transitions",
            "ChangeRequest phase changes, by the phase entered",
            transitions.clone(),
        );
        registry.register(
            "changerequest_phase_timestamp_seconds",
            "When each ChangeRequest entered its current phase (Unix time), labelled with namespace, name and phase",
            change_phase.clone(),
        );
        let webhook_held = Family::<WorkloadLabel, Counter>::default();
        let unguarded = Family::<WorkloadLabel, Counter>::default();
        registry.register(
            "webhook_held",
            "Pod-template changes of guarded workloads the admission webhook held, by kind",
            webhook_held.clone(),
        );
        registry.register(
            "unguarded_changes",
            "Template changes of guarded workloads that went past the webhook (graygate was down, failurePolicy Ignore), found afterwards",
            unguarded.clone(),
        );
        let interceptions = Family::<OutcomeLabel, Gauge>::default();
        registry.register(
            "interceptions",
            "ChangeRequests graygate stopped on a failed batch (outcome=stopped) or released (outcome=released), by namespace and the feedback recorded on them (graygate.io/feedback; none when not given)",
            interceptions.clone(),
        );
        let admission_duration = Histogram::new([
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25,
        ]);
        registry.register(
            "webhook_admission_duration_seconds",
            "Time the admission webhook took to answer an AdmissionReview, from the received body to the answer",
            admission_duration.clone(),
        );
        let notifications = Family::<SinkResultLabel, Counter>::default();
        let notification_errors = Family::<SinkLabel, Counter>::default();
        registry.register(
            "notifications",
            "Notifications by sink and result: sent, failed (after every retry) or dropped (queue full)",
            notifications.clone(),
        );
        registry.register(
            "notification_errors",
            "Notification attempts that failed, each retry counted, by sink",
            notification_errors.clone(),
        );
        let events = Family::<ResultLabel, Counter>::default();
        registry.register(
            "events",
            "Kubernetes Events graygate wrote (recorded) or gave up on after one retry (dropped; the log says which)",
            events.clone(),
        );
        let identity_known = Gauge::default();
        registry.register(
            "identity_known",
            "1 once this replica knows the user name the API server knows it by (its webhook lets that name's writes through); until then it is not ready, takes no Lease and serves no admission",
            identity_known.clone(),
        );
        let startup_retries = Family::<StepLabel, Counter>::default();
        registry.register(
            "startup_retries",
            "Start-up steps that failed and were tried again, by step (identity: the SelfSubjectReview; certificate: the webhook certificate and the configuration's caBundle)",
            startup_retries.clone(),
        );
        for step in STARTUP_STEPS {
            let _ = startup_retries.get_or_create(&StepLabel { step: step.into() });
        }
        for result in ["recorded", "dropped"] {
            let _ = events.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        for p in Phase::ALL {
            let _ = transitions.get_or_create(&PhaseLabel {
                phase: p.as_str().into(),
            });
            by_phase
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().into(),
                })
                .set(0);
        }
        for category in ERROR_CATEGORIES {
            let _ = errors.get_or_create(&CategoryLabel {
                category: category.into(),
            });
        }
        for result in ["ok", "error"] {
            let _ = reconciles.get_or_create(&ResultLabel {
                result: result.into(),
            });
        }
        for v in Verdict::ALL {
            let _ = batches.get_or_create(&VerdictLabel {
                verdict: v.as_str().into(),
            });
        }
        Metrics {
            registry,
            reconciles,
            errors,
            duration,
            by_phase,
            batches,
            analysis_errors,
            analysis_duration,
            leader,
            transitions,
            change_phase,
            webhook_held,
            unguarded,
            interceptions,
            admission_duration,
            notifications,
            notification_errors,
            events,
            identity_known,
            startup_retries,
            phases: Mutex::new(HashMap::new()),
            outcomes: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Count one Event written (`true`) or dropped (`false`).
    pub fn event(&self, recorded: bool) {
        self.events
            .get_or_create(&ResultLabel {
                result: if recorded { "recorded" } else { "dropped" }.into(),
            })
            .inc();
    }

    /// A start-up step failed and is tried again.
    pub fn startup_retry(&self, step: &str) {
        self.startup_retries
            .get_or_create(&StepLabel { step: step.into() })
            .inc();
    }

    /// The webhook held a template change of this kind.
    pub fn held(&self, kind: &str) {
        self.webhook_held
            .get_or_create(&WorkloadLabel {
                namespace: String::new(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Record the phase of one ChangeRequest and when it entered it (None when it is gone), and
    /// refresh the gauges.
    pub fn set_phase(&self, namespace: &str, name: &str, phase: Option<(Phase, i64)>) {
        let (phase, since) = match phase {
            Some((p, t)) => (Some(p), t),
            None => (None, 0),
        };
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        let key = format!("{namespace}/{name}");
        let label = |p: Phase| ChangeLabel {
            namespace: namespace.into(),
            name: name.into(),
            phase: p.as_str().into(),
        };
        let before = match phase {
            Some(p) => phases.insert(key, p),
            None => phases.remove(&key),
        };
        if let Some(b) = before
            && Some(b) != phase
        {
            self.change_phase.remove(&label(b));
        }
        if let Some(p) = phase {
            self.change_phase.get_or_create(&label(p)).set(since);
        }
        for p in Phase::ALL {
            let n = phases.values().filter(|x| **x == p).count();
            self.by_phase
                .get_or_create(&PhaseLabel {
                    phase: p.as_str().into(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Record how one ChangeRequest counts in the interception record (`(outcome, feedback)`,
    /// None while it runs or when it is gone), and refresh the gauges of its namespace.
    pub fn set_outcome(&self, namespace: &str, name: &str, outcome: Option<(&str, &str)>) {
        let Ok(mut outcomes) = self.outcomes.lock() else {
            return;
        };
        let key = format!("{namespace}/{name}");
        let label = outcome.map(|(o, f)| OutcomeLabel {
            namespace: namespace.into(),
            outcome: o.into(),
            feedback: f.into(),
        });
        let before = match &label {
            Some(l) => outcomes.insert(key, l.clone()),
            None => outcomes.remove(&key),
        };
        if before == label {
            return;
        }
        for l in before.iter().chain(label.iter()) {
            let n = outcomes.values().filter(|x| *x == l).count();
            if n == 0 {
                self.interceptions.remove(l);
            } else {
                self.interceptions
                    .get_or_create(l)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
    }

    /// Show a notification sink's series from the start, at zero.
    pub fn notification_sink(&self, sink: &str) {
        for result in ["sent", "failed"] {
            let _ = self.notifications.get_or_create(&SinkResultLabel {
                sink: sink.into(),
                result: result.into(),
            });
        }
        let _ = self
            .notification_errors
            .get_or_create(&SinkLabel { sink: sink.into() });
    }

    /// Count a notification's result.
    pub fn notification(&self, sink: &str, result: &str) {
        self.notifications
            .get_or_create(&SinkResultLabel {
                sink: sink.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Count a failed notification attempt.
    pub fn notification_error(&self, sink: &str) {
        self.notification_errors
            .get_or_create(&SinkLabel { sink: sink.into() })
            .inc();
    }

    /// Count a phase change.
    pub fn transition(&self, to: Phase) {
        self.transitions
            .get_or_create(&PhaseLabel {
                phase: to.as_str().into(),
            })
            .inc();
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_category_has_a_metric_series_from_the_start() {
        let api = |code| {
            crate::rollout::Error::Kube(kube::Error::Api(Box::new(kube::core::Status {
                code,
                ..Default::default()
            })))
        };
        let all = [
            api(409),
            api(429),
            api(503),
            api(403),
            crate::rollout::Error::Kube(kube::Error::SerdeError(
                serde_json::from_str::<i32>("x").unwrap_err(),
            )),
            crate::rollout::Error::Kube(kube::Error::ReadEvents(std::io::Error::other("x"))),
            crate::rollout::Error::Shape(serde_json::from_str::<i32>("x").unwrap_err()),
            crate::rollout::Error::NoNamespace,
            crate::rollout::Error::Spec("x".into()),
            crate::rollout::Error::NotLeader,
            crate::rollout::Error::NotTaken("x".into()),
        ];
        let mut seen: Vec<&str> = all.iter().map(crate::rollout::Error::category).collect();
        seen.sort();
        seen.dedup();
        let mut listed = ERROR_CATEGORIES.to_vec();
        listed.sort();
        assert_eq!(seen, listed);
        let text = Metrics::default().encode();
        for c in listed {
            assert!(
                text.contains(&format!(
                    "graygate_reconcile_errors_total{{category=\"{c}\"}} 0"
                )),
                "{c}"
            );
        }
    }

    #[test]
    fn a_change_has_one_phase_series_that_follows_it_and_goes_with_it() {
        let m = Metrics::default();
        m.set_phase("shop", "v2", Some((Phase::Progressing, 1_700_000_000)));
        m.set_phase("shop", "v2", Some((Phase::Paused, 1_700_000_060)));
        m.transition(Phase::Paused);
        let text = m.encode();
        assert!(text.contains(
            "graygate_changerequest_phase_timestamp_seconds{namespace=\"shop\",name=\"v2\",phase=\"Paused\"} 1700000060"
        ));
        assert!(
            !text.contains("phase=\"Progressing\"} 1700000000"),
            "{text}"
        );
        assert!(text.contains("graygate_changerequests{phase=\"Paused\"} 1"));
        assert!(text.contains("graygate_phase_transitions_total{phase=\"Paused\"} 1"));
        m.set_phase("shop", "v2", None);
        let text = m.encode();
        assert!(!text.contains("name=\"v2\""), "{text}");
        assert!(text.contains("graygate_changerequests{phase=\"Paused\"} 0"));
    }

    #[test]
    fn the_interception_record_follows_each_change_and_its_feedback() {
        let m = Metrics::default();
        m.set_outcome("shop", "a", Some(("stopped", "none")));
        m.set_outcome("shop", "b", Some(("stopped", "none")));
        m.set_outcome("shop", "c", Some(("released", "none")));
        m.set_outcome("shop", "a", Some(("stopped", "real-fault")));
        m.set_outcome("web", "a", Some(("stopped", "false-alarm")));
        let text = m.encode();
        let line = |ns: &str, o: &str, f: &str, n: u32| {
            format!(
                "graygate_interceptions{{namespace=\"{ns}\",outcome=\"{o}\",feedback=\"{f}\"}} {n}"
            )
        };
        for want in [
            line("shop", "stopped", "none", 1),
            line("shop", "stopped", "real-fault", 1),
            line("shop", "released", "none", 1),
            line("web", "stopped", "false-alarm", 1),
        ] {
            assert!(text.contains(&want), "{want} not in\n{text}");
        }
        m.set_outcome("shop", "b", None);
        m.set_outcome("shop", "a", None);
        let text = m.encode();
        assert!(
            !text.contains("outcome=\"stopped\",feedback=\"none\""),
            "{text}"
        );
        assert!(!text.contains("feedback=\"real-fault\""), "{text}");
        assert!(text.contains(&line("shop", "released", "none", 1)));
    }
}
