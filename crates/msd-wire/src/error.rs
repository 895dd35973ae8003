use thiserror::Error;

/// Reason a datagram was rejected.
///
/// Every variant is the peer's fault: decoding never fails because of local state, and a failed
/// decode never changes anything a caller already knows. [`DecodeError::kind`] gives a stable label
/// for counting rejections per reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("datagram is empty")]
    Empty,
    #[error("datagram ends inside a value")]
    Truncated,
    #[error("datagram has {count} bytes after the end of the message")]
    TrailingBytes { count: usize },
    #[error("values are nested deeper than {max} levels")]
    TooDeep { max: usize },
    #[error("message is not a map")]
    NotAMap,
    #[error("message has a key other than `t` and `h`")]
    UnexpectedKey,
    #[error("message has no `t` field")]
    MissingType,
    #[error("message has no `h` field")]
    MissingHost,
    #[error("`t` is not an integer of at most 32 bits or an integral float")]
    InvalidType,
    #[error("`t` is outside 0..=255")]
    TypeOutOfRange,
    #[error("`h` is neither nil nor a map")]
    InvalidHost,
    #[error("`h` has a key other than `url` and `id`")]
    UnexpectedHostKey,
    #[error("missing field `{field}`")]
    MissingField { field: &'static str },
    #[error("`h.{field}` is not a string")]
    FieldNotString { field: &'static str },
    #[error("field `{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("datagram does not start with the native magic bytes")]
    NotNative,
    #[error("native packet of major version {major}, which this version of msd does not speak")]
    UnsupportedVersion { major: u8 },
    #[error("native packet of unknown kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("field `{field}` has an invalid length or value")]
    InvalidField { field: &'static str },
    #[error("packet is not authenticated, but a key is configured")]
    Unauthenticated,
    #[error("packet is authenticated with a key that is not in the key ring")]
    UnknownKey,
    #[error("packet's authentication tag does not match its content")]
    BadTag,
    #[error("native packet of {len} bytes, more than the maximum of {max}")]
    PacketTooLarge { len: usize, max: usize },
    #[error("native packet with more than {max} metadata entries")]
    TooManyMetadata { max: usize },
}

impl DecodeError {
    /// Every label [`DecodeError::kind`] returns, so counters can tell decode failures from
    /// other rejections.
    pub const KINDS: &'static [&'static str] = &[
        "empty",
        "truncated",
        "trailing_bytes",
        "too_deep",
        "not_a_map",
        "unexpected_key",
        "missing_type",
        "missing_host",
        "invalid_type",
        "type_out_of_range",
        "invalid_host",
        "unexpected_host_key",
        "missing_field",
        "field_not_string",
        "invalid_utf8",
        "not_native",
        "unsupported_version",
        "unknown_kind",
        "invalid_field",
        "unauthenticated",
        "unknown_key",
        "bad_tag",
        "packet_too_large",
        "too_many_metadata",
    ];

    /// Returns a short, stable label for this reason, suitable as a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty",
            DecodeError::Truncated => "truncated",
            DecodeError::TrailingBytes { .. } => "trailing_bytes",
            DecodeError::TooDeep { .. } => "too_deep",
            DecodeError::NotAMap => "not_a_map",
            DecodeError::UnexpectedKey => "unexpected_key",
            DecodeError::MissingType => "missing_type",
            DecodeError::MissingHost => "missing_host",
            DecodeError::InvalidType => "invalid_type",
            DecodeError::TypeOutOfRange => "type_out_of_range",
            DecodeError::InvalidHost => "invalid_host",
            DecodeError::UnexpectedHostKey => "unexpected_host_key",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::FieldNotString { .. } => "field_not_string",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::NotNative => "not_native",
            DecodeError::UnsupportedVersion { .. } => "unsupported_version",
            DecodeError::UnknownKind { .. } => "unknown_kind",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::Unauthenticated => "unauthenticated",
            DecodeError::UnknownKey => "unknown_key",
            DecodeError::BadTag => "bad_tag",
            DecodeError::PacketTooLarge { .. } => "packet_too_large",
            DecodeError::TooManyMetadata { .. } => "too_many_metadata",
        }
    }
}

/// Reason a packet could not be encoded. This is the caller's fault: a value is too large.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("field `{field}` is {len} bytes long, more than the maximum of {max} bytes")]
    FieldTooLong { field: &'static str, len: usize, max: usize },
    #[error("field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error("the packet would be {size} bytes, more than the maximum of {max}; shorten field `{field}`")]
    TooLarge { field: &'static str, size: usize, max: usize },
    #[error("field `{field}` has {count} entries, more than the maximum of {max}")]
    TooManyEntries { field: &'static str, count: usize, max: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_listed() {
        let samples = [
            DecodeError::Empty,
            DecodeError::Truncated,
            DecodeError::TrailingBytes { count: 1 },
            DecodeError::TooDeep { max: 1 },
            DecodeError::NotAMap,
            DecodeError::UnexpectedKey,
            DecodeError::MissingType,
            DecodeError::MissingHost,
            DecodeError::InvalidType,
            DecodeError::TypeOutOfRange,
            DecodeError::InvalidHost,
            DecodeError::UnexpectedHostKey,
            DecodeError::MissingField { field: "id" },
            DecodeError::FieldNotString { field: "id" },
            DecodeError::InvalidUtf8 { field: "id" },
            DecodeError::NotNative,
            DecodeError::UnsupportedVersion { major: 2 },
            DecodeError::UnknownKind { kind: 9 },
            DecodeError::InvalidField { field: "id" },
            DecodeError::Unauthenticated,
            DecodeError::UnknownKey,
            DecodeError::BadTag,
            DecodeError::PacketTooLarge { len: 2000, max: 1232 },
            DecodeError::TooManyMetadata { max: 32 },
        ];
        assert_eq!(samples.len(), DecodeError::KINDS.len());
        for error in samples {
            assert!(DecodeError::KINDS.contains(&error.kind()), "{} missing", error.kind());
        }
    }
}
