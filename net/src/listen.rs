//! Listening sockets, made with the options a server needs before `listen`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Connections waiting to be accepted per listener.
const LISTEN_BACKLOG: i32 = 1024;

/// A listening socket on `addr`. With `reuse_port`, several (one per shard thread) may share the
/// port and the kernel spreads new connections across them.
pub fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
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
        assert!(bind(lone.local_addr().unwrap(), false).is_err());
    }
}
