//! `wmig coordinator`: run the control plane (registration, heartbeats,
//! placement, the event log, task output, the monitor stream, `/metrics`,
//! the HTTP API and the dashboard).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use wmig_coordinator::server::api::ApiConfig;
use wmig_coordinator::server::replica::{CoordinatorRecord, EtcdConfig, Replica};
use wmig_coordinator::server::{gossip, serve_follower, GossipRole, RunEnd, Server, ServerConfig};
use wmig_coordinator::COORDINATOR_NODE;
use wmig_net::{ClusterDir, DEFAULT_CLUSTER_DIR};

use crate::cmd::control::{loopback_if_unspecified, shutdown_signal};
use crate::cmd::registry::{parse_duration, runtime};

#[derive(clap::Args)]
pub struct CoordinatorCommand {
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    cluster: PathBuf,
    /// Event log and task output (default: CLUSTER/coordinator; with
    /// --etcd, CLUSTER/coordinators/NAME, a cache of what etcd holds).
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
    /// etcd client URLs (comma-separated): run as one of several
    /// coordinators replicated there. One leads (elected with an etcd
    /// lease); the others point clients at it and take over within seconds
    /// when it stops. The event log, task output and input live in etcd.
    /// With `https://` URLs this coordinator shows etcd its certificate
    /// (see `wmig cert etcd`).
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    /// Every key in etcd lives under this prefix (several clusters can
    /// share one etcd).
    #[arg(long, default_value = "/wmig", requires = "etcd")]
    etcd_prefix: String,
    /// This coordinator's name among the replicated ones.
    #[arg(long, requires = "etcd")]
    name: Option<String>,
    /// The control address other machines reach this coordinator on
    /// (default: the listen address; loopback when it is 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// UDP address of this coordinator's member of the SWIM membership,
    /// which detects failed workers so that they need not heartbeat every
    /// second (open this port between all machines). `auto`: the listen
    /// address's IP, any free port; `off`: every worker heartbeats instead.
    #[arg(long, default_value = "auto")]
    gossip: String,
    /// Check-ins (heartbeats carrying task usage) to take per second at
    /// most: members of the SWIM membership are told to check in every
    /// NODES / this many seconds, so the coordinator's load stays flat as
    /// the cluster grows.
    #[arg(long, default_value_t = wmig_coordinator::server::CHECK_INS_PER_SEC)]
    check_ins_per_sec: f64,
}

impl CoordinatorCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(self.run())?;
        Ok(0)
    }

    async fn run(self) -> anyhow::Result<()> {
        let dir = ClusterDir::new(&self.cluster);
        let creds = dir.credentials(COORDINATOR_NODE)?;
        // Replicated coordinators keep only a cache of etcd's state, each
        // in its own directory.
        let data = self.data.clone().unwrap_or_else(|| match &self.name {
            Some(name) if !self.etcd.is_empty() => self.cluster.join("coordinators").join(name),
            _ if !self.etcd.is_empty() => self
                .cluster
                .join("coordinators")
                .join(format!("coordinator-{}", std::process::id())),
            _ => self.cluster.join("coordinator"),
        });
        anyhow::ensure!(
            self.heartbeat < self.offline_timeout,
            "--heartbeat ({:?}) must be shorter than --offline-timeout ({:?})",
            self.heartbeat,
            self.offline_timeout
        );
        let mut config = ServerConfig::new(data.clone());
        config.coordinator.membership.offline_timeout = self.offline_timeout.as_millis() as u64;
        config.heartbeat = self.heartbeat;
        anyhow::ensure!(
            self.check_ins_per_sec > 0.0,
            "--check-ins-per-sec must be above 0 (it was {})",
            self.check_ins_per_sec
        );
        config.check_ins_per_sec = self.check_ins_per_sec;
        config.coordinator.crash_budget = self.crash_budget;
        config.api = ApiConfig {
            token: Some(dir.operator_token()?),
            cluster: Some(dir.clone()),
        };
        // `wmig cert revoke` takes effect here without a restart: in the
        // handshake (the endpoint) and on open connections (the server).
        config.endpoint.revocations = Some(dir.revocations());
        let endpoint = wmig_net::server_endpoint(self.listen, &creds, &config.endpoint)?;
        let addr = loopback_if_unspecified(endpoint.local_addr()?);
        let advertise = self.advertise.clone().unwrap_or_else(|| addr.to_string());
        config.advertise = Some(advertise.clone());
        let gossip = self.gossip_socket(&advertise)?;
        let http = match self.http.as_str() {
            "off" => None,
            a => Some(
                std::net::TcpListener::bind(a)
                    .with_context(|| format!("could not listen for HTTP on {a}"))?,
            ),
        };
        let http_addr = match &http {
            Some(l) => Some(loopback_if_unspecified(l.local_addr()?)),
            None => None,
        };
        let tokio_http = |l: std::net::TcpListener| -> anyhow::Result<tokio::net::TcpListener> {
            l.set_nonblocking(true)?;
            Ok(tokio::net::TcpListener::from_std(l)?)
        };
        if !self.etcd.is_empty() {
            return self
                .run_replicated(config, endpoint, http, http_addr, advertise, gossip)
                .await;
        }
        if let Some((socket, at)) = gossip {
            std::fs::create_dir_all(&data)
                .with_context(|| format!("could not create {}", data.display()))?;
            let key = gossip::key_file(&data.join("gossip.key")).with_context(|| {
                format!(
                    "could not read or make {}",
                    data.join("gossip.key").display()
                )
            })?;
            config.gossip = Some(GossipRole::start(
                socket,
                COORDINATOR_NODE,
                at,
                key,
                self.offline_timeout,
                Vec::new(),
            )?);
        }
        let server = Server::open(config.clone()).with_context(|| {
            format!(
                "could not open the coordinator's state in {}",
                data.display()
            )
        })?;
        dir.update_config(|c| {
            c.coordinator = Some(addr.to_string());
            c.http = http_addr.map(|a| a.to_string());
        })?;
        println!("listening on {addr}");
        print_http(http_addr);
        std::io::stdout().flush()?;
        let http = http.map(tokio_http).transpose()?;
        server.run(endpoint, http, shutdown_signal()).await;
        eprintln!("coordinator stopped");
        Ok(())
    }
}

fn print_http(http_addr: Option<SocketAddr>) {
    if let Some(h) = http_addr {
        println!("metrics on http://{h}/metrics");
        println!(
            "dashboard and API on http://{h}/ (`wmig dashboard` prints the URL with the token)"
        );
    }
}

impl CoordinatorCommand {
    /// The bound gossip socket and the address members reach it at.
    fn gossip_socket(
        &self,
        advertise: &str,
    ) -> anyhow::Result<Option<(std::net::UdpSocket, SocketAddr)>> {
        let bind = match self.gossip.as_str() {
            "off" => return Ok(None),
            "auto" => SocketAddr::new(self.listen.ip(), 0),
            a => a.parse().with_context(|| {
                format!("--gossip {a:?} is not an address (IP:PORT), `auto` or `off`")
            })?,
        };
        let socket = std::net::UdpSocket::bind(bind)
            .with_context(|| format!("could not bind the gossip socket on {bind}"))?;
        let mut at = socket.local_addr()?;
        if at.ip().is_unspecified() {
            // Members reach it where clients reach the control port.
            let ip = advertise
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
            at.set_ip(ip);
        }
        Ok(Some((socket, at)))
    }

    /// One of several coordinators on etcd: follow until elected, then
    /// lead until stopped or deposed.
    async fn run_replicated(
        &self,
        mut config: ServerConfig,
        endpoint: wmig_net::Endpoint,
        http: Option<std::net::TcpListener>,
        http_addr: Option<SocketAddr>,
        advertise: String,
        gossip: Option<(std::net::UdpSocket, SocketAddr)>,
    ) -> anyhow::Result<()> {
        let name = self
            .name
            .clone()
            .unwrap_or_else(|| format!("coordinator-{}", std::process::id()));
        let me = CoordinatorRecord {
            name: name.clone(),
            addr: advertise,
            http: http_addr.map(|a| a.to_string()),
            pid: std::process::id(),
            gossip: gossip.as_ref().map(|(_, at)| *at),
        };
        let mut etcd = EtcdConfig::new(self.etcd.clone());
        etcd.prefix = self.etcd_prefix.trim_end_matches('/').to_owned();
        if self.etcd.iter().any(|u| u.starts_with("https://")) {
            // etcd admits this cluster's certificates only; ours says
            // coordinator.
            etcd.tls = Some(
                ClusterDir::new(&self.cluster)
                    .pem_identity(COORDINATOR_NODE)
                    .context("no coordinator certificate to show etcd")?,
            );
        }
        // Listening already: clients that come before etcd answers get "no
        // leader yet" rather than silence.
        println!(
            "listening on {}",
            loopback_if_unspecified(endpoint.local_addr()?)
        );
        print_http(http_addr);
        std::io::stdout().flush()?;
        let (leader_tx, leader_rx) = watch::channel(None);
        let follower_http = match &http {
            Some(l) => Some(l.try_clone()?),
            None => None,
        };
        let follower = tokio::spawn(serve_follower(
            endpoint.clone(),
            follower_http,
            name.clone(),
            leader_rx,
        ));
        let mut replica = Replica::join(etcd.clone(), me.clone(), Duration::from_secs(30))
            .await
            .context("could not join the coordinators in etcd")?;
        if let Some((socket, at)) = gossip {
            let key = replica
                .gossip_key(gossip::fresh_key()?)
                .await
                .context("could not read the cluster's gossip key from etcd")?;
            // Join the other coordinators; workers join through them all.
            let seeds = match replica.members().await {
                Ok(m) => m
                    .into_iter()
                    .filter_map(|c| c.gossip)
                    .filter(|g| *g != at)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "could not list the other coordinators; they find this one when they start");
                    Vec::new()
                }
            };
            config.gossip = Some(GossipRole::start(
                socket,
                &name,
                at,
                key,
                self.offline_timeout,
                seeds,
            )?);
        }
        let mut lost = replica.lost();
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut following: Option<String> = None;
        loop {
            match replica.campaign().await {
                Ok(true) => break,
                Ok(false) => match replica.leader().await {
                    Ok(leader) => {
                        let now = leader.as_ref().map(|l| format!("{} at {}", l.name, l.addr));
                        if now != following {
                            match &now {
                                Some(l) => tracing::info!(leader = %l, "following"),
                                None => tracing::info!("no leader; campaigning"),
                            }
                            following = now;
                        }
                        leader_tx.send_replace(leader);
                    }
                    Err(e) => tracing::warn!(error = %e, "could not read the leader from etcd"),
                },
                Err(e) => tracing::warn!(error = %e, "could not campaign in etcd; retrying"),
            }
            let lapsed = tokio::select! {
                _ = &mut shutdown => {
                    follower.abort();
                    replica.resign().await;
                    eprintln!("coordinator stopped");
                    return Ok(());
                }
                Ok(why) = lost.wait_for(Option::is_some) => why.clone(),
                _ = tokio::time::sleep(CAMPAIGN_EVERY) => None,
            };
            // A follower holds nothing a lapsed lease could make unsafe: it
            // takes a new one and carries on (etcd electing a new raft
            // leader can hold renewals back for longer than the lease).
            if let Some(why) = lapsed {
                tracing::warn!(reason = %why, "lost the etcd lease while following; joining again");
                replica = Replica::join(etcd.clone(), me.clone(), Duration::from_secs(30))
                    .await
                    .context("lost this coordinator's etcd lease while following and could not join again")?;
                lost = replica.lost();
            }
        }
        follower.abort();
        let _ = follower.await;
        let term = replica.term();
        let server = Server::open_replicated(config, replica)
            .await
            .context("elected, but could not load the cluster's state from etcd")?;
        tracing::info!(name = %name, term, "elected leader");
        eprintln!("{name} leads (etcd term {term})");
        let http = match http {
            Some(l) => {
                l.set_nonblocking(true)?;
                Some(tokio::net::TcpListener::from_std(l)?)
            }
            None => None,
        };
        match server.run(endpoint, http, shutdown).await {
            RunEnd::Shutdown => {
                eprintln!("coordinator stopped");
                Ok(())
            }
            RunEnd::SteppedDown(why) => anyhow::bail!(
                "{name} stopped leading: {why}; start it again and it follows the new leader"
            ),
        }
    }
}

/// How often a follower tries to take a free leadership (and refreshes
/// the leader it points clients at).
const CAMPAIGN_EVERY: Duration = Duration::from_millis(250);
