use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

/// The operating system's index of a network interface, as `if_nametoindex` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceIndex(pub u32);

impl fmt::Display for InterfaceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Destination {
    /// The service's multicast group, sent out of one interface.
    Group { interface: InterfaceIndex },
    /// One peer. A link-local IPv6 address carries its scope id.
    Unicast(SocketAddr),
}

/// A datagram the engine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: Destination,
    pub payload: Vec<u8>,
}

/// A datagram handed to the engine.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// The sender's address and port. For a link-local IPv6 sender the scope id is the index of
    /// the interface the datagram arrived on.
    pub source: SocketAddr,
    /// The interface the datagram arrived on, from the packet's own information, not from the
    /// socket that read it.
    pub interface: InterfaceIndex,
    pub payload: &'a [u8],
}

/// The wire format a peer spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Protocol {
    /// The format of the Node.js library msd grew from.
    Seed,
}

/// What a discoverer knows about one live instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub url: String,
    pub protocol: Protocol,
    /// The interface the instance was last heard on.
    pub interface: InterfaceIndex,
    /// The address the instance's last packet came from.
    pub source: SocketAddr,
    pub first_seen: Instant,
    pub last_seen: Instant,
}

/// Why an instance left the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DownReason {
    /// The instance sent LOGOFF.
    Logoff,
    /// Nothing was heard from the instance within the expiry time, and it did not answer a
    /// direct DISCOVER either.
    Expired,
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DownReason::Logoff => "logoff",
            DownReason::Expired => "expired",
        })
    }
}

/// A change in a discoverer's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An instance was heard for the first time, or again after it went down.
    Up(InstanceInfo),
    /// An instance's announced content changed (for the seed protocol: its URL).
    Changed { previous: InstanceInfo, current: InstanceInfo },
    /// An instance left the table.
    Down { instance: InstanceInfo, reason: DownReason },
}
