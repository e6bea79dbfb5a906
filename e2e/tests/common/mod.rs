//! Shared pieces of the end-to-end scenarios.
#![allow(dead_code)]

use graygate::api::{ChangeRequest, Phase};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::Api;
use std::time::Duration;

/// Minutes a scenario may wait for one phase.
pub const LONG: Duration = Duration::from_secs(120);

/// Start a world and graygate in it, or skip (return None) when the scenario needs the simulator
/// and the run targets a real cluster.
pub async fn world(opts: WorldOptions) -> World {
    let w = World::start(opts).await.expect("world starts");
    w.start_graygate(&[]).expect("graygate starts");
    w
}

/// GET a path on graygate's HTTP port.
pub async fn graygate_http(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .expect("graygate answers");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// A namespace with a Deployment `web` of `replicas` pods on `shop/web:healthy`.
pub fn deployment_yaml(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: shop/web:healthy
        env: [{{name: MODE, value: normal}}]
"#
    )
}

/// A StatefulSet `db` of `replicas` pods.
pub fn statefulset_yaml(ns: &str, name: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  serviceName: {name}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: shop/db:healthy
"#
    )
}

/// A ChangeRequest document.
pub fn change_yaml(ns: &str, name: &str, body: &str) -> String {
    format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}",
        indent(body)
    )
}

fn indent(s: &str) -> String {
    s.trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

/// Wait until the Deployment has `ready` available pods at its current spec.
pub async fn wait_deployment_ready(w: &World, ns: &str, name: &str, ready: i32) {
    w.wait_for(
        &format!("deployment {ns}/{name} to have {ready} available pods"),
        LONG,
        || async {
            let d = Api::<Deployment>::namespaced(w.client.clone(), ns)
                .get_opt(name)
                .await?;
            Ok(d.filter(|d| {
                let st = d.status.clone().unwrap_or_default();
                st.available_replicas == Some(ready)
                    && st.updated_replicas == Some(ready)
                    && st.replicas == Some(ready)
                    && st.observed_generation >= d.metadata.generation
            })
            .map(|_| ()))
        },
    )
    .await
    .expect("deployment ready");
}

/// Wait until the StatefulSet has all pods ready at one revision.
pub async fn wait_statefulset_ready(w: &World, ns: &str, name: &str, ready: i32) {
    w.wait_for(&format!("statefulset {ns}/{name} ready"), LONG, || async {
        let s = Api::<StatefulSet>::namespaced(w.client.clone(), ns)
            .get_opt(name)
            .await?;
        Ok(s.filter(|s| {
            let st = s.status.clone().unwrap_or_default();
            st.ready_replicas == Some(ready)
                && st.current_revision == st.update_revision
                && st.update_revision.is_some()
        })
        .map(|_| ()))
    })
    .await
    .expect("statefulset ready");
}

/// Get a Deployment.
pub async fn deployment(w: &World, ns: &str, name: &str) -> Option<Deployment> {
    Api::<Deployment>::namespaced(w.client.clone(), ns)
        .get_opt(name)
        .await
        .expect("get deployment")
}

/// The image of a Deployment's first container.
pub fn image_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .map(|s| template_image(&s.template))
        .unwrap_or_default()
}

/// The first container's image in a StatefulSet's pod template.
pub fn sts_image(s: &StatefulSet) -> String {
    s.spec
        .as_ref()
        .map(|s| template_image(&s.template))
        .unwrap_or_default()
}

/// The first container's image in a pod template.
pub fn template_image(t: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    t.spec
        .as_ref()
        .map(|p| p.containers[0].image.clone().unwrap_or_default())
        .unwrap_or_default()
}

/// The phase of a ChangeRequest.
pub fn phase(cr: &ChangeRequest) -> Phase {
    cr.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Wait until batch `index` (1-based) of a ChangeRequest satisfies `done`.
pub async fn wait_batch(
    w: &World,
    ns: &str,
    name: &str,
    index: usize,
    what: &str,
    done: impl Fn(&graygate::api::BatchStatus) -> bool,
) {
    w.wait_for(
        &format!("{ns}/{name}: batch {index} {what}"),
        LONG,
        || async {
            let cr = w.change_request(ns, name).await?;
            Ok(cr
                .filter(|c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| s.batches.get(index - 1).is_some_and(&done))
                })
                .map(|_| ()))
        },
    )
    .await
    .expect("batch reached");
}

/// Every request graygate sent in this world is one its RBAC table allows, and names graygate
/// in its user agent.
pub fn assert_within_rbac(w: &World) {
    let audit = w.audit.lock().unwrap().clone();
    assert!(
        !audit.is_empty(),
        "graygate made no request through the proxy"
    );
    let anonymous: Vec<String> = audit
        .iter()
        .filter(|e| !e.user_agent.starts_with("graygate/"))
        .map(|e| format!("{} {} (user agent {:?})", e.method, e.path, e.user_agent))
        .collect();
    assert!(
        anonymous.is_empty(),
        "requests without graygate's user agent:\n{}",
        anonymous[..anonymous.len().min(5)].join("\n")
    );
    // The real API server enforces the chart's RBAC: nothing graygate asked for was forbidden.
    let forbidden: Vec<String> = audit
        .iter()
        .filter(|e| e.status == 403)
        .map(|e| format!("{} {}?{}", e.method, e.path, e.query))
        .collect();
    assert!(
        forbidden.is_empty(),
        "forbidden by the chart's RBAC:\n{}",
        forbidden.join("\n")
    );
    let outside = w.calls_outside_rbac();
    assert!(
        outside.is_empty(),
        "graygate made API calls that src/access.rs (and so the Helm chart's RBAC) does not allow:\n{}",
        outside.join("\n")
    );
}

/// Deploy `web` with `replicas` pods of `shop/web:healthy` in `ns`, wait until they are ready, then
/// apply ChangeRequest `name` moving it to `shop/web:healthy-v2` in `batches` (a YAML flow list).
pub async fn web_change(w: &World, ns: &str, replicas: i32, name: &str, batches: &str) {
    w.apply(&deployment_yaml(ns, "web", replicas))
        .await
        .unwrap();
    wait_deployment_ready(w, ns, "web", replicas).await;
    w.apply(&change_yaml(
        ns,
        name,
        &format!(
            "target: {{kind: Deployment, name: web}}\nimages: {{app: \"shop/web:healthy-v2\"}}\nbatches: {batches}"
        ),
    ))
    .await
    .unwrap();
}

/// Record every pod that ever exists in `ns` (name → first container image) while the returned
/// task runs: a watch sees pods the Deployment controller creates and deletes within a second.
pub fn record_pods(
    w: &World,
    ns: &str,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
) {
    record_pods_keyed(w, ns, false)
}

/// As [`record_pods`], keyed by `name/uid` when `by_uid` (a StatefulSet's pods come back
/// under the same name).
pub fn record_pods_keyed(
    w: &World,
    ns: &str,
    by_uid: bool,
) -> (
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, String>>>,
) {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(w.client.clone(), ns);
    let out = seen.clone();
    let task = tokio::spawn(async move {
        let stream = watcher(pods, watcher::Config::default())
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while let Some(Ok(p)) = stream.next().await {
            let image = p
                .spec
                .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
                .unwrap_or_default();
            let key = match (p.metadata.name, p.metadata.uid) {
                (Some(n), Some(u)) if by_uid => Some(format!("{n}/{u}")),
                (n, _) => n,
            };
            if let (Some(key), Ok(mut m)) = (key, out.lock()) {
                m.entry(key).or_insert(image);
            }
        }
    });
    (task, seen)
}

/// The Event reasons of a ChangeRequest once `last` is among them (Events are recorded just
/// after the status they report, so a test that saw the status may be a moment early).
pub async fn events_through(w: &World, ns: &str, name: &str, last: &str) -> Vec<String> {
    w.wait_for(&format!("{ns}/{name}: Event {last}"), LONG, || async {
        let reasons = w.event_reasons(ns, name).await?;
        Ok(reasons.iter().any(|r| r == last).then_some(reasons))
    })
    .await
    .unwrap()
}

/// The pods on the new template per batch, planned and ready: `(replicas, podsReady)`.
pub fn new_pods_per_batch(st: &graygate::api::ChangeRequestStatus) -> Vec<(i32, i32)> {
    st.batches
        .iter()
        .map(|b| (b.replicas, b.pods_ready))
        .collect()
}

/// A world with graygate serving its admission webhook (failure policy `Ignore`).
pub async fn world_with_webhook(opts: WorldOptions) -> World {
    let w = World::start(opts).await.expect("world starts");
    let hook = w
        .install_webhook("Ignore")
        .await
        .expect("webhook installed");
    let args: Vec<&str> = hook.iter().map(String::as_str).collect();
    w.start_graygate(&args).expect("graygate starts");
    w
}

/// Wait until a ChangePolicy has labelled the Deployment `name` as guarded.
pub async fn wait_labelled_guarded(w: &World, ns: &str, name: &str) {
    w.wait_for(&format!("{name} guarded"), LONG, || async {
        Ok(deployment(w, ns, name)
            .await
            .filter(|d| {
                d.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(graygate::api::LABEL_GUARDED_BY))
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
}

/// `kubectl set image deployment/<name> app=<image>` as the cluster admin; asserts it worked.
pub fn admin_set_image(w: &World, ns: &str, name: &str, image: &str) {
    let out = std::process::Command::new("kubectl")
        .arg(format!("--kubeconfig={}", w.admin_kubeconfig.display()))
        .args([
            "set",
            "image",
            &format!("deployment/{name}"),
            "-n",
            ns,
            &format!("app={image}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Wait for a generated ChangeRequest in `ns` not named in `known`; its name.
pub async fn generated_change(w: &World, ns: &str, known: &[String]) -> String {
    let api: Api<graygate::api::ChangeRequest> = Api::namespaced(w.client.clone(), ns);
    w.wait_for("a generated change", LONG, || async {
        Ok(api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .find(|n| !known.contains(n)))
    })
    .await
    .unwrap()
}

/// A copy of the world's kubeconfig whose current context defaults to `ns`.
pub fn kubeconfig_in(w: &World, ns: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&w.admin_kubeconfig).unwrap();
    let mut kc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let current = kc["current-context"].as_str().unwrap().to_string();
    for ctx in kc["contexts"].as_sequence_mut().unwrap() {
        if ctx["name"].as_str() == Some(current.as_str()) {
            ctx["context"]["namespace"] = ns.into();
        }
    }
    let path = w.dir.path().join(format!("kubeconfig-{ns}"));
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    path
}

/// Run `graygate kubectl ARGS` (the plugin) with `kubeconfig`; panics with its stderr on failure.
pub fn graygate_kubectl(kubeconfig: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new(graygate_e2e::world::graygate_bin().unwrap())
        .arg("kubectl")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl graygate {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The shell block after `<!-- marker -->` in docs/`file`.
pub fn docs_block(file: &str, marker: &str) -> String {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../docs/{file}")),
    )
    .unwrap();
    let after = doc
        .split_once(&format!("<!-- {marker} -->"))
        .unwrap_or_else(|| panic!("the marker {marker} in docs/{file}"))
        .1;
    let body = after.split_once("```sh\n").expect("a sh block").1;
    body.split_once("```").unwrap().0.to_string()
}

/// Run kubectl as the cluster admin with `args` (and `stdin`); whether it succeeded, and what
/// it printed (stdout, then stderr).
pub fn kubectl(w: &World, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut cmd = std::process::Command::new("kubectl");
    cmd.arg(format!("--kubeconfig={}", w.admin_kubeconfig.display()))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("kubectl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Install the Gateway API CRDs (`e2e/crds/gateway-api.yaml`) and wait until `HTTPRoute`s of
/// `ns` can be listed.
pub async fn install_gateway_api(w: &World, ns: &str) {
    let (ok, out) = kubectl(
        w,
        &[
            "apply",
            "-f",
            &format!("{}/crds/gateway-api.yaml", env!("CARGO_MANIFEST_DIR")),
        ],
        None,
    );
    assert!(ok, "{out}");
    let routes: Api<kube::api::DynamicObject> = Api::namespaced_with(
        w.client.clone(),
        ns,
        &graygate_e2e::dataplane::http_routes(),
    );
    w.wait_for("the HTTPRoute CRD", Duration::from_secs(60), || async {
        Ok(routes.list(&Default::default()).await.ok().map(|_| ()))
    })
    .await
    .unwrap();
}
