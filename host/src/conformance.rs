//! `conformance`: hands over to the `tower-conformance` binary.
//!
//! The kit (`conformance/`) drives backends through this crate's library, so this crate cannot
//! depend on it without a dependency cycle. The command therefore replaces the host process with
//! `tower-conformance` from the folder of the running executable, passing the same arguments.

use crate::cli::ConformanceArgs;
use crate::failure::{CommandResult, Failure};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// The file name of the kit's binary.
const RUNNER: &str = "tower-conformance";

/// Replaces this process with `tower-conformance`; returns only when that fails.
pub fn conformance(config: Option<&Path>, args: &ConformanceArgs) -> CommandResult {
    let runner = runner_path()?;
    let mut command = std::process::Command::new(&runner);
    command.arg("--plugin").arg(&args.plugin);
    if let Some(settings) = &args.settings {
        command.arg("--settings").arg(settings);
    }
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    for check in &args.checks {
        command.arg("--check").arg(check);
    }
    let error = command.exec();
    Err(Failure::host(anyhow::anyhow!("failed to start {}: {error}", runner.display())))
}

/// Returns `tower-conformance` next to the running executable.
fn runner_path() -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(|error| Failure::host(anyhow::anyhow!("failed to find the running executable: {error}")))?;
    let folder = exe.parent().unwrap_or(Path::new("."));
    let runner = folder.join(RUNNER);
    if !runner.is_file() {
        return Err(Failure::host(anyhow::anyhow!(
            "{} not found: install it next to tower-host, or build it with `cargo build -p tower-conformance`",
            runner.display()
        )));
    }
    Ok(runner)
}
