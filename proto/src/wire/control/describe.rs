//! Events in words, for `wmig events`, `wmig monitor` and the dashboard.

use crate::checkpoint::seq_label;
use crate::{NodeId, TaskId};

use super::{Event, MembershipEvent, Outcome, TaskEvent};

impl Event {
    /// One short word for what happened (stable: dashboards key on it).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Node(m) => match m {
                MembershipEvent::Joined(_) => "joined",
                MembershipEvent::Recovered { .. } => "online",
                MembershipEvent::Offline(_) => "offline",
                MembershipEvent::Drained(_) => "drained",
                MembershipEvent::Uncordoned(_) => "uncordoned",
                MembershipEvent::Removed(_) => "removed",
            },
            Event::Task(t) => match t {
                TaskEvent::Submitted { .. }
                | TaskEvent::SubmittedWith { .. }
                | TaskEvent::SubmittedV3 { .. }
                | TaskEvent::SubmittedV4 { .. } => "submitted",
                TaskEvent::Placed { .. } => "placed",
                TaskEvent::Checkpointed { .. } => "checkpointed",
                TaskEvent::Finished { .. } => "finished",
                TaskEvent::Cancelled { .. } => "cancelled",
                TaskEvent::Requeued { .. } => "requeued",
            },
        }
    }

    /// The node the event is about (for task events: the worker it names).
    pub fn node(&self) -> Option<&NodeId> {
        match self {
            Event::Node(m) => Some(match m {
                MembershipEvent::Joined(info) => &info.name,
                MembershipEvent::Recovered { node, .. }
                | MembershipEvent::Offline(node)
                | MembershipEvent::Drained(node)
                | MembershipEvent::Uncordoned(node)
                | MembershipEvent::Removed(node) => node,
            }),
            Event::Task(TaskEvent::Placed { worker, .. }) => Some(worker),
            Event::Task(_) => None,
        }
    }

    /// The task the event is about.
    pub fn task(&self) -> Option<TaskId> {
        match self {
            Event::Node(_) => None,
            Event::Task(t) => Some(t.task()),
        }
    }

    /// The event as a sentence.
    pub fn describe(&self) -> String {
        match self {
            Event::Node(m) => match m {
                MembershipEvent::Joined(info) => format!(
                    "node {} joined as {} ({} slots, pid {})",
                    info.name, info.role, info.slots, info.pid
                ),
                MembershipEvent::Recovered { node, .. } => format!("node {node} is online again"),
                MembershipEvent::Offline(node) => format!("node {node} is offline"),
                MembershipEvent::Drained(node) => format!("node {node} is draining"),
                MembershipEvent::Uncordoned(node) => format!("node {node} takes tasks again"),
                MembershipEvent::Removed(node) => format!("node {node} was removed"),
            },
            Event::Task(t) => match t {
                TaskEvent::Submitted { id, spec } => {
                    format!("task {id} submitted ({})", spec.bundle)
                }
                TaskEvent::SubmittedWith { id, options, .. }
                | TaskEvent::SubmittedV3 { id, options, .. }
                | TaskEvent::SubmittedV4 { id, options, .. } => {
                    format!("task {id} submitted ({})", options.name)
                }
                TaskEvent::Placed { id, worker, epoch } => {
                    format!("task {id} placed on {worker} (epoch {epoch})")
                }
                TaskEvent::Checkpointed { id, seq, .. } => {
                    format!("task {id} checkpoint #{}", seq_label(*seq))
                }
                TaskEvent::Finished { id, outcome, .. } => match outcome {
                    Outcome::Completed { exit_code } => {
                        format!("task {id} completed (exit {exit_code})")
                    }
                    Outcome::Failed { reason, .. } => format!("task {id} failed: {reason}"),
                },
                TaskEvent::Cancelled { id } => format!("task {id} cancelled"),
                TaskEvent::Requeued { id } => {
                    format!("task {id} lost its worker and waits for a free slot")
                }
            },
        }
    }
}

impl TaskEvent {
    /// The task this event is about.
    pub fn task(&self) -> TaskId {
        match self {
            TaskEvent::Submitted { id, .. }
            | TaskEvent::SubmittedWith { id, .. }
            | TaskEvent::SubmittedV3 { id, .. }
            | TaskEvent::SubmittedV4 { id, .. }
            | TaskEvent::Placed { id, .. }
            | TaskEvent::Checkpointed { id, .. }
            | TaskEvent::Finished { id, .. }
            | TaskEvent::Requeued { id }
            | TaskEvent::Cancelled { id } => *id,
        }
    }
}
