//! Where a consumer keeps how far it got in each queue: on the broker for a clustering group
//! (any member can take a queue over where another left it), in a local file for broadcasting
//! (every member has its own progress).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::client::MqError;
use crate::client::instance::{Instance, lock, refused};
use crate::protocol::bodies::MessageQueue;
use crate::remoting::RemotingCommand;
use crate::remoting::codes::{request, response};

/// A consumer's offsets: cached here, written to their home by [`OffsetStore::persist`].
pub(crate) struct OffsetStore {
    group: String,
    instance: Arc<Instance>,
    home: Home,
    table: Mutex<HashMap<MessageQueue, i64>>,
    /// Persists run one at a time, each reading the cache when its turn comes, so a slow
    /// periodic commit cannot land after (and undo) a newer one.
    persisting: tokio::sync::Mutex<()>,
}

enum Home {
    Broker,
    File(PathBuf),
}

/// The local file's content: offsets by queue.
#[derive(Debug, Default, Serialize, Deserialize)]
struct OffsetFile {
    offsets: Vec<(MessageQueue, i64)>,
}

impl OffsetStore {
    /// Offsets kept on the brokers.
    pub(crate) fn remote(group: &str, instance: Arc<Instance>) -> OffsetStore {
        OffsetStore {
            group: group.to_string(),
            instance,
            home: Home::Broker,
            table: Mutex::default(),
            persisting: tokio::sync::Mutex::new(()),
        }
    }

    /// Offsets kept in `path`, loaded now.
    pub(crate) fn local(
        group: &str,
        instance: Arc<Instance>,
        path: PathBuf,
    ) -> Result<OffsetStore, MqError> {
        let table = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<OffsetFile>(&bytes)
                .map_err(|e| MqError::Usage(format!("offsets file {}: {e}", path.display())))?
                .offsets
                .into_iter()
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => {
                return Err(MqError::Usage(format!(
                    "reading offsets file {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(OffsetStore {
            group: group.to_string(),
            instance,
            home: Home::File(path),
            table: Mutex::new(table),
            persisting: tokio::sync::Mutex::new(()),
        })
    }

    /// Records progress; with `increase_only`, never moves an offset back (late completions
    /// of earlier batches must not undo later ones).
    pub(crate) fn update(&self, queue: &MessageQueue, offset: i64, increase_only: bool) {
        let mut table = lock(&self.table);
        let entry = table.entry(queue.clone()).or_insert(offset);
        if !increase_only || offset > *entry {
            *entry = offset;
        }
    }

    /// The cached offset, if any.
    pub(crate) fn cached(&self, queue: &MessageQueue) -> Option<i64> {
        lock(&self.table).get(queue).copied()
    }

    /// The offset from its home (the broker or the file), cached; `None` if the group never
    /// committed one for the queue.
    pub(crate) async fn read(&self, queue: &MessageQueue) -> Result<Option<i64>, MqError> {
        match &self.home {
            Home::File(_) => Ok(self.cached(queue)),
            Home::Broker => {
                let addr = self.broker(queue)?;
                let ask = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
                    .with_field("consumerGroup", &self.group)
                    .with_field("topic", &queue.topic)
                    .with_field("queueId", queue.queue_id);
                let answer = self.instance.invoke(&addr, ask).await?;
                match answer.code {
                    response::SUCCESS => {
                        let offset = answer
                            .optional_parsed::<i64>("offset")
                            .ok()
                            .flatten()
                            .unwrap_or(0);
                        self.update(queue, offset, false);
                        Ok(Some(offset))
                    }
                    response::QUERY_NOT_FOUND => Ok(None),
                    _ => Err(refused("an offset query", &addr, &answer)),
                }
            }
        }
    }

    /// Writes the offsets of `queues` home.
    pub(crate) async fn persist(&self, queues: &[MessageQueue]) -> Result<(), MqError> {
        let _one_at_a_time = self.persisting.lock().await;
        match &self.home {
            Home::File(path) => {
                let offsets: BTreeMap<MessageQueue, i64> = lock(&self.table)
                    .iter()
                    .map(|(q, o)| (q.clone(), *o))
                    .collect();
                let file = OffsetFile {
                    offsets: offsets.into_iter().collect(),
                };
                write_atomically(path, &serde_json::to_vec_pretty(&file).unwrap_or_default())
                    .map_err(|e| {
                        MqError::Usage(format!("writing offsets file {}: {e}", path.display()))
                    })
            }
            Home::Broker => {
                let mut first_error = None;
                for queue in queues {
                    let Some(offset) = self.cached(queue) else {
                        continue;
                    };
                    if let Err(e) = self.commit(queue, offset).await {
                        first_error.get_or_insert(e);
                    }
                }
                first_error.map_or(Ok(()), Err)
            }
        }
    }

    async fn commit(&self, queue: &MessageQueue, offset: i64) -> Result<(), MqError> {
        let addr = self.broker(queue)?;
        let update = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
            .with_field("consumerGroup", &self.group)
            .with_field("topic", &queue.topic)
            .with_field("queueId", queue.queue_id)
            .with_field("commitOffset", offset);
        self.instance
            .invoke_ok(&addr, "an offset commit", update)
            .await
            .map(|_| ())
    }

    /// Forgets a queue this member no longer owns.
    pub(crate) fn remove(&self, queue: &MessageQueue) {
        if matches!(self.home, Home::Broker) {
            lock(&self.table).remove(queue);
        }
    }

    fn broker(&self, queue: &MessageQueue) -> Result<String, MqError> {
        self.instance
            .master_addr(&queue.broker_name)
            .ok_or_else(|| MqError::NoRoute(queue.topic.clone()))
    }
}

/// Writes a file so that a crash leaves the old or the new content, never a mix.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path)
}
