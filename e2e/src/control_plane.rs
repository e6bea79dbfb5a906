//! A real Kubernetes control plane for tests: etcd (Debian's), kube-apiserver and
//! kube-controller-manager v1.36 (from `../shared/k8s`, unpacked by `scripts/install-deps.sh`, or
//! from `$KUBEBUILDER_ASSETS` as envtest users expect), each on free loopback ports, in a
//! scratch folder that is removed with the value. There is no kubelet and no scheduler: the
//! stand-in kubelet (`crate::kubelet`) binds and runs pods.

use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The token of the admin user (group `system:masters`).
pub const ADMIN_TOKEN: &str = "admintoken";

/// A running control plane.
pub struct ControlPlane {
    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub url: String,
    /// An admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// Scratch folder: certificates, logs (and etcd's data when there is no `/dev/shm`).
    pub dir: tempfile::TempDir,
    /// etcd's data, in memory (`/dev/shm`) when the machine has it: etcd syncs every write to
    /// disk, and a disk busy with a parallel build stalled it past the API server's timeout
    /// (`etcdserver: request timed out`) in CI. Removed with the value.
    etcd_dir: Option<tempfile::TempDir>,
    children: Vec<(&'static str, Child)>,
    /// The API server's flags, to start another one beside it.
    apiserver_args: Vec<String>,
}

/// Another API server started beside the control plane's (see [`ControlPlane::start_apiserver`]);
/// stopped when dropped.
pub struct ExtraApiServer {
    /// Its URL.
    pub url: String,
    /// Its log (stdout and stderr).
    pub log: PathBuf,
    child: Child,
}

impl Drop for ExtraApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A free loopback port (bound and released before the caller's server binds it).
///
/// It is drawn at random from below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default): a port from inside that range,
/// once released, can be taken by any outgoing connection of any test running beside this one
/// before the server binds it ("address already in use"); below it, only another test's pick
/// can collide. Falls back to a port the kernel picks when nothing below is free.
pub fn free_port() -> anyhow::Result<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if low > 20_000 {
        for _ in 0..100 {
            let port = rand::random_range(20_000..low);
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Where a control-plane binary is: `$KUBEBUILDER_ASSETS/NAME`, then the project's unpacked
/// copy in `target/k8s/bin`, then `PATH` (etcd).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("KUBEBUILDER_ASSETS") {
        let p = Path::new(&dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/k8s/bin")
        .join(name);
    if local.is_file() {
        return Ok(local);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} not found: run `make deps` (it unpacks ../shared/k8s and installs etcd-server), or set KUBEBUILDER_ASSETS"
    )
}

fn spawn(name: &'static str, bin: &Path, args: &[String], dir: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    Command::new(bin)
        .args(args)
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

impl ControlPlane {
    /// Start etcd, the API server and the controller manager; returns once `/readyz` answers.
    ///
    /// Ports are chosen free and released before the components bind them, so a test starting
    /// beside this one can take one first: the component then exits with "address already in
    /// use", and the whole control plane is started again on other ports (at most 3 times).
    pub async fn start() -> anyhow::Result<ControlPlane> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once().await {
                Ok(cp) => return Ok(cp),
                Err(e) if attempt < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("the control plane did not start ({e:#}); starting it again");
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once() -> anyhow::Result<ControlPlane> {
        let dir = tempfile::Builder::new().prefix("graygate-cp-").tempdir()?;
        let d = dir.path().to_path_buf();
        let mut cp = ControlPlane {
            url: String::new(),
            kubeconfig: d.join("kubeconfig"),
            dir,
            etcd_dir: None,
            children: Vec::new(),
            apiserver_args: Vec::new(),
        };
        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        cp.etcd_dir = tempfile::Builder::new()
            .prefix("graygate-etcd-")
            .tempdir_in("/dev/shm")
            .ok();
        let etcd_data = match &cp.etcd_dir {
            Some(t) => t.path().join("etcd"),
            None => d.join("etcd"),
        };
        let etcd = [
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--name=default".into(),
        ];
        cp.children
            .push(("etcd", spawn("etcd", &binary("etcd")?, &etcd, &d)?));
        let key = d.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stderr(Stdio::null())
            .status()
            .context("openssl genrsa (the service account signing key)")?;
        if !status.success() {
            bail!("openssl genrsa failed");
        }
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
        )?;
        let certs = d.join("certs");
        let apiserver = [
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={secure}"),
            format!("--cert-dir={}", certs.display()),
            format!("--token-auth-file={}", d.join("tokens.csv").display()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", key.display()),
            format!("--service-account-signing-key-file={}", key.display()),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
        ];
        cp.children.push((
            "kube-apiserver",
            spawn("kube-apiserver", &binary("kube-apiserver")?, &apiserver, &d)?,
        ));
        cp.apiserver_args = apiserver.to_vec();
        cp.url = format!("https://127.0.0.1:{secure}");
        std::fs::write(
            &cp.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster: {{server: \"{}\", insecure-skip-tls-verify: true}}\nusers:\n- name: admin\n  user: {{token: {ADMIN_TOKEN}}}\ncontexts:\n- name: local\n  context: {{cluster: local, user: admin, namespace: default}}\ncurrent-context: local\n",
                cp.url
            ),
        )?;
        cp.wait_ready(Duration::from_secs(60)).await?;
        // The controller manager is ready when the service-account controller has made the
        // `default` ServiceAccount of the `default` namespace: without that, pods cannot be
        // created, and a ReplicaSet that fails early backs off for minutes. (Its port, taken
        // first by another test, is one more case of `start` starting everything again.)
        let manager = [
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            "--controllers=deployment,replicaset,statefulset,garbagecollector,serviceaccount,serviceaccount-token,namespace,horizontalpodautoscaling".into(),
            format!("--service-account-private-key-file={}", key.display()),
            format!("--root-ca-file={}", certs.join("apiserver.crt").display()),
            "--leader-elect=false".into(),
            // Above the defaults (20/30), as busy clusters run it, so that the scale
            // benchmark measures graygate rather than the controller manager's client
            // throttle.
            "--kube-api-qps=100".into(),
            "--kube-api-burst=200".into(),
            // Level 2, as most clusters run it: the controllers log what they do (scaling,
            // creating pods), a real log the log detectors are tested on (e2e/tests/real_logs.rs).
            "--v=2".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
        ];
        cp.children.push((
            "kube-controller-manager",
            spawn(
                "kube-controller-manager",
                &binary("kube-controller-manager")?,
                &manager,
                &d,
            )?,
        ));
        cp.wait_manager_ready(Duration::from_secs(90)).await?;
        Ok(cp)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client().await?;
        self.wait_until("kube-apiserver", "ok from /readyz", timeout, || {
            let client = client.clone();
            async move {
                let Ok(req) = http::Request::get("/readyz").body(Vec::new()) else {
                    return false;
                };
                client
                    .request_text(req)
                    .await
                    .is_ok_and(|body| body.trim() == "ok")
            }
        })
        .await
    }

    /// Wait until the controller manager runs its controllers: the `default` ServiceAccount of
    /// the `default` namespace exists.
    async fn wait_manager_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let accounts: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
            kube::Api::namespaced(self.client().await?, "default");
        self.wait_until(
            "kube-controller-manager",
            "`default` ServiceAccount",
            timeout,
            || {
                let accounts = accounts.clone();
                async move { matches!(accounts.get_opt("default").await, Ok(Some(_))) }
            },
        )
        .await
    }

    /// Poll `ready` every 200 ms; fails with the log of the component that exited, or of
    /// `component` after `timeout`.
    async fn wait_until<F, Fut>(
        &mut self,
        component: &'static str,
        what: &str,
        timeout: Duration,
        mut ready: F,
    ) -> anyhow::Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let start = Instant::now();
        loop {
            if let Some((name, status)) = self.exited()? {
                bail!(
                    "{name} exited ({status}); its log:\n{}",
                    self.log_tail(name)
                );
            }
            if ready().await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{component}: no {what} after {timeout:?}; its log:\n{}",
                    self.log_tail(component)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first component that exited, and how.
    fn exited(&mut self) -> anyhow::Result<Option<(&'static str, std::process::ExitStatus)>> {
        for (name, c) in self.children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                return Ok(Some((*name, status)));
            }
        }
        Ok(None)
    }

    /// Send a signal (`STOP`, `CONT`, …) to one component (`kube-controller-manager`, …).
    pub fn signal(&self, name: &str, sig: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .children
            .iter()
            .find(|(n, _)| *n == name)
            .with_context(|| format!("no component {name}"))?;
        let ok = kill(child.id(), sig)?.success();
        anyhow::ensure!(ok, "kill -{sig} {name} failed");
        Ok(())
    }

    /// The value of one of the API server's flags (`--etcd-servers`).
    pub fn apiserver_flag(&self, name: &str) -> Option<String> {
        self.apiserver_args.iter().find_map(|a| {
            a.split_once('=')
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    /// Start another kube-apiserver beside the running one, as a canary of it: the same flags
    /// (the same etcd, keys and tokens) with its own port and certificates, and `extra` flags
    /// (`--name=value`) replacing those of the same name or added. Its log goes to
    /// `NAME.log` in the control plane's folder. Returns once its `/readyz` answers `ok`, or
    /// the error with the end of its log.
    pub async fn start_apiserver(
        &self,
        name: &str,
        extra: &[String],
        timeout: Duration,
    ) -> anyhow::Result<ExtraApiServer> {
        let port = free_port()?;
        let certs = self.dir.path().join(format!("{name}-certs"));
        let mut args: Vec<String> = self.apiserver_args.clone();
        let own = [
            format!("--secure-port={port}"),
            format!("--cert-dir={}", certs.display()),
        ];
        for flag in own.iter().chain(extra) {
            let key = flag.split_once('=').map_or(flag.as_str(), |(k, _)| k);
            args.retain(|a| a.split_once('=').map_or(a.as_str(), |(k, _)| k) != key);
            args.push(flag.clone());
        }
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(binary("kube-apiserver")?)
            .args(&args)
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .spawn()
            .context("starting another kube-apiserver")?;
        let mut extra = ExtraApiServer {
            url: format!("https://127.0.0.1:{port}"),
            log,
            child,
        };
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        cfg.cluster_url = extra.url.parse()?;
        let client = kube::Client::try_from(cfg)?;
        let start = Instant::now();
        loop {
            if let Some(status) = extra.child.try_wait()? {
                bail!(
                    "{name} exited ({status}); its log:\n{}",
                    std::fs::read_to_string(&extra.log).unwrap_or_default()
                );
            }
            let ready = match http::Request::get("/readyz").body(Vec::new()) {
                Ok(req) => client
                    .request_text(req)
                    .await
                    .is_ok_and(|body| body.trim() == "ok"),
                Err(_) => false,
            };
            if ready {
                return Ok(extra);
            }
            if start.elapsed() > timeout {
                let text = std::fs::read_to_string(&extra.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                bail!(
                    "{name}: not ready after {timeout:?}; its log:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The last lines of one component's log.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log")))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// A kube client as the admin.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(cfg)?)
    }
}

/// Parse a test object from YAML.
pub fn yaml<T: serde::de::DeserializeOwned>(text: &str) -> T {
    serde_yaml::from_str(text).unwrap_or_else(|e| panic!("test YAML: {e}\n{text}"))
}

/// Poll `f` every 200 ms until it holds; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A running `graygate run` process; killed (after a SIGCONT, in case it was frozen) on drop.
pub struct Operator(pub Child);

impl Operator {
    /// Send a signal (`STOP`, `CONT`, …) to the process.
    pub fn signal(&self, sig: &str) -> std::io::Result<std::process::ExitStatus> {
        kill(self.0.id(), sig)
    }
}

/// `kill -<sig> <pid>`.
fn kill(pid: u32, sig: &str) -> std::io::Result<std::process::ExitStatus> {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.signal("CONT");
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ControlPlane {
    /// Create namespace `ns` and a Deployment `name` of `replicas` pods running `image`.
    pub async fn deployment(
        &self,
        ns: &str,
        name: &str,
        replicas: i32,
        image: &str,
    ) -> anyhow::Result<()> {
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::Namespace;
        use kube::api::Api;
        let client = self.client().await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        if namespaces.get_opt(ns).await?.is_none() {
            namespaces
                .create(
                    &graygate::api::post_params("e2e-test"),
                    &yaml(&format!("metadata: {{name: {ns}}}")),
                )
                .await?;
        }
        Api::<Deployment>::namespaced(client, ns)
            .create(
                &graygate::api::post_params("e2e-test"),
                &yaml(&format!(
                    "metadata: {{name: {name}}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: app, image: '{image}'}}]}}\n"
                )),
            )
            .await?;
        Ok(())
    }
}

impl ControlPlane {
    /// The first container image of Deployment `ns/name`'s pod template.
    pub async fn deployment_image(&self, ns: &str, name: &str) -> anyhow::Result<Option<String>> {
        let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
            kube::Api::namespaced(self.client().await?, ns);
        Ok(api
            .get(name)
            .await?
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.first().and_then(|c| c.image.clone())))
    }
}
