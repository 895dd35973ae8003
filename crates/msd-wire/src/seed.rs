//! The seed protocol: the wire format of the Node.js library msd grew from.
//!
//! A seed packet is one MessagePack map with two keys: `t`, the message kind (1 DISCOVER,
//! 2 ANNOUNCE, 3 LOGOFF), and `h`, either nil or a map with exactly the string keys `url` and `id`.
//!
//! The encoder reproduces the original's bytes exactly: every map gets a map16 header
//! (`de 00 02`), keys come in the order `t`, `h` and `url`, `id`, strings get the smallest header
//! for their UTF-8 length, and `t` is a positive fixint. DISCOVER is therefore always
//! `de 00 02 a1 74 01 a1 68 c0`.
//!
//! The decoder accepts what the original accepts: any map and string header, keys in any order,
//! duplicate keys (the last one wins), `t` as any integer of at most 32 bits or an integral float,
//! and empty strings. It rejects what the original rejects, with the deliberate differences listed
//! in `docs/PROTOCOL.md`: strings that are not valid UTF-8 and MessagePack extension types.

use rmp::Marker;

use crate::reader::Reader;
use crate::{DecodeError, EncodeError};

/// The UDP port of the seed protocol, used for both group traffic and replies.
pub const SEED_PORT: u16 = 53566;

/// Maximum nesting of values the decoder walks through while skipping a value it does not use.
/// No valid seed packet nests deeper than two maps.
pub const MAX_SKIP_DEPTH: usize = 16;

const MAP16: u8 = 0xde;

/// The message kind, the `t` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeedKind {
    /// `t = 1`: a discoverer asks every instance to announce itself.
    Discover,
    /// `t = 2`: an instance states that it is alive.
    Announce,
    /// `t = 3`: an instance leaves.
    Logoff,
    /// Any other value in 0..=255. The original accepts and ignores these.
    Other(u8),
}

impl SeedKind {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => SeedKind::Discover,
            2 => SeedKind::Announce,
            3 => SeedKind::Logoff,
            other => SeedKind::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            SeedKind::Discover => 1,
            SeedKind::Announce => 2,
            SeedKind::Logoff => 3,
            SeedKind::Other(value) => value,
        }
    }
}

/// The `h` field: who the instance is and where it serves. Borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeedHost<'a> {
    pub url: &'a str,
    pub id: &'a str,
}

/// One seed protocol packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeedPacket<'a> {
    pub kind: SeedKind,
    /// `None` encodes as nil. The original sends nil with DISCOVER and ignores ANNOUNCE or LOGOFF
    /// that carry nil.
    pub host: Option<SeedHost<'a>>,
}

impl<'a> SeedPacket<'a> {
    /// The DISCOVER packet, the same bytes the original discoverer sends.
    pub const DISCOVER: SeedPacket<'static> = SeedPacket { kind: SeedKind::Discover, host: None };

    pub fn announce(url: &'a str, id: &'a str) -> Self {
        SeedPacket { kind: SeedKind::Announce, host: Some(SeedHost { url, id }) }
    }

    pub fn logoff(url: &'a str, id: &'a str) -> Self {
        SeedPacket { kind: SeedKind::Logoff, host: Some(SeedHost { url, id }) }
    }

    /// Decodes one datagram.
    ///
    /// # Errors
    ///
    /// Returns the first reason the datagram is not a valid seed packet. Nothing is allocated,
    /// whatever lengths the datagram claims.
    pub fn decode(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        if datagram.is_empty() {
            return Err(DecodeError::Empty);
        }
        let mut reader = Reader::new(datagram);
        let marker = reader.marker()?;
        let Some(entries) = reader.map_len(marker)? else {
            return Err(DecodeError::NotAMap);
        };

        // Duplicate keys are allowed and the last one wins, so a field's validation result is
        // kept and only reported once the whole map has been read.
        let mut kind: Option<Result<SeedKind, DecodeError>> = None;
        let mut host: Option<Result<Option<SeedHost<'a>>, DecodeError>> = None;
        let mut unexpected_key = false;
        for _ in 0..entries {
            match read_key(&mut reader)? {
                Some(b"t") => kind = Some(read_kind(&mut reader)?),
                Some(b"h") => host = Some(read_host(&mut reader)?),
                _ => {
                    unexpected_key = true;
                    skip_value(&mut reader, 0)?;
                }
            }
        }
        if !reader.is_empty() {
            return Err(DecodeError::TrailingBytes { count: reader.remaining() });
        }
        if unexpected_key {
            return Err(DecodeError::UnexpectedKey);
        }

        let kind = kind.ok_or(DecodeError::MissingType)??;
        let host = host.ok_or(DecodeError::MissingHost)??;
        Ok(SeedPacket { kind, host })
    }

    /// Appends the encoded packet to `out`.
    ///
    /// # Errors
    ///
    /// Fails when the URL or id is longer than a MessagePack string can be (4 GiB); `out` is left
    /// as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if let Some(host) = &self.host {
            check_str_len("url", host.url)?;
            check_str_len("id", host.id)?;
        }
        out.extend_from_slice(&[MAP16, 0, 2]);
        write_str(out, "t");
        write_kind(out, self.kind.to_u8());
        write_str(out, "h");
        match &self.host {
            None => out.push(Marker::Null.to_u8()),
            Some(host) => {
                out.extend_from_slice(&[MAP16, 0, 2]);
                write_str(out, "url");
                write_str(out, host.url);
                write_str(out, "id");
                write_str(out, host.id);
            }
        }
        Ok(())
    }

    /// Encodes the packet into a new buffer.
    ///
    /// # Errors
    ///
    /// As [`SeedPacket::encode`].
    pub fn to_vec(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Returns the size of the encoded packet in bytes.
    pub fn encoded_len(&self) -> usize {
        // map16 header, "t", the kind (at most two bytes), "h"
        let fixed = 3 + 2 + kind_len(self.kind.to_u8()) + 2;
        match &self.host {
            None => fixed + 1,
            Some(host) => fixed + 3 + 4 + str_len(host.url) + 3 + str_len(host.id),
        }
    }
}

/// Reads a map key. Returns `None` for a key that is not a string; its value is consumed either way.
fn read_key<'a>(reader: &mut Reader<'a>) -> Result<Option<&'a [u8]>, DecodeError> {
    let marker = reader.marker()?;
    match reader.str_bytes(marker)? {
        Some(bytes) => Ok(Some(bytes)),
        None => {
            skip_after_marker(reader, marker, 0)?;
            Ok(None)
        }
    }
}

/// Reads `t`. The outer error is structural (the datagram ends early); the inner one reports that
/// the value is not a valid kind, which matters only if no later `t` replaces it.
fn read_kind(reader: &mut Reader<'_>) -> Result<Result<SeedKind, DecodeError>, DecodeError> {
    let marker = reader.marker()?;
    let value: i64 = match marker {
        Marker::FixPos(value) => i64::from(value),
        Marker::FixNeg(value) => i64::from(value),
        Marker::U8 => i64::from(reader.u8()?),
        Marker::U16 => i64::from(reader.u16()?),
        Marker::U32 => i64::from(reader.u32()?),
        Marker::I8 => i64::from(reader.u8()? as i8),
        Marker::I16 => i64::from(reader.u16()? as i16),
        Marker::I32 => i64::from(reader.u32()? as i32),
        Marker::F32 => return Ok(kind_from_float(f64::from(f32::from_bits(reader.u32()?)))),
        Marker::F64 => return Ok(kind_from_float(f64::from_bits(reader.u64()?))),
        // The original decodes 64-bit integers as BigInt, which its uint8 check rejects whatever
        // the value.
        other => {
            skip_after_marker(reader, other, 0)?;
            return Ok(Err(DecodeError::InvalidType));
        }
    };
    Ok(u8::try_from(value).map(SeedKind::from_u8).map_err(|_| DecodeError::TypeOutOfRange))
}

fn kind_from_float(value: f64) -> Result<SeedKind, DecodeError> {
    if value.is_nan() || value.fract() != 0.0 {
        return Err(DecodeError::InvalidType);
    }
    if !(0.0..=255.0).contains(&value) {
        return Err(DecodeError::TypeOutOfRange);
    }
    // The range check above makes this cast exact.
    Ok(SeedKind::from_u8(value as u8))
}

/// Reads `h`, with the same split between structural and validation errors as [`read_kind`].
#[allow(clippy::type_complexity)]
fn read_host<'a>(
    reader: &mut Reader<'a>,
) -> Result<Result<Option<SeedHost<'a>>, DecodeError>, DecodeError> {
    let marker = reader.marker()?;
    if marker == Marker::Null {
        return Ok(Ok(None));
    }
    let Some(entries) = reader.map_len(marker)? else {
        skip_after_marker(reader, marker, 0)?;
        return Ok(Err(DecodeError::InvalidHost));
    };

    let mut url: Option<Result<&'a str, DecodeError>> = None;
    let mut id: Option<Result<&'a str, DecodeError>> = None;
    let mut unexpected_key = false;
    for _ in 0..entries {
        match read_key(reader)? {
            Some(b"url") => url = Some(read_text(reader, "url")?),
            Some(b"id") => id = Some(read_text(reader, "id")?),
            _ => {
                unexpected_key = true;
                skip_value(reader, 1)?;
            }
        }
    }
    if unexpected_key {
        return Ok(Err(DecodeError::UnexpectedHostKey));
    }
    let host = url
        .ok_or(DecodeError::MissingField { field: "url" })
        .and_then(|url| url)
        .and_then(|url| {
            let id = id.ok_or(DecodeError::MissingField { field: "id" })??;
            Ok(Some(SeedHost { url, id }))
        });
    Ok(host)
}

fn read_text<'a>(
    reader: &mut Reader<'a>,
    field: &'static str,
) -> Result<Result<&'a str, DecodeError>, DecodeError> {
    let marker = reader.marker()?;
    let Some(bytes) = reader.str_bytes(marker)? else {
        skip_after_marker(reader, marker, 1)?;
        return Ok(Err(DecodeError::FieldNotString { field }));
    };
    Ok(std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field }))
}

/// Skips one complete value of any type, walking at most [`MAX_SKIP_DEPTH`] levels deep.
pub(crate) fn skip_value(reader: &mut Reader<'_>, depth: usize) -> Result<(), DecodeError> {
    let marker = reader.marker()?;
    skip_after_marker(reader, marker, depth)
}

fn skip_after_marker(reader: &mut Reader<'_>, marker: Marker, depth: usize) -> Result<(), DecodeError> {
    if depth >= MAX_SKIP_DEPTH {
        return Err(DecodeError::TooDeep { max: MAX_SKIP_DEPTH });
    }
    let fixed = match marker {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => 0,
        Marker::Reserved => return Err(DecodeError::InvalidType),
        Marker::U8 | Marker::I8 => 1,
        Marker::U16 | Marker::I16 => 2,
        Marker::U32 | Marker::I32 | Marker::F32 => 4,
        Marker::U64 | Marker::I64 | Marker::F64 => 8,
        Marker::FixExt1 => 2,
        Marker::FixExt2 => 3,
        Marker::FixExt4 => 5,
        Marker::FixExt8 => 9,
        Marker::FixExt16 => 17,
        Marker::Bin8 | Marker::Ext8 => usize::from(reader.u8()?) + ext_type_len(marker),
        Marker::Bin16 | Marker::Ext16 => usize::from(reader.u16()?) + ext_type_len(marker),
        Marker::Bin32 | Marker::Ext32 => {
            let len = usize::try_from(reader.u32()?).unwrap_or(usize::MAX);
            len.saturating_add(ext_type_len(marker))
        }
        Marker::FixStr(_) | Marker::Str8 | Marker::Str16 | Marker::Str32 => {
            reader.str_bytes(marker)?;
            return Ok(());
        }
        Marker::FixArray(_) | Marker::Array16 | Marker::Array32 => {
            let items = array_len(reader, marker)?;
            for _ in 0..items {
                skip_value(reader, depth + 1)?;
            }
            return Ok(());
        }
        Marker::FixMap(_) | Marker::Map16 | Marker::Map32 => {
            let entries = reader.map_len(marker)?.unwrap_or(0);
            for _ in 0..entries {
                skip_value(reader, depth + 1)?;
                skip_value(reader, depth + 1)?;
            }
            return Ok(());
        }
    };
    reader.take(fixed)?;
    Ok(())
}

fn ext_type_len(marker: Marker) -> usize {
    match marker {
        Marker::Ext8 | Marker::Ext16 | Marker::Ext32 => 1,
        _ => 0,
    }
}

fn array_len(reader: &mut Reader<'_>, marker: Marker) -> Result<usize, DecodeError> {
    Ok(match marker {
        Marker::FixArray(len) => usize::from(len),
        Marker::Array16 => usize::from(reader.u16()?),
        _ => usize::try_from(reader.u32()?).unwrap_or(usize::MAX),
    })
}

fn check_str_len(field: &'static str, value: &str) -> Result<(), EncodeError> {
    let max = u32::MAX as usize;
    if value.len() > max {
        return Err(EncodeError::FieldTooLong { field, len: value.len(), max });
    }
    Ok(())
}

fn str_len(value: &str) -> usize {
    let header = match value.len() {
        0..=31 => 1,
        32..=255 => 2,
        256..=65_535 => 3,
        _ => 5,
    };
    header + value.len()
}

fn kind_len(kind: u8) -> usize {
    if kind < 0x80 {
        1
    } else {
        2
    }
}

/// Writes a string with the smallest header for its byte length. The caller has checked that the
/// length fits 32 bits.
fn write_str(out: &mut Vec<u8>, value: &str) {
    let len = value.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len < 256 {
        out.extend_from_slice(&[Marker::Str8.to_u8(), len as u8]);
    } else if len < 65_536 {
        out.push(Marker::Str16.to_u8());
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(Marker::Str32.to_u8());
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(value.as_bytes());
}

/// Writes the kind as the original does: a positive fixint below 128, uint8 above.
fn write_kind(out: &mut Vec<u8>, kind: u8) {
    if kind < 0x80 {
        out.push(kind);
    } else {
        out.extend_from_slice(&[Marker::U8.to_u8(), kind]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_bytes_match_original() {
        let bytes = SeedPacket::DISCOVER.to_vec().unwrap();
        assert_eq!(bytes, [0xde, 0x00, 0x02, 0xa1, 0x74, 0x01, 0xa1, 0x68, 0xc0]);
    }

    #[test]
    fn encoded_len_matches_encoding() {
        for url_len in [0, 31, 32, 255, 256, 65_535, 65_536] {
            let url = "u".repeat(url_len);
            let packet = SeedPacket::announce(&url, "deadbeef");
            assert_eq!(packet.encoded_len(), packet.to_vec().unwrap().len(), "url of {url_len} bytes");
        }
        let high_kind = SeedPacket { kind: SeedKind::Other(200), host: None };
        assert_eq!(high_kind.encoded_len(), high_kind.to_vec().unwrap().len());
    }

    #[test]
    fn high_kind_round_trips() {
        let packet = SeedPacket { kind: SeedKind::Other(200), host: None };
        let bytes = packet.to_vec().unwrap();
        assert_eq!(SeedPacket::decode(&bytes), Ok(packet));
    }

    #[test]
    fn duplicate_host_last_wins() {
        // {t: 2, h: {x: 1}, h: {url: "u", id: "i"}}
        let bytes = [
            0x83, 0xa1, b't', 0x02, 0xa1, b'h', 0x81, 0xa1, b'x', 0x01, 0xa1, b'h', 0x82, 0xa3,
            b'u', b'r', b'l', 0xa1, b'u', 0xa2, b'i', b'd', 0xa1, b'i',
        ];
        let packet = SeedPacket::decode(&bytes).unwrap();
        assert_eq!(packet.host, Some(SeedHost { url: "u", id: "i" }));
    }

    #[test]
    fn invalid_kind_replaced_by_later_kind() {
        // {t: "x", h: nil, t: 1}
        let bytes = [0x83, 0xa1, b't', 0xa1, b'x', 0xa1, b'h', 0xc0, 0xa1, b't', 0x01];
        assert_eq!(SeedPacket::decode(&bytes), Ok(SeedPacket::DISCOVER));
    }

    #[test]
    fn deep_nesting_rejected() {
        // {t: 1, h: nil, x: [[[[...]]]]} nested far past the skip limit
        let mut bytes = vec![0x83, 0xa1, b't', 0x01, 0xa1, b'h', 0xc0, 0xa1, b'x'];
        bytes.extend(std::iter::repeat_n(0x91, 10_000));
        bytes.push(0xc0);
        assert_eq!(SeedPacket::decode(&bytes), Err(DecodeError::TooDeep { max: MAX_SKIP_DEPTH }));
    }
}
