//! `graygate install`: everything a cluster needs for graygate without Helm, as YAML for
//! `kubectl apply -f -`: both CRDs, the operator's namespace, ServiceAccount and RBAC (written
//! from the same access table as the chart's), and, for a graygate that serves its admission
//! webhook from outside the cluster, the webhook configuration with a `url:`.

use crate::access::{OPERATOR_ACCESS, Scope};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// `graygate install` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct InstallArgs {
    /// Namespace of graygate's own objects: its ServiceAccount, leader-election Lease and webhook
    /// certificate Secret.
    #[arg(long, default_value = "graygate-system")]
    pub namespace: String,
    /// Name of the ServiceAccount, the roles and the webhook configuration.
    #[arg(long, default_value = "graygate")]
    pub name: String,
    /// Where the API server reaches graygate's admission webhook (`https://HOST:PORT/mutate`),
    /// for guarded workloads (ChangePolicy). Without it no webhook configuration is written and
    /// only ChangeRequests work.
    #[arg(long)]
    pub webhook_url: Option<String>,
    /// The webhook's failurePolicy: `Ignore` (a change goes through while graygate is down, and
    /// is reported afterwards) or `Fail` (refused).
    #[arg(long, default_value = "Ignore", value_parser = ["Ignore", "Fail"])]
    pub failure_policy: String,
}

/// RBAC rules for the access rows of `scope`, one rule per API group and verb set.
fn rules(scope: Scope) -> Vec<Value> {
    let mut by: BTreeMap<(&str, Vec<&str>), Vec<&str>> = BTreeMap::new();
    for a in OPERATOR_ACCESS.iter().filter(|a| a.scope == scope) {
        let mut verbs = a.verbs.to_vec();
        verbs.sort_unstable();
        by.entry((a.group, verbs)).or_default().push(a.resource);
    }
    by.into_iter()
        .map(|((group, verbs), resources)| {
            json!({"apiGroups": [group], "resources": resources, "verbs": verbs})
        })
        .collect()
}

fn binding(kind: &str, name: &str, ns: Option<&str>, account: &str, account_ns: &str) -> Value {
    let mut metadata = json!({"name": name});
    if let Some(ns) = ns {
        metadata["namespace"] = json!(ns);
    }
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": format!("{kind}Binding"),
        "metadata": metadata,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": account_ns}],
    })
}

/// The objects, in the order they can be applied.
pub fn objects(args: &InstallArgs) -> Result<Vec<Value>, String> {
    let (ns, name) = (args.namespace.as_str(), args.name.as_str());
    let mut out = vec![
        serde_json::to_value(crate::api::crd()).map_err(|e| e.to_string())?,
        serde_json::to_value(crate::api::policy_crd()).map_err(|e| e.to_string())?,
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name}, "rules": rules(Scope::Watched)}),
        binding("ClusterRole", name, None, name, ns),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": format!("{name}-leader-election"), "namespace": ns},
               "rules": rules(Scope::Operator)}),
        binding(
            "Role",
            &format!("{name}-leader-election"),
            Some(ns),
            name,
            ns,
        ),
    ];
    if let Some(url) = &args.webhook_url {
        if !url.starts_with("https://") {
            return Err(format!(
                "--webhook-url {url:?}: the API server calls webhooks over https://"
            ));
        }
        let mut webhook_rules = rules(Scope::Cluster);
        for r in &mut webhook_rules {
            // Its own configuration only.
            r["resourceNames"] = json!([name]);
        }
        out.push(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": format!("{name}-webhook")}, "rules": webhook_rules}),
        );
        out.push(binding(
            "ClusterRole",
            &format!("{name}-webhook"),
            None,
            name,
            ns,
        ));
        out.push(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "workloads.graygate.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": args.failure_policy,
                "timeoutSeconds": 5,
                "reinvocationPolicy": "IfNeeded",
                // No caBundle: graygate writes its certificate's CA here when it starts.
                "clientConfig": {"url": url},
                "rules": [{"apiGroups": ["apps"], "apiVersions": ["v1"], "operations": ["UPDATE"],
                           "resources": ["deployments", "statefulsets"], "scope": "Namespaced"}],
                "objectSelector": {"matchExpressions": [
                    {"key": crate::api::LABEL_GUARDED_BY, "operator": "Exists"}]},
            }, {
                // New pods of a pinned template read graygate's copies of their config. Always
                // Ignore: without graygate a pod reads the objects rather than not starting.
                "name": "pods.graygate.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Ignore",
                "timeoutSeconds": 5,
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": url},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "objectSelector": {"matchExpressions": [
                    {"key": crate::guard::pin::LABEL_PINNED, "operator": "Exists"}]},
            }],
        }));
    }
    Ok(out)
}

/// Print the objects as one multi-document YAML stream. Exit code 0, or 2 on bad input.
pub fn run(args: &InstallArgs) -> u8 {
    let objects = match objects(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    let mut text = String::from(
        "# graygate without Helm: CRDs, namespace, ServiceAccount and RBAC (and the webhook\n# configuration when --webhook-url is given). Apply with: kubectl apply -f -\n",
    );
    for o in &objects {
        match serde_yaml::to_string(o) {
            Ok(y) => {
                text.push_str("---\n");
                text.push_str(&y);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        }
    }
    print!("{text}");
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: Option<&str>) -> InstallArgs {
        InstallArgs {
            namespace: "graygate-system".into(),
            name: "graygate".into(),
            webhook_url: url.map(String::from),
            failure_policy: "Ignore".into(),
        }
    }

    #[test]
    fn every_access_row_is_granted_in_its_scope_and_nothing_else() {
        let objs = objects(&args(Some("https://127.0.0.1:9443/mutate"))).unwrap();
        let kinds: Vec<&str> = objs.iter().map(|o| o["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "CustomResourceDefinition",
                "Namespace",
                "ServiceAccount",
                "ClusterRole",
                "ClusterRoleBinding",
                "Role",
                "RoleBinding",
                "ClusterRole",
                "ClusterRoleBinding",
                "MutatingWebhookConfiguration"
            ]
        );
        let granted = |o: &Value| -> Vec<(String, String, String)> {
            o["rules"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|r| {
                    let g = r["apiGroups"][0].as_str().unwrap().to_string();
                    let verbs: Vec<String> = r["verbs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|v| v.as_str().unwrap().to_string())
                        .collect();
                    r["resources"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(move |res| {
                            let g = g.clone();
                            let res = res.as_str().unwrap().to_string();
                            verbs
                                .clone()
                                .into_iter()
                                .map(move |v| (g.clone(), res.clone(), v))
                        })
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (i, scope) in [
            (4, Scope::Watched),
            (6, Scope::Operator),
            (8, Scope::Cluster),
        ] {
            let mut want: Vec<(String, String, String)> = OPERATOR_ACCESS
                .iter()
                .filter(|a| a.scope == scope)
                .flat_map(|a| {
                    a.verbs
                        .iter()
                        .map(|v| (a.group.to_string(), a.resource.to_string(), v.to_string()))
                })
                .collect();
            let mut got = granted(&objs[i]);
            want.sort();
            got.sort();
            assert_eq!(got, want, "{scope:?}");
        }
        assert_eq!(
            objs[10]["webhooks"][0]["clientConfig"]["url"],
            "https://127.0.0.1:9443/mutate"
        );
        // Without a webhook URL: ChangeRequests only, no webhook objects.
        assert_eq!(objects(&args(None)).unwrap().len(), 8);
        // A plain-http URL is refused, naming the flag.
        let e = objects(&args(Some("http://127.0.0.1:9443/mutate"))).unwrap_err();
        assert!(e.contains("--webhook-url"), "{e}");
    }
}
