//! `kubectl graygate dashboard`: a local web view of changes and the evidence behind their
//! verdicts, served on 127.0.0.1 with the user's own kubeconfig (and so their RBAC).
//!
//! Pages are rendered on the server, plots as inline SVG; no script is needed. A change's page
//! re-runs the queries of each batch's last judgement (the window and the pods status records)
//! through the same code the operator judges with, and draws what the judge compared.

pub mod html;
pub mod svg;

use crate::analysis::JudgeRequest;
use crate::analysis::judge::Params;
use crate::analysis::plot::{self, Plot};
use crate::analysis::prometheus::{self, plan_for};
use crate::api::{
    BatchStatus, ChangePolicy, ChangeRequest, Finding, Phase, feedback_label, interception,
};
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use html::{esc, page, seg};
use k8s_openapi::api::core::v1::Event;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use std::fmt::Write as _;
use std::sync::Arc;

/// What the dashboard serves from.
#[derive(Clone)]
pub struct Options {
    /// The user's client.
    pub client: Client,
    /// The namespace `/` shows.
    pub namespace: String,
    /// Prometheus for changes whose analysis names none (as the operator's `--prometheus-url`).
    pub prometheus_url: Option<String>,
}

type Shared = Arc<Options>;

/// The dashboard's routes.
pub fn router(opts: Options) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/healthz", get(|| async { "ok" }))
        .route("/ns/{ns}", get(namespace_page))
        .route("/ns/{ns}/changes/{name}", get(change_page))
        .with_state(Arc::new(opts))
}

/// Serve until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, opts: Options) -> std::io::Result<()> {
    axum::serve(listener, router(opts)).await
}

fn html_response(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

fn error_page(ns: &str, e: &kube::Error, what: &str) -> Response {
    let (code, text) = match e {
        kube::Error::Api(s) if s.code == 404 => {
            (StatusCode::NOT_FOUND, format!("{what} not found"))
        }
        kube::Error::Api(s) if s.code == 403 => (
            StatusCode::FORBIDDEN,
            format!(
                "forbidden: {} (the dashboard reads with your kubeconfig; the graygate chart's -view ClusterRole grants ChangeRequests)",
                s.message
            ),
        ),
        e => (StatusCode::BAD_GATEWAY, format!("{what}: {e}")),
    };
    html_response(
        code,
        page(what, ns, None, &format!("<h2>{}</h2>", esc(&text))),
    )
}

async fn root(State(o): State<Shared>, RawQuery(q): RawQuery) -> Redirect {
    let ns = query_value(q.as_deref(), "ns").unwrap_or_else(|| o.namespace.clone());
    Redirect::to(&format!("/ns/{}", seg(ns.trim())))
}

/// The value of `key` in a query string.
fn query_value(q: Option<&str>, key: &str) -> Option<String> {
    q.unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.replace('+', " "))
        .filter(|v| !v.trim().is_empty())
}

async fn namespace_page(
    State(o): State<Shared>,
    Path(ns): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let changes = match Api::<ChangeRequest>::namespaced(o.client.clone(), &ns)
        .list(&ListParams::default())
        .await
    {
        Ok(l) => l.items,
        Err(e) => return error_page(&ns, &e, "changerequests"),
    };
    // Policies are optional reading: a user who may not list them still sees the changes.
    let policies = Api::<ChangePolicy>::namespaced(o.client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .ok();
    html_response(
        StatusCode::OK,
        list_page(
            &ns,
            &changes,
            policies.as_deref(),
            query_value(q.as_deref(), "phase").as_deref(),
            jiff::Timestamp::now(),
        ),
    )
}

fn phase_of(cr: &ChangeRequest) -> Phase {
    cr.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

fn live(cr: &ChangeRequest) -> bool {
    !phase_of(cr).is_terminal()
}

fn change_link(ns: &str, name: &str) -> String {
    format!(
        r#"<a href="/ns/{}/changes/{}">{}</a>"#,
        seg(ns),
        seg(name),
        esc(name)
    )
}

/// The interception record of a namespace's changes: graygate's stops and the feedback on them.
pub fn interception_panel(changes: &[ChangeRequest]) -> String {
    let count = |outcome: &str, feedback: &str| {
        changes
            .iter()
            .filter(|c| interception(c) == Some(outcome) && feedback_label(c) == feedback)
            .count()
    };
    let stopped = changes
        .iter()
        .filter(|c| interception(c) == Some("stopped"))
        .count();
    let (real, false_alarm, drill) = (
        count("stopped", "real-fault"),
        count("stopped", "false-alarm"),
        count("stopped", "drill"),
    );
    let missed = count("released", "real-fault");
    let precision = if real + false_alarm > 0 {
        format!("{:.0}%", 100.0 * real as f64 / (real + false_alarm) as f64)
    } else {
        "-".into()
    };
    let mut s = String::from(r#"<section id="interceptions"><h3>Interceptions</h3>"#);
    for (label, value) in [
        ("stopped by graygate", stopped.to_string()),
        ("confirmed real faults", real.to_string()),
        ("false alarms", false_alarm.to_string()),
        ("drills", drill.to_string()),
        ("not yet reviewed", count("stopped", "none").to_string()),
        ("precision", precision),
        ("released, then marked real-fault", missed.to_string()),
    ] {
        let _ = write!(
            s,
            r#"<span class="kpi" data-kpi="{l}"><b>{v}</b>{l}</span>"#,
            l = esc(label),
            v = esc(&value)
        );
    }
    // Over time: the stopped changes by the week they ended, the newest first (at most 12 weeks).
    let mut weeks: std::collections::BTreeMap<String, (usize, usize, usize)> = Default::default();
    for c in changes
        .iter()
        .filter(|c| interception(c) == Some("stopped"))
    {
        let Some(end) = c
            .status
            .as_ref()
            .and_then(|s| s.finished_at.as_ref().or(s.phase_since.as_ref()))
        else {
            continue;
        };
        let date = end.0.to_zoned(jiff::tz::TimeZone::UTC).date();
        let week = date.iso_week_date();
        let e = weeks
            .entry(format!("{}-W{:02}", week.year(), week.week()))
            .or_default();
        e.0 += 1;
        match feedback_label(c) {
            "real-fault" => e.1 += 1,
            "false-alarm" => e.2 += 1,
            _ => {}
        }
    }
    if !weeks.is_empty() {
        s.push_str(r#"<table id="interceptions-by-week"><tr><th>Week</th><th>Stopped</th><th>Real faults</th><th>False alarms</th><th>Precision</th></tr>"#);
        for (week, (n, real, fa)) in weeks.iter().rev().take(12) {
            let p = if real + fa > 0 {
                format!("{:.0}%", 100.0 * *real as f64 / (real + fa) as f64)
            } else {
                "-".into()
            };
            let _ = write!(
                s,
                "<tr><td>{week}</td><td>{n}</td><td>{real}</td><td>{fa}</td><td>{p}</td></tr>"
            );
        }
        s.push_str("</table>");
    }
    s.push_str(r#"<p class="muted">Precision is confirmed real faults ÷ (real faults + false alarms) among the changes graygate stopped; record feedback with <code>kubectl graygate feedback NAME real-fault|false-alarm|drill</code>.</p></section>"#);
    s
}

/// The namespace page: its changes (live ones first, then the newest; only those in `phase` when
/// given) and guarded workloads.
pub fn list_page(
    ns: &str,
    changes: &[ChangeRequest],
    policies: Option<&[ChangePolicy]>,
    phase: Option<&str>,
    now: jiff::Timestamp,
) -> String {
    let mut sorted: Vec<&ChangeRequest> = changes
        .iter()
        .filter(|c| phase.is_none_or(|p| phase_of(c).as_str() == p))
        .collect();
    let started = |c: &ChangeRequest| {
        c.status
            .as_ref()
            .and_then(|s| s.started_at.as_ref().map(|t| t.0))
            .or(c.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    sorted.sort_by(|a, b| {
        live(b)
            .cmp(&live(a))
            .then(started(b).cmp(&started(a)))
            .then(a.name_any().cmp(&b.name_any()))
    });
    let mut body = String::new();
    let live_n = sorted.iter().filter(|c| live(c)).count();
    let _ = write!(
        body,
        "<h2>Changes in {}</h2><p>{} changes, {live_n} live.</p>",
        esc(ns),
        sorted.len()
    );
    body.push_str(&interception_panel(changes));
    // Phase filters with their counts, so a few changes that matter stand out among many.
    let mut counts: Vec<(Phase, usize)> = Phase::ALL
        .iter()
        .map(|p| (*p, changes.iter().filter(|c| phase_of(c) == *p).count()))
        .filter(|(_, n)| *n > 0)
        .collect();
    counts.sort_by_key(|c| std::cmp::Reverse(c.1));
    let _ = write!(
        body,
        r#"<p id="filters">{}: <a href="/ns/{}">all {}</a>"#,
        if phase.is_some() {
            "showing one phase"
        } else {
            "phases"
        },
        seg(ns),
        changes.len()
    );
    for (p, n) in counts {
        let _ = write!(
            body,
            r#" · <a class="{p}" href="/ns/{}?phase={p}">{p} {n}</a>"#,
            seg(ns),
            p = p.as_str()
        );
    }
    body.push_str("</p>");
    body.push_str(r#"<table id="changes"><tr><th>Name</th><th>Target</th><th>Phase</th><th>Batch</th><th>Verdict</th><th>Feedback</th><th>Age</th><th>Message</th></tr>"#);
    for c in &sorted {
        let st = c.status.clone().unwrap_or_default();
        let verdict = st.verdict.map_or("-", |v| v.as_str());
        let _ = write!(
            body,
            r#"<tr data-change="{n}"><td class="name">{link}{guard}</td><td>{t}</td><td class="{p}">{p}{live}</td><td>{b}</td><td class="{verdict}">{verdict}</td><td>{fb}</td><td>{age}</td><td class="muted">{m}</td></tr>"#,
            n = esc(&c.name_any()),
            link = change_link(ns, &c.name_any()),
            guard = if c.spec.policy.is_some() {
                " <span class=\"muted\">(guarded)</span>"
            } else {
                ""
            },
            t = esc(&format!("{:?}/{}", c.spec.target.kind, c.spec.target.name)),
            p = st.phase.as_str(),
            live = if live(c) { " ●" } else { "" },
            b = esc(st.batch.as_deref().unwrap_or("-")),
            fb = feedback_label(c),
            age = crate::util::age(
                st.started_at
                    .as_ref()
                    .or(c.metadata.creation_timestamp.as_ref()),
                now
            ),
            m = esc(&crate::util::trim_to(
                st.message.as_deref().unwrap_or(""),
                140
            )),
        );
    }
    body.push_str("</table>");
    match policies {
        None => body.push_str(
            r#"<p class="muted">Guarded workloads: ChangePolicies are not readable with this kubeconfig.</p>"#,
        ),
        Some(ps) => {
            body.push_str(r#"<h3>Guarded workloads</h3><table id="guarded"><tr><th>Workload</th><th>Policy</th><th>State</th><th>Change</th><th>Message</th></tr>"#);
            let mut rows = 0;
            for p in ps {
                for w in p.status.iter().flat_map(|s| &s.workloads) {
                    rows += 1;
                    let change = w
                        .change
                        .as_deref()
                        .map_or("-".to_string(), |c| change_link(ns, c));
                    let _ = write!(
                        body,
                        r#"<tr><td>{k}/{n}</td><td>{p}</td><td>{s}</td><td>{change}</td><td class="muted">{m}</td></tr>"#,
                        k = esc(&w.kind),
                        n = esc(&w.name),
                        p = esc(&p.name_any()),
                        s = esc(&w.state),
                        m = esc(w.message.as_deref().unwrap_or("")),
                    );
                }
            }
            if rows == 0 {
                body.push_str(r#"<tr><td colspan="5" class="muted">no guarded workloads</td></tr>"#);
            }
            body.push_str("</table>");
        }
    }
    page(
        &format!("changes in {ns}"),
        ns,
        (live_n > 0).then_some(10),
        &body,
    )
}

/// One batch's plots, or why there are none.
pub struct BatchPlots {
    /// The batch.
    pub index: u32,
    /// The metrics' plots.
    pub plots: Result<Vec<Plot>, String>,
}

async fn change_page(
    State(o): State<Shared>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let cr = match Api::<ChangeRequest>::namespaced(o.client.clone(), &ns)
        .get(&name)
        .await
    {
        Ok(c) => c,
        Err(e) => return error_page(&ns, &e, &format!("changerequest {name}")),
    };
    let events = Api::<Event>::namespaced(o.client.clone(), &ns)
        .list(&ListParams::default().fields(&format!(
            "involvedObject.name={name},involvedObject.kind=ChangeRequest"
        )))
        .await
        .map(|l| l.items)
        .ok();
    let st = cr.status.clone().unwrap_or_default();
    let judged: Vec<&BatchStatus> = st.batches.iter().filter(|b| b.judged.is_some()).collect();
    let plots = futures::future::join_all(judged.iter().map(|b| batch_plots(&o, &cr, b))).await;
    let batches: Vec<BatchPlots> = judged
        .iter()
        .zip(plots)
        .map(|(b, plots)| BatchPlots {
            index: b.index,
            plots,
        })
        .collect();
    html_response(
        StatusCode::OK,
        change_html(&cr, events.as_deref(), &batches, jiff::Timestamp::now()),
    )
}

/// Query the window of a batch's last judgement and plot every metric as the judge saw it.
async fn batch_plots(
    o: &Options,
    cr: &ChangeRequest,
    b: &BatchStatus,
) -> Result<Vec<Plot>, String> {
    let Some(analysis) = &cr.spec.analysis else {
        return Err("the change has no analysis section".into());
    };
    let Some(w) = &b.judged else {
        return Err("no judgement recorded".into());
    };
    let ns = cr.namespace().unwrap_or_default();
    let (prom, token, _) = prometheus::client(
        analysis.prometheus.as_ref(),
        o.prometheus_url.as_deref(),
        Some(&o.client),
        &ns,
    )
    .await?;
    let pods = |names: &[String]| {
        names
            .iter()
            .map(|n| crate::rollout::GroupPod {
                name: n.clone(),
                labels: Default::default(),
                ready_since: None,
            })
            .collect::<Vec<_>>()
    };
    let st = cr.status.clone().unwrap_or_default();
    let req = JudgeRequest {
        cr,
        analysis,
        window: crate::controller::state::JudgeWindow {
            batch: b.index,
            from: w.from.0,
            to: w.to.0,
            looks: 1,
        },
        groups: crate::rollout::Groups {
            change: pods(&w.change),
            control: pods(&w.control),
            running: pods(&w.running),
        },
        change_started: st.started_at.as_ref().map_or(w.from.0, |t| t.0),
        history: None,
    };
    let plan = plan_for(&req);
    let (metrics, _) = prometheus::fetch(analysis, &prom, token.as_deref(), &plan)
        .await
        .map_err(|j| match j {
            crate::controller::state::Judgement::Error(e) => e,
            crate::controller::state::Judgement::SpecError(e) => e.to_string(),
            _ => "no data".into(),
        })?;
    let params = Params::from_spec(analysis);
    Ok(metrics
        .iter()
        .filter_map(|(m, data)| plot::plot(m, data, &params))
        .collect())
}

fn time(t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>) -> String {
    t.map_or("-".into(), |t| {
        t.0.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
    })
}

/// Who set graygate's steering annotations, from the object's managed fields.
fn steering(cr: &ChangeRequest) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for mf in cr.metadata.managed_fields.iter().flatten() {
        let Some(fields) = mf.fields_v1.as_ref().map(|f| &f.0) else {
            continue;
        };
        let Some(ann) = fields
            .get("f:metadata")
            .and_then(|m| m.get("f:annotations"))
            .and_then(|a| a.as_object())
        else {
            continue;
        };
        for key in ann.keys() {
            let Some(k) = key.strip_prefix("f:graygate.io/") else {
                continue;
            };
            out.push((
                format!("graygate.io/{k}"),
                mf.manager.clone().unwrap_or_default(),
                time(mf.time.as_ref()),
            ));
        }
    }
    out
}

fn findings_for<'a>(b: &'a BatchStatus, metric: &str) -> Vec<&'a Finding> {
    b.findings.iter().filter(|f| f.metric == metric).collect()
}

fn finding_line(f: &Finding) -> String {
    let outcome = f.outcome.map_or("shown", |v| v.as_str());
    format!(
        r#"<p class="finding"><span class="{outcome}">{outcome}</span> · {det} · {groups}{sup}: {text}</p>"#,
        det = esc(&f.detector),
        groups = esc(&f.groups),
        sup = f
            .suppressed_by
            .as_deref()
            .map(|s| format!(" (suppressed by {})", esc(s)))
            .unwrap_or_default(),
        text = esc(&f.explanation),
    )
}

/// The change page: header, timeline, and each judged batch's plots with their findings.
pub fn change_html(
    cr: &ChangeRequest,
    events: Option<&[Event]>,
    batches: &[BatchPlots],
    now: jiff::Timestamp,
) -> String {
    let ns = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    let st = cr.status.clone().unwrap_or_default();
    let mut body = String::new();
    let phase = match &st.reason {
        Some(r) if r != st.phase.as_str() => format!("{} ({r})", st.phase.as_str()),
        _ => st.phase.as_str().to_string(),
    };
    let _ = write!(
        body,
        r#"<h2>{n}</h2><table id="summary"><tr><th>Target</th><td>{t}</td></tr><tr><th>Phase</th><td class="{pc}" id="phase">{phase}</td></tr><tr><th>Batch</th><td>{b}</td></tr><tr><th>Verdict</th><td>{v}</td></tr><tr><th>Message</th><td>{m}</td></tr><tr><th>Started</th><td>{s} ({age} ago)</td></tr><tr><th>Finished</th><td>{f}</td></tr><tr><th>Feedback</th><td>{fb}</td></tr>{cfg}</table>"#,
        n = esc(&name),
        t = esc(&format!(
            "{:?}/{}",
            cr.spec.target.kind, cr.spec.target.name
        )),
        pc = st.phase.as_str(),
        phase = esc(&phase),
        b = esc(st.batch.as_deref().unwrap_or("-")),
        v = st.verdict.map_or("-", |v| v.as_str()),
        m = esc(st.message.as_deref().unwrap_or("")),
        s = time(st.started_at.as_ref()),
        age = crate::util::age(st.started_at.as_ref(), now),
        f = time(st.finished_at.as_ref()),
        fb = feedback_label(cr),
        // A change of a guarded workload's config: which objects and keys (never values).
        cfg = cr
            .annotations()
            .get(crate::guard::pin::ANN_CONFIG_CHANGED)
            .map(|c| format!(r#"<tr><th>Config</th><td id="config">{}</td></tr>"#, esc(c)))
            .unwrap_or_default(),
    );

    // Timeline: batches, then what people and graygate said.
    // A traffic-weighted change plots each batch's share of the requests.
    let weighted = cr.spec.traffic.is_some();
    let _ = write!(
        body,
        r#"<h3>Timeline</h3><table id="batches"><tr><th>Batch</th><th>Pods</th>{}<th>Started</th><th>Ready</th><th>Judgements</th><th>Last judged</th><th>Verdict</th><th>Reason</th></tr>"#,
        if weighted { "<th>Requests</th>" } else { "" }
    );
    for b in &st.batches {
        let v = b.verdict.or(b.last_judgement).map_or("-", |v| v.as_str());
        let _ = write!(
            body,
            r#"<tr><td>{}</td><td>{}</td>{}<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="{v}">{v}</td><td>{}</td></tr>"#,
            b.index,
            b.replicas,
            if weighted {
                traffic_cell(b.traffic)
            } else {
                String::new()
            },
            time(b.started_at.as_ref()),
            time(b.ready_at.as_ref()),
            b.judgements,
            time(b.last_judged_at.as_ref()),
            esc(b.reason.as_deref().unwrap_or("")),
        );
    }
    body.push_str("</table>");
    let steer = steering(cr);
    if !steer.is_empty() {
        body.push_str(
            r#"<table id="steering"><tr><th>Annotation</th><th>Set by</th><th>At</th></tr>"#,
        );
        for (k, who, at) in steer {
            let _ = write!(
                body,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&k),
                esc(&who),
                esc(&at)
            );
        }
        body.push_str("</table>");
    }
    if let Some(evs) = events {
        let mut evs: Vec<&Event> = evs.iter().collect();
        let at = |e: &Event| {
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
        };
        evs.sort_by_key(|e| at(e));
        body.push_str(r#"<table id="events"><tr><th>At</th><th>Event</th><th>Message</th></tr>"#);
        for e in evs {
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                at(e).map_or("-".into(), |t| t.strftime("%H:%M:%S").to_string()),
                esc(e.reason.as_deref().unwrap_or("")),
                esc(e.message.as_deref().unwrap_or(""))
            );
        }
        body.push_str("</table>");
    }
    // Evidence, the newest batch first.
    let fresh = cr.spec.baseline == crate::api::Baseline::Fresh;
    for bp in batches.iter().rev() {
        let Some(b) = st.batches.iter().find(|b| b.index == bp.index) else {
            continue;
        };
        let w = b.judged.as_ref();
        let _ = write!(
            body,
            r#"<section class="batch" id="batch-{i}"><h3>Batch {i}: last judgement {v}</h3><p class="muted">window {from} – {to}; change pods {c}; {r}{run}{om}</p>"#,
            i = b.index,
            v = b.last_judgement.map_or("-", |v| v.as_str()),
            from = time(w.map(|w| &w.from)),
            to = time(w.map(|w| &w.to)),
            c = esc(&w.map(|w| w.change.join(", ")).unwrap_or_default()),
            r = reference_pods(w, fresh),
            run = w
                .filter(|w| !w.running.is_empty())
                .map(|w| format!("; long-running pods {}", esc(&w.running.join(", "))))
                .unwrap_or_default(),
            om = w
                .filter(|w| w.pods_omitted > 0)
                .map(|w| format!(" ({} more not recorded)", w.pods_omitted))
                .unwrap_or_default(),
        );
        let reference_name = if fresh { "fresh baseline" } else { "control" };
        let mut shown: Vec<&str> = Vec::new();
        match &bp.plots {
            Err(e) => {
                let _ = write!(
                    body,
                    r#"<p class="Inconclusive">cannot plot this window: {}</p>"#,
                    esc(e)
                );
            }
            Ok(plots) => {
                for p in plots {
                    shown.push(&p.metric);
                    let reference = match p.reference {
                        "control" => reference_name,
                        "background" => "before the change",
                        other => other,
                    };
                    let _ = write!(
                        body,
                        r#"<div class="metric" data-metric="{m}"><h4>{m}</h4>{svg}<p class="muted">band: {rule}</p>"#,
                        m = esc(&p.metric),
                        svg = svg::render(p, reference),
                        rule = esc(&p.band_rule),
                    );
                    for f in findings_for(b, &p.metric) {
                        body.push_str(&finding_line(f));
                    }
                    body.push_str("</div>");
                }
            }
        }
        let rest: Vec<&Finding> = b
            .findings
            .iter()
            .filter(|f| !shown.contains(&f.metric.as_str()))
            .collect();
        if !rest.is_empty() {
            body.push_str(r#"<h4>Other findings (logs, activity, references)</h4>"#);
            for f in rest {
                let _ = write!(
                    body,
                    r#"<div class="metric other"><pre>{}</pre>{}</div>"#,
                    esc(&f.metric),
                    finding_line(f)
                );
            }
        }
        body.push_str("</section>");
    }
    if batches.is_empty() {
        body.push_str(r#"<p class="muted">No judgement recorded yet.</p>"#);
    }
    page(
        &format!("{name} in {ns}"),
        &ns,
        (!st.phase.is_terminal()).then_some(10),
        &body,
    )
}

/// The reference a batch's judgement named: its pods, or, without any (the last batch, where every
/// pod is new), the workload before the change.
/// A batch's share of the requests, as a bar and a number.
fn traffic_cell(share: Option<i32>) -> String {
    match share {
        Some(t) => {
            let t = t.clamp(0, 100);
            format!(
                r##"<td class="traffic"><svg width="100" height="10" role="img" aria-label="{t}% of the requests"><rect width="100" height="10" fill="#e4e4e4"/><rect width="{t}" height="10" fill="#3b7dd8"/></svg> {t}%</td>"##
            )
        }
        None => "<td>-</td>".into(),
    }
}

fn reference_pods(w: Option<&crate::api::JudgedWindow>, fresh: bool) -> String {
    match w.map(|w| &w.control) {
        Some(pods) if !pods.is_empty() => format!(
            "{} {}",
            if fresh {
                "fresh baseline pods"
            } else {
                "reference pods"
            },
            esc(&pods.join(", "))
        ),
        Some(_) => {
            "reference: the workload's pods in the hour before the change (no pod on the old template was left beside the batch)".into()
        }
        None => "reference: not recorded".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ChangeRequestSpec, ChangeRequestStatus, Feedback, FeedbackVerdict, Verdict};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn change(
        name: &str,
        phase: Phase,
        verdict: Option<Verdict>,
        fb: Option<FeedbackVerdict>,
    ) -> ChangeRequest {
        let spec: ChangeRequestSpec = serde_yaml::from_str(
            "target: {kind: Deployment, name: web}\nimages: {app: web:2}\nbatches: [{percent: 100}]",
        )
        .unwrap();
        let mut cr = ChangeRequest::new(name, spec);
        cr.metadata.namespace = Some("shop".into());
        cr.status = Some(ChangeRequestStatus {
            phase,
            verdict,
            finished_at: Some(Time("2026-11-30T10:00:00Z".parse().unwrap())),
            feedback: fb.map(|verdict| Feedback {
                verdict,
                recorded_at: Time(jiff::Timestamp::UNIX_EPOCH),
                phase,
            }),
            ..Default::default()
        });
        cr
    }

    #[test]
    fn a_traffic_weighted_change_plots_each_batchs_share_of_the_requests() {
        let mut cr = change("web-1", Phase::Progressing, None, None);
        let page = change_html(&cr, None, &[], jiff::Timestamp::now());
        assert!(!page.contains("<th>Requests</th>"));
        cr.spec = serde_yaml::from_str(
            "target: {kind: Deployment, name: web}\nimages: {app: web:2}\ntraffic: {gatewayAPI: {httpRoute: web, stableService: web, canaryService: web-canary}}\nbatches: [{replicas: 1, traffic: 5%}, {percent: 100}]",
        )
        .unwrap();
        let st = cr.status.as_mut().unwrap();
        for (index, traffic) in [(1, Some(5)), (2, Some(100))] {
            st.batches.push(crate::api::BatchStatus {
                index,
                replicas: index as i32,
                traffic,
                ..Default::default()
            });
        }
        let page = change_html(&cr, None, &[], jiff::Timestamp::now());
        assert!(page.contains("<th>Requests</th>"));
        assert!(
            page.contains(r##"<rect width="5" height="10" fill="#3b7dd8"/></svg> 5%</td>"##),
            "{page}"
        );
        assert!(page.contains("</svg> 100%</td>"));
    }

    #[test]
    fn a_config_change_shows_the_objects_and_keys_it_changes_escaped() {
        let mut cr = change("web-1", Phase::Progressing, None, None);
        let page = change_html(&cr, None, &[], jiff::Timestamp::now());
        assert!(!page.contains(r#"id="config""#));
        cr.metadata.annotations = Some(std::collections::BTreeMap::from([(
            crate::guard::pin::ANN_CONFIG_CHANGED.to_string(),
            "ConfigMap web-config: keys <b>profile</b>".to_string(),
        )]));
        let page = change_html(&cr, None, &[], jiff::Timestamp::now());
        assert!(
            page.contains(r#"<tr><th>Config</th><td id="config">ConfigMap web-config: keys &lt;b&gt;profile&lt;/b&gt;</td></tr></table>"#),
            "{page}"
        );
    }

    #[test]
    fn a_batch_header_names_its_reference_even_without_reference_pods() {
        let w = |control: &[&str]| crate::api::JudgedWindow {
            from: Time(jiff::Timestamp::UNIX_EPOCH),
            to: Time(jiff::Timestamp::UNIX_EPOCH),
            change: vec!["web-new-1".into()],
            control: control.iter().map(|s| s.to_string()).collect(),
            running: Vec::new(),
            pods_omitted: 0,
        };
        assert_eq!(
            reference_pods(Some(&w(&["web-base-1"])), true),
            "fresh baseline pods web-base-1"
        );
        assert_eq!(
            reference_pods(Some(&w(&["web-old-1", "<x>"])), false),
            "reference pods web-old-1, &lt;x&gt;"
        );
        let last = reference_pods(Some(&w(&[])), true);
        assert!(
            last.starts_with("reference: the workload's pods in the hour before the change"),
            "{last}"
        );
    }

    #[test]
    fn the_namespace_page_counts_interceptions_and_filters_by_phase() {
        use FeedbackVerdict::*;
        let changes = vec![
            change("a", Phase::RolledBack, Some(Verdict::Fail), Some(RealFault)),
            change("b", Phase::RolledBack, Some(Verdict::Fail), Some(RealFault)),
            change("c", Phase::Paused, Some(Verdict::Fail), Some(FalseAlarm)),
            change("d", Phase::RolledBack, Some(Verdict::Fail), None),
            // Aborted by a person: RolledBack without a failing verdict, not an interception.
            change("e", Phase::RolledBack, Some(Verdict::Pass), Some(Drill)),
            change("f", Phase::Succeeded, Some(Verdict::Pass), Some(RealFault)),
            change("<g>", Phase::Progressing, None, None),
        ];
        let html = list_page(
            "shop",
            &changes,
            Some(&[]),
            None,
            jiff::Timestamp::UNIX_EPOCH,
        );
        let kpi = |label: &str| {
            let at = html.find(&format!(r#"data-kpi="{label}"><b>"#)).unwrap();
            html[at..]
                .split("<b>")
                .nth(1)
                .unwrap()
                .split("</b>")
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(kpi("stopped by graygate"), "4");
        assert_eq!(kpi("confirmed real faults"), "2");
        assert_eq!(kpi("false alarms"), "1");
        assert_eq!(kpi("not yet reviewed"), "1");
        assert_eq!(kpi("precision"), "67%");
        assert_eq!(kpi("released, then marked real-fault"), "1");
        assert_eq!(html.matches("<tr data-change=").count(), 7);
        assert!(
            html.contains("<tr><td>2026-W49</td><td>4</td><td>2</td><td>1</td><td>67%</td></tr>"),
            "{html}"
        );
        // The live change comes first, and its name is escaped.
        let first = html.find("<tr data-change=").unwrap();
        assert!(html[first..].starts_with(r#"<tr data-change="&lt;g&gt;""#));
        assert!(
            html.contains(r#"content="10""#),
            "a live change refreshes the page"
        );
        let only = list_page(
            "shop",
            &changes,
            None,
            Some("RolledBack"),
            jiff::Timestamp::UNIX_EPOCH,
        );
        assert_eq!(only.matches("<tr data-change=").count(), 4);
        assert!(only.contains("not readable"));
        assert!(
            !only.contains(r#"content="10""#),
            "nothing live shown, no refresh"
        );
    }
}
