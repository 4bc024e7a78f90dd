//! `gem-proxy-mock`: the mock Gemini upstream as a process, for out-of-process tests and benchmarks.
//!
//! Prints `listening on http://HOST:PORT` once bound, then serves until SIGTERM or SIGINT (exit 0).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use gem_proxy_mock::{MockOptions, MockUpstream};

/// A mock of Google's Gemini API for gem-proxy's tests and benchmarks.
#[derive(Parser, Debug)]
#[command(name = "gem-proxy-mock", version, about)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 lets the system choose (the chosen one is printed).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Events per streamed answer.
    #[arg(long, default_value_t = 3)]
    chunks: usize,
    /// Pause between two events of a stream, in milliseconds.
    #[arg(long, default_value_t = 0)]
    chunk_delay_ms: u64,
    /// A key to answer with 400 API_KEY_INVALID (repeatable).
    #[arg(long = "invalid-key", value_name = "KEY")]
    invalid_keys: Vec<String>,
    /// File to write this process's id to (removed on exit).
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Do not record requests (keeps memory flat under long benchmarks).
    #[arg(long)]
    no_record: bool,
    /// The test service account's public key (PEM file): the Vertex AI token endpoint
    /// (`POST /token`) accepts assertions it verifies.
    #[arg(long, value_name = "PATH")]
    vertex_public_key: Option<PathBuf>,
    /// How long a Vertex AI access token lives, in seconds.
    #[arg(long, default_value_t = 3600)]
    vertex_token_lifetime_seconds: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let vertex_public_key_pem = match &cli.vertex_public_key {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(pem) => Some(pem),
            Err(error) => {
                eprintln!("gem-proxy-mock: cannot read {}: {error}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let opts = MockOptions {
        chunks: cli.chunks,
        chunk_delay: Duration::from_millis(cli.chunk_delay_ms),
        invalid_keys: cli.invalid_keys,
        vertex_public_key_pem,
        vertex_token_lifetime: Duration::from_secs(cli.vertex_token_lifetime_seconds),
    };
    let mock = match MockUpstream::start_on(SocketAddr::new(cli.host, cli.port), opts).await {
        Ok(mock) => mock,
        Err(error) => {
            eprintln!(
                "gem-proxy-mock: cannot listen on {}:{}: {error}",
                cli.host, cli.port
            );
            return ExitCode::FAILURE;
        }
    };
    mock.set_recording(!cli.no_record);
    if let Some(path) = &cli.pid_file
        && let Err(error) = std::fs::write(path, format!("{}\n", std::process::id()))
    {
        eprintln!(
            "gem-proxy-mock: cannot write pid file {}: {error}",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    // Listen for signals before saying we are ready: a SIGTERM sent right after the line must
    // find the handler in place, not the default action.
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(error) => {
            eprintln!("gem-proxy-mock: cannot wait for signals: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "listening on {}", mock.base_url())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    signals.wait().await;
    drop(mock);
    if let Some(path) = &cli.pid_file {
        let _ = std::fs::remove_file(path);
    }
    ExitCode::SUCCESS
}

/// SIGTERM and SIGINT handlers, installed up front.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Resolves on SIGTERM or SIGINT.
    async fn wait(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
