//! Checks of a ChangeRequest spec that need no cluster. Each error names the field at fault.

use super::policy::is_dns_subdomain;
use super::{ChangeRequestSpec, Duration, TargetKind};
use crate::rollout::{plan::check_batches, template::check_patch};

/// A spec field that is wrong, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct FieldError {
    /// The field's path inside `spec`, like `batches[2].percent`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// A new error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Detector names a metric may ask for.
pub const DETECTORS: [&str; 8] = [
    "peers",
    "threshold",
    "mann-whitney",
    "proportion",
    "variance",
    "three-sigma",
    "kde",
    "dtw",
];

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// `config[]`: one object each (a ConfigMap or a Secret, named once), and one source of contents.
fn check_config(spec: &ChangeRequestSpec) -> Result<(), FieldError> {
    if spec.config.is_empty() {
        return Ok(());
    }
    if spec.target.kind == TargetKind::StatefulSet {
        return Err(FieldError::new(
            "config",
            "config changes roll out on Deployments only; give a StatefulSet's ConfigMap a new name per version instead (see docs/gitops.md, Config changes)",
        ));
    }
    if spec.policy.is_some() {
        return Err(FieldError::new(
            "config",
            "a guarded workload's change carries its template only",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in spec.config.iter().enumerate() {
        let (field, kind, name) = match (&c.config_map, &c.secret) {
            (Some(n), None) => ("configMap", "ConfigMap", n),
            (None, Some(n)) => ("secret", "Secret", n),
            _ => {
                return Err(FieldError::new(
                    format!("config[{i}]"),
                    "set exactly one of configMap and secret",
                ));
            }
        };
        if !is_dns_subdomain(name) {
            return Err(FieldError::new(
                format!("config[{i}].{field}"),
                format!("{name:?} is not a valid object name"),
            ));
        }
        if !seen.insert((kind, name.clone())) {
            return Err(FieldError::new(
                format!("config[{i}].{field}"),
                format!("{kind} {name} is named twice: give all its keys in one entry"),
            ));
        }
        if kind == "Secret" && !c.data.is_empty() {
            return Err(FieldError::new(
                format!("config[{i}].data"),
                "a Secret's values do not belong in a ChangeRequest (anyone who can read it would read them): put them in a Secret and name it in from",
            ));
        }
        match (&c.from, c.data.is_empty()) {
            (Some(from), true) => {
                if !is_dns_subdomain(from) {
                    return Err(FieldError::new(
                        format!("config[{i}].from"),
                        format!("{from:?} is not a valid object name"),
                    ));
                }
                if from == name {
                    return Err(FieldError::new(
                        format!("config[{i}].from"),
                        format!("{kind} {name} cannot be its own source"),
                    ));
                }
            }
            (None, false) => {}
            _ => {
                return Err(FieldError::new(
                    format!("config[{i}]"),
                    "set exactly one of data and from",
                ));
            }
        }
        for key in c.data.keys() {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
            if !ok {
                return Err(FieldError::new(
                    format!("config[{i}].data.{key}"),
                    "a key is made of letters, digits, '-', '_' and '.'",
                ));
            }
        }
    }
    Ok(())
}

/// Check everything in the spec that does not depend on the cluster.
pub fn check_spec(spec: &ChangeRequestSpec) -> Result<(), FieldError> {
    if !is_dns_label(&spec.target.name) {
        return Err(FieldError::new(
            "target.name",
            format!("{:?} is not a valid object name", spec.target.name),
        ));
    }
    if spec.images.is_empty()
        && spec.patch.is_none()
        && spec.template.is_none()
        && spec.config.is_empty()
    {
        return Err(FieldError::new(
            "images",
            "set images, patch, template or config: the change must alter the pod template or its configuration",
        ));
    }
    check_config(spec)?;
    if let Some(t) = &spec.template
        && !t.get("spec").is_some_and(|s| s.is_object())
    {
        return Err(FieldError::new(
            "template.spec",
            "a whole pod template needs its spec (an object with containers)",
        ));
    }
    for (container, image) in &spec.images {
        if container.is_empty() || image.trim().is_empty() {
            return Err(FieldError::new(
                format!("images.{container}"),
                "container name and image must be non-empty",
            ));
        }
    }
    if let Some(p) = &spec.patch {
        check_patch(p)?;
    }
    check_batches(&spec.batches)?;
    check_traffic(spec)?;
    if spec.baseline == crate::api::Baseline::Fresh
        && spec.target.kind == crate::api::TargetKind::StatefulSet
    {
        return Err(FieldError::new(
            "baseline",
            "fresh works for Deployments only: a StatefulSet's pods are its ordinals, so graygate cannot start extra pods of its old revision beside them",
        ));
    }
    if spec.progress_deadline == Duration::default() {
        return Err(FieldError::new(
            "progressDeadline",
            "must be longer than 0s",
        ));
    }
    if let Some(w) = &spec.window {
        w.check().map_err(|(f, m)| FieldError::new(f, m))?;
    }
    if let Some(a) = &spec.analysis {
        check_analysis(a)?;
    }
    Ok(())
}

/// `spec.traffic` and the batches' `traffic` shares, without the cluster (the route and
/// Services are checked before the change starts).
fn check_traffic(spec: &ChangeRequestSpec) -> Result<(), FieldError> {
    let Some(t) = &spec.traffic else {
        if let Some(i) = spec.batches.iter().position(|b| b.traffic.is_some()) {
            return Err(FieldError::new(
                format!("batches[{i}].traffic"),
                if spec.policy.is_some() {
                    "a traffic share needs change.traffic: the HTTPRoute whose weights graygate sets"
                } else {
                    "a traffic share needs spec.traffic: the HTTPRoute whose weights graygate sets"
                },
            ));
        }
        return Ok(());
    };
    let field = "traffic.gatewayAPI";
    if spec.target.kind != crate::api::TargetKind::Deployment {
        return Err(FieldError::new(
            "traffic",
            "traffic shares work for Deployments only (not StatefulSets, yet)",
        ));
    }
    if !spec.config.is_empty() {
        return Err(FieldError::new(
            "traffic",
            "a config change cannot be traffic-weighted yet: its objects' new contents reach every pod that restarts, whatever the weights",
        ));
    }
    if spec.policy.is_some() && spec.deletion_policy == crate::api::DeletionPolicy::Keep {
        return Err(FieldError::new(
            "deletionPolicy",
            "keep cannot keep a guarded Deployment's canary (its ReplicaSet goes with the ChangeRequest) while the route sends it requests: use rollback with traffic",
        ));
    }
    if spec.baseline == crate::api::Baseline::Fresh {
        return Err(FieldError::new(
            "baseline",
            "fresh does not work with spec.traffic yet: the stable Service is pinned to the long-running pods, so a fresh baseline would get no requests to compare",
        ));
    }
    for (name, value) in [
        ("httpRoute", &t.gateway_api.http_route),
        ("stableService", &t.gateway_api.stable_service),
        ("canaryService", &t.gateway_api.canary_service),
    ] {
        if !is_dns_label(value) {
            return Err(FieldError::new(
                format!("{field}.{name}"),
                format!("{value:?} is not a valid object name"),
            ));
        }
    }
    if t.gateway_api.stable_service == t.gateway_api.canary_service {
        return Err(FieldError::new(
            format!("{field}.canaryService"),
            "must differ from stableService: the canary's requests need a Service of their own",
        ));
    }
    if let Some(h) = &t.gateway_api.header
        && (h.name.trim().is_empty() || h.value.is_empty())
    {
        return Err(FieldError::new(
            format!("{field}.header"),
            "needs a header name and a value",
        ));
    }
    Ok(())
}

/// Check an analysis section on its own (also used by `graygate analyze`).
pub fn check_analysis(a: &super::AnalysisSpec) -> Result<(), FieldError> {
    if a.interval == Some(Duration::default()) {
        return Err(FieldError::new(
            "analysis.interval",
            "must be longer than 0s",
        ));
    }
    if a.failure_limit == Some(0) {
        return Err(FieldError::new(
            "analysis.failureLimit",
            "must be at least 1",
        ));
    }
    if a.min_samples == Some(0) {
        return Err(FieldError::new("analysis.minSamples", "must be at least 1"));
    }
    if let Some(p) = &a.prometheus {
        if let Some(addr) = &p.address
            && !(addr.starts_with("http://") || addr.starts_with("https://"))
        {
            return Err(FieldError::new(
                "analysis.prometheus.address",
                format!("{addr:?} must start with http:// or https://"),
            ));
        }
        if p.timeout == Some(Duration::default()) {
            return Err(FieldError::new(
                "analysis.prometheus.timeout",
                "must be longer than 0s",
            ));
        }
    }
    if let Some(metrics) = &a.metrics {
        let mut seen = std::collections::BTreeSet::new();
        for (i, m) in metrics.iter().enumerate() {
            let f = |name: &str| format!("analysis.metrics[{i}].{name}");
            if m.name.trim().is_empty() {
                return Err(FieldError::new(f("name"), "must not be empty"));
            }
            if !seen.insert(m.name.as_str()) {
                return Err(FieldError::new(
                    f("name"),
                    format!("{:?} is used twice", m.name),
                ));
            }
            match (&m.query, &m.numerator, &m.denominator) {
                (Some(_), None, None) | (None, Some(_), Some(_)) => {}
                (Some(_), _, _) => {
                    return Err(FieldError::new(
                        f("query"),
                        "set either query or numerator and denominator, not both",
                    ));
                }
                (None, Some(_), None) => {
                    return Err(FieldError::new(
                        f("denominator"),
                        "a ratio metric needs a denominator",
                    ));
                }
                (None, None, Some(_)) => {
                    return Err(FieldError::new(
                        f("numerator"),
                        "a ratio metric needs a numerator",
                    ));
                }
                (None, None, None) => {
                    return Err(FieldError::new(
                        f("query"),
                        "set query, or numerator and denominator",
                    ));
                }
            }
            for (part, template) in [
                ("query", &m.query),
                ("numerator", &m.numerator),
                ("denominator", &m.denominator),
            ] {
                if let Some(t) = template {
                    let vars = crate::analysis::template::VARIABLES
                        .iter()
                        .map(|v| (*v, "x".to_string()))
                        .collect();
                    if let Err(e) = crate::analysis::template::render(t, &vars) {
                        return Err(FieldError::new(f(part), e));
                    }
                    if t.trim().is_empty() {
                        return Err(FieldError::new(f(part), "must not be empty"));
                    }
                }
            }
            for (j, d) in m.detectors.iter().enumerate() {
                if !DETECTORS.contains(&d.as_str()) {
                    return Err(FieldError::new(
                        format!("analysis.metrics[{i}].detectors[{j}]"),
                        format!("unknown detector {d:?}; known: {}", DETECTORS.join(", ")),
                    ));
                }
                if d == "threshold" && m.threshold.is_none() {
                    return Err(FieldError::new(
                        f("threshold"),
                        "the threshold detector needs a threshold",
                    ));
                }
                if d == "proportion" && m.numerator.is_none() {
                    return Err(FieldError::new(
                        f("numerator"),
                        "the proportion detector needs a ratio metric (numerator and denominator)",
                    ));
                }
            }
            if let Some(d) = m.min_delta
                && !(d.is_finite() && d >= 0.0)
            {
                return Err(FieldError::new(
                    f("minDelta"),
                    "must be a number of at least 0",
                ));
            }
            if let Some(w) = m.weight
                && !(w.is_finite() && w > 0.0)
            {
                return Err(FieldError::new(f("weight"), "must be a number above 0"));
            }
            if let Some(t) = m.threshold
                && !t.is_finite()
            {
                return Err(FieldError::new(f("threshold"), "must be a finite number"));
            }
        }
    }
    if let Some(l) = &a.logs {
        if let Some(r) = l.ratio
            && !(r.is_finite() && r >= 1.0)
        {
            return Err(FieldError::new(
                "analysis.logs.ratio",
                "must be a number of at least 1",
            ));
        }
        if let Some(al) = l.alpha
            && !(al > 0.0 && al < 1.0)
        {
            return Err(FieldError::new(
                "analysis.logs.alpha",
                "must be between 0 and 1",
            ));
        }
        if l.max_bytes_per_pod.is_some_and(|b| b < 1) {
            return Err(FieldError::new(
                "analysis.logs.maxBytesPerPod",
                "must be at least 1",
            ));
        }
        if l.max_pods == Some(0) {
            return Err(FieldError::new(
                "analysis.logs.maxPods",
                "must be at least 1",
            ));
        }
        if l.min_count == Some(0) {
            return Err(FieldError::new(
                "analysis.logs.minCount",
                "must be at least 1",
            ));
        }
        for (i, re) in l.ignore.iter().enumerate() {
            if let Err(e) = regex::Regex::new(re) {
                return Err(FieldError::new(
                    format!("analysis.logs.ignore[{i}]"),
                    format!("not a valid regex: {e}"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ChangeRequestSpec;

    fn spec(yaml: &str) -> ChangeRequestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn a_config_change_is_checked_entry_by_entry_and_the_error_names_the_field() {
        let with = |target: &str, config: &str| {
            check_spec(&spec(&format!(
                "target: {{kind: {target}, name: web}}\nconfig: {config}\nbatches: [{{percent: 100}}]"
            )))
        };
        with(
            "Deployment",
            "[{configMap: web-config, data: {LOG_LEVEL: debug}}]",
        )
        .unwrap();
        with(
            "Deployment",
            "[{secret: web-db, from: web-db-v2}, {configMap: flags, from: flags-v2}]",
        )
        .unwrap();
        for (target, config, field, says) in [
            (
                "StatefulSet",
                "[{configMap: c, data: {a: b}}]",
                "config",
                "Deployments only",
            ),
            (
                "Deployment",
                "[{data: {a: b}}]",
                "config[0]",
                "one of configMap and secret",
            ),
            (
                "Deployment",
                "[{configMap: c, secret: s, data: {a: b}}]",
                "config[0]",
                "one of configMap and secret",
            ),
            (
                "Deployment",
                "[{configMap: c}]",
                "config[0]",
                "one of data and from",
            ),
            (
                "Deployment",
                "[{configMap: c, data: {a: b}, from: d}]",
                "config[0]",
                "one of data and from",
            ),
            (
                "Deployment",
                "[{secret: s, data: {password: x}}]",
                "config[0].data",
                "do not belong",
            ),
            (
                "Deployment",
                "[{configMap: Bad_Name, data: {a: b}}]",
                "config[0].configMap",
                "not a valid object name",
            ),
            (
                "Deployment",
                "[{secret: s, from: s}]",
                "config[0].from",
                "its own source",
            ),
            (
                "Deployment",
                "[{configMap: c, data: {\"a b\": x}}]",
                "config[0].data.a b",
                "a key is made of",
            ),
            (
                "Deployment",
                "[{configMap: c, data: {a: b}}, {configMap: c, data: {d: e}}]",
                "config[1].configMap",
                "named twice",
            ),
        ] {
            let e = with(target, config).unwrap_err();
            assert_eq!(e.field, field, "{config}: {e}");
            assert!(e.message.contains(says), "{config}: {e}");
        }
        // A ConfigMap and a Secret may share a name: they are different objects.
        with(
            "Deployment",
            "[{configMap: c, data: {a: b}}, {secret: c, from: d}]",
        )
        .unwrap();
    }

    const GOOD: &str = r#"
target: {kind: Deployment, name: web}
images: {app: "web:2"}
batches: [{percent: 10, bake: 30s}, {percent: 100}]
"#;

    #[test]
    fn good_spec_passes_with_defaults() {
        let s = spec(GOOD);
        assert!(check_spec(&s).is_ok());
        assert_eq!(s.progress_deadline, Duration::from_secs(600));
        assert_eq!(s.on_anomaly, crate::api::OnAnomaly::Rollback);
        assert_eq!(s.on_analysis_error, crate::api::OnAnalysisError::Pause);
        assert_eq!(s.batches[1].bake, Duration::from_secs(60));
    }

    fn field_of(yaml_patch: &str) -> String {
        let mut v: serde_yaml::Value = serde_yaml::from_str(GOOD).unwrap();
        let p: serde_yaml::Value = serde_yaml::from_str(yaml_patch).unwrap();
        if let (serde_yaml::Value::Mapping(m), serde_yaml::Value::Mapping(pm)) = (&mut v, p) {
            for (k, val) in pm {
                if val.is_null() {
                    m.remove(&k);
                } else {
                    m.insert(k, val);
                }
            }
        }
        let s: ChangeRequestSpec = serde_yaml::from_value(v).unwrap();
        check_spec(&s).unwrap_err().field
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(
            field_of("target: {kind: Deployment, name: Web_1}"),
            "target.name"
        );
        assert_eq!(field_of("images: null"), "images");
        assert_eq!(field_of("images: {app: ' '}"), "images.app");
        assert_eq!(field_of("patch: {status: {}}"), "patch.status");
        assert_eq!(field_of("batches: [{percent: 50}]"), "batches[0].percent");
        assert_eq!(field_of("progressDeadline: 0s"), "progressDeadline");
        assert_eq!(
            field_of("target: {kind: StatefulSet, name: db}\nbaseline: fresh"),
            "baseline"
        );
        assert_eq!(
            field_of("window: {timeZone: Nowhere/Land, start: '09:00', end: '10:00'}"),
            "window.timeZone"
        );
        assert_eq!(field_of("analysis: {interval: 0s}"), "analysis.interval");
        assert_eq!(
            field_of("analysis: {failureLimit: 0}"),
            "analysis.failureLimit"
        );
        assert_eq!(
            field_of("analysis: {prometheus: {address: 'prom:9090'}}"),
            "analysis.prometheus.address"
        );
        assert_eq!(
            field_of("analysis: {metrics: [{name: a}]}"),
            "analysis.metrics[0].query"
        );
        assert_eq!(
            field_of("analysis: {metrics: [{name: a, query: q}, {name: a, query: q}]}"),
            "analysis.metrics[1].name"
        );
        assert_eq!(
            field_of("analysis: {metrics: [{name: a, query: q, detectors: [magic]}]}"),
            "analysis.metrics[0].detectors[0]"
        );
        assert_eq!(
            field_of("analysis: {metrics: [{name: a, query: q, detectors: [threshold]}]}"),
            "analysis.metrics[0].threshold"
        );
        assert_eq!(
            field_of("analysis: {metrics: [{name: a, numerator: q}]}"),
            "analysis.metrics[0].denominator"
        );
        assert_eq!(
            field_of("analysis: {logs: {alpha: 2}}"),
            "analysis.logs.alpha"
        );
        assert_eq!(
            field_of("analysis: {logs: {ignore: ['(']}}"),
            "analysis.logs.ignore[0]"
        );
    }

    #[test]
    fn bad_duration_is_a_parse_error() {
        let r: Result<ChangeRequestSpec, _> = serde_yaml::from_str(
            "target: {kind: Deployment, name: web}\nimages: {a: b}\nbatches: [{percent: 100, bake: 5 minutes}]",
        );
        assert!(r.unwrap_err().to_string().contains("invalid duration"));
    }

    #[test]
    fn traffic_shares_are_checked_and_the_error_names_the_field() {
        let route = "traffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web-canary}}";
        let with = |extra: &str, batches: &str| {
            check_spec(&spec(&format!(
                "target: {{kind: Deployment, name: web}}\nimages: {{a: b}}\n{extra}\nbatches: {batches}"
            )))
        };
        assert!(
            with(
                route,
                "[{replicas: 1, traffic: 5%}, {percent: 50, traffic: 50}, {percent: 100}]"
            )
            .is_ok()
        );
        // The same pods, a larger share: a batch of its own.
        assert!(
            with(
                route,
                "[{replicas: 1, traffic: 1%}, {replicas: 1, traffic: 10%}, {percent: 100}]"
            )
            .is_ok()
        );
        let field = |extra: &str, batches: &str| with(extra, batches).unwrap_err().field;
        assert_eq!(
            field("", "[{replicas: 1, traffic: 5%}, {percent: 100}]"),
            "batches[0].traffic"
        );
        assert_eq!(
            field(route, "[{replicas: 1, traffic: 105%}, {percent: 100}]"),
            "batches[0].traffic"
        );
        assert_eq!(
            field(route, "[{replicas: 1, traffic: lots}, {percent: 100}]"),
            "batches[0].traffic"
        );
        assert_eq!(
            field(
                route,
                "[{replicas: 1, traffic: 5%}, {percent: 100, traffic: 50%}]"
            ),
            "batches[1].traffic"
        );
        assert_eq!(
            field(
                route,
                "[{replicas: 1, traffic: 5%}, {replicas: 1, traffic: 5%}, {percent: 100}]"
            ),
            "batches[1].replicas"
        );
        assert_eq!(
            field(
                "traffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web}}",
                "[{percent: 100}]"
            ),
            "traffic.gatewayAPI.canaryService"
        );
        assert_eq!(
            field(
                "traffic: {gatewayAPI: {httpRoute: Web_1, stableService: web, canaryService: c}}",
                "[{percent: 100}]"
            ),
            "traffic.gatewayAPI.httpRoute"
        );
        assert_eq!(
            field(&format!("{route}\nbaseline: fresh"), "[{percent: 100}]"),
            "baseline"
        );
        let sts = check_spec(&spec(&format!(
            "target: {{kind: StatefulSet, name: web}}\nimages: {{a: b}}\n{route}\nbatches: [{{percent: 100}}]"
        )));
        assert_eq!(sts.unwrap_err().field, "traffic");
    }
}
