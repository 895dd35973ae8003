#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use msd_engine::{Destination, Instance, InstanceConfig, InterfaceIndex, ProtocolMode, Received, Transmit};
use msd_wire::seed::{SeedKind, SeedPacket};
use msd_wire::GroupId;

const GROUP: GroupId = GroupId::from_bytes([0x55; 14]);

/// Seed-only settings: these tests check the seed protocol's behaviour packet by packet.
fn seed_config(id: &str, url: &str) -> InstanceConfig {
    InstanceConfig { protocols: ProtocolMode::Seed, ..InstanceConfig::new(GROUP, id, url) }
}

const LAN: InterfaceIndex = InterfaceIndex(3);
const WAN: InterfaceIndex = InterfaceIndex(4);
const DISCOVER: &[u8] = &[0xde, 0x00, 0x02, 0xa1, 0x74, 0x01, 0xa1, 0x68, 0xc0];

fn transmits(instance: &mut Instance) -> Vec<Transmit> {
    std::iter::from_fn(|| instance.poll_transmit()).collect()
}

fn kind(transmit: &Transmit) -> SeedKind {
    SeedPacket::decode(&transmit.payload).unwrap().kind
}

fn started(seed: u64) -> (Instance, Instant) {
    let now = Instant::now();
    let config = InstanceConfig { rng_seed: seed, ..seed_config("deadbeef", "http://localhost:8080") };
    let mut instance = Instance::new(config, now, 0).unwrap();
    instance.add_interface(now, LAN);
    (instance, now)
}

#[test]
fn announce_bytes_match_original() {
    let (mut instance, _) = started(1);
    let sent = transmits(&mut instance);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, Destination::Group { interface: LAN });
    assert_eq!(sent[0].payload, include_bytes!("../../msd-wire/tests/fixtures/seed/announce-basic.bin"));
    let logoffs = instance.logoff_template().packets(0);
    assert_eq!(logoffs, [include_bytes!("../../msd-wire/tests/fixtures/seed/logoff-basic.bin").to_vec()]);
}

#[test]
fn discover_answered_to_source_port_after_delay() {
    let (mut instance, now) = started(7);
    transmits(&mut instance);
    let sender: SocketAddr = "[fe80::9%3]:47123".parse().unwrap();
    instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: DISCOVER });
    assert!(transmits(&mut instance).is_empty(), "the answer waits for its delay");

    let due = instance.poll_timeout().unwrap();
    let delay = due - now;
    assert!(delay > Duration::ZERO, "delay {delay:?} is not zero");
    assert!(delay <= instance.config().max_answer_delay, "delay {delay:?} is within the maximum");
    instance.handle_timeout(due);
    let sent = transmits(&mut instance);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].destination, Destination::Unicast(sender));
    assert_eq!(kind(&sent[0]), SeedKind::Announce);
}

#[test]
fn answer_delays_vary() {
    let (mut instance, now) = started(11);
    let mut delays = std::collections::BTreeSet::new();
    for port in 40000..40020 {
        let sender = SocketAddr::new("fe80::9".parse().unwrap(), port);
        instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: DISCOVER });
    }
    while let Some(due) = instance.poll_timeout().filter(|due| *due < now + Duration::from_secs(1)) {
        delays.insert(due - now);
        instance.handle_timeout(due);
    }
    assert!(delays.len() > 10, "20 answers spread over many delays, got {delays:?}");
}

#[test]
fn repeated_discover_answered_once() {
    let (mut instance, now) = started(3);
    transmits(&mut instance);
    let sender: SocketAddr = "10.0.0.9:53566".parse().unwrap();
    for _ in 0..5 {
        instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: DISCOVER });
    }
    instance.handle_timeout(now + instance.config().max_answer_delay);
    let unicast = transmits(&mut instance)
        .into_iter()
        .filter(|transmit| transmit.destination == Destination::Unicast(sender))
        .count();
    assert_eq!(unicast, 1);
}

#[test]
fn pending_answers_are_bounded() {
    let now = Instant::now();
    let config = InstanceConfig { max_pending_answers: 4, ..seed_config("a", "http://a:1") };
    let mut instance = Instance::new(config, now, 0).unwrap();
    for port in 1..=10 {
        let sender = SocketAddr::new("10.0.0.9".parse().unwrap(), port);
        instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: DISCOVER });
    }
    assert_eq!(instance.stats().rejected.get("answer_limit"), Some(&6));
}

#[test]
fn shutdown_logs_off_on_every_interface() {
    let (mut instance, now) = started(5);
    instance.add_interface(now, WAN);
    transmits(&mut instance);
    instance.shutdown(now);
    let sent = transmits(&mut instance);
    let destinations: Vec<_> = sent.iter().map(|transmit| transmit.destination).collect();
    assert_eq!(
        destinations,
        [Destination::Group { interface: LAN }, Destination::Group { interface: WAN }]
    );
    assert!(sent.iter().all(|transmit| kind(transmit) == SeedKind::Logoff));
    assert_eq!(instance.poll_timeout(), None);

    let sender: SocketAddr = "10.0.0.9:53566".parse().unwrap();
    instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: DISCOVER });
    instance.handle_timeout(now + Duration::from_secs(60));
    assert!(transmits(&mut instance).is_empty(), "nothing is sent after shutdown");
}

#[test]
fn garbage_counted_not_answered() {
    let (mut instance, now) = started(5);
    transmits(&mut instance);
    let sender: SocketAddr = "10.0.0.9:53566".parse().unwrap();
    instance.handle_datagram(now, Received { source: sender, interface: LAN, payload: &[0xde, 0xff, 0xff] });
    assert_eq!(instance.poll_timeout(), Some(now + Duration::from_millis(250)));
    assert_eq!(instance.stats().rejected.get("truncated"), Some(&1));
}

#[test]
fn periodic_announces_after_startup() {
    let (mut instance, now) = started(5);
    let mut announced_at = Vec::new();
    let mut clock = now;
    while clock < now + Duration::from_secs(45) {
        for transmit in transmits(&mut instance) {
            assert_eq!(kind(&transmit), SeedKind::Announce);
            announced_at.push(clock - now);
        }
        clock = instance.poll_timeout().unwrap();
        instance.handle_timeout(clock);
    }
    let ms = Duration::from_millis;
    assert_eq!(announced_at, [ms(0), ms(250), ms(750), ms(20_750), ms(40_750)]);
}
