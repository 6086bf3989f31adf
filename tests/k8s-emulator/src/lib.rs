//! A Kubernetes API server emulator for tests. It speaks the real core v1 wire format for pods
//! (with watch, log and attach), secrets and services, and its fake kubelet runs each pod's
//! containers as local processes. See the crate's README for what it models and what it does
//! not.

mod api_error;
mod attach;
mod cluster;
mod control;
mod emulator;
mod faults;
mod gc;
mod kubeconfig;
mod kubelet;
mod logs;
mod meta;
mod patch;
mod pods;
mod requests;
mod resources;
mod secrets;
mod selectors;
mod server;
mod services;
mod store;
mod watch;

pub use emulator::{Emulator, EmulatorOptions, FaultId, Faults};
pub use faults::{ActiveFault, Fault, PodTarget, DEFAULT_FORBIDDEN_USER};
pub use kubelet::{DEFAULT_EVICTION_MESSAGE, NODE_NAME};
pub use requests::RequestCounts;
