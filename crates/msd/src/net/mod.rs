//! Network settings shared by instances and discoverers, and the sockets they open.

pub(crate) mod interfaces;
pub(crate) mod socket;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use msd_wire::seed::SEED_PORT;
use msd_wire::GroupId;

pub use interfaces::InterfaceSelection;

/// Defines the builder methods for the network settings, shared by the instance and discoverer
/// builders (both keep a `network: NetworkConfig` field).
macro_rules! network_setters {
    () => {
        /// Restricts use to one more named interface (see [`InterfaceSelection::Named`]).
        pub fn interface(mut self, name: impl Into<String>) -> Self {
            let name = name.into();
            match &mut self.network.interfaces {
                Some(InterfaceSelection::Named(names)) => names.push(name),
                _ => self.network.interfaces = Some(InterfaceSelection::Named(vec![name])),
            }
            self
        }

        /// Sets which interfaces to use. Default: the names in `MSD_MULTICAST_INTERFACE` when it
        /// is set, else every up, multicast-capable, non-loopback interface.
        pub fn interfaces(mut self, selection: InterfaceSelection) -> Self {
            self.network.interfaces = Some(selection);
            self
        }

        /// Sets the IP version of the group. Default: IPv6, the seed protocol's only mode.
        pub fn ip_version(mut self, ip: IpVersion) -> Self {
            self.network.ip = ip;
            self
        }

        /// Overrides the IPv4 group address derived from the group id.
        pub fn ipv4_group(mut self, address: std::net::Ipv4Addr) -> Self {
            self.network.ipv4_group = Some(address);
            self
        }

        /// Sets the UDP port of the group. Default: 53566, the seed protocol's port.
        pub fn port(mut self, port: u16) -> Self {
            self.network.port = port;
            self
        }

        /// Sets how often interfaces are checked for changes. Default: 2 s.
        pub fn interface_rescan_interval(mut self, interval: std::time::Duration) -> Self {
            self.network.rescan_interval = interval;
            self
        }
    };
}
pub(crate) use network_setters;

use crate::Error;

/// Environment variable naming the interfaces to use, comma-separated, as the seed library read it.
pub const INTERFACE_ENV: &str = "MSD_MULTICAST_INTERFACE";

/// The IP version of the multicast group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpVersion {
    /// IPv6 link-local multicast, `ff02::/16`: the seed protocol's only mode.
    #[default]
    V6,
    /// IPv4 multicast in `239.0.0.0/8`, for networks without IPv6 and for the loopback interface.
    V4,
}

/// Where and how an instance or discoverer meets its group.
#[derive(Debug, Clone)]
pub(crate) struct NetworkConfig {
    pub(crate) group: GroupId,
    pub(crate) ip: IpVersion,
    pub(crate) port: u16,
    pub(crate) ipv4_group: Option<Ipv4Addr>,
    /// `None` means: from [`INTERFACE_ENV`] when set, else every interface.
    pub(crate) interfaces: Option<InterfaceSelection>,
    pub(crate) rescan_interval: Duration,
}

impl NetworkConfig {
    pub(crate) fn new(group: GroupId) -> Self {
        NetworkConfig {
            group,
            ip: IpVersion::V6,
            port: SEED_PORT,
            ipv4_group: None,
            interfaces: None,
            rescan_interval: Duration::from_secs(2),
        }
    }

    /// Returns the group's multicast address.
    pub(crate) fn group_address(&self) -> IpAddr {
        match self.ip {
            IpVersion::V6 => IpAddr::V6(self.group.ipv6_multicast()),
            IpVersion::V4 => IpAddr::V4(self.ipv4_group.unwrap_or_else(|| self.group.ipv4_multicast())),
        }
    }

    /// Checks the settings and resolves the interface selection against the machine's interfaces.
    pub(crate) fn resolve(&self) -> Result<InterfaceSelection, Error> {
        if let Some(address) = self.ipv4_group {
            if !address.is_multicast() {
                return Err(Error::invalid(
                    "IPv4 group address",
                    format!("{address} is not a multicast address; use one in 239.0.0.0/8"),
                ));
            }
        }
        if self.rescan_interval.is_zero() {
            return Err(Error::invalid("interface rescan interval", "must be greater than zero"));
        }
        let selection = match &self.interfaces {
            Some(selection) => selection.clone(),
            None => selection_from_env()?,
        };
        let InterfaceSelection::Named(names) = &selection else { return Ok(selection) };

        let all = interfaces::scan().map_err(|source| Error::io("list network interfaces", source))?;
        for name in names {
            let Some(state) = all.values().find(|state| state.name == *name) else {
                return Err(Error::InterfaceNotFound { name: name.clone() });
            };
            if state.loopback && self.ip == IpVersion::V6 {
                return Err(Error::LoopbackNeedsIpv4 { name: name.clone() });
            }
        }
        Ok(selection)
    }
}

fn selection_from_env() -> Result<InterfaceSelection, Error> {
    let Ok(value) = std::env::var(INTERFACE_ENV) else { return Ok(InterfaceSelection::All) };
    let names: Vec<String> =
        value.split(',').map(str::trim).filter(|name| !name.is_empty()).map(str::to_owned).collect();
    if names.is_empty() {
        return Err(Error::invalid(INTERFACE_ENV, format!("{value:?} names no interface; unset it or name one")));
    }
    Ok(InterfaceSelection::Named(names))
}
