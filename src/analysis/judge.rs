//! The judgement itself, pure: per-metric group data in, findings and a batch verdict out.
//! Production (Prometheus) and `graygate analyze` (recorded data) both end here.

use crate::api::{Direction, Finding, MetricKind, MetricSpec, Verdict};
use crate::detect::{self, Detection, dtw, fmt_num, median, peers};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Samples of one group: per pod (or one unnamed series), `[unix_seconds, value]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupData(pub BTreeMap<String, Vec<(f64, f64)>>);

impl GroupData {
    /// Every finite value, pooled over pods.
    pub fn values(&self) -> Vec<f64> {
        self.0
            .values()
            .flatten()
            .map(|(_, v)| *v)
            .filter(|v| v.is_finite())
            .collect()
    }
    /// The time of the first sample, if any (slots are counted from it).
    pub fn first_time(&self) -> Option<f64> {
        let t0 = self
            .0
            .values()
            .flatten()
            .map(|(t, _)| *t)
            .fold(f64::INFINITY, f64::min);
        t0.is_finite().then_some(t0)
    }

    /// Number of finite samples.
    pub fn len(&self) -> usize {
        self.0
            .values()
            .flatten()
            .filter(|(_, v)| v.is_finite())
            .count()
    }
    /// True without samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The integral over time of a rate, summed over pods: Σ value × spacing.
    pub fn integral(&self) -> f64 {
        self.0
            .values()
            .map(|s| {
                let dt = spacing(s);
                s.iter()
                    .filter(|(_, v)| v.is_finite())
                    .map(|(_, v)| v * dt)
                    .sum::<f64>()
            })
            .sum()
    }
    /// The mean over pods at each timestamp, in time order (for shape comparisons).
    pub fn mean_series(&self) -> Vec<f64> {
        let mut by_t: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
        for (t, v) in self.0.values().flatten() {
            if v.is_finite() {
                let e = by_t.entry((t * 1000.0).round() as i64).or_insert((0.0, 0));
                e.0 += v;
                e.1 += 1;
            }
        }
        by_t.values().map(|(s, n)| s / *n as f64).collect()
    }
}

fn spacing(s: &[(f64, f64)]) -> f64 {
    if s.len() < 2 {
        return 1.0;
    }
    let mut gaps: Vec<f64> = s
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .filter(|g| *g > 0.0)
        .collect();
    if gaps.is_empty() {
        return 1.0;
    }
    gaps.sort_by(f64::total_cmp);
    gaps[gaps.len() / 2]
}

/// One metric's data in each comparison group.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Groups {
    /// Pods of the current batch, on the new template.
    #[serde(default)]
    pub change: GroupData,
    /// Pods still on the old template, at the same time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<GroupData>,
    /// The workload before the change started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<GroupData>,
    /// The same window one day / one week earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<GroupData>,
    /// With a fresh baseline as the control: the long-running pods still on the old template,
    /// the second reference (shown in the evidence, not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<GroupData>,
}

/// A metric's data: one value series per group, or numerator and denominator rates.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricData {
    /// Plain values.
    Plain(Groups),
    /// Ratio metrics: rates of the bad events and of all events.
    Ratio {
        /// The bad events.
        numerator: Groups,
        /// All events.
        denominator: Groups,
    },
}

/// A metric with every default filled in.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// Name used in findings.
    pub name: String,
    /// Which way is worse.
    pub direction: Direction,
    /// Detectors to run.
    pub detectors: Vec<String>,
    /// Bound for `threshold`.
    pub threshold: Option<f64>,
    /// Minimum effect (relative for values, absolute for proportions).
    pub min_delta: f64,
    /// Not enough data makes the judgement inconclusive.
    pub critical: bool,
    /// Weight in the batch score.
    pub weight: f64,
    /// What it measures.
    pub kind: MetricKind,
    /// Reported, but never fails a batch.
    pub advisory: bool,
}

/// What a metric measures, from its declared kind or, failing that, its name and query.
pub fn infer_kind(m: &MetricSpec) -> MetricKind {
    if let Some(k) = m.kind {
        return k;
    }
    let text = format!(
        "{} {} {}",
        m.name,
        m.query.as_deref().unwrap_or_default(),
        m.numerator.as_deref().unwrap_or_default()
    )
    .to_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&["memory", "heap", "rss", "working_set", "resident"]) {
        MetricKind::Memory
    } else if has(&["cpu"]) {
        MetricKind::Cpu
    } else if m.numerator.is_some() || has(&["error", "5..", "5xx", "fail", "success", "availab"]) {
        MetricKind::Errors
    } else if has(&[
        "latency",
        "duration",
        "histogram_quantile",
        "response_time",
        "rtt",
    ]) {
        MetricKind::Latency
    } else {
        MetricKind::Other
    }
}

/// The default minimum effect of a value metric of this kind (relative to the reference level).
pub fn default_min_delta(kind: MetricKind) -> f64 {
    match kind {
        MetricKind::Errors => 0.01,
        MetricKind::Latency | MetricKind::Other => peers::DEFAULT_MIN_DELTA,
        MetricKind::Cpu | MetricKind::Memory => 1.0,
    }
}

impl Metric {
    /// Fill in defaults for a spec'd metric.
    pub fn from_spec(m: &MetricSpec) -> Metric {
        let ratio = m.numerator.is_some();
        let kind = infer_kind(m);
        let detectors = if m.detectors.is_empty() {
            if ratio {
                vec!["proportion".to_string()]
            } else {
                vec!["peers".to_string()]
            }
        } else {
            m.detectors.clone()
        };
        let weight = m.weight.unwrap_or(1.0);
        Metric {
            name: m.name.clone(),
            direction: m.direction,
            detectors,
            threshold: m.threshold,
            min_delta: m.min_delta.unwrap_or(if ratio {
                0.002
            } else {
                default_min_delta(kind)
            }),
            critical: m.critical,
            weight,
            kind,
            advisory: weight == 0.0 || (kind == MetricKind::Memory && !m.critical),
        }
    }
}

/// Settings of a judgement.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Significance level of the statistical tests.
    pub alpha: f64,
    /// Samples (or, for proportions, events) each group needs.
    pub min_samples: usize,
    /// Compare with the control group.
    pub use_control: bool,
    /// Width of a time slot in seconds (the analysis interval): each slot takes the sample at its
    /// end, so overlapping `rate()` points count once (see [`peer_units`]).
    pub slot_secs: f64,
    /// Change-group samples before this Unix time are skipped (pod warm-up).
    pub skip_change_before: Option<f64>,
    /// A traffic-weighted canary: the requests a canary pod gets relative to a control pod
    /// (`None`: the same, as a Service spreads them).
    pub canary_share_per_pod: Option<f64>,
    /// How far and how long the `peers` detector needs a departure to be.
    pub far: f64,
    /// Far slots the `peers` detector needs.
    pub far_samples: usize,
    /// Slots in a row the `peers` detector needs.
    pub long: usize,
    /// Level of each side of the history's prediction interval (set by the judgement: its
    /// `alpha` shared among the metrics the history holds).
    pub history_alpha: f64,
}

impl Params {
    /// The parameters an analysis section asks for (significance is fixed at 0.01).
    pub fn from_spec(spec: &crate::api::AnalysisSpec) -> Params {
        Params {
            min_samples: spec.min_samples.unwrap_or(10) as usize,
            use_control: spec
                .baselines
                .as_ref()
                .and_then(|b| b.control)
                .unwrap_or(true),
            slot_secs: spec
                .interval
                .unwrap_or(crate::controller::state::DEFAULT_INTERVAL)
                .as_millis_i64() as f64
                / 1000.0,
            ..Params::default()
        }
    }
}

impl Params {
    /// The `peers` detector's settings for metric `m`.
    pub fn peers(&self, m: &Metric) -> peers::Params {
        peers::Params {
            direction: m.direction,
            min_delta: m.min_delta,
            far: self.far,
            far_samples: self.far_samples,
            long: self.long,
        }
    }
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alpha: 0.01,
            min_samples: 10,
            use_control: true,
            slot_secs: 30.0,
            skip_change_before: None,
            canary_share_per_pod: None,
            far: peers::DEFAULT_FAR,
            far_samples: peers::DEFAULT_FAR_SAMPLES,
            long: peers::DEFAULT_LONG,
            history_alpha: 0.01,
        }
    }
}

/// A group's series as peer units: one unit per pod (a single unnamed series with gaps of over
/// an hour, such as the same hours on earlier days, becomes one unit per stretch), in slots of
/// `slot` seconds counted from `t0` modulo a day, so that control pods line up by time and
/// earlier days by time of day.
///
/// A slot's value is its last sample. A range query's point is a `rate(…[interval])` (or
/// quantile) over the `interval` before it, taken every `interval / 10`: the point at a slot's
/// end covers that slot, and the next slot's last point the next, so each request counts in one
/// slot. An average of the slot's points would also count the end of the slot before (one slow
/// request raising two neighbouring slots, and two far slots fail). Only the window's last slot,
/// still filling, is valued by a point whose `interval` reaches back into the slot before.
pub fn peer_units(g: &GroupData, t0: f64, slot: f64, skip_before: Option<f64>) -> Vec<peers::Unit> {
    let gap = (10.0 * slot).max(3600.0);
    let mut out = Vec::new();
    for (pod, series) in &g.0 {
        let mut stretches: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        let mut last: Option<f64> = None;
        for (t, v) in series {
            if !v.is_finite() || skip_before.is_some_and(|s| *t < s) {
                continue;
            }
            if pod.is_empty() && last.is_some_and(|l| t - l > gap) {
                stretches.push(Vec::new());
            }
            last = Some(*t);
            if let Some(cur) = stretches.last_mut() {
                cur.push((*t, *v));
            }
        }
        for s in stretches.into_iter().filter(|s| !s.is_empty()) {
            // Per slot, its last sample (the samples come in time order).
            let mut last: BTreeMap<i64, f64> = BTreeMap::new();
            for (t, v) in s {
                let key = ((t - t0).rem_euclid(86_400.0) / slot).floor() as i64;
                last.insert(key, v);
            }
            out.push(last);
        }
    }
    out
}

/// The verdict of one judgement with its evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// pass, fail or inconclusive.
    pub verdict: Verdict,
    /// One line on why.
    pub summary: String,
    /// Every finding, most severe first.
    pub findings: Vec<Finding>,
}

fn to_finding(metric: &str, groups: &str, d: &Detection) -> Finding {
    Finding {
        metric: metric.to_string(),
        detector: d.detector.to_string(),
        groups: groups.to_string(),
        outcome: Some(d.outcome),
        score: d.score.is_finite().then_some(d.score),
        threshold: d.threshold.is_finite().then_some(d.threshold),
        explanation: d.explanation.clone(),
        suppressed_by: d.suppressed_by.map(String::from),
    }
}

fn severity(f: &Finding) -> u8 {
    match (f.outcome, &f.suppressed_by) {
        (Some(Verdict::Fail), _) => 0,
        (Some(Verdict::Inconclusive), _) => 1,
        (Some(Verdict::Pass), Some(_)) => 2,
        _ => 3,
    }
}

/// Ratio values per pod and timestamp (numerator / denominator), for value-based detectors.
fn ratio_values(num: &GroupData, den: &GroupData) -> GroupData {
    let mut out = BTreeMap::new();
    for (pod, ns) in &num.0 {
        let Some(ds) = den.0.get(pod) else { continue };
        let by_t: BTreeMap<i64, f64> = ds
            .iter()
            .map(|(t, v)| ((t * 1000.0).round() as i64, *v))
            .collect();
        let series: Vec<(f64, f64)> = ns
            .iter()
            .filter_map(|(t, n)| {
                let d = *by_t.get(&((t * 1000.0).round() as i64))?;
                (d > 0.0).then_some((*t, n / d))
            })
            .collect();
        out.insert(pod.clone(), series);
    }
    GroupData(out)
}

fn ratio_groups(num: &Groups, den: &Groups) -> Groups {
    let pair = |a: &Option<GroupData>, b: &Option<GroupData>| match (a, b) {
        (Some(a), Some(b)) => Some(ratio_values(a, b)),
        _ => None,
    };
    Groups {
        change: ratio_values(&num.change, &den.change),
        control: pair(&num.control, &den.control),
        background: pair(&num.background, &den.background),
        history: pair(&num.history, &den.history),
        running: pair(&num.running, &den.running),
    }
}

/// The change and reference as peer units, and the slot width, for `peers` and for history
/// records; `None` without change samples.
pub(crate) fn peer_inputs(
    values: &Groups,
    reference: &GroupData,
    p: &Params,
) -> Option<(Vec<peers::Unit>, Vec<peers::Unit>, f64)> {
    let t0 = values.change.first_time()?;
    let slot = p.slot_secs.max(
        values
            .change
            .0
            .values()
            .map(|s| spacing(s))
            .fold(0.0, f64::max),
    );
    let change = peer_units(&values.change, t0, slot, p.skip_change_before);
    let refs = peer_units(reference, t0, slot, None);
    Some((change, refs, slot))
}

/// What the change is held to: the control group when it is used and has data, else the
/// workload before the change; `None` without either.
pub(crate) fn reference<'a>(
    values: &'a Groups,
    p: &Params,
) -> Option<(&'static str, &'a GroupData)> {
    let control = values
        .control
        .as_ref()
        .filter(|c| p.use_control && !c.is_empty());
    if let Some(c) = control {
        return Some(("control", c));
    }
    // A fresh baseline without samples yet is not replaced by the long-running pods' past: the
    // young canary would be held to exactly what the baseline was asked to avoid.
    if reference_gap(values, p).is_some() && values.running.is_some() {
        return None;
    }
    values
        .background
        .as_ref()
        .filter(|b| !b.is_empty())
        .map(|b| ("background", b))
}

/// Why the control group is not the reference though its pods were listed and queried: they
/// gave no samples of the metric (a fresh baseline's pods in their first scrapes, or a metric
/// the old template does not export). Said in every finding it changes.
pub(crate) fn reference_gap(values: &Groups, p: &Params) -> Option<&'static str> {
    let empty = values.control.as_ref().is_some_and(GroupData::is_empty);
    (p.use_control && empty).then_some(if values.running.is_some() {
        "the fresh baseline's pods have no samples of this metric yet"
    } else {
        "the control pods gave no samples of this metric"
    })
}

/// A metric's values: plain, or numerator ÷ denominator per pod and time.
pub(crate) fn metric_values(data: &MetricData) -> Groups {
    match data {
        MetricData::Plain(g) => g.clone(),
        MetricData::Ratio {
            numerator,
            denominator,
        } => ratio_groups(numerator, denominator),
    }
}

/// What a judged change leaves for the history of its workload: per value metric judged by
/// `peers` against a control group, the canary's value ÷ the control's per slot since its first
/// sample.
pub fn record(
    metrics: &[(Metric, MetricData)],
    p: &Params,
    change: &str,
) -> super::history::Record {
    let mut out = super::history::Record {
        change: change.to_string(),
        slot_secs: 0.0,
        ratios: BTreeMap::new(),
    };
    for (m, data) in metrics {
        if !m.detectors.iter().any(|d| d == "peers") {
            continue;
        }
        let values = metric_values(data);
        let Some(control) = values.control.as_ref().filter(|c| !c.is_empty()) else {
            continue;
        };
        let Some((change, refs, slot)) = peer_inputs(&values, control, p) else {
            continue;
        };
        let ratios = peers::slot_ratios(&change, &refs);
        if !ratios.is_empty() {
            out.slot_secs = slot;
            out.ratios.insert(m.name.clone(), ratios);
        }
    }
    out
}

/// Run one detector; returns the detection and the groups it compared.
fn run_detector(
    name: &str,
    m: &Metric,
    data: &MetricData,
    values: &Groups,
    reference: Option<(&'static str, &GroupData)>,
    p: &Params,
    history: Option<&super::history::History>,
) -> (Detection, String) {
    let change = values.change.values();
    let gap = reference_gap(values, p);
    let missing = |what: &str| {
        let why = match gap {
            Some(g) if what == "reference" => format!(": {g}"),
            _ => String::new(),
        };
        Detection::inconclusive(
            static_name(name),
            format!("no {what} data to compare with{why}"),
        )
    };
    match name {
        "threshold" => match m.threshold {
            Some(bound) => (
                detect::threshold::threshold(&change, bound, m.direction, p.min_samples),
                "change".to_string(),
            ),
            None => (missing("threshold"), "change".to_string()),
        },
        "proportion" => {
            let MetricData::Ratio {
                numerator,
                denominator,
            } = data
            else {
                return (
                    Detection::inconclusive(
                        "proportion",
                        "the proportion detector needs numerator and denominator".into(),
                    ),
                    "change".to_string(),
                );
            };
            let (label, rn, rd) = match reference.map(|r| r.0) {
                Some("control") => (
                    "change vs control",
                    numerator.control.as_ref(),
                    denominator.control.as_ref(),
                ),
                Some(_) => (
                    "change vs background",
                    numerator.background.as_ref(),
                    denominator.background.as_ref(),
                ),
                None => ("change", None, None),
            };
            match (rn, rd) {
                (Some(rn), Some(rd)) => (
                    detect::proportion::detect(
                        numerator.change.integral(),
                        denominator.change.integral(),
                        rn.integral(),
                        rd.integral(),
                        detect::proportion::Params {
                            direction: m.direction,
                            alpha: p.alpha,
                            min_delta: m.min_delta,
                            min_total: (p.min_samples * 5) as f64,
                        },
                    ),
                    label.to_string(),
                ),
                _ => (missing("reference"), "change".to_string()),
            }
        }
        "mann-whitney" | "variance" | "kde" => {
            let Some((label, reference)) = reference else {
                return (missing("reference"), "change".to_string());
            };
            let r = reference.values();
            let groups = if label == "control" {
                "change vs control"
            } else {
                "change vs background"
            };
            let d = match name {
                "mann-whitney" => detect::mann_whitney::detect(
                    &change,
                    &r,
                    detect::mann_whitney::Params {
                        direction: m.direction,
                        alpha: p.alpha,
                        min_delta: m.min_delta,
                        min_samples: p.min_samples,
                    },
                ),
                "variance" => detect::variance::detect(
                    &change,
                    &r,
                    p.alpha,
                    2.0,
                    m.min_delta / 2.0,
                    p.min_samples,
                ),
                _ => detect::kde::detect(&change, &r, m.direction, 2.0, p.min_samples),
            };
            (d, groups.to_string())
        }
        "peers" => {
            let Some((label, reference)) = reference else {
                return (missing("reference"), "change".to_string());
            };
            let Some((change, refs, slot)) = peer_inputs(values, reference, p) else {
                return (missing("change"), format!("change vs {label}"));
            };
            let params = p.peers(m);
            let plain = detect::peers::detect(&change, &refs, &params);
            // The workload's released changes: recorded against the control group of their time,
            // they apply as well to the background the last batch (all pods young) is held to.
            let learned = history
                .filter(|_| matches!(label, "control" | "background"))
                .and_then(|h| Some((h, h.metric(&m.name, m.direction, slot)?)));
            let Some((h, mh)) = learned else {
                return (plain, format!("change vs {label}"));
            };
            let mut d = detect::peers::detect_with(&change, &refs, &params, Some(&mh.envelope));
            let ratios = detect::peers::slot_ratios(&change, &refs);
            let this = super::history::median_ratio(&ratios);
            // Where the released changes say a healthy canary's typical ratio lies: a change
            // outside it (and beyond the control pods' own disagreement) departs from its
            // workload's record even when the generic minimum effect would let it pass. The
            // interval carries the standard error of this change's own log median ratio.
            let se = super::history::log_mean_sd(ratios.values().copied())
                .map_or(f64::INFINITY, |(_, sd, n)| sd / (n as f64).sqrt());
            let prior = h.prior(&m.name, slot);
            let predicted = mh
                .prediction(p.history_alpha, se, prior.as_ref())
                .filter(|_| se.is_finite());
            let beyond = match (this, predicted) {
                (Some(r), Some((lo, hi))) if d.outcome != Verdict::Fail => {
                    let outside = match m.direction {
                        crate::api::Direction::Increase => r > hi,
                        crate::api::Direction::Decrease => r < lo,
                        crate::api::Direction::Either => r > hi || r < lo,
                    };
                    let dep = detect::peers::departure_with(&change, &refs, &params, None);
                    let departs =
                        peers::bad_part(m.direction, r - 1.0) * dep.level.abs() > dep.spread;
                    (outside && departs).then_some((lo, hi))
                }
                _ => None,
            };
            if let (Some((lo, hi)), Some(r)) = (beyond, this) {
                d.outcome = Verdict::Fail;
                d.score = r;
                d.threshold = if m.direction == crate::api::Direction::Decrease {
                    lo
                } else {
                    hi
                };
                let sentence = mh.sentence(&h.workload, &m.name, this, false);
                let moderated = prior
                    .map(|pr| {
                        format!(
                            ", its spread moderated by {} workloads' records",
                            pr.workloads
                        )
                    })
                    .unwrap_or_default();
                d.explanation = format!(
                    "{sentence}: outside {lo:.2}–{hi:.2}×, where they put a healthy canary (prediction interval, {}% each side{moderated}); against the {label} alone: {}",
                    fmt_num(p.history_alpha * 100.0),
                    plain.explanation,
                );
                return (d, format!("change vs {label} and history"));
            }
            let within = d.outcome != Verdict::Fail;
            let sentence = mh.sentence(&h.workload, &m.name, this, within);
            if plain.outcome == Verdict::Fail && within {
                d.suppressed_by = Some("history");
            }
            // What decided it comes first: status keeps a bounded explanation, and a long account
            // of the departure must not push the reason it passed out of it. "Alone" is the
            // judgement without the history (the widened band would count fewer departing slots).
            d.explanation = format!(
                "{sentence}; against the {label} alone: {}",
                plain.explanation
            );
            (d, format!("change vs {label} and history"))
        }
        "three-sigma" => match &values.background {
            Some(bg) if !bg.is_empty() => (
                detect::three_sigma::detect(
                    &change,
                    &bg.values(),
                    m.direction,
                    3.0,
                    true,
                    p.min_samples,
                ),
                "change vs background".to_string(),
            ),
            _ => (missing("background"), "change vs background".to_string()),
        },
        "dtw" => match &values.history {
            Some(h) if !h.is_empty() => {
                let dist = dtw::shape_distance(&values.change.mean_series(), &h.mean_series(), 0.1);
                let bad = dist > 0.5;
                (
                    Detection {
                        detector: "dtw",
                        score: dist,
                        threshold: 0.5,
                        outcome: if bad { Verdict::Fail } else { Verdict::Pass },
                        explanation: format!(
                            "shape distance to the same window in history is {}",
                            fmt_num(dist)
                        ),
                        suppressed_by: None,
                    },
                    "change vs history".to_string(),
                )
            }
            _ => (missing("history"), "change vs history".to_string()),
        },
        other => (
            Detection::inconclusive("unknown", format!("unknown detector {other}")),
            "change".to_string(),
        ),
    }
}

fn static_name(name: &str) -> &'static str {
    crate::api::validate::DETECTORS
        .iter()
        .find(|d| **d == name)
        .copied()
        .unwrap_or("unknown")
}

/// Historical similarity: a failure is environmental when the control (or, without a control,
/// the history) strays from its usual shape as much as the change group does.
fn environmental(values: &Groups) -> Option<String> {
    let history = values.history.as_ref().filter(|h| !h.is_empty())?;
    let usual = history.mean_series();
    let change = values.change.mean_series();
    if usual.len() < 3 || change.len() < 3 {
        return None;
    }
    let d_change = dtw::shape_distance(&change, &usual, 0.1);
    let witness = values
        .control
        .as_ref()
        .filter(|c| !c.is_empty())
        .or(values.background.as_ref())?;
    let d_env = dtw::shape_distance(&witness.mean_series(), &usual, 0.1);
    (d_change > 0.3 && d_env >= 0.8 * d_change).then(|| {
        format!("historical similarity: the reference strays from its usual shape as much (DTW {} vs {})", fmt_num(d_env), fmt_num(d_change))
    })
}

/// Judge a batch: it fails when any metric that is not advisory fails (each detector already
/// demands strong evidence), is inconclusive when a critical metric or every metric lacks data,
/// and passes otherwise.
pub fn judge(metrics: &[(Metric, MetricData)], p: &Params) -> Outcome {
    judge_with_history(metrics, p, None)
}

/// [`judge`], with the workload's released changes as the history group: a `peers` departure
/// that every released change showed at the same age is not evidence (see
/// [`history`](super::history)).
pub fn judge_with_history(
    metrics: &[(Metric, MetricData)],
    p: &Params,
    history: Option<&super::history::History>,
) -> Outcome {
    // The history's prediction intervals share the judgement's level among the metrics it holds.
    let mut shared = *p;
    if let Some(h) = history {
        let held = metrics
            .iter()
            .filter(|(m, _)| m.detectors.iter().any(|d| d == "peers"))
            .filter(|(m, _)| {
                h.records
                    .iter()
                    .filter(|r| r.ratios.contains_key(&m.name))
                    .count()
                    >= super::history::MIN_RECORDS
            })
            .count();
        shared.history_alpha = p.alpha / held.max(1) as f64;
    }
    let p = &shared;
    let mut findings = Vec::new();
    // Metrics that would have failed but for the workload's history.
    let mut explained: Vec<String> = Vec::new();
    let mut failed: Vec<&Metric> = Vec::new();
    let mut critical_inconclusive = Vec::new();
    let mut decided = 0;
    for (m, data) in metrics {
        let values = metric_values(data);
        let reference = reference(&values, p);
        let mut outcomes = Vec::new();
        for name in &m.detectors {
            let (mut d, groups) = run_detector(name, m, data, &values, reference, p, history);
            if let Some(gap) = reference_gap(&values, p)
                && name != "three-sigma"
                && groups.starts_with("change vs background")
            {
                // What was judged is what is shown: the listed control pods were not the reference.
                d.explanation = format!(
                    "{gap}, so it was held to the workload before the change; {}",
                    d.explanation
                );
            }
            if d.outcome == Verdict::Fail
                && let Some(why) = environmental(&values)
            {
                d.outcome = Verdict::Pass;
                d.suppressed_by = Some("historical similarity");
                d.explanation = format!("{}; {why}", d.explanation);
            }
            if d.outcome == Verdict::Fail && m.advisory {
                d.outcome = Verdict::Pass;
                d.suppressed_by = Some("advisory metric");
                d.explanation = format!(
                    "{}; {} metrics are advisory by default (young pods differ), set critical: true to let it fail",
                    d.explanation,
                    kind_name(m.kind)
                );
            }
            if d.suppressed_by == Some("history") && !m.advisory && !explained.contains(&m.name) {
                explained.push(m.name.clone());
            }
            outcomes.push(d.outcome);
            findings.push(to_finding(&m.name, &groups, &d));
        }
        let outcome = if outcomes.contains(&Verdict::Fail) {
            Verdict::Fail
        } else if outcomes.iter().all(|o| *o == Verdict::Inconclusive) {
            Verdict::Inconclusive
        } else {
            Verdict::Pass
        };
        match outcome {
            Verdict::Fail => {
                decided += 1;
                failed.push(m);
            }
            Verdict::Pass => decided += 1,
            Verdict::Inconclusive if m.critical => critical_inconclusive.push(m.name.clone()),
            Verdict::Inconclusive => {}
        }
    }
    let idle = idle_canary(metrics, p);
    if let Some(d) = &idle {
        findings.push(to_finding("canary activity", "change vs control", d));
    }
    if let Some(second) = second_reference(metrics) {
        // The control group is a fresh baseline: say so, and show the long-running pods too.
        for f in &mut findings {
            f.groups = f.groups.replace("vs control", "vs fresh baseline");
        }
        findings.push(second);
    }
    findings.sort_by_key(severity);
    let first_failure = findings
        .iter()
        .find(|f| f.outcome == Some(Verdict::Fail))
        .map(|f| format!(" — {} [{}]: {}", f.metric, f.detector, f.explanation))
        .unwrap_or_default();
    let (verdict, summary) = if let Some(d) = idle.filter(|d| d.outcome == Verdict::Fail) {
        (Verdict::Fail, d.explanation)
    } else if !failed.is_empty() {
        let names: Vec<&str> = failed.iter().map(|m| m.name.as_str()).collect();
        let critical = if failed.iter().any(|m| m.critical) {
            "critical "
        } else {
            ""
        };
        (
            Verdict::Fail,
            format!(
                "{critical}metric {} failed{first_failure}",
                names.join(", ")
            ),
        )
    } else if !critical_inconclusive.is_empty() {
        (
            Verdict::Inconclusive,
            format!(
                "not enough data for critical metric {}",
                critical_inconclusive.join(", ")
            ),
        )
    } else if decided == 0 {
        (
            Verdict::Inconclusive,
            "not enough data for any metric".to_string(),
        )
    } else {
        let history = if explained.is_empty() {
            String::new()
        } else {
            format!(
                "; {} departed as the workload's released changes did (history)",
                explained.join(", ")
            )
        };
        (
            Verdict::Pass,
            format!("{decided} metrics compared, none worse{history}"),
        )
    };
    Outcome {
        verdict,
        summary,
        findings,
    }
}

/// With a fresh baseline: how the canary compares with the long-running pods still on the old
/// template, per metric (medians), as one finding that is shown and not judged.
fn second_reference(metrics: &[(Metric, MetricData)]) -> Option<Finding> {
    let mut parts = Vec::new();
    let mut pods = 0;
    for (m, data) in metrics {
        let values = metric_values(data);
        let Some(running) = values.running.as_ref().filter(|r| !r.is_empty()) else {
            continue;
        };
        pods = pods.max(running.0.len());
        let (c, r) = (values.change.values(), running.values());
        if c.is_empty() {
            continue;
        }
        let (mc, mr) = (median(&c), median(&r));
        parts.push(if mr.abs() > f64::EPSILON {
            format!("{} {:.2}×", m.name, mc / mr)
        } else {
            format!("{} {} vs {}", m.name, fmt_num(mc), fmt_num(mr))
        });
    }
    (pods > 0).then(|| Finding {
        metric: "second reference".into(),
        detector: "medians".into(),
        groups: "change vs long-running control".into(),
        outcome: None,
        score: None,
        threshold: None,
        explanation: format!(
            "against the {pods} long-running pod(s) still on the old template the canary ran {} (median ÷ median; shown, not judged: the fresh baseline is as young as the canary)",
            if parts.is_empty() {
                "without data".to_string()
            } else {
                parts.join(", ")
            }
        ),
        suppressed_by: None,
    })
}

/// A group's samples at or after `from` (all of them without a bound).
fn values_from(g: &GroupData, from: Option<f64>) -> Vec<f64> {
    g.0.values()
        .flatten()
        .filter(|(t, _)| from.is_none_or(|f| *t >= f))
        .map(|(_, v)| *v)
        .collect()
}

/// Whether the canary does any work, from the activity metrics (latency, CPU, and the request
/// rate behind every ratio metric), compared with the control pods; `None` without a control
/// group in use.
fn idle_canary(metrics: &[(Metric, MetricData)], p: &Params) -> Option<detect::Detection> {
    if !p.use_control {
        return None;
    }
    let mut activity = Vec::new();
    for (m, data) in metrics {
        let (name, g) = match data {
            MetricData::Plain(g) if matches!(m.kind, MetricKind::Latency | MetricKind::Cpu) => {
                (m.name.clone(), g)
            }
            MetricData::Ratio { denominator, .. } => {
                (format!("{} (its request rate)", m.name), denominator)
            }
            MetricData::Plain(_) => continue,
        };
        let Some(control) = g.control.as_ref().filter(|c| !c.is_empty()) else {
            continue;
        };
        // Requests (and the CPU they take) follow a traffic-weighted canary's share; latency not.
        let expected = match (data, m.kind) {
            (MetricData::Plain(_), MetricKind::Latency) => 1.0,
            _ => p.canary_share_per_pod.unwrap_or(1.0),
        };
        activity.push(detect::idle::Activity {
            name,
            change: values_from(&g.change, p.skip_change_before),
            control: values_from(control, p.skip_change_before),
            expected,
        });
    }
    if activity.is_empty() {
        return None;
    }
    let d = detect::idle::idle(&activity);
    (d.outcome != Verdict::Inconclusive).then_some(d)
}

/// The kind's name as a user writes it.
pub fn kind_name(k: MetricKind) -> &'static str {
    match k {
        MetricKind::Errors => "errors",
        MetricKind::Latency => "latency",
        MetricKind::Cpu => "cpu",
        MetricKind::Memory => "memory",
        MetricKind::Other => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> GroupData {
        GroupData(
            [(
                "p".to_string(),
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (i as f64, *v))
                    .collect(),
            )]
            .into(),
        )
    }

    fn metric(name: &str, critical: bool, detectors: &[&str]) -> Metric {
        Metric {
            name: name.into(),
            direction: Direction::Increase,
            detectors: detectors.iter().map(|s| s.to_string()).collect(),
            threshold: None,
            min_delta: 0.1,
            critical,
            weight: 1.0,
            kind: MetricKind::Other,
            advisory: false,
        }
    }

    fn wave(base: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| base + ((i * 7) % 5) as f64 * 0.01 * base)
            .collect()
    }

    /// Pods' p99 latency as a range query gives it: every second, over the 10 s before.
    fn p99_points(pods: &[&str], slow_from: Option<f64>, slow_to: f64) -> GroupData {
        GroupData(
            pods.iter()
                .enumerate()
                .map(|(j, pod)| {
                    let series = (0..120)
                        .map(|t| {
                            let t = t as f64;
                            // A slow request at `r` is in the points whose window (t-10, t] holds it.
                            let slow =
                                slow_from.is_some_and(|r| r <= t && t - 10.0 < slow_to.max(r));
                            let base = 0.1 + 0.002 * ((t as usize + j) % 3) as f64;
                            (t, if slow { 1.0 } else { base })
                        })
                        .collect();
                    (pod.to_string(), series)
                })
                .collect(),
        )
    }

    #[test]
    fn one_slow_request_raises_one_slot_and_a_slow_stretch_still_fails() {
        let p = Params {
            slot_secs: 10.0,
            ..Params::default()
        };
        let latency = metric("latency-p99", true, &["peers"]);
        let judge_change = |change: GroupData| {
            let data = MetricData::Plain(Groups {
                change,
                control: Some(p99_points(&["a", "b", "c"], None, 0.0)),
                ..Default::default()
            });
            judge(&[(latency.clone(), data)], &p)
        };
        // One request 10× slower at 43.5 s is in the points from 44 to 53 s: the slots [40, 50)
        // and [50, 60) both hold some, but only the point at 49 s covers it.
        let one = judge_change(p99_points(&["x"], Some(43.5), 43.5));
        assert_eq!(one.verdict, Verdict::Pass, "{}", one.summary);
        // Slow from 40 s to 70 s: three slots.
        let stretch = judge_change(p99_points(&["x"], Some(40.0), 70.0));
        assert_eq!(stretch.verdict, Verdict::Fail, "{}", stretch.summary);
        // The same single request with slots averaged would have failed: two slots above.
        let units = peer_units(&p99_points(&["x"], Some(43.5), 43.5), 0.0, 10.0, None);
        let raised = units[0].values().filter(|v| **v > 0.5).count();
        assert_eq!(raised, 1, "{units:?}");
    }

    #[test]
    fn a_slot_is_valued_by_its_last_sample() {
        // Points every second up to 14 s in slots of 10 s: the slot [10, 20), still filling,
        // takes its latest point.
        let g = GroupData(
            [(
                "p".to_string(),
                (0..15).map(|t| (t as f64, t as f64)).collect(),
            )]
            .into(),
        );
        let units = peer_units(&g, 0.0, 10.0, None);
        assert_eq!(units, vec![[(0, 9.0), (1, 14.0)].into()]);
        // Recorded data one point a slot: every slot, its value.
        let g = GroupData(
            [(
                "p".to_string(),
                (0..5).map(|t| (60.0 * t as f64, t as f64)).collect(),
            )]
            .into(),
        );
        let units = peer_units(&g, 0.0, 60.0, None);
        assert_eq!(units, vec![(0..5).map(|k| (k, k as f64)).collect()]);
    }

    #[test]
    fn a_critical_failure_fails_the_batch() {
        let data = MetricData::Plain(Groups {
            change: series(&wave(2.0, 30)),
            control: Some(series(&wave(1.0, 30))),
            ..Default::default()
        });
        let ok = MetricData::Plain(Groups {
            change: series(&wave(1.0, 30)),
            control: Some(series(&wave(1.0, 30))),
            ..Default::default()
        });
        let out = judge(
            &[
                (metric("latency", true, &["mann-whitney"]), data),
                (metric("cpu", false, &["mann-whitney"]), ok),
            ],
            &Params::default(),
        );
        assert_eq!(out.verdict, Verdict::Fail);
        assert_eq!(out.findings[0].metric, "latency");
        assert!(out.summary.contains("critical metric latency failed"));
    }

    #[test]
    fn too_few_samples_is_inconclusive_never_pass() {
        let data = MetricData::Plain(Groups {
            change: series(&[1.0, 2.0]),
            control: Some(series(&wave(1.0, 30))),
            ..Default::default()
        });
        let out = judge(
            &[(metric("latency", true, &["mann-whitney"]), data)],
            &Params::default(),
        );
        assert_eq!(out.verdict, Verdict::Inconclusive);
    }

    #[test]
    fn a_fresh_baseline_is_the_reference_and_the_long_running_pods_are_shown() {
        // The canary and the baseline are both young (twice the latency of the long-running
        // pods): judged against the baseline it passes, and the evidence shows the 2×.
        let young = MetricData::Plain(Groups {
            change: series(&wave(2.0, 30)),
            control: Some(series(&wave(2.0, 30))),
            running: Some(series(&wave(1.0, 30))),
            ..Default::default()
        });
        let out = judge(
            &[(metric("latency", true, &["mann-whitney"]), young)],
            &Params::default(),
        );
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.summary);
        assert!(
            out.findings
                .iter()
                .any(|f| f.groups == "change vs fresh baseline")
        );
        let second = out
            .findings
            .iter()
            .find(|f| f.metric == "second reference")
            .unwrap();
        assert_eq!(second.outcome, None);
        assert!(
            second.explanation.contains("latency 2.00×"),
            "{}",
            second.explanation
        );
        // A bad canary still fails against the baseline.
        let bad = MetricData::Plain(Groups {
            change: series(&wave(6.0, 30)),
            control: Some(series(&wave(2.0, 30))),
            running: Some(series(&wave(1.0, 30))),
            ..Default::default()
        });
        let out = judge(
            &[(metric("latency", true, &["mann-whitney"]), bad)],
            &Params::default(),
        );
        assert_eq!(out.verdict, Verdict::Fail, "{}", out.summary);
    }

    #[test]
    fn a_fresh_baseline_without_samples_is_never_replaced_by_the_background() {
        // The baseline pod was listed but gave no samples yet (its first scrapes): no silent
        // judgement of the young canary against an hour of long-running pods.
        let early = MetricData::Plain(Groups {
            change: series(&wave(1.0, 30)),
            control: Some(GroupData::default()),
            background: Some(series(&wave(1.0, 120))),
            running: Some(series(&wave(1.0, 30))),
            history: None,
        });
        let out = judge(
            &[(metric("latency", false, &["mann-whitney"]), early)],
            &Params::default(),
        );
        let f = &out.findings[0];
        assert_eq!(f.outcome, Some(Verdict::Inconclusive), "{f:?}");
        assert!(
            f.explanation
                .contains("the fresh baseline's pods have no samples of this metric yet"),
            "{}",
            f.explanation
        );
        assert!(!f.groups.contains("background"), "{}", f.groups);
        // Control pods (not a baseline) without samples: the background is the reference, and
        // the finding says why.
        let quiet = MetricData::Plain(Groups {
            change: series(&wave(3.0, 30)),
            control: Some(GroupData::default()),
            background: Some(series(&wave(1.0, 120))),
            running: None,
            history: None,
        });
        let out = judge(
            &[(metric("latency", true, &["mann-whitney"]), quiet)],
            &Params::default(),
        );
        let f = &out.findings[0];
        assert_eq!(f.groups, "change vs background");
        assert!(
            f.explanation.starts_with(
                "the control pods gave no samples of this metric, so it was held to the workload before the change"
            ),
            "{}",
            f.explanation
        );
    }

    #[test]
    fn without_control_the_background_is_the_reference() {
        let data = MetricData::Plain(Groups {
            change: series(&wave(3.0, 30)),
            control: None,
            background: Some(series(&wave(1.0, 120))),
            history: None,
            running: None,
        });
        let out = judge(
            &[(
                metric("latency", true, &["mann-whitney", "three-sigma"]),
                data,
            )],
            &Params::default(),
        );
        assert_eq!(out.verdict, Verdict::Fail);
        assert!(
            out.findings
                .iter()
                .all(|f| f.groups == "change vs background")
        );
    }

    #[test]
    fn ratio_metrics_use_counts_for_the_proportion_test() {
        let rate = |v: f64| series(&vec![v; 30]);
        // Errors per second over 20 req/s on the change and 60 req/s on the control.
        let ratio = |change_errors: f64, control_errors: f64| MetricData::Ratio {
            numerator: Groups {
                change: rate(change_errors),
                control: Some(rate(control_errors)),
                ..Default::default()
            },
            denominator: Groups {
                change: rate(20.0),
                control: Some(rate(60.0)),
                ..Default::default()
            },
        };
        let data = ratio(2.0, 0.0);
        let m = Metric {
            min_delta: 0.002,
            ..metric("errors", true, &["proportion"])
        };
        let out = judge(&[(m.clone(), data)], &Params::default());
        assert_eq!(out.verdict, Verdict::Fail, "{:?}", out.findings);
        let quiet = ratio(0.0, 0.0);
        assert_eq!(
            judge(&[(m, quiet)], &Params::default()).verdict,
            Verdict::Pass
        );
    }

    /// Pods each steady at one value for `n` one-second samples.
    fn steady(values: &[(&str, f64)], n: i32) -> GroupData {
        GroupData(
            values
                .iter()
                .map(|(pod, v)| {
                    (
                        pod.to_string(),
                        (0..n).map(|t| (f64::from(t), *v)).collect(),
                    )
                })
                .collect(),
        )
    }

    /// Released changes of `workload`, each steady at one ratio of `metric` to the control for
    /// `n` one-second slots.
    fn released(
        workload: &str,
        metric: &str,
        ratios: &[f64],
        n: i64,
    ) -> super::super::history::History {
        use super::super::history::{History, Record};
        History {
            workload: workload.into(),
            records: ratios
                .iter()
                .enumerate()
                .map(|(i, r)| Record {
                    change: format!("v{i}"),
                    slot_secs: 1.0,
                    ratios: [(metric.to_string(), (0..n).map(|a| (a, *r)).collect())].into(),
                })
                .collect(),
            ..History::default()
        }
    }

    #[test]
    fn a_change_outside_what_its_released_changes_predict_fails_within_the_minimum_effect() {
        use super::super::history::{History, Record};
        let pods = |values: &[(&str, f64)]| steady(values, 10);
        let case = |canary: f64| {
            MetricData::Plain(Groups {
                change: pods(&[("canary", canary)]),
                control: Some(pods(&[("a", 1.0), ("b", 1.02), ("c", 0.98)])),
                ..Default::default()
            })
        };
        let mut cpu = metric("cpu", true, &["peers"]);
        cpu.kind = MetricKind::Cpu;
        cpu.min_delta = 1.0; // a doubling, as for CPU by default
        let p = Params {
            slot_secs: 1.0,
            ..Params::default()
        };
        // Released changes of the workload, each steady at one ratio to the control.
        let released = |ratios: &[f64]| released("Deployment/currency", "cpu", ratios, 10);
        let history = released(&[0.995, 0.95, 0.968, 1.023, 0.978, 0.969]);
        let judged = |canary: f64, h: Option<&History>| {
            judge_with_history(&[(cpu.clone(), case(canary))], &p, h)
        };
        // 1.3× is well within the generic minimum effect…
        assert_eq!(judged(1.3, None).verdict, Verdict::Pass);
        // …but not within what six healthy releases of this workload showed (0.86–1.12× at 1%).
        let out = judged(1.3, Some(&history));
        assert_eq!(out.verdict, Verdict::Fail, "{}", out.summary);
        let f = &out.findings[0];
        assert!(
            f.explanation.starts_with(
                "history: this one 1.30× — beyond what the last 6 released changes of Deployment/currency showed: their canary's cpu ran 0.95–1.02×"
            ) && f.explanation.contains("in its first 10 s: outside 0.89–1.08×"),
            "{}",
            f.explanation
        );
        assert_eq!(f.score, Some(1.3));
        let alone = judged(1.3, None).findings[0].explanation.clone();
        assert!(
            f.explanation
                .ends_with(&format!("; against the control alone: {alone}")),
            "{}",
            f.explanation
        );
        // A canary like its predecessors passes, and says so.
        let out = judged(1.0, Some(&history));
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.summary);
        assert!(
            out.findings[0]
                .explanation
                .starts_with("history: this one 1.00× — within"),
            "{}",
            out.findings[0].explanation
        );

        // A canary far beyond the generic minimum effect, as every released change was (a young
        // pod's latency, say): the history explains it, and says so first, so that the bounded
        // explanation kept in status still carries why it passed.
        let slow = released(&[2.42, 2.55, 2.61]);
        assert_eq!(judged(2.5, None).verdict, Verdict::Fail);
        let out = judged(2.5, Some(&slow));
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.summary);
        let f = &out.findings[0];
        assert_eq!(f.suppressed_by.as_deref(), Some("history"), "{f:?}");
        let within = f.explanation.find("— within").unwrap_or(usize::MAX);
        assert!(
            f.explanation
                .starts_with("history: this one 2.50× — within what the last 3 released changes")
                && within < 300
                && f.explanation.contains("; against the control alone: "),
            "{}",
            f.explanation
        );

        // Three records only: their variance has two degrees of freedom and the interval is so
        // wide that 1.15× passes. Neighbours whose healthy changes vary alike (a few percent)
        // lend their strength: the same change now fails, and the sentence says whose records
        // moderated it. Neighbours that vary widely lend little, and it passes.
        let few = released(&[1.0, 0.94, 0.97]);
        assert_eq!(judged(1.15, Some(&few)).verdict, Verdict::Pass);
        let neighbours = |spreads: &[&[f64]]| -> Vec<Vec<Record>> {
            spreads.iter().map(|r| released(r).records).collect()
        };
        let calm = History {
            neighbours: neighbours(&[
                &[1.0, 1.04, 0.97, 1.01],
                &[0.98, 1.02, 1.05],
                &[1.03, 0.99, 0.96, 1.0, 1.02],
                &[0.97, 1.01, 1.0],
            ]),
            ..few.clone()
        };
        let out = judged(1.15, Some(&calm));
        assert_eq!(out.verdict, Verdict::Fail, "{}", out.summary);
        assert!(
            out.findings[0]
                .explanation
                .contains("its spread moderated by 5 workloads' records"),
            "{}",
            out.findings[0].explanation
        );
        let wild = History {
            neighbours: neighbours(&[&[1.0, 1.6, 0.7], &[0.5, 1.0, 1.9], &[1.4, 0.8, 1.1]]),
            ..few.clone()
        };
        assert_eq!(judged(1.15, Some(&wild)).verdict, Verdict::Pass);
    }

    #[test]
    fn against_the_control_alone_is_the_judgement_without_history() {
        let pods = |values: &[(&str, f64)]| steady(values, 5);
        // Five slots 1.12× the control: beyond the 10% minimum effect at every one, but neither
        // far (1.5× the band) nor long (10 in a row), so it passes with or without history.
        let data = MetricData::Plain(Groups {
            change: pods(&[("canary", 1.12)]),
            control: Some(pods(&[("a", 1.0), ("b", 1.01), ("c", 0.99)])),
            ..Default::default()
        });
        let latency = metric("latency-p99", true, &["peers"]);
        let p = Params {
            slot_secs: 1.0,
            ..Params::default()
        };
        let alone = judge(&[(latency.clone(), data.clone())], &p);
        assert_eq!(alone.verdict, Verdict::Pass, "{}", alone.summary);
        let plain = alone.findings[0].explanation.clone();
        assert!(plain.starts_with("5 of 5 slots beyond ±"), "{plain}");
        // Released changes whose young canaries ran 2.4–2.6× the control.
        let history = released("Deployment/web", "latency-p99", &[2.42, 2.55, 2.61], 5);
        let out = judge_with_history(&[(latency, data)], &p, Some(&history));
        assert_eq!(out.verdict, Verdict::Pass, "{}", out.summary);
        let f = &out.findings[0];
        assert_eq!(f.suppressed_by, None, "the control alone passes it too");
        assert!(
            f.explanation
                .ends_with(&format!("; against the control alone: {plain}")),
            "{}",
            f.explanation
        );
    }

    #[test]
    fn integral_of_a_rate() {
        let g = GroupData([("a".to_string(), vec![(0.0, 2.0), (5.0, 2.0), (10.0, 2.0)])].into());
        assert_eq!(g.integral(), 30.0);
    }
}
