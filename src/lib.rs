//! graygate: gray, batched rollouts of Kubernetes workload changes with analysis between batches.
#![forbid(unsafe_code)]

pub mod access;
pub mod analysis;
pub mod api;
pub mod cache;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod detect;
pub mod fence;
pub mod guard;
pub mod logs;
pub mod notify;
pub mod rollout;
pub mod server;
pub mod util;
pub mod workload;

/// Version and git revision, as `--version` prints them.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("GRAYGATE_GIT_REV"),
    ")"
);

/// Make ring the process-wide TLS crypto provider (kube and the Prometheus client share it).
/// Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
