//! `kubectl graygate`: list, inspect and steer ChangeRequests.
//!
//! Every verb that steers a change writes one of the annotations the controller reads
//! (`graygate.io/approve`, `pause`, `resume`, `abort`, `retry`), so what the plugin does is what a
//! person could write into Git, and the API server's audit log records who did it.

use crate::api::{
    ANN_ABORT, ANN_APPROVE, ANN_FEEDBACK, ANN_PAUSE, ANN_RESUME, ANN_RETRY, BatchStatus,
    ChangeRequest, ChangeRequestStatus, FeedbackVerdict, Phase,
};
use crate::util::age;
use futures::TryStreamExt;
use kube::api::{ListParams, Patch};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::json;
use std::fmt::Write as _;
use std::path::PathBuf;

/// The plugin's command line, as `kubectl graygate …` shows it.
#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl graygate",
    version = crate::VERSION,
    about = "List, inspect and steer graygate ChangeRequests"
)]
pub struct PluginCli {
    /// The plugin's arguments.
    #[command(flatten)]
    pub args: PluginArgs,
}

/// Options shared by every verb, and the verb.
#[derive(clap::Args, Debug)]
pub struct PluginArgs {
    /// Namespace (default: the current context's namespace).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context (default: the current context).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub verb: Verb,
}

/// The plugin's verbs.
#[derive(clap::Subcommand, Debug)]
pub enum Verb {
    /// List ChangeRequests with their target, phase, batch and last verdict.
    List {
        /// List across all namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one change: its batches, their verdicts and the evidence behind them.
    Status {
        /// The ChangeRequest.
        name: String,
        /// Keep printing the status each time it changes, until the change ends.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Approve manual batches up to and including a batch (default: the batch waiting now).
    Approve {
        /// The ChangeRequest.
        name: String,
        /// 1-based batch number to approve up to.
        #[arg(long)]
        batch: Option<u32>,
    },
    /// Hold the change where it is (sets graygate.io/pause).
    Pause {
        /// The ChangeRequest.
        name: String,
    },
    /// Continue a paused change (removes graygate.io/pause and sets a new graygate.io/resume).
    Resume {
        /// The ChangeRequest.
        name: String,
    },
    /// Roll the change back now (sets a new graygate.io/abort).
    Abort {
        /// The ChangeRequest.
        name: String,
    },
    /// Start a failed or rolled-back change again from the first batch (sets a new graygate.io/retry).
    Retry {
        /// The ChangeRequest.
        name: String,
    },
    /// Serve a web view of the namespace's changes and the evidence behind their verdicts on
    /// 127.0.0.1, read with this kubeconfig (and so its RBAC).
    Dashboard {
        /// Port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 3100)]
        port: u16,
        /// Prometheus for changes whose analysis names none (as the operator's --prometheus-url).
        #[arg(long, env = "GRAYGATE_PROMETHEUS_URL")]
        prometheus_url: Option<String>,
    },
    /// Record what the change really was (sets graygate.io/feedback): a stopped change that was
    /// fine is a false-alarm; a real-fault or drill never teaches the workload's history.
    Feedback {
        /// The ChangeRequest.
        name: String,
        /// false-alarm, real-fault or drill.
        verdict: FeedbackArg,
    },
}

/// The verdicts `feedback` takes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedbackArg {
    /// The change was fine.
    FalseAlarm,
    /// The change was broken.
    RealFault,
    /// A deliberate exercise.
    Drill,
}

impl FeedbackArg {
    fn verdict(self) -> FeedbackVerdict {
        match self {
            FeedbackArg::FalseAlarm => FeedbackVerdict::FalseAlarm,
            FeedbackArg::RealFault => FeedbackVerdict::RealFault,
            FeedbackArg::Drill => FeedbackVerdict::Drill,
        }
    }
}

/// A user-facing failure: printed as `error: …`, exit code 1.
#[derive(Debug)]
pub struct PluginError(pub String);

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, PluginError>;

/// Run a verb; returns the process exit code.
pub async fn run(args: PluginArgs) -> u8 {
    match run_inner(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn connect(args: &PluginArgs) -> Result<(Client, String, String)> {
    let options = KubeConfigOptions {
        context: args.context.clone(),
        ..Default::default()
    };
    let loaded =
        |e: kube::config::KubeconfigError| PluginError(format!("cannot load the kubeconfig: {e}"));
    let mut config = match &args.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path)
                .map_err(|e| PluginError(format!("--kubeconfig {}: {e}", path.display())))?;
            Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(loaded)?
        }
        None if args.context.is_some() => {
            Config::from_kubeconfig(&options).await.map_err(loaded)?
        }
        None => Config::infer().await.map_err(|e| {
            PluginError(format!(
                "no cluster configured (set KUBECONFIG or use --kubeconfig): {e}"
            ))
        })?,
    };
    config.headers.push((
        axum::http::header::USER_AGENT,
        axum::http::HeaderValue::from_static(concat!(
            "kubectl-graygate/",
            env!("CARGO_PKG_VERSION")
        )),
    ));
    let server = config.cluster_url.to_string();
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config)
        .map_err(|e| PluginError(format!("cannot build a client for {server}: {e}")))?;
    Ok((client, namespace, server))
}

fn api_error(e: kube::Error, server: &str, what: &str, ns: &str) -> PluginError {
    match e {
        kube::Error::Api(s) if s.code == 404 => {
            PluginError(format!("{what} not found in namespace {ns:?}"))
        }
        kube::Error::Api(s) if s.code == 403 => PluginError(format!(
            "forbidden: {} (the graygate chart's -view and -edit ClusterRoles, aggregated into the view and edit roles, grant access to ChangeRequests)",
            s.message
        )),
        kube::Error::Api(s) => PluginError(format!("{what}: {} ({})", s.message, s.code)),
        e @ (kube::Error::HyperError(_) | kube::Error::Service(_)) => {
            PluginError(format!("cannot reach the cluster at {server}: {e}"))
        }
        e => PluginError(format!("{what}: {e}")),
    }
}

/// Where the verbs act: the namespace's ChangeRequests, and how to name failures.
struct Scope {
    api: Api<ChangeRequest>,
    server: String,
    ns: String,
}

impl Scope {
    fn error(&self, e: kube::Error, what: &str) -> PluginError {
        api_error(e, &self.server, what, &self.ns)
    }

    async fn get(&self, name: &str) -> Result<ChangeRequest> {
        self.api
            .get(name)
            .await
            .map_err(|e| self.error(e, &format!("changerequest {name:?}")))
    }

    async fn annotate(&self, name: &str, annotations: serde_json::Value) -> Result<()> {
        self.api
            .patch(
                name,
                &crate::api::patch_params(crate::api::MANAGER_PLUGIN),
                &Patch::Merge(json!({ "metadata": { "annotations": annotations } })),
            )
            .await
            .map(|_| ())
            .map_err(|e| self.error(e, &format!("changerequest {name:?}")))
    }

    /// Read the change, refuse when `allowed` says the verb does not apply, else write the annotations.
    async fn steer(
        &self,
        name: &str,
        allowed: impl Fn(Phase) -> Result<()>,
        annotations: serde_json::Value,
        done: &str,
    ) -> Result<()> {
        allowed(phase(&self.get(name).await?))?;
        self.annotate(name, annotations).await?;
        println!("changerequest.graygate.io/{name} {done}");
        Ok(())
    }
}

async fn run_inner(args: PluginArgs) -> Result<()> {
    let (client, ns, server) = connect(&args).await?;
    let scope = Scope {
        api: Api::namespaced(client.clone(), &ns),
        server,
        ns,
    };
    let now = jiff::Timestamp::now();
    match args.verb {
        Verb::Dashboard {
            port,
            prometheus_url,
        } => {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
                .await
                .map_err(|e| {
                    PluginError(format!("--port {port}: cannot listen on 127.0.0.1: {e}"))
                })?;
            let addr = listener
                .local_addr()
                .map_err(|e| PluginError(format!("--port {port}: {e}")))?;
            println!(
                "graygate dashboard: http://{addr}/ (namespace {}); Ctrl-C stops it",
                scope.ns
            );
            crate::dashboard::serve(
                listener,
                crate::dashboard::Options {
                    client,
                    namespace: scope.ns.clone(),
                    prometheus_url,
                },
            )
            .await
            .map_err(|e| PluginError(format!("dashboard: {e}")))
        }
        Verb::List { all_namespaces } => {
            let list_api: Api<ChangeRequest> = if all_namespaces {
                Api::all(client)
            } else {
                scope.api.clone()
            };
            let items = list_api
                .list(&ListParams::default())
                .await
                .map_err(|e| scope.error(e, "listing changerequests"))?
                .items;
            if items.is_empty() {
                if all_namespaces {
                    eprintln!("No ChangeRequests found.");
                } else {
                    eprintln!("No ChangeRequests found in namespace {:?}.", scope.ns);
                }
                return Ok(());
            }
            print!("{}", list(&items, all_namespaces, now));
            Ok(())
        }
        Verb::Status { name, watch } => {
            let cr = scope.get(&name).await?;
            print!("{}", status(&cr, now));
            if watch && !phase(&cr).is_terminal() {
                watch_status(&scope.api, &name, cr, &scope.server).await?;
            }
            Ok(())
        }
        Verb::Approve { name, batch } => {
            let cr = scope.get(&name).await?;
            let st = cr.status.clone().unwrap_or_default();
            let n = match batch {
                Some(0) => return Err(PluginError("--batch: batches are numbered from 1".into())),
                Some(n) => n,
                None if st.phase == Phase::AwaitingApproval => st.current_batch.max(1),
                None => {
                    return Err(PluginError(format!(
                        "changerequest {name:?} is {} and waits for no approval; pass --batch N to approve batches ahead",
                        st.phase.as_str()
                    )));
                }
            };
            let total = cr.spec.batches.len() as u32;
            if total > 0 && n > total {
                return Err(PluginError(format!(
                    "--batch {n}: changerequest {name:?} has {total} batches"
                )));
            }
            scope
                .annotate(&name, json!({ ANN_APPROVE: n.to_string() }))
                .await?;
            println!("changerequest.graygate.io/{name} approved up to batch {n}");
            Ok(())
        }
        Verb::Pause { name } => {
            let allowed = |p: Phase| not_finished(&name, p, "pause", p.is_terminal());
            scope
                .steer(&name, allowed, json!({ ANN_PAUSE: "true" }), "paused")
                .await
        }
        Verb::Resume { name } => {
            let allowed = |p: Phase| not_finished(&name, p, "resume", p.is_terminal());
            let annotations = json!({ ANN_PAUSE: null, ANN_RESUME: token(now) });
            scope.steer(&name, allowed, annotations, "resumed").await
        }
        Verb::Abort { name } => {
            let allowed =
                |p: Phase| not_finished(&name, p, "abort", p.is_terminal() || p.is_undoing());
            let annotations = json!({ ANN_ABORT: token(now) });
            scope
                .steer(&name, allowed, annotations, "aborted; rolling back")
                .await
        }
        Verb::Retry { name } => {
            let allowed = |p: Phase| {
                if matches!(p, Phase::Failed | Phase::RolledBack | Phase::Superseded) {
                    Ok(())
                } else {
                    Err(PluginError(format!(
                        "changerequest {name:?} is {}; only a Failed, RolledBack or Superseded change can be retried",
                        p.as_str()
                    )))
                }
            };
            let annotations = json!({ ANN_RETRY: token(now) });
            scope
                .steer(&name, allowed, annotations, "will start again from batch 1")
                .await
        }
        Verb::Feedback { name, verdict } => {
            let v = verdict.verdict().as_str();
            // Any phase: a person may judge a running change, or one that ended long ago.
            scope
                .steer(
                    &name,
                    |_| Ok(()),
                    json!({ ANN_FEEDBACK: v }),
                    &format!("marked {v}"),
                )
                .await
        }
    }
}

fn phase(cr: &ChangeRequest) -> Phase {
    cr.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

/// Refuse `verb` when `done` (the change is past the point where it applies).
fn not_finished(name: &str, phase: Phase, verb: &str, done: bool) -> Result<()> {
    if done {
        return Err(PluginError(format!(
            "changerequest {name:?} is {}; there is nothing to {verb}",
            phase.as_str()
        )));
    }
    Ok(())
}

/// A fresh signal value: unique per use, and readable in the audit trail.
fn token(now: jiff::Timestamp) -> String {
    format!("kubectl-{}", now.strftime("%Y%m%dT%H%M%S%.3fZ"))
}

async fn watch_status(
    api: &Api<ChangeRequest>,
    name: &str,
    mut last: ChangeRequest,
    server: &str,
) -> Result<()> {
    let cfg = kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}"));
    let stream = kube::runtime::watcher(api.clone(), cfg);
    let mut objects = std::pin::pin!(kube::runtime::WatchStreamExt::applied_objects(stream));
    loop {
        let next = objects
            .try_next()
            .await
            .map_err(|e| PluginError(format!("watching {name:?} via {server}: {e}")))?;
        let Some(cr) = next else {
            return Ok(());
        };
        if cr.status == last.status {
            continue;
        }
        let now = jiff::Timestamp::now();
        println!("\n--- {}", now.strftime("%H:%M:%S"));
        print!("{}", status(&cr, now));
        if phase(&cr).is_terminal() {
            return Ok(());
        }
        last = cr;
    }
}

fn target(cr: &ChangeRequest) -> String {
    format!("{:?}/{}", cr.spec.target.kind, cr.spec.target.name)
}

/// The `list` table.
pub fn list(items: &[ChangeRequest], with_namespace: bool, now: jiff::Timestamp) -> String {
    let mut headers = vec!["NAME", "TARGET", "PHASE", "BATCH", "VERDICT", "AGE"];
    if with_namespace {
        headers.insert(0, "NAMESPACE");
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|cr| {
            let st = cr.status.clone().unwrap_or_default();
            let mut row = vec![
                cr.name_any(),
                target(cr),
                st.phase.as_str().to_string(),
                st.batch.clone().unwrap_or_else(|| "-".into()),
                st.verdict.map_or("-", |v| v.as_str()).to_string(),
                age(cr.metadata.creation_timestamp.as_ref(), now),
            ];
            if with_namespace {
                row.insert(0, cr.namespace().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut out = super::table::lines(&headers, &rows).join("\n");
    out.push('\n');
    out
}

/// One batch's row; `stopped` when the change no longer runs (rolled back, superseded, failed,
/// ended), so a batch it left without a verdict does not look as if it were still baking.
fn batch_row(b: &BatchStatus, now: jiff::Timestamp, stopped: bool, weighted: bool) -> Vec<String> {
    let verdict = match (b.verdict, b.last_judgement) {
        (Some(v), _) => v.as_str().to_string(),
        (None, Some(v)) if stopped && b.started_at.is_some() => {
            format!("stopped ({} so far)", v.as_str())
        }
        (None, None) if stopped && b.started_at.is_some() => "stopped".into(),
        (None, Some(v)) => format!("({} so far)", v.as_str()),
        (None, None) if b.ready_at.is_some() => "baking".into(),
        (None, None) if b.started_at.is_some() => "rolling out".into(),
        (None, None) => "-".into(),
    };
    let mut row = vec![
        b.index.to_string(),
        b.replicas.to_string(),
        if b.started_at.is_some() {
            b.pods_ready.to_string()
        } else {
            "-".into()
        },
        age(b.started_at.as_ref(), now),
        verdict,
        b.judgements.to_string(),
        b.reason.clone().unwrap_or_default(),
    ];
    // A traffic-weighted change: the canary's share of the requests, after its pods.
    if weighted {
        row.insert(2, b.traffic.map_or("-".into(), |t| format!("{t}%")));
    }
    row
}

/// What a person can do next, given the phase.
fn next_step(cr: &ChangeRequest, st: &ChangeRequestStatus) -> Option<String> {
    let name = cr.name_any();
    let workload = &cr.spec.target;
    match st.phase {
        // A guarded workload's change carries the template that failed: the way on is a new one.
        Phase::Failed | Phase::RolledBack if cr.spec.policy.is_some() => Some(format!(
            "apply a fixed pod template to {workload} (it becomes a new change); the old pods keep serving meanwhile"
        )),
        Phase::AwaitingApproval => Some(format!(
            "kubectl graygate approve {name}   (or: abort {name})"
        )),
        Phase::Paused => Some(format!(
            "kubectl graygate resume {name}   (or: abort {name})"
        )),
        Phase::Failed | Phase::RolledBack => Some(format!(
            "fix the change, then: kubectl graygate retry {name}"
        )),
        Phase::Invalid => Some("fix the spec field named above and apply it again".into()),
        Phase::Superseded => Some(
            "nothing: a newer template replaced this change (apply this one again to roll it out)"
                .into(),
        ),
        _ => None,
    }
}

/// The `status` report: summary, batches, evidence of the latest judged batch, conditions.
pub fn status(cr: &ChangeRequest, now: jiff::Timestamp) -> String {
    let st = cr.status.clone().unwrap_or_default();
    let name = cr.name_any();
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| {
        let _ = writeln!(out, "{:<10} {v}", format!("{k}:"));
    };
    field(&mut out, "Name", &name);
    field(&mut out, "Namespace", &cr.namespace().unwrap_or_default());
    field(&mut out, "Target", &target(cr));
    let phase = match &st.reason {
        Some(r) if r != st.phase.as_str() => format!("{} ({r})", st.phase.as_str()),
        _ => st.phase.as_str().to_string(),
    };
    field(&mut out, "Phase", &phase);
    if let Some(b) = &st.batch {
        field(&mut out, "Batch", b);
    }
    if let Some(m) = &st.message {
        field(&mut out, "Message", m);
    }
    if st.started_at.is_some() {
        field(
            &mut out,
            "Started",
            &format!("{} ago", age(st.started_at.as_ref(), now)),
        );
    }
    if let Some(step) = next_step(cr, &st) {
        field(&mut out, "Next", &step);
    }
    if !st.batches.is_empty() {
        out.push_str("\nBatches:\n");
        let stopped = st.phase.is_terminal() || st.phase.is_undoing();
        let weighted = cr.spec.traffic.is_some();
        let rows: Vec<Vec<String>> = st
            .batches
            .iter()
            .map(|b| batch_row(b, now, stopped, weighted))
            .collect();
        let mut header = vec![
            "BATCH",
            "PODS",
            "READY",
            "STARTED",
            "VERDICT",
            "JUDGEMENTS",
            "REASON",
        ];
        if weighted {
            header.insert(2, "REQUESTS");
        }
        for l in super::table::lines(&header, &rows) {
            let _ = writeln!(out, "  {l}");
        }
    }
    if let Some(b) = st.batches.iter().rev().find(|b| !b.findings.is_empty()) {
        let _ = writeln!(
            out,
            "\nEvidence (batch {}, last judgement {}):",
            b.index,
            b.last_judgement.map_or("-", |v| v.as_str())
        );
        for l in super::table::findings(&b.findings).lines() {
            let _ = writeln!(out, "  {l}");
        }
    }
    if !st.conditions.is_empty() {
        out.push_str("\nConditions:\n");
        let rows: Vec<Vec<String>> = st
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        for l in super::table::lines(&["TYPE", "STATUS", "REASON", "MESSAGE"], &rows) {
            let _ = writeln!(out, "  {l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cr(status: &str) -> ChangeRequest {
        serde_yaml::from_str(&format!(
            r#"
apiVersion: graygate.io/v1alpha1
kind: ChangeRequest
metadata: {{name: v2, namespace: shop, creationTimestamp: "2026-11-21T10:00:00Z"}}
spec:
  target: {{kind: Deployment, name: web}}
  images: {{app: shop/web:v2}}
  batches: [{{replicas: 1}}, {{percent: 50, approval: manual}}, {{percent: 100}}]
status: {status}
"#
        ))
        .unwrap()
    }

    fn now() -> jiff::Timestamp {
        "2026-11-21T10:05:00Z".parse().unwrap()
    }

    #[test]
    fn list_shows_phase_batch_and_verdict() {
        let c = cr("{phase: AwaitingApproval, batch: 2/3, verdict: Pass}");
        let text = list(&[c], true, now());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "shop",
                "v2",
                "Deployment/web",
                "AwaitingApproval",
                "2/3",
                "Pass",
                "5m"
            ]
        );
    }

    #[test]
    fn a_batch_an_ended_change_left_without_a_verdict_shows_stopped_not_baking() {
        let c = cr(r#"
  phase: RolledBack
  reason: Aborted
  batch: 1/3
  currentBatch: 1
  startedAt: "2026-11-21T10:01:00Z"
  batches:
  - {index: 1, replicas: 1, podsReady: 1, startedAt: "2026-11-21T10:01:00Z", readyAt: "2026-11-21T10:01:10Z", judgements: 2, lastJudgement: Pass}
"#);
        let text = status(&c, now());
        let batch1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap();
        assert!(batch1.contains("stopped (Pass so far)"), "{text}");
        assert!(!text.contains("baking"), "{text}");
    }

    #[test]
    fn the_next_step_of_a_failed_change_depends_on_who_made_it() {
        let failed = "\n  phase: RolledBack\n  reason: AnalysisFailed\n  currentBatch: 1";
        let explicit = status(&cr(failed), now());
        assert!(
            explicit.contains("Next:      fix the change, then: kubectl graygate retry v2"),
            "{explicit}"
        );
        let mut guarded = cr(failed);
        guarded.spec.policy = Some("web-policy".into());
        let text = status(&guarded, now());
        assert!(
            text.contains("Next:      apply a fixed pod template to Deployment/web")
                && !text.contains("retry"),
            "{text}"
        );
        let superseded = status(&cr("\n  phase: Superseded\n  reason: Superseded"), now());
        assert!(
            superseded.contains("Next:      nothing: a newer template replaced this change"),
            "{superseded}"
        );
    }

    #[test]
    fn status_shows_batches_evidence_and_the_next_step() {
        let c = cr(r#"
  phase: AwaitingApproval
  reason: AwaitingApproval
  batch: 2/3
  currentBatch: 2
  startedAt: "2026-11-21T10:01:00Z"
  message: "batch 2/3 (2 pods) waits for graygate.io/approve=2"
  batches:
  - index: 1
    replicas: 1
    podsReady: 1
    startedAt: "2026-11-21T10:01:00Z"
    readyAt: "2026-11-21T10:01:10Z"
    verdict: Pass
    judgements: 4
    lastJudgement: Pass
    reason: every check passed
    findings:
    - {metric: error_rate, detector: proportion, groups: change vs control, outcome: Pass, score: 0.42, threshold: 0.01, explanation: "0.1% vs 0.1%"}
  - {index: 2, replicas: 2}
"#);
        let text = status(&c, now());
        assert!(text.contains("Phase:     AwaitingApproval\n"), "{text}");
        assert!(
            text.contains("Next:      kubectl graygate approve v2"),
            "{text}"
        );
        let batch1 = text
            .lines()
            .find(|l| l.trim_start().starts_with("1 "))
            .unwrap();
        assert_eq!(
            batch1.split_whitespace().collect::<Vec<_>>(),
            ["1", "1", "1", "4m", "Pass", "4", "every", "check", "passed"]
        );
        assert!(text.contains("Evidence (batch 1, last judgement Pass):"));
        assert!(
            text.contains("error_rate  proportion  change vs control  Pass"),
            "{text}"
        );
        assert!(text.contains("    0.1% vs 0.1%"));
    }

    #[test]
    fn tokens_are_fresh_and_readable() {
        assert_eq!(token(now()), "kubectl-20261121T100500.000Z");
    }
}
