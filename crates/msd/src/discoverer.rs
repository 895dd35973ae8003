//! Keeping the table of live instances of a service.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use msd_engine::{DiscovererConfig, Event, InstanceInfo, InterfaceIndex, ProtocolMode, Received, Transmit};
use msd_wire::keys::KeyRing;
use msd_wire::GroupId;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;

use crate::driver::{self, Command, Machine, Shared};
use crate::net::{InterfaceSelection, IpVersion, NetworkConfig};
use crate::{Error, Stats};

/// Events buffered per subscriber. A subscriber that falls further behind loses the oldest
/// events; the loss is counted in [`Stats::events_lagged`].
pub const EVENT_BUFFER: usize = 1024;

/// The discoverer engine with the channel its events go out on.
struct DiscovererMachine {
    engine: msd_engine::Discoverer,
    events: broadcast::Sender<Event>,
}

impl Machine for DiscovererMachine {
    fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        self.engine.add_interface(now, interface);
    }
    fn remove_interface(&mut self, interface: InterfaceIndex) {
        self.engine.remove_interface(interface);
    }
    fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        self.engine.handle_datagram(now, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.engine.poll_transmit()
    }
    fn after_step(&mut self) {
        while let Some(event) = self.engine.poll_event() {
            // No subscriber is not an error: the table is still kept.
            let _ = self.events.send(event);
        }
    }
}

/// Settings for a [`Discoverer`], from [`Discoverer::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct DiscovererBuilder {
    network: NetworkConfig,
    engine: DiscovererConfig,
}

impl DiscovererBuilder {
    crate::net::network_setters!();

    /// Sets the protocols sent and accepted. Default: both. With a key ring only authenticated
    /// native packets are accepted.
    pub fn protocols(mut self, protocols: ProtocolMode) -> Self {
        self.engine.protocols = protocols;
        self
    }

    /// Accepts only packets authenticated by a key of this ring, and signs DISCOVERs and probes
    /// with its primary key.
    pub fn keys(mut self, keys: KeyRing) -> Self {
        self.engine.keys = Some(keys);
        self
    }

    /// Sets the average packets per second accepted from one source, and the burst; 0 disables
    /// the limit. Default: 50 per second, bursts of 100.
    pub fn rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.engine.rate_limit = per_second;
        self.engine.rate_burst = burst;
        self
    }

    /// Sets the largest datagram accepted. Default: 8,192 bytes.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.engine.max_packet_size = bytes;
        self
    }

    /// Sets the gap between periodic DISCOVER rounds. Default: 20 s.
    pub fn discover_interval(mut self, interval: Duration) -> Self {
        self.engine.discover_interval = interval;
        self
    }

    /// Sets the DISCOVER rounds at start and the gap before the second one, which doubles for
    /// each later round. Default: 3 rounds, 250 ms.
    pub fn startup_discovers(mut self, rounds: u32, spacing: Duration) -> Self {
        self.engine.startup_discovers = rounds;
        self.engine.startup_discover_spacing = spacing;
        self
    }

    /// Sets the silence after which a seed-protocol instance is probed and then expired; native
    /// instances announce their own TTL. Default: 65 s.
    pub fn expire_after(mut self, silence: Duration) -> Self {
        self.engine.expire_after = silence;
        self
    }

    /// Sets the direct DISCOVERs sent to a silent instance before it expires, and their gap.
    /// Default: 3 probes, 300 ms.
    pub fn probes(mut self, count: u32, interval: Duration) -> Self {
        self.engine.probes = count;
        self.engine.probe_interval = interval;
        self
    }

    /// Sets the maximum number of instances tracked. Default: 10,000.
    pub fn max_instances(mut self, max: NonZeroUsize) -> Self {
        self.engine.max_instances = max;
        self
    }

    /// Returns the longest time from an instance's crash to its removal with these settings.
    pub fn crash_detection_bound(&self) -> Duration {
        self.engine.crash_detection_bound()
    }

    /// Opens the sockets and starts discovering.
    ///
    /// Must be called within a tokio runtime. The first call to [`Discoverer::events`] returns
    /// every event from the start.
    ///
    /// # Errors
    ///
    /// Fails on invalid intervals, an interface that does not exist, or a port held by a program
    /// that does not share it.
    pub async fn start(mut self) -> Result<Discoverer, Error> {
        // Every instance replies to every DISCOVER, so a short interval multiplies into a flood.
        crate::instance::at_least("discover interval", self.engine.discover_interval, MIN_DISCOVER_INTERVAL)?;
        crate::instance::at_least("expiry", self.engine.expire_after, MIN_EXPIRE_AFTER)?;
        crate::instance::at_least("probe interval", self.engine.probe_interval, MIN_PROBE_INTERVAL)?;
        self.engine.rng_seed = rand::random();
        let engine = msd_engine::Discoverer::new(self.engine, driver::now(), driver::unix_millis());
        // Subscribed before the task starts, so the first `events()` call misses nothing.
        let (events, first_receiver) = broadcast::channel(EVENT_BUFFER);
        let machine = DiscovererMachine { engine, events: events.clone() };
        let (driver, commands, shared) = driver::prepare(machine, self.network.clone(), "discoverer")?;
        let task = tokio::spawn(driver.run());
        Ok(Discoverer {
            group: self.network.group,
            commands,
            events,
            shared,
            lagged: Arc::new(AtomicU64::new(0)),
            first_receiver: Mutex::new(Some(first_receiver)),
            task: Some(task),
        })
    }
}

/// Minimum interval between DISCOVER rounds.
pub const MIN_DISCOVER_INTERVAL: Duration = Duration::from_secs(1);
/// Minimum silence before a seed entry is probed.
pub const MIN_EXPIRE_AFTER: Duration = Duration::from_millis(100);
/// Minimum gap between probes.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// A running discoverer: keeps the table of live instances of one group and publishes changes.
#[derive(Debug)]
pub struct Discoverer {
    group: GroupId,
    commands: mpsc::Sender<Command<DiscovererMachine>>,
    events: broadcast::Sender<Event>,
    shared: Arc<Shared>,
    lagged: Arc<AtomicU64>,
    first_receiver: Mutex<Option<broadcast::Receiver<Event>>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DiscovererMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscovererMachine").field("instances", &self.engine.len()).finish()
    }
}

impl Discoverer {
    /// Starts building a discoverer for the service with this group id.
    pub fn builder(group: GroupId) -> DiscovererBuilder {
        DiscovererBuilder { network: NetworkConfig::new(group), engine: DiscovererConfig::new(group) }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Returns the names of the interfaces in use now. Empty while waiting for one to come up.
    pub fn interfaces(&self) -> Vec<String> {
        driver::interface_names(&self.shared)
    }

    /// Returns the live instances, sorted by id.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn instances(&self) -> Result<Vec<InstanceInfo>, Error> {
        self.ask(|machine| {
            let mut instances: Vec<_> = machine.engine.instances().cloned().collect();
            instances.sort_by(|a, b| a.id.cmp(&b.id));
            instances
        })
        .await
    }

    /// Returns the live instances and a stream of every change after them, with nothing lost in
    /// between.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn watch(&self) -> Result<(Vec<InstanceInfo>, Events), Error> {
        let lagged = Arc::clone(&self.lagged);
        let (instances, receiver) = self
            .ask(|machine| {
                let mut instances: Vec<_> = machine.engine.instances().cloned().collect();
                instances.sort_by(|a, b| a.id.cmp(&b.id));
                (instances, machine.events.subscribe())
            })
            .await?;
        Ok((instances, Events { inner: BroadcastStream::new(receiver), lagged, missed: 0 }))
    }

    /// Subscribes to changes. The first call returns every event since the discoverer started;
    /// later calls return the events from the moment of the call on.
    pub fn events(&self) -> Events {
        let first = self.first_receiver.lock().ok().and_then(|mut receiver| receiver.take());
        let receiver = first.unwrap_or_else(|| self.events.subscribe());
        Events { inner: BroadcastStream::new(receiver), lagged: Arc::clone(&self.lagged), missed: 0 }
    }

    /// Returns the traffic counters.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let packets = self.ask(|machine| machine.engine.stats().clone()).await?;
        let mut stats = Stats::new(packets, &self.shared.counters);
        stats.events_lagged = self.lagged.load(Ordering::Relaxed);
        Ok(stats)
    }

    /// Replaces the key ring without a restart; the table is kept. This is how a running
    /// discoverer takes part in a key rotation.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_keys(&self, keys: KeyRing) -> Result<(), Error> {
        self.ask(move |machine| machine.engine.set_keys(Some(keys))).await
    }

    /// Stops discovering and leaves the group.
    pub async fn shutdown(mut self) {
        let (reply, done) = oneshot::channel();
        let job = Box::new(|_: &mut DiscovererMachine, _now| {});
        if self.commands.send(Command::Shutdown(job, reply)).await.is_ok() {
            let _ = done.await;
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Returns a cheap handle that can read the table after this borrow ends.
    #[cfg(feature = "tower")]
    pub(crate) fn table_reader(&self) -> TableReader {
        TableReader { commands: self.commands.clone() }
    }

    async fn ask<T: Send + 'static>(
        &self,
        query: impl FnOnce(&mut DiscovererMachine) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move |machine: &mut DiscovererMachine, _now| {
            let _ = reply.send(query(machine));
        });
        self.commands.send(Command::Run(job)).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }
}

/// Reads a discoverer's table from a stream that outlives the borrow of the discoverer.
#[cfg(feature = "tower")]
#[derive(Clone)]
pub(crate) struct TableReader {
    commands: mpsc::Sender<Command<DiscovererMachine>>,
}

#[cfg(feature = "tower")]
impl TableReader {
    pub(crate) async fn instances(self) -> Result<Vec<InstanceInfo>, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move |machine: &mut DiscovererMachine, _now| {
            let _ = reply.send(machine.engine.instances().cloned().collect::<Vec<_>>());
        });
        self.commands.send(Command::Run(job)).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)
    }
}

impl Drop for Discoverer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A stream of a discoverer's events. Ends when the discoverer stops.
#[derive(Debug)]
pub struct Events {
    inner: BroadcastStream<Event>,
    lagged: Arc<AtomicU64>,
    missed: u64,
}

impl Events {
    /// Returns how many events this subscriber has lost by falling more than [`EVENT_BUFFER`]
    /// events behind. When it grows, read [`Discoverer::instances`] to resynchronise.
    pub fn missed(&self) -> u64 {
        self.missed
    }

    /// Waits for the next event; `None` once the discoverer has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(event))) => return Poll::Ready(Some(event)),
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    self.lagged.fetch_add(missed, Ordering::Relaxed);
                    self.missed += missed;
                    tracing::debug!(missed, "event subscriber fell behind and lost events");
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
