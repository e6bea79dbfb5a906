//! The way in without Helm, as a new user takes it: the "Run it outside the cluster" recipe of
//! docs/operations.md, run exactly as written (`graygate install | kubectl apply`, a kubeconfig
//! with the ServiceAccount's token, `graygate run` with the webhook on 127.0.0.1:9443) against
//! the real kube-apiserver; then a ChangePolicy guards a Deployment and a `kubectl set image`
//! goes out as a ChangeRequest.

mod common;

use common::*;
use graygate::api::Phase;
use graygate_e2e::world::{World, WorldOptions, graygate_bin};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Api;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// The recipe's shell and everything it started (graygate runs in the foreground), stopped on drop.
struct Recipe(Child);

impl Drop for Recipe {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        // `--`: without it procps' kill reads a negative process group as an option.
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &group])
            .status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

fn kubectl(w: &World, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg(format!("--kubeconfig={}", w.admin_kubeconfig.display()))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outside_cluster_recipe_runs_as_written_and_guards_a_deployment() {
    let w = World::start(WorldOptions::default()).await.unwrap();
    let bin = graygate_bin().unwrap();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let log = w.dir.path().join("recipe.log");
    let _recipe = Recipe(
        Command::new("bash")
            .args([
                "-euo",
                "pipefail",
                "-c",
                &docs_block("operations.md", "outside-cluster-recipe"),
            ])
            .current_dir(w.dir.path())
            .env("KUBECONFIG", &w.admin_kubeconfig)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(w.dir.path().join("recipe.err")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let read_logs = || {
        format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(w.dir.path().join("recipe.err")).unwrap_or_default()
        )
    };

    // graygate started as its ServiceAccount and put its CA into the webhook configuration.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(w.client.clone());
    w.wait_for("the webhook's caBundle", LONG, || async {
        Ok(hooks.get_opt("graygate").await?.filter(|h| {
            h.webhooks.as_ref().is_some_and(|v| {
                v[0].client_config
                    .ca_bundle
                    .as_ref()
                    .is_some_and(|b| !b.0.is_empty())
            })
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", read_logs()));

    // The kubeconfig the recipe made holds graygate's identity and nothing of the admin's.
    let kc = std::fs::read_to_string(w.dir.path().join("graygate.kubeconfig")).unwrap();
    let kc: serde_yaml::Value = serde_yaml::from_str(&kc).unwrap();
    let users = kc["users"].as_sequence().cloned().unwrap_or_default();
    assert_eq!(users.len(), 1, "one user in graygate.kubeconfig: {users:?}");
    assert_eq!(users[0]["name"].as_str(), Some("graygate"));
    assert!(
        !serde_yaml::to_string(&kc)
            .unwrap()
            .contains(graygate_e2e::control_plane::ADMIN_TOKEN),
        "the admin token is not in graygate.kubeconfig"
    );

    // A new user's first guarded Deployment.
    let ns = "o1";
    w.apply(&deployment_yaml(ns, "web", 2)).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 2).await;
    w.apply(&format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: web-policy, namespace: {ns}}}\nspec:\n  workloads: {{names: [web]}}\n  change:\n    batches: [{{replicas: 1, bake: 2s}}, {{percent: 100, bake: 2s}}]\n"
    ))
    .await
    .unwrap();
    w.wait_for("the policy labels web", LONG, || async {
        Ok(deployment(&w, ns, "web").await.filter(|d| {
            d.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(graygate::api::LABEL_GUARDED_BY))
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", read_logs()));
    let out = kubectl(
        &w,
        &[
            "set",
            "image",
            "deployment/web",
            "app=shop/web:healthy-v2",
            "-n",
            ns,
        ],
    );
    assert!(out.contains("graygate holds this change"), "{out}");
    let changes: Api<graygate::api::ChangeRequest> = Api::namespaced(w.client.clone(), ns);
    let name = w
        .wait_for("the generated ChangeRequest", LONG, || async {
            Ok(changes
                .list(&Default::default())
                .await?
                .items
                .first()
                .and_then(|c| c.metadata.name.clone()))
        })
        .await
        .unwrap();
    w.wait_phase(ns, &name, Phase::Succeeded, LONG)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", read_logs()));
    wait_deployment_ready(&w, ns, "web", 2).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v2");
    assert_ne!(d.spec.unwrap().paused, Some(true), "released");
    // The world's kubeconfig skips verifying the API server's certificate: said once, not at
    // every connection.
    let logs = read_logs();
    assert_eq!(logs.matches("Server cert bypassed").count(), 0, "{logs}");
    assert_eq!(
        logs.matches("insecure-skip-tls-verify").count(),
        1,
        "one warning about the unverified certificate: {logs}"
    );
}
