//! The stand-in data plane splits the world's traffic by the `HTTPRoute` weights and header
//! matches on the real API server, as a conformant gateway does: the requests each pod's
//! application serves follow the weights, and the testers' header reaches the canary only.

mod common;

use common::{deployment_yaml, install_gateway_api, wait_deployment_ready};
use graygate_e2e::dataplane::{self, Traffic};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

const NS: &str = "traffic";

/// Requests served so far by the pods of `app`.
async fn served(w: &World, app: &str) -> u64 {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    pods.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|p| w.apps.served(NS, p.metadata.name.as_deref()?))
        .sum()
}

/// Requests served by the stable and the canary pods over `secs` seconds.
async fn measure(w: &World, secs: u64) -> (u64, u64) {
    let (s0, c0) = (served(w, "web-stable").await, served(w, "web-canary").await);
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (s1, c1) = (served(w, "web-stable").await, served(w, "web-canary").await);
    (s1 - s0, c1 - c0)
}

async fn set_weights(w: &World, stable: i64, canary: i64) {
    let routes: Api<kube::api::DynamicObject> =
        Api::namespaced_with(w.client.clone(), NS, &dataplane::http_routes());
    let mut route = routes.get("web").await.unwrap();
    route.data["spec"]["rules"][1]["backendRefs"][0]["weight"] = stable.into();
    route.data["spec"]["rules"][1]["backendRefs"][1]["weight"] = canary.into();
    routes
        .replace("web", &Default::default(), &route)
        .await
        .unwrap();
    // The data plane re-reads routes five times a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_and_header_matches_split_the_requests_pods_serve() {
    let w = World::start(WorldOptions::default()).await.unwrap();
    let mut objects = String::new();
    for (name, replicas) in [("web-stable", 3), ("web-canary", 1)] {
        objects.push_str("---\n");
        objects.push_str(&deployment_yaml(NS, name, replicas));
        objects.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {NS}}}
spec:
  selector: {{app: {name}}}
  ports: [{{port: 80}}]
"#
        ));
    }
    w.apply(&objects).await.unwrap();
    // The CRD is established within a few seconds of its creation.
    install_gateway_api(&w, NS).await;
    w.apply(&format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: {NS}}}
spec:
  parentRefs: [{{name: shop-gateway}}]
  rules:
  - matches: [{{headers: [{{name: x-canary, value: always}}]}}]
    backendRefs: [{{name: web-canary, port: 80}}]
  - backendRefs:
    - {{name: web-stable, port: 80, weight: 95}}
    - {{name: web-canary, port: 80, weight: 5}}
"#
    ))
    .await
    .unwrap();
    wait_deployment_ready(&w, NS, "web-stable", 3).await;
    wait_deployment_ready(&w, NS, "web-canary", 1).await;
    let (dp, _tasks) = dataplane::start(
        w.client.clone(),
        w.apps.clone(),
        Traffic {
            users_rps: 400.0,
            testers_rps: 0.0,
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 95/5: about 4,000 requests in 10 s, the canary's share within 1.5 points of 5% (its
    // standard deviation is about 0.35 points).
    let (stable, canary) = measure(&w, 10).await;
    let share = canary as f64 / (stable + canary) as f64;
    println!("95/5: stable {stable}, canary {canary}, canary share {share:.4}");
    assert!((share - 0.05).abs() < 0.015, "{share}");
    assert!(stable + canary > 3000, "{stable} + {canary}");

    // 50/50: within 4 points (standard deviation about 1.1 points over 5 s).
    set_weights(&w, 50, 50).await;
    let (stable, canary) = measure(&w, 5).await;
    let share = canary as f64 / (stable + canary) as f64;
    println!("50/50: stable {stable}, canary {canary}, canary share {share:.4}");
    assert!((share - 0.5).abs() < 0.04, "{share}");

    // The testers' header reaches the canary only, even with its weight at 0.
    set_weights(&w, 100, 0).await;
    dp.set_traffic(Traffic {
        users_rps: 0.0,
        testers_rps: 50.0,
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (stable, canary) = measure(&w, 4).await;
    println!("testers only: stable {stable}, canary {canary}");
    assert_eq!(stable, 0);
    assert!(canary > 100, "{canary}");

    // With no Ready canary pod, the requests routed to it fail at the gateway.
    dp.set_traffic(Traffic {
        users_rps: 100.0,
        testers_rps: 10.0,
    });
    let d: Api<Deployment> = Api::namespaced(w.client.clone(), NS);
    d.patch(
        "web-canary",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 0}})),
    )
    .await
    .unwrap();
    let failing = w
        .wait_for(
            "the testers' requests to fail",
            Duration::from_secs(30),
            || async { Ok(dp.failing().get(&format!("{NS}/web")).copied()) },
        )
        .await
        .unwrap();
    assert!((failing - 10.0).abs() < 1e-6, "{failing}");
}
