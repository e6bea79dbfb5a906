//! `threshold`: an absolute bound on the change group (what Argo Rollouts and Flagger offer).

use super::{Detection, finite, fmt_num, median};
use crate::api::{Direction, Verdict};

/// Fail when the change group's median is beyond `bound` in the bad direction.
pub fn threshold(
    change: &[f64],
    bound: f64,
    direction: Direction,
    min_samples: usize,
) -> Detection {
    let values = finite(change);
    if values.len() < min_samples.max(1) {
        return Detection::inconclusive(
            "threshold",
            format!(
                "{} samples in the change group, {} needed",
                values.len(),
                min_samples
            ),
        );
    }
    let m = median(&values);
    let bad = match direction {
        Direction::Increase => m > bound,
        Direction::Decrease => m < bound,
        Direction::Either => m != bound,
    };
    let word = match direction {
        Direction::Increase => "above",
        Direction::Decrease => "below",
        Direction::Either => "away from",
    };
    Detection {
        detector: "threshold",
        score: m,
        threshold: bound,
        outcome: if bad { Verdict::Fail } else { Verdict::Pass },
        explanation: if bad {
            format!(
                "change median {} is {word} the bound {}",
                fmt_num(m),
                fmt_num(bound)
            )
        } else {
            format!(
                "change median {} is within the bound {}",
                fmt_num(m),
                fmt_num(bound)
            )
        },
        suppressed_by: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_in_each_direction() {
        assert_eq!(
            threshold(&[1.0, 2.0, 3.0], 2.5, Direction::Increase, 3).outcome,
            Verdict::Pass
        );
        assert_eq!(
            threshold(&[3.0, 3.0, 3.0], 2.5, Direction::Increase, 3).outcome,
            Verdict::Fail
        );
        assert_eq!(
            threshold(&[1.0, 1.0, 1.0], 2.5, Direction::Decrease, 3).outcome,
            Verdict::Fail
        );
        assert_eq!(
            threshold(&[1.0], 2.5, Direction::Decrease, 3).outcome,
            Verdict::Inconclusive
        );
        assert_eq!(
            threshold(&[f64::NAN, 1.0, 1.0], 2.5, Direction::Decrease, 3).outcome,
            Verdict::Inconclusive
        );
    }
}
