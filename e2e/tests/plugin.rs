//! End-to-end: `kubectl graygate` (the graygate binary linked as `kubectl-graygate`) against the
//! real control plane, run through the real `kubectl` when it is installed, as a user would.

mod common;

use common::*;
use graygate::api::Phase;
use graygate_e2e::world::{World, WorldOptions, graygate_bin};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A folder holding `kubectl-graygate`, to put first on PATH.
fn plugin_dir(w: &World) -> PathBuf {
    let dir = w.dir.path().join("plugin-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let link = dir.join("kubectl-graygate");
    if !link.exists() {
        std::os::unix::fs::symlink(graygate_bin().unwrap(), &link).unwrap();
    }
    dir
}

fn have_kubectl() -> bool {
    Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Run `kubectl graygate <args>` with `kubeconfig`; falls back to the link itself without kubectl.
fn kubectl_graygate(w: &World, kubeconfig: &Path, args: &[&str]) -> Output {
    let dir = plugin_dir(w);
    let path = format!(
        "{}:{}",
        dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = if have_kubectl() {
        let mut c = Command::new("kubectl");
        c.arg("graygate");
        c
    } else {
        Command::new(dir.join("kubectl-graygate"))
    };
    cmd.args(args)
        .env("PATH", path)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("kubectl graygate runs")
}

fn ok(o: &Output) -> String {
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        o.status.success(),
        "kubectl graygate failed ({}):\nstdout: {out}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {}: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).to_string()
}

async fn world_watching(namespaces: &str) -> World {
    let w = World::start(WorldOptions::default()).await.expect("world");
    w.start_graygate(&[&format!("--namespace={namespaces}")])
        .expect("graygate starts");
    w
}

fn annotation(cr: &graygate::api::ChangeRequest, key: &str) -> Option<String> {
    cr.metadata.annotations.as_ref()?.get(key).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_and_approve_through_kubectl() {
    let w = world_watching("p1,p1-other").await;
    web_change(
        &w,
        "p1",
        3,
        "v2",
        "[{replicas: 1, bake: 1s}, {percent: 100, bake: 1s, approval: manual}]",
    )
    .await;
    w.wait_phase("p1", "v2", Phase::AwaitingApproval, LONG)
        .await
        .unwrap();
    let kc = kubeconfig_in(&w, "p1");

    // list: the current context's namespace, one row per change.
    let out = ok(&kubectl_graygate(&w, &kc, &["list"]));
    let rows: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "TARGET", "PHASE", "BATCH", "VERDICT", "AGE"]
    );
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!(
        rows[1][..4],
        ["v2", "Deployment/web", "AwaitingApproval", "2/2"]
    );
    let all = ok(&kubectl_graygate(&w, &w.admin_kubeconfig, &["list", "-A"]));
    assert!(
        all.lines()
            .any(|l| l.starts_with("p1 ") && l.contains(" v2 ")),
        "{all}"
    );

    // status: batches, verdicts and what to do next.
    let out = ok(&kubectl_graygate(&w, &kc, &["status", "v2"]));
    assert!(out.contains("Phase:     AwaitingApproval"), "{out}");
    assert!(
        out.contains("Next:      kubectl graygate approve v2"),
        "{out}"
    );
    let batch = |out: &str, n: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|c| c.first().map(String::as_str) == Some(n))
            .unwrap_or_else(|| panic!("no batch {n} row in\n{out}"))
    };
    let b1 = batch(&out, "1");
    assert_eq!(b1[1..3], ["1".to_string(), "1".to_string()], "{out}");
    assert_eq!(b1[4], "Pass", "{out}");

    // Errors name what is wrong and exit 1.
    let err = fails(&kubectl_graygate(&w, &kc, &["status", "nope"]));
    assert!(
        err.contains("changerequest \"nope\" not found in namespace \"p1\""),
        "{err}"
    );
    let err = fails(&kubectl_graygate(
        &w,
        &kc,
        &["approve", "v2", "--batch", "3"],
    ));
    assert!(
        err.contains("--batch 3") && err.contains("2 batches"),
        "{err}"
    );

    // approve: through the annotation, the change goes on to the end.
    let out = ok(&kubectl_graygate(&w, &kc, &["approve", "v2"]));
    assert!(out.contains("approved up to batch 2"), "{out}");
    let cr = w
        .wait_phase("p1", "v2", Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert_eq!(annotation(&cr, "graygate.io/approve").as_deref(), Some("2"));
    let out = ok(&kubectl_graygate(&w, &kc, &["status", "v2", "--watch"]));
    assert!(out.contains("Phase:     Succeeded"), "{out}");
    assert_eq!(batch(&out, "2")[4], "Pass", "{out}");
    let err = fails(&kubectl_graygate(&w, &kc, &["approve", "v2"]));
    assert!(err.contains("waits for no approval"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_abort_and_retry_through_kubectl() {
    let w = world_watching("p2").await;
    web_change(
        &w,
        "p2",
        4,
        "v3",
        "[{replicas: 1, bake: 10m}, {percent: 100, bake: 1s}]",
    )
    .await;
    wait_batch(&w, "p2", "v3", 1, "baking", |b| b.ready_at.is_some()).await;
    let kc = &w.admin_kubeconfig;
    let ns = ["-n", "p2"];
    let run = |verb: &str| {
        let mut args = vec![verb, "v3"];
        args.extend(ns);
        kubectl_graygate(&w, kc, &args)
    };

    ok(&run("pause"));
    let cr = w.wait_phase("p2", "v3", Phase::Paused, LONG).await.unwrap();
    assert_eq!(
        cr.status.unwrap().reason.as_deref(),
        Some("PausedByAnnotation")
    );
    ok(&run("resume"));
    let cr = w
        .wait_phase("p2", "v3", Phase::Progressing, LONG)
        .await
        .unwrap();
    assert_eq!(
        annotation(&cr, "graygate.io/pause"),
        None,
        "resume lifts the pause"
    );
    assert!(annotation(&cr, "graygate.io/resume").is_some_and(|t| t.starts_with("kubectl-")));

    // A watcher started now sees the rollback through to its end, then returns.
    let watcher = {
        let dir = plugin_dir(&w);
        std::process::Command::new(dir.join("kubectl-graygate"))
            .args(["status", "v3", "--watch", "-n", "p2"])
            .env("KUBECONFIG", kc)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let err = fails(&run("retry"));
    assert!(
        err.contains("only a Failed, RolledBack or Superseded change"),
        "{err}"
    );
    ok(&run("abort"));
    w.wait_phase("p2", "v3", Phase::RolledBack, LONG)
        .await
        .unwrap();
    wait_deployment_ready(&w, "p2", "web", 4).await;
    let watched = tokio::task::spawn_blocking(move || watcher.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let text = ok(&watched);
    assert!(text.contains("Phase:     RollingBack"), "{text}");
    assert!(text.trim_end().contains("Phase:     RolledBack"), "{text}");
    let err = fails(&run("abort"));
    assert!(
        err.contains("is RolledBack; there is nothing to abort"),
        "{err}"
    );

    // A person says what the stopped change really was; the verdict lands in status with an
    // Event, and survives the retry below.
    let marked = kubectl_graygate(&w, kc, &["feedback", "v3", "false-alarm", "-n", "p2"]);
    assert!(ok(&marked).contains("marked false-alarm"));
    let bad = kubectl_graygate(&w, kc, &["feedback", "v3", "maybe", "-n", "p2"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("false-alarm, real-fault, drill"),
        "{bad:?}"
    );
    w.wait_for("the feedback in status", LONG, || async {
        let cr = w.change_request("p2", "v3").await?;
        Ok(cr
            .and_then(|c| c.status)
            .and_then(|s| s.feedback)
            .filter(|f| {
                f.verdict == graygate::api::FeedbackVerdict::FalseAlarm
                    && f.phase == Phase::RolledBack
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
    assert!(
        w.event_reasons("p2", "v3")
            .await
            .unwrap()
            .contains(&"FeedbackRecorded".to_string())
    );

    // retry starts the same change again from the first batch.
    ok(&run("retry"));
    w.wait_for("the change to start again", LONG, || async {
        let cr = w.change_request("p2", "v3").await?;
        Ok(cr
            .and_then(|c| c.status)
            .filter(|s| s.phase == Phase::Progressing && s.current_batch == 1)
            .map(|_| ()))
    })
    .await
    .unwrap();
    assert_within_rbac(&w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cluster_is_a_clear_error() {
    let w = World::start(WorldOptions::default()).await.expect("world");
    // A kubeconfig pointing at a port nothing listens on.
    let text = std::fs::read_to_string(&w.admin_kubeconfig).unwrap();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for c in kc["clusters"].as_sequence_mut().unwrap() {
        c["cluster"]["server"] = format!("http://127.0.0.1:{port}").into();
    }
    let dead = w.dir.path().join("kubeconfig-dead");
    std::fs::write(&dead, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let err = fails(&kubectl_graygate(&w, &dead, &["list"]));
    assert!(
        err.contains("cannot reach the cluster at http://127.0.0.1:"),
        "{err}"
    );
    let missing = w.dir.path().join("no-such-kubeconfig");
    let o = kubectl_graygate(
        &w,
        &missing,
        &["list", "--kubeconfig", missing.to_str().unwrap()],
    );
    let err = fails(&o);
    assert!(err.contains("--kubeconfig"), "{err}");
}
