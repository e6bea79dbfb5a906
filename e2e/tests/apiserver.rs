//! The simulated API server speaks the Kubernetes wire protocol: checked with kube's own client.

use futures::StreamExt;
use graygate_e2e::world::{World, WorldOptions};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, ResourceExt};
use serde_json::json;
use std::time::Duration;

async fn sim() -> World {
    World::start(WorldOptions::default()).await.unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"tier": "web", "app": name}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "app", "image": "shop/web:healthy"}]}}}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crud_conflicts_and_status_objects() {
    let w = sim().await;
    let api: Api<Deployment> = Api::namespaced(w.client.clone(), "default");
    let created = api
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.uid().is_some() && created.resource_version().is_some());
    // Defaults filled in as the real server does.
    assert_eq!(
        created
            .spec
            .as_ref()
            .unwrap()
            .strategy
            .as_ref()
            .unwrap()
            .type_
            .as_deref(),
        Some("RollingUpdate")
    );
    let err = api
        .create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 409 && e.reason == "AlreadyExists"),
        "{err:?}"
    );
    // A stale resourceVersion is a 409 Conflict.
    let mut stale = created.clone();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    stale.spec.as_mut().unwrap().replicas = Some(5);
    let err = api
        .replace("web", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 409 && e.reason == "Conflict"),
        "{err:?}"
    );
    let now = api.get("web").await.unwrap();
    assert_eq!(
        now.metadata.generation,
        Some(2),
        "a spec change bumps the generation"
    );
    // Metadata-only changes do not.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    assert_eq!(api.get("web").await.unwrap().metadata.generation, Some(2));
    let err = api.get("nope").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 404 && e.reason == "NotFound"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_types_and_scale_subresource() {
    let w = sim().await;
    let api: Api<Deployment> = Api::namespaced(w.client.clone(), "default");
    api.create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    // Strategic merge: env merges into the container by name.
    let smp = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "1"}]}]}}}});
    let d = api
        .patch("web", &PatchParams::default(), &Patch::Strategic(smp))
        .await
        .unwrap();
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("shop/web:healthy"));
    assert_eq!(c.env.as_ref().unwrap()[0].name, "A");
    // JSON patch with a failing test op changes nothing.
    let bad = serde_json::from_value(json!([{"op": "test", "path": "/spec/replicas", "value": 99}, {"op": "replace", "path": "/spec/replicas", "value": 7}])).unwrap();
    assert!(
        api.patch("web", &PatchParams::default(), &Patch::Json::<()>(bad))
            .await
            .is_err()
    );
    assert_eq!(
        api.get("web").await.unwrap().spec.unwrap().replicas,
        Some(2)
    );
    let scale = api
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    assert_eq!(scale.spec.unwrap().replicas, Some(4));
    assert_eq!(
        api.get_scale("web")
            .await
            .unwrap()
            .status
            .unwrap()
            .selector
            .as_deref(),
        Some("app=web")
    );
    // Server-side apply creates and updates.
    let cms: Api<ConfigMap> = Api::namespaced(w.client.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let err = cms
        .patch("c", &PatchParams::apply("t"), &Patch::Apply(&cm))
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 404),
        "configmaps are not served: loud, not silent: {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_and_select_watches_resume_and_expire() {
    let w = sim().await;
    let api: Api<Deployment> = Api::namespaced(w.client.clone(), "default");
    for i in 0..5 {
        api.create(&PostParams::default(), &deployment(&format!("d{i}")))
            .await
            .unwrap();
    }
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().unwrap();
    let rest = api
        .list(&ListParams::default().limit(10).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 3);
    let selected = api
        .list(&ListParams::default().labels("tier=web,app in (d1,d3)"))
        .await
        .unwrap();
    assert_eq!(
        selected
            .items
            .iter()
            .map(|d| d.name_any())
            .collect::<Vec<_>>(),
        vec!["d1", "d3"]
    );
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=d4"))
        .await
        .unwrap();
    assert_eq!(by_field.items.len(), 1);

    // A watch from a resourceVersion sees later changes, in order.
    let rv = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.patch(
        "d0",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"seen": "yes"}}})),
    )
    .await
    .unwrap();
    api.delete("d2", &DeleteParams::default()).await.unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let mut kinds = Vec::new();
    while let Some(Ok(ev)) = stream.next().await {
        match ev {
            WatchEvent::Modified(d) if d.name_any() == "d0" => kinds.push("MODIFIED d0"),
            WatchEvent::Deleted(d) if d.name_any() == "d2" => kinds.push("DELETED d2"),
            _ => {}
        }
        if kinds.len() >= 2 {
            break;
        }
    }
    assert_eq!(kinds, vec!["MODIFIED d0", "DELETED d2"]);
    // After compaction an old resourceVersion gets 410 Gone (as an ERROR event, like the real server).
    w.sim.as_ref().unwrap().store.compact();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Error(e))) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
    // Bookmarks when asked (kube asks by default).
    let now = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let mut stream = api
        .watch(&WatchParams::default().timeout(5), &now)
        .await
        .unwrap()
        .boxed();
    let got = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap();
    assert!(matches!(got, Some(Ok(WatchEvent::Bookmark(_)))), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_logs_finalizers_and_garbage_collection() {
    let w = sim().await;
    let api: Api<Deployment> = Api::namespaced(w.client.clone(), "default");
    api.create(&PostParams::default(), &deployment("web"))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), "default");
    let ready = w
        .wait_for("two ready pods", Duration::from_secs(30), || async {
            let list = pods.list(&ListParams::default().labels("app=web")).await?;
            let ready: Vec<Pod> = list
                .items
                .into_iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .collect();
            Ok((ready.len() == 2).then_some(ready))
        })
        .await
        .unwrap();
    let name = ready[0].name_any();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let logs = pods
        .logs(
            &name,
            &kube::api::LogParams {
                tail_lines: Some(3),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(logs.lines().count(), 3, "{logs}");
    let limited = pods
        .logs(
            &name,
            &kube::api::LogParams {
                limit_bytes: Some(10),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(limited.len() <= 10);
    let recent = pods
        .logs(
            &name,
            &kube::api::LogParams {
                since_seconds: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let all = pods.logs(&name, &Default::default()).await.unwrap();
    assert!(recent.len() < all.len());
    let err = pods
        .logs(
            &name,
            &kube::api::LogParams {
                container: Some("nope".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref e) if e.code == 400),
        "{err:?}"
    );

    // A finalizer holds deletion: deletionTimestamp first, gone when the finalizer is removed.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["test/hold"]}})),
    )
    .await
    .unwrap();
    api.delete("web", &DeleteParams::default()).await.unwrap();
    let held = api.get("web").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert!(api.get_opt("web").await.unwrap().is_none());
    // Its ReplicaSet and pods are collected.
    w.wait_for("pods collected", Duration::from_secs(30), || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await
    .unwrap();
}
