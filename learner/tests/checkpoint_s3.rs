//! Checkpoints through S3 (moto's S3 server on loopback, `pip install "moto[server]"`): a file
//! larger than one part goes up as a multipart upload and comes back byte for byte; pruning
//! deletes whole checkpoints from the bucket.

#[path = "../../model/tests/support/moto.rs"]
mod moto;

use grlo_learner::checkpoint::CheckpointStore;
use grlo_model::store::block_on;
use grlo_model::transfer::CHUNK;
use moto::Moto;
use object_store::ObjectStoreExt;

/// Deterministic incompressible bytes (xorshift64).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn local_checkpoint(dir: &std::path::Path, step: u64, big: &[u8]) {
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(dir.join("policy/model.safetensors"), big).unwrap();
    std::fs::write(dir.join("policy/config.json"), b"{}").unwrap();
    std::fs::write(dir.join("state.json"), format!("{{\"step\": {step}}}")).unwrap();
}

#[test]
fn checkpoints_round_trip_through_s3_in_parts_and_are_pruned() {
    let moto = Moto::start();
    moto.create_bucket("grlo-checkpoints");
    let options = moto.options();
    let location = "s3://grlo-checkpoints/run-1/checkpoints";
    let store = CheckpointStore::open_with_options(location, &options).unwrap();
    assert_eq!(store.latest().unwrap(), None);

    // Two whole parts and a short third.
    let big = noise(2 * CHUNK + 12_345, 9);
    let root = tempfile::tempdir().unwrap();
    let local = root.path().join("step-2");
    local_checkpoint(&local, 2, &big);
    store.save("step-2", &local).unwrap();
    assert_eq!(store.latest().unwrap().as_deref(), Some("step-2"));

    // S3 gives a multipart object the ETag `"<md5 of the parts' md5s>-<parts>"`.
    let url = url::Url::parse(&format!("{location}/step-2/policy/model.safetensors")).unwrap();
    let (bucket, key) = grlo_model::store::open_with_options(&url, &options).unwrap();
    let head = block_on(bucket.head(&key)).unwrap();
    assert_eq!(head.size, big.len() as u64);
    let etag = head.e_tag.unwrap_or_default();
    assert!(etag.trim_matches('"').ends_with("-3"), "ETag {etag}");

    let back = root.path().join("back");
    store.download("step-2", &back).unwrap();
    assert!(std::fs::read(back.join("policy/model.safetensors")).unwrap() == big);
    assert_eq!(
        std::fs::read(back.join("state.json")).unwrap(),
        b"{\"step\": 2}"
    );
    assert_eq!(
        std::fs::read(back.join("policy/config.json")).unwrap(),
        b"{}"
    );

    for step in [4, 6] {
        let local = root.path().join(format!("step-{step}"));
        local_checkpoint(&local, step, b"small");
        store.save(&format!("step-{step}"), &local).unwrap();
    }
    assert_eq!(store.checkpoints().unwrap(), ["step-2", "step-4", "step-6"]);
    assert_eq!(store.prune(2).unwrap(), ["step-2"]);
    assert_eq!(store.checkpoints().unwrap(), ["step-4", "step-6"]);
    assert!(matches!(
        block_on(bucket.head(&key)),
        Err(object_store::Error::NotFound { .. })
    ));
    assert_eq!(store.latest().unwrap().as_deref(), Some("step-6"));
    let err = store
        .download("step-2", &root.path().join("gone"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("step-2") && err.contains("no files"), "{err}");
}
