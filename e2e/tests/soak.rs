//! The chaos soak's 3-minute version (`graygate-soak` runs 30): two replicas, a stream of
//! explicit and guarded changes, good and bad, under API errors, cut watches, leader kills and a
//! Prometheus outage; nothing may be lost (see `graygate_e2e::soak`).

use graygate_e2e::soak::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_minutes_of_chaos_lose_nothing() {
    let report = run(Options::short()).await.expect("the soak runs");
    println!("{}", report.text);
    assert!(
        report.problems.is_empty(),
        "{}\n{}",
        report.text,
        report.problems.join("\n")
    );
}
