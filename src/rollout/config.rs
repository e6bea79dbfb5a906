//! Config changes of explicit ChangeRequests (`spec.config`): new contents for ConfigMaps and
//! Secrets a Deployment's template uses, rolled out in the change's batches.
//!
//! - At the first batch graygate makes two immutable copies of each object, named
//!   `<object>-gg-<hash>`, labelled `graygate.io/change=<ChangeRequest>` and owned by it: the new
//!   contents (the object's keys with `data` merged in, or the whole of `from`), and the contents
//!   the object has now (to go back to, should a rollback come after promotion).
//! - The canary's template names the new copies where the target's names the objects: canary
//!   pods start from the new contents, the target's pods keep the objects as they are.
//! - The template graygate promotes names the objects themselves, with the annotation
//!   `graygate.io/config: <hash of spec.config>` so that every pod restarts onto the new contents
//!   (`env` readers too). Before it writes that template, graygate writes the new copy's contents
//!   into each object: what the pods get is what the canary ran, whatever happened to `from`
//!   since.
//! - Once the change has ended (promoted, or rolled back), the copies are deleted; a rollback
//!   after promotion first puts the old contents back.

use super::{Ctx, Error};
use crate::api::{ChangeRequestSpec, ConfigChange, FieldError, LABEL_CHANGE};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// The two kinds of object that carry a workload's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConfigKind {
    ConfigMap,
    Secret,
}

impl ConfigKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigKind::ConfigMap => "ConfigMap",
            ConfigKind::Secret => "Secret",
        }
    }
}

/// A ConfigMap or Secret by kind and name (in the template's namespace).
pub type ConfigRef = (ConfigKind, String);

/// Every ConfigMap and Secret a pod template refers to: volumes (`configMap`, `secret`, and the
/// sources of `projected`), and each container's `env[].valueFrom` and `envFrom` (init and
/// ephemeral containers too).
pub fn config_refs(template: &Value) -> BTreeSet<ConfigRef> {
    let mut out = BTreeSet::new();
    let mut add = |kind: ConfigKind, name: Option<&Value>| {
        if let Some(n) = name.and_then(Value::as_str).filter(|n| !n.is_empty()) {
            out.insert((kind, n.to_string()));
        }
    };
    let spec = template.get("spec").unwrap_or(&Value::Null);
    let list = |v: &Value, key: &str| -> Vec<Value> {
        v.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for vol in list(spec, "volumes") {
        add(ConfigKind::ConfigMap, vol.pointer("/configMap/name"));
        add(ConfigKind::Secret, vol.pointer("/secret/secretName"));
        for src in list(vol.get("projected").unwrap_or(&Value::Null), "sources") {
            add(ConfigKind::ConfigMap, src.pointer("/configMap/name"));
            add(ConfigKind::Secret, src.pointer("/secret/name"));
        }
    }
    for group in ["initContainers", "containers", "ephemeralContainers"] {
        for c in list(spec, group) {
            for e in list(&c, "env") {
                add(
                    ConfigKind::ConfigMap,
                    e.pointer("/valueFrom/configMapKeyRef/name"),
                );
                add(
                    ConfigKind::Secret,
                    e.pointer("/valueFrom/secretKeyRef/name"),
                );
            }
            for e in list(&c, "envFrom") {
                add(ConfigKind::ConfigMap, e.pointer("/configMapRef/name"));
                add(ConfigKind::Secret, e.pointer("/secretRef/name"));
            }
        }
    }
    out
}

/// The template annotation a config change adds: the hash of its `spec.config`.
pub const ANN_CONFIG: &str = "graygate.io/config";
/// On a copy: the object it is a copy of.
pub const LABEL_COPY_OF: &str = "graygate.io/copy-of";

/// One entry of `spec.config`, read: its index, the object, and the entry.
pub fn entries(spec: &ChangeRequestSpec) -> Vec<(usize, ConfigRef, &ConfigChange)> {
    spec.config
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let r = match (&c.config_map, &c.secret) {
                (Some(n), None) => (ConfigKind::ConfigMap, n.clone()),
                (None, Some(n)) => (ConfigKind::Secret, n.clone()),
                _ => return None,
            };
            Some((i, r, c))
        })
        .collect()
}

fn field(i: usize, kind: ConfigKind) -> String {
    match kind {
        ConfigKind::ConfigMap => format!("config[{i}].configMap"),
        ConfigKind::Secret => format!("config[{i}].secret"),
    }
}

/// Every object of `spec.config` must be one the target's template uses.
pub fn check_used(base: &Value, spec: &ChangeRequestSpec) -> Result<(), FieldError> {
    let used = config_refs(base);
    for (i, r, _) in entries(spec) {
        if !used.contains(&r) {
            let names: Vec<String> = used
                .iter()
                .filter(|(k, _)| *k == r.0)
                .map(|(_, n)| n.clone())
                .collect();
            return Err(FieldError::new(
                field(i, r.0),
                format!(
                    "the target's pod template does not use {} {} (it uses: {})",
                    r.0.as_str(),
                    r.1,
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
    }
    Ok(())
}

/// `template` with the config change's annotation (the hash of `spec.config`).
pub fn mark(template: &Value, spec: &ChangeRequestSpec) -> Value {
    let mut t = template.clone();
    let hash = crate::util::short_hash(&serde_json::to_value(&spec.config).unwrap_or_default());
    let meta = t
        .as_object_mut()
        .map(|m| m.entry("metadata").or_insert_with(|| json!({})));
    if let Some(Value::Object(meta)) = meta {
        let anns = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Value::Object(a) = anns {
            a.insert(ANN_CONFIG.into(), json!(hash));
        }
    }
    t
}

/// Which copy: the new contents, or the contents the object had when the change started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    New,
    Old,
}

/// The name of a copy of `object` for the change with uid `uid`.
pub fn copy_name(object: &str, uid: &str, role: Role) -> String {
    let hash = crate::util::short_hash(&json!([uid, object, format!("{role:?}")]));
    let hash: String = hash.chars().take(10).collect();
    let base: String = object.chars().take(253 - 4 - hash.len()).collect();
    format!("{}-gg-{hash}", base.trim_end_matches(['-', '.']))
}

/// The copy of `object` for this change: the old contents are one per change; the new ones one
/// per change and entry, so that an entry edited mid-rollout (and resumed) gets a copy of its
/// own instead of the one made for the previous contents.
fn copy_for(uid: &str, object: &str, change: &ConfigChange, role: Role) -> String {
    let key = match role {
        Role::Old => uid.to_string(),
        Role::New => format!(
            "{uid}/{}",
            crate::util::short_hash(&serde_json::to_value(change).unwrap_or_default())
        ),
    };
    copy_name(object, &key, role)
}

/// The new copy of each object of the change, by the object (names only: no API call).
pub fn copies_of(cr: &crate::api::ChangeRequest) -> BTreeMap<ConfigRef, String> {
    let uid = cr.uid().unwrap_or_default();
    entries(&cr.spec)
        .into_iter()
        .map(|(_, r, c)| {
            let name = copy_for(&uid, &r.1, c, Role::New);
            (r, name)
        })
        .collect()
}

/// The canary's template: `template` naming the change's new copies.
pub fn canary_template(template: &Value, cr: &crate::api::ChangeRequest) -> Value {
    pinned(template, &copies_of(cr))
}

/// `template` with every reference to an object of `copies` pointing at its copy instead.
pub fn pinned(template: &Value, copies: &BTreeMap<ConfigRef, String>) -> Value {
    let mut t = template.clone();
    if copies.is_empty() {
        return t;
    }
    let swap = |v: Option<&mut Value>, kind: ConfigKind| {
        if let Some(v) = v
            && let Some(name) = v.as_str()
            && let Some(copy) = copies.get(&(kind, name.to_string()))
        {
            *v = json!(copy);
        }
    };
    let Some(spec) = t.get_mut("spec") else {
        return t;
    };
    if let Some(Value::Array(vols)) = spec.get_mut("volumes") {
        for vol in vols {
            swap(vol.pointer_mut("/configMap/name"), ConfigKind::ConfigMap);
            swap(vol.pointer_mut("/secret/secretName"), ConfigKind::Secret);
            if let Some(Value::Array(srcs)) = vol.pointer_mut("/projected/sources") {
                for src in srcs {
                    swap(src.pointer_mut("/configMap/name"), ConfigKind::ConfigMap);
                    swap(src.pointer_mut("/secret/name"), ConfigKind::Secret);
                }
            }
        }
    }
    for group in ["initContainers", "containers", "ephemeralContainers"] {
        let Some(Value::Array(cs)) = spec.get_mut(group) else {
            continue;
        };
        for c in cs {
            if let Some(Value::Array(env)) = c.get_mut("env") {
                for e in env {
                    swap(
                        e.pointer_mut("/valueFrom/configMapKeyRef/name"),
                        ConfigKind::ConfigMap,
                    );
                    swap(
                        e.pointer_mut("/valueFrom/secretKeyRef/name"),
                        ConfigKind::Secret,
                    );
                }
            }
            if let Some(Value::Array(env)) = c.get_mut("envFrom") {
                for e in env {
                    swap(e.pointer_mut("/configMapRef/name"), ConfigKind::ConfigMap);
                    swap(e.pointer_mut("/secretRef/name"), ConfigKind::Secret);
                }
            }
        }
    }
    t
}

/// The fields that hold an object's contents.
fn content_fields(kind: ConfigKind) -> &'static [&'static str] {
    match kind {
        ConfigKind::ConfigMap => &["data", "binaryData"],
        ConfigKind::Secret => &["data"],
    }
}

/// An object's contents: its content fields (empty ones left out).
pub fn contents(obj: &Value, kind: ConfigKind) -> Map<String, Value> {
    let mut out = Map::new();
    for f in content_fields(kind) {
        if let Some(Value::Object(m)) = obj.get(*f)
            && !m.is_empty()
        {
            out.insert((*f).into(), Value::Object(m.clone()));
        }
    }
    out
}

/// The new contents: the object's with `data` merged in, or the whole of `from`'s.
pub fn new_contents(
    original: &Value,
    source: Option<&Value>,
    change: &ConfigChange,
    kind: ConfigKind,
) -> Map<String, Value> {
    if let Some(src) = source {
        return contents(src, kind);
    }
    let mut out = contents(original, kind);
    let data = out
        .entry("data")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(d) = data {
        for (k, v) in &change.data {
            d.insert(k.clone(), json!(v));
        }
    }
    out
}

/// A merge patch that makes `current`'s contents exactly `want` (keys it lacks are removed).
pub fn contents_patch(current: &Value, want: &Map<String, Value>, kind: ConfigKind) -> Value {
    let mut patch = Map::new();
    for f in content_fields(kind) {
        let have = current.get(*f).and_then(Value::as_object);
        let wanted = want.get(*f).and_then(Value::as_object);
        let mut p = Map::new();
        if let Some(h) = have {
            for k in h.keys() {
                if wanted.is_none_or(|w| !w.contains_key(k)) {
                    p.insert(k.clone(), Value::Null);
                }
            }
        }
        if let Some(w) = wanted {
            for (k, v) in w {
                if have.and_then(|h| h.get(k)) != Some(v) {
                    p.insert(k.clone(), v.clone());
                }
            }
        }
        if !p.is_empty() {
            patch.insert((*f).into(), Value::Object(p));
        }
    }
    Value::Object(patch)
}

/// The ConfigMaps or Secrets of `ns`, read untyped (their contents as JSON).
pub fn objects_api(client: &kube::Client, ns: &str, kind: ConfigKind) -> Api<DynamicObject> {
    let ar = match kind {
        ConfigKind::ConfigMap => ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&()),
        ConfigKind::Secret => ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

fn api(ctx: &Ctx<'_>, kind: ConfigKind) -> Api<DynamicObject> {
    objects_api(ctx.client, ctx.ns, kind)
}

async fn get(ctx: &Ctx<'_>, kind: ConfigKind, name: &str) -> Result<Option<Value>, Error> {
    Ok(match api(ctx, kind).get_opt(name).await? {
        Some(o) => Some(serde_json::to_value(o)?),
        None => None,
    })
}

fn uid(ctx: &Ctx<'_>) -> String {
    ctx.cr.uid().unwrap_or_default()
}

/// The first object of `spec.config`, or `from` source, that does not exist: (field, message).
pub async fn missing(ctx: &Ctx<'_>) -> Result<Option<(String, String)>, Error> {
    for (i, (kind, name), change) in entries(&ctx.cr.spec) {
        if get(ctx, kind, &name).await?.is_none() {
            return Ok(Some((
                field(i, kind),
                format!("{} {name} does not exist", kind.as_str()),
            )));
        }
        if let Some(from) = &change.from
            && get(ctx, kind, from).await?.is_none()
        {
            return Ok(Some((
                format!("config[{i}].from"),
                format!("{} {from} does not exist", kind.as_str()),
            )));
        }
    }
    Ok(None)
}

/// Make the copies of every object of `spec.config` that do not exist yet. An object or source that does not exist makes the spec invalid.
pub async fn ensure_copies(ctx: &Ctx<'_>) -> Result<(), Error> {
    for (i, r, change) in entries(&ctx.cr.spec) {
        let (kind, name) = (r.0, r.1.clone());
        let new_name = copy_for(&uid(ctx), &name, change, Role::New);
        if get(ctx, kind, &new_name).await?.is_some() {
            continue;
        }
        let original = get(ctx, kind, &name).await?.ok_or_else(|| {
            Error::Spec(
                FieldError::new(
                    field(i, kind),
                    format!("{} {name} does not exist", kind.as_str()),
                )
                .to_string(),
            )
        })?;
        let source = match &change.from {
            Some(from) => Some(get(ctx, kind, from).await?.ok_or_else(|| {
                Error::Spec(
                    FieldError::new(
                        format!("config[{i}].from"),
                        format!("{} {from} does not exist", kind.as_str()),
                    )
                    .to_string(),
                )
            })?),
            None => None,
        };
        let old = contents(&original, kind);
        let new = new_contents(&original, source.as_ref(), change, kind);
        let secret_type = original.get("type").cloned();
        let old_name = copy_for(&uid(ctx), &name, change, Role::Old);
        create_copy(ctx, kind, &name, &old_name, old, secret_type.clone()).await?;
        create_copy(ctx, kind, &name, &new_name, new, secret_type).await?;
    }
    Ok(())
}

async fn create_copy(
    ctx: &Ctx<'_>,
    kind: ConfigKind,
    object: &str,
    copy: &str,
    contents: Map<String, Value>,
    secret_type: Option<Value>,
) -> Result<(), Error> {
    let owner = ctx.cr.controller_owner_ref(&()).ok_or(Error::NoNamespace)?;
    let mut obj = json!({
        "apiVersion": "v1",
        "kind": kind.as_str(),
        "metadata": {
            "name": copy,
            "namespace": ctx.ns,
            "labels": {
                LABEL_CHANGE: ctx.cr.name_any(),
                LABEL_COPY_OF: object,
                "app.kubernetes.io/managed-by": "graygate",
            },
            "ownerReferences": [owner],
        },
        "immutable": true,
    });
    if let Value::Object(m) = &mut obj {
        m.extend(contents);
        if kind == ConfigKind::Secret
            && let Some(t) = secret_type
        {
            m.insert("type".into(), t);
        }
    }
    let obj: DynamicObject = serde_json::from_value(obj)?;
    ctx.fence.check()?;
    match api(ctx, kind)
        .create(
            &PostParams {
                field_manager: Some(crate::api::MANAGER_ROLLOUT.into()),
                ..Default::default()
            },
            &obj,
        )
        .await
    {
        Ok(_) => Ok(()),
        // Made by an earlier reconcile: copies never change.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Make each object's contents those of its `role` copy, from `only_if` (when given: only an
/// object whose contents are now those of that copy, so that nobody's edit is undone).
async fn write_contents(ctx: &Ctx<'_>, role: Role, only_if: Option<Role>) -> Result<(), Error> {
    for (_, (kind, name), change) in entries(&ctx.cr.spec) {
        let Some(copy) = get(ctx, kind, &copy_for(&uid(ctx), &name, change, role)).await? else {
            continue;
        };
        let Some(original) = get(ctx, kind, &name).await? else {
            continue;
        };
        if let Some(cond) = only_if {
            let Some(c) = get(ctx, kind, &copy_for(&uid(ctx), &name, change, cond)).await? else {
                continue;
            };
            if contents(&original, kind) != contents(&c, kind) {
                continue;
            }
        }
        let want = contents(&copy, kind);
        let patch = contents_patch(&original, &want, kind);
        if patch.as_object().is_some_and(|p| p.is_empty()) {
            continue;
        }
        let mut patch = patch;
        if let (Some(rv), Value::Object(p)) = (
            original.pointer("/metadata/resourceVersion").cloned(),
            &mut patch,
        ) {
            p.insert("metadata".into(), json!({"resourceVersion": rv}));
        }
        ctx.fence.check()?;
        api(ctx, kind)
            .patch(
                &name,
                &crate::api::patch_params(crate::api::MANAGER_ROLLOUT),
                &Patch::Merge(patch),
            )
            .await?;
    }
    Ok(())
}

/// Promotion: every object gets the contents the canary ran.
pub async fn promote(ctx: &Ctx<'_>) -> Result<(), Error> {
    write_contents(ctx, Role::New, None).await
}

/// Rollback: an object graygate gave the new contents gets its old ones back.
pub async fn restore(ctx: &Ctx<'_>) -> Result<(), Error> {
    write_contents(ctx, Role::Old, Some(Role::New)).await
}

/// Delete every copy the change made.
pub async fn remove_copies(ctx: &Ctx<'_>) -> Result<(), Error> {
    if ctx.cr.spec.config.is_empty() {
        return Ok(());
    }
    let sel = format!("{LABEL_CHANGE}={}", ctx.cr.name_any());
    for kind in [ConfigKind::ConfigMap, ConfigKind::Secret] {
        let a = api(ctx, kind);
        for o in a.list_metadata(&ListParams::default().labels(&sel)).await? {
            ctx.fence.check()?;
            match a.delete(&o.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> ChangeRequestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn template() -> Value {
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "volumes": [
                    {"name": "config", "configMap": {"name": "web-config"}},
                    {"name": "p", "projected": {"sources": [{"secret": {"name": "tls"}}]}}
                ],
                "containers": [{
                    "name": "app",
                    "image": "web:1",
                    "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "p"}}}],
                    "envFrom": [{"configMapRef": {"name": "web-config"}}]
                }]
            }
        })
    }

    #[test]
    fn the_canary_template_names_the_copies_and_nothing_else_changes() {
        let copies = BTreeMap::from([
            (
                (ConfigKind::ConfigMap, "web-config".to_string()),
                "web-config-gg-1".to_string(),
            ),
            (
                (ConfigKind::Secret, "db".to_string()),
                "db-gg-2".to_string(),
            ),
        ]);
        let t = pinned(&template(), &copies);
        assert_eq!(
            t["spec"]["volumes"][0]["configMap"]["name"],
            "web-config-gg-1"
        );
        assert_eq!(
            t["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["name"],
            "web-config-gg-1"
        );
        assert_eq!(
            t["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"]["name"],
            "db-gg-2"
        );
        // Not in the change: untouched.
        assert_eq!(
            t["spec"]["volumes"][1]["projected"]["sources"][0]["secret"]["name"],
            "tls"
        );
        // A ConfigMap and a Secret of the same name are different objects.
        let only_secret = BTreeMap::from([(
            (ConfigKind::Secret, "web-config".to_string()),
            "x".to_string(),
        )]);
        assert_eq!(pinned(&template(), &only_secret), template());
    }

    #[test]
    fn an_object_the_template_does_not_use_is_refused_by_name() {
        let s = spec(
            "target: {kind: Deployment, name: web}\nconfig: [{configMap: other, data: {a: b}}]\nbatches: [{percent: 100}]",
        );
        let e = check_used(&template(), &s).unwrap_err();
        assert_eq!(e.field, "config[0].configMap");
        assert!(e.message.contains("(it uses: web-config)"), "{}", e.message);
        let s = spec(
            "target: {kind: Deployment, name: web}\nconfig: [{secret: db, from: db-next}]\nbatches: [{percent: 100}]",
        );
        check_used(&template(), &s).unwrap();
    }

    #[test]
    fn new_contents_merge_data_or_take_the_source_whole_and_the_patch_makes_them_exact() {
        let original = json!({"data": {"a": "1", "b": "2"}, "binaryData": {"bin": "AAE="}});
        let change = ConfigChange {
            config_map: Some("web-config".into()),
            data: BTreeMap::from([("b".into(), "20".into()), ("c".into(), "3".into())]),
            ..Default::default()
        };
        let new = new_contents(&original, None, &change, ConfigKind::ConfigMap);
        assert_eq!(
            Value::Object(new.clone()),
            json!({"data": {"a": "1", "b": "20", "c": "3"}, "binaryData": {"bin": "AAE="}})
        );
        let source = json!({"data": {"z": "9"}});
        let whole = new_contents(&original, Some(&source), &change, ConfigKind::ConfigMap);
        assert_eq!(Value::Object(whole.clone()), json!({"data": {"z": "9"}}));
        // The patch from the original to the source's contents removes what the source lacks.
        assert_eq!(
            contents_patch(&original, &whole, ConfigKind::ConfigMap),
            json!({"data": {"a": null, "b": null, "z": "9"}, "binaryData": {"bin": null}})
        );
        assert_eq!(
            contents_patch(
                &original,
                &contents(&original, ConfigKind::ConfigMap),
                ConfigKind::ConfigMap
            ),
            json!({})
        );
        // A Secret's type is not contents; its data is.
        let secret = json!({"type": "kubernetes.io/tls", "data": {"tls.crt": "eA=="}});
        assert_eq!(
            Value::Object(contents(&secret, ConfigKind::Secret)),
            json!({"data": {"tls.crt": "eA=="}})
        );
    }

    #[test]
    fn copy_names_are_valid_distinct_and_stable() {
        let a = copy_name("web-config", "uid-1", Role::New);
        assert!(a.starts_with("web-config-gg-") && a.len() == "web-config-gg-".len() + 10);
        assert_eq!(a, copy_name("web-config", "uid-1", Role::New));
        assert_ne!(a, copy_name("web-config", "uid-1", Role::Old));
        assert_ne!(a, copy_name("web-config", "uid-2", Role::New));
        // An entry edited mid-rollout gets a new copy of the new contents, not of the old.
        let debug = ConfigChange {
            config_map: Some("web-config".into()),
            data: BTreeMap::from([("LOG_LEVEL".into(), "debug".into())]),
            ..Default::default()
        };
        let trace = ConfigChange {
            data: BTreeMap::from([("LOG_LEVEL".into(), "trace".into())]),
            ..debug.clone()
        };
        assert_ne!(
            copy_for("u", "web-config", &debug, Role::New),
            copy_for("u", "web-config", &trace, Role::New)
        );
        assert_eq!(
            copy_for("u", "web-config", &debug, Role::Old),
            copy_for("u", "web-config", &trace, Role::Old)
        );
        let long = copy_name(
            &format!("{}.{}", "x".repeat(200), "y".repeat(52)),
            "u",
            Role::New,
        );
        assert!(long.len() <= 253, "{}", long.len());
        assert!(
            long.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
                && long.as_bytes()[long.len() - 1].is_ascii_alphanumeric(),
            "{long}"
        );
    }

    #[test]
    fn the_mark_is_the_hash_of_the_config_entries() {
        let a = spec(
            "target: {kind: Deployment, name: web}\nconfig: [{configMap: web-config, data: {a: b}}]\nbatches: [{percent: 100}]",
        );
        let b = spec(
            "target: {kind: Deployment, name: web}\nconfig: [{configMap: web-config, data: {a: c}}]\nbatches: [{percent: 100}]",
        );
        let ma = mark(&template(), &a);
        assert!(ma["metadata"]["annotations"][ANN_CONFIG].is_string());
        assert_ne!(ma, mark(&template(), &b));
        assert_eq!(ma, mark(&template(), &a));
    }
}
