//! `grlo serve` against the official `openai` Python client from PyPI: the binary serves the
//! tiny chat fixture and `tests/python/serve_openai.py` drives it (completions, chat,
//! streaming, logprobs, n, stop, a bad request, a reload). The client comes from the venv
//! `scripts/test.sh` installs (`$GRLO_TEST_PYTHON`, else `target/test-venv`).

mod cluster;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_openai_python_client_drives_grlo_serve() {
    let python = cluster::test_python();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("fixtures/models/qwen3-chat-tiny");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let scratch = tempfile::tempdir().unwrap();
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_grlo"))
            .args(["serve", "--model"])
            .arg(&model)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--max-tokens",
                "64",
            ])
            .env("GRLO_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("grlo serve starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "grlo serve never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = Command::new(&python)
        .arg(root.join("tests/python/serve_openai.py"))
        .arg(&base)
        .arg(&model)
        .arg(scratch.path())
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the client's checks failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
