//! graygate's simulated Kubernetes world: an API server speaking the wire protocol, workload
//! controllers, pods running profile-driven applications, a real Prometheus, fault injection.
#![forbid(unsafe_code)]

pub mod control_plane;
pub mod sim;
pub mod world;
