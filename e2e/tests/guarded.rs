//! Guarded workloads on the real control plane: the kube-apiserver calls graygate's admission
//! webhook for every update of a workload a ChangePolicy guards; kubectl makes the changes.

mod common;

use common::*;
use graygate::api::{ANN_FAILED, ANN_HELD, ChangeRequest, LABEL_GUARDED_BY, Phase};
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::Api;
use kube::api::ListParams;
use std::process::Command;
use std::time::Duration;

fn manifest(ns: &str, image: &str, replicas: i32) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: app
        image: {image}
        env: [{{name: MODE, value: normal}}]
"#
    )
}

fn policy(ns: &str) -> String {
    format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web-policy, namespace: {ns}}}
spec:
  workloads: {{names: [web]}}
  change:
    progressDeadline: 8s
    batches:
    - {{replicas: 1, bake: 2s}}
    - {{percent: 50, bake: 2s}}
    - {{percent: 100, bake: 2s}}
"#
    )
}

async fn changes(w: &World, ns: &str) -> Vec<ChangeRequest> {
    let api: Api<ChangeRequest> = Api::namespaced(w.client.clone(), ns);
    api.list(&ListParams::default()).await.unwrap().items
}

async fn wait_guarded(w: &World, ns: &str) {
    w.wait_for("the policy labels web", LONG, || async {
        Ok(deployment(w, ns, "web")
            .await
            .filter(|d| {
                d.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(LABEL_GUARDED_BY))
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
}

/// Give graygate 6 s to (wrongly) start a change, then check there are still `n`.
async fn no_new_change(w: &World, ns: &str, n: usize, why: &str) {
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(changes(w, ns).await.len(), n, "{why}");
}

async fn wait_changes(w: &World, ns: &str, n: usize) -> Vec<ChangeRequest> {
    w.wait_for(&format!("{n} generated ChangeRequests"), LONG, || async {
        let c = changes(w, ns).await;
        Ok((c.len() == n).then_some(c))
    })
    .await
    .unwrap()
}

/// Wait for `n` generated ChangeRequests and name the newest.
async fn newest_change(w: &World, ns: &str, n: usize) -> String {
    wait_changes(w, ns, n)
        .await
        .into_iter()
        .max_by_key(|c| c.metadata.creation_timestamp.clone().map(|t| t.0))
        .and_then(|c| c.metadata.name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_deployment_every_kubectl_change_goes_out_in_batches() {
    let ns = "g1";
    let (w, _) = webhook_world(ns, "Ignore").await;
    apply_web(&w, ns, 4).await;
    w.apply(&policy(ns)).await.unwrap();
    wait_guarded(&w, ns).await;
    let (recorder, pods) = record_pods(&w, ns);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. kubectl apply of a new image: held, then rolled out by a generated ChangeRequest.
    let (ok, out) = kubectl(
        &w,
        &["apply", "-f", "-"],
        Some(&manifest(ns, "shop/web:healthy-v2", 4)),
    );
    assert!(ok, "{out}");
    assert!(
        out.contains("graygate holds this change"),
        "kubectl shows the webhook's warning: {out}"
    );
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(true), "held: paused");
    let crs = wait_changes(&w, ns, 1).await;
    let first = crs[0].metadata.name.clone().unwrap();
    assert_eq!(crs[0].spec.policy.as_deref(), Some("web-policy"));
    assert!(
        crs[0].spec.template.is_some(),
        "the change carries the whole template"
    );
    // The held Deployment names its change (docs/api.md, annotations on a guarded workload).
    w.wait_for("web to name its change", LONG, || async {
        Ok(deployment(&w, ns, "web")
            .await
            .filter(|d| annotation_of(d, graygate::api::ANN_CHANGE) == first)
            .map(|_| ()))
    })
    .await
    .unwrap();
    let cr = w
        .wait_phase(ns, &first, Phase::Succeeded, LONG)
        .await
        .unwrap();
    let st = cr.status.unwrap();
    assert_eq!(st.batch.as_deref(), Some("3/3"));
    // graygate's Events, read as kubectl reads them (core/v1), carry the times it sorts by.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(w.client.clone(), ns);
    let ours: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reporting_component.as_deref() == Some("graygate"))
        .collect();
    assert!(ours.len() >= 5, "{} Events of graygate's", ours.len());
    for e in &ours {
        assert!(
            e.last_timestamp.is_some() && e.first_timestamp.is_some() && e.count >= Some(1),
            "{:?} {:?}: lastTimestamp {:?}, firstTimestamp {:?}, count {:?}",
            e.reason,
            e.message,
            e.last_timestamp,
            e.first_timestamp,
            e.count
        );
    }
    // Pods on the new template, planned and ready, per batch: the same as an explicit change's
    // with the same batches (tests/rollout.rs); only the old pods beside them differ.
    assert_eq!(new_pods_per_batch(&st), [(1, 1), (2, 2), (4, 4)]);
    wait_deployment_ready(&w, ns, "web", 4).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v2");
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true), "released");
    assert!(
        !d.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(ANN_HELD)
    );
    // No old-template pod was created after the change began, and the verified canary pods
    // were adopted rather than replaced: count the pods created for the change.
    let seen = pods.lock().unwrap().clone();
    let old_created: Vec<_> = seen
        .iter()
        .filter(|(_, i)| *i == "shop/web:healthy")
        .collect();
    assert_eq!(
        old_created.len(),
        4,
        "only the 4 original old pods ever existed: {seen:?}"
    );
    let new_created = seen
        .values()
        .filter(|i| *i == "shop/web:healthy-v2")
        .count();
    println!("pod churn: {new_created} new-template pods created for a 4-pod Deployment");
    let rs: Api<ReplicaSet> = Api::namespaced(w.client.clone(), ns);
    let sets = rs.list(&ListParams::default()).await.unwrap().items;
    let canary = cr_canary(&w, ns, &first).await;
    assert!(
        sets.iter()
            .any(|s| s.metadata.name.as_deref() == Some(canary.as_str())
                && s.spec.as_ref().and_then(|x| x.replicas) == Some(4)),
        "the canary ReplicaSet {canary} was adopted and carries all 4 pods: {:?}",
        sets.iter()
            .map(|s| (
                s.metadata.name.clone(),
                s.spec.as_ref().and_then(|x| x.replicas)
            ))
            .collect::<Vec<_>>()
    );
    assert!(
        new_created <= 5,
        "at most one pod beyond the 4 needed: {new_created}"
    );

    // 2. Scaling passes untouched.
    let (ok, out) = kubectl(
        &w,
        &["scale", "deployment/web", "-n", ns, "--replicas=5"],
        None,
    );
    assert!(ok, "{out}");
    wait_deployment_ready(&w, ns, "web", 5).await;
    assert_eq!(changes(&w, ns).await.len(), 1, "scaling made no change");
    let (ok, out) = kubectl(
        &w,
        &["scale", "deployment/web", "-n", ns, "--replicas=4"],
        None,
    );
    assert!(ok, "{out}");
    wait_deployment_ready(&w, ns, "web", 4).await;

    // 3. A bad image (kubectl set image): rolled back, old pods serving, the Deployment held and marked.
    let (ok, out) = set_image_of(&w, ns, "deployment/web", "shop/web:crashloop");
    assert!(ok, "{out}");
    let crs = wait_changes(&w, ns, 2).await;
    let bad = crs
        .iter()
        .find(|c| c.metadata.name.as_deref() != Some(first.as_str()))
        .unwrap();
    let bad_name = bad.metadata.name.clone().unwrap();
    w.wait_phase(ns, &bad_name, Phase::RolledBack, LONG)
        .await
        .unwrap();
    let d = w
        .wait_for("the Deployment marked failed", LONG, || async {
            Ok(deployment(&w, ns, "web").await.filter(|d| {
                d.metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(ANN_FAILED))
            }))
        })
        .await
        .unwrap();
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(true), "still held");
    assert_eq!(
        image_of(&d),
        "shop/web:crashloop",
        "the spec keeps what was applied (Git stays the truth)"
    );
    wait_old_serving(&w, ns, "shop/web:healthy-v2", 4).await;

    // 4. The same bad template again (a GitOps self-heal): nothing starts.
    let (ok, out) = set_image_of(&w, ns, "deployment/web", "shop/web:crashloop");
    assert!(ok, "{out}");
    no_new_change(&w, ns, 2, "re-applying the failed template starts nothing").await;

    // 4b. `kubectl rollout resume` does not lift it, and says what does; the block of
    // docs/gitops.md ("Leaving a hold whose change failed"), run as written, does: the template
    // goes back to what the pods run and is released with nothing to roll.
    let (ok, out) = kubectl(&w, &["rollout", "resume", "deployment/web", "-n", ns], None);
    assert!(ok, "{out}");
    assert!(
        out.contains("which failed") && out.contains("the template its pods run"),
        "{out}"
    );
    let block = docs_block("gitops.md", "leave-a-failed-hold");
    let run = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &block])
        .env("KUBECONFIG", kubeconfig_in(&w, ns))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "{said}\n{}", {
        let logs = w.graygate_logs();
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    });
    assert!(
        said.contains("goes back to the pod template its pods run"),
        "{said}"
    );
    w.wait_for("web released", LONG, || async {
        Ok(deployment(&w, ns, "web").await.filter(|d| {
            d.spec.as_ref().and_then(|s| s.paused) != Some(true)
                && annotation_of(d, ANN_HELD).is_empty()
        }))
    })
    .await
    .unwrap();
    no_new_change(&w, ns, 2, "going back to what the pods run rolls nothing").await;
    wait_old_serving(&w, ns, "shop/web:healthy-v2", 4).await;

    // 5. The fix (a three-way merge patch, as helm upgrade sends): a new change, which succeeds.
    let (ok, out) = kubectl(
        &w,
        &[
            "patch",
            "deployment/web",
            "-n",
            ns,
            "--type=strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"app","image":"shop/web:healthy-v3"}]}}}}"#,
        ],
        None,
    );
    assert!(ok, "{out}");
    let crs = wait_changes(&w, ns, 3).await;
    let fix = crs
        .iter()
        .find(|c| {
            ![first.as_str(), bad_name.as_str()].contains(&c.metadata.name.as_deref().unwrap_or(""))
        })
        .unwrap()
        .metadata
        .name
        .clone()
        .unwrap();
    w.wait_phase(ns, &fix, Phase::Succeeded, LONG)
        .await
        .unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    assert_eq!(
        image_of(&deployment(&w, ns, "web").await.unwrap()),
        "shop/web:healthy-v3"
    );

    // 6. kubectl rollout restart changes the template too: intercepted.
    let (ok, out) = kubectl(
        &w,
        &["rollout", "restart", "deployment/web", "-n", ns],
        None,
    );
    assert!(ok, "{out}");
    let restart = newest_change(&w, ns, 4).await;
    w.wait_phase(ns, &restart, Phase::Succeeded, LONG)
        .await
        .unwrap();

    // 7. Deleting a generated change stops it: the deletion rolls it back, and the held template
    // does not start again (its ChangeRequest gone, it failed before). Paused first, so the
    // deletion lands on an active change whatever the machine's speed.
    let serving = image_of(&deployment(&w, ns, "web").await.unwrap());
    let (ok, out) = set_image_of(&w, ns, "deployment/web", "shop/web:healthy-v4");
    assert!(ok, "{out}");
    let stopped = newest_change(&w, ns, 5).await;
    wait_first_batch_ready(&w, ns, &stopped).await;
    let (ok, out) = kubectl(
        &w,
        &[
            "annotate",
            "changerequest",
            &stopped,
            "-n",
            ns,
            "graygate.io/pause=true",
        ],
        None,
    );
    assert!(ok, "{out}");
    w.wait_phase(ns, &stopped, Phase::Paused, LONG)
        .await
        .unwrap();
    let (ok, out) = kubectl(
        &w,
        &[
            "delete",
            "changerequest",
            &stopped,
            "-n",
            ns,
            "--wait=false",
        ],
        None,
    );
    assert!(ok, "{out}");
    wait_changes(&w, ns, 4).await;
    no_new_change(
        &w,
        ns,
        4,
        "a change stopped by deleting it does not start again",
    )
    .await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(true), "still held");
    assert_eq!(
        image_of(&d),
        "shop/web:healthy-v4",
        "the spec keeps what was applied"
    );
    assert!(
        annotation_of(&d, ANN_FAILED).ends_with(&format!("({stopped})")),
        "marked failed: {:?}",
        d.metadata.annotations
    );
    wait_old_serving(&w, ns, &serving, 4).await;
    recorder.abort();
    assert_within_rbac(&w);
}

async fn cr_canary(w: &World, ns: &str, name: &str) -> String {
    let api: Api<ChangeRequest> = Api::namespaced(w.client.clone(), ns);
    api.get(name)
        .await
        .unwrap()
        .status
        .unwrap()
        .canary_name
        .unwrap()
}

/// Wait until exactly `n` ready pods of `image` serve and no other pod is left.
async fn wait_old_serving(w: &World, ns: &str, image: &str, n: usize) {
    w.wait_for(
        &format!("{n} pods of {image} serving, nothing else"),
        LONG,
        || async {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(w.client.clone(), ns);
            let all: Vec<_> = pods
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .collect();
            let of_image = all
                .iter()
                .filter(|p| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.containers.first())
                        .and_then(|c| c.image.as_deref())
                        == Some(image)
                })
                .count();
            Ok((of_image == n && all.len() == n).then_some(()))
        },
    )
    .await
    .unwrap();
}

/// A world with graygate serving its admission webhook (`failure_policy`: `Ignore` or `Fail`)
/// and the namespace `ns`; returns the webhook arguments, to start graygate again with.
async fn webhook_world(ns: &str, failure_policy: &str) -> (World, Vec<String>) {
    let w = World::start(WorldOptions::default()).await.unwrap();
    let hook = w.install_webhook(failure_policy).await.unwrap();
    let args: Vec<&str> = hook.iter().map(String::as_str).collect();
    w.start_graygate(&args).unwrap();
    w.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
    ))
    .await
    .unwrap();
    (w, hook)
}

/// `kubectl apply` the Deployment `web` of `replicas` pods on `shop/web:healthy`; wait until ready.
async fn apply_web(w: &World, ns: &str, replicas: i32) {
    let (ok, out) = kubectl(
        w,
        &["apply", "-f", "-"],
        Some(&manifest(ns, "shop/web:healthy", replicas)),
    );
    assert!(ok, "{out}");
    wait_deployment_ready(w, ns, "web", replicas).await;
}

/// A guarded 2-pod Deployment `web` in `ns`, its policy's status up to date.
async fn guarded_world(ns: &str, failure_policy: &str) -> (World, Vec<String>) {
    let (w, hook) = webhook_world(ns, failure_policy).await;
    apply_web(&w, ns, 2).await;
    w.apply(&policy(ns)).await.unwrap();
    wait_guarded(&w, ns).await;
    // The policy has recorded the template it guards.
    w.wait_for("the policy status", LONG, || async {
        let api: Api<graygate::api::ChangePolicy> = Api::namespaced(w.client.clone(), ns);
        Ok(api
            .get("web-policy")
            .await?
            .status
            .filter(|s| s.guarded == 1)
            .map(|_| ()))
    })
    .await
    .unwrap();
    (w, hook)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_lets_a_change_through_while_graygate_is_down_and_reports_it_after() {
    let ns = "g2";
    let (w, hook) = guarded_world(ns, "Ignore").await;
    w.kill_graygate();
    let (ok, out) = set_image_of(&w, ns, "deployment/web", "shop/web:healthy-v2");
    assert!(ok, "fail-open: the change goes through: {out}");
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true), "not held");
    wait_deployment_ready(&w, ns, "web", 2).await;
    let args: Vec<&str> = hook.iter().map(String::as_str).collect();
    let port = w.start_graygate(&args).unwrap();
    w.wait_for(
        "an UnguardedChange Event on the Deployment",
        LONG,
        || async {
            let events: Api<k8s_openapi::api::events::v1::Event> =
                Api::namespaced(w.client.clone(), ns);
            let found = events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.reason.as_deref() == Some("UnguardedChange")
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref())
                            == Some("Deployment")
                });
            Ok(found.then_some(()))
        },
    )
    .await
    .unwrap();
    let (_, metrics) = graygate_http(port, "/metrics").await;
    assert!(
        metrics
            .contains("graygate_unguarded_changes_total{namespace=\"g2\",kind=\"Deployment\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        changes(&w, ns).await.len(),
        0,
        "nothing to roll out: it already happened"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refuses_a_change_while_graygate_is_down() {
    let ns = "g3";
    let (w, _) = guarded_world(ns, "Fail").await;
    w.kill_graygate();
    let (ok, out) = set_image_of(&w, ns, "deployment/web", "shop/web:healthy-v2");
    assert!(!ok, "fail-closed: refused");
    assert!(
        out.contains("failed calling webhook \"workloads.graygate.io\""),
        "the refusal names graygate's webhook: {out}"
    );
    assert_eq!(
        image_of(&deployment(&w, ns, "web").await.unwrap()),
        "shop/web:healthy"
    );
    // Scaling never depends on graygate.
    let (ok, out) = kubectl(
        &w,
        &["scale", "deployment/web", "-n", ns, "--replicas=3"],
        None,
    );
    assert!(ok, "{out}");
}

fn sts_partition(s: &k8s_openapi::api::apps::v1::StatefulSet) -> Option<i32> {
    s.spec
        .as_ref()
        .and_then(|s| s.update_strategy.as_ref())
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
}

/// Wait until `n` generated ChangeRequests exist and return the one not in `known`.
async fn next_change(w: &World, ns: &str, n: usize, known: &[String]) -> String {
    wait_changes(w, ns, n)
        .await
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .find(|name| !known.contains(name))
        .expect("a new generated ChangeRequest")
}

/// A guarded StatefulSet is held by its partition: kubectl set image replaces no pod until the
/// generated change rolls it out ordinal by ordinal; a bad image is rolled back to the pods'
/// revision and the StatefulSet stays held; going back to the running image releases it without
/// a change; deleting the policy lets go of it without rolling anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_statefulset_is_held_by_its_partition() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    let ns = "g4";
    let (w, _) = webhook_world(ns, "Ignore").await;
    let (ok, out) = kubectl(
        &w,
        &["apply", "-f", "-"],
        Some(&statefulset_yaml(ns, "db", 3)),
    );
    assert!(ok, "{out}");
    wait_statefulset_ready(&w, ns, "db", 3).await;
    w.apply(&format!(
        r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: db-policy, namespace: {ns}}}
spec:
  workloads: {{kinds: [StatefulSet], names: [db]}}
  change:
    progressDeadline: 8s
    batches:
    - {{replicas: 1, bake: 2s}}
    - {{percent: 100, bake: 2s}}
"#
    ))
    .await
    .unwrap();
    let sts_api: Api<StatefulSet> = Api::namespaced(w.client.clone(), ns);
    w.wait_for("the policy labels db", LONG, || async {
        Ok(sts_api.get_opt("db").await?.filter(|s| {
            s.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.get(LABEL_GUARDED_BY).map(String::as_str) == Some("db-policy"))
        }))
    })
    .await
    .unwrap();
    let (recorder, pods) = record_pods_keyed(&w, ns, true);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 1. kubectl set image: held by the partition; no pod is replaced by the StatefulSet
    //    controller; the generated change rolls it out and releases it.
    let (ok, out) = set_image_of(&w, ns, "statefulset/db", "shop/db:healthy-v2");
    assert!(ok, "{out}");
    assert!(out.contains("graygate holds this change"), "{out}");
    let s = sts_api.get("db").await.unwrap();
    assert_eq!(
        sts_partition(&s),
        Some(graygate::guard::webhook::HOLD_PARTITION as i32),
        "held at the partition no ordinal reaches"
    );
    assert!(
        s.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(ANN_HELD)
    );
    let first = next_change(&w, ns, 1, &[]).await;
    let cr = w
        .wait_phase(ns, &first, Phase::Succeeded, LONG)
        .await
        .unwrap();
    assert_eq!(cr.spec.policy.as_deref(), Some("db-policy"));
    wait_statefulset_ready(&w, ns, "db", 3).await;
    let s = sts_api.get("db").await.unwrap();
    assert_eq!(sts_image(&s), "shop/db:healthy-v2");
    assert_eq!(
        sts_partition(&s),
        Some(0),
        "the partition from before the hold"
    );
    assert!(
        !s.metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(ANN_HELD),
        "released"
    );
    // Each ordinal was replaced exactly once, by the change: the 3 original pods, then 3 of
    // the new template, and no pod of the old template created again.
    let seen = pods.lock().unwrap().clone();
    let of = |image: &str| seen.values().filter(|i| *i == image).count();
    assert_eq!(
        (of("shop/db:healthy"), of("shop/db:healthy-v2"), seen.len()),
        (3, 3, 6),
        "{seen:?}"
    );

    // 2. A bad image: the change fails; the pods go back to the revision they ran; the
    //    StatefulSet stays held (and marked) with the bad template as applied.
    let (ok, out) = set_image_of(&w, ns, "statefulset/db", "shop/db:crashloop");
    assert!(ok, "{out}");
    let bad = next_change(&w, ns, 2, std::slice::from_ref(&first)).await;
    w.wait_phase(ns, &bad, Phase::RolledBack, LONG)
        .await
        .unwrap();
    let s = w
        .wait_for(
            "the StatefulSet marked failed and every pod on the old revision",
            LONG,
            || async {
                let s = sts_api.get("db").await?;
                let st = s.status.clone().unwrap_or_default();
                let marked = s
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(ANN_FAILED));
                Ok(
                    (marked && st.ready_replicas == Some(3) && st.current_replicas == Some(3))
                        .then_some(s),
                )
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sts_image(&s),
        "shop/db:crashloop",
        "the spec keeps what was applied"
    );
    assert_eq!(
        sts_partition(&s),
        Some(graygate::guard::webhook::HOLD_PARTITION as i32),
        "still held"
    );
    wait_old_serving(&w, ns, "shop/db:healthy-v2", 3).await;

    // 3. Going back to the image the pods run (a revert in Git): released without a change,
    // and kubectl's warning says so.
    let revert = || async {
        let (ok, out) = set_image_of(&w, ns, "statefulset/db", "shop/db:healthy-v2");
        assert!(ok, "{out}");
        assert!(
            out.contains("goes back to the pod template its pods run")
                && !out.contains("gray batches"),
            "{out}"
        );
        let s = w
            .wait_for("the revert released", LONG, || async {
                Ok(sts_api.get_opt("db").await?.filter(|s| {
                    !s.metadata
                        .annotations
                        .clone()
                        .unwrap_or_default()
                        .contains_key(ANN_HELD)
                }))
            })
            .await
            .unwrap();
        assert_eq!(sts_partition(&s), Some(0));
        assert_eq!(changes(&w, ns).await.len(), 2, "a revert needs no change");
        wait_statefulset_ready(&w, ns, "db", 3).await;
        wait_old_serving(&w, ns, "shop/db:healthy-v2", 3).await;
    };
    revert().await;

    // 3b. The failed template applied again: held, nothing rolls, the failure marker is back
    // and the warning says it failed before (not that it rolls out). The StatefulSet controller
    // is frozen meanwhile, as a busy one lags: its status still names the old revision as the
    // update revision, which must not pass for a revert to what runs (that released the failed
    // template to every pod).
    w.cp.signal("kube-controller-manager", "STOP").unwrap();
    let (ok, out) = set_image_of(&w, ns, "statefulset/db", "shop/db:crashloop");
    assert!(ok, "{out}");
    assert!(
        out.contains("failed before") && out.contains("rolls nothing"),
        "{out}"
    );
    // The policy's passes in the meantime (a watch event each, 200 ms apart at most).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let frozen = sts_api.get("db").await.unwrap();
    w.cp.signal("kube-controller-manager", "CONT").unwrap();
    assert!(
        frozen
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(ANN_HELD),
        "released while the controller had not reported the revision: {:?} {:?}",
        frozen.metadata.annotations,
        frozen
            .status
            .as_ref()
            .map(|s| (&s.current_revision, &s.update_revision))
    );
    assert_ne!(
        sts_partition(&frozen),
        Some(0),
        "the failed template was let out"
    );
    w.wait_for("the failure marker back", LONG, || async {
        Ok(sts_api.get_opt("db").await?.filter(|s| {
            s.metadata
                .annotations
                .clone()
                .unwrap_or_default()
                .contains_key(ANN_FAILED)
        }))
    })
    .await
    .unwrap();
    assert_eq!(
        changes(&w, ns).await.len(),
        2,
        "no new change for a failed template"
    );
    wait_old_serving(&w, ns, "shop/db:healthy-v2", 3).await;
    revert().await;

    // 4. Deleting the policy lets go of the StatefulSet and rolls nothing.
    let rev_before = sts_api
        .get("db")
        .await
        .unwrap()
        .status
        .unwrap()
        .current_revision;
    let (ok, out) = kubectl(
        &w,
        &["delete", "changepolicy/db-policy", "-n", ns, "--wait=true"],
        None,
    );
    assert!(ok, "{out}");
    let s = sts_api.get("db").await.unwrap();
    assert!(
        !s.metadata
            .labels
            .clone()
            .unwrap_or_default()
            .contains_key(LABEL_GUARDED_BY),
        "unlabelled before the policy is gone"
    );
    assert_eq!(
        s.status.unwrap().current_revision,
        rev_before,
        "nothing rolled"
    );
    // Unguarded now: a change goes straight through the StatefulSet controller.
    let (ok, out) = set_image_of(&w, ns, "statefulset/db", "shop/db:healthy-v3");
    assert!(ok && !out.contains("graygate holds"), "{out}");
    wait_statefulset_ready(&w, ns, "db", 3).await;
    wait_old_serving(&w, ns, "shop/db:healthy-v3", 3).await;
    recorder.abort();
    assert_within_rbac(&w);
}

/// Wait until the generated change `name` has its first batch's pods ready.
async fn wait_first_batch_ready(w: &World, ns: &str, name: &str) {
    w.wait_for(&format!("{name}: batch 1 baking"), LONG, || async {
        let cr = w.change_request(ns, name).await?;
        Ok(cr
            .filter(|c| {
                c.status.as_ref().is_some_and(|s| {
                    s.current_batch == 1 && s.batches.first().is_some_and(|b| b.ready_at.is_some())
                })
            })
            .map(|_| ()))
    })
    .await
    .unwrap();
}

fn set_image(w: &World, ns: &str, image: &str) {
    let (ok, out) = set_image_of(w, ns, "deployment/web", image);
    assert!(ok, "{out}");
}

/// `kubectl set image <workload> app=<image>` in `ns`: whether it succeeded, and its output.
fn set_image_of(w: &World, ns: &str, workload: &str, image: &str) -> (bool, String) {
    kubectl(
        w,
        &["set", "image", workload, "-n", ns, &format!("app={image}")],
        None,
    )
}

/// A newer template arriving while a change is in flight: by default it supersedes it (the
/// older change is rolled back, its canary removed, and the newer one rolls out); with
/// `onNewerChange: queue` the older change finishes its batches first and the newer one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_template_supersedes_the_change_in_flight_or_queues_behind_it() {
    let ns = "g5";
    let (w, _) = webhook_world(ns, "Ignore").await;
    apply_web(&w, ns, 4).await;
    let policy = |on_newer: &str| {
        format!(
            r#"
apiVersion: graygate.io/v1alpha1
kind: ChangePolicy
metadata: {{name: web-policy, namespace: {ns}}}
spec:
  workloads: {{names: [web]}}
  onNewerChange: {on_newer}
  change:
    progressDeadline: 8s
    batches:
    - {{replicas: 1, bake: 10s}}
    - {{percent: 100, bake: 2s}}
"#
        )
    };
    let (ok, out) = kubectl(&w, &["apply", "-f", "-"], Some(&policy("supersede")));
    assert!(ok, "{out}");
    wait_guarded(&w, ns).await;

    // Supersede: v3 arrives while v2's first batch bakes.
    set_image(&w, ns, "shop/web:healthy-v2");
    let v2 = next_change(&w, ns, 1, &[]).await;
    wait_first_batch_ready(&w, ns, &v2).await;
    let v2_canary = cr_canary(&w, ns, &v2).await;
    set_image(&w, ns, "shop/web:healthy-v3");
    let v3 = next_change(&w, ns, 2, std::slice::from_ref(&v2)).await;
    // Superseded is its own ending: not a rollback, not a failure (no failure marker, no
    // RolledBack phase for the alert).
    let superseded = w
        .wait_phase(ns, &v2, Phase::Superseded, LONG)
        .await
        .unwrap();
    let st = superseded.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("Superseded"));
    let msg = st.message.unwrap_or_default();
    assert!(msg.contains(&format!("superseded by {v3}")), "{msg}");
    let d = deployment(&w, ns, "web").await.unwrap();
    assert!(
        !d.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(graygate::api::ANN_FAILED),
        "a superseded change is no failed template"
    );
    w.wait_phase(ns, &v3, Phase::Succeeded, LONG).await.unwrap();
    // A supersede is routine: Normal Events on both changes, no rollback, no Blocked warning.
    let old_events = w.events(ns, &v2).await.unwrap();
    let reasons: Vec<&str> = old_events
        .iter()
        .filter_map(|e| e.reason.as_deref())
        .collect();
    assert!(
        reasons.contains(&"Superseding") && reasons.contains(&"Superseded"),
        "{reasons:?}"
    );
    assert!(!reasons.contains(&"RollingBack"), "{reasons:?}");
    let warnings: Vec<_> = old_events
        .iter()
        .chain(w.events(ns, &v3).await.unwrap().iter())
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.clone(), e.note.clone()))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(
        !w.event_reasons(ns, &v3)
            .await
            .unwrap()
            .contains(&"Blocked".to_string())
    );
    wait_deployment_ready(&w, ns, "web", 4).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v3");
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true));
    let rs: Api<ReplicaSet> = Api::namespaced(w.client.clone(), ns);
    assert!(
        rs.get_opt(&v2_canary).await.unwrap().is_none_or(|r| {
            r.metadata.deletion_timestamp.is_some() || r.spec.and_then(|s| s.replicas) == Some(0)
        }),
        "the superseded canary is gone"
    );
    wait_old_serving(&w, ns, "shop/web:healthy-v3", 4).await;

    // Queue: v5 arrives while v4's first batch bakes; v4 keeps going, v5 waits, then rolls.
    let (ok, out) = kubectl(&w, &["apply", "-f", "-"], Some(&policy("queue")));
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    set_image(&w, ns, "shop/web:healthy-v4");
    let v4 = next_change(&w, ns, 3, &[v2.clone(), v3.clone()]).await;
    wait_first_batch_ready(&w, ns, &v4).await;
    set_image(&w, ns, "shop/web:healthy-v5");
    let v5 = next_change(&w, ns, 4, &[v2.clone(), v3.clone(), v4.clone()]).await;
    let v4_done = w.wait_phase(ns, &v4, Phase::Succeeded, LONG).await.unwrap();
    assert!(
        !v4_done
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .contains_key(graygate::api::ANN_ABORT),
        "queued behind, not superseded"
    );
    let msg = v4_done.status.unwrap().message.unwrap_or_default();
    assert!(
        msg.contains("newer template") && msg.contains("not released"),
        "{msg}"
    );
    w.wait_phase(ns, &v5, Phase::Succeeded, LONG).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 4).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(image_of(&d), "shop/web:healthy-v5");
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true));
    wait_old_serving(&w, ns, "shop/web:healthy-v5", 4).await;

    // Each hold has an Event of its own, naming its own change (not one series folded under
    // the first change's note).
    let held: Vec<String> = w
        .events(ns, "web")
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ChangeHeld"))
        .filter_map(|e| e.note)
        .collect();
    for c in [&v2, &v3, &v4, &v5] {
        assert!(
            held.iter()
                .any(|n| n.contains(&format!("as ChangeRequest {c}"))),
            "no ChangeHeld Event of its own for {c}: {held:#?}"
        );
    }
    assert_within_rbac(&w);
}

/// `helm install` / `helm upgrade` of the one-Deployment chart e2e/charts/web, run by Helm's
/// own Go SDK (PyPI helm-python-sdk) against the real API server.
fn helm(w: &World, ns: &str, action: &str, image: &str) -> (bool, String) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(dir.join("helm-release.py"))
        .arg(&w.admin_kubeconfig)
        .arg(dir.join("charts/web"))
        .arg("web")
        .arg(ns)
        .arg(action)
        .arg(format!(r#"{{"image": "{image}", "replicas": 2}}"#))
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A real `helm upgrade` (Helm 4's Go SDK, which writes with server-side apply) of a guarded
/// Deployment is held and goes out in batches; upgrading again with the same values starts
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helm_upgrade_of_a_guarded_deployment_goes_out_in_batches() {
    let ns = "g6";
    let (w, _) = webhook_world(ns, "Ignore").await;
    let (ok, out) = helm(&w, ns, "install", "shop/web:healthy");
    assert!(ok, "{out}");
    wait_deployment_ready(&w, ns, "web", 2).await;
    w.apply(&policy(ns)).await.unwrap();
    wait_guarded(&w, ns).await;

    let (ok, out) = helm(&w, ns, "upgrade", "shop/web:healthy-v2");
    assert!(ok, "helm upgrade succeeds: {out}");
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(
        image_of(&d),
        "shop/web:healthy-v2",
        "the spec is what Helm sent"
    );
    assert_eq!(d.spec.as_ref().unwrap().paused, Some(true), "held");
    // Helm 4 writes with server-side apply (Helm 3's three-way strategic merge is what
    // kubectl apply sends in the Deployment scenario above).
    assert!(
        d.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.operation.as_deref() == Some("Apply")),
        "{:?}",
        d.metadata.managed_fields
    );
    let v2 = next_change(&w, ns, 1, &[]).await;
    w.wait_phase(ns, &v2, Phase::Succeeded, LONG).await.unwrap();
    wait_deployment_ready(&w, ns, "web", 2).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true), "released");
    wait_old_serving(&w, ns, "shop/web:healthy-v2", 2).await;

    // The same values again (a re-run of the pipeline): nothing to hold, nothing started.
    let (ok, out) = helm(&w, ns, "upgrade", "shop/web:healthy-v2");
    assert!(ok, "{out}");
    no_new_change(&w, ns, 1, "an unchanged upgrade starts nothing").await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_ne!(d.spec.as_ref().unwrap().paused, Some(true));
    assert_within_rbac(&w);
}

/// A ChangePolicy whose selector the API server would never take (`bad key!`) is marked invalid,
/// naming the field, and guards nothing (it used to say Ready, guarding 0 workloads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_with_an_invalid_label_key_is_invalid_and_guards_nothing() {
    let ns = "g7";
    let (w, _) = webhook_world(ns, "Ignore").await;
    apply_web(&w, ns, 2).await;
    let bad = format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: bad-selector, namespace: {ns}}}\nspec:\n  workloads: {{matchLabels: {{\"bad key!\": x}}}}\n  change:\n    batches: [{{percent: 100, bake: 2s}}]\n"
    );
    w.apply(&bad).await.unwrap();
    let api: Api<graygate::api::ChangePolicy> = Api::namespaced(w.client.clone(), ns);
    let ready = w
        .wait_for("the policy's Ready condition", LONG, || async {
            let p = api.get("bad-selector").await?;
            Ok(p.status
                .and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready")))
        })
        .await
        .unwrap();
    assert_eq!(ready.status, "False", "{ready:?}");
    assert_eq!(ready.reason, "InvalidSpec", "{ready:?}");
    assert!(
        ready
            .message
            .contains("spec.workloads.matchLabels: \"bad key!\" is not a valid label key"),
        "{ready:?}"
    );
    let d = deployment(&w, ns, "web").await.unwrap();
    assert!(
        !d.metadata
            .labels
            .unwrap_or_default()
            .contains_key(LABEL_GUARDED_BY),
        "an invalid policy labels nothing"
    );

    // Two valid policies selecting the same Deployment: the first guards it, the second says
    // it overlaps and with which policy, and neither takes the workload from the other.
    let valid = |name: &str, selector: &str| {
        format!(
            "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  workloads: {selector}\n  change:\n    batches: [{{percent: 100, bake: 2s}}]\n"
        )
    };
    w.apply(&valid("first", "{names: [web]}")).await.unwrap();
    wait_guarded(&w, ns).await;
    w.apply(&valid("second", "{kinds: [Deployment], names: [web]}"))
        .await
        .unwrap();
    let second = w
        .wait_for("the second policy's status", LONG, || async {
            let p = api.get("second").await?;
            Ok(p.status.filter(|s| !s.workloads.is_empty()))
        })
        .await
        .unwrap();
    assert_eq!(second.guarded, 0, "{second:?}");
    assert_eq!(second.workloads[0].state, "Overlap", "{second:?}");
    assert!(
        second.workloads[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("also selected by ChangePolicy first")),
        "{second:?}"
    );
    let ready = &second.conditions[0];
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("True", "Overlap")
    );
    assert!(
        ready.message.contains("Deployment/web (policy first)"),
        "{ready:?}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let d = deployment(&w, ns, "web").await.unwrap();
    assert_eq!(
        d.metadata
            .labels
            .unwrap_or_default()
            .get(LABEL_GUARDED_BY)
            .map(String::as_str),
        Some("first"),
        "the first policy keeps the workload"
    );
    let first = api.get("first").await.unwrap().status.unwrap();
    assert_eq!(first.guarded, 1);
}

/// `kubectl apply --server-side` of a guarded Deployment first applied client-side (kubectl then
/// migrates the field ownership as well), then again while that change runs, then with fields
/// dropped or added (SSA removes what its manager no longer sends, and the API server defaults
/// it), then with the replicas changed too: each apply is held once, with one warning that names
/// the template held. (A new user once saw one apply print two hold warnings with different
/// hashes; none of these variants does it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_apply_is_held_once_with_one_warning() {
    let ns = "g8";
    let (w, _) = guarded_world(ns, "Ignore").await;
    let env = "        env: [{name: MODE, value: normal}]\n";
    let variants = [
        manifest(ns, "shop/web:healthy-v2", 2),
        manifest(ns, "shop/web:healthy-v3", 2),
        manifest(ns, "shop/web:healthy-v4", 2).replace(env, "        imagePullPolicy: Always\n"),
        manifest(ns, "shop/web:healthy-v5", 2).replace(env, ""),
        manifest(ns, "shop/web:healthy-v6", 2)
            .replace(env, "        ports: [{containerPort: 80}]\n"),
        manifest(ns, "shop/web:healthy-v7", 4),
    ];
    for (i, m) in variants.iter().enumerate() {
        let (ok, out) = kubectl(
            &w,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            Some(m),
        );
        assert!(ok, "{out}");
        let held = annotation_of(&deployment(&w, ns, "web").await.unwrap(), ANN_HELD);
        let warnings: Vec<&str> = out.lines().filter(|l| l.starts_with("Warning:")).collect();
        assert_eq!(warnings.len(), 1, "apply {i}: one warning: {out}");
        assert!(
            warnings[0].contains("graygate holds this change") && warnings[0].contains(&held),
            "apply {i}: the warning names the held template {held}: {out}"
        );
        // The hash the warning names is the one graygate's controller gives the stored
        // template: the change is named by it.
        let change = graygate::guard::policy::change_name("web", &held);
        w.wait_for(&format!("apply {i}: change {change}"), LONG, || async {
            Ok(w.change_request(ns, &change).await?.map(|_| ()))
        })
        .await
        .unwrap();
        if i == 0 {
            // The second apply arrives while the first change bakes its first batch.
            wait_first_batch_ready(&w, ns, &change).await;
        }
    }
}

fn annotation_of(d: &k8s_openapi::api::apps::v1::Deployment, key: &str) -> String {
    d.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
        .unwrap_or_default()
}
