//! `msd proxy`: a TCP load balancer over the live, serving instances of a service.
//!
//! Each accepted connection goes to one instance chosen by power-of-two-choices on the proxy's
//! own count of open connections (or another strategy). A connect that fails or times out is
//! retried on another instance before the client sees anything; with no instance left the client
//! connection is closed at once. Draining, failing and removed instances get no new
//! connections, while connections already open to them run to their end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::routing::get;
use msd::balance::{Balancer, Strategy};
use msd::{Discoverer, Event, InstanceInfo};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::Signal;
use tracing::{debug, info, warn};

use crate::args::ProxyArgs;
use crate::commands::{hangup_signals, StopSignals};
use crate::exit::CliError;
use crate::settings::{apply_discovery, parse_duration, parse_metadata, usage, Network};

type Labels = Vec<(&'static str, String)>;

/// How long an instance a connect failed to is skipped.
const COOLDOWN: Duration = Duration::from_secs(2);

/// Settings of the proxy after validation.
#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    connect_timeout: Duration,
    attempts: usize,
    port_key: Option<String>,
    drain_timeout: Duration,
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

#[derive(Debug)]
struct Proxy {
    settings: Settings,
    balancer: Balancer,
    backends: RwLock<BTreeMap<String, Backend>>,
    /// Open connections per instance id, the load for power-of-two-choices.
    active: Mutex<BTreeMap<String, u64>>,
    /// Instances whose URL the proxy cannot use, each warned about once.
    unusable: Mutex<BTreeSet<String>>,
    /// Instances a connect just failed to, skipped until the instant given unless no other is
    /// left, so that a dead instance costs one failed connect per cooldown rather than one per
    /// client until the discoverer removes it.
    cooling: Mutex<BTreeMap<String, Instant>>,
    metrics: ProxyMetrics,
}

#[derive(Debug)]
struct ProxyMetrics {
    registry: Registry,
    connections: Family<Labels, Counter>,
    active: Family<Labels, Gauge>,
    connect_errors: Family<Labels, Counter>,
    unusable: Counter<u64, AtomicU64>,
    bytes: Family<Labels, Counter>,
}

impl ProxyMetrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("msd_proxy");
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
        ProxyMetrics { registry, connections, active, connect_errors, unusable, bytes }
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

    let listener = TcpListener::bind(settings.listen)
        .await
        .map_err(|error| CliError::Failure(format!("failed to listen on {}: {error}", settings.listen)))?;
    let mut stop = StopSignals::install()?;
    let hangups = hangup_signals()?;
    let builder = network.apply_discoverer(Discoverer::builder(network.group));
    let discoverer = apply_discovery(&args.discovery, builder)?.start().await?;
    let (initial, events) = discoverer.watch().await?;
    let proxy = Arc::new(Proxy {
        settings,
        balancer,
        backends: RwLock::new(BTreeMap::new()),
        active: Mutex::new(BTreeMap::new()),
        unusable: Mutex::new(BTreeSet::new()),
        cooling: Mutex::new(BTreeMap::new()),
        metrics: ProxyMetrics::new(),
    });
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

    info!(listen = %listener.local_addr().unwrap_or(proxy.settings.listen), group = %network.group, strategy = %args.strategy, "proxying");
    let connections = connection_tracker();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, peer)) => {
                    let proxy = Arc::clone(&proxy);
                    let guard = connections.clone();
                    tokio::spawn(async move {
                        proxy.handle(client, peer).await;
                        drop(guard);
                    });
                }
                Err(error) => {
                    warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
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
    })
}

/// Applies discoverer events to the backend table.
async fn follow(proxy: Arc<Proxy>, mut events: msd::Events) {
    while let Some(event) = events.next().await {
        match event {
            Event::Up(info) | Event::Changed { current: info, .. } => proxy.update(info),
            Event::Down { instance, reason } => {
                debug!(id = %instance.id, %reason, "instance removed from the proxy");
                proxy.backends.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&instance.id);
            }
        }
    }
}

impl Proxy {
    fn update(&self, info: InstanceInfo) {
        let id = info.id.clone();
        let Some(target) = target(&info, self.settings.port_key.as_deref()) else {
            let mut unusable = self.unusable.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if unusable.insert(id.clone()) {
                self.metrics.unusable.inc();
                warn!(id = %id, url = %info.url, "instance skipped: its URL has no host and port the proxy can connect to");
            }
            self.backends.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&id);
            return;
        };
        self.backends.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, Backend { info, target });
    }

    /// Chooses a backend not yet tried for this connection.
    fn choose(&self, tried: &BTreeSet<String>) -> Option<Backend> {
        let backends = self.backends.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let cooling = self.cooling.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
        let active = self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let picked = self.balancer.pick_by_load(&candidates, |info| active.get(&info.id).copied().unwrap_or(0))?;
        backends.get(&picked.id).cloned()
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
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
                Err(error) => {
                    self.metrics.connect_errors.get_or_create(&vec![("instance", backend.info.id.clone())]).inc();
                    self.cooling
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert(backend.info.id.clone(), Instant::now() + COOLDOWN);
                    warn!(client = %peer, id = %backend.info.id, target = %backend.target, %error, "connect failed; trying another instance");
                }
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
        let copied = tokio::io::copy_bidirectional(&mut client, &mut stream).await;
        self.open(&id, -1);
        let (up, down) = copied.as_ref().map_or((0, 0), |(up, down)| (*up, *down));
        self.metrics.bytes.get_or_create(&vec![("direction", "to_instance".to_owned())]).inc_by(up);
        self.metrics.bytes.get_or_create(&vec![("direction", "to_client".to_owned())]).inc_by(down);
        let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
        match copied {
            Ok(_) => info!(client = %peer, id = %id, target = %backend.target, bytes_up = up, bytes_down = down, elapsed_ms, "connection"),
            Err(error) => info!(client = %peer, id = %id, target = %backend.target, %error, elapsed_ms, "connection ended with an error"),
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

    fn open(&self, id: &str, change: i64) {
        let mut active = self.active.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = active.entry(id.to_owned()).or_insert(0);
        *count = count.saturating_add_signed(change);
        let value = *count;
        if value == 0 {
            active.remove(id);
        }
        drop(active);
        self.metrics.active.get_or_create(&vec![("instance", id.to_owned())]).set(i64::try_from(value).unwrap_or(i64::MAX));
    }
}

/// Returns where to connect for an instance: the port from metadata `port_key` when given and
/// valid, else the URL's port or its scheme's default. A link-local IPv6 host gets the scope of
/// the interface the instance was heard on.
fn target(info: &InstanceInfo, port_key: Option<&str>) -> Option<Target> {
    let url = url::Url::parse(&info.url).ok()?;
    let metadata_port = port_key.and_then(|key| info.metadata.get(key)).and_then(|port| port.parse::<u16>().ok());
    let port = metadata_port.or_else(|| url.port_or_known_default())?;
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
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| CliError::Failure(format!("failed to listen on {address} for metrics: {error}")))?;
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
        .route("/healthz", get(|| async { "ok" }));
    info!(listen = %address, "serving proxy metrics");
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            warn!(%error, "metrics server failed");
        }
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
        let now = Instant::now();
        InstanceInfo {
            id: "a".into(),
            url: url.into(),
            protocol: msd::Protocol::Native,
            health: msd::Health::Serving,
            weight: None,
            load: None,
            metadata: metadata.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect(),
            incarnation: Some(1),
            sequence: Some(1),
            ttl: None,
            key_id: None,
            interface: msd::InterfaceIndex(7),
            source: "10.0.0.1:5".parse().unwrap(),
            first_seen: now,
            last_seen: now,
        }
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
        for url in ["mailto:x@y", "custom://10.0.0.7", "not a url"] {
            assert_eq!(target(&info(url, &[]), None), None, "{url}");
        }
    }
}
