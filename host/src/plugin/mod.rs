//! Finding, checking and loading backend plugins, and calling them.

pub mod backend;
pub mod discovery;
pub mod loader;
pub mod safety;

pub use backend::{Backend, EventStream, Execution, ExecutionEvent};
pub use discovery::{plugin_file_name, search_paths, PluginCandidate};
pub use loader::{LoadError, LoadedPlugin};
