//! graygate's log detectors on real logs that nobody here wrote: etcd, kube-apiserver,
//! kube-controller-manager, Prometheus and graygate itself, as they run in the e2e world under a
//! steady load (one small Deployment and one ChangeRequest on it every window).
//!
//! Each component's log is cut into consecutive windows of equal length. A window is judged as
//! the change group against the window before it (the control group of the same length) and
//! everything before that (the "before" reference, with the time of each line to the window),
//! with the pod time each covered: that is the comparison the operator makes between canary and
//! control pods. Healthy windows must give no
//! log finding; the same window with an error burst in the component's own format must give one.

mod common;
use common::*;
use graygate::api::LogAnalysisSpec;
use graygate::logs::detect::{LogGroup, Params, detect};
use graygate_e2e::world::WorldOptions;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Seconds a window lasts.
const WINDOW: Duration = Duration::from_secs(12);
/// Rounds of warm-up: the API server's first minutes are not its steady state (its storage
/// statistics log a retry twice a second until its watch cache catches up, about 90 s after
/// start, then once every few seconds).
const WARM_UP_ROUNDS: usize = 10;
/// Windows recorded after the warm-up; pairs are judged from the third on (the first two are
/// the first control and the first "before").
const WINDOWS: usize = 9;

fn read_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// One pod's worth of lines watched for `seconds`.
fn group(lines: &[String], seconds: f64) -> LogGroup {
    let mut g = LogGroup::default();
    g.pods.insert("pod".into(), lines.to_vec());
    g.seconds.insert("pod".into(), seconds);
    g
}

/// Error lines as each component writes them: klog for the Kubernetes components, JSON for etcd
/// and graygate, logfmt for Prometheus. Eight lines of one log statement (one call site, where
/// the format names one) with varying values, as a burst would have, and the words of that
/// statement's message, which the finding must show.
fn burst(component: &str) -> (Vec<String>, &'static str) {
    let lines = (0..8)
        .map(|i| match component {
            "etcd" => format!(
                r#"{{"level":"error","ts":"2026-12-01T10:00:{i:02}.{:03}Z","caller":"etcdserver/server.go:1200","msg":"failed to apply request","error":"mvcc: database space exceeded","took":"{}ms"}}"#,
                100 + i * 7,
                3 + i
            ),
            "prometheus" => format!(
                r#"ts=2026-12-01T10:00:{i:02}.{:03}Z level=error source=scrape.go:1400 msg="Scrape commit failed" component="scrape manager" target=http://127.0.0.1:{}/metrics err="out of bounds""#,
                100 + i * 7,
                40000 + i
            ),
            c if c.starts_with("graygate") => format!(
                r#"{{"timestamp":"2026-12-01T10:00:{i:02}.{:03}Z","level":"ERROR","fields":{{"message":"reconcile failed","error":"ApiError: Internal error occurred: etcdserver: request timed out (code {})"}},"target":"graygate::controller"}}"#,
                100 + i * 7,
                500 + i
            ),
            _ => format!(
                r#"E1201 10:00:{i:02}.{:06}   {} reflector.go:4000] "Unhandled Error" err="failed to list *v1.Pod: Get \"https://127.0.0.1:{}/api/v1/pods?limit=500\": dial tcp 127.0.0.1:{}: connect: connection refused" logger="UnhandledError""#,
                100_000 + i * 7,
                160 + i,
                6443 + i,
                6443 + i
            ),
        })
        .collect();
    let words = match component {
        "etcd" => "failed to apply request",
        "prometheus" => "Scrape commit failed",
        c if c.starts_with("graygate") => "reconcile failed",
        _ => "Unhandled Error",
    };
    (lines, words)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_windows_of_real_components_give_no_log_finding_and_an_error_burst_does() {
    let w = world(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    let files: Vec<(String, PathBuf)> = {
        let mut f: Vec<(String, PathBuf)> = ["etcd", "kube-apiserver", "kube-controller-manager"]
            .iter()
            .map(|c| (c.to_string(), w.cp.dir.path().join(format!("{c}.log"))))
            .collect();
        f.push((
            "prometheus".into(),
            w.dir.path().join("prometheus/prometheus.log"),
        ));
        for e in std::fs::read_dir(w.dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("graygate-") && name.ends_with(".log") {
                f.push((name.trim_end_matches(".log").to_string(), e.path()));
            }
        }
        f
    };
    assert!(files.len() >= 5, "component logs: {files:?}");

    // The same work in every window: a namespace's Deployment and a ChangeRequest rolling it.
    let load = |i: usize| {
        format!(
            "{}---\n{}",
            deployment_yaml(&format!("load{i}"), "web", 2),
            change_yaml(
                &format!("load{i}"),
                "v2",
                "target: {kind: Deployment, name: web}\nimages: {app: \"shop/web:healthy-v2\"}\nbatches:\n- {replicas: 1, bake: 2s}\n- {percent: 100, bake: 2s}\n"
            )
        )
    };
    // Warm-up: the first rounds of that work (start-up lines are not a healthy steady state).
    for i in 0..WARM_UP_ROUNDS {
        w.apply(&load(i)).await.unwrap();
        tokio::time::sleep(WINDOW).await;
    }
    // Cut points: how many lines each log had at the start of every window, and when.
    let mut cuts: Vec<(Instant, Vec<usize>)> = Vec::new();
    let counts = || {
        files
            .iter()
            .map(|(_, p)| read_lines(p).len())
            .collect::<Vec<_>>()
    };
    cuts.push((Instant::now(), counts()));
    for i in 0..WINDOWS {
        w.apply(&load(100 + i)).await.unwrap();
        let until = cuts[cuts.len() - 1].0 + WINDOW;
        tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
        cuts.push((Instant::now(), counts()));
    }

    // GRAYGATE_KEEP_LOGS=DIR keeps the component logs for a look.
    if let Ok(keep) = std::env::var("GRAYGATE_KEEP_LOGS") {
        std::fs::create_dir_all(&keep).unwrap();
        for (c, p) in &files {
            let _ = std::fs::copy(p, PathBuf::from(&keep).join(format!("{c}.log")));
        }
    }
    let params = Params::from_spec(&LogAnalysisSpec::default());
    let (mut pairs, mut bursts_found, mut lines_judged, mut with_lines) = (0, 0, 0usize, 0);
    let mut healthy_findings = Vec::new();
    for (k, (component, path)) in files.iter().enumerate() {
        let lines = read_lines(path);
        let slice = |a: usize, b: usize| &lines[cuts[a].1[k]..cuts[b].1[k]];
        let secs = |a: usize, b: usize| cuts[b].0.duration_since(cuts[a].0).as_secs_f64();
        for i in 2..WINDOWS {
            let change = group(slice(i, i + 1), secs(i, i + 1));
            let control = group(slice(i - 1, i), secs(i - 1, i));
            let mut before = group(slice(0, i - 1), secs(0, i - 1));
            // The time of each line before the change, as the operator reads it from the
            // kubelet's timestamps: here, known to the window, so spread evenly within it.
            let at: Vec<f64> = (0..i - 1)
                .flat_map(|j| {
                    let (from, len, n) = (secs(0, j), secs(j, j + 1), slice(j, j + 1).len());
                    (0..n).map(move |x| from + (x as f64 + 0.5) * len / n as f64)
                })
                .collect();
            before.at.insert("pod".into(), at);
            pairs += 1;
            lines_judged += change.pods["pod"].len();
            if !change.pods["pod"].is_empty() && !control.pods["pod"].is_empty() {
                with_lines += 1;
            }
            let f = detect(&change, &control, &before, &params);
            println!(
                "{component} window {i}: {} lines against {} (and {} before): {} findings",
                change.pods["pod"].len(),
                control.pods["pod"].len(),
                before.pods["pod"].len(),
                f.len()
            );
            if !f.is_empty() {
                healthy_findings.push(format!("{component} window {i}: {f:#?}"));
            }
            let mut bad = change.clone();
            let (lines, words) = burst(component);
            bad.pods.get_mut("pod").unwrap().extend(lines);
            let f = detect(&bad, &control, &before, &params);
            // Found: a failing finding whose template is the burst's statement.
            if f.iter().any(|f| {
                f.outcome == Some(graygate::api::Verdict::Fail) && f.metric.contains(words)
            }) {
                bursts_found += 1;
            } else {
                println!("{component} window {i}: the burst was not found: {f:#?}");
            }
        }
    }
    println!(
        "{pairs} healthy window pairs, {with_lines} with lines on both sides ({lines_judged} change-window lines): {} with a log finding; error burst found in {bursts_found} of {pairs}",
        healthy_findings.len()
    );
    // etcd and Prometheus log nothing in a steady state (Prometheus runs at level warn here):
    // count only the pairs where both windows had lines.
    assert!(
        with_lines >= 20,
        "only {with_lines} window pairs with lines on both sides"
    );
    assert!(
        healthy_findings.is_empty(),
        "healthy windows with log findings:\n{}",
        healthy_findings.join("\n")
    );
    assert_eq!(
        bursts_found, pairs,
        "an error burst must give a finding in every window"
    );
}
