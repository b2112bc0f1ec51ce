//! Listening sockets, made with the options a server needs before `listen`.

use std::net::SocketAddr;

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
