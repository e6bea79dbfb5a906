//! The chaos soak (a benchmark, not a test; `tests/soak.rs` runs a 3-minute version): two
//! graygate replicas on the real control plane, ~50 changes over 30 minutes (explicit and
//! guarded, good and bad, some behind a manual approval) with 10% API errors, added latency, cut
//! watches, the leader killed every 3 minutes and Prometheus stopped every 7. Prints the report
//! (Markdown) and every rule broken; exits 1 when one was.
//!
//!   cargo build --release && GRAYGATE_BIN=target/release/graygate \
//!     cargo run --release -p graygate-e2e --bin graygate-soak -- --minutes 30
#![forbid(unsafe_code)]

use clap::Parser;
use graygate_e2e::soak::{Options, run};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Minutes changes keep coming.
    #[arg(long, default_value_t = 30)]
    minutes: u64,
    /// Changes over that time.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Seconds between leader kills.
    #[arg(long, default_value_t = 180)]
    kill_every: u64,
    /// Share of API calls failed.
    #[arg(long, default_value_t = 0.10)]
    error_rate: f64,
    /// The faults' seed (default: GRAYGATE_SOAK_SEED, else a new one each run; printed).
    #[arg(long)]
    seed: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "graygate_e2e=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let o = Options {
        duration: Duration::from_secs(a.minutes * 60),
        changes: a.changes,
        kill_every: Duration::from_secs(a.kill_every),
        error_rate: a.error_rate,
        seed: a.seed.unwrap_or_else(graygate_e2e::soak::seed_from_env),
        ..Options::long()
    };
    let report = run(o).await?;
    println!("{}", report.text);
    for p in &report.problems {
        println!("- {p}");
    }
    if !report.problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}
