//! One unreadable ChangeRequest on the real control plane (stored under an older, looser schema:
//! `bake: ""`) must only affect itself: it is marked Invalid naming the problem, and a readable
//! change of the same workload in the same namespace still runs to the end.

use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::control_plane::{eventually, yaml};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use std::time::{Duration, Instant};

/// The CRD as an older graygate shipped it: durations without a minimum length.
fn loose_crd() -> CustomResourceDefinition {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("minLength");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(graygate::api::crd()).unwrap();
    strip(&mut v);
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_change_request_is_marked_invalid_and_stops_nothing_else() {
    let w = World::start(WorldOptions {
        install_crd: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let cp = &w.cp;
    let client = w.client.clone();
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &loose_crd())
        .await
        .unwrap();
    cp.deployment("shop", "web", 2, "shop/web:healthy")
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    eventually("web to be available", Duration::from_secs(60), || async {
        deployments
            .get("web")
            .await
            .is_ok_and(|d| d.status.and_then(|s| s.available_replicas) == Some(2))
    })
    .await;
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "shop",
        &ApiResource::erase::<ChangeRequest>(&()),
    );
    let change = |name: &str, bake: &str| -> DynamicObject {
        yaml(&format!(
            "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: {name}}}\nspec:\n  target: {{kind: Deployment, name: web}}\n  images: {{app: 'shop/web:{name}'}}\n  batches: [{{replicas: 1, bake: '{bake}'}}, {{percent: 100, bake: 1s}}]\n"
        ))
    };
    // The unreadable one first, so it would be ahead in line for the same workload.
    dynamic
        .create(&PostParams::default(), &change("poison", ""))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    dynamic
        .create(&PostParams::default(), &change("good", "1s"))
        .await
        .unwrap();

    let _op = w.operator("a", &[]).unwrap();
    let phase_of = |name: &'static str| {
        let dynamic = dynamic.clone();
        async move {
            dynamic.get(name).await.ok().and_then(|o| {
                o.data
                    .pointer("/status/phase")
                    .and_then(|p| p.as_str())
                    .map(String::from)
            })
        }
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    while phase_of("good").await.as_deref() != Some(Phase::Succeeded.as_str()) {
        if Instant::now() > deadline {
            panic!(
                "the readable change did not succeed (phase {:?}); graygate's log ends:\n{}",
                phase_of("good").await,
                w.operator_log_tail("a")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually(
        "the unreadable change to be marked Invalid",
        Duration::from_secs(30),
        || async { phase_of("poison").await.as_deref() == Some(Phase::Invalid.as_str()) },
    )
    .await;
    let poison = dynamic.get("poison").await.unwrap();
    let message = poison
        .data
        .pointer("/status/message")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("cannot read") && message.contains("duration"),
        "{message}"
    );
    assert_eq!(
        cp.deployment_image("shop", "web").await.unwrap().as_deref(),
        Some("shop/web:good")
    );
    // Every write carries a named field manager.
    let managers: Vec<String> = deployments
        .get("web")
        .await
        .unwrap()
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(
        managers.iter().any(|m| m == "graygate-rollout"),
        "{managers:?}"
    );
    assert!(!managers.iter().any(|m| m == "unknown"), "{managers:?}");
}
