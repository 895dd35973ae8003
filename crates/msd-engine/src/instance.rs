use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msd_wire::keys::KeyRing;
use msd_wire::native::{self, Health, NativeKind, NativePacket, Verify};
use msd_wire::seed::{SeedKind, SeedPacket};
use msd_wire::{EncodeError, GroupId, Packet};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, trace};

use crate::clock::WallClock;
use crate::schedule::Backoff;
use crate::{Destination, InterfaceIndex, Protocol, ProtocolMode, Received, Stats, Transmit};

/// Settings of an [`Instance`]. `docs/defaults.md` explains each default.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    pub group: GroupId,
    /// The instance's id, unique within the group; 1 to 255 bytes.
    pub id: String,
    /// The URL clients use to reach the instance.
    pub url: String,
    /// Protocols sent and responded to. Default: both. With `keys` set only the native protocol is
    /// used, whatever this field contains.
    pub protocols: ProtocolMode,
    /// Keys that authenticate packets; the primary key signs.
    pub keys: Option<KeyRing>,
    /// Changes on every restart; must grow from one run to the next so discoverers can tell a
    /// restart from a late packet. The msd runtime uses the start time in microseconds.
    /// `InstanceConfig::new` sets 0, so code that drives the engine directly must set it: an
    /// instance restarted with the same incarnation is ignored until its sequence number passes
    /// the old one's.
    pub incarnation: u64,
    pub health: Health,
    pub weight: Option<u32>,
    pub load: Option<u32>,
    pub metadata: BTreeMap<String, String>,
    /// ANNOUNCE rounds sent right after start. Default 3.
    pub startup_announces: u32,
    /// Gap before the second startup round; each later gap doubles. Default 250 ms.
    pub startup_announce_spacing: Duration,
    /// Gap between unsolicited seed ANNOUNCE rounds after startup. Default 20 s.
    pub announce_interval: Duration,
    /// Gap between native heartbeats after startup, varied by up to ±20 % at random so that
    /// instances started together do not stay in step. Default 500 ms.
    pub heartbeat_interval: Duration,
    /// How long discoverers keep the instance without another packet. Default 2 s: four
    /// heartbeats.
    pub ttl: Duration,
    /// Answers to a DISCOVER wait a random delay in `(0, max_answer_delay]`, so that many
    /// instances do not answer in the same instant. Default 100 ms.
    pub max_answer_delay: Duration,
    /// Maximum distinct senders waiting for an answer; DISCOVERs from further senders are dropped
    /// and counted as `answer_limit`. Default 1,024.
    pub max_pending_answers: usize,
    /// Authenticated DISCOVERs and PROBEs whose sender clock differs from ours by more are
    /// dropped as `stale_timestamp`. Default 30 s.
    pub max_clock_skew: Duration,
    /// Seed of the random number generator, so that runs can be replayed.
    pub rng_seed: u64,
}

impl InstanceConfig {
    pub fn new(group: GroupId, id: impl Into<String>, url: impl Into<String>) -> Self {
        InstanceConfig {
            group,
            id: id.into(),
            url: url.into(),
            protocols: ProtocolMode::Both,
            keys: None,
            incarnation: 0,
            health: Health::Serving,
            weight: None,
            load: None,
            metadata: BTreeMap::new(),
            startup_announces: 3,
            startup_announce_spacing: Duration::from_millis(250),
            announce_interval: Duration::from_secs(20),
            heartbeat_interval: Duration::from_millis(500),
            ttl: Duration::from_secs(2),
            max_answer_delay: Duration::from_millis(100),
            max_pending_answers: 1024,
            max_clock_skew: Duration::from_secs(30),
            rng_seed: 0,
        }
    }

    /// Returns the protocols in effect: native only when keys are set.
    pub fn effective_protocols(&self) -> ProtocolMode {
        if self.keys.is_some() {
            ProtocolMode::Native
        } else {
            self.protocols
        }
    }

    /// Returns the native ANNOUNCE for this state. `sequence` and `timestamp_ms` vary per packet.
    fn native_packet(&self, kind: NativeKind, sequence: u64, timestamp_ms: u64) -> NativePacket<'_> {
        let announce = kind == NativeKind::Announce;
        NativePacket {
            kind: Some(kind),
            minor_version: native::MINOR_VERSION,
            group: Some(self.group),
            timestamp_ms,
            id: Some(&self.id),
            incarnation: Some(self.incarnation),
            sequence: Some(sequence),
            ttl_ms: announce.then(|| u32::try_from(self.ttl.as_millis()).unwrap_or(u32::MAX)),
            url: announce.then_some(self.url.as_str()),
            health: announce.then_some(self.health),
            weight: self.weight.filter(|_| announce),
            load: self.load.filter(|_| announce),
            metadata: if announce {
                self.metadata.iter().map(|(key, value)| (key.as_str(), value.as_str())).collect()
            } else {
                BTreeMap::new()
            },
            key_id: None,
        }
    }

    /// Checks that the announcement fits one datagram of at most [`native::MAX_PACKET`] bytes.
    ///
    /// # Errors
    ///
    /// Names the largest variable field when the announcement is too large, or the field that
    /// cannot be encoded.
    pub fn check_size(&self) -> Result<(), EncodeError> {
        let packet = self.native_packet(NativeKind::Announce, 0, 0);
        let size = packet.encoded_len(self.keys.is_some());
        if size > native::MAX_PACKET {
            return Err(EncodeError::TooLarge { field: packet.largest_field(), size, max: native::MAX_PACKET });
        }
        packet.to_vec(None).map(|_| ())
    }
}

/// Builds the LOGOFF packets of an instance without the instance itself, for a runtime that
/// must send them after its engine is gone (a dropped handle).
#[derive(Debug, Clone)]
pub struct LogoffTemplate {
    config: InstanceConfig,
}

impl LogoffTemplate {
    /// Returns the LOGOFF datagrams for a clock reading of `unix_ms`. The native one carries the
    /// highest sequence number, since nothing follows it.
    pub fn packets(&self, unix_ms: u64) -> Vec<Vec<u8>> {
        let mut packets = Vec::new();
        let protocols = self.config.effective_protocols();
        if protocols.native() {
            let key = self.config.keys.as_ref().map(KeyRing::primary);
            let packet = self.config.native_packet(NativeKind::Logoff, u64::MAX, unix_ms);
            packets.extend(packet.to_vec(key).ok());
        }
        if protocols.seed() {
            packets.extend(SeedPacket::logoff(&self.config.url, &self.config.id).to_vec().ok());
        }
        packets
    }
}

/// Protocols a pending answer goes out in.
#[derive(Debug, Clone, Copy, Default)]
struct AnswerProtocols {
    seed: bool,
    native: bool,
}

/// The sans-IO instance: announces one service instance to its group and answers DISCOVERs.
///
/// Call order: create it with [`Instance::new`], add interfaces with [`Instance::add_interface`],
/// then feed it datagrams with [`Instance::handle_datagram`] and call [`Instance::handle_timeout`]
/// whenever the instant from [`Instance::poll_timeout`] has passed. After every call, drain
/// [`Instance::poll_transmit`]. [`Instance::shutdown`] queues the LOGOFFs and stops all timers.
/// `now` must never go backwards between calls.
#[derive(Debug)]
pub struct Instance {
    config: InstanceConfig,
    protocols: ProtocolMode,
    clock: WallClock,
    rng: StdRng,
    seed_announce: Vec<u8>,
    sequence: u64,
    interfaces: BTreeSet<InterfaceIndex>,
    seed_schedule: Backoff,
    native_schedule: Backoff,
    /// Answers waiting for their random delay, earliest first; the counter keeps keys distinct.
    /// One answer per sender: a discoverer that asks in both protocols gets both at once, native
    /// first, so it never lists the instance from the seed answer alone.
    answers: BTreeMap<(Instant, u64), SocketAddr>,
    answer_targets: HashMap<SocketAddr, AnswerProtocols>,
    next_answer: u64,
    stopped: bool,
    transmits: VecDeque<Transmit>,
    stats: Stats,
}

impl Instance {
    /// Creates an instance. `unix_ms` is the wall clock at `now`. The first ANNOUNCE goes out when
    /// an interface is added.
    ///
    /// # Errors
    ///
    /// Fails when the id or URL cannot be encoded, or the native announcement would exceed
    /// [`native::MAX_PACKET`] bytes.
    pub fn new(config: InstanceConfig, now: Instant, unix_ms: u64) -> Result<Self, EncodeError> {
        let protocols = config.effective_protocols();
        if protocols.native() {
            config.check_size()?;
        }
        let seed_announce = SeedPacket::announce(&config.url, &config.id).to_vec()?;
        let seed_schedule = Backoff::new(
            now,
            config.startup_announces,
            config.startup_announce_spacing,
            config.announce_interval,
        );
        let native_schedule = Backoff::new(
            now,
            config.startup_announces,
            config.startup_announce_spacing,
            config.heartbeat_interval,
        );
        Ok(Instance {
            rng: StdRng::seed_from_u64(config.rng_seed),
            clock: WallClock::new(now, unix_ms),
            protocols,
            config,
            seed_announce,
            sequence: 0,
            interfaces: BTreeSet::new(),
            seed_schedule,
            native_schedule,
            answers: BTreeMap::new(),
            answer_targets: HashMap::new(),
            next_answer: 0,
            stopped: false,
            transmits: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    /// Replaces the key ring, for rotation without a restart; the next packet is signed with the
    /// new primary key.
    ///
    /// # Errors
    ///
    /// Fails, keeping the old ring, when the announcement with the new ring's tag would no longer
    /// fit one datagram.
    pub fn set_keys(&mut self, keys: Option<KeyRing>) -> Result<(), EncodeError> {
        let mut config = self.config.clone();
        config.keys = keys;
        config.check_size()?;
        self.config = config;
        self.protocols = self.config.effective_protocols();
        debug!(id = ?self.config.id, "key ring replaced");
        Ok(())
    }

    /// Returns a builder of this instance's LOGOFF packets that outlives the instance.
    pub fn logoff_template(&self) -> LogoffTemplate {
        LogoffTemplate { config: self.config.clone() }
    }

    /// Returns the seed ANNOUNCE this instance sends.
    pub fn seed_announce_payload(&self) -> &[u8] {
        &self.seed_announce
    }

    /// Starts announcing on an interface, with an ANNOUNCE out of it at once.
    pub fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        if self.stopped {
            return;
        }
        let added = self.interfaces.insert(interface);
        let round_sent = self.send_due_rounds(now);
        if added {
            debug!(%interface, id = ?self.config.id, "instance interface added");
            if !round_sent {
                self.announce_on(now, interface, true, true);
            }
        }
        self.handle_timeout(now);
    }

    pub fn remove_interface(&mut self, interface: InterfaceIndex) {
        if self.interfaces.remove(&interface) {
            debug!(%interface, id = ?self.config.id, "instance interface removed");
        }
    }

    pub fn interfaces(&self) -> impl Iterator<Item = InterfaceIndex> + '_ {
        self.interfaces.iter().copied()
    }

    /// Processes one datagram: a DISCOVER schedules an answer to its sender, a PROBE for this
    /// instance is answered at once.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        if self.stopped {
            return;
        }
        let verify = self.config.keys.as_ref().map_or(Verify::No, Verify::With);
        let packet = match Packet::decode(datagram.payload, verify) {
            Ok(packet) => packet,
            Err(error) => {
                self.reject(error.kind(), &datagram);
                return;
            }
        };
        match packet {
            Packet::Seed(packet) => {
                self.stats.received_seed.count_seed(packet.kind);
                if packet.kind == SeedKind::Discover && self.protocols.seed() {
                    self.schedule_answer(now, datagram.source, Protocol::Seed);
                }
            }
            Packet::Native(packet) => self.handle_native(now, &packet, &datagram),
        }
    }

    fn handle_native(&mut self, now: Instant, packet: &NativePacket<'_>, datagram: &Received<'_>) {
        if !self.protocols.native() {
            return self.reject("protocol_disabled", datagram);
        }
        if packet.group != Some(self.config.group) {
            return self.reject("other_group", datagram);
        }
        if self.config.keys.is_some() && !self.clock.within(now, packet.timestamp_ms, self.config.max_clock_skew) {
            return self.reject("stale_timestamp", datagram);
        }
        let Some(kind) = packet.kind else { return };
        self.stats.received_native.count_native(kind);
        match kind {
            NativeKind::Discover => self.schedule_answer(now, datagram.source, Protocol::Native),
            NativeKind::Probe if packet.id.is_none_or(|id| id == self.config.id) => {
                trace!(source = %datagram.source, "answering probe");
                self.queue_native(now, Destination::Unicast(datagram.source), NativeKind::Announce);
            }
            NativeKind::Probe | NativeKind::Announce | NativeKind::Logoff => {}
        }
    }

    fn reject(&mut self, reason: &'static str, datagram: &Received<'_>) {
        self.stats.reject(reason);
        debug!(source = %datagram.source, reason, "dropped datagram");
    }

    fn schedule_answer(&mut self, now: Instant, source: SocketAddr, protocol: Protocol) {
        if let Some(pending) = self.answer_targets.get_mut(&source) {
            match protocol {
                Protocol::Seed => pending.seed = true,
                Protocol::Native => pending.native = true,
            }
            return;
        }
        if self.answer_targets.len() >= self.config.max_pending_answers {
            self.stats.reject("answer_limit");
            debug!(%source, "dropped discover: too many answers pending");
            return;
        }
        let delay = self.answer_delay();
        trace!(%source, ?delay, "answer scheduled");
        let protocols = AnswerProtocols { seed: protocol == Protocol::Seed, native: protocol == Protocol::Native };
        self.answer_targets.insert(source, protocols);
        self.answers.insert((now + delay, self.next_answer), source);
        self.next_answer += 1;
    }

    /// Sends answers, heartbeats and ANNOUNCE rounds that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.send_due_rounds(now);
        while let Some((&(due, _), _)) = self.answers.first_key_value() {
            if due > now {
                break;
            }
            let Some((_, source)) = self.answers.pop_first() else { break };
            let protocols = self.answer_targets.remove(&source).unwrap_or_default();
            if protocols.native {
                self.queue_native(now, Destination::Unicast(source), NativeKind::Announce);
            }
            if protocols.seed {
                self.queue_seed(Destination::Unicast(source), SeedKind::Announce);
            }
        }
    }

    /// Sets the health and announces it at once.
    ///
    /// # Errors
    ///
    /// None today; returns a `Result` like the other setters.
    pub fn set_health(&mut self, now: Instant, health: Health) -> Result<(), EncodeError> {
        self.update(now, |config| config.health = health)
    }

    /// Sets the reported load and announces it at once.
    ///
    /// # Errors
    ///
    /// None today; returns a `Result` like the other setters.
    pub fn set_load(&mut self, now: Instant, load: Option<u32>) -> Result<(), EncodeError> {
        self.update(now, |config| config.load = load)
    }

    /// Sets the weight and announces it at once.
    ///
    /// # Errors
    ///
    /// None today; returns a `Result` like the other setters.
    pub fn set_weight(&mut self, now: Instant, weight: Option<u32>) -> Result<(), EncodeError> {
        self.update(now, |config| config.weight = weight)
    }

    /// Replaces the metadata and announces it at once.
    ///
    /// # Errors
    ///
    /// Fails, and keeps the old metadata, when the announcement would no longer fit one
    /// datagram.
    pub fn set_metadata(&mut self, now: Instant, metadata: BTreeMap<String, String>) -> Result<(), EncodeError> {
        self.update(now, |config| config.metadata = metadata)
    }

    fn update(&mut self, now: Instant, change: impl FnOnce(&mut InstanceConfig)) -> Result<(), EncodeError> {
        let mut config = self.config.clone();
        change(&mut config);
        config.check_size()?;
        self.config = config;
        if !self.stopped && self.protocols.native() {
            let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
            for interface in interfaces {
                self.queue_native(now, Destination::Group { interface }, NativeKind::Announce);
            }
        }
        Ok(())
    }

    /// Queues a LOGOFF on every interface and stops. Later calls do nothing.
    pub fn shutdown(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
        for interface in interfaces {
            let destination = Destination::Group { interface };
            if self.protocols.native() {
                // Twice, so that one lost packet does not leave the instance to expire.
                self.queue_native(now, destination, NativeKind::Logoff);
                self.queue_native(now, destination, NativeKind::Logoff);
            }
            if self.protocols.seed() {
                self.queue_seed(destination, SeedKind::Logoff);
            }
        }
        self.answers.clear();
        self.answer_targets.clear();
        self.stopped = true;
        debug!(id = ?self.config.id, "instance shut down");
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let next_answer = self.answers.first_key_value().map(|(&(due, _), _)| due);
        let has_interfaces = !self.interfaces.is_empty();
        let next_seed = (has_interfaces && self.protocols.seed()).then(|| self.seed_schedule.next());
        let next_native = (has_interfaces && self.protocols.native()).then(|| self.native_schedule.next());
        [next_answer, next_seed, next_native].into_iter().flatten().min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends the ANNOUNCE rounds and heartbeats that are due; returns whether any was.
    fn send_due_rounds(&mut self, now: Instant) -> bool {
        let mut sent = false;
        while self.native_schedule.due(now) {
            self.announce_everywhere(now, true, false);
            let jittered = self.jittered(self.config.heartbeat_interval);
            self.native_schedule.advance_with(jittered);
            sent = true;
        }
        while self.seed_schedule.due(now) {
            self.announce_everywhere(now, false, true);
            self.seed_schedule.advance();
            sent = true;
        }
        sent
    }

    fn announce_everywhere(&mut self, now: Instant, native: bool, seed: bool) {
        let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
        for interface in interfaces {
            self.announce_on(now, interface, native, seed);
        }
    }

    /// Sends an ANNOUNCE out of one interface, native before seed so that a discoverer that
    /// accepts both receives the richer format first.
    fn announce_on(&mut self, now: Instant, interface: InterfaceIndex, native: bool, seed: bool) {
        let destination = Destination::Group { interface };
        if native && self.protocols.native() {
            self.queue_native(now, destination, NativeKind::Announce);
        }
        if seed && self.protocols.seed() {
            self.queue_seed(destination, SeedKind::Announce);
        }
    }

    fn jittered(&mut self, interval: Duration) -> Duration {
        interval.mul_f64(self.rng.random_range(0.8..=1.2))
    }

    fn answer_delay(&mut self) -> Duration {
        let max_micros = u64::try_from(self.config.max_answer_delay.as_micros()).unwrap_or(u64::MAX);
        // At least one microsecond, so answers are never all sent at the same instant.
        Duration::from_micros(self.rng.random_range(1..=max_micros.max(1)))
    }

    fn queue_seed(&mut self, destination: Destination, kind: SeedKind) {
        if !self.protocols.seed() {
            return;
        }
        let payload = match kind {
            SeedKind::Logoff => SeedPacket::logoff(&self.config.url, &self.config.id).to_vec().unwrap_or_default(),
            _ => self.seed_announce.clone(),
        };
        self.stats.sent_seed.count_seed(kind);
        self.transmits.push_back(Transmit { destination, payload });
    }

    fn queue_native(&mut self, now: Instant, destination: Destination, kind: NativeKind) {
        self.sequence += 1;
        let packet = self.config.native_packet(kind, self.sequence, self.clock.unix_ms(now));
        let key = self.config.keys.as_ref().map(KeyRing::primary);
        // `new` and `update` checked that this state encodes.
        let Ok(payload) = packet.to_vec(key) else { return };
        self.stats.sent_native.count_native(kind);
        self.transmits.push_back(Transmit { destination, payload });
    }
}
