//! Command-line verbs.

pub mod analyze;
pub mod logs;
pub mod plugin;
pub mod run;
pub mod table;
