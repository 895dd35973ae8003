//! The native protocol: msd's own packet format, with health, load, metadata, liveness and
//! optional authentication. `docs/PROTOCOL.md` specifies it byte by byte.
//!
//! ```text
//! offset  size  field
//! 0       4     magic c1 6d 73 64 ("\xc1msd"); 0xc1 never starts valid MessagePack
//! 4       1     major version (1); another major is rejected
//! 5       1     minor version; a newer minor is accepted and its unknown fields skipped
//! 6       1     kind: 1 DISCOVER, 2 ANNOUNCE, 3 LOGOFF, 4 PROBE
//! 7       1     flags: bit 0 set = authenticated; other bits are ignored
//! 8       14    group id
//! 22      8     sender's clock, Unix time in milliseconds
//! 30      ...   fields: type (1 byte), length (2 bytes), value (length bytes)
//! end-20  4     key id           } only when authenticated
//! end-16  16    tag              } HMAC-SHA256 over every byte before the tag, first 16 bytes
//! ```
//!
//! All integers are big-endian. Field values: `id` (1), `url` (5) and metadata (9) are UTF-8;
//! `incarnation` (2) and `sequence` (3) are u64; `ttl` (4, milliseconds), `weight` (7) and
//! `load` (8) are u32; `health` (6) is one byte. A metadata field contains a key length byte, the key,
//! and the value in the rest. Unknown field types are skipped.

use std::collections::BTreeMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::keys::{Key, KeyId, KeyRing};
use crate::reader::Reader;
use crate::{DecodeError, EncodeError, GroupId};

/// First bytes of every native packet.
pub const MAGIC: [u8; 4] = [0xc1, b'm', b's', b'd'];
/// Major version this crate speaks.
pub const MAJOR_VERSION: u8 = 1;
/// Minor version this crate writes.
pub const MINOR_VERSION: u8 = 0;
/// Size of the fixed header before the fields.
pub const HEADER_LEN: usize = 30;
/// Offset of the kind byte in every native packet.
pub const KIND_OFFSET: usize = 6;
/// Size of the key id and tag after the fields of an authenticated packet.
pub const TRAILER_LEN: usize = 4 + TAG_LEN;
/// Size of the truncated HMAC-SHA256 tag.
pub const TAG_LEN: usize = 16;
/// Largest native packet msd builds: the IPv6 minimum MTU of 1280 bytes less the IPv6 and UDP
/// headers, so a packet is never fragmented.
pub const MAX_PACKET: usize = 1232;
/// Maximum length of an instance id, in bytes.
pub const MAX_ID_LEN: usize = 255;
/// Maximum number of metadata entries in one packet. With [`MAX_PACKET`] it bounds what one
/// instance costs a discoverer: at most 32 map entries and 1232 bytes of text.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Maximum length of a metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 255;

const FLAG_AUTHENTICATED: u8 = 0x01;

mod field {
    pub(super) const ID: u8 = 1;
    pub(super) const INCARNATION: u8 = 2;
    pub(super) const SEQUENCE: u8 = 3;
    pub(super) const TTL: u8 = 4;
    pub(super) const URL: u8 = 5;
    pub(super) const HEALTH: u8 = 6;
    pub(super) const WEIGHT: u8 = 7;
    pub(super) const LOAD: u8 = 8;
    pub(super) const METADATA: u8 = 9;
}

/// Returns whether a datagram is a native packet (by its magic), as opposed to a seed packet.
pub fn is_native(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// The message kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NativeKind {
    /// Multicast by a discoverer: every instance answers with a unicast ANNOUNCE after a random
    /// delay.
    Discover,
    /// An instance's state: sent at start, as heartbeat, on change and as an answer.
    Announce,
    /// An instance leaves.
    Logoff,
    /// Unicast by a discoverer to an overdue instance, which answers at once.
    Probe,
}

impl NativeKind {
    fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => NativeKind::Discover,
            2 => NativeKind::Announce,
            3 => NativeKind::Logoff,
            4 => NativeKind::Probe,
            _ => return None,
        })
    }

    /// Returns the kind's byte on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            NativeKind::Discover => 1,
            NativeKind::Announce => 2,
            NativeKind::Logoff => 3,
            NativeKind::Probe => 4,
        }
    }
}

/// Whether an instance should get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Health {
    /// Takes new work.
    #[default]
    Serving,
    /// Finishes what it has but takes no new work.
    Draining,
    /// Should get no traffic. Unknown health codes from newer peers are read as this.
    Failing,
}

impl Health {
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Health::Serving,
            1 => Health::Draining,
            _ => Health::Failing,
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Health::Serving => 0,
            Health::Draining => 1,
            Health::Failing => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Serving => "serving",
            Health::Draining => "draining",
            Health::Failing => "failing",
        }
    }
}

impl std::str::FromStr for Health {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "serving" => Ok(Health::Serving),
            "draining" => Ok(Health::Draining),
            "failing" => Ok(Health::Failing),
            other => Err(format!("invalid health {other:?}: expected serving, draining or failing")),
        }
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One native packet. Strings borrow from the datagram when decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NativePacket<'a> {
    pub kind: Option<NativeKind>,
    pub minor_version: u8,
    pub group: Option<GroupId>,
    /// The sender's clock, Unix time in milliseconds.
    pub timestamp_ms: u64,
    pub id: Option<&'a str>,
    pub incarnation: Option<u64>,
    pub sequence: Option<u64>,
    pub ttl_ms: Option<u32>,
    pub url: Option<&'a str>,
    pub health: Option<Health>,
    pub weight: Option<u32>,
    pub load: Option<u32>,
    /// Metadata entries; a key given twice keeps its last value.
    pub metadata: BTreeMap<&'a str, &'a str>,
    /// The key id in the packet's trailer. Verified only when decoded with [`Verify::With`];
    /// with [`Verify::No`] it is what the sender wrote, unchecked.
    pub key_id: Option<KeyId>,
}

/// The authentication a receiver requires.
#[derive(Debug, Clone, Copy)]
pub enum Verify<'k> {
    /// Accept packets with or without a tag, without checking tags (no key configured).
    No,
    /// Require a valid tag from a key of this ring.
    With(&'k KeyRing),
}

impl<'a> NativePacket<'a> {
    /// Decodes and, with [`Verify::With`], authenticates one datagram.
    ///
    /// # Errors
    ///
    /// Returns the first reason the datagram is not a valid native packet. Nothing is allocated
    /// beyond the metadata map, whose entries each take at least three bytes of the datagram.
    pub fn decode(datagram: &'a [u8], verify: Verify<'_>) -> Result<Self, DecodeError> {
        let mut reader = Reader::new(datagram);
        if reader.take(MAGIC.len())? != MAGIC {
            return Err(DecodeError::NotNative);
        }
        // No sender builds a larger one, and the bound keeps what one packet can make a receiver
        // store small.
        if datagram.len() > MAX_PACKET {
            return Err(DecodeError::PacketTooLarge { len: datagram.len(), max: MAX_PACKET });
        }
        let major = reader.u8()?;
        if major != MAJOR_VERSION {
            return Err(DecodeError::UnsupportedVersion { major });
        }
        let minor_version = reader.u8()?;
        let kind = reader.u8()?;
        let flags = reader.u8()?;
        let group = GroupId::from_bytes(reader.array()?);
        let timestamp_ms = reader.u64()?;
        let kind = NativeKind::from_u8(kind).ok_or(DecodeError::UnknownKind { kind })?;

        let authenticated = flags & FLAG_AUTHENTICATED != 0;
        let fields_end = if authenticated {
            datagram.len().checked_sub(TRAILER_LEN).filter(|end| *end >= HEADER_LEN).ok_or(DecodeError::Truncated)?
        } else {
            datagram.len()
        };
        let key_id = match (authenticated, verify) {
            (false, Verify::With(_)) => return Err(DecodeError::Unauthenticated),
            (false, Verify::No) => None,
            (true, Verify::No) => Some(trailer_key_id(datagram, fields_end)?),
            (true, Verify::With(ring)) => Some(check_tag(datagram, fields_end, ring)?),
        };

        let body = datagram.get(HEADER_LEN..fields_end).ok_or(DecodeError::Truncated)?;
        let mut packet = NativePacket {
            kind: Some(kind),
            minor_version,
            group: Some(group),
            timestamp_ms,
            key_id,
            ..NativePacket::default()
        };
        packet.read_fields(Reader::new(body))?;
        packet.check_required()?;
        Ok(packet)
    }

    fn read_fields(&mut self, mut reader: Reader<'a>) -> Result<(), DecodeError> {
        while !reader.is_empty() {
            let kind = reader.u8()?;
            let len = usize::from(reader.u16()?);
            let value = reader.take(len)?;
            match kind {
                field::ID => self.id = Some(text(value, "id", MAX_ID_LEN)?),
                field::INCARNATION => self.incarnation = Some(u64_field(value, "incarnation")?),
                field::SEQUENCE => self.sequence = Some(u64_field(value, "sequence")?),
                field::TTL => self.ttl_ms = Some(u32_field(value, "ttl")?),
                field::URL => self.url = Some(text(value, "url", MAX_PACKET)?),
                field::HEALTH => match value {
                    [code] => self.health = Some(Health::from_u8(*code)),
                    _ => return Err(DecodeError::InvalidField { field: "health" }),
                },
                field::WEIGHT => self.weight = Some(u32_field(value, "weight")?),
                field::LOAD => self.load = Some(u32_field(value, "load")?),
                field::METADATA => {
                    let (key, value) = metadata_entry(value)?;
                    self.metadata.insert(key, value);
                    if self.metadata.len() > MAX_METADATA_ENTRIES {
                        return Err(DecodeError::TooManyMetadata { max: MAX_METADATA_ENTRIES });
                    }
                }
                // Fields of later minor versions.
                _ => {}
            }
        }
        Ok(())
    }

    fn check_required(&self) -> Result<(), DecodeError> {
        let missing = |field| DecodeError::MissingField { field };
        match self.kind {
            Some(NativeKind::Announce) => {
                self.id.ok_or(missing("id"))?;
                self.incarnation.ok_or(missing("incarnation"))?;
                self.sequence.ok_or(missing("sequence"))?;
                self.ttl_ms.ok_or(missing("ttl"))?;
                self.url.ok_or(missing("url"))?;
            }
            Some(NativeKind::Logoff) => {
                self.id.ok_or(missing("id"))?;
                self.incarnation.ok_or(missing("incarnation"))?;
                self.sequence.ok_or(missing("sequence"))?;
            }
            Some(NativeKind::Discover | NativeKind::Probe) | None => {}
        }
        Ok(())
    }

    /// Appends the encoded packet to `out`, with a tag from `key` when given.
    ///
    /// # Errors
    ///
    /// Fails when the kind or group is missing, or a field is too long for its length header;
    /// `out` is then left as it was. The caller checks the total size against [`MAX_PACKET`].
    pub fn encode(&self, key: Option<&Key>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let kind = self.kind.ok_or(EncodeError::MissingField { field: "kind" })?;
        let group = self.group.ok_or(EncodeError::MissingField { field: "group" })?;
        self.check_lengths()?;

        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&[MAJOR_VERSION, MINOR_VERSION, kind.to_u8()]);
        out.push(if key.is_some() { FLAG_AUTHENTICATED } else { 0 });
        out.extend_from_slice(group.as_bytes());
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());

        let mut put = |kind: u8, value: &[u8]| {
            out.push(kind);
            // check_lengths has bounded every value to fit 16 bits.
            out.extend_from_slice(&(value.len() as u16).to_be_bytes());
            out.extend_from_slice(value);
        };
        if let Some(id) = self.id {
            put(field::ID, id.as_bytes());
        }
        if let Some(incarnation) = self.incarnation {
            put(field::INCARNATION, &incarnation.to_be_bytes());
        }
        if let Some(sequence) = self.sequence {
            put(field::SEQUENCE, &sequence.to_be_bytes());
        }
        if let Some(ttl) = self.ttl_ms {
            put(field::TTL, &ttl.to_be_bytes());
        }
        if let Some(url) = self.url {
            put(field::URL, url.as_bytes());
        }
        if let Some(health) = self.health {
            put(field::HEALTH, &[health.to_u8()]);
        }
        if let Some(weight) = self.weight {
            put(field::WEIGHT, &weight.to_be_bytes());
        }
        if let Some(load) = self.load {
            put(field::LOAD, &load.to_be_bytes());
        }
        for (name, value) in &self.metadata {
            let mut entry = Vec::with_capacity(1 + name.len() + value.len());
            entry.push(name.len() as u8);
            entry.extend_from_slice(name.as_bytes());
            entry.extend_from_slice(value.as_bytes());
            put(field::METADATA, &entry);
        }

        if let Some(key) = key {
            out.extend_from_slice(&key.id().0);
            let tag = compute_tag(key, out.get(start..).unwrap_or_default());
            out.extend_from_slice(&tag);
        }
        Ok(())
    }

    /// Encodes the packet into a new buffer.
    ///
    /// # Errors
    ///
    /// As [`NativePacket::encode`].
    pub fn to_vec(&self, key: Option<&Key>) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len(key.is_some()));
        self.encode(key, &mut out)?;
        Ok(out)
    }

    /// Returns the size of the encoded packet in bytes.
    pub fn encoded_len(&self, authenticated: bool) -> usize {
        let field = |len: usize| 3 + len;
        let mut len = HEADER_LEN;
        len += self.id.map_or(0, |id| field(id.len()));
        len += [self.incarnation, self.sequence].iter().flatten().count() * field(8);
        len += [self.ttl_ms, self.weight, self.load].iter().flatten().count() * field(4);
        len += self.url.map_or(0, |url| field(url.len()));
        len += self.health.map_or(0, |_| field(1));
        len += self.metadata.iter().map(|(key, value)| field(1 + key.len() + value.len())).sum::<usize>();
        if authenticated {
            len += TRAILER_LEN;
        }
        len
    }

    /// Returns the variable-length field that takes the most bytes, for size errors.
    pub fn largest_field(&self) -> &'static str {
        let metadata: usize = self.metadata.iter().map(|(key, value)| key.len() + value.len()).sum();
        let sizes = [
            ("url", self.url.map_or(0, str::len)),
            ("id", self.id.map_or(0, str::len)),
            ("metadata", metadata),
        ];
        sizes.iter().max_by_key(|(_, size)| *size).map_or("url", |(name, _)| name)
    }

    fn check_lengths(&self) -> Result<(), EncodeError> {
        let check = |field: &'static str, len: usize, max: usize| {
            if len > max {
                Err(EncodeError::FieldTooLong { field, len, max })
            } else {
                Ok(())
            }
        };
        if let Some(id) = self.id {
            check("id", id.len(), MAX_ID_LEN)?;
            if id.is_empty() {
                return Err(EncodeError::EmptyField { field: "id" });
            }
        }
        check("url", self.url.map_or(0, str::len), usize::from(u16::MAX))?;
        if self.metadata.len() > MAX_METADATA_ENTRIES {
            return Err(EncodeError::TooManyEntries {
                field: "metadata",
                count: self.metadata.len(),
                max: MAX_METADATA_ENTRIES,
            });
        }
        for (key, value) in &self.metadata {
            if key.is_empty() {
                return Err(EncodeError::EmptyField { field: "metadata key" });
            }
            check("metadata key", key.len(), MAX_METADATA_KEY_LEN)?;
            check("metadata value", 1 + key.len() + value.len(), usize::from(u16::MAX))?;
        }
        Ok(())
    }
}

fn text<'a>(value: &'a [u8], field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
    if value.len() > max || (field == "id" && value.is_empty()) {
        return Err(DecodeError::InvalidField { field });
    }
    std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 { field })
}

fn u64_field(value: &[u8], field: &'static str) -> Result<u64, DecodeError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| DecodeError::InvalidField { field })?;
    Ok(u64::from_be_bytes(bytes))
}

fn u32_field(value: &[u8], field: &'static str) -> Result<u32, DecodeError> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| DecodeError::InvalidField { field })?;
    Ok(u32::from_be_bytes(bytes))
}

fn metadata_entry(entry: &[u8]) -> Result<(&str, &str), DecodeError> {
    let invalid = DecodeError::InvalidField { field: "metadata" };
    let (&key_len, rest) = entry.split_first().ok_or(invalid)?;
    let key_len = usize::from(key_len);
    if key_len == 0 || key_len > rest.len() {
        return Err(invalid);
    }
    let (key, value) = rest.split_at(key_len);
    let key = std::str::from_utf8(key).map_err(|_| DecodeError::InvalidUtf8 { field: "metadata" })?;
    let value = std::str::from_utf8(value).map_err(|_| DecodeError::InvalidUtf8 { field: "metadata" })?;
    Ok((key, value))
}

fn trailer_key_id(datagram: &[u8], fields_end: usize) -> Result<KeyId, DecodeError> {
    let bytes = datagram.get(fields_end..fields_end + 4).ok_or(DecodeError::Truncated)?;
    let mut id = [0u8; 4];
    id.copy_from_slice(bytes);
    Ok(KeyId(id))
}

fn check_tag(datagram: &[u8], fields_end: usize, ring: &KeyRing) -> Result<KeyId, DecodeError> {
    let key_id = trailer_key_id(datagram, fields_end)?;
    let key = ring.find(key_id).ok_or(DecodeError::UnknownKey)?;
    let tag_start = fields_end + 4;
    let signed = datagram.get(..tag_start).ok_or(DecodeError::Truncated)?;
    let tag = datagram.get(tag_start..).ok_or(DecodeError::Truncated)?;
    let mut mac = new_mac(key);
    mac.update(signed);
    // verify_truncated_left compares in constant time.
    mac.verify_truncated_left(tag).map_err(|_| DecodeError::BadTag)?;
    Ok(key_id)
}

fn compute_tag(key: &Key, signed: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = new_mac(key);
    mac.update(signed);
    let full = mac.finalize().into_bytes();
    // HMAC-SHA256 output is 32 bytes, longer than the tag.
    full.first_chunk::<TAG_LEN>().copied().unwrap_or_default()
}

fn new_mac(key: &Key) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail for a 32-byte key.
    <Hmac<Sha256> as Mac>::new_from_slice(key.secret()).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> GroupId {
        "55c545258c440a731a50810425bc".parse().unwrap()
    }

    fn announce() -> NativePacket<'static> {
        let mut metadata = BTreeMap::new();
        metadata.insert("zone", "eu-1");
        NativePacket {
            kind: Some(NativeKind::Announce),
            minor_version: MINOR_VERSION,
            group: Some(group()),
            timestamp_ms: 1_800_000_000_000,
            id: Some("web-1"),
            incarnation: Some(7),
            sequence: Some(42),
            ttl_ms: Some(2000),
            url: Some("http://10.0.0.7:8080"),
            health: Some(Health::Draining),
            weight: Some(100),
            load: Some(250),
            metadata,
            key_id: None,
        }
    }

    /// Appends one raw field, as a sender that ignores the limits would.
    fn push_field(bytes: &mut Vec<u8>, kind: u8, value: &[u8]) {
        bytes.push(kind);
        bytes.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
        bytes.extend_from_slice(value);
    }

    #[test]
    fn metadata_entry_limit() {
        let keys: Vec<String> = (0..=MAX_METADATA_ENTRIES).map(|number| format!("k{number}")).collect();
        let mut packet = announce();
        packet.metadata = keys.iter().take(MAX_METADATA_ENTRIES).map(|key| (key.as_str(), "v")).collect();
        let mut bytes = packet.to_vec(None).unwrap();
        assert_eq!(NativePacket::decode(&bytes, Verify::No).unwrap().metadata.len(), MAX_METADATA_ENTRIES);

        push_field(&mut bytes, field::METADATA, b"\x03k99v");
        let error = NativePacket::decode(&bytes, Verify::No).unwrap_err();
        assert_eq!(error, DecodeError::TooManyMetadata { max: MAX_METADATA_ENTRIES });

        packet.metadata = keys.iter().map(|key| (key.as_str(), "v")).collect();
        let error = packet.to_vec(None).unwrap_err();
        assert_eq!(error, EncodeError::TooManyEntries { field: "metadata", count: MAX_METADATA_ENTRIES + 1, max: MAX_METADATA_ENTRIES });
    }

    #[test]
    fn packet_over_maximum_rejected() {
        let plain = announce().to_vec(None).unwrap();
        // An unknown field type pads the packet, so nothing but its size is wrong.
        let padded = |len: usize| {
            let mut bytes = plain.clone();
            push_field(&mut bytes, 200, &vec![0u8; len - plain.len() - 3]);
            bytes
        };
        assert!(NativePacket::decode(&padded(MAX_PACKET), Verify::No).is_ok());

        let error = NativePacket::decode(&padded(MAX_PACKET + 1), Verify::No).unwrap_err();
        assert_eq!(error, DecodeError::PacketTooLarge { len: MAX_PACKET + 1, max: MAX_PACKET });
    }

    #[test]
    fn round_trip_unauthenticated() {
        let packet = announce();
        let bytes = packet.to_vec(None).unwrap();
        assert_eq!(bytes.len(), packet.encoded_len(false));
        assert!(is_native(&bytes));
        assert_eq!(NativePacket::decode(&bytes, Verify::No).unwrap(), packet);
    }

    #[test]
    fn round_trip_authenticated() {
        let key = Key::from_bytes([9; 32]);
        let ring = KeyRing::new(key.clone());
        let packet = announce();
        let bytes = packet.to_vec(Some(&key)).unwrap();
        assert_eq!(bytes.len(), packet.encoded_len(true));
        let decoded = NativePacket::decode(&bytes, Verify::With(&ring)).unwrap();
        assert_eq!(decoded.key_id, Some(key.id()));
        assert_eq!(decoded.id, packet.id);
    }

    #[test]
    fn every_flipped_bit_fails_authentication() {
        let key = Key::from_bytes([9; 32]);
        let ring = KeyRing::new(key.clone());
        let bytes = announce().to_vec(Some(&key)).unwrap();
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x01;
            assert!(NativePacket::decode(&tampered, Verify::With(&ring)).is_err(), "byte {index} flipped");
        }
    }

    #[test]
    fn wrong_key_and_missing_tag_rejected() {
        let ring = KeyRing::new(Key::from_bytes([1; 32]));
        let other = announce().to_vec(Some(&Key::from_bytes([2; 32]))).unwrap();
        assert_eq!(NativePacket::decode(&other, Verify::With(&ring)), Err(DecodeError::UnknownKey));
        let plain = announce().to_vec(None).unwrap();
        assert_eq!(NativePacket::decode(&plain, Verify::With(&ring)), Err(DecodeError::Unauthenticated));
    }

    #[test]
    fn unknown_fields_and_newer_minor_skipped() {
        let mut bytes = announce().to_vec(None).unwrap();
        bytes[5] = 9;
        bytes.extend_from_slice(&[0x7f, 0x00, 0x03, 1, 2, 3]);
        let decoded = NativePacket::decode(&bytes, Verify::No).unwrap();
        assert_eq!(decoded.minor_version, 9);
        assert_eq!(decoded.url, Some("http://10.0.0.7:8080"));
    }

    #[test]
    fn newer_major_rejected() {
        let mut bytes = announce().to_vec(None).unwrap();
        bytes[4] = 2;
        assert_eq!(NativePacket::decode(&bytes, Verify::No), Err(DecodeError::UnsupportedVersion { major: 2 }));
    }

    #[test]
    fn every_truncation_of_authenticated_rejected() {
        let key = Key::from_bytes([3; 32]);
        let ring = KeyRing::new(key.clone());
        let bytes = announce().to_vec(Some(&key)).unwrap();
        for cut in 0..bytes.len() {
            assert!(NativePacket::decode(&bytes[..cut], Verify::With(&ring)).is_err(), "cut at {cut}");
        }
    }

    /// Without a tag, a cut exactly between two fields leaves a shorter valid packet (UDP delivers
    /// whole datagrams, so this happens only by design). Every other cut is rejected.
    #[test]
    fn truncation_inside_fields_rejected() {
        let bytes = announce().to_vec(None).unwrap();
        let mut boundaries = vec![HEADER_LEN];
        let mut at = HEADER_LEN;
        while at < bytes.len() {
            at += 3 + usize::from(u16::from_be_bytes([bytes[at + 1], bytes[at + 2]]));
            boundaries.push(at);
        }
        for cut in 0..bytes.len() {
            if !boundaries.contains(&cut) {
                assert!(NativePacket::decode(&bytes[..cut], Verify::No).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn announce_without_url_rejected() {
        let mut packet = announce();
        packet.url = None;
        let bytes = packet.to_vec(None).unwrap();
        assert_eq!(NativePacket::decode(&bytes, Verify::No), Err(DecodeError::MissingField { field: "url" }));
    }

    #[test]
    fn empty_metadata_key_not_encoded() {
        let mut packet = announce();
        packet.metadata.insert("", "value");
        assert_eq!(packet.to_vec(None), Err(EncodeError::EmptyField { field: "metadata key" }));
    }

    #[test]
    fn unknown_health_is_failing() {
        assert_eq!(Health::from_u8(200), Health::Failing);
    }

    #[test]
    fn largest_field_named() {
        let mut packet = announce();
        let url = "u".repeat(2000);
        packet.url = Some(&url);
        assert_eq!(packet.largest_field(), "url");
    }
}
