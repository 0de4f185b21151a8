//! Integration tests for the coordinator core: one binary, a module per
//! feature (see STYLE.md).
#![allow(clippy::unwrap_used)]

mod cluster;
mod golden;
mod replay;

use std::collections::BTreeMap;

use wmig_coordinator::{NodeInfo, Role, TaskSpec};
use wmig_proto::{Hash, NodeId};

pub fn node(name: &str, role: Role, slots: u32, pid: u32) -> NodeInfo {
    NodeInfo {
        name: NodeId(name.to_string()),
        role,
        slots,
        labels: BTreeMap::new(),
        addr: format!("127.0.0.1:{}", 5000 + pid),
        pid,
    }
}

pub fn spec(n: u64) -> TaskSpec {
    TaskSpec {
        bundle: Hash::of(&n.to_le_bytes()),
        args: vec![n.to_string()],
        env: BTreeMap::from([("N".to_string(), n.to_string())]),
    }
}

pub fn id(name: &str) -> NodeId {
    NodeId(name.to_string())
}
