//! Task and node identifiers.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A task's id, unique in a cluster. Printed as `t-<decimal>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct TaskId(pub u64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t-{}", self.0)
    }
}

impl std::str::FromStr for TaskId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("t-").unwrap_or(s);
        digits
            .parse()
            .map(TaskId)
            .map_err(|_| format!("`{s}` is not a task id: expected t-<number>, e.g. t-12"))
    }
}

/// A node's id: its registered name (unique among live nodes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
