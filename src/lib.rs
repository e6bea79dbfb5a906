//! graygate: gray, batched rollouts of Kubernetes workload changes with analysis between batches.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod detect;
pub mod rollout;
pub mod server;
pub mod util;
