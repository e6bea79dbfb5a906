//! Every Kubernetes API call the operator makes, in one table.
//!
//! The Helm chart's RBAC rules are written from this table, `docs/operations.md` lists it, a
//! test checks the rendered chart grants exactly these verbs, and the end-to-end scenarios check
//! that every request `graygate run` sent to the real API server (through the e2e proxy) is
//! covered by it. A new call in the code without a row here fails those scenarios.

/// Where a permission is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// In every namespace graygate watches (cluster-wide, or each of `watchNamespaces`).
    Watched,
    /// Only in the operator's own namespace (the leader-election Lease, the webhook certificate).
    Operator,
    /// Cluster-scoped objects graygate installs itself (its webhook configuration, by name).
    Cluster,
    /// Granted to every authenticated user by Kubernetes' default RBAC (the `system:basic-user`
    /// ClusterRole): nothing for the chart or `graygate install` to grant.
    Everyone,
}

/// One resource and the verbs graygate uses on it.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// API group ("" for the core group).
    pub group: &'static str,
    /// Resource, with `/subresource` when it is one.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// Where.
    pub scope: Scope,
    /// Why graygate needs it.
    pub why: &'static str,
}

/// The operator's API calls.
pub const OPERATOR_ACCESS: &[Access] = &[
    Access {
        group: "graygate.io",
        resource: "changerequests",
        verbs: &["get", "list", "watch", "create", "patch"],
        scope: Scope::Watched,
        why: "watch ChangeRequests; add and remove the rollback finalizer; create the changes of guarded workloads; supersede them",
    },
    Access {
        group: "graygate.io",
        resource: "changepolicies",
        verbs: &["list", "watch", "patch"],
        scope: Scope::Watched,
        why: "read and watch ChangePolicies; add and remove their release finalizer",
    },
    Access {
        group: "graygate.io",
        resource: "changepolicies/status",
        verbs: &["patch"],
        scope: Scope::Watched,
        why: "report guarded workloads and the change in flight for each",
    },
    Access {
        group: "graygate.io",
        resource: "changerequests/status",
        verbs: &["patch"],
        scope: Scope::Watched,
        why: "record progress (server-side apply of the status)",
    },
    Access {
        group: "apps",
        resource: "deployments",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Watched,
        why: "read the target; create, update and remove the canary Deployment; label guarded Deployments, release and hold them",
    },
    Access {
        group: "apps",
        resource: "replicasets",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Watched,
        why: "a guarded Deployment's running ReplicaSet; its canary ReplicaSet, handed to the Deployment on release",
    },
    Access {
        group: "apps",
        resource: "controllerrevisions",
        verbs: &["get", "list", "watch"],
        scope: Scope::Watched,
        why: "the template a held StatefulSet's pods run (its current revision); the ConfigMaps and Secrets its revisions use",
    },
    Access {
        group: "apps",
        resource: "deployments/scale",
        verbs: &["patch"],
        scope: Scope::Watched,
        why: "shrink and restore the target while the canary grows",
    },
    Access {
        group: "autoscaling",
        resource: "horizontalpodautoscalers",
        verbs: &["list", "watch"],
        scope: Scope::Watched,
        why: "find the autoscaler of a target: its replica count is then left to it and batches follow it",
    },
    Access {
        group: "apps",
        resource: "statefulsets",
        verbs: &["get", "list", "watch", "patch"],
        scope: Scope::Watched,
        why: "read the target; set the template and the partition; find, label and release guarded StatefulSets (watched, so that an edit is acted on at once)",
    },
    Access {
        group: "",
        resource: "pods",
        verbs: &["list", "watch", "delete"],
        scope: Scope::Watched,
        why: "find the change and control pods; delete never-ready pods of a bad StatefulSet revision; watch the metadata of pinned pods for those started without the pod webhook",
    },
    Access {
        group: "",
        resource: "pods/log",
        verbs: &["get"],
        scope: Scope::Watched,
        why: "log analysis of change and control pods",
    },
    Access {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Watched,
        why: "the Prometheus bearer token named by analysis.prometheus.bearerTokenSecret; keep the Secrets guarded pods use from deletion while they need them (metadata only: list and watch read no data); a config change's copies, and its new contents at promotion; the pinned copies guarded pods read",
    },
    Access {
        group: "",
        resource: "configmaps",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        scope: Scope::Watched,
        why: "keep the ConfigMaps guarded pods use from deletion while they need them (finalizer graygate.io/in-use; metadata only); a config change's copies, and its new contents at promotion; the pinned copies guarded pods read",
    },
    Access {
        group: "",
        resource: "services",
        verbs: &["get", "create", "patch"],
        scope: Scope::Watched,
        why: "a traffic-weighted change (spec.traffic): pin the stable Service to the stable pods, point the canary Service at the canary's pods (created when missing)",
    },
    Access {
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: &["get", "patch"],
        scope: Scope::Watched,
        why: "a traffic-weighted change (spec.traffic): set the weights of the named HTTPRoute rule at each batch, and the header rule graygate owns",
    },
    Access {
        group: "",
        resource: "events",
        verbs: &["create", "patch"],
        scope: Scope::Watched,
        why: "an Event for every transition (core/v1, with the times kubectl sorts by)",
    },
    Access {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
        scope: Scope::Operator,
        why: "leader election between replicas",
    },
    Access {
        group: "",
        resource: "secrets",
        verbs: &["get", "create", "update"],
        scope: Scope::Operator,
        why: "the admission webhook's certificate, made and rotated by graygate",
    },
    Access {
        group: "admissionregistration.k8s.io",
        resource: "mutatingwebhookconfigurations",
        verbs: &["get", "patch"],
        scope: Scope::Cluster,
        why: "keep the webhook configuration's caBundle current (its own configuration only, by name)",
    },
    Access {
        group: "authentication.k8s.io",
        resource: "selfsubjectreviews",
        verbs: &["create"],
        scope: Scope::Everyone,
        why: "learn its own user name at start, so that its webhook lets its own writes through",
    },
];

/// What an HTTP request to the API server asks for, in RBAC terms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// API group ("" for the core group).
    pub group: String,
    /// Resource, with `/subresource`.
    pub resource: String,
    /// RBAC verb.
    pub verb: String,
    /// Namespace, when the request is namespaced.
    pub namespace: Option<String>,
}

/// The RBAC attributes of a resource request (`None` for discovery and non-resource paths),
/// following the API server's request-info rules.
pub fn classify(method: &str, path: &str, query: &str) -> Option<Request> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (resource, has_name) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watching = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, has_name) {
        ("GET", _) if watching => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => return None,
    };
    Some(Request {
        group: group.to_string(),
        resource,
        verb: verb.to_string(),
        namespace,
    })
}

/// The row of `OPERATOR_ACCESS` that allows a request, if any.
pub fn allowed(req: &Request) -> Option<&'static Access> {
    OPERATOR_ACCESS.iter().find(|a| {
        a.group == req.group && a.resource == req.resource && a.verbs.contains(&req.verb.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(method: &str, path: &str, query: &str) -> (String, String, String, Option<String>) {
        let r = classify(method, path, query).expect("a resource request");
        (r.group, r.resource, r.verb, r.namespace)
    }

    #[test]
    fn requests_map_to_rbac_attributes() {
        assert_eq!(
            c(
                "GET",
                "/apis/graygate.io/v1alpha1/changerequests",
                "watch=true&timeoutSeconds=290"
            ),
            (
                "graygate.io".into(),
                "changerequests".into(),
                "watch".into(),
                None
            )
        );
        assert_eq!(
            c(
                "PATCH",
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                ""
            ),
            (
                "apps".into(),
                "deployments/scale".into(),
                "patch".into(),
                Some("shop".into())
            )
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/shop/pods/web-1/log",
                "sinceTime=x"
            ),
            (
                "".into(),
                "pods/log".into(),
                "get".into(),
                Some("shop".into())
            )
        );
        assert_eq!(
            c(
                "GET",
                "/api/v1/namespaces/shop/pods",
                "labelSelector=app%3Dweb"
            ),
            ("".into(), "pods".into(), "list".into(), Some("shop".into()))
        );
        assert_eq!(
            c("DELETE", "/api/v1/namespaces/shop/pods", ""),
            (
                "".into(),
                "pods".into(),
                "deletecollection".into(),
                Some("shop".into())
            )
        );
        // A Namespace object itself is cluster-scoped.
        assert_eq!(
            c("GET", "/api/v1/namespaces/shop", ""),
            ("".into(), "namespaces".into(), "get".into(), None)
        );
        assert_eq!(classify("GET", "/apis", ""), None);
        assert_eq!(classify("GET", "/version", ""), None);
    }

    #[test]
    fn the_table_allows_what_graygate_does_and_nothing_else() {
        let ok = classify(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/gg/leases/l",
            "",
        )
        .unwrap();
        assert!(allowed(&ok).is_some());
        let no = classify(
            "DELETE",
            "/apis/apps/v1/namespaces/shop/statefulsets/db",
            "",
        )
        .unwrap();
        assert!(allowed(&no).is_none());
        let no = classify("PUT", "/api/v1/namespaces/shop/configmaps/web", "").unwrap();
        assert!(
            allowed(&no).is_none(),
            "configmaps are never replaced whole"
        );
        let no = classify("DELETE", "/api/v1/namespaces/shop/secrets", "").unwrap();
        assert!(
            allowed(&no).is_none(),
            "secrets are never deleted as a collection"
        );
    }
}
