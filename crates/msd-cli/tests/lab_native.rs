//! The native protocol across lab hosts: crash detection, loss, link changes, restarts,
//! authentication and mixed protocol versions.
//!
//! Tests skip without root unless `MSD_LAB_REQUIRED=1`, which CI sets.

mod support;

use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use msd_lab::{Lab, Signal};
use support::{announce_with, browse_with, count_events, wait_event, wait_event_after, GROUP, WAIT};

/// `ttl + probes × probe_interval` with the defaults: 2 s + 3 × 300 ms.
const CRASH_BOUND: Duration = Duration::from_millis(2900);

#[test]
fn killed_instance_expires_within_bound() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let watcher = browse_with(a, &[]);
    let instance = announce_with(b, "crashing", &[]);
    let up = wait_event(&watcher, "up", "crashing");
    assert_eq!(up["instance"]["protocol"], "native");

    let killed_at = Instant::now();
    instance.signal(Signal::SIGKILL).unwrap();
    let down = wait_event(&watcher, "down", "crashing");
    let elapsed = killed_at.elapsed();
    assert_eq!(down["reason"], "expired");
    eprintln!("SIGKILL to Down: {elapsed:?}; bound from the last heartbeat {CRASH_BOUND:?}");
    // The bound counts from the last heartbeat, at most 600 ms before the kill; the rest is a
    // wide margin for a loaded machine, not a performance claim.
    assert!(elapsed < CRASH_BOUND + Duration::from_millis(600) + Duration::from_secs(3), "{elapsed:?}");
}

/// Several minutes of 10 % loss in both directions on every host: no live instance is removed.
/// `MSD_LAB_SOAK_SECS` sets the length (default 180 s).
#[test]
fn steady_loss_removes_nothing() {
    let Some(lab) = Lab::for_test(3) else { return };
    let seconds = std::env::var("MSD_LAB_SOAK_SECS").ok().and_then(|text| text.parse().ok()).unwrap_or(180);
    for host in lab.hosts() {
        host.set_udp_loss(10).unwrap();
    }
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let watcher = browse_with(a, &[]);
    let ids = ["soak-b1", "soak-b2", "soak-c1", "soak-c2"];
    let _instances = [
        announce_with(b, ids[0], &[]),
        announce_with(b, ids[1], &[]),
        announce_with(c, ids[2], &[]),
        announce_with(c, ids[3], &[]),
    ];
    for id in ids {
        wait_event(&watcher, "up", id);
    }
    std::thread::sleep(Duration::from_secs(seconds));
    let mut false_downs = 0;
    for id in ids {
        let downs = count_events(&watcher, "down", id);
        eprintln!("{id}: {downs} Down events in {seconds} s of 10 % loss");
        false_downs += downs;
    }
    assert_eq!(false_downs, 0, "live instances removed:\n{}", watcher.output());
}

#[test]
fn link_down_and_up_recovers() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let watcher = browse_with(a, &[]);
    let _instance = announce_with(b, "flappy", &[]);
    wait_event(&watcher, "up", "flappy");

    b.link_down().unwrap();
    let down = wait_event(&watcher, "down", "flappy");
    assert_eq!(down["reason"], "expired");
    b.link_up().unwrap();
    wait_event_after(&watcher, "up", "flappy", 1);
}

/// An instance started on a host whose only interface is down waits, and starts announcing when
/// a new interface appears, without a restart.
#[test]
fn interface_added_later_is_used() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    b.link_down().unwrap();
    let watcher = browse_with(a, &[]);
    let instance = announce_with(b, "late", &[]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count_events(&watcher, "up", "late"), 0, "nothing to announce on yet");

    let added = b.add_interface().unwrap();
    let up = wait_event(&watcher, "up", "late");
    let added_address = b.interfaces().into_iter().find(|interface| interface.name == added).unwrap().link_local;
    let source = up["instance"]["source"].as_str().unwrap();
    assert!(source.starts_with(&format!("[{added_address}%")), "heard from {source}, the new interface");
    assert!(instance.output().contains("joined interface"), "{}", instance.output());
}

#[test]
fn restart_with_same_id_replaces_without_down() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let watcher = browse_with(a, &[]);
    let first = announce_with(b, "phoenix", &[]);
    let up = wait_event(&watcher, "up", "phoenix");
    let first_incarnation = up["instance"]["incarnation"].as_u64().unwrap();

    first.signal(Signal::SIGKILL).unwrap();
    let _second = announce_with(b, "phoenix", &[]);
    let changed = wait_event(&watcher, "changed", "phoenix");
    let second_incarnation = changed["instance"]["incarnation"].as_u64().unwrap();
    assert!(second_incarnation > first_incarnation);
    std::thread::sleep(CRASH_BOUND + Duration::from_secs(1));
    assert_eq!(count_events(&watcher, "down", "phoenix"), 0, "{}", watcher.output());
}

/// With a key: unauthenticated, seed, tampered and replayed packets from a third host change
/// nothing at the discoverer.
#[test]
fn forged_and_replayed_packets_rejected_with_key() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, attacker) = (lab.host(0), lab.host(1), lab.host(2));
    let dir = std::env::temp_dir().join(format!("msd-lab-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join(format!("ring-{}", attacker.name()));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(["key", "new", "--output"])
        .arg(&key_file)
        .status()
        .unwrap();
    assert!(status.success());
    let key_arg = key_file.to_str().unwrap().to_owned();

    // The attacker listens on the group and records what the real instance sends.
    let index = attacker.interface_index();
    let recorder = attacker.run(move || record_group_packets(index, Duration::from_secs(3)));

    let watcher = browse_with(a, &["--key-file", &key_arg]);
    let instance = announce_with(b, "guarded", &["--key-file", &key_arg]);
    wait_event(&watcher, "up", "guarded");
    let captured = recorder.join().unwrap();
    assert!(captured.len() >= 3, "captured {} packets", captured.len());
    assert!(captured.iter().all(|packet| packet.starts_with(&[0xc1, b'm', b's', b'd'])), "native only");

    // Stop the real instance, then replay everything it sent, plus forgeries.
    instance.signal(Signal::SIGTERM).unwrap();
    let down = wait_event(&watcher, "down", "guarded");
    assert_eq!(down["reason"], "logoff");

    let mut forged = Vec::new();
    let mut tampered = captured[0].clone();
    if let Some(byte) = tampered.get_mut(40) {
        *byte ^= 0x20;
    }
    forged.push(tampered);
    forged.push(msd_wire_seed_announce("evil-seed"));
    let mut unsigned = captured[0].clone();
    unsigned[7] = 0;
    unsigned.truncate(unsigned.len() - 20);
    forged.push(unsigned);
    let to_send: Vec<Vec<u8>> = captured.iter().cloned().chain(forged).collect();
    attacker.run(move || send_group_packets(index, &to_send)).join().unwrap();

    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count_events(&watcher, "up", "guarded"), 1, "replay brought it back:\n{}", watcher.output());
    assert_eq!(count_events(&watcher, "up", "evil-seed"), 0);
    // The discoverer logs each rejection at debug level with its reason.
    for reason in ["bad_tag", "unauthenticated", "old_sequence"] {
        let line = watcher.wait_for_line(WAIT, |line| line.contains("dropped datagram") && line.contains(reason));
        assert!(line.is_some(), "no rejection for {reason}:\n{}", watcher.output());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Seed-only and native-only instances and discoverers on one segment.
#[test]
fn mixed_protocol_peers() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let both = browse_with(a, &[]);
    let seed_only = browse_with(a, &["--protocol", "seed"]);
    let native_only = browse_with(c, &["--protocol", "native"]);
    let _old = announce_with(b, "old-style", &["--protocol", "seed"]);
    let _new = announce_with(c, "new-style", &["--protocol", "native"]);

    let old = wait_event(&both, "up", "old-style");
    assert_eq!(old["instance"]["protocol"], "seed");
    let new = wait_event(&both, "up", "new-style");
    assert_eq!(new["instance"]["protocol"], "native");
    wait_event(&seed_only, "up", "old-style");
    wait_event(&native_only, "up", "new-style");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count_events(&seed_only, "up", "new-style"), 0, "seed discoverer ignores native");
    assert_eq!(count_events(&native_only, "up", "old-style"), 0, "native discoverer ignores seed");
}

fn group_address() -> Ipv6Addr {
    let group: msd::GroupId = GROUP.parse().unwrap();
    group.ipv6_multicast()
}

fn msd_wire_seed_announce(id: &str) -> Vec<u8> {
    // The seed ANNOUNCE layout, written out: map16 {t: 2, h: map16 {url, id}}.
    let url = "http://10.9.9.9:1";
    let mut packet = vec![0xde, 0x00, 0x02, 0xa1, b't', 0x02, 0xa1, b'h', 0xde, 0x00, 0x02, 0xa3, b'u', b'r', b'l'];
    packet.push(0xa0 | url.len() as u8);
    packet.extend_from_slice(url.as_bytes());
    packet.extend_from_slice(&[0xa2, b'i', b'd', 0xa0 | id.len() as u8]);
    packet.extend_from_slice(id.as_bytes());
    packet
}

/// Joins the group on one interface and returns the datagrams received within `duration`.
fn record_group_packets(interface: u32, duration: Duration) -> Vec<Vec<u8>> {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket.set_only_v6(true).unwrap();
    let bind = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, msd::SEED_PORT, 0, 0);
    socket.bind(&bind.into()).unwrap();
    socket.join_multicast_v6(&group_address(), interface).unwrap();
    let socket: UdpSocket = socket.into();
    let deadline = Instant::now() + duration;
    let mut packets = Vec::new();
    let mut buffer = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        if let Ok(len) = socket.recv(&mut buffer) {
            packets.push(buffer[..len].to_vec());
        }
    }
    packets
}

fn send_group_packets(interface: u32, packets: &[Vec<u8>]) {
    let socket = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    socket.set_multicast_if_v6(interface).unwrap();
    socket.set_multicast_hops_v6(1).unwrap();
    let destination = SocketAddrV6::new(group_address(), msd::SEED_PORT, 0, interface);
    for packet in packets {
        socket.send_to(packet, &destination.into()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn key_file_errors_are_usage_errors() {
    let dir = std::env::temp_dir().join(format!("msd-key-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad");
    std::fs::write(&bad, "primary 1234\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(["browse", "--group", GROUP, "--interface", "lo", "--ipv4", "--key-file"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("line 1"), "{stderr}");
    assert!(!stderr.contains("1234"), "no key material in the message: {stderr}");

    let existing = dir.join("existing");
    std::fs::write(&existing, "").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msd")).args(["key", "new", "--output"]).arg(&existing).output().unwrap();
    assert_eq!(output.status.code(), Some(2));

    let missing_directory = dir.join("no-such-directory").join("ring");
    let output =
        std::process::Command::new(env!("CARGO_BIN_EXE_msd")).args(["key", "new", "--output"]).arg(&missing_directory).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("create it first"));

    for (name, problem) in [("/dev/zero", "not a regular file"), ("/proc/self/cmdline", "not a regular file")] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_msd"))
            .args(["browse", "--group", GROUP, "--interface", "lo", "--ipv4", "--key-file", name])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(problem) || stderr.contains("invalid key file"), "{name}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A key file with a byte order mark and group-readable permissions works, with a warning about
/// the permissions.
#[test]
fn readable_key_file_warns() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ring = dir.path().join("ring");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msd")).args(["key", "new"]).output().unwrap();
    let mut text = vec![0xef, 0xbb, 0xbf];
    text.extend_from_slice(&output.stdout);
    std::fs::write(&ring, text).unwrap();
    std::fs::set_permissions(&ring, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(["browse", "--group", GROUP, "--interface", "lo", "--ipv4", "--timeout", "200ms", "--key-file"])
        .arg(&ring)
        .env("MSD_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "the ring was accepted and nothing was found: {stderr}");
    assert!(stderr.contains("readable by other users"), "{stderr}");
}
