//! Changes of a Deployment that a HorizontalPodAutoscaler scales, on the real control plane.
//! kube-controller-manager runs the HPA controller, but this world has no metrics API, so the
//! HPA computes nothing: the scenario writes the scale subresource as the HPA would
//! (`kubectl scale`, 4 → 8 → 3 replicas, within the HPA's bounds) while a change runs. graygate
//! must never write the target's replicas, and each batch follows the live count, saying so.

mod common;

use common::*;
use graygate::api::{ChangeRequestStatus, Phase};
use graygate_e2e::world::{World, WorldOptions};
use std::process::Command;
use std::time::Duration;

const HPA: &str = r#"
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: web, namespace: NS}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 2
  maxReplicas: 10
  metrics:
  - type: Resource
    resource: {name: cpu, target: {type: Utilization, averageUtilization: 60}}
"#;

const BATCHES: &str = r#"
    - {percent: 25, bake: 12s}
    - {percent: 50, bake: 12s}
    - {percent: 100, bake: 3s}"#;

/// `kubectl scale deployment/web --replicas=n`, as the autoscaler writes it.
fn autoscale(w: &World, ns: &str, n: i32) {
    let out = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", w.admin_kubeconfig.display()))
        .args([
            "scale",
            "deployment/web",
            "-n",
            ns,
            &format!("--replicas={n}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

async fn status(w: &World, ns: &str, name: &str) -> ChangeRequestStatus {
    w.change_request(ns, name)
        .await
        .unwrap()
        .and_then(|c| c.status)
        .unwrap_or_default()
}

/// Wait until batch `k` of `name` has started with `replicas` pods planned.
async fn batch_is(w: &World, ns: &str, name: &str, k: u32, replicas: i32) {
    w.wait_for(
        &format!("{name}: batch {k} of {replicas} pods"),
        LONG,
        || async {
            let st = status(w, ns, name).await;
            Ok((st.current_batch == k
                && st
                    .batches
                    .get(k as usize - 1)
                    .is_some_and(|b| b.replicas == replicas))
            .then_some(()))
        },
    )
    .await
    .unwrap();
}

/// The change's name in `ns` (the only one, or the one named).
async fn run_with_autoscaler(w: &World, ns: &str, name: &str) {
    // 4 replicas: batches 1, 2, 4. The autoscaler goes to 8 in batch 1 (2, 4, 8), then to 3 in
    // batch 2 (1, 2, 3).
    batch_is(w, ns, name, 1, 1).await;
    autoscale(w, ns, 8);
    batch_is(w, ns, name, 1, 2).await;
    batch_is(w, ns, name, 2, 4).await;
    autoscale(w, ns, 3);
    batch_is(w, ns, name, 2, 2).await;
    let cr = w
        .wait_phase(ns, name, Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    let st = cr.status.unwrap();
    let sizes: Vec<i32> = st.batches.iter().map(|b| b.replicas).collect();
    assert_eq!(
        sizes,
        [2, 2, 3],
        "each batch as planned for the count it ran at"
    );
    let rescaled = w.event_reasons(ns, name).await.unwrap();
    assert!(
        rescaled.iter().filter(|r| *r == "Rescaled").count() >= 2,
        "{rescaled:?}"
    );
    wait_deployment_ready(w, ns, "web", 3).await;
    // No write war: graygate never wrote the target's replicas.
    let scale_writes = w.writes_to(&format!("/namespaces/{ns}/deployments/web/scale"));
    assert!(scale_writes.is_empty(), "{scale_writes:?}");
    let replica_writes: Vec<_> = w
        .writes_to(&format!("/namespaces/{ns}/deployments/web"))
        .into_iter()
        .filter(|e| e.body.contains("replicas") && !e.path.contains("canary"))
        .collect();
    assert!(replica_writes.is_empty(), "{replica_writes:?}");
    // Nor the replicas of any ReplicaSet but its own canary's (the Deployment controller scales
    // the Deployment's own ReplicaSets as the autoscaler moves).
    let canary = st.canary_name.clone().unwrap_or_default();
    let rs_writes: Vec<_> = w
        .writes_to(&format!("/namespaces/{ns}/replicasets/"))
        .into_iter()
        .filter(|e| e.body.contains("replicas") && !e.path.ends_with(&format!("/{canary}")))
        .collect();
    assert!(rs_writes.is_empty(), "{rs_writes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_change_follows_the_autoscaler_and_never_writes_its_replicas() {
    let ns = "a1";
    let w = world(WorldOptions::default()).await;
    w.apply(&deployment_yaml(ns, "web", 4)).await.unwrap();
    w.apply(&HPA.replace("NS", ns)).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    w.apply(&change_yaml(
        ns,
        "v2",
        &format!(
            "target: {{kind: Deployment, name: web}}\nimages: {{app: shop/web:healthy-v2}}\nbatches:{BATCHES}"
        ),
    ))
    .await
    .unwrap();
    run_with_autoscaler(&w, ns, "v2").await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v2");
    assert_eq!(d.spec.unwrap().replicas, Some(3), "the autoscaler's count");

    // A bad build under the same autoscaler: rolled back, the count left as the autoscaler set
    // it, and still no write of the replicas.
    w.apply(&change_yaml(
        ns,
        "bad",
        "target: {kind: Deployment, name: web}\nimages: {app: shop/web:crashloop}\nprogressDeadline: 8s\nbatches:\n- {percent: 50, bake: 5s}\n- {percent: 100, bake: 3s}",
    ))
    .await
    .unwrap();
    w.wait_phase(ns, "bad", Phase::RolledBack, Duration::from_secs(120))
        .await
        .unwrap();
    wait_deployment_ready(&w, ns, "web", 3).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v2");
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert!(
        w.writes_to(&format!("/namespaces/{ns}/deployments/web/scale"))
            .is_empty()
    );
    assert_within_rbac(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_change_follows_the_autoscaler() {
    let ns = "a2";
    let w = world_with_webhook(WorldOptions::default()).await;
    w.apply(&deployment_yaml(ns, "web", 4)).await.unwrap();
    w.apply(&HPA.replace("NS", ns)).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    w.apply(&format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: p, namespace: {ns}}}\nspec:\n  workloads: {{names: [web]}}\n  change:\n    progressDeadline: 8s\n    batches:{BATCHES}\n"
    ))
    .await
    .unwrap();
    wait_labelled_guarded(&w, ns, "web").await;
    admin_set_image(&w, ns, "web", "shop/web:healthy-v2");
    let name = generated_change(&w, ns, &[]).await;
    run_with_autoscaler(&w, ns, &name).await;

    // A bad build: rolled back, the old pods at the autoscaler's count.
    admin_set_image(&w, ns, "web", "shop/web:crashloop");
    let bad = generated_change(&w, ns, std::slice::from_ref(&name)).await;
    w.wait_phase(ns, &bad, Phase::RolledBack, Duration::from_secs(120))
        .await
        .unwrap();
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(3));
    assert!(
        w.writes_to(&format!("/namespaces/{ns}/deployments/web/scale"))
            .is_empty()
    );
    assert_within_rbac(&w);
}
