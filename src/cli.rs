//! The command line: `serve` (the default) and `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigLoader};
use crate::gateway::Live;
use crate::server::Server;

/// gem-proxy: a gateway for Google's Gemini API.
#[derive(Debug, Parser)]
#[command(name = "gem-proxy", version, about)]
pub struct Cli {
    /// The YAML config file.
    #[arg(
        long,
        short,
        global = true,
        env = "GEM_PROXY_CONFIG",
        default_value = "config/proxy.yaml"
    )]
    pub config: PathBuf,

    /// What to do; `serve` when left out.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGTERM or SIGINT.
    Serve,
    /// Check a config file: exit 0 with a one-line summary, or 1 with every problem and its path.
    CheckConfig,
}

/// Runs the command line; the process's exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let loaded = ConfigLoader::from_process_env().load_file(&cli.config);
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{}: invalid configuration:", cli.config.display());
            for problem in e.problems() {
                eprintln!("  {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}: OK: {}", cli.config.display(), summary(&config));
            ExitCode::SUCCESS
        }
        Command::Serve => match serve(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("gem-proxy: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn summary(c: &Config) -> String {
    let admin = if c.metrics.enabled {
        format!(
            "admin on {}:{}",
            c.metrics.host.as_deref().unwrap_or(&c.server.host),
            c.metrics.prometheus_port
        )
    } else {
        "admin off".into()
    };
    format!(
        "{} upstream key(s) for {}, proxy on {}:{} (TLS {}), {admin}, auth {}",
        c.gemini.api_keys.len(),
        c.gemini.base_url,
        c.server.host,
        c.server.port,
        if c.server.tls.enabled { "on" } else { "off" },
        if c.auth.enabled { "on" } else { "off" },
    )
}

fn serve(config: Config) -> anyhow::Result<()> {
    crate::logging::init(&config.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.server.workers > 0 {
        runtime.worker_threads(config.server.workers);
    }
    let runtime = runtime
        .enable_all()
        .thread_name("gem-proxy-worker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let live = Live::build(config).map_err(|problems| {
            anyhow::anyhow!(
                "invalid configuration: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let server = Server::start(live).await?;
        shutdown_signal().await;
        tracing::info!("shutting down: no new connections; waiting for running requests");
        server.shutdown();
        server.wait().await;
        tracing::info!("stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
