//! The `analysis` section of a ChangeRequest and the evidence it records.

use super::Verdict;
use super::duration::Duration;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How each batch is judged while it bakes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// The Prometheus to query; defaults to the operator's `--prometheus-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
    /// How often a baking batch is judged (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Failing judgements in a row before the batch fails (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_limit: Option<u32>,
    /// Samples each group needs before the `mann-whitney`, `variance`, `kde`, `three-sigma` and
    /// `threshold` detectors can decide (default 10). The default `peers` detector needs no count:
    /// it decides as soon as a failure could be shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_samples: Option<u32>,
    /// Time after a batch's pods become ready that analysis skips: young pods warm caches and
    /// JITs (default 1m, but at most a third of the batch's bake).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Duration>,
    /// Metrics to compare. Omitted: the built-in set (error ratio, p99 latency, CPU, restarts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Vec<MetricSpec>>,
    /// Which reference groups to compare the change group with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baselines: Option<BaselinesSpec>,
    /// Log template analysis. Omitted: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<LogAnalysisSpec>,
}

/// Where and how to reach Prometheus.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL, like `http://prometheus.monitoring:9090`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// A Secret key in the ChangeRequest's namespace holding a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_secret: Option<SecretKeyRef>,
    /// Skip TLS certificate verification (test setups only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Per-query timeout (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// A key of a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The key inside the Secret.
    pub key: String,
}

/// Which way a metric gets worse.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Higher is worse (errors, latency).
    #[default]
    Increase,
    /// Lower is worse (throughput, success rate).
    Decrease,
    /// Any difference is worse.
    Either,
}

/// What a metric measures; it decides the metric's defaults.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Hash)]
#[serde(rename_all = "camelCase")]
pub enum MetricKind {
    /// Failed requests, error ratios, success rates: the smallest sustained difference counts (1%).
    Errors,
    /// Response times: a difference must reach 25% beyond the control pods' own spread.
    Latency,
    /// CPU use: a new version may need more; only a doubling counts.
    Cpu,
    /// Memory and other resource levels: young pods differ by construction, so by default the
    /// metric is reported but never fails a batch on its own (set `critical: true` to change that).
    Memory,
    /// Anything else: judged like latency.
    Other,
}

/// One metric to compare between groups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricSpec {
    /// A short name used in findings.
    pub name: String,
    /// A PromQL template giving one series per pod or one per group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// For ratio metrics: the PromQL template of the count that is bad (e.g. 5xx requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerator: Option<String>,
    /// For ratio metrics: the PromQL template of all counts (e.g. all requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<String>,
    /// Which way is worse (default increase).
    #[serde(default)]
    pub direction: Direction,
    /// What the metric measures (errors, latency, cpu, memory, other); inferred from the name
    /// and query when omitted. It sets the default minimum effect and whether the metric can
    /// fail a batch on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MetricKind>,
    /// Detectors to run; empty means the defaults (`peers` for values, `proportion` for ratios).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<String>,
    /// Absolute bound for the `threshold` detector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Smallest relative change that matters (0.1 = 10%); smaller significant differences pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_delta: Option<f64>,
    /// Not enough data for a critical metric makes the judgement inconclusive; a critical
    /// memory metric can fail a batch.
    #[serde(default)]
    pub critical: bool,
    /// 0 makes the metric advisory (reported, never failing a batch); any other value is kept
    /// for compatibility and has no effect (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
}

/// Reference groups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct BaselinesSpec {
    /// Compare with pods of the old template at the same time (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<bool>,
    /// Window before the change started to compare with (default 1h; `0s` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<Duration>,
    /// Compare with the same window 1 day and 7 days earlier (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<bool>,
    /// The workload's released changes a judgement learns from: how their canaries departed from
    /// the control at the same age widens the band of a later change (default 10; 0 turns it
    /// off; it takes 3 before anything changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 50))]
    pub past_changes: Option<u32>,
}

/// Log template analysis settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LogAnalysisSpec {
    /// Container whose logs are read (default: the first container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// Times a template must appear in the change group to count as new (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_count: Option<u32>,
    /// Per-pod rate ratio, change over control, that makes a surge (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Significance level of the surge test (default 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Most bytes read from one pod's log per judgement (default 1048576).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_pod: Option<i64>,
    /// Most pods read per group (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pods: Option<u32>,
    /// Regexes of lines to ignore.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore: Vec<String>,
}

/// One piece of evidence from a judgement.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The metric or log template this is about.
    pub metric: String,
    /// The detector that produced it.
    pub detector: String,
    /// The groups compared, like `change vs control`.
    pub groups: String,
    /// pass, fail or inconclusive; absent for what is shown and not judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Verdict>,
    /// The detector's score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// The threshold the score was held against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// One line a person can read.
    pub explanation: String,
    /// The noise rule that turned a failure into a pass, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed_by: Option<String>,
}
