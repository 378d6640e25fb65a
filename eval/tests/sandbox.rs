//! The sandbox's limits and isolation, each checked by a program that tries to break it.

use std::time::{Duration, Instant};

use grlo_eval::sandbox::{Config, Limits, Sandbox, SandboxError, Status};

fn sandbox_with(limits: Limits) -> Sandbox {
    let sandbox = Sandbox::new(Config {
        limits,
        pool_size: 4,
        ..Config::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("isolation: {}", sandbox.isolation());
    sandbox
}

fn sandbox() -> Sandbox {
    sandbox_with(Limits::default())
}

/// Whether a process is gone (a zombie nobody reaps counts as gone: it runs nothing).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn stdout_and_exit_codes() {
    let sandbox = sandbox();
    assert!(sandbox.isolation().is_confined(), "{}", sandbox.isolation());
    let outcome = sandbox.run("print('hello', 6 * 7)");
    assert_eq!(outcome.status, Status::Exited(0), "{}", outcome.stderr);
    assert_eq!(outcome.stdout, "hello 42\n");
    assert!(outcome.status.passed());

    let outcome = sandbox.run("import sys\nsys.exit(3)");
    assert_eq!(outcome.status, Status::Exited(3));
    assert!(!outcome.status.passed());

    let outcome = sandbox.run("assert 1 == 2, 'nope'");
    assert_eq!(outcome.status, Status::Exited(1));
    assert!(
        outcome.stderr.contains("AssertionError: nope"),
        "{}",
        outcome.stderr
    );

    let outcome = sandbox.run("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)");
    assert_eq!(outcome.status, Status::Signaled(libc::SIGTERM));
}

#[test]
fn the_wall_limit_kills_the_program_and_its_children() {
    let sandbox = sandbox_with(Limits {
        wall: Duration::from_secs(1),
        ..Limits::default()
    });
    // A child in the group and one that left it with setsid: both must die.
    let program = r#"
import os, sys, time
for leave_group in (False, True):
    pid = os.fork()
    if pid == 0:
        if leave_group:
            os.setsid()
        time.sleep(60)
        os._exit(0)
    print(pid, flush=True)
time.sleep(60)
"#;
    let started = Instant::now();
    let outcome = sandbox.run(program);
    assert_eq!(outcome.status, Status::TimedOut, "{}", outcome.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    let pids: Vec<u32> = outcome.stdout.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{}", outcome.stdout);
    std::thread::sleep(Duration::from_millis(200));
    for pid in pids {
        assert!(gone(pid), "grandchild {pid} still runs");
    }
}

#[test]
fn the_cpu_limit_stops_a_busy_loop() {
    let sandbox = sandbox_with(Limits {
        cpu_seconds: 1,
        ..Limits::default()
    });
    let outcome = sandbox.run("while True:\n    pass");
    assert_eq!(outcome.status, Status::CpuLimit);
    assert!(outcome.wall < Duration::from_secs(5), "{:?}", outcome.wall);
}

#[test]
fn the_memory_limit_stops_an_8_gb_allocation() {
    let sandbox = sandbox();
    for program in [
        "x = bytearray(8 * 1000 ** 3)\nprint('allocated')",
        // Growing by 256 MB at a time, touching each page.
        "x = []\nfor _ in range(32):\n    x.append(b'x' * (256 * 1000 ** 2))\nprint('allocated')",
    ] {
        let outcome = sandbox.run(program);
        assert_eq!(outcome.status, Status::Exited(1), "{}", outcome.stderr);
        assert!(outcome.stderr.contains("MemoryError"), "{}", outcome.stderr);
        assert_eq!(outcome.stdout, "");
    }
}

#[test]
fn the_file_size_limit_stops_a_large_write() {
    let sandbox = sandbox_with(Limits {
        file_size_bytes: 1 << 20,
        ..Limits::default()
    });
    let program = r#"
import signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
with open("big", "wb") as f:
    f.write(b"x" * (1 << 20))
    print("1 MiB written", flush=True)
    f.write(b"x")
"#;
    let outcome = sandbox.run(program);
    assert_eq!(outcome.stdout, "1 MiB written\n");
    assert_eq!(outcome.status, Status::Exited(1));
    assert!(
        outcome.stderr.contains("File too large"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn the_process_limit_bounds_a_fork_bomb() {
    let sandbox = sandbox_with(Limits {
        processes: 16,
        wall: Duration::from_secs(2),
        ..Limits::default()
    });
    // Counted: forks succeed up to the limit and then fail.
    let counted = r#"
import os, time
made = 0
for _ in range(200):
    try:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        made += 1
    except BlockingIOError:
        break
print(made)
"#;
    let outcome = sandbox.run(counted);
    assert_eq!(outcome.status, Status::Exited(0), "{}", outcome.stderr);
    let made: u64 = outcome.stdout.trim().parse().unwrap();
    assert!((1..16).contains(&made), "made {made} children");

    let bomb =
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass";
    let started = Instant::now();
    let outcome = sandbox.run(bomb);
    assert_eq!(outcome.status, Status::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(6));
    // The next run in the same slot is not starved by leftovers.
    let outcome = sandbox.run("print('after')");
    assert_eq!(outcome.stdout, "after\n", "{}", outcome.stderr);
}

#[test]
fn the_network_is_unreachable() {
    let sandbox = sandbox();
    // A server this process listens on: reachable from here, not from the sandbox.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let program = r#"
import socket
for address in [("127.0.0.1", PORT), ("1.1.1.1", 53)]:
    try:
        socket.create_connection(address, timeout=2)
        print("connected", address)
    except OSError as e:
        print(e.errno)
"#
    .replace("PORT", &port.to_string());
    let outcome = sandbox.run(&program);
    assert_eq!(outcome.status, Status::Exited(0), "{}", outcome.stderr);
    let unreachable = libc::ENETUNREACH.to_string();
    assert_eq!(
        outcome.stdout.lines().collect::<Vec<_>>(),
        [unreachable.as_str(), unreachable.as_str()]
    );
}

#[test]
fn it_cannot_write_outside_its_directory() {
    let sandbox = sandbox();
    let here = env!("CARGO_MANIFEST_DIR");
    let program = format!(
        r#"
import os
open("mine.txt", "w").write("ok")
for path in ["/root/grlo-sandbox-escape", "{here}/grlo-sandbox-escape", "/etc/grlo-sandbox-escape"]:
    try:
        open(path, "w").write("escaped")
        print("wrote", path)
    except OSError as e:
        print(e.errno)
"#
    );
    let outcome = sandbox.run(&program);
    assert_eq!(outcome.status, Status::Exited(0), "{}", outcome.stderr);
    let denied = libc::EACCES.to_string();
    assert_eq!(
        outcome.stdout.lines().collect::<Vec<_>>(),
        [denied.as_str(); 3]
    );
    assert!(
        !std::path::Path::new(here)
            .join("grlo-sandbox-escape")
            .exists()
    );
}

#[test]
fn output_is_capped_and_the_program_still_finishes() {
    let sandbox = sandbox_with(Limits {
        output_bytes: 1000,
        ..Limits::default()
    });
    let outcome =
        sandbox.run("import sys\nsys.stdout.write('x' * 5_000_000)\nsys.stderr.write('e' * 5000)");
    assert_eq!(outcome.status, Status::Exited(0));
    assert_eq!(outcome.stdout.len(), 1000);
    assert_eq!(outcome.stderr.len(), 1000);
    assert!(outcome.truncated);
}

#[test]
fn a_program_that_closes_stdout_early() {
    let sandbox = sandbox();
    let program = "import os, sys, time\nprint('bye', flush=True)\nos.close(1)\ntime.sleep(0.3)\nsys.stderr.write('still here')\nsys.exit(4)";
    let outcome = sandbox.run(program);
    assert_eq!(outcome.status, Status::Exited(4));
    assert_eq!(outcome.stdout, "bye\n");
    assert_eq!(outcome.stderr, "still here");
}

#[test]
fn stdin_is_given() {
    let sandbox = sandbox();
    let outcome = sandbox.run_with_input("print(sum(map(int, input().split())))", Some("2 3\n"));
    assert_eq!(outcome.stdout, "5\n", "{}", outcome.stderr);
}

#[test]
fn run_many_keeps_order_and_the_parallel_bound() {
    let sandbox = sandbox();
    let programs: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "import time\nstart = time.time()\ntime.sleep(0.3)\nprint({i}, start, time.time())"
            )
        })
        .collect();
    let outcomes = sandbox.run_many(&programs, 2);
    let mut intervals = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let fields: Vec<&str> = outcome.stdout.split_whitespace().collect();
        assert_eq!(fields[0], i.to_string(), "order kept");
        intervals.push((
            fields[1].parse::<f64>().unwrap(),
            fields[2].parse::<f64>().unwrap(),
        ));
    }
    let most_at_once = intervals
        .iter()
        .map(|&(start, _)| {
            intervals
                .iter()
                .filter(|&&(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap();
    assert_eq!(most_at_once, 2);
}

#[test]
fn without_namespaces_it_refuses_unless_allowed() {
    let config = Config {
        skip_namespaces: true,
        ..Config::default()
    };
    let error = Sandbox::new(config.clone()).err().expect("a refusal");
    assert!(matches!(error, SandboxError::CannotIsolate { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with("cannot isolate: the network is reachable"),
        "{message}"
    );
    assert!(message.contains("--allow-unconfined"), "{message}");

    let sandbox = Sandbox::new(Config {
        allow_unconfined: true,
        ..config
    })
    .unwrap();
    let line = sandbox.isolation().to_string();
    assert!(
        line.starts_with("UNCONFINED (allowed by --allow-unconfined)"),
        "{line}"
    );
    assert!(!sandbox.isolation().is_confined());
    assert_eq!(sandbox.run("print(1)").stdout, "1\n");
}

#[test]
fn a_bad_python_is_named() {
    let error = Sandbox::new(Config {
        python: Some("/nonexistent/python3".into()),
        ..Config::default()
    })
    .err()
    .expect("no python");
    assert!(
        error.to_string().contains("/nonexistent/python3"),
        "{error}"
    );
}
