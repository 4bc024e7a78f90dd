//! The `gem-proxy` binary: parse the command line, load the config, serve.

/// mimalloc as the global allocator (feature `mimalloc`, on by default): the request path
/// allocates a few dozen times per request, and glibc's allocator was a tenth of its instructions.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gem_proxy::cli::run()
}
