//! Generates the gRPC code of `protos/grlo/v1/*.proto` into OUT_DIR with tonic-prost-build,
//! using the vendored protoc unless PROTOC is set.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let protos = [
        "protos/grlo/v1/common.proto",
        "protos/grlo/v1/coordinator.proto",
        "protos/grlo/v1/reward.proto",
        "protos/grlo/v1/learner.proto",
    ];
    // The encoded descriptors, for server reflection (`grlo_proto::FILE_DESCRIPTOR_SET`).
    let descriptors =
        std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("grlo_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .compile_protos(&protos, &["protos"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
