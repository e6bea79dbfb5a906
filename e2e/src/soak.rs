//! The chaos soak: two `graygate run` replicas on the real control plane, a stream of changes
//! (explicit and guarded, good and bad, some behind a manual approval) while the API server fails
//! a share of calls (500, 429 and 503 with Retry-After), answers late and cuts watches, the leader
//! is killed with SIGKILL now and then, and Prometheus is stopped and started. At the end it checks
//! from status, Events, a pod watch and each replica's own requests that nothing was lost:
//!
//! - every good change Succeeded and every bad one RolledBack; none is left unfinished;
//! - no batch was started twice (a `BatchStarted` Event per batch at most, never a repeat) and
//!   none skipped (a Succeeded change has a passed record for each of its batches, in order);
//! - no pod of the old template was created for a target after its change Succeeded, and none of
//!   the new template after a rollback;
//! - no replica wrote anything (other than its Lease, and the webhook certificate every replica
//!   keeps) unless its own last successful Lease write was under one lease duration old.
//!
//! `graygate-soak` runs it for 30 minutes; `tests/soak.rs` for 3.

use crate::control_plane::{Operator, free_port};
use crate::proxy::{ApiProxy, AuditEntry};
use crate::world::{OPERATOR_NAMESPACE, World, WorldOptions};
use anyhow::Context;
use futures::StreamExt;
use graygate::api::{ChangeRequest, Phase, Verdict};
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The namespace the soak's workloads live in.
pub const NS: &str = "soak";
/// Lease duration of the replicas (`World::operator` starts them with 3 s).
const LEASE: Duration = Duration::from_secs(3);

/// How long and how hard.
#[derive(Clone, Debug)]
pub struct Options {
    /// How long changes keep coming.
    pub duration: Duration,
    /// Changes started over `duration`, evenly spaced.
    pub changes: usize,
    /// Kill the leader (SIGKILL) this often.
    pub kill_every: Duration,
    /// Stop Prometheus this often…
    pub prometheus_every: Duration,
    /// …for this long.
    pub prometheus_down: Duration,
    /// Share of API calls failed.
    pub error_rate: f64,
    /// Latency added to every API call.
    pub latency_ms: u64,
    /// Cut every watch after this long.
    pub watch_drop_ms: u64,
    /// After the last change starts, how long the rest may take.
    pub settle: Duration,
    /// Decides which calls the error rate fails and which start-up faults each replica start
    /// meets; printed, so that a failing run can be replayed.
    pub seed: u64,
}

/// A seed for this run: `GRAYGATE_SOAK_SEED` when set (to replay a run), else a new one.
pub fn seed_from_env() -> u64 {
    std::env::var("GRAYGATE_SOAK_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0);
            crate::faults::mix(nanos ^ u64::from(std::process::id())) % 1_000_000_000
        })
}

impl Options {
    /// The 30-minute soak.
    pub fn long() -> Options {
        Options {
            duration: Duration::from_secs(30 * 60),
            changes: 50,
            kill_every: Duration::from_secs(180),
            prometheus_every: Duration::from_secs(420),
            prometheus_down: Duration::from_secs(30),
            error_rate: 0.10,
            latency_ms: 30,
            watch_drop_ms: 20_000,
            settle: Duration::from_secs(600),
            seed: seed_from_env(),
        }
    }

    /// The 3-minute version CI runs.
    pub fn short() -> Options {
        Options {
            duration: Duration::from_secs(180),
            changes: 8,
            kill_every: Duration::from_secs(50),
            prometheus_every: Duration::from_secs(80),
            prometheus_down: Duration::from_secs(15),
            settle: Duration::from_secs(300),
            ..Options::long()
        }
    }
}

/// What the soak found.
pub struct Report {
    /// The report for people (Markdown).
    pub text: String,
    /// Everything that broke a rule; empty when the soak passed.
    pub problems: Vec<String>,
}

/// The reads a replica makes once as it starts (method, path part, lists only).
const START_READS: [(&str, &str, bool); 9] = [
    ("POST", "/selfsubjectreviews", false),
    ("GET", "/leases/graygate-leader", false),
    ("GET", "/secrets/graygate-webhook-tls", false),
    ("GET", "/mutatingwebhookconfigurations/", false),
    ("GET", "/changerequests", true),
    ("GET", "/changepolicies", true),
    ("GET", "/deployments", true),
    ("GET", "/replicasets", true),
    ("GET", "/horizontalpodautoscalers", true),
];

const EXPLICIT: [&str; 4] = ["e0", "e1", "e2", "e3"];
const GUARDED: [&str; 3] = ["g0", "g1", "g2"];
const REPLICAS: i32 = 3;

#[derive(Clone, Debug)]
struct Plan {
    index: usize,
    target: &'static str,
    guarded: bool,
    bad: bool,
    manual: bool,
    image: String,
}

impl Plan {
    fn new(index: usize) -> Plan {
        let targets: Vec<&'static str> = EXPLICIT.iter().chain(GUARDED.iter()).copied().collect();
        let target = targets[index % targets.len()];
        let guarded = target.starts_with('g');
        let bad = index % 4 == 3;
        Plan {
            index,
            target,
            guarded,
            bad,
            manual: !guarded && index % 5 == 1,
            image: format!(
                "shop/web:s{index}-{}",
                if bad { "errors" } else { "healthy" }
            ),
        }
    }
}

#[derive(Clone, Debug)]
struct Outcome {
    plan: Plan,
    /// The ChangeRequest's name (explicit: ours; guarded: the one graygate made).
    name: Option<String>,
    /// Its final status, when it ended.
    status: Option<graygate::api::ChangeRequestStatus>,
    /// When it was asked for (the harness's clock).
    asked: Timestamp,
    paused_for_analysis: bool,
    /// Resumes a person gave it (a pause for want of data, once Prometheus was back).
    resumed: u32,
    problem: Option<String>,
}

fn deployment_yaml(name: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "shop/web:healthy",
                    "env": [{"name": "MODE", "value": "normal"}]}]}
            }
        }
    })
}

const ANALYSIS: &str = "{interval: 3s, warmup: 3s, failureLimit: 2}";

fn policy_yaml() -> String {
    format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangePolicy\nmetadata: {{name: soak, namespace: {NS}}}\nspec:\n  workloads: {{names: [{}]}}\n  change:\n    analysis: {ANALYSIS}\n    batches:\n    - {{replicas: 1, bake: 20s}}\n    - {{percent: 100, bake: 5s}}\n",
        GUARDED.join(", ")
    )
}

fn change_yaml(p: &Plan) -> String {
    let approval = if p.manual { ", approval: manual" } else { "" };
    format!(
        "apiVersion: graygate.io/v1alpha1\nkind: ChangeRequest\nmetadata: {{name: c{}, namespace: {NS}}}\nspec:\n  target: {{kind: Deployment, name: {}}}\n  images: {{app: \"{}\"}}\n  analysis: {ANALYSIS}\n  batches:\n  - {{replicas: 1, bake: 20s}}\n  - {{percent: 100, bake: 5s{approval}}}\n",
        p.index, p.target, p.image
    )
}

/// One replica: its identity, its own proxy (so that its requests can be told apart), the
/// arguments it runs with, and the process.
struct Replica {
    identity: &'static str,
    /// The run's seed mixed with the replica's name: its own fault sequence.
    seed: u64,
    /// How often it was started.
    starts: u32,
    /// One-shot start-up faults armed over all its starts.
    start_faults: usize,
    kubeconfig: std::path::PathBuf,
    args: Vec<String>,
    proxy: ApiProxy,
    process: Option<Operator>,
}

impl Replica {
    fn start(&mut self, w: &World) -> anyhow::Result<()> {
        self.starts += 1;
        self.arm_start_faults();
        self.process = Some(w.operator_via(self.identity, &self.kubeconfig, &self.args)?);
        Ok(())
    }

    /// The start-up reads a replica makes once (its identity, the first Lease read, the first
    /// list of each watch cache, the webhook certificate and configuration): at every start,
    /// each is failed 1–3 times or not at all, as the run's seed and the start's number say.
    fn arm_start_faults(&mut self) {
        let faults = &self.proxy.faults;
        faults.disarm();
        let mut rng = crate::faults::mix(self.seed ^ (u64::from(self.starts) << 32));
        let mut armed = Vec::new();
        for (method, path, listing) in START_READS {
            rng = crate::faults::mix(rng);
            if rng.is_multiple_of(2) {
                continue;
            }
            let times = 1 + (rng >> 8) as u32 % 3;
            let code = [500, 503, 429][((rng >> 16) % 3) as usize];
            let mut m = crate::faults::Matcher::new(method, path);
            if listing {
                m = m.not_watching();
            }
            faults.fail_next(m, times, code);
            armed.push(format!("{method} {path} ×{times} ({code})"));
        }
        tracing::info!(replica = self.identity, start = self.starts, faults = ?armed, "start-up faults armed");
        self.start_faults += armed.len();
    }

    fn running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(|p| p.0.try_wait().ok().flatten().is_none())
    }
}

/// Who holds graygate's leader Lease now.
pub async fn lease_holder(w: &World) -> Option<String> {
    Api::<Lease>::namespaced(w.client.clone(), OPERATOR_NAMESPACE)
        .get_opt("graygate-leader")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

async fn deployment_ready(w: &World, name: &str) -> bool {
    Api::<Deployment>::namespaced(w.client.clone(), NS)
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .is_some_and(|d| {
            let st = d.status.clone().unwrap_or_default();
            // Not `updatedReplicas`: a guarded Deployment whose change was rolled back keeps the
            // refused template in its spec (marked failed) while every pod runs the old one.
            st.available_replicas == Some(REPLICAS)
                && st.replicas == Some(REPLICAS)
                && st.observed_generation >= d.metadata.generation
        })
}

/// A pod of a target's own ReplicaSets (not a canary's), as the pod watch saw it.
#[derive(Clone, Debug)]
struct SeenPod {
    target: String,
    image: String,
    created: Timestamp,
}

fn watch_pods(
    w: &World,
    seen: Arc<Mutex<BTreeMap<String, SeenPod>>>,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(ev) = stream.next().await {
            let objs = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for p in objs {
                let name = p.metadata.name.clone().unwrap_or_default();
                let Some(target) = name
                    .split_once('-')
                    .map(|(t, _)| t.to_string())
                    .filter(|_| !name.contains("-canary-") && !name.contains("-baseline-"))
                else {
                    continue;
                };
                let image = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.first())
                    .and_then(|c| c.image.clone())
                    .unwrap_or_default();
                let Some(created) = p.metadata.creation_timestamp.as_ref().map(|t| t.0) else {
                    continue;
                };
                if let Ok(mut s) = seen.lock() {
                    s.entry(name).or_insert(SeenPod {
                        target,
                        image,
                        created,
                    });
                }
            }
        }
    })
}

/// Ask for one change and follow it to its end. Returns its outcome.
async fn drive(w: Arc<World>, plan: Plan, prom_up: Arc<AtomicBool>, deadline: Instant) -> Outcome {
    let asked = Timestamp::now();
    let started = Instant::now();
    let mut out = Outcome {
        plan: plan.clone(),
        name: None,
        status: None,
        asked,
        paused_for_analysis: false,
        resumed: 0,
        problem: None,
    };
    let crs: Api<ChangeRequest> = Api::namespaced(w.client.clone(), NS);
    if Instant::now() > deadline {
        // Its target was held up by an earlier change until the end: asking now would only
        // leave a change behind that nobody follows.
        out.problem = Some(format!(
            "change {} was never asked for: its target was busy until the end",
            plan.index
        ));
        return out;
    }
    // Ask.
    loop {
        let r = if plan.guarded {
            let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": plan.image}]}}}});
            Api::<Deployment>::namespaced(w.client.clone(), NS)
                .patch(
                    plan.target,
                    &PatchParams::default(),
                    &Patch::Strategic(patch),
                )
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        } else {
            w.apply(&change_yaml(&plan)).await
        };
        match r {
            Ok(()) => break,
            // The webhook is fail-closed: while no replica answers it, a person retries.
            Err(e) if Instant::now() < deadline => {
                tracing::info!(change = plan.index, error = %e, "asking again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                out.problem = Some(format!("change {} could not be asked for: {e}", plan.index));
                return out;
            }
        }
    }
    // Follow.
    let mut approved = false;
    let mut last_resume: Option<Instant> = None;
    loop {
        if Instant::now() > deadline {
            // A guarded change without its ChangeRequest: say what the Deployment looks like.
            let target = if plan.guarded && out.name.is_none() {
                Api::<Deployment>::namespaced(w.client.clone(), NS)
                    .get_opt(plan.target)
                    .await
                    .ok()
                    .flatten()
                    .map(|d| {
                        format!(
                            "; {} has image {:?}, paused {:?}, guarded-by {:?}, annotations {:?}",
                            plan.target,
                            d.spec
                                .as_ref()
                                .and_then(|s| s.template.spec.as_ref())
                                .and_then(|s| s.containers.first())
                                .and_then(|c| c.image.clone()),
                            d.spec.as_ref().and_then(|s| s.paused),
                            d.metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(graygate::api::LABEL_GUARDED_BY)),
                            d.metadata
                                .annotations
                                .as_ref()
                                .map(|a| a.keys().cloned().collect::<Vec<_>>())
                        )
                    })
                    .unwrap_or_default()
            } else {
                String::new()
            };
            out.problem = Some(format!(
                "change {} ({}) did not end in time: {:?}{target}",
                plan.index,
                out.name.as_deref().unwrap_or("no ChangeRequest"),
                out.status.as_ref().map(|s| (s.phase, s.message.clone()))
            ));
            return out;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let cr = if plan.guarded {
            crs.list(&Default::default()).await.ok().and_then(|l| {
                l.items.into_iter().find(|c| {
                    c.spec.target.name == plan.target
                        && serde_json::to_string(&c.spec)
                            .is_ok_and(|s| s.contains(&format!("\"{}\"", plan.image)))
                })
            })
        } else {
            crs.get_opt(&format!("c{}", plan.index))
                .await
                .ok()
                .flatten()
        };
        let Some(cr) = cr else { continue };
        out.name = cr.metadata.name.clone();
        let Some(st) = cr.status.clone() else {
            continue;
        };
        if st.phase == Phase::Paused {
            // Fail-closed while Prometheus is away: "analysis could not run" resumes by itself
            // once it answers again; a batch that ended its bake without enough data waits for a
            // person, who resumes it once Prometheus is back. Any other pause is a finding.
            let msg = st.message.clone().unwrap_or_default();
            let without_data = msg.contains("could not run")
                || msg.contains("cannot run")
                || msg.contains("without enough data");
            if without_data {
                out.paused_for_analysis = true;
            } else if out.problem.is_none() {
                out.problem = Some(format!("change {} paused: {msg}", plan.index));
            }
            let by_itself = msg.contains("could not run") || msg.contains("cannot run");
            if !by_itself
                && prom_up.load(std::sync::atomic::Ordering::SeqCst)
                && last_resume.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(15))
            {
                let token = Timestamp::now().as_second().to_string();
                let r = crs
                    .patch(
                        out.name.as_deref().unwrap_or_default(),
                        &PatchParams::default(),
                        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {graygate::api::ANN_RESUME: token}}})),
                    )
                    .await;
                if r.is_ok() {
                    last_resume = Some(Instant::now());
                    out.resumed += 1;
                }
            }
        }
        if st.phase == Phase::AwaitingApproval
            && !approved
            && started.elapsed() > Duration::from_secs(3)
        {
            let _ = crs
                .patch(
                    out.name.as_deref().unwrap_or_default(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"graygate.io/approve": st.current_batch.to_string()}}})),
                )
                .await
                .map(|_| approved = true);
        }
        let ended = matches!(
            st.phase,
            Phase::Succeeded
                | Phase::RolledBack
                | Phase::Failed
                | Phase::Invalid
                | Phase::Superseded
        );
        out.status = Some(st);
        if ended {
            break;
        }
    }
    // The next change of this target starts from a settled Deployment.
    while Instant::now() < deadline && !deployment_ready(&w, plan.target).await {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    out
}

fn is_exempt_write(e: &AuditEntry) -> bool {
    let p = &e.path;
    p.contains("/leases/")
        || p.ends_with("/leases")
        || p.contains("selfsubjectreviews")
        || p.contains("selfsubjectaccessreviews")
        || p.contains("/secrets")
        || p.contains("mutatingwebhookconfigurations")
}

fn is_write(e: &AuditEntry) -> bool {
    !matches!(e.method.as_str(), "GET" | "HEAD" | "OPTIONS") && (200..300).contains(&e.status)
}

/// Writes a replica made while its own last successful Lease write was over a lease duration old
/// (or before it ever held the Lease).
fn unfenced_writes(identity: &str, audit: &[AuditEntry]) -> Vec<String> {
    let mut last_lease: Option<Instant> = None;
    let mut out = Vec::new();
    let mut entries: Vec<&AuditEntry> = audit.iter().collect();
    entries.sort_by_key(|e| e.arrived);
    for e in entries {
        if !is_write(e) {
            continue;
        }
        if e.path.contains("/leases/graygate-leader")
            || (e.path.ends_with("/leases") && e.body.contains("graygate-leader"))
        {
            if e.body
                .contains(&format!("\"holderIdentity\":\"{identity}\""))
            {
                last_lease = Some(e.arrived);
            }
            continue;
        }
        if is_exempt_write(e) {
            continue;
        }
        let fresh = last_lease.is_some_and(|t| e.forwarded.saturating_duration_since(t) <= LEASE);
        if !fresh {
            out.push(format!(
                "{identity} wrote {} {} {} after its last Lease write",
                e.method,
                e.path,
                last_lease.map_or("(never held)".to_string(), |t| format!(
                    "{:.1} s",
                    e.forwarded.saturating_duration_since(t).as_secs_f64()
                ))
            ));
        }
    }
    out
}

/// Run the soak.
pub async fn run(o: Options) -> anyhow::Result<Report> {
    let began = Instant::now();
    eprintln!(
        "soak seed {} (replay with GRAYGATE_SOAK_SEED={})",
        o.seed, o.seed
    );
    let w = Arc::new(
        World::start(WorldOptions {
            prometheus: true,
            ..Default::default()
        })
        .await?,
    );
    w.create(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
    )
    .await?;
    for t in EXPLICIT.iter().chain(GUARDED.iter()) {
        w.create(deployment_yaml(t)).await?;
    }
    // The webhook: fail-closed, reached through a stand-in Service in front of both replicas.
    let hook = w.install_webhook("Fail").await?;
    let service_port: u16 = hook[0]
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .context("webhook port")?;
    let hook_rest: Vec<String> = hook[1..].to_vec();
    let mut replicas = Vec::new();
    let mut backends = Vec::new();
    for identity in ["a", "b"] {
        let proxy = ApiProxy::start(&w.cp.url).await?;
        let kubeconfig = w.kubeconfig_via(&proxy.url, &format!("kubeconfig-{identity}"))?;
        let port = free_port()?;
        backends.push(port);
        let mut args = vec![format!("--webhook-listen=127.0.0.1:{port}")];
        args.extend(hook_rest.iter().cloned());
        let seed = crate::faults::mix(o.seed ^ u64::from(identity.as_bytes()[0]));
        proxy.faults.set_seed(seed);
        replicas.push(Replica {
            identity,
            seed,
            starts: 0,
            start_faults: 0,
            kubeconfig,
            args,
            proxy,
            process: None,
        });
    }
    let _service = crate::proxy::service(service_port, backends).await?;
    for r in &mut replicas {
        r.start(&w)?;
    }
    // Every target ready and the guarded ones labelled before the chaos starts.
    w.apply(&policy_yaml()).await?;
    let setup_deadline = Instant::now() + Duration::from_secs(180);
    for t in EXPLICIT.iter().chain(GUARDED.iter()) {
        while !deployment_ready(&w, t).await {
            anyhow::ensure!(Instant::now() < setup_deadline, "{t} did not become ready");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    for t in GUARDED {
        loop {
            let guarded = Api::<Deployment>::namespaced(w.client.clone(), NS)
                .get(t)
                .await?
                .metadata
                .labels
                .is_some_and(|l| l.contains_key(graygate::api::LABEL_GUARDED_BY));
            if guarded {
                break;
            }
            anyhow::ensure!(
                Instant::now() < setup_deadline,
                "the policy did not guard {t}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Prometheus has a background for the first changes.
    tokio::time::sleep(Duration::from_secs(20)).await;

    let pods = Arc::new(Mutex::new(BTreeMap::new()));
    let pod_watch = watch_pods(&w, pods.clone());
    for r in &replicas {
        r.proxy.faults.set_error_rate(o.error_rate);
        r.proxy.faults.set_latency_ms(o.latency_ms);
        r.proxy.faults.set_watch_drop_ms(o.watch_drop_ms);
    }
    let chaos_began = Instant::now();
    let deadline = chaos_began + o.duration + o.settle;
    let mut prom_down_secs = 0.0;

    // Changes: evenly spaced; one at a time per target (the next waits for the previous).
    let spacing = o.duration.div_f64(o.changes.max(1) as f64);
    let prom_up = Arc::new(AtomicBool::new(true));
    let driver = {
        let w = w.clone();
        let prom_up = prom_up.clone();
        tokio::spawn(async move {
            let mut per_target: BTreeMap<&'static str, tokio::task::JoinHandle<Vec<Outcome>>> =
                BTreeMap::new();
            let mut queued: BTreeMap<&'static str, Vec<Plan>> = BTreeMap::new();
            for i in 0..o.changes {
                let p = Plan::new(i);
                queued.entry(p.target).or_default().push(p);
            }
            // Each target runs its changes in order, each no earlier than its slot.
            for (target, plans) in queued {
                let w = w.clone();
                let prom_up = prom_up.clone();
                per_target.insert(
                    target,
                    tokio::spawn(async move {
                        let mut outs = Vec::new();
                        for p in plans {
                            let at = chaos_began + spacing.mul_f64(p.index as f64);
                            tokio::time::sleep_until(at.into()).await;
                            outs.push(drive(w.clone(), p, prom_up.clone(), deadline).await);
                        }
                        outs
                    }),
                );
            }
            let mut all = Vec::new();
            for (_, h) in per_target {
                all.extend(h.await.unwrap_or_default());
            }
            all.sort_by_key(|o| o.plan.index);
            all
        })
    };

    // Chaos until the changes are done.
    let mut kills = 0;
    let mut restarts_after_exit = 0;
    let mut prom_stops = 0;
    let mut next_kill = chaos_began + o.kill_every;
    let mut next_prom = chaos_began + o.prometheus_every;
    let mut prom_stopped: Option<Instant> = None;
    while !driver.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Instant::now();
        // A replica that exited (it lost the Lease, as it should) is started again, as its
        // Deployment would.
        for r in &mut replicas {
            if r.process.is_some() && !r.running() {
                r.start(&w)?;
                restarts_after_exit += 1;
            }
        }
        if now >= next_kill && now < chaos_began + o.duration {
            next_kill = now + o.kill_every;
            if let Some(holder) = lease_holder(&w).await
                && let Some(r) = replicas.iter_mut().find(|r| r.identity == holder)
            {
                r.process = None; // SIGKILL
                kills += 1;
                tracing::info!(replica = r.identity, "killed the leader");
                tokio::time::sleep(Duration::from_secs(2)).await;
                r.start(&w)?;
            }
        }
        if now >= next_prom && prom_stopped.is_none() && now < chaos_began + o.duration {
            next_prom = now + o.prometheus_every;
            if let Ok(mut p) = w.prometheus.lock()
                && let Some(p) = p.as_mut()
            {
                p.stop();
            }
            prom_up.store(false, std::sync::atomic::Ordering::SeqCst);
            prom_stops += 1;
            prom_stopped = Some(now);
            tracing::info!("stopped Prometheus");
        }
        if let Some(stopped) = prom_stopped
            && now >= stopped + o.prometheus_down
        {
            let w2 = w.clone();
            tokio::task::spawn_blocking(move || {
                if let Ok(mut p) = w2.prometheus.lock()
                    && let Some(p) = p.as_mut()
                {
                    let _ = p.restart();
                }
            })
            .await?;
            prom_down_secs += stopped.elapsed().as_secs_f64();
            prom_stopped = None;
            prom_up.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("started Prometheus again");
        }
    }
    let outcomes = driver.await?;
    for r in &replicas {
        r.proxy.faults.set_error_rate(0.0);
        r.proxy.faults.set_latency_ms(0);
        r.proxy.faults.set_watch_drop_ms(0);
    }
    // Let the pod watch catch up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    pod_watch.abort();

    let mut problems: Vec<String> = Vec::new();
    // 1. Outcomes.
    for o in &outcomes {
        if let Some(p) = &o.problem {
            problems.push(p.clone());
            continue;
        }
        let phase = o.status.as_ref().map(|s| s.phase);
        let want = if o.plan.bad {
            Phase::RolledBack
        } else {
            Phase::Succeeded
        };
        if phase != Some(want) {
            problems.push(format!(
                "change {} ({} {}, {}) ended {:?}, not {}: {:?}",
                o.plan.index,
                if o.plan.guarded {
                    "guarded"
                } else {
                    "explicit"
                },
                o.plan.target,
                if o.plan.bad { "bad" } else { "good" },
                phase,
                want.as_str(),
                o.status.as_ref().and_then(|s| s.message.clone())
            ));
        }
    }
    // 2. Batches: none skipped (status) and none started twice (Events).
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(w.client.clone(), NS)
        .list(&Default::default())
        .await?
        .items;
    let mut batch_events = 0;
    for o in &outcomes {
        let (Some(name), Some(st)) = (&o.name, &o.status) else {
            continue;
        };
        if st.phase == Phase::Succeeded {
            let indexes: Vec<u32> = st.batches.iter().map(|b| b.index).collect();
            let passed = st.batches.iter().all(|b| b.verdict == Some(Verdict::Pass));
            if indexes != [1, 2] || !passed {
                problems.push(format!(
                    "{name} Succeeded with batches {indexes:?} (verdicts {:?})",
                    st.batches.iter().map(|b| b.verdict).collect::<Vec<_>>()
                ));
            }
        }
        let mut started: BTreeMap<String, i32> = BTreeMap::new();
        for e in events.iter().filter(|e| {
            e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str())
                && e.reason.as_deref() == Some("BatchStarted")
        }) {
            let n = e.series.as_ref().map_or(1, |s| s.count);
            *started
                .entry(e.action.clone().unwrap_or_default())
                .or_default() += n;
            batch_events += 1;
        }
        for (action, n) in started {
            if n > 1 {
                problems.push(format!("{name}: {action} recorded {n} times"));
            }
        }
    }
    // 3. Pods: after a change ended, only the template it left is created for its target.
    let seen: Vec<SeenPod> = pods
        .lock()
        .map(|p| p.values().cloned().collect())
        .unwrap_or_default();
    let mut by_target: BTreeMap<&str, Vec<&Outcome>> = BTreeMap::new();
    for o in &outcomes {
        by_target.entry(o.plan.target).or_default().push(o);
    }
    let mut pods_checked = 0;
    for (target, outs) in &by_target {
        let mut current = "shop/web:healthy".to_string();
        for (k, o) in outs.iter().enumerate() {
            let Some(st) = &o.status else { continue };
            let Some(ended) = st.phase_since.as_ref().map(|t| t.0) else {
                continue;
            };
            if st.phase == Phase::Succeeded {
                current = o.plan.image.clone();
            }
            let until = outs.get(k + 1).map(|n| n.asked);
            for p in seen.iter().filter(|p| {
                p.target == *target
                    && p.created > ended + jiff::SignedDuration::from_secs(1)
                    && until.is_none_or(|u| p.created < u)
            }) {
                pods_checked += 1;
                if p.image != current {
                    problems.push(format!(
                        "a {target} pod of {} was created at {} after {} ended {} at {ended} (the target's template is {current})",
                        p.image,
                        p.created,
                        o.name.as_deref().unwrap_or("?"),
                        st.phase.as_str()
                    ));
                }
            }
        }
    }
    // 4. Writes only under a fresh Lease.
    let mut writes = 0;
    let mut injected = 0;
    let mut requests = 0;
    for r in &replicas {
        let audit = r.proxy.audit.lock().map(|a| a.clone()).unwrap_or_default();
        requests += audit.len();
        injected += audit
            .iter()
            .filter(|e| matches!(e.status, 429 | 500 | 503))
            .count();
        writes += audit
            .iter()
            .filter(|e| is_write(e) && !is_exempt_write(e))
            .count();
        problems.extend(unfenced_writes(r.identity, &audit));
    }

    let count = |f: &dyn Fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    let mut text = String::new();
    text.push_str(&format!(
        "| | |\n| --- | --- |\n| changes | {} ({} explicit, {} guarded; {} bad; {} behind a manual approval) over {} min |\n",
        outcomes.len(),
        count(&|o| !o.plan.guarded),
        count(&|o| o.plan.guarded),
        count(&|o| o.plan.bad),
        count(&|o| o.plan.manual),
        o.duration.as_secs() / 60
    ));
    text.push_str(&format!(
        "| outcomes | {} Succeeded, {} RolledBack, {} other; {} paused for want of data while Prometheus was down ({} resumed by a person) |\n",
        count(&|o| o.status.as_ref().is_some_and(|s| s.phase == Phase::Succeeded)),
        count(&|o| o.status.as_ref().is_some_and(|s| s.phase == Phase::RolledBack)),
        count(&|o| o.status.as_ref().is_none_or(|s| !matches!(s.phase, Phase::Succeeded | Phase::RolledBack))),
        count(&|o| o.paused_for_analysis),
        count(&|o| o.resumed > 0),
    ));
    text.push_str(&format!(
        "| faults | {:.0}% of API calls failed (500/429/503), +{} ms each, watches cut every {} s; {injected} calls failed of {requests} |\n",
        o.error_rate * 100.0,
        o.latency_ms,
        o.watch_drop_ms / 1000
    ));
    let starts: u32 = replicas.iter().map(|r| r.starts).sum();
    let start_faults: usize = replicas.iter().map(|r| r.start_faults).sum();
    text.push_str(&format!(
        "| seed | {} (`GRAYGATE_SOAK_SEED={}` replays the faults); {starts} replica starts met {start_faults} one-shot start-up faults (identity, first Lease read, first cache lists, webhook certificate) |\n",
        o.seed, o.seed
    ));
    text.push_str(&format!(
        "| leader kills (SIGKILL) | {kills}; replicas restarted after exiting on a lost Lease: {restarts_after_exit} |\n| Prometheus stopped | {prom_stops} times, {prom_down_secs:.0} s in all (until ready again) |\n"
    ));
    text.push_str(&format!(
        "| checked | {batch_events} BatchStarted Events, {pods_checked} pods created after a change ended, {writes} writes against the Lease |\n| took | {:.1} min in all |\n| problems | {} |\n",
        began.elapsed().as_secs_f64() / 60.0,
        problems.len()
    ));
    text.push_str("\n| change | kind | target | expected | ended | resumed | batches (verdict, judgements, reason) |\n| --- | --- | --- | --- | --- | ---: | --- |\n");
    for o in &outcomes {
        let batches = o.status.as_ref().map_or(String::new(), |s| {
            s.batches
                .iter()
                .map(|b| {
                    format!(
                        "{}: {} ×{} {}",
                        b.index,
                        b.verdict.map_or("-", |v| v.as_str()),
                        b.judgements,
                        b.reason.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        text.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            o.name.as_deref().unwrap_or("?"),
            if o.plan.guarded {
                "guarded"
            } else if o.plan.manual {
                "explicit, manual"
            } else {
                "explicit"
            },
            o.plan.target,
            if o.plan.bad {
                "RolledBack"
            } else {
                "Succeeded"
            },
            o.status.as_ref().map_or("-", |s| s.phase.as_str()),
            o.resumed,
            batches.replace('|', "/")
        ));
    }
    if !problems.is_empty() {
        // Keep the replicas' logs: the world's folder goes with it.
        let keep = std::env::temp_dir().join(format!("graygate-soak-{}", std::process::id()));
        if std::fs::create_dir_all(&keep).is_ok() {
            for r in &replicas {
                let name = format!("graygate-{}.log", r.identity);
                let _ = std::fs::copy(w.dir.path().join(&name), keep.join(&name));
            }
            text.push_str(&format!(
                "\nThe replicas' logs are kept in {}.\n",
                keep.display()
            ));
        }
    }
    Ok(Report { text, problems })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(method: &str, path: &str, body: &str, at: Instant) -> AuditEntry {
        AuditEntry {
            method: method.into(),
            path: path.into(),
            query: String::new(),
            content_type: String::new(),
            user_agent: String::new(),
            status: 200,
            body: body.into(),
            arrived: at,
            forwarded: at,
            answered: at,
        }
    }

    #[test]
    fn a_write_counts_as_fenced_only_within_a_lease_duration_of_the_replicas_own_renewal() {
        let t0 = Instant::now();
        let lease =
            "/apis/coordination.k8s.io/v1/namespaces/graygate-system/leases/graygate-leader";
        let status = "/apis/graygate.io/v1alpha1/namespaces/soak/changerequests/c1/status";
        let audit = vec![
            // Before it ever held the Lease.
            entry("PATCH", status, "{}", t0),
            entry(
                "PUT",
                lease,
                r#"{"spec":{"holderIdentity":"a"}}"#,
                t0 + Duration::from_secs(1),
            ),
            entry("PATCH", status, "{}", t0 + Duration::from_secs(2)),
            // A read, a failed write and the webhook certificate are not judged.
            entry("GET", status, "", t0 + Duration::from_secs(9)),
            AuditEntry {
                status: 409,
                ..entry("PATCH", status, "{}", t0 + Duration::from_secs(9))
            },
            entry(
                "PUT",
                "/api/v1/namespaces/graygate-system/secrets/graygate-webhook-tls",
                "{}",
                t0 + Duration::from_secs(9),
            ),
            // Four seconds after its last renewal: another replica may hold it by now.
            entry("PATCH", status, "{}", t0 + Duration::from_secs(5)),
            // Someone else's renewal does not count for this replica.
            entry(
                "PUT",
                lease,
                r#"{"spec":{"holderIdentity":"b"}}"#,
                t0 + Duration::from_secs(6),
            ),
            entry(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/soak/events",
                "{}",
                t0 + Duration::from_secs(7),
            ),
        ];
        let found = unfenced_writes("a", &audit);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].contains("(never held)"), "{}", found[0]);
        assert!(found[1].contains("4.0 s"), "{}", found[1]);
        assert!(found[2].contains("events"), "{}", found[2]);
        assert!(unfenced_writes("b", &audit[7..]).is_empty());
    }
}
