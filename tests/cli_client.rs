//! `quiver produce` and `quiver consume`, the real binary against a real `quiver standalone`:
//! messages from arguments, stdin and made up; consumption from the start, from a group's
//! committed offsets (and committing them), counted or printed as JSON; clear errors.

mod support;

use assert_cmd::Command;
use predicates::str::contains;
use support::{Standalone, free_port, write_config};

fn start_quiver(dir: &std::path::Path) -> Standalone {
    let config = write_config(dir, free_port(), free_port(), "async", "");
    Standalone::start(&config, &dir.join("data"))
}

fn quiver(standalone: &Standalone) -> Command {
    let mut command = Command::cargo_bin("quiver").unwrap();
    command
        .env("QUIVER_NAMESRV", standalone.namesrv.to_string())
        .env("RUST_LOG", "warn")
        .timeout(std::time::Duration::from_secs(60));
    command
}

#[test]
fn produced_messages_are_consumed_with_their_tags_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = start_quiver(dir.path());
    quiver(&standalone)
        .args([
            "produce",
            "cli-topic",
            "one",
            "two",
            "three",
            "--tags",
            "T",
            "--keys",
            "k9",
            "--json",
        ])
        .assert()
        .success()
        .stderr(contains("sent 3 messages (0 failed)"));
    let output = quiver(&standalone)
        .args([
            "consume",
            "cli-topic",
            "--from",
            "earliest",
            "--count",
            "3",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut bodies: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(value["tags"], "T", "{line}");
            assert_eq!(value["keys"][0], "k9", "{line}");
            value["body"].as_str().unwrap().to_string()
        })
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["one", "three", "two"]);
}

#[test]
fn made_up_load_and_stdin_lines_are_counted_and_a_group_resumes_where_it_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = start_quiver(dir.path());
    quiver(&standalone)
        .args([
            "produce",
            "cli-load",
            "--count",
            "300",
            "--size",
            "100",
            "--concurrency",
            "4",
        ])
        .assert()
        .success()
        .stderr(contains("sent 300 messages (0 failed)"));
    quiver(&standalone)
        .args(["produce", "cli-load", "--batch", "2"])
        .write_stdin("line-a\nline-b\nline-c\n")
        .assert()
        .success()
        .stderr(contains("sent 3 messages"));
    // The group reads everything and commits it...
    quiver(&standalone)
        .args([
            "consume",
            "cli-load",
            "--group",
            "g1",
            "--quiet",
            "--idle-exit-ms",
            "500",
        ])
        .assert()
        .success()
        .stderr(contains("consumed 303 messages"));
    // ...so the next run of the same group finds nothing new, and another group everything.
    quiver(&standalone)
        .args([
            "consume",
            "cli-load",
            "--group",
            "g1",
            "--quiet",
            "--idle-exit-ms",
            "500",
        ])
        .assert()
        .success()
        .stderr(contains("consumed 0 messages"));
    quiver(&standalone)
        .args([
            "consume", "cli-load", "--group", "g2", "--tags", "*", "--count", "303", "--quiet",
        ])
        .assert()
        .success()
        .stderr(contains("consumed 303 messages"));
}

#[test]
fn consuming_a_missing_topic_or_without_a_name_server_says_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let standalone = start_quiver(dir.path());
    quiver(&standalone)
        .args(["consume", "no-such-topic", "--count", "1"])
        .assert()
        .failure()
        .stderr(contains("does the topic exist"));
    quiver(&standalone)
        .env("QUIVER_NAMESRV", format!("127.0.0.1:{}", free_port()))
        .args(["produce", "t", "x"])
        .assert()
        .failure()
        .stderr(contains("name server"));
}
