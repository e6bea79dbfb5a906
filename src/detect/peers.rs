//! `peers`: does the change group depart from its references by more than the references depart
//! from each other?
//!
//! The unit of evidence is a reference *unit* (a control pod, or one earlier day of the same
//! hours) and a *slot* (one non-overlapping time window). Samples inside one pod are not
//! independent and pods are not interchangeable, so no p-value over pooled points is computed.
//! Instead:
//!
//! 1. At each slot the references' typical value is their median.
//! 2. The references' own spread is the largest leave-one-out departure: how far any one
//!    reference unit ever strayed from the median of the others at the same slot. A change that
//!    stays inside that band looks like just another unchanged pod (or an ordinary day).
//! 3. The band is widened to the minimum effect (`min_delta` × the references' level), so a
//!    difference too small to matter never counts, even when the references agree perfectly.
//! 4. The change (the median of its pods at each slot) departs at a slot when it is beyond the
//!    band in the bad direction; `excess` = departure ÷ band.
//! 5. It fails when the departure is *long* (`long` slots in a row beyond the band) or *far*
//!    (`far_samples` slots beyond `far` × the band). One extreme slot alone never fails: one slow
//!    request is not a regression.
//!
//! When no reference slot lines up with the change's slots (a background window from before the
//! change), the references are pooled: the typical value is their median and the band is the
//! largest departure of any reference sample from it.

use super::{Detection, fmt_num, median};
use crate::api::{Direction, Verdict};
use std::collections::BTreeMap;

/// One unit's samples keyed by slot.
pub type Unit = BTreeMap<i64, f64>;

/// Settings of the peer comparison.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Params {
    /// Which way is worse.
    pub direction: Direction,
    /// Smallest relative change that matters, against the references' level.
    pub min_delta: f64,
    /// A slot this many bands beyond the typical value is a far departure.
    pub far: f64,
    /// Far departures needed to fail.
    pub far_samples: usize,
    /// Consecutive departing slots needed to fail.
    pub long: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            direction: Direction::Increase,
            min_delta: DEFAULT_MIN_DELTA,
            far: DEFAULT_FAR,
            far_samples: DEFAULT_FAR_SAMPLES,
            long: DEFAULT_LONG,
        }
    }
}

// The four defaults below are what the selection rule of the real-data evaluation
// (`eval/src/real.rs`: every dataset's good-failed share within its target, then the most bad
// failed, then the fewest good failed) picks on all of ChangeRCA and Kontrast together: an
// in-sample choice, shipped as measured. The held-out figures are the cross-validated rows of
// docs/performance.md, where each half is judged with the settings picked on the other.

/// Default minimum effect for latency and other value metrics (selected on all the real data).
pub const DEFAULT_MIN_DELTA: f64 = 0.25;
/// Default far factor (selected on all the real data).
pub const DEFAULT_FAR: f64 = 1.5;
/// Default number of far slots (selected on all the real data; never 1: one slot alone is not
/// a regression).
pub const DEFAULT_FAR_SAMPLES: usize = 2;
/// Default run length (selected on all the real data).
pub const DEFAULT_LONG: usize = 10;

/// The numbers behind a peer comparison (also what the reference fixtures check).
#[derive(Clone, Debug, PartialEq)]
pub struct Departure {
    /// Slots where both the change and the references have data.
    pub slots: usize,
    /// The references' own spread: the largest leave-one-out departure (0 with one unit).
    pub spread: f64,
    /// The references' level: the median of all their samples.
    pub level: f64,
    /// The band: max(spread, min_delta × |level|).
    pub band: f64,
    /// Per compared slot, the departure in the bad direction ÷ band.
    pub excess: Vec<f64>,
    /// Slots beyond the band.
    pub beyond: usize,
    /// Longest run of slots beyond the band.
    pub longest: usize,
    /// Slots beyond `far` × band.
    pub far: usize,
    /// Whether the references were pooled (no slot lined up).
    pub pooled: bool,
    /// The slot of the largest excess: change value and typical reference value there.
    pub worst: Option<(f64, f64)>,
}

/// The part of a difference that goes the bad way (`direction`); negative when it goes the good way.
pub(crate) fn bad_part(direction: Direction, diff: f64) -> f64 {
    match direction {
        Direction::Increase => diff,
        Direction::Decrease => -diff,
        Direction::Either => diff.abs(),
    }
}

/// What the workload's earlier released changes showed, per slot since their canary's first
/// sample: the largest relative departure in the bad direction (departure ÷ |typical value|).
/// At a slot it holds, the band widens by that share of the references' typical value; past its
/// last slot, by what it holds there.
pub type Envelope = BTreeMap<i64, f64>;

/// Per slot where change and references line up: the change's value ÷ the references' typical
/// value (what a history record keeps). Empty when no slot lines up.
pub fn slot_ratios(change: &[Unit], reference: &[Unit]) -> BTreeMap<i64, f64> {
    let mut out = BTreeMap::new();
    let first = change.iter().filter_map(|u| u.keys().next()).min().copied();
    for (s, value, typical) in aligned(change, reference) {
        if typical != 0.0 && value.is_finite() {
            // Keyed by slots since the change's first slot: its age.
            out.insert(s - first.unwrap_or(0), value / typical);
        }
    }
    out
}

/// Every unit's finite samples, by slot.
fn by_slot(units: &[Unit]) -> BTreeMap<i64, Vec<f64>> {
    let mut at: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for u in units {
        for (s, v) in u {
            if v.is_finite() {
                at.entry(*s).or_default().push(*v);
            }
        }
    }
    at
}

/// (slot, change median, reference median) where both have data.
fn aligned(change: &[Unit], reference: &[Unit]) -> Vec<(i64, f64, f64)> {
    let (c, r) = (by_slot(change), by_slot(reference));
    c.iter()
        .filter_map(|(s, cv)| Some((*s, median(cv), median(r.get(s)?))))
        .collect()
}

/// Per slot of the change: the change's median and the references' median at the same slot
/// (`None` where no reference has a sample there), the slot first.
pub fn lined_up(change: &[Unit], reference: &[Unit]) -> Vec<(i64, f64, Option<f64>)> {
    let (c, r) = (by_slot(change), by_slot(reference));
    c.iter()
        .map(|(s, cv)| (*s, median(cv), r.get(s).map(|rv| median(rv))))
        .collect()
}

/// Measure how far the change departs from the references, slot by slot.
pub fn departure(change: &[Unit], reference: &[Unit], p: &Params) -> Departure {
    departure_with(change, reference, p, None)
}

/// [`departure`], with the band at each slot widened to what the workload's released changes
/// showed at the same age (`envelope`, keyed by slots since the change's first slot).
pub fn departure_with(
    change: &[Unit],
    reference: &[Unit],
    p: &Params,
    envelope: Option<&Envelope>,
) -> Departure {
    let first_slot = change.iter().filter_map(|u| u.keys().next()).min().copied();
    let change_at = by_slot(change);
    let ref_at = by_slot(reference);
    let all_ref: Vec<f64> = ref_at.values().flatten().copied().collect();
    let level = median(&all_ref);
    let pooled = !change_at.keys().any(|s| ref_at.contains_key(s));
    let spread = if pooled {
        all_ref
            .iter()
            .map(|v| (v - level).abs())
            .fold(0.0, f64::max)
    } else {
        let mut widest = 0.0_f64;
        for (i, u) in reference.iter().enumerate() {
            for (s, v) in u {
                if !v.is_finite() {
                    continue;
                }
                let others: Vec<f64> = reference
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .filter_map(|(_, o)| o.get(s).copied().filter(|x| x.is_finite()))
                    .collect();
                if !others.is_empty() {
                    widest = widest.max((v - median(&others)).abs());
                }
            }
        }
        widest
    };
    let floor = if level.is_finite() {
        p.min_delta * level.abs()
    } else {
        0.0
    };
    let band = spread.max(floor);
    let mut excess = Vec::new();
    let mut worst: Option<(f64, f64, f64)> = None;
    for (s, values) in &change_at {
        let typical = if pooled {
            level
        } else {
            match ref_at.get(s) {
                Some(r) => median(r),
                None => continue,
            }
        };
        if !typical.is_finite() {
            continue;
        }
        let value = median(values);
        let dep = bad_part(p.direction, value - typical);
        let age = s - first_slot.unwrap_or(*s);
        // The history's departure is where a healthy canary of this age is expected to be; the
        // band (the peers' noise, the minimum effect) still applies around it. Past the oldest
        // age the history reaches, what it showed there: a young pod's departure fades as it
        // ages, so the last recorded age bounds the later ones.
        let band = envelope
            .and_then(|e| e.range(..=age).next_back())
            .map_or(band, |(_, h)| band + h.max(0.0) * typical.abs());
        let e = if band > 0.0 {
            dep / band
        } else if dep > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        if worst.is_none_or(|w| e > w.0) {
            worst = Some((e, value, typical));
        }
        excess.push(e);
    }
    let (mut longest, mut run) = (0, 0);
    for e in &excess {
        run = if *e > 1.0 { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    Departure {
        slots: excess.len(),
        spread,
        level,
        band,
        beyond: excess.iter().filter(|e| **e > 1.0).count(),
        longest,
        far: excess.iter().filter(|e| **e > p.far).count(),
        excess,
        pooled,
        worst: worst.map(|w| (w.1, w.2)),
    }
}

/// Judge the change against its references.
pub fn detect(change: &[Unit], reference: &[Unit], p: &Params) -> Detection {
    detect_with(change, reference, p, None)
}

/// [`detect`] with the band widened by the workload's history where it holds.
pub fn detect_with(
    change: &[Unit],
    reference: &[Unit],
    p: &Params,
    envelope: Option<&Envelope>,
) -> Detection {
    let d = departure_with(change, reference, p, envelope);
    let needed = p.far_samples.min(p.long).max(1);
    if d.slots < needed {
        return Detection::inconclusive(
            "peers",
            format!(
                "{} time slot(s) of the change line up with the reference; {needed} needed before a failure could be shown",
                d.slots
            ),
        );
    }
    let fail = d.far >= p.far_samples || d.longest >= p.long;
    let score = d.excess.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let units = if d.pooled {
        "the reference's range".to_string()
    } else {
        format!(
            "the widest gap between {} reference unit(s) ({})",
            reference.len(),
            fmt_num(d.spread)
        )
    };
    let band_from = if d.band > d.spread {
        format!(
            "the minimum effect {}% of {}",
            fmt_num(p.min_delta * 100.0),
            fmt_num(d.level)
        )
    } else {
        units
    };
    let worst = d
        .worst
        .map(|(v, t)| format!("; worst slot {} vs {}", fmt_num(v), fmt_num(t)))
        .unwrap_or_default();
    let verdict_why = if fail {
        if d.far >= p.far_samples {
            format!(
                "{} slot(s) beyond {}× the band (needs {})",
                d.far,
                fmt_num(p.far),
                p.far_samples
            )
        } else {
            format!("{} slots in a row beyond it (needs {})", d.longest, p.long)
        }
    } else {
        format!(
            "not enough to fail: {} beyond {}× (needs {}), longest run {} (needs {})",
            d.far,
            fmt_num(p.far),
            p.far_samples,
            d.longest,
            p.long
        )
    };
    Detection {
        detector: "peers",
        score,
        threshold: p.far,
        outcome: if fail { Verdict::Fail } else { Verdict::Pass },
        explanation: format!(
            "{} of {} slots beyond ±{} ({band_from}){worst}; {verdict_why}",
            d.beyond,
            d.slots,
            fmt_num(d.band)
        ),
        suppressed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(values: &[f64]) -> Unit {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64, *v))
            .collect()
    }

    fn p(direction: Direction) -> Params {
        Params {
            direction,
            ..Params::default()
        }
    }

    #[test]
    fn history_widens_the_band_at_its_ages_and_past_the_last_one_it_reached() {
        let controls = [unit(&[1.0; 8]), unit(&[1.05; 8]), unit(&[0.95; 8])];
        // Young canaries of this workload run 2.5× the control.
        let canary = [unit(&[2.5; 8])];
        let pi = p(Direction::Increase);
        assert_eq!(detect(&canary, &controls, &pi).outcome, Verdict::Fail);
        // Records reach ages 0–2 only (stopped early): ages 3–7 keep the age-2 allowance.
        let short: Envelope = [(0, 1.6), (1, 1.55), (2, 1.52)].into();
        let d = detect_with(&canary, &controls, &pi, Some(&short));
        assert_eq!(d.outcome, Verdict::Pass, "{}", d.explanation);
        // A history that showed less than this one's departure does not excuse it.
        let smaller: Envelope = [(0, 0.4), (1, 0.4), (2, 0.4)].into();
        assert_eq!(
            detect_with(&canary, &controls, &pi, Some(&smaller)).outcome,
            Verdict::Fail
        );
        // Before the first age a history holds, it does not apply.
        let late: Envelope = [(6, 1.6)].into();
        assert_eq!(
            detect_with(&canary, &controls, &pi, Some(&late)).outcome,
            Verdict::Fail
        );
    }

    #[test]
    fn a_canary_inside_the_spread_of_its_peers_passes() {
        let controls = [
            unit(&[1.0, 1.1, 0.9, 1.0, 1.0, 1.1]),
            unit(&[1.5, 1.4, 1.6, 1.5, 1.5, 1.4]),
        ];
        let canary = [unit(&[1.3, 1.4, 1.2, 1.3, 1.4, 1.3])];
        let d = detect(&canary, &controls, &p(Direction::Increase));
        assert_eq!(d.outcome, Verdict::Pass, "{}", d.explanation);
    }

    #[test]
    fn a_sustained_departure_fails_and_says_how_long() {
        let controls = [unit(&[1.0; 8]), unit(&[1.1; 8]), unit(&[0.9; 8])];
        let canary = [unit(&[1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])];
        let d = departure(&canary, &controls, &p(Direction::Increase));
        assert_eq!(d.longest, 6);
        let det = detect(&canary, &controls, &p(Direction::Increase));
        assert_eq!(det.outcome, Verdict::Fail);
        assert!(
            det.explanation.contains("6 of 8 slots"),
            "{}",
            det.explanation
        );
    }

    #[test]
    fn one_extreme_sample_is_not_enough_but_two_are() {
        let controls = [unit(&[0.1; 10]), unit(&[0.12; 10])];
        let mut one = vec![0.11; 10];
        one[3] = 5.0;
        assert_eq!(
            detect(&[unit(&one)], &controls, &p(Direction::Increase)).outcome,
            Verdict::Pass
        );
        one[7] = 5.0;
        assert_eq!(
            detect(&[unit(&one)], &controls, &p(Direction::Increase)).outcome,
            Verdict::Fail
        );
    }

    #[test]
    fn errors_against_an_all_zero_control_fail() {
        let controls = [unit(&[0.0; 6]), unit(&[0.0; 6])];
        let canary = [unit(&[0.0, 0.02, 0.03, 0.0, 0.01, 0.02])];
        assert_eq!(
            detect(&canary, &controls, &p(Direction::Increase)).outcome,
            Verdict::Fail
        );
    }

    #[test]
    fn the_good_direction_never_fails() {
        let controls = [unit(&[100.0; 6]), unit(&[99.0; 6])];
        let canary = [unit(&[200.0; 6])];
        assert_eq!(
            detect(&canary, &controls, &p(Direction::Decrease)).outcome,
            Verdict::Pass
        );
        assert_eq!(
            detect(&canary, &controls, &p(Direction::Either)).outcome,
            Verdict::Fail
        );
    }

    #[test]
    fn a_difference_below_the_minimum_effect_passes_even_when_peers_agree() {
        let controls = [unit(&[100.0; 6]), unit(&[100.0; 6])];
        let canary = [unit(&[110.0; 6])];
        assert_eq!(
            detect(&canary, &controls, &p(Direction::Increase)).outcome,
            Verdict::Pass
        );
    }

    #[test]
    fn unaligned_references_are_pooled() {
        let background = [(100..110)
            .map(|s| (s, 1.0 + (s % 3) as f64 * 0.1))
            .collect()];
        let canary = [unit(&[3.0; 6])];
        let d = departure(&canary, &background, &p(Direction::Increase));
        assert!(d.pooled);
        assert_eq!(d.beyond, 6);
    }

    #[test]
    fn too_few_slots_is_inconclusive() {
        let controls = [unit(&[1.0; 6])];
        let canary = [unit(&[9.0])];
        assert_eq!(
            detect(&canary, &controls, &p(Direction::Increase)).outcome,
            Verdict::Inconclusive
        );
    }
}
