//! The controller: the pure state machine and the reconcile loop around it.

pub mod state;
