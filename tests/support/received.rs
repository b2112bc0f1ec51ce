//! What consumers received, shared between handlers and the test, with waits on conditions
//! (woken by every delivery, bounded by a deadline so a broken broker fails the test).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

/// How long any one wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Delivery counts by message body.
#[derive(Default)]
pub struct Received {
    counts: Mutex<BTreeMap<String, usize>>,
    /// Notified after every delivery, for tests that wait on several inboxes at once.
    pub changed: Notify,
}

impl Received {
    /// Records deliveries.
    pub fn add(&self, bodies: impl IntoIterator<Item = String>) {
        let mut counts = self.counts.lock().unwrap();
        for body in bodies {
            *counts.entry(body).or_default() += 1;
        }
        drop(counts);
        self.changed.notify_waiters();
    }

    /// What was received so far.
    pub fn snapshot(&self) -> BTreeMap<String, usize> {
        self.counts.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what was received.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&BTreeMap<String, usize>) -> bool) {
        let waiting = async {
            loop {
                let notified = self.changed.notified();
                if done(&self.snapshot()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(DEADLINE, waiting).await.is_err() {
            let got = self.snapshot();
            panic!(
                "timed out waiting for {what}; received {} distinct",
                got.len()
            );
        }
    }
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`]. For states no
/// event announces (a rebalance having settled).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
