//! The command line: `serve` (the default), `check-config`, `token` and `health`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::auth::{Role, TokenRequest, issue_with_overrides, parse_ttl, unix_now};
use crate::config::document::ConfigDocument;
use crate::config::{Config, ConfigLoader};
use crate::gateway::{Gateway, Live};
use crate::server::Server;
use crate::time::utc_time;

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
    /// Issue a client token (HS256, signed with `auth.jwt_secret`) and print it on stdout.
    ///
    /// Example: `gem-proxy token --sub ci-bot --ttl 30d --models 'gemini-2.5-*' --rpm 60`.
    /// Clients use the token as their Gemini API key. Its id (`jti`, shown on stderr) can be
    /// listed in `auth.revoked_token_ids` to revoke it.
    Token(TokenArgs),
    /// Ask a gateway's health endpoint: exit 0 when it answers 2xx, 1 (saying why) otherwise.
    ///
    /// For container `HEALTHCHECK`s and scripts: `gem-proxy health --url
    /// http://127.0.0.1:9090/health/ready`. Reads no config file.
    Health(HealthArgs),
}

/// `gem-proxy health`.
#[derive(Debug, clap::Args)]
pub struct HealthArgs {
    /// The URL to ask (plain HTTP to the admin port, or HTTPS).
    #[arg(long, default_value = "http://127.0.0.1:9090/health/ready")]
    pub url: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_seconds: u64,
}

/// `gem-proxy token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The client's identity (`sub`): its rate limit and statistics are kept under this name.
    #[arg(long)]
    pub sub: String,
    /// How long the token is valid: a number with s, m, h, d or w (`30d`, `12h`).
    #[arg(long, default_value = "30d", value_parser = parse_ttl)]
    pub ttl: std::time::Duration,
    /// Models the client may call, as patterns (`gemini-2.5-*`); repeat or list several. Any
    /// model when left out.
    #[arg(long, num_args = 1.., value_name = "PATTERN")]
    pub models: Vec<String>,
    /// The client's own requests-per-minute limit (`0` = none); `auth.rate_limit_per_minute`
    /// when left out.
    #[arg(long)]
    pub rpm: Option<u32>,
    /// The client's tokens-per-minute budget (`0` = none).
    #[arg(long)]
    pub tpm: Option<u64>,
    /// The client's tokens-per-UTC-day budget (`0` = none); `auth.default_tokens_per_day` when
    /// left out.
    #[arg(long)]
    pub tpd: Option<u64>,
    /// Live API sessions the client may hold open at once (`0` = no limit).
    #[arg(long)]
    pub live_sessions: Option<u32>,
    /// `admin` lets the client use the admin API; `client` (the default) does not.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
    /// Request overrides for this client (the token's `overrides` claim): a JSON list of rules
    /// shaped like `gemini.overrides`, or `@FILE` for a file holding one, e.g.
    /// `'[{"match":{"models":["gemini-2.5-*"]},"set":{"generationConfig":{"thinkingConfig":{"thinkingBudget":0}}}}]'`.
    #[arg(long, value_name = "JSON|@FILE", value_parser = parse_overrides)]
    pub overrides: Option<OverrideRules>,
}

/// The rules of `--overrides`.
#[derive(Debug, Clone)]
pub struct OverrideRules(pub Vec<crate::config::OverrideRule>);

/// `--overrides`: a JSON list of override rules, inline or `@FILE`.
fn parse_overrides(value: &str) -> Result<OverrideRules, String> {
    let text = match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?,
        None => value.to_owned(),
    };
    serde_json::from_str(&text).map(OverrideRules).map_err(|e| {
        format!(
            "not a JSON list of override rules: {}",
            crate::config::clean_serde_message(&e.to_string())
        )
    })
}

/// `--role`: what the client may do besides calling the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    /// Calls the API only.
    Client,
    /// Also uses the admin API.
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Client => Role::Client,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Runs the command line; the process's exit code.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Health(args)) = &cli.command {
        return crate::probe::run(
            &args.url,
            std::time::Duration::from_secs(args.timeout_seconds),
        );
    }
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
        Command::Token(args) => token(&config, &args),
        Command::Health(args) => crate::probe::run(
            &args.url,
            std::time::Duration::from_secs(args.timeout_seconds),
        ),
        Command::Serve => match serve(config, &cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                eprintln!("gem-proxy: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints the token alone on stdout (so `TOKEN=$(gem-proxy token ...)` works) and what it
/// carries on stderr.
fn token(config: &Config, args: &TokenArgs) -> ExitCode {
    let req = TokenRequest {
        sub: args.sub.clone(),
        ttl: args.ttl,
        models: args.models.clone(),
        rpm: args.rpm,
        tpm: args.tpm,
        tpd: args.tpd,
        live_sessions: args.live_sessions,
        role: args.role.map_or(Role::Client, Role::from),
    };
    let overrides = args.overrides.as_ref().map_or(&[][..], |o| &o.0[..]);
    match issue_with_overrides(&config.auth, &req, overrides, unix_now()) {
        Ok(issued) => {
            println!("{}", issued.token);
            eprintln!(
                "token for sub {:?}: jti {}, expires {}, models {}, rpm {}{}, role {}{}{}",
                req.sub,
                issued.jti,
                utc_time(issued.expires_at),
                if req.models.is_empty() {
                    "any".to_owned()
                } else {
                    req.models.join(",")
                },
                req.rpm.map_or_else(
                    || "auth.rate_limit_per_minute".to_owned(),
                    |r| r.to_string()
                ),
                [
                    ("tpm", req.tpm),
                    ("tpd", req.tpd),
                    ("live_sessions", req.live_sessions.map(u64::from))
                ]
                .iter()
                .filter_map(|(name, v)| v.map(|v| format!(", {name} {v}")))
                .collect::<String>(),
                req.role.as_str(),
                match overrides.len() {
                    0 => String::new(),
                    n => format!(", {n} override rule(s)"),
                },
                if config.auth.enabled {
                    ""
                } else {
                    " (note: auth.enabled is false in this config)"
                },
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gem-proxy token: {e}");
            ExitCode::FAILURE
        }
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

fn serve(config: Config, path: &std::path::Path) -> anyhow::Result<()> {
    // The document before `${VAR}` expansion: admin changes are written back in this form.
    let document = std::fs::read_to_string(path)
        .map_err(anyhow::Error::from)
        .and_then(|text| ConfigDocument::from_yaml(&text).map_err(anyhow::Error::from))
        .with_context(|| format!("cannot read {}", path.display()))?;
    let path = path.to_path_buf();
    let loader = ConfigLoader::from_process_env();
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
        let gateway = Gateway::new(live);
        let usage = gateway.live().config.usage.clone();
        gateway
            .usage()
            .start(&usage, path.parent())
            .context("cannot start the usage history")?;
        gateway.usage().share(&usage, &gateway.live().config.state);
        gateway.set_config_source(Some(path), loader, document);
        // Handlers first: a SIGTERM right after "listening" must not meet the default action.
        let signals = ShutdownSignals::install().context("cannot listen for signals")?;
        let usage_to_flush = gateway
            .usage()
            .is_recording()
            .then(|| gateway.usage().clone());
        let server = Server::start_gateway(gateway).await?;
        signals.wait().await;
        tracing::info!("shutting down: no new connections; waiting for running requests");
        server.shutdown();
        server.wait().await;
        if let Some(usage) = usage_to_flush {
            // The last rows, so a restart finds them (not forever: the disk may be stuck).
            tokio::task::spawn_blocking(move || usage.flush(Duration::from_secs(5)))
                .await
                .ok();
        }
        tracing::info!("stopped");
        Ok(())
    })
}

/// SIGTERM and SIGINT handlers, installed before the listeners open.
struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn role_of(args: &[&str]) -> Result<Option<RoleArg>, clap::Error> {
        let cli = Cli::try_parse_from(["gem-proxy", "token", "--sub", "a"].iter().chain(args))?;
        match cli.command {
            Some(Command::Token(t)) => Ok(t.role),
            other => panic!("not the token command: {other:?}"),
        }
    }

    #[test]
    fn role_is_client_or_admin_and_nothing_else() {
        assert_eq!(role_of(&[]).unwrap(), None);
        assert_eq!(role_of(&["--role", "admin"]).unwrap(), Some(RoleArg::Admin));
        assert_eq!(
            role_of(&["--role", "client"]).unwrap(),
            Some(RoleArg::Client)
        );
        let err = role_of(&["--role", "root"]).unwrap_err().to_string();
        assert!(err.contains("possible values: client, admin"), "{err}");
        assert_eq!(Role::from(RoleArg::Admin), Role::Admin);
    }
}
