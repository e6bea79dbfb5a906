//! The stand-in kubelet: what a real control plane lacks for graygate's scenarios. It registers
//! one Ready Node, binds every Pending pod to it, runs each pod's container as a profile-driven
//! application (`crate::apps`), reports Running / Ready / restarts the way a kubelet does, finishes
//! deletions, and serves the kubelet API's `containerLogs` over TLS so that `pods/log` requests
//! reach it through the real API server's proxy.
//!
//! It gives containers their ConfigMaps and Secrets as a kubelet does (`crate::podconfig`):
//! the environment once at start (a missing key or object keeps the container waiting with
//! `CreateContainerConfigError`, a missing mounted object with `ContainerCreating`), mounted files
//! re-read every [`PodTiming::config_sync`] while it runs. A profile named by a mounted `profile`
//! file (or the `APP_PROFILE` variable at start) selects the application's behaviour, so a
//! config edit shows in each pod's metrics and logs when that pod sees it. The service-account
//! token volume (`kube-api-access-*`) is not served: the stand-in has no tokens to give.

use crate::apps::Apps;
use crate::control_plane::free_port;
use crate::dataplane::watch;
use crate::podconfig::{self, Objects};
use anyhow::Context;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use k8s_openapi::api::core::v1::{Binding, ConfigMap, Node, ObjectReference, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector;
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
    /// How often a running pod's mounted ConfigMaps and Secrets are re-read (a real kubelet:
    /// its sync period plus its cache's time to live, about a minute).
    pub config_sync: Duration,
}

impl Default for PodTiming {
    fn default() -> Self {
        PodTiming {
            start: Duration::from_millis(300),
            ready: Duration::from_millis(700),
            terminate: Duration::from_millis(300),
            config_sync: Duration::from_secs(1),
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
    /// The profile its mounted `profile` file named when last read, and when that was.
    file_profile: Option<String>,
    synced_at: Option<Instant>,
    /// Why its container cannot start, as last reported.
    config_error: Option<String>,
}

/// The kubelet's view of the cluster's ConfigMaps and Secrets.
#[derive(Clone)]
struct Config {
    config_maps: reflector::Store<ConfigMap>,
    secrets: reflector::Store<Secret>,
}

impl Config {
    /// One namespace's objects.
    fn objects(&self, ns: &str) -> Objects {
        let in_ns = |m: &kube::api::ObjectMeta| m.namespace.as_deref() == Some(ns);
        Objects {
            config_maps: self
                .config_maps
                .state()
                .into_iter()
                .filter(|c| in_ns(&c.metadata))
                .filter_map(|c| Some((c.metadata.name.clone()?, (*c).clone())))
                .collect(),
            secrets: self
                .secrets
                .state()
                .into_iter()
                .filter(|c| in_ns(&c.metadata))
                .filter_map(|c| Some((c.metadata.name.clone()?, (*c).clone())))
                .collect(),
        }
    }
}

/// Whether a pod's container reads any ConfigMap or Secret (the service-account token volume
/// aside), so that the kubelet must look them up.
fn reads_config(p: &Pod, c: &k8s_openapi::api::core::v1::Container) -> bool {
    let env = c.env_from.as_ref().is_some_and(|e| !e.is_empty())
        || c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .is_some_and(|f| f.config_map_key_ref.is_some() || f.secret_key_ref.is_some())
        });
    env || !config_mounts(p, c).is_empty()
}

/// The container with the service-account token volume's mount left out.
fn config_mounts(
    p: &Pod,
    c: &k8s_openapi::api::core::v1::Container,
) -> Vec<k8s_openapi::api::core::v1::VolumeMount> {
    let volumes = p
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .cloned()
        .unwrap_or_default();
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| !m.name.starts_with("kube-api-access-"))
        .filter(|m| {
            volumes.iter().any(|v| {
                v.name == m.name
                    && (v.config_map.is_some() || v.secret.is_some() || v.projected.is_some())
            })
        })
        .cloned()
        .collect()
}

/// A pod's mounted files, the token volume left out.
fn files_of(
    p: &Pod,
    c: &k8s_openapi::api::core::v1::Container,
    objects: &Objects,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut c = c.clone();
    c.volume_mounts = Some(config_mounts(p, &c));
    podconfig::mounted_files(p, &c, objects)
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
    let (server, port) = serve_api(apps.clone(), cert, key).await?;
    register_node(&client, port).await?;
    let (config_maps, cm_watch) = watch(Api::<ConfigMap>::all(client.clone()), ());
    let (secrets, secret_watch) = watch(Api::<Secret>::all(client.clone()), ());
    let config = Config {
        config_maps,
        secrets,
    };
    let (reader, pod_watch) = watch(Api::<Pod>::all(client.clone()), ());
    let run = tokio::spawn(async move {
        let _ = reader.wait_until_ready().await;
        let _ = config.config_maps.wait_until_ready().await;
        let _ = config.secrets.wait_until_ready().await;
        let mut state: HashMap<String, PodState> = HashMap::new();
        loop {
            let pods = reader.state();
            let live: HashSet<String> =
                pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
            state.retain(|uid, _| live.contains(uid));
            for p in pods {
                step(&client, &apps, &config, timing, &mut state, &p).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Ok(vec![server, pod_watch, cm_watch, secret_watch, run])
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
    config: &Config,
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
    let t = jiff::Timestamp::now().to_string();
    let configured = reads_config(p, container);
    if st.started
        && configured
        && st
            .synced_at
            .is_none_or(|s| now.duration_since(s) >= timing.config_sync)
    {
        // Mounted files follow their objects while the container runs; the environment does not.
        st.synced_at = Some(now);
        if let Ok(files) = files_of(p, container, &config.objects(ns)) {
            let named = podconfig::profile_from_files(&files);
            if named.is_some() && named != st.file_profile {
                if let Some(n) = &named {
                    apps.set_profile(ns, name, n);
                }
                st.file_profile = named;
            }
        }
    }
    let status = if !st.started {
        if age < timing.start {
            return;
        }
        let mut profile = None;
        if configured {
            let objects = config.objects(ns);
            let env = podconfig::environment(p, container, &objects)
                .map_err(|e| ("CreateContainerConfigError", format!("Error: {e}")));
            let files = files_of(p, container, &objects).map_err(|e| ("ContainerCreating", e));
            match (env, files) {
                (Ok(env), Ok(files)) => {
                    st.file_profile = podconfig::profile_from_files(&files);
                    st.synced_at = Some(now);
                    profile = st
                        .file_profile
                        .clone()
                        .or_else(|| env.get(podconfig::PROFILE_ENV).cloned());
                    st.config_error = None;
                }
                (Err((reason, message)), _) | (_, Err((reason, message))) => {
                    if st.config_error.as_deref() != Some(message.as_str()) {
                        st.config_error = Some(message.clone());
                        let status = waiting_status(&container.name, &image, reason, &message, &t);
                        let _ = api
                            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
                            .await;
                    }
                    return;
                }
            }
        }
        apps.start_with(ns, name, &container.name, &image, profile.as_deref());
        st.started = true;
        pod_status(&container.name, &image, false, 0, &t, false)
    } else if apps
        .is_ready(ns, name)
        .unwrap_or_else(|| apps.is_ready_profile(&image))
    {
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

/// A pod whose container cannot start yet: `reason` and `message` as a kubelet reports them.
fn waiting_status(
    container: &str,
    image: &str,
    reason: &str,
    message: &str,
    now: &str,
) -> serde_json::Value {
    json!({"status": {
        "phase": "Pending", "hostIP": "127.0.0.1", "qosClass": "BestEffort", "startTime": now,
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now},
            {"type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now},
            {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": now}],
        "containerStatuses": [{"name": container, "image": image, "imageID": "", "ready": false,
            "restartCount": 0, "started": false,
            "state": {"waiting": {"reason": reason, "message": message}}}]}})
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

/// Serve the kubelet API (only `containerLogs`) over TLS on a port of its own, returned. The
/// port is bound here, before the Node names it, so a port taken between the pick and the bind
/// only means another pick.
async fn serve_api(
    apps: Arc<Apps>,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<(JoinHandle<()>, u16)> {
    let router = axum::Router::new()
        .route(
            "/containerLogs/{ns}/{pod}/{container}",
            axum::routing::get(container_logs),
        )
        .with_state(apps);
    let tls = crate::tls::server_config(cert, key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let mut tries = 0;
    let (listener, port) = loop {
        let port = free_port()?;
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(l) => break (l, port),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 5 => tries += 1,
            Err(e) => return Err(e.into()),
        }
    };
    let task = tokio::spawn(async move {
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
    });
    Ok((task, port))
}
