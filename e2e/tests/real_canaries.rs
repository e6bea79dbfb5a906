//! Real canaries of real software: a kube-apiserver started beside a running one (the stable
//! server), with the same flags, against the same etcd and under the same load, is judged by
//! graygate's log detectors as a canary pod is: its log from when it became ready (the change
//! group) against the stable server's log of the same window (the control group) and everything
//! the stable server logged before (the reference before the change, each line at the time its
//! klog header gives, its own start-up included). Both log at `--v=3`, which writes a line per
//! request, so a window holds hundreds of lines. Nobody here wrote a line of either log.
//!
//! Healthy canaries (the same flags) must give no finding. Canaries with a real
//! misconfiguration, which makes the binary log its own errors, must give one that names it:
//! an etcd endpoint that does not answer beside the good one, and an audit webhook that refuses
//! every batch.

use graygate::api::{LogAnalysisSpec, Verdict};
use graygate::logs::detect::{LogGroup, Params, detect};
use graygate::logs::fetch::timed_file;
use graygate_e2e::control_plane::{ControlPlane, ExtraApiServer, free_port};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a canary is watched after it became ready.
const WINDOW: Duration = Duration::from_secs(15);
/// How long the stable server runs under the load before the first canary.
const WARM_UP: Duration = Duration::from_secs(120);
/// Healthy canaries, started this many at a time.
const HEALTHY: usize = 10;
const AT_ONCE: usize = 3;

fn lines(path: &Path) -> Vec<String> {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default())
        .lines()
        .map(String::from)
        .collect()
}

async fn client_of(cp: &ControlPlane, url: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let mut cfg =
        kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap();
    cfg.cluster_url = url.parse().unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// The same requests to every server, five rounds a second: create, read, list and delete a
/// ConfigMap.
fn load(
    clients: Vec<kube::Client>,
    stop: Arc<AtomicBool>,
    tag: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            for c in &clients {
                let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
                let name = format!("load-{tag}-{n}");
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name},
                    "data": {"n": n.to_string()}
                }))
                .unwrap();
                let _ = api.create(&PostParams::default(), &cm).await;
                let _ = api.get(&name).await;
                let _ = api.list(&ListParams::default().limit(50)).await;
                let _ = api.delete(&name, &DeleteParams::default()).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// One canary judged: its lines from ready on, against the running server's lines of the same
/// window and before it.
struct Judged {
    name: String,
    lines: usize,
    findings: Vec<graygate::api::Finding>,
}

/// The flags of the stable server and of every canary (a misconfigured one adds its own).
fn flags() -> Vec<String> {
    vec!["--v=3".into()]
}

async fn judge_canaries(
    cp: &ControlPlane,
    stable_server: &ExtraApiServer,
    names: &[String],
    extra: &dyn Fn(usize) -> Vec<String>,
) -> Vec<Judged> {
    let reference_log = stable_server.log.clone();
    let mut started: Vec<ExtraApiServer> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        started.push(
            cp.start_apiserver(name, &[flags(), extra(i)].concat(), Duration::from_secs(90))
                .await
                .unwrap_or_else(|e| panic!("{e:#}")),
        );
    }
    // From here all are ready: the window starts.
    let from = Instant::now();
    let ref_from = lines(&reference_log).len();
    let canary_from: Vec<usize> = started.iter().map(|c| lines(&c.log).len()).collect();
    let mut clients = vec![client_of(cp, &stable_server.url).await];
    for c in &started {
        clients.push(client_of(cp, &c.url).await);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let task = load(clients, stop.clone(), names[0].clone());
    tokio::time::sleep(WINDOW).await;
    stop.store(true, Ordering::Relaxed);
    let _ = task.await;
    let seconds = from.elapsed().as_secs_f64();
    let reference = lines(&reference_log);
    let ref_to = reference.len();
    let params = Params::from_spec(&LogAnalysisSpec::default());
    let mut out = Vec::new();
    for (k, c) in started.iter().enumerate() {
        let canary = lines(&c.log);
        let mut change = LogGroup::default();
        change
            .pods
            .insert(names[k].clone(), canary[canary_from[k]..].to_vec());
        change.seconds.insert(names[k].clone(), seconds);
        let mut control = LogGroup::default();
        control.pods.insert(
            "kube-apiserver-stable".into(),
            reference[ref_from..ref_to].to_vec(),
        );
        control
            .seconds
            .insert("kube-apiserver-stable".into(), seconds);
        // Before: the running server's whole log until the window, its own start-up included,
        // each line at its klog time.
        let mut before = LogGroup::default();
        let text = reference[..ref_from].join("\n");
        timed_file(&text)
            .expect("the API server's log carries klog times")
            .put(&mut before, "kube-apiserver-stable", true);
        let findings = detect(&change, &control, &before, &params);
        out.push(Judged {
            name: names[k].clone(),
            lines: canary.len() - canary_from[k],
            findings,
        });
    }
    drop(started);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canaries_of_a_real_api_server_give_no_finding_and_misconfigured_ones_do() {
    let cp = ControlPlane::start().await.unwrap();
    let stable_server = cp
        .start_apiserver("stable", &flags(), Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    // The stable server's steady state: the same load for a while first. An API server's first
    // minutes are not its steady state: until its watch cache catches up (about 90 s after
    // start) its storage statistics log a retry twice a second, which a reference that young
    // shows and a canary minutes younger does not yet (a "stopped" statement that is only age).
    let stop = Arc::new(AtomicBool::new(false));
    let warm = load(
        vec![client_of(&cp, &stable_server.url).await],
        stop.clone(),
        "warm".into(),
    );
    tokio::time::sleep(WARM_UP).await;
    stop.store(true, Ordering::Relaxed);
    let _ = warm.await;

    let mut healthy = Vec::new();
    let mut round = 0;
    while healthy.len() < HEALTHY {
        let names: Vec<String> = (0..AT_ONCE.min(HEALTHY - healthy.len()))
            .map(|i| format!("canary-{round}-{i}"))
            .collect();
        healthy.extend(judge_canaries(&cp, &stable_server, &names, &|_| Vec::new()).await);
        round += 1;
    }
    for j in &healthy {
        println!(
            "{}: {} lines from ready on, {} findings {:#?}",
            j.name,
            j.lines,
            j.findings.len(),
            j.findings
        );
    }

    // Misconfigurations, both judged in one window.
    let dead = free_port().unwrap();
    let etcd = cp.apiserver_flag("--etcd-servers").unwrap();
    let refused = free_port().unwrap();
    let policy = cp.dir.path().join("audit-policy.yaml");
    std::fs::write(
        &policy,
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nrules:\n- level: Metadata\n",
    )
    .unwrap();
    let hook = cp.dir.path().join("audit-webhook.kubeconfig");
    std::fs::write(
        &hook,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: audit\n  cluster: {{server: \"http://127.0.0.1:{refused}/audit\"}}\nusers:\n- name: audit\ncontexts:\n- name: audit\n  context: {{cluster: audit, user: audit}}\ncurrent-context: audit\n"
        ),
    )
    .unwrap();
    let names = vec![
        "canary-dead-etcd".to_string(),
        "canary-audit-hook".to_string(),
    ];
    let bad = judge_canaries(&cp, &stable_server, &names, &|i| match i {
        0 => vec![format!("--etcd-servers={etcd},http://127.0.0.1:{dead}")],
        _ => vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-webhook-config-file={}", hook.display()),
            "--audit-webhook-batch-max-wait=1s".into(),
            "--audit-webhook-initial-backoff=100ms".into(),
        ],
    })
    .await;
    for j in &bad {
        println!(
            "{}: {} lines from ready on: {:#?}",
            j.name, j.lines, j.findings
        );
    }
    let failing: Vec<&Judged> = healthy.iter().filter(|j| !j.findings.is_empty()).collect();
    assert!(
        failing.is_empty(),
        "healthy canaries with findings:\n{}",
        failing
            .iter()
            .map(|j| format!("{}: {:#?}", j.name, j.findings))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Each misconfiguration found, and named: the finding shows the dead endpoint, or the
    // audit webhook.
    for (j, named) in bad
        .iter()
        .zip([format!("127.0.0.1:{dead}"), "audit".to_string()])
    {
        assert!(
            j.findings.iter().any(|f| f.outcome == Some(Verdict::Fail)
                && (f.metric.contains(&named) || f.explanation.contains(&named))),
            "{}: no failing finding naming {named}: {:#?}",
            j.name,
            j.findings
        );
    }
}
