//! The stand-in data plane: what a Gateway API implementation (Envoy Gateway, Istio, …) would do
//! with the world's synthetic traffic, as the stand-in kubelet plays the kubelet. It reads every
//! `HTTPRoute` (gateway.networking.k8s.io/v1), and sends two request streams through each:
//!
//! - the **users'** requests, with no special header;
//! - the **testers'** requests, with the header `x-canary: always`.
//!
//! Each request goes to the rule that matches it. When several rules match, the one with the most
//! header matches wins, then the earlier rule; a rule without `matches` matches every request. Its
//! share goes to the rule's `backendRefs` in proportion to their `weight`, and a missing weight is
//! 1, as the API says. Within a backend Service it is spread evenly over the Ready pods its
//! selector picks (the endpoints). Each pod's application serves what reaches it
//! ([`Apps::set_routed_rate`]). Requests for a backend with no Ready pod, or a rule whose weights
//! are all 0, are counted as failed, as a gateway answers them with 5xx.
//!
//! Simplifications, all outside what graygate's scenarios use: every route counts as attached
//! (Gateways and listeners are not checked), only header matches are evaluated (paths,
//! methods and query parameters match everything), and filters are ignored.

use crate::apps::Apps;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// The header the testers' requests carry, and its value.
pub const TESTER_HEADER: (&str, &str) = ("x-canary", "always");

/// How much synthetic traffic goes through every route.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Traffic {
    /// Users' requests a second per route.
    pub users_rps: f64,
    /// Testers' requests a second per route (with [`TESTER_HEADER`]).
    pub testers_rps: f64,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            users_rps: 100.0,
            testers_rps: 0.0,
        }
    }
}

/// The API resource of `HTTPRoute` v1.
pub fn http_routes() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// Where one route sends a stream: per backend Service, its share of the stream (0–1).
pub fn split(route: &Value, headers: &[(&str, &str)]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let rules = route["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // (header matches of the best match, rule index) of every rule that matches.
    let mut best: Option<(usize, usize)> = None;
    for (i, rule) in rules.iter().enumerate() {
        let specificity = match rule["matches"].as_array() {
            None => Some(0),
            Some(m) if m.is_empty() => Some(0),
            Some(matches) => matches
                .iter()
                .filter(|m| matches_headers(m, headers))
                .map(|m| m["headers"].as_array().map_or(0, Vec::len))
                .max(),
        };
        if let Some(s) = specificity
            && best.is_none_or(|(b, _)| s > b)
        {
            best = Some((s, i));
        }
    }
    let Some((_, i)) = best else {
        return out;
    };
    let backends = rules[i]["backendRefs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let weight = |b: &Value| b["weight"].as_f64().unwrap_or(1.0).max(0.0);
    let total: f64 = backends.iter().map(weight).sum();
    if total <= 0.0 {
        return out;
    }
    for b in &backends {
        if let Some(name) = b["name"].as_str() {
            *out.entry(name.to_string()).or_insert(0.0) += weight(b) / total;
        }
    }
    out
}

/// Whether one `HTTPRouteMatch` accepts a request with these headers (header matches only;
/// `Exact`, the default, compares values exactly and names without case).
fn matches_headers(m: &Value, headers: &[(&str, &str)]) -> bool {
    m["headers"].as_array().into_iter().flatten().all(|h| {
        let name = h["name"].as_str().unwrap_or_default();
        let value = h["value"].as_str().unwrap_or_default();
        let exact = h["type"].as_str().is_none_or(|t| t == "Exact");
        headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && (!exact || *v == value))
    })
}

fn ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The running data plane.
pub struct DataPlane {
    traffic: Mutex<Traffic>,
    /// Requests a second that reach no pod, per route (`namespace/name`).
    failing: Mutex<BTreeMap<String, f64>>,
}

impl DataPlane {
    /// Change the traffic.
    pub fn set_traffic(&self, t: Traffic) {
        *lock(&self.traffic) = t;
    }

    /// Requests a second that reach no Ready pod, per route.
    pub fn failing(&self) -> BTreeMap<String, f64> {
        lock(&self.failing).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Watch the objects `api` lists into a store kept current in the background (for the
/// stand-ins: the kubelet and this data plane).
pub fn watch<K>(api: Api<K>, dt: K::DynamicType) -> (reflector::Store<K>, JoinHandle<()>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Send + Sync + 'static,
{
    let writer = reflector::store::Writer::new(dt);
    let reader = writer.as_reader();
    let task = tokio::spawn(async move {
        let stream = reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    (reader, task)
}

/// Start the data plane (the HTTPRoute CRD must be installed): it re-reads routes, Services and
/// pods and sets every routed pod's rate five times a second.
pub async fn start(
    client: kube::Client,
    apps: Arc<Apps>,
    traffic: Traffic,
) -> (Arc<DataPlane>, Vec<JoinHandle<()>>) {
    let ar = http_routes();
    let (routes, t1) = watch::<DynamicObject>(Api::all_with(client.clone(), &ar), ar);
    let (services, t2) = watch::<Service>(Api::all(client.clone()), ());
    let (pods, t3) = watch::<Pod>(Api::all(client.clone()), ());
    let dp = Arc::new(DataPlane {
        traffic: Mutex::new(traffic),
        failing: Mutex::new(BTreeMap::new()),
    });
    let state = dp.clone();
    let run = tokio::spawn(async move {
        let mut routed: BTreeSet<(String, String)> = BTreeSet::new();
        loop {
            let t = *lock(&state.traffic);
            let mut rates: BTreeMap<(String, String), f64> = BTreeMap::new();
            let mut failing = BTreeMap::new();
            for r in routes.state() {
                let ns = r.metadata.namespace.clone().unwrap_or_default();
                let route = serde_json::to_value(&*r).unwrap_or_default();
                let mut lost = 0.0;
                for (headers, rps) in [(vec![], t.users_rps), (vec![TESTER_HEADER], t.testers_rps)]
                {
                    let shares = split(&route, &headers);
                    lost += rps * (1.0 - shares.values().sum::<f64>());
                    for (svc, share) in shares {
                        let selector = services
                            .state()
                            .into_iter()
                            .find(|s| {
                                s.metadata.namespace.as_deref() == Some(ns.as_str())
                                    && s.metadata.name.as_deref() == Some(svc.as_str())
                            })
                            .and_then(|s| s.spec.clone()?.selector);
                        let endpoints: Vec<String> = selector
                            .map(|sel| {
                                pods.state()
                                    .into_iter()
                                    .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
                                    .filter(|p| ready(p))
                                    .filter(|p| {
                                        let labels = p.metadata.labels.clone().unwrap_or_default();
                                        sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                                    })
                                    .filter_map(|p| p.metadata.name.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        if endpoints.is_empty() {
                            lost += rps * share;
                            continue;
                        }
                        let each = rps * share / endpoints.len() as f64;
                        for pod in endpoints {
                            *rates.entry((ns.clone(), pod)).or_insert(0.0) += each;
                        }
                    }
                }
                if lost > 1e-9 {
                    failing.insert(
                        format!("{ns}/{}", r.metadata.name.clone().unwrap_or_default()),
                        lost,
                    );
                }
            }
            for (ns, pod) in routed.difference(&rates.keys().cloned().collect()) {
                apps.set_routed_rate(ns, pod, None);
            }
            for ((ns, pod), rps) in &rates {
                apps.set_routed_rate(ns, pod, Some(*rps));
            }
            routed = rates.into_keys().collect();
            *lock(&state.failing) = failing;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (dp, vec![t1, t2, t3, run])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route() -> Value {
        json!({"spec": {"rules": [
            {"matches": [{"headers": [{"name": "X-Canary", "value": "always"}]}],
             "backendRefs": [{"name": "web-canary", "port": 80}]},
            {"backendRefs": [
                {"name": "web-stable", "port": 80, "weight": 95},
                {"name": "web-canary", "port": 80, "weight": 5}]}
        ]}})
    }

    #[test]
    fn weights_split_the_users_and_the_header_rule_takes_the_testers() {
        let users = split(&route(), &[]);
        assert_eq!(users["web-stable"], 0.95);
        assert_eq!(users["web-canary"], 0.05);
        // Header names match without case; the more specific rule wins over the catch-all.
        let testers = split(&route(), &[TESTER_HEADER]);
        assert_eq!(testers, [("web-canary".to_string(), 1.0)].into());
        // Another value of the header is an ordinary user.
        assert_eq!(split(&route(), &[("x-canary", "never")]), users);
    }

    #[test]
    fn a_missing_weight_is_one_and_zero_weights_route_nothing() {
        let r = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "a"}, {"name": "b", "weight": 3}]}]}});
        assert_eq!(
            split(&r, &[]),
            [("a".into(), 0.25), ("b".into(), 0.75)].into()
        );
        let zero = json!({"spec": {"rules": [{"backendRefs": [
            {"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}]}});
        assert!(split(&zero, &[]).is_empty());
        // No rule matches: nothing is routed.
        let only_header = json!({"spec": {"rules": [{
            "matches": [{"headers": [{"name": "x-canary", "value": "always"}]}],
            "backendRefs": [{"name": "a"}]}]}});
        assert!(split(&only_header, &[]).is_empty());
    }
}
