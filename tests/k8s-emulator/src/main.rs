//! `k8s-emulator`: runs the Kubernetes API server emulator until Ctrl-C or SIGTERM, then kills
//! every container process it started.

use std::path::PathBuf;

use clap::Parser;
use tower_k8s_emulator::{Emulator, EmulatorOptions};

/// Kubernetes API server emulator for tests: core v1 pods, secrets and services over plain
/// HTTP on 127.0.0.1, with a fake kubelet that runs containers as local processes.
#[derive(Parser)]
#[command(name = "k8s-emulator", version)]
struct Arguments {
    /// Port on 127.0.0.1 to listen on; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Namespace of the kubeconfig's context.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Where to write the kubeconfig; a temporary file when unset.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Extra environment variable for every container, as NAME=VALUE (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let arguments = Arguments::parse();
    let mut extra_env = Vec::new();
    for pair in &arguments.env {
        let Some((name, value)) = pair.split_once('=') else {
            eprintln!("k8s-emulator: invalid --env {pair:?}: expected NAME=VALUE");
            return std::process::ExitCode::from(64);
        };
        extra_env.push((name.to_owned(), value.to_owned()));
    }
    let options = EmulatorOptions {
        port: arguments.port,
        namespace: arguments.namespace,
        kubeconfig_path: arguments.kubeconfig,
        extra_env,
        ..EmulatorOptions::default()
    };
    // The signal handlers exist before the kubeconfig line is printed, so a caller that reads
    // it and then sends SIGTERM cannot kill the process before the cleanup runs.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("k8s-emulator: failed to create a runtime for signals: {error}");
            return std::process::ExitCode::from(70);
        }
    };
    let signals = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        Ok::<_, std::io::Error>((
            signal(SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
        ))
    });
    let (mut interrupt, mut terminate) = match signals {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("k8s-emulator: failed to listen for signals: {error}");
            return std::process::ExitCode::from(70);
        }
    };
    let emulator = match Emulator::start_with(options) {
        Ok(emulator) => emulator,
        Err(error) => {
            eprintln!("k8s-emulator: failed to start: {error}");
            return std::process::ExitCode::from(70);
        }
    };
    println!("kubeconfig: {}", emulator.kubeconfig_path().display());
    println!("server: {}", emulator.url());

    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    emulator.shutdown();
    std::process::ExitCode::SUCCESS
}
