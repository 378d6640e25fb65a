//! Load on one coordinator: 200 simulated actors (`grlo bench coordinator`) registering,
//! heartbeating every 500 ms and leasing at once through a job's steps. Asserted: the job
//! succeeds, every task is leased exactly once, every heartbeat is answered; the latencies and
//! leases/s are printed (they are measured, not asserted: a loaded CI machine varies).

use std::process::Command;

use serde_json::Value;

#[test]
fn two_hundred_workers_lease_every_task_exactly_once() {
    let output = Command::new(env!("CARGO_BIN_EXE_grlo"))
        .args([
            "bench",
            "coordinator",
            "--workers",
            "200",
            "--steps",
            "20",
            "--heartbeat-ms",
            "500",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("grlo runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("the report");
    eprintln!("{report:#}");
    assert_eq!(report["job_status"], "succeeded", "{report}");
    assert_eq!(report["job_step"], 20, "{report}");
    let per_step = report["tasks_per_step"].as_u64().unwrap();
    assert_eq!(report["tasks"], 20 * per_step, "{report}");
    // A task is leased twice only when its actor was taken for dead (heartbeats held up past
    // three intervals on a loaded machine) and its lease went back to the pool.
    if report["reregistered"] == 0 {
        assert_eq!(report["leases"], report["tasks"], "{report}");
        assert_eq!(
            report["tasks_leased_twice"],
            serde_json::json!([]),
            "{report}"
        );
    }
    assert!(report["heartbeats"].as_u64().unwrap() >= 200, "{report}");
    assert_eq!(report["register_ms"]["count"], 202, "{report}");
}
