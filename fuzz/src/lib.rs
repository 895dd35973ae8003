//! Checks behind the fuzz targets of msd-wire, and the native packets that seed their corpus.
//!
//! Each check decodes untrusted bytes and, when decoding succeeds, re-encodes the packet, decodes
//! the result and compares. A failed check panics, which libFuzzer records as a crash.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use msd_wire::keys::{Key, KeyRing, KEY_LEN};
use msd_wire::native::{self, Health, NativeKind, NativePacket, Verify};
use msd_wire::seed::SeedPacket;
use msd_wire::{DecodeError, GroupId, Packet};
use sha2::Sha256;

/// Secret of the primary key of the fuzzing key ring.
pub const PRIMARY_SECRET: [u8; KEY_LEN] = [0x11; KEY_LEN];
/// Secret of the accepted, non-primary key of the fuzzing key ring.
pub const ACCEPTED_SECRET: [u8; KEY_LEN] = [0x22; KEY_LEN];

/// Offsets of the minor version and the flags in a native packet.
const MINOR_VERSION_OFFSET: usize = 5;
const FLAGS_OFFSET: usize = 7;
const FLAG_AUTHENTICATED: u8 = 0x01;

/// Returns the key ring the targets verify with. Its keys are fixed, so signed corpus entries
/// stay valid from one run to the next.
pub fn key_ring() -> KeyRing {
    KeyRing::new(Key::from_bytes(PRIMARY_SECRET)).with_accepted(Key::from_bytes(ACCEPTED_SECRET))
}

/// Decodes `data` as a seed packet and checks that a decoded packet survives re-encoding.
pub fn check_seed(data: &[u8]) {
    if let Ok(packet) = SeedPacket::decode(data) {
        check_seed_round_trip(&packet);
    }
}

/// Decodes `data` as a native packet, without verification and with [`key_ring`].
///
/// Fuzzed bytes almost never carry a valid tag, so an authenticated packet is also decoded once
/// more after [`resign`] gave it one. That reaches the field parser behind a successful
/// verification, and checks that a valid tag changes nothing but the outcome of verification.
pub fn check_native(data: &[u8]) {
    let ring = key_ring();
    if let Ok(packet) = NativePacket::decode(data, Verify::No) {
        check_native_round_trip(&packet, None);
    }
    if let Ok(packet) = NativePacket::decode(data, Verify::With(&ring)) {
        check_native_round_trip(&packet, Some(&ring));
    }

    let Some(signed) = resign(data) else {
        return;
    };
    let verified = NativePacket::decode(&signed, Verify::With(&ring));
    let unverified = NativePacket::decode(&signed, Verify::No);
    assert_eq!(verified, unverified, "verifying a valid tag changed the decoded packet");
    if let Ok(packet) = verified {
        check_native_round_trip(&packet, Some(&ring));
    }
}

/// Decodes `data` with the dispatching decoder, without verification and with [`key_ring`].
///
/// The result must equal what the decoder of the protocol named by the magic bytes returns, and a
/// seed packet must never pass verification. Decoded packets must survive re-encoding.
pub fn check_packet(data: &[u8]) {
    let ring = key_ring();
    for verify in [Verify::No, Verify::With(&ring)] {
        let decoded = Packet::decode(data, verify);
        let expected = match verify {
            _ if native::is_native(data) => NativePacket::decode(data, verify).map(Packet::Native),
            Verify::No => SeedPacket::decode(data).map(Packet::Seed),
            Verify::With(_) => Err(DecodeError::Unauthenticated),
        };
        assert_eq!(decoded, expected, "dispatch disagrees with the decoder of its protocol");

        let ring = match verify {
            Verify::No => None,
            Verify::With(ring) => Some(ring),
        };
        match decoded {
            Ok(Packet::Seed(packet)) => check_seed_round_trip(&packet),
            Ok(Packet::Native(packet)) => check_native_round_trip(&packet, ring),
            Err(_) => {}
        }
    }
}

fn check_seed_round_trip(first: &SeedPacket<'_>) {
    let encoded = first.to_vec().expect("a decoded seed packet re-encodes");
    assert_eq!(encoded.len(), first.encoded_len(), "encoded_len of {first:?}");

    let second = SeedPacket::decode(&encoded).expect("a re-encoded seed packet decodes");
    assert_eq!(&second, first, "seed packet changed across encode and decode");
    let again = second.to_vec().expect("a decoded seed packet re-encodes");
    assert_eq!(again, encoded, "seed encoding of a decoded packet is not stable");
}

/// Re-encodes a decoded native packet, decodes the bytes again and compares.
///
/// Two values may legitimately differ, so the comparison expects what the encoder writes:
/// - `minor_version` is always [`native::MINOR_VERSION`] after encoding. Fields of a newer minor
///   version are skipped when decoding, so neither packet contains them.
/// - `key_id`: a packet verified with `ring` is re-signed with the key that verified it and keeps
///   its key id. A packet decoded with `Verify::No` may name a key that is not at hand, so it is
///   re-encoded without a trailer and comes back with no key id.
fn check_native_round_trip(first: &NativePacket<'_>, ring: Option<&KeyRing>) {
    let (key, verify) = match (ring, first.key_id) {
        (Some(ring), Some(id)) => {
            let key = ring.find(id).expect("a verified key id names a key of the ring");
            (Some(key), Verify::With(ring))
        }
        _ => (None, Verify::No),
    };
    let encoded = first.to_vec(key).expect("a decoded native packet re-encodes");
    assert_eq!(encoded.len(), first.encoded_len(key.is_some()), "encoded_len of {first:?}");

    let second = NativePacket::decode(&encoded, verify).expect("a re-encoded native packet decodes");
    let expected = NativePacket { minor_version: native::MINOR_VERSION, key_id: key.map(Key::id), ..first.clone() };
    assert_eq!(second, expected, "native packet changed across encode and decode");
    let again = second.to_vec(key).expect("a decoded native packet re-encodes");
    assert_eq!(again, encoded, "native encoding of a decoded packet is not stable");
}

/// Returns a copy of `data` with a valid key id and tag in its trailer, or `None` when `data` is
/// not a native packet flagged as authenticated or is too short to hold a trailer.
///
/// The key is the accepted key of [`key_ring`] when the trailer already names it, and the primary
/// key otherwise. The tag is computed here from the format's definition, HMAC-SHA256 over every
/// byte before the tag cut to its first 16 bytes, so a packet the library signs differently fails
/// verification and the check in [`check_native`].
pub fn resign(data: &[u8]) -> Option<Vec<u8>> {
    let flags = *data.get(FLAGS_OFFSET)?;
    if !native::is_native(data) || flags & FLAG_AUTHENTICATED == 0 {
        return None;
    }
    let key_id_start = data.len().checked_sub(native::TRAILER_LEN).filter(|start| *start >= native::HEADER_LEN)?;
    let tag_start = key_id_start + 4;

    let accepted = Key::from_bytes(ACCEPTED_SECRET);
    let names_accepted = data.get(key_id_start..tag_start) == Some(accepted.id().0.as_slice());
    let secret = if names_accepted { ACCEPTED_SECRET } else { PRIMARY_SECRET };

    let mut signed = data.to_vec();
    signed.get_mut(key_id_start..tag_start)?.copy_from_slice(&Key::from_bytes(secret).id().0);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret).expect("HMAC takes keys of any length");
    mac.update(signed.get(..tag_start)?);
    let digest = mac.finalize().into_bytes();
    signed.get_mut(tag_start..)?.copy_from_slice(digest.get(..native::TAG_LEN)?);
    Some(signed)
}

/// Returns named native packets for the corpus: every kind, every field, both keys of
/// [`key_ring`], and a packet of a newer minor version with a field this version does not know.
pub fn native_samples() -> Vec<(&'static str, Vec<u8>)> {
    let ring = key_ring();
    let primary = ring.primary();
    let accepted = Key::from_bytes(ACCEPTED_SECRET);
    let announce = full_announce();
    let group = announce.group;
    let header_only = |kind| NativePacket { kind: Some(kind), group, timestamp_ms: 1, ..NativePacket::default() };
    let probe = NativePacket { id: Some("web-1"), ..header_only(NativeKind::Probe) };
    let logoff = NativePacket { kind: Some(NativeKind::Logoff), ..minimal_announce() };

    let encode = |packet: &NativePacket<'_>, key: Option<&Key>| packet.to_vec(key).expect("sample packets encode");
    let mut samples = vec![
        ("discover", encode(&header_only(NativeKind::Discover), None)),
        ("discover-signed", encode(&header_only(NativeKind::Discover), Some(primary))),
        ("probe", encode(&probe, None)),
        ("announce-minimal", encode(&minimal_announce(), None)),
        ("announce-full", encode(&announce, None)),
        ("announce-full-signed", encode(&announce, Some(primary))),
        ("announce-signed-by-accepted-key", encode(&announce, Some(&accepted))),
        ("logoff", encode(&logoff, None)),
        ("logoff-signed", encode(&logoff, Some(primary))),
    ];

    let newer = newer_minor(&encode(&announce, None));
    let mut newer_signed = newer.clone();
    newer_signed[FLAGS_OFFSET] |= FLAG_AUTHENTICATED;
    newer_signed.extend_from_slice(&[0; native::TRAILER_LEN]);
    let newer_signed = resign(&newer_signed).expect("the packet is flagged and long enough");
    samples.push(("announce-newer-minor", newer));
    samples.push(("announce-newer-minor-signed", newer_signed));
    samples
}

fn minimal_announce() -> NativePacket<'static> {
    NativePacket {
        kind: Some(NativeKind::Announce),
        group: Some(GroupId::from_bytes(*b"msd-fuzz-group")),
        timestamp_ms: 1_800_000_000_000,
        id: Some("web-1"),
        incarnation: Some(1),
        sequence: Some(1),
        ttl_ms: Some(2000),
        url: Some("http://[::1]:8080"),
        ..NativePacket::default()
    }
}

fn full_announce() -> NativePacket<'static> {
    let metadata = BTreeMap::from([("version", "1.4.2"), ("zone", "eu-1")]);
    NativePacket { health: Some(Health::Draining), weight: Some(100), load: Some(250), metadata, ..minimal_announce() }
}

/// Raises the minor version of an unauthenticated packet and appends a field of a type this
/// version does not know.
fn newer_minor(packet: &[u8]) -> Vec<u8> {
    let mut bytes = packet.to_vec();
    bytes[MINOR_VERSION_OFFSET] = native::MINOR_VERSION + 1;
    bytes.extend_from_slice(&[0x40, 0x00, 0x03, 0x01, 0x02, 0x03]);
    bytes
}
