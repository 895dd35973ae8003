use std::io;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

/// Errors from building, changing or tearing down a lab.
///
/// Variants that come from an external command name the full command line, so a failure
/// can be reproduced by hand.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The lab needs root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`) to create namespaces.
    #[error(
        "the lab needs root to create network namespaces, but the effective user id is {euid}"
    )]
    NotRoot {
        /// Effective user id of this process.
        euid: u32,
    },

    /// A command could not be started, usually because the program is not installed.
    #[error("failed to start `{command}`: {source}")]
    CommandNotStarted {
        /// The command line.
        command: String,
        /// Error from spawning the process.
        source: io::Error,
    },

    /// A command ran and exited with a failure status.
    #[error("`{command}` failed with {status}: {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Exit status of the command.
        status: ExitStatus,
        /// Everything the command wrote to stderr, trimmed.
        stderr: String,
    },

    /// A command succeeded but printed something the lab cannot parse.
    #[error("unexpected output from `{command}`: {output:?}")]
    UnexpectedOutput {
        /// The command line.
        command: String,
        /// The command's stdout.
        output: String,
    },

    /// A thread could not enter a namespace with `setns`.
    #[error("failed to enter network namespace {namespace}: {source}")]
    EnterNamespace {
        /// Name of the namespace.
        namespace: String,
        /// Error from opening the namespace file or from `setns`.
        source: io::Error,
    },

    /// Writing a sysctl inside a namespace failed.
    #[error("failed to write {path} in network namespace {namespace}: {source}")]
    Sysctl {
        /// Name of the namespace.
        namespace: String,
        /// Path under `/proc/sys`.
        path: String,
        /// Error from the write.
        source: io::Error,
    },

    /// An interface did not get a usable IPv6 link-local address in time.
    #[error(
        "timed out after {timeout:?} waiting for a usable IPv6 link-local address \
         on {interface} in network namespace {namespace}; last `ip` output: {last_output:?}"
    )]
    LinkLocalTimeout {
        /// Name of the namespace.
        namespace: String,
        /// Name of the interface inside the namespace.
        interface: String,
        /// How long the lab waited.
        timeout: Duration,
        /// The last address listing, to show whether the address was missing or tentative.
        last_output: String,
    },

    /// More hosts than the lab's IPv4 /24 has addresses for.
    #[error("a lab has at most {max} hosts, but {requested} were requested")]
    TooManyHosts {
        /// Number of hosts the lab would have after the request.
        requested: usize,
        /// Maximum number of hosts.
        max: usize,
    },

    /// More added interfaces than the lab's IPv4 /24 has addresses for.
    #[error("a lab has at most {max} added interfaces across all hosts, and all are in use")]
    TooManyInterfaces {
        /// Maximum number of interfaces added with `Host::add_interface`.
        max: usize,
    },

    /// The host has no interface with this name.
    #[error("network namespace {namespace} has no lab interface named {interface:?}")]
    UnknownInterface {
        /// Name of the namespace.
        namespace: String,
        /// The requested interface name.
        interface: String,
    },

    /// A loss percentage above 100.
    #[error("invalid UDP loss percentage {percent}: expected 0 to 100")]
    InvalidLossPercent {
        /// The rejected value.
        percent: u8,
    },

    /// A host was asked to partition itself from a host of another lab.
    #[error("host {other} belongs to another lab than host {host}")]
    ForeignHost {
        /// Namespace of the host the call was made on.
        host: String,
        /// Namespace of the host from the other lab.
        other: String,
    },

    /// A host was asked to partition itself from itself.
    #[error("host {host} cannot be partitioned from itself")]
    SelfPartition {
        /// Namespace of the host.
        host: String,
    },

    /// Sending a signal to a child process failed.
    #[error("failed to send {signal} to process {pid}: {source}")]
    Signal {
        /// Process id of the child.
        pid: u32,
        /// The signal that was sent.
        signal: Signal,
        /// Error from `kill`.
        source: Errno,
    },
}
