//! Leadership on the real control plane: a leader frozen (SIGSTOP) while one of its judgements
//! waits for Prometheus loses the Lease; the standby takes over and rolls the change back on a
//! person's abort; when the old leader wakes (SIGCONT) its judgement completes, but nothing it
//! computed before the freeze may be written — the change stays RolledBack and no canary comes
//! back.

use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::control_plane::{eventually, free_port, yaml};
use graygate_e2e::world::{OPERATOR_NAMESPACE, World, WorldOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_that_wakes_does_not_resurrect_a_rolled_back_change() {
    let w = World::start(WorldOptions::default()).await.unwrap();
    let cp = &w.cp;
    let client = w.client.clone();
    cp.deployment("shop", "web", 4, "shop/web:healthy")
        .await
        .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "shop");
    eventually(
        "web to have 4 available pods",
        Duration::from_secs(60),
        || async {
            deployments
                .get("web")
                .await
                .is_ok_and(|d| d.status.and_then(|s| s.available_replicas) == Some(4))
        },
    )
    .await;

    let a = w.operator("a", &[]).unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    eventually("operator a to lead", Duration::from_secs(30), || async {
        leases
            .get("graygate-leader")
            .await
            .is_ok_and(|l| l.spec.and_then(|s| s.holder_identity).as_deref() == Some("a"))
    })
    .await;
    let _b = w.operator("b", &[]).unwrap();

    // A stand-in Prometheus that answers "no data" at once, or after 6 s while `hang` is set.
    let hang = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let prom_port = free_port().unwrap();
    {
        let hang = hang.clone();
        let app = axum::Router::new().fallback(move || {
            let hang = hang.clone();
            async move {
                if hang.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                }
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#,
                )
            }
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", prom_port))
            .await
            .unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
    }

    // A change judged every second (no data: it keeps baking).
    let changes: Api<ChangeRequest> = Api::namespaced(client.clone(), "shop");
    changes
        .create(
            &PostParams::default(),
            &yaml(&format!(
                "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: bad}}\nspec:\n  target: {{kind: Deployment, name: web}}\n  images: {{app: 'shop/web:healthy-v2'}}\n  batches: [{{replicas: 1, bake: 60s}}, {{percent: 100, bake: 5s}}]\n  analysis:\n    interval: 1s\n    warmup: 0s\n    prometheus: {{address: 'http://127.0.0.1:{prom_port}', timeout: 30s}}\n    metrics: [{{name: lat, query: up}}]\n"
            )),
        )
        .await
        .unwrap();
    let canary_exists = || async {
        deployments
            .get_opt("web-canary-bad")
            .await
            .ok()
            .flatten()
            .is_some()
    };
    let judgements = || async {
        changes
            .get("bad")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.batches.first().map(|b| b.judgements))
            .unwrap_or(0)
    };
    eventually("a to judge batch 1", Duration::from_secs(60), || async {
        judgements().await >= 2
    })
    .await;
    assert!(canary_exists().await);

    // Freeze the leader while one of its judgements waits for Prometheus.
    hang.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.signal("STOP").unwrap();
    hang.store(false, std::sync::atomic::Ordering::SeqCst);

    // A person aborts; the standby takes over and rolls back.
    changes
        .patch(
            "bad",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"metadata": {"annotations": {"graygate.io/abort": "1"}}}),
            ),
        )
        .await
        .unwrap();
    let phase = || async {
        changes
            .get("bad")
            .await
            .ok()
            .and_then(|c| c.status)
            .map(|s| s.phase)
    };
    eventually(
        "b to roll the change back",
        Duration::from_secs(60),
        || async { phase().await == Some(Phase::RolledBack) },
    )
    .await;
    assert!(!canary_exists().await, "the rollback removed the canary");
    let holder = leases
        .get("graygate-leader")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("b"));

    // Wake the old leader: its judgement returns, but nothing it computed before the freeze may
    // be written.
    a.signal("CONT").unwrap();
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        assert_eq!(
            phase().await,
            Some(Phase::RolledBack),
            "the change left RolledBack"
        );
        assert!(
            !canary_exists().await,
            "a canary came back after the rollback"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        cp.deployment_image("shop", "web").await.unwrap().as_deref(),
        Some("shop/web:healthy")
    );
}
