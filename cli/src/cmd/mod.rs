//! One module per subcommand.

pub mod resume;
pub mod run;
