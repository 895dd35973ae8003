//! Faults across lab hosts: a partition and its healing, and a flood of junk and fake ids.
//!
//! Tests skip without root unless `MSD_LAB_REQUIRED=1`, which CI sets.

mod support;

use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddrV6, TcpStream};
use std::time::{Duration, Instant};

use msd_lab::{Host, Lab};
use msd_wire::native::{NativeKind, NativePacket};
use serde_json::Value;
use support::{announce_with, browse_with, count_events, msd, wait_event, wait_event_after, GROUP, WAIT};

/// A host cut off from the discoverer expires there, the others stay, and after the partition
/// heals the host's instance comes back on its own heartbeats.
#[test]
fn partition_expires_then_heal_restores() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let watcher = browse_with(a, &[]);
    let _cut_off = announce_with(b, "cut-off", &[]);
    let _reachable = announce_with(c, "reachable", &[]);
    wait_event(&watcher, "up", "cut-off");
    wait_event(&watcher, "up", "reachable");

    a.partition_from(b).unwrap();
    let down = wait_event(&watcher, "down", "cut-off");
    assert_eq!(down["reason"], "expired");

    a.heal().unwrap();
    let back = wait_event_after(&watcher, "up", "cut-off", 1);
    assert_eq!(back["instance"]["url"], down["instance"]["url"]);
    assert_eq!(count_events(&watcher, "down", "reachable"), 0, "the reachable instance was lost:\n{}", watcher.output());
    assert_eq!(count_events(&watcher, "up", "reachable"), 1, "the reachable instance came up twice");
}

/// Instances a flood may add beside the real ones.
const MAX_INSTANCES: usize = 300;
/// Fake ids in the flood, far more than the table takes.
const FAKE_IDS: usize = 5_000;
/// Source ports the fake ids come from, so that the per-source rate limit does not stop them.
const FAKE_SOURCES: usize = 200;
const JUNK_DATAGRAMS: usize = 2_000;
/// Lifetime the fake ANNOUNCEs claim.
const FAKE_TTL_MS: u32 = 5_000;

/// A third host floods the group with junk and with ANNOUNCEs of thousands of fake ids from
/// many ports. The discoverer keeps its two real instances throughout, tracks at most
/// `--max-instances`, counts what it dropped, keeps its memory bounded, and has room again for
/// a new instance once the fakes expire.
#[test]
fn junk_and_fake_id_flood_loses_nothing() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, flooder) = (lab.host(0), lab.host(1), lab.host(2));
    let max = MAX_INSTANCES.to_string();
    let watcher = browse_with(a, &["--max-instances", &max]);
    let serve = msd(
        a,
        &["serve", "--group", GROUP, "--listen", "127.0.0.1:8080", "--expire-after", "2s", "--max-instances", &max],
    );
    assert!(serve.wait_for_line(WAIT, |line| line.contains("serving")).is_some(), "{}", serve.output());
    let real = ["steady-1", "steady-2"];
    let _instances = real.map(|id| announce_with(b, id, &[]));
    for id in real {
        wait_event(&watcher, "up", id);
    }
    let listed = wait_until(|| instance_ids(a).len() == real.len());
    assert!(listed, "serve did not list the real instances: {:?}", instance_ids(a));
    let rss_before = rss_kib(serve.pid());

    let index = flooder.interface_index();
    let sent = flooder.run(move || flood(index)).join().unwrap();
    assert_eq!(sent, FAKE_IDS + JUNK_DATAGRAMS, "the flood was sent in full");

    // The table filled up to the limit and no further.
    let during = instance_ids(a);
    assert!(during.len() > real.len(), "no fake id got in, so the limit was not reached: {}", during.len());
    assert!(during.len() <= MAX_INSTANCES, "{} instances listed, over the limit {MAX_INSTANCES}", during.len());
    for id in real {
        assert!(during.iter().any(|listed| listed == id), "{id} missing during the flood");
    }
    let metrics = http_get(a, "/metrics");
    assert!(counter(&metrics, "msd_packets_rejected_total{reason=\"instance_limit\"}") > 0, "{metrics}");
    assert!(counter(&metrics, "msd_decode_failures_total") > 0, "junk not counted:\n{metrics}");
    let rss_after = rss_kib(serve.pid());
    eprintln!(
        "flood: {} listed (limit {MAX_INSTANCES}); {} dropped at the limit; {} junk counted; RSS {rss_before} -> {rss_after} KiB",
        during.len(),
        counter(&metrics, "msd_packets_rejected_total{reason=\"instance_limit\"}"),
        counter(&metrics, "msd_decode_failures_total"),
    );
    // The table contains at most 300 entries of about 1 KiB each (an estimate from the scale
    // benchmark), so 16 MiB leaves room for allocator slack.
    assert!(rss_after < rss_before + 16 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB");

    // The fakes expire because no process replies to their probes.
    let cleared = wait_until(|| instance_ids(a).len() == real.len());
    assert!(cleared, "fake ids stayed: {} listed", instance_ids(a).len());
    let _late = announce_with(b, "late", &[]);
    wait_event(&watcher, "up", "late");
    for id in real {
        assert_eq!(count_events(&watcher, "down", id), 0, "{id} was lost:\n{}", watcher.output());
    }
}

/// Sends the fake ANNOUNCEs and the junk to the group from `interface` and returns the number
/// of datagrams sent.
fn flood(interface: u32) -> usize {
    let group: msd::GroupId = GROUP.parse().unwrap();
    let destination = SocketAddrV6::new(group.ipv6_multicast(), msd::SEED_PORT, 0, interface);
    let sockets: Vec<std::net::UdpSocket> = (0..FAKE_SOURCES).map(|_| group_sender(interface)).collect();

    let mut sent = 0;
    let mut packet = Vec::new();
    let timestamp_ms = u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
    for number in 0..FAKE_IDS {
        let id = format!("fake-{number}");
        let fake = NativePacket {
            kind: Some(NativeKind::Announce),
            group: Some(group),
            timestamp_ms,
            id: Some(&id),
            incarnation: Some(1),
            sequence: Some(1),
            ttl_ms: Some(FAKE_TTL_MS),
            url: Some("http://10.255.0.1:1/"),
            ..NativePacket::default()
        };
        packet.clear();
        fake.encode(None, &mut packet).unwrap();
        sockets[number % FAKE_SOURCES].send_to(&packet, destination).unwrap();
        sent += 1;
        pace(sent);
    }

    // Junk of every length up to 600 bytes from a xorshift generator. Every byte is below 0x80,
    // so no datagram starts with the native magic or a MessagePack map: none is a valid packet.
    let mut state = 0x9e37_79b9_u32;
    for number in 0..JUNK_DATAGRAMS {
        let len = 1 + number % 600;
        let junk: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state & 0x7f) as u8
            })
            .collect();
        sockets[number % FAKE_SOURCES].send_to(&junk, destination).unwrap();
        sent += 1;
        pace(sent);
    }
    sent
}

/// Pauses briefly every 100 datagrams so the flood takes a few seconds rather than filling the
/// receive buffers in one burst, which would test the kernel rather than msd.
fn pace(sent: usize) {
    if sent.is_multiple_of(100) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn group_sender(interface: u32) -> std::net::UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    socket.set_multicast_if_v6(interface).unwrap();
    socket.set_multicast_hops_v6(1).unwrap();
    socket.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into()).unwrap();
    socket.into()
}

/// Polls `condition` every 100 ms for up to [`WAIT`].
fn wait_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    condition()
}

/// Returns the ids that `msd serve` in `host` lists.
fn instance_ids(host: &Host) -> Vec<String> {
    let body = http_get(host, "/v1/instances");
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|error| panic!("{error}: {body}"));
    value.as_array().unwrap().iter().map(|instance| instance["id"].as_str().unwrap().to_owned()).collect()
}

/// Sends a plain HTTP/1.0 GET to `msd serve` on 127.0.0.1:8080 inside `host` and returns the
/// body.
fn http_get(host: &Host, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    host.run(move || {
        let mut stream = TcpStream::connect("127.0.0.1:8080").unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no body: {response}"));
        assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    })
    .join()
    .unwrap()
}

/// Returns the value of the metric line that starts with `name`, or 0 when there is none.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |value| value as u64)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
