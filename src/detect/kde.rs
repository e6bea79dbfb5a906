//! `kde`: a Gaussian kernel density of the control group (Silverman's bandwidth, as scipy's
//! `gaussian_kde(bw_method="silverman")`). Score = mean log-likelihood of the change group under
//! it, minus the control group's own leave-one-out mean log-likelihood: near 0 when the change
//! group looks like the control, strongly negative when it does not.

use super::{Detection, finite, fmt_num, is_worse, median, std_dev};
use crate::api::{Direction, Verdict};

/// Silverman's bandwidth for one dimension: sd · (3n/4)^(-1/5).
pub fn silverman_bandwidth(data: &[f64]) -> f64 {
    let n = data.len() as f64;
    std_dev(data, 1) * (n * 3.0 / 4.0).powf(-0.2)
}

fn log_density(t: f64, data: &[f64], skip: Option<usize>, h: f64) -> f64 {
    let inv_h = 1.0 / h;
    let mut sum = 0.0;
    let mut count = 0usize;
    for (i, &c) in data.iter().enumerate() {
        if Some(i) == skip {
            continue;
        }
        let z = (t - c) * inv_h;
        sum += (-0.5 * z * z).exp();
        count += 1;
    }
    let norm = (count as f64 * h * (2.0 * std::f64::consts::PI).sqrt()).ln();
    if sum > 0.0 {
        return sum.ln() - norm;
    }
    // Far in the tails every term underflows: log-sum-exp keeps the value finite.
    let max = data
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, &c)| -0.5 * ((t - c) * inv_h).powi(2))
        .fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = data
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != skip)
        .map(|(_, &c)| (-0.5 * ((t - c) * inv_h).powi(2) - max).exp())
        .sum();
    max + s.ln() - norm
}

/// Mean log-likelihood of `points` under the KDE of `control`.
pub fn mean_log_likelihood(points: &[f64], control: &[f64], h: f64) -> f64 {
    points
        .iter()
        .map(|&t| log_density(t, control, None, h))
        .sum::<f64>()
        / points.len() as f64
}

/// Mean leave-one-out log-likelihood of the control under its own KDE (same bandwidth).
/// The kernel is symmetric, so each pair is evaluated once.
pub fn loo_log_likelihood(control: &[f64], h: f64) -> f64 {
    let n = control.len();
    let inv_h = 1.0 / h;
    let mut sums = vec![0.0f64; n];
    for i in 0..n {
        for j in (i + 1)..n {
            let z = (control[i] - control[j]) * inv_h;
            let k = (-0.5 * z * z).exp();
            sums[i] += k;
            sums[j] += k;
        }
    }
    let norm = ((n - 1) as f64 * h * (2.0 * std::f64::consts::PI).sqrt()).ln();
    let total: f64 = (0..n)
        .map(|i| {
            if sums[i] > 0.0 {
                sums[i].ln() - norm
            } else {
                log_density(control[i], control, Some(i), h)
            }
        })
        .sum();
    total / n as f64
}

/// The score: change mean log-likelihood minus control leave-one-out mean log-likelihood.
pub fn score(change: &[f64], control: &[f64]) -> f64 {
    let h = silverman_bandwidth(control);
    mean_log_likelihood(change, control, h) - loo_log_likelihood(control, h)
}

/// Fail when the score is below `-threshold` nats and the change moved in the bad direction.
pub fn detect(
    change: &[f64],
    control: &[f64],
    direction: Direction,
    threshold: f64,
    min_samples: usize,
) -> Detection {
    let x = finite(change);
    let y = finite(control);
    if x.len() < min_samples.max(1) || y.len() < min_samples.max(3) {
        return Detection::inconclusive(
            "kde",
            format!(
                "{} change and {} control samples; {} each needed",
                x.len(),
                y.len(),
                min_samples.max(3)
            ),
        );
    }
    let h = silverman_bandwidth(&y);
    if h.is_nan() || h <= 0.0 {
        let same = x.iter().all(|v| *v == y[0]);
        return Detection {
            detector: "kde",
            score: if same { 0.0 } else { f64::NEG_INFINITY },
            threshold: -threshold,
            outcome: if same || !is_worse(direction, median(&x), y[0]) {
                Verdict::Pass
            } else {
                Verdict::Fail
            },
            explanation: format!(
                "the control is constant at {}; the change median is {}",
                fmt_num(y[0]),
                fmt_num(median(&x))
            ),
            suppressed_by: None,
        };
    }
    let s = mean_log_likelihood(&x, &y, h) - loo_log_likelihood(&y, h);
    let bad = s < -threshold && is_worse(direction, median(&x), median(&y));
    Detection {
        detector: "kde",
        score: s,
        threshold: -threshold,
        outcome: if bad { Verdict::Fail } else { Verdict::Pass },
        explanation: format!(
            "change values are {} nats per sample {} likely under the control's density than the control itself (bandwidth {})",
            fmt_num(s.abs()),
            if s < 0.0 { "less" } else { "more" },
            fmt_num(h)
        ),
        suppressed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similar_groups_score_near_zero_shifted_groups_far_below() {
        let control: Vec<f64> = (0..200).map(|i| ((i * 7919) % 200) as f64 / 20.0).collect();
        let same: Vec<f64> = (0..100)
            .map(|i| ((i * 104729) % 200) as f64 / 20.0)
            .collect();
        let shifted: Vec<f64> = same.iter().map(|v| v + 30.0).collect();
        assert!(score(&same, &control).abs() < 0.5);
        assert!(score(&shifted, &control) < -10.0);
        assert_eq!(
            detect(&shifted, &control, Direction::Increase, 2.0, 10).outcome,
            Verdict::Fail
        );
    }
}
