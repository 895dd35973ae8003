//! `msd serve`: a discoverer with an HTTP face: JSON API, server-sent events, Prometheus service
//! discovery and metrics, and a live dashboard.
//!
//! Query parameters: `/v1/instances` and `/v1/prometheus-sd` take the filters `health`,
//! `protocol` and `metadata.KEY`, and `/v1/pick` takes them (except `health`) and `strategy`.
//! `/v1/events`, `/v1/instances/{id}`, `/metrics` and `/healthz` take none. The event stream is
//! not filtered on the server, because an instance that leaves a filter would need a `down` event
//! that the discoverer never sent, so clients filter events themselves. Any other parameter is
//! rejected with 400 and named in the message. The dashboard page at `/` ignores its query
//! string.
//!
//! Every error response has a JSON body, `{"error": "..."}`, including axum's own rejections
//! (405 keeps its `Allow` header). Malformed HTTP that hyper rejects before routing is the
//! exception: hyper closes the connection with a bare status.

mod api;
pub(crate) mod catalog;
mod metrics;
mod sse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Html, Response};
use axum::routing::get;
use axum::Router;
use msd::{Discoverer, Event};
use tokio::signal::unix::Signal;
use tracing::{info, warn};

use crate::args::ServeArgs;
use crate::commands::{hangup_signals, StopSignals};
use crate::connections::{bind, check_max_connections, check_max_event_clients, parse_idle_timeout, raise_open_file_limit, ConnectionLimit};
use crate::exit::CliError;
use crate::http_server;
use crate::settings::{apply_discovery, parse_duration, Network};
use catalog::Catalog;
use metrics::Metrics;

const DASHBOARD: &str = include_str!("dashboard.html");

/// Maximum silence on an event stream before a comment line is sent, so that proxies keep the
/// connection open.
const MAX_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// State shared by every handler.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) discoverer: Discoverer,
    pub(crate) catalog: Catalog,
    pub(crate) metrics: Metrics,
    pub(crate) event_clients: sse::ClientLimit,
    /// Silence after which an event stream sends a comment line: a third of the idle timeout,
    /// so that an idle stream is never closed, and at most [`MAX_KEEP_ALIVE`].
    pub(crate) keep_alive: Duration,
    /// Becomes true when the server shuts down, which ends the event streams so that graceful
    /// shutdown does not wait for them forever.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    let listen: SocketAddr = args
        .listen
        .parse()
        .map_err(|_| CliError::Usage(format!("invalid --listen {:?}: write an address and port such as 127.0.0.1:8080", args.listen)))?;
    let idle_timeout = parse_idle_timeout("--idle-timeout", &args.idle_timeout)?;
    let drain_timeout = parse_duration("--drain-timeout", &args.drain_timeout)?;
    let max_connections = check_max_connections(args.max_connections)?;
    let max_event_clients = check_max_event_clients(args.max_event_clients, max_connections)?;
    raise_open_file_limit(max_connections.get(), 1, "--max-connections");

    let listener = bind(listen).map_err(|error| CliError::Failure(format!("failed to listen on {listen}: {error}")))?;
    let mut stop_signals = StopSignals::install()?;
    let hangups = hangup_signals()?;
    let builder = network.apply_discoverer(Discoverer::builder(network.group));
    let discoverer = apply_discovery(&args.discovery, builder)?.start().await?;
    let (initial, events) = discoverer.watch().await?;
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let connections = ConnectionLimit::new(max_connections, Some("--max-connections"));
    let state = Arc::new(AppState {
        discoverer,
        catalog: Catalog::new(initial),
        metrics: Metrics::new(&connections),
        event_clients: sse::ClientLimit::new(max_event_clients.get()),
        keep_alive: (idle_timeout / 3).min(MAX_KEEP_ALIVE),
        stopping,
    });
    let pump = tokio::spawn(pump_events(Arc::clone(&state), events));
    let reloader = tokio::spawn(reload_on_hangup(Arc::clone(&state), hangups, args.network.key_file.clone()));

    let app = router(Arc::clone(&state));
    let local = listener.local_addr().unwrap_or(listen);
    info!(listen = %local, group = %network.group, max_connections = connections.max(), idle_timeout = ?idle_timeout, "serving");
    let stopped = async {
        let signal = stop_signals.wait().await;
        info!(signal, "shutting down; waiting for open requests");
        // Ends the event streams, which would otherwise keep their connections open.
        let _ = stop.send(true);
    };
    let draining = http_server::serve(listener, &connections, idle_timeout, app, stopped).await;
    tokio::select! {
        () = draining.finish() => {}
        () = tokio::time::sleep(drain_timeout) => {
            warn!(open = connections.open(), "closing connections still open after the drain timeout");
        }
        signal = stop_signals.wait() => {
            warn!(signal, open = connections.open(), "second signal; closing open connections now");
        }
    }
    pump.abort();
    reloader.abort();
    info!("stopped");
    Ok(())
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(|| async { Html(DASHBOARD) }))
        .route("/v1/instances", get(api::instances))
        .route("/v1/instances/{id}", get(api::instance))
        .route("/v1/pick", get(api::pick))
        .route("/v1/events", get(sse::events))
        .route("/v1/prometheus-sd", get(api::prometheus_sd))
        .route("/metrics", get(api::metrics))
        .route("/healthz", get(api::healthz))
        .fallback(api::not_found)
        .layer(middleware::from_fn(api::json_errors))
        .layer(middleware::from_fn_with_state(Arc::clone(&state), access_log))
        .with_state(state)
}

/// Logs one line per request at info, and counts it.
///
/// The method and path come from the client, so they are logged with `Debug`, which quotes the
/// path and escapes control characters. A request therefore cannot forge a log line.
async fn access_log(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let route = request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |route| route.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.count_request(&route, status);
    info!(method = ?method, path = ?path, status, elapsed_us = started.elapsed().as_micros(), "request");
    response
}

/// Moves the discoverer's events into the catalog and the metrics.
async fn pump_events(state: Arc<AppState>, mut events: msd::Events) {
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    while let Some(event) = events.next().await {
        match &event {
            Event::Up(info) => {
                state.metrics.count_event("up", None);
                observe_latency(&state.metrics, info, started);
            }
            Event::Changed { .. } => state.metrics.count_event("changed", None),
            Event::Down { reason, .. } => state.metrics.count_event("down", Some(reason.to_string())),
        }
        state.catalog.apply(event);
    }
}

/// Records the time from an instance's start to its discovery. The msd runtime sets the
/// incarnation to the start time in microseconds, so the difference spans two hosts' clocks.
fn observe_latency(metrics: &Metrics, info: &msd::InstanceInfo, server_start: Duration) {
    let Some(incarnation) = info.incarnation else { return };
    if Duration::from_micros(incarnation) < server_start {
        // Started before this server: its latency would be its uptime.
        return;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let Some(latency) = now.checked_sub(Duration::from_micros(incarnation)) else { return };
    metrics.observe_discovery_latency(latency.as_secs_f64());
}

/// Applies the key file again on every SIGHUP, for key rotation without a restart.
async fn reload_on_hangup(state: Arc<AppState>, mut hangups: Signal, key_file: Option<std::path::PathBuf>) {
    while hangups.recv().await.is_some() {
        if let Some(keys) = crate::commands::reload_keys(key_file.as_deref()) {
            match state.discoverer.set_keys(keys).await {
                Ok(()) => info!("key ring reloaded"),
                Err(error) => warn!(%error, "failed to apply the reloaded key ring"),
            }
        }
    }
}
