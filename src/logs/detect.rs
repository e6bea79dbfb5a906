//! Log detectors: templates that are new in the change group, and templates whose per-pod rate
//! surges in the change group compared with the control group.

use super::drain::{Config, Miner};
use crate::api::{Finding, LogAnalysisSpec, Verdict};
use crate::util::trim_to;
use regex::Regex;
use statrs::distribution::{Binomial, DiscreteCDF};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// Settings with defaults filled in.
#[derive(Clone, Debug)]
pub struct Params {
    /// Times a template must appear in the change group to count as new.
    pub min_count: u64,
    /// Per-pod rate ratio (change over control) that makes a surge.
    pub ratio: f64,
    /// Significance level of the surge test.
    pub alpha: f64,
    /// Lines to ignore.
    pub ignore: Vec<Regex>,
}

impl Params {
    /// From the spec, with defaults (invalid ignore patterns were rejected by validation).
    pub fn from_spec(s: &LogAnalysisSpec) -> Params {
        Params {
            min_count: u64::from(s.min_count.unwrap_or(3)),
            ratio: s.ratio.unwrap_or(3.0),
            alpha: s.alpha.unwrap_or(0.01),
            ignore: s.ignore.iter().filter_map(|r| Regex::new(r).ok()).collect(),
        }
    }
}

/// The lines of one group: per pod, its lines in the window.
#[derive(Clone, Debug, Default)]
pub struct LogGroup {
    /// Pod → lines.
    pub pods: BTreeMap<String, Vec<String>>,
}

impl LogGroup {
    fn lines(&self) -> impl Iterator<Item = &String> {
        self.pods.values().flatten()
    }
    fn pod_count(&self) -> usize {
        self.pods.len()
    }
}

static ERROR_LEVEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b(ERROR|FATAL|CRITICAL|PANIC|panic|Traceback|[A-Za-z]*Exception|[A-Za-z]*Error:)")
        .unwrap_or_else(|_| unreachable_regex())
});
static SECRETS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        (r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+", "$1 ***"),
        (r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)(\s*[=:]\s*)[^\s,;&]+", "$1$2***"),
        (r"://([^/:@\s]+):([^@\s]+)@", "://$1:***@"),
    ]
    .into_iter()
    .filter_map(|(r, with)| Regex::new(r).ok().map(|re| (re, with)))
    .collect()
});

fn unreachable_regex() -> Regex {
    // A pattern that never matches; the literal patterns above are valid, this is only a fallback.
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| std::process::abort())
}

/// Whether a line is at error level (ERROR, FATAL, exceptions, panics, tracebacks).
pub fn is_error_level(line: &str) -> bool {
    ERROR_LEVEL.is_match(line)
}

/// Mask obvious secrets (bearer tokens, passwords, keys, credentials in URLs) and trim to 300.
pub fn safe_example(line: &str) -> String {
    let mut s = line.to_string();
    for (re, with) in SECRETS.iter() {
        s = re.replace_all(&s, *with).into_owned();
    }
    trim_to(s.trim(), 300)
}

/// P(X >= k) for X ~ Binomial(n, p).
fn binomial_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => (1.0 - b.cdf(k - 1)).clamp(0.0, 1.0),
        Err(_) => 1.0,
    }
}

struct Counts {
    change: u64,
    control: u64,
    before: u64,
    error_level: bool,
    example: Option<String>,
}

/// Compare the change group's log templates with the control group's (same window) and the
/// control pods' lines before the change. Returns the findings, failures first.
pub fn detect(
    change: &LogGroup,
    control: &LogGroup,
    before: &LogGroup,
    p: &Params,
) -> Vec<Finding> {
    let mut miner = Miner::new(Config::default());
    let mut counts: BTreeMap<u32, Counts> = BTreeMap::new();
    let keep = |l: &str| !p.ignore.iter().any(|re| re.is_match(l));
    let mut add = |miner: &mut Miner, line: &str, which: u8| {
        if !keep(line) {
            return;
        }
        let id = miner.add(line);
        let c = counts.entry(id).or_insert(Counts {
            change: 0,
            control: 0,
            before: 0,
            error_level: false,
            example: None,
        });
        match which {
            0 => c.before += 1,
            1 => c.control += 1,
            _ => {
                c.change += 1;
                if c.example.is_none() {
                    c.example = Some(line.to_string());
                }
            }
        }
        c.error_level |= is_error_level(line);
    };
    for l in before.lines() {
        add(&mut miner, l, 0);
    }
    for l in control.lines() {
        add(&mut miner, l, 1);
    }
    for l in change.lines() {
        add(&mut miner, l, 2);
    }
    let n_change = change.pod_count().max(1) as f64;
    let n_control = control.pod_count() as f64;
    let mut findings = Vec::new();
    for (id, c) in &counts {
        if c.change == 0 {
            continue;
        }
        let template = trim_to(&miner.template(*id), 200);
        let example = c.example.as_deref().map(safe_example).unwrap_or_default();
        let per_change = c.change as f64 / n_change;
        let needed = if c.error_level { 1 } else { p.min_count };
        if c.control == 0 && c.before == 0 {
            if c.change >= needed {
                findings.push(Finding {
                    metric: template,
                    detector: "new-template".into(),
                    groups: "change vs control and before".into(),
                    outcome: Some(Verdict::Fail),
                    score: Some(c.change as f64),
                    threshold: Some(needed as f64),
                    explanation: format!(
                        "new{}: {} times in {} change pod(s) ({:.1}/pod), never in {} control pod(s) nor before the change; e.g. {example:?}",
                        if c.error_level { " error-level template" } else { " template" },
                        c.change,
                        n_change,
                        per_change,
                        n_control
                    ),
                    suppressed_by: None,
                });
            }
            continue;
        }
        if n_control == 0.0 || c.change < p.min_count {
            continue;
        }
        let per_control = c.control as f64 / n_control;
        let ratio = if per_control > 0.0 {
            per_change / per_control
        } else {
            f64::INFINITY
        };
        // Same window for both groups: under no change, a line falls in the change group with
        // probability equal to its share of pods.
        let share = n_change / (n_change + n_control);
        let p_value = binomial_sf(c.change, c.change + c.control, share);
        if ratio >= p.ratio && p_value < p.alpha {
            findings.push(Finding {
                metric: template,
                detector: "surge".into(),
                groups: "change vs control".into(),
                outcome: Some(Verdict::Fail),
                score: Some(p_value),
                threshold: Some(p.alpha),
                explanation: format!(
                    "{:.1}/pod in the change group vs {:.1}/pod in control ({}×), binomial p={}; e.g. {example:?}",
                    per_change,
                    per_control,
                    if ratio.is_finite() { format!("{ratio:.1}") } else { "∞".into() },
                    crate::detect::fmt_num(p_value)
                ),
                suppressed_by: None,
            });
        }
    }
    findings.sort_by(|a, b| {
        b.score
            .partial_cmp(&a.score)
            .unwrap_or(std::cmp::Ordering::Equal)
            .reverse()
    });
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pods: &[(&str, Vec<String>)]) -> LogGroup {
        LogGroup {
            pods: pods
                .iter()
                .map(|(p, l)| (p.to_string(), l.clone()))
                .collect(),
        }
    }

    fn requests(n: usize, pod: &str) -> Vec<String> {
        (0..n).map(|i| format!("INFO [http] GET /api/orders/{i} status=200 duration_ms={} request_id=ab{i}cd pod={pod}", i % 50)).collect()
    }

    fn warns(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| {
                format!(
                    "WARN [upstream] slow call to inventory-svc took {}ms request_id=x{i}",
                    500 + i
                )
            })
            .collect()
    }

    fn params() -> Params {
        Params::from_spec(&LogAnalysisSpec::default())
    }

    #[test]
    fn healthy_change_with_varied_ids_has_no_finding() {
        let change = group(&[("c1", [requests(200, "c1"), warns(4)].concat())]);
        let control = group(&[
            ("k1", [requests(200, "k1"), warns(3)].concat()),
            ("k2", [requests(210, "k2"), warns(5)].concat()),
        ]);
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
    }

    #[test]
    fn a_new_exception_is_found_even_once() {
        let mut lines = requests(100, "c1");
        lines.push(
            "java.lang.IllegalStateException: inventory reservation missing for order 4821".into(),
        );
        let change = group(&[("c1", lines)]);
        let control = group(&[("k1", requests(100, "k1"))]);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].detector, "new-template");
        assert!(
            f[0].metric.contains("IllegalStateException"),
            "{}",
            f[0].metric
        );
    }

    #[test]
    fn a_template_seen_before_the_change_is_not_new() {
        let line = || vec!["INFO [cron] nightly compaction started".to_string(); 5];
        let change = group(&[("c1", [requests(50, "c1"), line()].concat())]);
        let control = group(&[("k1", requests(50, "k1"))]);
        let before = group(&[("k1", line())]);
        assert!(
            detect(&change, &control, &LogGroup::default(), &params())
                .iter()
                .any(|f| f.detector == "new-template")
        );
        assert!(detect(&change, &control, &before, &params()).is_empty());
    }

    #[test]
    fn a_warning_ten_times_as_often_surges() {
        let change = group(&[("c1", [requests(200, "c1"), warns(40)].concat())]);
        let control = group(&[
            ("k1", [requests(200, "k1"), warns(4)].concat()),
            ("k2", [requests(200, "k2"), warns(4)].concat()),
        ]);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "surge");
        assert!(
            f[0].explanation.contains("40.0/pod"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn secrets_are_masked_in_examples() {
        assert_eq!(
            safe_example("auth failed password=hunter2 user=bob"),
            "auth failed password=*** user=bob"
        );
        assert_eq!(
            safe_example("Authorization: Bearer eyJhbGciOi.x.y"),
            "Authorization: Bearer ***"
        );
        assert_eq!(
            safe_example("GET https://admin:s3cret@db.local/x"),
            "GET https://admin:***@db.local/x"
        );
        assert_eq!(safe_example(&"x".repeat(400)).chars().count(), 300);
    }
}
