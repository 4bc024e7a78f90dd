//! `pingora-ref --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N] [--pool N]`
//!
//! Forwards every request unchanged to one upstream over plain HTTP/1.1 with a keepalive pool,
//! and streams answers back as they arrive. Nothing else: no filters, no logging, no cache.
//! Stops on SIGINT (fast) or SIGTERM (graceful).

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct PassThrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (arg(&args, "--listen"), arg(&args, "--upstream")) else {
        eprintln!(
            "usage: pingora-ref --listen ADDR:PORT --upstream ADDR:PORT [--threads N] [--pool N]"
        );
        std::process::exit(2);
    };
    let threads: usize = arg(&args, "--threads").map_or(1, |v| v.parse().expect("--threads"));
    let pool: usize = arg(&args, "--pool").map_or(1024, |v| v.parse().expect("--pool"));

    let mut conf = ServerConf::default();
    conf.threads = threads;
    conf.upstream_keepalive_pool_size = pool;
    conf.grace_period_seconds = Some(0);
    conf.graceful_shutdown_timeout_seconds = Some(1);
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, PassThrough { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    println!("listening on http://{listen}");
    server.run_forever();
}
