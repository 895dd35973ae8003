//! The network interfaces msd joins and sends on.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use msd_engine::InterfaceIndex;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::{if_nametoindex, InterfaceFlags};

use crate::IpVersion;

/// The interfaces to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InterfaceSelection {
    /// Every interface that is up, multicast-capable and not loopback, followed as interfaces
    /// appear and go away.
    #[default]
    All,
    /// Only these interfaces, by name. Each must exist when msd starts; one that is down is waited
    /// for. Loopback is allowed here, in IPv4 mode.
    Named(Vec<String>),
}

/// One interface as the operating system reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InterfaceState {
    pub(crate) name: String,
    pub(crate) index: InterfaceIndex,
    pub(crate) up: bool,
    pub(crate) multicast: bool,
    pub(crate) loopback: bool,
    pub(crate) ipv4: Option<Ipv4Addr>,
    /// Netmask of `ipv4`, to tell on-link senders from others.
    pub(crate) ipv4_netmask: Option<Ipv4Addr>,
    pub(crate) ipv6_link_local: Option<Ipv6Addr>,
}

impl InterfaceState {
    /// Returns whether `source` is on this interface's link: a link-local IPv6 address, or an
    /// IPv4 address in the interface's subnet. Datagrams from anywhere else crossed a router,
    /// which a link-local discovery protocol never does.
    pub(crate) fn on_link(&self, source: std::net::IpAddr) -> bool {
        match source {
            std::net::IpAddr::V6(address) => address.is_unicast_link_local(),
            std::net::IpAddr::V4(address) => {
                if self.loopback {
                    return address.is_loopback();
                }
                let (Some(own), Some(mask)) = (self.ipv4, self.ipv4_netmask) else { return false };
                let mask = u32::from(mask);
                u32::from(own) & mask == u32::from(address) & mask
            }
        }
    }
}

impl InterfaceState {
    /// Returns whether msd can send and receive the group's multicast on this interface now.
    pub(crate) fn usable(&self, ip: IpVersion) -> bool {
        if !self.up {
            return false;
        }
        match ip {
            // Loopback carries IPv4 multicast without the MULTICAST flag; IPv6 multicast it cannot.
            IpVersion::V4 => self.ipv4.is_some() && (self.multicast || self.loopback),
            IpVersion::V6 => self.multicast && !self.loopback && self.ipv6_link_local.is_some(),
        }
    }

    /// Returns why the interface cannot be used now, for logs.
    pub(crate) fn unusable_reason(&self, ip: IpVersion) -> &'static str {
        if !self.up {
            "down"
        } else if ip == IpVersion::V6 && self.loopback {
            "loopback carries no IPv6 multicast"
        } else if !self.multicast && !self.loopback {
            "not multicast-capable"
        } else if ip == IpVersion::V4 {
            "no IPv4 address"
        } else {
            "no usable IPv6 link-local address (none, or still in duplicate address detection)"
        }
    }
}

/// Flag of an IPv6 address still in duplicate address detection (`IFA_F_TENTATIVE` in Linux's
/// `if_addr.h`). Sending from such an address fails with `EADDRNOTAVAIL`.
const IFA_F_TENTATIVE: u32 = 0x40;

/// Returns the link-local addresses that are still tentative, from `if_inet6` under `/proc`,
/// whose lines read `<32 hex digits> <index> <prefix length> <scope> <flags> <name>`, all
/// hexadecimal. The calling thread's own view comes first, since a thread may have entered
/// another network namespace than the process's main thread. An unreadable file yields none, so
/// every address counts as usable.
fn tentative_addresses() -> Vec<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/thread-self/net/if_inet6")
        .or_else(|_| std::fs::read_to_string("/proc/net/if_inet6"));
    let Ok(text) = text else { return Vec::new() };
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let address = fields.next()?;
            let flags = u32::from_str_radix(fields.nth(3)?, 16).ok()?;
            if flags & IFA_F_TENTATIVE == 0 {
                return None;
            }
            let value = u128::from_str_radix(address, 16).ok()?;
            Some(Ipv6Addr::from(value))
        })
        .collect()
}

/// Lists the machine's interfaces, by index.
pub(crate) fn scan() -> std::io::Result<BTreeMap<InterfaceIndex, InterfaceState>> {
    let tentative = tentative_addresses();
    let mut interfaces: BTreeMap<InterfaceIndex, InterfaceState> = BTreeMap::new();
    for entry in getifaddrs()? {
        let Ok(index) = if_nametoindex(entry.interface_name.as_str()) else { continue };
        let index = InterfaceIndex(index);
        let state = interfaces.entry(index).or_insert_with(|| InterfaceState {
            name: entry.interface_name.clone(),
            index,
            up: entry.flags.contains(InterfaceFlags::IFF_UP)
                && entry.flags.contains(InterfaceFlags::IFF_RUNNING),
            multicast: entry.flags.contains(InterfaceFlags::IFF_MULTICAST),
            loopback: entry.flags.contains(InterfaceFlags::IFF_LOOPBACK),
            ipv4: None,
            ipv4_netmask: None,
            ipv6_link_local: None,
        });
        let Some(address) = entry.address else { continue };
        if let Some(v4) = address.as_sockaddr_in() {
            if state.ipv4.is_none() {
                state.ipv4 = Some(v4.ip());
                state.ipv4_netmask = entry.netmask.as_ref().and_then(|mask| mask.as_sockaddr_in()).map(|mask| mask.ip());
            }
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let ip = v6.ip();
            if ip.is_unicast_link_local() && !tentative.contains(&ip) {
                state.ipv6_link_local.get_or_insert(ip);
            }
        }
    }
    Ok(interfaces)
}

/// Returns the interfaces that `selection` picks and that can be used now.
pub(crate) fn select(
    all: &BTreeMap<InterfaceIndex, InterfaceState>,
    selection: &InterfaceSelection,
    ip: IpVersion,
) -> BTreeMap<InterfaceIndex, InterfaceState> {
    all.values()
        .filter(|state| match selection {
            InterfaceSelection::All => !state.loopback,
            InterfaceSelection::Named(names) => names.contains(&state.name),
        })
        .filter(|state| state.usable(ip))
        .map(|state| (state.index, state.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(name: &str, loopback: bool) -> InterfaceState {
        InterfaceState {
            name: name.into(),
            index: InterfaceIndex(if loopback { 1 } else { 2 }),
            up: true,
            multicast: !loopback,
            loopback,
            ipv4: Some(if loopback { Ipv4Addr::LOCALHOST } else { Ipv4Addr::new(10, 0, 0, 2) }),
            ipv4_netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
            ipv6_link_local: (!loopback).then(|| "fe80::2".parse().unwrap()),
        }
    }

    #[test]
    fn all_skips_loopback() {
        let all: BTreeMap<_, _> =
            [state("lo", true), state("eth0", false)].into_iter().map(|s| (s.index, s)).collect();
        let picked = select(&all, &InterfaceSelection::All, IpVersion::V6);
        let names: Vec<_> = picked.values().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["eth0"]);
    }

    #[test]
    fn named_loopback_usable_in_ipv4_only() {
        let all: BTreeMap<_, _> = [state("lo", true)].into_iter().map(|s| (s.index, s)).collect();
        let named = InterfaceSelection::Named(vec!["lo".into()]);
        assert_eq!(select(&all, &named, IpVersion::V4).len(), 1);
        assert!(select(&all, &named, IpVersion::V6).is_empty());
        assert_eq!(all[&InterfaceIndex(1)].unusable_reason(IpVersion::V6), "loopback carries no IPv6 multicast");
    }

    #[test]
    fn on_link_sources() {
        let eth0 = state("eth0", false);
        assert!(eth0.on_link("10.0.0.9".parse().unwrap()));
        assert!(!eth0.on_link("10.0.1.9".parse().unwrap()));
        assert!(eth0.on_link("fe80::9".parse().unwrap()));
        assert!(!eth0.on_link("2001:db8::9".parse().unwrap()));
        let lo = state("lo", true);
        assert!(lo.on_link("127.0.0.1".parse().unwrap()));
        assert!(!lo.on_link("10.0.0.9".parse().unwrap()));
    }

    #[test]
    fn down_interface_waits() {
        let mut eth0 = state("eth0", false);
        eth0.up = false;
        assert!(!eth0.usable(IpVersion::V6));
        assert_eq!(eth0.unusable_reason(IpVersion::V6), "down");
    }

    #[test]
    fn scan_finds_loopback() {
        let all = scan().unwrap();
        assert!(all.values().any(|state| state.loopback), "{all:?}");
    }
}
