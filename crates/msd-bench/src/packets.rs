//! Packets the benchmarks encode, decode and send: the same shapes as the protocol's test vectors.

use msd_wire::keys::{Key, KeyRing};
use msd_wire::native::{Health, NativeKind, NativePacket};
use msd_wire::seed::SeedPacket;
use msd_wire::{EncodeError, GroupId};

/// The group of the protocol's test vectors.
pub const GROUP: GroupId = GroupId::from_bytes([
    0x55, 0xc5, 0x45, 0x25, 0x8c, 0x44, 0x0a, 0x73, 0x1a, 0x50, 0x81, 0x04, 0x25, 0xbc,
]);

/// Instance id of the single-packet benchmarks.
pub const ID: &str = "web-1";

/// URL of the single-packet benchmarks.
pub const URL: &str = "http://10.0.0.7:8080";

/// Incarnation of every benchmark instance: 2023-11-14 in microseconds since the Unix epoch.
pub const INCARNATION: u64 = 1_700_000_000_000_000;

/// Timestamp of the single-packet benchmarks, in milliseconds since the Unix epoch.
pub const TIMESTAMP_MS: u64 = 1_800_000_000_000;

/// Returns the key of the authenticated test vectors: the bytes 0x00 to 0x1f.
pub fn key() -> Key {
    let mut secret = [0u8; 32];
    for (value, byte) in (0u8..).zip(secret.iter_mut()) {
        *byte = value;
    }
    Key::from_bytes(secret)
}

/// Returns a key ring with [`key`] as its primary key.
pub fn key_ring() -> KeyRing {
    KeyRing::new(key())
}

/// Returns the seed ANNOUNCE of `web-1`.
pub fn seed_announce() -> SeedPacket<'static> {
    SeedPacket::announce(URL, ID)
}

/// Returns a native ANNOUNCE with the fields every heartbeat carries: id, incarnation, sequence,
/// a 2 s TTL, the URL and health.
pub fn native_announce<'a>(
    id: &'a str,
    url: &'a str,
    sequence: u64,
    timestamp_ms: u64,
) -> NativePacket<'a> {
    NativePacket {
        kind: Some(NativeKind::Announce),
        group: Some(GROUP),
        timestamp_ms,
        id: Some(id),
        incarnation: Some(INCARNATION),
        sequence: Some(sequence),
        ttl_ms: Some(2000),
        url: Some(url),
        health: Some(Health::Serving),
        ..NativePacket::default()
    }
}

/// Encodes `rounds` heartbeats of each of `ids` distinct instances, in round-robin order. Every
/// packet carries a higher sequence number than the previous one of its instance, so a
/// discoverer applies all of them. Ids are `bench-00000`, `bench-00001`, and so on.
///
/// # Errors
///
/// Fails only if a packet cannot be encoded, which these fixed shapes never cause.
pub fn heartbeat_stream(
    ids: usize,
    rounds: usize,
    key: Option<&Key>,
    timestamp_ms: u64,
) -> Result<Vec<Vec<u8>>, EncodeError> {
    let names: Vec<String> = (0..ids).map(instance_id).collect();
    let urls: Vec<String> = (0..ids)
        .map(|index| format!("http://10.1.{}.{}:8080", index / 256, index % 256))
        .collect();
    let mut packets = Vec::with_capacity(ids * rounds);
    for round in 0..rounds {
        let sequence = round as u64 + 1;
        for (name, url) in names.iter().zip(&urls) {
            packets.push(native_announce(name, url, sequence, timestamp_ms).to_vec(key)?);
        }
    }
    Ok(packets)
}

/// Returns the id of the instance with this index in [`heartbeat_stream`].
pub fn instance_id(index: usize) -> String {
    format!("bench-{index:05}")
}

#[cfg(test)]
mod tests {
    use msd_wire::native::Verify;

    use super::*;

    #[test]
    fn stream_round_robins_rising_sequences() {
        let packets = heartbeat_stream(3, 2, None, TIMESTAMP_MS).expect("fixed shapes encode");
        assert_eq!(packets.len(), 6);
        let decoded: Vec<(String, u64)> = packets
            .iter()
            .map(|bytes| {
                let packet = NativePacket::decode(bytes, Verify::No).expect("valid packet");
                (
                    packet.id.unwrap_or_default().to_owned(),
                    packet.sequence.unwrap_or_default(),
                )
            })
            .collect();
        let expected: Vec<(String, u64)> = [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2)]
            .iter()
            .map(|&(index, sequence)| (instance_id(index), sequence))
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn authenticated_stream_verifies() {
        let ring = key_ring();
        let packets = heartbeat_stream(2, 1, Some(ring.primary()), TIMESTAMP_MS)
            .expect("fixed shapes encode");
        for bytes in &packets {
            let packet = NativePacket::decode(bytes, Verify::With(&ring)).expect("tag verifies");
            assert_eq!(packet.key_id, Some(ring.primary().id()));
        }
    }

    #[test]
    fn announce_matches_protocol_vector() {
        let bytes = native_announce(ID, URL, 1, TIMESTAMP_MS)
            .to_vec(None)
            .expect("fixed shape encodes");
        assert_eq!(
            bytes,
            include_bytes!("../../msd-wire/tests/fixtures/native/announce.bin")
        );
    }

    #[test]
    fn authenticated_announce_matches_protocol_vector() {
        let bytes = native_announce(ID, URL, 1, TIMESTAMP_MS)
            .to_vec(Some(&key()))
            .expect("fixed shape encodes");
        assert_eq!(
            bytes,
            include_bytes!("../../msd-wire/tests/fixtures/native/announce-authenticated.bin")
        );
    }
}
