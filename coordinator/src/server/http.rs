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
    let shared_for_reads = shared.clone();
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .merge(super::api::routes())
        .with_state(shared);
    if listener.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
        app = app.layer(axum::middleware::from_fn(loopback_names_only));
    } else {
        app = app.layer(axum::middleware::from_fn_with_state(
            shared_for_reads,
            token_for_reads,
        ));
    }
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// Whether a `Host` header names this machine's loopback (`localhost`,
/// `127.0.0.1`, `[::1]`, with or without a port).
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// On a loopback listener, refuse requests addressed to any other name: a
/// web page elsewhere could otherwise point its own domain at 127.0.0.1
/// (DNS rebinding) and read the cluster through the visitor's browser.
async fn loopback_names_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if loopback_host(host) {
        return next.run(req).await;
    }
    let body = serde_json::json!({
        "error": format!(
            "this API listens on loopback and answers only requests addressed to it \
             (Host: {host:?} is not localhost, 127.0.0.1 or [::1]); to serve it under \
             another name, bind `wmig coordinator --http` to a non-loopback address"
        ),
        "code": "forbidden",
    });
    (axum::http::StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// On a listener beyond loopback, anyone on the network can connect: reads
/// (task args and output, the event stream, metrics) need the operator
/// token too, as `Authorization: Bearer TOKEN` or, for clients that cannot
/// set headers (`EventSource`), `?token=TOKEN`. Only the dashboard page
/// itself, which holds no data, is served without it.
async fn token_for_reads(
    State(shared): State<Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let expected = shared.config.api.token.as_deref().unwrap_or_default();
    let bearer = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let query = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let ok = !expected.is_empty()
        && [bearer, query]
            .into_iter()
            .flatten()
            .any(|t| super::api::same_token(t.as_bytes(), expected.as_bytes()));
    if ok || req.uri().path() == "/" {
        return next.run(req).await;
    }
    let body = serde_json::json!({
        "error": "this API listens beyond loopback, so reading it needs the operator token too: \
                  send `Authorization: Bearer TOKEN` (or `?token=TOKEN`) with the token in \
                  CLUSTER/operator.token; `wmig dashboard` prints a URL that carries it",
        "code": "unauthorized",
    });
    (axum::http::StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
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
    gauge(
        "check_ins_total",
        "Check-ins (heartbeats) answered.",
        "counter",
        shared.check_ins.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(g) = &shared.config.gossip {
        let view = g.member.view();
        gauge(
            "gossip_members",
            "Other active members of the SWIM membership, as this coordinator sees them.",
            "gauge",
            view.alive().len() as u64,
        );
        let (received, sent, rejected) = view.packets();
        gauge(
            "gossip_packets_received_total",
            "Membership packets received.",
            "counter",
            received,
        );
        gauge(
            "gossip_packets_sent_total",
            "Membership packets sent.",
            "counter",
            sent,
        );
        gauge(
            "gossip_packets_rejected_total",
            "Membership packets dropped as not authentic (no or another cluster's gossip key).",
            "counter",
            rejected,
        );
    }
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

#[cfg(test)]
mod tests {
    use super::loopback_host;

    #[test]
    fn only_loopback_names_pass() {
        for ok in [
            "127.0.0.1:7702",
            "localhost",
            "LOCALHOST:80",
            "[::1]:7702",
            "127.0.0.9",
        ] {
            assert!(loopback_host(ok), "{ok}");
        }
        for bad in [
            "evil.example:7702",
            "",
            "10.0.0.1:7702",
            "[2001:db8::1]:80",
            "localhost.evil",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
    }
}
