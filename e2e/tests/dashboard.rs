//! End-to-end: `kubectl graygate dashboard` on the real control plane and a real Prometheus, read
//! in headless Chromium (Debian's `chromium`) after a good and two bad changes, with 200
//! ChangeRequests in the namespace; and the interception record (feedback on two changes) in
//! graygate's `/metrics`, on the dashboard, and through the Grafana panels' own PromQL evaluated
//! by `promtool`. Generated scenario: a regression test.

mod common;

use common::*;
use graygate::api::{FeedbackVerdict, Phase, Verdict};
use graygate_e2e::world::{World, WorldOptions, graygate_bin};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const NS: &str = "dash";

/// Where the scenario leaves its screenshots and pages.
fn output_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("test-output")
        .join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Dashboard(Child, String);

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `kubectl graygate dashboard --port 0` and read the address it prints.
fn start_dashboard(w: &World, kubeconfig: &Path) -> Dashboard {
    let mut child = Command::new(graygate_bin().unwrap())
        .args(["kubectl", "dashboard", "--port", "0"])
        .arg(format!("--prometheus-url={}", w.prometheus_url().unwrap()))
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the dashboard starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .trim_end_matches('/')
        .to_string();
    Dashboard(child, url)
}

/// Headless Chromium: the DOM after the page loaded, and optionally a screenshot.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,2400",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .expect("chromium runs (scripts/install-deps.sh installs Debian's chromium)");
    assert!(
        out.status.success(),
        "chromium {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Median time of `n` GETs of a page (the server renders it whole, queries included).
async fn render_time(url: &str, n: usize) -> (Duration, String) {
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let r = reqwest::get(url).await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{url}");
        body = r.text().await.unwrap();
        times.push(t0.elapsed());
    }
    times.sort();
    (times[n / 2], body)
}

fn analysed(name: &str, target: &str, image: &str, first_bake: &str) -> String {
    change_yaml(
        NS,
        name,
        &format!(
            r#"
target: {{kind: Deployment, name: {target}}}
images: {{app: "{image}"}}
analysis: {{interval: 5s, failureLimit: 2}}
batches:
- {{replicas: 1, bake: {first_bake}}}
- {{percent: 100, bake: 10s}}
"#
        ),
    )
}

/// The Grafana panels' queries evaluated by Prometheus's engine (`promtool test rules`) over
/// the series graygate exported: returns promtool's verdict on the expected values.
fn grafana_panels_read(metrics_text: &str, expected: &[(&str, f64)]) {
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../charts/graygate/dashboards/graygate.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let job = "graygate-metrics";
    let mut input = Vec::new();
    for line in metrics_text.lines() {
        if let Some(rest) = line.strip_prefix("graygate_interceptions{") {
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            input.push(serde_json::json!({
                "series": format!("graygate_interceptions{{{labels},job=\"{job}\"}}"),
                "values": format!("{value}x10"),
            }));
        }
    }
    assert!(
        !input.is_empty(),
        "no graygate_interceptions in\n{metrics_text}"
    );
    let mut tests = Vec::new();
    for (title, value) in expected {
        let panel = dash["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == *title)
            .unwrap_or_else(|| panic!("no Grafana panel {title:?}"));
        let expr = panel["targets"][0]["expr"]
            .as_str()
            .unwrap()
            .replace("$job", job);
        tests.push(serde_json::json!({
            "expr": expr,
            "eval_time": "1m",
            "exp_samples": [{"labels": "{}", "value": value}],
        }));
    }
    let file = serde_json::json!({
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input, "promql_expr_test": tests}],
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("panels-test.yaml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("promtool runs");
    assert!(
        out.status.success(),
        "Grafana panels over graygate's series:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_evidence_and_the_interception_record() {
    let w = World::start(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await
    .expect("world starts");
    let metrics_port = w.start_graygate(&[]).expect("graygate starts");
    w.apply(&deployment_yaml(NS, "web", 4)).await.unwrap();
    w.apply(&deployment_yaml(NS, "api", 4)).await.unwrap();
    wait_deployment_ready(&w, NS, "web", 4).await;
    wait_deployment_ready(&w, NS, "api", 4).await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // A good change of web and, at the same time, a build with errors on api.
    w.apply(&analysed("good", "web", "shop/web:healthy-v2", "20s"))
        .await
        .unwrap();
    w.apply(&analysed("errors", "api", "shop/web:errors", "60s"))
        .await
        .unwrap();
    w.wait_phase(NS, "good", Phase::Succeeded, Duration::from_secs(180))
        .await
        .unwrap();
    w.wait_phase(NS, "errors", Phase::RolledBack, LONG)
        .await
        .unwrap();
    // Then a slow build of web.
    w.apply(&analysed("bad", "web", "shop/web:latency", "60s"))
        .await
        .unwrap();
    let bad = w
        .wait_phase(NS, "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    let st = bad.status.clone().unwrap();
    let failing = st.batches[0]
        .findings
        .iter()
        .find(|f| f.outcome == Some(Verdict::Fail) && f.metric == "latency-p99")
        .unwrap_or_else(|| panic!("no failing latency finding: {:#?}", st.batches[0].findings))
        .clone();
    let judged = st.batches[0]
        .judged
        .clone()
        .expect("the judged window is recorded");
    assert!(
        !judged.change.is_empty() && !judged.control.is_empty(),
        "{judged:?}"
    );
    assert!(judged.from.0 < judged.to.0);

    // Feedback on two stopped changes: one real, one a false alarm.
    let kubeconfig = kubeconfig_in(&w, NS);
    graygate_kubectl(&kubeconfig, &["feedback", "bad", "real-fault"]);
    graygate_kubectl(&kubeconfig, &["feedback", "errors", "false-alarm"]);
    for (name, verdict) in [
        ("bad", FeedbackVerdict::RealFault),
        ("errors", FeedbackVerdict::FalseAlarm),
    ] {
        w.wait_for(&format!("feedback on {name}"), LONG, || async {
            let cr = w.change_request(NS, name).await?;
            Ok(cr.filter(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.feedback.as_ref())
                    .is_some_and(|f| f.verdict == verdict)
            }))
        })
        .await
        .unwrap();
    }
    let (code, metrics) = graygate_http(metrics_port, "/metrics").await;
    assert_eq!(code, 200);
    for want in [
        r#"graygate_interceptions{namespace="dash",outcome="stopped",feedback="real-fault"} 1"#,
        r#"graygate_interceptions{namespace="dash",outcome="stopped",feedback="false-alarm"} 1"#,
        r#"graygate_interceptions{namespace="dash",outcome="released",feedback="none"} 1"#,
    ] {
        assert!(metrics.contains(want), "{want} not in /metrics:\n{metrics}");
    }
    grafana_panels_read(
        &metrics,
        &[
            ("Interception precision", 0.5),
            ("Stopped, not yet reviewed", 0.0),
        ],
    );

    // 197 more changes, so the namespace holds 200 (refused specs: they end at once, Invalid).
    for i in 0..197 {
        w.create(serde_json::json!({
            "apiVersion": "graygate.io/v1alpha1",
            "kind": "ChangeRequest",
            "metadata": {"name": format!("filler-{i:03}"), "namespace": NS},
            "spec": {
                "target": {"kind": "Deployment", "name": "ghost"},
                "images": {"app": " "},
                "batches": [{"percent": 100}],
            },
        }))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    let dash = start_dashboard(&w, &kubeconfig);
    let list_url = format!("{}/ns/{NS}", dash.1);
    let bad_url = format!("{}/ns/{NS}/changes/bad", dash.1);
    let (list_time, list_html) = render_time(&list_url, 5).await;
    let (bad_time, _) = render_time(&bad_url, 5).await;
    println!(
        "dashboard with 200 changes: namespace page {} ms, bad change page {} ms (median of 5, queries included)",
        list_time.as_millis(),
        bad_time.as_millis()
    );
    assert_eq!(list_html.matches("<tr data-change=").count(), 200);
    let (_, stopped) = render_time(&format!("{list_url}?phase=RolledBack"), 1).await;
    assert_eq!(stopped.matches("<tr data-change=").count(), 2);

    // What a person sees, through Chromium.
    let out = output_dir();
    let list_dom = chromium(&list_url, None);
    for name in ["good", "bad", "errors"] {
        assert!(
            list_dom.contains(&format!(r#"data-change="{name}""#)),
            "{name} not listed"
        );
    }
    assert!(list_dom.contains("Succeeded") && list_dom.contains("RolledBack"));
    assert!(
        list_dom.contains(r#"data-kpi="precision"><b>50%</b>"#),
        "precision not on the page"
    );
    let bad_dom = chromium(&bad_url, None);
    std::fs::write(out.join("bad-change.html"), &bad_dom).unwrap();
    let svg_start = bad_dom
        .find(r#"data-metric="latency-p99" data-beyond=""#)
        .expect("a latency-p99 plot on the bad change's page");
    let beyond: usize = bad_dom[svg_start..]
        .split('"')
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert!(beyond >= 1, "the failing slots are marked: {beyond}");
    let plot_section = &bad_dom[svg_start..];
    assert!(plot_section.contains(r#"class="beyond""#));
    let text = failing
        .explanation
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(
        bad_dom.contains(&text),
        "the finding's sentence {text:?} is not on the page"
    );
    assert!(bad_dom.contains(r#"<span class="Fail">Fail</span> · peers · change vs control"#));
    chromium(&bad_url, Some(&out.join("bad-change.png")));
    chromium(&list_url, Some(&out.join("changes.png")));
    for f in ["bad-change.png", "changes.png"] {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 10_000, "{f}: {len} bytes");
    }
    println!("screenshots in {}", out.display());
}
