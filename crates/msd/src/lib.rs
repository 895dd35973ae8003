//! msd: multicast service discovery for the instances of a horizontally scaled service.
//!
//! Every instance of a service announces itself to a multicast group derived from the service's
//! 14-byte [`GroupId`]; discoverers keep a current table of the live instances and publish an event
//! when one comes up, changes or goes away. There is no registry to run: instances and discoverers
//! find each other on one L2 network.
//!
//! msd speaks the wire protocol of the Node.js library it grew from byte for byte, so its
//! instances are seen by the original's discoverers and the reverse.
//!
//! ```no_run
//! use msd::{Discoverer, Event, GroupId, Instance};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let group: GroupId = "55c545258c440a731a50810425bc".parse()?;
//!
//! // In the service: announce this instance until shutdown.
//! let instance = Instance::builder(group).id("web-7").url("http://10.0.0.7:8080").start().await?;
//!
//! // In a client or load balancer: follow the live instances.
//! let discoverer = Discoverer::builder(group).start().await?;
//! let mut events = discoverer.events();
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Up(info) => println!("up: {} at {}", info.id, info.url),
//!         Event::Changed { current, .. } => println!("changed: {} at {}", current.id, current.url),
//!         Event::Down { instance, reason } => println!("down: {} ({reason})", instance.id),
//!     }
//! #   break;
//! }
//!
//! instance.shutdown().await?; // sends LOGOFF
//! # Ok(())
//! # }
//! ```
//!
//! # Interfaces
//!
//! By default msd uses every interface that is up, multicast-capable and not loopback, and follows
//! interfaces as they come and go. `MSD_MULTICAST_INTERFACE` (comma-separated names) or the
//! builders' `interface` restrict that. The loopback interface carries only IPv4 multicast, so
//! use [`IpVersion::V4`] with it.
//!
//! # Limitations
//!
//! - The seed protocol has no incarnation or sequence number: a delayed ANNOUNCE from an instance
//!   that has just logged off brings it back until it expires again.
//! - The original implementation answers a DISCOVER on port 53566 whatever port it came from.
//!   When several discoverers share one host, only one of them receives such an answer; the others
//!   learn about the original's instances only from their own announcements at start.

// Input from the network must never panic: library code avoids unwrap and unchecked
// indexing; tests may use both.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod balance;
#[cfg(feature = "tower")]
mod discover;
mod discoverer;
mod driver;
mod error;
mod instance;
mod net;

use std::sync::atomic::Ordering;

#[cfg(feature = "tower")]
pub use discover::DiscoverStream;
pub use discoverer::{Discoverer, DiscovererBuilder, Events, EVENT_BUFFER, MIN_DISCOVER_INTERVAL, MIN_EXPIRE_AFTER, MIN_PROBE_INTERVAL};
pub use error::Error;
pub use instance::{Instance, InstanceBuilder, MAX_DATAGRAM, MIN_ANNOUNCE_INTERVAL, MIN_HEARTBEAT_INTERVAL};
pub use msd_engine::{DownReason, Event, Health, InstanceInfo, InterfaceIndex, KindCounts, Protocol, ProtocolMode};
pub use msd_wire::keys::{Key, KeyId, KeyRing, KeyRingError};
pub use msd_wire::seed::SEED_PORT;
pub use msd_wire::{GroupId, GroupIdError};
pub use net::{InterfaceSelection, IpVersion, INTERFACE_ENV};

/// Returns the name of the interface with this index, or `None` when there is no such interface.
pub fn interface_name(index: InterfaceIndex) -> Option<String> {
    let name = nix::net::if_::if_indextoname(index.0).ok()?.into_string().ok()?;
    // nix 0.29 returns an empty name, not an error, for an index that does not exist.
    (!name.is_empty()).then_some(name)
}

/// Counters of an instance or discoverer. All counts start at zero and only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Packets received, sent and rejected by the protocol engine.
    pub packets: msd_engine::Stats,
    /// Datagrams larger than the receive buffer, dropped.
    pub truncated: u64,
    /// Datagrams the operating system failed to send.
    pub send_errors: u64,
    /// Failed reads, and datagrams without packet information.
    pub receive_errors: u64,
    /// Datagrams that arrived on an interface not in use, dropped.
    pub foreign_interface: u64,
    /// Datagrams from a sender not on the arrival interface's link (or from port 0), dropped.
    pub off_link: u64,
    /// Datagrams the kernel dropped because a receive queue was full: the process did not read
    /// fast enough. Counted by the kernel (`SO_RXQ_OVFL`) and read with the next datagram.
    pub receive_queue_drops: u64,
    /// Events lost by subscribers that fell behind (discoverers only).
    pub events_lagged: u64,
}

impl Stats {
    fn new(packets: msd_engine::Stats, counters: &driver::DriverCounters) -> Self {
        Stats {
            packets,
            truncated: counters.truncated.load(Ordering::Relaxed),
            send_errors: counters.send_errors.load(Ordering::Relaxed),
            receive_errors: counters.receive_errors.load(Ordering::Relaxed),
            foreign_interface: counters.foreign_interface.load(Ordering::Relaxed),
            off_link: counters.off_link.load(Ordering::Relaxed),
            receive_queue_drops: counters.group_queue_drops.load(Ordering::Relaxed)
                + counters.private_queue_drops.load(Ordering::Relaxed),
            events_lagged: 0,
        }
    }
}

/// The README's examples, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
