//! Checks of the backend as a whole: concurrent executions, recovery by a fresh instance, and
//! settings validation.

use crate::apps::{self, READY_LINE};
use crate::session::{describe, Run, Session, Step, Verdict};
use std::sync::Arc;
use std::time::Duration;
use tower_host::plugin::Backend;
use tower_plugin_api::{ExecutionState, KeyValue};

/// How many executions run at once, unless the backend caps fewer.
const CONCURRENT: u32 = 20;
/// How many lines each concurrent execution prints.
const LINES_EACH: usize = 50;

/// 20 executions at once, each printing its own token from its environment and a parameter,
/// see only their own output and values.
pub async fn concurrent_executions(session: &Session) -> Step<Verdict> {
    let count = session.capabilities.max_concurrent_executions.into_option().map_or(CONCURRENT, |cap| cap.min(CONCURRENT));
    let script = format!(
        "echo \"parameter=$CONFORMANCE_PARAMETER\"\nfor i in $(seq 1 {LINES_EACH}); do echo \"token=$TOWER_CONFORMANCE_TOKEN\"; sleep 0.01; done\n"
    );
    let package = apps::bash(session.package_dir(), "concurrent_executions", &script)?;
    let mut runs = Vec::new();
    for _ in 0..count {
        let mut spec = session.spec("concurrent_executions", package.clone());
        let token = Session::token(&spec);
        spec.parameters.push(KeyValue::new("CONFORMANCE_PARAMETER", token));
        runs.push(session.start(spec).await?);
    }
    // Every stream is drained at the same time, so that no execution waits on a full buffer.
    let tasks: Vec<_> = runs
        .into_iter()
        .map(|mut run| {
            tokio::spawn(async move {
                let ended = run.wait_end(Duration::from_secs(240)).await;
                (run, ended)
            })
        })
        .collect();
    let mut finished = Vec::new();
    for task in tasks {
        finished.push(task.await.map_err(|error| format!("a task of the kit failed: {error}"))?);
    }
    for (run, ended) in finished {
        let terminal = ended.map_err(|reason| format!("execution `{}`: {reason}", run.execution.id()))?;
        run.observed.check_order()?;
        if !matches!(terminal.state(), Some(ExecutionState::Exited)) {
            return Err(format!("execution `{}` ended as {}, expected exited", run.execution.id(), describe(&terminal)));
        }
        let own = format!("token={}", run.token);
        let parameter = format!("parameter={}", run.token);
        let lines = run.observed.program_lines();
        if let Some(foreign) = lines.iter().find(|line| **line != own && **line != parameter) {
            return Err(format!("execution `{}` printed `{foreign}`, which is not its own token", run.execution.id()));
        }
        let own_lines = lines.iter().filter(|line| **line == own).count();
        if own_lines != LINES_EACH || !lines.contains(&parameter.as_str()) {
            return Err(format!(
                "execution `{}` delivered {own_lines} of {LINES_EACH} token lines{}",
                run.execution.id(),
                if lines.contains(&parameter.as_str()) { "" } else { " and not its parameter" }
            ));
        }
        session.cleanup(&run.execution).await?;
    }
    Ok(Verdict::Pass)
}

/// Checks that a fresh backend instance recovers a running execution by its id and follows it to its end.
pub async fn recovery_after_restart(session: &Session) -> Step<Verdict> {
    let script = format!("echo {READY_LINE}\nsleep 4\necho after-recovery\n");
    let package = apps::bash(session.package_dir(), "recovery_after_restart", &script)?;
    let mut original = session.start(session.spec("recovery_after_restart", package)).await?;
    original.wait_for_line(Duration::from_secs(120), READY_LINE).await?;

    let fresh = Backend::new(Arc::clone(&session.plugin), session.settings_json.clone())
        .await
        .map_err(|error| format!("a second backend instance could not be created: {error}"))?;
    let (execution, stream) = fresh.recover(original.execution.id()).await.map_err(|error| error.to_string())?;
    session.track(&execution);
    let mut recovered = Run::recovered(execution, stream, original.token.clone());
    // The first instance still follows the execution. Its events are drained, so that it does not
    // wait on a full buffer.
    let drain = tokio::spawn(async move {
        let _ = original.wait_end(Duration::from_secs(120)).await;
        original
    });

    let terminal = recovered.wait_end(Duration::from_secs(120)).await?;
    recovered.observed.check_order()?;
    if !matches!(terminal.state(), Some(ExecutionState::Exited)) {
        return Err(format!("the recovered execution ended as {}, expected exited", describe(&terminal)));
    }
    if !recovered.observed.printed("after-recovery") {
        return Err(format!("the recovered execution did not deliver the line printed after recovery; got {:?}", recovered.observed.program_lines()));
    }
    let original = drain.await.map_err(|error| format!("a task of the kit failed: {error}"))?;
    session.cleanup(&recovered.execution).await?;
    session.cleanup(&original.execution).await?;
    fresh.shutdown().await.map_err(|error| error.to_string())?;
    Ok(Verdict::Pass)
}

/// Checks that an unknown settings key fails `Backend::new` with a message that names the key.
pub async fn unknown_setting_rejected(session: &Session) -> Step<Verdict> {
    const KEY: &str = "tower_conformance_unknown_setting";
    let mut settings: serde_json::Value =
        serde_json::from_str(&session.settings_json).map_err(|error| format!("the settings are not JSON: {error}"))?;
    let Some(object) = settings.as_object_mut() else { return Err("the settings are not a JSON object".to_string()) };
    object.insert(KEY.to_string(), serde_json::Value::Bool(true));
    match Backend::new(Arc::clone(&session.plugin), settings.to_string()).await {
        Ok(backend) => {
            let _ = backend.shutdown().await;
            Err(format!("the backend accepted the unknown setting `{KEY}`"))
        }
        Err(error) if error.error.message.contains(KEY) => Ok(Verdict::Pass),
        Err(error) => Err(format!("the error does not name the unknown setting `{KEY}`: {error}")),
    }
}
