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
