//! A whole world for one test or the demo: simulated API server and workloads, a real
//! Prometheus, and the unmodified `graygate run` binary talking to them over HTTP.

use crate::control_plane::free_port;
use crate::sim::apps::{Apps, Diurnal, load_profiles};
use crate::sim::controllers::{Controllers, PodTiming};
use crate::sim::crd::builtin_types;
use crate::sim::faults::Faults;
use crate::sim::http::{ApiState, AuditEntry, HARNESS_HEADER, router};
use crate::sim::prom::Prometheus;
use crate::sim::store::Store;
use anyhow::{Context, bail};
use graygate::api::ChangeRequest;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// How to build a world.
#[derive(Clone, Debug)]
pub struct WorldOptions {
    /// Start a real Prometheus scraping the pods.
    pub prometheus: bool,
    /// Pod start and readiness delays.
    pub timing: PodTiming,
    /// The rhythm all pods share.
    pub diurnal: Diurnal,
    /// Seed for the applications' randomness.
    pub seed: u64,
}

impl Default for WorldOptions {
    fn default() -> Self {
        WorldOptions {
            prometheus: false,
            timing: PodTiming::default(),
            diurnal: Diurnal {
                amplitude: 0.3,
                period_secs: 600.0,
            },
            seed: 42,
        }
    }
}

/// The simulator's parts, present only when the world is simulated.
pub struct Sim {
    /// Objects.
    pub store: Arc<Store>,
    /// Fault knobs.
    pub faults: Arc<Faults>,
    /// The applications.
    pub apps: Arc<Apps>,
    /// Every request graygate made.
    pub audit: Arc<Mutex<Vec<AuditEntry>>>,
    /// Prometheus, when started.
    pub prometheus: Mutex<Option<Prometheus>>,
    tasks: Vec<JoinHandle<()>>,
}

/// A running world.
pub struct World {
    /// The simulator, or None when the scenarios run against a real cluster.
    pub sim: Option<Sim>,
    /// The harness's own client (exempt from fault injection).
    pub client: Client,
    /// The kubeconfig graygate is given.
    pub kubeconfig: PathBuf,
    /// A scratch folder (logs, Prometheus data, kubeconfig).
    pub dir: tempfile::TempDir,
    graygate: Mutex<Option<(Child, u16)>>,
    runs: Mutex<u32>,
}

/// The profiles folder.
pub fn profiles_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}

/// The graygate binary built beside the running executable (target/<profile>/graygate).
pub fn graygate_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("GRAYGATE_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("graygate");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the graygate binary was not found next to {}; run `cargo build` first or set GRAYGATE_BIN",
        exe.display()
    )
}

/// True when scenarios should run against the cluster in KUBECONFIG instead of the simulator.
pub fn real_cluster() -> bool {
    std::env::var("GRAYGATE_E2E_REAL").is_ok_and(|v| v == "1")
}

impl World {
    /// Start a world.
    pub async fn start(opts: WorldOptions) -> anyhow::Result<World> {
        graygate::install_crypto_provider();
        let dir = tempfile::Builder::new().prefix("graygate-e2e-").tempdir()?;
        if real_cluster() {
            let kubeconfig = PathBuf::from(
                std::env::var("KUBECONFIG").context("GRAYGATE_E2E_REAL=1 needs KUBECONFIG")?,
            );
            let client = Client::try_default().await?;
            let w = World {
                sim: None,
                client,
                kubeconfig,
                dir,
                graygate: Mutex::new(None),
                runs: Mutex::new(0),
            };
            w.install_crd().await?;
            return Ok(w);
        }
        let store = Arc::new(Store::default());
        for t in builtin_types() {
            store.register(t);
        }
        let ns_type = store
            .resource_by_kind("Namespace")
            .context("namespace type")?;
        for ns in ["default", "kube-system"] {
            store
                .create(&ns_type, "", json!({"metadata": {"name": ns}}))
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        let apps = Arc::new(Apps::new(
            load_profiles(&profiles_dir())?,
            opts.diurnal,
            opts.seed,
        ));
        let faults = Arc::new(Faults::default());
        let audit = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();

        let api_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let api_addr = api_listener.local_addr()?;
        let state = ApiState {
            store: store.clone(),
            faults: faults.clone(),
            apps: apps.clone(),
            audit: audit.clone(),
        };
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(api_listener, router(state)).await;
        }));
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app_addr = app_listener.local_addr()?.to_string();
        let app_router = crate::sim::appserver::router(apps.clone(), app_addr.clone());
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(app_listener, app_router).await;
        }));
        let mut controllers = Controllers::new(store.clone(), apps.clone(), opts.timing);
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                controllers.tick();
            }
        }));
        let traffic = apps.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = Instant::now();
            loop {
                tick.tick().await;
                let now = Instant::now();
                traffic.tick(now.duration_since(last).as_secs_f64());
                last = now;
            }
        }));

        let server = format!("http://{api_addr}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {server}\nusers:\n- name: sim\n  user: {{}}\ncontexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: default\ncurrent-context: sim\n"
            ),
        )?;
        let mut config = Config::new(server.parse()?);
        config.default_namespace = "default".into();
        config.headers.push((HARNESS_HEADER.parse()?, "1".parse()?));
        let client = Client::try_from(config)?;
        let prometheus = if opts.prometheus {
            let sd = format!("http://{app_addr}/sd");
            let dir_p = dir.path().join("prometheus");
            Some(tokio::task::spawn_blocking(move || Prometheus::start(&dir_p, &sd)).await??)
        } else {
            None
        };
        let w = World {
            sim: Some(Sim {
                store,
                faults,
                apps,
                audit,
                prometheus: Mutex::new(prometheus),
                tasks,
            }),
            client,
            kubeconfig,
            dir,
            graygate: Mutex::new(None),
            runs: Mutex::new(0),
        };
        w.install_crd().await?;
        Ok(w)
    }

    /// The simulator, or an error that explains the scenario needs it.
    pub fn sim(&self) -> anyhow::Result<&Sim> {
        self.sim
            .as_ref()
            .context("this scenario needs the simulator (it injects faults or controls processes)")
    }

    /// The Prometheus URL, when one runs.
    pub fn prometheus_url(&self) -> Option<String> {
        self.sim.as_ref().and_then(|s| {
            s.prometheus
                .lock()
                .ok()
                .and_then(|p| p.as_ref().map(Prometheus::url))
        })
    }

    async fn install_crd(&self) -> anyhow::Result<()> {
        let crd = graygate::api::crd();
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// Create every object in a multi-document YAML text.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let v: Value = serde::Deserialize::deserialize(doc)?;
            if v.is_null() {
                continue;
            }
            self.create(v).await?;
        }
        Ok(())
    }

    fn resource_of(v: &Value) -> anyhow::Result<(ApiResource, bool)> {
        let api_version = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .context("apiVersion is missing")?;
        let kind = v
            .get("kind")
            .and_then(Value::as_str)
            .context("kind is missing")?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let plural = match kind {
            "ChangeRequest" => "changerequests".to_string(),
            k => format!("{}s", k.to_lowercase()),
        };
        let namespaced = !matches!(kind, "Namespace" | "CustomResourceDefinition");
        Ok((ApiResource::from_gvk_with_plural(&gvk, &plural), namespaced))
    }

    /// Create one object given as JSON.
    pub async fn create(&self, v: Value) -> anyhow::Result<()> {
        let (ar, namespaced) = Self::resource_of(&v)?;
        let obj: DynamicObject = serde_json::from_value(v)?;
        let api: Api<DynamicObject> = if namespaced {
            Api::namespaced_with(
                self.client.clone(),
                &obj.namespace().unwrap_or_else(|| "default".into()),
                &ar,
            )
        } else {
            Api::all_with(self.client.clone(), &ar)
        };
        api.create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("creating {} {}", ar.kind, obj.name_any()))?;
        Ok(())
    }

    /// Start `graygate run` (stopping a running one first, hard). Returns its metrics port.
    pub fn start_graygate(&self, extra: &[&str]) -> anyhow::Result<u16> {
        self.kill_graygate();
        let bin = graygate_bin()?;
        let port = free_port()?;
        let n = {
            let mut r = self.runs.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            *r += 1;
            *r
        };
        let log = std::fs::File::create(self.dir.path().join(format!("graygate-{n}.log")))?;
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg(format!("--listen=127.0.0.1:{port}"))
            .arg("--lease-namespace=default")
            .arg("--lease-duration=3s")
            .arg(format!("--identity=graygate-e2e-{n}"))
            .args(extra)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("GRAYGATE_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(url) = self.prometheus_url() {
            cmd.arg(format!("--prometheus-url={url}"));
        }
        let child = cmd.spawn().context("starting graygate")?;
        *self.graygate.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some((child, port));
        Ok(port)
    }

    /// Kill graygate with SIGKILL, as a crash or an evicted pod would.
    pub fn kill_graygate(&self) {
        if let Ok(mut g) = self.graygate.lock()
            && let Some((mut c, _)) = g.take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the graygate process still runs.
    pub fn graygate_running(&self) -> bool {
        self.graygate.lock().ok().is_some_and(|mut g| {
            g.as_mut()
                .is_some_and(|(c, _)| c.try_wait().ok().flatten().is_none())
        })
    }

    /// Everything graygate logged so far (all runs).
    pub fn graygate_logs(&self) -> String {
        let runs = self.runs.lock().map(|r| *r).unwrap_or(0);
        (1..=runs)
            .map(|n| {
                std::fs::read_to_string(self.dir.path().join(format!("graygate-{n}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n---- restart ----\n")
    }

    /// A ChangeRequest as it is now.
    pub async fn change_request(
        &self,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<Option<ChangeRequest>> {
        Ok(Api::<ChangeRequest>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await?)
    }

    /// Poll `f` every 200 ms until it returns Some, or fail after `timeout` with graygate's logs.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            match f().await {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() > deadline {
                let logs = self.graygate_logs();
                let tail: Vec<&str> = logs.lines().rev().take(40).collect();
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last error: {last_err:?})\n--- graygate log tail ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until a ChangeRequest reaches `phase`; returns it.
    pub async fn wait_phase(
        &self,
        ns: &str,
        name: &str,
        phase: graygate::api::Phase,
        timeout: Duration,
    ) -> anyhow::Result<ChangeRequest> {
        let r = self
            .wait_for(
                &format!("ChangeRequest {ns}/{name} to be {}", phase.as_str()),
                timeout,
                || async {
                    let cr = self.change_request(ns, name).await?;
                    Ok(cr.filter(|c| c.status.as_ref().is_some_and(|s| s.phase == phase)))
                },
            )
            .await;
        match r {
            Ok(cr) => Ok(cr),
            Err(e) => {
                let status = self
                    .change_request(ns, name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|c| c.status)
                    .and_then(|s| serde_yaml::to_string(&s).ok())
                    .unwrap_or_default();
                Err(e.context(format!("status of {ns}/{name}:\n{status}")))
            }
        }
    }

    /// Reasons of the Events recorded for an object, oldest first.
    pub async fn event_reasons(&self, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
        let api: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), ns);
        let mut events: Vec<_> = api
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .collect();
        events.sort_by_key(|e| {
            (
                e.event_time.as_ref().map(|t| t.0),
                e.metadata
                    .resource_version
                    .clone()
                    .and_then(|r| r.parse::<u64>().ok()),
            )
        });
        Ok(events.into_iter().filter_map(|e| e.reason).collect())
    }

    /// Requests graygate sent that the operator's RBAC table (`graygate::access`) does not allow,
    /// as "VERB path" lines; discovery and non-resource paths are not RBAC-checked by resource.
    pub fn calls_outside_rbac(&self) -> Vec<String> {
        let Some(sim) = &self.sim else {
            return Vec::new();
        };
        let entries = sim.audit.lock().map(|a| a.clone()).unwrap_or_default();
        let mut out: Vec<String> = entries
            .iter()
            .filter_map(|e| {
                let req = graygate::access::classify(&e.method, &e.path, &e.query)?;
                match graygate::access::allowed(&req) {
                    Some(_) => None,
                    None => Some(format!(
                        "{} {} ({} {})",
                        e.method, e.path, req.verb, req.resource
                    )),
                }
            })
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Successful writes graygate made to objects whose path contains `path_part`.
    pub fn writes_to(&self, path_part: &str) -> Vec<AuditEntry> {
        let Some(sim) = &self.sim else {
            return Vec::new();
        };
        sim.audit
            .lock()
            .map(|a| {
                a.iter()
                    .filter(|e| {
                        e.method != "GET"
                            && e.path.contains(path_part)
                            && (200..300).contains(&e.status)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.kill_graygate();
        if let Some(sim) = &self.sim {
            for t in &sim.tasks {
                t.abort();
            }
        }
    }
}
