//! How operator commands find and reach the coordinator, and small helpers
//! the control-plane commands share.
//!
//! Lookup order for the cluster directory: `--cluster`, `WMIG_CLUSTER`,
//! `.wmig`; for the coordinator address: `--coordinator`,
//! `WMIG_COORDINATOR`, then `coordinator = "..."` in the cluster's
//! `config.toml`, which `wmig coordinator` writes once it is listening.
//! Each may list several addresses, comma-separated (coordinators
//! replicated on etcd): commands reach whichever leads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use wmig_coordinator::ControlClient;
use wmig_net::{CertRole, ClusterDir, NetError, DEFAULT_CLUSTER_DIR};

/// Where the coordinator is and which cluster's certificates to use.
#[derive(clap::Args, Clone)]
pub struct ControlTarget {
    /// Coordinator address (default: the cluster's config.toml).
    #[arg(long, env = "WMIG_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Cluster directory with the CA and the operator's certificate.
    #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
    pub cluster: PathBuf,
}

impl ControlTarget {
    /// The coordinators' addresses (comma-separated: several replicated
    /// coordinators) from the flag, the environment or the cluster config.
    pub async fn addrs(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let addr = match &self.coordinator {
            Some(a) => a.clone(),
            None => ClusterDir::new(&self.cluster)
                .config()?
                .coordinator
                .with_context(|| {
                    format!(
                        "no coordinator address: pass --coordinator ADDR, set WMIG_COORDINATOR, \
                         or start `wmig up` / `wmig coordinator --cluster {}`, which records it \
                         in config.toml there",
                        self.cluster.display()
                    )
                })?,
        };
        let mut addrs = Vec::new();
        for a in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            addrs.push(resolve(a, "coordinator").await?);
        }
        anyhow::ensure!(
            !addrs.is_empty(),
            "the coordinator address is empty; give HOST:PORT (or several, comma-separated)"
        );
        Ok(addrs)
    }

    /// Connect as the operator, run `f` on the connection and close it: the
    /// shape of every one-shot operator command.
    pub fn with_client<T>(
        &self,
        f: impl AsyncFnOnce(&ControlClient) -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        crate::cmd::registry::runtime()?.block_on(async {
            let client = self.connect().await?;
            let r = f(&client).await;
            client.close();
            r
        })
    }

    /// Connect as the operator (or, from a directory issued for another
    /// identity, as that one: the coordinator then decides what it may do).
    pub async fn connect(&self) -> anyhow::Result<ControlClient> {
        let name = ClusterDir::new(&self.cluster).client_identity()?;
        self.connect_as(&name, CertRole::default_for(&name)).await
    }

    /// Connect with the identity of node `name` (the coordinator holds a
    /// node's requests to its own certificate), issued with `role` on first
    /// use where the CA key is.
    pub async fn connect_as(&self, name: &str, role: CertRole) -> anyhow::Result<ControlClient> {
        let addrs = self.addrs().await?;
        let creds = ClusterDir::new(&self.cluster)
            .credentials_as(name, role)
            .with_context(|| format!("no certificate for `{name}`"))?;
        match ControlClient::connect_cluster(&addrs, &creds, Duration::from_secs(5)).await {
            Ok(c) => Ok(c),
            // It answered, and refused our certificate: the error says why.
            Err(e @ wmig_coordinator::ControlError::Net(NetError::CertificateRefused { .. })) => {
                Err(e.into())
            }
            Err(e) => {
                let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                Err(anyhow::Error::new(e).context(format!(
                    "could not reach the coordinator at {}; is `wmig up` running?",
                    list.join(", ")
                )))
            }
        }
    }
}

/// `HOST:PORT` to a socket address, with an error that names the role.
pub async fn resolve(addr: &str, role: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut a| a.next())
        .with_context(|| format!("`{addr}` is not a usable {role} address (want HOST:PORT)"))
}

/// The address to tell clients: a server bound to 0.0.0.0 is reached on
/// loopback from this machine.
pub fn loopback_if_unspecified(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// `KEY=VALUE` for `--env` and `--label`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// A duration for humans: `850 ms`, `12.3 s`, `4 min`.
pub fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=119_999 => format!("{:.1} s", ms as f64 / 1000.0),
        _ => format!("{} min", ms / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("A=b=c"),
            Ok(("A".to_owned(), "b=c".to_owned()))
        );
        assert!(parse_key_value("=x").is_err());
        assert!(parse_key_value("novalue").is_err());
    }
}
