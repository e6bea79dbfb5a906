//! The history group: how the workload's own earlier released changes looked at the same age.
//!
//! Young canary pods of a healthy release are often slower, hungrier or busier than the long-
//! running control pods (JIT warm-up, cold caches, new connection pools), and by a margin that is
//! a property of the workload, not of the change. So every released change leaves a compact
//! [`Record`]: per metric and per slot since its canary's first sample, the canary's value ÷ the
//! control pods' typical value. A later change of the same workload is expected to depart as its
//! released predecessors did at the same age: its peer band is widened by the largest departure
//! they showed there ([`Envelope`](crate::detect::peers::Envelope)). Until [`MIN_RECORDS`] records
//! hold a slot's age the judgement is unchanged.

use crate::api::{ChangeRecord, Direction, MetricRecord};
use crate::detect::peers::{Envelope, bad_part};
use crate::detect::{fmt_num, median};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Records needed at a slot before history widens the band there.
pub const MIN_RECORDS: usize = 3;
/// Released changes kept per workload by default.
pub const DEFAULT_KEEP: usize = 10;

/// One released change: per metric, per slot since the canary's first sample, the canary's
/// value ÷ the control's typical value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The change it came from.
    pub change: String,
    /// Slot width in seconds (records of another width are not compared).
    pub slot_secs: f64,
    /// Metric → slot age → ratio.
    pub ratios: BTreeMap<String, BTreeMap<i64, f64>>,
}

/// The released changes a judgement may learn from.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The workload, as people name it (`Deployment/ad`).
    pub workload: String,
    /// Its released changes, oldest first.
    pub records: Vec<Record>,
    /// The released changes of the other workloads beside it (the same namespace), each
    /// workload's records apart: how much healthy changes vary from one to the next there
    /// moderates this workload's own few records ([`Prior`]).
    pub neighbours: Vec<Vec<Record>>,
}

/// How much a healthy change's (log) median ratio varies from one change to the next, learned
/// from every workload that has records: the prior of an empirical-Bayes moderated variance
/// (Smyth 2004, the moderated t of limma). A workload with three records has a variance with two
/// degrees of freedom — its prediction interval is then so wide it catches almost nothing; the
/// prior lends it `d0` degrees of freedom at the variance `s0sq` its neighbours show, as far as
/// the neighbours agree with one another (when they disagree, `d0` is small and little is lent).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prior {
    /// Prior degrees of freedom (infinite when the workloads' variances differ no more than
    /// sampling alone would make them).
    pub d0: f64,
    /// Prior variance of the log median ratio.
    pub s0sq: f64,
    /// Workloads it was estimated from.
    pub workloads: usize,
    /// Their degrees of freedom together: the most a moderated variance can carry (limma's cap;
    /// a prior learned from a few records is itself uncertain).
    pub df_total: f64,
}

impl Prior {
    /// Estimate the prior from each workload's sample variance and its degrees of freedom, by
    /// the method of moments on the log variances (limma's `fitFDist`). None with fewer than
    /// [`MIN_RECORDS`] workloads holding a positive variance.
    pub fn estimate(variances: &[(f64, f64)]) -> Option<Prior> {
        use statrs::function::gamma::digamma;
        let v: Vec<(f64, f64)> = variances
            .iter()
            .copied()
            .filter(|(s2, d)| *s2 > 1e-12 && s2.is_finite() && *d >= 1.0)
            .collect();
        if v.len() < MIN_RECORDS {
            return None;
        }
        let g = v.len() as f64;
        let df_total = v.iter().map(|(_, d)| d).sum::<f64>();
        let e: Vec<f64> = v
            .iter()
            .map(|(s2, d)| s2.ln() - digamma(d / 2.0) + (d / 2.0).ln())
            .collect();
        let mean = e.iter().sum::<f64>() / g;
        let spread = e.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (g - 1.0)
            - v.iter().map(|(_, d)| trigamma(d / 2.0)).sum::<f64>() / g;
        if spread > 0.0 {
            let d0 = 2.0 * trigamma_inverse(spread);
            let s0sq = (mean + digamma(d0 / 2.0) - (d0 / 2.0).ln()).exp();
            Some(Prior {
                d0,
                s0sq,
                workloads: v.len(),
                df_total,
            })
        } else {
            Some(Prior {
                d0: f64::INFINITY,
                s0sq: mean.exp(),
                workloads: v.len(),
                df_total,
            })
        }
    }

    /// The moderated variance of a workload's own `s2` on `d` degrees of freedom, and its
    /// degrees of freedom (d0 + d, at most all the workloads' together).
    pub fn moderate(&self, s2: f64, d: f64) -> (f64, f64) {
        let df = (self.d0 + d).min(self.df_total.max(d));
        if self.d0.is_infinite() {
            (self.s0sq, df)
        } else {
            ((self.d0 * self.s0sq + d * s2) / (self.d0 + d), df)
        }
    }
}

/// The trigamma function ψ′(x) for x > 0 (recurrence up to 6, then the asymptotic series).
pub fn trigamma(x: f64) -> f64 {
    let mut x = x;
    let mut acc = 0.0;
    while x < 6.0 {
        acc += 1.0 / (x * x);
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    acc + 1.0 / x
        + x2 / 2.0
        + x2 / x * (1.0 / 6.0 - x2 * (1.0 / 30.0 - x2 * (1.0 / 42.0 - x2 / 30.0)))
}

/// The tetragamma function ψ″(x) for x > 0.
fn tetragamma(x: f64) -> f64 {
    let mut x = x;
    let mut acc = 0.0;
    while x < 6.0 {
        acc -= 2.0 / (x * x * x);
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    acc - x2 - x2 / x - x2 * x2 / 2.0 + x2 * x2 * x2 * (1.0 / 6.0 - x2 * (1.0 / 6.0 - x2 * 0.3))
}

/// The y > 0 with ψ′(y) = x (Newton's method on 1/y, as limma's `trigammaInverse`).
pub fn trigamma_inverse(x: f64) -> f64 {
    if x > 1e7 {
        return 1.0 / x.sqrt();
    }
    if x < 1e-6 {
        return 1.0 / x;
    }
    let mut y = 0.5 + 1.0 / x;
    for _ in 0..50 {
        let tri = trigamma(y);
        let dif = tri * (1.0 - tri / x) / tetragamma(y);
        y += dif;
        if -dif / y < 1e-8 {
            break;
        }
    }
    y
}

/// What history says about one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricHistory {
    /// The band widening per slot age.
    pub envelope: Envelope,
    /// Records that hold the metric.
    pub records: usize,
    /// The lowest and highest median ratio of those records.
    pub range: (f64, f64),
    /// Each record's median ratio.
    pub medians: Vec<f64>,
    /// Minutes the records cover (the widest).
    pub minutes: f64,
}

impl History {
    /// Keep a released change's record, at most `keep` (oldest dropped first).
    pub fn push(&mut self, record: Record, keep: usize) {
        self.records.push(record);
        let excess = self.records.len().saturating_sub(keep.max(1));
        self.records.drain(..excess);
    }

    /// The prior for `name`'s median ratio at `slot_secs`, from this workload's records and
    /// its neighbours' (each workload with two or more records holding the metric counts once).
    pub fn prior(&self, name: &str, slot_secs: f64) -> Option<Prior> {
        let variances: Vec<(f64, f64)> = std::iter::once(&self.records)
            .chain(self.neighbours.iter())
            .filter_map(|records| {
                let medians = series(records, name, slot_secs).map(series_median);
                let (_, sd, n) = log_mean_sd(medians)?;
                Some((sd * sd, n as f64 - 1.0))
            })
            .collect();
        Prior::estimate(&variances)
    }

    /// The envelope of one metric for slots of `slot_secs`, when at least [`MIN_RECORDS`]
    /// records hold it.
    pub fn metric(
        &self,
        name: &str,
        direction: Direction,
        slot_secs: f64,
    ) -> Option<MetricHistory> {
        let series: Vec<&BTreeMap<i64, f64>> = series(&self.records, name, slot_secs).collect();
        if series.len() < MIN_RECORDS {
            return None;
        }
        let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for s in &series {
            for (age, r) in *s {
                if r.is_finite() {
                    at.entry(*age)
                        .or_default()
                        .push(bad_part(direction, *r - 1.0));
                }
            }
        }
        let envelope: Envelope = at
            .into_iter()
            .filter(|(_, v)| v.len() >= MIN_RECORDS)
            .map(|(age, v)| (age, v.into_iter().fold(0.0, f64::max)))
            .collect();
        if envelope.is_empty() {
            return None;
        }
        let medians: Vec<f64> = series.iter().copied().map(series_median).collect();
        let lo = medians.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = medians.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let slots = series.iter().map(|s| s.len()).max().unwrap_or(0);
        Some(MetricHistory {
            envelope,
            records: series.len(),
            range: (lo, hi),
            medians,
            minutes: slots as f64 * slot_secs / 60.0,
        })
    }
}

impl MetricHistory {
    /// Where a healthy change's median ratio is expected, from the records' median ratios: the
    /// two-sided prediction interval for one more observation of a log-normal sample (Student t
    /// with n − 1 degrees of freedom), each side at level `alpha`, widened by `se`, the standard
    /// error of the new change's own (log) median, which the records' spread does not show when
    /// they happen to agree closely (a quantised p99, say). None with fewer than [`MIN_RECORDS`]
    /// positive medians.
    pub fn prediction(&self, alpha: f64, se: f64, prior: Option<&Prior>) -> Option<(f64, f64)> {
        use statrs::distribution::{ContinuousCDF, Normal, StudentsT};
        let (mean, sd, n) = log_mean_sd(self.medians.iter().copied())?;
        if n < MIN_RECORDS || !(alpha > 0.0 && alpha < 0.5) {
            return None;
        }
        let nf = n as f64;
        let (var, df) = match prior {
            Some(p) => p.moderate(sd * sd, nf - 1.0),
            None => (sd * sd, nf - 1.0),
        };
        let t = if df.is_finite() {
            StudentsT::new(0.0, 1.0, df).ok()?.inverse_cdf(1.0 - alpha)
        } else {
            Normal::standard().inverse_cdf(1.0 - alpha)
        };
        let half = t * (var * (1.0 + 1.0 / nf) + se * se).sqrt();
        Some(((mean - half).exp(), (mean + half).exp()))
    }

    /// One sentence a person checks at a glance.
    pub fn sentence(
        &self,
        workload: &str,
        metric: &str,
        this: Option<f64>,
        within: bool,
    ) -> String {
        let first = if self.minutes < 2.0 {
            format!("{} s", fmt_num((self.minutes * 60.0).round()))
        } else {
            format!("{} min", fmt_num(self.minutes.round()))
        };
        // The verdict-bearing words first: an explanation is kept bounded, and its end may go.
        let lead = match this {
            Some(r) => format!(
                "history: this one {r:.2}× — {} what the last {} released changes of {workload} showed",
                if within { "within" } else { "beyond" },
                self.records
            ),
            None => format!(
                "history: the last {} released changes of {workload}",
                self.records
            ),
        };
        format!(
            "{lead}: their canary's {metric} ran {:.2}–{:.2}× the control in its first {first}",
            self.range.0, self.range.1,
        )
    }
}

/// Slots a record keeps per metric in status (two hours of 30 s slots).
pub const MAX_SLOTS: usize = 240;
/// Metrics a record keeps in status.
pub const MAX_METRICS: usize = 16;

impl Record {
    /// The record as kept in a ChangeRequest's status: bounded, ratios to 4 decimals.
    pub fn to_status(&self) -> ChangeRecord {
        ChangeRecord {
            slot_seconds: self.slot_secs,
            metrics: self
                .ratios
                .iter()
                .take(MAX_METRICS)
                .map(|(name, slots)| {
                    let mut ratios = vec![None; MAX_SLOTS];
                    for (age, r) in slots {
                        if let Ok(i) = usize::try_from(*age)
                            && i < MAX_SLOTS
                            && r.is_finite()
                        {
                            ratios[i] = Some((r * 1e4).round() / 1e4);
                        }
                    }
                    let len = ratios
                        .iter()
                        .rposition(Option::is_some)
                        .map_or(0, |i| i + 1);
                    ratios.truncate(len);
                    MetricRecord {
                        name: name.clone(),
                        ratios,
                    }
                })
                .filter(|m| !m.ratios.is_empty())
                .collect(),
        }
    }

    /// A record read back from a ChangeRequest's status.
    pub fn from_status(change: &str, r: &ChangeRecord) -> Record {
        Record {
            change: change.to_string(),
            slot_secs: r.slot_seconds,
            ratios: r
                .metrics
                .iter()
                .map(|m| {
                    let slots = m
                        .ratios
                        .iter()
                        .enumerate()
                        .filter_map(|(i, r)| Some((i as i64, (*r)?)))
                        .filter(|(_, r)| r.is_finite())
                        .collect();
                    (m.name.clone(), slots)
                })
                .collect(),
        }
    }

    /// Whether it holds anything.
    pub fn is_empty(&self) -> bool {
        self.ratios.values().all(BTreeMap::is_empty)
    }
}

/// The non-empty series of `name` in `records` kept at slots of `slot_secs` (records of
/// another width are not compared).
fn series<'a>(
    records: &'a [Record],
    name: &'a str,
    slot_secs: f64,
) -> impl Iterator<Item = &'a BTreeMap<i64, f64>> {
    records
        .iter()
        .filter(move |r| (r.slot_secs - slot_secs).abs() < 1e-9)
        .filter_map(move |r| r.ratios.get(name))
        .filter(|s| !s.is_empty())
}

/// A record's typical ratio: the median over its slots.
fn series_median(s: &BTreeMap<i64, f64>) -> f64 {
    median(&s.values().copied().collect::<Vec<_>>())
}

/// Mean, sample standard deviation and count of the logarithms of the finite positive `ratios`;
/// None with fewer than two.
pub fn log_mean_sd(ratios: impl IntoIterator<Item = f64>) -> Option<(f64, f64, usize)> {
    let logs: Vec<f64> = ratios
        .into_iter()
        .filter(|r| r.is_finite() && *r > 0.0)
        .map(f64::ln)
        .collect();
    let n = logs.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mean = logs.iter().sum::<f64>() / nf;
    let sd = (logs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (nf - 1.0)).sqrt();
    Some((mean, sd, n))
}

/// The median of a change's slot ratios (for the sentence).
pub fn median_ratio(ratios: &BTreeMap<i64, f64>) -> Option<f64> {
    let v: Vec<f64> = ratios.values().copied().filter(|r| r.is_finite()).collect();
    (!v.is_empty()).then(|| median(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, what: &str) {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs().max(1e-12),
            "{what}: {a} vs scipy {b}"
        );
    }

    /// tests/fixtures/moderated.json, from scripts/reference/moderated.py (scipy).
    #[test]
    fn the_moderated_interval_matches_scipy() {
        let f: serde_json::Value =
            serde_json::from_str(include_str!("../../tests/fixtures/moderated.json")).unwrap();
        let num = |v: &serde_json::Value| match v.as_str() {
            Some("inf") => f64::INFINITY,
            _ => v.as_f64().unwrap(),
        };
        for c in f["trigamma"].as_array().unwrap() {
            close(trigamma(num(&c["x"])), num(&c["trigamma"]), "trigamma");
        }
        for c in f["trigamma_inverse"].as_array().unwrap() {
            close(
                trigamma_inverse(num(&c["x"])),
                num(&c["inverse"]),
                "inverse",
            );
        }
        let mut finite = 0;
        for c in f["priors"].as_array().unwrap() {
            let variances: Vec<(f64, f64)> = c["variances"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (num(&v[0]), num(&v[1])))
                .collect();
            let p = Prior::estimate(&variances).unwrap();
            let d0 = num(&c["d0"]);
            if d0.is_finite() {
                finite += 1;
                close(p.d0, d0, "d0");
            } else {
                assert!(p.d0.is_infinite(), "d0 {} vs scipy inf", p.d0);
            }
            close(p.s0sq, num(&c["s0sq"]), "s0²");
            close(p.df_total, num(&c["df_total"]), "total degrees of freedom");
            let medians: Vec<f64> = c["medians"].as_array().unwrap().iter().map(num).collect();
            let h = MetricHistory {
                envelope: Envelope::new(),
                records: medians.len(),
                range: (0.0, 0.0),
                medians,
                minutes: 1.0,
            };
            let (alpha, se) = (num(&c["alpha"]), num(&c["se"]));
            let (lo, hi) = h.prediction(alpha, se, Some(&p)).unwrap();
            close(lo, num(&c["moderated"][0]), "moderated lo");
            close(hi, num(&c["moderated"][1]), "moderated hi");
            let (lo, hi) = h.prediction(alpha, se, None).unwrap();
            close(lo, num(&c["plain"][0]), "plain lo");
            close(hi, num(&c["plain"][1]), "plain hi");
        }
        assert!(finite >= 2, "the fixture must hold finite priors too");
        // Fewer than three workloads with a variance: no prior.
        assert!(Prior::estimate(&[(0.01, 2.0), (0.02, 3.0), (0.0, 4.0)]).is_none());
    }

    fn record(change: &str, ratios: &[f64]) -> Record {
        Record {
            change: change.into(),
            slot_secs: 60.0,
            ratios: [(
                "Latency".to_string(),
                ratios
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (i as i64, *r))
                    .collect(),
            )]
            .into(),
        }
    }

    #[test]
    fn the_prediction_interval_matches_scipy() {
        // Reference: scipy.stats.t.ppf(1 - a, n - 1) · sd · sqrt(1 + 1/n) around the mean of the
        // log medians, exponentiated (CPU ratios of six healthy releases of one service).
        let h = MetricHistory {
            envelope: Envelope::new(),
            records: 6,
            range: (0.95, 1.023),
            medians: vec![0.995, 0.950, 0.968, 1.023, 0.978, 0.969],
            minutes: 10.0,
        };
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let (lo, hi) = h.prediction(0.0025, 0.0, None).unwrap();
        assert!(
            close(lo, 0.8582019769289672) && close(hi, 1.119602670469598),
            "{lo} {hi}"
        );
        let (lo, hi) = h.prediction(0.01, 0.0, None).unwrap();
        assert!(
            close(lo, 0.892535121492709) && close(hi, 1.0765349195054719),
            "{lo} {hi}"
        );
        // The new change's own uncertainty widens it: scipy, with se = 0.05 in quadrature.
        let (lo, hi) = h.prediction(0.01, 0.05, None).unwrap();
        assert!(
            close(lo, 0.8085128600556989) && close(hi, 1.1884105654247317),
            "{lo} {hi}"
        );
        let few = MetricHistory {
            medians: vec![1.0, 1.1],
            ..h
        };
        assert!(few.prediction(0.01, 0.0, None).is_none());
    }

    #[test]
    fn three_records_make_an_envelope_of_the_largest_departure_per_age() {
        let mut h = History {
            workload: "Deployment/ad".into(),
            records: vec![record("a", &[1.3, 2.5]), record("b", &[1.8, 1.1])],
            ..History::default()
        };
        assert!(h.metric("Latency", Direction::Increase, 60.0).is_none());
        h.push(record("c", &[2.0, 0.9, 1.4]), DEFAULT_KEEP);
        let m = h.metric("Latency", Direction::Increase, 60.0).unwrap();
        // Age 0: 0.3, 0.8, 1.0 → 1.0; age 1: 1.5, 0.1, -0.1 → 1.5; age 2 has one record only.
        assert_eq!(m.envelope.len(), 2);
        assert!((m.envelope[&0] - 1.0).abs() < 1e-12);
        assert!((m.envelope[&1] - 1.5).abs() < 1e-12);
        assert_eq!(m.records, 3);
        assert_eq!(
            m.sentence("Deployment/ad", "Latency", Some(1.9), true),
            "history: this one 1.90× — within what the last 3 released changes of Deployment/ad showed: their canary's Latency ran 1.40–1.90× the control in its first 3 min"
        );
        // Another slot width is another measurement.
        assert!(h.metric("Latency", Direction::Increase, 30.0).is_none());
    }

    #[test]
    fn a_record_survives_status_with_gaps_and_bounds() {
        let mut r = record("a", &[1.23456, 2.0]);
        r.ratios
            .get_mut("Latency")
            .unwrap()
            .extend([(5, 1.5), (-1, 9.0), (MAX_SLOTS as i64, 9.0)]);
        let st = r.to_status();
        assert_eq!(
            st.metrics[0].ratios,
            [Some(1.2346), Some(2.0), None, None, None, Some(1.5)]
        );
        let json = serde_json::to_string(&st).unwrap();
        assert_eq!(
            json,
            r#"{"slotSeconds":60.0,"metrics":[{"name":"Latency","ratios":[1.2346,2.0,null,null,null,1.5]}]}"#
        );
        let back = Record::from_status("a", &serde_json::from_str(&json).unwrap());
        assert_eq!(
            back.ratios["Latency"],
            BTreeMap::from([(0, 1.2346), (1, 2.0), (5, 1.5)])
        );
        assert!(!back.is_empty());
        assert!(Record::default().is_empty());
    }

    #[test]
    fn only_the_last_kept_records_count() {
        let mut h = History::default();
        for i in 0..5 {
            h.push(record(&i.to_string(), &[1.0]), 3);
        }
        let kept: Vec<&str> = h.records.iter().map(|r| r.change.as_str()).collect();
        assert_eq!(kept, ["2", "3", "4"]);
    }
}
