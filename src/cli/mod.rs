//! Command-line verbs.

pub mod analyze;
pub mod run;
