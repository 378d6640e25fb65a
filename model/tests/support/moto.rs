//! moto's S3 server (`pip install "moto[server]"`) on a free loopback port, for the tests of
//! S3 stores; shared by the test binaries that include it with `#[path]`.

#![allow(dead_code)] // each test binary uses part of it

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// moto's S3 server on a free loopback port, killed on drop.
pub struct Moto {
    child: Child,
    pub port: u16,
    _log_dir: tempfile::TempDir,
}

impl Moto {
    pub fn start() -> Self {
        const INSTALL: &str = "moto's S3 server is needed for this test: \
                               python3 -m pip install \"moto[server]\"";
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log_dir = tempfile::tempdir().unwrap();
        let log_path = log_dir.path().join("moto.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("moto's server exited ({status}): {INSTALL}\n{log}");
            }
            if http(port, "GET", "/", &[]).is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("moto's server did not answer on port {port} in 60 s: {INSTALL}\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            child,
            port,
            _log_dir: log_dir,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Moto {
    /// Creates a bucket (moto needs no credentials for it).
    pub fn create_bucket(&self, name: &str) {
        let created = http(self.port, "PUT", &format!("/{name}"), &[]).unwrap();
        assert!(
            created.starts_with("HTTP/1.1 200"),
            "creating the bucket {name}: {created}"
        );
    }

    /// Object store options for this server, under the names of the environment variables
    /// an S3-compatible store needs.
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint().as_str()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One plain unsigned HTTP/1.1 request; returns the raw response.
pub fn http(port: u16, method: &str, path: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
