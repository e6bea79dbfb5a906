//! graygate: gray, batched rollouts of Kubernetes workload changes with analysis between batches.
#![forbid(unsafe_code)]

pub mod api;
pub mod controller;
pub mod rollout;
pub mod util;
