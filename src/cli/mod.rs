//! Command-line verbs.

pub mod run;
