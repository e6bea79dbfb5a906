//! The simulated cluster: API server, controllers, kubelet and applications.

pub mod apps;
pub mod appserver;
pub mod controllers;
pub mod crd;
pub mod defaults;
pub mod faults;
pub mod http;
pub mod prom;
pub mod selectors;
pub mod store;
