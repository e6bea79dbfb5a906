//! The graygate binary: the operator, CRD generation, offline analysis and kubectl plugin verbs.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use graygate::cli;
use std::process::ExitCode;

use graygate::VERSION;

#[derive(Parser)]
#[command(name = "graygate", version = VERSION, about = "Gray, batched rollouts of Kubernetes workload changes, checked between batches")]
struct Cli {
    /// Log level: error, warn, info, debug or trace (or a tracing filter).
    #[arg(long, global = true, env = "GRAYGATE_LOG", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, global = true, env = "GRAYGATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Json,
    Text,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(cli::run::RunArgs),
    /// Print a CustomResourceDefinition as YAML: `changerequests` (default) or `changepolicies`.
    Crd {
        /// Which CRD.
        #[arg(default_value = "changerequests", value_parser = ["changerequests", "changepolicies"])]
        which: String,
    },
    /// Print everything to apply without Helm: both CRDs, the operator's namespace,
    /// ServiceAccount and RBAC, and with --webhook-url the admission webhook configuration.
    Install(cli::install::InstallArgs),
    /// Log template tools.
    #[command(subcommand)]
    Logs(cli::logs::LogsCommand),
    /// The kubectl plugin's verbs (also run as `kubectl graygate` when installed as `kubectl-graygate`).
    Kubectl(cli::plugin::PluginArgs),
    /// Run the analysis on recorded series, or against a live Prometheus (exit 0 pass, 1 fail, 2 inconclusive, 3 bad input).
    Analyze(cli::analyze::AnalyzeArgs),
}

fn init_logs(level: &str, format: LogFormat) -> Result<(), String> {
    let mut filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("--log-level {level:?}: {e}"))?;
    if !level.contains("kube_client") {
        // kube's client warns "Server cert bypassed" at every TLS handshake with a kubeconfig
        // that skips verification; `graygate run` says it once at start instead.
        filter = filter.add_directive(
            "kube_client::client::tls=error"
                .parse()
                .map_err(|e| format!("log filter: {e}"))?,
        );
    }
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// True when this binary runs as the kubectl plugin (`kubectl-graygate`, found by kubectl on PATH).
fn invoked_as_plugin() -> bool {
    std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
        .is_some_and(|f| f.starts_with("kubectl-graygate"))
}

fn run_plugin(args: cli::plugin::PluginArgs) -> ExitCode {
    graygate::install_crypto_provider();
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => ExitCode::from(rt.block_on(cli::plugin::run(args))),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if invoked_as_plugin() {
        return run_plugin(cli::plugin::PluginCli::parse().args);
    }
    let cli = Cli::parse();
    if let Err(e) = init_logs(&cli.log_level, cli.log_format) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    graygate::install_crypto_provider();
    match cli.command {
        Command::Crd { which } => match serde_yaml::to_string(&if which == "changepolicies" {
            graygate::api::policy_crd()
        } else {
            graygate::api::crd()
        }) {
            Ok(y) => {
                print!("{y}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Install(args) => ExitCode::from(cli::install::run(&args)),
        Command::Logs(cmd) => ExitCode::from(cli::logs::run(cmd)),
        Command::Kubectl(args) => run_plugin(args),
        Command::Analyze(args) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => ExitCode::from(rt.block_on(cli::analyze::run(args))),
            Err(e) => {
                eprintln!("error: cannot start the runtime: {e}");
                ExitCode::from(3)
            }
        },
        Command::Run(args) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(cli::run::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "graygate run failed");
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
