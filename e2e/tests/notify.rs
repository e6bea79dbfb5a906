//! End-to-end: notifications from `graygate run --notifications` on the real control plane, to
//! local HTTP receivers: a webhook that answers, a Slack-format one that fails three times before
//! it answers, and one that never answers. A good change (with a manual batch) and a bad one give
//! exactly one message per event to each; the receiver that hangs does not slow the rollout.
//! Generated scenario: a regression test.

mod common;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use common::*;
use graygate::api::Phase;
use graygate_e2e::world::{World, WorldOptions};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NS: &str = "notify";

#[derive(Default)]
struct Received {
    hook: Vec<serde_json::Value>,
    flaky: Vec<serde_json::Value>,
    flaky_failures: u32,
    hang: u32,
}

type Shared = Arc<Mutex<Received>>;

async fn hook(State(r): State<Shared>, body: Bytes) -> StatusCode {
    let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    r.lock().unwrap().hook.push(v);
    StatusCode::OK
}

async fn flaky(State(r): State<Shared>, body: Bytes) -> StatusCode {
    let mut g = r.lock().unwrap();
    if g.flaky_failures < 3 {
        g.flaky_failures += 1;
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    g.flaky
        .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
    StatusCode::OK
}

async fn hang(State(r): State<Shared>) -> StatusCode {
    r.lock().unwrap().hang += 1;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::OK
}

async fn receiver() -> (u16, Shared) {
    let shared: Shared = Arc::default();
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/flaky", post(flaky))
        .route("/hang", post(hang))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, shared)
}

fn change(name: &str, image: &str, second: &str) -> String {
    change_yaml(
        NS,
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: web}}
images: {{app: "{image}"}}
analysis: {{interval: 5s, failureLimit: 2}}
batches:
- {{replicas: 1, bake: 20s}}
- {{percent: 100, bake: 5s{second}}}
"#
        ),
    )
}

/// (name, event) of every message, in arrival order.
fn events(
    msgs: &[serde_json::Value],
    key: impl Fn(&serde_json::Value) -> (String, String),
) -> Vec<(String, String)> {
    msgs.iter().map(key).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_per_event_through_failures_and_a_receiver_that_hangs() {
    let (port, got) = receiver().await;
    let w = World::start(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await
    .expect("world starts");
    let config = w.dir.path().join("notifications.yaml");
    let secret_url = w.dir.path().join("flaky-url");
    // The Slack sink's URL comes from a file, as a mounted Secret would give it.
    std::fs::write(&secret_url, format!("http://127.0.0.1:{port}/flaky\n")).unwrap();
    std::fs::write(
        &config,
        format!(
            r#"
dashboardUrl: http://127.0.0.1:3100/
sinks:
- {{name: team, url: "http://127.0.0.1:{port}/hook", namespaces: [{NS}]}}
- {{name: chat, format: slack, urlFile: "{}", events: [Started, RolledBack, Succeeded]}}
- {{name: stuck, url: "http://127.0.0.1:{port}/hang"}}
- {{name: elsewhere, url: "http://127.0.0.1:{port}/hook", namespaces: [other]}}
"#,
            secret_url.display()
        ),
    )
    .unwrap();
    let metrics_port = w
        .start_graygate(&[&format!("--notifications={}", config.display())])
        .expect("graygate starts");
    w.apply(&deployment_yaml(NS, "web", 4)).await.unwrap();
    wait_deployment_ready(&w, NS, "web", 4).await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // A good change whose second batch waits for approval.
    w.apply(&change("good", "shop/web:healthy-v2", ", approval: manual"))
        .await
        .unwrap();
    w.wait_phase(NS, "good", Phase::AwaitingApproval, LONG)
        .await
        .unwrap();
    graygate_kubectl(&kubeconfig_in(&w, NS), &["approve", "good"]);
    let good = w
        .wait_phase(NS, "good", Phase::Succeeded, LONG)
        .await
        .unwrap();
    // The receiver that never answers held requests open all along; the bake took what it asks.
    let b1 = &good.status.as_ref().unwrap().batches[0];
    let bake = b1
        .bake_ended_at
        .as_ref()
        .unwrap()
        .0
        .duration_since(b1.ready_at.as_ref().unwrap().0);
    println!("batch 1 bake (asked 20s): {bake:?}");
    assert!(
        bake.as_secs_f64() < 20.0 + 8.0,
        "the bake was slowed: {bake:?}"
    );

    w.apply(&change("bad", "shop/web:errors", ""))
        .await
        .unwrap();
    w.wait_phase(NS, "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();

    let want_team = [
        ("good", "Started"),
        ("good", "AwaitingApproval"),
        ("good", "Succeeded"),
        ("bad", "Started"),
        ("bad", "RolledBack"),
    ];
    // The Slack sink's first three attempts fail; its retries back off 1, 2 and 4 s.
    w.wait_for(
        "every message delivered",
        Duration::from_secs(60),
        || async {
            let g = got.lock().unwrap();
            Ok(
                (g.hook.len() >= want_team.len() && g.flaky.len() >= want_team.len() - 1)
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| {
        let g = got.lock().unwrap();
        panic!("{e}: hook {:#?}, slack {:#?}", g.hook, g.flaky)
    });
    // Nothing more comes (no duplicate), however often graygate reconciles.
    tokio::time::sleep(Duration::from_secs(10)).await;
    {
        let g = got.lock().unwrap();
        let mut team = events(&g.hook, |m| {
            (
                m["name"].as_str().unwrap_or_default().to_string(),
                m["event"].as_str().unwrap_or_default().to_string(),
            )
        });
        team.sort();
        let mut want: Vec<(String, String)> = want_team
            .iter()
            .map(|(n, e)| (n.to_string(), e.to_string()))
            .collect();
        want.sort();
        assert_eq!(team, want, "the webhook got exactly one message per event");
        let rolled = g.hook.iter().find(|m| m["event"] == "RolledBack").unwrap();
        assert_eq!(rolled["namespace"], NS);
        assert_eq!(rolled["target"], "Deployment/web");
        assert_eq!(rolled["url"], "http://127.0.0.1:3100/ns/notify/changes/bad");
        assert!(
            rolled["summary"].as_str().unwrap().contains("error-ratio"),
            "the one-line verdict names the metric: {rolled}"
        );
        let mut chat: Vec<String> = g
            .flaky
            .iter()
            .map(|m| {
                let t = m["text"].as_str().unwrap_or_default();
                let name = if t.contains("`notify/good`") {
                    "good"
                } else {
                    "bad"
                };
                let event = t.split('*').nth(1).unwrap_or_default();
                format!("{name} {event}")
            })
            .collect();
        chat.sort();
        // The chat sink takes every event but AwaitingApproval.
        let mut want_chat: Vec<String> = want_team
            .iter()
            .filter(|(_, e)| *e != "AwaitingApproval")
            .map(|(n, e)| format!("{n} {e}"))
            .collect();
        want_chat.sort();
        assert_eq!(
            chat, want_chat,
            "Slack got each message once, after its failures"
        );
        assert_eq!(g.flaky_failures, 3);
        assert!(g.hang >= 1, "the hanging receiver was called");
    }
    let (_, metrics) = graygate_http(metrics_port, "/metrics").await;
    for line in [
        r#"graygate_notifications_total{sink="team",result="sent"} 5"#,
        r#"graygate_notifications_total{sink="chat",result="sent"} 4"#,
        r#"graygate_notification_errors_total{sink="chat"} 3"#,
        r#"graygate_notifications_total{sink="elsewhere",result="sent"} 0"#,
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    let _ = w;
}
