//! `quiver namesrv`, `quiver broker` and `quiver standalone`: run the servers until SIGINT or
//! SIGTERM, then stop cleanly (unregister, write consumer offsets, flush the store).
//!
//! Each prints `<role> listening on <addr>` on stdout once it serves, and `ready` when every
//! part is up, so scripts and tests can wait for it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use quiver_net::broker::{Broker, BrokerConfig};
use quiver_net::namesrv::{NameServer, NamesrvConfig};
use serde::{Deserialize, Serialize};

#[derive(Args)]
pub struct NamesrvArgs {
    /// TOML file of name server settings (`net/src/namesrv/mod.rs` documents every field).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
pub struct BrokerArgs {
    /// TOML file of broker settings (`net/src/broker/config.rs` documents every field; the
    /// store's go under `[store]`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the listen address.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Overrides the data directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Overrides the name servers (`host:port`, separated by `;` or `,`).
    #[arg(long)]
    namesrv: Option<String>,
}

#[derive(Args)]
pub struct StandaloneArgs {
    /// TOML file with `[namesrv]` and `[broker]` sections (`[broker.store]` for the store).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides the data directory (default `./data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// The standalone process's settings: a name server and a broker registered with it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct StandaloneConfig {
    namesrv: NamesrvConfig,
    broker: BrokerConfig,
}

fn read_toml<T: serde::de::DeserializeOwned + Default>(
    path: &Option<PathBuf>,
) -> anyhow::Result<T> {
    match path {
        None => Ok(T::default()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
        }
    }
}

fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Raises the soft limit on open files to the hard limit. A server holds a descriptor per
/// client connection, and the usual soft default (1024) would refuse connections long before the
/// machine runs short; the hard limit is what the administrator allows. Failure is not fatal.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "cannot read the open-file limit");
        return;
    }
    if limit.rlim_cur >= limit.rlim_max {
        tracing::debug!(
            limit = limit.rlim_cur,
            "open-file limit already at its hard limit"
        );
        return;
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit only reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, soft = limit.rlim_cur, hard = limit.rlim_max, "cannot raise the open-file limit");
        return;
    }
    tracing::debug!(
        from = limit.rlim_cur,
        to = raised.rlim_cur,
        "raised the open-file limit to its hard limit"
    );
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_stop_signal() -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("installing signal handlers")?;
    if let Some(signal) = signals.forever().next() {
        tracing::info!(signal, "stopping");
    }
    Ok(())
}

pub fn namesrv(args: NamesrvArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let mut config: NamesrvConfig = read_toml(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let server = NameServer::start(config).context("starting the name server")?;
    say(format_args!("namesrv listening on {}", server.local_addr()));
    say("ready");
    wait_for_stop_signal()?;
    server.shutdown();
    Ok(())
}

fn broker_config(args: &BrokerArgs) -> anyhow::Result<BrokerConfig> {
    let mut config: BrokerConfig = read_toml(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(list) = &args.namesrv {
        config.namesrv_addrs = quiver_net::admin::parse_addr_list(list);
    }
    Ok(config)
}

pub fn broker(args: BrokerArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let config = broker_config(&args)?;
    let broker = Broker::start(config).context("starting the broker")?;
    say(format_args!(
        "broker listening on {} (advertised {})",
        broker.local_addr(),
        broker.advertised_addr()
    ));
    say("ready");
    wait_for_stop_signal()?;
    broker.shutdown().context("closing the store")?;
    Ok(())
}

pub fn standalone(args: StandaloneArgs) -> anyhow::Result<()> {
    raise_open_file_limit();
    let mut config: StandaloneConfig = read_toml(&args.config)?;
    if let Some(dir) = &args.data_dir {
        config.broker.data_dir = dir.clone();
    }
    let server = NameServer::start(config.namesrv.clone()).context("starting the name server")?;
    say(format_args!("namesrv listening on {}", server.local_addr()));
    // The broker registers with the embedded name server, wherever it listens, and with any
    // other name servers the file names.
    let embedded = SocketAddr::new(
        if server.local_addr().ip().is_unspecified() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            server.local_addr().ip()
        },
        server.local_addr().port(),
    )
    .to_string();
    if config.broker.namesrv_addrs == BrokerConfig::default().namesrv_addrs {
        config.broker.namesrv_addrs.clear();
    }
    if !config.broker.namesrv_addrs.contains(&embedded) {
        config.broker.namesrv_addrs.insert(0, embedded);
    }
    let broker = Broker::start(config.broker).context("starting the broker")?;
    say(format_args!(
        "broker listening on {} (advertised {})",
        broker.local_addr(),
        broker.advertised_addr()
    ));
    say("ready");
    wait_for_stop_signal()?;
    let closed = broker.shutdown();
    server.shutdown();
    closed.context("closing the store")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standalone_file_needs_only_what_it_changes_and_names_unknown_fields() {
        let config: StandaloneConfig = toml::from_str(
            "[namesrv]\nlisten = \"127.0.0.1:19876\"\n[broker]\nbroker_name = \"b1\"\n[broker.store.log]\nflush = \"sync\"\n",
        )
        .unwrap();
        assert_eq!(config.namesrv.listen.port(), 19876);
        assert_eq!(config.broker.broker_name, "b1");
        assert_eq!(
            config.broker.store.log.flush,
            quiver_engine::FlushMode::Sync
        );
        let err = toml::from_str::<StandaloneConfig>("[broker]\nbogus = 1\n").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    /// Every key path of a TOML tree, as `section.sub.key`.
    fn key_paths(value: &toml::Value, prefix: &str, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, child) in table {
                let path = format!("{prefix}{key}");
                out.push(path.clone());
                key_paths(child, &format!("{path}."), out);
            }
        }
    }

    #[test]
    fn the_example_file_names_every_setting_at_its_default() {
        let text = include_str!("../quiver.example.toml");
        let example: StandaloneConfig = toml::from_str(text).unwrap();
        assert_eq!(example, StandaloneConfig::default());
        let (mut documented, mut defaults) = (Vec::new(), Vec::new());
        key_paths(&toml::from_str(text).unwrap(), "", &mut documented);
        key_paths(
            &toml::Value::try_from(StandaloneConfig::default()).unwrap(),
            "",
            &mut defaults,
        );
        documented.sort();
        defaults.sort();
        assert_eq!(
            documented, defaults,
            "settings missing from quiver.example.toml"
        );
    }
}
