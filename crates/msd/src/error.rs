use std::io;

use thiserror::Error;

/// Errors of the msd runtime. Messages name the value at fault and, where it is not obvious,
/// what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller gave an invalid setting.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting { setting: &'static str, reason: String },

    /// A named interface does not exist.
    #[error("interface {name:?} not found; list the interfaces with `ip link`")]
    InterfaceNotFound { name: String },

    /// The loopback interface was named in IPv6 mode.
    #[error("interface {name:?} is a loopback interface, which carries no IPv6 multicast; use IPv4 mode (`--ipv4`) with it")]
    LoopbackNeedsIpv4 { name: String },

    /// Another program holds the port without sharing it.
    #[error("udp port {port} is held by another program that does not share it (SO_REUSEADDR); stop that program or choose another port")]
    PortInUse { port: u16 },

    /// A packet would be too large.
    #[error(transparent)]
    Encode(#[from] msd_wire::EncodeError),

    /// A local resource failed.
    #[error("failed to {action}: {source}")]
    Io {
        action: &'static str,
        #[source]
        source: io::Error,
    },

    /// The background task has stopped, so the handle can no longer be used.
    #[error("the msd task has stopped")]
    Stopped,
}

impl Error {
    pub(crate) fn io(action: &'static str, source: io::Error) -> Self {
        Error::Io { action, source }
    }

    pub(crate) fn invalid(setting: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidSetting { setting, reason: reason.into() }
    }
}
