//! Results of a conformance run: one outcome per check, and which capabilities were tested.

use std::fmt;
use std::time::Duration;

/// A capability a check needs from the backend before it can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Nothing beyond the contract every backend implements.
    Contract,
    /// `capabilities.enforced_limits.timeout`.
    TimeoutLimit,
    /// `capabilities.recovery`.
    Recovery,
    /// The workload's processes run on this machine and write to its file system, so the kit
    /// can read their PIDs from a shared folder and signal them. Decided while the check runs.
    LocalProcesses,
}

impl Requirement {
    /// Returns the name shown in reports, such as `enforced_limits.timeout`.
    pub fn name(self) -> &'static str {
        match self {
            Requirement::Contract => "contract",
            Requirement::TimeoutLimit => "enforced_limits.timeout",
            Requirement::Recovery => "recovery",
            Requirement::LocalProcesses => "local_processes",
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The backend did what the contract requires.
    Passed,
    /// The backend broke the contract, as the text describes.
    Failed(String),
    /// The check did not run because a capability was missing, as the text describes. It never
    /// counts as passed.
    Skipped(String),
}

impl Outcome {
    /// Tells whether the check passed.
    pub fn is_passed(&self) -> bool {
        matches!(self, Outcome::Passed)
    }

    /// Tells whether the check failed.
    pub fn is_failed(&self) -> bool {
        matches!(self, Outcome::Failed(_))
    }

    /// Tells whether the check was skipped.
    pub fn is_skipped(&self) -> bool {
        matches!(self, Outcome::Skipped(_))
    }
}

/// The result of one check.
#[derive(Debug, Clone)]
pub struct CheckResult {
    /// The check's name, such as `exit_code_42`.
    pub name: &'static str,
    /// The capability the check needs.
    pub requirement: Requirement,
    /// The outcome.
    pub outcome: Outcome,
    /// How long it took.
    pub duration: Duration,
}

impl fmt::Display for CheckResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Passed => write!(f, "PASS {}", self.name),
            Outcome::Failed(reason) => write!(f, "FAIL {}: {reason}", self.name),
            Outcome::Skipped(reason) => write!(f, "SKIP {}: {reason}", self.name),
        }
    }
}

/// Whether the checks that need one capability ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityCoverage {
    /// The capability.
    pub requirement: Requirement,
    /// `None` when at least one check that needs it ran; else the reason of the first skip.
    pub skipped_because: Option<String>,
}

/// The results of a whole run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plugin's name and version, such as `subprocess 0.1.0`.
    pub plugin: String,
    /// One result per check, in the order they ran.
    pub checks: Vec<CheckResult>,
}

impl Report {
    /// Returns the outcome of the check called `name`.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.checks.iter().find(|check| check.name == name).map(|check| &check.outcome)
    }

    /// Returns the names of the checks that failed.
    pub fn failed(&self) -> Vec<&'static str> {
        self.checks.iter().filter(|check| check.outcome.is_failed()).map(|check| check.name).collect()
    }

    /// Returns the number of passed, failed and skipped checks.
    pub fn counts(&self) -> (usize, usize, usize) {
        let count = |test: fn(&Outcome) -> bool| self.checks.iter().filter(|check| test(&check.outcome)).count();
        (count(Outcome::is_passed), count(Outcome::is_failed), count(Outcome::is_skipped))
    }

    /// Tells whether no check failed.
    pub fn success(&self) -> bool {
        self.counts().1 == 0
    }

    /// Returns, for each capability some check needs beyond the contract, whether it was tested.
    pub fn coverage(&self) -> Vec<CapabilityCoverage> {
        let mut coverage: Vec<CapabilityCoverage> = Vec::new();
        for check in self.checks.iter().filter(|check| check.requirement != Requirement::Contract) {
            let reason = match &check.outcome {
                Outcome::Skipped(reason) => Some(reason.clone()),
                _ => None,
            };
            match coverage.iter_mut().find(|entry| entry.requirement == check.requirement) {
                Some(entry) if reason.is_none() => entry.skipped_because = None,
                Some(_) => {}
                None => coverage.push(CapabilityCoverage { requirement: check.requirement, skipped_because: reason }),
            }
        }
        coverage
    }
}

impl fmt::Display for Report {
    /// Writes one line per check, one line per capability, then the summary line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for check in &self.checks {
            writeln!(f, "{check}")?;
        }
        for entry in self.coverage() {
            match &entry.skipped_because {
                None => writeln!(f, "capability {}: tested", entry.requirement.name())?,
                Some(reason) => writeln!(f, "capability {}: not tested: {reason}", entry.requirement.name())?,
            }
        }
        let (passed, failed, skipped) = self.counts();
        writeln!(f, "{passed} passed, {failed} failed, {skipped} skipped")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &'static str, requirement: Requirement, outcome: Outcome) -> CheckResult {
        CheckResult { name, requirement, outcome, duration: Duration::ZERO }
    }

    #[test]
    fn report_counts_and_prints_each_outcome() {
        let report = Report {
            plugin: "p 1".into(),
            checks: vec![
                result("a", Requirement::Contract, Outcome::Passed),
                result("b", Requirement::Contract, Outcome::Failed("exit code 0".into())),
                result("c", Requirement::Recovery, Outcome::Skipped("needs recovery".into())),
            ],
        };
        assert_eq!(report.counts(), (1, 1, 1));
        assert!(!report.success());
        let text = report.to_string();
        assert!(text.contains("PASS a\nFAIL b: exit code 0\nSKIP c: needs recovery\n"), "{text}");
        assert!(text.contains("capability recovery: not tested: needs recovery\n"), "{text}");
        assert!(text.ends_with("1 passed, 1 failed, 1 skipped\n"), "{text}");
    }

    #[test]
    fn capability_counts_as_tested_when_any_check_ran() {
        let report = Report {
            plugin: "p 1".into(),
            checks: vec![
                result("a", Requirement::LocalProcesses, Outcome::Skipped("no PID file".into())),
                result("b", Requirement::LocalProcesses, Outcome::Failed("still runs".into())),
            ],
        };
        assert_eq!(report.coverage(), [CapabilityCoverage { requirement: Requirement::LocalProcesses, skipped_because: None }]);
    }
}
