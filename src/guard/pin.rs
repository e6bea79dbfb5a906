//! Pinned config: the ConfigMaps and Secrets a guarded Deployment's pods read are immutable
//! copies graygate makes, so that an in-place edit of the object reaches no pod by itself and
//! goes out in batches like any template change.
//!
//! - For each ConfigMap and Secret (Opaque, TLS, basic-auth, SSH) its template names, graygate
//!   makes an immutable copy of the contents, named by them: `<object>-gg-<hash>`, labelled
//!   `graygate.io/copy-of=<object>` and `graygate.io/pinned-copy=true`, owned by the workload.
//! - The template carries which copy each object's pods read, in the annotation
//!   [`ANN_PINS`] (`{"ConfigMap/web-config": "web-config-gg-0123456789"}`), and the label
//!   [`LABEL_PINNED`]. The template keeps naming the objects, as Git has it.
//! - graygate's pod webhook rewrites a new pod's references to the copies its template names
//!   (pods of the label only): a pod of the old ReplicaSet reads the old copy, a canary pod the
//!   new one, whenever they start — mounted files and `env` alike.
//! - An edit of an object's contents changes the copy its template should name. graygate writes
//!   that into the template itself, held as the webhook holds any template change, and the change
//!   goes out in batches; a rollback leaves every pod on the old copy; reverting the object is a
//!   revert of the template, released at once.

use super::keep::{ConfigKind, ConfigRef};
use crate::api::TargetKind;
use crate::controller::reconcile::Context;
use kube::Api;
use kube::api::{DynamicObject, Patch, PostParams};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The template annotation that says which copy each object's pods read.
pub const ANN_PINS: &str = "graygate.io/config-pins";
/// The template (and pod) label that sends a new pod to graygate's pod webhook.
pub const LABEL_PINNED: &str = "graygate.io/pinned";
/// The label of the copies graygate pins pods to.
pub const LABEL_PINNED_COPY: &str = "graygate.io/pinned-copy";
/// The pod annotation the pod webhook adds when it has pointed a pod at its copies: a pod of a
/// pinned template without it started while no graygate replica answered, and reads the objects
/// themselves.
pub const ANN_POD_PINNED: &str = "graygate.io/config-pinned";

/// The Secret types whose contents are a workload's configuration (pinned); other types (service
/// account tokens, registry credentials) are read from the object.
pub fn pinnable_secret(secret_type: Option<&str>) -> bool {
    matches!(
        secret_type.unwrap_or("Opaque"),
        "Opaque" | "kubernetes.io/tls" | "kubernetes.io/basic-auth" | "kubernetes.io/ssh-auth"
    )
}

fn key(r: &ConfigRef) -> String {
    format!("{}/{}", r.0.as_str(), r.1)
}

fn parse_key(k: &str) -> Option<ConfigRef> {
    let (kind, name) = k.split_once('/')?;
    let kind = match kind {
        "ConfigMap" => ConfigKind::ConfigMap,
        "Secret" => ConfigKind::Secret,
        _ => return None,
    };
    (!name.is_empty()).then(|| (kind, name.to_string()))
}

/// The pins a template (or a pod) carries: each object, and the copy its pods read.
pub fn pins_of(obj: &Value) -> BTreeMap<ConfigRef, String> {
    let Some(text) = obj
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(ANN_PINS))
        .and_then(Value::as_str)
    else {
        return BTreeMap::new();
    };
    let Ok(Value::Object(m)) = serde_json::from_str::<Value>(text) else {
        return BTreeMap::new();
    };
    m.iter()
        .filter_map(|(k, v)| Some((parse_key(k)?, v.as_str()?.to_string())))
        .collect()
}

/// `template` pinned to `pins` (the annotation and the label; both gone when `pins` is empty).
pub fn with_pins(template: &Value, pins: &BTreeMap<ConfigRef, String>) -> Value {
    let mut t = template.clone();
    let Some(root) = t.as_object_mut() else {
        return t;
    };
    let meta = root.entry("metadata").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else {
        return t;
    };
    for (field, k, v) in [
        ("annotations", ANN_PINS, {
            let m: Map<String, Value> = pins.iter().map(|(r, c)| (key(r), json!(c))).collect();
            Value::String(Value::Object(m).to_string())
        }),
        ("labels", LABEL_PINNED, json!("true")),
    ] {
        let entry = meta.entry(field).or_insert_with(|| json!({}));
        if let Some(m) = entry.as_object_mut() {
            if pins.is_empty() {
                m.remove(k);
            } else {
                m.insert(k.into(), v);
            }
        }
    }
    t
}

/// The copy of `object` holding `contents`: named by them, so equal contents are one copy.
pub fn pin_name(object: &str, contents: &Map<String, Value>) -> String {
    let hash = crate::util::short_hash(&json!(["pin", object, contents]));
    let hash: String = hash.chars().take(10).collect();
    let base: String = object.chars().take(253 - 4 - hash.len()).collect();
    format!("{}-gg-{hash}", base.trim_end_matches(['-', '.']))
}

/// The JSON Patch that points a new pod at the copies its template's pins name: each of
/// `spec.volumes`, `spec.initContainers`, `spec.containers` that changes is replaced whole.
pub fn pod_patch(pod: &Value) -> Vec<Value> {
    let pins = pins_of(pod);
    if pins.is_empty() {
        return Vec::new();
    }
    let pinned = crate::rollout::config::pinned(pod, &pins);
    let mut ops: Vec<Value> = ["volumes", "initContainers", "containers"]
        .into_iter()
        .filter_map(|f| {
            let after = pinned.pointer(&format!("/spec/{f}"))?;
            (pod.pointer(&format!("/spec/{f}")) != Some(after))
                .then(|| json!({"op": "replace", "path": format!("/spec/{f}"), "value": after}))
        })
        .collect();
    // The pins are in the pod's annotations, so the map is there to add to.
    ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", ANN_POD_PINNED.replace('/', "~1")), "value": "true"}));
    ops
}

/// Edits of an object within this long of each other are one change (a Helm upgrade, an Argo CD
/// sync: the ConfigMaps first, the workload's template a moment later).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// What [`sync`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Sync {
    /// The template names the copies of what its objects hold now.
    Unchanged,
    /// An object was edited less than [`SETTLE`] ago, or the workload changed while this was
    /// written: looked at again shortly.
    Settling,
    /// The template was written with new pins, held: a change of the workload's own, which the
    /// policy turns into a ChangeRequest like any held template. The text says what changed.
    Written(String),
}

fn api(ctx: &Context, ns: &str, kind: ConfigKind) -> Api<DynamicObject> {
    crate::rollout::config::objects_api(&ctx.client, ns, kind)
}

async fn get(
    ctx: &Context,
    ns: &str,
    kind: ConfigKind,
    name: &str,
) -> anyhow::Result<Option<Value>> {
    Ok(match api(ctx, ns, kind).get_opt(name).await? {
        Some(o) => Some(serde_json::to_value(o)?),
        None => None,
    })
}

/// When an object's contents (or anything else of it) were last written, from its managed
/// fields.
fn last_write(obj: &Value) -> Option<jiff::Timestamp> {
    obj.pointer("/metadata/managedFields")?
        .as_array()?
        .iter()
        .filter_map(|m| m.get("time")?.as_str()?.parse::<jiff::Timestamp>().ok())
        .max()
}

/// The keys whose values differ between two contents (names only: a Secret's values are never
/// shown).
pub fn keys_changed(old: &Map<String, Value>, new: &Map<String, Value>) -> Vec<String> {
    let flat = |c: &Map<String, Value>| -> BTreeMap<String, Value> {
        c.values()
            .filter_map(Value::as_object)
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect()
    };
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Apply the `add` operations of a JSON Patch (what the webhook answers) to `obj`.
fn apply_adds(obj: &mut Value, ops: &[Value]) {
    for op in ops {
        let (Some("add"), Some(path)) = (op["op"].as_str(), op["path"].as_str()) else {
            continue;
        };
        let Some((parent, last)) = path.rsplit_once('/') else {
            continue;
        };
        let last = last.replace("~1", "/").replace("~0", "~");
        if let Some(Value::Object(m)) = obj.pointer_mut(parent) {
            m.insert(last, op["value"].clone());
        }
    }
}

/// Make the copies the template of a guarded workload should name, and when they are not the ones
/// it names, write them into it, held as the webhook holds a template change. `object` is the
/// workload as read (its `resourceVersion` guards the write).
pub async fn sync(
    ctx: &Context,
    ns: &str,
    kind: TargetKind,
    object: &Value,
) -> anyhow::Result<Sync> {
    let Some(template) = object.pointer("/spec/template") else {
        return Ok(Sync::Unchanged);
    };
    let current = pins_of(template);
    let mut want = BTreeMap::new();
    // (object, copy, contents, Secret type, contents of the copy it replaces)
    let mut to_make = Vec::new();
    let mut newest: Option<jiff::Timestamp> = None;
    for (k, name) in super::keep::config_refs(template) {
        let Some(obj) = get(ctx, ns, k, &name).await? else {
            // A pod could not start on it either: nothing to pin.
            continue;
        };
        let secret_type = obj.get("type").and_then(Value::as_str).map(String::from);
        if k == ConfigKind::Secret && !pinnable_secret(secret_type.as_deref()) {
            continue;
        }
        let c = crate::rollout::config::contents(&obj, k);
        let copy = pin_name(&name, &c);
        let r = (k, name.clone());
        if current.get(&r) != Some(&copy) {
            newest = newest.max(last_write(&obj));
            to_make.push((r.clone(), copy.clone(), c, secret_type));
        }
        want.insert(r, copy);
    }
    if to_make.is_empty() {
        return Ok(Sync::Unchanged);
    }
    if newest.is_some_and(|t| {
        jiff::Timestamp::now().duration_since(t)
            < jiff::SignedDuration::try_from(SETTLE).unwrap_or_default()
    }) {
        return Ok(Sync::Settling);
    }
    let owner = json!({
        "apiVersion": object["apiVersion"].as_str().unwrap_or("apps/v1"),
        "kind": format!("{kind:?}"),
        "name": object.pointer("/metadata/name"),
        "uid": object.pointer("/metadata/uid"),
    });
    let mut said = Vec::new();
    for ((k, name), copy, c, secret_type) in &to_make {
        let mut obj = json!({
            "apiVersion": "v1",
            "kind": k.as_str(),
            "metadata": {
                "name": copy,
                "namespace": ns,
                "labels": {
                    crate::rollout::config::LABEL_COPY_OF: name.chars().take(63).collect::<String>().trim_end_matches(['-', '.', '_']),
                    LABEL_PINNED_COPY: "true",
                    "app.kubernetes.io/managed-by": "graygate",
                },
                "ownerReferences": [owner],
            },
            "immutable": true,
        });
        if let Value::Object(m) = &mut obj {
            m.extend(c.clone());
            if let Some(t) = secret_type {
                m.insert("type".into(), json!(t));
            }
        }
        let obj: DynamicObject = serde_json::from_value(obj)?;
        ctx.fence.check()?;
        match api(ctx, ns, *k)
            .create(
                &PostParams {
                    field_manager: Some(crate::api::MANAGER_GUARD.into()),
                    ..Default::default()
                },
                &obj,
            )
            .await
        {
            Ok(_) => {}
            // Equal contents were pinned before: copies never change.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        let r = (*k, name.clone());
        said.push(match current.get(&r) {
            None => format!("{} {name} pinned", k.as_str()),
            Some(old) => {
                let before = get(ctx, ns, *k, old)
                    .await?
                    .map(|o| crate::rollout::config::contents(&o, *k))
                    .unwrap_or_default();
                let keys = keys_changed(&before, c);
                format!(
                    "{} {name} changed (keys: {})",
                    k.as_str(),
                    if keys.is_empty() {
                        "none".to_string()
                    } else {
                        keys.join(", ")
                    }
                )
            }
        });
    }
    // The template with the new pins, held as the webhook holds anyone's template change.
    let mut new = object.clone();
    new["spec"]["template"] = with_pins(template, &want);
    let request = json!({
        "operation": "UPDATE",
        "kind": {"kind": format!("{kind:?}")},
        "userInfo": {"username": "graygate:config"},
        "object": new,
        "oldObject": object,
    });
    let verdict = super::webhook::review(&request, &[]);
    apply_adds(&mut new, &verdict.patch);
    let mut spec = json!({"template": {"metadata": new["spec"]["template"]["metadata"].clone()}});
    for f in ["paused", "updateStrategy"] {
        if let Some(v) = new["spec"].get(f) {
            spec[f] = v.clone();
        }
    }
    let body = json!({
        "metadata": {
            "resourceVersion": object.pointer("/metadata/resourceVersion"),
            "annotations": new["metadata"]["annotations"].clone(),
        },
        "spec": spec,
    });
    ctx.fence.check()?;
    let pp = crate::api::patch_params(crate::api::MANAGER_GUARD);
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let res = match kind {
        TargetKind::Deployment => {
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(ctx.client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(body))
                .await
                .map(|_| ())
        }
        TargetKind::StatefulSet => {
            Api::<k8s_openapi::api::apps::v1::StatefulSet>::namespaced(ctx.client.clone(), ns)
                .patch(name, &pp, &Patch::Merge(body))
                .await
                .map(|_| ())
        }
    };
    match res {
        Ok(()) => Ok(Sync::Written(said.join("; "))),
        // Written by someone else since it was read: looked at again, from a fresh read.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(Sync::Settling),
        Err(e) => Err(e.into()),
    }
}

/// The ChangeRequest annotation that says which ConfigMaps and Secrets a change of pins changes,
/// and which of their keys (names only).
pub const ANN_CONFIG_CHANGED: &str = "graygate.io/config-changed";

/// What the pins of `after` change from those of `before`: one phrase per object whose copy
/// differs (`ConfigMap web-config: keys LOG_LEVEL, TTL`), `contents` giving a copy's contents.
pub fn describe_with(
    before: &Value,
    after: &Value,
    contents: impl Fn(ConfigKind, &str) -> Option<Map<String, Value>>,
) -> Option<String> {
    let (old, new) = (pins_of(before), pins_of(after));
    let said: Vec<String> = new
        .iter()
        .filter(|(r, copy)| old.get(*r) != Some(*copy))
        .map(
            |((kind, name), copy)| match old.get(&(*kind, name.clone())) {
                None => format!("{} {name}: pinned", kind.as_str()),
                Some(was) => {
                    let keys = match (contents(*kind, was), contents(*kind, copy)) {
                        (Some(a), Some(b)) => keys_changed(&a, &b).join(", "),
                        _ => "?".into(),
                    };
                    format!(
                        "{} {name}: keys {}",
                        kind.as_str(),
                        if keys.is_empty() { "none" } else { &keys }
                    )
                }
            },
        )
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

/// [`describe_with`], reading the copies from the API server.
pub async fn describe(
    ctx: &Context,
    ns: &str,
    before: &Value,
    after: &Value,
) -> anyhow::Result<Option<String>> {
    let mut contents = BTreeMap::new();
    for (kind, copy) in pins_of(before)
        .into_iter()
        .chain(pins_of(after))
        .map(|((k, _), c)| (k, c))
    {
        if let Some(o) = get(ctx, ns, kind, &copy).await? {
            contents.insert((kind, copy), crate::rollout::config::contents(&o, kind));
        }
    }
    Ok(describe_with(before, after, |k, c| {
        contents.get(&(k, c.to_string())).cloned()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "volumes": [{"name": "cfg", "configMap": {"name": "web-config"}}],
                "containers": [{
                    "name": "app",
                    "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}],
                    "envFrom": [{"configMapRef": {"name": "flags"}}]
                }]
            }
        })
    }

    fn pins() -> BTreeMap<ConfigRef, String> {
        [
            (
                (ConfigKind::ConfigMap, "web-config".to_string()),
                "web-config-gg-1".to_string(),
            ),
            (
                (ConfigKind::Secret, "db".to_string()),
                "db-gg-2".to_string(),
            ),
        ]
        .into_iter()
        .collect()
    }

    #[test]
    fn pins_are_written_into_a_template_and_read_back() {
        let t = with_pins(&template(), &pins());
        assert_eq!(pins_of(&t), pins());
        assert_eq!(t["metadata"]["labels"][LABEL_PINNED], "true");
        assert_eq!(t["metadata"]["labels"]["app"], "web");
        // The template still names the objects, as Git has it.
        assert_eq!(t["spec"], template()["spec"]);
        let unpinned = with_pins(&t, &BTreeMap::new());
        assert!(pins_of(&unpinned).is_empty());
        assert!(unpinned["metadata"]["labels"].get(LABEL_PINNED).is_none());
        // Unreadable pins are none.
        let mut bad = template();
        bad["metadata"]["annotations"] = json!({ANN_PINS: "not json"});
        assert!(pins_of(&bad).is_empty());
    }

    #[test]
    fn a_pinned_pod_reads_the_copies_and_an_unpinned_one_is_left_alone() {
        let pod = with_pins(&template(), &pins());
        let ops = pod_patch(&pod);
        let paths: Vec<&str> = ops.iter().filter_map(|o| o["path"].as_str()).collect();
        assert_eq!(
            paths,
            [
                "/spec/volumes",
                "/spec/containers",
                "/metadata/annotations/graygate.io~1config-pinned"
            ]
        );
        assert_eq!(ops[0]["value"][0]["configMap"]["name"], "web-config-gg-1");
        let c = &ops[1]["value"][0];
        assert_eq!(c["env"][0]["valueFrom"]["secretKeyRef"]["name"], "db-gg-2");
        // Not pinned: the pod reads the object.
        assert_eq!(c["envFrom"][0]["configMapRef"]["name"], "flags");
        assert!(pod_patch(&template()).is_empty());
    }

    #[test]
    fn a_copy_is_named_by_its_contents() {
        let a: Map<String, Value> = serde_json::from_value(json!({"data": {"k": "1"}})).unwrap();
        let b: Map<String, Value> = serde_json::from_value(json!({"data": {"k": "2"}})).unwrap();
        assert_eq!(pin_name("web-config", &a), pin_name("web-config", &a));
        assert_ne!(pin_name("web-config", &a), pin_name("web-config", &b));
        assert_ne!(pin_name("web-config", &a), pin_name("other", &a));
        assert!(pin_name("web-config", &a).starts_with("web-config-gg-"));
        assert!(pin_name(&"x".repeat(300), &a).len() <= 253);
    }

    #[test]
    fn the_keys_changed_are_named_and_nothing_else() {
        let c = |v: Value| -> Map<String, Value> { serde_json::from_value(v).unwrap() };
        let old =
            c(json!({"data": {"a": "1", "b": "2", "gone": "x"}, "binaryData": {"bin": "AA=="}}));
        let new =
            c(json!({"data": {"a": "1", "b": "3", "added": "y"}, "binaryData": {"bin": "AA=="}}));
        assert_eq!(keys_changed(&old, &new), ["added", "b", "gone"]);
        assert!(keys_changed(&old, &old).is_empty());
    }

    #[test]
    fn a_change_of_pins_is_described_by_the_keys_it_changes() {
        let t = |copies: &[(&str, &str)]| {
            let pins = copies
                .iter()
                .map(|(o, c)| ((ConfigKind::ConfigMap, o.to_string()), c.to_string()))
                .collect();
            with_pins(&template(), &pins)
        };
        let contents = |_: ConfigKind, copy: &str| -> Option<Map<String, Value>> {
            let data = match copy {
                "cfg-gg-1" => json!({"data": {"profile": "healthy", "ttl": "30"}}),
                "cfg-gg-2" => json!({"data": {"profile": "errors", "ttl": "30"}}),
                _ => return None,
            };
            serde_json::from_value(data).ok()
        };
        let before = t(&[("web-config", "cfg-gg-1")]);
        assert_eq!(
            describe_with(&before, &t(&[("web-config", "cfg-gg-2")]), contents).as_deref(),
            Some("ConfigMap web-config: keys profile")
        );
        assert_eq!(
            describe_with(&template(), &before, contents).as_deref(),
            Some("ConfigMap web-config: pinned")
        );
        assert_eq!(describe_with(&before, &before, contents), None);
    }

    #[test]
    fn the_webhooks_additions_are_applied() {
        let mut obj = json!({"metadata": {"name": "web"}, "spec": {"replicas": 2}});
        apply_adds(
            &mut obj,
            &[
                json!({"op": "add", "path": "/metadata/annotations", "value": {}}),
                json!({"op": "add", "path": "/metadata/annotations/graygate.io~1held-template", "value": "abc"}),
                json!({"op": "add", "path": "/spec/paused", "value": true}),
            ],
        );
        assert_eq!(
            obj["metadata"]["annotations"]["graygate.io/held-template"],
            "abc"
        );
        assert_eq!(obj["spec"]["paused"], true);
        assert_eq!(obj["spec"]["replicas"], 2);
    }

    #[test]
    fn only_secrets_that_hold_configuration_are_pinned() {
        for t in [
            None,
            Some("Opaque"),
            Some("kubernetes.io/tls"),
            Some("kubernetes.io/basic-auth"),
            Some("kubernetes.io/ssh-auth"),
        ] {
            assert!(pinnable_secret(t), "{t:?}");
        }
        for t in [
            "kubernetes.io/service-account-token",
            "kubernetes.io/dockerconfigjson",
            "bootstrap.kubernetes.io/token",
        ] {
            assert!(!pinnable_secret(Some(t)), "{t}");
        }
    }
}
