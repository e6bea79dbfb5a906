//! Log detectors: templates that are new in the change group, templates whose per-pod rate
//! surges in the change group compared with the control group, and templates the control group
//! writes steadily that the change group stopped writing.

use super::brain::{Brain, Config};
use crate::api::{Finding, LogAnalysisSpec, Verdict};
use crate::util::trim_to;
use regex::Regex;
use statrs::function::beta::checked_beta_reg;
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

/// The lines of one group: per pod, its lines in the window, and how long each pod was watched.
#[derive(Clone, Debug, Default)]
pub struct LogGroup {
    /// Pod → lines.
    pub pods: BTreeMap<String, Vec<String>>,
    /// Pod → seconds of the pod's life the lines cover. A pod without an entry counts as one
    /// unit, as long as every other such pod (the groups of a log file compared with another).
    pub seconds: BTreeMap<String, f64>,
    /// Pod → when each of its lines was written, in seconds since the start of the time in
    /// `seconds` (one entry per line, in order), when the log carried timestamps. Known for the
    /// reference before the change, it shows how much a template's count varies from one window
    /// to the next in healthy pods (see [`dispersion`]).
    pub at: BTreeMap<String, Vec<f64>>,
}

impl LogGroup {
    fn pod_count(&self) -> usize {
        self.pods.len()
    }
    /// Pod time observed: seconds where known, else one unit a pod; `unit` is the length of one
    /// unit in seconds (the mean of the known durations, or 1).
    fn exposure(&self, unit: f64) -> f64 {
        // A float sum starts at -0.0: an empty group would read "-0.0 pod-minutes".
        self.pods
            .keys()
            .map(|p| self.seconds.get(p).map_or(unit, |s| s.max(0.0)))
            .fold(0.0, |a, b| a + b)
    }
}

/// The length of one unit of pod time for pods whose duration is not known: the mean of the
/// known ones, so groups with and without durations stay comparable (1 when none is known).
fn unit_of(groups: &[&LogGroup]) -> f64 {
    let known: Vec<f64> = groups
        .iter()
        .flat_map(|g| g.seconds.values().copied())
        .filter(|s| *s > 0.0)
        .collect();
    if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    }
}

/// Error level as people and logging libraries write it: the words (ERROR, FATAL, …), exceptions
/// and tracebacks, and the severity field of structured logs — logfmt `level=error`, JSON
/// `"level":"error"` / `"severity":"ERROR"` (zap, logrus, slog, bunyan-style names), klog's
/// `E1201 10:00:00.000000` header and capnslog's ` E | `.
static ERROR_LEVEL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(concat!(
        r"\b(ERROR|FATAL|CRITICAL|PANIC|panic|Traceback|[A-Za-z]*Exception|[A-Za-z]*Error:)",
        r#"|(?i:\b(level|lvl|severity)"?\s*[=:]\s*"?(error|err|fatal|crit|critical|panic|alert|emerg)\b)"#,
        r"|^[EF]\d{4} \d\d:\d\d:\d\d",
        r"|^\S+ \S+ [EC] \| ",
    ))
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

/// Where a log statement sits in its program's source, as loggers write it beside the message:
/// klog's `replica_set.go:640]`, zap's `"caller":"etcdserver/server.go:1200"`, slog's and
/// logfmt's `source=scrape.go:1400`, a Java frame's `(OrderService.java:88)`.
static CALL_SITE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r#"(?:^|[\s\[("'=])([A-Za-z0-9_][A-Za-z0-9_./-]*\.(?:go|py|java|kt|scala|rs|js|mjs|ts|c|cc|cpp|h|hpp|rb|cs|php|ex|exs|erl|swift)):(\d+)\b"#,
    )
    .unwrap_or_else(|_| unreachable_regex())
});

/// The source file and line a log line names as its own (the first one), if any.
pub fn call_site(line: &str) -> Option<&str> {
    let c = CALL_SITE.captures(line)?;
    let (file, number) = (c.get(1)?, c.get(2)?);
    line.get(file.start()..number.end())
}

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

/// P(X >= k) for X ~ Binomial(n, p), through the regularized incomplete beta function
/// I_p(k, n − k + 1), which also takes the fractional counts of the quasi-binomial test (counts
/// divided by their dispersion).
pub fn binomial_sf(k: f64, n: f64, p: f64) -> f64 {
    if k <= 0.0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    checked_beta_reg(k, n - k + 1.0, p.clamp(0.0, 1.0)).map_or(1.0, |v| v.clamp(0.0, 1.0))
}

/// Pearson's index of dispersion of window counts: sum((x − mean)²) / mean over k − 1 degrees
/// of freedom, the quasi-Poisson estimate of how much more (or less) the counts vary than the
/// counts of independent events would (1 for a Poisson process). `counts` holds the non-zero
/// windows; `windows` is how many windows there were in all (the others counted zero). None with
/// fewer than two windows or no events.
pub fn dispersion(counts: &[f64], windows: usize) -> Option<f64> {
    if windows < 2 || counts.len() > windows {
        return None;
    }
    let k = windows as f64;
    let mean = counts.iter().sum::<f64>() / k;
    if mean <= 0.0 {
        return None;
    }
    let zeros = (windows - counts.len()) as f64;
    let squares = counts.iter().map(|x| (x - mean).powi(2)).sum::<f64>() + zeros * mean * mean;
    Some(squares / mean / (k - 1.0))
}

/// A template's lines before the change, in control and in the change group.
#[derive(Default)]
struct Counts {
    n: [u64; 3],
    /// Episodes in the change group: runs of the template's lines written one after another by
    /// one pod count once (see `detect`).
    episodes: u64,
    error_level: bool,
    example: Option<String>,
    /// The call sites the change group's lines of this template name, and whether some line
    /// named none.
    sites: std::collections::BTreeSet<String>,
    unsited: bool,
    /// Episodes in the control group, and the call sites its lines name (and whether some
    /// named none): the evidence for a statement that stopped.
    control_episodes: u64,
    control_sites: std::collections::BTreeSet<String>,
    control_unsited: bool,
}

/// Compare the change group's log templates with the reference: the control group (same window)
/// and the control pods' lines before the change. Every comparison is per unit of opportunity:
/// rates per second of pod time (so a longer window or more pods on one side make no surge), and
/// a surge must also hold per log line (so more traffic on one side makes none). Returns the
/// findings, failures first.
pub fn detect(
    change: &LogGroup,
    control: &LogGroup,
    before: &LogGroup,
    p: &Params,
) -> Vec<Finding> {
    let mut parser = Brain::new(Config::default());
    let mut counts: BTreeMap<u32, Counts> = BTreeMap::new();
    let keep = |l: &str| !p.ignore.iter().any(|re| re.is_match(l));
    let mut totals = [0u64; 3];
    // The change group's template ids per pod in log order, to count episodes once the
    // templates have settled.
    let mut sequence: Vec<Vec<u32>> = Vec::new();
    // Lines per call site: [before, control, change].
    let mut site_counts: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut add = |parser: &mut Brain, pod: &str, line: &str, which: usize| {
        if !keep(line) {
            return None;
        }
        totals[which] += 1;
        // The name of the pod that wrote a line is a value in it: pods of the change group have
        // names the reference never had.
        let id = match mask_name(line, pod) {
            Some(masked) => parser.add(&masked),
            None => parser.add(line),
        };
        let c = counts.entry(id).or_default();
        c.n[which] += 1;
        if which == 2 && c.example.is_none() {
            c.example = Some(line.to_string());
        }
        c.error_level |= is_error_level(line);
        match call_site(line) {
            Some(site) => {
                site_counts.entry(site.to_string()).or_default()[which] += 1;
                if which == 2 {
                    c.sites.insert(site.to_string());
                }
                if which == 1 {
                    c.control_sites.insert(site.to_string());
                }
            }
            None => {
                c.unsited |= which == 2;
                c.control_unsited |= which == 1;
            }
        }
        Some(id)
    };
    // The reference's lines with their times (where known) and template ids, per pod: how much
    // each template's count varies from window to window before the change.
    let mut before_at: Vec<(f64, Vec<(f64, u32)>)> = Vec::new();
    for (pod, lines) in &before.pods {
        let times = before.at.get(pod).filter(|t| t.len() == lines.len());
        let mut timed = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if let (Some(id), Some(t)) = (add(&mut parser, pod, l, 0), times) {
                timed.push((t[i], id));
            }
        }
        if times.is_some() {
            before_at.push((before.seconds.get(pod).copied().unwrap_or(0.0), timed));
        }
    }
    let mut control_sequence: Vec<Vec<u32>> = Vec::new();
    for (pod, lines) in &control.pods {
        control_sequence.push(
            lines
                .iter()
                .filter_map(|l| add(&mut parser, pod, l, 1))
                .collect(),
        );
    }
    for (pod, lines) in &change.pods {
        sequence.push(
            lines
                .iter()
                .filter_map(|l| add(&mut parser, pod, l, 2))
                .collect(),
        );
    }
    // Events are settled once every line is in: count by event.
    let events = parser.settle();
    let mut merged: BTreeMap<u32, Counts> = BTreeMap::new();
    for (id, c) in counts {
        let m = merged.entry(events.event(id)).or_default();
        for k in 0..3 {
            m.n[k] += c.n[k];
        }
        m.error_level |= c.error_level;
        if m.example.is_none() {
            m.example = c.example;
        }
        m.sites.extend(c.sites);
        m.unsited |= c.unsited;
        m.control_sites.extend(c.control_sites);
        m.control_unsited |= c.control_unsited;
    }
    for (seqs, control) in [(&sequence, false), (&control_sequence, true)] {
        for ids in seqs {
            let mut last = None;
            for id in ids {
                let id = events.event(*id);
                if last != Some(id)
                    && let Some(m) = merged.get_mut(&id)
                {
                    if control {
                        m.control_episodes += 1;
                    } else {
                        m.episodes += 1;
                    }
                }
                last = Some(id);
            }
        }
    }
    let unit = unit_of(&[change, control, before]);
    let time = Exposure {
        change: change.exposure(unit),
        control: control.exposure(unit),
        before: before.exposure(unit),
    };
    let n_change = change.pod_count().max(1) as f64;
    let n_control = control.pod_count() as f64;
    // The reference cut into windows as long as a change pod was watched: template → window →
    // count (windows without the template are left out), and how many windows there were.
    let width = time.change / n_change;
    let mut windows: BTreeMap<u32, BTreeMap<usize, u64>> = BTreeMap::new();
    let mut window_count = 0usize;
    if width > 0.0 {
        for (seconds, timed) in &before_at {
            let whole = (seconds / width).floor().max(0.0) as usize;
            for (t, id) in timed {
                let w = (t / width).floor();
                if w >= 0.0 && (w as usize) < whole {
                    *windows
                        .entry(events.event(*id))
                        .or_default()
                        .entry(window_count + w as usize)
                        .or_default() += 1;
                }
            }
            window_count += whole;
        }
    }
    let minutes = |s: f64| s / 60.0;
    let mut findings = Vec::new();
    for (id, c) in &merged {
        let [mut c_before, mut c_control, mut c_change] = c.n;
        if c_change == 0 {
            if let Some(f) = stopped(
                c,
                id,
                &events,
                &site_counts,
                &windows,
                window_count,
                &time,
                &totals,
                p,
            ) {
                findings.push(f);
            }
            continue;
        }
        // A template the reference never wrote, whose every line names a call site the
        // reference's lines also name, is no new message: it is the same log statement with a
        // value the template parser took for a word (`… for group resource pods` where the
        // reference had `replicasets`). It is judged as that statement, against the reference's
        // lines from the same sites, all its wordings counted. A rebuilt binary moves its line
        // numbers, so this holds only where the code at that line is the same.
        let mut statement = None;
        if c_control == 0 && c_before == 0 && !c.unsited && !c.sites.is_empty() {
            let known: Option<Vec<[u64; 3]>> = c
                .sites
                .iter()
                .map(|s| site_counts.get(s).copied().filter(|k| k[0] + k[1] > 0))
                .collect();
            if let Some(known) = known {
                c_before = known.iter().map(|k| k[0]).sum();
                c_control = known.iter().map(|k| k[1]).sum();
                c_change = known.iter().map(|k| k[2]).sum();
                statement = Some(c.sites.iter().cloned().collect::<Vec<_>>().join(", "));
            }
        }
        let template = trim_to(events.template(*id), 200);
        let example = c.example.as_deref().map(safe_example).unwrap_or_default();
        let needed = if c.error_level { 1 } else { p.min_count };
        let reference = time.control + time.before;
        if c_control == 0 && c_before == 0 {
            // Never in the reference: new only if the reference had a fair chance to show it.
            // Were the template as frequent per pod-second there as in the change group, every
            // one of its occurrences would fall in the change group with this probability. An
            // occurrence is an episode, not a line: lines a pod writes one after another with
            // the same template are one event (a stalled disk makes etcd warn about every
            // request waiting on it at once), and the product below holds only for
            // independent occurrences. An error-level template (rare in healthy software, and
            // the first sign of most bad releases) needs only a reference watched at least as
            // long as the change group (p <= 1/2 for one episode); any other needs p < alpha.
            let share = time.change / (time.change + reference);
            let p_value = share.powi(c.episodes.clamp(1, i32::MAX as u64) as i32);
            let level = if c.error_level { 0.5 } else { p.alpha };
            let fair = if c.error_level {
                p_value <= level
            } else {
                p_value < level
            };
            if c_change >= needed && fair {
                findings.push(Finding {
                    metric: template,
                    detector: "new-template".into(),
                    groups: "change vs control and before".into(),
                    outcome: Some(Verdict::Fail),
                    score: Some(p_value),
                    threshold: Some(level),
                    explanation: format!(
                        "new{}: {} times{} in {} change pod(s) over {:.1} pod-minutes, never in {} control pod(s) over {:.1} pod-minutes nor before the change ({:.1} pod-minutes); as often there, it would have shown with p={}; e.g. {example:?}",
                        if c.error_level { " error-level template" } else { " template" },
                        c_change,
                        if c.episodes < c_change {
                            let s = if c.episodes == 1 { "" } else { "s" };
                            format!(" ({} episode{s})", c.episodes)
                        } else {
                            String::new()
                        },
                        n_change,
                        minutes(time.change),
                        n_control,
                        minutes(time.control),
                        minutes(time.before),
                        crate::detect::fmt_num(p_value)
                    ),
                    suppressed_by: None,
                });
            }
            continue;
        }
        if n_control == 0.0 || c_change < p.min_count {
            continue;
        }
        // Per pod-second, against the control group of the same window; a template the control
        // pods did not write in this window but did before the change is compared with both.
        let (c_ref, t_ref, lines_ref) = if c_control > 0 {
            (c_control, time.control, totals[1])
        } else {
            (c_before, reference, totals[0] + totals[1])
        };
        let rate_change = c_change as f64 / time.change;
        let rate_control = c_ref as f64 / t_ref;
        let ratio = if rate_control > 0.0 {
            rate_change / rate_control
        } else {
            f64::INFINITY
        };
        // Lines of a template come in bursts as often as one by one (a retry loop, a cache
        // refill): where the control pods' own windows before the change show their counts
        // varying more than independent events would, each count is worth that many times
        // fewer independent events (the quasi-binomial test).
        let phi = windows
            .get(id)
            .filter(|_| statement.is_none())
            .and_then(|w| {
                let counts: Vec<f64> = w.values().map(|&c| c as f64).collect();
                dispersion(&counts, window_count)
            })
            .unwrap_or(1.0)
            .max(1.0);
        let (k, n) = (c_change as f64 / phi, (c_change + c_ref) as f64 / phi);
        let share = time.change / (time.change + t_ref);
        let p_time = binomial_sf(k, n, share);
        // Per log line: the template's lines against the group's other lines, so that more
        // requests on one side (more lines of every kind) are no surge.
        let other_change = totals[2].saturating_sub(c_change) as f64;
        let other_ref = lines_ref.saturating_sub(c_ref) as f64;
        let line_share = if other_change + other_ref > 0.0 {
            other_change / (other_change + other_ref)
        } else {
            share
        };
        let p_line = binomial_sf(k, n, line_share);
        let line_ratio = if other_change > 0.0 && other_ref > 0.0 {
            (c_change as f64 / other_change) / (c_ref as f64 / other_ref)
        } else {
            f64::INFINITY
        };
        let p_value = p_time.max(p_line);
        if ratio >= p.ratio && line_ratio >= p.ratio && p_value < p.alpha {
            findings.push(Finding {
                metric: template,
                detector: "surge".into(),
                groups: "change vs control".into(),
                outcome: Some(Verdict::Fail),
                score: Some(p_value),
                threshold: Some(p.alpha),
                explanation: format!(
                    "{}{:.1}/pod-minute in the change group vs {:.1}/pod-minute in control ({}×; per log line {}×), {}binomial p={}; e.g. {example:?}",
                    statement.as_deref().map_or(String::new(), |s| format!(
                        "a new wording of the log statement at {s} (counted with its lines there): "
                    )),
                    rate_change * 60.0,
                    rate_control * 60.0,
                    fmt_ratio(ratio),
                    fmt_ratio(line_ratio),
                    if phi > 1.0 {
                        format!(
                            "its count varied {phi:.1}× as much as chance between {:.0}-second windows of the control pods before the change, quasi-",
                            width
                        )
                    } else {
                        String::new()
                    },
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

/// `line` with every whole occurrence of `name` (not part of a longer name: no letter, digit,
/// `-`, `.` or `_` on either side) replaced by `<*>`; None when there is none.
fn mask_name(line: &str, name: &str) -> Option<String> {
    if name.is_empty() || !line.contains(name) {
        return None;
    }
    let part = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || "-._".contains(c));
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut masked = false;
    while let Some(i) = rest.find(name) {
        let (before, after) = (&rest[..i], &rest[i + name.len()..]);
        let whole = !part(before.chars().next_back()) && !part(after.chars().next());
        out.push_str(before);
        out.push_str(if whole { "<*>" } else { name });
        masked |= whole;
        rest = after;
    }
    out.push_str(rest);
    masked.then_some(out)
}

/// A statement the control group writes steadily that the change group never wrote: the code
/// path that writes it is no longer reached. The surge test reversed: were the change group
/// writing it as often as control, per pod-second and per log line alike, each of control's
/// occurrences would have fallen in the change group with its share of the time (of the lines);
/// that none did has probability `(1 - share)^n`, where `n` counts control's occurrences as
/// independent events: episodes (a pod's run of the template's lines is one) and its count
/// divided by its dispersion before the change (bursty templates carry less evidence), whichever
/// is fewer. Fails when both probabilities are below `alpha`. A statement whose control lines
/// all name call sites the change group still writes at is still reached, in another wording.
#[allow(clippy::too_many_arguments)]
fn stopped(
    c: &Counts,
    id: &u32,
    events: &super::brain::Grouping,
    site_counts: &BTreeMap<String, [u64; 3]>,
    windows: &BTreeMap<u32, BTreeMap<usize, u64>>,
    window_count: usize,
    time: &Exposure,
    totals: &[u64; 3],
    p: &Params,
) -> Option<Finding> {
    let c_control = c.n[1];
    if c_control < p.min_count || time.change <= 0.0 || time.control <= 0.0 {
        return None;
    }
    if !c.control_unsited
        && c.control_sites
            .iter()
            .any(|s| site_counts.get(s).is_some_and(|k| k[2] > 0))
    {
        return None;
    }
    let phi = windows
        .get(id)
        .and_then(|w| {
            let counts: Vec<f64> = w.values().map(|&c| c as f64).collect();
            dispersion(&counts, window_count)
        })
        .unwrap_or(1.0)
        .max(1.0);
    let n = (c_control as f64 / phi).min(c.control_episodes.max(1) as f64);
    let share = time.change / (time.change + time.control);
    let other_change = totals[2] as f64;
    let other_control = totals[1].saturating_sub(c_control) as f64;
    let line_share = if other_change + other_control > 0.0 {
        other_change / (other_change + other_control)
    } else {
        share
    };
    let p_time = (1.0 - share).powf(n);
    let p_line = (1.0 - line_share).powf(n);
    let p_value = p_time.max(p_line);
    if p_value >= p.alpha {
        return None;
    }
    Some(Finding {
        metric: trim_to(events.template(*id), 200),
        detector: "stopped".into(),
        groups: "change vs control".into(),
        outcome: Some(Verdict::Fail),
        score: Some(p_value),
        threshold: Some(p.alpha),
        explanation: format!(
            "stopped: {c_control} times in control ({:.1}/pod-minute, {:.2}% of its lines; {:.0} independent occurrences) and never in the change group over {:.1} pod-minutes and {} lines; as often there, it would have shown with p={}",
            c_control as f64 / time.control * 60.0,
            100.0 * c_control as f64 / totals[1].max(1) as f64,
            n,
            time.change / 60.0,
            totals[2],
            crate::detect::fmt_num(p_value)
        ),
        suppressed_by: None,
    })
}

struct Exposure {
    change: f64,
    control: f64,
    before: f64,
}

fn fmt_ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.1}")
    } else {
        "∞".into()
    }
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
            ..Default::default()
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

    /// `extra` spread evenly among `base`, as a pod that serves requests writes them.
    fn spread(base: Vec<String>, extra: Vec<String>) -> Vec<String> {
        let every = base.len() / (extra.len() + 1);
        let mut out = Vec::with_capacity(base.len() + extra.len());
        let mut extra = extra.into_iter();
        for (i, line) in base.into_iter().enumerate() {
            out.push(line);
            if every > 0 && (i + 1) % every == 0 {
                out.extend(extra.next());
            }
        }
        out.extend(extra);
        out
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

    /// A group whose pods were each watched for `seconds`.
    fn timed(pods: &[(&str, Vec<String>)], seconds: f64) -> LogGroup {
        let mut g = group(pods);
        g.seconds = g.pods.keys().map(|p| (p.clone(), seconds)).collect();
        g
    }

    fn exception() -> String {
        "java.lang.IllegalStateException: inventory reservation missing for order 4821".into()
    }

    #[test]
    fn a_new_exception_is_found_once_when_the_reference_had_the_chance_to_show_it() {
        // One canary pod for 2 minutes; two control pods for 2 minutes and the hour before.
        let change = timed(
            &[("c1", [requests(100, "c1"), vec![exception()]].concat())],
            120.0,
        );
        let control = timed(
            &[("k1", requests(100, "k1")), ("k2", requests(100, "k2"))],
            120.0,
        );
        let before = timed(
            &[("k1", requests(3000, "k1")), ("k2", requests(3000, "k2"))],
            3600.0,
        );
        let f = detect(&change, &control, &before, &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "new-template");
        assert!(
            f[0].metric.contains("IllegalStateException"),
            "{}",
            f[0].metric
        );
        // Equal rates would put the one line in the change group with p = 120/7560.
        assert!((f[0].score.unwrap() - 120.0 / 7560.0).abs() < 1e-12);
        // Against a reference as long as the canary window (p = 1/2): still new.
        let f = detect(
            &change,
            &timed(&[("k1", requests(100, "k1"))], 120.0),
            &LogGroup::default(),
            &params(),
        );
        assert_eq!(f.len(), 1, "{f:?}");
    }

    #[test]
    fn an_exception_is_not_new_when_the_reference_was_shorter_than_the_canary_window() {
        // The canary was read for 10 minutes, the one control pod for 2: the control pod had
        // a fifth of the chance to show the exception.
        let change = timed(
            &[("c1", [requests(500, "c1"), vec![exception()]].concat())],
            600.0,
        );
        let control = timed(&[("k1", requests(100, "k1"))], 120.0);
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
        // Three times, (600/720)^3 = 0.58: still no fair chance.
        let thrice = timed(
            &[("c1", [requests(500, "c1"), vec![exception(); 3]].concat())],
            600.0,
        );
        assert!(detect(&thrice, &control, &LogGroup::default(), &params()).is_empty());
    }

    #[test]
    fn a_template_is_not_new_when_the_reference_was_too_short_to_show_it() {
        // The canary ran 10 minutes, the only reference pod one: four warnings in the canary,
        // none in a reference a tenth as long, is what equal rates give more often than not.
        let change = timed(&[("c1", [requests(100, "c1"), warns(4)].concat())], 600.0);
        let control = timed(&[("k1", requests(10, "k1"))], 60.0);
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
        // The same four in a canary as long as the reference: (1/2)^4 = 0.06, still not enough;
        // ten are: (1/2)^10 = 0.001.
        let change = timed(&[("c1", spread(requests(100, "c1"), warns(10)))], 60.0);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "new-template");
        assert!((f[0].score.unwrap() - 0.5f64.powi(10)).abs() < 1e-15);
    }

    #[test]
    fn lines_written_at_once_are_one_episode() {
        // The ten warnings written one after another (one stall that every waiting request
        // reports) are one event: (1/2)^1, no evidence of a new template.
        let control = timed(&[("k1", requests(10, "k1"))], 60.0);
        let burst = timed(&[("c1", [requests(100, "c1"), warns(10)].concat())], 60.0);
        assert!(detect(&burst, &control, &LogGroup::default(), &params()).is_empty());
        // Two such bursts apart in each of two canary pods: four episodes in 2 pod-minutes
        // against 1 reference minute, (120/180)^4 = 0.198, still nothing.
        let twice = |pod: &str| [warns(5), requests(50, pod), warns(5), requests(50, pod)].concat();
        let two = timed(&[("c1", twice("c1")), ("c2", twice("c2"))], 60.0);
        assert!(detect(&two, &control, &LogGroup::default(), &params()).is_empty());
        // An error-level line needs one episode, burst or not.
        let errors = timed(
            &[("c1", [requests(100, "c1"), vec![exception(); 5]].concat())],
            60.0,
        );
        let f = detect(&errors, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(
            f[0].explanation.contains("5 times (1 episode)"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn equal_rates_over_a_longer_canary_window_are_no_surge() {
        // 6 warnings a pod-minute everywhere; the canary was read for 10 minutes, the control
        // pods for 2: 60 against 12 a pod, the old per-pod count called that a 5× surge.
        let change = timed(&[("c1", [requests(1000, "c1"), warns(60)].concat())], 600.0);
        let control = timed(
            &[
                ("k1", [requests(200, "k1"), warns(12)].concat()),
                ("k2", [requests(200, "k2"), warns(12)].concat()),
            ],
            120.0,
        );
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
    }

    #[test]
    fn equal_rates_over_unequal_pod_counts_are_no_surge() {
        // Three canary pods against one control pod, the same rate per pod-minute.
        let change = timed(
            &[
                ("c1", [requests(100, "c1"), warns(10)].concat()),
                ("c2", [requests(100, "c2"), warns(10)].concat()),
                ("c3", [requests(100, "c3"), warns(10)].concat()),
            ],
            60.0,
        );
        let control = timed(&[("k1", [requests(100, "k1"), warns(10)].concat())], 60.0);
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
    }

    #[test]
    fn more_traffic_on_the_canary_is_no_surge() {
        // The canary serves 4× the requests of each control pod (a new pod the balancer
        // favours) and logs 4× the slow calls: the same share of its lines.
        let change = timed(&[("c1", [requests(800, "c1"), warns(40)].concat())], 60.0);
        let control = timed(
            &[
                ("k1", [requests(200, "k1"), warns(10)].concat()),
                ("k2", [requests(200, "k2"), warns(10)].concat()),
            ],
            60.0,
        );
        assert!(detect(&change, &control, &LogGroup::default(), &params()).is_empty());
    }

    #[test]
    fn a_template_seen_before_the_change_is_not_new() {
        // Eight a pod-minute in the canary, none in the control pods this minute, but as many
        // in the hour before the change.
        let line = |n| vec!["INFO [cron] compaction pass started".to_string(); n];
        let change = timed(&[("c1", spread(requests(50, "c1"), line(8)))], 60.0);
        let control = timed(
            &[("k1", requests(50, "k1")), ("k2", requests(50, "k2"))],
            60.0,
        );
        let before = timed(
            &[
                ("k1", [requests(3000, "k1"), line(480)].concat()),
                ("k2", [requests(3000, "k2"), line(480)].concat()),
            ],
            3600.0,
        );
        assert!(
            detect(&change, &control, &LogGroup::default(), &params())
                .iter()
                .any(|f| f.detector == "new-template")
        );
        assert!(detect(&change, &control, &before, &params()).is_empty());
    }

    #[test]
    fn a_warning_ten_times_as_often_surges() {
        let change = timed(&[("c1", [requests(200, "c1"), warns(40)].concat())], 60.0);
        let control = timed(
            &[
                ("k1", [requests(200, "k1"), warns(4)].concat()),
                ("k2", [requests(200, "k2"), warns(4)].concat()),
            ],
            60.0,
        );
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "surge");
        assert!(
            f[0].explanation.contains("40.0/pod-minute"),
            "{}",
            f[0].explanation
        );
    }

    fn refreshes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("INFO [cache] refreshed price list entry {i}"))
            .collect()
    }

    /// Three control pods, 10 minutes and 600 requests each, with `per_pod` cache refreshes.
    fn refreshing(per_pod: [usize; 3]) -> LogGroup {
        let pods: Vec<(&str, Vec<String>)> = ["k1", "k2", "k3"]
            .into_iter()
            .zip(per_pod)
            .map(|(p, n)| (p, spread(requests(600, p), refreshes(n))))
            .collect();
        timed(&pods, 600.0)
    }

    #[test]
    fn a_name_is_masked_where_it_stands_whole() {
        assert_eq!(
            mask_name("GET /api/v1/pods pod=pod x", "pod").as_deref(),
            Some("GET /api/v1/pods <*>=<*> x")
        );
        assert_eq!(
            mask_name("web-1-abc and web-1", "web-1"),
            Some("web-1-abc and <*>".into())
        );
        assert_eq!(mask_name("podcast", "pod"), None);
    }

    #[test]
    fn a_pods_own_name_in_its_lines_is_a_value() {
        // Every request line names the pod that wrote it, mid-line. Three control pods and a
        // canary: four names, fewer than Brain's six distinct words, so without knowing whose
        // name it is the canary's every request line would be a template no reference wrote.
        let lines = |pod: &str| -> Vec<String> {
            (0..300)
                .flat_map(|i| {
                    [
                        format!("INFO [http] GET /api/orders/{i} status=200 pod={pod} region=eu"),
                        "INFO [cache] hit".to_string(),
                    ]
                })
                .collect()
        };
        let names = [
            "web-7d9f8c6b5-xkqpz",
            "web-7d9f8c6b5-bvtrw",
            "web-7d9f8c6b5-hmcsd",
        ];
        let control = timed(&names.map(|n| (n, lines(n))), 300.0);
        let canary = "web-5c8b7d9f4-qwzjn";
        let change = timed(&[(canary, lines(canary))], 300.0);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert!(f.is_empty(), "{f:?}");
        // The same lines under another pod key (a file named otherwise): the name is a word,
        // the canary's requests a new template and control's a statement it stopped.
        let change = timed(&[("c1", lines(canary))], 300.0);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        let found: Vec<&str> = f.iter().map(|f| f.detector.as_str()).collect();
        assert_eq!(found, ["new-template", "stopped"], "{f:?}");
        assert!(
            f[0].explanation
                .contains("nor before the change (0.0 pod-minutes)"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn a_statement_control_writes_steadily_and_the_change_group_never_writes_has_stopped() {
        // Three control pods and one canary, 10 minutes each, 600 requests a pod; control logs a
        // cache refresh after every sixth request (100 a pod), the canary never. The canary has
        // a quarter of the pod time and a quarter of the other lines (600 of 2,400): were it
        // refreshing as often, each of control's 300 refreshes (300 episodes, no dispersion
        // known) would have fallen in it with p = 1/4, so none did with p = 0.75^300.
        let control = refreshing([100, 100, 100]);
        let change = timed(&[("c1", requests(600, "c1"))], 600.0);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "stopped");
        assert!(
            f[0].metric.contains("refreshed price list"),
            "{}",
            f[0].metric
        );
        let expected = 0.75f64.powi(300);
        assert!(
            (f[0].score.unwrap() / expected - 1.0).abs() < 1e-9,
            "{} vs {expected}",
            f[0].score.unwrap()
        );
        assert!(
            f[0].explanation
                .contains("300 times in control (10.0/pod-minute"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn a_statement_is_not_stopped_when_the_canary_saw_too_little_traffic_to_tell() {
        // The same control, but the canary served 20 requests in its 10 minutes: by pod time it
        // should have refreshed (p = 0.75^300), but per log line its share is 20 / 1,820 and
        // p = (1 - 20/1820)^300 = 0.036, above alpha 0.01. Too little traffic to tell.
        let control = refreshing([100, 100, 100]);
        let change = timed(&[("c1", requests(20, "c1"))], 600.0);
        assert!((1.0f64 - 20.0 / 1820.0).powi(300) > 0.01);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert!(f.iter().all(|f| f.detector != "stopped"), "{f:?}");
        // And a statement control wrote only ten times: (3/4)^10 = 0.056, no finding either.
        let control = refreshing([4, 3, 3]);
        let change = timed(&[("c1", requests(600, "c1"))], 600.0);
        let f = detect(&change, &control, &LogGroup::default(), &params());
        assert!(f.iter().all(|f| f.detector != "stopped"), "{f:?}");
    }

    /// One control pod's reference before the change: windows of `width` seconds, the i-th
    /// with `counts[i]` warnings among ten requests, every line with its time.
    fn reference(counts: &[usize], width: f64) -> LogGroup {
        let (mut lines, mut at) = (Vec::new(), Vec::new());
        for (i, &n) in counts.iter().enumerate() {
            let window = [requests(10, "k1"), warns(n)].concat();
            let step = width / window.len() as f64;
            for (j, l) in window.into_iter().enumerate() {
                at.push(i as f64 * width + (j as f64 + 0.5) * step);
                lines.push(l);
            }
        }
        let mut g = timed(&[("k1", lines)], width * counts.len() as f64);
        g.at.insert("k1".into(), at);
        g
    }

    #[test]
    fn a_template_that_bursts_in_healthy_windows_is_no_surge_when_it_bursts_again() {
        // 18 warnings in the canary's 12 seconds against 4 in control's: a 4.5× surge with
        // binomial p = 0.002 were the warnings independent events.
        let change = timed(&[("c1", spread(requests(10, "c1"), warns(18)))], 12.0);
        let control = timed(&[("k1", spread(requests(10, "k1"), warns(4)))], 12.0);
        let plain = detect(&change, &control, &LogGroup::default(), &params());
        assert_eq!(plain.len(), 1, "{plain:?}");
        assert_eq!(plain[0].detector, "surge");
        // The control pod's own 12-second windows before the change went 20, 0, 13, 1, 12, 0,
        // 14 (a retry loop that comes and goes): counts vary ~11× as much as chance.
        let bursty = reference(&[20, 0, 13, 1, 12, 0, 14], 12.0);
        let f = detect(&change, &control, &bursty, &params());
        assert!(f.is_empty(), "{f:?}");
        // Steady windows (3 to 5) leave the test as it was: still a surge, and the same p.
        let steady = reference(&[4, 5, 3, 4, 4, 5, 3], 12.0);
        let f = detect(&change, &control, &steady, &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].score, plain[0].score);
        // Times that do not match the lines one to one are not used.
        let mut odd = bursty.clone();
        odd.at.get_mut("k1").unwrap().pop();
        assert_eq!(detect(&change, &control, &odd, &params()).len(), 1);
    }

    /// kube-controller-manager's optimistic-concurrency error, as it writes it, for `resource`.
    fn stale_read(i: usize, resource: &str, line: u32) -> String {
        format!(
            r#"E1202 15:02:{:02}.190590   16673 replica_set.go:{line}] "Unhandled Error" err="sync \"load{i}/web-c58cb77b9\" failed with read version: {} is not as new as written version: {} for group resource {resource}" logger="UnhandledError""#,
            i % 60,
            235 + i,
            241 + i
        )
    }

    #[test]
    fn a_new_wording_of_a_known_log_statement_is_not_a_new_template() {
        // Real lines: the controller's stale-read error names the group resource; the reference
        // had it for replicasets only, the change window for pods, twice.
        let reference: Vec<String> = (0..12)
            .map(|i| stale_read(i, "replicasets.apps", 640))
            .collect();
        let control = timed(&[("k1", requests(20, "k1"))], 12.0);
        let before = timed(&[("k1", [requests(100, "k1"), reference].concat())], 84.0);
        let pods = |n: usize, line: u32| -> Vec<String> {
            (0..n).map(|i| stale_read(100 + i, "pods", line)).collect()
        };
        let change = timed(&[("c1", [requests(20, "c1"), pods(2, 640)].concat())], 12.0);
        let f = detect(&change, &control, &before, &params());
        assert!(f.is_empty(), "{f:?}");
        // From another line of the source it is a new message, and an error: found.
        let moved = timed(&[("c1", [requests(20, "c1"), pods(2, 655)].concat())], 12.0);
        let f = detect(&moved, &control, &before, &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "new-template");
        // The statement writing 40 times in 12 s what it wrote 12 times in 84 s is a surge,
        // judged as that statement.
        let flood = timed(&[("c1", spread(requests(20, "c1"), pods(40, 640)))], 12.0);
        let f = detect(&flood, &control, &before, &params());
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].detector, "surge");
        assert!(
            f[0].explanation
                .contains("new wording of the log statement at replica_set.go:640"),
            "{}",
            f[0].explanation
        );
    }

    #[test]
    fn call_sites_as_loggers_write_them() {
        for (line, site) in [
            (
                r#"E1202 15:02:03.190590   16673 replica_set.go:640] "Unhandled Error""#,
                Some("replica_set.go:640"),
            ),
            (
                r#"{"level":"warn","caller":"etcdserver/server.go:1200","msg":"slow"}"#,
                Some("etcdserver/server.go:1200"),
            ),
            (
                "ts=2026-12-01T10:00:00Z level=error source=scrape.go:1400 msg=x",
                Some("scrape.go:1400"),
            ),
            (
                "\tat com.shop.OrderService.reserve(OrderService.java:88)",
                Some("OrderService.java:88"),
            ),
            ("GET https://shop.example.com:443/api 10:00:01", None),
            ("connected to 10.0.0.7:5432", None),
        ] {
            assert_eq!(call_site(line), site, "{line}");
        }
    }

    #[test]
    fn dispersion_counts_the_empty_windows() {
        // Windows 4, 0, 0, 4: mean 2, squares 4·4 = 16, 16 / 2 / 3.
        assert!((dispersion(&[4.0, 4.0], 4).unwrap() - 16.0 / 6.0).abs() < 1e-12);
        assert_eq!(dispersion(&[4.0], 1), None);
        assert_eq!(dispersion(&[], 5), None);
        assert_eq!(dispersion(&[1.0, 1.0, 1.0], 2), None);
        // Equal counts do not vary at all.
        assert_eq!(dispersion(&[3.0, 3.0, 3.0], 3), Some(0.0));
    }

    #[test]
    fn error_level_in_the_formats_loggers_write() {
        for line in [
            "ERROR [db] connection lost",
            "java.lang.IllegalStateException: boom",
            r#"{"level":"error","ts":"2026-12-01T10:00:00Z","msg":"failed to apply request"}"#,
            r#"{"severity":"ERROR","message":"payment declined"}"#,
            r#"{"level": "fatal", "msg": "cannot start"}"#,
            r#"ts=2026-12-01T10:00:00Z level=error msg="scrape failed""#,
            "time=10:00 lvl=crit msg=down",
            r#"E1201 10:00:00.000100   160 reflector.go:4000] "Unhandled Error" err="x""#,
            "F1201 10:00:00.000100   160 server.go:12] cannot listen",
            "2026-12-01 10:00:00.000000 E | etcdserver: publish error",
        ] {
            assert!(is_error_level(line), "{line}");
        }
        for line in [
            "INFO [http] GET /errors status=200",
            r#"{"level":"info","msg":"error budget at 99%"}"#,
            "ts=2026-12-01T10:00:00Z level=warn msg=slow",
            r#"I1201 10:00:00.000100   160 reflector.go:4000] "Caches populated""#,
            "W1201 10:00:00.000100   160 warnings.go:70] deprecated",
            "2026-12-01 10:00:00.000000 W | etcdserver: read-only range request took too long",
            "Everything fine, level=errorless",
        ] {
            assert!(!is_error_level(line), "{line}");
        }
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
