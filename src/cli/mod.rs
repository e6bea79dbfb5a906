//! Command-line verbs.

pub mod analyze;
pub mod logs;
pub mod run;
