//! Log analysis: template mining and the log detectors.

pub mod drain;
