//! `three-sigma`: the change group against its background window (the workload before the
//! change). Classic: mean and standard deviation; robust: median and MAD (scaled by 1.4826).

use super::{Detection, finite, fmt_num, is_worse, mean, median, std_dev};
use crate::api::{Direction, Verdict};

/// Centre and scale of a background.
pub fn centre_scale(background: &[f64], robust: bool) -> (f64, f64) {
    if robust {
        let m = median(background);
        let mad = median(&background.iter().map(|v| (v - m).abs()).collect::<Vec<_>>());
        (m, 1.4826 * mad)
    } else {
        (mean(background), std_dev(background, 1))
    }
}

/// Score: how many scales the change group's median lies from the background's centre.
pub fn score(change: &[f64], background: &[f64], robust: bool) -> f64 {
    let (c, s) = centre_scale(background, robust);
    let m = median(change);
    if s > 0.0 {
        (m - c) / s
    } else if m == c {
        0.0
    } else {
        (m - c).signum() * f64::INFINITY
    }
}

/// Fail when the change group's median is beyond `k` scales (3 by default) in the bad direction.
pub fn detect(
    change: &[f64],
    background: &[f64],
    direction: Direction,
    k: f64,
    robust: bool,
    min_samples: usize,
) -> Detection {
    let x = finite(change);
    let b = finite(background);
    if x.len() < min_samples.max(1) || b.len() < min_samples.max(3) {
        return Detection::inconclusive(
            "three-sigma",
            format!(
                "{} change and {} background samples; {} each needed",
                x.len(),
                b.len(),
                min_samples.max(3)
            ),
        );
    }
    let z = score(&x, &b, robust);
    let (c, s) = centre_scale(&b, robust);
    let bad = z.abs() > k && is_worse(direction, z, 0.0);
    let kind = if robust { "median/MAD" } else { "mean/sd" };
    Detection {
        detector: "three-sigma",
        score: z,
        threshold: k,
        outcome: if bad { Verdict::Fail } else { Verdict::Pass },
        explanation: format!(
            "change median {} is {} scales from the background ({kind} {} ± {})",
            fmt_num(median(&x)),
            fmt_num(z),
            fmt_num(c),
            fmt_num(s)
        ),
        suppressed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_shift_against_background() {
        let bg: Vec<f64> = (0..100)
            .map(|i| 10.0 + ((i * 7) % 5) as f64 * 0.1)
            .collect();
        let same: Vec<f64> = bg[..20].to_vec();
        let shifted: Vec<f64> = same.iter().map(|v| v + 5.0).collect();
        assert_eq!(
            detect(&same, &bg, Direction::Increase, 3.0, true, 10).outcome,
            Verdict::Pass
        );
        assert_eq!(
            detect(&shifted, &bg, Direction::Increase, 3.0, true, 10).outcome,
            Verdict::Fail
        );
        assert_eq!(
            detect(&shifted, &bg, Direction::Decrease, 3.0, false, 10).outcome,
            Verdict::Pass
        );
    }
}
