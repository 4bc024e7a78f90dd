//! The `gem-proxy` binary: parse the command line, load the config, serve.

fn main() -> std::process::ExitCode {
    gem_proxy::cli::run()
}
