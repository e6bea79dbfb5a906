//! The controller: the pure state machine and the reconcile loop around it.

pub mod events;
pub mod history;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod state;
