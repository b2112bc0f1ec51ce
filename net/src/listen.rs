//! Listening sockets, made with the options a server needs before `listen`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Connections waiting to be accepted per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// How long a bind that finds its address in use keeps trying. A server killed with SIGKILL
/// leaves its listening socket to the kernel's asynchronous io_uring teardown, which releases it
/// some milliseconds after the process is gone; a restart in that gap would otherwise fail.
const BIND_RETRY_MS: u64 = 2_000;

/// Pause between two binds of an address in use.
const BIND_RETRY_PAUSE_MS: u64 = 20;

/// A listening socket on `addr`. With `reuse_port`, several (one per shard thread) may share the
/// port and the kernel spreads new connections across them. An address in use is tried again
/// for up to [`BIND_RETRY_MS`].
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(BIND_RETRY_MS);
    loop {
        match bind_once(addr, reuse_port) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                tracing::debug!(%addr, "address in use; trying again");
                std::thread::sleep(std::time::Duration::from_millis(BIND_RETRY_PAUSE_MS));
            }
            result => return result,
        }
    }
}

fn bind_once(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// The address the kernel would send from to reach a non-local network (found without sending
/// anything: a UDP "connect" only picks a route), or 127.0.0.1 when there is none. Brokers
/// advertise it and clients put it in their ids, as RocketMQ's `getLocalAddress` does.
pub fn first_non_loopback_ipv4() -> IpAddr {
    let found = || -> Option<IpAddr> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
        socket.connect((Ipv4Addr::new(10, 254, 254, 254), 9)).ok()?;
        let ip = socket.local_addr().ok()?.ip();
        (!ip.is_unspecified() && !ip.is_loopback()).then_some(ip)
    };
    found().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_port_listeners_share_a_port() {
        let first = bind(SocketAddr::from(([127, 0, 0, 1], 0)), true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind(addr, true).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // Without the option, the port is taken.
        let lone = bind(SocketAddr::from(([127, 0, 0, 1], 0)), false).unwrap();
        assert!(bind_once(lone.local_addr().unwrap(), false).is_err());
    }
}
