//! The Helm chart against the code: its RBAC grants exactly the API calls in `graygate::access`
//! (no fewer, no more), in the right scope, and the operator accepts the arguments it renders.
//!
//! Rendering goes through `scripts/chart/check.py --render` (Helm's Go SDK from PyPI's
//! helm-python-sdk; `make deps` installs it).

use graygate::access::{OPERATOR_ACCESS, Scope};
use serde_yaml::Value;
use std::collections::BTreeSet;
use std::process::Command;

const RELEASE_NS: &str = "graygate-system";
const SERVICE_ACCOUNT: &str = "graygate";

fn render(values: &str) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/chart/check.py"))
        .args(["--render", values])
        .output()
        .expect("python3 runs (make deps installs the chart tools)");
    assert!(
        out.status.success(),
        "rendering the chart with {values} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_str().unwrap_or("")
}

/// One granted permission: (namespace or "*" for cluster-wide, group, resource, verb).
type Grant = (String, String, String, String);

/// What the operator's ServiceAccount may do, from the rendered (Cluster)Roles and bindings.
fn operator_grants(docs: &[Value]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    let bound_to_operator = |b: &Value| {
        b["subjects"].as_sequence().is_some_and(|subs| {
            subs.iter().any(|x| {
                s(x, &["kind"]) == "ServiceAccount"
                    && s(x, &["name"]) == SERVICE_ACCOUNT
                    && s(x, &["namespace"]) == RELEASE_NS
            })
        })
    };
    for b in docs.iter().filter(|d| bound_to_operator(d)) {
        let (binding_kind, role_kind, role_name) = (
            s(b, &["kind"]),
            s(b, &["roleRef", "kind"]),
            s(b, &["roleRef", "name"]),
        );
        let scope = match binding_kind {
            "ClusterRoleBinding" => "*".to_string(),
            "RoleBinding" => s(b, &["metadata", "namespace"]).to_string(),
            other => panic!("unexpected binding kind {other}"),
        };
        let role = docs
            .iter()
            .find(|d| {
                s(d, &["kind"]) == role_kind
                    && s(d, &["metadata", "name"]) == role_name
                    && (role_kind == "ClusterRole" || s(d, &["metadata", "namespace"]) == scope)
            })
            .unwrap_or_else(|| panic!("{binding_kind} refers to missing {role_kind} {role_name}"));
        for rule in role["rules"].as_sequence().unwrap() {
            let list = |k: &str| -> Vec<String> {
                rule[k]
                    .as_sequence()
                    .map(|xs| xs.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                    .unwrap_or_default()
            };
            for g in list("apiGroups") {
                for r in list("resources") {
                    for v in list("verbs") {
                        assert!(g != "*" && r != "*" && v != "*", "wildcard in {role_name}");
                        out.insert((scope.clone(), g.clone(), r.clone(), v));
                    }
                }
            }
        }
    }
    out
}

/// What `graygate::access` says the operator needs, given the namespaces it watches.
fn needed(watch: &[&str]) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for a in OPERATOR_ACCESS {
        let scopes: Vec<String> = match a.scope {
            Scope::Operator => vec![RELEASE_NS.into()],
            Scope::Cluster => vec!["*".into()],
            Scope::Everyone => vec![],
            Scope::Watched if watch.is_empty() => vec!["*".into()],
            Scope::Watched => watch.iter().map(|n| n.to_string()).collect(),
        };
        for ns in scopes {
            for v in a.verbs {
                out.insert((ns.clone(), a.group.into(), a.resource.into(), v.to_string()));
            }
        }
    }
    out
}

fn assert_exact(values: &str, watch: &[&str]) {
    let granted = operator_grants(&render(values));
    let needed = needed(watch);
    let missing: Vec<_> = needed.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&needed).collect();
    assert!(
        missing.is_empty(),
        "{values}: the chart does not grant calls the code makes: {missing:#?}"
    );
    assert!(
        extra.is_empty(),
        "{values}: the chart grants more than the code uses (least privilege): {extra:#?}"
    );
}

#[test]
fn cluster_wide_rbac_is_exactly_the_calls_the_code_makes() {
    assert_exact("-", &[]);
}

#[test]
fn namespaced_rbac_is_exactly_the_calls_the_code_makes_in_each_namespace() {
    assert_exact("ci/namespaced-values.yaml", &["shop", "payments"]);
}

#[test]
fn every_values_file_grants_what_the_code_needs() {
    for values in [
        "ci/ha-values.yaml",
        "ci/servicemonitor-values.yaml",
        "ci/notifications-values.yaml",
    ] {
        assert_exact(values, &[]);
    }
}

#[test]
fn the_operator_accepts_the_arguments_the_chart_renders() {
    for values in ["-", "ci/namespaced-values.yaml", "ci/ha-values.yaml"] {
        let docs = render(values);
        let dep = docs
            .iter()
            .find(|d| s(d, &["kind"]) == "Deployment")
            .expect("a Deployment");
        let container = &dep["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        // With no cluster to reach, a run whose arguments parse fails only at connecting.
        let out = Command::new(env!("CARGO_BIN_EXE_graygate"))
            .args(&args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", "/nonexistent")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot reach the cluster"),
            "{values}: graygate {args:?} should parse and fail only at connecting; got:\n{err}"
        );
    }
}

#[test]
fn the_notification_file_the_chart_renders_is_one_graygate_reads_with_every_url_mounted() {
    let docs = render("ci/notifications-values.yaml");
    let cm = docs
        .iter()
        .find(|d| {
            s(d, &["kind"]) == "ConfigMap"
                && s(d, &["metadata", "name"]).ends_with("-notifications")
        })
        .expect("the notifications ConfigMap");
    let config = graygate::notify::Config::parse(s(cm, &["data", "notifications.yaml"]))
        .unwrap_or_else(|e| panic!("graygate refuses the chart's notification file: {e}"));
    assert_eq!(config.sinks.len(), 2);
    assert_eq!(
        config.dashboard_url.as_deref(),
        Some("https://graygate.example.com")
    );
    let dep = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "Deployment")
        .unwrap();
    let pod = &dep["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        args.contains(&"--notifications=/etc/graygate/notifications.yaml"),
        "{args:?}"
    );
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    let volumes = pod["volumes"].as_sequence().unwrap();
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/graygate/ci/notifications-values.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    for (sink, given) in config
        .sinks
        .iter()
        .zip(values["notifications"]["sinks"].as_sequence().unwrap())
    {
        // The URL file lies in a mount of the Secret's key the values name, as `url`.
        let file = sink.url_file.as_ref().unwrap();
        let dir = file.parent().unwrap().to_str().unwrap();
        assert_eq!(file.file_name().unwrap(), "url");
        let mount = mounts
            .iter()
            .find(|m| s(m, &["mountPath"]) == dir)
            .unwrap_or_else(|| panic!("nothing mounted at {dir}"));
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(
            s(volume, &["secret", "secretName"]),
            s(given, &["urlSecret", "name"])
        );
        assert_eq!(
            volume["secret"]["items"][0]["key"],
            given["urlSecret"]["key"]
        );
        assert_eq!(s(&volume["secret"]["items"][0], &["path"]), "url");
    }
}

/// `graygate install --webhook-url` prints the chart's webhook configuration (its docs say so):
/// every field of the webhook but how it is reached.
#[test]
fn graygate_install_writes_the_webhook_the_chart_renders() {
    let docs = render("-");
    let chart = docs
        .iter()
        .find(|d| s(d, &["kind"]) == "MutatingWebhookConfiguration")
        .expect("the chart renders a webhook configuration");
    let mut chart: serde_json::Value =
        serde_json::to_value(&chart["webhooks"]).expect("YAML is JSON");
    let args = graygate::cli::install::InstallArgs {
        namespace: RELEASE_NS.into(),
        name: "graygate".into(),
        webhook_url: Some("https://127.0.0.1:9443/mutate".into()),
        failure_policy: "Ignore".into(),
    };
    let installed = graygate::cli::install::objects(&args).unwrap();
    let mut installed = installed
        .iter()
        .find(|o| o["kind"] == "MutatingWebhookConfiguration")
        .expect("install prints a webhook configuration")["webhooks"]
        .clone();
    for hooks in [&mut chart, &mut installed] {
        for w in hooks.as_array_mut().unwrap() {
            w.as_object_mut().unwrap().remove("clientConfig");
        }
    }
    // The workloads' webhook and the pods' (pinned config).
    assert_eq!(chart.as_array().map(Vec::len), Some(2));
    assert_eq!(installed, chart);
}
