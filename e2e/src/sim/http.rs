//! The simulated API server's HTTP surface: the Kubernetes wire protocol for what graygate uses.

use super::apps::Apps;
use super::faults::{Faults, Injected};
use super::selectors::{FieldSelector, LabelSelector, labels_of};
use super::store::{ApiError, Change, Part, Propagation, ResourceType, Store};
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use graygate::util::smp::{json_merge, strategic_merge};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Header the test harness sets on its own requests: exempt from faults and the audit log.
pub const HARNESS_HEADER: &str = "x-graygate-harness";

/// One request as the audit log saw it.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    /// HTTP method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Request content type.
    pub content_type: String,
    /// Response status.
    pub status: u16,
    /// Request body (patches), trimmed.
    pub body: String,
}

/// State behind the router.
#[derive(Clone)]
pub struct ApiState {
    /// Objects.
    pub store: Arc<Store>,
    /// Fault knobs.
    pub faults: Arc<Faults>,
    /// Simulated applications (pod logs).
    pub apps: Arc<Apps>,
    /// Requests from graygate (not the harness).
    pub audit: Arc<Mutex<Vec<AuditEntry>>>,
}

fn error(e: ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        e.status().to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The router.
pub fn router(state: ApiState) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(state)
}

async fn handle(
    State(s): State<ApiState>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let harness = headers.contains_key(HARNESS_HEADER);
    if !harness {
        let latency = s.faults.latency_ms();
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        if let Injected::Fail(code) = s.faults.next() {
            let e = ApiError::new(
                code,
                match code {
                    429 => "TooManyRequests",
                    503 => "ServiceUnavailable",
                    _ => "InternalError",
                },
                "injected fault",
            );
            let mut r = error(e);
            if code != 500 {
                r.headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            record(&s, &method, &uri, &headers, code, &body);
            return r;
        }
    }
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = route(&s, &method, &uri, &q, &ctype, &body).await;
    if !harness {
        record(&s, &method, &uri, &headers, resp.status().as_u16(), &body);
    }
    resp
}

fn record(
    s: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    status: u16,
    body: &Bytes,
) {
    if let Ok(mut a) = s.audit.lock() {
        a.push(AuditEntry {
            method: method.to_string(),
            path: uri.path().to_string(),
            query: uri.query().unwrap_or("").to_string(),
            content_type: headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            status,
            body: String::from_utf8_lossy(&body[..body.len().min(4096)]).to_string(),
        });
    }
}

enum Target {
    Discovery(Value),
    Resource {
        rt: ResourceType,
        ns: Option<String>,
        name: Option<String>,
        sub: Option<String>,
    },
}

fn resolve(s: &ApiState, path: &str) -> Result<Target, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|x| !x.is_empty())
        .collect();
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )
    };
    match segs.as_slice() {
        ["version"] => Ok(Target::Discovery(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-graygate-sim", "gitCommit": "graygate-sim",
            "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "none",
            "compiler": "rust", "platform": "linux/amd64"
        }))),
        ["api"] => Ok(Target::Discovery(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
        )),
        ["apis"] => Ok(Target::Discovery(group_list(&s.store))),
        ["api", "v1"] => Ok(Target::Discovery(resource_list(&s.store, "", "v1"))),
        ["apis", g, v] => {
            if s.store
                .types()
                .iter()
                .any(|t| t.group == *g && t.version == *v)
            {
                Ok(Target::Discovery(resource_list(&s.store, g, v)))
            } else {
                Err(not_found())
            }
        }
        _ => {
            let (group, version, rest) = match segs.as_slice() {
                ["api", "v1", rest @ ..] => ("", "v1", rest),
                ["apis", g, v, rest @ ..] => (*g, *v, rest),
                _ => return Err(not_found()),
            };
            let (ns, plural, name, sub) = match rest {
                ["namespaces", ns, plural, tail @ ..]
                    if !(group.is_empty() && matches!(*plural, "status" | "finalize")) =>
                {
                    (
                        Some(ns.to_string()),
                        *plural,
                        tail.first().map(|x| x.to_string()),
                        tail.get(1).map(|x| x.to_string()),
                    )
                }
                [plural, tail @ ..] => (
                    None,
                    *plural,
                    tail.first().map(|x| x.to_string()),
                    tail.get(1).map(|x| x.to_string()),
                ),
                [] => return Err(not_found()),
            };
            let rt = s
                .store
                .resource(group, version, plural)
                .ok_or_else(not_found)?;
            if rt.namespaced && ns.is_none() && name.is_some() {
                return Err(not_found());
            }
            if let Some(sub) = &sub {
                let supported = (sub == "status" && rt.status)
                    || (sub == "scale" && rt.scale)
                    || (sub == "log" && rt.log);
                if !supported {
                    return Err(ApiError::new(
                        404,
                        "NotFound",
                        format!("the simulator does not serve {}/{sub}", rt.plural),
                    ));
                }
            }
            Ok(Target::Resource { rt, ns, name, sub })
        }
    }
}

fn group_list(store: &Store) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in store.types() {
        if t.group.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, vs)) => {
                if !vs.contains(&t.version) {
                    vs.push(t.version.clone());
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups.iter().map(|(g, vs)| json!({
            "name": g,
            "versions": vs.iter().map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v})).collect::<Vec<_>>(),
            "preferredVersion": {"groupVersion": format!("{g}/{}", vs[0]), "version": vs[0]},
        })).collect::<Vec<_>>(),
    })
}

fn resource_list(store: &Store, group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for t in store
        .types()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
    {
        resources.push(json!({
            "name": t.plural, "singularName": t.singular, "namespaced": t.namespaced, "kind": t.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
            "shortNames": t.short_names,
        }));
        if t.status {
            resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
        }
        if t.scale {
            resources.push(json!({"name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
        }
        if t.log {
            resources.push(json!({"name": format!("{}/log", t.plural), "singularName": "", "namespaced": t.namespaced, "kind": "Pod", "verbs": ["get"]}));
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": if group.is_empty() { version.to_string() } else { format!("{group}/{version}") }, "resources": resources})
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .or_else(|_| serde_yaml::from_slice::<Value>(body))
        .map_err(|e| {
            ApiError::new(
                400,
                "BadRequest",
                format!("could not decode the request body: {e}"),
            )
        })
}

const UNSUPPORTED_PARAMS: [&str; 3] = ["dryRun", "sendInitialEvents", "follow"];

async fn route(
    s: &ApiState,
    method: &Method,
    uri: &Uri,
    q: &HashMap<String, String>,
    ctype: &str,
    body: &Bytes,
) -> Response {
    for p in UNSUPPORTED_PARAMS {
        if q.get(p).is_some_and(|v| !v.is_empty() && v != "false") {
            return error(ApiError::new(
                400,
                "BadRequest",
                format!("the graygate simulator does not support the {p} parameter"),
            ));
        }
    }
    let target = match resolve(s, uri.path()) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let (rt, ns, name, sub) = match target {
        Target::Discovery(v) => {
            return if method == Method::GET {
                ok_json(StatusCode::OK, &v)
            } else {
                error(ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "discovery is read-only",
                ))
            };
        }
        Target::Resource { rt, ns, name, sub } => (rt, ns, name, sub),
    };
    let ns_str = ns.clone().unwrap_or_default();
    let result = match (method.clone(), name, sub.as_deref()) {
        (Method::GET, None, None) => {
            if q.get("watch").is_some_and(|w| w == "true" || w == "1") {
                return watch(s, &rt, ns, q).await;
            }
            list(s, &rt, ns.as_deref(), q)
        }
        (Method::POST, None, None) => create(s, &rt, &ns_str, body),
        (Method::DELETE, None, None) => delete_collection(s, &rt, ns.as_deref(), q),
        (Method::GET, Some(n), None) | (Method::GET, Some(n), Some("status")) => {
            s.store.get(&rt, &ns_str, &n)
        }
        (Method::GET, Some(n), Some("scale")) => {
            s.store.get(&rt, &ns_str, &n).map(|o| to_scale(&rt, &o))
        }
        (Method::GET, Some(n), Some("log")) => return pod_log(s, &rt, &ns_str, &n, q),
        (Method::PUT, Some(n), sub) => replace(s, &rt, &ns_str, &n, sub, body),
        (Method::PATCH, Some(n), sub) => patch(s, &rt, &ns_str, &n, sub, ctype, q, body),
        (Method::DELETE, Some(n), None) => delete(s, &rt, &ns_str, &n, q, body),
        (m, _, _) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("the simulator does not support {m} here"),
        )),
    };
    match result {
        Ok(v) => {
            let code = if method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            ok_json(code, &v)
        }
        Err(e) => error(e),
    }
}

fn selectors(q: &HashMap<String, String>) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let ls = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| {
            ApiError::new(
                400,
                "BadRequest",
                format!("unable to parse labelSelector: {e}"),
            )
        })?;
    let fs = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
        .map_err(|e| {
            ApiError::new(
                400,
                "BadRequest",
                format!("unable to parse fieldSelector: {e}"),
            )
        })?;
    Ok((ls, fs))
}

fn list(
    s: &ApiState,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (items, rv) = s.store.list(rt, ns, &ls, &fs);
    let offset: usize = match q.get("continue").filter(|c| !c.is_empty()) {
        Some(c) => c
            .strip_prefix("offset-")
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| ApiError::new(400, "BadRequest", "invalid continue token"))?,
        None => 0,
    };
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if offset + page.len() < total {
        metadata["continue"] = json!(format!("offset-{}", offset + page.len()));
        metadata["remainingItemCount"] = json!(total - offset - page.len());
    }
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": metadata, "items": page}),
    )
}

fn check_kind(rt: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    if let Some(k) = obj.get("kind").and_then(Value::as_str)
        && k != rt.kind
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!("the body's kind {k} does not match the URL's {}", rt.kind),
        ));
    }
    if let Some(a) = obj.get("apiVersion").and_then(Value::as_str)
        && a != rt.api_version()
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "the body's apiVersion {a} does not match the URL's {}",
                rt.api_version()
            ),
        ));
    }
    Ok(())
}

fn create(s: &ApiState, rt: &ResourceType, ns: &str, body: &Bytes) -> Result<Value, ApiError> {
    let mut obj = parse_body(body)?;
    check_kind(rt, &obj)?;
    if rt.namespaced
        && let Some(bns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
        && bns != ns
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if rt.key() == "apiextensions.k8s.io/customresourcedefinitions" {
        let served = super::crd::served_type(&obj)?;
        obj["status"] = json!({
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": super::store::now_rfc3339()},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": super::store::now_rfc3339()}
            ],
            "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or(Value::Null),
            "storedVersions": [served.version.clone()],
        });
        let created = s.store.create(rt, ns, obj)?;
        s.store.register(served);
        return Ok(created);
    }
    s.store.create(rt, ns, obj)
}

fn replace(
    s: &ApiState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let obj = parse_body(body)?;
    match sub {
        None => {
            check_kind(rt, &obj)?;
            s.store.update(rt, ns, name, obj, Part::Main)
        }
        Some("status") => s.store.update(rt, ns, name, obj, Part::Status),
        Some("scale") => {
            let replicas = obj
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::new(422, "Invalid", "spec.replicas is required"))?;
            let mut current = s.store.get(rt, ns, name)?;
            if let Some(rv) = obj.pointer("/metadata/resourceVersion") {
                current["metadata"]["resourceVersion"] = rv.clone();
            }
            current["spec"]["replicas"] = json!(replicas);
            s.store
                .update(rt, ns, name, current, Part::Main)
                .map(|o| to_scale(rt, &o))
        }
        Some(other) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("cannot PUT {other}"),
        )),
    }
}

fn to_scale(rt: &ResourceType, o: &Value) -> Value {
    let selector = o
        .pointer("/spec/selector")
        .map(|sel| {
            let mut parts: Vec<String> = Vec::new();
            if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
                for (k, v) in m {
                    parts.push(format!("{k}={}", v.as_str().unwrap_or_default()));
                }
            }
            parts.join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": o.pointer("/metadata/name"), "namespace": o.pointer("/metadata/namespace"),
            "uid": o.pointer("/metadata/uid"), "resourceVersion": o.pointer("/metadata/resourceVersion"),
            "creationTimestamp": o.pointer("/metadata/creationTimestamp"),
        },
        "spec": {"replicas": o.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": o.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
        "_kind": rt.kind,
    })
    .as_object()
    .map(|m| Value::Object(m.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect()))
    .unwrap_or(Value::Null)
}

/// Apply a JSON patch (RFC 6902).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    for op in ops {
        let kind = op
            .get("op")
            .and_then(Value::as_str)
            .ok_or("an operation needs op")?;
        let path = op
            .get("path")
            .and_then(Value::as_str)
            .ok_or("an operation needs path")?;
        match kind {
            "add" | "replace" => {
                let value = op
                    .get("value")
                    .cloned()
                    .ok_or("add and replace need a value")?;
                if kind == "replace" && target.pointer(path).is_none() {
                    return Err(format!(
                        "replace operation does not apply: doc is missing path: {path}"
                    ));
                }
                set_pointer(target, path, value, kind == "add")?;
            }
            "remove" => {
                remove_pointer(target, path)?;
            }
            "test" => {
                if target.pointer(path) != op.get("value") {
                    return Err(format!("testing value {path} failed"));
                }
            }
            "move" | "copy" => {
                let from = op
                    .get("from")
                    .and_then(Value::as_str)
                    .ok_or("move and copy need from")?;
                let value = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("missing path {from}"))?;
                if kind == "move" {
                    remove_pointer(target, from)?;
                }
                set_pointer(target, path, value, true)?;
            }
            other => return Err(format!("unknown operation {other}")),
        }
    }
    Ok(())
}

fn unescape(token: &str) -> String {
    token.replace("~1", "/").replace("~0", "~")
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path {path}"))?;
    Ok((parent.to_string(), unescape(last)))
}

fn set_pointer(target: &mut Value, path: &str, value: Value, insert: bool) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let container = target
        .pointer_mut(&parent)
        .ok_or_else(|| format!("add operation does not apply: doc is missing path: {parent}"))?;
    match container {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(value);
                return Ok(());
            }
            let i: usize = last.parse().map_err(|_| format!("invalid index {last}"))?;
            if insert {
                if i > a.len() {
                    return Err(format!("index {i} out of bounds"));
                }
                a.insert(i, value);
            } else {
                *a.get_mut(i)
                    .ok_or_else(|| format!("index {i} out of bounds"))? = value;
            }
            Ok(())
        }
        _ => Err(format!("cannot add into {parent}")),
    }
}

fn remove_pointer(target: &mut Value, path: &str) -> Result<(), String> {
    let (parent, last) = split_pointer(path)?;
    match target.pointer_mut(&parent) {
        Some(Value::Object(m)) => m
            .remove(&last)
            .map(|_| ())
            .ok_or_else(|| format!("remove operation does not apply: doc is missing path: {path}")),
        Some(Value::Array(a)) => {
            let i: usize = last.parse().map_err(|_| format!("invalid index {last}"))?;
            if i < a.len() {
                a.remove(i);
                Ok(())
            } else {
                Err(format!("index {i} out of bounds"))
            }
        }
        _ => Err(format!(
            "remove operation does not apply: doc is missing path: {path}"
        )),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    s: &ApiState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    ctype: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let p = parse_body(body)?;
    let media = ctype.split(';').next().unwrap_or("").trim();
    let current = s.store.get(rt, ns, name);
    if media == "application/apply-patch+yaml" {
        if q.get("fieldManager").is_none_or(|m| m.is_empty()) {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "PATCH with apply requires a fieldManager parameter",
            ));
        }
        check_kind(rt, &p)?;
        let current = match current {
            Ok(c) => c,
            Err(e) if e.code == 404 && sub.is_none() => {
                let mut obj = p.clone();
                obj["metadata"]["name"] = json!(name);
                return s.store.create(rt, ns, obj);
            }
            Err(e) => return Err(e),
        };
        // Approximation of server-side apply: for the status subresource the manager owns all
        // of status, so the applied status replaces it; elsewhere the applied fields are merged.
        return match sub {
            Some("status") => {
                let mut next = current;
                next["status"] = p.get("status").cloned().unwrap_or(json!({}));
                s.store.update(rt, ns, name, without_rv(next), Part::Status)
            }
            None => {
                let mut next = current;
                let mut applied = p.clone();
                if let Value::Object(m) = &mut applied {
                    m.remove("status");
                }
                json_merge(&mut next, &applied);
                s.store.update(rt, ns, name, without_rv(next), Part::Main)
            }
            Some(other) => Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("apply is not supported on {other}"),
            )),
        };
    }
    let current = current?;
    let mut base = match sub {
        Some("scale") => to_scale(rt, &current),
        _ => current.clone(),
    };
    let rv_before = base.pointer("/metadata/resourceVersion").cloned();
    match media {
        "application/merge-patch+json" => json_merge(&mut base, &p),
        "application/json-patch+json" => json_patch(&mut base, &p).map_err(|e| {
            ApiError::new(
                422,
                "Invalid",
                format!("the JSON patch could not be applied: {e}"),
            )
        })?,
        "application/strategic-merge-patch+json" => {
            if !rt.builtin {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (strategic merge patch is not supported for custom resource {})",
                        rt.kind
                    ),
                ));
            }
            strategic_merge(&mut base, &p)
        }
        other => {
            return Err(ApiError::new(
                415,
                "UnsupportedMediaType",
                format!("the simulator does not support patch type {other:?}"),
            ));
        }
    };
    // A patch that sets resourceVersion is a guarded update; otherwise it applies to the latest.
    let guarded = base.pointer("/metadata/resourceVersion").cloned() != rv_before
        && base.pointer("/metadata/resourceVersion").is_some();
    match sub {
        Some("scale") => {
            let replicas = base
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::new(422, "Invalid", "spec.replicas must be a number"))?;
            let mut next = current;
            next["spec"]["replicas"] = json!(replicas);
            s.store
                .update(rt, ns, name, without_rv(next), Part::Main)
                .map(|o| to_scale(rt, &o))
        }
        Some("status") => s.store.update(
            rt,
            ns,
            name,
            if guarded { base } else { without_rv(base) },
            Part::Status,
        ),
        None => s.store.update(
            rt,
            ns,
            name,
            if guarded { base } else { without_rv(base) },
            Part::Main,
        ),
        Some(other) => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("cannot PATCH {other}"),
        )),
    }
}

fn without_rv(mut v: Value) -> Value {
    if let Some(Value::Object(m)) = v.get_mut("metadata") {
        m.remove("resourceVersion");
    }
    v
}

fn propagation_of(q: &HashMap<String, String>, body: &Value) -> Result<Propagation, ApiError> {
    let p = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(String::from)
        .or_else(|| q.get("propagationPolicy").cloned());
    match p.as_deref() {
        None | Some("Background") => Ok(Propagation::Background),
        Some("Foreground") => Ok(Propagation::Foreground),
        Some("Orphan") => Ok(Propagation::Orphan),
        Some(other) => Err(ApiError::new(
            400,
            "BadRequest",
            format!("unknown propagationPolicy {other}"),
        )),
    }
}

fn delete(
    s: &ApiState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
    body: &Bytes,
) -> Result<Value, ApiError> {
    let opts = parse_body(body)?;
    let propagation = propagation_of(q, &opts)?;
    let precondition = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        .map(String::from);
    let out = s
        .store
        .delete(rt, ns, name, propagation, precondition.as_deref())?;
    if rt.key() == "apiextensions.k8s.io/customresourcedefinitions"
        && let Ok(served) = super::crd::served_type(&out)
    {
        s.store.unregister(&served.key());
    }
    Ok(out)
}

fn delete_collection(
    s: &ApiState,
    rt: &ResourceType,
    ns: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let (ls, fs) = selectors(q)?;
    let (items, _) = s.store.list(rt, ns, &ls, &fs);
    let propagation = propagation_of(q, &Value::Null)?;
    let mut deleted = Vec::new();
    for o in items {
        let n = o
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let ons = o
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if let Ok(d) = s.store.delete(rt, &ons, &n, propagation, None) {
            deleted.push(d);
        }
    }
    Ok(
        json!({"kind": format!("{}List", rt.kind), "apiVersion": rt.api_version(), "metadata": {}, "items": deleted}),
    )
}

fn pod_log(
    s: &ApiState,
    rt: &ResourceType,
    ns: &str,
    name: &str,
    q: &HashMap<String, String>,
) -> Response {
    let pod = match s.store.get(rt, ns, name) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let container = match q.get("container") {
        Some(c) if !containers.contains(c) => {
            return error(ApiError::new(
                400,
                "BadRequest",
                format!("container {c} is not valid for pod {name}"),
            ));
        }
        Some(c) => c.clone(),
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return error(ApiError::new(
                400,
                "BadRequest",
                format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
            ));
        }
    };
    if pod.pointer("/status/phase").and_then(Value::as_str) == Some("Pending") {
        return error(ApiError::new(
            400,
            "BadRequest",
            format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
            ),
        ));
    }
    let since_seconds: Option<i64> = q.get("sinceSeconds").and_then(|v| v.parse().ok());
    let since_time: Option<jiff::Timestamp> = match q.get("sinceTime") {
        Some(t) => match t.parse() {
            Ok(t) => Some(t),
            Err(_) => {
                return error(ApiError::new(
                    400,
                    "BadRequest",
                    format!("sinceTime {t:?} is not an RFC 3339 time"),
                ));
            }
        },
        None => None,
    };
    if since_seconds.is_some() && since_time.is_some() {
        return error(ApiError::new(
            422,
            "Invalid",
            "at most one of sinceTime or sinceSeconds may be specified",
        ));
    }
    let since = since_time.or_else(|| {
        since_seconds.and_then(|s| {
            jiff::Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .ok()
        })
    });
    let tail: Option<usize> = q.get("tailLines").and_then(|v| v.parse().ok());
    let limit: Option<usize> = q.get("limitBytes").and_then(|v| v.parse().ok());
    let timestamps = q.get("timestamps").is_some_and(|v| v == "true");
    let text = s.apps.logs(ns, name, since, tail, limit, timestamps);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

fn watch_event(kind: &str, obj: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

async fn watch(
    s: &ApiState,
    rt: &ResourceType,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Response {
    let (ls, fs) = match selectors(q) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    let rv: Option<u64> = q
        .get("resourceVersion")
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok());
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1800);
    let drop_after = s.faults.watch_drop_ms();
    let key = rt.key();
    let matches = {
        let ns = ns.clone();
        move |o: &Value| {
            ns.as_deref()
                .is_none_or(|n| o.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
                && ls.matches(&labels_of(o))
                && fs.matches(o)
        }
    };
    let (initial, past, mut rx) = match rv {
        None | Some(0) => {
            // No resourceVersion: current objects first, as synthetic ADDED events.
            let rx = s.store.subscribe();
            let (items, list_rv) = s.store.list(
                rt,
                ns.as_deref(),
                &LabelSelector::default(),
                &FieldSelector::default(),
            );
            (
                items.into_iter().filter(|o| matches(o)).collect::<Vec<_>>(),
                Vec::new(),
                (rx, list_rv),
            )
        }
        Some(rv) => match s.store.watch_from(&key, rv) {
            Ok((past, rx)) => (Vec::new(), past, (rx, rv)),
            Err(_) => {
                // Too old: the real server answers 200 with an ERROR event carrying 410 Gone.
                let gone = ApiError::new(410, "Expired", format!("too old resource version: {rv}"));
                let body = watch_event("ERROR", &gone.status());
                return (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response();
            }
        },
    };
    let kind = rt.kind.clone();
    let api_version = rt.api_version();
    let stream = async_stream::stream! {
        let (ref mut rx, start_rv) = rx;
        let mut last = start_rv;
        for o in initial {
            yield Ok::<Bytes, std::convert::Infallible>(watch_event("ADDED", &o));
        }
        let translate = |c: &Change| -> Option<(&'static str, Value)> {
            let now = matches(&c.object);
            let before = c.old.as_ref().is_some_and(&matches);
            match (c.kind, before, now) {
                ("DELETED", _, true) => Some(("DELETED", c.object.clone())),
                (_, false, true) if c.kind != "ADDED" => Some(("ADDED", c.object.clone())),
                (k, _, true) => Some((k, c.object.clone())),
                (_, true, false) => Some(("DELETED", c.object.clone())),
                _ => None,
            }
        };
        for c in past {
            last = last.max(c.rv);
            if let Some((k, o)) = translate(&c) {
                yield Ok(watch_event(k, &o));
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let drop_at = if drop_after > 0 { Some(tokio::time::Instant::now() + Duration::from_millis(drop_after)) } else { None };
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let stop_at = drop_at.map_or(deadline, |d| d.min(deadline));
            tokio::select! {
                _ = tokio::time::sleep_until(stop_at) => break,
                _ = tick.tick() => {
                    if bookmarks {
                        let b = json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last.to_string()}});
                        yield Ok(watch_event("BOOKMARK", &b));
                    }
                }
                msg = rx.recv() => match msg {
                    Ok(c) => {
                        if c.key != key || c.rv <= last {
                            continue;
                        }
                        last = c.rv;
                        if let Some((k, o)) = translate(&c) {
                            yield Ok(watch_event(k, &o));
                        }
                    }
                    // A slow watcher that fell behind is closed, and must re-list like a real client.
                    Err(_) => break,
                }
            }
        }
    };
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| {
            error(ApiError::new(
                500,
                "InternalError",
                "could not build the watch response",
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patch_follows_rfc6902() {
        let mut v = json!({"a": {"b": [1, 2]}, "c": 1});
        json_patch(
            &mut v,
            &json!([
                {"op": "add", "path": "/a/b/1", "value": 9},
                {"op": "replace", "path": "/c", "value": 2},
                {"op": "remove", "path": "/a/b/0"},
                {"op": "add", "path": "/a/b/-", "value": 3},
                {"op": "test", "path": "/c", "value": 2},
                {"op": "copy", "from": "/c", "path": "/d"},
            ]),
        )
        .unwrap();
        assert_eq!(v, json!({"a": {"b": [9, 2, 3]}, "c": 2, "d": 2}));
        assert!(json_patch(&mut v, &json!([{"op": "test", "path": "/c", "value": 5}])).is_err());
        assert!(
            json_patch(
                &mut v,
                &json!([{"op": "replace", "path": "/zzz", "value": 5}])
            )
            .is_err()
        );
    }
}
