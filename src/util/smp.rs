//! Strategic merge patch for the parts of built-in objects graygate and its users touch
//! (pod templates, Deployment and StatefulSet specs).
//!
//! Lists whose elements have a merge key in Kubernetes' schema are merged element by element
//! (`containers` by `name`, `ports` by `containerPort`, …); other lists are replaced.
//! Supported directives: `$patch: delete` / `$patch: replace` inside a map or a list element,
//! `$deleteFromPrimitiveList/<field>`, and `null` values (delete the key). `$setElementOrder/…`
//! and `$retainKeys` are accepted and ignored.

use serde_json::{Map, Value};

/// The merge key of a list field, as Kubernetes' OpenAPI declares it, or None to replace the list.
pub fn merge_key(field: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims"
        | "readinessGates" => match field {
            "readinessGates" => "conditionType",
            _ => "name",
        },
        "ports" => "containerPort",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "topologySpreadConstraints" => "topologyKey",
        "ownerReferences" => "uid",
        _ => return None,
    })
}

/// Apply `patch` to `target` in place.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    merge_value(target, patch, None);
}

fn merge_value(target: &mut Value, patch: &Value, _field: Option<&str>) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => merge_map(t, p),
        (t, p) => *t = strip_directives(p),
    }
}

fn merge_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    if patch.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = match strip_directives(&Value::Object(patch.clone())) {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        return;
    }
    for (key, pv) in patch {
        if key.starts_with("$setElementOrder/") || key == "$retainKeys" || key == "$patch" {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Value::Array(remove)) = (target.get_mut(field), pv) {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if pv.is_null() {
            target.remove(key);
            continue;
        }
        if let Value::Object(pm) = pv
            && pm.get("$patch").and_then(Value::as_str) == Some("delete")
        {
            target.remove(key);
            continue;
        }
        match (target.get_mut(key), pv) {
            (Some(Value::Array(tl)), Value::Array(pl)) => merge_list(tl, pl, key),
            (Some(tv @ Value::Object(_)), Value::Object(_)) => merge_value(tv, pv, Some(key)),
            _ => {
                target.insert(key.clone(), strip_directives(pv));
            }
        }
    }
}

fn merge_list(target: &mut Vec<Value>, patch: &[Value], field: &str) {
    let Some(mk) = merge_key(field) else {
        *target = patch.iter().map(strip_directives).collect();
        return;
    };
    if patch
        .iter()
        .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        *target = patch
            .iter()
            .filter(|p| p.get("$patch").is_none())
            .map(strip_directives)
            .collect();
        return;
    }
    for p in patch {
        let Some(key_value) = p.get(mk) else {
            // Without its merge key an element cannot be matched; append it as Kubernetes does.
            target.push(strip_directives(p));
            continue;
        };
        let position = target.iter().position(|t| t.get(mk) == Some(key_value));
        let delete = p.get("$patch").and_then(Value::as_str) == Some("delete");
        match (position, delete) {
            (Some(i), true) => {
                target.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_value(&mut target[i], p, Some(field)),
            (None, false) => target.push(strip_directives(p)),
        }
    }
}

/// Copy a patch value without its `$` directives and `null`s, for insertion as new content.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, v)| !k.starts_with('$') && !v.is_null())
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

/// RFC 7386 JSON merge patch.
pub fn json_merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(pm) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(tm) = target {
                for (k, pv) in pm {
                    if pv.is_null() {
                        tm.remove(k);
                    } else {
                        json_merge(tm.entry(k.clone()).or_insert(Value::Null), pv);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_merge_by_name_and_env_by_name() {
        let mut t = json!({"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
            {"name": "side", "image": "s:1"}
        ]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [{"name": "app", "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [
                {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}]},
                {"name": "side", "image": "s:1"}
            ]}})
        );
    }

    #[test]
    fn directives_delete_and_replace() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"containers": [{"name": "x"}, {"name": "y"}], "tolerations": [{"key": "k"}]}});
        strategic_merge(
            &mut t,
            &json!({"metadata": {"labels": {"a": null}}, "spec": {"containers": [{"name": "y", "$patch": "delete"}], "tolerations": [{"key": "z"}]}}),
        );
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"containers": [{"name": "x"}], "tolerations": [{"key": "z"}]}})
        );
        strategic_merge(
            &mut t,
            &json!({"metadata": {"labels": {"$patch": "replace", "only": "this"}}}),
        );
        assert_eq!(t["metadata"]["labels"], json!({"only": "this"}));
    }

    #[test]
    fn delete_from_primitive_list() {
        let mut t = json!({"finalizers": ["a", "b", "c"]});
        strategic_merge(
            &mut t,
            &json!({"$deleteFromPrimitiveList/finalizers": ["b"]}),
        );
        assert_eq!(t, json!({"finalizers": ["a", "c"]}));
    }

    #[test]
    fn json_merge_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        json_merge(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }
}
