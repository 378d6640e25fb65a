//! The coordinator's dashboard end to end: a cluster of real processes whose coordinator serves
//! it, a running job, headless Chromium loading the page (its DOM, then a screenshot), the JSON
//! API, and `grlo ctl job plot`. The pictures are left in target/ for a person to look at.
//!
//! Needs Chromium (Debian's `chromium` package, or `CHROMIUM=/path/to/chrome`); without it the
//! test fails, it does not skip.

mod cluster;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, exclusive, free_port, http_get};
use serde_json::Value;

const STEP_TIMEOUT: Duration = Duration::from_secs(300);
/// Chromium's first start on a busy two-core machine can take a while.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(120);

/// The reward line's colour on the page and in the plot (coordinator/assets/app.js, plot.rs).
const REWARD_BLUE: [u8; 3] = [37, 99, 235];
const LENGTH_ORANGE: [u8; 3] = [234, 88, 12];
const THROUGHPUT_GREEN: [u8; 3] = [5, 150, 105];

/// The browser: `$CHROMIUM` when set, else Debian's chromium.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.exists(),
            "CHROMIUM={} does not exist: point it at a Chromium binary, or unset it and install \
             Debian's `chromium` package (apt-get install --no-install-recommends chromium)",
            path.display()
        );
        return path;
    }
    let candidates = ["/usr/bin/chromium", "/usr/bin/chromium-browser"];
    if let Some(found) = candidates.iter().map(PathBuf::from).find(|p| p.exists()) {
        return found;
    }
    let on_path = Command::new("chromium")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if on_path.is_ok_and(|s| s.success()) {
        return PathBuf::from("chromium");
    }
    panic!(
        "this test needs headless Chromium, and there is none (looked for {candidates:?} and \
         `chromium` on PATH): install Debian's `chromium` package \
         (apt-get install --no-install-recommends chromium); CI installs it"
    );
}

/// Runs headless Chromium with `args` and a fresh profile; its stdout.
fn run_chromium(browser: &Path, work: &Path, name: &str, args: &[String]) -> String {
    let profile = work.join(format!("profile-{name}"));
    let stdout_path = work.join(format!("chromium-{name}.out"));
    let stderr_path = work.join(format!("chromium-{name}.err"));
    let mut child = Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--virtual-time-budget=8000",
            &format!("--user-data-dir={}", profile.display()),
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium ({name}) ran past {CHROMIUM_TIMEOUT:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "chromium ({name}) exited with {status}; its stderr:\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    std::fs::read_to_string(&stdout_path).unwrap()
}

const ADMIN_TOKEN: &str = "admin-dashboard-5e1d";

/// One GET with the admin token: (status, body).
fn api(port: u16, path: &str) -> (u16, String) {
    let (status, _, body) = http_get(port, path, Some(ADMIN_TOKEN));
    (status, body)
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// An image's size and RGB pixels.
struct Picture {
    width: u32,
    height: u32,
    pixels: Vec<[u8; 3]>,
}

fn decode(path: &Path) -> Picture {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buffer = vec![0; reader.output_buffer_size().expect("a sane size")];
    let frame = reader.next_frame(&mut buffer).unwrap();
    let channels = match frame.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        other => panic!("{}: unexpected colour type {other:?}", path.display()),
    };
    let pixels = buffer[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Picture {
        width: frame.width,
        height: frame.height,
        pixels,
    }
}

impl Picture {
    /// Pixels within a few levels of `color` (anti-aliasing blends a line's edges only).
    fn count(&self, color: [u8; 3]) -> usize {
        self.pixels
            .iter()
            .filter(|p| (0..3).all(|i| p[i].abs_diff(color[i]) <= 12))
            .count()
    }

    /// The share of pixels that differ from the most common colour (the background).
    fn drawn_fraction(&self) -> f64 {
        let mut counts = std::collections::HashMap::new();
        for p in &self.pixels {
            *counts.entry(*p).or_insert(0usize) += 1;
        }
        let background = counts.values().max().copied().unwrap_or(0);
        1.0 - background as f64 / self.pixels.len() as f64
    }

    fn colours(&self) -> usize {
        self.pixels
            .iter()
            .collect::<std::collections::HashSet<_>>()
            .len()
    }
}

/// The value of `attribute` on the element that starts with `opening` in `html`.
fn attribute<'a>(html: &'a str, opening: &str, attribute: &str) -> Option<&'a str> {
    let start = html.find(opening)?;
    let tag = &html[start..start + html[start..].find('>')?];
    let key = format!("{attribute}=\"");
    let from = tag.find(&key)? + key.len();
    Some(&tag[from..from + tag[from..].find('"')?])
}

/// Where cargo puts build outputs (target/), for the pictures a person may want to see.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp has a parent")
        .to_path_buf()
}

#[test]
fn the_dashboard_draws_a_running_jobs_charts_and_ctl_plots_them() {
    let _one = exclusive();
    let started = Instant::now();
    let browser = chromium();

    let mut cluster = Cluster::new(200, 60_000);
    let http_port = free_port();
    cluster.http_port = Some(http_port);
    // Tokens on: the API needs the admin token; the page takes it from the URL's fragment.
    cluster.env = vec![
        ("GRLO_WORKER_TOKEN".into(), "worker-dashboard-93c0".into()),
        ("GRLO_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
    ];
    let cluster = cluster.with_roles(1);
    // Two epochs of the tiny dataset (31 steps each): the job is still running while the
    // browser looks at it.
    let job = cluster.submit_tiny(&["trainer.total_epochs=2", "trainer.total_steps=60"]);
    let steps = cluster.wait_until(STEP_TIMEOUT, "3 trained steps", || {
        let output = cluster.ctl_output(&["job", "get", &job]);
        let value: Value = serde_json::from_slice(&output.stdout).ok()?;
        let step = value["step"].as_u64()?;
        (step >= 3).then_some(step)
    });
    eprintln!(
        "cluster up and {steps} steps trained after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The JSON API the page polls.
    let (status, body) = api(http_port, "/api/jobs");
    assert_eq!(status, 200, "{body}");
    let jobs = json(&body);
    assert_eq!(jobs["jobs"][0]["id"], job.as_str(), "{jobs}");
    assert_eq!(jobs["jobs"][0]["status"], "running", "{jobs}");
    let (status, body) = api(http_port, &format!("/api/jobs/{job}"));
    assert_eq!(status, 200, "{body}");
    let history = json(&body);
    let recorded = history["steps"].as_array().expect("a step array");
    assert!(recorded.len() >= 3, "{history}");
    for (i, step) in recorded.iter().enumerate() {
        assert_eq!(step["step"], i as u64 + 1, "steps in order: {history}");
        assert!(step["metrics"]["reward_mean"].is_f64(), "{step}");
        assert!(step["metrics"]["tokens_per_s"].is_f64(), "{step}");
        assert!(step["cpu_seconds_used"].as_f64().unwrap() > 0.0, "{step}");
    }
    for token in [None, Some("worker-dashboard-93c0")] {
        let (status, _, body) = http_get(http_port, "/api/jobs", token);
        assert_eq!(status, 401, "{token:?}: {body}");
    }
    let (status, body) = api(http_port, "/api/jobs/job-404");
    assert_eq!(status, 404, "{body}");
    assert!(json(&body)["error"].as_str().unwrap().contains("job-404"));

    // The page, as a browser runs it: the job is listed and its charts drawn.
    let work = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{http_port}/?job={job}#token={ADMIN_TOKEN}");
    let browsing = Instant::now();
    let dom = run_chromium(
        &browser,
        work.path(),
        "dom",
        &["--dump-dom".into(), url.clone()],
    );
    eprintln!(
        "chromium --dump-dom took {:.1} s",
        browsing.elapsed().as_secs_f64()
    );
    assert_eq!(
        attribute(&dom, "<main id=\"charts\"", "data-job"),
        Some(job.as_str()),
        "{dom}"
    );
    let drawn: u64 = attribute(&dom, "<main id=\"charts\"", "data-steps")
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no data-steps on the charts: {dom}"));
    assert!(drawn >= 3, "{drawn} steps drawn:\n{dom}");
    assert_eq!(
        attribute(&dom, "<main id=\"charts\"", "data-status"),
        Some("running")
    );
    assert!(
        dom.contains(&format!("<td>{job}</td>")),
        "the job list: {dom}"
    );
    // One canvas per chart of the one list (coordinator/assets/charts.json).
    let list: Value = serde_json::from_str(grlo_coordinator::charts::CHARTS_JSON).unwrap();
    for chart in list["charts"].as_array().unwrap() {
        let canvas = format!("id=\"chart-{}\"", chart["id"].as_str().unwrap());
        assert!(dom.contains(&canvas), "no {canvas} on the page: {dom}");
    }

    let screenshot = work.path().join("dashboard.png");
    let browsing = Instant::now();
    run_chromium(
        &browser,
        work.path(),
        "screenshot",
        &[
            format!("--screenshot={}", screenshot.display()),
            "--window-size=1280,1000".into(),
            url,
        ],
    );
    eprintln!(
        "chromium --screenshot took {:.1} s",
        browsing.elapsed().as_secs_f64()
    );
    let kept = target_dir().join("dashboard-screenshot.png");
    std::fs::copy(&screenshot, &kept).unwrap();
    eprintln!("the screenshot is at {}", kept.display());
    let picture = decode(&screenshot);
    assert_eq!((picture.width, picture.height), (1280, 1000));
    check_drawn(&picture, &kept);

    // The same charts as a PNG from the command line.
    let plot = work.path().join("plot.png");
    let answer = cluster.ctl(&["job", "plot", &job, "--out", &plot.display().to_string()]);
    assert_eq!(answer["path"], plot.display().to_string(), "{answer}");
    assert!(answer["steps"].as_u64().unwrap() >= 3, "{answer}");
    let kept = target_dir().join("job-plot.png");
    std::fs::copy(&plot, &kept).unwrap();
    eprintln!("the plot is at {}", kept.display());
    let picture = decode(&plot);
    let height = answer["height"].as_u64().unwrap() as u32;
    assert!(height > 1000, "{answer}");
    assert_eq!((picture.width, picture.height), (1600, height));
    check_drawn(&picture, &kept);

    // What `ctl job plot` refuses, and how it says so.
    let missing = work.path().join("no-such-dir");
    let output = cluster.ctl_output(&[
        "job",
        "plot",
        &job,
        "--out",
        &missing.join("plot.png").display().to_string(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&missing.display().to_string()) && stderr.contains("does not exist"),
        "{stderr}"
    );
    let elsewhere = work.path().join("x.png").display().to_string();
    let output = cluster.ctl_output(&["job", "plot", "job-404", "--out", &elsewhere]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("job-404"),
        "{stderr}"
    );
    let queued = cluster.submit_tiny(&[]);
    let output =
        cluster.ctl_output(&["job", "plot", &queued, "--out", &plot.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("no finished steps yet"),
        "{stderr}"
    );

    for id in [&queued, &job] {
        let cancelled = cluster.ctl(&["job", "cancel", id]);
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    }
    eprintln!("the test took {:.1} s", started.elapsed().as_secs_f64());
}

/// A readable chart, not a blank page: much of it drawn, many colours (text is anti-aliased),
/// and the lines of the reward, response-length and throughput charts in their colours.
fn check_drawn(picture: &Picture, path: &Path) {
    let drawn = picture.drawn_fraction();
    assert!(drawn > 0.15, "{}: only {drawn:.3} drawn", path.display());
    assert!(
        picture.colours() > 200,
        "{}: too few colours",
        path.display()
    );
    for (name, colour) in [
        ("reward", REWARD_BLUE),
        ("response length", LENGTH_ORANGE),
        ("throughput", THROUGHPUT_GREEN),
    ] {
        let pixels = picture.count(colour);
        assert!(
            pixels >= 100,
            "{}: the {name} line ({colour:?}) covers {pixels} pixels",
            path.display()
        );
    }
}
