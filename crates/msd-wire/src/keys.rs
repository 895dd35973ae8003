//! Shared keys for authenticated packets, and the key ring that allows rotating them.
//!
//! A key is 32 random bytes. Its 4-byte id is the start of SHA-256 over a fixed label and the
//! key, so peers can say which key signed a packet without revealing it. A key ring holds one
//! primary key, which signs outgoing packets, and any number of further accepted keys, which only
//! verify. Rotation without downtime: add the new key as accepted everywhere, make it primary on
//! each host in turn, then drop the old key.
//!
//! Key material never appears in `Debug` output or in error messages.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

const KEY_ID_LABEL: &[u8] = b"msd key id v1";

/// The public name of a key: the first 4 bytes of SHA-256("msd key id v1" || key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 4]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 32-byte shared key. The bytes are wiped from memory when the key is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: KeyId,
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl Key {
    pub fn from_bytes(secret: [u8; KEY_LEN]) -> Self {
        let digest = Sha256::new().chain_update(KEY_ID_LABEL).chain_update(secret).finalize();
        // SHA-256 output is 32 bytes, so the first four always exist.
        let id = digest.first_chunk::<4>().copied().unwrap_or_default();
        Key { id: KeyId(id), secret: Zeroizing::new(secret) }
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Returns the key as 64 hexadecimal digits, the form the key file uses. Never log it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.secret.as_slice())
    }

    pub(crate) fn secret(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Error reading a key file. Messages give the line, never key material.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyRingError {
    #[error("line {line}: expected `primary <key>` or `accept <key>`")]
    InvalidLine { line: usize },
    #[error("line {line}: a key must be {expected} hexadecimal digits ({KEY_LEN} bytes); create one with `msd key new`", expected = KEY_LEN * 2)]
    InvalidKey { line: usize },
    #[error("no primary key; add a line `primary <key>`")]
    MissingPrimary,
    #[error("line {line}: a second primary key; a key ring has exactly one")]
    SecondPrimary { line: usize },
}

/// One primary key that signs, and further keys that are accepted when verifying.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyRing {
    primary: Key,
    accepted: Vec<Key>,
}

impl KeyRing {
    pub fn new(primary: Key) -> Self {
        KeyRing { primary, accepted: Vec::new() }
    }

    /// Adds a key that verifies but does not sign. A key already in the ring is not added twice.
    #[must_use]
    pub fn with_accepted(mut self, key: Key) -> Self {
        if self.find(key.id()).is_none() {
            self.accepted.push(key);
        }
        self
    }

    pub fn primary(&self) -> &Key {
        &self.primary
    }

    /// Returns every key, the primary first.
    pub fn keys(&self) -> impl Iterator<Item = &Key> + '_ {
        std::iter::once(&self.primary).chain(&self.accepted)
    }

    /// Returns the key with this id, primary or accepted.
    pub fn find(&self, id: KeyId) -> Option<&Key> {
        self.keys().find(|key| key.id() == id)
    }

    /// Parses a key file: one `primary <64 hex digits>` line, any number of
    /// `accept <64 hex digits>` lines, blank lines and `#` comments.
    ///
    /// # Errors
    ///
    /// Names the first invalid line; never includes key material.
    pub fn parse(text: &str) -> Result<Self, KeyRingError> {
        let mut primary = None;
        let mut accepted = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line_number = number + 1;
            let content = line.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let mut words = content.split_whitespace();
            let (Some(role), Some(value), None) = (words.next(), words.next(), words.next()) else {
                return Err(KeyRingError::InvalidLine { line: line_number });
            };
            let key = parse_key(value).ok_or(KeyRingError::InvalidKey { line: line_number })?;
            match role {
                "primary" if primary.is_some() => {
                    return Err(KeyRingError::SecondPrimary { line: line_number })
                }
                "primary" => primary = Some(key),
                "accept" => accepted.push(key),
                _ => return Err(KeyRingError::InvalidLine { line: line_number }),
            }
        }
        let primary = primary.ok_or(KeyRingError::MissingPrimary)?;
        Ok(accepted.into_iter().fold(KeyRing::new(primary), KeyRing::with_accepted))
    }

    /// Formats the ring in the key file format. The text contains the keys: never log it.
    pub fn to_file(&self) -> String {
        let mut text = format!("primary {}\n", self.primary.to_hex());
        for key in &self.accepted {
            text.push_str(&format!("accept {}\n", key.to_hex()));
        }
        text
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let accepted: Vec<KeyId> = self.accepted.iter().map(Key::id).collect();
        f.debug_struct("KeyRing").field("primary", &self.primary.id()).field("accepted", &accepted).finish()
    }
}

fn parse_key(text: &str) -> Option<Key> {
    let mut secret = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(text, secret.as_mut_slice()).ok()?;
    Some(Key::from_bytes(*secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const HEX_B: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    #[test]
    fn parse_primary_and_accepted() {
        let ring = KeyRing::parse(&format!("# ring\nprimary {HEX_A}\n\naccept {HEX_B} # old key\n")).unwrap();
        assert_eq!(ring.primary().to_hex(), HEX_A);
        assert_eq!(ring.keys().count(), 2);
        let b = Key::from_bytes(hex::decode(HEX_B).unwrap().try_into().unwrap());
        assert!(ring.find(b.id()).is_some());
    }

    #[test]
    fn round_trips_through_file() {
        let ring = KeyRing::parse(&format!("primary {HEX_A}\naccept {HEX_B}\n")).unwrap();
        assert_eq!(KeyRing::parse(&ring.to_file()).unwrap(), ring);
    }

    #[test]
    fn errors_name_line_not_key() {
        let cases = [
            (format!("accept {HEX_A}\n"), KeyRingError::MissingPrimary),
            (format!("primary {HEX_A}\nprimary {HEX_B}\n"), KeyRingError::SecondPrimary { line: 2 }),
            ("primary 00ff\n".to_owned(), KeyRingError::InvalidKey { line: 1 }),
            (format!("primary {HEX_A} extra\n"), KeyRingError::InvalidLine { line: 1 }),
            (format!("\nsecondary {HEX_A}\n"), KeyRingError::InvalidLine { line: 2 }),
        ];
        for (text, expected) in cases {
            let error = KeyRing::parse(&text).unwrap_err();
            assert_eq!(error, expected, "{text}");
            assert!(!error.to_string().contains(&HEX_A[..16]), "no key material in {error}");
        }
    }

    #[test]
    fn debug_hides_secret() {
        let key = Key::from_bytes([7; KEY_LEN]);
        let text = format!("{key:?} {:?}", KeyRing::new(key.clone()));
        assert!(!text.contains("0707"), "{text}");
        assert!(text.contains(&key.id().to_string()), "{text}");
    }

    #[test]
    fn ids_differ_per_key() {
        assert_ne!(Key::from_bytes([1; KEY_LEN]).id(), Key::from_bytes([2; KEY_LEN]).id());
    }
}
