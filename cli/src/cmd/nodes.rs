//! `wmig nodes`, `wmig drain WORKER`, `wmig uncordon WORKER`.

use anyhow::Context;
use wmig_coordinator::wire::{ControlRequest, ControlResponse};
use wmig_coordinator::{Liveness, Role};
use wmig_proto::NodeId;

use crate::cmd::control::{ago, ControlTarget};
use crate::cmd::registry::runtime;

#[derive(clap::Args)]
pub struct NodesCommand {
    /// Machine-readable output.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: ControlTarget,
}

impl NodesCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let nodes = self.target.with_client(async |c| Ok(c.nodes().await?))?;
        let registries = registry_members(&self.target);
        if self.json {
            let mut all: Vec<_> = nodes
                .iter()
                .map(wmig_coordinator::server::api::node_json)
                .collect();
            all.extend(registries.iter().map(|m| {
                serde_json::json!({
                    "name": m.name,
                    "role": "registry",
                    "state": if m.alive { "online" } else { "offline" },
                    "addr": m.addr.to_string(),
                    "pid": m.pid,
                })
            }));
            println!("{}", serde_json::to_string_pretty(&all)?);
            return Ok(0);
        }
        if nodes.is_empty() {
            eprintln!("no nodes registered; `wmig up` or `wmig worker` starts one");
            return Ok(0);
        }
        println!(
            "{:<14} {:<11} {:<9} {:>7} {:>14} {:>8}  ADDRESS",
            "NAME", "ROLE", "STATE", "TASKS", "LAST HEARTBEAT", "PID"
        );
        for n in &nodes {
            let state = if n.draining && n.liveness == Liveness::Online {
                "draining"
            } else if n.role == Role::Coordinator {
                if n.leader {
                    "leader"
                } else {
                    "follower"
                }
            } else {
                liveness(n.liveness)
            };
            let (tasks, seen) = match n.role {
                // Coordinators run no tasks and send no heartbeats.
                Role::Coordinator => ("-".to_owned(), "-".to_owned()),
                _ => (
                    format!("{}/{}", n.tasks, n.slots),
                    format!("{} ago", ago(n.last_seen_ms)),
                ),
            };
            println!(
                "{:<14} {:<11} {:<9} {:>7} {:>14} {:>8}  {}",
                n.name.0,
                n.role.to_string(),
                state,
                tasks,
                seen,
                n.pid,
                if n.addr.is_empty() { "-" } else { &n.addr }
            );
        }
        for m in &registries {
            println!(
                "{:<14} {:<11} {:<9} {:>7} {:>14} {:>8}  {}",
                m.name,
                "registry",
                if m.alive { "online" } else { "offline" },
                "-",
                "-",
                m.pid,
                m.addr
            );
        }
        Ok(0)
    }
}

/// The nodes of the cluster's registry ring, as any of them sees them
/// (none for a standalone registry, or when none answers: `wmig registry
/// members` says why). Asked only when the cluster lists several registry
/// addresses, so `wmig nodes` costs no extra handshake otherwise.
fn registry_members(target: &ControlTarget) -> Vec<wmig_proto::wire::registry::RingMember> {
    let listed = wmig_net::ClusterDir::new(&target.cluster)
        .config()
        .ok()
        .and_then(|c| c.registry)
        .is_some_and(|r| r.contains(','));
    if !listed {
        return Vec::new();
    }
    let t = crate::cmd::registry::Target::new(None, target.cluster.clone());
    let Ok(rt) = runtime() else {
        return Vec::new();
    };
    rt.block_on(async {
        match t.connect_with(std::time::Duration::from_secs(2)).await {
            Ok(c) => {
                let ring = c.ring();
                c.close().await;
                ring.members
            }
            Err(_) => Vec::new(),
        }
    })
}

pub(crate) fn liveness(l: Liveness) -> &'static str {
    match l {
        Liveness::Online => "online",
        Liveness::Offline => "offline",
    }
}

#[derive(clap::Args)]
pub struct RemoveCommand {
    /// The offline node's name (see `wmig nodes`).
    node: String,
    #[command(flatten)]
    target: ControlTarget,
}

impl RemoveCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        let node = NodeId(self.node.clone());
        self.target.with_client(async |c| {
            c.ask(&ControlRequest::Remove { node })
                .await
                .with_context(|| format!("could not remove {}", self.node))?;
            Ok(())
        })?;
        eprintln!("removed {}", self.node);
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct CordonCommand {
    /// The worker's name (see `wmig nodes`).
    worker: String,
    #[command(flatten)]
    target: ControlTarget,
}

impl CordonCommand {
    /// `drain` (`true`) or `uncordon` (`false`).
    pub fn execute(self, drain: bool) -> anyhow::Result<i32> {
        let node = NodeId(self.worker.clone());
        let answer = runtime()?.block_on(async {
            let client = self.target.connect().await?;
            let req = if drain {
                ControlRequest::Drain { node }
            } else {
                ControlRequest::Uncordon { node }
            };
            let r = client.ask_untimed(&req).await;
            client.close();
            anyhow::Ok(r?)
        })?;
        match answer {
            ControlResponse::Drained { moved, failed } => {
                for m in &moved {
                    println!(
                        "moved {} to {} (downtime {:.1} ms)",
                        m.task, m.to, m.downtime_ms
                    );
                }
                for f in &failed {
                    eprintln!("not moved: {f}");
                }
                eprintln!(
                    "{} takes no new tasks; `wmig uncordon {}` undoes it",
                    self.worker, self.worker
                );
                Ok(i32::from(!failed.is_empty()))
            }
            _ => {
                eprintln!("{} takes new tasks again", self.worker);
                Ok(0)
            }
        }
    }
}
