//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, tonic-reflection) on every
//! role, so `grpcurl -plaintext HOST:PORT list` / `describe`, Postman and other generic
//! clients discover a server's services without the `.proto` files.
//!
//! Each role lists what it serves, and the health service: the coordinator
//! `grlo.v1.Coordinator`, the learner `grlo.v1.Learner`, the reward server
//! `grlo.v1.RewardServer`, an actor only health. Reflection is open like health (see
//! [`crate::security::needs`]): it tells nothing a reader of the public `.proto` files does
//! not know, and no call it answers touches a job.

use tonic_reflection::server::{Builder, v1, v1alpha};

/// The encoded `FileDescriptorSet` of `protos/grlo/v1/*.proto`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("grlo_descriptor");

/// The name of the gRPC health service, listed by every role.
const HEALTH: &str = "grpc.health.v1.Health";

/// A server's reflection services (v1 and the v1alpha most clients still speak) for the
/// grlo.v1 `services` it serves (full names, e.g. `grlo.v1.Coordinator`) and health.
pub fn services(
    services: &[&str],
) -> (
    v1::ServerReflectionServer<impl v1::ServerReflection>,
    v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
) {
    // Each version lists itself too, as grpcurl expects.
    let builder = |reflection: &str| {
        services.iter().fold(
            Builder::configure()
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .with_service_name(HEALTH)
                .with_service_name(reflection),
            |builder, name| builder.with_service_name(*name),
        )
    };
    // The descriptors are compiled in; the unit test below builds them.
    (
        builder("grpc.reflection.v1.ServerReflection")
            .build_v1()
            .expect("the compiled-in descriptors are valid"),
        builder("grpc.reflection.v1alpha.ServerReflection")
            .build_v1alpha()
            .expect("the compiled-in descriptors are valid"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptors_build_for_every_role() {
        for role in [
            &["grlo.v1.Coordinator"][..],
            &["grlo.v1.Learner"],
            &["grlo.v1.RewardServer"],
            &[],
        ] {
            let _ = services(role);
        }
    }
}
