//! Cost of one `Execution::status` call on a running subprocess execution, four ways:
//!
//! - `direct/await`: the `tower_plugin_subprocess` rlib linked in, its SDK trait awaited inside
//!   a tokio task (the baseline);
//! - `direct/block_on`: the same call through `Runtime::block_on` from a plain thread, which is
//!   what the SDK adapter does behind the ABI, without the ABI;
//! - `ffi/raw`: the loaded `.so` through `ExecutionBox::status` on the calling thread;
//! - `host/async`: the host's wrapper `tower_host::plugin::Execution::status`, awaited in a
//!   task, which adds a `spawn_blocking` hop to the raw call.
//!
//! Needs the release build of the plugin: `cargo build --release -p tower-plugin-subprocess`.

use abi_stable::{library::RootModule, sabi_trait::TD_Opaque, std_types::RVec};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_benches::{bash_app, pack_app, PackedApp};
use tower_plugin_api::ffi::{EventSinkBox, EventSinkFfi, EventSinkFfi_TO, PluginModuleRef};
use tower_plugin_api::sdk::{Backend as _, EventSink, Execution as _};
use tower_plugin_api::{ExecutionSpec, ExecutionStatus, LogRecord, PackageSource};
use tower_plugin_subprocess::{Settings, SubprocessBackend};

/// An event sink that drops every event, because the executions under test print nothing.
#[derive(Clone)]
struct DiscardingSink;

impl EventSinkFfi for DiscardingSink {
    fn logs(&self, _records: RVec<LogRecord>) {}
    fn status(&self, _status: ExecutionStatus) {}
}

fn discarding_sink() -> EventSinkBox {
    EventSinkFfi_TO::from_value(DiscardingSink, TD_Opaque)
}

fn spec(run_id: &str, package: &PackedApp) -> ExecutionSpec {
    let archive = package.archive.to_str().expect("UTF-8 temp path");
    ExecutionSpec::new(run_id, PackageSource::file(archive, package.sha256.clone()))
}

fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

fn status_call(c: &mut Criterion) {
    let work = tempfile::tempdir().expect("work folder");
    let settings_json = serde_json::json!({ "work_dir": work.path(), "cgroups": "off" }).to_string();
    // The app outlives the measurement. Every execution is killed at the end.
    let app = bash_app("sleeper", "sleep 600\n");
    let package = pack_app(app.path());
    let plugin_path = tower_host_tests::shipped_plugin("subprocess");

    // Baseline: the backend linked in, in a runtime of its own as the SDK gives each plugin.
    let direct_runtime = multi_thread_runtime();
    let settings: Settings = serde_json::from_str(&settings_json).expect("subprocess settings");
    let direct_backend = direct_runtime.block_on(SubprocessBackend::new(settings)).expect("direct backend");
    let direct = direct_runtime
        .block_on(direct_backend.create(spec("direct", &package), EventSink::new(discarding_sink())))
        .expect("direct execution");

    // The host's wrapper around the loaded library.
    let host_runtime = multi_thread_runtime();
    let plugin = tower_host::plugin::loader::load(&plugin_path, None).expect("load the subprocess plugin");
    let host_backend = host_runtime
        .block_on(tower_host::plugin::Backend::new(Arc::clone(&plugin), settings_json.clone()))
        .expect("host backend");
    let (hosted, mut events) = host_runtime.block_on(host_backend.create(spec("hosted", &package))).expect("host execution");
    host_runtime.spawn(async move { while events.next().await.is_some() {} });

    // The raw interface of the same library: abi_stable returns the module the loader set up.
    let module = PluginModuleRef::load_from_file(&plugin_path).expect("root module of the loaded plugin");
    let raw_backend = (module.new_backend())(settings_json.as_str().into()).into_result().expect("raw backend");
    let raw = raw_backend.create(spec("raw", &package), discarding_sink()).into_result().expect("raw execution");

    let mut group = c.benchmark_group("status");
    group.warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.bench_function("direct/await", |b| {
        b.iter_custom(|iterations| {
            direct_runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(direct.status().await.expect("status"));
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("direct/block_on", |b| b.iter(|| black_box(direct_runtime.block_on(direct.status()).expect("status"))));
    group.bench_function("ffi/raw", |b| b.iter(|| black_box(raw.status().into_result().expect("status"))));
    group.bench_function("host/async", |b| {
        b.iter_custom(|iterations| {
            host_runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iterations {
                    black_box(hosted.status().await.expect("status"));
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    direct_runtime.block_on(async {
        direct.kill().await.expect("kill the direct execution");
        direct.cleanup().await.expect("clean up the direct execution");
    });
    raw.kill().into_result().expect("kill the raw execution");
    raw.cleanup().into_result().expect("clean up the raw execution");
    host_runtime.block_on(async {
        hosted.kill().await.expect("kill the host execution");
        hosted.cleanup().await.expect("clean up the host execution");
    });
}

criterion_group!(benches, status_call);
criterion_main!(benches);
