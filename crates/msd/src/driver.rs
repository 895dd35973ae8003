//! The task that owns one engine and its sockets.
//!
//! One loop waits on the two sockets, the engine's next deadline, the interface rescan timer and
//! the command channel from the handle. After every step it sends what the engine queued.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use msd_engine::{Destination, InterfaceIndex, Received, Transmit};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, trace, warn};

use crate::net::interfaces::{self, InterfaceState};
use crate::net::socket::{self, RECEIVE_BUFFER};
use crate::net::{InterfaceSelection, NetworkConfig};
use crate::{Error, IpVersion};

/// Datagrams read from one socket before the loop looks at its other inputs again.
const RECEIVE_BATCH: usize = 64;

/// Shortest gap between two warnings about failed sends.
const SEND_WARNING_GAP: Duration = Duration::from_secs(10);

/// The engine interface the driver needs; implemented for instances and discoverers.
pub(crate) trait Machine: Send + 'static {
    /// Whether the machine acts only on DISCOVERs and PROBEs from the group, so the group socket
    /// can drop everything else in the kernel.
    const HEARS_ONLY_DISCOVERS: bool = false;

    fn add_interface(&mut self, now: Instant, interface: InterfaceIndex);
    fn remove_interface(&mut self, interface: InterfaceIndex);
    fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// Called after every step, to publish events.
    fn after_step(&mut self) {}
}

pub(crate) type Job<M> = Box<dyn FnOnce(&mut M, Instant) + Send>;

/// A driver ready to run, the channel to command it, and the state its handle reads.
pub(crate) type Prepared<M> = (Driver<M>, mpsc::Sender<Command<M>>, Arc<Shared>);

pub(crate) enum Command<M> {
    /// Runs a closure on the engine.
    Run(Job<M>),
    /// Runs a closure on the engine, sends what it queued, leaves the group and stops.
    Shutdown(Job<M>, oneshot::Sender<()>),
}

/// State the handle reads without asking the task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The interfaces in use, with their IPv4 address, for the best-effort logoff on drop.
    pub(crate) interfaces: Mutex<Vec<(InterfaceIndex, Option<Ipv4Addr>)>>,
    /// Set when the handle is gone; the task sends nothing after seeing it.
    pub(crate) stopping: AtomicBool,
    /// A duplicate of the private socket, for the best-effort LOGOFF of a dropped handle. It was
    /// opened with the engine, so it sends in the right network namespace whichever thread drops
    /// the handle.
    pub(crate) farewell: Mutex<Option<socket2::Socket>>,
    pub(crate) counters: DriverCounters,
}

/// Counts of what the driver dropped or failed to do.
#[derive(Debug, Default)]
pub(crate) struct DriverCounters {
    pub(crate) truncated: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) receive_errors: AtomicU64,
    pub(crate) foreign_interface: AtomicU64,
    pub(crate) off_link: AtomicU64,
    /// The kernel's count of datagrams dropped because a socket's receive queue was full, as
    /// last reported with a datagram of that socket.
    pub(crate) group_queue_drops: AtomicU64,
    pub(crate) private_queue_drops: AtomicU64,
}

pub(crate) struct Driver<M> {
    machine: M,
    network: NetworkConfig,
    group: IpAddr,
    selection: InterfaceSelection,
    group_socket: UdpSocket,
    private_socket: UdpSocket,
    active: BTreeMap<InterfaceIndex, InterfaceState>,
    /// Interfaces already reported as skipped, with the reason, so each is logged once.
    reported: BTreeSet<(String, &'static str)>,
    commands: mpsc::Receiver<Command<M>>,
    shared: Arc<Shared>,
    role: &'static str,
    last_send_warning: Option<Instant>,
}

/// Opens the sockets and joins the interfaces available now, so that setup errors reach the
/// caller of `start` rather than the log.
pub(crate) fn prepare<M: Machine>(machine: M, network: NetworkConfig, role: &'static str) -> Result<Prepared<M>, Error> {
    let selection = network.resolve()?;
    let group_socket = socket::group_socket(network.ip, network.port)?;
    if M::HEARS_ONLY_DISCOVERS {
        // Only a saving: without the filter the engine drops the same datagrams itself.
        if let Err(error) = socket::keep_only_discovers(&group_socket) {
            debug!(%error, "could not attach the group socket filter; heartbeats of the group are dropped in user space");
        }
    }
    let private_socket = socket::private_socket(network.ip)?;
    let (sender, commands) = mpsc::channel(64);
    let shared = Arc::new(Shared::default());
    if let Ok(mut farewell) = shared.farewell.lock() {
        *farewell = socket2::SockRef::from(&private_socket).try_clone().ok();
    }
    let mut driver = Driver {
        machine,
        group: network.group_address(),
        network,
        selection,
        group_socket,
        private_socket,
        active: BTreeMap::new(),
        reported: BTreeSet::new(),
        commands,
        shared: Arc::clone(&shared),
        role,
        last_send_warning: None,
    };
    driver.rescan(now());
    Ok((driver, sender, shared))
}

/// Returns the names of the interfaces in use, for logs.
pub(crate) fn interface_names(shared: &Shared) -> Vec<String> {
    let interfaces = shared.interfaces.lock().map(|list| list.clone()).unwrap_or_default();
    interfaces.iter().map(|(index, _)| crate::interface_name(*index).unwrap_or_else(|| format!("#{index}"))).collect()
}

pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Returns the wall clock in milliseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn unix_millis() -> u64 {
    u64::try_from(unix_duration().as_millis()).unwrap_or(u64::MAX)
}

/// Returns the wall clock in microseconds since the Unix epoch; 0 if the clock is before it.
pub(crate) fn unix_micros() -> u64 {
    u64::try_from(unix_duration().as_micros()).unwrap_or(u64::MAX)
}

fn unix_duration() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

impl<M: Machine> Driver<M> {
    pub(crate) async fn run(mut self) {
        log_start(self.role, &self.network, self.group);
        let mut rescan = tokio::time::interval(self.network.rescan_interval);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buffer = vec![0u8; RECEIVE_BUFFER];
        loop {
            self.machine.after_step();
            self.flush().await;
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Run(job)) => job(&mut self.machine, now()),
                    Some(Command::Shutdown(job, reply)) => {
                        job(&mut self.machine, now());
                        self.machine.after_step();
                        self.flush().await;
                        self.leave_all();
                        let _ = reply.send(());
                        debug!(role = self.role, "stopped");
                        return;
                    }
                    None => {
                        self.leave_all();
                        debug!(role = self.role, "handle dropped, stopped");
                        return;
                    }
                },
                ready = self.group_socket.readable() => {
                    if ready.is_ok() {
                        let drops = &self.shared.counters.group_queue_drops;
                        receive_batch(&self.group_socket, drops, &mut buffer, &mut self.machine, &self.shared, &self.active);
                    }
                }
                ready = self.private_socket.readable() => {
                    if ready.is_ok() {
                        let drops = &self.shared.counters.private_queue_drops;
                        receive_batch(&self.private_socket, drops, &mut buffer, &mut self.machine, &self.shared, &self.active);
                    }
                }
                () = sleep_until(deadline) => self.machine.handle_timeout(now()),
                _ = rescan.tick() => self.rescan(now()),
            }
        }
    }

    /// Sends everything the engine queued.
    async fn flush(&mut self) {
        while let Some(transmit) = self.machine.poll_transmit() {
            if self.shared.stopping.load(Ordering::Acquire) {
                continue;
            }
            let Some(destination) = self.resolve(transmit.destination) else {
                trace!(?transmit.destination, "dropped transmit to an interface no longer in use");
                continue;
            };
            let result = tokio::time::timeout(
                Duration::from_secs(1),
                self.private_socket.send_to(&transmit.payload, destination),
            )
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "send timed out")));
            match result {
                Ok(_) => trace!(%destination, len = transmit.payload.len(), "sent"),
                Err(error) => {
                    let count = self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed) + 1;
                    // At most one warning per ten seconds, with the running count, so a dead link
                    // or a flood of requests from bad addresses cannot flood the log.
                    let now = Instant::now();
                    if self.last_send_warning.is_none_or(|last| now.duration_since(last) >= SEND_WARNING_GAP) {
                        self.last_send_warning = Some(now);
                        warn!(role = self.role, %destination, %error, count, "send failed");
                    }
                }
            }
        }
    }

    /// Turns an engine destination into a socket address, setting the IPv4 multicast interface
    /// when needed.
    fn resolve(&self, destination: Destination) -> Option<SocketAddr> {
        match destination {
            Destination::Unicast(address) => Some(address),
            Destination::Group { interface } => {
                let state = self.active.get(&interface)?;
                if let (IpVersion::V4, Some(address)) = (self.network.ip, state.ipv4) {
                    if let Err(error) = socket::set_ipv4_multicast_interface(&self.private_socket, address) {
                        debug!(interface = %state.name, %error, "failed to set the IPv4 multicast interface");
                        return None;
                    }
                }
                Some(socket::group_destination(self.group, self.network.port, interface))
            }
        }
    }

    /// Joins interfaces that became usable and leaves those that went away.
    fn rescan(&mut self, now: Instant) {
        let all = match interfaces::scan() {
            Ok(all) => all,
            Err(error) => {
                warn!(role = self.role, %error, "failed to list network interfaces");
                return;
            }
        };
        self.report_skipped(&all);
        let wanted = interfaces::select(&all, &self.selection, self.network.ip);

        let gone: Vec<InterfaceIndex> =
            self.active.keys().filter(|index| !wanted.contains_key(index)).copied().collect();
        for index in gone {
            if let Some(state) = self.active.remove(&index) {
                let _ = socket::leave(&self.group_socket, self.group, index);
                self.machine.remove_interface(index);
                debug!(role = self.role, interface = %state.name, "left interface");
            }
        }

        for (index, state) in wanted {
            if let Some(known) = self.active.get_mut(&index) {
                // The IPv4 address may have changed; the membership stays.
                *known = state;
                continue;
            }
            match socket::join(&self.group_socket, self.group, index) {
                Ok(()) => {
                    debug!(role = self.role, interface = %state.name, group = %self.group, "joined interface");
                    self.active.insert(index, state);
                    self.machine.add_interface(now, index);
                }
                Err(error) if error.raw_os_error() == Some(nix::libc::EADDRINUSE) => {
                    // Already a member, from before the interface went down and came back.
                    self.active.insert(index, state);
                    self.machine.add_interface(now, index);
                }
                Err(error) => {
                    if self.reported.insert((state.name.clone(), "join failed")) {
                        warn!(role = self.role, interface = %state.name, %error, "failed to join the group");
                    }
                }
            }
        }

        let snapshot = self.active.values().map(|state| (state.index, state.ipv4)).collect();
        if let Ok(mut interfaces) = self.shared.interfaces.lock() {
            *interfaces = snapshot;
        }
    }

    fn report_skipped(&mut self, all: &BTreeMap<InterfaceIndex, InterfaceState>) {
        for state in all.values() {
            let selected = match &self.selection {
                InterfaceSelection::All => !state.loopback,
                InterfaceSelection::Named(names) => names.contains(&state.name),
            };
            if !selected || state.usable(self.network.ip) {
                continue;
            }
            let reason = state.unusable_reason(self.network.ip);
            if self.reported.insert((state.name.clone(), reason)) {
                debug!(role = self.role, interface = %state.name, reason, "skipped interface");
            }
        }
    }

    fn leave_all(&mut self) {
        for index in self.active.keys() {
            let _ = socket::leave(&self.group_socket, self.group, *index);
        }
    }
}

fn log_start(role: &'static str, network: &NetworkConfig, group: IpAddr) {
    debug!(role, group_id = %network.group, %group, port = network.port, "started");
}

/// Reads up to [`RECEIVE_BATCH`] waiting datagrams from `socket` into the engine. Datagrams
/// that arrived on an interface not in use, or from a sender that is not on that interface's
/// link, are dropped and counted: the sockets are bound to the wildcard address, so the kernel
/// delivers unicast from every interface.
fn receive_batch<M: Machine>(
    socket: &UdpSocket,
    queue_drops: &AtomicU64,
    buffer: &mut [u8],
    machine: &mut M,
    shared: &Shared,
    active: &BTreeMap<InterfaceIndex, InterfaceState>,
) {
    for _ in 0..RECEIVE_BATCH {
        let received = socket.try_io(Interest::READABLE, || socket::receive(socket, buffer));
        let datagram = match received {
            Ok(datagram) => datagram,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => return,
            Err(error) => {
                shared.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
                debug!(%error, "receive failed");
                return;
            }
        };
        if let Some(count) = datagram.queue_drops {
            if queue_drops.swap(u64::from(count), Ordering::Relaxed) < u64::from(count) {
                debug!(dropped = count, "receive queue overflowed; the kernel dropped datagrams");
            }
        }
        if datagram.truncated {
            shared.counters.truncated.fetch_add(1, Ordering::Relaxed);
            debug!(source = %datagram.source, "dropped datagram larger than the receive buffer");
            continue;
        }
        let Some(interface) = datagram.interface else {
            shared.counters.receive_errors.fetch_add(1, Ordering::Relaxed);
            debug!(source = %datagram.source, "dropped datagram without packet information");
            continue;
        };
        let Some(state) = active.get(&interface) else {
            shared.counters.foreign_interface.fetch_add(1, Ordering::Relaxed);
            trace!(source = %datagram.source, %interface, "dropped datagram from an interface not in use");
            continue;
        };
        if !state.on_link(datagram.source.ip()) || datagram.source.port() == 0 {
            shared.counters.off_link.fetch_add(1, Ordering::Relaxed);
            trace!(source = %datagram.source, interface = %state.name, "dropped datagram from off the link");
            continue;
        }
        let payload = buffer.get(..datagram.len).unwrap_or_default();
        machine.handle_datagram(now(), Received { source: datagram.source, interface, payload });
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// Sends `payloads` to the group on every interface, from the duplicate of the private socket
/// made at start. Used when a handle is dropped without `shutdown`, where no task may be left to
/// send them. Sends that would block are skipped: this is best effort.
pub(crate) fn send_best_effort(network: &NetworkConfig, shared: &Shared, payloads: &[Vec<u8>]) {
    let interfaces = shared.interfaces.lock().map(|list| list.clone()).unwrap_or_default();
    let Ok(farewell) = shared.farewell.lock() else { return };
    let Some(socket) = farewell.as_ref() else { return };
    let group = network.group_address();
    for (index, ipv4) in interfaces {
        if let (IpVersion::V4, Some(address)) = (network.ip, ipv4) {
            if socket.set_multicast_if_v4(&address).is_err() {
                continue;
            }
        }
        let destination = socket::group_destination(group, network.port, index);
        for payload in payloads {
            let _ = socket.send_to(payload, &destination.into());
        }
    }
}
