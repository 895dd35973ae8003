//! Instances and discoverers on the loopback interface, in IPv4 mode.
//!
//! Each test uses a fresh random group, so tests running side by side do not see each other, and
//! names the loopback interface explicitly, so nothing leaves the machine.

use std::time::Duration;

use msd::{Discoverer, DiscovererBuilder, DownReason, Error, Event, GroupId, Instance, InstanceBuilder, IpVersion};

/// Generous limit for one expected event; tests fail rather than hang when it passes.
const WAIT: Duration = Duration::from_secs(10);

fn new_group() -> GroupId {
    GroupId::from_bytes(rand::random())
}

fn instance(group: GroupId, id: &str) -> InstanceBuilder {
    Instance::builder(group)
        .id(id)
        .url(format!("http://127.0.0.1:9000/{id}"))
        .interface("lo")
        .ip_version(IpVersion::V4)
}

fn discoverer(group: GroupId) -> DiscovererBuilder {
    Discoverer::builder(group).interface("lo").ip_version(IpVersion::V4)
}

/// Opens a raw UDP socket whose multicast leaves through the loopback interface only.
fn loopback_sender() -> std::net::UdpSocket {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let options = socket2::SockRef::from(&socket);
    options.set_multicast_if_v4(&std::net::Ipv4Addr::LOCALHOST).unwrap();
    options.set_multicast_ttl_v4(1).unwrap();
    socket
}

async fn next_event(events: &mut msd::Events) -> Event {
    tokio::time::timeout(WAIT, events.next()).await.expect("an event in time").expect("stream open")
}

async fn wait_for_ids(discoverer: &Discoverer, expected: &[&str]) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids: Vec<String> = discoverer.instances().await.unwrap().into_iter().map(|info| info.id).collect();
        if ids == expected || tokio::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn discoverer_sees_instance_and_logoff() {
    let group = new_group();
    let discoverer = discoverer(group).start().await.unwrap();
    let mut events = discoverer.events();
    let instance = instance(group, "alpha").start().await.unwrap();

    let Event::Up(info) = next_event(&mut events).await else { panic!("expected Up") };
    assert_eq!(info.id, "alpha");
    assert_eq!(info.url, "http://127.0.0.1:9000/alpha");
    assert_eq!(msd::interface_name(info.interface).as_deref(), Some("lo"));

    instance.shutdown().await.unwrap();
    let event = next_event(&mut events).await;
    let Event::Down { instance, reason } = event else { panic!("expected Down, got {event:?}") };
    assert_eq!(instance.id, "alpha");
    assert_eq!(reason, DownReason::Logoff);
    assert!(discoverer.instances().await.unwrap().is_empty());
}

#[tokio::test]
async fn drop_sends_logoff() {
    let group = new_group();
    let discoverer = discoverer(group).start().await.unwrap();
    let mut events = discoverer.events();
    let instance = instance(group, "dropped").start().await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Up(_)));

    drop(instance);
    let event = next_event(&mut events).await;
    assert!(matches!(event, Event::Down { reason: DownReason::Logoff, .. }), "{event:?}");
}

/// The instance announces once, before the discoverers exist, so they can only learn about it
/// from its unicast answers to their DISCOVERs: each must get its own answer although all
/// share the group port.
#[tokio::test]
async fn every_discoverer_gets_unicast_answers() {
    let group = new_group();
    let hour = Duration::from_secs(3600);
    let quiet = |id| {
        instance(group, id)
            .startup_announces(1, Duration::from_secs(1))
            .announce_interval(hour)
            .heartbeat_interval(hour)
            .ttl(2 * hour)
    };
    let first = quiet("one").start().await.unwrap();
    let second = quiet("two").start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let discoverers = [discoverer(group).start().await.unwrap(), discoverer(group).start().await.unwrap()];
    for (index, discoverer) in discoverers.iter().enumerate() {
        assert_eq!(wait_for_ids(discoverer, &["one", "two"]).await, ["one", "two"], "discoverer {index}");
    }
    let stats = first.stats().await.unwrap();
    assert!(stats.packets.received().discover >= 2, "instance saw both discoverers: {stats:?}");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
}

/// An instance's group socket keeps only DISCOVERs: the heartbeats of another instance in the
/// group reach the discoverer but never the instance, which would only drop them.
#[tokio::test]
async fn instance_never_reads_heartbeats_of_the_group() {
    let group = new_group();
    let discoverer = discoverer(group).start().await.unwrap();
    let listener = instance(group, "listener").start().await.unwrap();
    let talker = instance(group, "talker").heartbeat_interval(Duration::from_millis(50)).start().await.unwrap();
    assert_eq!(wait_for_ids(&discoverer, &["listener", "talker"]).await, ["listener", "talker"]);

    // The talker sends about 20 heartbeats in this time, each one to the group the listener joined.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let heard = discoverer.stats().await.unwrap().packets.received_native;
    assert!(heard.announce >= 10, "the discoverer heard the talker's heartbeats: {heard:?}");
    let stats = listener.stats().await.unwrap().packets;
    assert!(stats.received_native.discover >= 1, "native DISCOVERs still reach the instance: {stats:?}");
    assert!(stats.received_seed.discover >= 1, "seed DISCOVERs still reach the instance: {stats:?}");
    assert_eq!(stats.received_native.announce, 0, "native ANNOUNCEs were read: {stats:?}");
    assert_eq!(stats.received_seed.announce, 0, "seed ANNOUNCEs were read: {stats:?}");
    listener.shutdown().await.unwrap();
    talker.shutdown().await.unwrap();
}

/// A peer that announces once and then stays silent, like a crashed instance: the discoverer
/// probes it directly and then expires it.
#[tokio::test]
async fn silent_instance_probed_then_expired() {
    let group = new_group();
    let discoverer = discoverer(group)
        .discover_interval(Duration::from_secs(3600))
        .expire_after(Duration::from_millis(500))
        .probes(2, Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let mut events = discoverer.events();

    let peer = loopback_sender();
    let announce = msd_wire::seed::SeedPacket::announce("http://127.0.0.1:1/", "silent").to_vec().unwrap();
    peer.send_to(&announce, (group.ipv4_multicast(), msd::SEED_PORT)).unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Up(_)));

    let event = next_event(&mut events).await;
    let Event::Down { instance, reason } = event else { panic!("expected Down, got {event:?}") };
    assert_eq!(instance.id, "silent");
    assert_eq!(reason, DownReason::Expired);

    peer.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut buffer = [0u8; 64];
    let mut probes = 0;
    while let Ok((len, _)) = peer.recv_from(&mut buffer) {
        assert_eq!(&buffer[..len], msd_wire::seed::SeedPacket::DISCOVER.to_vec().unwrap().as_slice());
        probes += 1;
    }
    assert_eq!(probes, 2, "each probe is a unicast DISCOVER to the instance's source");
}

#[tokio::test]
async fn changed_url_is_an_event() {
    let group = new_group();
    let discoverer = discoverer(group).start().await.unwrap();
    let mut events = discoverer.events();
    let first = instance(group, "mover").start().await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Up(_)));
    // The seed protocol has no incarnation: a restart with a new URL is a change.
    drop(first);
    assert!(matches!(next_event(&mut events).await, Event::Down { .. }));
    let _second = instance(group, "mover").url("http://127.0.0.1:9001/moved").start().await.unwrap();
    let Event::Up(info) = next_event(&mut events).await else { panic!("expected Up") };
    assert_eq!(info.url, "http://127.0.0.1:9001/moved");
}

#[tokio::test]
async fn foreign_port_holder_is_clear_error() {
    // A program that binds the port without SO_REUSEADDR keeps everyone else out.
    let holder = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let error = discoverer(new_group()).port(port).start().await.unwrap_err();
    assert!(matches!(error, Error::PortInUse { port: p } if p == port), "{error:?}");
    assert!(error.to_string().contains(&port.to_string()));
}

/// Intervals short enough to flood the link are refused before anything is sent.
#[tokio::test]
async fn flooding_intervals_are_invalid_settings() {
    let group = new_group();
    let setting = |error: Error| match error {
        Error::InvalidSetting { setting, .. } => setting,
        other => panic!("expected an invalid setting, got {other}"),
    };
    let heartbeat = instance(group, "fast").heartbeat_interval(Duration::from_nanos(1)).start().await.unwrap_err();
    assert_eq!(setting(heartbeat), "heartbeat interval");
    let ttl = instance(group, "short").heartbeat_interval(Duration::from_secs(5)).ttl(Duration::from_millis(100));
    assert_eq!(setting(ttl.start().await.unwrap_err()), "TTL");
    let discover = discoverer(group).discover_interval(Duration::from_millis(1)).start().await.unwrap_err();
    assert_eq!(setting(discover), "discover interval");
    let probes = discoverer(group).probes(3, Duration::from_nanos(1)).start().await.unwrap_err();
    assert_eq!(setting(probes), "probe interval");
}

#[tokio::test]
async fn unknown_interface_is_clear_error() {
    let error = Discoverer::builder(new_group()).interface("msd-no-such0").start().await.unwrap_err();
    assert_eq!(error.to_string(), "interface \"msd-no-such0\" not found; list the interfaces with `ip link`");
}

#[tokio::test]
async fn loopback_in_ipv6_mode_is_clear_error() {
    let error = Instance::builder(new_group()).id("a").url("http://a:1").interface("lo").start().await.unwrap_err();
    assert!(matches!(error, Error::LoopbackNeedsIpv4 { .. }), "{error:?}");
}

/// A discoverer that cannot read for a while loses datagrams in the kernel, and its stats say
/// how many. The test runtime has one thread, so blocking it stops the discoverer's task.
#[tokio::test(flavor = "current_thread")]
async fn full_receive_queue_is_counted() {
    let group = new_group();
    let discoverer = discoverer(group).start().await.unwrap();
    let sender = loopback_sender();
    let destination = (group.ipv4_multicast(), msd::SEED_PORT);
    let junk = [0u8; 1000];
    // About 2 MB: several times the default receive buffer, and bounded.
    for _ in 0..2_000 {
        sender.send_to(&junk, destination).unwrap();
    }
    // The kernel reports the count with the next datagram read after the overflow.
    tokio::time::sleep(Duration::from_millis(200)).await;
    sender.send_to(&junk, destination).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut drops = 0;
    while drops == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        drops = discoverer.stats().await.unwrap().receive_queue_drops;
    }
    assert!(drops > 0, "no receive-queue drops reported");
    let stats = discoverer.stats().await.unwrap();
    assert!(stats.packets.rejected_total() + drops >= 2_000, "{stats:?}");
}

#[tokio::test]
async fn garbage_is_counted_and_changes_nothing() {
    let group = new_group();
    let port = 53566;
    let discoverer = discoverer(group).start().await.unwrap();
    let mut events = discoverer.events();
    let instance = instance(group, "steady").start().await.unwrap();
    assert!(matches!(next_event(&mut events).await, Event::Up(_)));

    let sender = loopback_sender();
    let destination = (group.ipv4_multicast(), port);
    let junk: [&[u8]; 5] = [b"", &[0xc1], &[0xde, 0xff, 0xff], &[0xdb, 0xff, 0xff, 0xff, 0xff], b"not msgpack"];
    for payload in junk {
        sender.send_to(payload, destination).unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut rejected = 0;
    while rejected < 5 && tokio::time::Instant::now() < deadline {
        rejected = discoverer.stats().await.unwrap().packets.rejected_total();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rejected, 5);
    assert_eq!(wait_for_ids(&discoverer, &["steady"]).await, ["steady"]);
    instance.shutdown().await.unwrap();
}
