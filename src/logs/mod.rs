//! Log analysis: template mining, the log detectors, and reading pod logs.

pub mod brain;
pub mod detect;
pub mod fetch;
