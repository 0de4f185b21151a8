//! `wmig coordinator`: run the control plane (registration, heartbeats,
//! placement, the event log, task output, the monitor stream, `/metrics`,
//! the HTTP API and the dashboard).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wmig_coordinator::server::api::ApiConfig;
use wmig_coordinator::server::{Server, ServerConfig};
use wmig_coordinator::COORDINATOR_NODE;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

use crate::cmd::control::{loopback_if_unspecified, shutdown_signal};
use crate::cmd::registry::{parse_duration, runtime};

#[derive(clap::Args)]
pub struct CoordinatorCommand {
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Event log and task output (default: CLUSTER/coordinator).
    #[arg(long)]
    data: Option<PathBuf>,
    /// QUIC address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7701")]
    listen: SocketAddr,
    /// HTTP address of `/metrics`; `off` disables it.
    #[arg(long, default_value = "127.0.0.1:7702")]
    http: String,
    /// A node silent this long is declared offline.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    offline_timeout: Duration,
    /// How often nodes heartbeat.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    heartbeat: Duration,
    /// A task whose worker goes offline this many times while running it
    /// fails instead of moving to another worker (0: no limit).
    #[arg(long, default_value_t = wmig_coordinator::state::DEFAULT_CRASH_BUDGET)]
    crash_budget: u32,
}

impl CoordinatorCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(self.run())?;
        Ok(0)
    }

    async fn run(self) -> anyhow::Result<()> {
        let dir = ClusterDir::new(&self.cluster);
        let creds = dir.credentials(COORDINATOR_NODE)?;
        let data = self
            .data
            .clone()
            .unwrap_or_else(|| self.cluster.join("coordinator"));
        anyhow::ensure!(
            self.heartbeat < self.offline_timeout,
            "--heartbeat ({:?}) must be shorter than --offline-timeout ({:?})",
            self.heartbeat,
            self.offline_timeout
        );
        let mut config = ServerConfig::new(data.clone());
        config.coordinator.membership.offline_timeout = self.offline_timeout.as_millis() as u64;
        config.heartbeat = self.heartbeat;
        config.coordinator.crash_budget = self.crash_budget;
        config.api = ApiConfig {
            token: Some(dir.operator_token()?),
            cluster: Some(dir.clone()),
        };
        // `wmig cert revoke` takes effect here without a restart: in the
        // handshake (the endpoint) and on open connections (the server).
        config.endpoint.revocations = Some(dir.revocations());
        let server = Server::open(config.clone()).with_context(|| {
            format!(
                "could not open the coordinator's state in {}",
                data.display()
            )
        })?;
        let endpoint = wmig_net::server_endpoint(self.listen, &creds, &config.endpoint)?;
        let addr = loopback_if_unspecified(endpoint.local_addr()?);
        let http = match self.http.as_str() {
            "off" => None,
            a => {
                let listener = tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("could not listen for HTTP on {a}"))?;
                Some(listener)
            }
        };
        let http_addr = match &http {
            Some(l) => Some(loopback_if_unspecified(l.local_addr()?)),
            None => None,
        };
        dir.update_config(|c| {
            c.coordinator = Some(addr.to_string());
            c.http = http_addr.map(|a| a.to_string());
        })?;
        println!("listening on {addr}");
        if let Some(h) = http_addr {
            println!("metrics on http://{h}/metrics");
            println!(
                "dashboard and API on http://{h}/ (`wmig dashboard` prints the URL with the token)"
            );
        }
        std::io::stdout().flush()?;
        server.run(endpoint, http, shutdown_signal()).await;
        eprintln!("coordinator stopped");
        Ok(())
    }
}
