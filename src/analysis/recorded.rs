//! Judging recorded data (`graygate analyze --input` and `--cases`, the real-data evaluation):
//! the production judgement on series read from a file instead of Prometheus.

use super::defaults::default_metrics;
use super::history::{History, Record};
use super::input::Recorded;
use super::judge::{self, Groups, Metric, MetricData};
use crate::api::{AnalysisSpec, MetricSpec};

/// The spec's metrics, or the built-in ones when it names none.
pub fn spec_metrics(spec: &AnalysisSpec) -> Vec<MetricSpec> {
    spec.metrics
        .clone()
        .unwrap_or_else(|| default_metrics().into_iter().map(|(m, _)| m).collect())
}

/// Settings a backtest may vary instead of the defaults (for cross-validation).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tuning {
    /// Minimum effect of latency and other value metrics that do not set `minDelta`.
    pub value_min_delta: Option<f64>,
    /// `peers` far factor, far slots and run length.
    pub peers: Option<(f64, usize, usize)>,
}

/// The warm-up `analyze` skips after the window's start when the spec sets none.
pub const DEFAULT_WARMUP_SECS: f64 = 60.0;

/// Judge recorded data (with the workload's history, when given): the change group's samples in the warm-up after `window[0]` are skipped.
pub fn judge_recorded(
    spec: &AnalysisSpec,
    recorded: Recorded,
    tuning: &Tuning,
    history: Option<&History>,
) -> Result<judge::Outcome, String> {
    let (metrics, params) = prepare(spec, recorded, tuning)?;
    Ok(judge::judge_with_history(&metrics, &params, history))
}

/// Judge recorded data with the workload's history and, when `record_as` names the change, also
/// return the record it leaves for the workload's later changes (from the same prepared data).
pub fn judge_and_record(
    spec: &AnalysisSpec,
    recorded: Recorded,
    tuning: &Tuning,
    history: Option<&History>,
    record_as: Option<&str>,
) -> Result<(judge::Outcome, Option<Record>), String> {
    let (metrics, params) = prepare(spec, recorded, tuning)?;
    let outcome = judge::judge_with_history(&metrics, &params, history);
    let record = record_as.map(|change| judge::record(&metrics, &params, change));
    Ok((outcome, record))
}

/// The metrics of the spec with the recorded data, and the judgement's parameters.
fn prepare(
    spec: &AnalysisSpec,
    recorded: Recorded,
    tuning: &Tuning,
) -> Result<(Vec<(Metric, MetricData)>, judge::Params), String> {
    let mut data = recorded.metrics;
    let metrics = spec_metrics(spec);
    for name in data.keys() {
        if !metrics.iter().any(|m| &m.name == name) {
            let known: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
            return Err(format!(
                "metrics.{name}: not a metric of the spec (known: {})",
                known.join(", ")
            ));
        }
    }
    let mut judged = Vec::new();
    for m in &metrics {
        let ratio = m.numerator.is_some();
        let d = match data.remove(&m.name) {
            Some(MetricData::Ratio { .. }) if !ratio => {
                return Err(format!(
                    "metrics.{}: the spec has a query, the input numerator/denominator",
                    m.name
                ));
            }
            Some(MetricData::Plain(_)) if ratio => {
                return Err(format!(
                    "metrics.{}: the spec is a ratio metric; give numerator and denominator",
                    m.name
                ));
            }
            Some(d) => d,
            None if ratio => MetricData::Ratio {
                numerator: Groups::default(),
                denominator: Groups::default(),
            },
            None => MetricData::Plain(Groups::default()),
        };
        let mut metric = Metric::from_spec(m);
        if let Some(delta) = tuning.value_min_delta
            && m.min_delta.is_none()
            && !ratio
            && matches!(
                metric.kind,
                crate::api::MetricKind::Latency | crate::api::MetricKind::Other
            )
        {
            metric.min_delta = delta;
        }
        judged.push((metric, d));
    }
    let mut params = judge::Params::from_spec(spec);
    if let Some((far, far_samples, long)) = tuning.peers {
        params.far = far;
        params.far_samples = far_samples;
        params.long = long;
    }
    let warmup = spec
        .warmup
        .map(|w| w.as_millis_i64() as f64 / 1000.0)
        .unwrap_or(DEFAULT_WARMUP_SECS);
    params.skip_change_before = recorded.window.map(|(from, _)| from + warmup);
    Ok((judged, params))
}
