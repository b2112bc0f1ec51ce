//! `quiver admin`: the operator's command line over [`quiver_net::admin::Admin`]: topics,
//! consumer groups, message lookups, clusters and brokers. Tables for people, `--json` for
//! scripts; errors say what was wrong and what to do about it.

mod output;
pub(crate) mod time;

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};
use quiver_net::admin::{
    Admin, AdminError, BrokerSelector, MessageView, ResetTarget, TopicSpec, parse_addr_list,
};
use quiver_net::protocol::route::{PERM_READ, PERM_WRITE};

use self::output::{line, perm, preview, table};
use self::time::{format_ms, parse_time};

/// The name servers asked when neither `--namesrv` nor `QUIVER_NAMESRV` says otherwise.
const DEFAULT_NAMESRV: &str = "127.0.0.1:9876";

/// The environment variable naming the name servers.
const NAMESRV_ENV: &str = "QUIVER_NAMESRV";

/// Options every admin command takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Name servers, `host:port`, several separated by `;` (default: $QUIVER_NAMESRV, else
    /// 127.0.0.1:9876).
    #[arg(long, value_name = "HOST:PORT[;HOST:PORT]")]
    namesrv: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for a connection or an answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 3)]
    timeout: u64,
}

/// Operate a running cluster: topics, consumer groups, messages, brokers.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Create, list, inspect and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Consumer groups: progress and offset resets.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Look messages up by id, key, or queue and offset.
    #[command(subcommand)]
    Message(MessageCommand),
    /// Clusters and their brokers.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Brokers' runtime figures.
    #[command(subcommand)]
    Broker(BrokerCommand),
}

/// `quiver admin topic …`
#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic (or update its queues and permission) on every master broker, those of
    /// one cluster, or one broker.
    Create {
        /// The topic.
        topic: String,
        /// Read and write queues on each broker.
        #[arg(long, default_value_t = 8)]
        queues: i32,
        /// Read queues, if different from --queues.
        #[arg(long)]
        read_queues: Option<i32>,
        /// Write queues, if different from --queues.
        #[arg(long)]
        write_queues: Option<i32>,
        /// Permission: rw, r or w.
        #[arg(long, default_value = "rw")]
        perm: String,
        /// Mark it an ordered topic.
        #[arg(long)]
        order: bool,
        /// Only the master brokers of this cluster.
        #[arg(long, conflicts_with = "broker")]
        cluster: Option<String>,
        /// Only this broker (`host:port`).
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Every topic the name servers know.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// A topic's route: its brokers and queues.
    Route {
        /// The topic.
        topic: String,
        #[command(flatten)]
        common: Common,
    },
    /// Each queue of a topic: offsets, messages held, last write.
    Status {
        /// The topic.
        topic: String,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a topic, its messages and every group's offsets of it, then its route.
    Delete {
        /// The topic.
        topic: String,
        /// Only on the brokers of this cluster.
        #[arg(long)]
        cluster: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// `quiver admin group …`
#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// Per queue: the queue's end, the group's committed offset, and the lag.
    Progress {
        /// The consumer group.
        group: String,
        /// Only this topic.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Move the group's committed offsets on every queue of a topic. Stop the group's
    /// consumers first: running ones commit their own position over the reset.
    ResetOffset {
        /// The consumer group.
        group: String,
        /// The topic.
        #[arg(long)]
        topic: String,
        /// Where to: an RFC 3339 time (2024-05-01T12:00:00Z), milliseconds since the epoch,
        /// `earliest` or `latest`.
        #[arg(long)]
        to: String,
        /// Reset even while consumers of the group are online.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        common: Common,
    },
}

/// `quiver admin message …`
#[derive(Subcommand, Debug)]
pub enum MessageCommand {
    /// A message by its offset message id (or, with --topic, by its producer's unique id).
    Id {
        /// The message id.
        id: String,
        /// The topic, to look the id up as a unique id (UNIQ_KEY) too.
        #[arg(long)]
        topic: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Messages of a topic with a key, newest first.
    Key {
        /// The topic.
        topic: String,
        /// The key.
        key: String,
        /// At most this many.
        #[arg(long, default_value_t = 32)]
        max: i32,
        /// Stored at or after this time (RFC 3339 or epoch ms).
        #[arg(long)]
        begin: Option<String>,
        /// Stored at or before this time (RFC 3339 or epoch ms).
        #[arg(long)]
        end: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// The message at an offset of a queue.
    At {
        /// The topic.
        topic: String,
        /// The queue id.
        queue: i32,
        /// The offset in the queue.
        offset: i64,
        /// The broker (name or address), when the topic is on several.
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// `quiver admin cluster …`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Every cluster and its brokers.
    List {
        #[command(flatten)]
        common: Common,
    },
}

/// `quiver admin broker …`
#[derive(Subcommand, Debug)]
pub enum BrokerCommand {
    /// Runtime figures of every master broker, or of one.
    Status {
        /// Only this broker (`host:port`).
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

impl AdminCommand {
    fn common(&self) -> &Common {
        match self {
            AdminCommand::Topic(
                TopicCommand::Create { common, .. }
                | TopicCommand::List { common }
                | TopicCommand::Route { common, .. }
                | TopicCommand::Status { common, .. }
                | TopicCommand::Delete { common, .. },
            )
            | AdminCommand::Group(
                GroupCommand::Progress { common, .. } | GroupCommand::ResetOffset { common, .. },
            )
            | AdminCommand::Message(
                MessageCommand::Id { common, .. }
                | MessageCommand::Key { common, .. }
                | MessageCommand::At { common, .. },
            )
            | AdminCommand::Cluster(ClusterCommand::List { common })
            | AdminCommand::Broker(BrokerCommand::Status { common, .. }) => common,
        }
    }
}

/// Runs an admin command on a single-threaded tokio runtime. A failure is printed as one
/// `error: …` line on stderr (never a backtrace: it is an answer for an operator, not a
/// crash) and the process exits with status 1.
pub fn run(command: AdminCommand) -> anyhow::Result<()> {
    if let Err(e) = try_run(command) {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "error: {e:#}");
        let _ = err.flush();
        std::process::exit(1);
    }
    Ok(())
}

fn try_run(command: AdminCommand) -> anyhow::Result<()> {
    let common = command.common();
    let list = match &common.namesrv {
        Some(list) => list.clone(),
        None => std::env::var(NAMESRV_ENV).unwrap_or_else(|_| DEFAULT_NAMESRV.to_string()),
    };
    let admin = Admin::new(parse_addr_list(&list))
        .map_err(explain)?
        .with_timeout(Duration::from_secs(common.timeout.max(1)));
    let json = common.json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(&admin, command, json))
}

/// An admin error with what to do about it.
fn explain(e: AdminError) -> anyhow::Error {
    let hint = match &e {
        AdminError::NoNameServer | AdminError::BadAddress { .. } => Some(
            "give name servers as host:port, several separated by ';', with --namesrv or QUIVER_NAMESRV"
                .to_string(),
        ),
        AdminError::NameServerUnreachable(_) => Some(
            "is `quiver namesrv` or `quiver standalone` running? Point at it with --namesrv host:port or QUIVER_NAMESRV"
                .to_string(),
        ),
        AdminError::BrokerUnreachable(_) => Some(
            "is the broker running and reachable at the address it registered? See `quiver admin cluster list`"
                .to_string(),
        ),
        AdminError::NoRoute { topic } => {
            Some(format!("create it with `quiver admin topic create {topic}`"))
        }
        AdminError::NoBroker(_) => Some("see `quiver admin cluster list`".to_string()),
        AdminError::ConsumersOnline { .. } => Some(
            "stop them first (they would commit their own positions over the reset), or pass --force"
                .to_string(),
        ),
        _ => None,
    };
    match hint {
        Some(hint) => anyhow!("{e} — {hint}"),
        None => anyhow!("{e}"),
    }
}

fn parse_perm(text: &str) -> anyhow::Result<i32> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "rw" | "wr" => PERM_READ | PERM_WRITE,
        "r" => PERM_READ,
        "w" => PERM_WRITE,
        other => other
            .parse()
            .map_err(|_| anyhow!("--perm {text:?}: give rw, r or w"))?,
    })
}

fn parse_target(text: &str) -> anyhow::Result<ResetTarget> {
    Ok(match text.trim().to_ascii_lowercase().as_str() {
        "earliest" => ResetTarget::Earliest,
        "latest" => ResetTarget::Latest,
        _ => ResetTarget::Timestamp(parse_time(text).map_err(|e| anyhow!("--to: {e}"))?),
    })
}

async fn execute(admin: &Admin, command: AdminCommand, json: bool) -> anyhow::Result<()> {
    match command {
        AdminCommand::Topic(command) => topic(admin, command, json).await,
        AdminCommand::Group(command) => group(admin, command, json).await,
        AdminCommand::Message(command) => message(admin, command, json).await,
        AdminCommand::Cluster(ClusterCommand::List { .. }) => {
            let brokers = admin.cluster_list().await.map_err(explain)?;
            if json {
                return output::json(&brokers);
            }
            if brokers.is_empty() {
                line("no broker is registered with the name servers");
                return Ok(());
            }
            let mut t = table(&["Cluster", "Broker", "ID", "Role", "Address"], &[2]);
            for b in &brokers {
                let role = if b.broker_id == 0 { "master" } else { "slave" };
                t.add_row(vec![
                    b.cluster.clone(),
                    b.broker_name.clone(),
                    b.broker_id.to_string(),
                    role.to_string(),
                    b.addr.clone(),
                ]);
            }
            line(t);
            Ok(())
        }
        AdminCommand::Broker(BrokerCommand::Status { broker, .. }) => {
            let selector = broker.map_or(BrokerSelector::All, BrokerSelector::Addr);
            let statuses = admin.broker_status(&selector).await.map_err(explain)?;
            if json {
                return output::json(&statuses);
            }
            for (i, status) in statuses.iter().enumerate() {
                if i > 0 {
                    line("");
                }
                line(format_args!(
                    "{} ({}) in cluster {}",
                    status.broker_name,
                    status.addr,
                    if status.cluster.is_empty() {
                        "?"
                    } else {
                        &status.cluster
                    }
                ));
                let mut t = table(&["Key", "Value"], &[]);
                for (key, value) in &status.table {
                    let shown = match value.parse::<i64>() {
                        Ok(ms) if key.to_ascii_lowercase().ends_with("timestamp") && ms > 0 => {
                            format!("{value} ({})", format_ms(ms))
                        }
                        _ => value.clone(),
                    };
                    t.add_row(vec![key.clone(), shown]);
                }
                line(t);
            }
            Ok(())
        }
    }
}

async fn topic(admin: &Admin, command: TopicCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TopicCommand::Create {
            topic,
            queues,
            read_queues,
            write_queues,
            perm: perm_text,
            order,
            cluster,
            broker,
            ..
        } => {
            let spec = TopicSpec {
                name: topic,
                read_queue_nums: read_queues.unwrap_or(queues),
                write_queue_nums: write_queues.unwrap_or(queues),
                perm: parse_perm(&perm_text)?,
                order,
            };
            let selector = match (cluster, broker) {
                (_, Some(addr)) => BrokerSelector::Addr(addr),
                (Some(cluster), None) => BrokerSelector::Cluster(cluster),
                (None, None) => BrokerSelector::All,
            };
            let created = admin
                .create_topic(&spec, &selector)
                .await
                .map_err(explain)?;
            if json {
                return output::json(&created);
            }
            line(format_args!(
                "created topic {} ({} read / {} write queues, {}) on:",
                created.topic,
                created.read_queue_nums,
                created.write_queue_nums,
                perm(created.perm)
            ));
            for b in &created.brokers {
                line(format_args!("  {} ({})", b.broker_name, b.addr));
            }
            Ok(())
        }
        TopicCommand::List { .. } => {
            let topics = admin.topic_list().await.map_err(explain)?;
            if json {
                return output::json(&topics);
            }
            let mut t = table(&["Topic"], &[]);
            for topic in &topics {
                t.add_row(vec![topic.clone()]);
            }
            line(t);
            line(format_args!("{} topic(s)", topics.len()));
            Ok(())
        }
        TopicCommand::Route { topic, .. } => {
            let route = admin.topic_route(&topic).await.map_err(explain)?;
            if json {
                return output::json(&route);
            }
            let mut t = table(
                &[
                    "Broker",
                    "Cluster",
                    "Addresses",
                    "Read queues",
                    "Write queues",
                    "Perm",
                ],
                &[3, 4],
            );
            let mut queues = route.queue_datas.clone();
            queues.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
            for q in &queues {
                let broker = route
                    .broker_datas
                    .iter()
                    .find(|b| b.broker_name == q.broker_name);
                let addrs = broker.map_or_else(String::new, |b| {
                    b.broker_addrs
                        .iter()
                        .map(|(id, addr)| format!("{id}: {addr}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                });
                t.add_row(vec![
                    q.broker_name.clone(),
                    broker.map_or_else(String::new, |b| b.cluster.clone()),
                    addrs,
                    q.read_queue_nums.to_string(),
                    q.write_queue_nums.to_string(),
                    perm(q.perm),
                ]);
            }
            line(t);
            Ok(())
        }
        TopicCommand::Status { topic, .. } => {
            let status = admin.topic_status(&topic).await.map_err(explain)?;
            if json {
                return output::json(&status);
            }
            let mut t = table(
                &[
                    "Broker",
                    "Queue",
                    "Min offset",
                    "Max offset",
                    "Messages",
                    "Last stored",
                ],
                &[1, 2, 3, 4],
            );
            for q in &status.queues {
                t.add_row(vec![
                    q.broker_name.clone(),
                    q.queue_id.to_string(),
                    q.min_offset.to_string(),
                    q.max_offset.to_string(),
                    q.messages.to_string(),
                    format_ms(q.last_update_timestamp),
                ]);
            }
            line(t);
            line(format_args!(
                "{} message(s) in {} queue(s)",
                status.total_messages,
                status.queues.len()
            ));
            Ok(())
        }
        TopicCommand::Delete { topic, cluster, .. } => {
            let deleted = admin
                .delete_topic(&topic, cluster.as_deref())
                .await
                .map_err(explain)?;
            if json {
                return output::json(&deleted);
            }
            let brokers: Vec<String> = deleted
                .brokers
                .iter()
                .map(|b| format!("{} ({})", b.broker_name, b.addr))
                .collect();
            line(format_args!(
                "deleted topic {} on {}; route removed from {}",
                deleted.topic,
                brokers.join(", "),
                deleted.name_servers.join(", ")
            ));
            Ok(())
        }
    }
}

async fn group(admin: &Admin, command: GroupCommand, json: bool) -> anyhow::Result<()> {
    match command {
        GroupCommand::Progress { group, topic, .. } => {
            let progress = admin
                .group_progress(&group, topic.as_deref())
                .await
                .map_err(explain)?;
            if json {
                return output::json(&progress);
            }
            let mut t = table(
                &[
                    "Topic",
                    "Broker",
                    "Queue",
                    "Broker offset",
                    "Consumer offset",
                    "Lag",
                    "Last consumed",
                ],
                &[2, 3, 4, 5],
            );
            for q in &progress.queues {
                t.add_row(vec![
                    q.topic.clone(),
                    q.broker_name.clone(),
                    q.queue_id.to_string(),
                    q.broker_offset.to_string(),
                    q.consumer_offset.to_string(),
                    q.lag.to_string(),
                    format_ms(q.last_timestamp),
                ]);
            }
            line(t);
            line(format_args!(
                "group {}: total lag {}, consume TPS {:.1}",
                progress.group, progress.total_lag, progress.consume_tps
            ));
            Ok(())
        }
        GroupCommand::ResetOffset {
            group,
            topic,
            to,
            force,
            ..
        } => {
            let target = parse_target(&to)?;
            let reset = admin
                .reset_offsets(&group, &topic, target, force)
                .await
                .map_err(explain)?;
            if json {
                return output::json(&reset);
            }
            let target = match reset.target {
                ResetTarget::Earliest => "the earliest stored offsets".to_string(),
                ResetTarget::Latest => "the end of each queue".to_string(),
                ResetTarget::Timestamp(ms) => format!("{} ({ms})", format_ms(ms)),
            };
            line(format_args!(
                "reset group {} on topic {} to {target}:",
                reset.group, reset.topic
            ));
            let mut t = table(
                &["Broker", "Queue", "Previous offset", "New offset"],
                &[1, 2, 3],
            );
            for q in &reset.queues {
                t.add_row(vec![
                    q.broker_name.clone(),
                    q.queue_id.to_string(),
                    q.previous_offset
                        .map_or_else(|| "-".to_string(), |o| o.to_string()),
                    q.new_offset.to_string(),
                ]);
            }
            line(t);
            Ok(())
        }
    }
}

async fn message(admin: &Admin, command: MessageCommand, json: bool) -> anyhow::Result<()> {
    match command {
        MessageCommand::Id { id, topic, .. } => {
            let found = admin
                .message_by_id(&id, topic.as_deref())
                .await
                .map_err(explain)?;
            show_message(&found, json)
        }
        MessageCommand::At {
            topic,
            queue,
            offset,
            broker,
            ..
        } => {
            let found = admin
                .message_at(&topic, queue, offset, broker.as_deref())
                .await
                .map_err(explain)?;
            show_message(&found, json)
        }
        MessageCommand::Key {
            topic,
            key,
            max,
            begin,
            end,
            ..
        } => {
            let time = |flag: &str, text: Option<String>, default: i64| match text {
                Some(text) => parse_time(&text).map_err(|e| anyhow!("--{flag}: {e}")),
                None => Ok(default),
            };
            let begin = time("begin", begin, 0)?;
            let end = time("end", end, i64::MAX)?;
            let found = admin
                .messages_by_key(&topic, &key, max, begin, end)
                .await
                .map_err(explain)?;
            if json {
                return output::json(&found);
            }
            let mut t = table(
                &[
                    "Message id",
                    "Queue",
                    "Offset",
                    "Stored",
                    "Tags",
                    "Keys",
                    "Body",
                ],
                &[1, 2],
            );
            for m in &found {
                t.add_row(vec![
                    m.msg_id.clone(),
                    m.queue_id.to_string(),
                    m.queue_offset.to_string(),
                    format_ms(m.store_timestamp),
                    m.tags.clone().unwrap_or_default(),
                    m.keys.join(" "),
                    body_preview(m),
                ]);
            }
            line(t);
            line(format_args!("{} message(s)", found.len()));
            Ok(())
        }
    }
}

fn body_preview(m: &MessageView) -> String {
    match (&m.body, &m.body_hex) {
        (Some(text), _) => preview(text, 60),
        (None, Some(hex)) => format!("0x{}", preview(hex, 58)),
        (None, None) => String::new(),
    }
}

fn show_message(m: &MessageView, json: bool) -> anyhow::Result<()> {
    if json {
        return output::json(m);
    }
    let mut t = table(&["Field", "Value"], &[]);
    let rows: Vec<(&str, String)> = vec![
        ("Topic", m.topic.clone()),
        ("Queue", m.queue_id.to_string()),
        ("Queue offset", m.queue_offset.to_string()),
        ("Message id", m.msg_id.clone()),
        ("Unique key", m.uniq_key.clone().unwrap_or_default()),
        ("Tags", m.tags.clone().unwrap_or_default()),
        ("Keys", m.keys.join(" ")),
        (
            "Born",
            format!("{} from {}", format_ms(m.born_timestamp), m.born_host),
        ),
        (
            "Stored",
            format!("{} on {}", format_ms(m.store_timestamp), m.store_host),
        ),
        ("Reconsume times", m.reconsume_times.to_string()),
        (
            "Body",
            format!(
                "{} bytes{}",
                m.body_bytes,
                if m.compressed { ", compressed" } else { "" }
            ),
        ),
    ];
    for (field, value) in rows {
        t.add_row(vec![field.to_string(), value]);
    }
    for (key, value) in &m.properties {
        t.add_row(vec![format!("Property {key}"), value.clone()]);
    }
    line(t);
    match (&m.body, &m.body_hex) {
        (Some(text), _) => line(text),
        (None, Some(hex)) => line(format_args!("0x{hex}")),
        (None, None) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_perms_parse_and_refuse_clearly() {
        assert_eq!(parse_target("Earliest").unwrap(), ResetTarget::Earliest);
        assert_eq!(parse_target("latest").unwrap(), ResetTarget::Latest);
        assert_eq!(
            parse_target("2023-11-14T22:13:20Z").unwrap(),
            ResetTarget::Timestamp(1_700_000_000_000)
        );
        assert!(
            parse_target("soon")
                .unwrap_err()
                .to_string()
                .contains("--to")
        );
        assert_eq!(parse_perm("rw").unwrap(), 6);
        assert_eq!(parse_perm("R").unwrap(), 4);
        assert!(parse_perm("x").is_err());
    }

    #[test]
    fn unreachable_name_servers_come_with_what_to_do() {
        let e = explain(AdminError::NoRoute { topic: "T".into() });
        assert_eq!(
            e.to_string(),
            "no route for topic T — create it with `quiver admin topic create T`"
        );
    }
}
