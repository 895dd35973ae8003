use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use msd_wire::keys::KeyRing;
use msd_wire::native::{Health, NativeKind, NativePacket, Verify};
use msd_wire::seed::{SeedHost, SeedKind, SeedPacket};
use msd_wire::{GroupId, Packet};
use tracing::{debug, trace};

use crate::clock::WallClock;
use crate::ratelimit::{RateLimiter, Verdict};
use crate::schedule::Backoff;
use crate::{
    Destination, DownReason, Event, InstanceInfo, InterfaceIndex, Protocol, ProtocolMode, Received,
    Stats, Transmit,
};

/// Settings of a [`Discoverer`]. `docs/defaults.md` explains each default.
#[derive(Debug, Clone)]
pub struct DiscovererConfig {
    /// The service's group; native packets of other groups are dropped as `other_group`.
    pub group: GroupId,
    /// Protocols sent and accepted. Default: both. With `keys` set only authenticated native
    /// packets are accepted, whatever this field contains.
    pub protocols: ProtocolMode,
    /// Keys that authenticate packets. When set, every packet must carry a valid tag.
    pub keys: Option<KeyRing>,
    /// DISCOVER rounds sent right after start, so that one lost packet costs little. Default 3.
    pub startup_discovers: u32,
    /// Gap before the second startup round; each later gap doubles. Default 250 ms.
    pub startup_discover_spacing: Duration,
    /// Gap between periodic DISCOVER rounds after startup. Default 20 s.
    pub discover_interval: Duration,
    /// Silence after which an instance heard only in the seed protocol is probed. Default 65 s:
    /// more than three discover intervals. Native instances announce their own TTL instead.
    pub expire_after: Duration,
    /// Bounds applied to the TTL a native instance announces. Default 100 ms to 5 min.
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    /// Direct (unicast) probes sent to an overdue instance before it is expired. Default 3.
    pub probes: u32,
    /// Gap between probes, and the wait after the last one. Default 300 ms.
    pub probe_interval: Duration,
    /// Maximum instances tracked; announcements of further ids are dropped and counted as
    /// `instance_limit`. Default 10,000.
    pub max_instances: NonZeroUsize,
    /// Datagrams larger than this are dropped as `too_large`. Default 8,192 bytes.
    pub max_packet_size: usize,
    /// Average packets per second accepted from one source address and port; 0 disables the
    /// limit. Default 50.
    pub rate_limit: u32,
    /// Packets one source may send at once before the rate limit applies. Default 100.
    pub rate_burst: u32,
    /// Authenticated packets whose sender clock differs from ours by more are dropped as
    /// `stale_timestamp`, so a captured packet cannot be replayed later. Default 30 s.
    pub max_clock_skew: Duration,
    /// How long the last incarnation and sequence number of a removed instance are kept, so a
    /// late or replayed packet cannot bring it back. Default 60 s, twice `max_clock_skew`.
    pub tombstone_ttl: Duration,
    /// Longest URL stored; longer announcements are dropped as `url_too_long`, so that a flood of
    /// fake ids cannot make the table hold gigabytes. Default 4,096 bytes. Ids are limited to 255
    /// bytes in both protocols (`id_too_long`).
    pub max_url_len: usize,
    /// Seed of the random number generator, so that runs can be replayed.
    pub rng_seed: u64,
}

impl DiscovererConfig {
    pub fn new(group: GroupId) -> Self {
        DiscovererConfig {
            group,
            protocols: ProtocolMode::Both,
            keys: None,
            startup_discovers: 3,
            startup_discover_spacing: Duration::from_millis(250),
            discover_interval: Duration::from_secs(20),
            expire_after: Duration::from_secs(65),
            min_ttl: Duration::from_millis(100),
            max_ttl: Duration::from_secs(300),
            probes: 3,
            probe_interval: Duration::from_millis(300),
            max_instances: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            max_packet_size: 8192,
            rate_limit: 50,
            rate_burst: 100,
            max_clock_skew: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(60),
            max_url_len: 4096,
            rng_seed: 0,
        }
    }

    /// Returns the longest time between the last packet of a seed instance and its removal when
    /// it crashed: `expire_after + probes × probe_interval`.
    pub fn crash_detection_bound(&self) -> Duration {
        self.expire_after + self.probe_time()
    }

    /// Returns the same bound for a native instance that announced `ttl`:
    /// `clamp(ttl) + probes × probe_interval`.
    pub fn native_crash_detection_bound(&self, ttl: Duration) -> Duration {
        ttl.clamp(self.min_ttl, self.max_ttl) + self.probe_time()
    }

    fn probe_time(&self) -> Duration {
        self.probe_interval * self.probes
    }

    /// Returns the protocols in effect: native only when keys are set.
    pub fn effective_protocols(&self) -> ProtocolMode {
        if self.keys.is_some() {
            ProtocolMode::Native
        } else {
            self.protocols
        }
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
    /// When the entry last took a new incarnation or source address.
    settled_at: Instant,
}

/// How long after an entry took a new incarnation or address packets of the old one may still
/// arrive, from queues and retransmissions, before they suggest a second live instance.
const LATE_PACKET_GRACE: Duration = Duration::from_secs(5);
/// Shortest gap between two warnings about one id used by two instances.
const CONFLICT_WARNING_GAP: Duration = Duration::from_secs(60);

/// The last incarnation and sequence number of a removed instance.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    incarnation: u64,
    sequence: u64,
    until: Instant,
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
    protocols: ProtocolMode,
    clock: WallClock,
    interfaces: BTreeSet<InterfaceIndex>,
    entries: HashMap<String, Entry>,
    /// Deadlines of all entries, earliest first.
    deadlines: BTreeMap<(Instant, u64), String>,
    tombstones: HashMap<String, Tombstone>,
    next_serial: u64,
    discover_schedule: Backoff,
    rate_limiter: RateLimiter,
    /// When the last warning about a full table was logged.
    limit_warned: Option<Instant>,
    conflict_warned: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Discoverer {
    /// Creates a discoverer. `unix_ms` is the wall clock at `now`, in milliseconds since the Unix
    /// epoch; later wall times are derived from `now`, so the engine never reads a clock.
    pub fn new(config: DiscovererConfig, now: Instant, unix_ms: u64) -> Self {
        let discover_schedule = Backoff::new(
            now,
            config.startup_discovers,
            config.startup_discover_spacing,
            config.discover_interval,
        );
        let max_sources = config.max_instances.get().saturating_mul(4);
        Discoverer {
            protocols: config.effective_protocols(),
            rate_limiter: RateLimiter::new(config.rate_limit, config.rate_burst, max_sources),
            clock: WallClock::new(now, unix_ms),
            config,
            interfaces: BTreeSet::new(),
            entries: HashMap::new(),
            deadlines: BTreeMap::new(),
            tombstones: HashMap::new(),
            next_serial: 0,
            discover_schedule,
            limit_warned: None,
            conflict_warned: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &DiscovererConfig {
        &self.config
    }

    /// Replaces the key ring, for rotation without a restart. The table is kept. Setting a ring
    /// where there was none, or removing it, also switches between authenticated and open mode.
    pub fn set_keys(&mut self, keys: Option<KeyRing>) {
        self.config.keys = keys;
        self.protocols = self.config.effective_protocols();
        debug!(primary = ?self.config.keys.as_ref().map(|ring| ring.primary().id()), "key ring replaced");
    }

    /// Starts listening on an interface and sends a DISCOVER out of it at once.
    pub fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        let added = self.interfaces.insert(interface);
        let round_sent = self.send_due_discovers(now);
        if added {
            debug!(%interface, "discoverer interface added");
            if !round_sent {
                self.queue_discover(now, interface);
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

    /// Processes one datagram. Invalid or unwanted datagrams are counted in [`Stats::rejected`]
    /// and change nothing else.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        if datagram.payload.len() > self.config.max_packet_size {
            self.reject("too_large", &datagram);
            return;
        }
        match self.rate_limiter.check(now, datagram.source) {
            Verdict::Allowed => {}
            Verdict::Limited => return self.reject("rate_limit", &datagram),
            Verdict::Untracked => self.stats.reject("rate_table_full"),
        }
        let verify = self.config.keys.as_ref().map_or(Verify::No, Verify::With);
        match Packet::decode(datagram.payload, verify) {
            Err(error) => self.reject(error.kind(), &datagram),
            Ok(Packet::Seed(packet)) if self.protocols.seed() => self.handle_seed(now, packet, &datagram),
            Ok(Packet::Native(packet)) if self.protocols.native() => self.handle_native(now, &packet, &datagram),
            Ok(_) => self.reject("protocol_disabled", &datagram),
        }
    }

    /// Rejects a packet for a listed id that comes from an older incarnation or another address.
    /// Long after the entry settled, that means a second live instance uses the id, which an
    /// operator must hear about.
    fn reject_conflict(&mut self, now: Instant, id: &str, reason: &'static str, datagram: &Received<'_>) {
        self.reject(reason, datagram);
        let Some(entry) = self.entries.get(id) else { return };
        if now.saturating_duration_since(entry.settled_at) < LATE_PACKET_GRACE {
            return;
        }
        if self.conflict_warned.is_some_and(|last| now.saturating_duration_since(last) < CONFLICT_WARNING_GAP) {
            return;
        }
        self.conflict_warned = Some(now);
        tracing::warn!(
            id = ?id,
            listed = %entry.info.source,
            other = %datagram.source,
            reason,
            "packets for a listed id keep arriving from another instance; two live instances may share this id"
        );
    }

    fn reject(&mut self, reason: &'static str, datagram: &Received<'_>) {
        self.stats.reject(reason);
        debug!(source = %datagram.source, reason, "dropped datagram");
    }

    fn handle_seed(&mut self, now: Instant, packet: SeedPacket<'_>, datagram: &Received<'_>) {
        self.stats.received_seed.count_seed(packet.kind);
        trace!(source = %datagram.source, kind = ?packet.kind, "received seed packet");
        let native_entry =
            |id: &str| self.entries.get(id).is_some_and(|entry| entry.info.protocol == Protocol::Native);
        if let Some(host) = packet.host {
            if host.id.len() > msd_wire::native::MAX_ID_LEN {
                return self.reject("id_too_long", datagram);
            }
            if host.url.len() > self.config.max_url_len {
                return self.reject("url_too_long", datagram);
            }
        }
        match (packet.kind, packet.host) {
            // A native entry is richer; the same instance's seed packets do not change it.
            (SeedKind::Announce | SeedKind::Logoff, Some(host)) if native_entry(host.id) => {}
            (SeedKind::Announce, Some(host)) => self.seed_upsert(now, host, datagram),
            // The seed protocol has no incarnation. A LOGOFF with another URL than the entry's
            // comes from an old process whose id a new one took over, so it must not remove it.
            (SeedKind::Logoff, Some(host)) if self.entries.get(host.id).is_some_and(|entry| entry.info.url != host.url) => {
                self.reject("logoff_url_mismatch", datagram);
            }
            (SeedKind::Logoff, Some(host)) if !self.logoff_allowed(host.id, datagram) => {
                self.reject("logoff_from_other_address", datagram);
            }
            (SeedKind::Logoff, Some(host)) => self.remove(now, host.id, DownReason::Logoff),
            (SeedKind::Announce | SeedKind::Logoff, None) => self.reject("no_host", datagram),
            (SeedKind::Discover | SeedKind::Other(_), _) => {}
        }
    }

    fn handle_native(&mut self, now: Instant, packet: &NativePacket<'_>, datagram: &Received<'_>) {
        if packet.group != Some(self.config.group) {
            return self.reject("other_group", datagram);
        }
        if self.config.keys.is_some() && !self.clock.within(now, packet.timestamp_ms, self.config.max_clock_skew) {
            return self.reject("stale_timestamp", datagram);
        }
        let Some(kind) = packet.kind else { return };
        self.stats.received_native.count_native(kind);
        trace!(source = %datagram.source, ?kind, "received native packet");
        match kind {
            NativeKind::Announce => self.native_upsert(now, packet, datagram),
            NativeKind::Logoff => self.native_logoff(now, packet, datagram),
            NativeKind::Discover | NativeKind::Probe => {}
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
        if self.tombstones.len() > self.config.max_instances.get() {
            self.tombstones.retain(|_, tombstone| tombstone.until > now);
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

    fn seed_upsert(&mut self, now: Instant, host: SeedHost<'_>, datagram: &Received<'_>) {
        // A seed ANNOUNCE carries no sequence number, so after a native LOGOFF it cannot be
        // distinguished from a late copy of one sent before it. While the tombstone lives it is
        // ignored.
        if !self.entries.contains_key(host.id) && self.tombstones.get(host.id).is_some_and(|tombstone| tombstone.until > now) {
            return self.reject("logged_off", datagram);
        }
        if self.held_at_other_address(host.id, datagram) {
            return self.reject_conflict(now, host.id, "other_address", datagram);
        }
        let deadline = now + self.config.expire_after;
        if let Some(entry) = self.entries.get_mut(host.id) {
            let previous = (entry.info.url != host.url).then(|| entry.info.clone());
            entry.info.url.replace_range(.., host.url);
            refresh(entry, now, datagram);
            if let Some(previous) = previous {
                debug!(id = ?host.id, url = ?host.url, "instance changed");
                self.events.push_back(Event::Changed { previous, current: entry.info.clone() });
            }
            let serial = entry.serial;
            self.reschedule(host.id, serial, deadline);
            return;
        }
        let info = first_sight(host.id, host.url, Protocol::Seed, now, datagram);
        self.insert(info, deadline, datagram);
    }

    fn native_upsert(&mut self, now: Instant, packet: &NativePacket<'_>, datagram: &Received<'_>) {
        let (Some(id), Some(incarnation), Some(sequence), Some(ttl_ms), Some(url)) =
            (packet.id, packet.incarnation, packet.sequence, packet.ttl_ms, packet.url)
        else {
            return self.reject("missing_field", datagram);
        };
        if url.len() > self.config.max_url_len {
            return self.reject("url_too_long", datagram);
        }
        if self.held_at_other_address(id, datagram) {
            return self.reject_conflict(now, id, "other_address", datagram);
        }
        let ttl = Duration::from_millis(u64::from(ttl_ms)).clamp(self.config.min_ttl, self.config.max_ttl);
        let deadline = now + ttl;

        if let Some(entry) = self.entries.get_mut(id) {
            if let Some(reason) = order_violation(&entry.info, incarnation, sequence) {
                return self.reject_conflict(now, id, reason, datagram);
            }
            // A seed entry has no order of its own, but the tombstone of an earlier native LOGOFF
            // does.
            if entry.info.incarnation.is_none() {
                if let Some(tombstone) = self.tombstones.get(id).filter(|tombstone| tombstone.until > now) {
                    if (incarnation, sequence) <= (tombstone.incarnation, tombstone.sequence) {
                        return self.reject("old_sequence", datagram);
                    }
                }
            }
            let previous = entry.info.clone();
            apply_native(&mut entry.info, packet, url, incarnation, sequence, ttl);
            refresh(entry, now, datagram);
            if previous.incarnation != entry.info.incarnation || previous.source.ip() != entry.info.source.ip() {
                entry.settled_at = now;
            }
            if content_differs(&previous, &entry.info) {
                debug!(id = ?id, url = ?url, incarnation, health = %entry.info.health, "instance changed");
                self.events.push_back(Event::Changed { previous, current: entry.info.clone() });
            }
            let serial = entry.serial;
            self.reschedule(id, serial, deadline);
            return;
        }

        if let Some(tombstone) = self.tombstones.get(id).copied() {
            if tombstone.until > now && (incarnation, sequence) <= (tombstone.incarnation, tombstone.sequence) {
                let reason = if incarnation < tombstone.incarnation { "old_incarnation" } else { "old_sequence" };
                return self.reject(reason, datagram);
            }
            self.tombstones.remove(id);
        }
        let mut info = first_sight(id, url, Protocol::Native, now, datagram);
        apply_native(&mut info, packet, url, incarnation, sequence, ttl);
        self.insert(info, deadline, datagram);
    }

    fn native_logoff(&mut self, now: Instant, packet: &NativePacket<'_>, datagram: &Received<'_>) {
        let (Some(id), Some(incarnation), Some(sequence)) = (packet.id, packet.incarnation, packet.sequence) else {
            return self.reject("missing_field", datagram);
        };
        if !self.logoff_allowed(id, datagram) {
            return self.reject("logoff_from_other_address", datagram);
        }
        if let Some(entry) = self.entries.get(id) {
            if let Some(reason) = order_violation(&entry.info, incarnation, sequence) {
                return self.reject(reason, datagram);
            }
        } else if self.config.keys.is_none() {
            // Nothing to remove. A tombstone planted by one unauthenticated packet would keep an
            // instance that starts later with this id out of the table until it expired.
            return self.reject("unknown_id", datagram);
        } else if let Some(tombstone) = self.tombstones.get(id) {
            if (incarnation, sequence) <= (tombstone.incarnation, tombstone.sequence) {
                return self.reject("old_sequence", datagram);
            }
        }
        self.remove(now, id, DownReason::Logoff);
        self.bury(now, id, incarnation, sequence);
    }

    /// Returns whether a LOGOFF for `id` may be applied: it comes from the IP address the
    /// instance was last heard from, or the packets are authenticated. Any port is fine, since a
    /// dropped handle sends its LOGOFF from another socket. Without a key anyone on the link could
    /// otherwise remove any instance with one packet.
    fn logoff_allowed(&self, id: &str, datagram: &Received<'_>) -> bool {
        if self.config.keys.is_some() {
            return true;
        }
        self.entries.get(id).is_none_or(|entry| entry.info.source.ip() == datagram.source.ip())
    }

    /// Returns whether `id` is listed with another IP address than the datagram's and is not
    /// overdue. Without a key, a packet from a second address could otherwise take a live entry
    /// over: change its URL, move the address its LOGOFF must come from, or, with a larger
    /// incarnation, shut its real instance out. Once the entry is overdue and being probed, a
    /// packet from a new address moves it, so an instance restarted on another host with the same
    /// id is listed again within one TTL (one `expire_after` for seed entries).
    fn held_at_other_address(&self, id: &str, datagram: &Received<'_>) -> bool {
        if self.config.keys.is_some() {
            return false;
        }
        self.entries.get(id).is_some_and(|entry| entry.probes_sent == 0 && entry.info.source.ip() != datagram.source.ip())
    }

    fn insert(&mut self, info: InstanceInfo, deadline: Instant, datagram: &Received<'_>) {
        if self.entries.len() >= self.config.max_instances.get() {
            self.stats.reject("instance_limit");
            debug!(id = ?info.id, source = %datagram.source, "dropped announce: instance limit reached");
            // New instances are invisible while the table is full, which an operator must hear
            // about, but at most once a minute.
            let now = info.first_seen;
            if self.limit_warned.is_none_or(|last| now.saturating_duration_since(last) >= Duration::from_secs(60)) {
                self.limit_warned = Some(now);
                tracing::warn!(
                    max = self.config.max_instances.get(),
                    dropped = self.stats.rejected.get("instance_limit").copied().unwrap_or(0),
                    "instance table full; new instances are not listed until others leave"
                );
            }
            return;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        debug!(id = ?info.id, url = ?info.url, protocol = info.protocol.as_str(), source = %datagram.source, "instance up");
        self.deadlines.insert((deadline, serial), info.id.clone());
        self.events.push_back(Event::Up(info.clone()));
        let settled_at = info.first_seen;
        self.entries.insert(info.id.clone(), Entry { info, serial, deadline, probes_sent: 0, settled_at });
    }

    fn reschedule(&mut self, id: &str, serial: u64, deadline: Instant) {
        let Some(entry) = self.entries.get_mut(id) else { return };
        if let Some(key) = self.deadlines.remove(&(entry.deadline, serial)) {
            self.deadlines.insert((deadline, serial), key);
        }
        entry.deadline = deadline;
    }

    fn remove(&mut self, now: Instant, id: &str, reason: DownReason) {
        let Some(entry) = self.entries.remove(id) else { return };
        self.deadlines.remove(&(entry.deadline, entry.serial));
        if let (Some(incarnation), Some(sequence)) = (entry.info.incarnation, entry.info.sequence) {
            self.bury(now, id, incarnation, sequence);
        }
        debug!(id = ?id, %reason, "instance down");
        self.events.push_back(Event::Down { instance: entry.info, reason });
    }

    fn bury(&mut self, now: Instant, id: &str, incarnation: u64, sequence: u64) {
        if self.tombstones.len() >= self.config.max_instances.get() && !self.tombstones.contains_key(id) {
            self.tombstones.retain(|_, tombstone| tombstone.until > now);
            if self.tombstones.len() >= self.config.max_instances.get() {
                self.stats.reject("tombstone_limit");
                return;
            }
        }
        let until = now + self.config.tombstone_ttl;
        let tombstone = self.tombstones.entry(id.to_owned()).or_insert(Tombstone { incarnation, sequence, until });
        if (incarnation, sequence) >= (tombstone.incarnation, tombstone.sequence) {
            *tombstone = Tombstone { incarnation, sequence, until };
        }
    }

    fn handle_overdue(&mut self, now: Instant, id: String, serial: u64) {
        let Some(entry) = self.entries.get_mut(&id) else { return };
        if entry.serial != serial {
            return;
        }
        if entry.probes_sent >= self.config.probes {
            self.remove(now, &id, DownReason::Expired);
            return;
        }
        entry.probes_sent += 1;
        entry.deadline = now + self.config.probe_interval;
        let source = entry.info.source;
        let protocol = entry.info.protocol;
        trace!(id = ?id, %source, probe = entry.probes_sent, "probing overdue instance");
        self.deadlines.insert((entry.deadline, serial), id.clone());
        match protocol {
            Protocol::Native => self.queue_native(now, Destination::Unicast(source), NativeKind::Probe, Some(&id)),
            Protocol::Seed => self.queue_seed(Destination::Unicast(source), SeedPacket::DISCOVER),
        }
    }

    /// Sends the DISCOVER rounds that are due on every interface; returns whether any was.
    fn send_due_discovers(&mut self, now: Instant) -> bool {
        let mut sent = false;
        while self.discover_schedule.due(now) {
            let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
            for interface in interfaces {
                self.queue_discover(now, interface);
            }
            self.discover_schedule.advance();
            sent = true;
        }
        sent
    }

    fn queue_discover(&mut self, now: Instant, interface: InterfaceIndex) {
        let destination = Destination::Group { interface };
        if self.protocols.native() {
            self.queue_native(now, destination, NativeKind::Discover, None);
        }
        if self.protocols.seed() {
            self.queue_seed(destination, SeedPacket::DISCOVER);
        }
    }

    fn queue_seed(&mut self, destination: Destination, packet: SeedPacket<'_>) {
        // DISCOVER has no variable fields, so encoding cannot fail.
        let Ok(payload) = packet.to_vec() else { return };
        self.stats.sent_seed.count_seed(packet.kind);
        self.transmits.push_back(Transmit { destination, payload });
    }

    fn queue_native(&mut self, now: Instant, destination: Destination, kind: NativeKind, id: Option<&str>) {
        let packet = NativePacket {
            kind: Some(kind),
            group: Some(self.config.group),
            timestamp_ms: self.clock.unix_ms(now),
            id,
            ..NativePacket::default()
        };
        let key = self.config.keys.as_ref().map(KeyRing::primary);
        // The only variable field is an id that came from a valid packet, so this cannot fail.
        let Ok(payload) = packet.to_vec(key) else { return };
        self.stats.sent_native.count_native(kind);
        self.transmits.push_back(Transmit { destination, payload });
    }
}

/// Returns the entry of an instance heard for the first time, before protocol fields are applied.
fn first_sight(id: &str, url: &str, protocol: Protocol, now: Instant, datagram: &Received<'_>) -> InstanceInfo {
    InstanceInfo {
        id: id.to_owned(),
        url: url.to_owned(),
        protocol,
        health: Health::Serving,
        weight: None,
        load: None,
        metadata: BTreeMap::new(),
        incarnation: None,
        sequence: None,
        ttl: None,
        key_id: None,
        interface: datagram.interface,
        source: datagram.source,
        first_seen: now,
        last_seen: now,
    }
}

fn refresh(entry: &mut Entry, now: Instant, datagram: &Received<'_>) {
    entry.info.last_seen = now;
    entry.info.source = datagram.source;
    entry.info.interface = datagram.interface;
    entry.probes_sent = 0;
}

/// Returns why a native packet is older than what an entry already holds, if it is.
fn order_violation(info: &InstanceInfo, incarnation: u64, sequence: u64) -> Option<&'static str> {
    let (Some(known_incarnation), Some(known_sequence)) = (info.incarnation, info.sequence) else {
        return None;
    };
    if incarnation < known_incarnation {
        Some("old_incarnation")
    } else if incarnation == known_incarnation && sequence <= known_sequence {
        Some("old_sequence")
    } else {
        None
    }
}

fn apply_native(
    info: &mut InstanceInfo,
    packet: &NativePacket<'_>,
    url: &str,
    incarnation: u64,
    sequence: u64,
    ttl: Duration,
) {
    info.protocol = Protocol::Native;
    info.url.replace_range(.., url);
    info.health = packet.health.unwrap_or_default();
    info.weight = packet.weight;
    info.load = packet.load;
    if info.metadata.len() != packet.metadata.len()
        || info.metadata.iter().zip(&packet.metadata).any(|((k1, v1), (k2, v2))| k1 != k2 || v1 != v2)
    {
        info.metadata = packet.metadata.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    }
    info.incarnation = Some(incarnation);
    info.sequence = Some(sequence);
    info.ttl = Some(ttl);
    info.key_id = packet.key_id;
}

/// Returns whether two states of an instance differ in what its users see.
fn content_differs(a: &InstanceInfo, b: &InstanceInfo) -> bool {
    a.url != b.url
        || a.protocol != b.protocol
        || a.health != b.health
        || a.weight != b.weight
        || a.load != b.load
        || a.metadata != b.metadata
        || a.incarnation != b.incarnation
}
