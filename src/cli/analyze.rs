//! `graygate analyze`: the production analysis on recorded series or against a live
//! Prometheus (backtesting a past change). Exit 0 pass, 1 fail, 2 inconclusive, 3 bad input.

use crate::analysis::judge;
use crate::analysis::prometheus::{GroupWindow, QueryPlan, analyze, client};
use crate::analysis::recorded::{Tuning, judge_recorded};
use crate::analysis::template::pods_regex;
use crate::api::{AnalysisSpec, Finding, Verdict};
use crate::controller::state::Judgement;
use std::path::PathBuf;

/// Arguments of `graygate analyze`.
#[derive(clap::Args, Debug, Clone)]
pub struct AnalyzeArgs {
    /// The analysis section (YAML): a bare `analysis:` body, or a whole ChangeRequest.
    #[arg(long)]
    pub spec: Option<PathBuf>,
    /// Recorded series (JSON; see docs/analyze.md).
    #[arg(long, conflicts_with = "prometheus")]
    pub input: Option<PathBuf>,
    /// Backtest: labelled past changes, one `--input` object per line plus `"label": "bad"|"good"`
    /// (and optional `"id"`, `"fault"`); prints the confusion table.
    #[arg(long, conflicts_with_all = ["prometheus", "input", "logs"])]
    pub cases: Option<PathBuf>,
    /// Query this Prometheus instead of reading --input.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// Namespace of the pods (with --prometheus).
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Change-group pod names, comma-separated (with --prometheus).
    #[arg(long, value_delimiter = ',')]
    pub change_pods: Vec<String>,
    /// Control-group pod names, comma-separated (with --prometheus).
    #[arg(long, value_delimiter = ',')]
    pub control_pods: Vec<String>,
    /// Start of the window: RFC 3339 or Unix seconds (with --prometheus).
    #[arg(long)]
    pub from: Option<String>,
    /// End of the window: RFC 3339 or Unix seconds (with --prometheus).
    #[arg(long)]
    pub to: Option<String>,
    /// The workload's name, for the background window's pod pattern (with --prometheus).
    #[arg(long)]
    pub target: Option<String>,
    /// Log files of change-group pods (one file per pod; repeat the flag).
    #[arg(long = "logs")]
    pub logs: Vec<PathBuf>,
    /// Log files of control-group pods over the same window (one per pod).
    #[arg(long = "control-logs")]
    pub control_logs: Vec<PathBuf>,
    /// Log files of control-group pods from before the change (one per pod).
    #[arg(long = "before-logs")]
    pub before_logs: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

/// Output formats.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A table for people.
    Table,
    /// JSON for programs.
    Json,
}

/// Bad input, with the field or line named.
#[derive(Debug)]
pub struct BadInput(pub String);

fn read(path: &PathBuf, what: &str) -> Result<String, BadInput> {
    std::fs::read_to_string(path).map_err(|e| BadInput(format!("{what} {}: {e}", path.display())))
}

/// Load the analysis section from YAML (bare, `analysis:` wrapped, or a whole ChangeRequest).
pub fn load_spec(text: &str) -> Result<AnalysisSpec, BadInput> {
    let v: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| BadInput(format!("spec: {e}")))?;
    let body = if v.get("kind").and_then(|k| k.as_str()) == Some("ChangeRequest") {
        v.get("spec")
            .and_then(|s| s.get("analysis"))
            .cloned()
            .ok_or(BadInput(
                "spec: the ChangeRequest has no spec.analysis".into(),
            ))?
    } else if let Some(a) = v.get("analysis") {
        a.clone()
    } else {
        v
    };
    let spec: AnalysisSpec =
        serde_yaml::from_value(body).map_err(|e| BadInput(format!("spec: {e}")))?;
    crate::api::validate::check_analysis(&spec).map_err(|e| BadInput(e.to_string()))?;
    Ok(spec)
}

fn parse_time(s: &str, flag: &str) -> Result<jiff::Timestamp, BadInput> {
    if let Ok(secs) = s.parse::<f64>() {
        return jiff::Timestamp::from_millisecond((secs * 1000.0) as i64)
            .map_err(|e| BadInput(format!("{flag}: {e}")));
    }
    s.parse()
        .map_err(|e| BadInput(format!("{flag} {s:?}: not RFC 3339 or Unix seconds ({e})")))
}

/// Judge recorded data.
pub fn judge_input(spec: &AnalysisSpec, input: &str) -> Result<judge::Outcome, BadInput> {
    let recorded = crate::analysis::input::parse_recorded(input).map_err(BadInput)?;
    judge_recorded(spec, recorded, &Tuning::default(), None).map_err(BadInput)
}

fn print(verdict: Verdict, summary: &str, findings: &[Finding], output: Output) {
    match output {
        Output::Json => {
            let v =
                serde_json::json!({"verdict": verdict, "summary": summary, "findings": findings});
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        Output::Table => {
            println!("VERDICT: {} — {summary}\n", verdict.as_str());
            println!("{}", super::table::findings(findings));
        }
    }
}

/// Run the command; returns the process exit code.
pub async fn run(args: AnalyzeArgs) -> u8 {
    match run_inner(args).await {
        Ok(code) => code,
        Err(BadInput(msg)) => {
            eprintln!("error: {msg}");
            3
        }
    }
}

fn code(v: Verdict) -> u8 {
    match v {
        Verdict::Pass => 0,
        Verdict::Fail => 1,
        Verdict::Inconclusive => 2,
    }
}

async fn run_inner(args: AnalyzeArgs) -> Result<u8, BadInput> {
    let spec = match &args.spec {
        Some(p) => load_spec(&read(p, "--spec")?).map_err(|e| {
            BadInput(format!(
                "--spec {}: {}",
                p.display(),
                e.0.trim_start_matches("spec: ")
            ))
        })?,
        None => AnalysisSpec::default(),
    };
    if let Some(path) = &args.cases {
        use crate::analysis::backtest;
        let cases = backtest::parse_cases(&read(path, "--cases")?)
            .map_err(|e| BadInput(format!("--cases {}: {e}", path.display())))?;
        let results = backtest::run(&spec, &cases, &Tuning::default())
            .map_err(|e| BadInput(format!("--cases {}: {e}", path.display())))?;
        match args.output {
            Output::Json => println!(
                "{}",
                serde_json::to_string_pretty(&backtest::json(&results)).unwrap_or_default()
            ),
            Output::Table => print!("{}", backtest::table(&results)),
        }
        return Ok(0);
    }
    let log_findings = if args.logs.is_empty() {
        if !args.control_logs.is_empty() || !args.before_logs.is_empty() {
            return Err(BadInput(
                "--control-logs and --before-logs need --logs (the change group's files)".into(),
            ));
        }
        None
    } else {
        if args.control_logs.is_empty() {
            return Err(BadInput(
                "--logs needs --control-logs to compare with".into(),
            ));
        }
        let group =
            |files: &[PathBuf], flag: &str| -> Result<crate::logs::detect::LogGroup, BadInput> {
                let mut g = crate::logs::detect::LogGroup::default();
                for (i, f) in files.iter().enumerate() {
                    let text = read(f, flag)?;
                    let pod = format!("{}#{i}", f.display());
                    // Lines with their times: the file covers its first line to its last.
                    if let Some(r) = crate::logs::fetch::timed_file(&text) {
                        r.put(&mut g, &pod, true);
                    } else {
                        g.pods.insert(pod, text.lines().map(String::from).collect());
                    }
                }
                Ok(g)
            };
        let params = crate::logs::detect::Params::from_spec(&spec.logs.clone().unwrap_or_default());
        Some(crate::logs::detect::detect(
            &group(&args.logs, "--logs")?,
            &group(&args.control_logs, "--control-logs")?,
            &group(&args.before_logs, "--before-logs")?,
            &params,
        ))
    };
    if args.input.is_none()
        && args.prometheus.is_none()
        && let Some(logs) = log_findings
    {
        return finish(
            crate::analysis::prometheus::merge_logs(None, logs),
            args.output,
        );
    }
    if let Some(path) = &args.input {
        let out = judge_input(&spec, &read(path, "--input")?)
            .map_err(|e| BadInput(format!("--input {}: {}", path.display(), e.0)))?;
        let metrics = Judgement::Verdict {
            verdict: out.verdict,
            summary: out.summary,
            findings: out.findings,
            record: None,
        };
        return finish(
            crate::analysis::prometheus::merge_logs(
                Some(metrics),
                log_findings.unwrap_or_default(),
            ),
            args.output,
        );
    }
    let Some(url) = &args.prometheus else {
        return Err(BadInput(
            "give --input FILE, or --prometheus URL with --change-pods, --from and --to".into(),
        ));
    };
    if args.change_pods.is_empty() {
        return Err(BadInput("--change-pods: at least one pod is needed".into()));
    }
    let from = parse_time(
        args.from
            .as_deref()
            .ok_or(BadInput("--from is required with --prometheus".into()))?,
        "--from",
    )?;
    let to = parse_time(
        args.to
            .as_deref()
            .ok_or(BadInput("--to is required with --prometheus".into()))?,
        "--to",
    )?;
    if to <= from {
        return Err(BadInput("--to must be after --from".into()));
    }
    let mut prom_spec = spec.prometheus.clone().unwrap_or_default();
    prom_spec.address = Some(url.clone());
    let (prom, token, _) = client(Some(&prom_spec), None, None, &args.namespace)
        .await
        .map_err(BadInput)?;
    let interval = spec
        .interval
        .unwrap_or(crate::controller::state::DEFAULT_INTERVAL);
    let mut windows = vec![GroupWindow {
        group: "change",
        pods: pods_regex(&args.change_pods),
        from,
        to,
    }];
    if !args.control_pods.is_empty() {
        windows.push(GroupWindow {
            group: "control",
            pods: pods_regex(&args.control_pods),
            from,
            to,
        });
    }
    if let Some(target) = &args.target {
        let background = spec
            .baselines
            .as_ref()
            .and_then(|b| b.background)
            .unwrap_or(crate::api::Duration::from_secs(3600));
        if background.as_millis_i64() > 0 {
            let pods = crate::analysis::prometheus::workload_pods_regex(
                crate::api::TargetKind::Deployment,
                target,
            );
            windows.push(GroupWindow {
                group: "background",
                pods,
                from: from - jiff::SignedDuration::from_millis(background.as_millis_i64()),
                to: from,
            });
        }
    }
    let plan = QueryPlan {
        namespace: args.namespace.clone(),
        target: args.target.clone().unwrap_or_default(),
        interval_ms: interval.as_millis_i64(),
        windows,
        // One judgement, tested once.
        looks: 1,
        canary_share_per_pod: None,
    };
    let judged = analyze(&spec, &prom, token.as_deref(), &plan, None).await;
    finish(
        crate::analysis::prometheus::merge_logs(Some(judged), log_findings.unwrap_or_default()),
        args.output,
    )
}

fn finish(j: Judgement, output: Output) -> Result<u8, BadInput> {
    match j {
        Judgement::Verdict {
            verdict,
            summary,
            findings,
            ..
        } => {
            print(verdict, &summary, &findings, output);
            Ok(code(verdict))
        }
        Judgement::SpecError(e) => Err(BadInput(e.to_string())),
        Judgement::Error(e) => {
            eprintln!("error: the analysis could not run: {e}");
            Ok(2)
        }
    }
}
