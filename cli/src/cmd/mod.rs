//! One module per subcommand.

pub mod init;
pub mod registry;
pub mod resume;
pub mod run;
pub mod upload;
