//! The state every route and the kubelet share.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::emulator::EmulatorOptions;
use crate::faults::{Fault, FaultRegistry};
use crate::kubelet::Kubelet;
use crate::requests::RequestCounts;
use crate::store::Store;

pub struct Cluster {
    store: Mutex<Store>,
    faults: Mutex<FaultRegistry>,
    pub requests: Mutex<RequestCounts>,
    pub kubelet: Kubelet,
    pub options: EmulatorOptions,
    /// The folder that contains each pod's volumes and working folders, by pod uid.
    pub pods_dir: PathBuf,
    /// The variables every container starts with, before its own.
    pub base_env: Vec<(String, OsString)>,
    next_cluster_ip: AtomicU32,
}

impl Cluster {
    pub fn new(options: EmulatorOptions, pods_dir: PathBuf) -> Self {
        let mut base_env: Vec<(String, OsString)> = options
            .pass_env
            .iter()
            .filter_map(|name| std::env::var_os(name).map(|value| (name.clone(), value)))
            .collect();
        base_env.extend(
            options
                .extra_env
                .iter()
                .map(|(name, value)| (name.clone(), value.into())),
        );
        Self {
            store: Mutex::new(Store::new(options.history_limit)),
            faults: Mutex::default(),
            requests: Mutex::default(),
            kubelet: Kubelet::default(),
            options,
            pods_dir,
            base_env,
            next_cluster_ip: AtomicU32::new(0),
        }
    }

    pub fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().expect("store lock")
    }

    pub fn faults(&self) -> MutexGuard<'_, FaultRegistry> {
        self.faults.lock().expect("fault lock")
    }

    /// Fires the first armed fault that `matches` accepts; see [`FaultRegistry::fire`].
    pub fn fire_fault(&self, matches: impl Fn(&Fault) -> bool) -> Option<(u64, Fault)> {
        let fired = self.faults().fire(matches);
        if let Some((id, fault)) = &fired {
            tracing::info!(id, ?fault, "fault fired");
        }
        fired
    }

    /// Allocates the next service ClusterIP from 10.96.0.0/12, the API server's default range, starting
    /// after 10.96.0.10 (which clusters give to DNS).
    pub fn allocate_cluster_ip(&self) -> String {
        let offset = 11 + self.next_cluster_ip.fetch_add(1, Ordering::Relaxed);
        let address = (10u32 << 24) | (96 << 16) | offset;
        std::net::Ipv4Addr::from(address).to_string()
    }
}
