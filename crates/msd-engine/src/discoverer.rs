use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use msd_wire::seed::{SeedHost, SeedKind, SeedPacket};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, trace};

use crate::schedule::Backoff;
use crate::{
    Destination, DownReason, Event, InstanceInfo, InterfaceIndex, Protocol, Received, Stats,
    Transmit,
};

/// Settings of a [`Discoverer`]. `docs/defaults.md` explains each default.
#[derive(Debug, Clone)]
pub struct DiscovererConfig {
    /// DISCOVER rounds sent right after start, so that one lost packet costs little. Default 3.
    pub startup_discovers: u32,
    /// Gap before the second startup round; each later gap doubles. Default 250 ms.
    pub startup_discover_spacing: Duration,
    /// Gap between periodic DISCOVER rounds after startup. Default 20 s.
    pub discover_interval: Duration,
    /// Silence after which an instance is suspected and probed. Default 65 s: more than three
    /// discover intervals, so an instance survives two lost rounds before it is even probed.
    pub expire_after: Duration,
    /// Direct (unicast) DISCOVERs sent to a suspected instance before it is expired. Default 3.
    pub probes: u32,
    /// Gap between probes, and the wait after the last one. Default 300 ms.
    pub probe_interval: Duration,
    /// Maximum instances tracked; announcements of further ids are dropped and counted as
    /// `instance_limit`. Default 10,000.
    pub max_instances: NonZeroUsize,
    /// Seed of the random number generator, so that runs can be replayed.
    pub rng_seed: u64,
}

impl Default for DiscovererConfig {
    fn default() -> Self {
        DiscovererConfig {
            startup_discovers: 3,
            startup_discover_spacing: Duration::from_millis(250),
            discover_interval: Duration::from_secs(20),
            expire_after: Duration::from_secs(65),
            probes: 3,
            probe_interval: Duration::from_millis(300),
            max_instances: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            rng_seed: 0,
        }
    }
}

impl DiscovererConfig {
    /// Returns the longest time between an instance's last packet and its removal when it
    /// crashed: `expire_after + probes × probe_interval`.
    pub fn crash_detection_bound(&self) -> Duration {
        self.expire_after + self.probe_interval * self.probes
    }
}

#[derive(Debug)]
struct Entry {
    info: InstanceInfo,
    /// Unique per entry, so that two entries with the same deadline have distinct index keys.
    serial: u64,
    deadline: Instant,
    /// Probes sent since the instance was last heard.
    probes_sent: u32,
}

/// The sans-IO discoverer: keeps the table of live instances of one group.
///
/// Call order: create it with [`Discoverer::new`], tell it about interfaces with
/// [`Discoverer::add_interface`], then feed it datagrams with [`Discoverer::handle_datagram`] and
/// call [`Discoverer::handle_timeout`] whenever the instant from [`Discoverer::poll_timeout`] has
/// passed. After every call, drain [`Discoverer::poll_transmit`] and [`Discoverer::poll_event`].
/// `now` must never go backwards between calls.
#[derive(Debug)]
pub struct Discoverer {
    config: DiscovererConfig,
    #[expect(dead_code, reason = "reserved for answer jitter of later protocol versions")]
    rng: StdRng,
    interfaces: BTreeSet<InterfaceIndex>,
    entries: HashMap<String, Entry>,
    /// Deadlines of all entries, earliest first.
    deadlines: BTreeMap<(Instant, u64), String>,
    next_serial: u64,
    discover_schedule: Backoff,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Discoverer {
    pub fn new(config: DiscovererConfig, now: Instant) -> Self {
        let discover_schedule = Backoff::new(
            now,
            config.startup_discovers,
            config.startup_discover_spacing,
            config.discover_interval,
        );
        Discoverer {
            rng: StdRng::seed_from_u64(config.rng_seed),
            config,
            interfaces: BTreeSet::new(),
            entries: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_serial: 0,
            discover_schedule,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &DiscovererConfig {
        &self.config
    }

    /// Starts listening on an interface and sends a DISCOVER out of it at once.
    pub fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        let added = self.interfaces.insert(interface);
        let round_sent = self.send_due_discovers(now);
        if added {
            debug!(%interface, "discoverer interface added");
            if !round_sent {
                self.queue_discover(interface);
            }
        }
        self.handle_timeout(now);
    }

    /// Stops sending on an interface. Instances heard there stay until they expire.
    pub fn remove_interface(&mut self, interface: InterfaceIndex) {
        if self.interfaces.remove(&interface) {
            debug!(%interface, "discoverer interface removed");
        }
    }

    pub fn interfaces(&self) -> impl Iterator<Item = InterfaceIndex> + '_ {
        self.interfaces.iter().copied()
    }

    /// Processes one datagram. Invalid datagrams are counted in [`Stats::rejected`] and change
    /// nothing else.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        let packet = match SeedPacket::decode(datagram.payload) {
            Ok(packet) => packet,
            Err(error) => {
                self.stats.reject(error.kind());
                debug!(source = %datagram.source, %error, "dropped invalid datagram");
                return;
            }
        };
        self.stats.received.count(packet.kind);
        trace!(source = %datagram.source, kind = ?packet.kind, "received");

        match (packet.kind, packet.host) {
            (SeedKind::Announce, Some(host)) => self.upsert(now, host, &datagram),
            (SeedKind::Logoff, Some(host)) => self.remove(host.id, DownReason::Logoff),
            (SeedKind::Announce | SeedKind::Logoff, None) => {
                self.stats.reject("no_host");
                debug!(source = %datagram.source, "dropped announce or logoff without a host");
            }
            (SeedKind::Discover | SeedKind::Other(_), _) => {}
        }
    }

    /// Sends DISCOVERs that are due and probes or expires overdue instances.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.send_due_discovers(now);

        while let Some((&(deadline, serial), _)) = self.deadlines.first_key_value() {
            if deadline > now {
                break;
            }
            let Some((_, id)) = self.deadlines.pop_first() else { break };
            self.handle_overdue(now, id, serial);
        }
    }

    /// Returns the next instant at which [`Discoverer::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let next_deadline = self.deadlines.first_key_value().map(|(&(deadline, _), _)| deadline);
        let next_discover = (!self.interfaces.is_empty()).then(|| self.discover_schedule.next());
        [next_deadline, next_discover].into_iter().flatten().min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Returns the live instances, in no particular order.
    pub fn instances(&self) -> impl Iterator<Item = &InstanceInfo> + '_ {
        self.entries.values().map(|entry| &entry.info)
    }

    pub fn instance(&self, id: &str) -> Option<&InstanceInfo> {
        self.entries.get(id).map(|entry| &entry.info)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn upsert(&mut self, now: Instant, host: SeedHost<'_>, datagram: &Received<'_>) {
        let deadline = now + self.config.expire_after;
        if let Some(entry) = self.entries.get_mut(host.id) {
            let previous = (entry.info.url != host.url).then(|| entry.info.clone());
            entry.info.url.replace_range(.., host.url);
            entry.info.last_seen = now;
            entry.info.source = datagram.source;
            entry.info.interface = datagram.interface;
            entry.probes_sent = 0;
            let old_key = (entry.deadline, entry.serial);
            entry.deadline = deadline;
            let new_key = (deadline, entry.serial);
            if let Some(previous) = previous {
                debug!(id = host.id, url = host.url, "instance changed");
                self.events.push_back(Event::Changed { previous, current: entry.info.clone() });
            }
            if let Some(id) = self.deadlines.remove(&old_key) {
                self.deadlines.insert(new_key, id);
            }
            return;
        }

        if self.entries.len() >= self.config.max_instances.get() {
            self.stats.reject("instance_limit");
            debug!(id = host.id, source = %datagram.source, "dropped announce: instance limit reached");
            return;
        }
        let info = InstanceInfo {
            id: host.id.to_owned(),
            url: host.url.to_owned(),
            protocol: Protocol::Seed,
            interface: datagram.interface,
            source: datagram.source,
            first_seen: now,
            last_seen: now,
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        debug!(id = host.id, url = host.url, source = %datagram.source, "instance up");
        self.deadlines.insert((deadline, serial), info.id.clone());
        self.events.push_back(Event::Up(info.clone()));
        self.entries.insert(info.id.clone(), Entry { info, serial, deadline, probes_sent: 0 });
    }

    fn remove(&mut self, id: &str, reason: DownReason) {
        let Some(entry) = self.entries.remove(id) else { return };
        self.deadlines.remove(&(entry.deadline, entry.serial));
        debug!(id, %reason, "instance down");
        self.events.push_back(Event::Down { instance: entry.info, reason });
    }

    fn handle_overdue(&mut self, now: Instant, id: String, serial: u64) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        if entry.serial != serial {
            return;
        }
        if entry.probes_sent >= self.config.probes {
            self.remove(&id, DownReason::Expired);
            return;
        }
        entry.probes_sent += 1;
        entry.deadline = now + self.config.probe_interval;
        let source = entry.info.source;
        trace!(id = %id, %source, probe = entry.probes_sent, "probing overdue instance");
        self.deadlines.insert((entry.deadline, serial), id);
        self.queue(Destination::Unicast(source), SeedPacket::DISCOVER);
    }

    /// Sends the DISCOVER rounds that are due on every interface; returns whether any was.
    fn send_due_discovers(&mut self, now: Instant) -> bool {
        let mut sent = false;
        while self.discover_schedule.due(now) {
            let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
            for interface in interfaces {
                self.queue_discover(interface);
            }
            self.discover_schedule.advance();
            sent = true;
        }
        sent
    }

    fn queue_discover(&mut self, interface: InterfaceIndex) {
        self.queue(Destination::Group { interface }, SeedPacket::DISCOVER);
    }

    fn queue(&mut self, destination: Destination, packet: SeedPacket<'_>) {
        // DISCOVER has no variable fields, so encoding cannot fail.
        let Ok(payload) = packet.to_vec() else { return };
        self.stats.sent.count(packet.kind);
        self.transmits.push_back(Transmit { destination, payload });
    }
}
