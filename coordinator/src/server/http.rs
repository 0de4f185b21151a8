//! The coordinator's HTTP side: Prometheus text on `GET /metrics`, and the
//! JSON API with the dashboard ([`super::api`]).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Shared;
use crate::membership::Liveness;

pub(super) async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .merge(super::api::routes())
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let (stats, nodes) = {
        let mut core = shared.lock();
        (shared.stats(&mut core), shared.node_statuses(&core))
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP wmig_{name} {help}\n# TYPE wmig_{name} {kind}\nwmig_{name} {value}"
        );
    };
    gauge(
        "workers_online",
        "Workers that heartbeat in time.",
        "gauge",
        stats.workers_online.into(),
    );
    gauge(
        "workers_offline",
        "Workers declared offline.",
        "gauge",
        stats.workers_offline.into(),
    );
    gauge(
        "monitors_online",
        "Monitors online.",
        "gauge",
        stats.monitors_online.into(),
    );
    gauge(
        "slots",
        "Task slots of online workers.",
        "gauge",
        stats.slots.into(),
    );
    gauge(
        "tasks_pending",
        "Tasks waiting for a worker.",
        "gauge",
        stats.tasks_pending.into(),
    );
    gauge(
        "tasks_running",
        "Tasks running.",
        "gauge",
        stats.tasks_running.into(),
    );
    gauge(
        "tasks_completed_total",
        "Tasks that exited.",
        "counter",
        stats.tasks_completed,
    );
    gauge(
        "tasks_failed_total",
        "Tasks that failed.",
        "counter",
        stats.tasks_failed,
    );
    gauge(
        "tasks_cancelled_total",
        "Tasks cancelled.",
        "counter",
        stats.tasks_cancelled,
    );
    gauge(
        "checkpoints_total",
        "Checkpoints committed.",
        "counter",
        stats.checkpoints,
    );
    gauge(
        "output_bytes_total",
        "Task output bytes stored since start.",
        "counter",
        stats.output_bytes,
    );
    gauge(
        "events_total",
        "Events in the coordinator's log.",
        "counter",
        stats.events,
    );
    let _ = writeln!(
        out,
        "# HELP wmig_node_up Whether a node is online.\n# TYPE wmig_node_up gauge"
    );
    for n in &nodes {
        let up = u8::from(n.liveness == Liveness::Online);
        let _ = writeln!(
            out,
            "wmig_node_up{{node=\"{}\",role=\"{}\"}} {up}",
            n.name, n.role
        );
    }
    let _ = writeln!(
        out,
        "# HELP wmig_node_tasks Tasks running on a node.\n# TYPE wmig_node_tasks gauge"
    );
    for n in &nodes {
        let _ = writeln!(out, "wmig_node_tasks{{node=\"{}\"}} {}", n.name, n.tasks);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
