//! A bounds-checked MessagePack reader over one datagram.
//!
//! Every length read from the input is checked against the bytes that remain before it is used,
//! and nothing is allocated: strings come back as slices of the input. That keeps a hostile length
//! header such as `db ff ff ff ff` from costing more than one comparison.

use rmp::Marker;

use crate::DecodeError;

/// A cursor over untrusted bytes.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Reader { rest: input }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    pub(crate) fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Takes `len` bytes, or fails without consuming anything when fewer remain.
    pub(crate) fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        if len > self.rest.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, tail) = self.rest.split_at(len);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn marker(&mut self) -> Result<Marker, DecodeError> {
        let byte = self.u8()?;
        Ok(Marker::from_u8(byte))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let bytes = self.array::<1>()?;
        Ok(bytes[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Reads the length that follows a string marker, or `None` when `marker` is not a string.
    pub(crate) fn str_len(&mut self, marker: Marker) -> Result<Option<usize>, DecodeError> {
        let len = match marker {
            Marker::FixStr(len) => usize::from(len),
            Marker::Str8 => usize::from(self.u8()?),
            Marker::Str16 => usize::from(self.u16()?),
            Marker::Str32 => to_usize(self.u32()?),
            _ => return Ok(None),
        };
        Ok(Some(len))
    }

    /// Reads the entry count that follows a map marker, or `None` when `marker` is not a map.
    pub(crate) fn map_len(&mut self, marker: Marker) -> Result<Option<usize>, DecodeError> {
        let len = match marker {
            Marker::FixMap(len) => usize::from(len),
            Marker::Map16 => usize::from(self.u16()?),
            Marker::Map32 => to_usize(self.u32()?),
            _ => return Ok(None),
        };
        Ok(Some(len))
    }

    /// Reads a string's raw bytes after its marker; `None` when the value is not a string.
    pub(crate) fn str_bytes(&mut self, marker: Marker) -> Result<Option<&'a [u8]>, DecodeError> {
        match self.str_len(marker)? {
            Some(len) => self.take(len).map(Some),
            None => Ok(None),
        }
    }
}

/// Widens a wire length. On a 16-bit target a length that does not fit cannot fit the input
/// either, so saturating keeps the later bounds check honest.
fn to_usize(len: u32) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_past_end_is_truncated() {
        let mut reader = Reader::new(&[1, 2]);
        assert_eq!(reader.take(3), Err(DecodeError::Truncated));
        assert_eq!(reader.remaining(), 2, "a failed take consumes nothing");
    }

    #[test]
    fn huge_string_length_is_truncated() {
        let mut reader = Reader::new(&[0xdb, 0xff, 0xff, 0xff, 0xff, b'a']);
        let marker = reader.marker().unwrap();
        assert_eq!(reader.str_bytes(marker), Err(DecodeError::Truncated));
    }

    #[test]
    fn non_string_marker_is_none() {
        let mut reader = Reader::new(&[0xc0]);
        let marker = reader.marker().unwrap();
        assert_eq!(reader.str_bytes(marker), Ok(None));
    }
}
