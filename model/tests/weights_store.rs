//! Publishing and fetching weight versions: a local directory store, and S3 through moto's
//! S3 server (`pip install "moto[server]"`).
//!
//! Hashes are checked against `sha256sum` (coreutils), not against the code under test.
//! The throughput benchmark is an ignored test:
//! `cargo test --release -p grlo-model --test weights_store -- --ignored --nocapture`.

#[path = "support/moto.rs"]
mod moto;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use moto::{Moto, http};

use grlo_model::Error;
use grlo_model::store::block_on;
use grlo_model::weights_store::{
    MANIFEST, Manifest, WeightsStore, fetch_verified_blocking, publish_blocking,
};
use object_store::{ObjectStoreExt, PutPayload};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/models/llama31-tiny")
}

/// The regular files of a directory, sorted.
fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// SHA-256 by coreutils, an implementation independent of the one under test.
fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

fn assert_same_files(a: &Path, b: &Path, names: &[String]) {
    for name in names {
        assert!(
            std::fs::read(a.join(name)).unwrap() == std::fs::read(b.join(name)).unwrap(),
            "{name} differs"
        );
    }
}

const SHARD: &str = "model-00002-of-00004.safetensors";

#[test]
fn a_local_round_trip_is_byte_exact_and_the_manifest_lists_every_file() {
    let root = tempfile::tempdir().unwrap();
    let location = root.path().join("store/run/v7").display().to_string();
    let manifest = publish_blocking(&fixture(), &location, 7).unwrap();

    let names = file_names(&fixture());
    assert_eq!(names.len(), 7);
    assert_eq!(manifest.version, 7);
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(listed, names);
    for file in &manifest.files {
        let path = fixture().join(&file.name);
        assert_eq!(
            file.size,
            std::fs::metadata(&path).unwrap().len(),
            "{}",
            file.name
        );
        assert_eq!(file.sha256, sha256sum(&path), "{}", file.name);
    }
    // The store holds the files and the manifest, nothing else.
    let stored = Path::new(&location);
    let mut expected = names.clone();
    expected.push(MANIFEST.into());
    expected.sort();
    assert_eq!(file_names(stored), expected);
    let on_disk: Manifest =
        serde_json::from_slice(&std::fs::read(stored.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(on_disk, manifest);

    let dest = root.path().join("dest");
    let fetched = fetch_verified_blocking(&location, &dest).unwrap();
    assert_eq!(fetched, manifest);
    assert_same_files(&fixture(), &dest, &names);
    assert_eq!(
        file_names(&dest),
        expected,
        "no staged files are left behind"
    );

    // A file:// URL names the same store.
    let url = format!("file://{location}");
    let dest2 = root.path().join("dest2");
    assert_eq!(fetch_verified_blocking(&url, &dest2).unwrap(), manifest);
    assert_same_files(&fixture(), &dest2, &names);
}

#[test]
fn the_manifest_is_written_only_after_every_file() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let location = store.display().to_string();
    publish_blocking(&fixture(), &location, 1).unwrap();
    assert!(store.join(MANIFEST).exists());

    // Make one upload fail (a directory where a shard goes): the republish fails, and the
    // store holds no manifest: not the new one, and not the old one over half-new files.
    std::fs::remove_file(store.join(SHARD)).unwrap();
    std::fs::create_dir(store.join(SHARD)).unwrap();
    let err = publish_blocking(&fixture(), &location, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains(SHARD), "{err}");
    assert!(
        !store.join(MANIFEST).exists(),
        "a failed publish left a manifest"
    );
    let err = fetch_verified_blocking(&location, &root.path().join("dest"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no manifest.json"), "{err}");
}

#[test]
fn a_tampered_truncated_or_missing_file_fails_the_fetch_and_leaves_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    let location = store.display().to_string();
    publish_blocking(&fixture(), &location, 3).unwrap();

    // One flipped byte.
    flip_byte(&store.join(SHARD), 1000);
    let dest = root.path().join("dest");
    let err = fetch_verified_blocking(&location, &dest).unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(SHARD) && text.contains(&location) && text.contains("sha256"),
        "{text}"
    );
    assert_eq!(
        file_names(&dest),
        Vec::<String>::new(),
        "dest is left empty"
    );

    // A truncated file.
    let bytes = std::fs::read(store.join(SHARD)).unwrap();
    std::fs::write(store.join(SHARD), &bytes[..bytes.len() - 10]).unwrap();
    let text = fetch_verified_blocking(&location, &dest)
        .unwrap_err()
        .to_string();
    assert!(text.contains(SHARD) && text.contains("bytes"), "{text}");
    assert_eq!(file_names(&dest), Vec::<String>::new());

    // A missing file.
    std::fs::remove_file(store.join(SHARD)).unwrap();
    let text = fetch_verified_blocking(&location, &dest)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains(SHARD) && text.contains("missing") && text.contains(&location),
        "{text}"
    );
    assert_eq!(file_names(&dest), Vec::<String>::new());
}

/// (inode, mtime in ns) of every file: a file written again gets a new inode (downloads are
/// renamed into place).
fn identities(dir: &Path, names: &[String]) -> Vec<(u64, i64)> {
    names
        .iter()
        .map(|n| {
            let m = std::fs::metadata(dir.join(n)).unwrap();
            (m.ino(), m.mtime() * 1_000_000_000 + m.mtime_nsec())
        })
        .collect()
}

#[test]
fn verified_files_already_in_dest_are_not_downloaded_again() {
    let root = tempfile::tempdir().unwrap();
    let store_dir = root.path().join("store");
    let location = store_dir.display().to_string();
    publish_blocking(&fixture(), &location, 1).unwrap();
    let store = WeightsStore::open(&location).unwrap();
    let dest = root.path().join("dest");
    let names = file_names(&fixture());

    let first = block_on(store.fetch(&dest)).unwrap();
    assert_eq!(first.downloaded.len(), names.len());
    assert_eq!(first.bytes_downloaded, first.manifest.total_bytes());
    let before = identities(&dest, &names);

    let second = block_on(store.fetch(&dest)).unwrap();
    assert!(second.downloaded.is_empty(), "{:?}", second.downloaded);
    assert_eq!(second.reused.len(), names.len());
    assert_eq!(second.bytes_downloaded, 0);
    assert_eq!(identities(&dest, &names), before, "files were rewritten");

    // A corrupted cached file is downloaded again, and only that one.
    flip_byte(&dest.join(SHARD), 5);
    let third = block_on(store.fetch(&dest)).unwrap();
    assert_eq!(third.downloaded, [SHARD]);
    assert_same_files(&fixture(), &dest, &names);

    // A new version that changes one file and drops another: one download, and the dropped
    // file leaves dest.
    let v2 = root.path().join("v2");
    std::fs::create_dir(&v2).unwrap();
    for name in &names {
        std::fs::copy(fixture().join(name), v2.join(name)).unwrap();
    }
    std::fs::remove_file(v2.join("generation_config.json")).unwrap();
    flip_byte(&v2.join(SHARD), 2000);
    let v2_location = root.path().join("store-v2").display().to_string();
    publish_blocking(&v2, &v2_location, 2).unwrap();
    let fourth = block_on(WeightsStore::open(&v2_location).unwrap().fetch(&dest)).unwrap();
    assert_eq!(fourth.manifest.version, 2);
    assert_eq!(fourth.downloaded, [SHARD]);
    assert!(!dest.join("generation_config.json").exists());
    let v2_names = file_names(&v2);
    assert_same_files(&v2, &dest, &v2_names);
    let manifest_in_dest: Manifest =
        serde_json::from_slice(&std::fs::read(dest.join(MANIFEST)).unwrap()).unwrap();
    assert_eq!(manifest_in_dest, fourth.manifest);
}

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

#[test]
fn versions_round_trip_through_s3() {
    let moto = Moto::start();
    let created = http(moto.port, "PUT", "/grlo-weights", &[]).unwrap();
    assert!(
        created.starts_with("HTTP/1.1 200"),
        "creating the bucket: {created}"
    );
    // The same names as the environment variables an S3-compatible store needs.
    let options: Vec<(String, String)> = [
        ("AWS_ENDPOINT_URL", moto.endpoint().as_str()),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();

    // The fixture and a 20 MiB file, which goes up as a multipart upload (8 MiB parts).
    let root = tempfile::tempdir().unwrap();
    let model = root.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let mut names = file_names(&fixture());
    for name in &names {
        std::fs::copy(fixture().join(name), model.join(name)).unwrap();
    }
    std::fs::write(model.join("big.bin"), noise(20 << 20, 42)).unwrap();
    names.push("big.bin".into());

    let location = "s3://grlo-weights/run-1/v5";
    let store = WeightsStore::open_with_options(location, &options).unwrap();
    let err = block_on(store.fetch(&root.path().join("early")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no manifest.json") && err.contains(location),
        "{err}"
    );

    let manifest = block_on(store.publish(&model, 5)).unwrap();
    assert_eq!(manifest.files.len(), names.len());
    let big = manifest.files.iter().find(|f| f.name == "big.bin").unwrap();
    assert_eq!(big.sha256, sha256sum(&model.join("big.bin")));

    let dest = root.path().join("dest");
    let fetched = block_on(store.fetch(&dest)).unwrap();
    assert_eq!(fetched.manifest, manifest);
    assert_eq!(fetched.downloaded.len(), names.len());
    assert_same_files(&model, &dest, &names);
    let again = block_on(store.fetch(&dest)).unwrap();
    assert!(again.downloaded.is_empty(), "{:?}", again.downloaded);

    let raw = root.path().join("raw");
    assert_eq!(
        block_on(store.raw_copy(&raw)).unwrap(),
        manifest.total_bytes()
    );

    // Tamper with a shard in the bucket: a fresh fetch fails naming it and leaves nothing.
    let mut bytes = std::fs::read(model.join(SHARD)).unwrap();
    bytes[100] ^= 1;
    let url = url::Url::parse(&format!("{location}/{SHARD}")).unwrap();
    let (bucket, key) = grlo_model::store::open_with_options(&url, &options).unwrap();
    block_on(bucket.put(&key, PutPayload::from(bytes))).unwrap();
    let fresh = root.path().join("fresh");
    let err = block_on(store.fetch(&fresh)).unwrap_err();
    assert!(matches!(err, Error::Verification { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(SHARD) && text.contains(location), "{text}");
    assert_eq!(file_names(&fresh), Vec::<String>::new());
}

/// The weight-sync benchmark on the local store: publish and verified fetch beside the raw
/// copy of the same bytes (through the same object store reads) and `std::fs::copy`.
#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn weight_sync_throughput() {
    fn mb_s(bytes: u64, seconds: f64) -> String {
        format!(
            "{:7.1} MB/s ({:.3} s)",
            bytes as f64 / 1e6 / seconds,
            seconds
        )
    }
    fn time<T>(f: impl FnOnce() -> T) -> (T, f64) {
        let start = Instant::now();
        let out = f();
        (out, start.elapsed().as_secs_f64())
    }
    let root = tempfile::tempdir().unwrap();
    let big = root.path().join("big");
    std::fs::create_dir(&big).unwrap();
    std::fs::write(big.join("model.safetensors"), noise(200 << 20, 7)).unwrap();
    let shards = root.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    for i in 0..4 {
        let name = format!("model-{i:05}-of-00004.safetensors");
        std::fs::write(shards.join(name), noise(50 << 20, 11 + i)).unwrap();
    }
    let rounds = 5;
    for (label, dir) in [
        ("llama31-tiny", fixture()),
        ("200 MiB random, 1 file", big),
        ("200 MiB random, 4 shards", shards),
    ] {
        for round in 0..rounds {
            let run = root.path().join(format!("{label}-{round}"));
            let location = run.join("store").display().to_string();
            let (manifest, publish_s) = time(|| publish_blocking(&dir, &location, 1).unwrap());
            let bytes = manifest.total_bytes();
            let (_, fetch_s) =
                time(|| fetch_verified_blocking(&location, &run.join("fetched")).unwrap());
            let (_, cached_s) =
                time(|| fetch_verified_blocking(&location, &run.join("fetched")).unwrap());
            let (copied, raw_s) = time(|| {
                block_on(grlo_model::weights_store::raw_copy(
                    &location,
                    &run.join("raw"),
                ))
                .unwrap()
            });
            assert_eq!(copied, bytes);
            let std_dir = run.join("std");
            std::fs::create_dir(&std_dir).unwrap();
            let (_, std_s) = time(|| {
                for f in &manifest.files {
                    std::fs::copy(dir.join(&f.name), std_dir.join(&f.name)).unwrap();
                }
            });
            println!(
                "{label} ({bytes} bytes) round {round}: publish {} | fetch_verified {} | \
                 cached re-fetch {} | raw_copy {} | std::fs::copy {}",
                mb_s(bytes, publish_s),
                mb_s(bytes, fetch_s),
                mb_s(bytes, cached_s),
                mb_s(bytes, raw_s),
                mb_s(bytes, std_s),
            );
            std::fs::remove_dir_all(&run).unwrap();
        }
    }
}
