//! `wmig cert issue | renew | revoke | ls`: the cluster's identities, from
//! the machine that holds the cluster directory with the CA key.
//!
//! - `issue NAME --role ROLE [--days N] --out DIR`: an identity for another
//!   machine, without handing it the CA key.
//! - `renew NAME [--days N] [--out DIR]`: a fresh certificate for the same
//!   name and role.
//! - `revoke NAME [--serial HEX]`: add its certificates to `revoked.toml`;
//!   the coordinator and the registry refuse them from their next handshake
//!   or request on, without a restart.
//! - `ls [--json]`: every certificate issued here, with its role, serial,
//!   expiry and whether it is revoked.

use std::path::PathBuf;

use anyhow::Context;
use wmig_net::certs::format_utc;
use wmig_net::{CertRole, ClusterDir, Validity, DEFAULT_CLUSTER_DIR, DEFAULT_DAYS};

use crate::cmd::control::ControlTarget;
use crate::cmd::registry::runtime;

#[derive(clap::Args)]
pub struct CertCommand {
    #[command(subcommand)]
    action: CertAction,
}

/// Days a certificate may be valid at most (~100 years).
const MAX_DAYS: u32 = 36_500;

#[derive(clap::Subcommand)]
enum CertAction {
    /// Write a cluster directory for another machine: the CA certificate,
    /// a certificate and key for NAME with ROLE, and the cluster's
    /// addresses — not the CA key. There, `wmig worker --cluster DIR`
    /// joins as NAME (a monitor: `wmig monitor --cluster DIR`) and can act
    /// as nothing else.
    Issue {
        /// The node name the certificate is for (e.g. worker-7).
        name: String,
        /// What the holder may do: worker (runs tasks, speaks only for
        /// itself), monitor (reads), operator (acts on the cluster),
        /// registry or coordinator (the servers, named so).
        #[arg(long, default_value = "worker", value_parser = parse_role)]
        role: CertRole,
        /// Days the certificate is valid (0 issues one that is already
        /// expired, to check that it is refused).
        #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Where to write the new cluster directory (must not hold one).
        #[arg(long)]
        out: PathBuf,
        /// The coordinator's address as the other machine reaches it
        /// (default: the one this cluster recorded, which is loopback when
        /// the coordinator listens on every interface); comma-separated
        /// for coordinators replicated on etcd.
        #[arg(long)]
        coordinator: Option<String>,
        /// The registry's address as the other machine reaches it.
        #[arg(long)]
        registry: Option<String>,
        /// This cluster's directory (holds the CA key).
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
    /// Issue a fresh certificate for NAME with the same role (the old one
    /// stays valid until it expires, unless revoked).
    Renew {
        name: String,
        /// Days the new certificate is valid.
        #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Write it into this directory for another machine (a new one, or
        /// one this cluster issued before, whose certificate is replaced);
        /// default: this cluster's certs/ (the local nodes').
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
    /// Revoke NAME's certificates: the coordinator and the registry refuse
    /// them from their next connection or request on.
    Revoke {
        name: String,
        /// Only the certificate with this serial number (hex, as `wmig cert
        /// ls` shows it); default: every certificate issued to NAME.
        #[arg(long)]
        serial: Option<String>,
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
    /// TLS files for etcd members: the CA certificate, and a certificate
    /// and key valid for the members' addresses, for `etcd --cert-file
    /// --key-file --trusted-ca-file --client-cert-auth` (and the same for
    /// `--peer-…`). Coordinators then dial `https://` endpoints with their
    /// own certificate, and etcd admits only this cluster's.
    Etcd {
        /// Every address clients and peers dial the members on
        /// (comma-separated or repeated).
        #[arg(long, required = true, value_delimiter = ',')]
        ip: Vec<std::net::IpAddr>,
        #[arg(long, default_value_t = DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DAYS)))]
        days: u32,
        /// Where to write ca.pem, etcd.pem and etcd.key.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
    /// List the certificates this cluster issued: name, role, serial,
    /// expiry, revoked or not.
    Ls {
        #[arg(long)]
        json: bool,
        #[arg(long, env = "WMIG_CLUSTER", default_value = DEFAULT_CLUSTER_DIR)]
        cluster: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<CertRole, String> {
    s.parse()
}

/// What to run with a directory issued for `role`.
fn hint(role: CertRole, out: &std::path::Path) -> String {
    let dir = out.display();
    match role {
        CertRole::Worker => format!("wmig worker --cluster {dir}"),
        CertRole::Monitor => format!("wmig monitor --cluster {dir}"),
        CertRole::Operator => format!("wmig ps --cluster {dir} (and every operator command)"),
        CertRole::Registry => format!("wmig registry serve --cluster {dir}"),
        CertRole::Coordinator => format!("wmig coordinator --cluster {dir}"),
    }
}

impl CertCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        match self.action {
            CertAction::Issue {
                name,
                role,
                days,
                out,
                coordinator,
                registry,
                cluster,
            } => {
                let coordinators = coordinator.iter().flat_map(|c| c.split(','));
                for addr in coordinators.chain(registry.iter().map(String::as_str)) {
                    anyhow::ensure!(
                        addr.rsplit_once(':')
                            .is_some_and(|(host, port)| !host.is_empty()
                                && port.parse::<u16>().is_ok_and(|p| p > 0)),
                        "`{addr}` is not HOST:PORT (e.g. 10.0.0.5:7700)"
                    );
                }
                let (_, issued) = ClusterDir::new(&cluster)
                    .export_identity(&name, role, Validity::days(days), &out)
                    .with_context(|| {
                        format!(
                            "could not issue `{name}` from the cluster in {}",
                            cluster.display()
                        )
                    })?;
                if coordinator.is_some() || registry.is_some() {
                    ClusterDir::new(&out).update_config(|c| {
                        if let Some(a) = coordinator {
                            c.coordinator = Some(a);
                        }
                        if let Some(a) = registry {
                            c.registry = Some(a);
                        }
                    })?;
                }
                let r = &issued.record;
                println!(
                    "wrote {}: CA certificate, identity `{name}` ({role}, serial {}, valid until \
                     {}), config.toml (no CA key); on the other machine: {}",
                    out.display(),
                    r.serial,
                    format_utc(r.not_after),
                    hint(role, &out)
                );
                Ok(0)
            }
            CertAction::Renew {
                name,
                days,
                out,
                cluster,
            } => {
                let dir = ClusterDir::new(&cluster);
                let before = dir.issued()?.into_iter().rev().find(|r| r.name == name);
                let issued = dir
                    .renew(&name, Validity::days(days), out.as_deref())
                    .with_context(|| {
                        format!(
                            "could not renew `{name}` from the cluster in {}",
                            cluster.display()
                        )
                    })?;
                let r = &issued.record;
                let place = match &out {
                    Some(o) => format!("written to {}", o.display()),
                    None => format!(
                        "stored in {}",
                        cluster.join("certs").join(format!("{name}.pem")).display()
                    ),
                };
                println!(
                    "renewed `{name}` ({}, serial {}, valid until {}): {place}",
                    r.role,
                    r.serial,
                    format_utc(r.not_after)
                );
                if let Some(old) = before {
                    println!(
                        "the previous certificate (serial {}) stays valid until {}; \
                         `wmig cert revoke {name} --serial {}` ends it now",
                        old.serial,
                        format_utc(old.not_after),
                        old.serial
                    );
                }
                Ok(0)
            }
            CertAction::Revoke {
                name,
                serial,
                cluster,
            } => {
                let added = ClusterDir::new(&cluster)
                    .revoke(&name, serial.as_deref())
                    .with_context(|| {
                        format!(
                            "could not revoke `{name}` in the cluster in {}",
                            cluster.display()
                        )
                    })?;
                if added.is_empty() {
                    println!("`{name}`: those certificates were already revoked");
                } else {
                    let serials: Vec<&str> = added.iter().map(|r| r.serial.as_str()).collect();
                    println!(
                        "revoked `{name}` (serial {}); servers sharing {} refuse it from its \
                         next connection or request on",
                        serials.join(", "),
                        cluster.display()
                    );
                }
                // Servers on other machines learn it from the coordinator,
                // which passes its whole list on to the registry and every
                // worker. Sent even when nothing was new here: a list that
                // did not get through last time gets another chance.
                let all = ClusterDir::new(&cluster).revoked()?;
                let target = ControlTarget {
                    coordinator: None,
                    cluster: cluster.clone(),
                };
                let pushed = runtime()?.block_on(async {
                    let client = target.connect().await?;
                    let revoked = all.into_iter().map(Into::into).collect();
                    let answer = client
                        .ask(&wmig_coordinator::wire::ControlRequest::Revocations { revoked })
                        .await;
                    client.close();
                    answer.map_err(anyhow::Error::new)
                });
                match pushed {
                    Ok(_) => println!(
                        "the coordinator has the list and passes it on to the registry and every \
                         worker, wherever they run"
                    ),
                    Err(e) => eprintln!(
                        "warning: could not pass the list on through the coordinator ({e:#}); \
                         servers on other machines refuse `{name}` once this command reaches the \
                         coordinator (run it again) or revoked.toml is copied to them"
                    ),
                }
                Ok(0)
            }
            CertAction::Etcd {
                ip,
                days,
                out,
                cluster,
            } => {
                let tls = ClusterDir::new(&cluster)
                    .etcd_tls(&ip, Validity::days(days), &out)
                    .with_context(|| {
                        format!(
                            "could not issue etcd's certificate from {}",
                            cluster.display()
                        )
                    })?;
                println!(
                    "etcd --client-cert-auth --trusted-ca-file {ca} --cert-file {cert} --key-file {key} \\\n  --peer-client-cert-auth --peer-trusted-ca-file {ca} --peer-cert-file {cert} --peer-key-file {key} ...",
                    ca = tls.ca.display(),
                    cert = tls.cert.display(),
                    key = tls.key.display()
                );
                Ok(0)
            }
            CertAction::Ls { json, cluster } => {
                let dir = ClusterDir::new(&cluster);
                let issued = dir.issued()?;
                let revoked = dir.revoked()?;
                let now = wmig_net::certs::unix_now();
                let rows: Vec<(wmig_net::CertRecord, String)> = issued
                    .into_iter()
                    .map(|r| {
                        let status = match revoked.iter().find(|x| x.serial == r.serial) {
                            Some(x) => format!("revoked {}", format_utc(x.revoked_at)),
                            None if r.not_after < now => "expired".to_owned(),
                            None => "valid".to_owned(),
                        };
                        (r, status)
                    })
                    .collect();
                if json {
                    let list: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|(r, status)| {
                            serde_json::json!({
                                "name": r.name,
                                "role": r.role.as_str(),
                                "serial": r.serial,
                                "not_before": r.not_before,
                                "not_after": r.not_after,
                                "revoked": status.starts_with("revoked"),
                                "status": status,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&list)?);
                    return Ok(0);
                }
                if rows.is_empty() {
                    println!(
                        "no certificates recorded in {} (certificates issued before wmig kept \
                         an index are not listed)",
                        cluster.join("issued.toml").display()
                    );
                    return Ok(0);
                }
                let width = rows
                    .iter()
                    .map(|(r, _)| r.name.len())
                    .max()
                    .unwrap_or(4)
                    .max(4);
                println!(
                    "{:width$}  {:11}  {:32}  {:20}  STATUS",
                    "NAME", "ROLE", "SERIAL", "NOT AFTER"
                );
                for (r, status) in &rows {
                    println!(
                        "{:width$}  {:11}  {:32}  {:20}  {status}",
                        r.name,
                        r.role.as_str(),
                        r.serial,
                        format_utc(r.not_after)
                    );
                }
                Ok(0)
            }
        }
    }
}
