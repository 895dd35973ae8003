//! Packet formats of msd: encoding, decoding and validation, with no I/O and no clock.
//!
//! This crate turns datagrams into validated values and back. It is the boundary where untrusted
//! bytes from the network enter msd, so every decoder here is bounds-checked, allocation-free in
//! the lengths a peer sends, and covered by property tests and fuzz targets.
//!
//! - [`seed`]: the wire format of the Node.js library msd grew from, reproduced byte for byte.
//! - [`native`]: msd's own format, with health, metadata, liveness fields and authentication.
//! - [`keys`]: shared keys and the key ring used to authenticate native packets.
//! - [`GroupId`]: the 14-byte id of a service and the multicast addresses derived from it.
//!
//! ```
//! use msd_wire::seed::{SeedKind, SeedPacket};
//!
//! let bytes = SeedPacket::announce("http://10.0.0.7:8080", "deadbeef").to_vec()?;
//! let packet = SeedPacket::decode(&bytes)?;
//! assert_eq!(packet.kind, SeedKind::Announce);
//! assert_eq!(packet.host.map(|host| host.id), Some("deadbeef"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Limitations
//!
//! The seed decoder rejects strings that are not valid UTF-8 and MessagePack extension types,
//! both of which the original accepts; `docs/PROTOCOL.md` lists these differences.

// Input from the network must never panic: library code avoids unwrap and unchecked
// indexing; tests may use both.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::indexing_slicing))]

mod error;
mod group;
pub mod keys;
pub mod native;
mod reader;
pub mod seed;

pub use error::{DecodeError, EncodeError};
pub use group::{GroupId, GroupIdError};

use native::{NativePacket, Verify};
use seed::SeedPacket;

/// A packet of either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Seed(SeedPacket<'a>),
    Native(NativePacket<'a>),
}

impl<'a> Packet<'a> {
    /// Decodes a datagram of either protocol, telling them apart by the native magic bytes.
    ///
    /// With [`Verify::With`], seed packets (which cannot be authenticated) are rejected as
    /// [`DecodeError::Unauthenticated`].
    ///
    /// # Errors
    ///
    /// Returns the first reason the datagram is invalid.
    pub fn decode(datagram: &'a [u8], verify: Verify<'_>) -> Result<Self, DecodeError> {
        if native::is_native(datagram) {
            return NativePacket::decode(datagram, verify).map(Packet::Native);
        }
        if let Verify::With(_) = verify {
            return Err(DecodeError::Unauthenticated);
        }
        SeedPacket::decode(datagram).map(Packet::Seed)
    }
}
