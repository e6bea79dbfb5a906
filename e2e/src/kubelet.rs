//! The stand-in kubelet: what a real control plane lacks for graygate's scenarios. It registers
//! one Ready Node, binds every Pending pod to it, runs each pod's container as a profile-driven
//! application (`crate::apps`), reports Running / Ready / restarts the way a kubelet does, finishes
//! deletions, and serves the kubelet API's `containerLogs` over TLS so that `pods/log` requests
//! reach it through the real API server's proxy.

use crate::apps::Apps;
use crate::control_plane::free_port;
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The Node every pod runs on.
pub const NODE: &str = "stand-in-kubelet";

/// Pod timing.
#[derive(Clone, Copy, Debug)]
pub struct PodTiming {
    /// From binding to Running.
    pub start: Duration,
    /// From Running to Ready.
    pub ready: Duration,
    /// From deletion to gone.
    pub terminate: Duration,
}

impl Default for PodTiming {
    fn default() -> Self {
        PodTiming {
            start: Duration::from_millis(300),
            ready: Duration::from_millis(700),
            terminate: Duration::from_millis(300),
        }
    }
}

#[derive(Default)]
struct PodState {
    bound_at: Option<Instant>,
    started: bool,
    ready: bool,
    restarts: u64,
    terminating_since: Option<Instant>,
}

/// Start the kubelet: its TLS API (certificate and key in PEM files; the API server does not
/// verify kubelet certificates unless told to), the Node, and the pod loop. Returns its tasks.
pub async fn start(
    client: kube::Client,
    apps: Arc<Apps>,
    timing: PodTiming,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let port = free_port()?;
    let server = serve_api(apps.clone(), port, cert, key).await?;
    register_node(&client, port).await?;
    let pods: Api<Pod> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let watch = tokio::spawn(async move {
        let stream = reflector(writer, watcher(pods, watcher::Config::default()))
            .default_backoff()
            .applied_objects();
        futures::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    let run = tokio::spawn(async move {
        let _ = reader.wait_until_ready().await;
        let mut state: HashMap<String, PodState> = HashMap::new();
        loop {
            let pods = reader.state();
            let live: HashSet<String> =
                pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            state.retain(|uid, _| live.contains(uid));
            for p in pods {
                step(&client, &apps, timing, &mut state, &p).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(vec![server, watch, run])
}

async fn register_node(client: &kube::Client, port: u16) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": NODE, "labels": {"kubernetes.io/hostname": NODE}},
    }))?;
    if nodes.get_opt(NODE).await?.is_none() {
        nodes.create(&PostParams::default(), &node).await?;
    }
    let now = jiff::Timestamp::now().to_string();
    let status = json!({"status": {
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
            "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": port}},
        "nodeInfo": {"kubeletVersion": "v1.36.2-stand-in", "architecture": "amd64", "operatingSystem": "linux",
            "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "", "osImage": "",
            "containerRuntimeVersion": "", "kubeProxyVersion": ""}}});
    nodes
        .patch_status(NODE, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .context("node status")?;
    Ok(())
}

/// Move one pod one step along its life.
async fn step(
    client: &kube::Client,
    apps: &Apps,
    timing: PodTiming,
    state: &mut HashMap<String, PodState>,
    p: &Pod,
) {
    let (Some(ns), Some(name), Some(uid)) = (
        p.metadata.namespace.as_deref(),
        p.metadata.name.as_deref(),
        p.metadata.uid.as_deref(),
    ) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let st = state.entry(uid.to_string()).or_default();
    let now = Instant::now();
    if p.metadata.deletion_timestamp.is_some() {
        let since = *st.terminating_since.get_or_insert(now);
        if now.duration_since(since) >= timing.terminate {
            apps.stop(ns, name);
            let dp = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            let _ = api.delete(name, &dp).await;
        }
        return;
    }
    let spec = p.spec.clone().unwrap_or_default();
    let Some(container) = spec.containers.first() else {
        return;
    };
    let image = container.image.clone().unwrap_or_default();
    if spec.node_name.is_none() {
        let binding = Binding {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(ns.to_string()),
                ..Default::default()
            },
            target: ObjectReference {
                kind: Some("Node".into()),
                name: Some(NODE.into()),
                api_version: Some("v1".into()),
                ..Default::default()
            },
        };
        if api
            .create_subresource::<Binding, Binding>(
                "binding",
                name,
                &PostParams::default(),
                &binding,
            )
            .await
            .is_ok()
        {
            st.bound_at = Some(now);
        }
        return;
    }
    let bound_at = *st.bound_at.get_or_insert(now);
    let age = now.duration_since(bound_at);
    let ready_profile = apps.is_ready_profile(&image);
    let t = jiff::Timestamp::now().to_string();
    let status = if !st.started {
        if age < timing.start {
            return;
        }
        apps.start(ns, name, &container.name, &image);
        st.started = true;
        pod_status(&container.name, &image, false, 0, &t, false)
    } else if ready_profile {
        if st.ready || age < timing.start + timing.ready {
            return;
        }
        st.ready = true;
        pod_status(&container.name, &image, true, 0, &t, false)
    } else {
        let restarts = apps.restarts(ns, name);
        if restarts == st.restarts {
            return;
        }
        st.restarts = restarts;
        pod_status(&container.name, &image, false, restarts, &t, true)
    };
    let _ = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await;
}

fn pod_status(
    container: &str,
    image: &str,
    ready: bool,
    restarts: u64,
    now: &str,
    crash_looping: bool,
) -> serde_json::Value {
    let r = if ready { "True" } else { "False" };
    let state = if crash_looping {
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}})
    } else {
        json!({"running": {"startedAt": now}})
    };
    json!({"status": {
        "phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1", "qosClass": "BestEffort",
        "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": r, "lastTransitionTime": now},
            {"type": "Ready", "status": r, "lastTransitionTime": now}],
        "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": ready,
            "restartCount": restarts, "started": !crash_looping, "state": state}]}})
}

async fn container_logs(
    State(apps): State<Arc<Apps>>,
    UrlPath((ns, pod, _container)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let since_time: Option<jiff::Timestamp> = match q.get("sinceTime").map(|t| t.parse()) {
        Some(Ok(t)) => Some(t),
        Some(Err(_)) => {
            return (StatusCode::BAD_REQUEST, "sinceTime is not an RFC 3339 time").into_response();
        }
        None => None,
    };
    let since = since_time.or_else(|| {
        q.get("sinceSeconds")
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(|s| {
                jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::from_secs(s))
                    .ok()
            })
    });
    let tail = q.get("tailLines").and_then(|v| v.parse().ok());
    let limit = q.get("limitBytes").and_then(|v| v.parse().ok());
    let timestamps = q.get("timestamps").is_some_and(|v| v == "true");
    let text = apps.logs(&ns, &pod, since, tail, limit, timestamps);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

/// Serve the kubelet API (only `containerLogs`) over TLS on `port`.
async fn serve_api(
    apps: Arc<Apps>,
    port: u16,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<JoinHandle<()>> {
    let router = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(apps);
    let tls = crate::tls::server_config(cert, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                if let Ok(stream) = acceptor.accept(tcp).await {
                    crate::tls::serve_connection(stream, router).await;
                }
            });
        }
    }))
}
