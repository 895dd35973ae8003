#![allow(clippy::disallowed_methods)]

use std::net::{SocketAddr, SocketAddrV6};
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use msd_engine::{
    Destination, Discoverer, DiscovererConfig, DownReason, Event, InterfaceIndex, ProtocolMode, Received,
};
use msd_wire::seed::SeedPacket;
use msd_wire::GroupId;

const GROUP: GroupId = GroupId::from_bytes([0x55; 14]);

/// Seed-only settings: these tests check the seed protocol's behaviour packet by packet.
fn seed_config() -> DiscovererConfig {
    DiscovererConfig { protocols: ProtocolMode::Seed, ..DiscovererConfig::new(GROUP) }
}

const LAN: InterfaceIndex = InterfaceIndex(3);
const DISCOVER: &[u8] = &[0xde, 0x00, 0x02, 0xa1, 0x74, 0x01, 0xa1, 0x68, 0xc0];

fn source(port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new("fe80::7".parse().unwrap(), port, 0, LAN.0))
}

fn announce(id: &str, url: &str) -> Vec<u8> {
    SeedPacket::announce(url, id).to_vec().unwrap()
}

fn logoff(id: &str, url: &str) -> Vec<u8> {
    SeedPacket::logoff(url, id).to_vec().unwrap()
}

fn deliver(discoverer: &mut Discoverer, now: Instant, payload: &[u8]) {
    discoverer.handle_datagram(now, Received { source: source(41000), interface: LAN, payload });
}

fn events(discoverer: &mut Discoverer) -> Vec<Event> {
    std::iter::from_fn(|| discoverer.poll_event()).collect()
}

fn started() -> (Discoverer, Instant) {
    let now = Instant::now();
    let mut discoverer = Discoverer::new(seed_config(), now, 0);
    discoverer.add_interface(now, LAN);
    while discoverer.poll_transmit().is_some() {}
    (discoverer, now)
}

#[test]
fn announce_brings_instance_up() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    let events = events(&mut discoverer);
    assert_eq!(events.len(), 1);
    let Event::Up(info) = &events[0] else { panic!("expected Up, got {events:?}") };
    assert_eq!(info.id, "deadbeef");
    assert_eq!(info.url, "http://a:1");
    assert_eq!(info.interface, LAN);
    assert_eq!(info.source, source(41000));
}

#[test]
fn repeated_announce_is_silent_refresh() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);
    let later = now + Duration::from_secs(5);
    deliver(&mut discoverer, later, &announce("deadbeef", "http://a:1"));
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.instance("deadbeef").unwrap().last_seen, later);
    assert_eq!(discoverer.instance("deadbeef").unwrap().first_seen, now);
}

#[test]
fn new_url_is_changed_event() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);
    deliver(&mut discoverer, now, &announce("deadbeef", "http://b:2"));
    let events = events(&mut discoverer);
    let [Event::Changed { previous, current }] = events.as_slice() else {
        panic!("expected one Changed, got {events:?}")
    };
    assert_eq!(previous.url, "http://a:1");
    assert_eq!(current.url, "http://b:2");
}

#[test]
fn logoff_removes_at_once() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);
    deliver(&mut discoverer, now, &logoff("deadbeef", "http://a:1"));
    let events = events(&mut discoverer);
    let [Event::Down { instance, reason }] = events.as_slice() else {
        panic!("expected one Down, got {events:?}")
    };
    assert_eq!(instance.id, "deadbeef");
    assert_eq!(*reason, DownReason::Logoff);
    assert!(discoverer.is_empty());
    assert_eq!(discoverer.poll_timeout(), Some(now + Duration::from_millis(250)), "no expiry left");
}

#[test]
fn logoff_of_unknown_id_adds_nothing() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &logoff("deadbeef", "http://a:1"));
    assert!(events(&mut discoverer).is_empty());
    assert!(discoverer.is_empty());
}

#[test]
fn startup_discovers_then_periodic() {
    let now = Instant::now();
    let mut discoverer = Discoverer::new(seed_config(), now, 0);
    discoverer.add_interface(now, LAN);
    let mut sent_at = Vec::new();
    let mut clock = now;
    while clock < now + Duration::from_secs(45) {
        while let Some(transmit) = discoverer.poll_transmit() {
            assert_eq!(transmit.destination, Destination::Group { interface: LAN });
            assert_eq!(transmit.payload, DISCOVER);
            sent_at.push(clock - now);
        }
        clock = discoverer.poll_timeout().unwrap();
        discoverer.handle_timeout(clock);
    }
    let ms = Duration::from_millis;
    assert_eq!(sent_at, [ms(0), ms(250), ms(750), ms(20_750), ms(40_750)]);
}

#[test]
fn silent_instance_probed_then_expired() {
    let (mut discoverer, now) = started();
    let config = discoverer.config().clone();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);

    let mut probes = Vec::new();
    let mut down_at = None;
    let mut clock = now;
    while down_at.is_none() && clock < now + Duration::from_secs(300) {
        clock = discoverer.poll_timeout().unwrap();
        discoverer.handle_timeout(clock);
        while let Some(transmit) = discoverer.poll_transmit() {
            if transmit.destination == Destination::Unicast(source(41000)) {
                assert_eq!(transmit.payload, DISCOVER);
                probes.push(clock - now);
            }
        }
        for event in events(&mut discoverer) {
            if let Event::Down { reason, .. } = event {
                assert_eq!(reason, DownReason::Expired);
                down_at = Some(clock - now);
            }
        }
    }
    assert_eq!(probes.len(), 3, "three probes before expiry");
    assert_eq!(probes[0], config.expire_after, "first probe when overdue");
    assert_eq!(down_at, Some(config.crash_detection_bound()));
}

#[test]
fn answer_to_probe_keeps_instance() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);

    let overdue = now + discoverer.config().expire_after;
    discoverer.handle_timeout(overdue);
    let probed = std::iter::from_fn(|| discoverer.poll_transmit())
        .any(|transmit| transmit.destination == Destination::Unicast(source(41000)));
    assert!(probed);
    deliver(&mut discoverer, overdue, &announce("deadbeef", "http://a:1"));
    discoverer.handle_timeout(overdue + Duration::from_secs(2));
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.len(), 1);
}

#[test]
fn invalid_datagrams_counted_and_change_nothing() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    events(&mut discoverer);
    let before = discoverer.instance("deadbeef").unwrap().clone();

    let junk: &[&[u8]] = &[b"", &[0xde, 0x00], &[0xdb, 0xff, 0xff, 0xff, 0xff], &[0xc1]];
    for payload in junk {
        deliver(&mut discoverer, now + Duration::from_secs(1), payload);
    }
    // ANNOUNCE without a host passes decoding but is ignored.
    deliver(&mut discoverer, now, &[0xde, 0x00, 0x02, 0xa1, 0x74, 0x02, 0xa1, 0x68, 0xc0]);

    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.instance("deadbeef"), Some(&before));
    let rejected = &discoverer.stats().rejected;
    assert_eq!(rejected.get("empty"), Some(&1));
    assert_eq!(rejected.get("truncated"), Some(&1));
    assert_eq!(rejected.get("not_a_map"), Some(&2));
    assert_eq!(rejected.get("no_host"), Some(&1));
    assert_eq!(discoverer.stats().rejected_total(), 5);
}

#[test]
fn instance_limit_drops_new_ids() {
    let now = Instant::now();
    let config = DiscovererConfig { max_instances: NonZeroUsize::new(2).unwrap(), ..seed_config() };
    let mut discoverer = Discoverer::new(config, now, 0);
    for id in ["a", "b", "c"] {
        deliver(&mut discoverer, now, &announce(id, "http://x:1"));
    }
    assert_eq!(discoverer.len(), 2);
    assert!(discoverer.instance("c").is_none());
    assert_eq!(discoverer.stats().rejected.get("instance_limit"), Some(&1));
    // Known ids are still refreshed at the limit.
    deliver(&mut discoverer, now, &announce("a", "http://y:2"));
    assert_eq!(discoverer.instance("a").unwrap().url, "http://y:2");
}

#[test]
fn latest_interface_is_recorded() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("deadbeef", "http://a:1"));
    let other = InterfaceIndex(4);
    let other_source: SocketAddr = "[fe80::7%4]:41000".parse().unwrap();
    let payload = announce("deadbeef", "http://a:1");
    discoverer.handle_datagram(now, Received { source: other_source, interface: other, payload: &payload });
    let info = discoverer.instance("deadbeef").unwrap();
    assert_eq!(info.interface, other);
    assert_eq!(info.source, other_source);
    assert_eq!(events(&mut discoverer).len(), 1, "only the first Up, no Changed for a new path");
}

#[test]
fn logoff_with_other_url_keeps_successor() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("web-1", "http://a:1"));
    deliver(&mut discoverer, now, &announce("web-1", "http://a:2"));
    events(&mut discoverer);
    deliver(&mut discoverer, now, &logoff("web-1", "http://a:1"));
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.instance("web-1").unwrap().url, "http://a:2");
    assert_eq!(discoverer.stats().rejected.get("logoff_url_mismatch"), Some(&1));
}

#[test]
fn logoff_from_other_address_ignored() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("web-1", "http://a:1"));
    events(&mut discoverer);
    let other: SocketAddr = SocketAddr::V6(SocketAddrV6::new("fe80::66".parse().unwrap(), 41000, 0, LAN.0));
    let payload = logoff("web-1", "http://a:1");
    discoverer.handle_datagram(now, Received { source: other, interface: LAN, payload: &payload });
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.stats().rejected.get("logoff_from_other_address"), Some(&1));
    // The same address with another port is the instance's own farewell socket.
    let own_other_port = SocketAddr::V6(SocketAddrV6::new("fe80::7".parse().unwrap(), 50000, 0, LAN.0));
    discoverer.handle_datagram(now, Received { source: own_other_port, interface: LAN, payload: &payload });
    assert_eq!(events(&mut discoverer).len(), 1);
}

#[test]
fn oversized_id_and_url_rejected() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce(&"i".repeat(256), "http://a:1"));
    deliver(&mut discoverer, now, &announce("web-1", &format!("http://a/{}", "u".repeat(5000))));
    assert!(discoverer.is_empty());
    assert_eq!(discoverer.stats().rejected.get("id_too_long"), Some(&1));
    assert_eq!(discoverer.stats().rejected.get("url_too_long"), Some(&1));
}

/// An ANNOUNCE with the entry's own URL from another address must not move the address that the
/// entry's LOGOFF has to come from.
#[test]
fn announce_from_other_address_keeps_entry() {
    let (mut discoverer, now) = started();
    deliver(&mut discoverer, now, &announce("web-1", "http://a:1"));
    events(&mut discoverer);
    let other: SocketAddr = SocketAddr::V6(SocketAddrV6::new("fe80::66".parse().unwrap(), 53566, 0, LAN.0));
    for payload in [announce("web-1", "http://a:1"), logoff("web-1", "http://a:1")] {
        discoverer.handle_datagram(now, Received { source: other, interface: LAN, payload: &payload });
    }
    assert!(events(&mut discoverer).is_empty());
    assert_eq!(discoverer.instance("web-1").unwrap().source, source(41000));
    assert_eq!(discoverer.stats().rejected.get("other_address"), Some(&1));
    assert_eq!(discoverer.stats().rejected.get("logoff_from_other_address"), Some(&1));
}
