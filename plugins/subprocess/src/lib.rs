//! The `subprocess` backend plugin of tower-host: runs each Tower app execution as local
//! processes on the host's machine.
//!
//! An execution goes through these steps, each in its own module:
//!
//! 1. [`settings`]: what the operator configured, and the folders derived from it.
//! 2. [`staging`]: a fresh execution folder with an [`owner`] marker; the package checked
//!    against its sha256, unpacked and its MANIFEST read with `tower-package`.
//! 3. [`environment`]: a clean environment of allowlisted host variables and the spec's own.
//! 4. [`cgroup`]: the execution's cgroup with its limits, where the machine allows it.
//! 5. [`uv`]: for Python apps, uv found or installed, a virtual environment, the dependencies.
//! 6. [`process`] and [`workload`]: each process in its own session and process group, inside
//!    the cgroup; terminate, kill and timeout stop the whole group and cgroup.
//! 7. [`logs`]: stdout and stderr read in chunks and split into bounded log records.
//! 8. [`report`]: statuses, and the exit status mapped to a terminal state after every record.
//! 9. [`cleanup`]: the folder and cgroup removed, also those of hosts that are gone.
//!
//! [`backend`] accepts executions and stages them, [`driver`] runs steps 5 to 8 for each, and
//! [`execution`] is the handle the host holds.

pub mod backend;
pub mod capabilities;
pub mod cgroup;
pub mod cleanup;
pub mod driver;
pub mod environment;
pub mod execution;
pub mod logs;
pub mod owner;
pub mod process;
pub mod procfs;
pub mod report;
pub mod settings;
pub mod staging;
pub mod uv;
pub mod workload;

pub use backend::SubprocessBackend;
pub use execution::SubprocessExecution;
pub use settings::Settings;

tower_plugin_api::export_plugin!(name: "subprocess", backend: SubprocessBackend);
