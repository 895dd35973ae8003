//! A network-namespace test lab for msd's integration tests.
//!
//! [`Lab::new`] creates N hosts as Linux network namespaces on one Ethernet segment. Each
//! host has a veth interface `eth0` whose other end is a port of a bridge in a separate
//! switch namespace:
//!
//! ```text
//!  msdlab-<id>-<n>-h0       msdlab-<id>-<n>-h1       msdlab-<id>-<n>-h2
//!  eth0 10.x.y.1, fe80::    eth0 10.x.y.2, fe80::    eth0 10.x.y.3, fe80::
//!        |                        |                        |
//!  ------h0-----------------------h1-----------------------h2------ br0
//!                       msdlab-<id>-<n>-sw (multicast snooping off)
//! ```
//!
//! `<id>` is `<pid namespace inode>-<pid>` of the process that made the lab, and `<n>` counts
//! the labs of that process.
//!
//! Tests run programs in a host with [`Host::command`] and [`Host::spawn`], or library code
//! with [`Host::run`], which enters the namespace on a new thread. Faults come from nftables
//! rules inside the host namespaces: [`Host::set_udp_loss`] drops a share of UDP packets
//! at random, and [`Host::partition_from`] cuts two hosts apart until [`Host::heal`].
//! [`Host::link_down`], [`Lab::add_host`] and [`Host::add_interface`] change the topology
//! while a test runs. Dropping the [`Lab`] kills its processes and deletes its namespaces,
//! also while a test unwinds from a panic.
//!
//! The lab creates no interface, address or route in the namespace the test process runs
//! in, so lab traffic cannot reach the machine's real interfaces. Code under test reaches
//! the lab only when it runs inside a host namespace.
//!
//! # Example
//!
//! ```no_run
//! use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
//! use std::time::Duration;
//!
//! use msd_lab::Lab;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Skips (returns None) on machines that cannot run the lab.
//! let Some(lab) = Lab::for_test(2) else { return Ok(()) };
//! let (sender, receiver) = (lab.host(0), lab.host(1));
//!
//! // A program in host 1, with its output captured.
//! let mut command = receiver.command("ip");
//! command.args(["-o", "addr", "show", "dev", receiver.interface()]);
//! let mut child = receiver.spawn(command)?;
//! let line = child.wait_for_line(Duration::from_secs(5), |line| line.contains("inet "));
//! assert!(line.is_some(), "no IPv4 address in:\n{}", child.output());
//! child.wait_exit(Duration::from_secs(5));
//!
//! // Library code in host 0: the socket lives in host 0's namespace.
//! let target = SocketAddrV6::new(receiver.link_local(), 40000, 0, sender.interface_index());
//! let sent = sender.run(move || {
//!     let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))?;
//!     socket.send_to(b"hello", target)
//! });
//! sent.join().expect("sender thread panicked")?;
//!
//! // Lose half of host 1's UDP traffic, then cut it off from host 0.
//! receiver.set_udp_loss(50)?;
//! receiver.partition_from(sender)?;
//! receiver.heal()?;
//! # Ok(())
//! # }
//! ```
//!
//! # Requirements
//!
//! Root (or `CAP_NET_ADMIN` and `CAP_SYS_ADMIN`), `ip` from iproute2, and `nft` for loss
//! and partitions. The egress hook that makes outgoing drops silent needs Linux 5.16 or
//! later. [`Lab::for_test`] skips a test when a requirement is missing, unless the
//! environment variable `MSD_LAB_REQUIRED` is `1`.
//!
//! # Limitations
//!
//! - Linux only. Each host is a network namespace, not a container: hosts share the file
//!   system, the process table and the clock with the test process.
//! - Loss is uniform and independent per packet. There is no delay, reordering,
//!   duplication or bandwidth limit, because those need `netem`.
//! - Loss covers UDP only. Partitions cover all traffic between two hosts, matched by the
//!   MAC addresses of their lab interfaces.
//! - A lab contains at most [`MAX_HOSTS`] hosts and [`MAX_ADDED_INTERFACES`] added
//!   interfaces, because all addresses come from one IPv4 /24.
//! - Threads started with [`Host::run`] keep their namespace alive until they end. The
//!   lab cannot stop them.
//! - If the test process is killed (SIGKILL) the namespaces stay behind. The next lab
//!   created on the machine deletes namespaces whose owning process no longer runs.

#![forbid(unsafe_code)]

mod child;
mod command;
mod error;
mod filter;
mod host;
mod lab;
mod netns;

pub use child::LabChild;
pub use error::LabError;
pub use host::{Host, Interface};
pub use lab::{Lab, MAX_ADDED_INTERFACES, MAX_HOSTS, REQUIRED_ENV};
pub use nix::sys::signal::Signal;
