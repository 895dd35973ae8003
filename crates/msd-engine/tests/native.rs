//! The native protocol between one instance and one discoverer, packet by packet.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use msd_engine::{
    Destination, Discoverer, DiscovererConfig, DownReason, Event, Health, Instance, InstanceConfig,
    InterfaceIndex, Protocol, ProtocolMode, Received, Transmit,
};
use msd_wire::keys::{Key, KeyRing};
use msd_wire::native::{NativeKind, NativePacket, Verify};
use msd_wire::{EncodeError, GroupId};

const GROUP: GroupId = GroupId::from_bytes([0x42; 14]);
const LAN: InterfaceIndex = InterfaceIndex(3);
const UNIX_MS: u64 = 1_800_000_000_000;

fn instance_address() -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new("fe80::7".parse().unwrap(), 41000, 0, LAN.0))
}

fn discoverer_address() -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new("fe80::9".parse().unwrap(), 42000, 0, LAN.0))
}

fn native_instance(incarnation: u64, now: Instant) -> Instance {
    let config = InstanceConfig {
        protocols: ProtocolMode::Native,
        incarnation,
        rng_seed: incarnation,
        ..InstanceConfig::new(GROUP, "web-1", "http://10.0.0.7:8080")
    };
    let mut instance = Instance::new(config, now, UNIX_MS).unwrap();
    instance.add_interface(now, LAN);
    instance
}

fn discoverer(now: Instant) -> Discoverer {
    let mut discoverer = Discoverer::new(DiscovererConfig::new(GROUP), now, UNIX_MS);
    discoverer.add_interface(now, LAN);
    while discoverer.poll_transmit().is_some() {}
    discoverer
}

fn drain(instance: &mut Instance) -> Vec<Transmit> {
    std::iter::from_fn(|| instance.poll_transmit()).collect()
}

fn events(discoverer: &mut Discoverer) -> Vec<Event> {
    std::iter::from_fn(|| discoverer.poll_event()).collect()
}

fn deliver_all(discoverer: &mut Discoverer, now: Instant, transmits: &[Transmit]) {
    for transmit in transmits {
        let datagram = Received { source: instance_address(), interface: LAN, payload: &transmit.payload };
        discoverer.handle_datagram(now, datagram);
    }
}

fn native_kind(transmit: &Transmit) -> NativeKind {
    NativePacket::decode(&transmit.payload, Verify::No).unwrap().kind.unwrap()
}

#[test]
fn announce_carries_state() {
    let now = Instant::now();
    let config = InstanceConfig {
        protocols: ProtocolMode::Native,
        incarnation: 5,
        health: Health::Draining,
        weight: Some(3),
        load: Some(40),
        metadata: BTreeMap::from([("zone".to_owned(), "eu-1".to_owned())]),
        ..InstanceConfig::new(GROUP, "web-1", "http://10.0.0.7:8080")
    };
    let mut instance = Instance::new(config, now, UNIX_MS).unwrap();
    instance.add_interface(now, LAN);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));

    let info = discoverer.instance("web-1").expect("instance known");
    assert_eq!(info.protocol, Protocol::Native);
    assert_eq!(info.health, Health::Draining);
    assert_eq!(info.weight, Some(3));
    assert_eq!(info.load, Some(40));
    assert_eq!(info.metadata.get("zone").map(String::as_str), Some("eu-1"));
    assert_eq!(info.incarnation, Some(5));
    assert_eq!(info.ttl, Some(Duration::from_secs(2)));
}

#[test]
fn heartbeats_are_jittered_around_interval() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut sent_at = Vec::new();
    let mut clock = now;
    while clock < now + Duration::from_secs(30) {
        if !drain(&mut instance).is_empty() {
            sent_at.push(clock);
        }
        clock = instance.poll_timeout().unwrap();
        instance.handle_timeout(clock);
    }
    // Skip the three startup rounds (0, 250, 750 ms).
    let gaps: Vec<Duration> = sent_at.windows(2).skip(3).map(|pair| pair[1] - pair[0]).collect();
    assert!(gaps.len() > 40, "{} heartbeats in 30 s", gaps.len());
    assert!(gaps.iter().all(|gap| *gap >= Duration::from_millis(400)), "no gap below 400 ms: {gaps:?}");
    assert!(gaps.iter().all(|gap| *gap <= Duration::from_millis(600)), "no gap above 600 ms: {gaps:?}");
    let distinct: std::collections::BTreeSet<_> = gaps.iter().collect();
    assert!(distinct.len() > gaps.len() / 2, "gaps vary");
}

#[test]
fn health_change_goes_out_at_once() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    events(&mut discoverer);

    let later = now + Duration::from_millis(10);
    instance.set_health(later, Health::Failing).unwrap();
    let sent = drain(&mut instance);
    assert_eq!(sent.len(), 1, "one announce on the one interface");
    assert_eq!(native_kind(&sent[0]), NativeKind::Announce);
    deliver_all(&mut discoverer, later, &sent);
    let events = events(&mut discoverer);
    let [Event::Changed { previous, current }] = events.as_slice() else { panic!("expected Changed: {events:?}") };
    assert_eq!(previous.health, Health::Serving);
    assert_eq!(current.health, Health::Failing);
}

#[test]
fn oversized_metadata_rejected_and_old_kept() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let big = BTreeMap::from([("blob".to_owned(), "x".repeat(1300))]);
    let error = instance.set_metadata(now, big).unwrap_err();
    assert!(matches!(error, EncodeError::TooLarge { field: "metadata", .. }), "{error:?}");
    assert!(error.to_string().contains("metadata"), "{error}");
    assert!(instance.config().metadata.is_empty());
}

#[test]
fn oversized_url_is_build_error() {
    let now = Instant::now();
    let url = format!("http://a/{}", "p".repeat(1300));
    let config = InstanceConfig { protocols: ProtocolMode::Native, ..InstanceConfig::new(GROUP, "a", url) };
    let error = Instance::new(config, now, UNIX_MS).unwrap_err();
    assert!(matches!(error, EncodeError::TooLarge { field: "url", .. }), "{error:?}");
}

#[test]
fn restart_replaces_at_once_and_old_packets_change_nothing() {
    let now = Instant::now();
    let mut old = native_instance(1, now);
    let mut discoverer = discoverer(now);
    let old_startup = drain(&mut old);
    deliver_all(&mut discoverer, now, &old_startup[..1]);
    events(&mut discoverer);

    let mut new = native_instance(2, now);
    deliver_all(&mut discoverer, now, &drain(&mut new));
    let events_after_restart = events(&mut discoverer);
    assert!(
        matches!(events_after_restart.as_slice(), [Event::Changed { previous, current }]
            if previous.incarnation == Some(1) && current.incarnation == Some(2)),
        "{events_after_restart:?}"
    );

    // A late heartbeat and a late LOGOFF of the old incarnation.
    old.handle_timeout(now + Duration::from_secs(1));
    old.shutdown(now + Duration::from_secs(1));
    deliver_all(&mut discoverer, now + Duration::from_secs(1), &drain(&mut old));
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.instance("web-1").unwrap().incarnation, Some(2));
    assert!(discoverer.stats().rejected.get("old_incarnation").copied().unwrap_or(0) >= 2);
}

#[test]
fn replayed_announce_after_logoff_changes_nothing() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    let captured = drain(&mut instance);
    deliver_all(&mut discoverer, now, &captured);
    instance.shutdown(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    let down = events(&mut discoverer);
    assert!(matches!(down.last(), Some(Event::Down { reason: DownReason::Logoff, .. })), "{down:?}");

    deliver_all(&mut discoverer, now + Duration::from_secs(1), &captured);
    assert!(events(&mut discoverer).is_empty(), "replay brought nothing back");
    assert!(discoverer.is_empty());
    assert_eq!(discoverer.stats().rejected.get("old_sequence"), Some(&1));
}

#[test]
fn replayed_logoff_changes_nothing() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    // A copy of a LOGOFF with an old sequence number, as a replay of an earlier packet would be.
    let replayed = NativePacket {
        kind: Some(NativeKind::Logoff),
        group: Some(GROUP),
        timestamp_ms: UNIX_MS,
        id: Some("web-1"),
        incarnation: Some(1),
        sequence: Some(1),
        ..NativePacket::default()
    }
    .to_vec(None)
    .unwrap();
    let later = now + Duration::from_millis(900);
    instance.handle_timeout(later);
    deliver_all(&mut discoverer, later, &drain(&mut instance));
    events(&mut discoverer);
    discoverer.handle_datagram(later, Received { source: instance_address(), interface: LAN, payload: &replayed });
    assert!(events(&mut discoverer).is_empty());
    assert!(discoverer.instance("web-1").is_some());
}

#[test]
fn probe_answered_at_once_keeps_instance() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    events(&mut discoverer);

    // The instance goes quiet (its heartbeats are lost); the discoverer probes at the TTL.
    let overdue = now + Duration::from_secs(2);
    discoverer.handle_timeout(overdue);
    let probes: Vec<Transmit> = std::iter::from_fn(|| discoverer.poll_transmit()).collect();
    let probe = probes.iter().find(|t| t.destination == Destination::Unicast(instance_address())).expect("a probe");
    assert_eq!(NativePacket::decode(&probe.payload, Verify::No).unwrap().kind, Some(NativeKind::Probe));

    while instance.poll_transmit().is_some() {}
    instance.handle_datagram(overdue, Received { source: discoverer_address(), interface: LAN, payload: &probe.payload });
    let answer = drain(&mut instance);
    assert_eq!(answer.len(), 1, "answered without delay");
    assert_eq!(answer[0].destination, Destination::Unicast(discoverer_address()));
    deliver_all(&mut discoverer, overdue, &answer);
    discoverer.handle_timeout(overdue + Duration::from_secs(1));
    assert!(events(&mut discoverer).is_empty(), "not expired");
}

#[test]
fn crash_expires_within_bound() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    events(&mut discoverer);
    drop(instance);

    let bound = discoverer.config().native_crash_detection_bound(Duration::from_secs(2));
    let mut clock = now;
    let mut down_at = None;
    while down_at.is_none() && clock < now + Duration::from_secs(60) {
        clock = discoverer.poll_timeout().unwrap();
        discoverer.handle_timeout(clock);
        while discoverer.poll_transmit().is_some() {}
        if events(&mut discoverer).iter().any(|event| matches!(event, Event::Down { reason: DownReason::Expired, .. })) {
            down_at = Some(clock - now);
        }
    }
    assert_eq!(down_at, Some(bound));
    assert_eq!(bound, Duration::from_millis(2900));
}

#[test]
fn authenticated_exchange_and_rejections() {
    let now = Instant::now();
    let key = Key::from_bytes([0x11; 32]);
    let ring = KeyRing::new(key);
    let config = InstanceConfig {
        keys: Some(ring.clone()),
        incarnation: 1,
        ..InstanceConfig::new(GROUP, "web-1", "http://10.0.0.7:8080")
    };
    let mut instance = Instance::new(config, now, UNIX_MS).unwrap();
    instance.add_interface(now, LAN);
    let mut discoverer = Discoverer::new(DiscovererConfig { keys: Some(ring), ..DiscovererConfig::new(GROUP) }, now, UNIX_MS);

    let sent = drain(&mut instance);
    assert!(sent.iter().all(|transmit| msd_wire::native::is_native(&transmit.payload)), "no seed packets with a key");
    deliver_all(&mut discoverer, now, &sent);
    assert!(discoverer.instance("web-1").is_some());

    let mut tampered = sent[0].payload.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let unsigned = NativePacket::decode(&sent[0].payload, Verify::No).unwrap().to_vec(None).unwrap();
    let seed = msd_wire::seed::SeedPacket::announce("http://evil:1", "web-1").to_vec().unwrap();
    let foreign = NativePacket::decode(&sent[0].payload, Verify::No).unwrap().to_vec(Some(&Key::from_bytes([0x22; 32]))).unwrap();
    for payload in [&tampered, &unsigned, &seed, &foreign] {
        discoverer.handle_datagram(now, Received { source: instance_address(), interface: LAN, payload });
    }
    let rejected = &discoverer.stats().rejected;
    assert_eq!(rejected.get("bad_tag"), Some(&1));
    assert_eq!(rejected.get("unauthenticated"), Some(&2), "plain native and seed");
    assert_eq!(rejected.get("unknown_key"), Some(&1));
    assert_eq!(discoverer.instance("web-1").unwrap().url, "http://10.0.0.7:8080");
}

#[test]
fn stale_timestamp_rejected_with_key() {
    let now = Instant::now();
    let key = Key::from_bytes([0x11; 32]);
    let ring = KeyRing::new(key.clone());
    let mut discoverer = Discoverer::new(DiscovererConfig { keys: Some(ring), ..DiscovererConfig::new(GROUP) }, now, UNIX_MS);
    let old = NativePacket {
        kind: Some(NativeKind::Announce),
        group: Some(GROUP),
        timestamp_ms: UNIX_MS - 31_000,
        id: Some("web-1"),
        incarnation: Some(1),
        sequence: Some(1),
        ttl_ms: Some(2000),
        url: Some("http://10.0.0.7:8080"),
        ..NativePacket::default()
    }
    .to_vec(Some(&key))
    .unwrap();
    discoverer.handle_datagram(now, Received { source: instance_address(), interface: LAN, payload: &old });
    assert!(discoverer.is_empty());
    assert_eq!(discoverer.stats().rejected.get("stale_timestamp"), Some(&1));
}

#[test]
fn other_group_rejected() {
    let now = Instant::now();
    let config = InstanceConfig {
        protocols: ProtocolMode::Native,
        ..InstanceConfig::new(GroupId::from_bytes([0x43; 14]), "web-1", "http://10.0.0.7:8080")
    };
    let mut other = Instance::new(config, now, UNIX_MS).unwrap();
    other.add_interface(now, LAN);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut other));
    assert!(discoverer.is_empty());
    assert_eq!(discoverer.stats().rejected.get("other_group"), Some(&1));
}

#[test]
fn both_mode_listed_once_as_native() {
    let now = Instant::now();
    let config = InstanceConfig { incarnation: 1, ..InstanceConfig::new(GROUP, "web-1", "http://10.0.0.7:8080") };
    let mut instance = Instance::new(config, now, UNIX_MS).unwrap();
    instance.add_interface(now, LAN);
    let mut discoverer = discoverer(now);
    let sent = drain(&mut instance);
    assert_eq!(sent.len(), 2, "one native and one seed announce");
    deliver_all(&mut discoverer, now, &sent);
    let events = events(&mut discoverer);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(discoverer.instance("web-1").unwrap().protocol, Protocol::Native);
}

#[test]
fn rate_limit_drops_floods_per_source() {
    let now = Instant::now();
    let mut discoverer = discoverer(now);
    let junk = [0xc1u8, b'm', b's', b'd'];
    for _ in 0..500 {
        discoverer.handle_datagram(now, Received { source: instance_address(), interface: LAN, payload: &junk });
    }
    let rejected = &discoverer.stats().rejected;
    assert_eq!(rejected.get("rate_limit"), Some(&400), "burst of 100 passes, the rest is limited");
    assert_eq!(rejected.get("truncated"), Some(&100));
}

#[test]
fn oversized_datagram_rejected() {
    let now = Instant::now();
    let mut discoverer = discoverer(now);
    let big = vec![0u8; 9000];
    discoverer.handle_datagram(now, Received { source: instance_address(), interface: LAN, payload: &big });
    assert_eq!(discoverer.stats().rejected.get("too_large"), Some(&1));
}

#[test]
fn logoff_template_is_accepted_after_heartbeats() {
    let now = Instant::now();
    let mut instance = native_instance(1, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    let later = now + Duration::from_secs(1);
    instance.handle_timeout(later);
    deliver_all(&mut discoverer, later, &drain(&mut instance));
    events(&mut discoverer);

    for payload in instance.logoff_template().packets(UNIX_MS + 1000) {
        discoverer.handle_datagram(later, Received { source: instance_address(), interface: LAN, payload: &payload });
    }
    let events = events(&mut discoverer);
    assert!(matches!(events.as_slice(), [Event::Down { reason: DownReason::Logoff, .. }]), "{events:?}");
}

#[test]
fn discover_in_both_protocols_answered_native_first() {
    let now = Instant::now();
    let config = InstanceConfig { incarnation: 1, ..InstanceConfig::new(GROUP, "web-1", "http://10.0.0.7:8080") };
    let mut instance = Instance::new(config, now, UNIX_MS).unwrap();
    instance.add_interface(now, LAN);
    drain(&mut instance);
    let seed_discover = msd_wire::seed::SeedPacket::DISCOVER.to_vec().unwrap();
    let native_discover = NativePacket { kind: Some(NativeKind::Discover), group: Some(GROUP), timestamp_ms: UNIX_MS, ..NativePacket::default() }
        .to_vec(None)
        .unwrap();
    // The seed DISCOVER arrives first, as it may when both leave one discoverer together.
    for payload in [&seed_discover, &native_discover] {
        instance.handle_datagram(now, Received { source: discoverer_address(), interface: LAN, payload });
    }
    instance.handle_timeout(now + Duration::from_millis(100));
    let answers: Vec<Transmit> =
        drain(&mut instance).into_iter().filter(|t| t.destination == Destination::Unicast(discoverer_address())).collect();
    assert_eq!(answers.len(), 2);
    assert!(msd_wire::native::is_native(&answers[0].payload), "native answer first");
    assert!(!msd_wire::native::is_native(&answers[1].payload), "then the seed answer");
}

/// Returns an instance of incarnation `incarnation` and a discoverer that lists it, with the
/// discoverer's events drained.
fn listed(incarnation: u64, now: Instant) -> (Instance, Discoverer) {
    let mut instance = native_instance(incarnation, now);
    let mut discoverer = discoverer(now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    events(&mut discoverer);
    (instance, discoverer)
}

fn attacker_address() -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new("fe80::66".parse().unwrap(), 53566, 0, LAN.0))
}

fn forged(kind: NativeKind, url: Option<&str>) -> Vec<u8> {
    NativePacket {
        kind: Some(kind),
        group: Some(GROUP),
        timestamp_ms: UNIX_MS,
        id: Some("web-1"),
        incarnation: Some(u64::MAX),
        sequence: Some(u64::MAX - 1),
        ttl_ms: url.map(|_| 3_600_000),
        url,
        ..NativePacket::default()
    }
    .to_vec(None)
    .unwrap()
}

/// Without a key, a packet from another address with the largest incarnation neither takes over a
/// live entry nor shuts its real instance out.
#[test]
fn forged_takeover_from_other_address_rejected() {
    let now = Instant::now();
    let (mut instance, mut discoverer) = listed(1, now);

    let takeover = forged(NativeKind::Announce, Some("http://10.9.9.9:6666"));
    discoverer.handle_datagram(now, Received { source: attacker_address(), interface: LAN, payload: &takeover });
    assert!(events(&mut discoverer).is_empty());
    let listed = discoverer.instance("web-1").unwrap();
    assert_eq!(listed.url, "http://10.0.0.7:8080");
    assert_eq!(listed.incarnation, Some(1));
    assert_eq!(discoverer.stats().rejected.get("other_address"), Some(&1));

    let later = now + Duration::from_millis(700);
    instance.handle_timeout(later);
    deliver_all(&mut discoverer, later, &drain(&mut instance));
    assert_eq!(discoverer.stats().rejected.get("old_incarnation"), None, "real heartbeats still count");
    assert_eq!(discoverer.instance("web-1").unwrap().last_seen, later);
}

/// Without a key, a LOGOFF for an id not listed plants nothing that would hide the instance
/// when it starts.
#[test]
fn logoff_of_unknown_id_leaves_no_tombstone() {
    let now = Instant::now();
    let mut discoverer = discoverer(now);
    let logoff = forged(NativeKind::Logoff, None);
    discoverer.handle_datagram(now, Received { source: attacker_address(), interface: LAN, payload: &logoff });
    assert_eq!(discoverer.stats().rejected.get("unknown_id"), Some(&1));

    let mut instance = native_instance(1, now);
    deliver_all(&mut discoverer, now, &drain(&mut instance));
    assert!(matches!(events(&mut discoverer).as_slice(), [Event::Up(info)] if info.id == "web-1"));
}

/// An instance restarted on another host with the same id takes its entry over once the old
/// entry is overdue, without a Down in between.
#[test]
fn overdue_entry_moves_to_new_address() {
    let now = Instant::now();
    let (old, mut discoverer) = listed(1, now);
    drop(old);

    let mut moved = native_instance(2, now);
    let startup = drain(&mut moved);
    let early = now + Duration::from_secs(1);
    discoverer.handle_datagram(early, Received { source: attacker_address(), interface: LAN, payload: &startup[0].payload });
    assert_eq!(discoverer.stats().rejected.get("other_address"), Some(&1), "not while the old entry is live");

    let overdue = now + Duration::from_secs(2);
    discoverer.handle_timeout(overdue);
    moved.handle_timeout(overdue);
    let heartbeat = drain(&mut moved);
    discoverer.handle_datagram(overdue, Received { source: attacker_address(), interface: LAN, payload: &heartbeat[0].payload });
    let changes = events(&mut discoverer);
    assert!(
        matches!(changes.as_slice(), [Event::Changed { current, .. }] if current.incarnation == Some(2)),
        "{changes:?}"
    );
    assert_eq!(discoverer.instance("web-1").unwrap().source, attacker_address());
}

/// Log lines written while a closure runs, for checking warnings.
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn run(&self, f: impl FnOnce()) -> String {
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A second live instance with a listed id is dropped, and after the grace for late packets the
/// discoverer warns once, not once per packet.
#[test]
fn second_live_instance_with_same_id_warns_once() {
    let now = Instant::now();
    let (mut first, mut discoverer) = listed(1, now);
    let mut second = native_instance(2, now);

    let log = CapturedLog::default().run(|| {
        for step in 0..40u64 {
            let at = now + Duration::from_millis(250 * step);
            first.handle_timeout(at);
            second.handle_timeout(at);
            deliver_all(&mut discoverer, at, &drain(&mut first));
            for transmit in drain(&mut second) {
                discoverer.handle_datagram(at, Received { source: attacker_address(), interface: LAN, payload: &transmit.payload });
            }
        }
    });
    assert_eq!(discoverer.instance("web-1").unwrap().incarnation, Some(1), "the first one stays listed");
    assert!(discoverer.stats().rejected.get("other_address").copied().unwrap_or(0) >= 10);
    assert_eq!(log.matches("two live instances may share this id").count(), 1, "{log}");
    assert!(log.contains("web-1"), "{log}");
}
