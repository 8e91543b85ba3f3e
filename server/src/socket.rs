//! UDP sockets with receive and send buffers sized for many connections.
//!
//! A datacenter's one UDP socket carries every device's QUIC packets. With the kernel's
//! default buffer (about 208 KiB on Linux, some 90 full-size datagrams) a burst of
//! handshakes during a failover overflows it between two reads of the endpoint driver; the
//! kernel then drops Initial packets, the devices retransmit after a second or more, and
//! handshakes time out: congestion collapse exactly when the backup is needed. So the
//! socket asks for a large buffer.
//!
//! Invariant: the buffer asked for is a request; the kernel caps it (`net.core.rmem_max`,
//! `net.core.wmem_max`). [`BoundSocket`] reports what was granted so the operator can be
//! told to raise the limits, and binding never fails only because the cap is lower.

use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;

/// A bound UDP socket and the buffer sizes the kernel granted.
#[derive(Debug)]
pub struct BoundSocket {
    /// The bound socket, ready to hand to a QUIC endpoint.
    pub socket: std::net::UdpSocket,
    /// Receive buffer granted, in bytes (as the kernel reports it).
    pub recv_buffer_bytes: usize,
    /// Send buffer granted, in bytes.
    pub send_buffer_bytes: usize,
}

/// Bind a UDP socket on `addr` asking for `buffer_bytes` of receive and send buffer
/// (0: leave the system defaults). An unspecified IPv6 address is made dual-stack.
pub fn bind_udp(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<BoundSocket> {
    bind_udp_shared(addr, buffer_bytes, false)
}

/// [`bind_udp`], with `SO_REUSEPORT` if `reuse_port`: several sockets of this process then
/// share one port, and the kernel spreads the incoming datagrams over them by a hash of the
/// source and destination (one device's datagrams keep reaching the same socket while its
/// address stays the same).
pub fn bind_udp_shared(
    addr: SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
) -> std::io::Result<BoundSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // Best effort: some systems do not allow dual-stack sockets.
        let _ = socket.set_only_v6(false);
    }
    if buffer_bytes > 0 {
        // A refusal (or a cap) is not fatal: the granted sizes are reported below.
        let _ = socket.set_recv_buffer_size(buffer_bytes);
        let _ = socket.set_send_buffer_size(buffer_bytes);
    }
    socket.bind(&addr.into())?;
    Ok(BoundSocket {
        recv_buffer_bytes: socket.recv_buffer_size()?,
        send_buffer_bytes: socket.send_buffer_size()?,
        socket: socket.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_buffer_is_granted_up_to_the_kernel_cap_and_never_below_the_default() {
        let default = bind_udp("127.0.0.1:0".parse().unwrap(), 0).unwrap();
        let big = bind_udp("127.0.0.1:0".parse().unwrap(), 4 << 20).unwrap();
        assert!(big.recv_buffer_bytes >= default.recv_buffer_bytes);
        assert!(big.send_buffer_bytes >= default.send_buffer_bytes);
        assert!(big.socket.local_addr().unwrap().port() != 0);
    }

    #[test]
    fn shared_sockets_bind_one_port_and_a_plain_socket_cannot_join_them() {
        let first = bind_udp_shared("127.0.0.1:0".parse().unwrap(), 0, true).unwrap();
        let addr = first.socket.local_addr().unwrap();
        let second = bind_udp_shared(addr, 0, true).unwrap();
        assert_eq!(second.socket.local_addr().unwrap(), addr);
        assert!(
            bind_udp(addr, 0).is_err(),
            "a socket without SO_REUSEPORT took the port"
        );
    }
}
