//! The sans-IO state machines of msd: instances, discoverers and their registry.
//!
//! Nothing here opens a socket, reads a clock or draws OS randomness. Datagrams come in as bytes
//! with their sender and interface; packets go out as [`Transmit`] values; time comes in as a
//! `now` argument and randomness from a generator seeded through the configuration. The `msd`
//! crate drives these machines with tokio, and tests drive thousands of them with a virtual clock.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//! use msd_engine::{Discoverer, DiscovererConfig, Event, Instance, InstanceConfig, InterfaceIndex, Received};
//! use msd_wire::GroupId;
//!
//! let group: GroupId = "55c545258c440a731a50810425bc".parse()?;
//! let (now, unix_ms) = (Instant::now(), 1_800_000_000_000);
//! let interface = InterfaceIndex(2);
//! let config = InstanceConfig::new(group, "deadbeef", "http://10.0.0.7:8080");
//! let mut instance = Instance::new(config, now, unix_ms)?;
//! let mut discoverer = Discoverer::new(DiscovererConfig::new(group), now, unix_ms);
//! instance.add_interface(now, interface);
//! discoverer.add_interface(now, interface);
//!
//! // Deliver the instance's first ANNOUNCE (native, then seed) to the discoverer.
//! let announce = instance.poll_transmit().expect("an announce on the new interface");
//! let source: SocketAddr = "[fe80::1%2]:41000".parse()?;
//! discoverer.handle_datagram(now, Received { source, interface, payload: &announce.payload });
//! assert!(matches!(discoverer.poll_event(), Some(Event::Up(info)) if info.id == "deadbeef"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! The seed protocol carries no incarnation, so a late seed ANNOUNCE of a stopped instance can
//! bring it back until it expires again. The native protocol does not have this problem.

// Input from the network must never panic: library code avoids unwrap and unchecked
// indexing; tests may use both.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]

mod clock;
mod discoverer;
mod instance;
mod ratelimit;
mod schedule;
pub mod sim;
mod stats;
mod types;

pub use discoverer::{Discoverer, DiscovererConfig};
pub use instance::{Instance, InstanceConfig, LogoffTemplate};
pub use msd_wire::native::Health;
pub use stats::{KindCounts, Stats, AUTHENTICATION_REASONS};
pub use types::{
    Destination, DownReason, Event, InstanceInfo, InterfaceIndex, Protocol, ProtocolMode, Received,
    Transmit,
};
