//! Prometheus metrics of `msd serve`.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use msd::{Health, InstanceInfo, Stats};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::connections::ConnectionLimit;

type Labels = Vec<(&'static str, String)>;


#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    instances: Family<Labels, Gauge>,
    events: Family<Labels, Counter>,
    packets_in: Family<Labels, Counter>,
    packets_out: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
    decode_failures: Counter,
    authentication_failures: Counter,
    discovery_latency: Histogram,
    http_requests: Family<Labels, Counter>,
    sse_lagged: Counter<u64, AtomicU64>,
    sse_clients: Gauge,
    sse_rejected: Counter<u64, AtomicU64>,
    connections: Arc<ConnectionLimit>,
    connections_open: Gauge,
    /// Stats values already turned into counter increments.
    seen: Mutex<BTreeMap<String, u64>>,
}

impl Metrics {
    pub(crate) fn new(connections: &Arc<ConnectionLimit>) -> Self {
        let mut registry = Registry::with_prefix("msd");
        let instances = Family::<Labels, Gauge>::default();
        registry.register("instances", "Live instances by health", instances.clone());
        let events = Family::<Labels, Counter>::default();
        registry.register("instance_events", "Instance up, changed and down events", events.clone());
        let packets_in = Family::<Labels, Counter>::default();
        registry.register("packets_received", "Valid packets received, by protocol and kind", packets_in.clone());
        let packets_out = Family::<Labels, Counter>::default();
        registry.register("packets_sent", "Packets sent, by protocol and kind", packets_out.clone());
        let rejections = Family::<Labels, Counter>::default();
        registry.register("packets_rejected", "Datagrams dropped, by reason", rejections.clone());
        let decode_failures = Counter::default();
        registry.register("decode_failures", "Datagrams that were not valid packets", decode_failures.clone());
        let authentication_failures = Counter::default();
        registry.register(
            "authentication_failures",
            "Packets without a valid tag from a known key, or outside the clock-skew window",
            authentication_failures.clone(),
        );
        // From 1 ms to about 33 s.
        let discovery_latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "discovery_latency_seconds",
            "Time from an instance's start (its incarnation) to its first announcement here; clocks of both hosts included",
            discovery_latency.clone(),
        );
        let http_requests = Family::<Labels, Counter>::default();
        registry.register("http_requests", "HTTP requests served, by route and status", http_requests.clone());
        let sse_lagged = Counter::default();
        registry.register("sse_lagged_events", "Changes not sent to slow event-stream clients, which got a fresh snapshot instead", sse_lagged.clone());
        let sse_clients = Gauge::default();
        registry.register("sse_clients", "Open event-stream clients", sse_clients.clone());
        let sse_rejected = Counter::default();
        registry.register(
            "sse_rejected_clients",
            "Event-stream requests rejected with 503 because the client limit was reached",
            sse_rejected.clone(),
        );
        let connections_open = Gauge::default();
        registry.register("http_connections", "Open HTTP connections", connections_open.clone());
        registry.register(
            "http_connection_limit_reached",
            "Times an accepted client found all --max-connections places taken; clients queued behind it in the listen backlog are not counted",
            connections.limit_reached(),
        );
        registry.register("http_idle_connections_closed", "HTTP connections closed by --idle-timeout", connections.idle_closed());
        registry.register(
            "http_request_head_timeouts",
            "HTTP connections closed because a request head did not arrive in time",
            connections.head_timeouts(),
        );
        Metrics {
            registry,
            instances,
            events,
            packets_in,
            packets_out,
            rejections,
            decode_failures,
            authentication_failures,
            discovery_latency,
            http_requests,
            sse_lagged,
            sse_clients,
            sse_rejected,
            connections: Arc::clone(connections),
            connections_open,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn count_event(&self, kind: &'static str, reason: Option<String>) {
        let mut labels: Labels = vec![("event", kind.to_owned())];
        if let Some(reason) = reason {
            labels.push(("reason", reason));
        }
        self.events.get_or_create(&labels).inc();
    }

    pub(crate) fn observe_discovery_latency(&self, seconds: f64) {
        self.discovery_latency.observe(seconds);
    }

    pub(crate) fn count_request(&self, route: &str, status: u16) {
        self.http_requests.get_or_create(&vec![("route", route.to_owned()), ("status", status.to_string())]).inc();
    }

    pub(crate) fn count_sse_lagged(&self, missed: u64) {
        self.sse_lagged.inc_by(missed);
    }

    pub(crate) fn count_sse_rejected(&self) {
        self.sse_rejected.inc();
    }

    /// Renders the text format, after bringing the gauges and the stats-based counters up to date.
    pub(crate) fn render(&self, instances: &[InstanceInfo], stats: &Stats, sse_clients: usize) -> String {
        self.sse_clients.set(i64::try_from(sse_clients).unwrap_or(i64::MAX));
        self.connections_open.set(i64::try_from(self.connections.open()).unwrap_or(i64::MAX));
        for health in [Health::Serving, Health::Draining, Health::Failing] {
            let count = instances.iter().filter(|info| info.health == health).count();
            self.instances.get_or_create(&vec![("health", health.as_str().to_owned())]).set(count as i64);
        }
        self.sync_stats(stats);
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Adds what the stats gained since the last scrape to the counters.
    fn sync_stats(&self, stats: &Stats) {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut add = |key: String, value: u64, counter: &Counter| {
            let previous = seen.insert(key, value).unwrap_or(0);
            counter.inc_by(value.saturating_sub(previous));
        };
        let packets = &stats.packets;
        for (protocol, received, sent) in [
            ("seed", packets.received_seed, packets.sent_seed),
            ("native", packets.received_native, packets.sent_native),
        ] {
            for (kind, count_in, count_out) in [
                ("discover", received.discover, sent.discover),
                ("announce", received.announce, sent.announce),
                ("logoff", received.logoff, sent.logoff),
                ("probe", received.probe, sent.probe),
                ("other", received.other, sent.other),
            ] {
                // The seed protocol has no PROBE, and a native packet of an unknown kind is
                // rejected rather than counted, so these pairs would only ever show zeros.
                if matches!((protocol, kind), ("seed", "probe") | ("native", "other")) {
                    continue;
                }
                let labels = vec![("protocol", protocol.to_owned()), ("kind", kind.to_owned())];
                add(format!("in/{protocol}/{kind}"), count_in, &self.packets_in.get_or_create(&labels));
                add(format!("out/{protocol}/{kind}"), count_out, &self.packets_out.get_or_create(&labels));
            }
        }
        for (reason, count) in &packets.rejected {
            add(format!("rejected/{reason}"), *count, &self.rejections.get_or_create(&vec![("reason", (*reason).to_owned())]));
        }
        for (reason, count) in [
            ("truncated_datagram", stats.truncated),
            ("receive_error", stats.receive_errors),
            ("foreign_interface", stats.foreign_interface),
            ("off_link", stats.off_link),
            ("receive_queue_full", stats.receive_queue_drops),
        ] {
            add(format!("rejected/{reason}"), count, &self.rejections.get_or_create(&vec![("reason", reason.to_owned())]));
        }
        add("decode".to_owned(), packets.decode_failures(), &self.decode_failures);
        add("authentication".to_owned(), packets.authentication_failures(), &self.authentication_failures);
    }
}
