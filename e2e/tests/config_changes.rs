//! Config changes of guarded workloads on the real control plane.
//!
//! A kustomize-style rename (`configMapGenerator` gives every version of a ConfigMap a new name):
//! Git changes the template to the new name and a prune deletes the old object in the same sync.
//! The old pods, their restarts and a rollback still need the old object; graygate's finalizer
//! keeps it until nothing does. The application's profile comes from the mounted ConfigMap, so
//! what each pod does shows which object it was started from.

mod common;

use common::*;
use graygate::api::{ChangeRequest, Phase};
use graygate::guard::keep::FINALIZER;
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const NS: &str = "cfg-rename";

/// The ConfigMap `name` whose `profile` key chooses what the application does.
fn config(name: &str, profile: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: {NS}}}\ndata: {{profile: {profile}}}\n"
    )
}

/// The Deployment `web`, 4 pods mounting the ConfigMap `config` at /etc/web.
fn web(config: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {NS}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      volumes: [{{name: config, configMap: {{name: {config}}}}}]
      containers:
      - name: app
        image: shop/web:1.0
        volumeMounts: [{{name: config, mountPath: /etc/web}}]
"#
    )
}

fn policy() -> String {
    format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web-policy, namespace: {NS}}}
spec:
  workloads: {{names: [web]}}
  change:
    batches:
    - {{replicas: 1, bake: 25s}}
    - {{percent: 50, bake: 4s}}
    - {{percent: 100, bake: 2s}}
"#
    )
}

async fn configmap(w: &World, name: &str) -> Option<ConfigMap> {
    configmap_in(w, NS, name).await
}

async fn configmap_in(w: &World, ns: &str, name: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(w.client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

fn kept(cm: &ConfigMap) -> bool {
    cm.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

async fn wait_kept(w: &World, name: &str, want: bool) {
    w.wait_for(
        &format!("ConfigMap {name} with the finalizer: {want}"),
        LONG,
        || async {
            Ok(configmap(w, name)
                .await
                .filter(|cm| kept(cm) == want)
                .map(|_| ()))
        },
    )
    .await
    .unwrap();
}

async fn wait_gone(w: &World, name: &str) {
    w.wait_for(&format!("ConfigMap {name} deleted"), LONG, || async {
        Ok(configmap(w, name).await.is_none().then_some(()))
    })
    .await
    .unwrap();
}

async fn pods(w: &World) -> Vec<Pod> {
    pods_in(w, NS, "app=web").await
}

/// The pods of `ns` matching `selector` that are not being deleted.
async fn pods_in(w: &World, ns: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(w.client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The ConfigMap a pod mounts, as its spec names it (a copy graygate pinned it to, or the
/// object).
fn mounted(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .and_then(|v| v.first())
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .unwrap_or_default()
}

/// The ConfigMap a pod reads the contents of: the object, or the object of the copy it mounts.
fn source(p: &Pod) -> String {
    let m = mounted(p);
    match m.rsplit_once("-gg-") {
        Some((object, _)) => object.to_string(),
        None => m,
    }
}

/// Wait until exactly `n` pods run, all started from ConfigMap `config` and serving.
async fn wait_pods_on(w: &World, config: &str, n: usize) {
    w.wait_for(&format!("{n} pods on {config}"), LONG, || async {
        let all = pods(w).await;
        let ok = all.len() == n
            && all.iter().all(|p| {
                source(p) == config
                    && p.metadata
                        .name
                        .as_deref()
                        .is_some_and(|name| w.apps.is_ready(NS, name) == Some(true))
            });
        Ok(ok.then_some(()))
    })
    .await
    .unwrap();
}

/// Delete one pod started from ConfigMap `old`; wait until its replacement, started from the
/// same ConfigMap, serves with `profile`.
async fn restart_one_old_pod(w: &World, old: &str, profile: &str) {
    let before: Vec<String> = pods(w)
        .await
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let victim = pods(w)
        .await
        .into_iter()
        .find(|p| source(p) == old)
        .and_then(|p| p.metadata.name)
        .unwrap_or_else(|| panic!("no pod mounts {old}"));
    Api::<Pod>::namespaced(w.client.clone(), NS)
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let new = w
        .wait_for("the restarted old pod serving", LONG, || async {
            Ok(pods(w).await.into_iter().find_map(|p| {
                let name = p.metadata.name.clone()?;
                (!before.contains(&name)
                    && source(&p) == old
                    && w.apps.is_ready(NS, &name) == Some(true))
                .then_some(name)
            }))
        })
        .await
        .unwrap();
    assert_eq!(
        w.apps.profile_of(NS, &new).as_deref(),
        Some(profile),
        "{new} started from {old}"
    );
}

/// A change rolled back in its first batch by the error-ratio metric.
fn failed_first_batch_on_errors(cr: ChangeRequest) {
    let st = cr.status.unwrap();
    assert_eq!(st.current_batch, 1, "{:?}", st.message);
    assert!(
        st.batches[0]
            .findings
            .iter()
            .any(|f| f.metric == "error-ratio" && f.outcome == Some(graygate::api::Verdict::Fail)),
        "{:#?}",
        st.batches[0].findings
    );
}

async fn wait_phase(w: &World, name: &str, want: Phase) {
    w.wait_phase(NS, name, want, LONG).await.unwrap();
}

/// `kubectl apply` as a GitOps sync or kustomize sends it.
fn apply(w: &World, yaml: &str) {
    let (ok, out) = kubectl(w, &["apply", "-f", "-"], Some(yaml));
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_configmap_outlives_its_prune_until_the_change_ends() {
    let w = world_with_webhook(WorldOptions::default()).await;
    apply(
        &w,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}}}\n---\n{}---\n{}",
            config("web-config-v1", "healthy"),
            web("web-config-v1")
        ),
    );
    wait_deployment_ready(&w, NS, "web", 4).await;
    w.apply(&policy()).await.unwrap();
    wait_labelled_guarded(&w, NS, "web").await;
    // A guarded workload's ConfigMap is kept from the start: the prune of a rename comes in the
    // same sync as the template change.
    wait_kept(&w, "web-config-v1", true).await;
    // Guarding pins its pods to a copy of v1: a change of its own.
    let pin = generated_change(&w, NS, &[]).await;
    wait_phase(&w, &pin, Phase::Succeeded).await;
    wait_pods_on(&w, "web-config-v1", 4).await;

    // Git: the generator's new name, and the old object pruned, in one sync.
    apply(
        &w,
        &format!(
            "{}---\n{}",
            config("web-config-v2", "latency"),
            web("web-config-v2")
        ),
    );
    let first = generated_change(&w, NS, std::slice::from_ref(&pin)).await;
    Api::<ConfigMap>::namespaced(w.client.clone(), NS)
        .delete("web-config-v1", &DeleteParams::default())
        .await
        .unwrap();
    let v1 = configmap(&w, "web-config-v1")
        .await
        .expect("the pruned ConfigMap waits for the change");
    assert!(v1.metadata.deletion_timestamp.is_some());
    // An old pod that restarts mid-change starts from the old ConfigMap, as before the prune.
    restart_one_old_pod(&w, "web-config-v1", "healthy").await;
    let events = events_of(&w, "web-config-v1").await;
    assert!(
        events
            .iter()
            .any(|e| e.contains("DeletionWaits") && e.contains("Deployment/web")),
        "{events:#?}"
    );

    wait_phase(&w, &first, Phase::Succeeded).await;
    wait_deployment_ready(&w, NS, "web", 4).await;
    // Released: no pod needs v1 any more, and the prune completes.
    wait_gone(&w, "web-config-v1").await;
    for p in pods(&w).await {
        assert_eq!(source(&p), "web-config-v2");
    }
    assert!(kept(&configmap(&w, "web-config-v2").await.unwrap()));

    // A rename that is rolled back: the old object, pruned meanwhile, is what the pods go back to.
    apply(
        &w,
        &format!(
            "{}---\n{}",
            config("web-config-v3", "errors"),
            web("web-config-v3")
        ),
    );
    let second = generated_change(&w, NS, &[pin.clone(), first.clone()]).await;
    Api::<ConfigMap>::namespaced(w.client.clone(), NS)
        .delete("web-config-v2", &DeleteParams::default())
        .await
        .unwrap();
    wait_kept(&w, "web-config-v3", true).await;
    wait_phase(&w, &second, Phase::Progressing).await;
    Api::<ChangeRequest>::namespaced(w.client.clone(), NS)
        .patch(
            &second,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"graygate.io/abort": "test"}}})),
        )
        .await
        .unwrap();
    wait_phase(&w, &second, Phase::RolledBack).await;
    // Held on the failed template, the Deployment is not "updated": count the serving pods.
    wait_pods_on(&w, "web-config-v2", 4).await;
    // Every pod is on v2 again, and v2 stays while they run it, deletion pending.
    restart_one_old_pod(&w, "web-config-v2", "latency").await;
    for p in pods(&w).await {
        assert_eq!(source(&p), "web-config-v2");
        let name = p.metadata.name.unwrap();
        assert_eq!(w.apps.profile_of(NS, &name).as_deref(), Some("latency"));
    }
    let v2 = configmap(&w, "web-config-v2").await.unwrap();
    assert!(kept(&v2) && v2.metadata.deletion_timestamp.is_some());

    // Git goes back to v3's predecessor by name: v3 is referenced by nothing and is let go.
    apply(&w, &web("web-config-v2"));
    wait_kept(&w, "web-config-v3", false).await;
    assert_within_rbac(&w);

    // graygate uninstalled while it keeps v2: the documented commands let go of it, and the
    // deletion waiting since the prune completes.
    w.kill_graygate();
    let block = docs_block("gitops.md", "remove-in-use-finalizers");
    let run = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .env("KUBECONFIG", &w.admin_kubeconfig)
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    wait_gone(&w, "web-config-v2").await;
}

/// Every Event about the ConfigMap `name`, once there is one, as "reason: note".
async fn events_of(w: &World, name: &str) -> Vec<String> {
    w.wait_for("an Event about the ConfigMap", LONG, || async {
        let evs = events_in(w, NS, name).await;
        Ok((!evs.is_empty()).then_some(evs))
    })
    .await
    .unwrap()
}

const EXPLICIT: &str = "cfg-explicit";

/// The Deployment `api`, 2 pods whose profile comes from the Secret `api-env` through `env`, and
/// the Secret `api-env-v2` with the values of the next version.
const API: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: api-env, namespace: cfg-explicit}
stringData: {APP_PROFILE: healthy}
---
apiVersion: v1
kind: Secret
metadata: {name: api-env-v2, namespace: cfg-explicit}
stringData: {APP_PROFILE: noisy-but-healthy}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: cfg-explicit}
spec:
  replicas: 2
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      containers:
      - name: app
        image: shop/api:1.0
        env:
        - {name: APP_PROFILE, valueFrom: {secretKeyRef: {name: api-env, key: APP_PROFILE}}}
"#;

/// A ChangeRequest of `web` that sets `profile` in its ConfigMap `web-config`.
fn config_change(name: &str, profile: &str, rest: &str) -> String {
    change_yaml(
        EXPLICIT,
        name,
        &format!(
            "target: {{kind: Deployment, name: web}}\nconfig: [{{configMap: web-config, data: {{profile: {profile}}}}}]\n{rest}"
        ),
    )
}

/// The profile each serving pod of `selector` runs, by pod.
async fn profiles(w: &World, selector: &str) -> Vec<(String, String)> {
    pods_in(w, EXPLICIT, selector)
        .await
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name?;
            let profile = w.apps.profile_of(EXPLICIT, &name)?;
            Some((name, profile))
        })
        .collect()
}

/// Wait until the pods of `selector` are `n`, each serving with `profile`.
async fn wait_profiles(w: &World, selector: &str, n: usize, profile: &str) {
    w.wait_for(
        &format!("{n} pods of {selector} on {profile}"),
        LONG,
        || async {
            let got = profiles(w, selector).await;
            Ok((got.len() == n && got.iter().all(|(_, p)| p == profile)).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// The copies a change made that still exist.
async fn copies_of(w: &World, change: &str) -> Vec<String> {
    let sel = format!("graygate.io/change={change}");
    let mut out: Vec<String> = Api::<ConfigMap>::namespaced(w.client.clone(), EXPLICIT)
        .list(&ListParams::default().labels(&sel))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    out.extend(
        Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.client.clone(), EXPLICIT)
            .list(&ListParams::default().labels(&sel))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name),
    );
    out
}

async fn profile_key(w: &World) -> String {
    configmap_in(w, EXPLICIT, "web-config")
        .await
        .and_then(|c| c.data)
        .and_then(|d| d.get("profile").cloned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicit_config_change_goes_out_in_batches_and_a_bad_one_is_rolled_back() {
    let w = world(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await;
    let web = web("web-config").replace(NS, EXPLICIT);
    w.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {EXPLICIT}}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web-config, namespace: {EXPLICIT}}}\ndata: {{profile: healthy}}\n---\n{web}---\n{API}"
    ))
    .await
    .unwrap();
    wait_deployment_ready(&w, EXPLICIT, "web", 4).await;
    wait_deployment_ready(&w, EXPLICIT, "api", 2).await;
    // A background for the analysis.
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;

    // A config that makes the application fail: only the canary pod sees it, and it is rolled
    // back in the first batch.
    w.apply(&config_change(
        "bad",
        "errors",
        "analysis: {interval: 5s, failureLimit: 2}\nbatches:\n- {replicas: 1, bake: 60s}\n- {percent: 100, bake: 10s}",
    ))
    .await
    .unwrap();
    wait_profiles(&w, "graygate.io/change=bad", 1, "errors").await;
    let old: Vec<(String, String)> = profiles(&w, "app=web,!graygate.io/change").await;
    assert!(
        !old.is_empty() && old.iter().all(|(_, p)| p == "healthy"),
        "the pods outside the batch keep the old data: {old:?}"
    );
    assert_eq!(
        profile_key(&w).await,
        "healthy",
        "the ConfigMap is untouched"
    );
    let cr = w
        .wait_phase(EXPLICIT, "bad", Phase::RolledBack, LONG)
        .await
        .unwrap();
    failed_first_batch_on_errors(cr);
    wait_profiles(&w, "app=web", 4, "healthy").await;
    assert_eq!(profile_key(&w).await, "healthy");
    assert_eq!(copies_of(&w, "bad").await, Vec::<String>::new());

    // A good config: the canary first, then every pod restarts onto the new contents, which are
    // now the ConfigMap's own.
    w.apply(&config_change(
        "good",
        "noisy-but-healthy",
        "batches:\n- {replicas: 1, bake: 8s}\n- {percent: 100, bake: 2s}",
    ))
    .await
    .unwrap();
    wait_profiles(&w, "graygate.io/change=good", 1, "noisy-but-healthy").await;
    assert_eq!(profile_key(&w).await, "healthy", "not before promotion");
    w.wait_phase(EXPLICIT, "good", Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert_eq!(profile_key(&w).await, "noisy-but-healthy");
    wait_deployment_ready(&w, EXPLICIT, "web", 4).await;
    wait_profiles(&w, "app=web", 4, "noisy-but-healthy").await;
    let d = deployment(&w, EXPLICIT, "web").await.unwrap();
    let template = d.spec.unwrap().template;
    assert!(
        template
            .metadata
            .and_then(|m| m.annotations)
            .is_some_and(|a| a.contains_key(graygate::rollout::config::ANN_CONFIG)),
        "the promoted template restarts every pod onto the new contents"
    );
    assert_eq!(
        template.spec.unwrap().volumes.unwrap()[0]
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "web-config",
        "the Deployment names the ConfigMap itself, not a copy"
    );
    assert_eq!(copies_of(&w, "good").await, Vec::<String>::new());

    // A Secret read through `env`, its new values in a Secret made beside it (never in the
    // ChangeRequest): the canary starts with them, the old pods keep theirs until promotion.
    w.apply(&change_yaml(
        EXPLICIT,
        "api-secret",
        "target: {kind: Deployment, name: api}\nconfig: [{secret: api-env, from: api-env-v2}]\nbatches:\n- {replicas: 1, bake: 6s}\n- {percent: 100, bake: 2s}",
    ))
    .await
    .unwrap();
    wait_profiles(&w, "graygate.io/change=api-secret", 1, "noisy-but-healthy").await;
    let old = profiles(&w, "app=api,!graygate.io/change").await;
    assert!(
        !old.is_empty() && old.iter().all(|(_, p)| p == "healthy"),
        "{old:?}"
    );
    w.wait_phase(EXPLICIT, "api-secret", Phase::Succeeded, LONG)
        .await
        .unwrap();
    wait_deployment_ready(&w, EXPLICIT, "api", 2).await;
    wait_profiles(&w, "app=api", 2, "noisy-but-healthy").await;
    let secret = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(w.client.clone(), EXPLICIT)
        .get("api-env")
        .await
        .unwrap();
    assert_eq!(
        secret.data.unwrap()["APP_PROFILE"].0,
        b"noisy-but-healthy".to_vec(),
        "the Secret itself holds what the canary ran"
    );
    assert_eq!(copies_of(&w, "api-secret").await, Vec::<String>::new());

    // Mistakes: invalid, naming the field; nothing made, nothing touched.
    for (name, config, says) in [
        (
            "wrong",
            "{configMap: other, data: {a: b}}",
            "spec.config[0].configMap: the target's pod template does not use ConfigMap other (it uses: web-config)",
        ),
        (
            "nosource",
            "{configMap: web-config, from: web-config-next}",
            "spec.config[0].from: ConfigMap web-config-next does not exist",
        ),
    ] {
        w.apply(&change_yaml(
            EXPLICIT,
            name,
            &format!(
                "target: {{kind: Deployment, name: web}}\nconfig: [{config}]\nbatches: [{{percent: 100}}]"
            ),
        ))
        .await
        .unwrap();
        let cr = w
            .wait_phase(EXPLICIT, name, Phase::Invalid, LONG)
            .await
            .unwrap();
        assert_eq!(cr.status.unwrap().message.as_deref(), Some(says));
        assert_eq!(copies_of(&w, name).await, Vec::<String>::new());
        let canary = format!("web-canary-{name}");
        assert!(deployment(&w, EXPLICIT, &canary).await.is_none());
    }
    assert_within_rbac(&w);
}

const INPLACE: &str = "cfg-inplace";

/// The ConfigMap `web-config` of `cfg-inplace`, its `profile` key as given (what Git applies).
fn web_config(profile: &str) -> String {
    config("web-config", profile).replace(NS, INPLACE)
}

/// The ConfigMaps of `cfg-inplace` graygate pinned pods to, by name.
async fn pinned_copies(w: &World) -> Vec<String> {
    Api::<ConfigMap>::namespaced(w.client.clone(), INPLACE)
        .list(&ListParams::default().labels(graygate::guard::pin::LABEL_PINNED_COPY))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| c.metadata.name)
        .collect()
}

/// Each serving pod of `web` in `cfg-inplace`: its name, the ConfigMap it mounts and the profile
/// it runs.
async fn inplace_pods(w: &World) -> Vec<(String, String, String)> {
    pods_in(w, INPLACE, "app=web")
        .await
        .into_iter()
        .filter_map(|p| {
            let name = p.metadata.name.clone()?;
            let profile = w.apps.profile_of(INPLACE, &name)?;
            Some((name, mounted(&p), profile))
        })
        .collect()
}

/// The pods of a guarded change's canary ReplicaSet, named after the change, and the others.
type Split = (Vec<(String, String, String)>, Vec<(String, String, String)>);

async fn split(w: &World, change: &str) -> Split {
    inplace_pods(w)
        .await
        .into_iter()
        .partition(|(name, _, _)| name.starts_with(&format!("{change}-")))
}

/// Wait until `n` pods of `web` serve `profile` from a pinned copy of `web-config` (of the
/// change's canary when `change` is given, else of all of them).
async fn wait_inplace(w: &World, change: Option<&str>, n: usize, profile: &str) {
    w.wait_for(
        &format!("{n} pods of {change:?} on {profile}"),
        LONG,
        || async {
            let got = match change {
                Some(c) => split(w, c).await.0,
                None => inplace_pods(w).await,
            };
            Ok((got.len() == n
                && got
                    .iter()
                    .all(|(_, m, p)| p == profile && m.starts_with("web-config-gg-")))
            .then_some(()))
        },
    )
    .await
    .unwrap();
}

/// A ConfigMap edited in place on a guarded Deployment: the pods read immutable copies (pinned
/// when the policy first guards it), so the edit reaches the canary first; a bad edit is rolled
/// back with every pod on the old data while the ConfigMap keeps what was applied, reverting
/// the edit releases the workload at once, and a good one goes out in batches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_edited_in_place_goes_out_in_batches_and_a_bad_edit_is_rolled_back() {
    let w = World::start(WorldOptions {
        prometheus: true,
        ..Default::default()
    })
    .await
    .expect("world starts");
    let hook = w
        .install_webhook("Ignore")
        .await
        .expect("webhook installed");
    let hook: Vec<&str> = hook.iter().map(String::as_str).collect();
    w.start_graygate(&hook).expect("graygate starts");
    apply(
        &w,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {INPLACE}}}\n---\n{}---\n{}",
            web_config("healthy"),
            web("web-config").replace(NS, INPLACE)
        ),
    );
    wait_deployment_ready(&w, INPLACE, "web", 4).await;
    // The pinning change's last batch (every pod) is judged against the workload before the
    // change: pods that became ready a moment ago give it one or two samples, whose first
    // `rate()` windows read low (a healthy CPU once read 2.7 times such a background). Let the
    // pods run first, as a workload does before anyone guards it.
    tokio::time::sleep(std::time::Duration::from_secs(20)).await;
    // Analysed, with a last batch long enough for a judgement of pods that just started. Every
    // 10 s: the last edit is `noisy-but-healthy`, whose one canary's p99 over a 5 s point (80–100
    // requests) moves past the 100 ms bucket on a single slow request (see `analysis.rs`).
    let policy = format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web-policy, namespace: {INPLACE}}}
spec:
  workloads: {{names: [web]}}
  change:
    analysis: {{interval: 10s, failureLimit: 2}}
    batches:
    - {{replicas: 1, bake: 30s}}
    - {{percent: 100, bake: 30s}}
"#
    );
    apply(&w, &policy);
    wait_labelled_guarded(&w, INPLACE, "web").await;

    // Guarding pins the pods to a copy of what they read: a change of its own, in batches.
    let pin = generated_change(&w, INPLACE, &[]).await;
    wait_phase_in(&w, INPLACE, &pin, Phase::Succeeded).await;
    wait_inplace(&w, None, 4, "healthy").await;
    assert_eq!(pinned_copies(&w).await.len(), 1);

    // An edit in place that makes the application fail.
    apply(&w, &web_config("errors"));
    let bad = generated_change(&w, INPLACE, std::slice::from_ref(&pin)).await;
    wait_inplace(&w, Some(&bad), 1, "errors").await;
    // The pods outside the batch keep the old data, well past a kubelet's sync of the volume.
    for _ in 0..3 {
        let old = split(&w, &bad).await.1;
        assert!(
            old.len() >= 3 && old.iter().all(|(_, _, p)| p == "healthy"),
            "{old:?}"
        );
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    }
    let cr = w
        .wait_phase(INPLACE, &bad, Phase::RolledBack, LONG)
        .await
        .unwrap();
    failed_first_batch_on_errors(cr);
    wait_inplace(&w, None, 4, "healthy").await;
    // Git stays the truth: the ConfigMap keeps what was applied.
    let cm = configmap_in(&w, INPLACE, "web-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["profile"], "errors");
    let events = events_in(&w, INPLACE, "web").await;
    assert!(
        events.iter().any(|e| e.contains("ConfigChanged")
            && e.contains("ConfigMap web-config changed (keys: profile)")),
        "{events:#?}"
    );

    // Reverting the edit is a revert of the template: released at once, no change.
    apply(&w, &web_config("healthy"));
    w.wait_for("the hold lifted", LONG, || async {
        let d = deployment(&w, INPLACE, "web").await.unwrap();
        Ok((d.spec.unwrap().paused != Some(true)).then_some(()))
    })
    .await
    .unwrap();
    wait_deployment_ready(&w, INPLACE, "web", 4).await;
    wait_inplace(&w, None, 4, "healthy").await;

    // A good edit: the canary first, then every pod.
    apply(&w, &web_config("noisy-but-healthy"));
    let known = [pin.clone(), bad.clone()];
    let good = generated_change(&w, INPLACE, &known).await;
    wait_inplace(&w, Some(&good), 1, "noisy-but-healthy").await;
    let old = split(&w, &good).await.1;
    assert!(old.iter().all(|(_, _, p)| p == "healthy"), "{old:?}");
    wait_phase_in(&w, INPLACE, &good, Phase::Succeeded).await;
    wait_deployment_ready(&w, INPLACE, "web", 4).await;
    wait_inplace(&w, None, 4, "noisy-but-healthy").await;
    let changes = || async {
        Api::<ChangeRequest>::namespaced(w.client.clone(), INPLACE)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect::<Vec<String>>()
    };
    let all = changes().await;
    assert_eq!(
        all.len(),
        3,
        "one change per edit, none for the revert: {all:?}"
    );

    // Helm's convention: an upgrade writes the ConfigMap and, a moment later, a checksum of it in
    // the template. One change, not two: the pins join the held template before its change.
    let helm_web = web("web-config").replace(NS, INPLACE).replace(
        "    metadata: {labels: {app: web}}",
        "    metadata: {labels: {app: web}, annotations: {checksum/config: 5f0c2d}}",
    );
    apply(&w, &format!("{}---\n{helm_web}", web_config("healthy")));
    let helm = generated_change(&w, INPLACE, &all).await;
    wait_inplace(&w, Some(&helm), 1, "healthy").await;
    let old = split(&w, &helm).await.1;
    assert!(
        old.iter().all(|(_, _, p)| p == "noisy-but-healthy"),
        "{old:?}"
    );
    wait_phase_in(&w, INPLACE, &helm, Phase::Succeeded).await;
    wait_deployment_ready(&w, INPLACE, "web", 4).await;
    wait_inplace(&w, None, 4, "healthy").await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let after = changes().await;
    assert_eq!(after.len(), 4, "the upgrade is one change: {after:?}");

    // graygate down while the ConfigMap is edited: no pinned pod sees the edit. A pod started
    // meanwhile gets no answer from the pod webhook (Ignore) and reads the object itself; once
    // graygate is back it is reported, and the edit goes out in batches.
    w.kill_graygate();
    apply(&w, &web_config("noisy-but-healthy"));
    let victim = inplace_pods(&w).await[0].0.clone();
    Api::<Pod>::namespaced(w.client.clone(), INPLACE)
        .delete(&victim, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let unpinned = w
        .wait_for("a pod started without the webhook", LONG, || async {
            Ok(inplace_pods(&w)
                .await
                .into_iter()
                .find(|(_, m, p)| m == "web-config" && p == "noisy-but-healthy")
                .map(|(n, _, _)| n))
        })
        .await
        .unwrap();
    let others: Vec<_> = inplace_pods(&w)
        .await
        .into_iter()
        .filter(|(n, _, _)| *n != unpinned)
        .collect();
    assert!(
        others.len() == 3 && others.iter().all(|(_, _, p)| p == "healthy"),
        "the pinned pods keep their copy: {others:?}"
    );
    w.start_graygate(&hook).unwrap();
    let reported = w
        .wait_for("the unpinned pod reported", LONG, || async {
            let evs = events_in(&w, INPLACE, &unpinned).await;
            Ok(evs.into_iter().find(|e| e.starts_with("UnguardedChange: ")))
        })
        .await
        .unwrap();
    assert!(
        reported.contains("without graygate's pod webhook"),
        "{reported}"
    );
    let down = generated_change(&w, INPLACE, &after).await;
    wait_phase_in(&w, INPLACE, &down, Phase::Succeeded).await;
    wait_deployment_ready(&w, INPLACE, "web", 4).await;
    wait_inplace(&w, None, 4, "noisy-but-healthy").await;
    // Nothing graygate made is left but the copy the pods read.
    w.wait_for("the copies no pod reads deleted", LONG, || async {
        Ok((pinned_copies(&w).await.len() == 1).then_some(()))
    })
    .await
    .unwrap();
    assert_within_rbac(&w);
}

async fn wait_phase_in(w: &World, ns: &str, name: &str, want: Phase) {
    w.wait_phase(ns, name, want, LONG).await.unwrap();
}

/// Every Event about the object `name` of `ns`, as "reason: note".
async fn events_in(w: &World, ns: &str, name: &str) -> Vec<String> {
    Api::<k8s_openapi::api::core::v1::Event>::namespaced(w.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

const ENV: &str = "cfg-env";

/// A Secret read through `env`, edited in place on a guarded Deployment: the value is read when a
/// container starts, so only the canary has it until its change is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_read_through_env_edited_in_place_reaches_the_canary_first() {
    let w = world_with_webhook(WorldOptions::default()).await;
    let secret = |profile: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: api-env, namespace: {ENV}}}\nstringData: {{APP_PROFILE: {profile}}}\n"
        )
    };
    let api = API
        .split("---")
        .find(|d| d.contains("kind: Deployment"))
        .unwrap()
        .replace(EXPLICIT, ENV);
    apply(
        &w,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ENV}}}\n---\n{}---\n{api}",
            secret("healthy")
        ),
    );
    wait_deployment_ready(&w, ENV, "api", 2).await;
    apply(
        &w,
        &format!(
            r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: api-policy, namespace: {ENV}}}
spec:
  workloads: {{names: [api]}}
  change:
    batches:
    - {{replicas: 1, bake: 10s}}
    - {{percent: 100}}
"#
        ),
    );
    wait_labelled_guarded(&w, ENV, "api").await;
    let pin = generated_change(&w, ENV, &[]).await;
    w.wait_phase(ENV, &pin, Phase::Succeeded, LONG)
        .await
        .unwrap();
    wait_deployment_ready(&w, ENV, "api", 2).await;

    apply(&w, &secret("noisy-but-healthy"));
    let edit = generated_change(&w, ENV, std::slice::from_ref(&pin)).await;
    let serving = || async {
        pods_in(&w, ENV, "app=api")
            .await
            .into_iter()
            .filter_map(|p| {
                let name = p.metadata.name?;
                let profile = w.apps.profile_of(ENV, &name)?;
                Some((name, profile))
            })
            .collect::<Vec<_>>()
    };
    w.wait_for("the canary on the new value", LONG, || async {
        Ok(serving()
            .await
            .iter()
            .any(|(n, p)| n.starts_with(&format!("{edit}-")) && p == "noisy-but-healthy")
            .then_some(()))
    })
    .await
    .unwrap();
    let old: Vec<_> = serving()
        .await
        .into_iter()
        .filter(|(n, _)| !n.starts_with(&format!("{edit}-")))
        .collect();
    assert!(
        !old.is_empty() && old.iter().all(|(_, p)| p == "healthy"),
        "{old:?}"
    );
    w.wait_phase(ENV, &edit, Phase::Succeeded, LONG)
        .await
        .unwrap();
    wait_deployment_ready(&w, ENV, "api", 2).await;
    w.wait_for("every pod on the new value", LONG, || async {
        let all = serving().await;
        Ok((all.len() == 2 && all.iter().all(|(_, p)| p == "noisy-but-healthy")).then_some(()))
    })
    .await
    .unwrap();
    let cr = Api::<ChangeRequest>::namespaced(w.client.clone(), ENV)
        .get(&edit)
        .await
        .unwrap();
    assert_eq!(
        cr.metadata
            .annotations
            .unwrap_or_default()
            .get(graygate::guard::pin::ANN_CONFIG_CHANGED)
            .map(String::as_str),
        Some("Secret api-env: keys APP_PROFILE"),
        "the change says which key it changes, never its value"
    );
}
