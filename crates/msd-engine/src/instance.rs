use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msd_wire::seed::{SeedKind, SeedPacket};
use msd_wire::EncodeError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tracing::{debug, trace};

use crate::schedule::Backoff;
use crate::{Destination, InterfaceIndex, Received, Stats, Transmit};

/// Settings of an [`Instance`]. `docs/defaults.md` explains each default.
#[derive(Debug, Clone)]
pub struct InstanceConfig {
    /// The instance's id, unique within the group.
    pub id: String,
    /// Where the instance serves.
    pub url: String,
    /// ANNOUNCE rounds sent right after start. Default 3.
    pub startup_announces: u32,
    /// Gap before the second startup round; each later gap doubles. Default 250 ms.
    pub startup_announce_spacing: Duration,
    /// Gap between unsolicited ANNOUNCE rounds after startup. Default 20 s. The original
    /// implementation announces only at start and when asked; these rounds keep discoverers fresh
    /// when a DISCOVER or its answer is lost.
    pub announce_interval: Duration,
    /// Answers to a DISCOVER wait a random delay in `(0, max_answer_delay]`, so that many
    /// instances do not answer in the same instant. Default 100 ms.
    pub max_answer_delay: Duration,
    /// Maximum distinct senders waiting for an answer; DISCOVERs from further senders are dropped
    /// and counted as `answer_limit`. Default 1,024.
    pub max_pending_answers: usize,
    /// Seed of the random number generator, so that runs can be replayed.
    pub rng_seed: u64,
}

impl InstanceConfig {
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        InstanceConfig {
            id: id.into(),
            url: url.into(),
            startup_announces: 3,
            startup_announce_spacing: Duration::from_millis(250),
            announce_interval: Duration::from_secs(20),
            max_answer_delay: Duration::from_millis(100),
            max_pending_answers: 1024,
            rng_seed: 0,
        }
    }
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
    rng: StdRng,
    announce: Vec<u8>,
    logoff: Vec<u8>,
    interfaces: BTreeSet<InterfaceIndex>,
    announce_schedule: Backoff,
    /// Answers waiting for their random delay, earliest first; the counter keeps keys distinct.
    answers: BTreeMap<(Instant, u64), SocketAddr>,
    answer_targets: HashSet<SocketAddr>,
    next_answer: u64,
    stopped: bool,
    transmits: VecDeque<Transmit>,
    stats: Stats,
}

impl Instance {
    /// Creates an instance. The first ANNOUNCE goes out when an interface is added.
    ///
    /// # Errors
    ///
    /// Fails when the id or URL cannot be encoded.
    pub fn new(config: InstanceConfig, now: Instant) -> Result<Self, EncodeError> {
        let announce = SeedPacket::announce(&config.url, &config.id).to_vec()?;
        let logoff = SeedPacket::logoff(&config.url, &config.id).to_vec()?;
        let announce_schedule = Backoff::new(
            now,
            config.startup_announces,
            config.startup_announce_spacing,
            config.announce_interval,
        );
        Ok(Instance {
            rng: StdRng::seed_from_u64(config.rng_seed),
            config,
            announce,
            logoff,
            interfaces: BTreeSet::new(),
            announce_schedule,
            answers: BTreeMap::new(),
            answer_targets: HashSet::new(),
            next_answer: 0,
            stopped: false,
            transmits: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    pub fn config(&self) -> &InstanceConfig {
        &self.config
    }

    /// Returns the ANNOUNCE this instance sends.
    pub fn announce_payload(&self) -> &[u8] {
        &self.announce
    }

    /// Returns the LOGOFF this instance sends on shutdown.
    pub fn logoff_payload(&self) -> &[u8] {
        &self.logoff
    }

    /// Starts announcing on an interface, with an ANNOUNCE out of it at once.
    pub fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        if self.stopped {
            return;
        }
        let added = self.interfaces.insert(interface);
        let round_sent = self.send_due_announces(now);
        if added {
            debug!(%interface, id = %self.config.id, "instance interface added");
            if !round_sent {
                self.queue(Destination::Group { interface }, SeedKind::Announce);
            }
        }
        self.handle_timeout(now);
    }

    pub fn remove_interface(&mut self, interface: InterfaceIndex) {
        if self.interfaces.remove(&interface) {
            debug!(%interface, id = %self.config.id, "instance interface removed");
        }
    }

    pub fn interfaces(&self) -> impl Iterator<Item = InterfaceIndex> + '_ {
        self.interfaces.iter().copied()
    }

    /// Processes one datagram: a DISCOVER schedules an answer to its sender.
    pub fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        if self.stopped {
            return;
        }
        let packet = match SeedPacket::decode(datagram.payload) {
            Ok(packet) => packet,
            Err(error) => {
                self.stats.reject(error.kind());
                debug!(source = %datagram.source, %error, "dropped invalid datagram");
                return;
            }
        };
        self.stats.received.count(packet.kind);
        if packet.kind != SeedKind::Discover {
            return;
        }
        if self.answer_targets.contains(&datagram.source) {
            return;
        }
        if self.answer_targets.len() >= self.config.max_pending_answers {
            self.stats.reject("answer_limit");
            debug!(source = %datagram.source, "dropped discover: too many answers pending");
            return;
        }
        let delay = self.answer_delay();
        trace!(source = %datagram.source, ?delay, "answer scheduled");
        self.answer_targets.insert(datagram.source);
        self.answers.insert((now + delay, self.next_answer), datagram.source);
        self.next_answer += 1;
    }

    /// Sends answers and ANNOUNCE rounds that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.send_due_announces(now);
        while let Some((&(due, _), _)) = self.answers.first_key_value() {
            if due > now {
                break;
            }
            let Some((_, target)) = self.answers.pop_first() else { break };
            self.answer_targets.remove(&target);
            self.queue(Destination::Unicast(target), SeedKind::Announce);
        }
    }

    /// Queues a LOGOFF on every interface and stops. Later calls do nothing.
    pub fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
        for interface in interfaces {
            self.queue(Destination::Group { interface }, SeedKind::Logoff);
        }
        self.answers.clear();
        self.answer_targets.clear();
        self.stopped = true;
        debug!(id = %self.config.id, "instance shut down");
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        let next_answer = self.answers.first_key_value().map(|(&(due, _), _)| due);
        let next_announce = (!self.interfaces.is_empty()).then(|| self.announce_schedule.next());
        [next_answer, next_announce].into_iter().flatten().min()
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Sends the ANNOUNCE rounds that are due on every interface; returns whether any was.
    fn send_due_announces(&mut self, now: Instant) -> bool {
        let mut sent = false;
        while self.announce_schedule.due(now) {
            let interfaces: Vec<_> = self.interfaces.iter().copied().collect();
            for interface in interfaces {
                self.queue(Destination::Group { interface }, SeedKind::Announce);
            }
            self.announce_schedule.advance();
            sent = true;
        }
        sent
    }

    fn answer_delay(&mut self) -> Duration {
        let max_micros = u64::try_from(self.config.max_answer_delay.as_micros()).unwrap_or(u64::MAX);
        // At least one microsecond, so answers are never all sent at the same instant.
        Duration::from_micros(self.rng.random_range(1..=max_micros.max(1)))
    }

    fn queue(&mut self, destination: Destination, kind: SeedKind) {
        let payload = match kind {
            SeedKind::Logoff => self.logoff.clone(),
            _ => self.announce.clone(),
        };
        self.stats.sent.count(kind);
        self.transmits.push_back(Transmit { destination, payload });
    }
}
