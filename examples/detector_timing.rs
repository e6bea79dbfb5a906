//! Times graygate's Mann-Whitney and KDE on the inputs scripts/bench/scipy_side_by_side.py
//! writes, so both run on the same data in the same run. Prints JSON: nanoseconds per call.

use graygate::api::Direction;
use graygate::detect::{kde, mann_whitney};
use std::hint::black_box;
use std::time::Instant;

fn per_call(iterations: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 + 1 {
        f();
    }
    let t = Instant::now();
    for _ in 0..iterations {
        f();
    }
    t.elapsed().as_nanos() as f64 / iterations as f64
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: detector_timing INPUT.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read input"))
            .expect("parse input");
    let arr = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .expect(k)
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::NAN))
            .collect()
    };
    let (x, y) = (arr("x"), arr("y"));
    let mw_u = per_call(2000, || {
        black_box(mann_whitney::mann_whitney_u(
            black_box(&x),
            black_box(&y),
            mann_whitney::Alternative::TwoSided,
            mann_whitney::Method::Auto,
        ));
    });
    let mw_full = per_call(2000, || {
        black_box(mann_whitney::detect(
            &x,
            &y,
            mann_whitney::Params {
                direction: Direction::Either,
                alpha: 0.01,
                min_delta: 0.0,
                min_samples: 1,
            },
        ));
    });
    let h = kde::silverman_bandwidth(&y);
    let kde_ll = per_call(100, || {
        black_box(kde::mean_log_likelihood(black_box(&x), black_box(&y), h));
    });
    let kde_score = per_call(100, || {
        black_box(kde::score(black_box(&x), black_box(&y)));
    });
    println!(
        "{}",
        serde_json::json!({"mann_whitney_u_ns": mw_u, "mann_whitney_with_hl_ns": mw_full, "kde_loglik_ns": kde_ll, "kde_score_ns": kde_score,
            "p_value": mann_whitney::mann_whitney_u(&x, &y, mann_whitney::Alternative::TwoSided, mann_whitney::Method::Auto).p_value,
            "kde_loglik": kde::mean_log_likelihood(&x, &y, h)})
    );
}
