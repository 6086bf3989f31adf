//! The checks and the loop that runs them.

mod backend;
mod logs;
mod outcomes;
mod stopping;

use crate::report::{CheckResult, Outcome, Requirement};
use crate::session::{Session, Step, Verdict};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// The future a check returns.
type CheckFuture<'a> = Pin<Box<dyn Future<Output = Step<Verdict>> + 'a>>;

/// One check: what it needs, how long it may take, and its body.
pub struct Check {
    /// The name printed in reports.
    pub name: &'static str,
    /// The capability it needs.
    pub requirement: Requirement,
    /// The maximum time it may take, cleanup included.
    pub timeout: Duration,
    body: for<'a> fn(&'a Session) -> CheckFuture<'a>,
}

macro_rules! check {
    ($name:ident, $requirement:ident, $seconds:expr) => {
        Check {
            name: stringify!($name),
            requirement: Requirement::$requirement,
            timeout: Duration::from_secs($seconds),
            body: |session| Box::pin($name(session)),
        }
    };
}

use backend::*;
use logs::*;
use outcomes::*;
use stopping::*;

/// Returns every check, in the order they run.
pub fn all() -> Vec<Check> {
    vec![
        check!(lifecycle_order, Contract, 120),
        check!(exit_code_0, Contract, 120),
        check!(exit_code_1, Contract, 120),
        check!(exit_code_42, Contract, 120),
        check!(killed_by_signal, Contract, 120),
        check!(setup_failure, Contract, 240),
        check!(missing_interpreter, Contract, 120),
        check!(logs_many_lines, Contract, 240),
        check!(logs_stdout_and_stderr, Contract, 120),
        check!(logs_setup_and_program_channels, Contract, 240),
        check!(logs_last_line_without_newline, Contract, 120),
        check!(logs_invalid_utf8, Contract, 120),
        check!(logs_long_line, Contract, 240),
        check!(terminate_during_setup, Contract, 300),
        check!(terminate_during_run, Contract, 180),
        check!(terminate_forced_after_grace, Contract, 180),
        check!(terminate_after_end, Contract, 120),
        check!(kill_during_run, Contract, 180),
        check!(timeout_enforced, TimeoutLimit, 180),
        check!(concurrent_executions, Contract, 300),
        check!(killed_behind_back, LocalProcesses, 180),
        check!(recovery_after_restart, Recovery, 240),
        check!(unknown_setting_rejected, Contract, 60),
    ]
}

/// Returns why the backend cannot take a check that needs `requirement`, if it cannot.
fn missing(session: &Session, requirement: Requirement) -> Option<String> {
    let capabilities = &session.capabilities;
    let present = match requirement {
        Requirement::Contract | Requirement::LocalProcesses => true,
        Requirement::TimeoutLimit => capabilities.enforced_limits.timeout,
        Requirement::Recovery => capabilities.recovery,
    };
    (!present).then(|| format!("needs capability {}, which the backend does not report", requirement.name()))
}

/// Runs one check within its timeout, then releases whatever executions it left.
pub async fn run(session: &Session, check: &Check) -> CheckResult {
    let started = Instant::now();
    let outcome = match missing(session, check.requirement) {
        Some(reason) => Outcome::Skipped(reason),
        None => {
            let outcome = match tokio::time::timeout(check.timeout, (check.body)(session)).await {
                Ok(Ok(Verdict::Pass)) => Outcome::Passed,
                Ok(Ok(Verdict::Skip(reason))) => Outcome::Skipped(reason),
                Ok(Err(reason)) => Outcome::Failed(reason),
                Err(_) => Outcome::Failed(format!("the check did not finish within {:?}", check.timeout)),
            };
            session.release_open().await;
            outcome
        }
    };
    CheckResult { name: check.name, requirement: check.requirement, outcome, duration: started.elapsed() }
}
