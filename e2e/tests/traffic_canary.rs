//! Traffic-weighted canaries (`spec.traffic.gatewayAPI`) on the real control plane, with the
//! Gateway API CRDs installed and the stand-in data plane splitting the world's requests by the
//! `HTTPRoute` as a conformant gateway does. One world, in order:
//! - a ChangeRequest naming a route that does not exist is Invalid, naming the field;
//! - a healthy change: the canary's share of the requests its pods serve matches the weight at
//!   each batch (5%, then 50%), the testers' header reaches the canary only, a graygate restart
//!   keeps the weights, weights edited by someone else pause the change until a resume;
//! - a bad change at 5% is caught and rolled back with the canary's weight at 0 before its pods
//!   go;
//! - throughout, no request is sent to a backend without a Ready pod.

mod common;

use common::*;
use graygate::api::{Phase, Verdict};
use graygate_e2e::dataplane::{self, Traffic};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DynamicObject, ListParams};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const NS: &str = "tw";

fn routes(w: &World, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(w.client.clone(), ns, &dataplane::http_routes())
}

/// The (stable, canary) weights of the route's rule that sends to both Services, and whether
/// graygate's header rule is there.
async fn weights_in(w: &World, ns: &str) -> ((i64, i64), bool) {
    let r = routes(w, ns).get("web").await.unwrap();
    let rules = r.data["spec"]["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let rule = rules
        .iter()
        .find(|r| r["name"].as_str() != Some("graygate-canary"))
        .unwrap();
    let weight = |name: &str| {
        rule["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map(|b| b["weight"].as_i64().unwrap_or(1))
            .unwrap()
    };
    let header = rules
        .iter()
        .any(|r| r["name"].as_str() == Some("graygate-canary"));
    ((weight("web"), weight("web-canary")), header)
}

async fn weights(w: &World) -> ((i64, i64), bool) {
    weights_in(w, NS).await
}

async fn wait_weights_in(w: &World, ns: &str, want: (i64, i64)) {
    w.wait_for(&format!("route weights {want:?}"), LONG, || async {
        Ok((weights_in(w, ns).await.0 == want).then_some(()))
    })
    .await
    .unwrap();
}

async fn wait_weights(w: &World, want: (i64, i64)) {
    wait_weights_in(w, NS, want).await
}

/// Requests served so far by each pod `selector` picks.
async fn served(w: &World, ns: &str, selector: &str) -> std::collections::BTreeMap<String, u64> {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), ns);
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            Some((name.clone(), w.apps.served(ns, &name)?))
        })
        .collect()
}

/// Requests the pods of each selector (stable, canary) served over `secs` seconds (pods that
/// ran throughout).
async fn measure_selectors(w: &World, ns: &str, selectors: [&str; 2], secs: u64) -> (u64, u64) {
    let (s0, c0) = (
        served(w, ns, selectors[0]).await,
        served(w, ns, selectors[1]).await,
    );
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (s1, c1) = (
        served(w, ns, selectors[0]).await,
        served(w, ns, selectors[1]).await,
    );
    let grown = |a: &std::collections::BTreeMap<String, u64>,
                 b: &std::collections::BTreeMap<String, u64>| {
        b.iter()
            .filter_map(|(k, v)| a.get(k).map(|v0| v.saturating_sub(*v0)))
            .sum::<u64>()
    };
    (grown(&s0, &s1), grown(&c0, &c1))
}

/// Requests the stable and the canary pods of `change` served over `secs` seconds.
async fn measure(w: &World, change: &str, secs: u64) -> (u64, u64) {
    let canary = format!("graygate.io/change={change}");
    measure_selectors(w, NS, ["app=web,!graygate.io/change", &canary], secs).await
}

async fn selector_in(
    w: &World,
    ns: &str,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let svc: Api<Service> = Api::namespaced(w.client.clone(), ns);
    svc.get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap_or_default()
}

async fn selector(w: &World, name: &str) -> std::collections::BTreeMap<String, String> {
    selector_in(w, NS, name).await
}

/// A Service's selector as a label selector string.
async fn selector_string(w: &World, ns: &str, name: &str) -> String {
    selector_in(w, ns, name)
        .await
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The Deployment `web` of 4 pods in `ns`, its Service `web`, the Gateway API CRDs, and the
/// route as Git has it: everything to the stable Service, the canary Service (which graygate
/// creates) at 0.
async fn web_behind_a_route(w: &World, ns: &str) {
    w.apply(&deployment_yaml(ns, "web", 4)).await.unwrap();
    w.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"#
    ))
    .await
    .unwrap();
    install_gateway_api(w, ns).await;
    w.apply(&format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {ns}}}
spec:
  parentRefs: [{{name: shop-gateway}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs:
    - {{name: web, port: 80, weight: 100}}
    - {{name: web-canary, port: 80, weight: 0}}
"#
    ))
    .await
    .unwrap();
    wait_deployment_ready(w, ns, "web", 4).await;
}

/// The stand-in data plane at 400 users' requests a second, and a watcher that records every
/// moment requests for `ns/web` go to a backend without a Ready pod, until `stop`.
async fn serve_and_watch(
    w: &World,
    ns: &str,
    stop: Arc<AtomicBool>,
) -> (
    Arc<dataplane::DataPlane>,
    Vec<tokio::task::JoinHandle<()>>,
    Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let (dp, tasks) = dataplane::start(
        w.client.clone(),
        w.apps.clone(),
        Traffic {
            users_rps: 400.0,
            testers_rps: 0.0,
        },
    )
    .await;
    let lost = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let watcher = {
        let (dp, lost, key) = (dp.clone(), lost.clone(), format!("{ns}/web"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rps) = dp.failing().get(&key) {
                    lost.lock().unwrap().push(format!("{rps:.1} rps"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    (dp, tasks, lost, watcher)
}

/// Stop the watcher of [`serve_and_watch`]; no request went to a backend without a Ready pod.
async fn nothing_lost(
    stop: &AtomicBool,
    watcher: tokio::task::JoinHandle<()>,
    lost: &std::sync::Mutex<Vec<String>>,
) {
    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    let lost = lost.lock().unwrap();
    assert!(
        lost.is_empty(),
        "requests went to a backend with no Ready pod: {lost:?}"
    );
}

/// Once the pods `selector` picks have been seen and are all going: the canary's weight on the
/// route at that moment (None if `stop` came first).
fn weight_when_pods_go(
    w: &World,
    ns: &str,
    selector: &str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Option<i64>> {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), ns);
    let routes = routes(w, ns);
    let selector = selector.to_string();
    tokio::spawn(async move {
        let mut had_pods = false;
        while !stop.load(Ordering::Relaxed) {
            let route = routes.get("web").await.ok();
            let live = pods
                .list(&ListParams::default().labels(&selector))
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count()
                })
                .ok();
            match (live, route) {
                (Some(n), _) if n > 0 => had_pods = true,
                (Some(_), Some(r)) if had_pods => {
                    return Some(
                        r.data["spec"]["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|r| r["name"].as_str() != Some("graygate-canary"))
                            .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
                            .find(|b| b["name"] == "web-canary")
                            .and_then(|b| b["weight"].as_i64())
                            .unwrap_or(1),
                    );
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    })
}

fn change(name: &str, image: &str, route: &str, batches: &str) -> String {
    change_yaml(
        NS,
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: web}}
images: {{app: "{image}"}}
traffic:
  gatewayAPI:
    httpRoute: {route}
    stableService: web
    canaryService: web-canary
    header: {{name: x-canary, value: always}}
analysis: {{interval: 5s, failureLimit: 2}}
batches: {batches}
"#
        ),
    )
}

/// Apply the change `name` (route `web`) and wait until it reaches `phase`; its status.
async fn run_change(
    w: &World,
    name: &str,
    image: &str,
    batches: &str,
    phase: Phase,
) -> graygate::api::ChangeRequestStatus {
    w.apply(&change(name, image, "web", batches)).await.unwrap();
    let st = w
        .wait_phase(NS, name, phase, Duration::from_secs(180))
        .await
        .unwrap()
        .status
        .unwrap();
    println!("{name}: {:?} {:?}", st.reason, st.message);
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_weights_batch_by_batch_and_a_bad_canary_loses_them_before_its_pods() {
    let w = world(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    web_behind_a_route(&w, NS).await;
    // No request may reach a backend without a Ready pod, at any moment of the scenario.
    let stop = Arc::new(AtomicBool::new(false));
    let (dp, _tasks, lost, watcher) = serve_and_watch(&w, NS, stop.clone()).await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // A route that does not exist: Invalid, naming the field, and nothing is touched.
    w.apply(&change(
        "nope",
        "shop/web:healthy-v2",
        "missing",
        "[{replicas: 1, traffic: 5%}, {percent: 100}]",
    ))
    .await
    .unwrap();
    let invalid = w
        .wait_phase(NS, "nope", Phase::Invalid, LONG)
        .await
        .unwrap();
    let msg = invalid.status.unwrap().message.unwrap_or_default();
    assert!(
        msg.contains("spec.traffic.gatewayAPI.httpRoute") && msg.contains("missing"),
        "{msg}"
    );
    assert!(deployment(&w, NS, "web-canary-nope").await.is_none());
    assert_eq!(weights(&w).await, ((100, 0), false));

    // A healthy change: 1 pod at 5%, then 2 pods at 50%, then all.
    w.apply(&change(
        "v2",
        "shop/web:healthy-v2",
        "web",
        "[{replicas: 1, traffic: 5%, bake: 40s}, {percent: 50, traffic: 50%, bake: 30s}, {percent: 100, bake: 20s}]",
    ))
    .await
    .unwrap();
    wait_weights(&w, (95, 5)).await;
    assert!(weights(&w).await.1, "the header rule is there from batch 1");
    assert!(
        selector(&w, "web").await.contains_key("pod-template-hash"),
        "the stable Service is pinned to the stable pods"
    );
    let canary_sel = selector(&w, "web-canary").await;
    assert_eq!(
        canary_sel.get("graygate.io/change").map(String::as_str),
        Some("v2")
    );
    // The stable side keeps all four pods for its 95%.
    assert_eq!(
        deployment(&w, NS, "web")
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(4)
    );
    let (stable, canary) = measure(&w, "v2", 8).await;
    let share = canary as f64 / (stable + canary) as f64;
    println!("batch 1 (95/5): stable {stable}, canary {canary}, share {share:.4}");
    assert!((share - 0.05).abs() < 0.015, "{share}");
    assert!(stable + canary > 2500, "{stable} + {canary}");
    // The testers' header reaches the canary only.
    dp.set_traffic(Traffic {
        users_rps: 0.0,
        testers_rps: 50.0,
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stable, canary) = measure(&w, "v2", 3).await;
    println!("testers: stable {stable}, canary {canary}");
    assert_eq!(stable, 0);
    assert!(canary > 80, "{canary}");
    dp.set_traffic(Traffic {
        users_rps: 400.0,
        testers_rps: 0.0,
    });

    // A restart mid-batch keeps the weights: not one write in between, and the batch goes on.
    let version = routes(&w, NS)
        .get("web")
        .await
        .unwrap()
        .metadata
        .resource_version;
    w.kill_graygate();
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.start_graygate(&[]).unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(weights(&w).await.0, (95, 5));
    assert_eq!(
        routes(&w, NS)
            .get("web")
            .await
            .unwrap()
            .metadata
            .resource_version,
        version,
        "the restarted graygate found the weights as they were"
    );

    wait_weights(&w, (50, 50)).await;
    let (stable, canary) = measure(&w, "v2", 6).await;
    let share = canary as f64 / (stable + canary) as f64;
    println!("batch 2 (50/50): stable {stable}, canary {canary}, share {share:.4}");
    assert!((share - 0.5).abs() < 0.04, "{share}");

    // Someone else's weights: the change pauses and leaves them; a resume sets graygate's.
    let mut route = routes(&w, NS).get("web").await.unwrap();
    let rules = route.data["spec"]["rules"].as_array_mut().unwrap();
    let rule = rules
        .iter_mut()
        .find(|r| r["name"].as_str() != Some("graygate-canary"))
        .unwrap();
    rule["backendRefs"][0]["weight"] = 70.into();
    rule["backendRefs"][1]["weight"] = 30.into();
    routes(&w, NS)
        .replace("web", &Default::default(), &route)
        .await
        .unwrap();
    let paused = w.wait_phase(NS, "v2", Phase::Paused, LONG).await.unwrap();
    let st = paused.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("TrafficChanged"));
    let msg = st.message.unwrap_or_default();
    assert!(msg.contains("changed by someone else"), "{msg}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(weights(&w).await.0, (70, 30), "no fight over the weights");
    let (ok, out) = kubectl(
        &w,
        &["annotate", "chg", "v2", "-n", NS, "graygate.io/resume=1"],
        None,
    );
    assert!(ok, "{out}");
    wait_weights(&w, (50, 50)).await;

    let done = w
        .wait_phase(NS, "v2", Phase::Succeeded, Duration::from_secs(240))
        .await
        .unwrap();
    let st = done.status.unwrap();
    let shares: Vec<Option<i32>> = st.batches.iter().map(|b| b.traffic).collect();
    assert_eq!(shares, vec![Some(5), Some(50), Some(100)]);
    assert_eq!(weights(&w).await, ((100, 0), false));
    assert!(!selector(&w, "web").await.contains_key("pod-template-hash"));
    assert_eq!(
        image_of(&deployment(&w, NS, "web").await.unwrap()),
        "shop/web:healthy-v2"
    );
    wait_deployment_ready(&w, NS, "web", 4).await;

    // A bad change at 5%: caught, and its weight is 0 before any of its pods goes.
    let sampler = weight_when_pods_go(&w, NS, "graygate.io/change=bad", stop.clone());
    let st = run_change(
        &w,
        "bad",
        "shop/web:errors",
        "[{replicas: 1, traffic: 5%, bake: 60s}, {percent: 100, bake: 20s}]",
        Phase::RolledBack,
    )
    .await;
    assert_eq!(st.reason.as_deref(), Some("AnalysisFailed"));
    assert_eq!(st.current_batch, 1);
    assert_eq!(st.batches[0].traffic, Some(5));
    assert_eq!(st.batches[0].verdict, Some(Verdict::Fail));
    assert!(
        st.batches[0]
            .findings
            .iter()
            .any(|f| f.metric == "error-ratio" && f.outcome == Some(Verdict::Fail)),
        "{:#?}",
        st.batches[0].findings
    );
    assert_eq!(
        sampler.await.unwrap(),
        Some(0),
        "the canary's weight was 0 when its pods went"
    );
    assert_eq!(weights(&w).await, ((100, 0), false));
    assert!(!selector(&w, "web").await.contains_key("pod-template-hash"));
    assert_eq!(
        image_of(&deployment(&w, NS, "web").await.unwrap()),
        "shop/web:healthy-v2"
    );

    // Too few requests to judge: 1% of 100 requests a second is about 20 requests in a 20 s
    // bake, below the 50 the error ratio needs (5 × minSamples). No silent pass: the batch ends
    // inconclusive and the change pauses, its evidence counting the requests; an abort then
    // takes the weight back to 0 before the pods go.
    dp.set_traffic(Traffic {
        users_rps: 100.0,
        testers_rps: 0.0,
    });
    let st = run_change(
        &w,
        "quiet",
        "shop/web:healthy-v3",
        "[{replicas: 1, traffic: 1%, bake: 20s}, {percent: 100, bake: 20s}]",
        Phase::Paused,
    )
    .await;
    assert_eq!(st.reason.as_deref(), Some("Inconclusive"));
    assert_eq!(st.batches[0].traffic, Some(1));
    assert_eq!(st.batches[0].verdict, Some(Verdict::Inconclusive));
    let evidence = st.batches[0]
        .findings
        .iter()
        .find(|f| f.metric == "error-ratio")
        .map(|f| f.explanation.clone())
        .unwrap_or_default();
    println!("1% canary, error ratio: {evidence}");
    assert!(
        evidence.contains("change and") && evidence.contains("each needed"),
        "{:#?}",
        st.batches[0].findings
    );
    assert_eq!(weights(&w).await.0, (99, 1));
    let (ok, out) = kubectl(
        &w,
        &[
            "annotate",
            "chg",
            "quiet",
            "-n",
            NS,
            "graygate.io/abort=too-quiet",
        ],
        None,
    );
    assert!(ok, "{out}");
    w.wait_phase(NS, "quiet", Phase::RolledBack, LONG)
        .await
        .unwrap();
    assert_eq!(weights(&w).await, ((100, 0), false));
    assert_eq!(
        image_of(&deployment(&w, NS, "web").await.unwrap()),
        "shop/web:healthy-v2"
    );

    nothing_lost(&stop, watcher, &lost).await;
    assert_within_rbac(&w);
}

/// A ChangePolicy's `change.traffic`: every change of a guarded Deployment, whoever made it, is
/// traffic-weighted through the route and Services its names give (`$(workload)`). One world:
/// - a policy with traffic that may guard StatefulSets is invalid, naming `spec.workloads.kinds`;
/// - `kubectl set image` to a bad image: the held change's canary (a ReplicaSet beside the old
///   pods) gets 10% of the requests, is caught, and its weight is 0 before its pods go;
/// - `kubectl set image` to a healthy image: the canary's pods serve 10% of the requests, then
///   the change is released with the weights back at 100/0 and the stable Service unpinned;
/// - throughout, no request is sent to a backend without a Ready pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_weights_the_requests_of_every_guarded_change() {
    const NS: &str = "twg";
    let w = world_with_webhook(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    web_behind_a_route(&w, NS).await;
    let policy = |name: &str, kinds: &str, names: &str| {
        format!(
            r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  workloads: {{{kinds}names: [{names}]}}
  change:
    traffic:
      gatewayAPI: {{httpRoute: $(workload), stableService: $(workload), canaryService: $(workload)-canary}}
    analysis: {{interval: 5s, failureLimit: 2}}
    batches:
    - {{replicas: 1, traffic: 10%, bake: 40s}}
    - {{percent: 100, bake: 20s}}
"#
        )
    };
    // Traffic shares work for Deployments only: a policy that may guard StatefulSets is invalid.
    w.apply(&policy("any-kind", "", "api")).await.unwrap();
    let policies: Api<graygate::api::ChangePolicy> = Api::namespaced(w.client.clone(), NS);
    let msg = w
        .wait_for("the any-kind policy is judged", LONG, || async {
            Ok(policies
                .get("any-kind")
                .await?
                .status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"))
                .filter(|c| c.status == "False")
                .map(|c| c.message))
        })
        .await
        .unwrap();
    assert!(msg.contains("spec.workloads.kinds"), "{msg}");

    w.apply(&policy("web-policy", "kinds: [Deployment], ", "web"))
        .await
        .unwrap();
    wait_labelled_guarded(&w, NS, "web").await;
    let stop = Arc::new(AtomicBool::new(false));
    let (_dp, _tasks, lost, watcher) = serve_and_watch(&w, NS, stop.clone()).await;
    let weights = || async { weights_in(&w, NS).await.0 };
    let wait_weights = |want| wait_weights_in(&w, NS, want);
    tokio::time::sleep(Duration::from_secs(20)).await;

    // A bad image: held, rolled out at 10% of the requests, caught, its weight 0 before its pods go.
    admin_set_image(&w, NS, "web", "shop/web:errors");
    let bad = generated_change(&w, NS, &[]).await;
    wait_weights((90, 10)).await;
    let canary_selector = selector_string(&w, NS, "web-canary").await;
    assert!(
        canary_selector.contains("pod-template-hash="),
        "the canary Service selects the canary ReplicaSet's pods: {canary_selector}"
    );
    let sampler = weight_when_pods_go(&w, NS, &canary_selector, stop.clone());
    let rolled = w
        .wait_phase(NS, &bad, Phase::RolledBack, Duration::from_secs(180))
        .await
        .unwrap();
    let st = rolled.status.unwrap();
    assert_eq!(
        st.reason.as_deref(),
        Some("AnalysisFailed"),
        "{:?}",
        st.message
    );
    assert_eq!(st.batches[0].traffic, Some(10));
    assert_eq!(
        rolled.spec.traffic.unwrap().gateway_api.canary_service,
        "web-canary"
    );
    assert_eq!(
        sampler.await.unwrap(),
        Some(0),
        "the canary's weight was 0 when its pods went"
    );
    assert_eq!(weights().await, (100, 0));
    w.wait_for("the stable Service unpinned", LONG, || async {
        Ok((!selector_string(&w, NS, "web")
            .await
            .contains("pod-template-hash"))
        .then_some(()))
    })
    .await
    .unwrap();

    // A healthy image: its canary serves 10% of the requests, then it is released.
    admin_set_image(&w, NS, "web", "shop/web:healthy-v2");
    let good = generated_change(&w, NS, std::slice::from_ref(&bad)).await;
    wait_weights((90, 10)).await;
    let stable_sel = selector_string(&w, NS, "web").await;
    assert!(stable_sel.contains("pod-template-hash="), "{stable_sel}");
    let canary_sel = selector_string(&w, NS, "web-canary").await;
    let (stable, canary) = measure_selectors(&w, NS, [&stable_sel, &canary_sel], 8).await;
    let share = canary as f64 / (stable + canary) as f64;
    println!("guarded batch 1 (90/10): stable {stable}, canary {canary}, share {share:.4}");
    assert!((share - 0.10).abs() < 0.02, "{share}");
    assert!(stable + canary > 2500, "{stable} + {canary}");
    let done = w
        .wait_phase(NS, &good, Phase::Succeeded, Duration::from_secs(240))
        .await
        .unwrap();
    let shares: Vec<Option<i32>> = done
        .status
        .unwrap()
        .batches
        .iter()
        .map(|b| b.traffic)
        .collect();
    assert_eq!(shares, vec![Some(10), Some(100)]);
    assert_eq!(weights().await, (100, 0));
    assert!(
        !selector_string(&w, NS, "web")
            .await
            .contains("pod-template-hash")
    );
    wait_deployment_ready(&w, NS, "web", 4).await;
    assert_eq!(
        image_of(&deployment(&w, NS, "web").await.unwrap()),
        "shop/web:healthy-v2"
    );

    nothing_lost(&stop, watcher, &lost).await;
    assert_within_rbac(&w);
}
