//! Lab setup, connectivity, processes and cleanup.
//!
//! Every test skips when the machine cannot run a lab, unless `MSD_LAB_REQUIRED=1`.

mod support;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::panic::{self, AssertUnwindSafe};
use std::process::Command;
use std::time::Duration;

use msd_lab::{Lab, LabError, Signal};
use support::{
    ipv4_echo, link_local_echo, multicast_v4_arrives, multicast_v6_arrives, namespace_names,
    DELIVERY_TIMEOUT,
};

const CHILD_TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn hosts_get_distinct_names_and_addresses() {
    let Some(lab) = Lab::for_test(3) else { return };

    let names: HashSet<&str> = lab.hosts().iter().map(|host| host.name()).collect();
    assert_eq!(names.len(), 3, "host names repeat: {names:?}");
    let ipv4s: HashSet<_> = lab.hosts().iter().map(|host| host.ipv4()).collect();
    assert_eq!(ipv4s.len(), 3, "IPv4 addresses repeat: {ipv4s:?}");
    let link_locals: HashSet<_> = lab.hosts().iter().map(|host| host.link_local()).collect();
    assert_eq!(
        link_locals.len(),
        3,
        "link-local addresses repeat: {link_locals:?}"
    );

    for (index, host) in lab.hosts().iter().enumerate() {
        assert_eq!(host.index(), index);
        assert!(
            host.name().starts_with(lab.name()),
            "{} outside {}",
            host.name(),
            lab.name()
        );
        assert_eq!(host.interface(), "eth0");
        assert!(host.interface_index() > 0);
        assert_eq!(host.link_local().segments().first(), Some(&0xfe80));
        let last_octet = u8::try_from(index + 1).expect("three hosts");
        assert_eq!(host.ipv4().octets().last(), Some(&last_octet));
        assert_eq!(host.ipv4().octets().first(), Some(&10));
    }
}

#[test]
fn labs_in_one_process_do_not_share_names() {
    let Some(first) = Lab::for_test(1) else {
        return;
    };
    let Some(second) = Lab::for_test(1) else {
        return;
    };

    assert_ne!(first.name(), second.name());
    assert_ne!(first.host(0).name(), second.host(0).name());
    assert_ne!(first.switch_name(), second.switch_name());
    assert_ne!(first.host(0).ipv4(), second.host(0).ipv4());
}

#[test]
fn link_local_unicast_works_both_ways() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));

    assert!(
        link_local_echo(a, b, DELIVERY_TIMEOUT),
        "host 0 cannot reach host 1"
    );
    assert!(
        link_local_echo(b, a, DELIVERY_TIMEOUT),
        "host 1 cannot reach host 0"
    );
}

#[test]
fn ipv4_unicast_works() {
    let Some(lab) = Lab::for_test(2) else { return };

    assert!(ipv4_echo(lab.host(0), lab.host(1), DELIVERY_TIMEOUT));
}

#[test]
fn ipv6_multicast_reaches_other_hosts() {
    let Some(lab) = Lab::for_test(3) else { return };
    let sender = lab.host(0);
    let sender_interface = first_interface(sender);

    for receiver in lab.hosts().iter().skip(1) {
        let arrived = multicast_v6_arrives(
            sender,
            &sender_interface,
            receiver,
            &first_interface(receiver),
            DELIVERY_TIMEOUT,
        );
        assert!(
            arrived,
            "no IPv6 multicast from host 0 at {}",
            receiver.name()
        );
    }
}

#[test]
fn ipv4_multicast_reaches_other_host() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (sender, receiver) = (lab.host(0), lab.host(1));

    let arrived = multicast_v4_arrives(
        sender,
        &first_interface(sender),
        receiver,
        &first_interface(receiver),
        DELIVERY_TIMEOUT,
    );
    assert!(arrived);
}

#[test]
fn run_enters_the_namespace() {
    let Some(lab) = Lab::for_test(1) else { return };
    let own = std::fs::read_link("/proc/thread-self/ns/net").expect("own namespace link");

    let inside = lab
        .host(0)
        .run(|| std::fs::read_link("/proc/thread-self/ns/net"))
        .join()
        .expect("thread in host 0 panicked")
        .expect("namespace link inside host 0");

    assert_ne!(inside, own);
}

#[test]
fn spawn_captures_stdout_and_stderr() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let mut command = host.command("sh");
    command.args([
        "-c",
        "echo to-stdout; echo to-stderr >&2; ip -o -4 addr show dev eth0",
    ]);
    let mut child = host.spawn(command).expect("sh starts");

    let address = host.ipv4().to_string();
    let line = child.wait_for_line(CHILD_TIMEOUT, |line| line.contains(&address));
    assert!(
        line.is_some(),
        "no line with {address} in:\n{}",
        child.output()
    );
    let status = child.wait_exit(CHILD_TIMEOUT).expect("sh exits");
    assert!(status.success(), "{status}");

    // Lines from before the call still match.
    let stdout = child.wait_for_line(CHILD_TIMEOUT, |line| line == "to-stdout");
    assert_eq!(stdout.as_deref(), Some("to-stdout"));
    let stderr = child.wait_for_line(CHILD_TIMEOUT, |line| line == "to-stderr");
    assert_eq!(stderr.as_deref(), Some("to-stderr"));
    assert!(child.output().contains("to-stdout\n"), "{}", child.output());
}

#[test]
fn wait_for_line_ends_when_output_closes() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let mut child = host.spawn(host.command("true")).expect("true starts");

    assert_eq!(child.wait_for_line(CHILD_TIMEOUT, |_| true), None);
    assert!(child
        .wait_exit(CHILD_TIMEOUT)
        .is_some_and(|status| status.success()));
}

#[test]
fn signal_stops_child() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let mut command = host.command("sleep");
    command.arg("60");
    let mut child = host.spawn(command).expect("sleep starts");

    assert!(child.pid() > 0);
    assert_eq!(child.wait_exit(Duration::from_millis(50)), None);
    child.signal(Signal::SIGTERM).expect("SIGTERM is sent");
    let status = child
        .wait_exit(CHILD_TIMEOUT)
        .expect("sleep exits after SIGTERM");
    assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));

    let error = child
        .signal(Signal::SIGTERM)
        .expect_err("the child was reaped");
    assert!(matches!(error, LabError::Signal { .. }), "{error}");
}

#[test]
fn lab_drop_kills_children() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let mut command = host.command("sleep");
    command.arg("60");
    let mut child = host.spawn(command).expect("sleep starts");

    drop(lab);

    let status = child
        .wait_exit(CHILD_TIMEOUT)
        .expect("sleep is killed with the lab");
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
}

#[test]
fn namespaces_removed_on_drop() {
    let Some(lab) = Lab::for_test(2) else { return };
    let mut created: Vec<String> = lab
        .hosts()
        .iter()
        .map(|host| host.name().to_owned())
        .collect();
    created.push(lab.switch_name().to_owned());
    let listed = namespace_names();
    for name in &created {
        assert!(listed.contains(name), "{name} missing while the lab lives");
    }

    drop(lab);

    let listed = namespace_names();
    for name in &created {
        assert!(!listed.contains(name), "{name} left after drop");
    }
}

#[test]
fn namespaces_removed_after_panic() {
    let mut created = Vec::new();
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        let Some(lab) = Lab::for_test(2) else { return };
        created = lab
            .hosts()
            .iter()
            .map(|host| host.name().to_owned())
            .collect();
        created.push(lab.switch_name().to_owned());
        panic!("test panics while the lab lives");
    }));
    if created.is_empty() {
        return;
    }

    assert!(result.is_err(), "the closure did not panic");
    let listed = namespace_names();
    for name in &created {
        assert!(!listed.contains(name), "{name} left after a panic");
    }
}

#[test]
fn failed_add_host_removes_namespace() {
    let Some(mut lab) = Lab::for_test(1) else {
        return;
    };
    // A bridge port named like the next host's makes creating that host's veth pair fail
    // after its namespace exists.
    let occupy_port = [
        "-n",
        lab.switch_name(),
        "link",
        "add",
        "h1",
        "type",
        "veth",
        "peer",
        "name",
        "h1peer",
    ];
    let occupied = Command::new("ip").args(occupy_port).status();
    assert!(
        occupied.is_ok_and(|status| status.success()),
        "cannot add port h1"
    );
    let half_built = format!("{}-h1", lab.name());

    let error = lab.add_host().expect_err("port h1 already exists");

    let message = error.to_string();
    assert!(matches!(error, LabError::CommandFailed { .. }), "{message}");
    assert!(message.contains("link add h1 type veth"), "{message}");
    assert!(message.contains("exists"), "stderr missing from: {message}");
    assert_eq!(lab.hosts().len(), 1);
    assert!(
        !namespace_names().contains(&half_built),
        "{half_built} left after the error"
    );
}

#[test]
fn host_index_out_of_range_panics() {
    let Some(lab) = Lab::for_test(1) else { return };

    let result = panic::catch_unwind(AssertUnwindSafe(|| lab.host(1).name().to_owned()));

    assert!(result.is_err());
}

#[test]
fn too_many_hosts_are_rejected() {
    let error = Lab::new(msd_lab::MAX_HOSTS + 1).expect_err("over the host limit");

    assert!(matches!(error, LabError::TooManyHosts { .. }), "{error}");
}

fn first_interface(host: &msd_lab::Host) -> msd_lab::Interface {
    host.interfaces()
        .into_iter()
        .next()
        .expect("every host has eth0")
}
