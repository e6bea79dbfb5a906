//! `make demo`: a real local control plane (etcd, kube-apiserver, kube-controller-manager) with
//! the stand-in kubelet, a real Prometheus and `graygate run` with the chart's RBAC and admission
//! webhook. It applies examples/demo (three Deployments, a ChangePolicy guarding two of them, an
//! explicit ChangeRequest for the third), runs `kubectl set image` on the guarded two (a good
//! build and a bad one) and prints a live timeline until every change has ended.
#![forbid(unsafe_code)]

use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::world::{World, WorldOptions};
use kube::{Api, ResourceExt};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The Deployments examples/demo's ChangePolicy guards.
const GUARDED: [&str; 2] = ["cart", "checkout"];

/// Wait up to a minute until the Deployment `name` of the shop is `what` (`ok`).
async fn wait_deployment(
    w: &World,
    name: &str,
    what: &str,
    ok: impl Fn(&k8s_openapi::api::apps::v1::Deployment) -> bool,
) -> anyhow::Result<()> {
    let api = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(w.client.clone(), "shop");
    w.wait_for(
        &format!("{name} to be {what}"),
        Duration::from_secs(60),
        || async { Ok(api.get_opt(name).await?.filter(|d| ok(d)).map(|_| ())) },
    )
    .await
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo")
}

#[derive(PartialEq, Clone)]
struct Seen {
    phase: Phase,
    batch: String,
    message: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let started = Instant::now();
    let t = || format!("[{:>6.1}s]", started.elapsed().as_secs_f64());
    println!(
        "{} starting the local control plane (etcd, kube-apiserver, kube-controller-manager), the stand-in kubelet and Prometheus …",
        t()
    );
    let w = World::start(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await?;
    println!(
        "{} API server ready at {} (admin kubeconfig: {}), Prometheus at {}",
        t(),
        w.cp.url,
        w.admin_kubeconfig.display(),
        w.prometheus_url().unwrap_or_default()
    );
    let hook = w.install_webhook("Ignore").await?;
    let args: Vec<&str> = hook.iter().map(String::as_str).collect();
    w.start_graygate(&args)?;
    println!(
        "{} graygate run started, serving the chart's admission webhook",
        t()
    );
    // The web view a person would open with `kubectl graygate dashboard`, on the demo's cluster.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let dashboard = format!("http://{}/ns/shop", listener.local_addr()?);
    tokio::spawn(graygate::dashboard::serve(
        listener,
        graygate::dashboard::Options {
            client: w.client.clone(),
            namespace: "shop".into(),
            prometheus_url: w.prometheus_url(),
        },
    ));
    println!(
        "{} dashboard (what `kubectl graygate dashboard` serves): {dashboard} — open it to watch the changes and, once judged, the plots of their evidence",
        t()
    );

    let mut files: Vec<PathBuf> = std::fs::read_dir(examples_dir())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let (workloads, changes): (Vec<_>, Vec<_>) = files.into_iter().partition(|p| {
        !std::fs::read_to_string(p)
            .unwrap_or_default()
            .contains("kind: ChangeRequest")
    });
    for f in &workloads {
        w.apply(&std::fs::read_to_string(f)?).await?;
        println!(
            "{} applied {}",
            t(),
            f.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    for name in ["catalog", "checkout", "cart"] {
        wait_deployment(&w, name, "ready", |d| {
            d.status.as_ref().and_then(|s| s.available_replicas) == Some(4)
        })
        .await?;
    }
    for name in GUARDED {
        wait_deployment(&w, name, "guarded", |d| {
            d.labels().contains_key(graygate::api::LABEL_GUARDED_BY)
        })
        .await?;
    }
    println!(
        "{} catalog, checkout and cart run 4 healthy pods each (checkout and cart guarded); letting them serve traffic for 20s so Prometheus has a background",
        t()
    );
    tokio::time::sleep(Duration::from_secs(20)).await;
    for f in &changes {
        w.apply(&std::fs::read_to_string(f)?).await?;
        println!(
            "{} applied {} (an explicit ChangeRequest)",
            t(),
            f.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    // The guarded way: an ordinary edit of the workload, held by the webhook and rolled out by
    // the ChangeRequest graygate writes for it.
    for (name, image) in [
        ("cart", "shop/cart:healthy-v2"),
        ("checkout", "shop/checkout:errors"),
    ] {
        let args = [
            "set",
            "image",
            &format!("deployment/{name}"),
            &format!("app={image}"),
            "-n",
            "shop",
        ];
        let out = std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", w.admin_kubeconfig.display()))
            .args(args)
            .output()?;
        println!("{} $ kubectl {}", t(), args.join(" "));
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("{}   {line}", t());
        }
        anyhow::ensure!(out.status.success(), "kubectl set image {name} failed");
    }

    let api: Api<ChangeRequest> = Api::namespaced(w.client.clone(), "shop");
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let crs = api.list(&Default::default()).await?.items;
        let targets = crs
            .iter()
            .map(|c| c.spec.target.name.as_str())
            .collect::<std::collections::BTreeSet<_>>();
        for cr in &crs {
            let st = cr.status.clone().unwrap_or_default();
            let now = Seen {
                phase: st.phase,
                batch: st.batch.clone().unwrap_or_default(),
                message: st.message.clone().unwrap_or_default(),
            };
            if seen.get(&cr.name_any()) != Some(&now) {
                println!(
                    "{} {:<19} {:<5} {:<16} {}",
                    t(),
                    cr.name_any(),
                    now.batch,
                    now.phase.as_str(),
                    now.message
                );
                if let Some(b) = st.batches.iter().rev().find(|b| b.verdict.is_some())
                    && seen
                        .get(&cr.name_any())
                        .is_none_or(|s| s.batch != now.batch || s.phase != now.phase)
                {
                    {
                        println!(
                            "{}   └ batch {} verdict {}: {}",
                            t(),
                            b.index,
                            b.verdict.map(|v| v.as_str()).unwrap_or("-"),
                            b.reason.clone().unwrap_or_default()
                        );
                        for f in &b.findings {
                            println!(
                                "{}     · {} [{}] {}: {}",
                                t(),
                                f.metric,
                                f.detector,
                                f.groups,
                                f.explanation
                            );
                        }
                    }
                }
                seen.insert(cr.name_any(), now);
            }
        }
        if targets.len() == 3
            && crs
                .iter()
                .all(|c| c.status.as_ref().is_some_and(|s| s.phase.is_terminal()))
        {
            break;
        }
        if Instant::now() > deadline {
            println!("{} the changes did not finish within 4 minutes", t());
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!();
    println!("Summary after {:.0}s:", started.elapsed().as_secs_f64());
    println!(
        "  {:<19} {:<10} {:<12} {:<6} {:<8} ITS PODS RUN",
        "CHANGE", "HOW", "PHASE", "BATCH", "VERDICT"
    );
    let mut as_expected = true;
    for cr in api.list(&Default::default()).await?.items {
        let st = cr.status.clone().unwrap_or_default();
        // What the pods run (a guarded Deployment's spec keeps the template it was given, held,
        // after its change was rolled back).
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(w.client.clone(), "shop")
            .list(&kube::api::ListParams::default().labels(&format!("app={}", cr.spec.target.name)))
            .await?
            .items;
        let mut images: BTreeMap<String, usize> = BTreeMap::new();
        for p in pods
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            if let Some(i) = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
            {
                *images.entry(i).or_default() += 1;
            }
        }
        let runs: Vec<String> = images.iter().map(|(i, n)| format!("{n}× {i}")).collect();
        println!(
            "  {:<19} {:<10} {:<12} {:<6} {:<8} {}",
            cr.name_any(),
            if cr.spec.policy.is_some() {
                "guarded"
            } else {
                "explicit"
            },
            st.phase.as_str(),
            st.batch.clone().unwrap_or_default(),
            st.verdict.map(|v| v.as_str()).unwrap_or("-"),
            runs.join(", ")
        );
        let expected = if cr.spec.target.name == "checkout" {
            Phase::RolledBack
        } else {
            Phase::Succeeded
        };
        as_expected &= st.phase == expected;
    }
    println!();
    if as_expected {
        println!(
            "The good changes reached every pod — the explicit one and the guarded `kubectl set image` alike; the bad one was stopped in its first batch, on one pod of four, and rolled back."
        );
    } else {
        println!("Unexpected outcome; graygate's log:\n{}", w.graygate_logs());
    }
    if std::env::args().any(|a| a == "--keep") {
        println!(
            "Keeping the cluster and the dashboard ({dashboard}) up until Ctrl-C (admin kubeconfig: {}).",
            w.admin_kubeconfig.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    } else {
        println!(
            "Run `./target/debug/graygate-demo --keep` to keep the cluster and the dashboard up afterwards."
        );
    }
    Ok(as_expected)
}
