use thiserror::Error;

/// Why a datagram was rejected.
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
    #[error("`h` has no `{field}` field")]
    MissingField { field: &'static str },
    #[error("`h.{field}` is not a string")]
    FieldNotString { field: &'static str },
    #[error("`h.{field}` is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
}

impl DecodeError {
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
        }
    }
}

/// Why a packet could not be encoded. This is the caller's fault: a value is too large.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    #[error("field `{field}` is {len} bytes long, more than the maximum of {max} bytes")]
    FieldTooLong { field: &'static str, len: usize, max: usize },
}
