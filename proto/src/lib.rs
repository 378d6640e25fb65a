//! The `grlo.v1` protocol: generated messages, clients and servers of the Coordinator,
//! RewardServer and Learner services, and the mapping of errors to gRPC status codes.

/// Generated from `protos/grlo/v1/*.proto`.
pub mod v1 {
    tonic::include_proto!("grlo.v1");
}

pub mod status;

pub use v1::*;
pub mod metrics;
pub mod reflection;
pub mod security;
pub mod worker;
