//! `graygate run`: the operator process.

use crate::analysis::Analyzer;
use crate::analysis::prometheus::PrometheusAnalyzer;
use crate::controller::lease::{self, LeaseConfig};
use crate::controller::metrics::Metrics;
use crate::controller::reconcile::{Context, run_controller};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Settings of `graygate run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Only watch ChangeRequests in these namespaces, comma-separated or repeated (default: all namespaces).
    #[arg(long = "namespace", env = "GRAYGATE_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "GRAYGATE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "GRAYGATE_LEASE_NAME", default_value = "graygate-leader")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "GRAYGATE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// How long a Lease is valid without renewal.
    #[arg(long, env = "GRAYGATE_LEASE_DURATION", default_value = "15s")]
    pub lease_duration: crate::api::Duration,
    /// This replica's identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "GRAYGATE_IDENTITY")]
    pub identity: Option<String>,
    /// Default Prometheus URL for analyses that do not name one.
    #[arg(long, env = "GRAYGATE_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Notification sinks (YAML: `dashboardUrl`, `sinks[]`; see docs/operations.md).
    #[arg(long, env = "GRAYGATE_NOTIFICATIONS")]
    pub notifications: Option<std::path::PathBuf>,
    /// A kubeconfig file (default: $KUBECONFIG, ~/.kube/config, then the in-cluster service account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Serve the guarded-workload admission webhook (HTTPS, `POST /mutate`) on this address.
    /// Without it no webhook is served and ChangePolicies cannot hold changes.
    #[arg(long, env = "GRAYGATE_WEBHOOK_LISTEN")]
    pub webhook_listen: Option<String>,
    /// The MutatingWebhookConfiguration whose caBundle graygate keeps current.
    #[arg(
        long,
        env = "GRAYGATE_WEBHOOK_CONFIGURATION",
        default_value = "graygate"
    )]
    pub webhook_configuration: String,
    /// The Secret (in the operator's namespace) holding the webhook certificate graygate makes.
    #[arg(
        long,
        env = "GRAYGATE_WEBHOOK_SECRET",
        default_value = "graygate-webhook-tls"
    )]
    pub webhook_secret: String,
    /// Host names and IP addresses the webhook certificate is for, comma-separated
    /// (the chart passes the Service's DNS names).
    #[arg(long, env = "GRAYGATE_WEBHOOK_NAMES", value_delimiter = ',')]
    pub webhook_names: Vec<String>,
    /// Read the webhook certificate from `tls.crt` and `tls.key` here (cert-manager) instead of
    /// making one.
    #[arg(long, env = "GRAYGATE_WEBHOOK_CERT_DIR")]
    pub webhook_cert_dir: Option<std::path::PathBuf>,
    /// Further user names whose writes the webhook lets through untouched. graygate's own
    /// identity (asked of the API server at start, and
    /// `system:serviceaccount:$POD_NAMESPACE:$SERVICE_ACCOUNT` when both are set) is always
    /// trusted.
    #[arg(
        long = "trusted-user",
        env = "GRAYGATE_TRUSTED_USERS",
        value_delimiter = ','
    )]
    pub trusted_users: Vec<String>,
    /// How many ChangeRequests are reconciled at once (0: no limit). A reconcile mostly waits
    /// for the API server; a bound keeps a burst of changes from queueing inside the API server,
    /// where every write of every change waits behind all the others (docs/performance.md).
    #[arg(long, env = "GRAYGATE_WORKERS", default_value_t = DEFAULT_WORKERS)]
    pub workers: u16,
}

/// Default of `--workers`.
pub const DEFAULT_WORKERS: u16 = 16;

fn trusted_users(args: &RunArgs) -> Vec<String> {
    let mut users = args.trusted_users.clone();
    if let (Ok(ns), Ok(sa)) = (
        std::env::var("POD_NAMESPACE"),
        std::env::var("SERVICE_ACCOUNT"),
    ) {
        users.push(format!("system:serviceaccount:{ns}:{sa}"));
    }
    users
}

/// The user name the API server knows this client by.
async fn whoami(client: &kube::Client) -> anyhow::Result<String> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = api
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| anyhow::anyhow!("the SelfSubjectReview names no user"))
}

/// What this replica still waits for before it is ready, by start-up step (empty: nothing).
#[derive(Clone)]
struct Startup {
    pending: Arc<std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>>,
    changed: watch::Sender<()>,
}

impl Startup {
    fn new() -> (Startup, watch::Receiver<()>) {
        let (changed, rx) = watch::channel(());
        (
            Startup {
                pending: Default::default(),
                changed,
            },
            rx,
        )
    }

    /// `step` is not done: `why`, in words (shown by `/readyz`).
    fn waiting(&self, step: &'static str, why: String) {
        if let Ok(mut p) = self.pending.lock() {
            p.insert(step, why);
        }
        self.changed.send_replace(());
    }

    fn done(&self, step: &'static str) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(step);
        }
        self.changed.send_replace(());
    }

    /// `Err` naming every step still waited for.
    fn readiness(&self) -> crate::server::Readiness {
        let p = self.pending.lock().map(|p| p.clone()).unwrap_or_default();
        if p.is_empty() {
            Ok(())
        } else {
            Err(p
                .iter()
                .map(|(step, why)| format!("{step}: {why}"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

/// The longest wait between two tries of a start-up step.
const STARTUP_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A refusal that asking again will not change (the API is not served, or RBAC forbids it),
/// unlike a failure of the API server or the network.
fn is_permanent(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<kube::Error>(),
        Some(kube::Error::Api(s)) if matches!(s.code, 401 | 403 | 404 | 405)
    )
}

/// An API error in one line: `500 InternalError: the message`.
fn brief(e: &anyhow::Error) -> String {
    match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) => format!("{} {}: {}", s.code, s.reason, s.message),
        _ => format!("{e:#}"),
    }
}

/// The user names the webhook lets through untouched: graygate's own, as the API server knows
/// it, plus `--trusted-user` and the ServiceAccount the chart names. Asked until the API server
/// answers, however long that takes (1 s, 2 s, 4 s … 30 s apart): a webhook that served without
/// knowing graygate's name would hold graygate's own releases, and the leader's releases reach
/// every replica's webhook. Only a refusal that asking again cannot change (no such API, no
/// right to it) falls back to the configured names, when there are any.
async fn learn_trusted(
    args: &RunArgs,
    client: &kube::Client,
    metrics: &Metrics,
    startup: &Startup,
) -> Vec<String> {
    let mut trusted = trusted_users(args);
    let mut wait = Duration::from_secs(1);
    let me = loop {
        match whoami(client).await {
            Ok(me) => break me,
            Err(e) if is_permanent(&e) && !trusted.is_empty() => {
                tracing::warn!(
                    error = %e,
                    trusted = ?trusted,
                    "graygate cannot learn its own user name (SelfSubjectReview) and will not by asking again; trusting the configured names only (--trusted-user, POD_NAMESPACE/SERVICE_ACCOUNT): if graygate runs as another user, the webhook holds its own writes"
                );
                metrics.identity_known.set(1);
                return trusted;
            }
            Err(e) => {
                metrics.startup_retry("identity");
                let why = format!(
                    "unknown, the SelfSubjectReview failed ({}); the webhook must know graygate's own user name to let its writes through",
                    brief(&e)
                );
                if is_permanent(&e) {
                    tracing::error!(error = %e, retry_in = ?wait, "graygate cannot learn its own user name (SelfSubjectReview) and no --trusted-user is given: not ready, serving no admission and taking no Lease until it can; allow `create` on selfsubjectreviews.authentication.k8s.io or name graygate's user with --trusted-user");
                } else {
                    tracing::warn!(error = %e, retry_in = ?wait, "graygate cannot learn its own user name yet (SelfSubjectReview): not ready, serving no admission and taking no Lease until it knows");
                }
                startup.waiting("identity", why);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(STARTUP_BACKOFF_MAX);
            }
        }
    };
    // graygate's own writes must pass its own webhook: trust the identity the API server knows
    // it by, whatever --trusted-user says (run as a person, that person's edits pass too: say so).
    if !trusted.contains(&me) {
        if me.starts_with("system:serviceaccount:") {
            tracing::info!(user = %me, "the webhook lets graygate's own writes through");
        } else {
            tracing::warn!(
                user = %me,
                "graygate runs as {me}, not as a ServiceAccount: the webhook must let its own writes through, so {me}'s own edits of guarded workloads pass ungated too; run graygate with its own identity (docs/operations.md, Run it outside the cluster)"
            );
        }
        trusted.push(me);
    }
    metrics.identity_known.set(1);
    startup.done("identity");
    trusted
}

/// Start the admission webhook when asked, once graygate knows whom to trust and has a
/// certificate: its certificate keeper, then its TLS server. Every replica serves it, so
/// admission never waits for an election. Until it serves, the replica is not ready, and its
/// port does not listen (a Service sends it nothing).
async fn start_webhook(
    args: &RunArgs,
    client: &kube::Client,
    metrics: &Arc<Metrics>,
    namespace: &str,
    startup: &Startup,
    trusted: Vec<String>,
) -> anyhow::Result<()> {
    let Some(addr) = &args.webhook_listen else {
        return Ok(());
    };
    let store = Arc::new(crate::guard::certs::CertStore::default());
    let source = match &args.webhook_cert_dir {
        Some(dir) => crate::guard::certs::Source::Files(dir.clone()),
        None => {
            if args.webhook_names.is_empty() {
                anyhow::bail!(
                    "--webhook-names is empty: name the host names the API server calls the webhook by"
                );
            }
            crate::guard::certs::Source::Managed {
                namespace: namespace.to_string(),
                secret: args.webhook_secret.clone(),
                webhook: args.webhook_configuration.clone(),
                names: args.webhook_names.clone(),
            }
        }
    };
    let (cert_tx, mut cert_rx) = watch::channel(None::<Result<(), String>>);
    startup.waiting(
        "certificate",
        "the webhook certificate is not made yet".into(),
    );
    {
        let metrics = metrics.clone();
        tokio::spawn(crate::guard::certs::keep_current(
            client.clone(),
            source,
            store.clone(),
            Duration::from_secs(3600),
            move |outcome| {
                if outcome.is_err() {
                    metrics.startup_retry("certificate");
                }
                cert_tx.send_replace(Some(outcome));
            },
        ));
    }
    loop {
        let outcome = cert_rx.borrow_and_update().clone();
        match outcome {
            Some(Ok(())) => break,
            Some(Err(e)) => startup.waiting(
                "certificate",
                format!("the webhook certificate is not ready ({e}); retrying every 2s"),
            ),
            None => {}
        }
        if cert_rx.changed().await.is_err() {
            anyhow::bail!("the webhook certificate keeper stopped");
        }
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--webhook-listen {addr}: {e}"))?;
    tracing::info!(listen = %listener.local_addr()?, "admission webhook serving");
    tokio::spawn(crate::guard::serve(
        listener,
        store,
        trusted,
        metrics.clone(),
    ));
    startup.done("certificate");
    Ok(())
}

fn identity(args: &RunArgs) -> String {
    args.identity
        .clone()
        .or_else(|| std::env::var("POD_NAME").ok())
        .unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Build the analyzer for this process.
pub fn analyzer(args: &RunArgs, client: &kube::Client) -> Arc<dyn Analyzer> {
    Arc::new(PrometheusAnalyzer::new(
        args.prometheus_url.clone(),
        Some(client.clone()),
    ))
}

/// The user agent of every API request the operator makes.
pub const USER_AGENT: &str = concat!("graygate/", env!("CARGO_PKG_VERSION"));

/// Run the operator until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // A bad notification file stops the start, naming the field, before anything is touched.
    let notify_config = match &args.notifications {
        Some(path) => crate::notify::Config::load(path).map_err(|e| anyhow::anyhow!(e))?,
        None => crate::notify::Config::default(),
    };
    let mut cfg = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| anyhow::anyhow!("--kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the cluster (check --kubeconfig, KUBECONFIG or the in-cluster service account): {e}"
            )
        })?,
    };
    if cfg.accept_invalid_certs {
        tracing::warn!(
            "the kubeconfig skips verifying the API server's certificate (insecure-skip-tls-verify): anyone between graygate and the API server can read and change what it sends"
        );
    }
    // Named in the API server's audit log and metrics as what it is.
    cfg.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(USER_AGENT),
    ));
    let client = kube::Client::try_from(cfg.clone())
        .map_err(|e| anyhow::anyhow!("cannot build the API client: {e}"))?;
    // The leader's writes go through a client that asks the fence at every attempt.
    let fence = Arc::new(lease::Fence::new());
    let fenced = crate::fence::fenced_client(cfg, fence.clone())
        .map_err(|e| anyhow::anyhow!("cannot build the API client: {e}"))?;
    if args.lease_namespace.is_none() && std::env::var("POD_NAMESPACE").is_err() {
        tracing::warn!(
            "neither --lease-namespace nor POD_NAMESPACE is set (outside a pod?): the leader-election Lease goes to namespace default"
        );
    }
    let metrics = Arc::new(Metrics::default());
    let me = identity(&args);
    let lease_cfg = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "default".into()),
        identity: me.clone(),
        duration: args.lease_duration.std().max(Duration::from_secs(1)),
    };
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (lease_ok_tx, lease_ok_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);

    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    tracing::info!(listen = %listener.local_addr()?, identity = %me, "graygate starting");
    // The webhook's settings are checked now; it serves once graygate knows whom to trust.
    if let Some(addr) = &args.webhook_listen {
        if args.webhook_cert_dir.is_none() && args.webhook_names.is_empty() {
            anyhow::bail!(
                "--webhook-names is empty: name the host names the API server calls the webhook by"
            );
        }
        drop(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| anyhow::anyhow!("--webhook-listen {addr}: {e}"))?,
        );
    }
    let (startup, startup_rx) = Startup::new();
    if args.webhook_listen.is_some() {
        startup.waiting(
            "identity",
            "asking the API server who graygate is (SelfSubjectReview)".into(),
        );
    }
    let server = {
        let metrics = metrics.clone();
        let mut stop = stop_rx.clone();
        // Ready once every start-up step is done and then: a standby once it can talk to the
        // API server, the leader once its watches synced.
        let (combined_tx, combined_rx) = watch::channel(Err("starting".to_string()));
        let mut lease_ok = lease_ok_rx.clone();
        let mut ready = ready_rx.clone();
        let mut leading = leader_rx.clone();
        let mut started = startup_rx.clone();
        let startup = startup.clone();
        tokio::spawn(async move {
            loop {
                let value = startup.readiness().and_then(|()| {
                    if *leading.borrow() {
                        if *ready.borrow() {
                            Ok(())
                        } else {
                            Err("leading; the watches have not listed yet".to_string())
                        }
                    } else if *lease_ok.borrow() {
                        Ok(())
                    } else {
                        Err(
                            "standing by; the leader Lease could not be read or written yet"
                                .to_string(),
                        )
                    }
                });
                let _ = combined_tx.send(value);
                tokio::select! {
                    r = lease_ok.changed() => if r.is_err() { break },
                    r = ready.changed() => if r.is_err() { break },
                    r = leading.changed() => if r.is_err() { break },
                    r = started.changed() => if r.is_err() { break },
                }
            }
        });
        tokio::spawn(serve_until(listener, metrics, combined_rx, async move {
            let _ = stop.wait_for(|s| *s).await;
        }))
    };
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    // Who graygate is, before it serves admission or takes part in the election.
    if args.webhook_listen.is_some() {
        let trusted = tokio::select! {
            t = learn_trusted(&args, &client, &metrics, &startup) => t,
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                let _ = server.await;
                return Ok(());
            }
        };
        let (args, client, metrics, namespace, startup) = (
            args.clone(),
            client.clone(),
            metrics.clone(),
            lease_cfg.namespace.clone(),
            startup.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) =
                start_webhook(&args, &client, &metrics, &namespace, &startup, trusted).await
            {
                tracing::error!(error = %e, "the admission webhook cannot serve");
                startup.waiting(
                    "webhook",
                    format!("the admission webhook cannot serve: {e}"),
                );
            }
        });
    }
    let lease_task = tokio::spawn(lease::run(
        client.clone(),
        lease_cfg.clone(),
        leader_tx,
        lease_ok_tx,
        fence.clone(),
    ));

    // Wait to lead (or to be told to stop).
    loop {
        if *leader_rx.borrow() {
            break;
        }
        tokio::select! {
            _ = &mut shutdown => {
                let _ = stop_tx.send(true);
                lease_task.abort();
                let _ = server.await;
                return Ok(());
            }
            r = leader_rx.changed() => if r.is_err() { anyhow::bail!("leader election stopped") },
        }
    }
    metrics.leader.set(1);
    let notifier = Arc::new(
        crate::notify::Notifier::start(&notify_config, metrics.clone(), Default::default())
            .map_err(|e| anyhow::anyhow!(e))?,
    );
    let ctx = Arc::new(
        Context::new(
            fenced.clone(),
            metrics.clone(),
            analyzer(&args, &client),
            me,
        )
        .with_fence(fence.clone())
        .with_notifier(notifier)
        .with_cache(Arc::new(crate::cache::Caches::start(
            &fenced,
            &args.namespaces,
        ))),
    );
    let (ctl_stop_tx, ctl_stop_rx) = watch::channel(false);
    let mut ctl_stop = ctl_stop_rx.clone();
    let mut policy_stop = ctl_stop_rx.clone();
    let policies = tokio::spawn(crate::guard::policy::run(
        ctx.clone(),
        args.namespaces.clone(),
        async move {
            let _ = policy_stop.wait_for(|s| *s).await;
        },
    ));
    let mut keeper_stop = ctl_stop_rx.clone();
    let keeper = tokio::spawn(crate::guard::keep::run(
        ctx.clone(),
        args.namespaces.clone(),
        async move {
            let _ = keeper_stop.wait_for(|s| *s).await;
        },
    ));
    let events = ctx.clone();
    let controller = tokio::spawn(run_controller(
        ctx,
        args.namespaces.clone(),
        args.workers,
        ready_tx,
        async move {
            let _ = ctl_stop.wait_for(|s| *s).await;
        },
    ));
    let outcome = tokio::select! {
        _ = &mut shutdown => Ok(()),
        _ = leader_rx.wait_for(|l| !*l) => Err(anyhow::anyhow!("lost leadership; exiting so a fresh process can rejoin the election")),
    };
    if outcome.is_ok() {
        // Graceful: let in-flight reconciles finish, then hand the Lease over.
        let _ = ctl_stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(20), controller)
            .await
            .is_err()
        {
            tracing::warn!("controller did not stop within 20s");
        }
        policies.abort();
        keeper.abort();
        // The Events of the last reconciles, written while the Lease is still ours.
        if !events.flush_events(Duration::from_secs(5)).await {
            tracing::warn!("some Events were still unwritten after 5s");
        }
    } else {
        // Another replica may already be acting: nothing in flight may finish its writes.
        fence.revoke();
        controller.abort();
        policies.abort();
        keeper.abort();
    }
    lease_task.abort();
    metrics.leader.set(0);
    lease::release(&client, &lease_cfg).await;
    let _ = stop_tx.send(true);
    let _ = server.await;
    tracing::info!("graygate stopped");
    outcome
}

async fn serve_until(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: watch::Receiver<crate::server::Readiness>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) {
    if let Err(e) = crate::server::serve(listener, metrics, ready, stop).await {
        tracing::error!(error = %e, "HTTP server failed");
    }
}
