//! Traffic-weighted canaries through the Gateway API (`spec.traffic.gatewayAPI`).
//!
//! The user's `HTTPRoute` has a rule whose two `backendRefs` name the stable and the canary
//! Service (Git holds them at 100 and 0). While a change runs graygate:
//! - pins the stable Service to the stable pods: their `pod-template-hash` joins its selector, so
//!   the canary's pods (which carry the workload's labels too) never get the stable share;
//! - points the canary Service at the canary's pods (`graygate.io/change: <change>` added to the
//!   stable Service's own selector), creating it with the stable Service's ports when it is
//!   missing;
//! - sets the two weights at each batch, once the batch's canary pods are available, and records
//!   what it set in the route's annotation [`ANN_WEIGHTS`]; weights that differ from that record
//!   were set by someone else, and pause the change;
//! - with `header`, adds a rule of its own ([`HEADER_RULE`]) that sends requests with the header
//!   to the canary Service from the first batch on.
//!
//! At the end the weights go back to 100 and 0 and graygate's rule goes. On success the stable
//! Service is unpinned first (it then reaches the canary's pods and the target's new ones), then
//! the weights move, then the target gets the new template. On rollback the canary's weight is
//! 0 before any canary pod goes, and the stable Service is unpinned only once the canary is gone.

use super::{Ctx, Error};
use crate::api::{GatewayApiTraffic, LABEL_CHANGE, MANAGER_ROLLOUT, patch_params};
use crate::workload::{Step, WorkloadObs};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Annotation on the `HTTPRoute`: the weights graygate last set, and for which change.
pub const ANN_WEIGHTS: &str = "graygate.io/traffic";
/// The `name` of the header rule graygate adds to the route while a change runs.
pub const HEADER_RULE: &str = "graygate-canary";
/// The label the Deployment controller gives every pod of one ReplicaSet.
const HASH: &str = "pod-template-hash";
/// The Gateway API's limit on rules per `HTTPRoute`.
const MAX_RULES: usize = 16;

const FIELD: &str = "spec.traffic.gatewayAPI";

/// `HTTPRoute`, gateway.networking.k8s.io/v1.
pub fn http_routes() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Whether a backendRef names Service `name` of namespace `ns`.
fn names_service(r: &Value, name: &str, ns: &str) -> bool {
    let group_ok = r["group"].as_str().unwrap_or("").is_empty();
    let kind_ok = r["kind"].as_str().unwrap_or("Service") == "Service";
    let ns_ok = r["namespace"].as_str().is_none_or(|n| n == ns);
    group_ok && kind_ok && ns_ok && r["name"].as_str() == Some(name)
}

fn backend_index(rule: &Value, name: &str, ns: &str) -> Option<usize> {
    rule["backendRefs"]
        .as_array()?
        .iter()
        .position(|r| names_service(r, name, ns))
}

/// The index of the rule to weight: the one named `rule`, else the one rule (not graygate's)
/// whose backendRefs name both Services. An error names the field and says what is wrong.
pub fn find_rule(
    route: &Value,
    t: &GatewayApiTraffic,
    ns: &str,
) -> Result<usize, (String, String)> {
    let rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let route_name = route["metadata"]["name"].as_str().unwrap_or_default();
    let both = |r: &Value| {
        backend_index(r, &t.stable_service, ns).is_some()
            && backend_index(r, &t.canary_service, ns).is_some()
    };
    let index = match &t.rule {
        Some(name) => rules
            .iter()
            .position(|r| r["name"].as_str() == Some(name.as_str()))
            .ok_or_else(|| {
                (
                    format!("{FIELD}.rule"),
                    format!("HTTPRoute {route_name} has no rule named {name}"),
                )
            })?,
        None => {
            let matching: Vec<usize> = rules
                .iter()
                .enumerate()
                .filter(|(_, r)| r["name"].as_str() != Some(HEADER_RULE) && both(r))
                .map(|(i, _)| i)
                .collect();
            match matching.as_slice() {
                [i] => *i,
                [] => {
                    return Err((
                        format!("{FIELD}.canaryService"),
                        format!(
                            "no rule of HTTPRoute {route_name} has backendRefs to both Service {} and Service {}: add the canary Service to the rule's backendRefs with weight 0",
                            t.stable_service, t.canary_service
                        ),
                    ));
                }
                _ => {
                    return Err((
                        format!("{FIELD}.rule"),
                        format!(
                            "{} rules of HTTPRoute {route_name} send to both Services: name the one to weight",
                            matching.len()
                        ),
                    ));
                }
            }
        }
    };
    let rule = &rules[index];
    for (field, svc) in [
        ("stableService", &t.stable_service),
        ("canaryService", &t.canary_service),
    ] {
        if backend_index(rule, svc, ns).is_none() {
            return Err((
                format!("{FIELD}.{field}"),
                format!(
                    "the weighted rule of HTTPRoute {route_name} has no backendRef to Service {svc}{}",
                    if field == "canaryService" {
                        ": add it with weight 0"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    Ok(index)
}

/// The (stable, canary) weights of the rule (a backendRef without `weight` has 1).
pub fn weights(rule: &Value, t: &GatewayApiTraffic, ns: &str) -> (i64, i64) {
    let w = |name: &str| {
        backend_index(rule, name, ns)
            .and_then(|i| rule["backendRefs"][i].get("weight").cloned())
            .map_or(1, |v| v.as_i64().unwrap_or(1))
    };
    (w(&t.stable_service), w(&t.canary_service))
}

/// The route's rules with the weighted rule at `canary`% (the stable Service the rest), and
/// graygate's header rule present or not.
pub fn desired_rules(
    route: &Value,
    t: &GatewayApiTraffic,
    ns: &str,
    canary: i64,
    header: bool,
) -> Result<Vec<Value>, (String, String)> {
    let index = find_rule(route, t, ns)?;
    let mut rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rule = &mut rules[index];
    for (name, weight) in [
        (&t.stable_service, 100 - canary),
        (&t.canary_service, canary),
    ] {
        if let Some(i) = backend_index(rule, name, ns) {
            rule["backendRefs"][i]["weight"] = json!(weight);
        }
    }
    let weighted = rule.clone();
    rules.retain(|r| r["name"].as_str() != Some(HEADER_RULE));
    if let (true, Some(h)) = (header, &t.header) {
        if rules.len() >= MAX_RULES {
            return Err((
                format!("{FIELD}.header"),
                format!(
                    "the HTTPRoute has {MAX_RULES} rules already, the most it may have: graygate's header rule does not fit"
                ),
            ));
        }
        let header_match = json!({"type": "Exact", "name": h.name, "value": h.value});
        // The weighted rule's own matches (paths, methods), each with the header added.
        let matches: Vec<Value> = match weighted["matches"].as_array() {
            Some(m) if !m.is_empty() => m
                .iter()
                .map(|m| {
                    let mut m = m.clone();
                    let mut headers = m["headers"].as_array().cloned().unwrap_or_default();
                    headers.push(header_match.clone());
                    m["headers"] = json!(headers);
                    m
                })
                .collect(),
            _ => vec![json!({"headers": [header_match]})],
        };
        let mut canary_ref = backend_index(&weighted, &t.canary_service, ns)
            .map(|i| weighted["backendRefs"][i].clone())
            .unwrap_or_else(|| json!({"name": t.canary_service}));
        canary_ref["weight"] = json!(1);
        rules.push(json!({
            "name": HEADER_RULE,
            "matches": matches,
            "backendRefs": [canary_ref],
        }));
    }
    Ok(rules)
}

/// What graygate last set on a route, from its [`ANN_WEIGHTS`] annotation.
#[derive(Debug, PartialEq)]
struct Record {
    change: String,
    stable: i64,
    canary: i64,
    /// Whether graygate's header rule was there (absent in a record without it).
    header: Option<bool>,
    /// When, in Unix seconds.
    at: Option<i64>,
}

/// The route's record; None without one that names the change and both weights.
fn recorded(route: &Value) -> Option<Record> {
    let v: Value =
        serde_json::from_str(route["metadata"]["annotations"][ANN_WEIGHTS].as_str()?).ok()?;
    Some(Record {
        change: v["change"].as_str()?.to_string(),
        stable: v["stable"].as_i64()?,
        canary: v["canary"].as_i64()?,
        header: v["header"].as_bool(),
        at: v["at"].as_i64(),
    })
}

/// Whether graygate's header rule is among `rules`.
fn has_header_rule(rules: &[Value]) -> bool {
    rules
        .iter()
        .any(|r| r["name"].as_str() == Some(HEADER_RULE))
}

/// How long the canary's weight is 0 on the route before its pods go at a rollback: the time a
/// gateway may take to apply a route (Argo Rollouts waits 30 s by default; graygate's own
/// stand-in data plane takes 0.2 s).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the canary's pods may go: the route has sent them nothing for [`SETTLE`] (or the
/// change routes no traffic, or the route is gone or not this change's any more).
pub async fn settled(ctx: &Ctx<'_>) -> Result<bool, Error> {
    let Some(t) = spec(ctx) else {
        return Ok(true);
    };
    let Some(route) = get_route(ctx, &t.http_route).await? else {
        return Ok(true);
    };
    let Some(record) = recorded(&route) else {
        return Ok(true);
    };
    if record.change != ctx.cr.name_any() {
        return Ok(true);
    }
    let now = jiff::Timestamp::now().as_second();
    Ok(record.canary == 0
        && record
            .at
            .is_none_or(|at| now - at >= SETTLE.as_secs() as i64))
}

/// Weights (or graygate's header rule) that differ from what this change last set on the route,
/// in words.
pub fn changed_by_others(
    route: &Value,
    t: &GatewayApiTraffic,
    ns: &str,
    change: &str,
) -> Option<String> {
    let record = recorded(route)?;
    if record.change != change {
        return None;
    }
    let (stable, canary) = (record.stable, record.canary);
    let name = route["metadata"]["name"].as_str().unwrap_or_default();
    let index = find_rule(route, t, ns).ok()?;
    let (s, c) = weights(&route["spec"]["rules"][index], t, ns);
    if (s, c) != (stable, canary) {
        return Some(format!(
            "the weights of HTTPRoute {name} were changed by someone else: Service {} {s}, Service {} {c}, where graygate had set {stable} and {canary}; resume the change to set graygate's again (and keep GitOps from syncing them: docs/gitops.md)",
            t.stable_service, t.canary_service,
        ));
    }
    let had_header = record.header?;
    let has_header = has_header_rule(route["spec"]["rules"].as_array()?);
    (had_header != has_header).then(|| {
        format!(
            "graygate's header rule {HEADER_RULE} of HTTPRoute {name} was {} by someone else; resume the change to set it again (and keep GitOps from syncing it: docs/gitops.md)",
            if had_header { "removed" } else { "added" }
        )
    })
}

fn spec<'a>(ctx: &Ctx<'a>) -> Option<&'a GatewayApiTraffic> {
    ctx.cr.spec.traffic.as_ref().map(|t| &t.gateway_api)
}

async fn get_route(ctx: &Ctx<'_>, name: &str) -> Result<Option<Value>, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ctx.ns, &http_routes());
    match api.get_opt(name).await {
        Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or_default())),
        // The Gateway API is not installed: no route can exist.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Before a change starts: what in `spec.traffic` does not hold in the cluster.
pub async fn check(ctx: &Ctx<'_>) -> Result<Option<(String, String)>, Error> {
    let Some(t) = spec(ctx) else {
        return Ok(None);
    };
    let Some(route) = get_route(ctx, &t.http_route).await? else {
        return Ok(Some((
            format!("{FIELD}.httpRoute"),
            format!(
                "HTTPRoute {} (gateway.networking.k8s.io/v1) does not exist in namespace {}",
                t.http_route, ctx.ns
            ),
        )));
    };
    if let Err(e) = desired_rules(&route, t, ctx.ns, 0, true) {
        return Ok(Some(e));
    }
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let stable = services.get_opt(&t.stable_service).await?;
    let selector = stable
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return Ok(Some((
            format!("{FIELD}.stableService"),
            match stable {
                None => format!(
                    "Service {} does not exist in namespace {}",
                    t.stable_service, ctx.ns
                ),
                Some(_) => format!(
                    "Service {} has no selector: graygate pins it to the stable pods through its selector",
                    t.stable_service
                ),
            },
        )));
    }
    Ok(None)
}

/// The stable pods' `pod-template-hash`: that of the target's newest ReplicaSet (a guarded
/// Deployment's: the one of its own sets that serves while it holds the new template).
async fn stable_hash(ctx: &Ctx<'_>, target: &Deployment) -> Result<Option<String>, Error> {
    if guarded(ctx) {
        let canary = ctx.cr.status.as_ref().and_then(|s| s.canary_name.clone());
        let running =
            super::guarded::running_set(ctx.client, ctx.cache, ctx.ns, target, canary.as_deref())
                .await?;
        return Ok(running.and_then(|rs| rs.labels().get(HASH).cloned()));
    }
    Ok(ctx
        .list::<ReplicaSet>(&Default::default())
        .await?
        .into_iter()
        .filter(|rs| super::guarded::owned_by(rs, target))
        .max_by_key(super::guarded::revision)
        .and_then(|rs| rs.labels().get(HASH).cloned()))
}

/// Whether the change is a guarded Deployment's: its canary is a ReplicaSet made the way the
/// Deployment controller makes one, whose pods carry no label of graygate's.
fn guarded(ctx: &Ctx<'_>) -> bool {
    ctx.cr.spec.policy.is_some()
}

/// What tells the canary's pods from the stable ones: the change's label on an explicit
/// change's canary Deployment, the canary ReplicaSet's `pod-template-hash` on a guarded one's.
#[derive(Clone, Debug, PartialEq)]
enum CanaryPods {
    Change(String),
    Hash(String),
}

/// The selector the canary Service gets: the stable Service's own, without graygate's pin, plus
/// what marks the canary's pods.
fn canary_selector(
    stable: &BTreeMap<String, String>,
    pods: &CanaryPods,
) -> BTreeMap<String, String> {
    let mut s = stable.clone();
    s.remove(HASH);
    match pods {
        CanaryPods::Change(change) => s.insert(LABEL_CHANGE.into(), change.clone()),
        CanaryPods::Hash(hash) => s.insert(HASH.into(), hash.clone()),
    };
    s
}

/// The canary of this change, as (what marks its pods, its available pods): its Deployment, or a
/// guarded change's ReplicaSet. None before it exists.
async fn canary_of(ctx: &Ctx<'_>) -> Result<Option<(CanaryPods, i32)>, Error> {
    let Some(name) = ctx.cr.status.as_ref().and_then(|s| s.canary_name.clone()) else {
        return Ok(None);
    };
    if guarded(ctx) {
        return Ok(ctx.read::<ReplicaSet>(&name).await?.and_then(|rs| {
            let hash = rs.labels().get(HASH).cloned()?;
            let available = rs.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Some((CanaryPods::Hash(hash), available))
        }));
    }
    Ok(ctx.read::<Deployment>(&name).await?.map(|d| {
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        (CanaryPods::Change(ctx.cr.name_any()), available)
    }))
}

/// The traffic part of a step, as (canary weight, header rule, stable Service pinned).
fn wanted(step: &Step) -> (i64, bool, bool) {
    match step {
        Step::Batch { traffic, .. } => (i64::from(traffic.unwrap_or(0)), true, true),
        Step::Promote | Step::Restore => (0, false, false),
    }
}

/// The step's traffic has been reached: the route (as just read, `None` when it is gone)
/// carries its weights and header rule, and the stable Service is pinned (a batch) or not (the
/// end).
async fn reached(
    ctx: &Ctx<'_>,
    t: &GatewayApiTraffic,
    route: Option<&Value>,
    step: &Step,
) -> Result<bool, Error> {
    let (canary, header, pinned) = wanted(step);
    let Some(route) = route else {
        // The route went away: nothing to wait for at the end; a batch cannot be reached.
        return Ok(!pinned);
    };
    let Ok(index) = find_rule(route, t, ctx.ns) else {
        return Ok(!pinned);
    };
    let rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let has_header = has_header_rule(&rules);
    let weights_ok = weights(&rules[index], t, ctx.ns) == (100 - canary, canary);
    let header_ok = has_header == (header && t.header.is_some());
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let is_pinned = services
        .get_opt(&t.stable_service)
        .await?
        .and_then(|s| s.spec?.selector)
        .is_some_and(|s| s.contains_key(HASH));
    Ok(weights_ok && header_ok && is_pinned == pinned)
}

/// Add what a traffic-weighted change observes to `obs`: before it starts, what in its spec
/// does not hold; while it runs, weights someone else set.
pub async fn observe(
    ctx: &Ctx<'_>,
    step: Option<&Step>,
    obs: &mut WorkloadObs,
) -> Result<(), Error> {
    let Some(t) = spec(ctx) else {
        return Ok(());
    };
    match step {
        None => obs.traffic_invalid = check(ctx).await?,
        Some(step) => {
            // One read of the route serves both questions.
            let route = get_route(ctx, &t.http_route).await?;
            if let Some(route) = &route {
                obs.traffic_changed = changed_by_others(route, t, ctx.ns, &ctx.cr.name_any());
            }
            if obs.step_reached {
                obs.step_reached = reached(ctx, t, route.as_ref(), step).await?;
            }
        }
    }
    Ok(())
}

/// Set the route's weights (and header rule) to the step's, recording them; no write when they
/// are there already.
async fn set_route(
    ctx: &Ctx<'_>,
    t: &GatewayApiTraffic,
    canary: i64,
    header: bool,
) -> Result<(), Error> {
    // At the end (nothing to the canary, no header rule) a route that went away, or no longer
    // sends to both Services, routes nothing to the canary: the end goes on.
    let ending = canary == 0 && !header;
    let Some(route) = get_route(ctx, &t.http_route).await? else {
        if ending {
            return Ok(());
        }
        return Err(Error::Spec(format!(
            "HTTPRoute {} does not exist any more",
            t.http_route
        )));
    };
    let rules = match desired_rules(&route, t, ctx.ns, canary, header) {
        Ok(r) => r,
        // graygate's header rule still goes.
        Err(_) if ending => {
            let mut rules = route["spec"]["rules"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if !has_header_rule(&rules) {
                return Ok(());
            }
            rules.retain(|r| r["name"].as_str() != Some(HEADER_RULE));
            rules
        }
        Err((f, m)) => return Err(Error::Spec(format!("{f}: {m}"))),
    };
    let change = ctx.cr.name_any();
    if route["spec"]["rules"].as_array() == Some(&rules)
        && recorded(&route).is_some_and(|r| {
            (r.change.as_str(), r.stable, r.canary) == (change.as_str(), 100 - canary, canary)
        })
        && changed_by_others(&route, t, ctx.ns, &change).is_none()
    {
        return Ok(());
    }
    let has_header = has_header_rule(&rules);
    let record = json!({
        "change": change,
        "stable": 100 - canary,
        "canary": canary,
        "header": has_header,
        "at": jiff::Timestamp::now().as_second(),
    })
    .to_string();
    let patch = json!({
        "metadata": {
            "resourceVersion": route["metadata"]["resourceVersion"],
            "annotations": {ANN_WEIGHTS: record},
        },
        "spec": {"rules": rules},
    });
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ctx.ns, &http_routes());
    ctx.fence.check()?;
    api.patch(
        &t.http_route,
        &patch_params(MANAGER_ROLLOUT),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// Pin the stable Service to `hash` (`Some`) or unpin it (`None`).
async fn pin_stable(ctx: &Ctx<'_>, t: &GatewayApiTraffic, hash: Option<&str>) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(svc) = services.get_opt(&t.stable_service).await? else {
        return Ok(());
    };
    let current = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| s.get(HASH))
        .map(String::as_str);
    if current == hash {
        return Ok(());
    }
    let patch = json!({
        "metadata": {"resourceVersion": svc.resource_version()},
        "spec": {"selector": {HASH: hash}},
    });
    ctx.fence.check()?;
    services
        .patch(
            &t.stable_service,
            &patch_params(MANAGER_ROLLOUT),
            &Patch::Merge(&patch),
        )
        .await?;
    Ok(())
}

/// Point the canary Service at the change's pods, creating it when it does not exist.
async fn point_canary(
    ctx: &Ctx<'_>,
    t: &GatewayApiTraffic,
    target: &Deployment,
    pods: &CanaryPods,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ctx.ns);
    let Some(stable) = services.get_opt(&t.stable_service).await? else {
        return Err(Error::Spec(format!(
            "Service {} does not exist any more",
            t.stable_service
        )));
    };
    let stable_spec = stable.spec.clone().unwrap_or_default();
    let selector = canary_selector(&stable_spec.selector.clone().unwrap_or_default(), pods);
    match services.get_opt(&t.canary_service).await? {
        Some(svc) => {
            let current = svc
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone())
                .unwrap_or_default();
            if current == selector {
                return Ok(());
            }
            // The whole selector is graygate's: keys it does not want go.
            let mut patch_sel: BTreeMap<String, Value> =
                current.keys().map(|k| (k.clone(), Value::Null)).collect();
            patch_sel.extend(selector.iter().map(|(k, v)| (k.clone(), json!(v))));
            let patch = json!({
                "metadata": {"resourceVersion": svc.resource_version()},
                "spec": {"selector": patch_sel},
            });
            ctx.fence.check()?;
            services
                .patch(
                    &t.canary_service,
                    &patch_params(MANAGER_ROLLOUT),
                    &Patch::Merge(&patch),
                )
                .await?;
        }
        None => {
            // Owned by the workload (it outlives each change: the route names it), as a plain
            // owner: neither its controller nor blocking its deletion.
            let owner = target.controller_owner_ref(&()).map(|mut o| {
                o.controller = None;
                o.block_owner_deletion = None;
                o
            });
            let ports: Vec<Value> = stable_spec
                .ports
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    json!({"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": p.target_port})
                })
                .collect();
            let svc: Service = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": t.canary_service,
                    "namespace": ctx.ns,
                    "labels": {"app.kubernetes.io/managed-by": "graygate"},
                    "ownerReferences": owner.into_iter().collect::<Vec<_>>(),
                },
                "spec": {"selector": selector, "ports": ports},
            }))?;
            ctx.fence.check()?;
            match services
                .create(&crate::api::post_params(MANAGER_ROLLOUT), &svc)
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Bring the route and Services to the traffic part of `step`, in the order the module's
/// documentation gives. A batch's weights move only once the canary has the batch's pods
/// available; before that the route keeps what it had.
pub async fn ensure(ctx: &Ctx<'_>, step: &Step) -> Result<(), Error> {
    let Some(t) = spec(ctx) else {
        return Ok(());
    };
    let Some(target) = ctx
        .read_existing::<Deployment>(&ctx.cr.spec.target.name)
        .await?
    else {
        return Ok(());
    };
    let canary = canary_of(ctx).await?;
    match step {
        Step::Batch { changed, traffic } => {
            let hash = stable_hash(ctx, &target).await?;
            if let Some(h) = &hash {
                pin_stable(ctx, t, Some(h)).await?;
            }
            // A guarded change's canary Service waits for its ReplicaSet (and hash); an
            // explicit one's selector is known from the start.
            let pods = match &canary {
                Some((pods, _)) => Some(pods.clone()),
                None if guarded(ctx) => None,
                None => Some(CanaryPods::Change(ctx.cr.name_any())),
            };
            if let Some(pods) = &pods {
                point_canary(ctx, t, &target, pods).await?;
            }
            let available = canary.as_ref().map_or(0, |(_, a)| *a);
            if available >= *changed && hash.is_some() && pods.is_some() {
                set_route(ctx, t, i64::from(traffic.unwrap_or(0)), true).await?;
            }
        }
        Step::Promote => {
            // The stable Service reaches every pod first, so moving the weights never leaves
            // the canary's share without pods.
            pin_stable(ctx, t, None).await?;
            set_route(ctx, t, 0, false).await?;
        }
        Step::Restore => {
            set_route(ctx, t, 0, false).await?;
            // Unpinned only once no canary pod is left for it to reach.
            if canary.is_none() {
                pin_stable(ctx, t, None).await?;
            }
        }
    }
    Ok(())
}

/// Pods the stable side keeps in a batch with a traffic share: enough for its share of the
/// requests, never fewer than the batch leaves it.
pub fn stable_pods(total: i32, changed: i32, traffic: Option<i32>) -> i32 {
    let by_pods = total - changed;
    match traffic {
        Some(t) => {
            let by_share = (i64::from(total) * i64::from(100 - t) + 99) / 100;
            by_pods.max(by_share as i32)
        }
        None => by_pods,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(header: bool) -> GatewayApiTraffic {
        GatewayApiTraffic {
            http_route: "web".into(),
            rule: None,
            stable_service: "web".into(),
            canary_service: "web-canary".into(),
            header: header.then(|| crate::api::HeaderMatch {
                name: "x-canary".into(),
                value: "always".into(),
            }),
        }
    }

    fn route() -> Value {
        json!({
            "metadata": {"name": "web", "resourceVersion": "7"},
            "spec": {"rules": [
                {"name": "admin", "matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
                 "backendRefs": [{"name": "admin", "port": 80}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                 "backendRefs": [{"name": "web", "port": 80, "weight": 100},
                                 {"name": "web-canary", "port": 80, "weight": 0}]}
            ]}
        })
    }

    #[test]
    fn the_rule_with_both_services_is_found_and_weighted() {
        let r = route();
        assert_eq!(find_rule(&r, &t(false), "ns"), Ok(1));
        let rules = desired_rules(&r, &t(false), "ns", 5, true).unwrap();
        assert_eq!(rules.len(), 2, "no header rule without `header`");
        assert_eq!(weights(&rules[1], &t(false), "ns"), (95, 5));
        assert_eq!(
            rules[0], r["spec"]["rules"][0],
            "other rules are left alone"
        );
    }

    #[test]
    fn the_header_rule_keeps_the_rules_matches_and_goes_at_the_end() {
        let r = route();
        let rules = desired_rules(&r, &t(true), "ns", 5, true).unwrap();
        assert_eq!(rules.len(), 3);
        let h = &rules[2];
        assert_eq!(h["name"], HEADER_RULE);
        assert_eq!(h["matches"][0]["path"]["value"], "/");
        assert_eq!(h["matches"][0]["headers"][0]["name"], "x-canary");
        assert_eq!(h["backendRefs"].as_array().unwrap().len(), 1);
        assert_eq!(h["backendRefs"][0]["name"], "web-canary");
        // Written back, then taken away at the end.
        let mut written = r.clone();
        written["spec"]["rules"] = json!(rules);
        assert_eq!(
            find_rule(&written, &t(true), "ns"),
            Ok(1),
            "graygate's rule is never the weighted one"
        );
        let end = desired_rules(&written, &t(true), "ns", 0, false).unwrap();
        assert_eq!(end.len(), 2);
        assert_eq!(weights(&end[1], &t(true), "ns"), (100, 0));
    }

    #[test]
    fn a_rule_without_the_canary_backend_names_the_field() {
        let mut r = route();
        r["spec"]["rules"][1]["backendRefs"]
            .as_array_mut()
            .unwrap()
            .pop();
        let e = find_rule(&r, &t(false), "ns").unwrap_err();
        assert_eq!(e.0, "spec.traffic.gatewayAPI.canaryService");
        assert!(e.1.contains("weight 0"), "{}", e.1);
        let mut named = t(false);
        named.rule = Some("nope".into());
        assert_eq!(
            find_rule(&route(), &named, "ns").unwrap_err().0,
            "spec.traffic.gatewayAPI.rule"
        );
    }

    #[test]
    fn weights_someone_else_set_are_told_and_graygates_own_are_not() {
        let mut r = route();
        r["metadata"]["annotations"] =
            json!({ANN_WEIGHTS: json!({"change": "c1", "stable": 95, "canary": 5}).to_string()});
        r["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(95);
        r["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(5);
        assert_eq!(changed_by_others(&r, &t(false), "ns", "c1"), None);
        assert_eq!(
            changed_by_others(&r, &t(false), "ns", "other"),
            None,
            "another change's record is not this one's"
        );
        r["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
        let why = changed_by_others(&r, &t(false), "ns", "c1").unwrap();
        assert!(
            why.contains("web-canary 50") && why.contains("set 95 and 5"),
            "{why}"
        );
    }

    #[test]
    fn graygates_header_rule_taken_away_by_someone_else_is_told() {
        let mut r = route();
        r["metadata"]["annotations"] = json!({ANN_WEIGHTS: json!({"change": "c1", "stable": 100, "canary": 0, "header": true}).to_string()});
        let why = changed_by_others(&r, &t(true), "ns", "c1").unwrap();
        assert!(why.contains("removed by someone else"), "{why}");
        r["spec"]["rules"] = json!(desired_rules(&r, &t(true), "ns", 0, true).unwrap());
        assert_eq!(changed_by_others(&r, &t(true), "ns", "c1"), None);
    }

    #[test]
    fn a_missing_weight_counts_as_one() {
        let rule = json!({"backendRefs": [{"name": "web"}, {"name": "web-canary", "weight": 0}]});
        assert_eq!(weights(&rule, &t(false), "ns"), (1, 0));
    }

    #[test]
    fn the_stable_side_keeps_pods_for_its_share() {
        // One canary pod of four at 5%: the stable side keeps all four.
        assert_eq!(stable_pods(4, 1, Some(5)), 4);
        assert_eq!(stable_pods(4, 2, Some(50)), 2);
        assert_eq!(stable_pods(4, 4, Some(50)), 2);
        assert_eq!(stable_pods(4, 1, None), 3);
        assert_eq!(stable_pods(10, 3, Some(25)), 8);
    }

    #[test]
    fn the_canary_selector_is_the_stable_one_without_the_pin() {
        let stable = BTreeMap::from([
            ("app".to_string(), "web".to_string()),
            (HASH.to_string(), "abc".to_string()),
        ]);
        let s = canary_selector(&stable, &CanaryPods::Change("c1".into()));
        assert_eq!(s.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.get(LABEL_CHANGE).map(String::as_str), Some("c1"));
        assert!(!s.contains_key(HASH));
        // A guarded change's canary ReplicaSet: its pods' hash, in place of the stable one's.
        let s = canary_selector(&stable, &CanaryPods::Hash("def".into()));
        assert_eq!(s.get("app").map(String::as_str), Some("web"));
        assert_eq!(s.get(HASH).map(String::as_str), Some("def"));
        assert!(!s.contains_key(LABEL_CHANGE));
    }
}
