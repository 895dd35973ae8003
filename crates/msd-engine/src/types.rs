use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msd_wire::keys::KeyId;
use msd_wire::native::Health;

/// The operating system's index of a network interface, as `if_nametoindex` returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InterfaceIndex(pub u32);

impl fmt::Display for InterfaceIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The destination of a datagram.
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
    /// msd's own format.
    Native,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Seed => "seed",
            Protocol::Native => "native",
        }
    }
}

/// The protocols an instance sends, or a discoverer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolMode {
    /// The seed protocol only.
    Seed,
    /// The native protocol only.
    Native,
    /// Both: instances send every announcement in both formats, discoverers accept both.
    #[default]
    Both,
}

impl ProtocolMode {
    pub fn seed(self) -> bool {
        matches!(self, ProtocolMode::Seed | ProtocolMode::Both)
    }

    pub fn native(self) -> bool {
        matches!(self, ProtocolMode::Native | ProtocolMode::Both)
    }
}

impl std::str::FromStr for ProtocolMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "seed" => Ok(ProtocolMode::Seed),
            "native" => Ok(ProtocolMode::Native),
            "both" => Ok(ProtocolMode::Both),
            other => Err(format!("invalid protocol {other:?}: expected seed, native or both")),
        }
    }
}

/// A discoverer's record of one live instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    pub id: String,
    pub url: String,
    /// The protocol of the packets the entry is built from. Once an instance has been heard in
    /// the native protocol, its seed packets are ignored.
    pub protocol: Protocol,
    /// Health as the instance reports it; always `Serving` for the seed protocol.
    pub health: Health,
    /// Weight for balancing, as the instance reports it.
    pub weight: Option<u32>,
    /// Load, in units the service chooses (for example active requests), as reported.
    pub load: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    /// Changes on every restart of the instance (native protocol only).
    pub incarnation: Option<u64>,
    /// Sequence number of the last packet applied (native protocol only).
    pub sequence: Option<u64>,
    /// How long the instance announced it stays alive without another packet (native protocol only).
    pub ttl: Option<Duration>,
    /// The key that authenticated the instance's last packet.
    pub key_id: Option<KeyId>,
    /// The interface the instance was last heard on.
    pub interface: InterfaceIndex,
    /// The address the instance's last packet came from.
    pub source: SocketAddr,
    pub first_seen: Instant,
    pub last_seen: Instant,
}

/// The reason an instance left the table.
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
#[allow(clippy::large_enum_variant, reason = "events are moved a few times per change, not stored in bulk")]
pub enum Event {
    /// An instance was heard for the first time, or again after it went down.
    Up(InstanceInfo),
    /// An instance's announced content changed: URL, health, weight, load, metadata or
    /// incarnation (a restart).
    Changed { previous: InstanceInfo, current: InstanceInfo },
    /// An instance left the table.
    Down { instance: InstanceInfo, reason: DownReason },
}
