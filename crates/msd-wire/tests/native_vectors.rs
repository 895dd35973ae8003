//! The native protocol's test vectors: fixed packets whose bytes `docs/PROTOCOL.md` documents.
//!
//! Each vector is built here from its fields and must match the committed bytes in
//! `fixtures/native/` exactly, and the committed bytes must decode to the same fields. Run with
//! `MSD_WRITE_NATIVE_VECTORS=1` to rewrite the fixtures after a deliberate format change.

use std::collections::BTreeMap;
use std::path::PathBuf;

use msd_wire::keys::{Key, KeyRing};
use msd_wire::native::{Health, NativeKind, NativePacket, Verify};
use msd_wire::GroupId;

const GROUP: &str = "55c545258c440a731a50810425bc";
const TIMESTAMP_MS: u64 = 1_800_000_000_000;
/// The key of the authenticated vectors: bytes 0x00 to 0x1f.
const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn key() -> Key {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(KEY_HEX, &mut bytes).unwrap();
    Key::from_bytes(bytes)
}

fn base(kind: NativeKind) -> NativePacket<'static> {
    NativePacket {
        kind: Some(kind),
        group: Some(GROUP.parse::<GroupId>().unwrap()),
        timestamp_ms: TIMESTAMP_MS,
        ..NativePacket::default()
    }
}

fn announce() -> NativePacket<'static> {
    NativePacket {
        id: Some("web-1"),
        incarnation: Some(1_700_000_000_000_000),
        sequence: Some(1),
        ttl_ms: Some(2000),
        url: Some("http://10.0.0.7:8080"),
        health: Some(Health::Serving),
        ..base(NativeKind::Announce)
    }
}

/// Returns every vector: name, packet, whether it is authenticated.
fn vectors() -> Vec<(&'static str, NativePacket<'static>, bool)> {
    let full = NativePacket {
        health: Some(Health::Draining),
        weight: Some(100),
        load: Some(250),
        metadata: BTreeMap::from([("version", "2.4.1"), ("zone", "eu-1")]),
        ..announce()
    };
    let logoff = NativePacket {
        id: Some("web-1"),
        incarnation: Some(1_700_000_000_000_000),
        sequence: Some(9),
        ..base(NativeKind::Logoff)
    };
    vec![
        ("discover", base(NativeKind::Discover), false),
        ("announce", announce(), false),
        ("announce-full", full, false),
        ("logoff", logoff.clone(), false),
        ("probe", NativePacket { id: Some("web-1"), ..base(NativeKind::Probe) }, false),
        ("announce-authenticated", announce(), true),
        ("logoff-authenticated", logoff, true),
        ("discover-authenticated", base(NativeKind::Discover), true),
    ]
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/native").join(format!("{name}.bin"))
}

#[test]
fn vectors_match_fixtures() {
    let key = key();
    let write = std::env::var_os("MSD_WRITE_NATIVE_VECTORS").is_some();
    for (name, packet, authenticated) in vectors() {
        let bytes = packet.to_vec(authenticated.then_some(&key)).unwrap();
        if write {
            std::fs::write(fixture(name), &bytes).unwrap();
        }
        let committed = std::fs::read(fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(hex::encode(&bytes), hex::encode(&committed), "{name}");
    }
}

#[test]
fn fixtures_decode_to_their_fields() {
    let ring = KeyRing::new(key());
    for (name, packet, authenticated) in vectors() {
        let committed = std::fs::read(fixture(name)).unwrap();
        let verify = if authenticated { Verify::With(&ring) } else { Verify::No };
        let decoded = NativePacket::decode(&committed, verify).unwrap_or_else(|error| panic!("{name}: {error}"));
        let expected = NativePacket { key_id: authenticated.then(|| ring.primary().id()), ..packet };
        assert_eq!(decoded, expected, "{name}");
    }
}

#[test]
fn authenticated_fixtures_rejected_with_other_key() {
    let other = KeyRing::new(Key::from_bytes([0xee; 32]));
    for (name, _, authenticated) in vectors() {
        if !authenticated {
            continue;
        }
        let committed = std::fs::read(fixture(name)).unwrap();
        assert!(NativePacket::decode(&committed, Verify::With(&other)).is_err(), "{name}");
    }
}

#[test]
fn seed_decoder_rejects_native() {
    for (name, _, _) in vectors() {
        let committed = std::fs::read(fixture(name)).unwrap();
        assert!(msd_wire::seed::SeedPacket::decode(&committed).is_err(), "{name}");
    }
}
