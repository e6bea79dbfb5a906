//! End-to-end analysis scenarios: bad profiles are caught by metrics from a real Prometheus in
//! the first batch, a noisy but healthy change passes, and a Prometheus outage holds the change
//! (fail-closed) until Prometheus is back.

mod common;

use common::*;
use graygate::api::{Phase, Verdict};
use graygate_e2e::world::WorldOptions;
use std::time::Duration;

fn with_prometheus() -> WorldOptions {
    WorldOptions {
        prometheus: true,
        ..Default::default()
    }
}

/// Let the workload run for a while before the change, so its background window has data.
async fn let_it_run() {
    tokio::time::sleep(Duration::from_secs(20)).await;
}

/// A world with Prometheus, a 4-pod Deployment `web` in `ns`, run long enough to have a background.
async fn settled_world(ns: &str) -> graygate_e2e::world::World {
    let w = world(with_prometheus()).await;
    w.apply(&deployment_yaml(ns, "web", 4)).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    let_it_run().await;
    w
}

/// A two-batch change of `web` to `image`, judged every 5 s with `analysis_extra` added to the
/// analysis section (for example `, logs: {}`).
fn change_with(
    ns: &str,
    name: &str,
    image: &str,
    first_bake: &str,
    analysis_extra: &str,
) -> String {
    change_yaml(
        ns,
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: web}}
images: {{app: "{image}"}}
analysis: {{interval: 5s, failureLimit: 2{analysis_extra}}}
batches:
- {{replicas: 1, bake: {first_bake}}}
- {{percent: 100, bake: 10s}}
"#
        ),
    )
}

fn analysed_change(ns: &str, name: &str, image: &str, first_bake: &str) -> String {
    change_with(ns, name, image, first_bake, "")
}

async fn bad_change_is_caught_in_the_first_batch(ns: &str, image: &str, metric: &str) {
    let w = settled_world(ns).await;
    w.apply(&analysed_change(ns, "bad", image, "60s"))
        .await
        .unwrap();
    let cr = w
        .wait_phase(ns, "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(
        st.reason.as_deref(),
        Some("AnalysisFailed"),
        "{:?}",
        st.message
    );
    assert_eq!(st.current_batch, 1, "caught in the first batch");
    let b = &st.batches[0];
    assert_eq!(b.verdict, Some(Verdict::Fail));
    let failing: Vec<_> = b
        .findings
        .iter()
        .filter(|f| f.outcome == Some(Verdict::Fail))
        .collect();
    assert!(
        failing.iter().any(|f| f.metric == metric),
        "expected a failing {metric} finding, got {:#?}",
        b.findings
    );
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy");
    assert_eq!(d.spec.unwrap().replicas, Some(4));
    assert!(deployment(&w, ns, "web-canary-bad").await.is_none());

    // The evidence reads the same through `kubectl graygate status`.
    let out = std::process::Command::new(graygate_e2e::world::graygate_bin().unwrap())
        .args(["kubectl", "status", "bad", "-n", ns])
        .env("KUBECONFIG", &w.kubeconfig)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Phase:     RolledBack (AnalysisFailed)"),
        "{text}"
    );
    assert!(
        text.contains("Evidence (batch 1, last judgement Fail):"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.trim_start().starts_with(metric) && l.contains(" Fail ")),
        "no failing {metric} row in\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_caught_in_the_first_batch_and_rolled_back() {
    bad_change_is_caught_in_the_first_batch("a1", "shop/web:errors", "error-ratio").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_is_caught_in_the_first_batch_and_rolled_back() {
    bad_change_is_caught_in_the_first_batch("a2", "shop/web:latency", "latency-p99").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_but_healthy_change_passes() {
    let w = settled_world("a3").await;
    // Judged every 10 s, not 5 s: a `rate(…[5s])` point holds about 4 s of the one canary's
    // requests (often fewer when a scrape is late), so one request over 100 ms is over 1% of them
    // and moves its p99 from 0.097 s to 0.13–0.19 s, a far slot. This profile writes such a
    // request ten times as often as `healthy`, and two far slots failed it in CI. A 10 s point
    // holds about 200 requests, where it takes three.
    w.apply(&change_yaml(
        "a3",
        "noisy",
        r#"
target: {kind: Deployment, name: web}
images: {app: "shop/web:noisy-but-healthy"}
analysis: {interval: 10s, failureLimit: 2}
batches:
- {replicas: 1, bake: 60s}
- {percent: 100, bake: 30s}
"#,
    ))
    .await
    .unwrap();
    let cr = w
        .wait_phase("a3", "noisy", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert!(st.batches.iter().all(|b| b.verdict == Some(Verdict::Pass)));
    assert!(
        st.batches[0].judgements >= 3,
        "the batch was judged repeatedly: {}",
        st.batches[0].judgements
    );
    assert_eq!(
        image_of(&deployment(&w, "a3", "web").await.unwrap()),
        "shop/web:noisy-but-healthy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_outage_holds_the_change_until_it_is_back() {
    let w = settled_world("a4").await;
    w.apply(&analysed_change("a4", "v2", "shop/web:healthy-v2", "40s"))
        .await
        .unwrap();
    wait_batch(&w, "a4", "v2", 1, "judged once", |b| b.judgements >= 1).await;
    w.prometheus.lock().unwrap().as_mut().unwrap().stop();
    let paused = w.wait_phase("a4", "v2", Phase::Paused, LONG).await.unwrap();
    assert_eq!(
        paused.status.as_ref().unwrap().reason.as_deref(),
        Some("AnalysisError")
    );
    // Held: nothing is promoted while the analysis cannot run, even past the bake time.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let still = w.change_request("a4", "v2").await.unwrap().unwrap();
    assert_eq!(phase(&still), Phase::Paused);
    assert_eq!(still.status.as_ref().unwrap().current_batch, 1);
    assert_eq!(
        image_of(&deployment(&w, "a4", "web").await.unwrap()),
        "shop/web:healthy"
    );
    let prom = tokio::task::spawn_blocking({
        let mut guard = w.prometheus.lock().unwrap().take().unwrap();
        move || {
            guard.restart().unwrap();
            guard
        }
    })
    .await
    .unwrap();
    *w.prometheus.lock().unwrap() = Some(prom);
    let done = w
        .wait_phase("a4", "v2", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    let reasons = events_through(&w, "a4", "v2", "Succeeded").await;
    assert!(
        reasons.iter().any(|r| r == "Paused") && reasons.iter().any(|r| r == "Resumed"),
        "{reasons:?}"
    );
    assert!(
        done.status
            .unwrap()
            .batches
            .iter()
            .all(|b| b.verdict == Some(Verdict::Pass))
    );
}

fn log_change(ns: &str, name: &str, image: &str, first_bake: &str) -> String {
    change_with(ns, name, image, first_bake, ", logs: {}")
}

async fn log_anomaly_is_caught_in_the_first_batch(
    ns: &str,
    image: &str,
    detector: &str,
    template_part: &str,
) {
    let w = settled_world(ns).await;
    w.apply(&log_change(ns, "bad", image, "60s")).await.unwrap();
    let cr = w
        .wait_phase(ns, "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(st.current_batch, 1, "caught in the first batch");
    let b = &st.batches[0];
    assert_eq!(b.verdict, Some(Verdict::Fail));
    assert!(
        b.findings.iter().any(|f| f.detector == detector
            && f.metric.contains(template_part)
            && f.outcome == Some(Verdict::Fail)),
        "expected a failing {detector} finding on a template with {template_part:?}, got {:#?}",
        b.findings
    );
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy");
    assert_within_rbac(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_exception_in_the_logs_is_caught_in_the_first_batch() {
    log_anomaly_is_caught_in_the_first_batch(
        "l1",
        "shop/web:new-exception",
        "new-template",
        "IllegalStateException",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_surge_is_caught_in_the_first_batch() {
    log_anomaly_is_caught_in_the_first_batch("l2", "shop/web:log-surge", "surge", "slow call to")
        .await;
}

/// A healthy change has no log finding: with whole reads, and with reads the byte limit cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_change_with_varied_ids_has_no_log_finding() {
    let w = settled_world("l3").await;
    w.apply(&log_change("l3", "good", "shop/web:healthy-v2", "25s"))
        .await
        .unwrap();
    let cr = w
        .wait_phase("l3", "good", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    for b in cr.status.unwrap().batches {
        assert!(
            !b.findings
                .iter()
                .any(|f| f.detector == "new-template" || f.detector == "surge"),
            "batch {} has log findings: {:#?}",
            b.index,
            b.findings
        );
    }

    // Reads the byte limit cuts (#35): every pod logs ~3.5 KB/s, so 48 KiB covers ~14 s of the
    // control pods' two minutes before the change and of each judged window. The groups are
    // judged over what was read, so the same rates are no finding, and the evidence says so.
    wait_deployment_ready(&w, "l3", "web", 4).await;
    w.apply(&change_with(
        "l3",
        "cut",
        "shop/web:healthy-v3",
        "25s",
        ", logs: {maxBytesPerPod: 49152}",
    ))
    .await
    .unwrap();
    let cr = w
        .wait_phase("l3", "cut", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    let st = cr.status.unwrap();
    let b = &st.batches[0];
    let logs: Vec<_> = b
        .findings
        .iter()
        .filter(|f| matches!(f.detector.as_str(), "new-template" | "surge" | "byte limit"))
        .map(|f| (f.detector.as_str(), f.explanation.as_str()))
        .collect();
    println!("batch 1 log findings with a 48 KiB limit: {logs:#?}");
    assert!(
        !logs
            .iter()
            .any(|(d, _)| *d == "new-template" || *d == "surge"),
        "{logs:#?}"
    );
    let before = b
        .findings
        .iter()
        .find(|f| f.metric == "log reads" && f.groups == "before")
        .unwrap_or_else(|| panic!("no cut named: {:#?}", b.findings));
    assert!(
        before
            .explanation
            .starts_with("before logs cut at maxBytesPerPod (0.05 MiB) in ")
            && before.explanation.contains("of the hour before the change"),
        "{}",
        before.explanation
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_backtests_a_window_against_the_live_prometheus() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::{Api, ResourceExt};
    let w = world(with_prometheus()).await;
    // Three healthy pods and, beside them, one pod answering 10% errors: a past change to replay.
    let bad = deployment_yaml("b1", "bad", 1).replace("shop/web:healthy", "shop/web:errors");
    let (_, bad_only) = bad.split_once("---").unwrap();
    w.apply(&format!("{}---{bad_only}", deployment_yaml("b1", "web", 3)))
        .await
        .unwrap();
    wait_deployment_ready(&w, "b1", "web", 3).await;
    wait_deployment_ready(&w, "b1", "bad", 1).await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    let to = jiff::Timestamp::now();
    let from = to - jiff::SignedDuration::from_secs(20);
    let pods: Vec<Pod> = Api::<Pod>::namespaced(w.client.clone(), "b1")
        .list(&Default::default())
        .await
        .unwrap()
        .items;
    let names = |prefix: &str| {
        pods.iter()
            .map(|p| p.name_any())
            .filter(|n| n.starts_with(prefix))
            .collect::<Vec<_>>()
    };
    let (web, bad) = (names("web-"), names("bad-"));
    let spec = w.dir.path().join("analysis.yaml");
    std::fs::write(&spec, "interval: 5s\nminSamples: 5\n").unwrap();
    let url = w.prometheus_url().unwrap();
    let analyze = |change: &str, control: &str| {
        std::process::Command::new(graygate_e2e::world::graygate_bin().unwrap())
            .args([
                "analyze",
                "--prometheus",
                &url,
                "--namespace",
                "b1",
                "--change-pods",
                change,
                "--control-pods",
                control,
            ])
            .args([
                "--from",
                &from.to_string(),
                "--to",
                &to.to_string(),
                "--spec",
                spec.to_str().unwrap(),
            ])
            .output()
            .unwrap()
    };
    let out = analyze(&bad.join(","), &web.join(","));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("error-ratio") && text.contains("Fail"),
        "{text}"
    );
    let out = analyze(&web[0], &web[1..].join(","));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One demo-style change of `target` in `shop`: default analysis (built-in metrics and logs)
/// every 5 s, short bakes: each leaves at least two whole analysis intervals after the default
/// warm-up (a third of the bake), so that the final batch, which has no control pods left, can be
/// compared with the background over two slots, and one late scrape on a busy machine does not
/// leave the last judgement without data.
fn demo_change(name: &str, target: &str, image: &str) -> String {
    change_yaml(
        "shop",
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: {target}}}
images: {{app: "{image}"}}
analysis: {{interval: 5s, failureLimit: 2, logs: {{}}}}
batches:
- {{replicas: 1, bake: 20s}}
- {{percent: 50, bake: 16s}}
- {{percent: 100, bake: 20s}}
"#
        ),
    )
}

/// Wait until the change stops moving (Succeeded, RolledBack or Paused) and return its status.
async fn settle(w: &graygate_e2e::world::World, name: &str) -> graygate::api::ChangeRequestStatus {
    let cr = w
        .wait_for(
            &format!("ChangeRequest shop/{name} to settle"),
            Duration::from_secs(240),
            || async {
                let cr = w.change_request("shop", name).await?;
                Ok(cr.filter(|c| {
                    c.status.as_ref().is_some_and(|s| {
                        matches!(
                            s.phase,
                            Phase::Succeeded | Phase::RolledBack | Phase::Paused
                        )
                    })
                }))
            },
        )
        .await
        .unwrap();
    cr.status.unwrap()
}

/// The demo's two workloads each take ten healthy builds in a row (twenty changes in all, two at
/// a time) with the default analysis: no batch may fail. Then the demo's bad build (one request
/// in ten fails) is still rolled back in its first batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_healthy_changes_pass_and_the_bad_demo_change_is_still_caught() {
    let w = world(with_prometheus()).await;
    let workloads = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo/00-workloads.yaml"),
    )
    .unwrap();
    w.apply(&workloads).await.unwrap();
    wait_deployment_ready(&w, "shop", "catalog", 4).await;
    wait_deployment_ready(&w, "shop", "checkout", 4).await;
    wait_deployment_ready(&w, "shop", "cart", 4).await;
    let_it_run().await;
    // Twenty changes, run as three sequences side by side (one per workload of the demo): the
    // same twenty judgements in a third less time than two sequences of ten.
    let run = |target: &'static str, last: u32| {
        let w = &w;
        async move {
            let mut failed = Vec::new();
            for i in 2..=last {
                let name = format!("{target}-v{i}");
                w.apply(&demo_change(
                    &name,
                    target,
                    &format!("shop/{target}:healthy-v{i}"),
                ))
                .await
                .unwrap();
                let st = settle(w, &name).await;
                let bad_batches: Vec<_> = st
                    .batches
                    .iter()
                    .filter(|b| b.verdict == Some(Verdict::Fail) || b.consecutive_failures > 0)
                    .map(|b| (b.index, b.findings.clone()))
                    .collect();
                if st.phase != Phase::Succeeded || !bad_batches.is_empty() {
                    failed.push(format!(
                        "{name}: {} ({:?}) {:#?}",
                        st.phase.as_str(),
                        st.message,
                        bad_batches
                    ));
                }
            }
            failed
        }
    };
    let (a, b, c) = tokio::join!(run("catalog", 8), run("checkout", 8), run("cart", 7));
    let failed: Vec<String> = a.into_iter().chain(b).chain(c).collect();
    assert!(
        failed.is_empty(),
        "healthy changes that failed a judgement:\n{}",
        failed.join("\n")
    );

    w.apply(&demo_change(
        "checkout-bad",
        "checkout",
        "shop/checkout:errors",
    ))
    .await
    .unwrap();
    let st = settle(&w, "checkout-bad").await;
    assert_eq!(st.phase, Phase::RolledBack, "{:?}", st.message);
    assert_eq!(st.current_batch, 1, "caught in the first batch");
    assert!(
        st.batches[0]
            .findings
            .iter()
            .any(|f| f.metric == "error-ratio" && f.outcome == Some(Verdict::Fail)),
        "{:#?}",
        st.batches[0].findings
    );
}
