//! The coordinator: its protocol core, with no networking in it, and the
//! server and client that carry it over QUIC.
//!
//! Everything the coordinator *decides* lives here: which nodes are members and
//! whether they are alive ([`membership`]), where a task runs ([`placement`]),
//! what state a task is in ([`tasks`]), and the durable record of all of it
//! ([`log`]). [`state::Coordinator`] ties them together as a fold over
//! [`Event`]s, so a restart that replays the log reaches the identical state.
//! [`migration::Migrations`] runs the migration handshake between a task's
//! source and target (volatile on purpose: the log alone says who owns a task).
//!
//! Like quinn-proto, nothing here reads a clock or touches a socket: every
//! method that depends on time takes `now` (milliseconds on a monotonic clock
//! chosen by the caller), and the server that drives this core decides when to
//! call [`Coordinator::tick`] from [`Coordinator::next_deadline`] (and
//! [`Migrations::tick`] from [`Migrations::next_deadline`]). That makes hours
//! of heartbeats testable in milliseconds.
//!
//! Around the core: [`wire`] (the control protocol's messages), [`server`]
//! (the coordinator process: QUIC, group-committed log, task output, the
//! monitor stream, `/metrics`, and the HTTP API with the dashboard in
//! [`server::api`]; with `--etcd`, [`server::replica`] keeps the log, output
//! and input in etcd instead and elects one leader among several
//! coordinators) and [`client`] (what workers, monitors and `wmig` use to
//! talk to it).
//!
//! The messages and the plain records they carry ([`TaskSpec`],
//! [`TaskState`], [`NodeInfo`], [`Placement`], [`Event`], ...) live in
//! [`wmig_proto::wire::control`] and the client in the `wmig-client` crate,
//! so that the worker speaks the protocol without linking this crate's
//! server; [`wire`], [`client`] and the modules here re-export them under
//! their old paths.

// Tests may unwrap: a panic there is a test failure with a line number.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod log;
pub mod membership;
pub mod migration;
pub mod placement;
pub mod server;
pub mod state;
pub mod tasks;
pub mod wire;

/// The control client, from the `wmig-client` crate.
pub use wmig_client as client;

pub use client::{ControlClient, ControlError, Subscription, COORDINATOR_NODE};
pub use log::{EventLog, LogError, Replay, TornTail};
pub use membership::{
    Liveness, Membership, MembershipConfig, MembershipError, MembershipEvent, Node, NodeInfo,
    NodeView, Role,
};
pub use migration::Migrations;
pub use placement::{Placement, PlacementError, Placer};
pub use state::{Coordinator, CoordinatorConfig, CoordinatorError, Event, Snapshot};
pub use tasks::{Outcome, Task, TaskError, TaskEvent, TaskOptions, TaskSpec, TaskState, TaskTable};

/// Milliseconds on the caller's monotonic clock. Only differences matter.
pub type Millis = u64;
