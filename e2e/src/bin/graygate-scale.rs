//! The scale benchmark (not a test): N ChangeRequests at once across M namespaces, on the real
//! control plane, against one `graygate run` replica. Each namespace holds N/M one-replica
//! Deployments; each gets a one-batch change with a short bake and no analysis. Prints the
//! operator's resident memory (peak and at the end), reconcile latency p50/p99 (from its own
//! histogram), API requests per second (counted by the proxy in front of the API server) and the
//! time until every change is Succeeded. With `--guarded`, each namespace has a ChangePolicy that
//! guards its Deployments, and every change is a plain image patch of a Deployment held by the
//! admission webhook; the webhook's own admission latency (p50/p99) is printed too.
//!
//!   cargo run --release -p graygate-e2e --bin graygate-scale -- --changes 1000 --namespaces 100
//!   cargo run --release -p graygate-e2e --bin graygate-scale -- --changes 1000 --namespaces 100 --guarded
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::world::{World, WorldOptions};
use kube::Api;
use kube::api::ListParams;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// ChangeRequests (and one-replica Deployments), in all.
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Namespaces they are spread over.
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Guarded workloads: a ChangePolicy per namespace, each change an image patch through the
    /// admission webhook.
    #[arg(long)]
    guarded: bool,
}

fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// A quantile of a Prometheus histogram given as (upper bound, cumulative count) pairs, by
/// linear interpolation inside the bucket (as `histogram_quantile` does).
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let inside = count - prev.1;
            let frac = if inside > 0.0 {
                (rank - prev.1) / inside
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    prev.0
}

/// A histogram's buckets from the metrics text.
fn histogram(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket");
    let mut out: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let per_ns = args.changes.div_ceil(args.namespaces.max(1));
    let w = World::start(WorldOptions::default()).await?;
    eprintln!(
        "control plane up; creating {} Deployments in {} namespaces",
        args.changes, args.namespaces
    );
    let mut made = 0;
    for n in 0..args.namespaces {
        let ns = format!("scale-{n:03}");
        let mut docs = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
        for d in 0..per_ns {
            if made == args.changes {
                break;
            }
            made += 1;
            docs.push_str(&format!(
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{d}, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: app-{d}}}}}\n  template:\n    metadata: {{labels: {{app: app-{d}}}}}\n    spec: {{containers: [{{name: app, image: 'shop/web:healthy'}}]}}\n"
            ));
        }
        w.apply(&docs).await?;
    }
    let changes: Api<ChangeRequest> = Api::all(w.client.clone());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(w.client.clone());
    let wait_start = Instant::now();
    loop {
        let ready = deployments
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.available_replicas) == Some(1))
            .count();
        if ready >= args.changes {
            break;
        }
        anyhow::ensure!(
            wait_start.elapsed() < Duration::from_secs(args.timeout),
            "only {ready} Deployments became available"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "{} Deployments available after {:.0} s; starting graygate",
        args.changes,
        wait_start.elapsed().as_secs_f64()
    );
    let hook = if args.guarded {
        w.install_webhook("Fail").await?
    } else {
        Vec::new()
    };
    let hook_args: Vec<&str> = hook.iter().map(String::as_str).collect();
    let port = w.start_graygate(&hook_args)?;
    let pid = w.graygate_pid().context("graygate pid")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    if args.guarded {
        guard_all(&w, &args, per_ns).await?;
    }
    let requests_before = w.audit.lock().map(|a| a.len()).unwrap_or(0);
    let start = Instant::now();
    // Every namespace's ChangeRequests at once, 20 namespaces in flight.
    let batches: Vec<String> = (0..args.namespaces)
        .map(|n| {
            let ns = format!("scale-{n:03}");
            (0..per_ns)
                .filter(|d| n * per_ns + d < args.changes)
                .map(|d| format!(
                    "---\napiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: app-{d}-v2, namespace: {ns}}}\nspec:\n  target: {{kind: Deployment, name: app-{d}}}\n  images: {{app: 'shop/web:healthy-v2'}}\n  batches: [{{percent: 100, bake: 2s}}]\n"
                ))
                .collect()
        })
        .collect();
    if args.guarded {
        // Each change is what a person or a pipeline does: a patch of the Deployment's image.
        let patches: Vec<(String, usize)> = (0..args.changes)
            .map(|i| (format!("scale-{:03}", i / per_ns), i % per_ns))
            .collect();
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(patches)
            .map(|(ns, d)| {
                let api: Api<k8s_openapi::api::apps::v1::Deployment> =
                    Api::namespaced(w.client.clone(), &ns);
                async move {
                    api.patch(
                        &format!("app-{d}"),
                        &kube::api::PatchParams::default(),
                        &kube::api::Patch::Strategic(serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "shop/web:healthy-v2"}]}}}})),
                    )
                    .await?;
                    Ok(())
                }
            })
            .buffer_unordered(20)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    } else {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(batches.iter())
            .map(|docs| w.apply(docs))
            .buffer_unordered(20)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    let created = start.elapsed();
    eprintln!(
        "{} {} in {:.1} s",
        args.changes,
        if args.guarded {
            "Deployments patched (each held by the webhook)"
        } else {
            "ChangeRequests created"
        },
        created.as_secs_f64()
    );
    // The benchmark follows the changes with a watch, not by listing all of them from etcd every
    // second: its own lists (1,000 objects with their status, each second) were a load on the
    // API server that graygate was then measured under.
    let (store, writer) = kube::runtime::reflector::store();
    let follow = tokio::spawn(
        kube::runtime::reflector(
            writer,
            kube::runtime::watcher(changes.clone(), Default::default()),
        )
        .for_each(|_| async {}),
    );
    store.wait_until_ready().await?;
    let mut peak_rss = 0;
    let done = loop {
        peak_rss = peak_rss.max(status_kb(pid, "VmRSS:").unwrap_or(0));
        let list = store.state();
        let succeeded = list
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.phase == Phase::Succeeded)
            })
            .count();
        let stuck: Vec<String> = list
            .iter()
            .filter(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.phase.is_terminal() && s.phase != Phase::Succeeded)
            })
            .map(|c| {
                format!(
                    "{:?}",
                    c.status.as_ref().map(|s| (s.phase, s.message.clone()))
                )
            })
            .collect();
        anyhow::ensure!(stuck.is_empty(), "changes ended otherwise: {stuck:?}");
        if succeeded == args.changes {
            break start.elapsed();
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(args.timeout),
            "only {succeeded} of {} Succeeded after {} s",
            args.changes,
            args.timeout
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    follow.abort();
    let audit: Vec<_> = w
        .audit
        .lock()
        .map(|a| a[requests_before..].to_vec())
        .unwrap_or_default();
    // graygate's own requests (the benchmark's lists and patches are not its).
    let audit: Vec<_> = audit
        .into_iter()
        .filter(|e| e.user_agent.starts_with(graygate::cli::run::USER_AGENT))
        .collect();
    let requests = audit.len();
    // Per verb and resource: count, refusals (409 conflicts, other errors) and how long the API
    // server took to answer (watches excluded: they answer at once and stream).
    #[derive(Default)]
    struct Kind {
        n: usize,
        conflicts: usize,
        errors: usize,
        ms: Vec<f64>,
    }
    let mut kinds: std::collections::BTreeMap<String, Kind> = Default::default();
    for e in &audit {
        let kind = graygate::access::classify(&e.method, &e.path, &e.query).map_or_else(
            || format!("{} {}", e.method, e.path),
            |r| format!("{} {}", r.verb, r.resource),
        );
        let k = kinds.entry(kind).or_default();
        k.n += 1;
        match e.status {
            409 => k.conflicts += 1,
            s if s >= 400 => k.errors += 1,
            _ => {}
        }
        k.ms.push(e.answered.duration_since(e.forwarded).as_secs_f64() * 1000.0);
    }
    let mut by_kind: Vec<(String, Kind)> = kinds.into_iter().collect();
    by_kind.sort_by_key(|b| std::cmp::Reverse(b.1.n));
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let buckets = histogram(&metrics, "graygate_reconcile_duration_seconds");
    let reconciles = buckets.last().map_or(0.0, |b| b.1);
    println!("changes: {}", args.changes);
    println!("namespaces: {}", args.namespaces);
    println!("time to all Succeeded: {:.1} s", done.as_secs_f64());
    println!(
        "resident memory: peak {:.1} MiB (VmHWM {:.1} MiB), at the end {:.1} MiB",
        peak_rss as f64 / 1024.0,
        status_kb(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        status_kb(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0
    );
    // A quantile in the +Inf bucket is only known to exceed the largest finite bound.
    let largest = buckets
        .iter()
        .rev()
        .find(|b| b.0.is_finite())
        .map_or(0.0, |b| b.1);
    let show = |q: f64| {
        let v = quantile(&buckets, q);
        if q * reconciles > largest {
            format!("> {:.0} ms", v * 1000.0)
        } else {
            format!("{:.1} ms", v * 1000.0)
        }
    };
    println!(
        "reconciles: {reconciles:.0}; latency p50 {}, p99 {}",
        show(0.5),
        show(0.99)
    );
    println!(
        "API requests by graygate: {requests} in {:.1} s = {:.1} per second, {:.1} per change",
        done.as_secs_f64(),
        requests as f64 / done.as_secs_f64(),
        requests as f64 / args.changes as f64
    );
    // What graygate itself counted: Events dropped, reconciles that ended in an error (by
    // category; `NotLeader` is a write the fence refused while a renewal was late).
    for line in metrics.lines() {
        if (line.starts_with("graygate_events_total{")
            || line.starts_with("graygate_reconcile_errors_total{"))
            && !line.ends_with(" 0")
        {
            println!("  {line}");
        }
    }
    if args.guarded {
        let admission = histogram(&metrics, "graygate_webhook_admission_duration_seconds");
        let n = admission.last().map_or(0.0, |b| b.1);
        println!(
            "admission reviews answered: {n:.0}; latency p50 {:.2} ms, p99 {:.2} ms",
            quantile(&admission, 0.5) * 1000.0,
            quantile(&admission, 0.99) * 1000.0
        );
    }
    for (kind, k) in by_kind.iter_mut().take(10) {
        k.ms.sort_by(f64::total_cmp);
        let at = |q: f64| k.ms[((k.ms.len() - 1) as f64 * q).round() as usize];
        println!(
            "  {kind}: {} ({:.1} per change); answered in p50 {:.0} ms, p99 {:.0} ms; {} conflicts, {} other errors",
            k.n,
            k.n as f64 / args.changes as f64,
            at(0.5),
            at(0.99),
            k.conflicts,
            k.errors
        );
    }
    println!(
        "reconciles per change: {:.1}",
        reconciles / args.changes as f64
    );
    // graygate's own log outlives the run's scratch folder, for what the counters do not say.
    let keep = std::env::temp_dir().join("graygate-scale-logs");
    let _ = std::fs::create_dir_all(&keep);
    for entry in std::fs::read_dir(w.dir.path())?.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("graygate-") {
            let _ = std::fs::copy(entry.path(), keep.join(&name));
        }
    }
    println!("graygate's log: {}", keep.display());
    Ok(())
}

/// One ChangePolicy per namespace guarding its Deployments (one 100% batch, 2 s bake, no
/// analysis, as the explicit changes); returns once every Deployment is labelled guarded.
async fn guard_all(w: &World, args: &Args, per_ns: usize) -> anyhow::Result<()> {
    for n in 0..args.namespaces {
        let ns = format!("scale-{n:03}");
        let names: Vec<String> = (0..per_ns)
            .filter(|d| n * per_ns + d < args.changes)
            .map(|d| format!("app-{d}"))
            .collect();
        w.apply(&format!(
            "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: all, namespace: {ns}}}\nspec:\n  workloads: {{kinds: [Deployment], names: [{}]}}\n  change:\n    batches: [{{percent: 100, bake: 2s}}]\n",
            names.join(", ")
        ))
        .await?;
    }
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(w.client.clone());
    let t0 = Instant::now();
    loop {
        let guarded = deployments
            .list(&ListParams::default().labels(graygate::api::LABEL_GUARDED_BY))
            .await?
            .items
            .len();
        if guarded >= args.changes.min(per_ns * args.namespaces) {
            eprintln!(
                "{guarded} Deployments guarded after {:.0} s",
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(args.timeout),
            "only {guarded} Deployments were guarded"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
