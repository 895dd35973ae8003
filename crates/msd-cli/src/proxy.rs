//! `msd proxy`: a TCP load balancer over the live, serving instances of a service.
//!
//! Each accepted connection goes to one instance chosen by power-of-two-choices on the proxy's
//! own count of open connections (or another strategy). A connect that fails or times out is
//! retried on another instance before the client sees anything; with no instance left the client
//! connection is closed at once. Draining, failing and removed instances get no new
//! connections, while connections already open to them run to their end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::num::NonZeroU16;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use axum::routing::get;
use msd::balance::{Balancer, Strategy};
use msd::{Discoverer, Event, InstanceInfo};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::signal::unix::Signal;
use tracing::{debug, info, warn};

use crate::args::ProxyArgs;
use crate::commands::{hangup_signals, StopSignals};
use crate::connections::{bind, check_max_connections, is_local_exhaustion, parse_idle_timeout, raise_open_file_limit, Activity, ConnectionLimit, Watched};
use crate::http_server;
use crate::warning_limit::{nonzero, WarningLimit};
use crate::exit::CliError;
use crate::settings::{apply_discovery, parse_duration, parse_metadata, usage, Network};

type Labels = Vec<(&'static str, String)>;

/// How long an instance a connect failed to is skipped.
const COOLDOWN: Duration = Duration::from_secs(2);

/// Maximum number of warnings about instances (unusable URLs, failed connects) logged per
/// second over all instances. Each new id with an unusable URL and each failed connect causes
/// one, which a network of churning or hostile ids turns into thousands a second. The rest are
/// only counted, and the count goes out with the next warning logged.
const WARNINGS_PER_SECOND: u32 = 5;

/// Maximum number of connections open at once to the metrics server.
const METRICS_CONNECTIONS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(16).unwrap();

/// Silence after which a connection to the metrics server is closed.
const METRICS_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of the proxy after validation.
#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    connect_timeout: Duration,
    attempts: usize,
    port_key: Option<String>,
    drain_timeout: Duration,
    max_connections: std::num::NonZeroUsize,
    idle_timeout: Duration,
}

/// One instance the proxy can forward to.
#[derive(Debug, Clone)]
struct Backend {
    info: InstanceInfo,
    /// Host and port to connect to; a name is resolved at connect time.
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Address(SocketAddr),
    Name(String, u16),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Address(address) => address.fmt(f),
            Target::Name(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

/// The proxy's shared state.
///
/// Locks are taken in the order `backends`, then `unusable`, `cooling` or `active`, then the
/// metric families. Holding `backends` while changing per-instance state and series makes
/// removing an instance atomic with respect to connections that open, close or fail meanwhile,
/// so none of them can re-create state for an instance already removed.
#[derive(Debug)]
struct Proxy {
    settings: Settings,
    balancer: Balancer,
    backends: RwLock<BTreeMap<String, Backend>>,
    /// Open connections per instance id, the load for power-of-two-choices. An id is present
    /// only while it has open connections.
    active: Mutex<BTreeMap<String, u64>>,
    /// Live instances whose URL the proxy cannot use, each warned about once while it stays
    /// unusable.
    unusable: Mutex<BTreeSet<String>>,
    /// Instances a connect just failed to, skipped until the instant given unless no other is
    /// left, so that a dead instance costs one failed connect per cooldown rather than one per
    /// client until the discoverer removes it.
    cooling: Mutex<BTreeMap<String, Instant>>,
    warnings: WarningLimit,
    metrics: ProxyMetrics,
    /// Places for client connections. Each place also covers that client's instance connection.
    connections: Arc<ConnectionLimit>,
}

#[derive(Debug)]
struct ProxyMetrics {
    registry: Registry,
    connections: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    connect_errors: Family<Labels, Counter>,
    unusable: Counter<u64, AtomicU64>,
    local_errors: Counter<u64, AtomicU64>,
    bytes: Family<Labels, Counter>,
}

impl ProxyMetrics {
    fn new(limit: &ConnectionLimit) -> Self {
        let mut registry = Registry::with_prefix("msd_proxy");
        registry.register(
            "connection_limit_reached",
            "Times an accepted client found all --max-connections places taken; clients queued behind it in the listen backlog are not counted",
            limit.limit_reached(),
        );
        registry.register(
            "idle_connections_closed",
            "Forwarded connections closed because no byte moved for --idle-timeout",
            limit.idle_closed(),
        );
        let connections = Family::<Labels, Counter>::default();
        registry.register("connections", "Client connections, by result (forwarded, no_backend)", connections.clone());
        let active = Family::<Labels, Gauge>::default();
        registry.register("active_connections", "Open forwarded connections, by instance", active.clone());
        let connect_errors = Family::<Labels, Counter>::default();
        registry.register("connect_errors", "Failed connects to instances, by instance", connect_errors.clone());
        let unusable = Counter::default();
        registry.register("unusable_instances", "Instances skipped because their URL has no usable host and port", unusable.clone());
        let bytes = Family::<Labels, Counter>::default();
        registry.register("bytes", "Bytes forwarded, by direction", bytes.clone());
        let local_errors = Counter::default();
        registry.register(
            "local_connect_errors",
            "Connects to instances that failed because the proxy ran out of file descriptors, buffers or memory",
            local_errors.clone(),
        );
        ProxyMetrics { registry, connections, active, connect_errors, unusable, local_errors, bytes }
    }
}

pub(crate) async fn run(args: ProxyArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    let settings = settings(&args)?;
    let strategy: Strategy = args.strategy.parse().map_err(|error| usage(format!("--strategy: {error}")))?;
    let mut balancer = Balancer::new(strategy);
    for (key, value) in parse_metadata(&args.metadata)? {
        balancer = balancer.with_metadata(key, value);
    }

    raise_open_file_limit(settings.max_connections.get(), 2, "--max-connections");
    let listener = bind(settings.listen).map_err(|error| CliError::Failure(format!("failed to listen on {}: {error}", settings.listen)))?;
    let mut stop = StopSignals::install()?;
    let hangups = hangup_signals()?;
    let builder = network.apply_discoverer(Discoverer::builder(network.group));
    let discoverer = apply_discovery(&args.discovery, builder)?.start().await?;
    let (initial, events) = discoverer.watch().await?;
    let proxy = Arc::new(Proxy::new(settings, balancer));
    for info in initial {
        proxy.update(info);
    }
    let follower = tokio::spawn(follow(Arc::clone(&proxy), events));
    let discoverer = Arc::new(discoverer);
    let reloader = tokio::spawn(reload_on_hangup(Arc::clone(&discoverer), hangups, args.network.key_file.clone()));
    let metrics_server = match proxy.settings.metrics_listen {
        Some(address) => Some(serve_metrics(Arc::clone(&proxy), address).await?),
        None => None,
    };

    info!(
        listen = %listener.local_addr().unwrap_or(proxy.settings.listen),
        group = %network.group,
        strategy = %args.strategy,
        max_connections = proxy.connections.max(),
        "proxying"
    );
    let connections = connection_tracker();
    loop {
        tokio::select! {
            (client, peer, place) = proxy.connections.accept(&listener) => {
                let proxy = Arc::clone(&proxy);
                let guard = connections.clone();
                tokio::spawn(async move {
                    proxy.handle(client, peer).await;
                    drop((guard, place));
                });
            },
            signal = stop.wait() => {
                info!(signal, "shutting down; waiting for open connections");
                break;
            }
        }
    }
    drop(listener);
    tokio::select! {
        () = wait_for_connections(connections, proxy.settings.drain_timeout) => {}
        signal = stop.wait() => {
            warn!(signal, "second signal; closing open connections now");
        }
    }
    follower.abort();
    reloader.abort();
    if let Some(server) = metrics_server {
        server.abort();
    }
    if let Ok(discoverer) = Arc::try_unwrap(discoverer) {
        discoverer.shutdown().await;
    }
    info!("stopped");
    Ok(())
}

/// Creates an `Arc` whose strong count is the number of open connections plus one.
fn connection_tracker() -> Arc<()> {
    Arc::new(())
}

async fn wait_for_connections(tracker: Arc<()>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Arc::strong_count(&tracker) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = Arc::strong_count(&tracker) - 1;
    if open > 0 {
        warn!(open, "closing connections still open after the drain timeout");
    }
}

fn settings(args: &ProxyArgs) -> Result<Settings, CliError> {
    let listen = args
        .listen
        .parse()
        .map_err(|_| usage(format!("invalid --listen {:?}: write an address and port such as 127.0.0.1:7000", args.listen)))?;
    let metrics_listen = args
        .metrics_listen
        .as_deref()
        .map(|text| text.parse().map_err(|_| usage(format!("invalid --metrics-listen {text:?}: write an address and port such as 127.0.0.1:9100"))))
        .transpose()?;
    if args.port_metadata.as_deref().is_some_and(|key| key.trim().is_empty()) {
        return Err(usage("invalid --port-metadata \"\": name a metadata key, such as port".into()));
    }
    if args.attempts == 0 {
        return Err(usage("invalid --attempts 0: at least one connect attempt is needed".into()));
    }
    Ok(Settings {
        listen,
        metrics_listen,
        connect_timeout: parse_duration("--connect-timeout", &args.connect_timeout)?,
        attempts: args.attempts,
        port_key: args.port_metadata.clone(),
        drain_timeout: parse_duration("--drain-timeout", &args.drain_timeout)?,
        max_connections: check_max_connections(args.max_connections)?,
        idle_timeout: parse_idle_timeout("--idle-timeout", &args.idle_timeout)?,
    })
}

/// Applies discoverer events to the backend table.
async fn follow(proxy: Arc<Proxy>, mut events: msd::Events) {
    while let Some(event) = events.next().await {
        proxy.apply(event);
    }
}

impl Proxy {
    fn new(settings: Settings, balancer: Balancer) -> Self {
        let connections = ConnectionLimit::new(settings.max_connections, Some("--max-connections"));
        Proxy {
            metrics: ProxyMetrics::new(&connections),
            connections,
            settings,
            balancer,
            backends: RwLock::new(BTreeMap::new()),
            active: Mutex::new(BTreeMap::new()),
            unusable: Mutex::new(BTreeSet::new()),
            cooling: Mutex::new(BTreeMap::new()),
            warnings: WarningLimit::new(Duration::from_secs(1), WARNINGS_PER_SECOND),
        }
    }

    fn apply(&self, event: Event) {
        match event {
            Event::Up(info) | Event::Changed { current: info, .. } => self.update(info),
            Event::Down { instance, reason } => {
                debug!(id = ?instance.id, %reason, "instance removed from the proxy");
                self.forget(&instance.id);
                lock(&self.unusable).remove(&instance.id);
            }
        }
    }

    fn update(&self, info: InstanceInfo) {
        // Instances outside the metadata filters are never picked, so their URLs do not matter.
        if !self.balancer.metadata_matches(&info) {
            self.forget(&info.id);
            lock(&self.unusable).remove(&info.id);
            return;
        }
        let Some(target) = target(&info, self.settings.port_key.as_deref()) else {
            self.skip_unusable(&info);
            return;
        };
        let mut backends = write(&self.backends);
        lock(&self.unusable).remove(&info.id);
        backends.insert(info.id.clone(), Backend { info, target });
    }

    /// Removes an instance whose URL became unusable from the backends, warning once per
    /// instance until it goes down or announces a usable URL.
    fn skip_unusable(&self, info: &InstanceInfo) {
        self.forget(&info.id);
        let first = lock(&self.unusable).insert(info.id.clone());
        if !first {
            return;
        }
        self.metrics.unusable.inc();
        if let Some(suppressed) = self.admit_warning() {
            warn!(
                id = ?info.id,
                url = ?info.url,
                suppressed = nonzero(suppressed),
                "instance skipped: its URL has no host and port the proxy can connect to"
            );
        }
    }

    /// Removes an instance from the backends with its cooldown and its per-instance series, so
    /// that ids that come and go leave nothing behind.
    fn forget(&self, id: &str) {
        let mut backends = write(&self.backends);
        backends.remove(id);
        lock(&self.cooling).remove(id);
        let labels = instance_labels(id);
        self.metrics.connect_errors.remove(&labels);
        // The open-connections series stays while connections to the instance are still open,
        // because removing it would hide them from /metrics until they end. `open` removes it
        // when the last of them closes.
        if !lock(&self.active).contains_key(id) {
            self.metrics.active.remove(&labels);
        }
        drop(backends);
    }

    fn admit_warning(&self) -> Option<u64> {
        self.warnings.admit(Instant::now())
    }

    /// Chooses a backend not yet tried for this connection.
    fn choose(&self, tried: &BTreeSet<String>) -> Option<Backend> {
        let backends = read(&self.backends);
        let now = Instant::now();
        let cooling = lock(&self.cooling);
        let untried = || backends.values().filter(|backend| !tried.contains(&backend.info.id));
        let warm: Vec<InstanceInfo> = untried()
            .filter(|backend| cooling.get(&backend.info.id).is_none_or(|until| *until <= now))
            .map(|backend| backend.info.clone())
            .collect();
        drop(cooling);
        let candidates = if warm.iter().any(|info| self.balancer.eligible(info)) {
            warm
        } else {
            untried().map(|backend| backend.info.clone()).collect()
        };
        let active = lock(&self.active);
        let picked = self.balancer.pick_by_load(&candidates, |info| active.get(&info.id).copied().unwrap_or(0))?;
        backends.get(&picked.id).cloned()
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr) {
        let started = Instant::now();
        let mut tried = BTreeSet::new();
        let mut upstream = None;
        while tried.len() < self.settings.attempts {
            let Some(backend) = self.choose(&tried) else { break };
            tried.insert(backend.info.id.clone());
            match self.connect(&backend).await {
                Ok(stream) => {
                    upstream = Some((backend, stream));
                    break;
                }
                // The instance is not at fault, and another instance would fail the same way.
                Err(error) if is_local_exhaustion(&error) => {
                    self.local_exhaustion(peer, &error);
                    break;
                }
                Err(error) => self.connect_failed(&backend, peer, &error),
            }
        }
        let Some((backend, mut stream)) = upstream else {
            self.metrics.connections.get_or_create(&vec![("result", "no_backend".to_owned())]).inc();
            info!(client = %peer, attempts = tried.len(), "connection closed: no serving instance could be reached");
            return;
        };

        let id = backend.info.id.clone();
        self.open(&id, 1);
        self.metrics.connections.get_or_create(&vec![("result", "forwarded".to_owned())]).inc();
        let activity = Activity::new();
        let mut watched = Watched::new(client, Arc::clone(&activity));
        let copied = tokio::select! {
            copied = tokio::io::copy_bidirectional(&mut watched, &mut stream) => copied.map(|_| ()),
            () = activity.idle_for(self.settings.idle_timeout) => {
                self.connections.idle_closed().inc();
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "no byte moved for the idle timeout"))
            }
        };
        self.open(&id, -1);
        let (up, down) = activity.bytes();
        self.metrics.bytes.get_or_create(&vec![("direction", "to_instance".to_owned())]).inc_by(up);
        self.metrics.bytes.get_or_create(&vec![("direction", "to_client".to_owned())]).inc_by(down);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        let target = backend.target.to_string();
        match copied {
            Ok(_) => info!(client = %peer, id = ?id, target = ?target, bytes_up = up, bytes_down = down, elapsed_ms, "connection"),
            Err(error) => info!(client = %peer, id = ?id, target = ?target, %error, elapsed_ms, "connection ended with an error"),
        }
    }

    /// Logs a connect that failed because this process or host ran out of descriptors, buffers
    /// or memory. It is not counted against the instance.
    fn local_exhaustion(&self, peer: SocketAddr, error: &std::io::Error) {
        self.metrics.local_errors.inc();
        if let Some(suppressed) = self.admit_warning() {
            warn!(client = %peer, %error, suppressed = nonzero(suppressed), "connect failed: the proxy is out of resources; closing the client connection");
        }
    }

    /// Counts a failed connect and puts the instance in its cooldown.
    fn connect_failed(&self, backend: &Backend, peer: SocketAddr, error: &std::io::Error) {
        let id = &backend.info.id;
        let backends = read(&self.backends);
        // An instance removed since it was chosen has no series and no cooldown left, and
        // recording the failure would create them again for good, so it is only logged.
        if backends.contains_key(id) {
            self.metrics.connect_errors.get_or_create(&instance_labels(id)).inc();
            lock(&self.cooling).insert(id.clone(), Instant::now() + COOLDOWN);
        }
        drop(backends);

        if let Some(suppressed) = self.admit_warning() {
            warn!(
                client = %peer,
                id = ?id,
                target = ?backend.target.to_string(),
                %error,
                suppressed = nonzero(suppressed),
                "connect failed; trying another instance"
            );
        }
    }

    async fn connect(&self, backend: &Backend) -> std::io::Result<TcpStream> {
        let connect = async {
            match &backend.target {
                Target::Address(address) => TcpStream::connect(address).await,
                Target::Name(host, port) => TcpStream::connect((host.as_str(), *port)).await,
            }
        };
        match tokio::time::timeout(self.settings.connect_timeout, connect).await {
            Ok(result) => {
                let stream = result?;
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")),
        }
    }

    /// Adds `change` to the open connections of an instance and updates its series, which is
    /// removed when the last connection to an instance no longer among the backends closes.
    fn open(&self, id: &str, change: i64) {
        let backends = read(&self.backends);
        let mut active = lock(&self.active);
        let count = active.entry(id.to_owned()).or_insert(0);
        *count = count.saturating_add_signed(change);
        let value = *count;
        if value == 0 {
            active.remove(id);
        }
        let labels = instance_labels(id);
        if value == 0 && !backends.contains_key(id) {
            self.metrics.active.remove(&labels);
        } else {
            self.metrics.active.get_or_create(&labels).set(i64::try_from(value).unwrap_or(i64::MAX));
        }
    }
}

/// Returns the labels of an instance's series.
fn instance_labels(id: &str) -> Labels {
    vec![("instance", escape_label_value(id))]
}

/// Escapes a label value for the Prometheus and OpenMetrics text formats: backslash, double
/// quote and line feed become `\\`, `\"` and `\n`. prometheus-client 0.23 writes label values
/// unescaped, and instance ids come from the network, so an id could otherwise end the value
/// and add series of its own.
fn escape_label_value(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// Returns a count for a log field, or `None` (no field) when it is zero.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns where to connect for an instance: the port from metadata `port_key` when given and
/// valid, else the URL's port or its scheme's default. A link-local IPv6 host gets the scope of
/// the interface the instance was heard on. Port 0 is never valid, because a connect to it
/// always fails.
fn target(info: &InstanceInfo, port_key: Option<&str>) -> Option<Target> {
    let url = url::Url::parse(&info.url).ok()?;
    let metadata_port = port_key.and_then(|key| info.metadata.get(key)).and_then(|port| port.parse::<NonZeroU16>().ok());
    let url_port = url.port_or_known_default().and_then(NonZeroU16::new);
    let port = metadata_port.or(url_port)?.get();
    match url.host()? {
        url::Host::Ipv4(address) => Some(Target::Address(SocketAddr::new(IpAddr::V4(address), port))),
        url::Host::Ipv6(address) if address.is_unicast_link_local() => {
            Some(Target::Address(SocketAddr::V6(SocketAddrV6::new(address, port, 0, info.interface.0))))
        }
        url::Host::Ipv6(address) => Some(Target::Address(SocketAddr::new(IpAddr::V6(address), port))),
        // URLs of schemes the url crate does not know keep IP addresses as text.
        url::Host::Domain(name) => match name.parse::<IpAddr>() {
            Ok(address) => Some(Target::Address(SocketAddr::new(address, port))),
            Err(_) => Some(Target::Name(name.to_owned(), port)),
        },
    }
}

async fn serve_metrics(proxy: Arc<Proxy>, address: SocketAddr) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let listener = bind(address).map_err(|error| CliError::Failure(format!("failed to listen on {address} for metrics: {error}")))?;
    // A small, fixed budget: the metrics server has one scraper or a few.
    let limit = ConnectionLimit::new(METRICS_CONNECTIONS, None);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let proxy = Arc::clone(&proxy);
                async move {
                    let mut text = String::new();
                    if encode(&mut text, &proxy.metrics.registry).is_err() {
                        text.clear();
                    }
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                }
            }),
        )
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }));
    info!(listen = %address, "serving proxy metrics");
    // The task is aborted when the proxy stops, which closes the metrics connections with it.
    Ok(tokio::spawn(async move {
        http_server::serve(listener, &limit, METRICS_IDLE_TIMEOUT, app, std::future::pending()).await;
    }))
}

/// Applies the key file again on every SIGHUP, for key rotation without a restart.
async fn reload_on_hangup(discoverer: Arc<Discoverer>, mut hangups: Signal, key_file: Option<std::path::PathBuf>) {
    while hangups.recv().await.is_some() {
        if let Some(keys) = crate::commands::reload_keys(key_file.as_deref()) {
            match discoverer.set_keys(keys).await {
                Ok(()) => info!("key ring reloaded"),
                Err(error) => warn!(%error, "failed to apply the reloaded key ring"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(url: &str, metadata: &[(&str, &str)]) -> InstanceInfo {
        let metadata = metadata.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
        InstanceInfo { metadata, interface: msd::InterfaceIndex(7), ..crate::testing::instance_info("a", url) }
    }

    #[test]
    fn targets_from_urls() {
        assert_eq!(target(&info("http://10.0.0.7:8080/x", &[]), None), Some(Target::Address("10.0.0.7:8080".parse().unwrap())));
        assert_eq!(target(&info("http://10.0.0.7/", &[]), None), Some(Target::Address("10.0.0.7:80".parse().unwrap())));
        assert_eq!(target(&info("http://web.internal:81", &[]), None), Some(Target::Name("web.internal".into(), 81)));
        let Some(Target::Address(SocketAddr::V6(scoped))) = target(&info("http://[fe80::1]:80", &[]), None) else {
            panic!("expected a scoped address")
        };
        assert_eq!(scoped.scope_id(), 7);
    }

    #[test]
    fn metadata_port_wins() {
        let backend = info("grpc://10.0.0.7", &[("port", "9000")]);
        assert_eq!(target(&backend, Some("port")), Some(Target::Address("10.0.0.7:9000".parse().unwrap())));
    }

    #[test]
    fn unusable_urls_skipped() {
        for url in ["mailto:x@y", "custom://10.0.0.7", "not a url", "http://10.77.0.3:0", "http://[fe80::1]:0/"] {
            assert_eq!(target(&info(url, &[]), None), None, "{url}");
        }
    }

    #[test]
    fn metadata_port_zero_ignored() {
        let with_url_port = info("http://10.0.0.7:8080", &[("port", "0")]);
        assert_eq!(target(&with_url_port, Some("port")), Some(Target::Address("10.0.0.7:8080".parse().unwrap())));
        let without_url_port = info("grpc://10.0.0.7", &[("port", "0")]);
        assert_eq!(target(&without_url_port, Some("port")), None);
    }

    /// An id that would end its label value and add two series if written unescaped.
    const HOSTILE_ID: &str = "x\"} 1\nmsd_proxy_connections_total{result=\"forwarded\"} 999999\nfake_metric{a=\"\\";

    fn instance(id: &str, url: &str) -> InstanceInfo {
        InstanceInfo { id: id.into(), ..info(url, &[]) }
    }

    fn test_proxy() -> Proxy {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            connect_timeout: Duration::from_secs(1),
            attempts: 3,
            port_key: None,
            drain_timeout: Duration::from_secs(1),
            max_connections: std::num::NonZeroUsize::new(8).unwrap(),
            idle_timeout: Duration::from_secs(60),
        };
        Proxy::new(settings, Balancer::new(Strategy::PowerOfTwoChoices))
    }

    fn encoded(proxy: &Proxy) -> String {
        let mut text = String::new();
        encode(&mut text, &proxy.metrics.registry).unwrap();
        text
    }

    fn down(info: InstanceInfo) -> Event {
        Event::Down { instance: info, reason: msd::DownReason::Expired }
    }

    fn fail_connect(proxy: &Proxy, id: &str) {
        let backend = read(&proxy.backends).get(id).cloned().expect("a backend");
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        proxy.connect_failed(&backend, "127.0.0.1:5".parse().unwrap(), &error);
    }

    /// One sample of the text format: metric name, labels with unescaped values, value.
    type Sample = (String, Vec<(String, String)>, String);

    /// Parses a sample line of the OpenMetrics text format, or returns `None` when the line is
    /// not one well-formed sample.
    fn parse_sample(line: &str) -> Option<Sample> {
        let name_end = line.find(['{', ' '])?;
        let (name, mut rest) = line.split_at(name_end);
        let valid_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
        if !valid_name {
            return None;
        }
        let mut labels = Vec::new();
        if let Some(mut inside) = rest.strip_prefix('{') {
            loop {
                let (key, after_key) = inside.split_once("=\"")?;
                let mut value = String::new();
                let mut chars = after_key.char_indices();
                let end = loop {
                    match chars.next()? {
                        (_, '\\') => match chars.next()?.1 {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            _ => return None,
                        },
                        (index, '"') => break index,
                        (_, '\n') => return None,
                        (_, other) => value.push(other),
                    }
                };
                labels.push((key.to_owned(), value));
                let after_value = &after_key[end + 1..];
                if let Some(next) = after_value.strip_prefix(',') {
                    inside = next;
                } else {
                    rest = after_value.strip_prefix('}')?;
                    break;
                }
            }
        }
        let value = rest.strip_prefix(' ')?;
        value.parse::<f64>().ok()?;
        Some((name.to_owned(), labels, value.to_owned()))
    }

    fn samples(text: &str) -> Vec<Sample> {
        text.lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("malformed sample line {line:?} in:\n{text}")))
            .collect()
    }

    #[test]
    fn label_values_escaped() {
        let cases = [
            ("web-1", "web-1"),
            ("a\"b", "a\\\"b"),
            ("a\\b", "a\\\\b"),
            ("a\nb", "a\\nb"),
            ("\\n", "\\\\n"),
            ("tab\tcr\r", "tab\tcr\r"),
        ];
        for (raw, expected) in cases {
            assert_eq!(escape_label_value(raw), expected, "{raw:?}");
        }
    }

    #[test]
    fn hostile_id_one_sample_per_series() {
        let proxy = test_proxy();
        proxy.apply(Event::Up(instance(HOSTILE_ID, "http://127.0.0.1:9")));
        fail_connect(&proxy, HOSTILE_ID);
        proxy.open(HOSTILE_ID, 1);

        let text = encoded(&proxy);
        let samples = samples(&text);
        let per_instance = |name: &str| {
            samples
                .iter()
                .filter(|(sample, labels, _)| sample == name && labels.iter().any(|(key, _)| key == "instance"))
                .collect::<Vec<_>>()
        };
        let errors = per_instance("msd_proxy_connect_errors_total");
        assert_eq!(errors.len(), 1, "{text}");
        assert_eq!(errors[0].1, vec![("instance".to_owned(), HOSTILE_ID.to_owned())], "{text}");
        assert_eq!(errors[0].2, "1", "{text}");
        let active = per_instance("msd_proxy_active_connections");
        assert_eq!(active.len(), 1, "{text}");
        assert_eq!(active[0].1, vec![("instance".to_owned(), HOSTILE_ID.to_owned())], "{text}");
        assert_eq!(active[0].2, "1", "{text}");
        assert!(!samples.iter().any(|(name, _, _)| name == "fake_metric"), "{text}");
        assert!(!samples.iter().any(|(name, _, _)| name == "msd_proxy_connections_total"), "{text}");
    }

    #[test]
    fn churned_ids_leave_nothing() {
        let proxy = test_proxy();
        for index in 0..20_000 {
            let usable = instance(&format!("web-{index}"), "http://127.0.0.1:9");
            proxy.apply(Event::Up(usable.clone()));
            fail_connect(&proxy, &usable.id);
            proxy.open(&usable.id, 1);
            proxy.open(&usable.id, -1);
            proxy.apply(down(usable));

            let unusable = instance(&format!("bad-{index}"), "http://127.0.0.1:0");
            proxy.apply(Event::Up(unusable.clone()));
            assert!(lock(&proxy.unusable).contains(&unusable.id));
            proxy.apply(down(unusable));
        }

        assert!(read(&proxy.backends).is_empty());
        assert!(lock(&proxy.unusable).is_empty());
        assert!(lock(&proxy.cooling).is_empty());
        assert!(lock(&proxy.active).is_empty());
        let text = encoded(&proxy);
        assert!(!text.contains("instance="), "{text}");
        // The counter keeps every unusable instance although their state and series went away.
        assert_eq!(proxy.metrics.unusable.get(), 20_000);
    }

    #[test]
    fn active_series_outlives_instance() {
        let proxy = test_proxy();
        let web = instance("web-1", "http://127.0.0.1:9");
        proxy.apply(Event::Up(web.clone()));
        proxy.open("web-1", 1);
        fail_connect(&proxy, "web-1");
        proxy.apply(down(web.clone()));
        let text = encoded(&proxy);
        assert!(text.contains("msd_proxy_active_connections{instance=\"web-1\"} 1"), "{text}");
        assert!(!text.contains("msd_proxy_connect_errors_total{instance=\"web-1\"}"), "{text}");

        proxy.open("web-1", -1);
        assert!(!encoded(&proxy).contains("instance="));

        // A live instance keeps its series at 0 after its last connection closes.
        proxy.apply(Event::Up(web));
        proxy.open("web-1", 1);
        proxy.open("web-1", -1);
        assert!(encoded(&proxy).contains("msd_proxy_active_connections{instance=\"web-1\"} 0"));
    }

    #[test]
    fn failure_after_down_leaves_nothing() {
        let proxy = test_proxy();
        let web = instance("web-1", "http://127.0.0.1:9");
        proxy.apply(Event::Up(web.clone()));
        let backend = read(&proxy.backends).get("web-1").cloned().unwrap();
        proxy.apply(down(web));
        let error = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        proxy.connect_failed(&backend, "127.0.0.1:5".parse().unwrap(), &error);
        assert!(lock(&proxy.cooling).is_empty());
        assert!(!encoded(&proxy).contains("instance="));
    }

    /// An instance outside the metadata filters is neither a backend nor warned about, even with
    /// a URL the proxy could not use.
    #[test]
    fn filtered_out_instance_ignored() {
        let settings = Settings { port_key: None, ..test_proxy().settings };
        let proxy = Proxy::new(settings, Balancer::new(Strategy::PowerOfTwoChoices).with_metadata("zone", "eu-1"));
        let elsewhere = InstanceInfo { id: "other".into(), ..info("mailto:x@y", &[("zone", "us-1")]) };
        proxy.apply(Event::Up(elsewhere));
        assert!(lock(&proxy.unusable).is_empty());
        assert_eq!(proxy.metrics.unusable.get(), 0);

        let matching = InstanceInfo { id: "matching".into(), ..info("http://10.77.0.3:8080", &[("zone", "eu-1")]) };
        proxy.apply(Event::Up(matching));
        assert!(read(&proxy.backends).contains_key("matching"));
    }

    #[test]
    fn usable_url_clears_unusable() {
        let proxy = test_proxy();
        let bad = instance("web-1", "http://10.77.0.3:0");
        proxy.apply(Event::Up(bad.clone()));
        assert!(lock(&proxy.unusable).contains("web-1"));
        assert!(read(&proxy.backends).is_empty());

        let good = instance("web-1", "http://10.77.0.3:8080");
        proxy.apply(Event::Changed { previous: bad.clone(), current: good.clone() });
        assert!(lock(&proxy.unusable).is_empty());
        assert!(read(&proxy.backends).contains_key("web-1"));

        // Unusable again: removed from the backends and counted a second time.
        proxy.apply(Event::Changed { previous: good, current: bad });
        assert!(read(&proxy.backends).is_empty());
        assert_eq!(proxy.metrics.unusable.get(), 2);
    }
}
