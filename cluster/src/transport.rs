//! The datagram seam: what the membership driver needs from a UDP socket.
//!
//! Production: [`tokio::net::UdpSocket`]. Simulator (feature `sim`): turmoil's `UdpSocket`,
//! whose time and network are simulated; the simulator wraps it further to lose, duplicate and
//! delay datagrams from its seeded RNG.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

/// A bound datagram socket.
pub trait DatagramSocket: Send + Sync + 'static {
    /// Sends one datagram to `to`.
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send;
    /// Receives one datagram into `buf`: its length and sender.
    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send;
    /// The address the socket is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl DatagramSocket for tokio::net::UdpSocket {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send {
        tokio::net::UdpSocket::send_to(self, datagram, to)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        tokio::net::UdpSocket::recv_from(self, buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}

#[cfg(feature = "sim")]
impl DatagramSocket for turmoil::net::UdpSocket {
    fn send_to(&self, datagram: &[u8], to: SocketAddr) -> impl Future<Output = io::Result<usize>> + Send {
        turmoil::net::UdpSocket::send_to(self, datagram, to)
    }

    fn recv_from(&self, buf: &mut [u8]) -> impl Future<Output = io::Result<(usize, SocketAddr)>> + Send {
        turmoil::net::UdpSocket::recv_from(self, buf)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        turmoil::net::UdpSocket::local_addr(self)
    }
}
