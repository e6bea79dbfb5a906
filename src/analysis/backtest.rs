//! Backtesting a spec on labelled past changes: `graygate analyze --cases FILE.jsonl`.
//!
//! Each line is an `analyze --input` object plus `"label": "bad"|"good"` and optionally `"id"`,
//! `"fault"` and `"workload"`. Every case is judged exactly as production would judge it; the
//! result is the confusion table a team reads before trusting its spec.
//!
//! Cases that name their `workload` are replayed as the operator lives them: in the order of
//! their window's start, each judged with its workload's history — the records of the earlier
//! changes of the same workload that had been *released* by then, the last [`DEFAULT_KEEP`] of
//! them. What joins is decided as the operator decides it, never by the `label` (which only
//! scores): a change graygate passed joins (unless its `feedback` says `real-fault` or `drill`),
//! a change graygate failed joins only with `feedback: false-alarm` (what `kubectl graygate
//! feedback` records live), an inconclusive one never. A record joins at the release's end: the
//! case's `released` time (Unix seconds) when given, else its window's end; a case that starts
//! before then does not see it, nor do the other workloads (its neighbours for the prior).

use crate::analysis::history::{DEFAULT_KEEP, History};
use crate::analysis::input::{Recorded, recorded};
use crate::analysis::recorded::{Tuning, judge_and_record};
use crate::api::{AnalysisSpec, Verdict};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// One labelled change.
#[derive(Clone, Debug)]
pub struct Case {
    /// Line in the file (1-based).
    pub line: usize,
    /// Its id (the line number when the file gives none).
    pub id: String,
    /// Whether the change was bad.
    pub bad: bool,
    /// The kind of fault, for bad changes that say.
    pub fault: Option<String>,
    /// The workload it changed, when the file says: its earlier released cases are its history.
    pub workload: Option<String>,
    /// What a person said of it after the fact (`feedback` in the file).
    pub feedback: Option<crate::api::FeedbackVerdict>,
    /// When it was released (`released`, Unix seconds): its record joins the history then.
    pub released: Option<f64>,
    /// The recorded data.
    pub recorded: Recorded,
}

/// Parse a JSON-lines file of labelled cases; errors name the line and the field.
pub fn parse_cases(text: &str) -> Result<Vec<Case>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(raw).map_err(|e| format!("line {line}: not JSON: {e}"))?;
        let bad = match v.get("label").and_then(Value::as_str) {
            Some("bad") => true,
            Some("good") => false,
            Some(other) => {
                return Err(format!(
                    "line {line}: label: {other:?} is neither \"bad\" nor \"good\""
                ));
            }
            None => return Err(format!("line {line}: label: missing (\"bad\" or \"good\")")),
        };
        let id = match v.get("id") {
            None | Some(Value::Null) => format!("line {line}"),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let fault = v.get("fault").and_then(Value::as_str).map(String::from);
        let workload = match v.get("workload") {
            None | Some(Value::Null) => None,
            Some(Value::String(w)) if !w.is_empty() => Some(w.clone()),
            Some(_) => {
                return Err(format!(
                    "line {line}: workload: expected a non-empty string such as \"Deployment/web\""
                ));
            }
        };
        let feedback = match v.get("feedback") {
            None | Some(Value::Null) => None,
            Some(Value::String(f)) => {
                Some(crate::api::FeedbackVerdict::parse(f).ok_or_else(|| {
                    format!("line {line}: feedback: {f:?} is not false-alarm, real-fault or drill")
                })?)
            }
            Some(other) => {
                return Err(format!(
                    "line {line}: feedback: expected \"false-alarm\", \"real-fault\" or \"drill\", got {other}"
                ));
            }
        };
        let released =
            match v.get("released") {
                None | Some(Value::Null) => None,
                Some(t) => Some(t.as_f64().filter(|t| t.is_finite()).ok_or_else(|| {
                    format!("line {line}: released: expected Unix seconds, got {t}")
                })?),
            };
        let recorded = recorded(&v).map_err(|e| format!("line {line}: {e}"))?;
        out.push(Case {
            line,
            id,
            bad,
            fault,
            workload,
            feedback,
            released,
            recorded,
        });
    }
    if out.is_empty() {
        return Err("no cases: the file holds no JSON lines".into());
    }
    Ok(out)
}

/// What the judge said about one case.
#[derive(Clone, Debug, PartialEq)]
pub struct CaseResult {
    /// The case's id.
    pub id: String,
    /// Its label.
    pub bad: bool,
    /// Its fault, if any.
    pub fault: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
    /// The verdict's one-line summary.
    pub summary: String,
    /// How many released changes of its workload it was judged with (0 alone).
    pub history: usize,
    /// Whether its record joined its workload's history (released, or a false alarm).
    pub joined: bool,
}

/// Judge every case with the spec (and, for cross-validation, a tuning). Cases with a workload
/// are replayed with their workload's history, gated by verdict and the file's feedback; the
/// results keep the file's order.
pub fn run(
    spec: &AnalysisSpec,
    cases: &[Case],
    tuning: &Tuning,
) -> Result<Vec<CaseResult>, String> {
    replay(spec, cases, tuning, Replay::Feedback(FeedbackFrom::File))
}

/// How a backtest treats the workloads' history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Each case judged alone, without history.
    Alone,
    /// In time order, a released record joining its workload's history at its release's end.
    Feedback(FeedbackFrom),
}

/// Where the feedback on a case comes from in a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackFrom {
    /// Nobody gives any: only the cases graygate passed join.
    None,
    /// The file's `feedback` fields, as `kubectl graygate feedback` records them live.
    File,
    /// A person reviews every case graygate stopped and says what its label says (`false-alarm`
    /// on a good one, `real-fault` on a bad one): the best feedback a team can give.
    EveryStopped,
}

/// Whether a judged case's record joins its workload's history, as the operator decides it
/// (`controller::history`): released (passed) unless marked `real-fault` or `drill`, or failed
/// and marked `false-alarm`; inconclusive never (a person had to decide, and said nothing).
pub fn joins(verdict: Verdict, feedback: Option<crate::api::FeedbackVerdict>) -> bool {
    use crate::api::FeedbackVerdict::*;
    match verdict {
        Verdict::Pass => !matches!(feedback, Some(RealFault | Drill)),
        Verdict::Fail => feedback == Some(FalseAlarm),
        Verdict::Inconclusive => false,
    }
}

/// [`run`] with the given treatment of history (the evaluation reports all three).
pub fn replay(
    spec: &AnalysisSpec,
    cases: &[Case],
    tuning: &Tuning,
    mode: Replay,
) -> Result<Vec<CaseResult>, String> {
    let start = |c: &Case| c.recorded.window.map_or(f64::NEG_INFINITY, |w| w.0);
    let mut order: Vec<usize> = (0..cases.len()).collect();
    order.sort_by(|a, b| start(&cases[*a]).total_cmp(&start(&cases[*b])));
    let mut histories: BTreeMap<&str, History> = BTreeMap::new();
    // Records of released changes waiting for their release to end: (end, order, workload).
    let mut pending: Vec<(f64, usize, &str, crate::analysis::history::Record)> = Vec::new();
    let mut results: Vec<Option<CaseResult>> = vec![None; cases.len()];
    for (n, i) in order.into_iter().enumerate() {
        let c = &cases[i];
        let fail = |e: String| format!("line {} ({}): {}", c.line, c.id, e);
        let workload = c.workload.as_deref().filter(|_| mode != Replay::Alone);
        // Releases that ended by this case's start join, in the order they ended.
        pending.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let ready = pending.partition_point(|p| p.0 <= start(c));
        for (_, _, w, record) in pending.drain(..ready) {
            histories
                .entry(w)
                .or_insert_with(|| History {
                    workload: w.to_string(),
                    ..History::default()
                })
                .push(record, DEFAULT_KEEP);
        }
        // The workload's own released changes, and its neighbours' (the other workloads of the
        // file, as the other workloads of a namespace) for the prior of their variance.
        let history = workload.and_then(|w| {
            let mut h = histories.get(w)?.clone();
            h.neighbours = histories
                .iter()
                .filter(|(other, _)| **other != w)
                .map(|(_, o)| o.records.clone())
                .collect();
            Some(h)
        });
        let history = history.as_ref();
        let record_as = workload.map(|_| c.id.as_str());
        let (out, record) =
            judge_and_record(spec, c.recorded.clone(), tuning, history, record_as).map_err(fail)?;
        let feedback = match mode {
            Replay::Feedback(FeedbackFrom::File) => c.feedback,
            Replay::Feedback(FeedbackFrom::EveryStopped) if out.verdict == Verdict::Fail => {
                Some(if c.bad {
                    crate::api::FeedbackVerdict::RealFault
                } else {
                    crate::api::FeedbackVerdict::FalseAlarm
                })
            }
            _ => None,
        };
        let judged_with = history.map_or(0, |h| h.records.len());
        let joined = workload.is_some() && joins(out.verdict, feedback);
        if let (Some(w), Some(record), true) = (workload, record, joined)
            && !record.is_empty()
        {
            let end = c
                .released
                .or(c.recorded.window.map(|w| w.1))
                .unwrap_or(f64::NEG_INFINITY);
            pending.push((end, n, w, record));
        }
        results[i] = Some(CaseResult {
            id: c.id.clone(),
            bad: c.bad,
            fault: c.fault.clone(),
            verdict: out.verdict,
            summary: out.summary,
            history: judged_with,
            joined,
        });
    }
    Ok(results.into_iter().flatten().collect())
}

/// Counts of a backtest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Confusion {
    /// Bad cases.
    pub bad: usize,
    /// Bad cases failed (caught).
    pub bad_failed: usize,
    /// Bad cases judged inconclusive.
    pub bad_inconclusive: usize,
    /// Good cases.
    pub good: usize,
    /// Good cases failed (blocked by mistake).
    pub good_failed: usize,
    /// Good cases judged inconclusive.
    pub good_inconclusive: usize,
    /// Per fault: (bad cases, failed).
    pub per_fault: BTreeMap<String, (usize, usize)>,
}

impl Confusion {
    /// Count verdicts against labels.
    pub fn of<'a>(results: impl IntoIterator<Item = (bool, Option<&'a str>, Verdict)>) -> Self {
        let mut c = Confusion::default();
        for (bad, fault, verdict) in results {
            let failed = verdict == Verdict::Fail;
            let inconclusive = verdict == Verdict::Inconclusive;
            if bad {
                c.bad += 1;
                c.bad_failed += usize::from(failed);
                c.bad_inconclusive += usize::from(inconclusive);
                let e = c
                    .per_fault
                    .entry(fault.unwrap_or("unspecified").to_string())
                    .or_default();
                e.0 += 1;
                e.1 += usize::from(failed);
            } else {
                c.good += 1;
                c.good_failed += usize::from(failed);
                c.good_inconclusive += usize::from(inconclusive);
            }
        }
        c
    }

    /// From case results.
    pub fn of_results(results: &[CaseResult]) -> Self {
        Confusion::of(
            results
                .iter()
                .map(|r| (r.bad, r.fault.as_deref(), r.verdict)),
        )
    }

    /// Share of bad cases failed.
    pub fn bad_rate(&self) -> f64 {
        share(self.bad_failed, self.bad)
    }

    /// Share of good cases failed.
    pub fn good_rate(&self) -> f64 {
        share(self.good_failed, self.good)
    }

    /// Add another count (folds of a cross-validation).
    pub fn add(&mut self, o: &Confusion) {
        self.bad += o.bad;
        self.bad_failed += o.bad_failed;
        self.bad_inconclusive += o.bad_inconclusive;
        self.good += o.good;
        self.good_failed += o.good_failed;
        self.good_inconclusive += o.good_inconclusive;
        for (k, (n, f)) in &o.per_fault {
            let e = self.per_fault.entry(k.clone()).or_default();
            e.0 += n;
            e.1 += f;
        }
    }
}

/// a / b, 0 for b = 0.
pub fn share(a: usize, b: usize) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// `n/m = p%`.
pub fn ratio(a: usize, b: usize) -> String {
    format!("{a}/{b} = {:.1}%", 100.0 * share(a, b))
}

/// The table `analyze --cases` prints.
pub fn table(results: &[CaseResult]) -> String {
    let c = Confusion::of_results(results);
    let mut out = format!(
        "CASES: {} ({} bad, {} good)\n\n                 FAILED            INCONCLUSIVE   PASSED\n",
        results.len(),
        c.bad,
        c.good
    );
    out.push_str(&format!(
        "bad changes      {:<17} {:<14} {}\n",
        ratio(c.bad_failed, c.bad),
        c.bad_inconclusive,
        c.bad - c.bad_failed - c.bad_inconclusive
    ));
    out.push_str(&format!(
        "good changes     {:<17} {:<14} {}\n",
        ratio(c.good_failed, c.good),
        c.good_inconclusive,
        c.good - c.good_failed - c.good_inconclusive
    ));
    if c.per_fault.len() > 1 || c.per_fault.keys().any(|k| k != "unspecified") {
        out.push_str("\nRECALL BY FAULT\n");
        for (fault, (n, f)) in &c.per_fault {
            out.push_str(&format!("  {fault:<16} {}\n", ratio(*f, *n)));
        }
    }
    let wrong: Vec<&CaseResult> = results
        .iter()
        .filter(|r| (r.bad && r.verdict != Verdict::Fail) || (!r.bad && r.verdict == Verdict::Fail))
        .collect();
    if !wrong.is_empty() {
        out.push_str("\nWENT WRONG\n");
        for r in wrong {
            let what = match (r.bad, r.verdict) {
                (true, Verdict::Inconclusive) => "bad, inconclusive",
                (true, _) => "bad, passed",
                (false, _) => "good, failed",
            };
            out.push_str(&format!("  {:<32} {what:<18} {}\n", r.id, r.summary));
        }
    }
    out
}

/// The JSON `analyze --cases --output json` prints.
pub fn json(results: &[CaseResult]) -> Value {
    let c = Confusion::of_results(results);
    json!({
        "cases": results.len(),
        "bad": {"total": c.bad, "failed": c.bad_failed, "inconclusive": c.bad_inconclusive},
        "good": {"total": c.good, "failed": c.good_failed, "inconclusive": c.good_inconclusive},
        "recallByFault": c.per_fault.iter().map(|(k, (n, f))| (k.clone(), json!({"total": n, "failed": f}))).collect::<serde_json::Map<_, _>>(),
        "results": results.iter().map(|r| json!({
            "id": r.id, "label": if r.bad { "bad" } else { "good" }, "fault": r.fault,
            "verdict": r.verdict, "summary": r.summary,
            "historyRecords": r.history, "joinedHistory": r.joined,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_are_named() {
        let e = parse_cases("{\"label\": \"bad\", \"metrics\": {}}\n{\"label\": \"maybe\"}")
            .unwrap_err();
        assert!(e.starts_with("line 2: label"), "{e}");
        let e = parse_cases("\n{nope").unwrap_err();
        assert!(e.starts_with("line 2: not JSON"), "{e}");
        let e =
            parse_cases(r#"{"label": "good", "metrics": {"m": {"change": [[1]]}}}"#).unwrap_err();
        assert_eq!(
            e,
            "line 1: metrics.m.change[0]: expected [unix_seconds, value]"
        );
    }

    #[test]
    fn the_confusion_counts_labels_against_verdicts() {
        let c = Confusion::of([
            (true, Some("exception"), Verdict::Fail),
            (true, Some("exception"), Verdict::Pass),
            (true, None, Verdict::Inconclusive),
            (false, None, Verdict::Fail),
            (false, None, Verdict::Pass),
        ]);
        assert_eq!((c.bad, c.bad_failed, c.bad_inconclusive), (3, 1, 1));
        assert_eq!((c.good, c.good_failed), (2, 1));
        assert_eq!(c.per_fault["exception"], (2, 1));
        assert_eq!(c.per_fault["unspecified"], (1, 0));
    }
}
