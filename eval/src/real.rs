//! Verdict quality on real labelled changes (`../shared/data`): graygate's production judge beside
//! the reference judges the datasets' READMEs describe, with every tunable default
//! cross-validated across halves of the data (tuned on one half, measured on the other).

use crate::targets::{self, Verdicts};
use graygate::analysis::backtest::{
    Case, Confusion, FeedbackFrom, Replay, parse_cases, ratio, replay,
};
use graygate::analysis::judge::{GroupData, MetricData};
use graygate::analysis::recorded::Tuning;
use graygate::api::{AnalysisSpec, Verdict};
use graygate::cli::analyze::load_spec;
use graygate::detect::mann_whitney::{self, Alternative, Method};
use graygate::detect::{fmt_num, is_worse, mean, median, peers};
use std::path::Path;

/// A reference judge's score of a case: higher is more anomalous; `None` without data
/// (inconclusive).
pub type Score = fn(&Case, &AnalysisSpec) -> Option<f64>;

/// A reference judge as its authors describe it: a score and the threshold it fails beyond.
#[derive(Clone, Copy)]
pub struct ReferenceJudge {
    /// Its name in the tables.
    pub name: &'static str,
    /// Its score.
    pub score: Score,
    /// A case fails when its score is above this.
    pub threshold: f64,
    /// A threshold in the judge's own terms.
    pub says: fn(f64) -> String,
}

impl ReferenceJudge {
    /// Its verdict on a case at `threshold`.
    pub fn verdict_at(&self, c: &Case, spec: &AnalysisSpec, threshold: f64) -> Verdict {
        match (self.score)(c, spec) {
            None => Verdict::Inconclusive,
            Some(s) if s > threshold => Verdict::Fail,
            Some(_) => Verdict::Pass,
        }
    }

    /// Its verdict on a case at its own threshold.
    pub fn verdict(&self, c: &Case, spec: &AnalysisSpec) -> Verdict {
        self.verdict_at(c, spec, self.threshold)
    }
}

/// A reference judge moved to another operating point: its threshold raised until it fails no
/// more good changes than `good_failed`, the threshold (among its own scores) where it fails the
/// most bad changes so. The confusion there and the threshold.
pub fn matched(
    judge: &ReferenceJudge,
    cases: &[Case],
    spec: &AnalysisSpec,
    good_failed: usize,
) -> (Confusion, f64) {
    let scores: Vec<Option<f64>> = cases.iter().map(|c| (judge.score)(c, spec)).collect();
    let mut candidates: Vec<f64> = scores.iter().flatten().copied().collect();
    candidates.push(judge.threshold.min(f64::MAX));
    candidates.push(f64::INFINITY);
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let at = |t: f64| {
        Confusion::of(cases.iter().zip(&scores).map(|(c, s)| {
            let v = match s {
                None => Verdict::Inconclusive,
                Some(s) if *s > t => Verdict::Fail,
                Some(_) => Verdict::Pass,
            };
            (c.bad, c.fault.as_deref(), v)
        }))
    };
    // The lowest threshold that keeps within `good_failed` fails the most bad changes (failing
    // is monotone in the threshold), so the first feasible candidate from below is the one.
    for t in candidates {
        let c = at(t);
        if c.good_failed <= good_failed {
            return (c, t);
        }
    }
    (at(f64::INFINITY), f64::INFINITY)
}

/// One dataset of the evaluation.
pub struct Dataset {
    /// Short name.
    pub name: &'static str,
    /// The spec a user would write for it.
    pub spec: AnalysisSpec,
    /// The cases.
    pub cases: Vec<Case>,
    /// Fold (0 or 1) of each case.
    pub folds: Vec<usize>,
    /// How the folds were made.
    pub folds_by: &'static str,
    /// Reference judges.
    pub references: Vec<ReferenceJudge>,
    /// The asserted target ([`targets`](crate::targets)).
    pub target: Verdicts,
    /// A goal set but not met yet, reported beside the target.
    pub goal: Option<Verdicts>,
}

/// Load the two datasets from `data` (the shared data folder) and the specs in `examples/backtest`.
pub fn datasets(data: &Path, examples: &Path) -> Result<Vec<Dataset>, String> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let spec = |n: &str| load_spec(&read(&examples.join(n))?).map_err(|e| format!("{n}: {}", e.0));
    let mut changerca = parse_cases(&read(&data.join("changerca/cases-first-batch.jsonl"))?)?;
    // Replayed with the workload each case changed (the service, after the experiment's name),
    // so that every case is judged with the releases of its service that came before it.
    for c in &mut changerca {
        let service = c.id.rsplit('/').next().unwrap_or_default();
        c.workload = Some(format!("Deployment/{service}"));
    }
    let kontrast = parse_cases(&read(&data.join("kontrast/cases-dev.jsonl"))?)?;
    let day_folds = changerca
        .iter()
        .map(|c| usize::from(!c.id.starts_with("2023-09-22")))
        .collect();
    // The Kontrast cases come in pairs (a bad and a good case of one KPI) on consecutive lines.
    let pair_folds = (0..kontrast.len()).map(|i| (i / 2) % 2).collect();
    Ok(vec![
        Dataset {
            name: "changerca",
            spec: spec("changerca.yaml")?,
            cases: changerca,
            folds: day_folds,
            folds_by: "day: 2023-09-22 vs 2023-09-23",
            references: vec![
                ReferenceJudge {
                    name: "success-rate rule (mean ≥ 99% passes)",
                    score: success_rate_rule,
                    threshold: -99.0,
                    says: |t| format!("fails below a mean of {}%", fmt_num(-t)),
                },
                ReferenceJudge {
                    name: "Kayenta-style (MW 98%, HL 25%, score < 75 fails)",
                    score: kayenta_style,
                    threshold: -0.75,
                    says: |t| format!("fails below a score of {}", fmt_num(-t * 100.0)),
                },
            ],
            target: targets::CHANGERCA,
            goal: None,
        },
        Dataset {
            name: "kontrast",
            spec: spec("kontrast.yaml")?,
            cases: kontrast,
            folds: pair_folds,
            folds_by: "even vs odd pairs",
            references: vec![
                ReferenceJudge {
                    name: "three-sigma on the median (MAD)",
                    score: three_sigma_median,
                    threshold: 3.0,
                    says: |t| format!("fails beyond {} MADs", fmt_num(t)),
                },
                ReferenceJudge {
                    name: "Kolmogorov-Smirnov p < 0.01",
                    score: kolmogorov_smirnov,
                    threshold: -0.01,
                    says: |t| format!("fails at p < {}", fmt_num(-t)),
                },
            ],
            target: targets::KONTRAST,
            goal: Some(targets::KONTRAST_GOAL),
        },
    ])
}

fn plain<'a>(c: &'a Case, metric: &str) -> Option<&'a graygate::analysis::judge::Groups> {
    match c.recorded.metrics.get(metric)? {
        MetricData::Plain(g) => Some(g),
        MetricData::Ratio { .. } => None,
    }
}

fn values(g: Option<&GroupData>) -> Vec<f64> {
    g.map(GroupData::values).unwrap_or_default()
}

/// Flagger's built-in check: the change group's mean success rate must be at least 99%. The
/// score is minus the mean, so it fails above −99.
pub fn success_rate_rule(c: &Case, _: &AnalysisSpec) -> Option<f64> {
    let v = plain(c, "SuccessRate")
        .map(|g| g.change.values())
        .unwrap_or_default();
    (!v.is_empty()).then(|| -mean(&v))
}

/// Kayenta-style: per metric a two-sided Mann-Whitney test of pooled change vs control samples at
/// 98% confidence; a metric fails when the difference is significant and its Hodges-Lehmann
/// shift goes beyond 25% of the control median in the bad direction. The score is the share of
/// metrics with data that pass; below 75 fails. No data at all is inconclusive. The score is
/// minus the share that pass, so it fails above −0.75.
pub fn kayenta_style(c: &Case, spec: &AnalysisSpec) -> Option<f64> {
    let (mut with_data, mut passed) = (0, 0);
    for m in spec.metrics.iter().flatten() {
        let Some(g) = plain(c, &m.name) else { continue };
        let x = g.change.values();
        let y = values(g.control.as_ref());
        if x.is_empty() || y.is_empty() {
            continue;
        }
        with_data += 1;
        let p = mann_whitney::mann_whitney_u(&x, &y, Alternative::TwoSided, Method::Auto).p_value;
        let shift = mann_whitney::hodges_lehmann(&x, &y);
        let base = median(&y).abs();
        let big = if base > 0.0 {
            shift.abs() / base > 0.25
        } else {
            shift != 0.0
        };
        if !(p < 0.02 && big && is_worse(m.direction, shift, 0.0)) {
            passed += 1;
        }
    }
    (with_data > 0).then(|| -(passed as f64) / (with_data as f64))
}

fn kpi(c: &Case) -> (Vec<f64>, Vec<f64>) {
    let g = plain(c, "kpi");
    (
        g.map(|g| g.change.values()).unwrap_or_default(),
        values(g.and_then(|g| g.background.as_ref())),
    )
}

/// The change median outside the reference median ± 3 × 1.4826 MAD fails. The score is the
/// distance in those units (fails above 3).
pub fn three_sigma_median(c: &Case, _: &AnalysisSpec) -> Option<f64> {
    let (x, r) = kpi(c);
    if x.is_empty() || r.is_empty() {
        return None;
    }
    let (centre, scale) = graygate::detect::three_sigma::centre_scale(&r, true);
    let d = (median(&x) - centre).abs();
    Some(if scale > 0.0 {
        d / scale
    } else if d > 0.0 {
        f64::INFINITY
    } else {
        0.0
    })
}

/// Two-sample Kolmogorov-Smirnov statistic and its asymptotic two-sided p-value.
pub fn ks_two_sample(x: &[f64], y: &[f64]) -> (f64, f64) {
    let mut a = x.to_vec();
    let mut b = y.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0_f64);
    while i < a.len() && j < b.len() {
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let lambda = d * (n * m / (n + m)).sqrt();
    // Kolmogorov's limiting distribution: Q(λ) = 2 Σ (−1)^(k−1) exp(−2 k² λ²).
    let mut p = 0.0;
    for k in 1..=100 {
        let k = k as f64;
        let term = 2.0 * (-2.0 * k * k * lambda * lambda).exp();
        p += if k as u32 % 2 == 1 { term } else { -term };
        if term < 1e-12 {
            break;
        }
    }
    (d, if lambda < 0.2 { 1.0 } else { p.clamp(0.0, 1.0) })
}

/// Any distribution difference at p < 0.01 fails. The score is minus the p-value (fails above
/// −0.01).
pub fn kolmogorov_smirnov(c: &Case, _: &AnalysisSpec) -> Option<f64> {
    let (x, r) = kpi(c);
    if x.is_empty() || r.is_empty() {
        return None;
    }
    Some(-ks_two_sample(&x, &r).1)
}

/// The grid cross-validation chooses from: the minimum effect of latency/other metrics, and the
/// `peers` far factor, far slots and run length.
pub fn grid() -> Vec<Tuning> {
    let mut out = Vec::new();
    for delta in [0.1, 0.25, 0.5, 1.0] {
        for far in [1.5, 2.0, 3.0] {
            for far_samples in [2, 3] {
                for long in [3, 5, 10] {
                    out.push(Tuning {
                        value_min_delta: Some(delta),
                        peers: Some((far, far_samples, long)),
                    });
                }
            }
        }
    }
    out
}

/// The defaults as a tuning.
pub fn defaults() -> Tuning {
    Tuning {
        value_min_delta: Some(peers::DEFAULT_MIN_DELTA),
        peers: Some((
            peers::DEFAULT_FAR,
            peers::DEFAULT_FAR_SAMPLES,
            peers::DEFAULT_LONG,
        )),
    }
}

/// Verdicts of every case of every dataset under one tuning.
fn verdicts(sets: &[Dataset], t: &Tuning, mode: Replay) -> Result<Vec<Vec<Verdict>>, String> {
    sets.iter()
        .map(|d| {
            Ok(replay(&d.spec, &d.cases, t, mode)?
                .into_iter()
                .map(|r| r.verdict)
                .collect())
        })
        .collect()
}

fn confusion(d: &Dataset, verdicts: &[Verdict], fold: Option<usize>) -> Confusion {
    Confusion::of(
        d.cases
            .iter()
            .zip(verdicts)
            .zip(&d.folds)
            .filter(|(_, f)| fold.is_none_or(|k| **f == k))
            .map(|((c, v), _)| (c.bad, c.fault.as_deref(), *v)),
    )
}

/// How one tuning ranks on a fold: feasible first (every dataset's good-failed share within its
/// target), then the mean share of bad failed, then the fewest good failed.
fn rank(sets: &[Dataset], v: &[Vec<Verdict>], fold: Option<usize>) -> (bool, f64, f64) {
    let cs: Vec<Confusion> = sets
        .iter()
        .zip(v)
        .map(|(d, v)| confusion(d, v, fold))
        .collect();
    let feasible = sets
        .iter()
        .zip(&cs)
        .all(|(d, c)| c.good_rate() <= d.target.good_failed);
    let bad = cs.iter().map(Confusion::bad_rate).sum::<f64>() / cs.len() as f64;
    let good = cs.iter().map(Confusion::good_rate).sum::<f64>();
    (feasible, bad, good)
}

/// The outcome of the evaluation.
pub struct Report {
    /// Per dataset: graygate with the defaults on every case.
    pub defaults: Vec<Confusion>,
    /// Per dataset: cross-validated (each half judged with the tuning chosen on the other),
    /// cases replayed with their workload's history as the operator keeps it without any
    /// feedback: a case joins when graygate passed it. The figure a user meets.
    pub cross_validated: Vec<Confusion>,
    /// The same without history (each case judged alone).
    pub without_history: Vec<Confusion>,
    /// The same replay with a person's feedback on every case graygate stopped.
    pub with_feedback: Vec<Confusion>,
    /// Per fold: the tuning chosen on it.
    pub chosen: Vec<Tuning>,
    /// The tuning the selection rule picks on all the data: what should ship.
    pub on_all: Tuning,
    /// Per dataset, per reference judge: its confusion at its own threshold.
    pub references: Vec<Vec<(&'static str, Confusion)>>,
    /// Per dataset, per reference judge: its confusion and threshold when moved to fail no more
    /// good changes than graygate cross-validated (the same operating point).
    pub matched: Vec<Vec<(&'static str, Confusion, String)>>,
    /// The text for docs/performance.md.
    pub text: String,
}

fn describe(t: &Tuning) -> String {
    let (far, k, long) = t.peers.unwrap_or_default();
    format!(
        "minDelta {}, far {far}× in {k} slot(s), {long} slots in a row",
        t.value_min_delta.unwrap_or(f64::NAN)
    )
}

/// Cross-validation: each half judged with the tuning chosen on the other; the confusion per
/// dataset and the tuning chosen on each half.
/// The grid point the selection rule picks on `fold` (all the data with `None`).
fn select(sets: &[Dataset], all: &[Vec<Vec<Verdict>>], fold: Option<usize>) -> Option<usize> {
    (0..all.len()).max_by(|a, b| {
        let (fa, ba, ga) = rank(sets, &all[*a], fold);
        let (fb, bb, gb) = rank(sets, &all[*b], fold);
        fa.cmp(&fb)
            .then(ba.total_cmp(&bb))
            .then(gb.total_cmp(&ga))
            // Ties keep the earlier (smaller, more conservative) grid point.
            .then(b.cmp(a))
    })
}

/// Cross-validation: each half judged with the tuning chosen on the other; the confusion per
/// dataset, the tuning chosen on each half, and the tuning the same rule picks on all the data
/// (what the product should ship).
fn cross_validate(
    sets: &[Dataset],
    mode: Replay,
) -> Result<(Vec<Confusion>, Vec<Tuning>, Tuning), String> {
    let grid = grid();
    let all: Vec<Vec<Vec<Verdict>>> = grid
        .iter()
        .map(|t| verdicts(sets, t, mode))
        .collect::<Result<_, _>>()?;
    let mut cross_validated: Vec<Confusion> = sets.iter().map(|_| Confusion::default()).collect();
    let mut chosen = Vec::new();
    for tune_on in [0, 1] {
        let best = select(sets, &all, Some(tune_on)).ok_or("empty grid")?;
        chosen.push(grid[best]);
        for (i, d) in sets.iter().enumerate() {
            cross_validated[i].add(&confusion(d, &all[best][i], Some(1 - tune_on)));
        }
    }
    let on_all = grid[select(sets, &all, None).ok_or("empty grid")?];
    Ok((cross_validated, chosen, on_all))
}

/// Run the whole evaluation.
pub fn evaluate(sets: &[Dataset]) -> Result<Report, String> {
    let live = Replay::Feedback(FeedbackFrom::None);
    let (cross_validated, chosen, on_all) = cross_validate(sets, live)?;
    let (without_history, _, _) = cross_validate(sets, Replay::Alone)?;
    let (with_feedback, _, _) = cross_validate(sets, Replay::Feedback(FeedbackFrom::EveryStopped))?;
    let default_verdicts = verdicts(sets, &defaults(), live)?;
    let selected_verdicts = verdicts(sets, &on_all, live)?;
    let defaults: Vec<Confusion> = sets
        .iter()
        .zip(&default_verdicts)
        .map(|(d, v)| confusion(d, v, None))
        .collect();
    let references: Vec<Vec<(&'static str, Confusion)>> = sets
        .iter()
        .map(|d| {
            d.references
                .iter()
                .map(|r| {
                    (
                        r.name,
                        Confusion::of(
                            d.cases
                                .iter()
                                .map(|c| (c.bad, c.fault.as_deref(), r.verdict(c, &d.spec))),
                        ),
                    )
                })
                .collect()
        })
        .collect();
    let matched: Vec<Vec<(&'static str, Confusion, String)>> = sets
        .iter()
        .zip(&cross_validated)
        .map(|(d, cv)| {
            d.references
                .iter()
                .map(|r| {
                    let (c, t) = self::matched(r, &d.cases, &d.spec, cv.good_failed);
                    (r.name, c, (r.says)(t))
                })
                .collect()
        })
        .collect();
    let mut text = String::new();
    for (i, d) in sets.iter().enumerate() {
        text.push_str(&format!(
            "**{}** ({} cases: {} bad, {} good; folds by {}; target ≥ {:.0}% of bad failed, ≤ {:.0}% of good failed{})\n\n",
            d.name,
            d.cases.len(),
            defaults[i].bad,
            defaults[i].good,
            d.folds_by,
            d.target.bad_failed * 100.0,
            d.target.good_failed * 100.0,
            d.goal
                .map(|g| format!(
                    "; goal ≥ {:.0}% and ≤ {:.0}%, not asserted until met",
                    g.bad_failed * 100.0,
                    g.good_failed * 100.0
                ))
                .unwrap_or_default()
        ));
        text.push_str("| judge | bad failed | good failed | inconclusive (bad / good) |\n| --- | ---: | ---: | ---: |\n");
        let row = |name: &str, c: &Confusion| {
            format!(
                "| {name} | {} | {} | {} / {} |\n",
                ratio(c.bad_failed, c.bad),
                ratio(c.good_failed, c.good),
                c.bad_inconclusive,
                c.good_inconclusive
            )
        };
        let replayed = sets[i].cases.iter().any(|c| c.workload.is_some());
        text.push_str(&row(
            if replayed {
                "**graygate, cross-validated**, replayed without feedback (a case joins its workload's history when graygate passed it, at its window's end)"
            } else {
                "**graygate, cross-validated** (each half judged with the settings chosen on the other)"
            },
            &cross_validated[i],
        ));
        if replayed {
            text.push_str(&row(
                "graygate, cross-validated, replayed with feedback on every stopped case (`false-alarm` on good ones joins them)",
                &with_feedback[i],
            ));
            text.push_str(&row(
                "graygate, cross-validated, without history (each case judged alone)",
                &without_history[i],
            ));
        }
        text.push_str(&row(
            "graygate, shipped defaults (in-sample: chosen with these cases in view)",
            &defaults[i],
        ));
        text.push_str(&row(
            "graygate, the selection rule's pick on all the data (in-sample)",
            &confusion(d, &selected_verdicts[i], None),
        ));
        for (name, c) in &references[i] {
            text.push_str(&row(name, c));
        }
        for (name, c, t) in &matched[i] {
            text.push_str(&row(
                &format!(
                    "{name}, moved to graygate's cross-validated good-failed count: {t} (in-sample)"
                ),
                c,
            ));
        }
        text.push('\n');
    }
    text.push_str(&format!(
        "Settings chosen on half 0: {}; on half 1: {}; by the same rule on all the data: {}. Shipped defaults: {}.\n",
        describe(&chosen[0]),
        describe(&chosen[1]),
        describe(&on_all),
        describe(&self::defaults())
    ));
    Ok(Report {
        defaults,
        cross_validated,
        without_history,
        with_feedback,
        chosen,
        on_all,
        references,
        matched,
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_moved_to_fewer_good_failures_fails_the_most_bad_it_can() {
        // Scores are the line numbers: bad on lines 2, 4, 5; good on 1, 3, 6.
        let labels = ["good", "bad", "good", "bad", "bad", "good"];
        let text: String = labels
            .iter()
            .enumerate()
            .map(|(i, l)| format!("{{\"id\": \"c{i}\", \"label\": \"{l}\", \"metrics\": {{}}}}\n"))
            .collect();
        let cases = parse_cases(&text).unwrap();
        let judge = ReferenceJudge {
            name: "line",
            score: |c, _| Some(c.line as f64),
            threshold: 0.0,
            says: |t| fmt_num(t),
        };
        let spec = AnalysisSpec::default();
        // At its own threshold it fails everything.
        let own = Confusion::of(cases.iter().map(|c| (c.bad, None, judge.verdict(c, &spec))));
        assert_eq!((own.bad_failed, own.good_failed), (3, 3));
        // No good failure allowed: above 6 only, nothing fails.
        let (c, t) = matched(&judge, &cases, &spec, 0);
        assert_eq!((c.bad_failed, c.good_failed, t), (0, 0, 6.0));
        // One allowed: above 3 fails lines 4, 5 (bad) and 6 (good).
        let (c, t) = matched(&judge, &cases, &spec, 1);
        assert_eq!((c.bad_failed, c.good_failed, t), (2, 1, 3.0));
        // Two: above 1 fails all bad and goods 3, 6.
        let (c, t) = matched(&judge, &cases, &spec, 2);
        assert_eq!((c.bad_failed, c.good_failed, t), (3, 2, 1.0));
    }

    #[test]
    fn ks_matches_scipy_limiting_distribution() {
        // scipy: ks_2samp(x, y).statistic = 0.5; kstwobign.sf(0.5 * sqrt(10)) = 0.013475889875863678
        let x: Vec<f64> = (0..20).map(f64::from).collect();
        let y: Vec<f64> = (10..30).map(f64::from).collect();
        let (d, p) = ks_two_sample(&x, &y);
        assert!((d - 0.5).abs() < 1e-12);
        assert!((p / 0.013475889875863678 - 1.0).abs() < 1e-9, "{p}");
    }
}
