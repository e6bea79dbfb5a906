//! What the dashboard draws for a metric: the series the judge compared, slot by slot, and the
//! band it held the change to, computed by the judge's own functions from the same data.
//!
//! For a value metric the band is the `peers` band: the reference's typical value at each slot
//! ± the larger of the reference pods' own spread and the minimum effect. For a ratio metric
//! (judged by the proportion test on the window's totals) it is the reference's ratio plus the
//! minimum effect, the smallest difference the test counts; a slot beyond it is marked, though
//! the test itself weighs the totals.

use super::judge::{self, GroupData, MetricData, Params};
use crate::api::Direction;
use crate::detect::{median, peers};

/// One slot of a plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Start of the slot, Unix seconds.
    pub t: f64,
    /// The change group's median.
    pub change: f64,
    /// The reference's typical value at the slot, if it has one.
    pub reference: Option<f64>,
    /// The band around the typical value (lower, upper); the bad side is the one that counts.
    pub band: Option<(f64, f64)>,
    /// The change is beyond the band in the bad direction here.
    pub beyond: bool,
    /// With a fresh baseline: the long-running pods' median at the slot.
    pub running: Option<f64>,
    /// With `baselines.history`: the workload at the same time of day one day and one week
    /// earlier (median).
    pub history: Option<f64>,
}

/// One metric's plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    /// The metric's name.
    pub metric: String,
    /// Which way is worse.
    pub direction: Direction,
    /// The reference the change was held to: `control` (or the fresh baseline), `background`,
    /// or `none`.
    pub reference: &'static str,
    /// How the band is made, in words.
    pub band_rule: String,
    /// Width of a slot in seconds.
    pub slot_secs: f64,
    /// One entry per slot of the change.
    pub points: Vec<Point>,
    /// The workload's level before the change (median of the background window), when it was
    /// queried and is not the reference itself.
    pub background: Option<f64>,
}

impl Plot {
    /// Slots beyond the band.
    pub fn beyond(&self) -> usize {
        self.points.iter().filter(|p| p.beyond).count()
    }
}

/// The plot of one metric's data as the judge with `p` saw it; `None` without change samples.
pub fn plot(m: &judge::Metric, data: &MetricData, p: &Params) -> Option<Plot> {
    let values = judge::metric_values(data);
    let background = values.background.as_ref().filter(|b| !b.is_empty());
    let (label, reference) = judge::reference(&values, p)
        .map_or(("none", GroupData::default()), |(l, g)| (l, g.clone()));
    let (change, refs, slot) = judge::peer_inputs(&values, &reference, p)?;
    let t0 = values.change.first_time()?;
    let ratio = matches!(data, MetricData::Ratio { .. });
    let dep = peers::departure(&change, &refs, &p.peers(m));
    let (band_width, band_rule) = if ratio {
        (
            m.min_delta,
            format!(
                "{label} + the minimum effect ({}); the proportion test weighs the window's totals",
                crate::detect::fmt_num(m.min_delta)
            ),
        )
    } else {
        (
            dep.band,
            format!(
                "{label} ± the larger of its pods' own spread and the minimum effect ({} × its level)",
                crate::detect::fmt_num(m.min_delta)
            ),
        )
    };
    let beside = |g: Option<&GroupData>| -> std::collections::BTreeMap<i64, f64> {
        let units = g
            .filter(|g| !g.is_empty())
            .map(|g| judge::peer_units(g, t0, slot, None))
            .unwrap_or_default();
        peers::lined_up(&change, &units)
            .into_iter()
            .filter_map(|(s, _, r)| Some((s, r?)))
            .collect()
    };
    let running_at = beside(values.running.as_ref());
    let history_at = beside(values.history.as_ref());
    let nonnegative = [Some(&values.change), Some(&reference)]
        .into_iter()
        .flatten()
        .all(|g| g.values().iter().all(|v| *v >= 0.0));
    let points = peers::lined_up(&change, &refs)
        .into_iter()
        .map(|(s, value, at)| {
            let typical = if refs.is_empty() {
                None
            } else if dep.pooled {
                Some(dep.level).filter(|l| l.is_finite())
            } else {
                at
            };
            // A quantity that is never negative (a rate, a ratio, a latency) has no band below 0.
            let band = typical.map(|t| {
                let lo = t - band_width;
                (if nonnegative { lo.max(0.0) } else { lo }, t + band_width)
            });
            let beyond =
                typical.is_some_and(|t| peers::bad_part(m.direction, value - t) > band_width);
            Point {
                t: t0 + s as f64 * slot,
                change: value,
                reference: typical,
                band,
                beyond,
                running: running_at.get(&s).copied(),
                history: history_at.get(&s).copied(),
            }
        })
        .collect();
    let background = background
        .filter(|_| label != "background")
        .map(|b| median(&b.values()))
        .filter(|v| v.is_finite());
    Some(Plot {
        metric: m.name.clone(),
        direction: m.direction,
        reference: label,
        band_rule,
        slot_secs: slot,
        points,
        background,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::judge::{Groups, Metric};
    use crate::api::MetricSpec;

    fn series(level: f64, from: f64, n: usize, step: f64) -> Vec<(f64, f64)> {
        (0..n).map(|i| (from + i as f64 * step, level)).collect()
    }

    fn latency() -> Metric {
        Metric::from_spec(&MetricSpec {
            name: "latency-p99".into(),
            query: Some("x".into()),
            ..Default::default()
        })
    }

    #[test]
    fn the_plot_marks_the_slots_beyond_the_peers_band_and_only_those() {
        // Three control pods at 0.10, 0.11 and 0.12; the change at 0.10 for 4 slots, then 0.30.
        let mut change = series(0.10, 1000.0, 4, 10.0);
        change.extend(series(0.30, 1040.0, 4, 10.0));
        let control = GroupData(
            [
                ("c1".to_string(), series(0.10, 1000.0, 8, 10.0)),
                ("c2".to_string(), series(0.11, 1000.0, 8, 10.0)),
                ("c3".to_string(), series(0.12, 1000.0, 8, 10.0)),
            ]
            .into(),
        );
        let data = MetricData::Plain(Groups {
            change: GroupData([("n1".to_string(), change)].into()),
            control: Some(control),
            background: Some(GroupData(
                [("old".to_string(), series(0.2, 0.0, 5, 10.0))].into(),
            )),
            // The same hours a day earlier, at 0.12: drawn at the same time of day.
            history: Some(GroupData(
                [("".to_string(), series(0.12, 1000.0 - 86_400.0, 8, 10.0))].into(),
            )),
            ..Default::default()
        });
        let p = Params {
            slot_secs: 10.0,
            ..Params::default()
        };
        let plot = plot(&latency(), &data, &p).unwrap();
        assert_eq!(plot.reference, "control");
        assert_eq!(plot.points.len(), 8);
        // Band: max(spread 0.015 (0.12 against 0.105, the median of the others), 0.25 × 0.11).
        let (lo, hi) = plot.points[0].band.unwrap();
        assert!((hi - 0.11 - 0.0275).abs() < 1e-9, "{hi}");
        assert!((lo - 0.11 + 0.0275).abs() < 1e-9, "{lo}");
        let marked: Vec<bool> = plot.points.iter().map(|p| p.beyond).collect();
        assert_eq!(marked, [false, false, false, false, true, true, true, true]);
        assert_eq!(plot.points[4].t, 1040.0);
        assert_eq!(plot.background, Some(0.2));
        assert!(
            plot.points.iter().all(|p| p.history == Some(0.12)),
            "{plot:?}"
        );
    }

    #[test]
    fn a_ratio_is_held_to_the_reference_plus_the_minimum_effect() {
        let rate = |v: f64| series(v, 1000.0, 6, 10.0);
        let num = Groups {
            change: GroupData([("n1".to_string(), rate(0.5))].into()),
            control: Some(GroupData([("c1".to_string(), rate(0.0))].into())),
            ..Default::default()
        };
        let den = Groups {
            change: GroupData([("n1".to_string(), rate(10.0))].into()),
            control: Some(GroupData([("c1".to_string(), rate(10.0))].into())),
            ..Default::default()
        };
        let m = Metric::from_spec(&MetricSpec {
            name: "error-ratio".into(),
            numerator: Some("a".into()),
            denominator: Some("b".into()),
            ..Default::default()
        });
        let data = MetricData::Ratio {
            numerator: num,
            denominator: den,
        };
        let plot = plot(
            &m,
            &data,
            &Params {
                slot_secs: 10.0,
                ..Params::default()
            },
        )
        .unwrap();
        assert!(plot.points.iter().all(|p| p.beyond && p.change == 0.05));
        // Ratios are never negative: the band stops at 0.
        assert_eq!(plot.points[0].band, Some((0.0, 0.002)));
        assert!(
            plot.band_rule.contains("proportion test"),
            "{}",
            plot.band_rule
        );
    }
}
