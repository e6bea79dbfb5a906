//! `mann-whitney`: the Mann-Whitney U test (exact for small samples without ties, otherwise the
//! tie-corrected normal approximation with continuity correction, as scipy's `mannwhitneyu`
//! with `method="auto"`), plus the Hodges-Lehmann shift and a minimum relative effect.

use super::{Detection, finite, fmt_num, is_worse, median, normal_sf};
use crate::api::{Direction, Verdict};

/// Which tail the test looks at, for `x` (change) against `y` (control).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alternative {
    /// x tends to be larger.
    Greater,
    /// x tends to be smaller.
    Less,
    /// Either.
    TwoSided,
}

impl From<Direction> for Alternative {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Increase => Alternative::Greater,
            Direction::Decrease => Alternative::Less,
            Direction::Either => Alternative::TwoSided,
        }
    }
}

/// How the p-value is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Exact when a sample has at most 8 values and there are no ties, else asymptotic.
    Auto,
    /// The exact distribution of U.
    Exact,
    /// Normal approximation with tie and continuity correction.
    Asymptotic,
}

/// The test's result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MannWhitney {
    /// U statistic of x.
    pub u1: f64,
    /// p-value for the alternative.
    pub p_value: f64,
    /// Whether the exact distribution was used.
    pub exact: bool,
}

/// Mann-Whitney U test of `x` against `y` (both non-empty, finite).
pub fn mann_whitney_u(
    x: &[f64],
    y: &[f64],
    alternative: Alternative,
    method: Method,
) -> MannWhitney {
    let n1 = x.len();
    let n2 = y.len();
    let n = n1 + n2;
    let mut all: Vec<(f64, bool)> = Vec::with_capacity(n);
    all.extend(x.iter().map(|v| (*v, true)));
    all.extend(y.iter().map(|v| (*v, false)));
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut r1 = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i + 1;
        while j < n && all[j].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i) as f64;
        // Ranks are 1-based; a tie shares the average rank.
        let rank = (i + 1 + j) as f64 / 2.0;
        let in_x = all[i..j].iter().filter(|e| e.1).count() as f64;
        r1 += rank * in_x;
        if j - i > 1 {
            tie_term += t * t * t - t;
        }
        i = j;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u1 = r1 - n1f * (n1f + 1.0) / 2.0;
    let u2 = n1f * n2f - u1;
    let (u, factor) = match alternative {
        Alternative::Greater => (u1, 1.0),
        Alternative::Less => (u2, 1.0),
        Alternative::TwoSided => (u1.max(u2), 2.0),
    };
    let exact = match method {
        Method::Exact => true,
        Method::Asymptotic => false,
        Method::Auto => !(n1 > 8 && n2 > 8) && tie_term == 0.0,
    };
    let p = if exact {
        exact_sf(u.round() as usize, n1.min(n2), n1.max(n2))
    } else {
        let mu = n1f * n2f / 2.0;
        let s = (n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)))).sqrt();
        let z = (u - mu - 0.5) / s;
        if s > 0.0 { normal_sf(z) } else { 1.0 }
    };
    MannWhitney {
        u1,
        p_value: (p * factor).clamp(0.0, 1.0),
        exact,
    }
}

/// P(U >= k) under the null for sample sizes m ≤ n, from the coefficients of the Gaussian
/// binomial [m+n choose m]_q, computed exactly in integers.
fn exact_sf(k: usize, m: usize, n: usize) -> f64 {
    let max_u = m * n;
    if k == 0 {
        return 1.0;
    }
    if k > max_u {
        return 0.0;
    }
    let mut c = vec![0i128; max_u + 1];
    c[0] = 1;
    let mut degree = 0;
    for i in 1..=m {
        // Multiply by (1 - q^(n+i)), then divide by (1 - q^i): each step keeps integer coefficients.
        let a = n + i;
        degree += n;
        for j in (a..=degree.min(max_u)).rev() {
            c[j] -= c[j - a];
        }
        for j in i..=degree.min(max_u) {
            c[j] += c[j - i];
        }
    }
    let total: f64 = c.iter().map(|v| *v as f64).sum();
    let tail: f64 = c[k..].iter().map(|v| *v as f64).sum();
    tail / total
}

/// Hodges-Lehmann shift: the median of all differences x_i − y_j, found without building
/// the n·m differences (bisection on the value with counting, then a small exact selection).
pub fn hodges_lehmann(x: &[f64], y: &[f64]) -> f64 {
    let mut xs = x.to_vec();
    let mut ys = y.to_vec();
    xs.sort_unstable_by(f64::total_cmp);
    ys.sort_unstable_by(f64::total_cmp);
    hodges_lehmann_sorted(&xs, &ys)
}

/// Number of pairs with x_i − y_j ≤ t (both sorted ascending).
fn count_le(xs: &[f64], ys: &[f64], t: f64) -> usize {
    let m = ys.len();
    // The same rounded difference the selection uses: x − y is monotone in y, so one pointer walks.
    let mut j = 0; // first index with xs[i] - ys[j] <= t
    let mut count = 0;
    for &xv in xs {
        while j < m && xv - ys[j] > t {
            j += 1;
        }
        count += m - j;
    }
    count
}

/// Hodges-Lehmann shift of sorted samples.
pub fn hodges_lehmann_sorted(xs: &[f64], ys: &[f64]) -> f64 {
    let (n, m) = (xs.len(), ys.len());
    if n == 0 || m == 0 {
        return f64::NAN;
    }
    let total = n * m;
    let (k1, k2) = if total % 2 == 1 {
        (total / 2, total / 2)
    } else {
        (total / 2 - 1, total / 2)
    };
    // Bracket (lo, hi] with count_le(lo) <= k1 and count_le(hi) >= k2 + 1, narrowed until it
    // holds about n + m differences; the answer is then picked from those exactly.
    let mut lo = xs[0] - ys[m - 1];
    let mut c_lo = count_le(xs, ys, lo);
    if c_lo > k1 {
        lo = f64::NEG_INFINITY;
        c_lo = 0;
    }
    let mut hi = xs[n - 1] - ys[0];
    let mut c_hi = total;
    let window = n + m;
    let mut guess = Some(median_of_sorted(xs) - median_of_sorted(ys));
    for round in 0..200 {
        if c_hi - c_lo <= window || !lo.is_finite() {
            break;
        }
        // Start from the difference of medians, then alternate interpolation and bisection:
        // interpolation converges fast on smooth data, bisection guarantees progress.
        let mid = match guess.take() {
            Some(g) if g > lo && g < hi => g,
            _ if round % 2 == 1 => {
                lo + (hi - lo) * ((k1 - c_lo) as f64 + 0.5) / (c_hi - c_lo) as f64
            }
            _ => lo + (hi - lo) / 2.0,
        };
        if mid <= lo || mid >= hi {
            if round % 2 == 1 {
                continue;
            }
            break;
        }
        let c = count_le(xs, ys, mid);
        if c <= k1 {
            lo = mid;
            c_lo = c;
        } else if c > k2 {
            hi = mid;
            c_hi = c;
        } else {
            // mid splits exactly between the two middle differences: narrow from both sides.
            let below = candidates_in(xs, ys, lo, mid);
            let above = candidates_in(xs, ys, mid, hi);
            let a = below.last().copied().unwrap_or(f64::NAN);
            let b = above.first().copied().unwrap_or(f64::NAN);
            return (a + b) / 2.0;
        }
    }
    let candidates = candidates_in(xs, ys, lo, hi);
    let pick = |k: usize| candidates.get(k - c_lo).copied().unwrap_or(f64::NAN);
    (pick(k1) + pick(k2)) / 2.0
}

fn median_of_sorted(v: &[f64]) -> f64 {
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The differences x − y in (lo, hi], sorted. For each x they form one run of y (x − y falls
/// as y grows), found with two pointers, so only the candidates are visited.
fn candidates_in(xs: &[f64], ys: &[f64], lo: f64, hi: f64) -> Vec<f64> {
    let m = ys.len();
    let mut out = Vec::new();
    let (mut start, mut end) = (0usize, 0usize);
    for &xv in xs {
        while start < m && xv - ys[start] > hi {
            start += 1;
        }
        if end < start {
            end = start;
        }
        while end < m && (lo == f64::NEG_INFINITY || xv - ys[end] > lo) {
            end += 1;
        }
        out.extend(
            ys[start..end]
                .iter()
                .map(|yv| xv - yv)
                .filter(|d| *d > lo && *d <= hi),
        );
    }
    out.sort_unstable_by(f64::total_cmp);
    out
}

/// Settings of the detector.
#[derive(Clone, Copy, Debug)]
pub struct Params {
    /// Which way is worse.
    pub direction: Direction,
    /// Significance level.
    pub alpha: f64,
    /// Smallest relative shift (Hodges-Lehmann over the control median) that matters.
    pub min_delta: f64,
    /// Samples each group needs.
    pub min_samples: usize,
}

/// Compare the change group with a reference group.
pub fn detect(change: &[f64], reference: &[f64], p: Params) -> Detection {
    let x = finite(change);
    let y = finite(reference);
    if x.len() < p.min_samples.max(1) || y.len() < p.min_samples.max(1) {
        return Detection::inconclusive(
            "mann-whitney",
            format!(
                "{} change and {} reference samples; {} each needed",
                x.len(),
                y.len(),
                p.min_samples
            ),
        );
    }
    let r = mann_whitney_u(&x, &y, p.direction.into(), Method::Auto);
    let shift = hodges_lehmann(&x, &y);
    let base = median(&y);
    let relative = if base != 0.0 {
        shift / base.abs()
    } else if shift == 0.0 {
        0.0
    } else {
        f64::INFINITY
    };
    let significant = r.p_value < p.alpha && is_worse(p.direction, shift, 0.0);
    let big_enough = relative.abs() >= p.min_delta;
    let describe = format!(
        "change median {} vs reference {} (shift {}{}, {:+.1}%), p={} {} {}",
        fmt_num(median(&x)),
        fmt_num(base),
        if shift >= 0.0 { "+" } else { "" },
        fmt_num(shift),
        relative * 100.0,
        fmt_num(r.p_value),
        if r.p_value < p.alpha { "<" } else { "≥" },
        fmt_num(p.alpha)
    );
    let (outcome, suppressed_by, explanation) = match (significant, big_enough) {
        (true, true) => (Verdict::Fail, None, describe),
        (true, false) => (
            Verdict::Pass,
            Some("minimum effect"),
            format!(
                "{describe}; significant but below the minimum effect of {:.1}%",
                p.min_delta * 100.0
            ),
        ),
        _ => (Verdict::Pass, None, describe),
    };
    Detection {
        detector: "mann-whitney",
        score: r.p_value,
        threshold: p.alpha,
        outcome,
        explanation,
        suppressed_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::median_sorted;

    fn brute_hl(x: &[f64], y: &[f64]) -> f64 {
        let mut d: Vec<f64> = x
            .iter()
            .flat_map(|a| y.iter().map(move |b| a - b))
            .collect();
        d.sort_by(f64::total_cmp);
        median_sorted(&d)
    }

    #[test]
    fn hodges_lehmann_matches_brute_force() {
        let mut seed = 7u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f64) / (1u64 << 31) as f64
        };
        for (n, m) in [(1, 1), (2, 3), (7, 5), (40, 33), (100, 120)] {
            let x: Vec<f64> = (0..n).map(|_| (next() * 50.0).round() / 10.0).collect();
            let y: Vec<f64> = (0..m).map(|_| next() * 4.0).collect();
            assert_eq!(hodges_lehmann(&x, &y), brute_hl(&x, &y), "n={n} m={m}");
        }
        assert_eq!(hodges_lehmann(&[1.0, 1.0, 1.0], &[1.0, 1.0]), 0.0);
    }

    #[test]
    fn exact_distribution_of_small_samples() {
        // m = n = 2: U takes 0,1,2,2,3,4 over the 6 arrangements.
        assert!((exact_sf(4, 2, 2) - 1.0 / 6.0).abs() < 1e-15);
        assert!((exact_sf(2, 2, 2) - 4.0 / 6.0).abs() < 1e-15);
        assert_eq!(exact_sf(0, 2, 2), 1.0);
    }

    #[test]
    fn a_tiny_shift_is_significant_but_passes_on_minimum_effect() {
        let params = Params {
            direction: Direction::Increase,
            alpha: 0.01,
            min_delta: 0.05,
            min_samples: 10,
        };
        let control: Vec<f64> = (0..200).map(|i| 100.0 + (i % 10) as f64 * 0.1).collect();
        let change: Vec<f64> = control.iter().map(|v| v + 0.3).collect();
        let d = detect(&change, &control, params);
        assert_eq!(d.outcome, Verdict::Pass);
        assert_eq!(d.suppressed_by, Some("minimum effect"));
        let bigger: Vec<f64> = control.iter().map(|v| v * 1.5).collect();
        let d = detect(&bigger, &control, params);
        assert_eq!(d.outcome, Verdict::Fail);
        // The same shift in the harmless direction passes.
        let d = detect(&control, &bigger, params);
        assert_eq!(d.outcome, Verdict::Pass);
    }
}
