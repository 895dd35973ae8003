//! Property tests of the native format and of `Packet::decode`: no input makes a decoder panic,
//! decoding inverts encoding, and authentication rejects any change to a signed packet.

use std::collections::BTreeMap;

use msd_wire::keys::{Key, KeyRing, KEY_LEN};
use msd_wire::native::{self, Health, NativeKind, NativePacket, Verify};
use msd_wire::seed::{SeedHost, SeedKind, SeedPacket};
use msd_wire::{DecodeError, GroupId, Packet};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::Index;

/// The values of one native packet, owned so that a strategy can generate them and a
/// `NativePacket` can borrow its strings from them.
#[derive(Debug, Clone)]
struct Fields {
    kind: NativeKind,
    group: [u8; GroupId::LEN],
    timestamp_ms: u64,
    id: Option<String>,
    incarnation: Option<u64>,
    sequence: Option<u64>,
    ttl_ms: Option<u32>,
    url: Option<String>,
    health: Option<Health>,
    weight: Option<u32>,
    load: Option<u32>,
    metadata: BTreeMap<String, String>,
}

impl Fields {
    fn packet(&self) -> NativePacket<'_> {
        NativePacket {
            kind: Some(self.kind),
            minor_version: native::MINOR_VERSION,
            group: Some(GroupId::from_bytes(self.group)),
            timestamp_ms: self.timestamp_ms,
            id: self.id.as_deref(),
            incarnation: self.incarnation,
            sequence: self.sequence,
            ttl_ms: self.ttl_ms,
            url: self.url.as_deref(),
            health: self.health,
            weight: self.weight,
            load: self.load,
            metadata: self.metadata.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect(),
            key_id: None,
        }
    }
}

fn any_kind() -> impl Strategy<Value = NativeKind> {
    prop_oneof![
        Just(NativeKind::Discover),
        Just(NativeKind::Announce),
        Just(NativeKind::Logoff),
        Just(NativeKind::Probe),
    ]
}

fn any_health() -> impl Strategy<Value = Health> {
    prop_oneof![Just(Health::Serving), Just(Health::Draining), Just(Health::Failing)]
}

/// Instance ids from one character up to the maximum of 255 bytes.
fn any_id() -> impl Strategy<Value = String> {
    prop_oneof![".{1,40}", "[a-z0-9-]{255}"]
}

/// Generates a value together with whether to keep it, so that optional fields are present about
/// half of the time and fields the kind requires can be forced present.
fn maybe<T: std::fmt::Debug + Clone>(value: impl Strategy<Value = T>) -> impl Strategy<Value = (bool, T)> {
    (any::<bool>(), value)
}

fn keep<T>((present, value): (bool, T), required: bool) -> Option<T> {
    (present || required).then_some(value)
}

/// Valid native packets of every kind: the fields a kind requires are always present, every other
/// field about half of the time, and metadata holds up to four entries.
fn any_fields() -> impl Strategy<Value = Fields> {
    let header = (any_kind(), any::<[u8; GroupId::LEN]>(), any::<u64>());
    let identity = (maybe(any_id()), maybe(any::<u64>()), maybe(any::<u64>()), maybe(any::<u32>()));
    let state = (maybe(".{0,120}"), maybe(any_health()), maybe(any::<u32>()), maybe(any::<u32>()));
    let metadata = btree_map(".{1,20}", ".{0,40}", 0..=4);
    (header, identity, state, metadata).prop_map(
        |((kind, group, timestamp_ms), (id, incarnation, sequence, ttl_ms), (url, health, weight, load), metadata)| {
            let announce = kind == NativeKind::Announce;
            let names_instance = announce || kind == NativeKind::Logoff;
            Fields {
                kind,
                group,
                timestamp_ms,
                id: keep(id, names_instance),
                incarnation: keep(incarnation, names_instance),
                sequence: keep(sequence, names_instance),
                ttl_ms: keep(ttl_ms, announce),
                url: keep(url, announce),
                health: keep(health, false),
                weight: keep(weight, false),
                load: keep(load, false),
                metadata,
            }
        },
    )
}

fn any_key() -> impl Strategy<Value = Key> {
    any::<[u8; KEY_LEN]>().prop_map(Key::from_bytes)
}

/// Field records: mostly well-formed values of the known types 1 to 9, and otherwise any type
/// with any value, which covers unknown fields, wrong lengths and invalid UTF-8.
fn any_field_record() -> impl Strategy<Value = (u8, Vec<u8>)> {
    let metadata_entry = ("[a-z]{1,8}", ".{0,16}").prop_map(|(key, value)| {
        let mut entry = vec![u8::try_from(key.len()).expect("short key")];
        entry.extend_from_slice(key.as_bytes());
        entry.extend_from_slice(value.as_bytes());
        entry
    });
    prop_oneof![
        (Just(1u8), ".{1,12}".prop_map(String::into_bytes)),
        (2u8..=3, vec(any::<u8>(), 8)),
        (prop_oneof![Just(4u8), Just(7), Just(8)], vec(any::<u8>(), 4)),
        (Just(5u8), ".{0,30}".prop_map(String::into_bytes)),
        (Just(6u8), vec(any::<u8>(), 1)),
        (Just(9u8), metadata_entry),
        (any::<u8>(), vec(any::<u8>(), 0..24)),
    ]
}

/// Generates datagrams with a valid native header followed by field records whose length headers
/// are correct, so that most of them reach the field parser and many decode.
fn framed_datagram() -> impl Strategy<Value = Vec<u8>> {
    let header = (any::<u8>(), 1u8..=4, any::<u8>(), any::<[u8; GroupId::LEN + 8]>());
    (header, vec(any_field_record(), 0..12)).prop_map(|((minor, kind, flags, rest), records)| {
        let mut bytes = native::MAGIC.to_vec();
        bytes.extend_from_slice(&[native::MAJOR_VERSION, minor, kind, flags & !0x01]);
        bytes.extend_from_slice(&rest);
        for (field_type, value) in records {
            bytes.push(field_type);
            let len = u16::try_from(value.len()).expect("generated values are short");
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&value);
        }
        bytes
    })
}

fn test_ring() -> KeyRing {
    KeyRing::new(Key::from_bytes([0x5a; KEY_LEN])).with_accepted(Key::from_bytes([0xa5; KEY_LEN]))
}

/// Runs every decoder in both verification modes. Only a panic can fail this.
fn decode_everywhere(bytes: &[u8], ring: &KeyRing) {
    let _ = SeedPacket::decode(bytes);
    let _ = NativePacket::decode(bytes, Verify::No);
    let _ = NativePacket::decode(bytes, Verify::With(ring));
    let _ = Packet::decode(bytes, Verify::No);
    let _ = Packet::decode(bytes, Verify::With(ring));
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        decode_everywhere(&bytes, &test_ring());
    }

    #[test]
    fn bytes_after_magic_never_panic(rest in vec(any::<u8>(), 0..600)) {
        let mut bytes = native::MAGIC.to_vec();
        bytes.extend_from_slice(&rest);
        decode_everywhere(&bytes, &test_ring());
    }

    #[test]
    fn bytes_after_valid_header_never_panic(
        minor in any::<u8>(),
        kind in 1u8..=4,
        flags in any::<u8>(),
        group_and_clock in any::<[u8; GroupId::LEN + 8]>(),
        rest in vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = native::MAGIC.to_vec();
        bytes.extend_from_slice(&[native::MAJOR_VERSION, minor, kind, flags]);
        bytes.extend_from_slice(&group_and_clock);
        bytes.extend_from_slice(&rest);
        decode_everywhere(&bytes, &test_ring());
    }

    /// Whatever the decoder accepts re-encodes to a packet that decodes to the same values. The
    /// encoder writes its own minor version, so that value is reset before comparing. Unknown
    /// fields are skipped when decoding, so neither packet contains them.
    #[test]
    fn decoded_framed_datagram_round_trips(bytes in framed_datagram()) {
        let Ok(first) = NativePacket::decode(&bytes, Verify::No) else {
            return Ok(());
        };
        let encoded = first.to_vec(None).expect("a decoded packet re-encodes");
        let second = NativePacket::decode(&encoded, Verify::No).expect("a re-encoded packet decodes");
        let expected = NativePacket { minor_version: native::MINOR_VERSION, ..first };
        prop_assert_eq!(second, expected);
    }

    #[test]
    fn decode_inverts_encode(fields in any_fields()) {
        let packet = fields.packet();
        let bytes = packet.to_vec(None).expect("encode");
        prop_assert_eq!(NativePacket::decode(&bytes, Verify::No), Ok(packet.clone()));
        prop_assert_eq!(Packet::decode(&bytes, Verify::No), Ok(Packet::Native(packet)));
    }

    #[test]
    fn decode_inverts_signed_encode(fields in any_fields(), key in any_key()) {
        let packet = fields.packet();
        let bytes = packet.to_vec(Some(&key)).expect("encode");
        let expected = NativePacket { key_id: Some(key.id()), ..packet };
        let ring = KeyRing::new(key);
        prop_assert_eq!(NativePacket::decode(&bytes, Verify::With(&ring)), Ok(expected.clone()));
        prop_assert_eq!(NativePacket::decode(&bytes, Verify::No), Ok(expected.clone()));
        prop_assert_eq!(Packet::decode(&bytes, Verify::With(&ring)), Ok(Packet::Native(expected)));
    }

    #[test]
    fn encoded_len_matches_encoding(fields in any_fields(), key in any_key()) {
        let packet = fields.packet();
        let plain = packet.to_vec(None).expect("encode");
        prop_assert_eq!(plain.len(), packet.encoded_len(false));
        let signed = packet.to_vec(Some(&key)).expect("encode");
        prop_assert_eq!(signed.len(), packet.encoded_len(true));
    }

    #[test]
    fn changed_byte_fails_verification(
        fields in any_fields(),
        key in any_key(),
        position in any::<Index>(),
        mask in 1u8..=255,
    ) {
        let ring = KeyRing::new(key.clone());
        let mut bytes = fields.packet().to_vec(Some(&key)).expect("encode");
        let index = position.index(bytes.len());
        *bytes.get_mut(index).expect("the index is below the length") ^= mask;
        let result = NativePacket::decode(&bytes, Verify::With(&ring));
        prop_assert!(result.is_err(), "byte {} xor {:#04x} was accepted: {:?}", index, mask, result);
        prop_assert!(Packet::decode(&bytes, Verify::With(&ring)).is_err());
    }

    #[test]
    fn accepted_key_verifies(fields in any_fields(), primary in any_key(), accepted in any_key()) {
        prop_assume!(primary.id() != accepted.id());
        let bytes = fields.packet().to_vec(Some(&accepted)).expect("encode");

        let ring = KeyRing::new(primary.clone()).with_accepted(accepted.clone());
        let decoded = NativePacket::decode(&bytes, Verify::With(&ring));
        prop_assert_eq!(decoded.map(|packet| packet.key_id), Ok(Some(accepted.id())));

        let primary_only = KeyRing::new(primary);
        prop_assert_eq!(NativePacket::decode(&bytes, Verify::With(&primary_only)), Err(DecodeError::UnknownKey));
    }

    #[test]
    fn seed_packet_rejected_when_verifying(kind in any::<u8>(), url in ".{0,40}", id in ".{0,20}") {
        let packet = SeedPacket { kind: SeedKind::from_u8(kind), host: Some(SeedHost { url: &url, id: &id }) };
        let bytes = packet.to_vec().expect("encode");
        prop_assert_eq!(Packet::decode(&bytes, Verify::No), Ok(Packet::Seed(packet)));
        prop_assert_eq!(Packet::decode(&bytes, Verify::With(&test_ring())), Err(DecodeError::Unauthenticated));
    }
}
