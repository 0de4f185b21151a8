//! Who may send which control request, by the name and the role in the
//! peer's certificate ([`PeerIdentity`], [`CertRole`]).
//!
//! - A request that speaks for a node (register, heartbeat, attach, every
//!   report about a task) must come from that node's own certificate: a
//!   worker cannot take another worker's command stream or report for it.
//!   Registering as a worker needs a worker's certificate, as a monitor a
//!   monitor's; reports, the command stream and task input need a worker's;
//!   a heartbeat a worker's or a monitor's.
//! - Acting on tasks and nodes (submit, cancel, checkpoint, migrate, drain,
//!   uncordon, remove, send input) needs an operator's certificate.
//! - Reading (lists, inspect, logs, wait, events, stats) needs any
//!   certificate of the cluster, which the handshake already checked.
//!
//! Certificates issued before roles existed carry no role: `operator` is the
//! operator, any other node name may act as a worker or a monitor (what
//! this check allowed before), see [`CertRole::for_legacy_name`].
//!
//! A refusal changes nothing and says who asked, as what, and what the
//! request needs: `permission denied: monitor-1 is a monitor; submitting a
//! task needs an operator`. The HTTP API checks its own token and calls
//! the same handlers in-process.

use wmig_net::{CertRole, PeerIdentity};
use wmig_proto::wire::{ErrorCode, RemoteError};

use crate::membership::Role;
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
        if !peer.is(&node.0) {
            return Err(denied(format!(
                "permission denied: {}; {} for {node} needs {node}'s own certificate (each node \
                 acts only as itself; this one speaks for another)",
                peer.describe(),
                kind(req)
            )));
        }
    }
    let roles: &[CertRole] =
        match req {
            Q::Register(info) => match info.role {
                Role::Worker => &[CertRole::Worker],
                Role::Monitor => &[CertRole::Monitor],
                Role::Coordinator => return Err(denied(
                    "coordinators do not register as members: they find each other through etcd \
                     (`wmig coordinator --etcd URL`)"
                        .into(),
                )),
            },
            Q::Heartbeat { .. } => &[CertRole::Worker, CertRole::Monitor],
            _ if speaks_for.is_some() => &[CertRole::Worker],
            Q::Submit { .. }
            | Q::Cancel { .. }
            | Q::Checkpoint { .. }
            | Q::Migrate { .. }
            | Q::Drain { .. }
            | Q::Uncordon { .. }
            | Q::Remove { .. }
            | Q::Input { .. }
            | Q::Revocations { .. } => &[CertRole::Operator],
            // Reads: any member of the cluster.
            _ => return Ok(()),
        };
    peer.require(roles, kind(req)).map_err(denied)
}

fn denied(message: String) -> RemoteError {
    RemoteError::new(ErrorCode::Invalid, message)
}

/// The request's name, for messages.
fn kind(req: &ControlRequest) -> &'static str {
    use ControlRequest as Q;
    match req {
        Q::Register(info) => match info.role {
            Role::Worker => "registering as a worker",
            Role::Monitor => "registering as a monitor",
            Role::Coordinator => "registering as a coordinator",
        },
        Q::Heartbeat { .. } => "a heartbeat",
        Q::Attach { .. } => "attaching to the command stream",
        Q::Started { .. } => "reporting a task started",
        Q::Output { .. } => "reporting task output",
        Q::Checkpointed { .. } => "reporting a checkpoint",
        Q::Finished { .. } => "reporting a task's end",
        Q::Prefetched { .. } => "reporting a prefetch",
        Q::HandedOff { .. } => "handing off a task",
        Q::HandoffFailed { .. } => "reporting a failed handoff",
        Q::LiveReady { .. } => "accepting a live migration",
        Q::LiveFailed { .. } => "reporting a failed live migration",
        Q::Submit { .. } => "submitting a task",
        Q::Cancel { .. } => "cancelling a task",
        Q::Checkpoint { .. } => "checkpointing a task",
        Q::Migrate { .. } => "migrating a task",
        Q::Drain { .. } => "draining a node",
        Q::Uncordon { .. } => "uncordoning a node",
        Q::Remove { .. } => "removing a node",
        Q::Input { .. } => "sending input to a task",
        Q::ReadInput { .. } => "reading a task's input",
        Q::Revocations { .. } => "revoking certificates",
        _ => "this request",
    }
}
