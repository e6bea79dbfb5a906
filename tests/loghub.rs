//! Log parsing quality on the loghub samples (../shared/data/loghub, hand-labelled), measured
//! as a user meets it: on systems the parser's setting was not chosen on, and on the lines a pod
//! prints (the raw lines, header and all) as well as on the message column the labels were made
//! for. graygate's parser is Brain (src/logs/brain.rs) with two additions; its one setting
//! (Brain's child threshold) is chosen on four systems and measured on the other four (both
//! ways), and chosen on seven and measured on the eighth (leave one system out), by the mean of
//! a system's two inputs. The reference parsers (logparser3's Brain and Drain, and Drain3, with
//! one generic mask set) run on the same message lines through scripts/logparsers/anchors.py,
//! their settings chosen the same way in the same run. Asserted: graygate's leave-one-out mean
//! on the message lines (>= 0.95) and its worst system there (>= 0.85); and, per addition, the
//! ablation rule of docs/analysis.md: with the addition off, no system's input scores more than
//! 0.02 better, and more inputs score worse than better.
//! Without the data the test fails under CI=true and is skipped (with a notice) elsewhere.

use graygate::logs::brain::{Brain, Config, grouping_accuracy};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[path = "support/loghub.rs"]
mod support;
#[path = "../eval/src/targets.rs"]
#[allow(dead_code)]
mod targets;
use support::{SYSTEMS, load_with_templates, raw};

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn data_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(!in_ci(), "CI=true but {} is missing", dir.display());
    eprintln!(
        "notice: {} not found; skipping the loghub accuracy test",
        dir.display()
    );
    None
}

/// The thresholds cross-validation chooses from (the values Brain's authors use across loghub).
const GRID: [usize; 5] = [2, 3, 4, 5, 6];

fn collapse(t: &str) -> String {
    t.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One system: message lines with their event and template, and the raw lines.
struct System {
    rows: Vec<(String, String, String)>,
    raw: Vec<String>,
}

fn load(dir: &std::path::Path) -> Vec<System> {
    SYSTEMS
        .iter()
        .map(|s| {
            let rows = load_with_templates(dir, s);
            let raw = raw(dir, s);
            assert_eq!(rows.len(), raw.len(), "{s}: one raw line per labelled row");
            System { rows, raw }
        })
        .collect()
}

/// Grouping accuracy of `lines` against the labels, and the share of lines whose template text
/// is the labelled one (parsing accuracy, whitespace folded).
fn score(lines: &[&str], rows: &[(String, String, String)], cfg: Config) -> (f64, f64) {
    let mut brain = Brain::new(cfg);
    let ids: Vec<u32> = lines.iter().map(|l| brain.add(l)).collect();
    let g = brain.settle();
    let predicted: Vec<u32> = ids.iter().map(|id| g.event(*id)).collect();
    let truth: Vec<&str> = rows.iter().map(|(_, e, _)| e.as_str()).collect();
    let ga = grouping_accuracy(&predicted, &truth);
    let right = predicted
        .iter()
        .zip(rows)
        .filter(|(id, (_, _, t))| collapse(g.template(**id)) == collapse(t))
        .count();
    (ga, right as f64 / rows.len().max(1) as f64)
}

/// (message GA, message PA, raw GA) of one system.
fn score_both(sys: &System, cfg: Config) -> (f64, f64, f64) {
    let content: Vec<&str> = sys.rows.iter().map(|(c, _, _)| c.as_str()).collect();
    let raw: Vec<&str> = sys.raw.iter().map(String::as_str).collect();
    let (ga, pa) = score(&content, &sys.rows, cfg);
    let (raw_ga, _) = score(&raw, &sys.rows, cfg);
    (ga, pa, raw_ga)
}

/// The grid index with the best mean grouping accuracy on `systems` (ties: the earlier one).
fn choose(table: &[Vec<f64>], systems: &[usize]) -> usize {
    let mean = |g: usize| systems.iter().map(|s| table[g][*s]).sum::<f64>() / systems.len() as f64;
    (0..table.len()).fold(0, |best, g| {
        if mean(g) > mean(best) + 1e-12 {
            g
        } else {
            best
        }
    })
}

const HALVES: [[usize; 4]; 2] = [[0, 2, 4, 6], [1, 3, 5, 7]];

/// What cross-validation chose and measured.
struct Cv {
    /// Per system: the accuracy with the setting chosen on the other half.
    halves: Vec<f64>,
    /// Per system: the accuracy with the setting chosen on the other seven systems.
    loso: Vec<f64>,
    /// The setting chosen on each half.
    chosen: [usize; 2],
    /// Per system: the setting chosen without it.
    loso_chosen: Vec<usize>,
}

fn cross_validate(table: &[Vec<f64>]) -> Cv {
    let mut halves = vec![0.0; SYSTEMS.len()];
    let mut chosen = [0; 2];
    for (k, tune) in HALVES.iter().enumerate() {
        let g = choose(table, tune);
        chosen[k] = g;
        for s in &HALVES[1 - k] {
            halves[*s] = table[g][*s];
        }
    }
    let loso_chosen: Vec<usize> = (0..SYSTEMS.len())
        .map(|s| {
            let others: Vec<usize> = (0..SYSTEMS.len()).filter(|o| *o != s).collect();
            choose(table, &others)
        })
        .collect();
    let loso = loso_chosen
        .iter()
        .enumerate()
        .map(|(s, g)| table[*g][s])
        .collect();
    Cv {
        halves,
        loso,
        chosen,
        loso_chosen,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// A parser's settings and its accuracy table[g][s] over them.
type Scores = (Vec<String>, Vec<Vec<f64>>);

/// The reference parsers' accuracy over their own grids, by name.
fn anchors(dir: &std::path::Path) -> Option<BTreeMap<String, Scores>> {
    let mut args = vec![dir.as_os_str().to_os_string()];
    args.extend(SYSTEMS.iter().map(Into::into));
    let v = support::run_reference("anchors.py", &args)?;
    let mut res = BTreeMap::new();
    for (name, rows) in v.as_object().expect("an object of parsers") {
        let rows = rows.as_array().expect("a list of settings");
        let settings = rows
            .iter()
            .map(|r| r["setting"].as_str().unwrap_or_default().to_string())
            .collect();
        let table = rows
            .iter()
            .map(|r| {
                SYSTEMS
                    .iter()
                    .map(|s| r["ga"][*s].as_f64().unwrap_or(0.0))
                    .collect()
            })
            .collect();
        res.insert(name.clone(), (settings, table));
    }
    Some(res)
}

fn shipped(threshold: usize) -> Config {
    Config {
        threshold,
        ..Config::default()
    }
}

#[test]
fn cross_validated_grouping_accuracy_on_loghub_beside_the_reference_parsers() {
    let Some(dir) = data_dir() else { return };
    let data = load(&dir);
    // scored[g][s] = (message GA, message PA, raw GA) of grid point g on system s.
    let scored: Vec<Vec<(f64, f64, f64)>> = GRID
        .iter()
        .map(|t| {
            data.iter()
                .map(|sys| score_both(sys, shipped(*t)))
                .collect()
        })
        .collect();
    // The choice is made on both inputs alike.
    let table: Vec<Vec<f64>> = scored
        .iter()
        .map(|r| r.iter().map(|x| (x.0 + x.2) / 2.0).collect())
        .collect();
    let cv = cross_validate(&table);
    for (k, g) in cv.chosen.iter().enumerate() {
        println!(
            "graygate tuned on {:?}: threshold {}",
            HALVES[k].iter().map(|s| SYSTEMS[*s]).collect::<Vec<_>>(),
            GRID[*g]
        );
    }
    for (s, system) in SYSTEMS.iter().enumerate() {
        println!(
            "graygate without {system}: threshold {}",
            GRID[cv.loso_chosen[s]]
        );
    }
    let pick = |chosen: &dyn Fn(usize) -> usize, f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
        (0..SYSTEMS.len())
            .map(|s| f(&scored[chosen(s)][s]))
            .collect()
    };
    let half_of = |s: usize| cv.chosen[usize::from(!HALVES[1].contains(&s))];
    let halves_msg = pick(&half_of, |x| x.0);
    let loso_msg = pick(&|s| cv.loso_chosen[s], |x| x.0);
    let halves_raw = pick(&half_of, |x| x.2);
    let loso_raw = pick(&|s| cv.loso_chosen[s], |x| x.2);
    let pa_loso = pick(&|s| cv.loso_chosen[s], |x| x.1);
    let mut columns: Vec<(String, Vec<f64>, Vec<f64>)> =
        vec![("graygate".into(), halves_msg.clone(), loso_msg.clone())];
    if let Some(refs) = anchors(&dir) {
        for (name, (settings, t)) in refs {
            let cv = cross_validate(&t);
            println!(
                "{name}: chosen on the halves: {:?} / {:?}",
                settings[cv.chosen[0]], settings[cv.chosen[1]]
            );
            for (g, row) in t.iter().enumerate() {
                println!("{name} {} (in-sample): mean {:.3}", settings[g], mean(row));
            }
            columns.push((name, cv.halves, cv.loso));
        }
    }
    println!("Message lines:");
    print!("| system |");
    for (name, _, _) in &columns {
        print!(" {name} (halves) | {name} (LOSO) |");
    }
    println!(" graygate PA (LOSO) |");
    for (s, system) in SYSTEMS.iter().enumerate() {
        print!("| {system} |");
        for (_, h, l) in &columns {
            print!(" {:.3} | {:.3} |", h[s], l[s]);
        }
        println!(" {:.3} |", pa_loso[s]);
    }
    print!("| **mean** |");
    for (_, h, l) in &columns {
        print!(" {:.3} | {:.3} |", mean(h), mean(l));
    }
    println!(" {:.3} |", mean(&pa_loso));
    println!("Raw lines (header and all): graygate (halves) | graygate (LOSO)");
    for (s, system) in SYSTEMS.iter().enumerate() {
        println!("| {system} | {:.3} | {:.3} |", halves_raw[s], loso_raw[s]);
    }
    println!(
        "| **mean** | {:.3} | {:.3} |",
        mean(&halves_raw),
        mean(&loso_raw)
    );
    for (t, row) in GRID.iter().zip(&scored) {
        let msg: Vec<f64> = row.iter().map(|x| x.0).collect();
        let raw: Vec<f64> = row.iter().map(|x| x.2).collect();
        println!(
            "graygate threshold {t} (in-sample): messages mean {:.3} (worst {:.3}), raw mean {:.3} (worst {:.3})",
            mean(&msg),
            msg.iter().copied().fold(1.0, f64::min),
            mean(&raw),
            raw.iter().copied().fold(1.0, f64::min)
        );
    }
    let worst = loso_msg.iter().copied().fold(1.0, f64::min);
    assert!(
        mean(&halves_msg) >= targets::LOGHUB_MEAN,
        "mean grouping accuracy on the halves not used for tuning is {:.3}, below {}",
        mean(&halves_msg),
        targets::LOGHUB_MEAN
    );
    assert!(
        mean(&loso_msg) >= targets::LOGHUB_MEAN,
        "leave-one-system-out mean {:.3} is below {}",
        mean(&loso_msg),
        targets::LOGHUB_MEAN
    );
    assert!(
        worst >= targets::LOGHUB_WORST,
        "a system scores {worst:.3} left out, below {}",
        targets::LOGHUB_WORST
    );
}

/// An addition to the published parser: its name and how to turn it off.
type Addition = (&'static str, fn(Config) -> Config);

/// The additions to the published parser.
fn additions() -> Vec<Addition> {
    vec![
        ("statement sources", |c| Config {
            by_source: false,
            ..c
        }),
        ("calendar names", |c| Config {
            calendar: false,
            ..c
        }),
    ]
}

#[test]
fn every_addition_to_brain_helps_more_systems_than_it_costs() {
    let Some(dir) = data_dir() else { return };
    let data = load(&dir);
    let on = Config::default();
    let with: Vec<(f64, f64, f64)> = data.iter().map(|sys| score_both(sys, on)).collect();
    println!("Shipped: threshold {}", on.threshold);
    print!("| system |");
    for (name, _) in additions() {
        print!(" messages: {name} off / on | raw: {name} off / on |");
    }
    println!();
    let mut verdicts = Vec::new();
    let mut rows: Vec<String> = SYSTEMS.iter().map(|s| format!("| {s} |")).collect();
    for (name, off) in additions() {
        let without: Vec<(f64, f64, f64)> =
            data.iter().map(|sys| score_both(sys, off(on))).collect();
        let (mut better, mut worse, mut worst_cost) = (0, 0, 0.0f64);
        for (s, (w, o)) in with.iter().zip(&without).enumerate() {
            rows[s].push_str(&format!(
                " {:.3} / {:.3} | {:.3} / {:.3} |",
                o.0, w.0, o.2, w.2
            ));
            for d in [w.0 - o.0, w.2 - o.2] {
                better += usize::from(d > 0.0005);
                worse += usize::from(d < -0.0005);
                worst_cost = worst_cost.max(-d);
            }
        }
        verdicts.push((name, better, worse, worst_cost));
    }
    for r in rows {
        println!("{r}");
    }
    for (name, better, worse, cost) in verdicts {
        println!("{name}: better on {better} inputs, worse on {worse}, largest cost {cost:.3}");
        assert!(
            cost <= targets::LOGHUB_ADDITION_COST,
            "{name} costs an input {cost:.3}, more than {}",
            targets::LOGHUB_ADDITION_COST
        );
        assert!(
            better > worse,
            "{name} helps {better} inputs and hurts {worse}"
        );
    }
}
