//! The fault-injecting soak, bounded for CI: `quiver soak` runs producers and a consumer group
//! of real processes while it kills the broker (SIGKILL), kills consumers and restarts the
//! name server at random intervals, and makes new topics every 2 s and after each broker
//! restart, each sent to by 32 senders at once; then it checks what every party recorded. In
//! sync flush mode no acknowledged message may be lost; in async mode a crash may lose at most
//! the documented bound. The rules themselves are unit-tested in `bench/src/soak/verify.rs`,
//! each against a history with the fault it must catch; here the real system has to pass them.
//!
//! By hand, for longer: `quiver soak --duration 600` (see RELIABILITY.md).

use std::process::Command;

use serde_json::Value;

/// Runs `quiver soak` with these arguments and returns its JSON report, asserting it exited
/// cleanly (it exits with an error when any rule was broken).
fn soak(args: &[&str]) -> Value {
    // One soak at a time: two would share the two cores and each other's timing.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_quiver"))
        .arg("soak")
        .args(args)
        .args(["--json", "--dir"])
        .arg(dir.path())
        .output()
        .expect("running quiver soak");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    if !output.status.success() {
        for log in ["broker.log", "namesrv.log", "consumers.log"] {
            let text = std::fs::read_to_string(dir.path().join(log)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            eprintln!(
                "--- last lines of {log}:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        panic!(
            "quiver soak failed ({}):\n{report:#}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    report
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("the report has no {field}: {report:#}"))
}

/// Runs a soak of `flush` mode for `duration` seconds, faults every 3–7 s, and checks what
/// every run must show: it passed, every kind of fault happened, and there was real traffic.
fn soak_passing(flush: &str, duration: &str) -> Value {
    let report = soak(&[
        "--flush",
        flush,
        "--duration",
        duration,
        "--fault-min-secs",
        "3",
        "--fault-max-secs",
        "7",
        "--rate",
        "2000",
        "--drain-secs",
        "120",
    ]);
    eprintln!("{report:#}");
    assert_eq!(report["passed"], Value::Bool(true));
    assert_eq!(report["failures"], Value::Array(Vec::new()));
    // The first three faults are one of each kind.
    assert!(count(&report, "broker_kills") >= 1);
    assert!(count(&report, "consumer_kills") >= 1);
    assert!(count(&report, "namesrv_restarts") >= 1);
    let acknowledged = count(&report, "acknowledged");
    assert!(acknowledged >= 10_000, "too little traffic: {acknowledged}");
    // New topics were made and sent to by many senders at once (before and after kills).
    assert!(count(&report, "new_topics") >= 8, "{report:#}");
    assert!(count(&report, "acknowledged_on_new_topics") >= 1000);
    report
}

#[test]
fn sync_flush_loses_nothing_acknowledged_through_crashes_and_restarts() {
    let report = soak_passing("sync", "45");
    assert_eq!(count(&report, "lost"), 0);
    let consumed_topic =
        count(&report, "acknowledged") - count(&report, "acknowledged_on_new_topics");
    assert!(count(&report, "consumed") >= consumed_topic);
}

#[test]
fn async_flush_losses_stay_within_the_documented_bound() {
    let report = soak_passing("async", "30");
    assert!(count(&report, "max_crash_loss_bytes") <= count(&report, "crash_loss_bound_bytes"));
    // Lost from the store only by crashes, and the consumers got everything else.
    assert_eq!(count(&report, "never_delivered"), 0);
}
