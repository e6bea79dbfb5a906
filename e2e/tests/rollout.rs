//! End-to-end rollout scenarios: the unmodified `graygate run` binary against the real control
//! plane (kube-apiserver and kube-controller-manager) with the stand-in kubelet.

mod common;

use common::*;
use graygate::api::{Phase, Verdict};
use graygate_e2e::world::WorldOptions;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_deployment_change_completes_all_batches() {
    let w = graygate_e2e::world::World::start(WorldOptions::default())
        .await
        .unwrap();
    let port = w.start_graygate(&[]).unwrap();
    w.apply(&deployment_yaml("s1", "web", 4)).await.unwrap();
    wait_deployment_ready(&w, "s1", "web", 4).await;
    let (recorder, pods) = record_pods(&w, "s1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<String> = pods.lock().unwrap().keys().cloned().collect();
    assert_eq!(before.len(), 4, "{before:?}");
    w.apply(&change_yaml(
        "s1",
        "web-v2",
        r#"
target: {kind: Deployment, name: web}
images: {app: "shop/web:healthy-v2"}
batches:
- {replicas: 1, bake: 2s}
- {percent: 50, bake: 2s}
- {percent: 100, bake: 2s}
"#,
    ))
    .await
    .unwrap();
    let cr = w
        .wait_phase("s1", "web-v2", Phase::Succeeded, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(st.batches.len(), 3);
    assert!(st.batches.iter().all(|b| b.verdict == Some(Verdict::Pass)));
    assert_eq!(st.batch.as_deref(), Some("3/3"));
    // Pods on the new template, planned and ready, per batch: the same as a guarded
    // Deployment's with the same batches (tests/guarded.rs).
    assert_eq!(new_pods_per_batch(&st), [(1, 1), (2, 2), (4, 4)]);
    let target = deployment(&w, "s1", "web").await.unwrap();
    assert_eq!(image_of(&target), "shop/web:healthy-v2");
    assert_eq!(target.spec.unwrap().replicas, Some(4));
    wait_deployment_ready(&w, "s1", "web", 4).await;
    assert!(
        deployment(&w, "s1", "web-canary-web-v2").await.is_none(),
        "the canary is gone"
    );
    // A change that passed never brings the old version back: no pod of the old image was
    // created after the change began (the promotion used to let the real Deployment controller
    // scale the old ReplicaSet up first, from 2 to 4).
    recorder.abort();
    let old_again: Vec<(String, String)> = pods
        .lock()
        .unwrap()
        .iter()
        .filter(|(name, image)| *image == "shop/web:healthy" && !before.contains(name))
        .map(|(n, i)| (n.clone(), i.clone()))
        .collect();
    assert!(
        old_again.is_empty(),
        "old-version pods came back: {old_again:?}"
    );
    let new_created = pods
        .lock()
        .unwrap()
        .values()
        .filter(|i| *i == "shop/web:healthy-v2")
        .count();
    println!("pod churn: {new_created} new-template pods created for a 4-pod Deployment");
    // Events are recorded right after the status that they report.
    w.wait_for("the Events of every step", LONG, || async {
        let reasons = w.event_reasons("s1", "web-v2").await?;
        Ok([
            "Started",
            "BatchStarted",
            "BatchReady",
            "BatchPassed",
            "Succeeded",
        ]
        .iter()
        .all(|r| reasons.iter().any(|x| x == r))
        .then_some(()))
    })
    .await
    .unwrap();
    // The operator's own endpoints tell the same story.
    assert_eq!(graygate_http(port, "/healthz").await.0, 200);
    assert_eq!(graygate_http(port, "/readyz").await.0, 200);
    let (code, metrics) = graygate_http(port, "/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "graygate_changerequests{phase=\"Succeeded\"} 1",
        "graygate_batches_total{verdict=\"Pass\"} 3",
        "graygate_leader 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("graygate_reconcile_duration_seconds_bucket"));
    assert_within_rbac(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_ready_change_fails_at_the_deadline_and_rolls_back() {
    let w = world(WorldOptions::default()).await;
    w.apply(&deployment_yaml("s2", "web", 4)).await.unwrap();
    wait_deployment_ready(&w, "s2", "web", 4).await;
    w.apply(&change_yaml(
        "s2",
        "bad",
        r#"
target: {kind: Deployment, name: web}
images: {app: "shop/web:crashloop"}
progressDeadline: 6s
batches: [{replicas: 1, bake: 2s}, {percent: 100}]
"#,
    ))
    .await
    .unwrap();
    let cr = w
        .wait_phase("s2", "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("ProgressDeadlineExceeded"));
    assert_eq!(st.batches[0].verdict, Some(Verdict::Fail));
    let target = deployment(&w, "s2", "web").await.unwrap();
    assert_eq!(image_of(&target), "shop/web:healthy");
    assert_eq!(target.spec.as_ref().unwrap().replicas, Some(4));
    assert!(deployment(&w, "s2", "web-canary-bad").await.is_none());
    let reasons = events_through(&w, "s2", "bad", "RolledBack").await;
    assert!(
        reasons.iter().any(|r| r == "BatchFailed") && reasons.iter().any(|r| r == "RolledBack"),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_approval_gate_waits_for_the_annotation() {
    let w = world(WorldOptions::default()).await;
    web_change(
        &w,
        "s3",
        2,
        "gated",
        "[{replicas: 1, bake: 1s}, {percent: 100, bake: 1s, approval: manual}]",
    )
    .await;
    let cr = w
        .wait_phase("s3", "gated", Phase::AwaitingApproval, LONG)
        .await
        .unwrap();
    assert_eq!(cr.status.as_ref().unwrap().current_batch, 2);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cr = w.change_request("s3", "gated").await.unwrap().unwrap();
    assert_eq!(
        phase(&cr),
        Phase::AwaitingApproval,
        "no progress without approval"
    );
    assert_eq!(
        image_of(&deployment(&w, "s3", "web").await.unwrap()),
        "shop/web:healthy"
    );
    let api: Api<graygate::api::ChangeRequest> = Api::namespaced(w.client.clone(), "s3");
    api.patch(
        "gated",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"graygate.io/approve": "2"}}})),
    )
    .await
    .unwrap();
    w.wait_phase("s3", "gated", Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert_eq!(
        image_of(&deployment(&w, "s3", "web").await.unwrap()),
        "shop/web:healthy-v2"
    );
}

/// Successful graygate writes, counted by (method, path).
fn write_counts(
    w: &graygate_e2e::world::World,
    ns: &str,
) -> std::collections::BTreeMap<(String, String), usize> {
    let mut out = std::collections::BTreeMap::new();
    for e in w.writes_to(&format!("/namespaces/{ns}/deployments")) {
        *out.entry((e.method, e.path)).or_insert(0) += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_in_the_middle_of_a_bake_resumes_without_repeating_or_skipping() {
    let w = world(WorldOptions::default()).await;
    web_change(
        &w,
        "s4",
        4,
        "v2",
        "[{replicas: 1, bake: 8s}, {percent: 50, bake: 6s}, {percent: 100, bake: 1s}]",
    )
    .await;
    // Batch 1 is baking.
    wait_batch(&w, "s4", "v2", 1, "to bake", |b| b.ready_at.is_some()).await;
    w.kill_graygate();
    let before = w
        .change_request("s4", "v2")
        .await
        .unwrap()
        .unwrap()
        .status
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.start_graygate(&[]).unwrap();
    // Batch 2 is baking when the API server stops answering graygate for longer than its Lease
    // (3 s here): it must step down, and the process started in its place must carry on.
    wait_batch(&w, "s4", "v2", 2, "to bake", |b| b.ready_at.is_some()).await;
    w.faults.set_error_rate(1.0);
    w.wait_for("graygate to step down", LONG, || async {
        Ok((w.graygate_runs() == 3).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    w.faults.set_error_rate(0.0);
    assert!(
        w.graygate_logs()
            .contains("could not renew the lease in time; stepping down"),
        "{}",
        w.graygate_logs()
    );
    let cr = w
        .wait_phase("s4", "v2", Phase::Succeeded, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(
        st.batches[0].started_at, before.batches[0].started_at,
        "batch 1 was not restarted"
    );
    assert_eq!(
        st.batches[0].ready_at, before.batches[0].ready_at,
        "the bake kept its start"
    );
    let reasons = events_through(&w, "s4", "v2", "Succeeded").await;
    assert_eq!(
        reasons.iter().filter(|r| *r == "BatchStarted").count(),
        3,
        "{reasons:?}"
    );
    assert_eq!(
        reasons.iter().filter(|r| *r == "BatchPassed").count(),
        3,
        "{reasons:?}"
    );
    let writes = write_counts(&w, "s4");
    let count = |m: &str, p: &str| {
        writes
            .get(&(m.to_string(), p.to_string()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        count("POST", "/apis/apps/v1/namespaces/s4/deployments"),
        1,
        "{writes:?}"
    );
    assert_eq!(
        count("PATCH", "/apis/apps/v1/namespaces/s4/deployments/web/scale"),
        3,
        "one stable scale-down per canary batch, one scale-up to full size at promotion: {writes:?}"
    );
    assert_eq!(
        count(
            "PATCH",
            "/apis/apps/v1/namespaces/s4/deployments/web-canary-v2"
        ),
        1,
        "{writes:?}"
    );
    assert_eq!(
        count("PATCH", "/apis/apps/v1/namespaces/s4/deployments/web"),
        1,
        "one template write at promotion: {writes:?}"
    );
    assert_eq!(
        count(
            "DELETE",
            "/apis/apps/v1/namespaces/s4/deployments/web-canary-v2"
        ),
        1,
        "{writes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_change_on_the_same_target_waits_until_the_first_ends() {
    let w = world(WorldOptions::default()).await;
    web_change(
        &w,
        "s5",
        2,
        "first",
        "[{replicas: 1, bake: 5s}, {percent: 100, bake: 1s}]",
    )
    .await;
    w.wait_phase("s5", "first", Phase::Progressing, LONG)
        .await
        .unwrap();
    w.apply(&change_yaml(
        "s5",
        "second",
        r#"
target: {kind: Deployment, name: web}
patch: {spec: {containers: [{name: app, env: [{name: MODE, value: fast}]}]}}
batches: [{percent: 100, bake: 1s}]
"#,
    ))
    .await
    .unwrap();
    let blocked = w
        .wait_phase("s5", "second", Phase::Blocked, LONG)
        .await
        .unwrap();
    assert!(
        blocked
            .status
            .as_ref()
            .unwrap()
            .message
            .as_ref()
            .unwrap()
            .contains("first")
    );
    let first = w
        .wait_phase("s5", "first", Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert!(first.status.is_some());
    w.wait_phase("s5", "second", Phase::Succeeded, LONG)
        .await
        .unwrap();
    let d = deployment(&w, "s5", "web").await.unwrap();
    let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("shop/web:healthy-v2"),
        "the first change stays"
    );
    assert_eq!(
        c.env.as_ref().unwrap()[0].value.as_deref(),
        Some("fast"),
        "the second change applied on top"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_specs_change_nothing_and_name_the_field() {
    let w = world(WorldOptions::default()).await;
    w.apply(&deployment_yaml("s6", "web", 3)).await.unwrap();
    wait_deployment_ready(&w, "s6", "web", 3).await;
    let cases = [
        (
            "no-container",
            "images: {db: 'pg:16'}\nbatches: [{percent: 100}]",
            "spec.images.db",
        ),
        (
            "too-many",
            "images: {app: 'shop/web:v2'}\nbatches: [{replicas: 5}]",
            "spec.batches[0].replicas",
        ),
        (
            "shrinking",
            "images: {app: 'shop/web:v2'}\nbatches: [{percent: 50}, {percent: 40}, {percent: 100}]",
            "spec.batches[1].percent",
        ),
        (
            "selector",
            "patch: {metadata: {labels: {app: other}}}\nbatches: [{percent: 100}]",
            "spec.patch.metadata.labels.app",
        ),
        (
            "no-op",
            "images: {app: 'shop/web:healthy'}\nbatches: [{percent: 100}]",
            "spec.spec",
        ),
        (
            "window",
            "images: {app: 'shop/web:v2'}\nwindow: {timeZone: Moon/Base, start: '09:00', end: '17:00'}\nbatches: [{percent: 100}]",
            "spec.window.timeZone",
        ),
    ];
    for (name, body, _) in &cases {
        w.apply(&change_yaml(
            "s6",
            name,
            &format!("target: {{kind: Deployment, name: web}}\n{body}"),
        ))
        .await
        .unwrap();
    }
    for (name, _, field) in &cases {
        let cr = w
            .wait_phase("s6", name, Phase::Invalid, LONG)
            .await
            .unwrap();
        let st = cr.status.unwrap();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidSpec"),
            "{name}"
        );
        assert!(
            ready.message.contains(field),
            "{name}: {} should name {field}",
            ready.message
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.writes_to("/namespaces/s6/deployments").is_empty(),
        "no workload was touched"
    );
    let d = deployment(&w, "s6", "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy");
    assert_eq!(d.metadata.generation, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_partition_rollout_and_rollback() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let w = world(WorldOptions::default()).await;
    w.apply(&statefulset_yaml("s7", "db", 3)).await.unwrap();
    wait_statefulset_ready(&w, "s7", "db", 3).await;
    let sts_api: Api<StatefulSet> = Api::namespaced(w.client.clone(), "s7");
    let original = sts_api
        .get("db")
        .await
        .unwrap()
        .status
        .unwrap()
        .current_revision
        .unwrap();
    w.apply(&change_yaml(
        "s7",
        "db-v2",
        r#"
target: {kind: StatefulSet, name: db}
images: {app: "shop/db:healthy-v2"}
batches: [{replicas: 1, bake: 2s}, {percent: 100, bake: 1s}]
"#,
    ))
    .await
    .unwrap();
    // During batch 1 only the highest ordinal runs the new revision.
    w.wait_for("batch 1 baking", LONG, || async {
        let cr = w.change_request("s7", "db-v2").await?;
        Ok(cr
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.current_batch == 1 && s.batches[0].ready_at.is_some())
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
    let sts = sts_api.get("db").await.unwrap();
    let rolling = sts
        .spec
        .as_ref()
        .unwrap()
        .update_strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    assert_eq!(rolling.partition, Some(2));
    assert_eq!(sts.status.as_ref().unwrap().updated_replicas, Some(1));
    let done = w
        .wait_phase("s7", "db-v2", Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert_eq!(
        done.status.unwrap().stable_revision.as_deref(),
        Some(original.as_str())
    );
    wait_statefulset_ready(&w, "s7", "db", 3).await;
    let after = sts_api.get("db").await.unwrap();
    assert_ne!(
        after.status.as_ref().unwrap().current_revision.as_deref(),
        Some(original.as_str())
    );
    let promoted_rev = after.status.unwrap().current_revision.unwrap();

    w.apply(&change_yaml(
        "s7",
        "db-bad",
        r#"
target: {kind: StatefulSet, name: db}
images: {app: "shop/db:crashloop"}
progressDeadline: 6s
batches: [{replicas: 1, bake: 2s}, {percent: 100}]
"#,
    ))
    .await
    .unwrap();
    let rolled = w
        .wait_phase("s7", "db-bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    assert_eq!(
        rolled.status.unwrap().reason.as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    wait_statefulset_ready(&w, "s7", "db", 3).await;
    let back = sts_api.get("db").await.unwrap();
    assert_eq!(
        back.status.as_ref().unwrap().current_revision.as_deref(),
        Some(promoted_rev.as_str())
    );
    assert_eq!(sts_image(&back), "shop/db:healthy-v2");
    assert_eq!(
        back.spec
            .unwrap()
            .update_strategy
            .unwrap()
            .rolling_update
            .unwrap()
            .partition,
        Some(0)
    );
    assert_within_rbac(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_survives_failing_api_calls_and_dropped_watches() {
    let w = world(WorldOptions::default()).await;
    w.apply(&deployment_yaml("s8", "web", 4)).await.unwrap();
    wait_deployment_ready(&w, "s8", "web", 4).await;
    w.faults.set_error_rate(0.10);
    w.faults.set_watch_drop_ms(3000);
    w.faults.set_latency_ms(20);
    w.apply(&change_yaml(
        "s8",
        "v2",
        r#"
target: {kind: Deployment, name: web}
images: {app: "shop/web:healthy-v2"}
batches: [{replicas: 1, bake: 2s}, {percent: 50, bake: 2s}, {percent: 100, bake: 2s}]
"#,
    ))
    .await
    .unwrap();
    let cr = w
        .wait_phase("s8", "v2", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    w.faults.set_error_rate(0.0);
    let st = cr.status.unwrap();
    assert_eq!(
        st.batches
            .iter()
            .filter(|b| b.verdict == Some(Verdict::Pass))
            .count(),
        3
    );
    wait_deployment_ready(&w, "s8", "web", 4).await;
    assert_eq!(
        image_of(&deployment(&w, "s8", "web").await.unwrap()),
        "shop/web:healthy-v2"
    );
    assert!(deployment(&w, "s8", "web-canary-v2").await.is_none());
    let failed = w
        .audit
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.status >= 500 || e.status == 429)
        .count();
    assert!(failed > 0, "faults were injected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_active_change_rolls_the_workload_back() {
    let w = world(WorldOptions::default()).await;
    web_change(
        &w,
        "s9",
        4,
        "v2",
        "[{replicas: 2, bake: 60s}, {percent: 100}]",
    )
    .await;
    wait_batch(&w, "s9", "v2", 1, "to bake", |b| b.ready_at.is_some()).await;
    assert_eq!(
        deployment(&w, "s9", "web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(2)
    );
    let api: Api<graygate::api::ChangeRequest> = Api::namespaced(w.client.clone(), "s9");
    // A slow API server widens the window in which a queued reconcile still holds the copy from
    // before the deletion.
    w.faults.set_latency_ms(150);
    api.delete("v2", &Default::default()).await.unwrap();
    w.wait_for("the ChangeRequest to go", LONG, || async {
        Ok(w.change_request("s9", "v2").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    w.faults.set_latency_ms(0);
    let d = deployment(&w, "s9", "web").await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(4));
    assert_eq!(image_of(&d), "shop/web:healthy");
    assert!(deployment(&w, "s9", "web-canary-v2").await.is_none());
    wait_deployment_ready(&w, "s9", "web", 4).await;
    // The deletion is not a failure: no reconcile of the stale copy reports a 404.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = w.graygate_logs();
    assert!(
        !logs.contains("reconcile failed"),
        "{}",
        logs.lines()
            .filter(|l| l.contains("reconcile failed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_within_rbac(&w);
}
