//! A reconcile that still holds the copy of a ChangeRequest from before it was deleted (a run
//! queued while the finalizer was being removed) must not count the object's absence as a
//! failure. The reconciler is driven directly with such a copy, on the real API server.

mod common;

use common::*;
use graygate::analysis::prometheus::PrometheusAnalyzer;
use graygate::api::ChangeRequest;
use graygate::controller::metrics::Metrics;
use graygate::controller::reconcile::{Context, reconcile};
use graygate_e2e::world::WorldOptions;
use kube::Api;
use kube::api::{Patch, PatchParams};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_of_a_change_request_deleted_meanwhile_is_not_a_failure() {
    let w = world(WorldOptions::default()).await;
    web_change(
        &w,
        "d1",
        2,
        "v2",
        "[{replicas: 1, bake: 60s}, {percent: 100}]",
    )
    .await;
    wait_batch(&w, "d1", "v2", 1, "to bake", |b| b.ready_at.is_some()).await;
    w.kill_graygate();
    let api: Api<ChangeRequest> = Api::namespaced(w.client.clone(), "d1");
    api.delete("v2", &Default::default()).await.unwrap();
    // The copy a queued run would hold: being deleted, finalizer still present.
    let stale = api.get("v2").await.unwrap();
    assert!(stale.metadata.deletion_timestamp.is_some());
    // Another run finished the deletion meanwhile.
    api.patch(
        "v2",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    w.wait_for("the ChangeRequest to go", LONG, || async {
        Ok(api.get_opt("v2").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let ctx = Context::new(
        w.client.clone(),
        metrics.clone(),
        Arc::new(PrometheusAnalyzer::new(None, Some(w.client.clone()))),
        "stale-test".into(),
    );
    let r = reconcile(Arc::new(stale), Arc::new(ctx)).await;
    assert!(r.is_ok(), "{r:?}");
}

/// A write graygate makes from a cached copy carries the copy's resourceVersion: once the object
/// has changed, the real API server refuses it (409) and nothing changes; made from the current
/// version, the same write goes through. The watch cache catches up with the change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_made_from_a_stale_copy_is_refused_and_changes_nothing() {
    use graygate::cache::{Caches, fenced_json, fenced_merge};
    use k8s_openapi::api::apps::v1::Deployment;
    let w = world(WorldOptions::default()).await;
    w.apply(&deployment_yaml("s1", "web", 2)).await.unwrap();
    let caches = Caches::start(&w.client, &["s1".to_string()]);
    w.wait_for("the caches to list", LONG, || async {
        Ok(caches.ready().then_some(()))
    })
    .await
    .unwrap();
    let cached = w
        .wait_for("the cache to hold web", LONG, || async {
            Ok(caches.get::<Deployment>("s1", "web"))
        })
        .await
        .unwrap();
    let api: Api<Deployment> = Api::namespaced(w.client.clone(), "s1");
    // Someone else changes the Deployment after the cache saw it.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"labels": {"team": "checkout"}}})),
    )
    .await
    .unwrap();
    let ops = serde_json::json!([{"op": "replace", "path": "/spec/paused", "value": true}]);
    let refused = api
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(fenced_json(&*cached, ops.clone())).unwrap()),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 409),
        "{refused:?}"
    );
    let refused = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(fenced_merge(
                &*cached,
                serde_json::json!({"spec": {"replicas": 5}}),
            )),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 409),
        "{refused:?}"
    );
    let now = api.get("web").await.unwrap();
    assert_eq!(now.spec.as_ref().and_then(|s| s.replicas), Some(2));
    assert_ne!(now.spec.as_ref().and_then(|s| s.paused), Some(true));
    // The cache catches up, and a write made from what it holds now goes through.
    let current = w
        .wait_for("the cache to see the change", LONG, || async {
            Ok(caches
                .get::<Deployment>("s1", "web")
                .filter(|d| d.metadata.resource_version == now.metadata.resource_version))
        })
        .await
        .unwrap();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(fenced_json(&*current, ops)).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        api.get("web").await.unwrap().spec.and_then(|s| s.paused),
        Some(true)
    );
}
