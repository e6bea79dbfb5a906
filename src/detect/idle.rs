//! `idle`: a canary that does no work. A pod that is Ready but serves nothing (no requests, no
//! CPU, latency at zero) while its peers serve is broken, whichever direction the spec gives each
//! metric: a dependency call that never returns, a listener that never binds. A per-metric
//! detector misses it, because zero latency or CPU is the *good* direction of those metrics.
//!
//! The evidence is the workload's activity metrics (latency, CPU, request throughput): each one
//! the canary reports at all must be near zero (its median at most [`IDLE_SHARE`] of the control
//! pods' median) while the control pods' median is above zero. Every such metric must agree, so
//! one metric that reads zero for another reason (a CPU figure rounded down) does not fail a
//! change; a canary with no samples at all is not idle but unobserved (inconclusive elsewhere).

use super::{Detection, finite, fmt_num, median};
use crate::api::Verdict;

/// At most this share of the control pods' level is "near zero": a twentieth, far below the
/// slowest-warming healthy canary (a healthy young pod serves less, never almost nothing).
pub const IDLE_SHARE: f64 = 0.05;

/// One activity metric's samples in the judged window.
#[derive(Clone, Debug, PartialEq)]
pub struct Activity {
    /// The metric's name.
    pub name: String,
    /// The canary's samples.
    pub change: Vec<f64>,
    /// The control pods' samples.
    pub control: Vec<f64>,
    /// What a working canary pod does relative to a control pod: 1 when the Service spreads the
    /// requests evenly; a traffic-weighted canary's share of the requests per pod over a stable
    /// pod's (1 pod at 1% beside 4 stable pods: 0.01 / (0.99 / 4) ≈ 0.04). The control's level
    /// is scaled by it before "near zero" is judged.
    pub expected: f64,
}

/// Fail when every activity metric with canary samples shows the canary near zero while the
/// control pods are active; inconclusive when no activity metric can be compared.
pub fn idle(metrics: &[Activity]) -> Detection {
    let mut compared = Vec::new();
    let mut busy = Vec::new();
    for m in metrics {
        let (c, k) = (finite(&m.change), finite(&m.control));
        if c.is_empty() || k.is_empty() {
            continue;
        }
        let (mc, mk) = (median(&c), median(&k) * m.expected);
        if mk <= 0.0 {
            // The control pods are idle too: nothing to compare with.
            continue;
        }
        let share = mc.abs() / mk;
        if share <= IDLE_SHARE {
            compared.push(if m.expected == 1.0 {
                format!("{} {} vs {}", m.name, fmt_num(mc), fmt_num(mk))
            } else {
                format!(
                    "{} {} vs {} (the control's {} at the canary's share of the requests)",
                    m.name,
                    fmt_num(mc),
                    fmt_num(mk),
                    fmt_num(median(&k))
                )
            });
        } else {
            busy.push(format!("{} {}× control", m.name, fmt_num(share)));
        }
    }
    if compared.is_empty() && busy.is_empty() {
        return Detection::inconclusive(
            "idle",
            "no activity metric (latency, CPU, throughput) with canary and control data".into(),
        );
    }
    let fails = busy.is_empty();
    Detection {
        detector: "idle",
        score: compared.len() as f64,
        threshold: (compared.len() + busy.len()) as f64,
        outcome: if fails { Verdict::Fail } else { Verdict::Pass },
        explanation: if fails {
            format!(
                "the canary serves nothing: {} (canary median vs control median; at most {}% of control counts as nothing)",
                compared.join(", "),
                IDLE_SHARE * 100.0
            )
        } else {
            format!("the canary works: {}", busy.join(", "))
        },
        suppressed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn act(name: &str, change: &[f64], control: &[f64]) -> Activity {
        Activity {
            name: name.into(),
            change: change.to_vec(),
            control: control.to_vec(),
            expected: 1.0,
        }
    }

    #[test]
    fn a_canary_at_a_small_share_of_the_requests_is_judged_against_that_share() {
        // 1 canary pod at 1% of 400 rps beside 4 stable pods (99 rps each): 4 rps is work.
        let rate = |expected| Activity {
            expected,
            ..act(
                "error-ratio (its request rate)",
                &[4.1, 3.9, 4.0],
                &[99.0, 98.5, 99.4],
            )
        };
        let d = idle(&[rate(1.0)]);
        assert_eq!(
            d.outcome,
            Verdict::Fail,
            "evenly spread, 4 vs 99 is nothing"
        );
        let d = idle(&[rate(0.01 / (0.99 / 4.0))]);
        assert_eq!(d.outcome, Verdict::Pass, "{}", d.explanation);
        // At that share a canary that serves nothing still fails.
        let none = Activity {
            expected: 0.01 / (0.99 / 4.0),
            ..act(
                "error-ratio (its request rate)",
                &[0.0, 0.0, 0.01],
                &[99.0, 98.5, 99.4],
            )
        };
        let d = idle(&[none]);
        assert_eq!(d.outcome, Verdict::Fail, "{}", d.explanation);
        assert!(
            d.explanation.contains("at the canary's share"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn a_canary_with_zero_latency_and_cpu_beside_serving_peers_fails() {
        let d = idle(&[
            act("Latency", &[0.0; 9], &[12.0, 14.0, 13.0, 15.0]),
            act("CPU", &[0.0, 0.01, 0.0], &[3.0, 2.5, 3.2]),
        ]);
        assert_eq!(d.outcome, Verdict::Fail, "{}", d.explanation);
        assert!(d.explanation.contains("the canary serves nothing"));
        assert!(
            d.explanation.contains("Latency 0 vs 13.5"),
            "{}",
            d.explanation
        );
    }

    #[test]
    fn a_slow_or_quiet_but_working_canary_passes() {
        // Half the control's CPU (a young pod with less traffic) is work.
        let d = idle(&[
            act("Latency", &[0.0; 9], &[12.0, 14.0]),
            act("CPU", &[1.5, 1.4], &[3.0, 2.9]),
        ]);
        assert_eq!(d.outcome, Verdict::Pass, "{}", d.explanation);
    }

    #[test]
    fn no_canary_samples_or_idle_controls_decide_nothing() {
        assert_eq!(
            idle(&[act("Latency", &[], &[12.0])]).outcome,
            Verdict::Inconclusive
        );
        assert_eq!(
            idle(&[act("Latency", &[0.0], &[0.0, 0.0])]).outcome,
            Verdict::Inconclusive
        );
    }
}
