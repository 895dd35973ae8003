//! A deterministic network simulator that drives many instances and discoverers at once.
//!
//! A [`Sim`] runs nodes, each an [`Instance`] or a [`Discoverer`], on one simulated network
//! segment. It owns a virtual clock and one seeded random number generator, so the same seed and
//! the same calls give the same packets, in the same order, at the same virtual instants. Tests use
//! it to check convergence, loss tolerance, crash detection and restarts over minutes or hours of
//! virtual time in seconds of real time.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use msd_engine::sim::Sim;
//! use msd_engine::{DiscovererConfig, InstanceConfig};
//! use msd_wire::GroupId;
//!
//! let group = GroupId::from_bytes([0x55; 14]);
//! let mut sim = Sim::new(7, Instant::now());
//! let discoverer = sim.add_discoverer(DiscovererConfig::new(group));
//! sim.add_instance(InstanceConfig::new(group, "deadbeef", "http://10.0.0.7:8080"))?;
//! sim.run_for(Duration::from_secs(1));
//! assert!(sim.discoverer(discoverer).instance("deadbeef").is_some());
//! # Ok::<(), msd_wire::EncodeError>(())
//! ```
//!
//! # Model
//!
//! - One segment: every node has one interface, [`SEGMENT`], and its own address on it. Node `i`
//!   has `fe80::` plus `i + 1` in its last 32 bits, scope 1 and port [`PORT`], so node 0 is
//!   `[fe80::1%1]:40000`. There is one node per host.
//! - Time is virtual. The simulator jumps to the earliest pending event: a node's deadline from
//!   `poll_timeout`, or the arrival of a packet. Engines take no time to process input, so a
//!   reply leaves at the instant its cause arrived. All nodes share one wall clock,
//!   [`START_UNIX_MS`] at the start instant, so there is no clock skew between them.
//! - A group packet is copied to every other running node on the segment. A unicast packet goes
//!   to the node that owns the destination address. Each copy is lost with the current loss
//!   probability, or else arrives after a latency drawn uniformly from the latency range, so
//!   copies of one group packet arrive at different instants.
//! - A partition drops every copy between its two sides, in both directions, until [`Sim::heal`].
//! - A packet's fate is decided when it is sent. Packets already in flight when the loss
//!   probability changes, or a partition starts or heals, keep their fate. Packets from a node
//!   that crashes afterwards still arrive. Packets that reach a stopped node are dropped.
//! - Each node's engine gets its `rng_seed` from the simulator's generator, which replaces the
//!   value in the configuration. Otherwise nodes with default configurations would draw the same
//!   heartbeat jitter and stay in step.
//!
//! # Limitations
//!
//! - Packets are reordered only through their random latency. That reorders two packets of one
//!   sender whenever they leave closer together than the latency spread, which happens far more
//!   often than on a real local network. There is no bandwidth limit, no queueing, no
//!   duplication, no corruption and no MTU.
//! - Loss is independent per copy, with no bursts.
//! - There is one interface per node and one segment, so multi-homed hosts and routing between
//!   segments are not modelled. Group membership takes effect at once, with no IGMP or MLD.
//! - Engine clocks never drift or jump.
//! - With [`Sim::set_instances_hear_instances`] turned off, group packets from instances reach
//!   only discoverers. That changes nothing but the instances' [`Stats`](crate::Stats), because
//!   an instance acts only on DISCOVER and PROBE, which instances never send.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msd_wire::EncodeError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{
    Destination, Discoverer, DiscovererConfig, Event, Instance, InstanceConfig, InterfaceIndex, Received, Transmit,
};

/// The interface index of the one simulated segment, the same on every node.
pub const SEGMENT: InterfaceIndex = InterfaceIndex(1);

/// The UDP port of every node.
pub const PORT: u16 = 40_000;

/// The wall clock of every node at the simulation's start instant, in milliseconds since the Unix
/// epoch (2027-01-15).
pub const START_UNIX_MS: u64 = 1_800_000_000_000;

/// Default range of the one-way latency of a packet: 0.1 to 2 ms, a busy local network.
pub const DEFAULT_LATENCY: RangeInclusive<Duration> = Duration::from_micros(100)..=Duration::from_millis(2);

/// Index of a node in a [`Sim`], in the order the nodes were added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(usize);

impl NodeId {
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Packet counts of the whole simulated network. One group packet counts once as sent and once
/// per receiving copy in the other counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Packets the engines sent.
    pub sent_packets: u64,
    /// Payload bytes the engines sent, without IP and UDP headers.
    pub sent_bytes: u64,
    /// Copies handed to a running engine.
    pub delivered: u64,
    /// Copies dropped by random loss.
    pub lost: u64,
    /// Copies dropped by a partition.
    pub blocked: u64,
    /// Copies with no running receiver: a unicast address no node owns, a group send out of an
    /// interface other than [`SEGMENT`], or a node that stopped while the copy was in flight.
    pub undeliverable: u64,
}

/// Packet counts of one node, over every engine that ran on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    pub sent_packets: u64,
    /// Payload bytes, without IP and UDP headers.
    pub sent_bytes: u64,
    pub received_packets: u64,
}

#[derive(Debug)]
enum Engine {
    Instance(Box<Instance>),
    Discoverer(Box<Discoverer>),
}

impl Engine {
    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Engine::Instance(instance) => instance.poll_timeout(),
            Engine::Discoverer(discoverer) => discoverer.poll_timeout(),
        }
    }
}

#[derive(Debug)]
struct Node {
    address: SocketAddr,
    engine: Engine,
    running: bool,
    /// The node's entry in [`Sim::timers`], if it has one.
    timer: Option<Instant>,
    events: Vec<(Instant, Event)>,
    traffic: NodeTraffic,
}

/// One copy of a packet on its way to one node.
#[derive(Debug)]
struct Flight {
    arrival: Instant,
    /// Send order, so that copies with the same arrival instant are delivered deterministically.
    order: u64,
    source: SocketAddr,
    to: NodeId,
    payload: Arc<[u8]>,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Flight {}

impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Flight {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.arrival, self.order).cmp(&(other.arrival, other.order))
    }
}

/// Two sets of nodes that cannot reach each other.
#[derive(Debug)]
struct Cut {
    a: BTreeSet<NodeId>,
    b: BTreeSet<NodeId>,
}

impl Cut {
    fn separates(&self, from: NodeId, to: NodeId) -> bool {
        (self.a.contains(&from) && self.b.contains(&to)) || (self.b.contains(&from) && self.a.contains(&to))
    }
}

/// A deterministic network of instances and discoverers on a virtual clock. The module
/// documentation describes the model and its limits.
///
/// Nodes added or changed through the simulator act at [`Sim::now`]. Time moves only in
/// [`Sim::run_until`], [`Sim::run_for`] and [`Sim::run_until_condition`].
#[derive(Debug)]
pub struct Sim {
    rng: StdRng,
    start: Instant,
    now: Instant,
    latency: RangeInclusive<Duration>,
    loss: f64,
    instances_hear_instances: bool,
    nodes: Vec<Node>,
    discoverers: Vec<NodeId>,
    by_address: HashMap<SocketAddr, NodeId>,
    /// Node deadlines, earliest first.
    timers: BTreeSet<(Instant, NodeId)>,
    in_flight: BinaryHeap<Reverse<Flight>>,
    next_flight: u64,
    cuts: Vec<Cut>,
    traffic: Traffic,
}

impl Sim {
    /// Creates an empty network whose virtual clock reads `start`, with no loss, the
    /// [`DEFAULT_LATENCY`] and `seed` for every random choice.
    pub fn new(seed: u64, start: Instant) -> Self {
        Sim {
            rng: StdRng::seed_from_u64(seed),
            start,
            now: start,
            latency: DEFAULT_LATENCY,
            loss: 0.0,
            instances_hear_instances: true,
            nodes: Vec::new(),
            discoverers: Vec::new(),
            by_address: HashMap::new(),
            timers: BTreeSet::new(),
            in_flight: BinaryHeap::new(),
            next_flight: 0,
            cuts: Vec::new(),
            traffic: Traffic::default(),
        }
    }

    /// Returns the virtual time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Returns the instant the simulation started at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Returns the virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Sets the probability that one copy of a packet is lost, for packets sent from now on.
    ///
    /// # Panics
    ///
    /// Panics unless `probability` is within `0.0..=1.0`.
    pub fn set_loss(&mut self, probability: f64) {
        assert!((0.0..=1.0).contains(&probability), "loss probability {probability} is outside 0.0..=1.0");
        self.loss = probability;
    }

    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Sets the range of one-way latencies, for packets sent from now on.
    ///
    /// # Panics
    ///
    /// Panics when the range is empty.
    pub fn set_latency(&mut self, latency: RangeInclusive<Duration>) {
        assert!(latency.start() <= latency.end(), "latency range {latency:?} is empty");
        self.latency = latency;
    }

    pub fn latency(&self) -> RangeInclusive<Duration> {
        self.latency.clone()
    }

    /// Sets whether group packets from instances reach other instances. Default: true.
    ///
    /// Instances act only on DISCOVER and PROBE, so turning this off changes nothing but their
    /// [`Stats`](crate::Stats). It saves the quadratic cost of every heartbeat reaching every instance,
    /// which large simulations cannot afford.
    pub fn set_instances_hear_instances(&mut self, enabled: bool) {
        self.instances_hear_instances = enabled;
    }

    /// Starts an instance on a new node, which announces itself at once.
    ///
    /// # Errors
    ///
    /// Fails like [`Instance::new`] when the configuration cannot be encoded.
    pub fn add_instance(&mut self, config: InstanceConfig) -> Result<NodeId, EncodeError> {
        let instance = self.start_instance(config)?;
        let node = self.push_node(Engine::Instance(Box::new(instance)));
        self.after_input(node);
        Ok(node)
    }

    /// Starts a discoverer on a new node, which sends its first DISCOVER at once.
    pub fn add_discoverer(&mut self, config: DiscovererConfig) -> NodeId {
        let discoverer = self.start_discoverer(config);
        let node = self.push_node(Engine::Discoverer(Box::new(discoverer)));
        self.discoverers.push(node);
        self.after_input(node);
        node
    }

    /// Stops a node silently, as a crash or a power cut would: no LOGOFF, no further packets, and
    /// packets that reach it are dropped. Its engine stays readable. Does nothing to a stopped
    /// node.
    pub fn crash(&mut self, node: NodeId) {
        self.node_mut(node).running = false;
        self.set_timer(node, None);
    }

    /// Stops a node gracefully: an instance sends its LOGOFF first. A discoverer sends nothing
    /// when it leaves, so for it this is the same as [`Sim::crash`].
    pub fn shutdown(&mut self, node: NodeId) {
        let now = self.now;
        let state = self.node_mut(node);
        if state.running {
            if let Engine::Instance(instance) = &mut state.engine {
                instance.shutdown(now);
            }
            self.after_input(node);
        }
        self.crash(node);
    }

    /// Replaces the engine of an instance node with a new one started from `config`, on the same
    /// address, as a restarted process would be. The old engine stops without a LOGOFF, so call
    /// [`Sim::shutdown`] first for a graceful restart. Packets the old engine sent that are still
    /// in flight arrive as usual. The configuration should carry a higher incarnation than the
    /// old one, as the msd runtime's would.
    ///
    /// # Errors
    ///
    /// Fails like [`Instance::new`], and the node is then left stopped.
    ///
    /// # Panics
    ///
    /// Panics when the node is a discoverer.
    pub fn restart_instance(&mut self, node: NodeId, config: InstanceConfig) -> Result<(), EncodeError> {
        assert!(matches!(self.node(node).engine, Engine::Instance(_)), "{node} is not an instance");
        self.crash(node);
        let instance = self.start_instance(config)?;
        let state = self.node_mut(node);
        state.engine = Engine::Instance(Box::new(instance));
        state.running = true;
        self.after_input(node);
        Ok(())
    }

    /// Replaces the engine of a discoverer node with a new one started from `config`, on the same
    /// address. The new engine starts with an empty table, and its events are appended to the
    /// node's log.
    ///
    /// # Panics
    ///
    /// Panics when the node is an instance.
    pub fn restart_discoverer(&mut self, node: NodeId, config: DiscovererConfig) {
        assert!(matches!(self.node(node).engine, Engine::Discoverer(_)), "{node} is not a discoverer");
        self.crash(node);
        let discoverer = self.start_discoverer(config);
        let state = self.node_mut(node);
        state.engine = Engine::Discoverer(Box::new(discoverer));
        state.running = true;
        self.after_input(node);
    }

    /// Calls `change` with an instance's engine and the virtual time, then sends what the engine
    /// queued, for commands such as [`Instance::set_health`].
    ///
    /// # Panics
    ///
    /// Panics when the node is a discoverer.
    pub fn update_instance<R>(&mut self, node: NodeId, change: impl FnOnce(&mut Instance, Instant) -> R) -> R {
        let now = self.now;
        let Engine::Instance(instance) = &mut self.node_mut(node).engine else {
            panic!("{node} is not an instance");
        };
        let result = change(instance, now);
        self.after_input(node);
        result
    }

    /// Cuts every path between a node of `a` and a node of `b`, in both directions, until
    /// [`Sim::heal`]. Paths within each side, and to nodes in neither, stay open.
    pub fn partition(&mut self, a: &[NodeId], b: &[NodeId]) {
        self.cuts.push(Cut { a: a.iter().copied().collect(), b: b.iter().copied().collect() });
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    /// Processes every deadline and arrival up to and including `deadline`, then sets the clock to
    /// it. Does nothing when `deadline` is already past.
    ///
    /// # Panics
    ///
    /// Panics when an engine's `poll_timeout` returns an instant no later than the one whose
    /// timeout it just handled, since the simulation could then never move on.
    pub fn run_until(&mut self, deadline: Instant) {
        while self.step(deadline) {}
        self.now = self.now.max(deadline);
    }

    /// Runs for `duration` of virtual time, like [`Sim::run_until`].
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(self.now + duration);
    }

    /// Runs until `condition` holds, checking it before the first event and after each one, but
    /// no further than `deadline`. Returns the virtual time at which it first held, or `None`
    /// with the clock at `deadline`.
    ///
    /// # Panics
    ///
    /// Panics like [`Sim::run_until`].
    pub fn run_until_condition(
        &mut self,
        deadline: Instant,
        mut condition: impl FnMut(&Sim) -> bool,
    ) -> Option<Instant> {
        loop {
            if condition(self) {
                return Some(self.now);
            }
            if !self.step(deadline) {
                self.now = self.now.max(deadline);
                return None;
            }
        }
    }

    /// Returns every node, in the order they were added.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len()).map(NodeId)
    }

    /// Returns the nodes that run instances.
    pub fn instances(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes().filter(|&node| matches!(self.node(node).engine, Engine::Instance(_)))
    }

    /// Returns the nodes that run discoverers.
    pub fn discoverers(&self) -> &[NodeId] {
        &self.discoverers
    }

    pub fn address(&self, node: NodeId) -> SocketAddr {
        self.node(node).address
    }

    /// Returns whether a node runs, that is, has not crashed or shut down since it last started.
    pub fn is_running(&self, node: NodeId) -> bool {
        self.node(node).running
    }

    /// Returns the current engine of an instance node.
    ///
    /// # Panics
    ///
    /// Panics when the node is a discoverer.
    pub fn instance(&self, node: NodeId) -> &Instance {
        match &self.node(node).engine {
            Engine::Instance(instance) => instance,
            Engine::Discoverer(_) => panic!("{node} is not an instance"),
        }
    }

    /// Returns the current engine of a discoverer node.
    ///
    /// # Panics
    ///
    /// Panics when the node is an instance.
    pub fn discoverer(&self, node: NodeId) -> &Discoverer {
        match &self.node(node).engine {
            Engine::Discoverer(discoverer) => discoverer,
            Engine::Instance(_) => panic!("{node} is not a discoverer"),
        }
    }

    /// Returns the events of every discoverer engine that ran on a node, with the virtual time
    /// each was emitted at, oldest first. Instance nodes have none.
    pub fn events(&self, node: NodeId) -> &[(Instant, Event)] {
        &self.node(node).events
    }

    pub fn traffic(&self) -> Traffic {
        self.traffic
    }

    pub fn node_traffic(&self, node: NodeId) -> NodeTraffic {
        self.node(node).traffic
    }

    /// Returns the number of packet copies on their way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn node(&self, node: NodeId) -> &Node {
        self.nodes.get(node.0).unwrap_or_else(|| panic!("{node} does not exist"))
    }

    fn node_mut(&mut self, node: NodeId) -> &mut Node {
        self.nodes.get_mut(node.0).unwrap_or_else(|| panic!("{node} does not exist"))
    }

    fn unix_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.elapsed().as_millis()).unwrap_or(u64::MAX);
        START_UNIX_MS.saturating_add(elapsed)
    }

    fn start_instance(&mut self, config: InstanceConfig) -> Result<Instance, EncodeError> {
        let config = InstanceConfig { rng_seed: self.rng.random(), ..config };
        let mut instance = Instance::new(config, self.now, self.unix_ms())?;
        instance.add_interface(self.now, SEGMENT);
        Ok(instance)
    }

    fn start_discoverer(&mut self, config: DiscovererConfig) -> Discoverer {
        let config = DiscovererConfig { rng_seed: self.rng.random(), ..config };
        let mut discoverer = Discoverer::new(config, self.now, self.unix_ms());
        discoverer.add_interface(self.now, SEGMENT);
        discoverer
    }

    fn push_node(&mut self, engine: Engine) -> NodeId {
        let node = NodeId(self.nodes.len());
        let address = node_address(node);
        self.by_address.insert(address, node);
        self.nodes.push(Node {
            address,
            engine,
            running: true,
            timer: None,
            events: Vec::new(),
            traffic: NodeTraffic::default(),
        });
        node
    }

    /// Handles the earliest arrival or deadline if it is due by `limit`, and returns whether there
    /// was one. An arrival goes before a deadline at the same instant.
    fn step(&mut self, limit: Instant) -> bool {
        let next_arrival = self.in_flight.peek().map(|Reverse(flight)| flight.arrival);
        let next_timer = self.timers.first().copied();
        let arrival_first = match (next_arrival, next_timer) {
            (Some(arrival), Some((deadline, _))) => arrival <= deadline,
            (Some(_), None) => true,
            (None, _) => false,
        };

        if arrival_first {
            if next_arrival.is_none_or(|arrival| arrival > limit) {
                return false;
            }
            let Some(Reverse(flight)) = self.in_flight.pop() else { return false };
            self.now = self.now.max(flight.arrival);
            self.deliver(flight);
            return true;
        }

        let Some((deadline, node)) = next_timer.filter(|&(deadline, _)| deadline <= limit) else {
            return false;
        };
        self.timers.remove(&(deadline, node));
        self.node_mut(node).timer = None;
        self.now = self.now.max(deadline);
        self.fire(node);
        true
    }

    fn deliver(&mut self, flight: Flight) {
        let now = self.now;
        let state = self.node_mut(flight.to);
        if !state.running {
            self.traffic.undeliverable += 1;
            return;
        }
        let datagram = Received { source: flight.source, interface: SEGMENT, payload: &flight.payload };
        match &mut state.engine {
            Engine::Instance(instance) => instance.handle_datagram(now, datagram),
            Engine::Discoverer(discoverer) => discoverer.handle_datagram(now, datagram),
        }
        state.traffic.received_packets += 1;
        self.traffic.delivered += 1;
        self.after_input(flight.to);
    }

    fn fire(&mut self, node: NodeId) {
        let now = self.now;
        let state = self.node_mut(node);
        match &mut state.engine {
            Engine::Instance(instance) => instance.handle_timeout(now),
            Engine::Discoverer(discoverer) => discoverer.handle_timeout(now),
        }
        if let Some(next) = state.engine.poll_timeout().filter(|&next| next <= now) {
            panic!(
                "{node} returned the deadline {next:?} after handling its timeout at {now:?}, so time cannot advance"
            );
        }
        self.after_input(node);
    }

    /// Collects what a node's engine queued: records its events, sends its packets and moves its
    /// timer to the engine's next deadline. A stopped node's packets are discarded.
    fn after_input(&mut self, node: NodeId) {
        let now = self.now;
        let state = self.node_mut(node);
        let mut transmits = Vec::new();
        match &mut state.engine {
            Engine::Instance(instance) => transmits.extend(std::iter::from_fn(|| instance.poll_transmit())),
            Engine::Discoverer(discoverer) => {
                transmits.extend(std::iter::from_fn(|| discoverer.poll_transmit()));
                state.events.extend(std::iter::from_fn(|| discoverer.poll_event()).map(|event| (now, event)));
            }
        }
        let running = state.running;
        let deadline = if running { state.engine.poll_timeout() } else { None };
        self.set_timer(node, deadline);
        if running {
            for transmit in transmits {
                self.send(node, transmit);
            }
        }
    }

    fn set_timer(&mut self, node: NodeId, deadline: Option<Instant>) {
        let now = self.now;
        let state = self.node_mut(node);
        // A deadline already past is due at once.
        let deadline = deadline.map(|deadline| deadline.max(now));
        let previous = std::mem::replace(&mut state.timer, deadline);
        if previous == deadline {
            return;
        }
        if let Some(previous) = previous {
            self.timers.remove(&(previous, node));
        }
        if let Some(deadline) = deadline {
            self.timers.insert((deadline, node));
        }
    }

    fn send(&mut self, from: NodeId, transmit: Transmit) {
        let size = u64::try_from(transmit.payload.len()).unwrap_or(u64::MAX);
        self.traffic.sent_packets += 1;
        self.traffic.sent_bytes += size;
        let state = self.node_mut(from);
        state.traffic.sent_packets += 1;
        state.traffic.sent_bytes += size;
        let source = state.address;
        let from_instance = matches!(state.engine, Engine::Instance(_));
        let payload: Arc<[u8]> = transmit.payload.into();

        match transmit.destination {
            Destination::Group { interface } if interface != SEGMENT => self.traffic.undeliverable += 1,
            Destination::Group { .. } => {
                let receivers: Vec<NodeId> = if from_instance && !self.instances_hear_instances {
                    self.discoverers.clone()
                } else {
                    self.nodes().collect()
                };
                for to in receivers.into_iter().filter(|&to| to != from) {
                    self.send_copy(from, to, source, Arc::clone(&payload));
                }
            }
            Destination::Unicast(address) => match self.by_address.get(&address) {
                Some(&to) => self.send_copy(from, to, source, payload),
                None => self.traffic.undeliverable += 1,
            },
        }
    }

    /// Decides the fate of one copy: blocked by a partition, lost, or in flight with a random
    /// latency.
    fn send_copy(&mut self, from: NodeId, to: NodeId, source: SocketAddr, payload: Arc<[u8]>) {
        if self.cuts.iter().any(|cut| cut.separates(from, to)) {
            self.traffic.blocked += 1;
            return;
        }
        if self.rng.random_bool(self.loss) {
            self.traffic.lost += 1;
            return;
        }
        let latency = self.rng.random_range(self.latency.clone());
        let order = self.next_flight;
        self.next_flight += 1;
        self.in_flight.push(Reverse(Flight { arrival: self.now + latency, order, source, to, payload }));
    }
}

/// Returns the address of a node: `[fe80::<index + 1>%1]:40000`.
fn node_address(node: NodeId) -> SocketAddr {
    let host = u32::try_from(node.0 + 1).unwrap_or(u32::MAX);
    let (high, low) = ((host >> 16) as u16, (host & 0xffff) as u16);
    let ip = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, high, low);
    SocketAddr::V6(SocketAddrV6::new(ip, PORT, 0, SEGMENT.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_are_distinct_and_scoped() {
        let first = node_address(NodeId(0));
        let far = node_address(NodeId(70_000));
        assert_eq!(first.to_string(), "[fe80::1%1]:40000");
        assert_eq!(far.to_string(), "[fe80::1:1171%1]:40000");
    }

    #[test]
    #[expect(clippy::disallowed_methods, reason = "any instant serves as the origin")]
    fn flights_order_by_arrival_then_send_order() {
        let source = node_address(NodeId(0));
        let at = Instant::now();
        let flight = |arrival, order| Flight { arrival, order, source, to: NodeId(1), payload: Arc::from(&[][..]) };
        let mut heap = BinaryHeap::new();
        heap.push(Reverse(flight(at + Duration::from_millis(2), 0)));
        heap.push(Reverse(flight(at + Duration::from_millis(1), 2)));
        heap.push(Reverse(flight(at + Duration::from_millis(1), 1)));
        let orders: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|Reverse(flight)| flight.order)).collect();
        assert_eq!(orders, [1, 2, 0]);
    }
}
