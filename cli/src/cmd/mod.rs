//! One module per subcommand.

pub mod cert;
pub mod control;
pub mod coordinator;
pub mod dashboard;
pub mod docs;
pub mod events;
pub mod files;
pub mod init;
pub mod nodes;
pub mod registry;
pub mod resume;
pub mod run;
pub mod task;
pub mod up;
pub mod upload;
pub mod worker;
