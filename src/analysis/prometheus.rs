//! The production analyzer: renders each metric's templates per group, runs range queries
//! against Prometheus (bounded concurrency, timeouts, retries) and judges the result.

use super::defaults::default_metrics;
use super::history::History;
use super::judge::{self, GroupData, Groups, Metric, MetricData};
use super::promapi::{Prom, PromError};
use super::template::{escape_literal, pods_regex, promql_duration, promql_string, render};
use super::{Analyzer, JudgeRequest};
use crate::api::{AnalysisSpec, FieldError, Finding, MetricSpec, TargetKind, Verdict};
use crate::controller::state::Judgement;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use std::collections::BTreeMap;
use std::time::Duration;

/// Queries in flight at once per judgement.
const CONCURRENCY: usize = 4;
/// Attempts per query when Prometheus cannot be reached.
const ATTEMPTS: u32 = 3;

/// Analyzer backed by Prometheus.
pub struct PrometheusAnalyzer {
    default_url: Option<String>,
    kube: Option<kube::Client>,
}

impl PrometheusAnalyzer {
    /// An analyzer using `default_url` when a ChangeRequest names no Prometheus, and `kube`
    /// to read bearer-token Secrets.
    pub fn new(default_url: Option<String>, kube: Option<kube::Client>) -> Self {
        PrometheusAnalyzer { default_url, kube }
    }
}

/// Why a query did not give data.
#[derive(Debug)]
pub enum QueryError {
    /// Prometheus rejected the query: a spec error in this field.
    Rejected(FieldError),
    /// Prometheus could not be reached or failed.
    Unavailable(String),
}

/// One time window of one group.
#[derive(Clone, Debug)]
pub struct GroupWindow {
    /// change, control, background or history.
    pub group: &'static str,
    /// The `{{pods}}` value.
    pub pods: String,
    /// Window start.
    pub from: Timestamp,
    /// Window end.
    pub to: Timestamp,
}

/// What to query: the groups and the variables shared by every template.
#[derive(Clone, Debug)]
pub struct QueryPlan {
    /// `{{namespace}}`.
    pub namespace: String,
    /// `{{target}}`.
    pub target: String,
    /// `{{interval}}`, and the step of range queries.
    pub interval_ms: i64,
    /// The windows to query.
    pub windows: Vec<GroupWindow>,
    /// The judgements the change holds, which share the tests' significance level.
    pub looks: u32,
    /// A traffic-weighted batch: the requests a canary pod gets relative to a control pod.
    pub canary_share_per_pod: Option<f64>,
}

/// The requests a canary pod gets relative to a control pod when the canary's `changed` pods
/// take `share`% of the requests and the `control` pods the rest (None without a share, or
/// without pods on either side).
pub fn share_per_pod(share: Option<i32>, changed: usize, control: usize) -> Option<f64> {
    let t = f64::from(share?);
    (changed > 0 && control > 0 && t > 0.0 && t < 100.0)
        .then(|| (t / changed as f64) / ((100.0 - t) / control as f64))
}

fn step_secs(interval_ms: i64) -> f64 {
    ((interval_ms as f64 / 1000.0) / 10.0).max(1.0)
}

/// A Prometheus client for an analysis section.
pub async fn client(
    spec: Option<&crate::api::PrometheusSpec>,
    default_url: Option<&str>,
    kube: Option<&kube::Client>,
    ns: &str,
) -> Result<(Prom, Option<String>, Duration), String> {
    let url = spec
        .and_then(|p| p.address.clone())
        .or_else(|| default_url.map(String::from))
        .ok_or("no Prometheus address: set analysis.prometheus.address or the operator's --prometheus-url")?;
    let timeout = spec
        .and_then(|p| p.timeout)
        .map(|d| d.std())
        .unwrap_or(Duration::from_secs(10));
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .danger_accept_invalid_certs(spec.is_some_and(|p| p.insecure_skip_verify))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let prom =
        Prom::new(http, &url).map_err(|e| format!("analysis.prometheus.address {url:?}: {e}"))?;
    let token = match (spec.and_then(|p| p.bearer_token_secret.as_ref()), kube) {
        (Some(sel), Some(k)) => {
            let secret = Api::<Secret>::namespaced(k.clone(), ns)
                .get(&sel.name)
                .await
                .map_err(|e| format!("analysis.prometheus.bearerTokenSecret {}: {e}", sel.name))?;
            let bytes = secret
                .data
                .and_then(|d| d.get(&sel.key).cloned())
                .ok_or(format!(
                    "analysis.prometheus.bearerTokenSecret: key {} not in Secret {}",
                    sel.key, sel.name
                ))?;
            Some(String::from_utf8_lossy(&bytes.0).trim().to_string())
        }
        _ => None,
    };
    Ok((prom, token, timeout))
}

/// Run one range query with retries; series are keyed by their `pod` label (or all labels).
pub async fn range(
    prom: &Prom,
    token: Option<&str>,
    query: &str,
    from: Timestamp,
    to: Timestamp,
    step: f64,
    field: &str,
) -> Result<GroupData, QueryError> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
        }
        match prom
            .query_range(
                token,
                query,
                from.as_second(),
                to.as_second().max(from.as_second() + 1),
                step,
            )
            .await
        {
            Ok(series) => {
                let mut out = BTreeMap::new();
                for s in series {
                    let key = s.labels.get("pod").cloned().unwrap_or_else(|| {
                        let mut l: Vec<String> =
                            s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                        l.sort();
                        l.join(",")
                    });
                    out.insert(key, s.samples);
                }
                return Ok(GroupData(out));
            }
            Err(PromError::BadData(m)) => {
                return Err(QueryError::Rejected(FieldError::new(
                    field,
                    format!("Prometheus rejected the query: {m}"),
                )));
            }
            // Asking again gets as much again: say which query, once.
            Err(e @ PromError::TooLarge(_)) => {
                return Err(QueryError::Unavailable(format!("{field}: {e}")));
            }
            Err(PromError::Unavailable(m)) => last = m,
        }
    }
    Err(QueryError::Unavailable(last))
}

/// The metrics to use: the spec's, or the defaults whose series exist.
async fn resolve_metrics(
    spec: &AnalysisSpec,
    prom: &Prom,
    token: Option<&str>,
    plan: &QueryPlan,
) -> Result<(Vec<(usize, MetricSpec)>, Vec<Finding>), QueryError> {
    if let Some(ms) = &spec.metrics {
        return Ok((ms.iter().cloned().enumerate().collect(), Vec::new()));
    }
    let mut use_ = Vec::new();
    let mut skipped = Vec::new();
    let win = plan
        .windows
        .first()
        .cloned()
        .ok_or(QueryError::Unavailable("no groups to query".into()))?;
    for (i, (m, series)) in default_metrics().into_iter().enumerate() {
        let probe = format!(
            "count({series}{{namespace=\"{}\"}})",
            promql_string(&plan.namespace)
        );
        let exists = range(
            prom,
            token,
            &probe,
            win.from,
            win.to,
            step_secs(plan.interval_ms),
            "analysis.metrics",
        )
        .await?;
        if exists.is_empty() {
            skipped.push(Finding {
                metric: m.name.clone(),
                detector: "-".into(),
                groups: "-".into(),
                outcome: Some(Verdict::Inconclusive),
                explanation: format!(
                    "built-in metric skipped: no {series} series in namespace {}",
                    plan.namespace
                ),
                ..Default::default()
            });
        } else {
            use_.push((i, m));
        }
    }
    Ok((use_, skipped))
}

fn vars(plan: &QueryPlan, w: &GroupWindow) -> BTreeMap<&'static str, String> {
    [
        ("namespace", promql_string(&plan.namespace)),
        ("pods", w.pods.clone()),
        ("group", w.group.to_string()),
        ("target", plan.target.clone()),
        (
            "window",
            promql_duration(w.to.as_millisecond() - w.from.as_millisecond()),
        ),
        ("interval", promql_duration(plan.interval_ms)),
    ]
    .into()
}

/// Query every metric for every group and judge, with the workload's released changes as the
/// history group when given. Shared by the operator and `graygate analyze --prometheus`.
pub async fn analyze(
    spec: &AnalysisSpec,
    prom: &Prom,
    token: Option<&str>,
    plan: &QueryPlan,
    history: Option<&History>,
) -> Judgement {
    let (judged, mut extra) = match fetch(spec, prom, token, plan).await {
        Ok(m) => m,
        Err(j) => return j,
    };
    let mut params = judge::Params::from_spec(spec);
    // Every judgement of the change tests again: share the level among them all.
    params.alpha /= f64::from(plan.looks.max(1));
    params.canary_share_per_pod = plan.canary_share_per_pod;
    // Against a fresh baseline the young-pod effect is in the reference already: the records
    // (canary ÷ long-running control) neither apply nor grow from such a judgement.
    let fresh = plan.windows.iter().any(|w| w.group == "running");
    let out = judge::judge_with_history(&judged, &params, history.filter(|_| !fresh));
    let mut findings = out.findings;
    findings.append(&mut extra);
    let record = (!fresh)
        .then(|| judge::record(&judged, &params, "").to_status())
        .filter(|r| !r.metrics.is_empty());
    Judgement::Verdict {
        verdict: out.verdict,
        summary: out.summary,
        findings,
        record,
    }
}

/// Query every metric (the spec's, or the built-in ones whose series exist) for every group of
/// the plan, with every default filled in; the built-in metrics skipped come as findings. What
/// the judge reads, and what the dashboard plots. A failure is the judgement to report.
pub async fn fetch(
    spec: &AnalysisSpec,
    prom: &Prom,
    token: Option<&str>,
    plan: &QueryPlan,
) -> Result<(Vec<(Metric, MetricData)>, Vec<Finding>), Judgement> {
    let (metrics, extra) = match resolve_metrics(spec, prom, token, plan).await {
        Ok(m) => m,
        Err(QueryError::Rejected(e)) => return Err(Judgement::SpecError(e)),
        Err(QueryError::Unavailable(e)) => {
            return Err(Judgement::Error(format!("Prometheus: {e}")));
        }
    };
    // One task per (metric, part, group window): bounded concurrency keeps Prometheus calm.
    let mut tasks = Vec::new();
    for (mi, (index, m)) in metrics.iter().enumerate() {
        let parts: Vec<(&str, &String, String)> = match (&m.query, &m.numerator, &m.denominator) {
            (Some(q), _, _) => vec![("value", q, format!("analysis.metrics[{index}].query"))],
            (None, Some(n), Some(d)) => vec![
                (
                    "numerator",
                    n,
                    format!("analysis.metrics[{index}].numerator"),
                ),
                (
                    "denominator",
                    d,
                    format!("analysis.metrics[{index}].denominator"),
                ),
            ],
            _ => continue,
        };
        for (part, template, field) in parts {
            for (wi, w) in plan.windows.iter().enumerate() {
                let query = match render(template, &vars(plan, w)) {
                    Ok(q) => q,
                    Err(e) => return Err(Judgement::SpecError(FieldError::new(field.clone(), e))),
                };
                let field = if spec.metrics.is_some() {
                    field.clone()
                } else {
                    "analysis.metrics".to_string()
                };
                tasks.push(async move {
                    let r = range(
                        prom,
                        token,
                        &query,
                        w.from,
                        w.to,
                        step_secs(plan.interval_ms),
                        &field,
                    )
                    .await;
                    (mi, part, wi, r)
                });
            }
        }
    }
    let results: Vec<_> = futures::stream::iter(tasks)
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let mut parts: BTreeMap<(usize, &str), Groups> = BTreeMap::new();
    for (mi, part, wi, r) in results {
        let data = match r {
            Ok(d) => d,
            Err(QueryError::Rejected(e)) => return Err(Judgement::SpecError(e)),
            Err(QueryError::Unavailable(e)) => {
                return Err(Judgement::Error(format!("Prometheus: {e}")));
            }
        };
        let g = parts.entry((mi, part)).or_default();
        let w = &plan.windows[wi];
        match w.group {
            "change" => g.change = data,
            "control" => g.control = Some(data),
            "background" => g.background = Some(data),
            "running" => g.running = Some(data),
            _ => {
                let h = g.history.get_or_insert_with(GroupData::default);
                for (k, v) in data.0 {
                    h.0.entry(format!("{k}@{}", w.from.as_second()))
                        .or_default()
                        .extend(v);
                }
            }
        }
    }
    let mut judged = Vec::new();
    for (mi, (_, m)) in metrics.iter().enumerate() {
        let data = if m.query.is_some() {
            MetricData::Plain(parts.remove(&(mi, "value")).unwrap_or_default())
        } else {
            MetricData::Ratio {
                numerator: parts.remove(&(mi, "numerator")).unwrap_or_default(),
                denominator: parts.remove(&(mi, "denominator")).unwrap_or_default(),
            }
        };
        judged.push((Metric::from_spec(m), data));
    }
    Ok((judged, extra))
}

/// A `{{pods}}` pattern matching the workload's pods by name (for background and history,
/// whose pods may be gone).
pub fn workload_pods_regex(kind: TargetKind, target: &str) -> String {
    match kind {
        TargetKind::Deployment => format!("{}\\\\-[a-z0-9]+\\\\-[a-z0-9]+", escape_literal(target)),
        TargetKind::StatefulSet => format!("{}\\\\-[0-9]+", escape_literal(target)),
    }
}

/// The `{{pods}}` pattern of a change's background window. A guarded Deployment's canaries are
/// ReplicaSets of the Deployment itself, so a rolled-back bad canary's pods carry the workload's
/// name pattern: the background then takes only the pods of the ReplicaSet that ran when the
/// change started (its `pod-template-hash`), never an earlier failed canary's. An explicit change's
/// canaries are Deployments of their own (`<target>-canary-<change>`) and never match the target's
/// pattern; a StatefulSet's pods keep their names across revisions.
pub fn background_pods_regex(cr: &crate::api::ChangeRequest) -> String {
    let target = &cr.spec.target;
    let stable = cr
        .status
        .as_ref()
        .and_then(|s| s.stable_revision.as_deref())
        .filter(|h| !h.is_empty());
    match (target.kind, cr.spec.policy.is_some(), stable) {
        (TargetKind::Deployment, true, Some(hash)) => format!(
            "{}\\\\-{}\\\\-[a-z0-9]+",
            escape_literal(&target.name),
            escape_literal(hash)
        ),
        _ => workload_pods_regex(target.kind, &target.name),
    }
}

/// The groups and windows of one judgement.
pub fn plan_for(req: &JudgeRequest<'_>) -> QueryPlan {
    let spec = req.analysis;
    let interval = spec
        .interval
        .unwrap_or(crate::controller::state::DEFAULT_INTERVAL);
    let names =
        |pods: &[crate::rollout::GroupPod]| pods.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    let mut windows = vec![GroupWindow {
        group: "change",
        pods: pods_regex(&names(&req.groups.change)),
        from: req.window.from,
        to: req.window.to,
    }];
    // The reference of the batch and, with a fresh baseline, the long-running pods beside it.
    for (group, pods) in [
        ("control", &req.groups.control),
        ("running", &req.groups.running),
    ] {
        if !pods.is_empty() {
            windows.push(GroupWindow {
                group,
                pods: pods_regex(&names(pods)),
                from: req.window.from,
                to: req.window.to,
            });
        }
    }
    let workload = workload_pods_regex(req.cr.spec.target.kind, &req.cr.spec.target.name);
    let background = spec
        .baselines
        .as_ref()
        .and_then(|b| b.background)
        .unwrap_or(crate::api::Duration::from_secs(3600));
    if background.std() > Duration::ZERO {
        let from =
            req.change_started - jiff::SignedDuration::from_millis(background.as_millis_i64());
        windows.push(GroupWindow {
            group: "background",
            pods: background_pods_regex(req.cr),
            from,
            to: req.change_started,
        });
    }
    if spec
        .baselines
        .as_ref()
        .and_then(|b| b.history)
        .unwrap_or(false)
    {
        for days in [1, 7] {
            let back = jiff::SignedDuration::from_hours(24 * days);
            windows.push(GroupWindow {
                group: "history",
                pods: workload.clone(),
                from: req.window.from - back,
                to: req.window.to - back,
            });
        }
    }
    QueryPlan {
        namespace: req.cr.namespace().unwrap_or_default(),
        target: req.cr.spec.target.name.clone(),
        interval_ms: interval.as_millis_i64(),
        windows,
        looks: req.window.looks,
        // A traffic-weighted batch: the share its status records for the batch judged.
        canary_share_per_pod: req.cr.spec.traffic.as_ref().and_then(|_| {
            let st = req.cr.status.as_ref()?;
            let batch = st.batches.iter().find(|b| b.index == st.current_batch)?;
            share_per_pod(
                batch.traffic,
                req.groups.change.len(),
                req.groups.control.len(),
            )
        }),
    }
}

/// Merge the log findings into a metric judgement: any log failure fails the judgement.
pub fn merge_logs(metrics: Option<Judgement>, logs: Vec<Finding>) -> Judgement {
    let failing: Vec<&Finding> = logs
        .iter()
        .filter(|f| f.outcome == Some(Verdict::Fail))
        .collect();
    let log_summary = failing.first().map(|f| {
        format!(
            "log template {:?} ({}): {}",
            crate::util::trim_to(&f.metric, 80),
            f.detector,
            crate::util::trim_to(&f.explanation, 160)
        )
    });
    match metrics {
        Some(Judgement::Verdict {
            verdict,
            summary,
            findings,
            record,
        }) => {
            let mut all = logs.clone();
            all.extend(findings);
            match log_summary {
                Some(s) => Judgement::Verdict {
                    verdict: Verdict::Fail,
                    summary: s,
                    findings: all,
                    record,
                },
                None => Judgement::Verdict {
                    verdict,
                    summary,
                    findings: all,
                    record,
                },
            }
        }
        Some(other) => other,
        None => match log_summary {
            Some(s) => Judgement::Verdict {
                verdict: Verdict::Fail,
                summary: s,
                findings: logs,
                record: None,
            },
            None => Judgement::Verdict {
                verdict: Verdict::Pass,
                summary: "log templates of the change group look like the control group's".into(),
                findings: logs,
                record: None,
            },
        },
    }
}

#[async_trait::async_trait]
impl Analyzer for PrometheusAnalyzer {
    async fn judge(&self, req: JudgeRequest<'_>) -> Judgement {
        let ns = req.cr.namespace().unwrap_or_default();
        if req.groups.change.is_empty() {
            return Judgement::Verdict {
                verdict: Verdict::Inconclusive,
                summary: "no pods in the change group".into(),
                findings: Vec::new(),
                record: None,
            };
        }
        // `metrics: []` asks for no metric analysis (logs only): Prometheus is not needed then.
        let metrics_wanted = req.analysis.metrics.as_ref().is_none_or(|m| !m.is_empty());
        let metrics = if metrics_wanted {
            let (prom, token, _) = match client(
                req.analysis.prometheus.as_ref(),
                self.default_url.as_deref(),
                self.kube.as_ref(),
                &ns,
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return Judgement::Error(e),
            };
            let plan = plan_for(&req);
            Some(
                analyze(
                    req.analysis,
                    &prom,
                    token.as_deref(),
                    &plan,
                    req.history.as_ref(),
                )
                .await,
            )
        } else {
            None
        };
        let logs = match (&req.analysis.logs, &self.kube) {
            (Some(spec), Some(kube)) if !req.groups.control.is_empty() => {
                match crate::logs::fetch::fetch(
                    kube,
                    &ns,
                    &req.groups,
                    spec,
                    req.window.from,
                    req.change_started,
                )
                .await
                {
                    Ok(g) => {
                        // Every judgement of the change tests again, as for metrics: the
                        // level is shared among them all.
                        let mut params = crate::logs::detect::Params::from_spec(spec);
                        params.alpha /= f64::from(req.window.looks.max(1));
                        let mut found =
                            crate::logs::detect::detect(&g.change, &g.control, &g.before, &params);
                        // What the byte limit cut, so the evidence says what was judged.
                        found.extend(g.cuts);
                        found
                    }
                    Err(e) => return Judgement::Error(e),
                }
            }
            // After promotion no control pods are left to compare logs with; earlier batches did.
            _ => Vec::new(),
        };
        merge_logs(metrics, logs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_pods_share_of_the_requests_is_its_weight_over_its_pods() {
        // 1 pod at 1% beside 4 stable pods: 1% per canary pod, 24.75% per stable pod.
        let r = share_per_pod(Some(1), 1, 4).unwrap();
        assert!((r - 0.01 / 0.2475).abs() < 1e-12, "{r}");
        // 2 pods at 50% beside 2: even.
        assert_eq!(share_per_pod(Some(50), 2, 2), Some(1.0));
        // No share, no canary or control pods, or all on one side: nothing to scale.
        for (share, c, k) in [
            (None, 1, 4),
            (Some(5), 0, 4),
            (Some(5), 1, 0),
            (Some(100), 4, 1),
            (Some(0), 1, 4),
        ] {
            assert_eq!(share_per_pod(share, c, k), None);
        }
    }

    #[test]
    fn a_guarded_deployment_background_is_the_stable_replica_set_only() {
        let yaml = |policy: &str| {
            format!(
                "target: {{kind: Deployment, name: web}}\nimages: {{app: x}}\nbatches: [{{percent: 100}}]\n{policy}"
            )
        };
        let mut guarded = crate::api::ChangeRequest::new(
            "web-85a8c3d44a",
            serde_yaml::from_str(&yaml("policy: web-policy")).unwrap(),
        );
        // Before the change has measured its target: the workload's name pattern.
        assert_eq!(
            background_pods_regex(&guarded),
            workload_pods_regex(TargetKind::Deployment, "web")
        );
        guarded.status = Some(crate::api::ChangeRequestStatus {
            stable_revision: Some("6d4cf56db6".into()),
            ..Default::default()
        });
        let pattern = background_pods_regex(&guarded);
        assert_eq!(pattern, "web\\\\-6d4cf56db6\\\\-[a-z0-9]+");
        // As Prometheus reads it (PromQL string unescaped, RE2 anchored): the stable pods match,
        // a rolled-back canary ReplicaSet's pods of the same Deployment do not.
        let re = regex::Regex::new(&format!("^(?:{})$", pattern.replace("\\\\", "\\"))).unwrap();
        assert!(re.is_match("web-6d4cf56db6-x7k2p"));
        assert!(!re.is_match("web-85a8c3d44a-q9w8e"));
        // An explicit change keeps the workload's pattern: its canaries are other Deployments.
        let mut explicit =
            crate::api::ChangeRequest::new("v2", serde_yaml::from_str(&yaml("")).unwrap());
        explicit.status = guarded.status.clone();
        assert_eq!(
            background_pods_regex(&explicit),
            workload_pods_regex(TargetKind::Deployment, "web")
        );
    }
}
