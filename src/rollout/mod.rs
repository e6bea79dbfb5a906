//! Workload strategies and the pure pieces they share.

pub mod plan;
pub mod template;
