//! The soak's verdict, from what the producers, the consumers, the store and the fault
//! injector recorded. Pure: every rule is unit-tested against made-up histories, each with the
//! one fault it must catch.
//!
//! The rules:
//! - every acknowledged message is in the store at the queue offset its acknowledgement named
//!   (`sync`; in `async` mode a crash may lose a suffix, at most the documented bound per crash),
//!   on the consumed topic and on the topics made new during the run, which are only read back;
//!   what a crash loses is the latest of each shard's log and so of each queue: a message lost
//!   while one placed after it in its shard's log (or later in its queue) and acknowledged
//!   before the same crash was kept is a failure in either mode;
//! - every acknowledged message still stored was delivered at least once, intact;
//! - nothing was delivered that was never sent, and nothing damaged;
//! - a delivery names the offset the store holds the message at; in orderly mode each consumer
//!   session receives a queue's messages in store order, going back only to redeliver after a
//!   fault;
//! - a message delivered again is redelivered within a window after a fault (a crash or a
//!   rebalance), and a message stored twice was sent again after a broker crash.

use std::collections::{BTreeMap, HashMap, HashSet};

use quiver_engine::store::types::MessagePos;
use serde::Serialize;

/// Where a message is stored: topic (0, the consumed topic; `n`, the `n`th topic made new
/// during the run), queue id and queue offset.
pub type StoreKey = (u32, i32, i64);

/// What a producer task recorded of one message.
#[derive(Debug, Clone)]
pub struct SendRecord {
    /// Which topic it was sent to (0: the consumed one; see [`StoreKey`]).
    pub topic: u32,
    /// The message's id (also in its body).
    pub id: String,
    /// Body length, bytes.
    pub body_bytes: usize,
    /// When the first try began, ms since the epoch.
    pub first_attempt_ms: i64,
    /// Tries that failed before the last one.
    pub failed_attempts: u32,
    /// Where the broker stored it and when it said so; `None` if no try was acknowledged.
    pub acked: Option<Ack>,
}

/// An acknowledged send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// When the acknowledgement arrived, ms since the epoch.
    pub at_ms: i64,
    /// Queue id.
    pub queue: i32,
    /// Queue offset.
    pub offset: i64,
    /// Where the broker placed it: shard and log position (the offset message id's physical
    /// offset), if the answer named one.
    pub pos: Option<u64>,
}

/// One message handed to a consumer's handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Which consumer process run (a restarted consumer is a new session).
    pub session: u32,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Queue id.
    pub queue: i32,
    /// Queue offset.
    pub offset: i64,
    /// The id its body names (`?` if none could be read).
    pub id: String,
    /// Whether the body matched its checksum.
    pub intact: bool,
}

/// A message read back from the store at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The id its body names.
    pub id: String,
    /// Whether the body matched its checksum.
    pub intact: bool,
}

/// What the fault injector did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL of the broker, then a restart on the same data.
    BrokerKill,
    /// SIGKILL of one consumer process, then a new one in its place.
    ConsumerKill,
    /// SIGKILL of the name server, then a restart (it is refilled by the broker).
    NamesrvRestart,
    /// A consumer process joining the group (at the start): a rebalance.
    ConsumerStart,
}

/// One fault, from the first action to the moment everything was back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fault {
    /// What.
    pub kind: FaultKind,
    /// Began, ms since the epoch.
    pub start_ms: i64,
    /// Over (the restarted process ready), ms since the epoch.
    pub end_ms: i64,
}

/// How to judge.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// `false`: sync flush, no acknowledged message may be lost. `true`: async flush, a crash
    /// may lose up to `crash_loss_bound_bytes` of the latest acknowledged appends.
    pub async_flush: bool,
    /// The documented bound of one crash in async mode (all shards together), bytes.
    pub crash_loss_bound_bytes: u64,
    /// Bytes of a stored record besides its body, at least (header and topic): what a lost
    /// message is counted as, at the least, against the bound.
    pub record_overhead_bytes: u64,
    /// Whether the consumers ran orderly, so that per-queue delivery order can be checked.
    pub orderly: bool,
    /// How long after a fault a redelivery is expected, ms.
    pub redelivery_window_ms: i64,
}

/// The verdict and the figures behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Messages the producers tried to send.
    pub sent: u64,
    /// Of those, acknowledged by the broker.
    pub acknowledged: u64,
    /// Of those, on topics made new during the run (read back, not consumed).
    pub acknowledged_on_new_topics: u64,
    /// Distinct messages delivered intact.
    pub consumed: u64,
    /// Handler deliveries in all.
    pub deliveries: u64,
    /// Acknowledged messages not in the store where their acknowledgement said (lost by a
    /// crash).
    pub lost_from_store: u64,
    /// Acknowledged messages still stored but never delivered.
    pub never_delivered: u64,
    /// Async: acknowledged messages stored at an offset a crash freed and the store reused,
    /// after the consumers had been given the lost message there (acknowledged or not); they
    /// moved on past it (as RocketMQ's consumers do), so it is never delivered.
    pub skipped_at_reused_offset: u64,
    /// Acknowledged messages lost, either way.
    pub lost: u64,
    /// Deliveries beyond each message's first.
    pub duplicated: u64,
    /// Of those, the same queue offset delivered again (redelivery after a fault).
    pub redelivered: u64,
    /// Messages stored at two or more offsets (sent again after an unanswered try).
    pub stored_twice: u64,
    /// Async: the most one crash lost, bytes (at least).
    pub max_crash_loss_bytes: u64,
    /// Async: messages lost per crash, in crash order.
    pub crash_losses: Vec<u64>,
    /// Messages delivered that were later lost by a crash (async only).
    pub delivered_then_lost: u64,
    /// Every rule broken, with the first few examples each.
    pub failures: Vec<String>,
}

/// A failure list that keeps a count and the first few examples of each rule.
#[derive(Default)]
struct Failures {
    rules: BTreeMap<&'static str, (u64, Vec<String>)>,
}

impl Failures {
    const EXAMPLES: usize = 3;

    fn add(&mut self, rule: &'static str, example: impl FnOnce() -> String) {
        let (count, examples) = self.rules.entry(rule).or_default();
        *count += 1;
        if examples.len() < Self::EXAMPLES {
            examples.push(example());
        }
    }

    fn into_lines(self) -> Vec<String> {
        self.rules
            .into_iter()
            .map(|(rule, (count, examples))| {
                format!("{rule}: {count} (e.g. {})", examples.join("; "))
            })
            .collect()
    }
}

/// Judges a soak run.
pub fn verify(
    sends: &[SendRecord],
    deliveries: &[Delivery],
    store: &BTreeMap<StoreKey, Stored>,
    faults: &[Fault],
    rules: &Rules,
) -> Verdict {
    let mut failures = Failures::default();
    let mut verdict = Verdict {
        sent: sends.len() as u64,
        deliveries: deliveries.len() as u64,
        ..Verdict::default()
    };
    let by_id: HashMap<&str, &SendRecord> = sends.iter().map(|s| (s.id.as_str(), s)).collect();

    // Where the store holds each id.
    let mut placed: HashMap<&str, Vec<StoreKey>> = HashMap::new();
    for (&(topic, queue, offset), stored) in store {
        if !stored.intact {
            failures.add("damaged in the store", || {
                format!(
                    "{} at topic {topic} queue {queue} offset {offset}",
                    stored.id
                )
            });
        }
        if !by_id.contains_key(stored.id.as_str()) {
            failures.add("stored but never sent", || {
                format!(
                    "{} at topic {topic} queue {queue} offset {offset}",
                    stored.id
                )
            });
        }
        placed
            .entry(stored.id.as_str())
            .or_default()
            .push((topic, queue, offset));
    }

    // Acknowledged messages against the store.
    let broker_kills: Vec<&Fault> = faults
        .iter()
        .filter(|f| f.kind == FaultKind::BrokerKill)
        .collect();
    let mut lost_ids: HashSet<&str> = HashSet::new();
    let mut crash_bytes = vec![0u64; broker_kills.len()];
    let mut crash_count = vec![0u64; broker_kills.len()];
    for send in sends {
        let Some(ack) = send.acked else { continue };
        verdict.acknowledged += 1;
        if send.topic != 0 {
            verdict.acknowledged_on_new_topics += 1;
        }
        let held = store
            .get(&(send.topic, ack.queue, ack.offset))
            .is_some_and(|s| s.id == send.id);
        if held {
            continue;
        }
        lost_ids.insert(&send.id);
        if !rules.async_flush {
            failures.add("acknowledged but not in the store", || {
                format!(
                    "{} acked at topic {} queue {} offset {}",
                    send.id, send.topic, ack.queue, ack.offset
                )
            });
            continue;
        }
        // A crash loses the latest appends: the first kill the acknowledgement came before.
        // An answer read while the broker was down was sent before it died: a kill counts
        // until its restart is over.
        match broker_kills.iter().position(|k| k.end_ms >= ack.at_ms) {
            Some(crash) => {
                crash_bytes[crash] += send.body_bytes as u64 + rules.record_overhead_bytes;
                crash_count[crash] += 1;
            }
            None => failures.add("lost without a crash", || {
                format!(
                    "{} acked at queue {} offset {}",
                    send.id, ack.queue, ack.offset
                )
            }),
        }
    }
    verdict.lost_from_store = lost_ids.len() as u64;
    if rules.async_flush {
        // A crash loses a suffix of each shard's log, so within a queue only the latest offsets:
        // nothing lost may lie before a message kept that was acknowledged before the kill
        // (after it began, the answer may come from the restarted broker, which reuses the
        // positions and offsets the crash freed).
        let mut kept: HashMap<(u32, i32), Vec<(i64, i64)>> = HashMap::new();
        let mut kept_in_shard: HashMap<u16, Vec<(u64, i64)>> = HashMap::new();
        for send in sends {
            if let Some(ack) = send.acked
                && !lost_ids.contains(send.id.as_str())
            {
                kept.entry((send.topic, ack.queue))
                    .or_default()
                    .push((ack.offset, ack.at_ms));
                if let Some(pos) = ack.pos {
                    kept_in_shard
                        .entry(MessagePos::from_u64(pos).shard())
                        .or_default()
                        .push((pos, ack.at_ms));
                }
            }
        }
        for send in sends {
            let Some(ack) = send.acked else { continue };
            if !lost_ids.contains(send.id.as_str()) {
                continue;
            }
            let Some(crash) = broker_kills.iter().find(|k| k.end_ms >= ack.at_ms) else {
                continue;
            };
            let later_kept = kept.get(&(send.topic, ack.queue)).and_then(|held| {
                held.iter()
                    .find(|&&(offset, at_ms)| offset > ack.offset && at_ms < crash.start_ms)
            });
            if let Some(&(offset, _)) = later_kept {
                failures.add("lost from the middle of a queue", || {
                    format!(
                        "{} acked at topic {} queue {} offset {}, offset {offset} kept",
                        send.id, send.topic, ack.queue, ack.offset
                    )
                });
            }
            let later_in_log = ack.pos.and_then(|pos| {
                kept_in_shard
                    .get(&MessagePos::from_u64(pos).shard())
                    .and_then(|held| {
                        held.iter()
                            .find(|&&(p, at_ms)| p > pos && at_ms < crash.start_ms)
                            .map(|&(p, _)| (pos, p))
                    })
            });
            if let Some((pos, after)) = later_in_log {
                failures.add("lost from the middle of a shard's log", || {
                    format!(
                        "{} acked at topic {} queue {} offset {} (position {pos:#x}), {after:#x} kept",
                        send.id, send.topic, ack.queue, ack.offset
                    )
                });
            }
        }

        verdict.max_crash_loss_bytes = crash_bytes.iter().copied().max().unwrap_or(0);
        verdict.crash_losses = crash_count;
        for (crash, &bytes) in crash_bytes.iter().enumerate() {
            if bytes > rules.crash_loss_bound_bytes {
                failures.add("a crash lost more than the documented bound", || {
                    format!(
                        "crash {crash} lost at least {bytes} bytes, bound {}",
                        rules.crash_loss_bound_bytes
                    )
                });
            }
        }
    }

    // Deliveries.
    let windows: Vec<(i64, i64)> = faults
        .iter()
        .map(|f| (f.start_ms, f.end_ms + rules.redelivery_window_ms))
        .collect();
    let in_window = |t: i64| windows.iter().any(|&(a, b)| a <= t && t <= b);
    let mut delivered_intact: HashSet<&str> = HashSet::new();
    let mut delivered_at: HashMap<(i32, i64), &str> = HashMap::new();
    let mut seen_positions: HashSet<(i32, i64, &str)> = HashSet::new();
    let mut seen_ids: HashSet<&str> = HashSet::new();
    let mut last_in_session: HashMap<(u32, i32), i64> = HashMap::new();
    let mut ordered: Vec<&Delivery> = deliveries.iter().collect();
    ordered.sort_by_key(|d| d.at_ms);
    for d in ordered {
        let id = d.id.as_str();
        if !by_id.contains_key(id) {
            failures.add("delivered but never sent", || {
                format!("{id} at queue {} offset {}", d.queue, d.offset)
            });
            continue;
        }
        if !d.intact {
            failures.add("delivered damaged", || {
                format!("{id} at queue {} offset {}", d.queue, d.offset)
            });
            continue;
        }
        delivered_intact.insert(id);
        delivered_at.entry((d.queue, d.offset)).or_insert(id);
        let matches_store = store
            .get(&(0, d.queue, d.offset))
            .is_some_and(|s| s.id == d.id);
        if !matches_store {
            // Async: read before a crash lost it (acknowledged or not yet: a consumer can see a
            // message before its producer sees the answer), its offset since reused.
            let crash_after = broker_kills.iter().any(|k| k.end_ms >= d.at_ms);
            if rules.async_flush && crash_after {
                verdict.delivered_then_lost += 1;
            } else {
                failures.add(
                    "delivered at an offset the store does not hold it at",
                    || format!("{id} at queue {} offset {}", d.queue, d.offset),
                );
            }
        }
        if !seen_ids.insert(id) {
            verdict.duplicated += 1;
            if !seen_positions.insert((d.queue, d.offset, id)) {
                verdict.redelivered += 1;
                if !in_window(d.at_ms) {
                    failures.add("redelivered outside any fault window", || {
                        format!(
                            "{id} at queue {} offset {} at {} ms",
                            d.queue, d.offset, d.at_ms
                        )
                    });
                }
            }
        } else {
            seen_positions.insert((d.queue, d.offset, id));
        }
        if rules.orderly {
            let last = last_in_session.insert((d.session, d.queue), d.offset);
            if let Some(last) = last
                && d.offset <= last
                && !in_window(d.at_ms)
            {
                failures.add(
                    "delivered out of store order outside any fault window",
                    || {
                        format!(
                            "session {} queue {}: offset {} after {last}",
                            d.session, d.queue, d.offset
                        )
                    },
                );
            }
        }
    }
    verdict.consumed = delivered_intact.len() as u64;

    for send in sends {
        // Topics made new during the run are read back, not consumed.
        if send.topic != 0 || send.acked.is_none() || lost_ids.contains(send.id.as_str()) {
            continue;
        }
        if !delivered_intact.contains(send.id.as_str()) {
            let reused = send.acked.is_some_and(|a| {
                delivered_at
                    .get(&(a.queue, a.offset))
                    .is_some_and(|other| *other != send.id)
            });
            if rules.async_flush && reused {
                verdict.skipped_at_reused_offset += 1;
                continue;
            }
            verdict.never_delivered += 1;
            failures.add("acknowledged and stored but never delivered", || {
                format!("{} at {:?}", send.id, send.acked)
            });
        }
    }
    verdict.lost =
        verdict.lost_from_store + verdict.never_delivered + verdict.skipped_at_reused_offset;

    // Messages stored twice: each must have been sent again across a broker crash.
    for (id, places) in &placed {
        if places.len() < 2 {
            continue;
        }
        verdict.stored_twice += 1;
        let Some(send) = by_id.get(id) else { continue };
        let end = send.acked.map_or(i64::MAX, |a| a.at_ms);
        let crossed_crash = broker_kills
            .iter()
            .any(|k| k.start_ms <= end && k.end_ms >= send.first_attempt_ms);
        if send.failed_attempts == 0 || !crossed_crash {
            failures.add("stored twice without a retry across a broker crash", || {
                format!("{id} at {places:?}")
            });
        }
    }
    verdict.failures = failures.into_lines();
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules {
        async_flush: false,
        crash_loss_bound_bytes: 1000,
        record_overhead_bytes: 100,
        orderly: true,
        redelivery_window_ms: 1_000,
    };

    fn send(id: &str, at_ms: i64, queue: i32, offset: i64) -> SendRecord {
        SendRecord {
            topic: 0,
            id: id.into(),
            body_bytes: 50,
            first_attempt_ms: at_ms - 1,
            failed_attempts: 0,
            acked: Some(Ack {
                at_ms,
                queue,
                offset,
                pos: Some(1000 * at_ms as u64),
            }),
        }
    }

    fn deliver(session: u32, at_ms: i64, queue: i32, offset: i64, id: &str) -> Delivery {
        Delivery {
            session,
            at_ms,
            queue,
            offset,
            id: id.into(),
            intact: true,
        }
    }

    fn stored(entries: &[(i32, i64, &str)]) -> BTreeMap<StoreKey, Stored> {
        entries
            .iter()
            .map(|&(q, o, id)| {
                let s = Stored {
                    id: id.into(),
                    intact: true,
                };
                ((0, q, o), s)
            })
            .collect()
    }

    type History = (
        Vec<SendRecord>,
        Vec<Delivery>,
        BTreeMap<StoreKey, Stored>,
        Vec<Fault>,
    );

    /// A clean history: three messages on two queues, one redelivered after a consumer kill.
    fn clean() -> History {
        let sends = vec![
            send("a", 10, 0, 0),
            send("b", 20, 0, 1),
            send("c", 30, 1, 0),
        ];
        let deliveries = vec![
            deliver(0, 100, 0, 0, "a"),
            deliver(0, 110, 0, 1, "b"),
            deliver(0, 120, 1, 0, "c"),
            deliver(1, 5_000, 0, 1, "b"),
        ];
        let store = stored(&[(0, 0, "a"), (0, 1, "b"), (1, 0, "c")]);
        let faults = vec![Fault {
            kind: FaultKind::ConsumerKill,
            start_ms: 4_000,
            end_ms: 4_500,
        }];
        (sends, deliveries, store, faults)
    }

    fn failures_of(
        sends: &[SendRecord],
        deliveries: &[Delivery],
        store: &BTreeMap<StoreKey, Stored>,
        faults: &[Fault],
        rules: &Rules,
    ) -> Vec<String> {
        verify(sends, deliveries, store, faults, rules).failures
    }

    #[test]
    fn a_clean_history_passes_with_its_redelivery_counted() {
        let (sends, deliveries, store, faults) = clean();
        let v = verify(&sends, &deliveries, &store, &faults, &RULES);
        assert_eq!(v.failures, Vec::<String>::new());
        assert_eq!((v.sent, v.acknowledged, v.consumed), (3, 3, 3));
        assert_eq!((v.lost, v.duplicated, v.redelivered), (0, 1, 1));
    }

    #[test]
    fn a_message_missing_from_the_store_is_lost_in_sync_mode() {
        let (sends, deliveries, mut store, faults) = clean();
        store.remove(&(0, 1, 0));
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter()
                .any(|l| l.starts_with("acknowledged but not in the store")),
            "{f:?}"
        );
    }

    #[test]
    fn a_new_topic_is_read_back_by_offset_and_not_expected_to_be_consumed() {
        let (mut sends, deliveries, mut store, faults) = clean();
        let on_new = |id: &str, at_ms, queue, offset| SendRecord {
            topic: 3,
            ..send(id, at_ms, queue, offset)
        };
        sends.push(on_new("n1", 40, 0, 0));
        sends.push(on_new("n2", 41, 0, 1));
        for (offset, id) in [(0, "n1"), (1, "n2")] {
            let s = Stored {
                id: id.into(),
                intact: true,
            };
            store.insert((3, 0, offset), s);
        }
        let v = verify(&sends, &deliveries, &store, &faults, &RULES);
        assert_eq!(v.failures, Vec::<String>::new(), "never consumed, not lost");
        assert_eq!((v.acknowledged, v.acknowledged_on_new_topics), (5, 2));
        // Its index lost the head: the messages are not where their answers said.
        let mut moved = store.clone();
        moved.remove(&(3, 0, 0));
        let f = failures_of(&sends, &deliveries, &moved, &faults, &RULES);
        assert!(
            f.iter()
                .any(|l| l.starts_with("acknowledged but not in the store")),
            "{f:?}"
        );
        // The same queue id and offset on the consumed topic does not stand in for it.
        let mut elsewhere = moved.clone();
        elsewhere.remove(&(3, 0, 1));
        elsewhere.insert(
            (0, 0, 5),
            Stored {
                id: "n2".into(),
                intact: true,
            },
        );
        let f = failures_of(&sends, &deliveries, &elsewhere, &faults, &RULES);
        assert!(
            f.iter()
                .any(|l| l.starts_with("acknowledged but not in the store: 2")),
            "{f:?}"
        );
    }

    #[test]
    fn a_message_never_delivered_is_lost() {
        let (sends, mut deliveries, store, faults) = clean();
        deliveries.retain(|d| d.id != "c");
        let v = verify(&sends, &deliveries, &store, &faults, &RULES);
        assert_eq!(v.never_delivered, 1);
        assert_eq!(v.lost, 1);
        assert!(v.failures[0].starts_with("acknowledged and stored but never delivered"));
    }

    #[test]
    fn unsent_and_damaged_deliveries_fail() {
        let (sends, mut deliveries, store, faults) = clean();
        deliveries.push(deliver(0, 130, 1, 1, "zzz"));
        deliveries[0].intact = false;
        deliveries.push(deliver(0, 140, 0, 0, "a"));
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter().any(|l| l.starts_with("delivered but never sent")),
            "{f:?}"
        );
        assert!(
            f.iter().any(|l| l.starts_with("delivered damaged")),
            "{f:?}"
        );
    }

    #[test]
    fn a_delivery_at_the_wrong_offset_fails() {
        let (sends, mut deliveries, store, faults) = clean();
        deliveries[2].offset = 7;
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter().any(|l| l.starts_with("delivered at an offset")),
            "{f:?}"
        );
    }

    #[test]
    fn redelivery_and_reordering_outside_a_fault_window_fail() {
        let (sends, mut deliveries, store, mut faults) = clean();
        faults.clear();
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter().any(|l| l.starts_with("redelivered outside")),
            "{f:?}"
        );
        // The same session going back in a queue, with no fault around it.
        let (_, _, _, faults) = clean();
        deliveries[3].session = 0;
        deliveries[3].at_ms = 100_000;
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter()
                .any(|l| l.starts_with("delivered out of store order")),
            "{f:?}"
        );
        // Unordered consumers are not held to order, only to the window.
        let unordered = Rules {
            orderly: false,
            ..RULES
        };
        let f = failures_of(&sends, &deliveries, &store, &faults, &unordered);
        assert!(
            !f.iter()
                .any(|l| l.starts_with("delivered out of store order")),
            "{f:?}"
        );
    }

    #[test]
    fn a_message_stored_twice_needs_a_retry_across_a_crash() {
        let (mut sends, deliveries, _, mut faults) = clean();
        let store = stored(&[(0, 0, "a"), (0, 1, "b"), (1, 0, "c"), (1, 1, "c")]);
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(f.iter().any(|l| l.starts_with("stored twice")), "{f:?}");
        sends[2].failed_attempts = 1;
        faults.push(Fault {
            kind: FaultKind::BrokerKill,
            start_ms: 29,
            end_ms: 30,
        });
        let v = verify(&sends, &deliveries, &store, &faults, &RULES);
        assert_eq!(v.failures, Vec::<String>::new());
        assert_eq!(v.stored_twice, 1);
    }

    #[test]
    fn an_async_crash_loses_only_the_latest_of_a_queue() {
        let rules = Rules {
            async_flush: true,
            ..RULES
        };
        let (sends, deliveries, mut store, mut faults) = clean();
        faults.push(Fault {
            kind: FaultKind::BrokerKill,
            start_ms: 200,
            end_ms: 220,
        });
        // "a" (offset 0) gone while "b" (offset 1 of the same queue, acknowledged before the
        // same crash) was kept: not a suffix, whatever the bound.
        store.remove(&(0, 0, 0));
        let f = failures_of(&sends, &deliveries, &store, &faults, &rules);
        assert!(
            f.iter()
                .any(|l| l.starts_with("lost from the middle of a queue")),
            "{f:?}"
        );
        // "b" and "c" lost, "a" kept: the latest of the log, a suffix.
        let (_, mut deliveries, mut store, _) = clean();
        store.remove(&(0, 0, 1));
        store.remove(&(0, 1, 0));
        deliveries.retain(|d| d.session == 0);
        let f = failures_of(&sends, &deliveries, &store, &faults, &rules);
        assert_eq!(f, Vec::<String>::new());
        // A whole queue ("b" alone on queue 0 here) gone while "c", placed after it in the
        // same shard's log, was kept: not a suffix of the log.
        let mut one_queue = sends.clone();
        one_queue.remove(0);
        let (_, _, mut store, _) = clean();
        store.remove(&(0, 0, 0));
        store.remove(&(0, 0, 1));
        let f = failures_of(&one_queue, &deliveries, &store, &faults, &rules);
        assert!(
            f.iter()
                .any(|l| l.starts_with("lost from the middle of a shard's log")),
            "{f:?}"
        );
    }

    #[test]
    fn async_crash_losses_are_counted_against_the_bound() {
        let rules = Rules {
            async_flush: true,
            ..RULES
        };
        let (sends, mut deliveries, mut store, mut faults) = clean();
        // "b" and "c" were lost by a crash after their acknowledgements; "b" had been delivered.
        store.remove(&(0, 0, 1));
        store.remove(&(0, 1, 0));
        deliveries.retain(|d| d.id != "c" && d.session == 0);
        faults.push(Fault {
            kind: FaultKind::BrokerKill,
            start_ms: 200,
            end_ms: 220,
        });
        // An answer read after the kill began, before the restart was over, came from the
        // killed broker: still that crash's.
        let mut read_late = sends.clone();
        read_late[2].acked = Some(Ack {
            at_ms: 210,
            queue: 1,
            offset: 0,
            pos: Some(30_000),
        });
        let v = verify(&read_late, &deliveries, &store, &faults, &rules);
        assert_eq!(v.failures, Vec::<String>::new());
        assert_eq!(v.crash_losses, vec![2]);
        // After the restart, "d" took the offset "b" had had; the consumer had moved past it.
        let mut sends = sends;
        sends.push(send("d", 300, 0, 1));
        store.insert(
            (0, 0, 1),
            Stored {
                id: "d".into(),
                intact: true,
            },
        );
        let v = verify(&sends, &deliveries, &store, &faults, &rules);
        assert_eq!(v.failures, Vec::<String>::new());
        assert_eq!(v.skipped_at_reused_offset, 1);
        assert_eq!(v.lost, 3);
        // "e" was read by a consumer at queue 1 offset 1 before its answer came: the crash
        // lost it, the producer sent it again (now at offset 2), and "f" took offset 1.
        let mut unanswered = sends.clone();
        unanswered.push(SendRecord {
            failed_attempts: 1,
            ..send("e", 301, 1, 2)
        });
        unanswered.push(send("f", 302, 1, 1));
        let mut seen = deliveries.clone();
        seen.push(deliver(0, 45, 1, 1, "e"));
        seen.push(deliver(0, 310, 1, 2, "e"));
        let mut now_stored = store.clone();
        for (offset, id) in [(1, "f"), (2, "e")] {
            let s = Stored {
                id: id.into(),
                intact: true,
            };
            now_stored.insert((0, 1, offset), s);
        }
        let later = verify(&unanswered, &seen, &now_stored, &faults, &rules);
        assert_eq!(later.failures, Vec::<String>::new());
        assert_eq!(later.skipped_at_reused_offset, 2, "d and f");
        assert_eq!(later.delivered_then_lost, 2, "b and e");
        // In sync mode the same history is a loss.
        let f = failures_of(&sends, &deliveries, &store, &faults, &RULES);
        assert!(
            f.iter()
                .any(|l| l.starts_with("acknowledged and stored but never")),
            "{f:?}"
        );
        assert_eq!((v.lost_from_store, v.crash_losses.clone()), (2, vec![2]));
        assert_eq!(v.max_crash_loss_bytes, 2 * 150);
        assert_eq!(v.delivered_then_lost, 1);
        // Over the bound, or with no crash after the acknowledgement: a failure.
        let tight = Rules {
            crash_loss_bound_bytes: 299,
            ..rules
        };
        let f = failures_of(&sends, &deliveries, &store, &faults, &tight);
        assert!(
            f.iter().any(|l| l.starts_with("a crash lost more")),
            "{f:?}"
        );
        faults.retain(|f| f.kind != FaultKind::BrokerKill);
        let f = failures_of(&sends, &deliveries, &store, &faults, &rules);
        assert!(
            f.iter().any(|l| l.starts_with("lost without a crash")),
            "{f:?}"
        );
    }
}
