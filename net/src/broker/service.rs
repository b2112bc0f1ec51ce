//! The broker's request dispatch: one [`BrokerService`] per shard thread, each request code to
//! its processor.

use std::rc::Rc;
use std::sync::Arc;
use std::time::SystemTime;

use quiver_engine::LogError;
use quiver_engine::store::LocalShards;
use quiver_engine::store::types::StoreError;

use super::Shared;
use super::clients::notify;
use crate::remoting::codes::{request, response};
use crate::remoting::{FieldError, RemotingCommand};
use crate::server::{Connection, Service};
use quiver_engine::log_budget::LogBudget;

/// Serves one shard thread's connections.
pub(crate) struct BrokerService {
    pub(crate) shared: Arc<Shared>,
    pub(crate) shards: LocalShards,
    /// When this thread's front started serving: the broker's boot time, for runtime figures.
    pub(crate) booted: SystemTime,
}

/// A processor's failure, answered with its code and remark.
pub(crate) struct Refusal {
    pub(crate) code: i32,
    pub(crate) remark: String,
}

impl Refusal {
    pub(crate) fn new(code: i32, remark: impl Into<String>) -> Refusal {
        Refusal {
            code,
            remark: remark.into(),
        }
    }
}

impl From<FieldError> for Refusal {
    fn from(e: FieldError) -> Refusal {
        Refusal::new(response::SYSTEM_ERROR, e.to_string())
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Refusal {
        let code = match &e {
            StoreError::Busy => response::SYSTEM_BUSY,
            StoreError::Shutdown => response::SERVICE_NOT_AVAILABLE,
            StoreError::Log(LogError::Record(_) | LogError::BatchTooLarge { .. }) => {
                response::MESSAGE_ILLEGAL
            }
            StoreError::Log(LogError::DiskFull { .. } | LogError::Failed(_) | LogError::Closed) => {
                response::SERVICE_NOT_AVAILABLE
            }
            _ => response::SYSTEM_ERROR,
        };
        Refusal::new(code, e.to_string())
    }
}

/// What processors return: the answer, or a refusal turned into one.
pub(crate) type Processed = Result<RemotingCommand, Refusal>;

/// Refused requests logged per second at most; past that they are counted, and the next line
/// logged says how many were not.
const REFUSAL_LOG_LINES_PER_SEC: u32 = 100;

static REFUSAL_LOG_BUDGET: LogBudget =
    LogBudget::new(REFUSAL_LOG_LINES_PER_SEC, std::time::Duration::from_secs(1));

/// One line per refused request, so an operator can see who sent what and why it was turned
/// away, up to [`REFUSAL_LOG_LINES_PER_SEC`]: a client can send refusable requests as fast as
/// it likes. `QUERY_NOT_FOUND` is an ordinary answer (a new group has no committed offset), not
/// a complaint, and stays at debug level.
fn log_refusal(connection: &Connection, req: &RemotingCommand, refusal: &Refusal) {
    if refusal.code == response::QUERY_NOT_FOUND {
        tracing::debug!(peer = %connection.peer(), request = req.code, code = refusal.code, remark = %refusal.remark, "request answered not found");
    } else if let Some(not_logged) = REFUSAL_LOG_BUDGET.take(std::time::Instant::now()) {
        if not_logged > 0 {
            tracing::warn!(peer = %connection.peer(), request = req.code, code = refusal.code, remark = %refusal.remark, not_logged_before = not_logged, "request refused");
        } else {
            tracing::warn!(peer = %connection.peer(), request = req.code, code = refusal.code, remark = %refusal.remark, "request refused");
        }
    }
}

impl BrokerService {
    pub(crate) fn new(shared: Arc<Shared>, shards: LocalShards) -> BrokerService {
        BrokerService {
            shared,
            shards,
            booted: SystemTime::now(),
        }
    }
}

impl Service for BrokerService {
    async fn handle(
        self: Rc<Self>,
        connection: Connection,
        req: RemotingCommand,
    ) -> Option<RemotingCommand> {
        let processed = match req.code {
            request::SEND_MESSAGE | request::SEND_MESSAGE_V2 | request::SEND_BATCH_MESSAGE => {
                self.send(&connection, &req).await
            }
            request::PULL_MESSAGE | request::LITE_PULL_MESSAGE => self.pull(&req).await,
            request::HEART_BEAT => self.heartbeat(&connection, &req),
            request::UNREGISTER_CLIENT => self.unregister_client(&connection, &req),
            request::GET_CONSUMER_LIST_BY_GROUP => self.consumer_list(&req),
            request::QUERY_CONSUMER_OFFSET => self.query_consumer_offset(&req).await,
            request::UPDATE_CONSUMER_OFFSET => self.update_consumer_offset(&req),
            request::LOCK_BATCH_MQ => self.lock_batch(&req),
            request::UNLOCK_BATCH_MQ => self.unlock_batch(&req),
            request::GET_MAX_OFFSET => self.max_offset(&req).await,
            request::GET_MIN_OFFSET => self.min_offset(&req).await,
            request::SEARCH_OFFSET_BY_TIMESTAMP => self.search_offset(&req).await,
            request::GET_EARLIEST_MSG_STORETIME => self.earliest_store_time(&req).await,
            request::VIEW_MESSAGE_BY_ID => self.view_message(&req).await,
            request::QUERY_MESSAGE => self.query_message(&req).await,
            request::UPDATE_AND_CREATE_TOPIC => self.create_topic(&req).await,
            request::DELETE_TOPIC_IN_BROKER => self.delete_topic(&req).await,
            request::GET_ALL_TOPIC_CONFIG => self.all_topic_config(&req),
            request::GET_ALL_CONSUMER_OFFSET => self.all_consumer_offsets(&req),
            request::GET_CONSUME_STATS => self.consume_stats(&req).await,
            request::GET_TOPIC_STATS_INFO => self.topic_stats(&req).await,
            request::GET_BROKER_RUNTIME_INFO => self.runtime_info(&req).await,
            code => Err(Refusal::new(
                response::REQUEST_CODE_NOT_SUPPORTED,
                crate::not_supported_remark(code),
            )),
        };
        Some(processed.unwrap_or_else(|refusal| {
            log_refusal(&connection, &req, &refusal);
            RemotingCommand::response_to(&req, refusal.code).with_remark(refusal.remark)
        }))
    }

    fn closed(&self, connection: &Connection) {
        notify(self.shared.clients.connection_closed(connection.id()));
    }
}
