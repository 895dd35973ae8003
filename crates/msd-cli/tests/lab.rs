//! The `msd` binary across hosts of a network-namespace lab, over IPv6 link-local multicast.
//!
//! Each test builds its own lab (namespaces on a bridge), runs `msd announce` and
//! `msd browse --watch --json` inside the hosts, and reads the events the discoverers print.
//! Tests skip without root unless `MSD_LAB_REQUIRED=1`, which CI sets.

mod support;

use std::time::{Duration, Instant};

use msd_lab::{Host, Lab, LabChild, Signal};
use support::{browse_with, count_events, msd, wait_event, wait_event_after, GROUP, WAIT};

/// Browse settings of these tests: quick rounds so that expiry happens within seconds.
const EXPIRE_AFTER: &str = "2s";

fn announce(host: &Host, id: &str) -> LabChild {
    support::announce_with(host, id, &["--announce-interval", "500ms"])
}

fn browse(host: &Host) -> LabChild {
    browse_with(host, &[])
}

#[test]
fn three_hosts_see_each_other() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let watch_a = browse(a);
    let watch_c = browse(c);
    let _on_b = announce(b, "on-b");
    let _on_c = announce(c, "on-c");

    for (name, watcher) in [("A", &watch_a), ("C", &watch_c)] {
        for (id, host) in [("on-b", b), ("on-c", c)] {
            let event = wait_event(watcher, "up", id);
            let url = format!("http://{}:8080/{id}", host.ipv4());
            assert_eq!(event["instance"]["url"], url.as_str(), "discoverer on {name}");
            assert_eq!(event["instance"]["interface"], "eth0", "discoverer on {name}");
        }
    }
    // Heard from the other host's link-local address, with the scope of the arrival interface.
    let event = wait_event(&watch_a, "up", "on-b");
    let source = event["instance"]["source"].as_str().unwrap();
    assert!(source.starts_with(&format!("[{}%", b.link_local())), "source {source}");
}

#[test]
fn logoff_kill_and_restart() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let watcher = browse(a);

    // SIGTERM: the instance logs off and leaves at once.
    let mut polite = announce(b, "polite");
    wait_event(&watcher, "up", "polite");
    polite.signal(Signal::SIGTERM).unwrap();
    let down = wait_event(&watcher, "down", "polite");
    assert_eq!(down["reason"], "logoff");
    let status = polite.wait_exit(WAIT).expect("announce exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}:\n{}", polite.output());

    // SIGKILL: no logoff; the discoverer probes and then expires it.
    let crashing = announce(b, "crashing");
    wait_event(&watcher, "up", "crashing");
    let killed_at = Instant::now();
    crashing.signal(Signal::SIGKILL).unwrap();
    let down = wait_event(&watcher, "down", "crashing");
    assert_eq!(down["reason"], "expired");
    eprintln!("SIGKILL to expiry: {:?} (expire after {EXPIRE_AFTER}, 3 probes of 300 ms)", killed_at.elapsed());

    // A restart with the same id comes back.
    let _restarted = announce(b, "crashing");
    wait_event_after(&watcher, "up", "crashing", 1);
    assert_eq!(count_events(&watcher, "down", "crashing"), 1);
}

#[test]
fn heavy_loss_still_discovers_all() {
    let Some(lab) = Lab::for_test(3) else { return };
    for host in lab.hosts() {
        host.set_udp_loss(30).unwrap();
    }
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));
    let _on_b = announce(b, "lossy-b");
    let _on_c = announce(c, "lossy-c");
    let watcher = browse(a);
    wait_event(&watcher, "up", "lossy-b");
    wait_event(&watcher, "up", "lossy-c");
}

/// Two instances and two discoverers in one namespace. The instances announce only at start,
/// before the discoverers exist, so each discoverer learns about them from unicast answers to
/// its own DISCOVERs, although all four processes share the group port.
#[test]
fn several_processes_per_host() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let quiet = |id: &str| {
        let url = format!("http://{}:8080/{id}", host.ipv4());
        msd(host, &["announce", "--group", GROUP, "--id", id, "--url", &url, "--announce-interval", "1h", "--heartbeat-interval", "1h", "--ttl", "2h"])
    };
    let first = quiet("first");
    let second = quiet("second");
    for child in [&first, &second] {
        assert!(child.wait_for_line(WAIT, |line| line.contains("announcing")).is_some(), "{}", child.output());
    }
    // The startup announcements go out at 0, 250 and 750 ms.
    std::thread::sleep(Duration::from_millis(1500));

    let watchers = [browse(host), browse(host)];
    for watcher in &watchers {
        wait_event(watcher, "up", "first");
        wait_event(watcher, "up", "second");
    }
}

/// A host with two interfaces on one segment hears an instance on both, lists it once, and
/// names the interface its packets arrived on.
#[test]
fn attributed_to_arrival_interface() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let second = a.add_interface().unwrap();

    let only_second =
        msd(a, &["browse", "--group", GROUP, "--watch", "--json", "--interface", &second, "--discover-interval", "1s"]);
    let both = browse(a);
    let _instance = announce(b, "dual");

    let event = wait_event(&only_second, "up", "dual");
    assert_eq!(event["instance"]["interface"], second.as_str());
    wait_event(&both, "up", "dual");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(count_events(&both, "up", "dual"), 1, "listed once:\n{}", both.output());
    assert_eq!(count_events(&both, "down", "dual"), 0, "no flapping:\n{}", both.output());
}

#[test]
fn browse_table_and_exit_codes() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let _instance = announce(b, "tabled");

    let output = a
        .command(env!("CARGO_BIN_EXE_msd"))
        .args(["browse", "--group", GROUP, "--timeout", "2s"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.starts_with("ID"), "{stdout}");
    assert!(stdout.contains("tabled"), "{stdout}");

    let other_group = "00000000000000000000000000ff";
    let output = a
        .command(env!("CARGO_BIN_EXE_msd"))
        .args(["browse", "--group", other_group, "--timeout", "1s", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "nothing found");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "[]");
}
