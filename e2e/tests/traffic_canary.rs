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

fn routes(w: &World) -> Api<DynamicObject> {
    Api::namespaced_with(w.client.clone(), NS, &dataplane::http_routes())
}

/// The (stable, canary) weights of the route's rule that sends to both Services, and whether
/// graygate's header rule is there.
async fn weights(w: &World) -> ((i64, i64), bool) {
    let r = routes(w).get("web").await.unwrap();
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

async fn wait_weights(w: &World, want: (i64, i64)) {
    w.wait_for(&format!("route weights {want:?}"), LONG, || async {
        Ok((weights(w).await.0 == want).then_some(()))
    })
    .await
    .unwrap();
}

/// Requests served so far by each pod `selector` picks.
async fn served(w: &World, selector: &str) -> std::collections::BTreeMap<String, u64> {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    pods.list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            Some((name.clone(), w.apps.served(NS, &name)?))
        })
        .collect()
}

/// Requests the stable and the canary pods of `change` served over `secs` seconds (pods that
/// ran throughout).
async fn measure(w: &World, change: &str, secs: u64) -> (u64, u64) {
    let stable = "app=web,!graygate.io/change";
    let canary = format!("graygate.io/change={change}");
    let (s0, c0) = (served(w, stable).await, served(w, &canary).await);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (s1, c1) = (served(w, stable).await, served(w, &canary).await);
    let grown = |a: &std::collections::BTreeMap<String, u64>,
                 b: &std::collections::BTreeMap<String, u64>| {
        b.iter()
            .filter_map(|(k, v)| a.get(k).map(|v0| v.saturating_sub(*v0)))
            .sum::<u64>()
    };
    (grown(&s0, &s1), grown(&c0, &c1))
}

async fn selector(w: &World, name: &str) -> std::collections::BTreeMap<String, String> {
    let svc: Api<Service> = Api::namespaced(w.client.clone(), NS);
    svc.get(name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .selector
        .unwrap_or_default()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_follow_the_weights_batch_by_batch_and_a_bad_canary_loses_them_before_its_pods() {
    let w = world(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    w.apply(&deployment_yaml(NS, "web", 4)).await.unwrap();
    w.apply(&format!(
        r#"
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {NS}}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"#
    ))
    .await
    .unwrap();
    install_gateway_api(&w, NS).await;
    // As Git has it: everything to the stable Service, the canary Service (which graygate
    // creates) at 0.
    w.apply(&format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {NS}}}
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
    wait_deployment_ready(&w, NS, "web", 4).await;
    let (dp, _tasks) = dataplane::start(
        w.client.clone(),
        w.apps.clone(),
        Traffic {
            users_rps: 400.0,
            testers_rps: 0.0,
        },
    )
    .await;
    // No request may reach a backend without a Ready pod, at any moment of the scenario.
    let lost = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (dp, lost, stop) = (dp.clone(), lost.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rps) = dp.failing().get(&format!("{NS}/web")) {
                    lost.lock().unwrap().push(format!("{rps:.1} rps"));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
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
    let version = routes(&w)
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
        routes(&w)
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
    let mut route = routes(&w).get("web").await.unwrap();
    let rules = route.data["spec"]["rules"].as_array_mut().unwrap();
    let rule = rules
        .iter_mut()
        .find(|r| r["name"].as_str() != Some("graygate-canary"))
        .unwrap();
    rule["backendRefs"][0]["weight"] = 70.into();
    rule["backendRefs"][1]["weight"] = 30.into();
    routes(&w)
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
    let canary_gone_with_weight = Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let sampler = {
        let (client, seen, stop) = (
            w.client.clone(),
            canary_gone_with_weight.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
            let routes: Api<DynamicObject> =
                Api::namespaced_with(client, NS, &dataplane::http_routes());
            let mut had_canary = false;
            while !stop.load(Ordering::Relaxed) {
                let route = routes.get("web").await.ok();
                let canary_pods = pods
                    .list(&ListParams::default().labels("graygate.io/change=bad"))
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .filter(|p| p.metadata.deletion_timestamp.is_none())
                            .count()
                    })
                    .unwrap_or(0);
                if canary_pods > 0 {
                    had_canary = true;
                } else if had_canary && let Some(r) = route {
                    // The canary's pods are going: what weight did the route give it then?
                    let w = r.data["spec"]["rules"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["name"].as_str() != Some("graygate-canary"))
                        .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
                        .find(|b| b["name"] == "web-canary")
                        .and_then(|b| b["weight"].as_i64())
                        .unwrap_or(1);
                    seen.lock().unwrap().push(w);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    w.apply(&change(
        "bad",
        "shop/web:errors",
        "web",
        "[{replicas: 1, traffic: 5%, bake: 60s}, {percent: 100, bake: 20s}]",
    ))
    .await
    .unwrap();
    let rolled = w
        .wait_phase(NS, "bad", Phase::RolledBack, Duration::from_secs(180))
        .await
        .unwrap();
    let st = rolled.status.unwrap();
    assert_eq!(
        st.reason.as_deref(),
        Some("AnalysisFailed"),
        "{:?}",
        st.message
    );
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
    sampler.await.unwrap();
    assert_eq!(
        *canary_gone_with_weight.lock().unwrap(),
        vec![0],
        "the canary's weight was 0 when its pods went"
    );
    assert_eq!(weights(&w).await, ((100, 0), false));
    assert!(!selector(&w, "web").await.contains_key("pod-template-hash"));
    assert_eq!(
        image_of(&deployment(&w, NS, "web").await.unwrap()),
        "shop/web:healthy-v2"
    );

    stop.store(true, Ordering::Relaxed);
    watcher.await.unwrap();
    assert!(
        lost.lock().unwrap().is_empty(),
        "requests went to a backend with no Ready pod: {:?}",
        lost.lock().unwrap()
    );
    assert_within_rbac(&w);
}
