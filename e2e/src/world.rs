//! A whole world for one test or the demo: a real control plane (etcd, kube-apiserver,
//! kube-controller-manager), the stand-in kubelet running profile-driven applications, a real
//! Prometheus scraping them, the fault-injecting proxy, and the unmodified `graygate run` binary
//! with the Helm chart's RBAC and a ServiceAccount token.

use crate::apps::{Apps, Diurnal, load_profiles};
use crate::control_plane::{ControlPlane, Operator, free_port};
use crate::faults::Faults;
use crate::kubelet::PodTiming;
use crate::prom::Prometheus;
use crate::proxy::{ApiProxy, AuditEntry};
use anyhow::{Context, bail};
use graygate::api::ChangeRequest;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// The namespace graygate is installed in (the chart's release namespace).
pub const OPERATOR_NAMESPACE: &str = "graygate-system";

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
    /// Install graygate's CRD (a scenario may install another version itself).
    pub install_crd: bool,
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
            install_crd: true,
        }
    }
}

/// A running world.
pub struct World {
    /// The harness's own client: the cluster admin, straight to the API server.
    pub client: Client,
    /// The kubeconfig graygate is given: the chart's ServiceAccount, through the fault proxy.
    pub kubeconfig: PathBuf,
    /// An admin kubeconfig (what a person with kubectl would have).
    pub admin_kubeconfig: PathBuf,
    /// The applications the pods run.
    pub apps: Arc<Apps>,
    /// Fault knobs of the proxy in front of the API server.
    pub faults: Arc<Faults>,
    /// Every request graygate made (through the proxy).
    pub audit: Arc<Mutex<Vec<AuditEntry>>>,
    /// Prometheus, when started.
    pub prometheus: Mutex<Option<Prometheus>>,
    /// A scratch folder (logs, Prometheus data, kubeconfig).
    pub dir: tempfile::TempDir,
    graygate: Arc<Mutex<Supervised>>,
    tasks: Vec<JoinHandle<()>>,
    _proxy: ApiProxy,
    /// The control plane (dropped last).
    pub cp: ControlPlane,
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

/// The standard output of a command that must succeed; `what` names it in errors.
fn stdout_of(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The non-empty documents of a multi-document YAML text.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v: Value = serde::Deserialize::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The objects the Helm chart renders with its default values (`scripts/chart/check.py`).
fn chart_objects() -> anyhow::Result<Vec<Value>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("python3");
    cmd.arg(root.join("scripts/chart/check.py"))
        .args(["--render", "-"]);
    documents(&stdout_of(
        cmd,
        "python3 scripts/chart/check.py --render - (run `make deps` first)",
    )?)
}

impl World {
    /// Start a world.
    pub async fn start(opts: WorldOptions) -> anyhow::Result<World> {
        graygate::install_crypto_provider();
        let dir = tempfile::Builder::new().prefix("graygate-e2e-").tempdir()?;
        let cp = ControlPlane::start().await?;
        let client = cp.client().await?;
        let apps = Arc::new(Apps::new(
            load_profiles(&profiles_dir())?,
            opts.diurnal,
            opts.seed,
        ));
        let mut tasks = Vec::new();
        let certs = cp.dir.path().join("certs");
        tasks.extend(
            crate::kubelet::start(
                client.clone(),
                apps.clone(),
                opts.timing,
                &certs.join("apiserver.crt"),
                &certs.join("apiserver.key"),
            )
            .await?,
        );
        let app_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let app_addr = app_listener.local_addr()?.to_string();
        let app_router = crate::appserver::router(apps.clone(), app_addr.clone());
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(app_listener, app_router).await;
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
        let proxy = ApiProxy::start(&cp.url).await?;
        let prometheus = if opts.prometheus {
            let sd = format!("http://{app_addr}/sd");
            let dir_p = dir.path().join("prometheus");
            Some(tokio::task::spawn_blocking(move || Prometheus::start(&dir_p, &sd)).await??)
        } else {
            None
        };
        let graygate = Arc::new(Mutex::new(Supervised::default()));
        tasks.push(tokio::spawn(supervise(
            graygate.clone(),
            dir.path().to_path_buf(),
        )));
        let w = World {
            client,
            kubeconfig: dir.path().join("kubeconfig"),
            admin_kubeconfig: cp.kubeconfig.clone(),
            apps,
            faults: proxy.faults.clone(),
            audit: proxy.audit.clone(),
            prometheus: Mutex::new(prometheus),
            dir,
            graygate,
            tasks,
            _proxy: proxy,
            cp,
        };
        if opts.install_crd {
            w.install_crd().await?;
        }
        w.install_rbac().await?;
        Ok(w)
    }

    /// The Prometheus URL, when one runs.
    pub fn prometheus_url(&self) -> Option<String> {
        self.prometheus
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(Prometheus::url))
    }

    async fn install_crd(&self) -> anyhow::Result<()> {
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> = Api::all(self.client.clone());
        self.install_one_crd(&api, graygate::api::policy_crd())
            .await?;
        self.install_one_crd(&api, graygate::api::crd()).await
    }

    async fn install_one_crd(
        &self,
        api: &Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>,
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> anyhow::Result<()> {
        api.create(&PostParams::default(), &crd).await?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let established = api.get(&name).await?.status.is_some_and(|s| {
                s.conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            if established {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the CRD was not established within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The chart's ServiceAccount and RBAC in `graygate-system`, a token for it from
    /// `kubectl create token`, and graygate's kubeconfig (through the fault proxy).
    async fn install_rbac(&self) -> anyhow::Result<()> {
        self.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": OPERATOR_NAMESPACE}}))
            .await?;
        let mut account = None;
        for obj in chart_objects()? {
            let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
            if kind == "ServiceAccount" {
                account = obj
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .map(String::from);
            }
            if matches!(
                kind,
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            ) {
                self.create(obj).await?;
            }
        }
        let account = account.context("the chart renders no ServiceAccount")?;
        let mut cmd = Command::new("kubectl");
        cmd.args([
            "create",
            "token",
            &account,
            "-n",
            OPERATOR_NAMESPACE,
            "--duration=24h",
        ])
        .arg(format!("--kubeconfig={}", self.admin_kubeconfig.display()));
        let token = stdout_of(cmd, "kubectl create token")?.trim().to_string();
        std::fs::write(
            &self.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{}\"}}\nusers:\n- name: graygate\n  user: {{token: {token}}}\ncontexts:\n- name: local\n  context: {{cluster: local, user: graygate, namespace: default}}\ncurrent-context: local\n",
                self._proxy.url
            ),
        )?;
        Ok(())
    }

    /// Create every object in a multi-document YAML text.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        for v in documents(yaml)? {
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
            "ChangePolicy" => "changepolicies".to_string(),
            "ClusterRole" => "clusterroles".to_string(),
            "ClusterRoleBinding" => "clusterrolebindings".to_string(),
            "Role" => "roles".to_string(),
            "RoleBinding" => "rolebindings".to_string(),
            k => format!("{}s", k.to_lowercase()),
        };
        let namespaced = !matches!(
            kind,
            "Namespace"
                | "CustomResourceDefinition"
                | "ClusterRole"
                | "ClusterRoleBinding"
                | "MutatingWebhookConfiguration"
        );
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
        match api.create(&PostParams::default(), &obj).await {
            Ok(_) => {}
            // Scenarios share namespaces; one that exists already is what was asked for.
            Err(kube::Error::Api(e)) if e.code == 409 && ar.kind == "Namespace" => {}
            Err(e) => {
                return Err(anyhow::Error::from(e))
                    .with_context(|| format!("creating {} {}", ar.kind, obj.name_any()));
            }
        }
        if ar.kind == "Namespace" {
            self.wait_default_account(&obj.name_any()).await?;
        }
        Ok(())
    }

    /// Wait until the namespace has its `default` ServiceAccount, as `kubectl create namespace`
    /// users do before creating pods in it: until then the API server refuses pods there, and
    /// a ReplicaSet whose first pods were refused backs off exponentially.
    async fn wait_default_account(&self, ns: &str) -> anyhow::Result<()> {
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.client.clone(), ns);
        self.wait_for(
            &format!("the default ServiceAccount of namespace {ns}"),
            Duration::from_secs(60),
            || async { Ok(accounts.get_opt("default").await?.map(|_| ())) },
        )
        .await
    }

    /// Install the chart's MutatingWebhookConfiguration, pointed at `https://127.0.0.1:<port>`
    /// (no Service networking here) with `failure_policy` (`Ignore` or `Fail`). Returns the
    /// arguments that make `graygate run` serve it there, with a certificate it makes itself.
    pub async fn install_webhook(&self, failure_policy: &str) -> anyhow::Result<Vec<String>> {
        let port = free_port()?;
        let mut cfg = chart_objects()?
            .into_iter()
            .find(|o| o.get("kind").and_then(Value::as_str) == Some("MutatingWebhookConfiguration"))
            .context("the chart renders no MutatingWebhookConfiguration")?;
        let name = cfg
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("graygate")
            .to_string();
        if let Some(Value::Array(hooks)) = cfg.get_mut("webhooks") {
            for h in hooks {
                h["clientConfig"] =
                    serde_json::json!({"url": format!("https://127.0.0.1:{port}/mutate")});
                // The chart's choice is for workloads; pods are always Ignore.
                if h["name"] == "workloads.graygate.io" {
                    h["failurePolicy"] = serde_json::json!(failure_policy);
                }
            }
        }
        self.create(cfg).await?;
        Ok(vec![
            format!("--webhook-listen=127.0.0.1:{port}"),
            format!("--webhook-configuration={name}"),
            "--webhook-names=127.0.0.1".into(),
        ])
    }

    /// Start `graygate run` (stopping a running one first, hard). Returns its metrics port.
    ///
    /// Like the Deployment of the chart (restartPolicy Always), the world starts it again when
    /// it exits after losing its Lease — the one exit graygate makes on purpose while running,
    /// for a fresh process to rejoin the election. Any other exit is left for the test to see.
    pub fn start_graygate(&self, extra: &[&str]) -> anyhow::Result<u16> {
        self.kill_graygate();
        let port = free_port()?;
        let mut args = vec![format!("--listen=127.0.0.1:{port}")];
        args.extend(extra.iter().map(|a| a.to_string()));
        if !args.iter().any(|a| a.starts_with("--prometheus-url"))
            && let Some(url) = self.prometheus_url()
        {
            args.push(format!("--prometheus-url={url}"));
        }
        let mut g = self.graygate.lock().map_err(|_| anyhow::anyhow!("lock"))?;
        g.runs += 1;
        let op = self.operator(&format!("graygate-e2e-{}", g.runs), &args)?;
        g.current = Some((op, port));
        g.args = args;
        Ok(port)
    }

    /// Start one more `graygate run` replica as `identity` (3 s Lease in graygate-system), with
    /// the chart's RBAC, logging to `graygate-<identity>.log`; it stops when the value drops.
    pub fn operator(&self, identity: &str, extra: &[String]) -> anyhow::Result<Operator> {
        self.operator_via(identity, &self.kubeconfig, extra)
    }

    /// A copy of graygate's kubeconfig (same ServiceAccount token) that reaches the API server
    /// through `server` (another proxy), written to `name` in the scratch folder.
    pub fn kubeconfig_via(&self, server: &str, name: &str) -> anyhow::Result<PathBuf> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        let path = self.dir.path().join(name);
        std::fs::write(&path, text.replace(&self._proxy.url, server))?;
        Ok(path)
    }

    /// [`World::operator`] with another kubeconfig (appending to its log, so a restarted
    /// replica's log keeps what the killed one wrote).
    pub fn operator_via(
        &self,
        identity: &str,
        kubeconfig: &Path,
        extra: &[String],
    ) -> anyhow::Result<Operator> {
        let mut args = extra.to_vec();
        if !args.iter().any(|a| a.starts_with("--listen")) {
            args.push(format!("--listen=127.0.0.1:{}", free_port()?));
        }
        if !args.iter().any(|a| a.starts_with("--prometheus-url"))
            && let Some(url) = self.prometheus_url()
        {
            args.push(format!("--prometheus-url={url}"));
        }
        spawn_operator(self.dir.path(), identity, kubeconfig, &args)
    }

    /// The last lines of an operator replica's log.
    pub fn operator_log_tail(&self, identity: &str) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join(format!("graygate-{identity}.log")))
                .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kill graygate with SIGKILL, as a crash or an evicted pod would.
    pub fn kill_graygate(&self) {
        if let Ok(mut g) = self.graygate.lock() {
            g.current.take();
        }
    }

    /// The process id of the graygate started by `start_graygate`.
    pub fn graygate_pid(&self) -> Option<u32> {
        self.graygate
            .lock()
            .ok()
            .and_then(|g| g.current.as_ref().map(|(op, _)| op.0.id()))
    }

    /// Whether the graygate process still runs.
    pub fn graygate_running(&self) -> bool {
        self.graygate.lock().ok().is_some_and(|mut g| {
            g.current
                .as_mut()
                .is_some_and(|(c, _)| c.0.try_wait().ok().flatten().is_none())
        })
    }

    /// How many times `graygate run` was started: by `start_graygate`, or again by the world
    /// after it stepped down.
    pub fn graygate_runs(&self) -> u32 {
        self.graygate.lock().map(|g| g.runs).unwrap_or(0)
    }

    /// Everything graygate logged so far (all runs).
    pub fn graygate_logs(&self) -> String {
        let runs = self.graygate.lock().map(|g| g.runs).unwrap_or(0);
        (1..=runs)
            .map(|n| {
                std::fs::read_to_string(
                    self.dir
                        .path()
                        .join(format!("graygate-graygate-e2e-{n}.log")),
                )
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
                    "timed out after {timeout:?} waiting for {what} (last error: {last_err:?})\n--- graygate log tail ---\n{}\n--- kube-controller-manager log tail ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    self.cp.log_tail("kube-controller-manager")
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
        Ok(self
            .events(ns, name)
            .await?
            .into_iter()
            .filter_map(|e| e.reason)
            .collect())
    }

    /// The Events (events.k8s.io) regarding the object `name` in `ns`, oldest first.
    pub async fn events(
        &self,
        ns: &str,
        name: &str,
    ) -> anyhow::Result<Vec<k8s_openapi::api::events::v1::Event>> {
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
        Ok(events)
    }

    /// Requests graygate sent that the operator's RBAC table (`graygate::access`) does not allow,
    /// as "VERB path" lines; discovery and non-resource paths are not RBAC-checked by resource.
    pub fn calls_outside_rbac(&self) -> Vec<String> {
        let entries = self.audit.lock().map(|a| a.clone()).unwrap_or_default();
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
        self.audit
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
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The `graygate run` of [`World::start_graygate`], watched over as a kubelet would.
#[derive(Default)]
struct Supervised {
    current: Option<(Operator, u16)>,
    /// Its arguments (listen address and Prometheus included), to start it again with.
    args: Vec<String>,
    /// How many times it was started (run `n` logs to `graygate-graygate-e2e-{n}.log`).
    runs: u32,
}

/// Start one `graygate run` as `identity`, appending to `graygate-<identity>.log` in `dir`.
fn spawn_operator(
    dir: &Path,
    identity: &str,
    kubeconfig: &Path,
    args: &[String],
) -> anyhow::Result<Operator> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("graygate-{identity}.log")))?;
    let mut cmd = Command::new(graygate_bin()?);
    cmd.arg("run")
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--lease-namespace={OPERATOR_NAMESPACE}"))
        .arg("--lease-duration=3s")
        .arg(format!("--identity={identity}"))
        .args(args)
        .env("GRAYGATE_LOG", "info,kube=warn")
        .stdout(Stdio::null())
        .stderr(log);
    Ok(Operator(cmd.spawn().context("starting graygate")?))
}

/// Did the log of a run that exited end with graygate stepping down from the Lease?
fn stepped_down(log: &str) -> bool {
    log.lines()
        .rev()
        .take(5)
        .any(|l| l.contains("lost leadership; exiting"))
}

/// Start the world's graygate again when it exits after losing its Lease (a stalled control
/// plane can keep it from renewing in time); the chart's Deployment would. Polls twice a second.
async fn supervise(graygate: Arc<Mutex<Supervised>>, dir: PathBuf) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let Ok(mut g) = graygate.lock() else { return };
        let Some((op, port)) = g.current.as_mut() else {
            continue;
        };
        if !matches!(op.0.try_wait(), Ok(Some(_))) {
            continue;
        }
        let port = *port;
        let log =
            std::fs::read_to_string(dir.join(format!("graygate-graygate-e2e-{}.log", g.runs)))
                .unwrap_or_default();
        if !stepped_down(&log) {
            continue;
        }
        g.runs += 1;
        let identity = format!("graygate-e2e-{}", g.runs);
        eprintln!(
            "world: graygate stepped down after losing its Lease; starting it again as {identity}, as its Deployment would"
        );
        match spawn_operator(&dir, &identity, &dir.join("kubeconfig"), &g.args) {
            Ok(op) => g.current = Some((op, port)),
            Err(e) => eprintln!("world: could not start graygate again: {e:#}"),
        }
    }
}

#[cfg(test)]
mod supervise_tests {
    #[test]
    fn only_a_step_down_is_restarted() {
        let down = "{\"message\":\"graygate stopped\"}\n{\"message\":\"graygate run failed\",\"error\":\"lost leadership; exiting so a fresh process can rejoin the election\"}\nerror: lost leadership; exiting so a fresh process can rejoin the election\n";
        assert!(super::stepped_down(down));
        assert!(!super::stepped_down(
            "thread 'main' panicked at src/x.rs:1:1\n"
        ));
        assert!(!super::stepped_down(""));
    }
}
