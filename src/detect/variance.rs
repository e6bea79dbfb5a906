//! `variance`: the Brown-Forsythe test (Levene's test around the median, as scipy's
//! `levene(center="median")`), so a change that only makes a metric erratic fails.

use super::{Detection, finite, fmt_num, mean, median};
use crate::api::Verdict;
use statrs::distribution::{ContinuousCDF, FisherSnedecor};

/// The W statistic and its p-value for any number of groups.
pub fn brown_forsythe(groups: &[&[f64]]) -> (f64, f64) {
    let k = groups.len();
    let n: usize = groups.iter().map(|g| g.len()).sum();
    if k < 2 || n <= k {
        return (f64::NAN, f64::NAN);
    }
    let z: Vec<Vec<f64>> = groups
        .iter()
        .map(|g| {
            let m = median(g);
            g.iter().map(|v| (v - m).abs()).collect()
        })
        .collect();
    let zbar_i: Vec<f64> = z.iter().map(|zi| mean(zi)).collect();
    let zbar = z.iter().flatten().sum::<f64>() / n as f64;
    let between: f64 = z
        .iter()
        .zip(&zbar_i)
        .map(|(zi, zb)| zi.len() as f64 * (zb - zbar).powi(2))
        .sum();
    let within: f64 = z
        .iter()
        .zip(&zbar_i)
        .map(|(zi, zb)| zi.iter().map(|v| (v - zb).powi(2)).sum::<f64>())
        .sum();
    let (kf, nf) = (k as f64, n as f64);
    let w = (nf - kf) / (kf - 1.0) * between / within;
    let p = if w.is_finite() {
        FisherSnedecor::new(kf - 1.0, nf - kf)
            .map(|f| f.sf(w))
            .unwrap_or(f64::NAN)
    } else {
        f64::NAN
    };
    (w, p)
}

/// Fail when the change group's spread is significantly larger than the reference's, by at
/// least `min_ratio` (mean absolute deviation from the median), and by at least
/// `min_level_share` of the reference's level: a spread that doubles from 0.4 ms to 0.8 ms on a
/// 100 ms latency is significant, and irrelevant.
pub fn detect(
    change: &[f64],
    reference: &[f64],
    alpha: f64,
    min_ratio: f64,
    min_level_share: f64,
    min_samples: usize,
) -> Detection {
    let x = finite(change);
    let y = finite(reference);
    if x.len() < min_samples.max(2) || y.len() < min_samples.max(2) {
        return Detection::inconclusive(
            "variance",
            format!(
                "{} change and {} reference samples; {} each needed",
                x.len(),
                y.len(),
                min_samples.max(2)
            ),
        );
    }
    let (_, p) = brown_forsythe(&[&x, &y]);
    let spread = |v: &[f64]| {
        let m = median(v);
        mean(&v.iter().map(|a| (a - m).abs()).collect::<Vec<_>>())
    };
    let (sx, sy) = (spread(&x), spread(&y));
    let ratio = if sy > 0.0 {
        sx / sy
    } else if sx > 0.0 {
        f64::INFINITY
    } else {
        1.0
    };
    let describe = format!(
        "spread {}× the reference's (mean deviation {} vs {}), Brown-Forsythe p={}",
        fmt_num(ratio),
        fmt_num(sx),
        fmt_num(sy),
        fmt_num(p)
    );
    let significant = p.is_finite() && p < alpha && sx > sy;
    let level = median(&y).abs();
    let share = if level > 0.0 {
        (sx - sy) / level
    } else {
        f64::INFINITY
    };
    let (outcome, suppressed_by, explanation) =
        match (significant, ratio >= min_ratio, share >= min_level_share) {
            (true, true, true) => (Verdict::Fail, None, describe),
            (true, false, _) => (
                Verdict::Pass,
                Some("minimum effect"),
                format!("{describe}; below the minimum ratio {}", fmt_num(min_ratio)),
            ),
            (true, true, false) => (
                Verdict::Pass,
                Some("minimum effect"),
                format!(
                    "{describe}; the added spread is {:.1}% of the level {}, below {:.1}%",
                    share * 100.0,
                    fmt_num(level),
                    min_level_share * 100.0
                ),
            ),
            _ => (Verdict::Pass, None, describe),
        };
    Detection {
        detector: "variance",
        score: if p.is_finite() { p } else { 1.0 },
        threshold: alpha,
        outcome,
        explanation,
        suppressed_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variance_only_change_fails_same_spread_passes() {
        let control: Vec<f64> = (0..120)
            .map(|i| 100.0 + ((i * 37) % 11) as f64 - 5.0)
            .collect();
        let erratic: Vec<f64> = control.iter().map(|v| 100.0 + (v - 100.0) * 4.0).collect();
        assert_eq!(
            detect(&erratic, &control, 0.01, 1.5, 0.01, 10).outcome,
            Verdict::Fail
        );
        assert_eq!(
            detect(&control, &control, 0.01, 1.5, 0.01, 10).outcome,
            Verdict::Pass
        );
        // The same doubling of spread on a level a hundred times higher does not matter.
        let high: Vec<f64> = control.iter().map(|v| v + 10_000.0).collect();
        let high_erratic: Vec<f64> = erratic.iter().map(|v| v + 10_000.0).collect();
        let d = detect(&high_erratic, &high, 0.01, 1.5, 0.01, 10);
        assert_eq!(
            (d.outcome, d.suppressed_by),
            (Verdict::Pass, Some("minimum effect"))
        );
    }
}
