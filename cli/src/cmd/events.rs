//! `wmig events [-f]` (the coordinator's decisions) and `wmig monitor`
//! (a monitor node: the live stream of events, output and statistics).

use std::time::Duration;

use wmig_coordinator::wire::{ControlRequest, ControlResponse, MonitorItem, Stream};
use wmig_coordinator::{ControlClient, NodeInfo, Role};
use wmig_proto::NodeId;

use wmig_net::{CertRole, ClusterDir};

use crate::cmd::control::ControlTarget;
use crate::cmd::registry::runtime;

#[derive(clap::Args)]
pub struct EventsCommand {
    /// Keep printing new events as they happen.
    #[arg(short, long)]
    follow: bool,
    /// Start at this event number.
    #[arg(long, default_value_t = 0)]
    from: u64,
    #[command(flatten)]
    target: ControlTarget,
}

impl EventsCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        self.target
            .with_client(async |c| print_stream(c, self.from, self.follow, false).await)?;
        Ok(0)
    }
}

#[derive(clap::Args)]
pub struct MonitorCommand {
    /// This monitor's node name (default: the identity the cluster
    /// directory was issued for, else monitor-<pid>).
    #[arg(long)]
    name: Option<String>,
    #[command(flatten)]
    target: ControlTarget,
}

impl MonitorCommand {
    pub fn execute(self) -> anyhow::Result<i32> {
        runtime()?.block_on(async {
            let issued_for = ClusterDir::new(&self.target.cluster).config()?.identity;
            let name = NodeId(
                self.name
                    .clone()
                    .or(issued_for)
                    .unwrap_or_else(|| format!("monitor-{}", std::process::id())),
            );
            // A monitor is a node: it registers and heartbeats as itself
            // (with a monitor certificate, issued here if the CA key is).
            let client = self.target.connect_as(&name.0, CertRole::Monitor).await?;
            let info = NodeInfo {
                name: name.clone(),
                role: Role::Monitor,
                slots: 0,
                labels: Default::default(),
                addr: String::new(),
                pid: std::process::id(),
            };
            let beat = match client.ask(&ControlRequest::Register(info)).await? {
                ControlResponse::Registered { heartbeat_ms, .. } => heartbeat_ms.max(50),
                other => anyhow::bail!("unexpected answer to Register: {other:?}"),
            };
            eprintln!("monitoring as {name} (Ctrl-C to stop)");
            let heartbeats = async {
                let mut every = tokio::time::interval(Duration::from_millis(beat));
                loop {
                    every.tick().await;
                    if let Err(e) = client.heartbeat(&name, Vec::new()).await {
                        eprintln!("heartbeat failed: {e}");
                    }
                }
            };
            let r = tokio::select! {
                r = print_stream(&client, 0, true, true) => r,
                _ = heartbeats => Ok(()),
                _ = crate::cmd::control::shutdown_signal() => Ok(()),
            };
            client.close();
            r
        })?;
        Ok(0)
    }
}

async fn print_stream(
    client: &ControlClient,
    from: u64,
    follow: bool,
    live: bool,
) -> anyhow::Result<()> {
    let mut sub = client
        .subscribe(&ControlRequest::Events { from, follow })
        .await?;
    while let Some(resp) = sub.next().await? {
        let ControlResponse::Monitor(item) = resp else {
            anyhow::bail!("unexpected message on the events stream: {resp:?}");
        };
        match *item {
            MonitorItem::Event { seq, at_ms, event } => {
                println!("#{seq:<5} {} {}", clock(at_ms), event.describe());
            }
            MonitorItem::Output(chunk) if live => {
                let text = String::from_utf8_lossy(&chunk.bytes);
                let tag = match chunk.stream {
                    Stream::Stdout => "out",
                    Stream::Stderr => "err",
                };
                for line in text.lines() {
                    println!("       {} {tag}   {line}", chunk.task);
                }
            }
            MonitorItem::Stats(s) if live => println!(
                "       stats: {} workers online ({} offline), {} running, {} pending, \
                 {} completed, {} failed, {} checkpoints",
                s.workers_online,
                s.workers_offline,
                s.tasks_running,
                s.tasks_pending,
                s.tasks_completed,
                s.tasks_failed,
                s.checkpoints
            ),
            MonitorItem::Migrated(r) if live => println!(
                "       migrated {} {} -> {}: downtime {:.1} ms, total {:.1} ms",
                r.task, r.from, r.to, r.downtime_ms, r.total_ms
            ),
            MonitorItem::Recovered(r) if live => println!(
                "       recovered {} {} -> {} from {}: downtime {:.1} ms",
                r.task,
                r.from,
                r.to,
                r.checkpoint_seq.map_or_else(
                    || "the start".to_owned(),
                    |s| format!("#{}", wmig_proto::checkpoint::seq_label(s))
                ),
                r.downtime_ms
            ),
            _ => {}
        }
    }
    Ok(())
}

/// `HH:MM:SS.mmm` UTC, or blanks for events replayed from before a restart.
fn clock(at_ms: u64) -> String {
    if at_ms == 0 {
        return " ".repeat(12);
    }
    let day_ms = at_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}
