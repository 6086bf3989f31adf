//! Every type that crosses the plugin boundary must be `StableAbi`. The functions below name each
//! one, so a field changed to a std container (`Vec`, `String`, `Option<String>`) stops this
//! test from compiling, and the layout check proves the root module passes abi_stable's checker.

use abi_stable::{abi_stability::abi_checking::check_layout_compatibility, StableAbi};
use tower_plugin_api::{ffi, *};

fn assert_stable_abi<T: StableAbi>() -> &'static abi_stable::type_layout::TypeLayout {
    T::LAYOUT
}

#[test]
fn every_boundary_type_is_stable_abi() {
    let layouts = [
        assert_stable_abi::<ExecutionSpec>(),
        assert_stable_abi::<PackageRef>(),
        assert_stable_abi::<RuntimeSpec>(),
        assert_stable_abi::<KeyValue>(),
        assert_stable_abi::<SecretVar>(),
        assert_stable_abi::<Secret>(),
        assert_stable_abi::<ResourceLimits>(),
        assert_stable_abi::<NetworkSpec>(),
        assert_stable_abi::<CacheSpec>(),
        assert_stable_abi::<ExecutionStatus>(),
        assert_stable_abi::<ExecutionState_NE>(),
        assert_stable_abi::<SetupPhase>(),
        assert_stable_abi::<FailureStage>(),
        assert_stable_abi::<ErrorCode>(),
        assert_stable_abi::<PluginError>(),
        assert_stable_abi::<LogRecord>(),
        assert_stable_abi::<LogFlags>(),
        assert_stable_abi::<Stream>(),
        assert_stable_abi::<Channel>(),
        assert_stable_abi::<Timestamp>(),
        assert_stable_abi::<Capabilities>(),
        assert_stable_abi::<EnforcedLimits>(),
        assert_stable_abi::<StartLatency>(),
        assert_stable_abi::<Health>(),
        assert_stable_abi::<ServiceEndpoint>(),
        assert_stable_abi::<ApiVersion>(),
        assert_stable_abi::<ffi::TraceEvent>(),
        assert_stable_abi::<ffi::TraceLevel>(),
        assert_stable_abi::<ffi::EventSinkBox>(),
        assert_stable_abi::<ffi::BackendBox>(),
        assert_stable_abi::<ffi::ExecutionBox>(),
        assert_stable_abi::<ffi::TracingSinkBox>(),
        assert_stable_abi::<ffi::PluginModuleRef>(),
    ];
    for layout in layouts {
        assert!(layout.size() > 0, "{layout}");
    }
}

#[test]
fn root_module_layout_passes_abi_checker() {
    let layout = <ffi::PluginModuleRef as StableAbi>::LAYOUT;
    assert!(check_layout_compatibility(layout, layout).is_ok());
}

#[test]
fn root_module_version_is_major_only() {
    assert_eq!(ffi::ROOT_MODULE_VERSION, format!("{}.0.0", API_VERSION.major));
}
