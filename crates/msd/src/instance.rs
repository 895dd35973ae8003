//! Announcing one instance of a service.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use msd_engine::{Health, InstanceConfig, InterfaceIndex, LogoffTemplate, ProtocolMode, Received, Transmit};
use msd_wire::keys::KeyRing;
use msd_wire::GroupId;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::driver::{self, Command, Machine, Shared};
use crate::net::{InterfaceSelection, IpVersion, NetworkConfig};
use crate::{Error, Stats};

/// Largest UDP payload msd sends: the IPv4 limit of 65,507 bytes.
pub const MAX_DATAGRAM: usize = 65_507;

impl Machine for msd_engine::Instance {
    const HEARS_ONLY_DISCOVERS: bool = true;

    fn add_interface(&mut self, now: Instant, interface: InterfaceIndex) {
        msd_engine::Instance::add_interface(self, now, interface);
    }
    fn remove_interface(&mut self, interface: InterfaceIndex) {
        msd_engine::Instance::remove_interface(self, interface);
    }
    fn handle_datagram(&mut self, now: Instant, datagram: Received<'_>) {
        msd_engine::Instance::handle_datagram(self, now, datagram);
    }
    fn handle_timeout(&mut self, now: Instant) {
        msd_engine::Instance::handle_timeout(self, now);
    }
    fn poll_timeout(&self) -> Option<Instant> {
        msd_engine::Instance::poll_timeout(self)
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        msd_engine::Instance::poll_transmit(self)
    }
}

/// Settings for an [`Instance`], from [`Instance::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct InstanceBuilder {
    network: NetworkConfig,
    engine: InstanceConfig,
}

impl InstanceBuilder {
    crate::net::network_setters!();

    /// Sets the instance id, unique within the group. Required. The original implementation
    /// requires exactly 8 characters; msd and the original's discoverers accept any non-empty id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.engine.id = id.into();
        self
    }

    /// Sets the URL clients use to reach the instance. Required; must be an absolute URL.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        self.engine.url = url.into();
        self
    }

    /// Sets the protocols sent and answered. Default: both. With a key ring only the native
    /// protocol is used.
    pub fn protocols(mut self, protocols: ProtocolMode) -> Self {
        self.engine.protocols = protocols;
        self
    }

    /// Authenticates every packet with this key ring's primary key, and accepts only DISCOVERs
    /// and PROBEs authenticated by one of its keys.
    pub fn keys(mut self, keys: KeyRing) -> Self {
        self.engine.keys = Some(keys);
        self
    }

    /// Sets the health announced at start. Default: serving.
    pub fn health(mut self, health: Health) -> Self {
        self.engine.health = health;
        self
    }

    /// Sets the weight announced for balancing. Default: none.
    pub fn weight(mut self, weight: u32) -> Self {
        self.engine.weight = Some(weight);
        self
    }

    /// Sets the load announced at start. Default: none.
    pub fn load(mut self, load: u32) -> Self {
        self.engine.load = Some(load);
        self
    }

    /// Adds a metadata entry, such as a zone or version.
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.engine.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the gap between native heartbeats, varied by ±20 %. Default: 500 ms.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.engine.heartbeat_interval = interval;
        self
    }

    /// Sets how long discoverers keep the instance without another packet. Default: 2 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.engine.ttl = ttl;
        self
    }

    /// Sets the gap between unsolicited seed ANNOUNCE rounds. Default: 20 s.
    pub fn announce_interval(mut self, interval: Duration) -> Self {
        self.engine.announce_interval = interval;
        self
    }

    /// Sets the ANNOUNCE rounds at start and the gap before the second one, which doubles for
    /// each later round. Default: 3 rounds, 250 ms.
    pub fn startup_announces(mut self, rounds: u32, spacing: Duration) -> Self {
        self.engine.startup_announces = rounds;
        self.engine.startup_announce_spacing = spacing;
        self
    }

    /// Sets the longest random delay before answering a DISCOVER. Default: 100 ms.
    pub fn max_answer_delay(mut self, delay: Duration) -> Self {
        self.engine.max_answer_delay = delay;
        self
    }

    /// Validates the settings, opens the sockets and starts announcing.
    ///
    /// Must be called within a tokio runtime.
    ///
    /// # Errors
    ///
    /// Fails on an empty id, an invalid URL, an announcement larger than [`MAX_DATAGRAM`], an
    /// interface that does not exist, or a port held by a program that does not share it.
    pub async fn start(mut self) -> Result<Instance, Error> {
        validate(&self.engine)?;
        self.engine.rng_seed = rand::random();
        // Microseconds since the Unix epoch grow from one start to the next, as incarnations must.
        self.engine.incarnation = driver::unix_micros();
        let engine = msd_engine::Instance::new(self.engine.clone(), driver::now(), driver::unix_millis())?;
        let logoff = engine.logoff_template();
        let (driver, commands, shared) = driver::prepare(engine, self.network.clone(), "instance")?;
        let task = tokio::spawn(driver.run());
        tracing::debug!(id = ?self.engine.id, url = ?self.engine.url, "instance started");
        Ok(Instance {
            id: self.engine.id,
            network: self.network,
            commands,
            shared,
            task: Some(task),
            logoff: std::sync::Mutex::new(logoff),
        })
    }
}

/// Minimum heartbeat interval.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);
/// Minimum interval between unsolicited seed announcements.
pub const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(100);

/// Returns an invalid-setting error when `value` of `setting` is below `min`.
pub(crate) fn at_least(setting: &'static str, value: Duration, min: Duration) -> Result<(), Error> {
    if value < min {
        return Err(Error::invalid(setting, format!("{value:?} is below the minimum of {min:?}")));
    }
    Ok(())
}

fn validate(config: &InstanceConfig) -> Result<(), Error> {
    if config.id.is_empty() {
        return Err(Error::invalid("instance id", "it is empty; give each instance a unique id"));
    }
    if config.id.len() > msd_wire::native::MAX_ID_LEN {
        return Err(Error::invalid(
            "instance id",
            format!("it is {} bytes long, more than the maximum of {}", config.id.len(), msd_wire::native::MAX_ID_LEN),
        ));
    }
    // Lower bounds that keep one misconfigured instance from flooding its link.
    at_least("heartbeat interval", config.heartbeat_interval, MIN_HEARTBEAT_INTERVAL)?;
    at_least("announce interval", config.announce_interval, MIN_ANNOUNCE_INTERVAL)?;
    if config.ttl < 2 * config.heartbeat_interval {
        return Err(Error::invalid(
            "TTL",
            format!(
                "{:?} is less than twice the heartbeat interval of {:?}, so one late heartbeat would expire the instance; raise the TTL or shorten the heartbeat interval",
                config.ttl, config.heartbeat_interval
            ),
        ));
    }
    if let Err(error) = url::Url::parse(&config.url) {
        return Err(Error::invalid(
            "instance url",
            format!("{:?} is not an absolute URL ({error}); write it like http://10.0.0.7:8080", config.url),
        ));
    }
    let size = msd_wire::seed::SeedPacket::announce(&config.url, &config.id).encoded_len();
    if size > MAX_DATAGRAM {
        let (field, len) = if config.url.len() >= config.id.len() {
            ("instance url", config.url.len())
        } else {
            ("instance id", config.id.len())
        };
        return Err(Error::invalid(
            field,
            format!("it is {len} bytes long and makes the announcement {size} bytes, more than the maximum of {MAX_DATAGRAM}"),
        ));
    }
    Ok(())
}

/// A running instance: announces itself to its group and answers DISCOVERs until it is shut down
/// or dropped.
///
/// [`Instance::shutdown`] sends LOGOFF on every interface and waits until it has been sent.
/// Dropping the handle without it sends LOGOFF too, from a fresh socket, on a best-effort basis.
#[derive(Debug)]
pub struct Instance {
    id: String,
    network: NetworkConfig,
    commands: mpsc::Sender<Command<msd_engine::Instance>>,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    /// Rebuilt when the key ring changes, so a drop-time LOGOFF is signed with the current key.
    logoff: std::sync::Mutex<LogoffTemplate>,
}

impl Instance {
    /// Starts building an instance of the service with this group id.
    pub fn builder(group: GroupId) -> InstanceBuilder {
        InstanceBuilder { network: NetworkConfig::new(group), engine: InstanceConfig::new(group, "", "") }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn group(&self) -> GroupId {
        self.network.group
    }

    /// Returns the names of the interfaces in use now. Empty while waiting for one to come up.
    pub fn interfaces(&self) -> Vec<String> {
        driver::interface_names(&self.shared)
    }

    /// Returns the traffic counters.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn stats(&self) -> Result<Stats, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move |engine: &mut msd_engine::Instance, _now| {
            let _ = reply.send(engine.stats().clone());
        });
        self.commands.send(Command::Run(job)).await.map_err(|_| Error::Stopped)?;
        let packets = answer.await.map_err(|_| Error::Stopped)?;
        Ok(Stats::new(packets, &self.shared.counters))
    }

    /// Sets the health and announces it at once.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_health(&self, health: Health) -> Result<(), Error> {
        self.update(move |engine, now| engine.set_health(now, health)).await
    }

    /// Sets the reported load and announces it at once.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_load(&self, load: Option<u32>) -> Result<(), Error> {
        self.update(move |engine, now| engine.set_load(now, load)).await
    }

    /// Sets the weight and announces it at once.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_weight(&self, weight: Option<u32>) -> Result<(), Error> {
        self.update(move |engine, now| engine.set_weight(now, weight)).await
    }

    /// Replaces the metadata and announces it at once.
    ///
    /// # Errors
    ///
    /// Fails, keeping the old metadata, when the announcement would no longer fit one datagram;
    /// returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_metadata(&self, metadata: BTreeMap<String, String>) -> Result<(), Error> {
        self.update(move |engine, now| engine.set_metadata(now, metadata)).await
    }

    /// Replaces the key ring without a restart: the next packet is signed with the new primary
    /// key. This is how a running instance takes part in a key rotation.
    ///
    /// # Errors
    ///
    /// Fails, keeping the old ring, when the announcement would no longer fit one datagram;
    /// returns [`Error::Stopped`] when the background task has ended.
    pub async fn set_keys(&self, keys: KeyRing) -> Result<(), Error> {
        let template = {
            let (reply, answer) = oneshot::channel();
            let job = Box::new(move |engine: &mut msd_engine::Instance, _now| {
                let result = engine.set_keys(Some(keys)).map(|()| engine.logoff_template());
                let _ = reply.send(result);
            });
            self.commands.send(Command::Run(job)).await.map_err(|_| Error::Stopped)?;
            answer.await.map_err(|_| Error::Stopped)??
        };
        if let Ok(mut logoff) = self.logoff.lock() {
            *logoff = template;
        }
        Ok(())
    }

    async fn update(
        &self,
        change: impl FnOnce(&mut msd_engine::Instance, Instant) -> Result<(), msd_wire::EncodeError> + Send + 'static,
    ) -> Result<(), Error> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(move |engine: &mut msd_engine::Instance, now| {
            let _ = reply.send(change(engine, now));
        });
        self.commands.send(Command::Run(job)).await.map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?.map_err(Error::from)
    }

    /// Sends LOGOFF on every interface, waits until it has left, and stops.
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task had already ended; the LOGOFF is then
    /// sent on a best-effort basis.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        let (reply, done) = oneshot::channel();
        let job = Box::new(|engine: &mut msd_engine::Instance, now| engine.shutdown(now));
        let sent = self.commands.send(Command::Shutdown(job, reply)).await.is_ok() && done.await.is_ok();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        if sent {
            Ok(())
        } else {
            driver::send_best_effort(&self.network, &self.shared, &self.logoff_packets());
            Err(Error::Stopped)
        }
    }
}

impl Instance {
    fn logoff_packets(&self) -> Vec<Vec<u8>> {
        let unix_ms = driver::unix_millis();
        self.logoff.lock().map(|template| template.packets(unix_ms)).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // `shutdown` takes the task; a handle that still has it was dropped without one.
        let Some(task) = self.task.take() else { return };
        self.shared.stopping.store(true, Ordering::Release);
        task.abort();
        driver::send_best_effort(&self.network, &self.shared, &self.logoff_packets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(id: &str, url: &str) -> InstanceConfig {
        InstanceConfig::new(GroupId::from_bytes([1; 14]), id, url)
    }

    #[test]
    fn empty_id_rejected() {
        let error = validate(&config("", "http://a:1")).unwrap_err();
        assert_eq!(error.to_string(), "invalid instance id: it is empty; give each instance a unique id");
    }

    #[test]
    fn relative_url_rejected() {
        let error = validate(&config("a", "/path")).unwrap_err();
        assert!(error.to_string().starts_with("invalid instance url: \"/path\" is not an absolute URL"), "{error}");
    }

    #[test]
    fn oversized_url_names_field() {
        let url = format!("http://a/{}", "x".repeat(MAX_DATAGRAM));
        let error = validate(&config("a", &url)).unwrap_err();
        assert!(error.to_string().starts_with("invalid instance url: it is 65516 bytes long"), "{error}");
    }

    #[test]
    fn valid_settings_accepted() {
        assert!(validate(&config("deadbeef", "http://10.0.0.7:8080")).is_ok());
    }
}
