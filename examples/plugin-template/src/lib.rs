//! A tower-host backend plugin that runs each execution inside a bubblewrap (`bwrap`) sandbox:
//! no network, a read-only view of the host's root, and write access only to the execution's
//! own folder.
//!
//! The life of one execution, in the order of the code that runs it:
//!
//! 1. stage: [`backend`] verifies the package's sha256 in `create`; [`driver`] unpacks it with
//!    `tower-package` into a fresh folder;
//! 2. sandbox: [`sandbox`] builds the `bwrap` command line and the app's environment;
//! 3. spawn: Python apps first run `uv venv` and `uv sync` (or `uv pip install -r`) in the
//!    sandbox on the setup channel, then the program starts;
//! 4. stream: [`logs`] turns stdout and stderr into bounded log lines;
//! 5. wait: [`driver`] waits for the sandbox, the timeout, or a stop request from [`execution`];
//! 6. report: the terminal status goes out after the last log record;
//! 7. clean up: `cleanup` removes the execution's folder.

pub mod backend;
pub mod driver;
pub mod execution;
pub mod logs;
pub mod sandbox;
pub mod settings;

pub use backend::BubblewrapBackend;
pub use execution::BubblewrapExecution;
pub use settings::Settings;

tower_plugin_api::export_plugin!(name: "bubblewrap", backend: BubblewrapBackend);
