//! What a container sees of its ConfigMaps and Secrets, resolved the way the kubelet resolves it:
//! environment variables once, at container start (`env` with `value`, `configMapKeyRef`,
//! `secretKeyRef` and `fieldRef`; `envFrom` with its `prefix`, the later source winning, `env`
//! after `envFrom`, `$(VAR)` expanded from the variables defined before), and mounted files
//! (`configMap`, `secret` and `projected` volumes, with `items`) for as long as it runs — a real
//! kubelet refreshes them within its sync period after an edit, which the stand-in does at every
//! step.
//!
//! A missing object or key that is not `optional` is an error naming it, as the kubelet's
//! `CreateContainerConfigError` (for env) and `FailedMount` (for volumes) do.
//!
//! The simulated application takes its profile from the file named [`PROFILE_KEY`] in any of its
//! mounted volumes (it re-reads it when it changes, as an application that reloads its config),
//! else from the environment variable [`PROFILE_ENV`] (read once at start), else from its image
//! tag.

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use std::collections::BTreeMap;

/// The file name, in any mounted ConfigMap or Secret volume, that selects the application's
/// profile while it runs.
pub const PROFILE_KEY: &str = "profile";
/// The environment variable that selects the application's profile at start.
pub const PROFILE_ENV: &str = "APP_PROFILE";

/// The ConfigMaps and Secrets of one namespace, by name.
#[derive(Clone, Debug, Default)]
pub struct Objects {
    /// ConfigMaps by name.
    pub config_maps: BTreeMap<String, ConfigMap>,
    /// Secrets by name.
    pub secrets: BTreeMap<String, Secret>,
}

/// One key of a ConfigMap or Secret, as text; `Ok(None)` when the object exists but lacks the
/// key, an error naming the object when it does not exist.
fn key_of(
    objects: &Objects,
    secret: bool,
    name: &str,
    key: &str,
) -> Result<Option<String>, String> {
    let mut keys = all_keys(objects, secret, name).ok_or_else(|| not_found(secret, name))?;
    Ok(keys.remove(key))
}

/// The kubelet's words for an object that does not exist.
fn not_found(secret: bool, name: &str) -> String {
    format!(
        "{} \"{name}\" not found",
        if secret { "secret" } else { "configmap" }
    )
}

/// Every key of a ConfigMap or Secret, as text; `None` when it does not exist.
fn all_keys(objects: &Objects, secret: bool, name: &str) -> Option<BTreeMap<String, String>> {
    if secret {
        let s = objects.secrets.get(name)?;
        let mut out: BTreeMap<String, String> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone());
        }
        Some(out)
    } else {
        let c = objects.config_maps.get(name)?;
        let mut out: BTreeMap<String, String> = c
            .binary_data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        for (k, v) in c.data.iter().flatten() {
            out.insert(k.clone(), v.clone());
        }
        Some(out)
    }
}

/// `$(VAR)` replaced by an earlier variable's value; `$$` is a literal `$`; unknown references
/// stay as written (the kubelet's expansion rules).
pub fn expand(value: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment at start, or the error that keeps it from starting.
pub fn environment(
    pod: &Pod,
    container: &Container,
    objects: &Objects,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (secret, name, optional) = match (&from.config_map_ref, &from.secret_ref) {
            (Some(c), _) => (false, c.name.clone(), c.optional.unwrap_or(false)),
            (None, Some(s)) => (true, s.name.clone(), s.optional.unwrap_or(false)),
            (None, None) => continue,
        };
        match all_keys(objects, secret, &name) {
            Some(keys) => {
                for (k, v) in keys {
                    env.insert(format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => return Err(not_found(secret, &name)),
        }
    }
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let (secret, name, key, optional) = match (
                    &from.config_map_key_ref,
                    &from.secret_key_ref,
                    &from.field_ref,
                ) {
                    (Some(c), _, _) => (
                        false,
                        c.name.clone(),
                        c.key.clone(),
                        c.optional.unwrap_or(false),
                    ),
                    (None, Some(s), _) => (
                        true,
                        s.name.clone(),
                        s.key.clone(),
                        s.optional.unwrap_or(false),
                    ),
                    (None, None, Some(f)) => {
                        let v = match f.field_path.as_str() {
                            "metadata.name" => pod.metadata.name.clone(),
                            "metadata.namespace" => pod.metadata.namespace.clone(),
                            "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.clone()),
                            "status.podIP" | "status.hostIP" => Some("127.0.0.1".to_string()),
                            _ => None,
                        };
                        if let Some(v) = v {
                            env.insert(var.name.clone(), v);
                        }
                        continue;
                    }
                    _ => continue,
                };
                let kind = if secret { "Secret" } else { "ConfigMap" };
                match key_of(objects, secret, &name, &key) {
                    Ok(Some(v)) => v,
                    Ok(None) | Err(_) if optional => continue,
                    Ok(None) => {
                        return Err(format!(
                            "couldn't find key {key} in {kind} {}/{name}",
                            pod.metadata.namespace.as_deref().unwrap_or_default()
                        ));
                    }
                    Err(e) => return Err(e),
                }
            }
            (Some(v), None) => expand(v, &env),
            (None, None) => String::new(),
        };
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// The files of a container's ConfigMap, Secret and projected volumes that it mounts, keyed by
/// mount path and file path, or the error that keeps the volume from mounting.
pub fn mounted_files(
    pod: &Pod,
    container: &Container,
    objects: &Objects,
) -> Result<BTreeMap<String, String>, String> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for mount in container.volume_mounts.iter().flatten() {
        let Some(v) = volumes.iter().find(|v| v.name == mount.name) else {
            continue;
        };
        // (is it a Secret, its name, items, optional) per source of the volume.
        let mut sources = Vec::new();
        if let Some(c) = &v.config_map {
            sources.push((false, c.name.clone(), c.items.clone(), c.optional));
        }
        if let Some(s) = &v.secret {
            sources.push((
                true,
                s.secret_name.clone().unwrap_or_default(),
                s.items.clone(),
                s.optional,
            ));
        }
        if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    sources.push((false, c.name.clone(), c.items.clone(), c.optional));
                }
                if let Some(s) = &src.secret {
                    sources.push((true, s.name.clone(), s.items.clone(), s.optional));
                }
            }
        }
        for (secret, name, items, optional) in sources {
            let Some(keys) = all_keys(objects, secret, &name) else {
                if optional.unwrap_or(false) {
                    continue;
                }
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{}\": {}",
                    v.name,
                    not_found(secret, &name)
                ));
            };
            let files: Vec<(String, String)> = match &items {
                Some(items) => {
                    let mut f = Vec::new();
                    for i in items {
                        match keys.get(&i.key) {
                            Some(val) => f.push((i.path.clone(), val.clone())),
                            None if optional.unwrap_or(false) => {}
                            None => {
                                return Err(format!(
                                    "MountVolume.SetUp failed for volume \"{}\": configmap references non-existent config key: {}",
                                    v.name, i.key
                                ));
                            }
                        }
                    }
                    f
                }
                None => keys.into_iter().collect(),
            };
            for (path, val) in files {
                out.insert(
                    format!("{}/{}", mount.mount_path.trim_end_matches('/'), path),
                    val,
                );
            }
        }
    }
    Ok(out)
}

/// The profile a mounted file selects: the content (trimmed) of a file named [`PROFILE_KEY`].
pub fn profile_from_files(files: &BTreeMap<String, String>) -> Option<String> {
    files
        .iter()
        .find(|(path, _)| path.rsplit('/').next() == Some(PROFILE_KEY))
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn objects() -> Objects {
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "app", "namespace": "shop"},
            "data": {"profile": "errors\n", "LEVEL": "debug", "url": "http://db"}
        }))
        .unwrap();
        // "c2xvdw==" is "slow", "aHVudGVyMg==" is "hunter2".
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "creds", "namespace": "shop"},
            "data": {"APP_PROFILE": "c2xvdw==", "password": "aHVudGVyMg=="}
        }))
        .unwrap();
        Objects {
            config_maps: [("app".to_string(), cm)].into(),
            secrets: [("creds".to_string(), secret)].into(),
        }
    }

    fn pod(spec: serde_json::Value) -> (Pod, Container) {
        let p: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop"}, "spec": spec
        }))
        .unwrap();
        let c = p.spec.as_ref().unwrap().containers[0].clone();
        (p, c)
    }

    #[test]
    fn env_resolves_keys_sources_prefixes_and_expansion_as_the_kubelet_does() {
        let (p, c) = pod(json!({"containers": [{"name": "app",
        "envFrom": [{"configMapRef": {"name": "app"}, "prefix": "CFG_"}, {"secretRef": {"name": "creds"}}],
        "env": [
            {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "LEVEL"}}},
            {"name": "DSN", "value": "$(CFG_url)/orders?pw=$(password)&cost=$$5&$(NOPE)"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "GONE", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": true}}}
        ]}]}));
        let env = environment(&p, &c, &objects()).unwrap();
        assert_eq!(env["CFG_LEVEL"], "debug");
        assert_eq!(env["LEVEL"], "debug");
        assert_eq!(env[PROFILE_ENV], "slow");
        assert_eq!(env["DSN"], "http://db/orders?pw=hunter2&cost=$5&$(NOPE)");
        assert_eq!(env["POD"], "web-1");
        assert!(!env.contains_key("GONE"));
    }

    #[test]
    fn a_missing_object_or_key_keeps_the_container_from_starting_naming_it() {
        let (p, c) = pod(json!({"containers": [{"name": "app",
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "missing"}}}]}]}));
        assert_eq!(
            environment(&p, &c, &objects()).unwrap_err(),
            "couldn't find key missing in ConfigMap shop/app"
        );
        let (p, c) = pod(json!({"containers": [{"name": "app",
            "envFrom": [{"secretRef": {"name": "absent"}}]}]}));
        assert_eq!(
            environment(&p, &c, &objects()).unwrap_err(),
            "secret \"absent\" not found"
        );
    }

    #[test]
    fn mounted_volumes_give_files_with_items_and_the_profile_file_selects_the_profile() {
        let (p, c) = pod(json!({
        "volumes": [
            {"name": "config", "configMap": {"name": "app"}},
            {"name": "tls", "secret": {"secretName": "creds", "items": [{"key": "password", "path": "pw.txt"}]}},
            {"name": "both", "projected": {"sources": [{"configMap": {"name": "app", "items": [{"key": "url", "path": "db/url"}]}}]}},
            {"name": "unmounted", "configMap": {"name": "absent"}}
        ],
        "containers": [{"name": "app", "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app/"},
            {"name": "tls", "mountPath": "/etc/tls"},
            {"name": "both", "mountPath": "/etc/both"}
        ]}]}));
        let files = mounted_files(&p, &c, &objects()).unwrap();
        assert_eq!(files["/etc/app/profile"], "errors\n");
        assert_eq!(files["/etc/tls/pw.txt"], "hunter2");
        assert_eq!(files["/etc/both/db/url"], "http://db");
        assert_eq!(files.len(), 5, "{files:?}");
        assert_eq!(profile_from_files(&files).as_deref(), Some("errors"));
        // A mounted object that does not exist is a mount failure naming the volume.
        let (p, c) = pod(json!({
            "volumes": [{"name": "config", "configMap": {"name": "absent"}}],
            "containers": [{"name": "app", "volumeMounts": [{"name": "config", "mountPath": "/etc/app"}]}]}));
        assert_eq!(
            mounted_files(&p, &c, &objects()).unwrap_err(),
            "MountVolume.SetUp failed for volume \"config\": configmap \"absent\" not found"
        );
    }
}
