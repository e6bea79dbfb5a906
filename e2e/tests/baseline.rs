//! A fresh baseline on the real control plane: a workload whose young pods are slow (the stand-in
//! kubelet's `slow-start` profile, 2.5× latency for a pod's first 40 s) fails a healthy change
//! judged against its long-running pods (no history), passes it with `baseline: fresh` (young
//! against young), and still rolls back a bad change with a fresh baseline; no baseline pod is
//! left after any outcome.
//!
//! Generated scenarios: regression tests of the mechanism, not evidence of verdict quality.

mod common;

use common::*;
use graygate::api::{ChangeRequestStatus, LABEL_BASELINE, Phase, Verdict};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use std::time::Duration;

/// The slowness of a young `slow-start` pod lasts this long.
const YOUNG: Duration = Duration::from_secs(40);

/// A change of `web` to `image`, judged every 5 s while its canary is young (the first two
/// batches bake 30 s, long enough for every metric to have its samples); `baseline` is
/// `control` or `fresh`. Every 5 s, not 3 s, for the reason `history.rs` gives: a 3 s point's p99
/// moves past the 100 ms bucket on one slow request, and the widened band let the young canary
/// pass against the long-running pods now and then.
fn change(ns: &str, name: &str, image: &str, baseline: &str) -> String {
    change_yaml(
        ns,
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: web}}
images: {{app: "{image}"}}
baseline: {baseline}
analysis: {{interval: 5s, warmup: 3s, failureLimit: 2}}
batches:
- {{replicas: 1, bake: 30s}}
- {{percent: 50, bake: 30s}}
- {{percent: 100, bake: 13s}}
"#
        ),
    )
}

async fn ended(w: &World, ns: &str, name: &str, phase: Phase) -> ChangeRequestStatus {
    let cr = w
        .wait_phase(ns, name, phase, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| {
            let logs = w.graygate_logs();
            let tail: Vec<&str> = logs.lines().rev().take(30).collect();
            panic!(
                "{name}: {e}\n--- graygate log tail ---\n{}",
                tail.join("\n")
            )
        });
    cr.status.unwrap()
}

fn finding<'a>(
    st: &'a ChangeRequestStatus,
    metric: &str,
    detector: &str,
) -> &'a graygate::api::Finding {
    st.batches[0]
        .findings
        .iter()
        .find(|f| f.metric == metric && f.detector == detector)
        .unwrap_or_else(|| panic!("no {metric} {detector} finding: {:#?}", st.batches[0]))
}

/// No pod and no Deployment of any baseline is left in `ns`.
async fn no_baseline_left(w: &World, ns: &str) {
    w.wait_for("every baseline pod gone", LONG, || async {
        let pods: Api<Pod> = Api::namespaced(w.client.clone(), ns);
        let left = pods
            .list(&ListParams::default().labels(LABEL_BASELINE))
            .await?
            .items;
        Ok(left.is_empty().then_some(()))
    })
    .await
    .unwrap();
    let all: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(w.client.clone(), ns);
    let names: Vec<String> = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert_eq!(names, ["web"], "only the workload is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_baseline_judges_young_against_young() {
    let ns = "b1";
    let w = world(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    w.apply(&deployment_yaml(ns, "web", 4).replace("shop/web:healthy", "shop/web:v0-slow-start"))
        .await
        .unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    tokio::time::sleep(YOUNG + Duration::from_secs(5)).await;

    // Against the long-running pods the young canary's latency fails a healthy change.
    w.apply(&change(ns, "plain", "shop/web:v1-slow-start", "control"))
        .await
        .unwrap();
    let st = ended(&w, ns, "plain", Phase::RolledBack).await;
    assert_eq!(st.current_batch, 1, "{:?}", st.message);
    let f = finding(&st, "latency-p99", "peers");
    assert_eq!(f.outcome, Some(Verdict::Fail), "{f:#?}");
    assert_eq!(f.groups, "change vs control");
    wait_deployment_ready(&w, ns, "web", 4).await;
    tokio::time::sleep(YOUNG).await;

    // With a fresh baseline, as young as the canary, the same kind of change passes, and the
    // evidence shows how it compared with the long-running pods.
    let (recorder, pods) = record_pods(&w, ns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<String> = pods.lock().unwrap().keys().cloned().collect();
    w.apply(&change(ns, "fresh", "shop/web:v2-slow-start", "fresh"))
        .await
        .unwrap();
    w.wait_for("the baseline beside the canary", LONG, || async {
        let pods: Api<Pod> = Api::namespaced(w.client.clone(), ns);
        let n = pods
            .list(&ListParams::default().labels(&format!("{LABEL_BASELINE}=fresh")))
            .await?
            .items
            .len();
        Ok((n == 1).then_some(()))
    })
    .await
    .unwrap();
    let st = ended(&w, ns, "fresh", Phase::Succeeded).await;
    let f = finding(&st, "latency-p99", "peers");
    assert_ne!(f.outcome, Some(Verdict::Fail), "{f:#?}");
    assert_eq!(f.groups, "change vs fresh baseline", "{f:#?}");
    let second = finding(&st, "second reference", "medians");
    assert!(
        second
            .explanation
            .contains("long-running pod(s) still on the old template"),
        "{}",
        second.explanation
    );
    assert!(st.record.is_none(), "a baseline judgement leaves no record");
    no_baseline_left(&w, ns).await;
    // Churn: the baseline grows with the canary (1, then 2 pods) and goes at promotion (the
    // last batch is judged against the background, as without a baseline).
    recorder.abort();
    let seen = pods.lock().unwrap().clone();
    let count = |image: &str| {
        seen.iter()
            .filter(|(n, i)| *i == image && !before.contains(n))
            .count()
    };
    let (new_created, baseline_created) = (
        count("shop/web:v2-slow-start"),
        count("shop/web:v0-slow-start"),
    );
    println!(
        "pod churn: {new_created} new-template pods and {baseline_created} fresh-baseline pods created for a 4-pod Deployment"
    );
    assert_eq!(
        baseline_created, 2,
        "one baseline pod per canary pod: {seen:?}"
    );
    wait_deployment_ready(&w, ns, "web", 4).await;
    assert_eq!(
        image_of(&deployment(&w, ns, "web").await.unwrap()),
        "shop/web:v2-slow-start"
    );
    tokio::time::sleep(YOUNG).await;

    // A bad change fails against its fresh baseline too, and the baseline goes with it.
    w.apply(&change(ns, "bad", "shop/web:v3-errors", "fresh"))
        .await
        .unwrap();
    let st = ended(&w, ns, "bad", Phase::RolledBack).await;
    assert_eq!(st.current_batch, 1, "{:?}", st.message);
    assert!(
        st.batches[0]
            .findings
            .iter()
            .any(|f| f.metric == "error-ratio"
                && f.outcome == Some(Verdict::Fail)
                && f.groups.contains("fresh baseline")),
        "{:#?}",
        st.batches[0].findings
    );
    no_baseline_left(&w, ns).await;
    assert_eq!(
        image_of(&deployment(&w, ns, "web").await.unwrap()),
        "shop/web:v2-slow-start"
    );

    // And against the control, as always.
    wait_deployment_ready(&w, ns, "web", 4).await;
    w.apply(&change(ns, "bad-control", "shop/web:v4-errors", "control"))
        .await
        .unwrap();
    let st = ended(&w, ns, "bad-control", Phase::RolledBack).await;
    assert_eq!(st.current_batch, 1, "{:?}", st.message);
    assert!(
        st.batches[0]
            .findings
            .iter()
            .any(|f| f.metric == "error-ratio" && f.outcome == Some(Verdict::Fail)),
        "{:#?}",
        st.batches[0].findings
    );
}

/// A guarded Deployment whose policy asks for a fresh baseline: `kubectl set image` of a healthy
/// slow-start build passes against young pods of the old template, which are gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_change_is_judged_against_a_fresh_baseline() {
    let ns = "b2";
    let w = world_with_webhook(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    w.apply(&deployment_yaml(ns, "web", 4).replace("shop/web:healthy", "shop/web:v0-slow-start"))
        .await
        .unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    w.apply(&format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web-policy, namespace: {ns}}}
spec:
  workloads: {{names: [web]}}
  change:
    baseline: fresh
    analysis: {{interval: 3s, warmup: 3s, failureLimit: 2}}
    batches:
    - {{replicas: 1, bake: 30s}}
    - {{percent: 100, bake: 9s}}
"#
    ))
    .await
    .unwrap();
    wait_labelled_guarded(&w, ns, "web").await;
    tokio::time::sleep(YOUNG + Duration::from_secs(5)).await;

    admin_set_image(&w, ns, "web", "shop/web:v1-slow-start");
    let name = generated_change(&w, ns, &[]).await;
    let st = ended(&w, ns, &name, Phase::Succeeded).await;
    let f = finding(&st, "latency-p99", "peers");
    assert_ne!(f.outcome, Some(Verdict::Fail), "{f:#?}");
    assert_eq!(f.groups, "change vs fresh baseline", "{f:#?}");
    no_baseline_left(&w, ns).await;
    wait_deployment_ready(&w, ns, "web", 4).await;
}
