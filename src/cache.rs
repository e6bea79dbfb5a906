//! Watch caches of the workload objects a reconcile reads: Deployments, ReplicaSets and
//! HorizontalPodAutoscalers of the namespaces graygate watches, each kept by one watch stream
//! instead of a GET or a list on every reconcile.
//!
//! Why a cached read is safe where graygate uses it:
//! - A store only moves forward: what it shows was true at some moment, never a state that the
//!   cluster has not been in. A step that is "reached" in the cache was reached.
//! - Every write graygate derives from a cached object carries that object's `resourceVersion`
//!   as a precondition (`fenced_json`, `fenced_merge`): if the object has changed since the cache
//!   saw it, the API server refuses the write with 409 and the reconcile runs again once the
//!   watch has caught up. A decision that needs fresh state gets it from that refusal, not from a
//!   GET before every step.
//! - An object the cache does not hold counts as absent only where that absence decides nothing
//!   final: a canary not yet in the cache is created again (the API server answers 409, which
//!   is fine). The target, and the canary and baseline at the moment a change would end, are
//!   looked up with a GET when the cache lacks them. Until a store has listed once, every read
//!   goes to the API server.
//! - Writes still pass the Lease fence: only the leader writes.

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use serde_json::{Value, json};
use std::sync::Arc;

/// The stores of one watched scope: one namespace, or every namespace.
pub struct Scope {
    ns: Option<String>,
    deployments: Store<Deployment>,
    replicasets: Store<ReplicaSet>,
    autoscalers: Store<HorizontalPodAutoscaler>,
}

/// A kind graygate reads from a watch cache.
pub trait Cached:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::de::DeserializeOwned
    + serde::Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// This kind's store in a scope.
    fn store(scope: &Scope) -> &Store<Self>;
}

impl Cached for Deployment {
    fn store(scope: &Scope) -> &Store<Self> {
        &scope.deployments
    }
}

impl Cached for ReplicaSet {
    fn store(scope: &Scope) -> &Store<Self> {
        &scope.replicasets
    }
}

impl Cached for HorizontalPodAutoscaler {
    fn store(scope: &Scope) -> &Store<Self> {
        &scope.autoscalers
    }
}

/// The watch caches of every scope graygate reconciles.
#[derive(Default)]
pub struct Caches {
    scopes: Vec<Scope>,
}

fn ready<K: Cached>(store: &Store<K>) -> bool {
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

fn reflect<K: Cached>(api: Api<K>) -> Store<K> {
    let (store, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::debug!(error = %e, kind = %K::kind(&()), "watch cache: watch error, retrying");
            }
        }
    });
    store
}

impl Caches {
    /// Start watching: every namespace when `namespaces` is empty, else each listed one (so
    /// namespaced RBAC suffices). The watches run for the life of the process.
    pub fn start(client: &Client, namespaces: &[String]) -> Caches {
        let scopes: Vec<Option<String>> = if namespaces.is_empty() {
            vec![None]
        } else {
            namespaces.iter().cloned().map(Some).collect()
        };
        Caches {
            scopes: scopes
                .into_iter()
                .map(|ns| {
                    fn api<K: Cached>(client: &Client, ns: &Option<String>) -> Api<K> {
                        match ns {
                            Some(ns) => Api::namespaced(client.clone(), ns),
                            None => Api::all(client.clone()),
                        }
                    }
                    Scope {
                        deployments: reflect(api(client, &ns)),
                        replicasets: reflect(api(client, &ns)),
                        autoscalers: reflect(api(client, &ns)),
                        ns,
                    }
                })
                .collect(),
        }
    }

    /// Every store has listed once.
    pub fn ready(&self) -> bool {
        self.scopes
            .iter()
            .all(|s| ready(&s.deployments) && ready(&s.replicasets) && ready(&s.autoscalers))
    }

    fn scope<K: Cached>(&self, ns: &str) -> Option<&Store<K>> {
        let scope = self
            .scopes
            .iter()
            .find(|s| s.ns.as_deref().is_none_or(|n| n == ns))?;
        let store = K::store(scope);
        ready(store).then_some(store)
    }

    /// The store of `K` for `ns` has listed once.
    pub fn listed<K: Cached>(&self, ns: &str) -> bool {
        self.scope::<K>(ns).is_some()
    }

    /// `ns/name` as the cache holds it; `None` when the cache does not hold it (or has not
    /// listed yet).
    pub fn get<K: Cached>(&self, ns: &str, name: &str) -> Option<Arc<K>> {
        self.scope::<K>(ns)?.get(&ObjectRef::new(name).within(ns))
    }

    /// Every object of `ns` in the cache; `None` when it has not listed yet.
    pub fn list<K: Cached>(&self, ns: &str) -> Option<Vec<Arc<K>>> {
        Some(
            self.scope::<K>(ns)?
                .state_filter(|o| o.meta().namespace.as_deref() == Some(ns)),
        )
    }
}

/// A JSON patch that applies only to the version of `obj` it was made from: the API server
/// refuses it with 409 Conflict if the object changed since.
pub fn fenced_json<K: Resource>(obj: &K, ops: Value) -> Value {
    match (obj.meta().resource_version.as_deref(), ops) {
        (Some(rv), Value::Array(mut ops)) => {
            ops.insert(
                0,
                json!({"op": "replace", "path": "/metadata/resourceVersion", "value": rv}),
            );
            Value::Array(ops)
        }
        (_, ops) => ops,
    }
}

/// A merge patch that applies only to the version of `obj` it was made from (409 otherwise).
pub fn fenced_merge<K: Resource>(obj: &K, mut patch: Value) -> Value {
    if let (Some(rv), Some(p)) = (
        obj.meta().resource_version.as_deref(),
        patch.as_object_mut(),
    ) {
        let meta = p.entry("metadata").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("resourceVersion".into(), json!(rv));
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(rv: Option<&str>) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.resource_version = rv.map(String::from);
        d
    }

    #[test]
    fn writes_carry_the_version_they_were_made_from() {
        let d = deployment(Some("42"));
        assert_eq!(
            fenced_json(
                &d,
                json!([{"op": "replace", "path": "/spec/replicas", "value": 3}])
            ),
            json!([
                {"op": "replace", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "replace", "path": "/spec/replicas", "value": 3},
            ])
        );
        assert_eq!(
            fenced_merge(
                &d,
                json!({"metadata": {"annotations": {"a": null}}, "spec": {"paused": false}})
            ),
            json!({"metadata": {"annotations": {"a": null}, "resourceVersion": "42"}, "spec": {"paused": false}})
        );
        assert_eq!(
            fenced_merge(&d, json!({"spec": {"replicas": 2}})),
            json!({"metadata": {"resourceVersion": "42"}, "spec": {"replicas": 2}})
        );
        // An object never read from the server has no version to hold the write to.
        let fresh = deployment(None);
        assert_eq!(
            fenced_merge(&fresh, json!({"spec": {}})),
            json!({"spec": {}})
        );
    }
}
