//! Start-up under API errors, on the real control plane: two replicas serve the admission
//! webhook behind one Service; one of them starts while the API server fails its identity
//! look-up (SelfSubjectReview) and the other leads. The webhook calls reach the first replica
//! first. A replica that served admission without knowing who graygate is would hold the
//! leader's own releases (seen in the 30-minute soak: healthy guarded changes stalled at the
//! last batch until `progressDeadline` and were rolled back). A replica must learn its identity
//! (retrying) before it serves admission, takes the Lease or reports ready.

mod common;

use common::*;
use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::control_plane::free_port;
use graygate_e2e::faults::Matcher;
use graygate_e2e::proxy::ApiProxy;
use graygate_e2e::soak::lease_holder;
use graygate_e2e::world::{World, WorldOptions};
use std::time::{Duration, Instant};

const NS: &str = "startup";

fn policy() -> String {
    format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web, namespace: {NS}}}
spec:
  workloads: {{names: [web]}}
  change:
    progressDeadline: 60s
    batches:
    - {{replicas: 1, bake: 3s}}
    - {{percent: 100, bake: 2s}}
"#
    )
}

/// How often the identity look-up fails for replica `a`.
const IDENTITY_FAULTS: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_identity_look_up_failed_does_not_hold_the_leaders_release() {
    let w = World::start(WorldOptions::default()).await.unwrap();
    w.apply(&deployment_yaml(NS, "web", 3)).await.unwrap();
    wait_deployment_ready(&w, NS, "web", 3).await;
    // The webhook configuration points at a stand-in Service in front of both replicas, `a`
    // first: the API server's admission calls reach `a` whenever it listens.
    let hook = w.install_webhook("Fail").await.unwrap();
    let service_port: u16 = hook[0].rsplit(':').next().unwrap().parse().unwrap();
    let (port_a, port_b) = (free_port().unwrap(), free_port().unwrap());
    let _service = graygate_e2e::proxy::service(service_port, vec![port_a, port_b])
        .await
        .unwrap();
    let args = |port: u16, listen: u16| {
        let mut a = vec![
            format!("--webhook-listen=127.0.0.1:{port}"),
            format!("--listen=127.0.0.1:{listen}"),
        ];
        a.extend(hook[1..].iter().cloned());
        a
    };
    // `b` starts first and leads.
    let _b = w
        .operator("b", &args(port_b, free_port().unwrap()))
        .unwrap();
    w.wait_for("b to lead", LONG, || async {
        Ok((lease_holder(&w).await.as_deref() == Some("b")).then_some(()))
    })
    .await
    .unwrap();
    // `a` starts through a proxy that fails its first identity look-ups, as an API server
    // blip at start-up (an upgrade, an etcd election) would.
    let proxy = ApiProxy::start(&w.cp.url).await.unwrap();
    proxy.faults.fail_next(
        Matcher::new("POST", "/selfsubjectreviews"),
        IDENTITY_FAULTS,
        500,
    );
    let kubeconfig = w.kubeconfig_via(&proxy.url, "kubeconfig-a").unwrap();
    let listen_a = free_port().unwrap();
    let _a = w
        .operator_via("a", &kubeconfig, &args(port_a, listen_a))
        .unwrap();
    // While it does not know who it is, `a` is not ready and says why (watched from the side).
    let readiness = tokio::spawn(async move {
        let started = Instant::now();
        let mut unready_said = None;
        while started.elapsed() < Duration::from_secs(60) {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{listen_a}/readyz")).await {
                let (code, text) = (r.status().as_u16(), r.text().await.unwrap_or_default());
                if code == 503 && text.contains("identity") {
                    unready_said = Some(text);
                }
                if code == 200 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        unready_said
    });
    w.wait_for("a to serve the webhook", LONG, || async {
        Ok(w.operator_log_tail("a")
            .contains("admission webhook serving")
            .then_some(()))
    })
    .await
    .unwrap();
    // A healthy guarded change: every admission call goes to `a`, the release is `b`'s.
    w.apply(&policy()).await.unwrap();
    wait_labelled_guarded(&w, NS, "web").await;
    admin_set_image(&w, NS, "web", "shop/web:healthy-v2");
    let name = generated_change(&w, NS, &[]).await;
    let cr: ChangeRequest = w
        .wait_for("the change to end", Duration::from_secs(150), || async {
            Ok(w.change_request(NS, &name)
                .await?
                .filter(|c| c.status.as_ref().is_some_and(|s| s.phase.is_terminal())))
        })
        .await
        .unwrap();
    let st = cr.status.unwrap_or_default();
    assert_eq!(
        st.phase,
        Phase::Succeeded,
        "the healthy change ends Succeeded: {:?} {:?}\n--- a ---\n{}\n--- b ---\n{}",
        st.reason,
        st.message,
        w.operator_log_tail("a"),
        w.operator_log_tail("b")
    );
    assert_eq!(
        lease_holder(&w).await.as_deref(),
        Some("b"),
        "b led throughout"
    );
    wait_deployment_ready(&w, NS, "web", 3).await;
    let d = deployment(&w, NS, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v2");

    // And `a` had waited for its identity, saying so.
    assert_eq!(
        proxy.faults.armed(),
        0,
        "a asked who it is {IDENTITY_FAULTS} times and more"
    );
    let said = readiness
        .await
        .unwrap()
        .expect("a's /readyz said it does not know its identity yet");
    println!("a, not ready: {said}");
    let (_, metrics) = graygate_http(listen_a, "/metrics").await;
    let retries = metrics
        .lines()
        .find(|l| l.starts_with("graygate_startup_retries_total{step=\"identity\"}"))
        .unwrap_or_default()
        .to_string();
    assert!(
        retries.ends_with(&format!(" {IDENTITY_FAULTS}")),
        "a counts its identity retries: {retries:?}"
    );
    assert!(
        metrics.contains("graygate_identity_known 1"),
        "a knows its identity now"
    );
}
