//! Heartbeats on a thread of their own, over a connection of their own.
//!
//! The worker's runtime also drives its uploads: a checkpoint of hundreds
//! of MiB is encrypted and sent by the QUIC driver on that runtime, and
//! several at once can keep its threads busy for seconds. A heartbeat
//! queued behind them arrives late, and the coordinator declares a healthy
//! worker offline (and the worker, hearing nothing back, fences itself).
//! So the heartbeat has its own OS thread, its own single-threaded runtime
//! and its own QUIC connection to the coordinator the session registered
//! with: nothing else the worker does runs there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use wmig_client::{ControlClient, ControlError};
use wmig_proto::wire::ErrorCode;

use crate::{fence, Worker};

/// The running heartbeat thread; dropping it stops the thread.
pub(crate) struct Pulse {
    _stop: oneshot::Sender<()>,
}

/// Heartbeat `coordinator` every `every` from a new thread. What ends the
/// session (the coordinator forgot this node, or stopped answering while
/// the worker is fenced) arrives on `ended`.
pub(crate) fn start(
    worker: Arc<Worker>,
    coordinator: SocketAddr,
    every: Duration,
    patience: Duration,
    ended: mpsc::UnboundedSender<anyhow::Error>,
) -> std::io::Result<Pulse> {
    let (stop_tx, stop) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("wmig-heartbeat".into())
        .spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    _ = stop => {}
                    why = beat(&worker, coordinator, every, patience) => {
                        let _ = ended.send(why);
                    }
                }
            });
        })?;
    Ok(Pulse { _stop: stop_tx })
}

/// Heartbeat until something ends the session; returns what did.
async fn beat(
    worker: &Worker,
    coordinator: SocketAddr,
    every: Duration,
    patience: Duration,
) -> anyhow::Error {
    let cfg = &worker.config;
    let client = match ControlClient::connect(coordinator, &cfg.creds, patience).await {
        Ok(c) => c,
        Err(e) => return anyhow::Error::new(e).context("the heartbeat connection failed"),
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every_ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    // When the coordinator wants the next check-in (0: at once).
    let mut due_ms = 0u64;
    loop {
        tick.tick().await;
        let sent = fence::now_ms();
        // Between check-ins the membership vouches for this worker, and
        // the leader's beacons for the leader; without fresh beacons (no
        // membership, or it lost the leader) check in every period, as a
        // plain heartbeat.
        let beacon_ms = worker
            .gossip
            .member()
            .map_or(0, |m| m.view().beacon_seen_ms());
        let vouched = beacon_ms > 0 && sent.saturating_sub(beacon_ms) < 2 * every_ms;
        if vouched && sent < due_ms && !worker.fence.is_fenced() {
            continue;
        }
        let answer = tokio::time::timeout(
            patience,
            client.heartbeat(&cfg.name, worker.running_tasks()),
        )
        .await
        .unwrap_or_else(|_| Err(ControlError::from(wmig_net::NetError::Timeout(patience))));
        match answer {
            Ok(answer) => {
                due_ms =
                    sent.saturating_add(u64::try_from(answer.next.as_millis()).unwrap_or(u64::MAX));
                for (task, epoch) in answer.stale {
                    tracing::warn!(%task, epoch, "no longer ours (fenced); dropping it");
                    worker.drop_task(task, epoch);
                }
                // After the drops: a task that moved on never runs another
                // instruction here.
                if worker.fence.heard(sent) {
                    tracing::info!("the coordinator answers again: tasks still ours carry on");
                }
            }
            // The coordinator forgot us (fresh log): register again.
            Err(ControlError::Remote(e)) if e.code == ErrorCode::NotFound => return e.into(),
            Err(e) if client.is_closed() => return e.into(),
            // Fenced: the connection may be to a coordinator that is gone
            // (one restarted on the same address does not know it); a new
            // one finds out at once.
            Err(e) if worker.fence.is_fenced() => {
                return anyhow::Error::new(e)
                    .context("no answer from the coordinator for most of its offline timeout")
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}
