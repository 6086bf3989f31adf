//! SIGTERM and SIGINT: stop accepting creates, then apply the shutdown policy to the executions.
//! Each further signal escalates one step: wait, terminate, kill, exit at once.

use super::config::ShutdownPolicy;
use super::context::ServeContext;
use super::journal::Phase;
use super::registry::StopRequest;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How often the shutdown re-sends stop requests, to reach executions created meanwhile.
const RESEND_INTERVAL: Duration = Duration::from_millis(200);
/// Time after the shutdown grace at which terminating escalates to killing.
const KILL_MARGIN: Duration = Duration::from_secs(5);
/// Maximum wait for killed executions to report their ends.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// SIGTERM and SIGINT.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    /// Starts listening; signals that arrive from now on are kept until read.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// Waits for the next signal and returns its name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// A step of the shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    LeaveRunning,
    Wait,
    Terminate,
    Kill,
    Exit,
}

impl Step {
    fn escalate(self) -> Self {
        match self {
            Step::LeaveRunning | Step::Kill | Step::Exit => Step::Exit,
            Step::Wait => Step::Terminate,
            Step::Terminate => Step::Kill,
        }
    }
}

/// Waits for the first signal, then shuts the executions down per `policy`; returns when the
/// host may exit.
pub async fn run(ctx: &Arc<ServeContext>, signals: &mut Signals, policy: ShutdownPolicy) {
    let name = signals.next().await;
    ctx.stop_accepting();
    let mut step = match policy {
        ShutdownPolicy::Wait => Step::Wait,
        ShutdownPolicy::Terminate => Step::Terminate,
        ShutdownPolicy::LeaveRunning => Step::LeaveRunning,
    };
    tracing::info!(signal = name, policy = policy.as_str(), "shutting down: no new executions are accepted");

    loop {
        let finished = tokio::select! {
            finished = apply(ctx, step) => finished,
            name = signals.next() => {
                step = step.escalate();
                tracing::warn!(signal = name, step = ?step, "another signal: escalating the shutdown");
                continue;
            }
        };
        if finished || step == Step::Exit {
            return;
        }
        step = step.escalate();
        tracing::warn!(step = ?step, "executions did not end in time: escalating the shutdown");
    }
}

/// Applies one step until it is done (`true`) or has run out of time (`false`).
async fn apply(ctx: &ServeContext, step: Step) -> bool {
    let limit = match step {
        Step::Exit => return true,
        Step::LeaveRunning | Step::Wait => None,
        Step::Terminate => Some(ctx.config.shutdown_grace + KILL_MARGIN),
        Step::Kill => Some(KILL_WAIT),
    };
    let work = async {
        loop {
            let mut left = 0;
            for entry in ctx.registry.list() {
                if entry.is_finished() {
                    continue;
                }
                let queued = entry.state().stored.phase == Phase::Queued;
                let request = match step {
                    // Queued executions never reached the backend and cannot be recovered.
                    Step::LeaveRunning if queued => StopRequest::Terminate { grace: Duration::ZERO },
                    Step::LeaveRunning | Step::Wait | Step::Exit => StopRequest::None,
                    Step::Terminate => StopRequest::Terminate { grace: ctx.config.shutdown_grace },
                    Step::Kill => StopRequest::Kill,
                };
                if step == Step::LeaveRunning && !queued {
                    continue;
                }
                entry.request_stop(request);
                left += 1;
            }
            if left == 0 {
                return;
            }
            tokio::time::sleep(RESEND_INTERVAL).await;
        }
    };
    match limit {
        Some(limit) => tokio::time::timeout(limit, work).await.is_ok(),
        None => {
            work.await;
            true
        }
    }
}
