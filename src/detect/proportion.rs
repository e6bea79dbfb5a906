//! `proportion`: for ratio metrics built from counts (errors / requests), a two-proportion test
//! of change against control: Fisher's exact test when any expected count is below 5, else the
//! pooled two-proportion z-test. Errors that appear only in the change group fail; no errors
//! anywhere pass.

use super::{Detection, fmt_num, normal_sf};
use crate::api::{Direction, Verdict};
use statrs::function::gamma::ln_gamma;

fn ln_choose(n: f64, k: f64) -> f64 {
    ln_gamma(n + 1.0) - ln_gamma(k + 1.0) - ln_gamma(n - k + 1.0)
}

/// Hypergeometric pmf: `x` successes in `draws` from `total` with `good` successes.
fn hypergeom_pmf(x: u64, total: u64, good: u64, draws: u64) -> f64 {
    let (x, total, good, draws) = (x as f64, total as f64, good as f64, draws as f64);
    (ln_choose(good, x) + ln_choose(total - good, draws - x) - ln_choose(total, draws)).exp()
}

/// Fisher's exact test on the table [[a, b], [c, d]]; alternative as scipy's `fisher_exact`.
pub fn fisher_exact(
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    alternative: super::mann_whitney::Alternative,
) -> f64 {
    use super::mann_whitney::Alternative;
    let row1 = a + b;
    let col1 = a + c;
    let total = a + b + c + d;
    let lo = col1.saturating_sub(total - row1);
    let hi = row1.min(col1);
    let pmf = |x: u64| hypergeom_pmf(x, total, row1, col1);
    let p = match alternative {
        Alternative::Greater => (a..=hi).map(pmf).sum::<f64>(),
        Alternative::Less => (lo..=a).map(pmf).sum::<f64>(),
        Alternative::TwoSided => {
            let observed = pmf(a);
            // scipy counts tables as likely as the observed one within a relative 1e-7.
            (lo..=hi)
                .map(pmf)
                .filter(|p| *p <= observed * (1.0 + 1e-7))
                .sum::<f64>()
        }
    };
    p.clamp(0.0, 1.0)
}

/// Pooled two-proportion z statistic of a/n1 against c/n2.
pub fn two_proportion_z(a: f64, n1: f64, c: f64, n2: f64) -> f64 {
    let p1 = a / n1;
    let p2 = c / n2;
    let pooled = (a + c) / (n1 + n2);
    let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
    if se > 0.0 { (p1 - p2) / se } else { 0.0 }
}

/// Settings of the detector.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Which way is worse (for errors: increase).
    pub direction: Direction,
    /// Significance level.
    pub alpha: f64,
    /// Smallest absolute difference of proportions that matters (0.002 = 0.2 points).
    pub min_delta: f64,
    /// Requests (denominator) each group needs.
    pub min_total: f64,
}

/// Compare bad/total counts of the change group with those of the reference.
pub fn detect(
    change_bad: f64,
    change_total: f64,
    ref_bad: f64,
    ref_total: f64,
    p: Params,
) -> Detection {
    if !(change_total >= p.min_total.max(1.0) && ref_total >= p.min_total.max(1.0)) {
        return Detection::inconclusive(
            "proportion",
            // Counts read from rates are estimates: whole numbers say enough.
            format!(
                "about {:.0} change and {:.0} reference events (requests, for an error ratio); {} each needed",
                change_total,
                ref_total,
                fmt_num(p.min_total)
            ),
        );
    }
    let a = change_bad.max(0.0).min(change_total).round() as u64;
    let n1 = change_total.round() as u64;
    let c = ref_bad.max(0.0).min(ref_total).round() as u64;
    let n2 = ref_total.round() as u64;
    let (p1, p2) = (a as f64 / n1 as f64, c as f64 / n2 as f64);
    let total = (n1 + n2) as f64;
    let col1 = (a + c) as f64;
    let min_expected = [
        n1 as f64 * col1 / total,
        n1 as f64 * (total - col1) / total,
        n2 as f64 * col1 / total,
        n2 as f64 * (total - col1) / total,
    ]
    .into_iter()
    .fold(f64::INFINITY, f64::min);
    let alternative = p.direction.into();
    let (p_value, test) = if min_expected < 5.0 {
        (fisher_exact(a, n1 - a, c, n2 - c, alternative), "Fisher")
    } else {
        let z = two_proportion_z(a as f64, n1 as f64, c as f64, n2 as f64);
        let pv = match alternative {
            super::mann_whitney::Alternative::Greater => normal_sf(z),
            super::mann_whitney::Alternative::Less => normal_sf(-z),
            super::mann_whitney::Alternative::TwoSided => (2.0 * normal_sf(z.abs())).min(1.0),
        };
        (pv, "z-test")
    };
    let diff = p1 - p2;
    let worse = super::is_worse(p.direction, p1, p2);
    let describe = format!(
        "change {a}/{n1} ({:.3}%) vs reference {c}/{n2} ({:.3}%), {test} p={}",
        p1 * 100.0,
        p2 * 100.0,
        fmt_num(p_value)
    );
    let (outcome, suppressed_by, explanation) = if p_value < p.alpha && worse {
        if diff.abs() >= p.min_delta {
            (Verdict::Fail, None, describe)
        } else {
            (
                Verdict::Pass,
                Some("minimum effect"),
                format!(
                    "{describe}; a difference of {:.3} points is below the minimum of {:.3}",
                    diff * 100.0,
                    p.min_delta * 100.0
                ),
            )
        }
    } else {
        (Verdict::Pass, None, describe)
    };
    Detection {
        detector: "proportion",
        score: p_value,
        threshold: p.alpha,
        outcome,
        explanation,
        suppressed_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Params = Params {
        direction: Direction::Increase,
        alpha: 0.01,
        min_delta: 0.002,
        min_total: 50.0,
    };

    #[test]
    fn errors_only_in_the_change_group_fail() {
        let d = detect(12.0, 600.0, 0.0, 1800.0, P);
        assert_eq!(d.outcome, Verdict::Fail, "{}", d.explanation);
        assert!(d.explanation.contains("Fisher"));
    }

    #[test]
    fn no_errors_anywhere_pass() {
        let d = detect(0.0, 600.0, 0.0, 1800.0, P);
        assert_eq!(d.outcome, Verdict::Pass);
        assert_eq!(d.score, 1.0);
    }

    #[test]
    fn a_tiny_significant_difference_passes_on_minimum_effect() {
        let d = detect(1500.0, 1_000_000.0, 1000.0, 1_000_000.0, P);
        assert_eq!(d.outcome, Verdict::Pass);
        assert_eq!(d.suppressed_by, Some("minimum effect"));
    }

    #[test]
    fn too_little_traffic_is_inconclusive() {
        let d = detect(1.0, 16.68, 0.0, 1514.0, P);
        assert_eq!(d.outcome, Verdict::Inconclusive);
        assert_eq!(
            d.explanation,
            "about 17 change and 1514 reference events (requests, for an error ratio); 50 each needed"
        );
    }
}
