//! Command-line verbs.

pub mod analyze;
pub mod install;
pub mod logs;
pub mod plugin;
pub mod run;
pub mod table;
