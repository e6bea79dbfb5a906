//! graygate's end-to-end world: a real Kubernetes control plane, a stand-in kubelet running
//! profile-driven applications, a real Prometheus, a fault-injecting API proxy.
#![forbid(unsafe_code)]

pub mod apps;
pub mod appserver;
pub mod control_plane;
pub mod dataplane;
pub mod faults;
pub mod kubelet;
pub mod podconfig;
pub mod prom;
pub mod proxy;
pub mod soak;
pub mod tls;
pub mod world;
