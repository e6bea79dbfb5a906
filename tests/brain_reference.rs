//! Differential test of graygate's Brain against the reference implementation (logparser3
//! 1.0.4's `logparser.Brain`, run by scripts/logparsers/brain_reference.py) on every line of
//! ../shared/data/loghub: each system's message column and its raw lines, header and all, with
//! the same generic masks, at the reference's default threshold (2), at 4, and at graygate's (6).
//! graygate runs with statement sources off, as the published parser. The share of lines grouped
//! as the reference groups them (the grouping accuracy of graygate's events against the
//! reference's) must be at least 0.99 on every input.
//! Without the data or the reference the test fails under CI=true and is skipped (with a
//! notice) elsewhere.

use graygate::logs::brain::{Brain, Config, grouping_accuracy};
use std::path::PathBuf;

#[path = "support/loghub.rs"]
mod support;
#[path = "../eval/src/targets.rs"]
#[allow(dead_code)]
mod targets;
use support::SYSTEMS;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

const THRESHOLDS: [usize; 3] = [2, 4, 6];

#[test]
fn brain_groups_every_loghub_line_as_the_reference_does() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    if !dir.is_dir() {
        assert!(!in_ci(), "CI=true but {} is missing", dir.display());
        eprintln!("notice: {} not found; skipping", dir.display());
        return;
    }
    let thresholds = THRESHOLDS.map(|t| t.to_string()).join(",");
    let mut args = vec![dir.clone().into_os_string(), thresholds.into()];
    args.extend(SYSTEMS.iter().map(Into::into));
    let Some(v) = support::run_reference("brain_reference.py", &args) else {
        return;
    };
    let mut worst = (1.0f64, String::new());
    let (mut agreed, mut all) = (0.0, 0usize);
    println!("| system | input | lines | threshold 2 | threshold 4 | threshold 6 |");
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for system in SYSTEMS {
        for input in ["content", "raw"] {
            let entry = &v[system][input];
            let lines: Vec<&str> = entry["lines"]
                .as_array()
                .expect("lines")
                .iter()
                .map(|l| l.as_str().expect("a line"))
                .collect();
            let mut row = format!("| {system} | {input} | {} |", lines.len());
            for t in THRESHOLDS {
                let reference: Vec<&str> = entry["ids"][t.to_string()]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|l| l.as_str().expect("an id"))
                    .collect();
                assert_eq!(reference.len(), lines.len());
                let mut b = Brain::new(Config {
                    threshold: t,
                    ..Config::reference()
                });
                let ids: Vec<u32> = lines.iter().map(|l| b.add(l)).collect();
                let g = b.settle();
                let ours: Vec<u32> = ids.iter().map(|i| g.event(*i)).collect();
                let share = grouping_accuracy(&ours, &reference);
                agreed += share * lines.len() as f64;
                all += lines.len();
                row.push_str(&format!(" {share:.4} |"));
                if share < worst.0 {
                    worst = (share, format!("{system} {input} threshold {t}"));
                }
            }
            println!("{row}");
        }
    }
    println!(
        "all inputs: {:.4} of {all} line parses agree; lowest {:.4} ({})",
        agreed / all as f64,
        worst.0,
        worst.1
    );
    assert!(
        worst.0 >= targets::BRAIN_AGREEMENT,
        "{} groups {:.4} of its lines as the reference does, below {}",
        worst.1,
        worst.0,
        targets::BRAIN_AGREEMENT
    );
}
