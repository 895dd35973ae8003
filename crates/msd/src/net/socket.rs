//! Socket setup: reuse options, group membership, hop limits and packet information.
//!
//! Every msd process opens two sockets:
//!
//! - the *group socket*, bound to the wildcard address on the group port with `SO_REUSEADDR` and
//!   `SO_REUSEPORT`, joined to the group on each interface. The kernel hands every multicast
//!   datagram to each socket that joined, so any number of msd processes (and the original
//!   implementation, which sets `SO_REUSEADDR`) share the port.
//! - the *private socket*, bound to an ephemeral port. Everything msd sends leaves from it, so a
//!   unicast answer to msd comes back to the one process that asked. On a shared port the kernel
//!   would hand a unicast datagram to only one of the sharing sockets.

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use msd_engine::InterfaceIndex;
use nix::sys::socket::{self, sockopt, ControlMessageOwned, MsgFlags, SockaddrStorage};
use msd_wire::native::{self, NativeKind};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, SockFilter, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use crate::{Error, IpVersion};

/// Largest datagram msd reads. Larger ones are truncated by the kernel and then dropped.
pub(crate) const RECEIVE_BUFFER: usize = 65_536;

/// A datagram read with the interface it arrived on.
#[derive(Debug)]
pub(crate) struct Datagram {
    pub(crate) len: usize,
    pub(crate) source: SocketAddr,
    pub(crate) interface: Option<InterfaceIndex>,
    pub(crate) truncated: bool,
    /// The kernel's count of datagrams this socket dropped for a full receive queue, since it
    /// was opened. Sent only once the count is above zero.
    pub(crate) queue_drops: Option<u32>,
}

/// Opens the group socket on `port`.
pub(crate) fn group_socket(ip: IpVersion, port: u16) -> Result<UdpSocket, Error> {
    let socket = new_socket(ip).map_err(|source| Error::io("open the group socket", source))?;
    let setup = || -> io::Result<()> {
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        Ok(())
    };
    setup().map_err(|source| Error::io("set reuse options on the group socket", source))?;

    let address = wildcard(ip, port);
    socket.bind(&address.into()).map_err(|source| {
        if source.kind() == io::ErrorKind::AddrInUse {
            Error::PortInUse { port }
        } else {
            Error::io("bind the group socket", source)
        }
    })?;
    into_tokio(socket)
}

/// Attaches a classic BPF program to an instance's group socket that keeps only what an instance
/// acts on: native DISCOVERs and PROBEs, and seed packets other than the original's ANNOUNCE and
/// LOGOFF. Without it every instance wakes for every heartbeat of its group only to drop it, which
/// costs each instance CPU in proportion to the size of the group.
///
/// The kernel runs the program on each socket's copy of a datagram before queueing it, so other
/// sockets on the port (discoverers) still get everything. A load past the end of a datagram drops
/// it, which happens only to payloads too short to be a valid packet (under 4 bytes, or a native
/// magic with no kind byte).
pub(crate) fn keep_only_discovers(socket: &UdpSocket) -> io::Result<()> {
    SockRef::from(socket).attach_filter(&discover_filter())
}

/// Returns the program of [`keep_only_discovers`]. For a UDP socket, offset 0 is the start of the UDP
/// header, so the payload starts at offset 8.
fn discover_filter() -> [SockFilter; 10] {
    // Opcodes from linux/filter.h.
    const LOAD_WORD: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const LOAD_HALF: u16 = 0x28; // BPF_LD | BPF_H | BPF_ABS
    const LOAD_BYTE: u16 = 0x30; // BPF_LD | BPF_B | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const PAYLOAD: u32 = 8;
    // The original writes every map with a map16 header: `de 00 02`, then the key `a1 74` ("t")
    // and the kind as a positive fixint.
    const SEED_PREFIX: u32 = 0xde00_02a1;
    const SEED_DISCOVER: u32 = 0x7401;

    let magic = u32::from_be_bytes(native::MAGIC);
    let kind_offset = PAYLOAD + native::KIND_OFFSET as u32;
    let discover = u32::from(NativeKind::Discover.to_u8());
    let probe = u32::from(NativeKind::Probe.to_u8());
    // Jump offsets count instructions after the jump: `jt`/`jf` of 0 fall through.
    [
        /* 0 */ SockFilter::new(LOAD_WORD, 0, 0, PAYLOAD),
        /* 1 */ SockFilter::new(JUMP_IF_EQUAL, 0, 3, magic), // native: 2, other: 5
        /* 2 */ SockFilter::new(LOAD_BYTE, 0, 0, kind_offset),
        /* 3 */ SockFilter::new(JUMP_IF_EQUAL, 4, 0, discover), // keep: 8
        /* 4 */ SockFilter::new(JUMP_IF_EQUAL, 3, 4, probe), // keep: 8, drop: 9
        /* 5 */ SockFilter::new(JUMP_IF_EQUAL, 0, 2, SEED_PREFIX), // the original's map: 6, other: 8
        /* 6 */ SockFilter::new(LOAD_HALF, 0, 0, PAYLOAD + 4),
        /* 7 */ SockFilter::new(JUMP_IF_EQUAL, 0, 1, SEED_DISCOVER), // keep: 8, drop: 9
        /* 8 */ SockFilter::new(RETURN, 0, 0, u32::MAX),
        /* 9 */ SockFilter::new(RETURN, 0, 0, 0),
    ]
}

/// Opens the private socket on an ephemeral port.
pub(crate) fn private_socket(ip: IpVersion) -> Result<UdpSocket, Error> {
    let socket = new_socket(ip).map_err(|source| Error::io("open the private socket", source))?;
    // Unicast answers and probes stay on the link, like the group traffic.
    let unicast_hops = match ip {
        IpVersion::V4 => socket.set_ttl_v4(1),
        IpVersion::V6 => socket.set_unicast_hops_v6(1),
    };
    unicast_hops.map_err(|source| Error::io("set the unicast hop limit", source))?;
    socket
        .bind(&wildcard(ip, 0).into())
        .map_err(|source| Error::io("bind the private socket", source))?;
    into_tokio(socket)
}

/// Creates a UDP socket with the options both sockets share: a hop limit of one (the group is
/// link-local), multicast loop on (processes on one host see each other), delivery of only the
/// groups this socket joined, and packet information on receive.
fn new_socket(ip: IpVersion) -> io::Result<Socket> {
    let domain = match ip {
        IpVersion::V4 => Domain::IPV4,
        IpVersion::V6 => Domain::IPV6,
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket::setsockopt(&socket, sockopt::RxqOvfl, &1)?;
    match ip {
        IpVersion::V4 => {
            socket.set_multicast_ttl_v4(1)?;
            socket.set_multicast_loop_v4(true)?;
            socket.set_multicast_all_v4(false)?;
            socket::setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
        }
        IpVersion::V6 => {
            socket.set_only_v6(true)?;
            socket.set_multicast_hops_v6(1)?;
            socket.set_multicast_loop_v6(true)?;
            socket.set_multicast_all_v6(false)?;
            socket::setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
        }
    }
    Ok(socket)
}

fn into_tokio(socket: Socket) -> Result<UdpSocket, Error> {
    UdpSocket::from_std(socket.into()).map_err(|source| Error::io("register a socket with tokio", source))
}

fn wildcard(ip: IpVersion, port: u16) -> SocketAddr {
    match ip {
        IpVersion::V4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
        IpVersion::V6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0)),
    }
}

/// Joins `group` on one interface.
pub(crate) fn join(socket: &UdpSocket, group: IpAddr, interface: InterfaceIndex) -> io::Result<()> {
    let socket = SockRef::from(socket);
    match group {
        IpAddr::V4(group) => {
            socket.join_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(interface.0))
        }
        IpAddr::V6(group) => socket.join_multicast_v6(&group, interface.0),
    }
}

/// Leaves `group` on one interface. Fails harmlessly when the interface is already gone.
pub(crate) fn leave(socket: &UdpSocket, group: IpAddr, interface: InterfaceIndex) -> io::Result<()> {
    let socket = SockRef::from(socket);
    match group {
        IpAddr::V4(group) => {
            socket.leave_multicast_v4_n(&group, &InterfaceIndexOrAddress::Index(interface.0))
        }
        IpAddr::V6(group) => socket.leave_multicast_v6(&group, interface.0),
    }
}

/// Returns the socket address of the group as sent out of `interface`. For IPv6 the scope id picks
/// the interface; for IPv4 the caller sets the multicast interface on the socket.
pub(crate) fn group_destination(group: IpAddr, port: u16, interface: InterfaceIndex) -> SocketAddr {
    match group {
        IpAddr::V4(group) => SocketAddr::V4(SocketAddrV4::new(group, port)),
        IpAddr::V6(group) => SocketAddr::V6(SocketAddrV6::new(group, port, 0, interface.0)),
    }
}

/// Sets the interface IPv4 multicast leaves from.
pub(crate) fn set_ipv4_multicast_interface(socket: &UdpSocket, address: Ipv4Addr) -> io::Result<()> {
    SockRef::from(socket).set_multicast_if_v4(&address)
}

/// Reads one datagram without blocking, with the interface it arrived on.
///
/// Returns `WouldBlock` when no datagram is waiting; call it from `UdpSocket::try_io`.
pub(crate) fn receive(socket: &UdpSocket, buffer: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut control = nix::cmsg_space!(nix::libc::in6_pktinfo, nix::libc::in_pktinfo, u32);
    let message = socket::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )?;

    let mut interface = None;
    let mut queue_drops = None;
    for control in message.cmsgs()? {
        match control {
            ControlMessageOwned::RxqOvfl(count) => queue_drops = Some(count),
            ControlMessageOwned::Ipv6PacketInfo(info) => interface = Some(InterfaceIndex(info.ipi6_ifindex)),
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                interface = u32::try_from(info.ipi_ifindex).ok().map(InterfaceIndex);
            }
            _ => {}
        }
    }
    let source = message.address.as_ref().and_then(to_socket_addr).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source address")
    })?;
    let source = with_scope(source, interface);
    Ok(Datagram {
        len: message.bytes,
        source,
        interface,
        truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
        queue_drops,
    })
}

fn to_socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    address.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(v6.ip(), v6.port(), v6.flowinfo(), v6.scope_id()))
    })
}

/// Gives a link-local IPv6 source the scope of the interface its datagram arrived on, so that a
/// reply to it leaves from that interface.
fn with_scope(source: SocketAddr, interface: Option<InterfaceIndex>) -> SocketAddr {
    match (source, interface) {
        (SocketAddr::V6(mut v6), Some(interface)) if v6.ip().is_unicast_link_local() => {
            v6.set_scope_id(interface.0);
            SocketAddr::V6(v6)
        }
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_source_gets_arrival_scope() {
        let source: SocketAddr = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 5, 0, 0));
        let scoped = with_scope(source, Some(InterfaceIndex(7)));
        let SocketAddr::V6(scoped) = scoped else { panic!("IPv6 stays IPv6") };
        assert_eq!(scoped.scope_id(), 7);
    }

    #[test]
    fn global_source_keeps_no_scope() {
        let source: SocketAddr = "[2001:db8::1]:5".parse().unwrap();
        assert_eq!(with_scope(source, Some(InterfaceIndex(7))), source);
    }

    #[test]
    fn group_destination_scoped_to_interface() {
        let group: IpAddr = "ff02::1:2".parse().unwrap();
        let destination = group_destination(group, 53566, InterfaceIndex(4));
        assert_eq!(destination, SocketAddr::V6(SocketAddrV6::new("ff02::1:2".parse().unwrap(), 53566, 0, 4)));
    }
}
