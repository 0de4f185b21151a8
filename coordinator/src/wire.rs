//! The control protocol's messages, re-exported from
//! [`wmig_proto::wire::control`] where they live so that workers and the CLI
//! speak the protocol without linking the coordinator.

pub use wmig_proto::wire::control::{
    ClusterStats, ControlRequest, ControlResponse, MigrationReport, MonitorItem, NodeStatus,
    OutputChunk, RecoveryReport, Stream, TaskBeat, TaskView, WorkerCommand,
};
