//! The built-in metric set, used when a ChangeRequest's analysis lists no metrics: request
//! error ratio, p99 latency from the request histogram, CPU, and container restarts.

use crate::api::{Direction, MetricSpec};

/// The metric names the defaults need; a default applies only where its series exist.
pub fn default_metrics() -> Vec<(MetricSpec, &'static str)> {
    vec![
        (
            MetricSpec {
                name: "error-ratio".into(),
                numerator: Some(r#"sum by (pod) (rate(http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}",code=~"5.."}[{{interval}}]))"#.into()),
                denominator: Some(r#"sum by (pod) (rate(http_requests_total{namespace="{{namespace}}",pod=~"{{pods}}"}[{{interval}}]))"#.into()),
                direction: Direction::Increase,
                detectors: vec!["proportion".into()],
                min_delta: Some(0.002),
                critical: true,
                ..Default::default()
            },
            "http_requests_total",
        ),
        (
            MetricSpec {
                name: "latency-p99".into(),
                query: Some(r#"histogram_quantile(0.99, sum by (pod, le) (rate(http_request_duration_seconds_bucket{namespace="{{namespace}}",pod=~"{{pods}}"}[{{interval}}])))"#.into()),
                direction: Direction::Increase,
                critical: true,
                ..Default::default()
            },
            "http_request_duration_seconds_bucket",
        ),
        (
            MetricSpec {
                name: "cpu".into(),
                query: Some(r#"sum by (pod) (rate(container_cpu_usage_seconds_total{namespace="{{namespace}}",pod=~"{{pods}}"}[{{interval}}]))"#.into()),
                direction: Direction::Increase,
                // Young pods use more CPU while they warm up, and a new version may need more:
                // the cpu kind's default minimum effect is a doubling.
                critical: false,
                ..Default::default()
            },
            "container_cpu_usage_seconds_total",
        ),
        (
            MetricSpec {
                name: "restarts".into(),
                query: Some(r#"sum by (pod) (increase(kube_pod_container_status_restarts_total{namespace="{{namespace}}",pod=~"{{pods}}"}[{{interval}}]))"#.into()),
                direction: Direction::Increase,
                detectors: vec!["threshold".into()],
                threshold: Some(0.0),
                critical: true,
                ..Default::default()
            },
            "kube_pod_container_status_restarts_total",
        ),
    ]
}
