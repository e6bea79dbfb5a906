//! Applying a ChangeRequest's change (images and patch) to a pod template.

use crate::api::FieldError;
use crate::util::smp::strategic_merge;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn change_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Check the patch's shape on its own: only `metadata.labels`, `metadata.annotations` and `spec`.
pub fn check_patch(patch: &Value) -> Result<(), FieldError> {
    let Value::Object(top) = patch else {
        return Err(change_err(
            "patch",
            "must be an object with metadata and/or spec",
        ));
    };
    for (k, v) in top {
        match k.as_str() {
            "spec" => {
                if !v.is_object() {
                    return Err(change_err(
                        "patch.spec",
                        "must be an object (a partial pod spec)",
                    ));
                }
            }
            "metadata" => {
                let Value::Object(meta) = v else {
                    return Err(change_err("patch.metadata", "must be an object"));
                };
                for (mk, mv) in meta {
                    if mk != "labels" && mk != "annotations" {
                        return Err(change_err(
                            format!("patch.metadata.{mk}"),
                            "only labels and annotations of the pod template can change",
                        ));
                    }
                    if let Value::Object(entries) = mv {
                        if let Some((key, _)) = entries
                            .iter()
                            .find(|(_, v)| !(v.is_string() || v.is_null()))
                        {
                            return Err(change_err(
                                format!("patch.metadata.{mk}.{key}"),
                                "values must be strings",
                            ));
                        }
                    } else {
                        return Err(change_err(
                            format!("patch.metadata.{mk}"),
                            "must be a map of strings",
                        ));
                    }
                }
            }
            other => {
                return Err(change_err(
                    format!("patch.{other}"),
                    "a pod template patch has only metadata and spec",
                ));
            }
        }
    }
    Ok(())
}

/// The target's pod template with a ChangeRequest's change applied: its whole `template` when
/// it has one (the selector labels must stay), then its images and patch.
pub fn apply_spec(
    base: &Value,
    spec: &crate::api::ChangeRequestSpec,
    selector: &BTreeMap<String, String>,
) -> Result<Value, FieldError> {
    if spec.config.is_empty() {
        return apply_template_change(base, spec, selector);
    }
    // A config change: the objects must be the target's; its template carries the change's
    // mark, so that every pod restarts onto the new contents at promotion.
    super::config::check_used(base, spec)?;
    let changed = if spec.template.is_none() && spec.images.is_empty() && spec.patch.is_none() {
        base.clone()
    } else {
        apply_template_change(base, spec, selector)?
    };
    Ok(super::config::mark(&changed, spec))
}

fn apply_template_change(
    base: &Value,
    spec: &crate::api::ChangeRequestSpec,
    selector: &BTreeMap<String, String>,
) -> Result<Value, FieldError> {
    let Some(whole) = &spec.template else {
        return apply_change(base, &spec.images, spec.patch.as_ref(), selector);
    };
    if !whole.get("spec").is_some_and(Value::is_object) {
        return Err(change_err(
            "template.spec",
            "a whole pod template needs its spec",
        ));
    }
    let mut new = whole.clone();
    if let Some(Value::Object(meta)) = new.get_mut("metadata") {
        // Only labels and annotations belong to a pod template's metadata.
        meta.retain(|k, _| k == "labels" || k == "annotations");
    }
    if spec.images.is_empty() && spec.patch.is_none() {
        check_selector(&new, selector, "template.metadata.labels")?;
        if strip_graygate_labels(&new) == strip_graygate_labels(base) {
            return Err(change_err(
                "template",
                "the template equals the target's: there is nothing to roll out",
            ));
        }
        return Ok(new);
    }
    apply_change(&new, &spec.images, spec.patch.as_ref(), selector)
}

fn check_selector(
    new: &Value,
    selector: &BTreeMap<String, String>,
    field: &str,
) -> Result<(), FieldError> {
    let labels = new
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in selector {
        if labels.get(k).and_then(Value::as_str) != Some(v.as_str()) {
            return Err(change_err(
                format!("{field}.{k}"),
                format!("the label {k} is in the target's selector and must stay {v:?}"),
            ));
        }
    }
    Ok(())
}

/// The target's pod template with the change applied.
///
/// `selector` is the workload's selector: labels in it must not change, or the workload
/// would lose its own pods.
pub fn apply_change(
    template: &Value,
    images: &BTreeMap<String, String>,
    patch: Option<&Value>,
    selector: &BTreeMap<String, String>,
) -> Result<Value, FieldError> {
    let mut new = template.clone();
    for (container, image) in images {
        if image.trim().is_empty() {
            return Err(change_err(
                format!("images.{container}"),
                "the image is empty",
            ));
        }
        let mut found = false;
        for list in ["containers", "initContainers"] {
            if let Some(Value::Array(cs)) = new.pointer_mut(&format!("/spec/{list}")) {
                for c in cs.iter_mut() {
                    if c.get("name").and_then(Value::as_str) == Some(container.as_str()) {
                        c["image"] = Value::String(image.clone());
                        found = true;
                    }
                }
            }
        }
        if !found {
            let names = container_names(template).join(", ");
            return Err(change_err(
                format!("images.{container}"),
                format!(
                    "the target's pod template has no container named {container:?} (it has: {names})"
                ),
            ));
        }
    }
    if let Some(p) = patch {
        check_patch(p)?;
        strategic_merge(&mut new, p);
    }
    check_selector(&new, selector, "patch.metadata.labels")?;
    if strip_graygate_labels(&new) == strip_graygate_labels(template) {
        return Err(change_err(
            "spec",
            "applying images and patch leaves the target's pod template unchanged: there is nothing to roll out",
        ));
    }
    Ok(new)
}

fn container_names(template: &Value) -> Vec<String> {
    template
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn strip_graygate_labels(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(Value::Object(labels)) = t.pointer_mut("/metadata/labels") {
        labels.remove(crate::api::LABEL_CHANGE);
        if labels.is_empty()
            && let Some(Value::Object(meta)) = t.pointer_mut("/metadata")
        {
            meta.remove("labels");
        }
    }
    if let Some(Value::Object(meta)) = t.pointer_mut("/metadata")
        && meta.is_empty()
        && let Value::Object(top) = &mut t
    {
        top.remove("metadata");
    }
    t
}

/// Add a label to a pod template's metadata.
pub fn with_label(template: &Value, key: &str, value: &str) -> Value {
    let mut t = template.clone();
    if !t.is_object() {
        t = Value::Object(Map::new());
    }
    let meta = t.as_object_mut().map(|o| {
        o.entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()))
    });
    if let Some(Value::Object(meta)) = meta {
        let labels = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(l) = labels {
            l.insert(key.to_string(), Value::String(value.to_string()));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:1", "env": [{"name": "MODE", "value": "a"}]}]}
        })
    }
    fn sel() -> BTreeMap<String, String> {
        [("app".to_string(), "web".to_string())].into()
    }

    #[test]
    fn image_change_is_applied() {
        let images = [("app".to_string(), "web:2".to_string())].into();
        let t = apply_change(&template(), &images, None, &sel()).unwrap();
        assert_eq!(t["spec"]["containers"][0]["image"], "web:2");
        assert_eq!(t["spec"]["containers"][0]["env"][0]["value"], "a");
    }

    #[test]
    fn patch_merges_env_strategically() {
        let patch = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "MODE", "value": "b"}]}]}});
        let t = apply_change(&template(), &BTreeMap::new(), Some(&patch), &sel()).unwrap();
        assert_eq!(
            t["spec"]["containers"][0]["env"],
            json!([{"name": "MODE", "value": "b"}])
        );
        assert_eq!(t["spec"]["containers"][0]["image"], "web:1");
    }

    #[test]
    fn unknown_container_names_the_field() {
        let images = [("db".to_string(), "pg:16".to_string())].into();
        let e = apply_change(&template(), &images, None, &sel()).unwrap_err();
        assert_eq!(e.field, "images.db");
        assert!(e.message.contains("\"app\"") || e.message.contains("app"));
    }

    #[test]
    fn no_op_change_is_rejected() {
        let images = [("app".to_string(), "web:1".to_string())].into();
        let e = apply_change(&template(), &images, None, &sel()).unwrap_err();
        assert_eq!(e.field, "spec");
    }

    #[test]
    fn selector_labels_cannot_change() {
        let patch = json!({"metadata": {"labels": {"app": "other"}}});
        let e = apply_change(&template(), &BTreeMap::new(), Some(&patch), &sel()).unwrap_err();
        assert_eq!(e.field, "patch.metadata.labels.app");
    }

    #[test]
    fn patch_shape_is_checked() {
        assert_eq!(
            check_patch(&json!({"status": {}})).unwrap_err().field,
            "patch.status"
        );
        assert_eq!(
            check_patch(&json!({"metadata": {"name": "x"}}))
                .unwrap_err()
                .field,
            "patch.metadata.name"
        );
        assert_eq!(
            check_patch(&json!({"metadata": {"labels": {"a": 1}}}))
                .unwrap_err()
                .field,
            "patch.metadata.labels.a"
        );
        assert_eq!(check_patch(&json!([1])).unwrap_err().field, "patch");
        assert!(check_patch(&json!({"metadata": {"annotations": {"a": "b"}}, "spec": {}})).is_ok());
    }
}
