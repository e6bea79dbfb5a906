//! The stand-in kubelet gives pods their ConfigMaps and Secrets as a real kubelet does: the
//! environment at container start, mounted files synced after an edit, and a container that
//! cannot start (a missing key) waiting with `CreateContainerConfigError`. The application's
//! profile follows its configuration, so what each pod does shows which data it sees.

mod common;

use common::*;
use graygate_e2e::world::WorldOptions;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use std::time::{Duration, Instant};

/// The 5xx count a pod's application has served so far (from its own metrics).
fn errors_served(w: &graygate_e2e::world::World, ns: &str, pod: &str) -> u64 {
    let text = w.apps.metrics(ns, pod).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("http_requests_total{code=\"500\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn pods_of(w: &graygate_e2e::world::World, ns: &str, app: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(w.client.clone(), ns);
    api.list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_see_their_config_as_a_kubelet_gives_it() {
    let w = graygate_e2e::world::World::start(WorldOptions::default())
        .await
        .unwrap();
    let ns = "cfg";
    w.apply(&format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: web-config, namespace: {ns}}}
data: {{profile: healthy, LOG_LEVEL: info}}
---
apiVersion: v1
kind: Secret
metadata: {{name: web-secret, namespace: {ns}}}
stringData: {{APP_PROFILE: latency}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: mounted, namespace: {ns}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: mounted}}}}
  template:
    metadata: {{labels: {{app: mounted}}}}
    spec:
      volumes: [{{name: config, configMap: {{name: web-config}}}}]
      containers:
      - name: app
        image: shop/web:1.0
        volumeMounts: [{{name: config, mountPath: /etc/web}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: env, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: env}}}}
  template:
    metadata: {{labels: {{app: env}}}}
    spec:
      containers:
      - name: app
        image: shop/web:1.0
        env:
        - {{name: APP_PROFILE, valueFrom: {{secretKeyRef: {{name: web-secret, key: APP_PROFILE}}}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: broken, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: broken}}}}
  template:
    metadata: {{labels: {{app: broken}}}}
    spec:
      containers:
      - name: app
        image: shop/web:1.0
        envFrom: [{{configMapRef: {{name: web-config}}}}]
        env:
        - {{name: DB, valueFrom: {{configMapKeyRef: {{name: web-config, key: database-url}}}}}}
"#
    ))
    .await
    .unwrap();
    wait_deployment_ready(&w, ns, "mounted", 2).await;
    wait_deployment_ready(&w, ns, "env", 1).await;

    // The mounted `profile` file chose each pod's behaviour; the Secret key in the environment
    // chose the other's.
    let mounted: Vec<String> = pods_of(&w, ns, "mounted")
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(mounted.len(), 2);
    for p in &mounted {
        assert_eq!(w.apps.profile_of(ns, p).as_deref(), Some("healthy"));
    }
    let env_pod = pods_of(&w, ns, "env").await[0]
        .metadata
        .name
        .clone()
        .unwrap();
    assert_eq!(w.apps.profile_of(ns, &env_pod).as_deref(), Some("latency"));

    // A key that does not exist keeps the container from starting, and says which.
    let broken = w
        .wait_for(
            "the broken pod to wait on its config",
            Duration::from_secs(30),
            || async {
                let pods = pods_of(&w, ns, "broken").await;
                let waiting = pods
                    .first()
                    .and_then(|p| p.status.clone())
                    .and_then(|s| s.container_statuses)
                    .and_then(|c| c.first().cloned())
                    .and_then(|c| c.state)
                    .and_then(|s| s.waiting);
                Ok(waiting.filter(|w| w.reason.as_deref() == Some("CreateContainerConfigError")))
            },
        )
        .await
        .unwrap();
    assert_eq!(
        broken.message.as_deref(),
        Some("Error: couldn't find key database-url in ConfigMap cfg/web-config")
    );

    // What each pod had served before the edit (the healthy profile fails 0.2% of requests).
    let before: Vec<(u64, u64)> = mounted
        .iter()
        .map(|p| (errors_served(&w, ns, p), w.apps.served(ns, p).unwrap_or(0)))
        .collect();

    // An edit in place reaches every pod that mounts it within the sync period, and what each
    // pod does changes with it; the environment of the running pod does not.
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(w.client.clone(), ns);
    cms.patch(
        "web-config",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"profile": "errors", "database-url": "postgres://db"}})),
    )
    .await
    .unwrap();
    let edited = Instant::now();
    for p in &mounted {
        w.wait_for(
            "a mounted pod to reload",
            Duration::from_secs(20),
            || async { Ok((w.apps.profile_of(ns, p).as_deref() == Some("errors")).then_some(())) },
        )
        .await
        .unwrap();
    }
    println!(
        "both mounted pods reloaded within {:.1}s of the edit",
        edited.elapsed().as_secs_f64()
    );
    // Behaviour, not only the profile's name: after the edit each pod fails requests at the
    // errors profile's 10%, not the healthy 0.2% — at least 4% of 300 new requests (healthy:
    // 0.6 expected; errors: 30, fewer than 12 with probability ~1e-5).
    w.wait_for(
        "both mounted pods failing 4% of 300 new requests",
        Duration::from_secs(60),
        || async {
            Ok(mounted
                .iter()
                .zip(&before)
                .all(|(p, (e0, n0))| {
                    let n = w.apps.served(ns, p).unwrap_or(0).saturating_sub(*n0);
                    let e = errors_served(&w, ns, p).saturating_sub(*e0);
                    n >= 300 && e * 25 >= n
                })
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(w.client.clone(), ns);
    secrets
        .patch(
            "web-secret",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"APP_PROFILE": "errors"}})),
        )
        .await
        .unwrap();
    // With the key in place, the waiting container starts.
    wait_deployment_ready(&w, ns, "broken", 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        w.apps.profile_of(ns, &env_pod).as_deref(),
        Some("latency"),
        "an environment is read at start only"
    );
}
