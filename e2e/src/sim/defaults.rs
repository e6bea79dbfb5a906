//! Defaults the real API server fills in for the built-in kinds graygate reads back.
//! They matter: graygate compares and copies pod templates as the server returns them.

use super::store::ResourceType;
use serde_json::{Value, json};

fn set_default(obj: &mut Value, pointer: &str, value: Value) {
    if obj.pointer(pointer).is_none() {
        let (parent, field) = match pointer.rsplit_once('/') {
            Some(p) => p,
            None => return,
        };
        if parent.is_empty() {
            if let Value::Object(m) = obj {
                m.insert(field.to_string(), value);
            }
            return;
        }
        if obj.pointer(parent).is_none() {
            set_default(obj, parent, json!({}));
        }
        if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
            m.insert(field.to_string(), value);
        }
    }
}

fn pod_spec(spec: &mut Value) {
    set_default(spec, "/restartPolicy", json!("Always"));
    set_default(spec, "/terminationGracePeriodSeconds", json!(30));
    set_default(spec, "/dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "/schedulerName", json!("default-scheduler"));
    set_default(spec, "/securityContext", json!({}));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = spec.get_mut(list) {
            for c in cs {
                let image = c
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let latest = !image.contains(':') || image.ends_with(":latest");
                set_default(
                    c,
                    "/imagePullPolicy",
                    json!(if latest { "Always" } else { "IfNotPresent" }),
                );
                set_default(c, "/terminationMessagePath", json!("/dev/termination-log"));
                set_default(c, "/terminationMessagePolicy", json!("File"));
                set_default(c, "/resources", json!({}));
            }
        }
    }
}

/// Fill in defaults for `rt`'s kind.
pub fn apply(rt: &ResourceType, obj: &mut Value) {
    match (rt.group.as_str(), rt.plural.as_str()) {
        ("apps", "deployments") => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            set_default(obj, "/spec/progressDeadlineSeconds", json!(600));
            if obj.pointer("/spec/strategy/type").is_none() {
                set_default(obj, "/spec/strategy", json!({}));
                set_default(obj, "/spec/strategy/type", json!("RollingUpdate"));
            }
            if obj.pointer("/spec/strategy/type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_default(obj, "/spec/strategy/rollingUpdate/maxSurge", json!("25%"));
                set_default(
                    obj,
                    "/spec/strategy/rollingUpdate/maxUnavailable",
                    json!("25%"),
                );
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                pod_spec(spec);
            }
        }
        ("apps", "replicasets") => {
            set_default(obj, "/spec/replicas", json!(1));
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                pod_spec(spec);
            }
        }
        ("apps", "statefulsets") => {
            set_default(obj, "/spec/replicas", json!(1));
            set_default(obj, "/spec/podManagementPolicy", json!("OrderedReady"));
            set_default(obj, "/spec/revisionHistoryLimit", json!(10));
            if obj.pointer("/spec/updateStrategy/type").is_none() {
                set_default(obj, "/spec/updateStrategy", json!({}));
                set_default(obj, "/spec/updateStrategy/type", json!("RollingUpdate"));
            }
            if obj
                .pointer("/spec/updateStrategy/type")
                .and_then(Value::as_str)
                == Some("RollingUpdate")
            {
                set_default(
                    obj,
                    "/spec/updateStrategy/rollingUpdate/partition",
                    json!(0),
                );
            }
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                pod_spec(spec);
            }
        }
        ("", "pods") => {
            if let Some(spec) = obj.pointer_mut("/spec") {
                pod_spec(spec);
            }
        }
        _ => {}
    }
}
