//! `dtw`: dynamic time warping with a Sakoe-Chiba band on z-normalised series, a shape
//! distance used for historical similarity: when the control (or history) deviates from its
//! usual shape as much as the change group does, the deviation is environmental.

/// Z-normalise (population standard deviation); a constant series becomes zeros.
pub fn z_normalise(v: &[f64]) -> Vec<f64> {
    let n = v.len() as f64;
    if v.is_empty() {
        return Vec::new();
    }
    let m = v.iter().sum::<f64>() / n;
    let sd = (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / n).sqrt();
    if sd > 0.0 {
        v.iter().map(|x| (x - m) / sd).collect()
    } else {
        vec![0.0; v.len()]
    }
}

/// DTW distance (sum of absolute differences along the best path) within a band of
/// `band` cells around the diagonal (scaled to the series' lengths). Inputs used as given.
pub fn dtw(a: &[f64], b: &[f64], band: usize) -> f64 {
    let (n, m) = (a.len(), b.len());
    if n == 0 || m == 0 {
        return f64::INFINITY;
    }
    let band = band.max(n.abs_diff(m));
    let inf = f64::INFINITY;
    let mut prev = vec![inf; m + 1];
    let mut cur = vec![inf; m + 1];
    prev[0] = 0.0;
    for i in 1..=n {
        cur.fill(inf);
        // The band follows the diagonal of the (n × m) grid.
        let centre = i * m / n;
        let lo = centre.saturating_sub(band).max(1);
        let hi = (centre + band).min(m);
        for j in lo..=hi {
            let cost = (a[i - 1] - b[j - 1]).abs();
            let best = prev[j].min(cur[j - 1]).min(prev[j - 1]);
            cur[j] = cost + best;
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[m]
}

/// DTW of the z-normalised series with a band of `fraction` of the longer length.
pub fn shape_distance(a: &[f64], b: &[f64], fraction: f64) -> f64 {
    let band = ((a.len().max(b.len()) as f64) * fraction).ceil() as usize;
    let d = dtw(&z_normalise(a), &z_normalise(b), band);
    d / (a.len() + b.len()) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_shapes_are_close_different_shapes_far() {
        let a: Vec<f64> = (0..100).map(|i| (i as f64 / 10.0).sin()).collect();
        let shifted: Vec<f64> = (0..100)
            .map(|i| ((i as f64 + 2.0) / 10.0).sin() * 3.0 + 7.0)
            .collect();
        let other: Vec<f64> = (0..100).map(|i| if i < 50 { 0.0 } else { 1.0 }).collect();
        assert!(shape_distance(&a, &a, 0.1) == 0.0);
        assert!(shape_distance(&a, &shifted, 0.1) < 0.1);
        assert!(shape_distance(&a, &other, 0.1) > 0.3);
    }

    #[test]
    fn band_is_respected() {
        // With band 0 the path is the diagonal: the plain L1 distance.
        assert_eq!(dtw(&[0.0, 1.0, 2.0], &[1.0, 2.0, 3.0], 0), 3.0);
        assert_eq!(dtw(&[0.0, 1.0, 2.0], &[1.0, 2.0, 3.0], 1), 2.0);
    }
}
