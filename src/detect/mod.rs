//! Detectors: pure functions that compare a change group with a reference and say pass, fail
//! or inconclusive, with a score, the threshold it was held against and one line of explanation.

pub mod dtw;
pub mod idle;
pub mod kde;
pub mod mann_whitney;
pub mod peers;
pub mod proportion;
pub mod three_sigma;
pub mod threshold;
pub mod variance;

use crate::api::{Direction, Verdict};

/// What a detector found.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// The detector's name.
    pub detector: &'static str,
    /// Its score (a p-value, a z-score, a log-likelihood ratio … see each detector).
    pub score: f64,
    /// The threshold the score was held against.
    pub threshold: f64,
    /// pass, fail or inconclusive.
    pub outcome: Verdict,
    /// One line a person can read.
    pub explanation: String,
    /// The noise rule that turned a failure into a pass, if any.
    pub suppressed_by: Option<&'static str>,
}

impl Detection {
    pub(crate) fn inconclusive(detector: &'static str, why: String) -> Self {
        Detection {
            detector,
            score: f64::NAN,
            threshold: f64::NAN,
            outcome: Verdict::Inconclusive,
            explanation: why,
            suppressed_by: None,
        }
    }
}

/// Arithmetic mean (NaN for no values).
pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.iter().sum::<f64>() / v.len() as f64
}

/// Sample standard deviation with `ddof` degrees of freedom removed.
pub fn std_dev(v: &[f64], ddof: usize) -> f64 {
    if v.len() <= ddof {
        return f64::NAN;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - ddof) as f64).sqrt()
}

/// Median (the mean of the two middle values for an even count), as numpy computes it.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    median_sorted(&s)
}

/// Median of sorted values.
pub fn median_sorted(s: &[f64]) -> f64 {
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Upper tail of the standard normal distribution, P(Z > z).
pub fn normal_sf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2)
}

/// Whether `change` moved in the bad direction relative to `reference`.
pub fn is_worse(direction: Direction, change: f64, reference: f64) -> bool {
    match direction {
        Direction::Increase => change > reference,
        Direction::Decrease => change < reference,
        Direction::Either => change != reference,
    }
}

/// Keep only finite values (Prometheus answers NaN for 0/0).
pub fn finite(v: &[f64]) -> Vec<f64> {
    v.iter().copied().filter(|x| x.is_finite()).collect()
}

/// Format a number for explanations: few digits, no noise.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e6).contains(&a) {
        format!("{x:.3e}")
    } else if a >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.4}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!((std_dev(&[1.0, 2.0, 3.0, 4.0], 1) - 1.2909944487358056).abs() < 1e-15);
        assert!((normal_sf(1.959963984540054) / 0.025 - 1.0).abs() < 1e-9);
        assert_eq!(fmt_num(0.000012345), "1.234e-5");
        assert_eq!(fmt_num(0.25), "0.25");
    }
}
