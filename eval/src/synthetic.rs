//! A labelled scenario generator for judging the judges: good changes (plain, noisy, diurnal,
//! low traffic, a global event hitting both groups) and bad ones (level shift, spike, slow
//! drift, variance only, errors from zero, latency tail), each as one judgement's data for an
//! error ratio and a p99 latency, plus a Kayenta-style Mann-Whitney judge as the baseline.

use graygate::analysis::judge::{self, GroupData, Groups, Metric, MetricData};
use graygate::api::Verdict;
use graygate::detect::mann_whitney::{self, Alternative, Method};
use std::collections::BTreeMap;

/// Case types, good ones first.
pub const KINDS: [(&str, bool); 11] = [
    ("plain", false),
    ("noisy", false),
    ("diurnal", false),
    ("low-traffic", false),
    ("global-event", false),
    ("level-shift", true),
    ("spike", true),
    ("slow-drift", true),
    ("variance-only", true),
    ("errors-from-zero", true),
    ("latency-tail", true),
];

/// One labelled case.
pub struct Case {
    /// Its type.
    pub kind: &'static str,
    /// Whether the change is bad.
    pub bad: bool,
    /// The data of one judgement.
    pub metrics: Vec<(Metric, MetricData)>,
}

/// A small deterministic generator (SplitMix64), so the report is reproducible without a dependency.
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
    /// Poisson count.
    pub fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 {
            return 0.0;
        }
        if lambda > 50.0 {
            return (lambda + lambda.sqrt() * self.normal()).round().max(0.0);
        }
        let l = (-lambda).exp();
        let (mut k, mut p) = (0.0, 1.0);
        loop {
            p *= self.uniform();
            if p <= l {
                return k;
            }
            k += 1.0;
        }
    }
}

/// Samples of one pod: `(seconds, value)`.
type Series = Vec<(f64, f64)>;

const STEP: f64 = 10.0;
const SAMPLES: usize = 30;

struct Shape {
    rps: f64,
    base_error: f64,
    change_error: f64,
    latency: f64,
    noise: f64,
}

/// Latency of one pod at sample `i` of `n`: a multiplier applied by the case type.
fn latency_series(
    rng: &mut Rng,
    shape: &Shape,
    n: usize,
    factor: impl Fn(usize, &mut Rng) -> f64,
    shared: &[f64],
) -> Vec<(f64, f64)> {
    (0..n)
        .map(|i| {
            // p99 estimated from few requests is noisier: the noise grows as traffic falls.
            let sampling = 1.0 / (shape.rps * STEP).max(1.0).sqrt();
            let v = shape.latency
                * shared[i]
                * factor(i, rng)
                * (1.0 + (shape.noise + sampling) * rng.normal()).max(0.2);
            (i as f64 * STEP, v)
        })
        .collect()
}

fn counts(rng: &mut Rng, rps: f64, error: f64, n: usize, shared: &[f64]) -> (Series, Series) {
    let mut num = Vec::with_capacity(n);
    let mut den = Vec::with_capacity(n);
    for (i, s) in shared.iter().enumerate().take(n) {
        let total = rng.poisson(rps * s * STEP);
        let mut bad = 0.0;
        for _ in 0..(total as usize) {
            if rng.uniform() < error {
                bad += 1.0;
            }
        }
        num.push((i as f64 * STEP, bad / STEP));
        den.push((i as f64 * STEP, total / STEP));
    }
    (num, den)
}

/// A metric of the built-in set, with the defaults production fills in.
fn default_metric(name: &str) -> Metric {
    graygate::analysis::defaults::default_metrics()
        .into_iter()
        .find(|(m, _)| m.name == name)
        .map(|(m, _)| Metric::from_spec(&m))
        .unwrap_or_else(|| panic!("{name} is not a built-in metric"))
}

/// Generate `per_kind` cases of every type.
pub fn generate(seed: u64, per_kind: usize) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for (kind, bad) in KINDS {
        for _ in 0..per_kind {
            out.push(case(&mut rng, kind, bad));
        }
    }
    out
}

fn case(rng: &mut Rng, kind: &'static str, bad: bool) -> Case {
    let change_pods = 1 + (rng.uniform() * 3.0) as usize;
    let control_pods = 3 + (rng.uniform() * 7.0) as usize;
    let mut shape = Shape {
        rps: 5.0 + rng.uniform() * 45.0,
        base_error: 0.0005 + rng.uniform() * 0.003,
        change_error: 0.0,
        latency: 0.05 + rng.uniform() * 0.4,
        noise: 0.05 + rng.uniform() * 0.05,
    };
    shape.change_error = shape.base_error;
    let mut shared = vec![1.0; SAMPLES];
    match kind {
        "noisy" => shape.noise = 0.25 + rng.uniform() * 0.15,
        "diurnal" => {
            let phase = rng.uniform() * std::f64::consts::TAU;
            shared = (0..SAMPLES)
                .map(|i| 1.0 + 0.4 * (phase + i as f64 / SAMPLES as f64 * 3.0).sin())
                .collect();
        }
        "low-traffic" => shape.rps = 0.3 + rng.uniform() * 1.2,
        "global-event" => {
            let start = SAMPLES / 3 + (rng.uniform() * SAMPLES as f64 / 3.0) as usize;
            shared = (0..SAMPLES)
                .map(|i| if i >= start { 2.0 + rng.uniform() } else { 1.0 })
                .collect();
        }
        "errors-from-zero" => {
            shape.base_error = 0.0;
            shape.change_error = 0.005 + rng.uniform() * 0.02;
        }
        _ => {}
    }
    let severity = 0.5 + rng.uniform();
    let factor = |i: usize, r: &mut Rng| -> f64 {
        let x = i as f64 / SAMPLES as f64;
        match kind {
            "level-shift" => 1.3 + 0.4 * severity,
            "spike" if (0.4..0.75).contains(&x) => 2.5 + severity,
            "slow-drift" => 1.0 + (0.6 + 0.6 * severity) * x * 2.0,
            "variance-only" => (1.0 + (1.0 + severity) * 0.6 * r.normal()).max(0.05),
            "latency-tail" if r.uniform() < 0.25 => 2.0 + severity,
            _ => 1.0,
        }
    };
    let mut lat_change = BTreeMap::new();
    let mut lat_control = BTreeMap::new();
    let mut num_change = BTreeMap::new();
    let mut den_change = BTreeMap::new();
    let mut num_control = BTreeMap::new();
    let mut den_control = BTreeMap::new();
    let change_error = shape.change_error;
    let base_error = shape.base_error;
    for p in 0..change_pods {
        lat_change.insert(
            format!("change-{p}"),
            latency_series(rng, &shape, SAMPLES, factor, &shared),
        );
        let (n, d) = counts(rng, shape.rps, change_error, SAMPLES, &shared);
        num_change.insert(format!("change-{p}"), n);
        den_change.insert(format!("change-{p}"), d);
    }
    for p in 0..control_pods {
        lat_control.insert(
            format!("control-{p}"),
            latency_series(rng, &shape, SAMPLES, |_, _| 1.0, &shared),
        );
        let (n, d) = counts(rng, shape.rps, base_error, SAMPLES, &shared);
        num_control.insert(format!("control-{p}"), n);
        den_control.insert(format!("control-{p}"), d);
    }
    let metrics = vec![
        (
            default_metric("error-ratio"),
            MetricData::Ratio {
                numerator: Groups {
                    change: GroupData(num_change),
                    control: Some(GroupData(num_control)),
                    ..Default::default()
                },
                denominator: Groups {
                    change: GroupData(den_change),
                    control: Some(GroupData(den_control)),
                    ..Default::default()
                },
            },
        ),
        (
            default_metric("latency-p99"),
            MetricData::Plain(Groups {
                change: GroupData(lat_change),
                control: Some(GroupData(lat_control)),
                ..Default::default()
            }),
        ),
    ];
    Case { kind, bad, metrics }
}

/// A Kayenta-style judge: per metric a two-sided Mann-Whitney test at 98% confidence on the
/// sampled values (ratios for ratio metrics), classified High/Low by the Hodges-Lehmann shift;
/// a metric whose bad direction is significant fails, and any failing metric fails the canary
/// (a score below the usual 75% marginal threshold with two metrics). Empty groups are NoData,
/// which passes.
pub fn kayenta_judge(metrics: &[(Metric, MetricData)]) -> Verdict {
    for (m, data) in metrics {
        let values = match data {
            MetricData::Plain(g) => (
                g.change.values(),
                g.control.as_ref().map(|c| c.values()).unwrap_or_default(),
            ),
            MetricData::Ratio {
                numerator,
                denominator,
            } => {
                let ratio = |n: &GroupData, d: &GroupData| -> Vec<f64> {
                    n.0.iter()
                        .flat_map(|(pod, ns)| {
                            let ds = d.0.get(pod).cloned().unwrap_or_default();
                            ns.iter()
                                .zip(ds)
                                .filter(|(_, (_, dv))| *dv > 0.0)
                                .map(|((_, nv), (_, dv))| nv / dv)
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                let control = match (&numerator.control, &denominator.control) {
                    (Some(n), Some(d)) => ratio(n, d),
                    _ => Vec::new(),
                };
                (ratio(&numerator.change, &denominator.change), control)
            }
        };
        let (x, y) = values;
        if x.is_empty() || y.is_empty() {
            continue;
        }
        let r = mann_whitney::mann_whitney_u(&x, &y, Alternative::TwoSided, Method::Auto);
        let shift = mann_whitney::hodges_lehmann(&x, &y);
        if r.p_value < 0.02 && graygate::detect::is_worse(m.direction, shift, 0.0) {
            return Verdict::Fail;
        }
    }
    Verdict::Pass
}

/// Failed shares per case type, for the default judge and the baseline.
pub struct Row {
    /// Case type.
    pub kind: &'static str,
    /// Bad change type.
    pub bad: bool,
    /// Cases.
    pub cases: usize,
    /// Failed by graygate's default judge.
    pub failed_default: usize,
    /// Failed by the Kayenta-style baseline.
    pub failed_baseline: usize,
}

/// Judge every case with both judges.
pub fn evaluate(cases: &[Case]) -> Vec<Row> {
    let mut rows: Vec<Row> = KINDS
        .iter()
        .map(|(k, b)| Row {
            kind: k,
            bad: *b,
            cases: 0,
            failed_default: 0,
            failed_baseline: 0,
        })
        .collect();
    let params = judge::Params {
        slot_secs: STEP,
        ..judge::Params::default()
    };
    for c in cases {
        let Some(row) = rows.iter_mut().find(|r| r.kind == c.kind) else {
            continue;
        };
        row.cases += 1;
        if judge::judge(&c.metrics, &params).verdict == Verdict::Fail {
            row.failed_default += 1;
        }
        if kayenta_judge(&c.metrics) == Verdict::Fail {
            row.failed_baseline += 1;
        }
    }
    rows
}

/// A Markdown table of the rows with overall shares.
pub fn report(rows: &[Row]) -> String {
    let pct = |a: usize, b: usize| {
        if b == 0 {
            0.0
        } else {
            100.0 * a as f64 / b as f64
        }
    };
    let mut out = String::from(
        "| case type | label | cases | failed by graygate | failed by Kayenta-style MW |\n| --- | --- | ---: | ---: | ---: |\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {:.1}% |\n",
            r.kind,
            if r.bad { "bad" } else { "good" },
            r.cases,
            pct(r.failed_default, r.cases),
            pct(r.failed_baseline, r.cases)
        ));
    }
    for (label, bad) in [("all bad changes", true), ("all good changes", false)] {
        let cases: usize = rows.iter().filter(|r| r.bad == bad).map(|r| r.cases).sum();
        let d: usize = rows
            .iter()
            .filter(|r| r.bad == bad)
            .map(|r| r.failed_default)
            .sum();
        let k: usize = rows
            .iter()
            .filter(|r| r.bad == bad)
            .map(|r| r.failed_baseline)
            .sum();
        out.push_str(&format!(
            "| **{label}** | | {cases} | **{:.1}%** | **{:.1}%** |\n",
            pct(d, cases),
            pct(k, cases)
        ));
    }
    out
}
