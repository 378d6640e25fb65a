//! The `grlo` command line: one subcommand per role or tool.

pub mod bench;
pub mod model;
pub mod rm;
pub mod train;
