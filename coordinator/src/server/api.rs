//! The coordinator's HTTP API (JSON) and the dashboard page that uses it,
//! on the same listener as `/metrics`.
//!
//! Every handler that the QUIC protocol also offers builds a
//! [`ControlRequest`] and goes through [`super::answer`], so the CLI and the
//! browser get the same decisions and the same error messages. Reads are
//! open to whoever reaches the listener (loopback unless the operator binds
//! it elsewhere); anything that changes the cluster needs the operator token
//! from the cluster directory as `Authorization: Bearer`. A bearer header,
//! unlike a cookie, is never attached by the browser on its own, so another
//! site cannot make a logged-in dashboard act (no CSRF).
//!
//! The description of all of it is `GET /api/openapi.json`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use wmig_net::ClusterDir;
use wmig_proto::checkpoint::seq_label;
use wmig_proto::wire::registry::BundleRef;
use wmig_proto::wire::{ErrorCode, RemoteError};
use wmig_proto::{NodeId, TaskId};
use wmig_registry::{ClientConfig, ClientError, RegistryClient};

use super::{answer, unix_ms, Shared};
use crate::membership::Liveness;
use crate::placement::Placement;
use crate::tasks::{TaskOptions, TaskSpec};
use crate::wire::{
    ClusterStats, ControlRequest, ControlResponse, MigrationReport, MonitorItem, NodeStatus,
    RecoveryReport, Stream as OutStream, TaskView,
};
use crate::{Event, COORDINATOR_NODE};

const DASHBOARD: &str = include_str!("dashboard.html");
const OPENAPI: &str = include_str!("openapi.json");

/// Logged events a new event-stream subscriber gets before the live ones.
const SSE_BACKLOG: usize = 100;
/// Largest output page.
const MAX_OUTPUT_PAGE: usize = 1 << 20;

/// What the API needs beyond the coordinator's own state.
#[derive(Clone, Debug, Default)]
pub struct ApiConfig {
    /// The operator's bearer token; without one the API is read-only.
    pub token: Option<String>,
    /// Where to find the registry (its address in `config.toml`) and the
    /// coordinator's certificate to reach it; without it, `/api/registry`
    /// and submissions by bundle name answer 503.
    pub cluster: Option<ClusterDir>,
}

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(dashboard))
        .route("/api/openapi.json", get(openapi))
        .route("/api/nodes", get(list_nodes))
        .route("/api/nodes/active", get(active_nodes))
        .route("/api/nodes/{name}", get(one_node).delete(remove_node))
        .route("/api/nodes/{name}/drain", post(drain))
        .route("/api/nodes/{name}/uncordon", post(uncordon))
        .route("/api/tasks", get(list_tasks).post(submit))
        .route("/api/tasks/{id}", get(one_task))
        .route("/api/tasks/{id}/output", get(output))
        .route("/api/tasks/{id}/files", get(files))
        .route("/api/tasks/{id}/files/{*path}", get(file))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/tasks/{id}/input", post(input))
        .route("/api/tasks/{id}/checkpoint", post(checkpoint))
        .route("/api/tasks/{id}/migrate", post(migrate))
        .route("/api/stats", get(stats))
        .route("/api/timeline", get(timeline))
        .route("/api/registry", get(registry))
        .route("/api/events", get(events))
        .fallback(unknown_route)
}

// --- errors ---------------------------------------------------------------

/// A JSON error: `{"error": "...", "code": "..."}` with a fitting status.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        let (status, code) = match e.code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::Invalid | ErrorCode::Malformed | ErrorCode::NotWasm => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            ErrorCode::Conflict | ErrorCode::MissingChunks | ErrorCode::HashMismatch => {
                (StatusCode::CONFLICT, "conflict")
            }
            ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            ErrorCode::Timeout => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ErrorCode::NotLeader => (StatusCode::SERVICE_UNAVAILABLE, "not_leader"),
            ErrorCode::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ErrorCode::UnsupportedVersion | ErrorCode::Internal => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message, "code": self.code }));
        (self.status, body).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok(value: Value) -> ApiResult {
    Ok(Json(value).into_response())
}

async fn unknown_route() -> ApiError {
    ApiError::not_found("no such endpoint; GET /api/openapi.json lists them all")
}

// --- authorization and input ---------------------------------------------

/// Whether `given` equals `expected`, in time that does not depend on where
/// they first differ.
pub(super) fn same_token(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// A request that carries the operator token: handlers that change the
/// cluster take one, so they cannot forget to check (and it runs before
/// the body is read).
struct Operator;

impl FromRequestParts<Arc<Shared>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, shared: &Arc<Shared>) -> Result<Self, ApiError> {
        authorize(shared, &parts.headers).map(|()| Operator)
    }
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = shared.config.api.token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this coordinator has no operator token, so its HTTP API is read-only; \
             start it with `wmig coordinator --cluster DIR` (the token is DIR/operator.token)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(t) if same_token(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong operator token: use the one in CLUSTER/operator.token \
             (`wmig dashboard` prints a URL that carries it)",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request changes the cluster and needs the operator token: send \
             `Authorization: Bearer TOKEN` with the token in CLUSTER/operator.token \
             (`wmig dashboard` prints a URL that carries it)",
        )),
    }
}

/// A body axum could not read (too large, cut short), as an API error
/// that says what and what to do.
fn unreadable(e: BytesRejection, what: &str, hint: &str) -> ApiError {
    let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        "too_large"
    } else {
        "invalid"
    };
    ApiError::new(
        e.status(),
        code,
        format!("could not read {what} ({}); {hint}", e.body_text()),
    )
}

/// A JSON body, with errors that say which field was wrong. An empty body
/// counts as `{}` so that requests without options need none.
fn body<T: DeserializeOwned>(raw: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let raw = raw.map_err(|e| {
        unreadable(
            e,
            "the request body",
            "requests to this API are small JSON documents",
        )
    })?;
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &raw
    };
    serde_json::from_slice(raw).map_err(|e| {
        ApiError::invalid(format!(
            "invalid JSON body: {e}; GET /api/openapi.json describes it"
        ))
    })
}

fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse().map_err(|_| {
        ApiError::invalid(format!(
            "`{raw}` is not a task id: use an id like t-1 from GET /api/tasks"
        ))
    })
}

async fn ask(shared: &Arc<Shared>, req: ControlRequest) -> Result<ControlResponse, ApiError> {
    Ok(answer(req, shared).await?)
}

fn unexpected(what: &str, r: &ControlResponse) -> ApiError {
    tracing::error!(?r, "unexpected answer to {what}");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("the coordinator gave an unexpected answer to {what}"),
    )
}

// --- JSON shapes (also what `wmig ... --json` prints) ----------------------

pub fn node_json(n: &NodeStatus) -> Value {
    json!({
        "name": n.name.0,
        "role": n.role.to_string(),
        "state": match n.liveness {
            Liveness::Online => "online",
            Liveness::Offline => "offline",
        },
        "draining": n.draining,
        "addr": n.addr,
        "pid": n.pid,
        "slots": n.slots,
        "tasks": n.tasks,
        "last_seen_ms": n.last_seen_ms,
        "leader": n.leader,
    })
}

pub fn task_json(t: &TaskView) -> Value {
    json!({
        "id": t.id.to_string(),
        "name": t.name,
        "bundle": t.bundle.to_string(),
        "args": t.args,
        "state": t.state.to_string(),
        "owner": t.owner.as_ref().map(|o| o.0.clone()),
        "epoch": t.epoch,
        "checkpoint_seq": t.checkpoint_seq,
        "checkpoint": t.checkpoint_seq.map(seq_label),
        "fuel_used": t.fuel_used,
        "memory_bytes": t.memory_bytes,
        "files_bytes": t.files_bytes,
        "files_limit": t.files_limit,
        "progress": t.progress.map(|(done, total)| json!({ "done": done, "total": total })),
        "exit_code": t.exit_code,
        "failure": t.failure,
        "stdout_bytes": t.stdout_bytes,
        "stderr_bytes": t.stderr_bytes,
        "started_us": t.started_us,
    })
}

pub fn migration_json(r: &MigrationReport) -> Value {
    json!({
        "kind": "migration",
        "task": r.task.to_string(),
        "from": r.from.0,
        "to": r.to.0,
        "downtime_ms": r.downtime_ms,
        "total_ms": r.total_ms,
        "precopy_bytes": r.precopy_bytes,
        "delta_bytes": r.delta_bytes,
        "resume_bytes": r.resume_bytes,
        "bytes_moved": r.precopy_bytes + r.delta_bytes + r.resume_bytes,
        "at_ms": r.at_ms,
        "phases_ms": r.phases_ms.iter().map(|(phase, ms)| json!({ "phase": phase, "ms": ms })).collect::<Vec<_>>(),
    })
}

fn recovery_json(r: &RecoveryReport) -> Value {
    json!({
        "kind": "recovery",
        "task": r.task.to_string(),
        "from": r.from.0,
        "to": r.to.0,
        "checkpoint": r.checkpoint_seq.map(seq_label),
        "downtime_ms": r.downtime_ms,
        "at_ms": r.at_ms,
    })
}

fn stats_json(s: &ClusterStats, at_ms: u64) -> Value {
    let mut v = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
    v["at_ms"] = at_ms.into();
    v
}

fn event_json(seq: u64, at_ms: u64, e: &Event) -> Value {
    json!({
        "seq": seq,
        "at_ms": at_ms,
        "kind": e.kind(),
        "node": e.node().map(|n| n.0.clone()),
        "task": e.task().map(|t| t.to_string()),
        "text": e.describe(),
    })
}

/// A migration or recovery as the timeline shows it.
fn timeline_json(item: &MonitorItem) -> Option<Value> {
    match item {
        MonitorItem::Migrated(r) => Some(migration_json(r)),
        MonitorItem::Recovered(r) => Some(recovery_json(r)),
        _ => None,
    }
}

// --- pages ----------------------------------------------------------------

async fn dashboard() -> Html<&'static str> {
    Html(DASHBOARD)
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// --- nodes ----------------------------------------------------------------

fn nodes(shared: &Shared) -> Vec<NodeStatus> {
    shared.node_statuses(&shared.lock())
}

async fn list_nodes(State(shared): State<Arc<Shared>>) -> ApiResult {
    ok(nodes(&shared).iter().map(node_json).collect())
}

async fn active_nodes(State(shared): State<Arc<Shared>>) -> ApiResult {
    ok(nodes(&shared)
        .iter()
        .filter(|n| n.liveness == Liveness::Online)
        .map(node_json)
        .collect())
}

async fn one_node(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> ApiResult {
    match nodes(&shared).iter().find(|n| n.name.0 == name) {
        Some(n) => ok(node_json(n)),
        None => Err(ApiError::not_found(format!(
            "unknown node `{name}`: GET /api/nodes lists the registered ones"
        ))),
    }
}

async fn remove_node(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(name): Path<String>,
) -> ApiResult {
    ask(
        &shared,
        ControlRequest::Remove {
            node: NodeId(name.clone()),
        },
    )
    .await?;
    ok(json!({ "removed": name }))
}

async fn drain(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(name): Path<String>,
) -> ApiResult {
    match ask(&shared, ControlRequest::Drain { node: NodeId(name) }).await? {
        ControlResponse::Drained { moved, failed } => ok(json!({
            "moved": moved.iter().map(migration_json).collect::<Vec<_>>(),
            "failed": failed,
        })),
        other => Err(unexpected("Drain", &other)),
    }
}

async fn uncordon(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(name): Path<String>,
) -> ApiResult {
    ask(&shared, ControlRequest::Uncordon { node: NodeId(name) }).await?;
    ok(json!({ "ok": true }))
}

// --- tasks ----------------------------------------------------------------

async fn list_tasks(State(shared): State<Arc<Shared>>) -> ApiResult {
    match ask(&shared, ControlRequest::ListTasks).await? {
        ControlResponse::Tasks(all) => ok(all.iter().map(task_json).collect()),
        other => Err(unexpected("ListTasks", &other)),
    }
}

async fn one_task(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    let task = task_id(&id)?;
    let view = shared.task_view(&mut shared.lock(), task)?;
    ok(task_json(&view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputQuery {
    stream: Option<String>,
    #[serde(default)]
    offset: u64,
    limit: Option<usize>,
    /// The operator token, checked before the handler (see `http.rs`).
    #[serde(rename = "token")]
    _token: Option<String>,
}

async fn output(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    query: Result<Query<OutputQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let task = task_id(&id)?;
    let Query(q) = query.map_err(|e| {
        ApiError::invalid(format!(
            "bad query: {}; use ?stream=stdout|stderr&offset=N&limit=N",
            e.body_text()
        ))
    })?;
    let stream = match q.stream.as_deref() {
        None | Some("stdout") => OutStream::Stdout,
        Some("stderr") => OutStream::Stderr,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "unknown stream `{other}`: use stdout or stderr"
            )))
        }
    };
    let limit = q.limit.unwrap_or(64 * 1024).clamp(1, MAX_OUTPUT_PAGE);
    let mut core = shared.lock();
    // The state first: if the task had ended, all its output is stored.
    let view = shared.task_view(&mut core, task)?;
    let bytes = core
        .outputs
        .read(task, stream, q.offset, limit)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let next = q.offset + bytes.len() as u64;
    let total = core.outputs.len(task, stream);
    ok(json!({
        "task": task.to_string(),
        "stream": stream.name(),
        "offset": q.offset,
        "next": next,
        "total": total,
        "data": String::from_utf8_lossy(&bytes),
        "state": view.state.to_string(),
        "ended": view.state.is_terminal() && next >= total,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    /// A bundle hash or `NAME[:TAG]` in the registry.
    bundle: String,
    /// The guest's arguments after argv[0] (which is the bundle's name).
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Run it on this worker (default: the least loaded).
    worker: Option<String>,
    /// Shown by `wmig ps` (default: what `bundle` says).
    name: Option<String>,
    checkpoint_every_ms: Option<u64>,
    memory_limit: Option<u64>,
    fuel_limit: Option<u64>,
    wall_limit_ms: Option<u64>,
    /// The task reads input sent later (`POST /api/tasks/{id}/input`).
    #[serde(default)]
    stdin: bool,
}

async fn submit(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let b: SubmitBody = body(raw)?;
    let wanted: BundleRef = b.bundle.parse().map_err(|e| {
        ApiError::invalid(format!(
            "`{}` is neither a bundle hash nor NAME[:TAG]: {e}",
            b.bundle
        ))
    })?;
    let client = registry_client(&shared).await?;
    let found = client.list_bundles().await;
    if found.is_err() {
        registry_failed(&shared).await;
    }
    let found = found
        .map_err(|e| ApiError::unavailable(format!("could not list the registry's bundles: {e}")))?
        .into_iter()
        .find(|info| match &wanted {
            BundleRef::Hash(h) => info.hash == *h,
            BundleRef::Name(n) => info.names.contains(n),
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "unknown bundle `{wanted}`: upload it with `wmig upload FILE.wasm --name NAME`, \
                 or see GET /api/registry for what is stored"
            ))
        })?;
    let name = b.name.unwrap_or_else(|| wanted.to_string());
    let mut args = vec![name.clone()];
    args.extend(b.args);
    let placement = match b.worker {
        Some(w) => Placement::Pinned(NodeId(w)),
        None => Placement::LeastLoaded,
    };
    let req = ControlRequest::Submit {
        spec: TaskSpec {
            bundle: found.hash,
            args,
            env: b.env,
        },
        options: TaskOptions {
            name,
            dirs: Vec::new(),
            memory_limit: b.memory_limit,
            fuel_limit: b.fuel_limit,
            wall_limit_ms: b.wall_limit_ms,
            checkpoint_every_ms: b.checkpoint_every_ms,
            stdin: b.stdin,
            ..TaskOptions::default()
        },
        placement,
    };
    match ask(&shared, req).await? {
        ControlResponse::Submitted { task, worker } => Ok((
            StatusCode::CREATED,
            Json(json!({ "task": task.to_string(), "worker": worker.map(|w| w.0) })),
        )
            .into_response()),
        other => Err(unexpected("Submit", &other)),
    }
}

async fn cancel(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult {
    task_command(&shared, &id, |task| ControlRequest::Cancel { task }).await
}

async fn checkpoint(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(id): Path<String>,
) -> ApiResult {
    task_command(&shared, &id, |task| ControlRequest::Checkpoint { task }).await
}

/// A request about one task that is answered with a plain `Ok`.
async fn task_command(
    shared: &Arc<Shared>,
    id: &str,
    request: impl FnOnce(TaskId) -> ControlRequest,
) -> ApiResult {
    ask(shared, request(task_id(id)?)).await?;
    ok(json!({ "ok": true }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputQuery {
    #[serde(default)]
    eof: bool,
    /// The operator token, checked before the handler (see `http.rs`).
    #[serde(rename = "token")]
    _token: Option<String>,
}

/// Append the raw body to the task's stdin (a task submitted with `stdin`).
async fn input(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(id): Path<String>,
    query: Result<Query<InputQuery>, axum::extract::rejection::QueryRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let task = task_id(&id)?;
    let Query(q) = query
        .map_err(|e| ApiError::invalid(format!("bad query: {}; use ?eof=true", e.body_text())))?;
    let bytes =
        raw.map_err(|e| unreadable(e, "the input", "send large input in several requests"))?;
    let req = ControlRequest::Input {
        task,
        offset: None,
        bytes: bytes.to_vec(),
        eof: q.eof,
    };
    match ask(&shared, req).await? {
        ControlResponse::InputStored { len } => ok(json!({ "len": len })),
        other => Err(unexpected("Input", &other)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateBody {
    /// The target worker.
    to: String,
    /// Pre-copy while the task runs (default), or pause at once.
    #[serde(default = "yes")]
    precopy: bool,
}

fn yes() -> bool {
    true
}

async fn migrate(
    State(shared): State<Arc<Shared>>,
    _: Operator,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let task = task_id(&id)?;
    let b: MigrateBody = body(raw)?;
    let req = ControlRequest::Migrate {
        task,
        to: NodeId(b.to),
        precopy: b.precopy,
    };
    match ask(&shared, req).await? {
        ControlResponse::Migrated(r) => ok(migration_json(&r)),
        other => Err(unexpected("Migrate", &other)),
    }
}

// --- cluster --------------------------------------------------------------

async fn stats(State(shared): State<Arc<Shared>>) -> ApiResult {
    let s = shared.stats(&mut shared.lock());
    ok(stats_json(&s, unix_ms()))
}

async fn timeline(State(shared): State<Arc<Shared>>) -> ApiResult {
    let core = shared.lock();
    ok(core.timeline.iter().filter_map(timeline_json).collect())
}

/// The registry connection, reused across requests (a QUIC handshake with
/// mutual TLS per request would dominate a submission).
pub(super) async fn registry_client(shared: &Shared) -> Result<RegistryClient, ApiError> {
    let mut cached = shared.registry.lock().await;
    if let Some(c) = cached.as_ref().filter(|c| !c.is_closed()) {
        return Ok(c.clone());
    }
    let client = connect_registry(shared).await?;
    *cached = Some(client.clone());
    Ok(client)
}

/// Forget the cached connection after a failure, so the next request
/// connects anew (the registry may have restarted on another port).
pub(super) async fn registry_failed(shared: &Shared) {
    *shared.registry.lock().await = None;
}

async fn connect_registry(shared: &Shared) -> Result<RegistryClient, ApiError> {
    let Some(dir) = &shared.config.api.cluster else {
        return Err(ApiError::unavailable(
            "this coordinator was started without a cluster directory, so it cannot reach the registry",
        ));
    };
    let addr = dir
        .config()
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .registry
        .ok_or_else(|| {
            ApiError::unavailable(
                "no registry address in the cluster's config.toml: start `wmig registry serve`",
            )
        })?;
    // One standalone registry, or any nodes of a ring.
    let mut socks = Vec::new();
    for a in addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let sock = tokio::net::lookup_host(a)
            .await
            .ok()
            .and_then(|mut s| s.next())
            .ok_or_else(|| {
                ApiError::unavailable(format!("the registry address `{a}` does not resolve"))
            })?;
        socks.push(sock);
    }
    let creds = dir
        .credentials(COORDINATOR_NODE)
        .map_err(|e| ApiError::unavailable(e.to_string()))?;
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    };
    RegistryClient::connect_any(&socks, &creds, config)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_GATEWAY,
                "unavailable",
                format!("could not reach the registry at {addr}: {e}"),
            )
        })
}

/// A task's trees: its final ones once it ended, else its latest
/// checkpoint's, else those it was submitted with; and which they are.
async fn task_trees(
    shared: &Shared,
    id: &str,
) -> Result<(Vec<wmig_proto::files::PreopenTree>, String, RegistryClient), ApiError> {
    let task = task_id(id)?;
    let view = shared.task_view(&mut shared.lock(), task)?;
    if view.files_limit.is_none() {
        return Err(ApiError::not_found(format!(
            "{task} has no files: only tasks submitted with --dir LOCAL::GUEST have files that travel"
        )));
    }
    let client = registry_client(shared).await?;
    let gateway =
        |e: ClientError| ApiError::unavailable(format!("the registry did not answer: {e}"));
    match client.manifest(task, None).await {
        Ok(m) if m.end => Ok((m.files, "final".into(), client)),
        Ok(m) => Ok((m.files, format!("checkpoint {}", seq_label(m.seq)), client)),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => {
            let mut trees = Vec::new();
            for (hash, guest) in view.trees {
                let (_, bytes) = client
                    .download_bundle(&wmig_proto::wire::registry::BundleRef::Hash(hash))
                    .await
                    .map_err(gateway)?;
                let tree = wmig_proto::files::FileTree::decode(&bytes)
                    .map_err(|e| ApiError::unavailable(format!("tree {hash}: {e}")))?;
                trees.push(wmig_proto::files::PreopenTree { guest, tree });
            }
            Ok((trees, "submitted".into(), client))
        }
        Err(e) => {
            registry_failed(shared).await;
            Err(gateway(e))
        }
    }
}

/// `GET /api/tasks/{id}/files`: every entry of the task's trees.
async fn files(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> ApiResult {
    use wmig_proto::files::Node;
    let (trees, from, _) = task_trees(&shared, &id).await?;
    let id = id.as_str();
    let entries: Vec<Value> = trees
        .iter()
        .flat_map(|p| {
            p.tree.entries.iter().map(move |e| {
                let path = format!("{}/{}", p.guest.trim_end_matches('/'), e.path);
                match &e.node {
                    Node::Dir => json!({ "path": path, "kind": "dir" }),
                    Node::File(f) => json!({
                        "path": path,
                        "kind": "file",
                        "len": f.len,
                        "url": format!("/api/tasks/{id}/files{path}"),
                    }),
                    Node::Symlink { target } => {
                        json!({ "path": path, "kind": "symlink", "target": target })
                    }
                }
            })
        })
        .collect();
    ok(json!({ "task": id, "from": from, "files": entries }))
}

/// `GET /api/tasks/{id}/files/{path}`: one file's bytes (`path` is the
/// guest path without its leading `/`, e.g. `data/out.txt`).
async fn file(
    State(shared): State<Arc<Shared>>,
    Path((id, path)): Path<(String, String)>,
) -> ApiResult {
    use wmig_proto::checkpoint::CHUNK_SIZE;
    use wmig_proto::files::Node;
    let (trees, _, client) = task_trees(&shared, &id).await?;
    let wanted = format!("/{}", path.trim_start_matches('/'));
    let found = trees.iter().find_map(|p| {
        let rel = wanted
            .strip_prefix(p.guest.trim_end_matches('/'))?
            .strip_prefix('/')?;
        match p.tree.get(rel) {
            Some(Node::File(f)) => Some(f.clone()),
            _ => None,
        }
    });
    let Some(f) = found else {
        return Err(ApiError::not_found(format!(
            "{id} has no file {wanted}; GET /api/tasks/{id}/files lists them"
        )));
    };
    const MAX_DOWNLOAD: u64 = 256 << 20;
    if f.len > MAX_DOWNLOAD {
        return Err(ApiError::invalid(format!(
            "{wanted} is {} bytes, more than this endpoint serves ({MAX_DOWNLOAD}); use `wmig files {id} -o DIR`",
            f.len
        )));
    }
    let hashes: Vec<_> = f.chunks.iter().map(|(_, h)| *h).collect();
    let chunks = client
        .get_chunks(&hashes)
        .await
        .map_err(|e| ApiError::unavailable(format!("the registry did not answer: {e}")))?;
    let mut bytes = vec![0u8; f.len as usize];
    for ((idx, _), c) in f.chunks.iter().zip(chunks) {
        let at = *idx as usize * CHUNK_SIZE;
        let n = (bytes.len() - at).min(c.len());
        bytes[at..at + n].copy_from_slice(&c[..n]);
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        bytes,
    )
        .into_response())
}

async fn registry(State(shared): State<Arc<Shared>>) -> ApiResult {
    let client = registry_client(&shared).await?;
    let (bundles, stats) = (client.list_bundles().await, client.stats().await);
    if bundles.is_err() || stats.is_err() {
        registry_failed(&shared).await;
    }
    let gateway = |e: ClientError| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "unavailable",
            format!("the registry did not answer: {e}"),
        )
    };
    let (bundles, s) = (bundles.map_err(gateway)?, stats.map_err(gateway)?);
    // Of every chunk the checkpoints refer to, the share not written again
    // (the registry deduplicated it, or the worker knew it was stored).
    let saved = if s.chunks_referenced == 0 {
        0.0
    } else {
        1.0 - s.chunks_written.min(s.chunks_referenced) as f64 / s.chunks_referenced as f64
    };
    ok(json!({
        "bundles": bundles.iter().map(|b| json!({
            "hash": b.hash.to_string(),
            "len": b.len,
            "names": b.names.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "stats": {
            "bundles": { "count": s.bundles.count, "bytes": s.bundles.bytes },
            "chunks": { "count": s.chunks.count, "bytes": s.chunks.bytes },
            "manifests": { "count": s.manifests.count, "bytes": s.manifests.bytes },
            "names": s.names,
            "tasks": s.tasks,
            "chunks_written": s.chunks_written,
            "chunks_deduplicated": s.chunks_deduplicated,
            "chunks_referenced": s.chunks_referenced,
            "chunk_bytes_referenced": s.chunks_referenced * wmig_proto::checkpoint::CHUNK_SIZE as u64,
            "dedup_ratio": saved,
            "leases": {
                "active": s.leases.active,
                "granted": s.leases.granted,
                "expired": s.leases.expired,
            },
        },
    }))
}

// --- the live stream --------------------------------------------------------

/// One monitor item as a server-sent event (`None`: not for browsers).
fn sse_item(item: &MonitorItem) -> Option<SseEvent> {
    let (name, data) = match item {
        MonitorItem::Event { seq, at_ms, event } => ("log", event_json(*seq, *at_ms, event)),
        MonitorItem::Stats(s) => ("stats", stats_json(s, unix_ms())),
        MonitorItem::Migrated(_) | MonitorItem::Recovered(_) => {
            let kind = if matches!(item, MonitorItem::Migrated(_)) {
                "migration"
            } else {
                "recovery"
            };
            (kind, timeline_json(item)?)
        }
        // Output can be large and fast; pages poll /api/tasks/{id}/output.
        MonitorItem::Output(_) => return None,
    };
    Some(SseEvent::default().event(name).data(data.to_string()))
}

async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before reading the history, so nothing falls in between;
    // what both hold is skipped by sequence number.
    let rx = shared.monitor.subscribe();
    let (backlog, next) = {
        let core = shared.lock();
        let from = core.history.len().saturating_sub(SSE_BACKLOG);
        let backlog: Vec<Result<SseEvent, Infallible>> = core.history[from..]
            .iter()
            .map(|l| {
                Ok(SseEvent::default()
                    .event("log")
                    .data(event_json(l.seq, l.at_ms, &l.event).to_string()))
            })
            .collect();
        (backlog, core.history.last().map_or(0, |l| l.seq + 1))
    };
    let live = stream::unfold((rx, next), |(mut rx, mut next)| async move {
        loop {
            let item = match rx.recv().await {
                Ok(item) => item,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if let MonitorItem::Event { seq, .. } = &*item {
                if *seq < next {
                    continue;
                }
                next = seq + 1;
            }
            if let Some(ev) = sse_item(&item) {
                return Some((Ok(ev), (rx, next)));
            }
        }
    });
    Sse::new(stream::iter(backlog).chain(live)).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn tokens_compare_by_value_and_length() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abd", b"abc"));
        assert!(!same_token(b"ab", b"abc"));
        assert!(!same_token(b"", b"abc"));
    }
}
