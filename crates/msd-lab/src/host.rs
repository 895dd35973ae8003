//! One host of a lab: a network namespace with veth interfaces on the lab's bridge.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use crate::child::LabChild;
use crate::lab::{Shared, BRIDGE, MAX_ADDED_INTERFACES, MAX_HOSTS};
use crate::{command, netns, LabError};

/// One lab interface of a host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interface {
    /// Name inside the host namespace, such as `eth0`.
    pub name: String,
    /// Interface index inside the host namespace.
    pub index: u32,
    /// IPv4 address, with prefix length 24.
    pub ipv4: Ipv4Addr,
    /// The `fe80::` address the kernel derived from the MAC address.
    pub link_local: Ipv6Addr,
    /// MAC address in the form `02:00:5e:00:00:01`.
    pub mac: String,
}

/// A network namespace on the lab's segment.
///
/// Borrowed from [`Lab::host`](crate::Lab::host), so it cannot outlive the lab.
#[derive(Debug)]
pub struct Host {
    index: usize,
    namespace: String,
    primary: Interface,
    shared: Arc<Shared>,
}

impl Host {
    pub(crate) fn new(
        index: usize,
        namespace: String,
        primary: Interface,
        shared: Arc<Shared>,
    ) -> Host {
        Host {
            index,
            namespace,
            primary,
            shared,
        }
    }

    /// Returns the position of this host in [`Lab::hosts`](crate::Lab::hosts).
    pub fn index(&self) -> usize {
        self.index
    }

    /// Returns the name of the network namespace.
    pub fn name(&self) -> &str {
        &self.namespace
    }

    /// Returns the name of the first lab interface inside the namespace, `eth0`.
    pub fn interface(&self) -> &str {
        &self.primary.name
    }

    /// Returns the IPv4 address of [`interface`](Self::interface), `10.x.y.<index + 1>`
    /// with prefix length 24. `x` and `y` differ between labs of one process.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.primary.ipv4
    }

    /// Returns the `fe80::` address of [`interface`](Self::interface).
    ///
    /// The address is derived from the MAC address, so it is the same again after
    /// [`link_up`](Self::link_up).
    pub fn link_local(&self) -> Ipv6Addr {
        self.primary.link_local
    }

    /// Returns the interface index of [`interface`](Self::interface) inside the namespace.
    pub fn interface_index(&self) -> u32 {
        self.primary.index
    }

    /// Returns the MAC address of [`interface`](Self::interface).
    pub fn mac(&self) -> &str {
        &self.primary.mac
    }

    /// Returns every lab interface of this host: `eth0`, then those added with
    /// [`add_interface`](Self::add_interface).
    pub fn interfaces(&self) -> Vec<Interface> {
        self.shared.topology().host(self.index).interfaces.clone()
    }

    /// Returns a `Command` that runs `program` inside the namespace, as
    /// `ip netns exec NAME program`. Add arguments with [`Command::arg`].
    ///
    /// Pass the command to [`spawn`](Self::spawn) to capture its output and have it
    /// killed with the lab, or run it with the usual `Command` methods.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec"])
            .arg(&self.namespace)
            .arg(program);
        command
    }

    /// Spawns `command`, usually built with [`command`](Self::command), capturing stdout and
    /// stderr line by line.
    ///
    /// The child gets its own process group and a null stdin. The process group is killed
    /// when the returned [`LabChild`] drops or when the lab drops, whichever comes first.
    ///
    /// # Errors
    ///
    /// Returns [`LabError::CommandNotStarted`] when the process cannot be started.
    pub fn spawn(&self, command: Command) -> Result<LabChild, LabError> {
        LabChild::spawn(command, Arc::clone(&self.shared))
    }

    /// Runs `f` on a new OS thread that has entered this namespace, and returns its handle.
    ///
    /// Sockets that `f` creates live in the namespace, and so do threads it starts, such as
    /// the workers of a tokio runtime that `f` builds. The thread keeps the namespace alive
    /// until it ends, even after the lab drops, so `f` should return within the test.
    ///
    /// # Panics
    ///
    /// The thread panics, and `join` returns the panic, when it cannot enter the namespace.
    /// This call panics when the OS cannot create a thread.
    pub fn run<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let namespace = self.namespace.clone();
        thread::Builder::new()
            .name(format!("msd-lab {namespace}"))
            .spawn(move || {
                if let Err(error) = netns::enter(&namespace) {
                    panic!("{error}");
                }
                f()
            })
            .unwrap_or_else(|error| panic!("failed to spawn a thread for the lab: {error}"))
    }

    /// Drops `percent` (0 to 100) of the UDP packets that arrive at and leave this host's
    /// lab interfaces, chosen at random per packet. `0` removes the rule.
    ///
    /// The drops are silent, so a send in the namespace still succeeds. Traffic on `lo` is
    /// not affected. The rules live in the nftables table `netdev msdlab` of this namespace.
    ///
    /// # Errors
    ///
    /// Returns [`LabError::InvalidLossPercent`] above 100, or an error when `nft` fails.
    pub fn set_udp_loss(&self, percent: u8) -> Result<(), LabError> {
        if percent > 100 {
            return Err(LabError::InvalidLossPercent { percent });
        }
        let mut topology = self.shared.topology();
        let previous =
            std::mem::replace(&mut topology.host_mut(self.index).udp_loss_percent, percent);
        let result = topology.apply_filters(self.index);
        if result.is_err() {
            topology.host_mut(self.index).udp_loss_percent = previous;
        }
        result
    }

    /// Drops all traffic between this host and `other` in both directions until either of
    /// them calls [`heal`](Self::heal).
    ///
    /// Both hosts drop every frame from and to the MAC addresses of the other's lab
    /// interfaces, so the partition covers IPv4, IPv6, ARP, neighbor discovery, unicast
    /// and multicast. Interfaces added later are included.
    ///
    /// # Errors
    ///
    /// Returns an error when `other` is this host or belongs to another lab, or when `nft`
    /// fails.
    pub fn partition_from(&self, other: &Host) -> Result<(), LabError> {
        if !Arc::ptr_eq(&self.shared, &other.shared) {
            return Err(LabError::ForeignHost {
                host: self.namespace.clone(),
                other: other.namespace.clone(),
            });
        }
        if self.index == other.index {
            return Err(LabError::SelfPartition {
                host: self.namespace.clone(),
            });
        }

        let pair = (self.index.min(other.index), self.index.max(other.index));
        let mut topology = self.shared.topology();
        if !topology.partitions.insert(pair) {
            return Ok(());
        }
        let result = topology
            .apply_filters(self.index)
            .and_then(|()| topology.apply_filters(other.index));
        if result.is_err() {
            topology.partitions.remove(&pair);
            // Best effort: the error below matters more than a failed rollback.
            let _ = topology.apply_filters(self.index);
            let _ = topology.apply_filters(other.index);
        }
        result
    }

    /// Removes every partition between this host and other hosts.
    ///
    /// # Errors
    ///
    /// Returns the first `nft` failure. The other hosts are updated all the same.
    pub fn heal(&self) -> Result<(), LabError> {
        let mut topology = self.shared.topology();
        let peers = topology.partition_peers(self.index);
        topology
            .partitions
            .retain(|&(low, high)| low != self.index && high != self.index);

        let mut result = topology.apply_filters(self.index);
        for peer in peers {
            let peer_result = topology.apply_filters(peer);
            result = result.and(peer_result);
        }
        result
    }

    /// Sets [`interface`](Self::interface) down. Its IPv6 addresses disappear until
    /// [`link_up`](Self::link_up).
    ///
    /// # Errors
    ///
    /// Returns an error when `ip` fails.
    pub fn link_down(&self) -> Result<(), LabError> {
        self.interface_down(&self.primary.name)
    }

    /// Sets [`interface`](Self::interface) up and waits until its link-local address is
    /// usable again.
    ///
    /// # Errors
    ///
    /// Returns an error when `ip` fails or the address does not come back in time.
    pub fn link_up(&self) -> Result<(), LabError> {
        self.interface_up(&self.primary.name)
    }

    /// Sets the lab interface `name` of this host down.
    ///
    /// # Errors
    ///
    /// Returns [`LabError::UnknownInterface`] when `name` is not a lab interface of this
    /// host, or an error when `ip` fails.
    pub fn interface_down(&self, name: &str) -> Result<(), LabError> {
        self.check_interface(name)?;
        command::run("ip", &["-n", &self.namespace, "link", "set", name, "down"]).map(drop)
    }

    /// Sets the lab interface `name` of this host up and waits until its link-local
    /// address is usable.
    ///
    /// # Errors
    ///
    /// Returns [`LabError::UnknownInterface`] when `name` is not a lab interface of this
    /// host, or an error when `ip` fails or the address does not come back in time.
    pub fn interface_up(&self, name: &str) -> Result<(), LabError> {
        self.check_interface(name)?;
        command::run("ip", &["-n", &self.namespace, "link", "set", name, "up"])?;
        netns::wait_for_link_local(&self.namespace, name).map(drop)
    }

    /// Adds another veth interface to this host, attached to the same bridge, and returns
    /// its name (`eth1`, `eth2`, ...).
    ///
    /// The interface gets an IPv4 address from `.129` upward in the lab's /24 and a
    /// link-local address, both listed by [`interfaces`](Self::interfaces). Existing loss and
    /// partition rules cover it at once.
    ///
    /// # Errors
    ///
    /// Returns an error when the lab already has [`MAX_ADDED_INTERFACES`] added interfaces
    /// or a setup command fails.
    pub fn add_interface(&self) -> Result<String, LabError> {
        let mut topology = self.shared.topology();
        let added = topology.added_interfaces;
        if added >= MAX_ADDED_INTERFACES {
            return Err(LabError::TooManyInterfaces {
                max: MAX_ADDED_INTERFACES,
            });
        }

        let number = topology.host(self.index).interfaces.len();
        let name = format!("eth{number}");
        let port = format!("h{}e{number}", self.index);
        let last_octet = u8::try_from(MAX_HOSTS + 1 + added).unwrap_or(u8::MAX);
        let ipv4 = self.shared.ipv4(last_octet);
        let interface = attach_interface(&self.shared, &self.namespace, &name, &port, ipv4)?;

        topology.added_interfaces += 1;
        topology.host_mut(self.index).interfaces.push(interface);
        let peers = topology.partition_peers(self.index);
        topology.apply_filters(self.index)?;
        for peer in peers {
            topology.apply_filters(peer)?;
        }
        Ok(name)
    }

    fn check_interface(&self, name: &str) -> Result<(), LabError> {
        let topology = self.shared.topology();
        if topology
            .host(self.index)
            .interfaces
            .iter()
            .any(|i| i.name == name)
        {
            return Ok(());
        }
        Err(LabError::UnknownInterface {
            namespace: self.namespace.clone(),
            interface: name.to_owned(),
        })
    }
}

/// Creates a veth pair with `name` inside `namespace` and `port` on the bridge, gives
/// `name` the address `ipv4`/24, sets both ends up, and waits for the link-local address.
pub(crate) fn attach_interface(
    shared: &Shared,
    namespace: &str,
    name: &str,
    port: &str,
    ipv4: Ipv4Addr,
) -> Result<Interface, LabError> {
    let switch = shared.switch.as_str();
    // Creating the pair from inside the switch namespace keeps every step off the
    // namespace this process runs in.
    let add_pair = [
        "-n", switch, "link", "add", port, "type", "veth", "peer", "name", name, "netns", namespace,
    ];
    command::run("ip", &add_pair)?;
    command::run(
        "ip",
        &["-n", switch, "link", "set", port, "master", BRIDGE, "up"],
    )?;

    let address = format!("{ipv4}/24");
    command::run(
        "ip",
        &["-n", namespace, "addr", "add", &address, "dev", name],
    )?;
    command::run("ip", &["-n", namespace, "link", "set", name, "up"])?;

    let link = netns::link_info(namespace, name)?;
    let link_local = netns::wait_for_link_local(namespace, name)?;
    Ok(Interface {
        name: name.to_owned(),
        index: link.index,
        ipv4,
        link_local,
        mac: link.mac,
    })
}
