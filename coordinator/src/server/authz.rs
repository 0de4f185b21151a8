//! Who may send which control request, by the name in the peer's
//! certificate ([`PeerIdentity`]).
//!
//! - A request that speaks for a node (register, heartbeat, attach, every
//!   report about a task) must come from that node's own certificate: a
//!   worker cannot take another worker's command stream or report for it.
//! - Acting on tasks and nodes (submit, cancel, checkpoint, migrate, drain,
//!   uncordon, remove, send input) needs the operator's certificate.
//! - Reading (lists, inspect, logs, wait, events, stats) needs any
//!   certificate of the cluster, which the handshake already checked.
//!
//! The HTTP API checks its own token and calls the same handlers in-process.

use wmig_net::{PeerIdentity, OPERATOR};
use wmig_proto::wire::{ErrorCode, RemoteError};

use crate::wire::ControlRequest;

/// Refuse `req` unless `peer` may send it.
pub(super) fn authorize(peer: &PeerIdentity, req: &ControlRequest) -> Result<(), RemoteError> {
    use ControlRequest as Q;
    let speaks_for = match req {
        Q::Register(info) => Some(&info.name),
        Q::Heartbeat { node, .. }
        | Q::Attach { node }
        | Q::Started { node, .. }
        | Q::Output { node, .. }
        | Q::Checkpointed { node, .. }
        | Q::Finished { node, .. }
        | Q::Prefetched { node, .. }
        | Q::HandedOff { node, .. }
        | Q::HandoffFailed { node, .. }
        | Q::LiveReady { node, .. }
        | Q::LiveFailed { node, .. }
        | Q::ReadInput { node, .. } => Some(node),
        _ => None,
    };
    if let Some(node) = speaks_for {
        if peer.is(&node.0) {
            return Ok(());
        }
        return Err(denied(
            peer,
            format!("a {} request speaks for {node}, and each node acts only as itself: run it with {node}'s own certificate", kind(req)),
        ));
    }
    let operator_only = matches!(
        req,
        Q::Submit { .. }
            | Q::Cancel { .. }
            | Q::Checkpoint { .. }
            | Q::Migrate { .. }
            | Q::Drain { .. }
            | Q::Uncordon { .. }
            | Q::Remove { .. }
            | Q::Input { .. }
    );
    if operator_only && !peer.is(OPERATOR) {
        return Err(denied(
            peer,
            format!(
                "{} needs the operator; run it with the cluster directory's `{OPERATOR}` identity (the `wmig` CLI does)",
                kind(req)
            ),
        ));
    }
    Ok(())
}

fn denied(peer: &PeerIdentity, why: String) -> RemoteError {
    let who = peer
        .name()
        .unwrap_or_else(|| "this certificate's holder".to_owned());
    tracing::warn!(peer = %who, reason = %why, "permission denied");
    RemoteError::new(
        ErrorCode::Invalid,
        format!("permission denied: {who} is not allowed this: {why}"),
    )
}

/// The request's name, for messages.
fn kind(req: &ControlRequest) -> &'static str {
    use ControlRequest as Q;
    match req {
        Q::Register(_) => "Register",
        Q::Heartbeat { .. } => "Heartbeat",
        Q::Attach { .. } => "Attach",
        Q::Started { .. } => "Started",
        Q::Output { .. } => "Output",
        Q::Checkpointed { .. } => "Checkpointed",
        Q::Finished { .. } => "Finished",
        Q::Prefetched { .. } => "Prefetched",
        Q::HandedOff { .. } => "HandedOff",
        Q::HandoffFailed { .. } => "HandoffFailed",
        Q::LiveReady { .. } => "LiveReady",
        Q::LiveFailed { .. } => "LiveFailed",
        Q::Submit { .. } => "submitting a task",
        Q::Cancel { .. } => "cancelling a task",
        Q::Checkpoint { .. } => "checkpointing a task",
        Q::Migrate { .. } => "migrating a task",
        Q::Drain { .. } => "draining a node",
        Q::Uncordon { .. } => "uncordoning a node",
        Q::Remove { .. } => "removing a node",
        Q::Input { .. } => "sending input to a task",
        Q::ReadInput { .. } => "ReadInput",
        _ => "this request",
    }
}
