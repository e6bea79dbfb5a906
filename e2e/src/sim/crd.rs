//! Serving custom resources from a created CustomResourceDefinition.

use super::store::{ApiError, ResourceType};
use serde_json::Value;

/// The resource a CRD makes served (its storage version).
pub fn served_type(crd: &Value) -> Result<ResourceType, ApiError> {
    let invalid = |what: &str| {
        ApiError::new(
            422,
            "Invalid",
            format!("CustomResourceDefinition is invalid: {what}"),
        )
    };
    let spec = crd
        .get("spec")
        .ok_or_else(|| invalid("spec: Required value"))?;
    let s = |p: &str| spec.pointer(p).and_then(Value::as_str).map(String::from);
    let group = s("/group").ok_or_else(|| invalid("spec.group: Required value"))?;
    let plural = s("/names/plural").ok_or_else(|| invalid("spec.names.plural: Required value"))?;
    let kind = s("/names/kind").ok_or_else(|| invalid("spec.names.kind: Required value"))?;
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("spec.versions: Required value"))?;
    if versions.len() != 1 {
        return Err(ApiError::new(
            422,
            "Invalid",
            "the graygate simulator serves CRDs with exactly one version (no conversion)",
        ));
    }
    let v = &versions[0];
    let version = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("spec.versions[0].name: Required value"))?;
    let expected_name = format!("{plural}.{group}");
    if crd.pointer("/metadata/name").and_then(Value::as_str) != Some(expected_name.as_str()) {
        return Err(invalid(&format!(
            "metadata.name: must be spec.names.plural+\".\"+spec.group ({expected_name})"
        )));
    }
    Ok(ResourceType {
        group,
        version: version.to_string(),
        singular: s("/names/singular").unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced: s("/scope").as_deref() != Some("Cluster"),
        status: v.pointer("/subresources/status").is_some(),
        scale: v.pointer("/subresources/scale").is_some(),
        log: false,
        builtin: false,
        short_names: spec
            .pointer("/names/shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// The built-in types the simulator serves.
pub fn builtin_types() -> Vec<ResourceType> {
    let mut pods = ResourceType::builtin("", "v1", "pods", "Pod", true);
    pods.status = true;
    pods.log = true;
    pods.short_names = vec!["po".into()];
    let mut ns = ResourceType::builtin("", "v1", "namespaces", "Namespace", false);
    ns.status = true;
    ns.short_names = vec!["ns".into()];
    let events = ResourceType::builtin("", "v1", "events", "Event", true);
    let events2 = ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true);
    let secrets = ResourceType::builtin("", "v1", "secrets", "Secret", true);
    let mut deploy = ResourceType::builtin("apps", "v1", "deployments", "Deployment", true);
    deploy.status = true;
    deploy.scale = true;
    deploy.short_names = vec!["deploy".into()];
    let mut rs = ResourceType::builtin("apps", "v1", "replicasets", "ReplicaSet", true);
    rs.status = true;
    rs.scale = true;
    rs.short_names = vec!["rs".into()];
    let mut sts = ResourceType::builtin("apps", "v1", "statefulsets", "StatefulSet", true);
    sts.status = true;
    sts.scale = true;
    sts.short_names = vec!["sts".into()];
    let revs = ResourceType::builtin(
        "apps",
        "v1",
        "controllerrevisions",
        "ControllerRevision",
        true,
    );
    let leases = ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true);
    let mut crds = ResourceType::builtin(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
    );
    crds.status = true;
    crds.short_names = vec!["crd".into()];
    vec![
        pods, ns, events, events2, secrets, deploy, rs, sts, revs, leases, crds,
    ]
}
