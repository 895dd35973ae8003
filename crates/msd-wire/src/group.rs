//! Group ids and the multicast addresses derived from them.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use thiserror::Error;

/// A 14-byte id unique to one service. Every instance and discoverer of the service uses it to
/// find the multicast group they share.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId([u8; GroupId::LEN]);

/// Error parsing a group id.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum GroupIdError {
    #[error("invalid group id {value:?}: expected 28 hexadecimal digits (14 bytes), found {len} characters; create one with `msd group new`")]
    InvalidLength { value: String, len: usize },
    #[error("invalid group id {value:?}: {character:?} is not a hexadecimal digit; create one with `msd group new`")]
    InvalidDigit { value: String, character: char },
}

impl GroupId {
    /// Length of a group id in bytes.
    pub const LEN: usize = 14;

    pub const fn from_bytes(bytes: [u8; GroupId::LEN]) -> Self {
        GroupId(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; GroupId::LEN] {
        &self.0
    }

    /// Returns the IPv6 link-local-scope multicast address of the group: `ff02` followed by the id,
    /// as the seed protocol defines it.
    pub fn ipv6_multicast(&self) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets[0] = 0xff;
        octets[1] = 0x02;
        octets[2..].copy_from_slice(&self.0);
        Ipv6Addr::from(octets)
    }

    /// Returns the default IPv4 multicast address of the group, in the administratively scoped
    /// block 239.0.0.0/8 (RFC 2365).
    ///
    /// The low 24 bits are the 32-bit FNV-1a hash of the id folded to 24 bits (xor of the top byte
    /// into the bottom, as the FNV authors describe for shorter hashes). The seed protocol has no
    /// IPv4 mode, so this mapping is msd's own. Two services can collide here with a probability
    /// of about 2^-24 per pair, which is why the address can be overridden.
    pub fn ipv4_multicast(&self) -> Ipv4Addr {
        const FNV_OFFSET: u32 = 0x811c_9dc5;
        const FNV_PRIME: u32 = 0x0100_0193;
        let hash = self.0.iter().fold(FNV_OFFSET, |hash, byte| (hash ^ u32::from(*byte)).wrapping_mul(FNV_PRIME));
        let folded = (hash >> 24) ^ (hash & 0x00ff_ffff);
        let [_, a, b, c] = folded.to_be_bytes();
        Ipv4Addr::new(239, a, b, c)
    }
}

impl FromStr for GroupId {
    type Err = GroupIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let len = text.chars().count();
        if len != GroupId::LEN * 2 {
            return Err(GroupIdError::InvalidLength { value: text.to_owned(), len });
        }
        let mut bytes = [0u8; GroupId::LEN];
        let mut digits = text.chars();
        for byte in &mut bytes {
            let mut next_digit = || {
                let character = digits.next().unwrap_or('\0');
                character
                    .to_digit(16)
                    .ok_or_else(|| GroupIdError::InvalidDigit { value: text.to_owned(), character })
            };
            let high = next_digit()?;
            let low = next_digit()?;
            // Both digits are below 16, so the value fits one byte.
            *byte = (high * 16 + low) as u8;
        }
        Ok(GroupId(bytes))
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_address_of_seed_example() {
        let group: GroupId = "55c545258c440a731a50810425bc".parse().unwrap();
        let expected: Ipv6Addr = "ff02:55c5:4525:8c44:a73:1a50:8104:25bc".parse().unwrap();
        assert_eq!(group.ipv6_multicast(), expected);
    }

    #[test]
    fn display_round_trips() {
        let text = "55c545258c440a731a50810425bc";
        let group: GroupId = text.parse().unwrap();
        assert_eq!(group.to_string(), text);
    }

    #[test]
    fn uppercase_accepted() {
        let group: GroupId = "55C545258C440A731A50810425BC".parse().unwrap();
        assert_eq!(group.to_string(), "55c545258c440a731a50810425bc");
    }

    #[test]
    fn wrong_length_rejected() {
        let error = "55c5".parse::<GroupId>().unwrap_err();
        assert_eq!(error, GroupIdError::InvalidLength { value: "55c5".into(), len: 4 });
        assert!(error.to_string().contains("28 hexadecimal digits"));
    }

    #[test]
    fn non_hex_rejected() {
        let error = "55c545258c440a731a50810425bz".parse::<GroupId>().unwrap_err();
        assert_eq!(
            error,
            GroupIdError::InvalidDigit { value: "55c545258c440a731a50810425bz".into(), character: 'z' }
        );
    }

    #[test]
    fn multibyte_text_rejected_without_panic() {
        let text = "é".repeat(28);
        assert!(matches!(text.parse::<GroupId>(), Err(GroupIdError::InvalidDigit { .. })));
    }

    #[test]
    fn ipv4_address_is_admin_scoped_and_stable() {
        let group: GroupId = "55c545258c440a731a50810425bc".parse().unwrap();
        let address = group.ipv4_multicast();
        assert_eq!(address.octets()[0], 239);
        assert_eq!(address, group.ipv4_multicast());
        let other: GroupId = "55c545258c440a731a50810425bd".parse().unwrap();
        assert_ne!(address, other.ipv4_multicast());
    }
}
