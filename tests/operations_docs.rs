//! docs/operations.md and the Grafana dashboard against the code: every exported metric is in
//! the metrics reference (with its type) and only those; the RBAC table is `graygate::access`;
//! every plugin verb is documented; every metric the dashboard queries exists.

use clap::CommandFactory;
use graygate::access::{OPERATOR_ACCESS, Scope};
use graygate::controller::metrics::Metrics;
use std::collections::BTreeMap;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Exported metric families and their types, from the operator's own registry (with a sample in
/// every labelled family, since empty families are not exposed).
fn exported() -> BTreeMap<String, String> {
    use graygate::controller::metrics::CategoryLabel;
    let m = Metrics::default();
    m.errors
        .get_or_create(&CategoryLabel {
            category: "Conflict".into(),
        })
        .inc();
    m.set_phase("shop", "web-v2", Some((graygate::api::Phase::Paused, 1)));
    m.held("Deployment");
    m.set_outcome("shop", "web-v1", Some(("stopped", "real-fault")));
    m.notification_sink("team");
    m.unguarded
        .get_or_create(&graygate::controller::metrics::WorkloadLabel {
            namespace: "shop".into(),
            kind: "Deployment".into(),
        })
        .inc();
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| {
            let (name, ty) = l.split_once(' ').unwrap();
            // Counters are exposed as <family>_total.
            let name = if ty == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            (name, ty.to_string())
        })
        .collect()
}

fn table_rows<'a>(doc: &'a str, heading: &str) -> Vec<Vec<&'a str>> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no '## {heading}' section"));
    section
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("|---"))
        .skip(1)
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

#[test]
fn the_metrics_reference_lists_every_exported_metric_with_its_type() {
    let doc = read("docs/operations.md");
    let documented: BTreeMap<String, String> = table_rows(&doc, "Metrics")
        .into_iter()
        .map(|r| (r[0].trim_matches('`').to_string(), r[1].to_string()))
        .collect();
    assert_eq!(
        documented,
        exported(),
        "docs/operations.md's metrics table differs from what graygate exports"
    );
}

#[test]
fn the_rbac_table_is_the_access_table() {
    let doc = read("docs/operations.md");
    let rows = table_rows(&doc, "RBAC");
    let documented: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            let group = match r[0] {
                "core" => String::new(),
                g => g.trim_matches('`').to_string(),
            };
            (
                group,
                r[1].trim_matches('`').to_string(),
                r[2].to_string(),
                r[3].to_string(),
            )
        })
        .collect();
    let code: Vec<(String, String, String, String)> = OPERATOR_ACCESS
        .iter()
        .map(|a| {
            (
                a.group.to_string(),
                a.resource.to_string(),
                a.verbs.join(", "),
                match a.scope {
                    Scope::Watched => "watched namespaces".to_string(),
                    Scope::Operator => "the operator's namespace".to_string(),
                    Scope::Cluster => "cluster (by name)".to_string(),
                    Scope::Everyone => "any authenticated user (Kubernetes' default)".to_string(),
                },
            )
        })
        .collect();
    assert_eq!(
        documented, code,
        "docs/operations.md's RBAC table differs from src/access.rs"
    );
}

#[test]
fn every_plugin_verb_is_documented() {
    let doc = read("docs/operations.md");
    let cmd = graygate::cli::plugin::PluginCli::command();
    let verbs: Vec<String> = cmd
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    assert!(verbs.len() >= 7, "{verbs:?}");
    for v in verbs {
        assert!(
            doc.contains(&format!("| `kubectl graygate {v}")),
            "docs/operations.md does not document `kubectl graygate {v}`"
        );
    }
}

#[test]
fn the_dashboard_and_alerts_query_only_metrics_graygate_exports() {
    let exported = exported();
    let known = |m: &str| {
        exported.contains_key(m)
            || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                m.strip_suffix(suffix)
                    .is_some_and(|base| exported.get(base).is_some_and(|t| t == "histogram"))
            })
    };
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("charts/graygate/dashboards/graygate.json")).unwrap();
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    exprs.push(read("charts/graygate/templates/prometheusrule.yaml"));
    let mut seen = 0;
    for e in &exprs {
        for (i, _) in e.match_indices("graygate_") {
            // Skip names that are part of other identifiers (graygate.fullname, graygate-…).
            if i > 0 && e.as_bytes()[i - 1].is_ascii_alphanumeric() {
                continue;
            }
            let name: String = e[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                known(&name),
                "{name} is queried but graygate does not export it"
            );
            seen += 1;
        }
    }
    assert!(
        seen > 15,
        "expected the dashboard and alerts to query graygate metrics"
    );
}
