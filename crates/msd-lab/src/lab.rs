//! The lab: a switch namespace with a bridge, host namespaces attached to it, and the state
//! shared by its hosts and children.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{geteuid, Pid};

use crate::filter::{self, FilterState};
use crate::host::{self, Host, Interface};
use crate::{command, netns, LabError};

/// Maximum number of hosts in one lab, because hosts use the addresses `.1` to `.128` of the lab's
/// IPv4 /24.
pub const MAX_HOSTS: usize = 128;

/// Maximum number of interfaces that [`Host::add_interface`] adds across one lab, because added
/// interfaces use the addresses `.129` to `.254` of the lab's IPv4 /24.
pub const MAX_ADDED_INTERFACES: usize = 126;

/// Name of the bridge inside the switch namespace.
pub(crate) const BRIDGE: &str = "br0";

/// Environment variable that turns a skipped lab test into a failure when set to `1`.
pub const REQUIRED_ENV: &str = "MSD_LAB_REQUIRED";

/// Sysctls for a host namespace, written before its first interface exists so every
/// interface inherits them. Without duplicate address detection a link-local address is
/// usable as soon as the link is up.
const HOST_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv6/conf/all/accept_dad", "0"),
    ("/proc/sys/net/ipv6/conf/default/accept_dad", "0"),
];

/// Sysctls for the switch namespace. With IPv6 off, the bridge sends no neighbor discovery
/// or MLD packets of its own onto the segment, so every packet there comes from a host.
const SWITCH_SYSCTLS: &[(&str, &str)] = &[
    ("/proc/sys/net/ipv6/conf/all/disable_ipv6", "1"),
    ("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"),
];

/// Number of the next lab created by this process, part of every namespace name.
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A set of Linux network namespaces ("hosts") on one Ethernet segment.
///
/// Each host has a veth interface `eth0` whose other end is a port of a bridge in a separate
/// switch namespace. The bridge floods multicast to every port (multicast snooping is off).
/// Dropping the lab kills the processes it spawned and deletes every namespace it created,
/// also while a test unwinds from a panic.
#[derive(Debug)]
pub struct Lab {
    shared: Arc<Shared>,
    hosts: Vec<Host>,
}

impl Lab {
    /// Creates `hosts` namespaces joined by a bridge in a separate switch namespace.
    ///
    /// Before creating anything, deletes namespaces left by earlier processes that used
    /// this crate and no longer run. Returns once every host's link-local address is
    /// usable.
    ///
    /// # Errors
    ///
    /// Returns an error when `hosts` exceeds [`MAX_HOSTS`] or a setup command fails. What
    /// was created before the failure is deleted again.
    pub fn new(hosts: usize) -> Result<Lab, LabError> {
        if hosts > MAX_HOSTS {
            return Err(LabError::TooManyHosts {
                requested: hosts,
                max: MAX_HOSTS,
            });
        }
        netns::sweep_stale_once();

        let mut lab = Lab {
            shared: Arc::new(Shared::new(NEXT_LAB.fetch_add(1, Ordering::Relaxed))),
            hosts: Vec::with_capacity(hosts),
        };
        // On an early return `lab` drops, which deletes what was created so far.
        lab.create_switch()?;
        for _ in 0..hosts {
            lab.add_host()?;
        }
        Ok(lab)
    }

    /// Creates a lab for a test, or returns `None` when this machine cannot run one.
    ///
    /// A lab cannot run without root, without `ip` or `nft`, or when creating the
    /// namespaces fails. Then, if the environment variable `MSD_LAB_REQUIRED` is `1`, this
    /// panics with the reason, and otherwise it prints `msd-lab: skipped: <reason>` to
    /// stderr and returns `None`.
    ///
    /// # Panics
    ///
    /// Panics when the lab cannot run and `MSD_LAB_REQUIRED=1`.
    pub fn for_test(hosts: usize) -> Option<Lab> {
        match Lab::check_prerequisites().and_then(|()| Lab::new(hosts)) {
            Ok(lab) => Some(lab),
            Err(error) => {
                if std::env::var(REQUIRED_ENV).is_ok_and(|value| value == "1") {
                    panic!("msd-lab: the lab cannot run and {REQUIRED_ENV}=1: {error}");
                }
                eprintln!("msd-lab: skipped: {error}");
                None
            }
        }
    }

    /// Checks that this process runs as root and that `ip` and `nft` can be started.
    ///
    /// # Errors
    ///
    /// Returns the first missing prerequisite.
    pub fn check_prerequisites() -> Result<(), LabError> {
        let euid = geteuid();
        if !euid.is_root() {
            return Err(LabError::NotRoot {
                euid: euid.as_raw(),
            });
        }
        command::run("ip", &["-V"])?;
        command::run("nft", &["--version"])?;
        Ok(())
    }

    /// Deletes the namespaces of labs whose process no longer runs, such as a test process
    /// that was killed, and returns their names.
    ///
    /// [`Lab::new`] does this once per process. Processes still inside those namespaces
    /// are killed first.
    ///
    /// # Errors
    ///
    /// Returns the first failing `ip` command.
    pub fn remove_stale_namespaces() -> Result<Vec<String>, LabError> {
        netns::sweep_stale()
    }

    /// Returns the prefix of the names of every namespace this process creates,
    /// `msdlab-<pid namespace>-<pid>-`.
    pub fn process_prefix() -> String {
        netns::own_prefix()
    }

    /// Returns the prefix shared by the names of this lab's namespaces,
    /// `msdlab-<pid namespace>-<pid>-<lab number>`.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Returns the name of the switch namespace, which contains the bridge.
    pub fn switch_name(&self) -> &str {
        &self.shared.switch
    }

    /// Returns the host at `index`.
    ///
    /// # Panics
    ///
    /// Panics when `index` is not below the number of hosts.
    pub fn host(&self, index: usize) -> &Host {
        self.hosts.get(index).unwrap_or_else(|| {
            panic!(
                "host index {index} is out of range, the lab has {} hosts",
                self.hosts.len()
            )
        })
    }

    /// Returns all hosts, in the order they were created.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Adds one more host to the bridge, for tests where a peer appears later.
    ///
    /// # Errors
    ///
    /// Returns an error when the lab already has [`MAX_HOSTS`] hosts or a setup command
    /// fails. The half-built host's namespace is deleted before this returns.
    pub fn add_host(&mut self) -> Result<&Host, LabError> {
        let index = self.hosts.len();
        if index >= MAX_HOSTS {
            return Err(LabError::TooManyHosts {
                requested: index + 1,
                max: MAX_HOSTS,
            });
        }

        let namespace = format!("{}-h{index}", self.shared.name);
        netns::add(&namespace)?;
        self.shared.register_namespace(namespace.clone());
        let interface = match self.configure_host(&namespace, index) {
            Ok(interface) => interface,
            Err(error) => {
                // Deleting the namespace also deletes its veth pair, so a later call can
                // reuse the index. If that fails, dropping the lab tries again.
                if netns::delete(&namespace).is_ok() {
                    self.shared.unregister_namespace(&namespace);
                }
                return Err(error);
            }
        };

        self.shared.topology().hosts.push(HostState {
            namespace: namespace.clone(),
            interfaces: vec![interface.clone()],
            udp_loss_percent: 0,
            filters_installed: false,
        });
        self.hosts.push(Host::new(
            index,
            namespace,
            interface,
            Arc::clone(&self.shared),
        ));
        Ok(self.host(index))
    }

    /// Prepares the new namespace of host `index` and attaches its `eth0` to the bridge.
    fn configure_host(&self, namespace: &str, index: usize) -> Result<Interface, LabError> {
        netns::write_sysctls(namespace, HOST_SYSCTLS)?;
        command::run("ip", &["-n", namespace, "link", "set", "lo", "up"])?;
        let ipv4 = self.shared.ipv4(host_octet(index));
        let port = format!("h{index}");
        host::attach_interface(&self.shared, namespace, "eth0", &port, ipv4)
    }

    fn create_switch(&self) -> Result<(), LabError> {
        let switch = &self.shared.switch;
        netns::add(switch)?;
        self.shared.register_namespace(switch.clone());
        netns::write_sysctls(switch, SWITCH_SYSCTLS)?;

        let add_bridge = [
            "-n",
            switch,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ];
        command::run("ip", &add_bridge)?;
        command::run("ip", &["-n", switch, "link", "set", BRIDGE, "up"])?;
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.shared.kill_children();
        // Hosts go first: deleting a host namespace also removes its port on the bridge.
        for namespace in self.shared.take_namespaces().iter().rev() {
            if let Err(error) = netns::delete(namespace) {
                eprintln!("msd-lab: failed to delete network namespace {namespace}: {error}");
            }
        }
    }
}

/// Last octet of the IPv4 address of host `index`.
fn host_octet(index: usize) -> u8 {
    u8::try_from(index + 1).unwrap_or(u8::MAX)
}

/// State shared by a lab, its hosts and its children.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Prefix of every namespace name, `msdlab-<pid namespace>-<pid>-<lab number>`.
    pub(crate) name: String,
    /// Name of the switch namespace.
    pub(crate) switch: String,
    /// Second and third octet of the lab's IPv4 subnet `10.x.y.0/24`.
    subnet: [u8; 2],
    /// Namespaces created so far, in creation order.
    namespaces: Mutex<Vec<String>>,
    /// Process ids of running children, by child id.
    children: Mutex<HashMap<u64, u32>>,
    next_child_id: AtomicU64,
    topology: Mutex<Topology>,
}

impl Shared {
    fn new(lab_number: u32) -> Shared {
        let pid = std::process::id();
        let name = format!("{}{lab_number}", netns::own_prefix());
        // Distinct for up to 65536 labs of one process. Labs never share a segment, so a
        // clash with a lab of another process is harmless.
        let [_, _, x, y] = pid
            .wrapping_mul(7919)
            .wrapping_add(lab_number)
            .to_be_bytes();
        Shared {
            switch: format!("{name}-sw"),
            name,
            subnet: [x, y],
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(HashMap::new()),
            next_child_id: AtomicU64::new(0),
            topology: Mutex::new(Topology::default()),
        }
    }

    /// Returns the address `10.x.y.<last_octet>` in the lab's subnet.
    pub(crate) fn ipv4(&self, last_octet: u8) -> Ipv4Addr {
        let [x, y] = self.subnet;
        Ipv4Addr::new(10, x, y, last_octet)
    }

    fn register_namespace(&self, namespace: String) {
        lock(&self.namespaces).push(namespace);
    }

    fn unregister_namespace(&self, namespace: &str) {
        lock(&self.namespaces).retain(|name| name != namespace);
    }

    fn take_namespaces(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.namespaces))
    }

    pub(crate) fn topology(&self) -> MutexGuard<'_, Topology> {
        lock(&self.topology)
    }

    /// Records a running child and returns the id to remove it with.
    pub(crate) fn register_child(&self, pid: u32) -> u64 {
        let id = self.next_child_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.children).insert(id, pid);
        id
    }

    /// Locks the child registry. A child holds the lock while it reaps its process, so the
    /// lab never signals a process id that was already reaped and may be reused.
    pub(crate) fn children(&self) -> MutexGuard<'_, HashMap<u64, u32>> {
        lock(&self.children)
    }

    /// Sends SIGKILL to every registered child and its process group.
    fn kill_children(&self) {
        for &pid in self.children().values() {
            kill_process_group(pid);
        }
    }
}

/// Sends SIGKILL to the process group led by `pid` and to `pid` itself, in case the
/// process moved to another group.
pub(crate) fn kill_process_group(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    // Either call fails harmlessly when the group or the process is already gone.
    let _ = killpg(Pid::from_raw(raw), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
}

/// Locks `mutex`, also after a thread panicked while holding it, because cleanup must
/// still run then.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Interfaces, loss settings and partitions of all hosts of a lab.
#[derive(Debug, Default)]
pub(crate) struct Topology {
    /// One entry per host, at the host's index.
    pub(crate) hosts: Vec<HostState>,
    /// Partitioned host pairs as `(lower index, higher index)`.
    pub(crate) partitions: BTreeSet<(usize, usize)>,
    /// Number of interfaces added with `Host::add_interface` so far.
    pub(crate) added_interfaces: usize,
}

#[derive(Debug)]
pub(crate) struct HostState {
    pub(crate) namespace: String,
    /// The lab interfaces of the host, `eth0` first.
    pub(crate) interfaces: Vec<Interface>,
    pub(crate) udp_loss_percent: u8,
    /// Whether the host namespace currently has the nftables table.
    pub(crate) filters_installed: bool,
}

impl Topology {
    pub(crate) fn host(&self, index: usize) -> &HostState {
        self.hosts
            .get(index)
            .expect("the topology has an entry for every host")
    }

    pub(crate) fn host_mut(&mut self, index: usize) -> &mut HostState {
        self.hosts
            .get_mut(index)
            .expect("the topology has an entry for every host")
    }

    /// Returns the hosts that host `index` is partitioned from.
    pub(crate) fn partition_peers(&self, index: usize) -> Vec<usize> {
        self.partitions
            .iter()
            .filter_map(|&(low, high)| {
                if low == index {
                    Some(high)
                } else if high == index {
                    Some(low)
                } else {
                    None
                }
            })
            .collect()
    }

    fn filter_state(&self, index: usize) -> FilterState {
        let blocked_macs = self
            .partition_peers(index)
            .into_iter()
            .flat_map(|peer| self.host(peer).interfaces.iter())
            .map(|interface| interface.mac.clone())
            .collect();
        FilterState {
            udp_loss_percent: self.host(index).udp_loss_percent,
            blocked_macs,
        }
    }

    /// Replaces the nftables table of host `index` with one that matches the topology.
    pub(crate) fn apply_filters(&mut self, index: usize) -> Result<(), LabError> {
        let state = self.filter_state(index);
        let host = self.host_mut(index);
        if state.is_empty() && !host.filters_installed {
            return Ok(());
        }

        let names: Vec<String> = host.interfaces.iter().map(|i| i.name.clone()).collect();
        let script = filter::ruleset(&names, &state);
        let args = ["netns", "exec", &host.namespace, "nft", "-f", "-"];
        command::run_with_input("ip", &args, Some(&script))?;
        host.filters_installed = !state.is_empty();
        Ok(())
    }
}
