//! What a coordinator that does not lead answers, on its control port and
//! its HTTP port, while it waits to be elected: where the leader is, and
//! nothing else. It holds no state, so it can neither serve stale reads nor
//! accept a write that the leader would not know about.

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use tokio::sync::watch;
use wmig_net::stream::{read_frame, timed, write_frame};
use wmig_proto::frame::MAX_FRAME_LEN;
use wmig_proto::wire::{ErrorCode, RemoteError};

use super::replica::CoordinatorRecord;
use crate::wire::{ControlRequest, ControlResponse};

type Leader = watch::Receiver<Option<CoordinatorRecord>>;

/// Answer requests on `endpoint` (and redirect HTTP on `http`) with the
/// leader's address until this future is dropped. Connections end with it,
/// so clients connect again and find the new leader (this one, once
/// elected).
pub async fn serve_follower(
    endpoint: quinn::Endpoint,
    http: Option<std::net::TcpListener>,
    me: String,
    leader: Leader,
) {
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(listener) = http.and_then(|l| {
        l.set_nonblocking(true).ok()?;
        tokio::net::TcpListener::from_std(l).ok()
    }) {
        tasks.spawn(serve_http(listener, leader.clone()));
    }
    let me: Arc<str> = me.into();
    while let Some(incoming) = endpoint.accept().await {
        let (me, leader) = (me.clone(), leader.clone());
        tasks.spawn(async move {
            let Some(conn) = wmig_net::accept(incoming).await else {
                return;
            };
            let mut streams = tokio::task::JoinSet::new();
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let (me, leader) = (me.clone(), leader.clone());
                streams.spawn(async move {
                    let Ok(req) = timed(
                        std::time::Duration::from_secs(10),
                        read_frame::<ControlRequest>(&mut recv, MAX_FRAME_LEN),
                    )
                    .await
                    else {
                        return;
                    };
                    let response = answer(&req, &me, &leader.borrow());
                    if write_frame(&mut send, &response).await.is_ok() {
                        let _ = send.finish();
                    }
                });
            }
        });
    }
}

fn answer(req: &ControlRequest, me: &str, leader: &Option<CoordinatorRecord>) -> ControlResponse {
    match req {
        ControlRequest::WhoLeads => ControlResponse::Leader {
            is_leader: false,
            leader: leader.as_ref().map(|l| l.addr.clone()),
        },
        _ => ControlResponse::Error(RemoteError::new(
            ErrorCode::NotLeader,
            not_leader(me, leader),
        )),
    }
}

fn not_leader(me: &str, leader: &Option<CoordinatorRecord>) -> String {
    match leader {
        Some(l) => format!(
            "coordinator {me} is a follower; the leader is {} at {}: give every coordinator's \
             address (comma-separated --coordinator) and wmig finds it",
            l.name, l.addr
        ),
        None => format!(
            "coordinator {me} is a follower and no coordinator leads right now (an election \
             takes a few seconds after a leader stops); retry"
        ),
    }
}

/// Every HTTP request: a temporary redirect to the leader's HTTP address,
/// or 503 while there is none.
async fn serve_http(listener: tokio::net::TcpListener, leader: Leader) {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let leader = leader.borrow().clone();
        async move {
            match leader.as_ref().and_then(|l| l.http.clone()) {
                Some(http) => {
                    let path = uri.path_and_query().map_or("/", |p| p.as_str());
                    (
                        StatusCode::TEMPORARY_REDIRECT,
                        [(header::LOCATION, format!("http://{http}{path}"))],
                    )
                        .into_response()
                }
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "error": "not_leader",
                        "message": "this coordinator follows and no coordinator leads right now; retry in a few seconds",
                    })),
                )
                    .into_response(),
            }
        }
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "follower HTTP server stopped");
    }
}
