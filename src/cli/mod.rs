//! The `grlo` command line: one subcommand per role or tool.

pub mod bench;
pub mod bench_coordinator;
pub mod bench_long;
pub mod bench_parity;
pub mod bench_rollout;
pub mod bench_service;
pub mod bench_step;
pub mod ctl;
pub mod eval;
pub mod model;
pub mod plan;
pub mod plot;
pub mod reward_server;
pub mod rm;
pub mod roles;
pub mod security;
pub mod serve;
pub mod settings;
pub mod train;
