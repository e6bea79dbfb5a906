//! The default detector set against the labelled scenarios, beside a Kayenta-style baseline:
//! at least 95% of bad changes failed, at most 2% of good ones, and better than the baseline on both.

use graygate_eval::synthetic::{evaluate, generate, report};
use graygate_eval::targets::SYNTHETIC;

#[test]
fn default_judge_meets_its_targets_and_beats_the_baseline() {
    let cases = generate(20261121, 100);
    assert!(cases.len() >= 1000);
    let rows = evaluate(&cases);
    println!("{}", report(&rows));
    let share = |bad: bool, f: fn(&graygate_eval::synthetic::Row) -> usize| {
        let n: usize = rows.iter().filter(|r| r.bad == bad).map(|r| r.cases).sum();
        rows.iter().filter(|r| r.bad == bad).map(f).sum::<usize>() as f64 / n as f64
    };
    let bad_caught = share(true, |r| r.failed_default);
    let good_blocked = share(false, |r| r.failed_default);
    let base_caught = share(true, |r| r.failed_baseline);
    let base_blocked = share(false, |r| r.failed_baseline);
    assert!(
        bad_caught >= SYNTHETIC.bad_failed,
        "bad changes failed: {bad_caught}, target {}",
        SYNTHETIC.bad_failed
    );
    assert!(
        good_blocked <= SYNTHETIC.good_failed,
        "good changes failed: {good_blocked}, target {}",
        SYNTHETIC.good_failed
    );
    assert!(
        bad_caught > base_caught,
        "baseline catches {base_caught}, graygate {bad_caught}"
    );
    assert!(
        good_blocked < base_blocked,
        "baseline blocks {base_blocked} of good changes, graygate {good_blocked}"
    );
}
