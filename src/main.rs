//! `quiver`: the broker's command line: the servers (standalone, name server, broker), the
//! benchmarks, and the storage tools operators need to inspect and test a log directory.

mod admin_cmd;
mod bench_cmd;
mod consume_cmd;
mod load_cmd;
mod produce_cmd;
mod server_cmd;
mod soak_cmd;
mod store_cmd;

use clap::{Parser, Subcommand};

/// Quiver: a RocketMQ-compatible message broker on a thread-per-core io_uring storage engine.
#[derive(Parser)]
#[command(name = "quiver", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A name server and a broker in one process, with embedded defaults (data under
    /// `./data`): the quickest way to run Quiver.
    Standalone(server_cmd::StandaloneArgs),
    /// A name server (default port 9876).
    Namesrv(server_cmd::NamesrvArgs),
    /// A broker (default port 10911), registering with its name servers.
    Broker(server_cmd::BrokerArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench_cmd::BenchCommand),
    /// Tools for a commit log directory.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Operate a running cluster: topics, consumer groups, messages, brokers.
    #[command(subcommand)]
    Admin(admin_cmd::AdminCommand),
    /// Send messages: from arguments, a file or stdin, or made up (`--count`, `--size`,
    /// `--rate`) to load a broker.
    Produce(produce_cmd::ProduceArgs),
    /// Read a topic: print each message, or count them (`--quiet`).
    Consume(consume_cmd::ConsumeArgs),
    /// Fault-injecting soak: producers and a consumer group run while the broker, consumers
    /// and name server are killed and restarted; then checks nothing acknowledged was lost.
    Soak(soak_cmd::SoakArgs),
    /// The consumer process `quiver soak` starts and kills.
    #[command(hide = true)]
    SoakConsumer(soak_cmd::SoakConsumerArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Standalone(args) => server_cmd::standalone(args),
        Command::Namesrv(args) => server_cmd::namesrv(args),
        Command::Broker(args) => server_cmd::broker(args),
        Command::Bench(cmd) => bench_cmd::run(cmd),
        Command::Store(cmd) => store_cmd::run(cmd),
        Command::Admin(cmd) => admin_cmd::run(cmd),
        Command::Produce(args) => produce_cmd::run(args),
        Command::Consume(args) => consume_cmd::run(args),
        Command::Soak(args) => soak_cmd::run(args),
        Command::SoakConsumer(args) => soak_cmd::run_consumer(args),
    }
}
