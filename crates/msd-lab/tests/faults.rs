//! Loss, partitions, links going down, and hosts or interfaces added while a lab runs.
//!
//! Every test skips when the machine cannot run a lab, unless `MSD_LAB_REQUIRED=1`.

mod support;

use std::net::SocketAddrV6;

use msd_lab::{Host, Interface, Lab, LabError};
use support::{
    count_multicast_v6, ipv4_echo, link_local_echo, multicast_v4_arrives, multicast_v6_arrives,
    DELIVERY_TIMEOUT, GROUP_V6, MULTICAST_PORT, SILENCE_WINDOW,
};

fn first_interface(host: &Host) -> Interface {
    host.interfaces()
        .into_iter()
        .next()
        .expect("every host has eth0")
}

/// Returns whether IPv6 multicast from `from`'s `eth0` arrives at `to`'s `eth0`, waiting the
/// full delivery timeout when `expected` and only the silence window otherwise.
fn multicast_between(from: &Host, to: &Host, expected: bool) -> bool {
    let wait = if expected {
        DELIVERY_TIMEOUT
    } else {
        SILENCE_WINDOW
    };
    multicast_v6_arrives(from, &first_interface(from), to, &first_interface(to), wait)
}

#[test]
fn full_loss_at_receiver_stops_multicast() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (sender, receiver) = (lab.host(0), lab.host(1));

    receiver.set_udp_loss(100).expect("loss rule installs");
    assert!(
        !multicast_between(sender, receiver, false),
        "datagram passed 100% loss"
    );

    receiver.set_udp_loss(0).expect("loss rule is removed");
    assert!(
        multicast_between(sender, receiver, true),
        "datagram lost after loss 0"
    );
}

#[test]
fn full_loss_at_sender_is_silent() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (sender, receiver) = (lab.host(0), lab.host(1));

    sender.set_udp_loss(100).expect("loss rule installs");
    // A real network loses datagrams without telling the sender, so the send must succeed.
    let index = sender.interface_index();
    let sent = sender
        .run(move || -> std::io::Result<usize> {
            let socket = std::net::UdpSocket::bind("[::]:0")?;
            socket2::SockRef::from(&socket).set_multicast_if_v6(index)?;
            let target = SocketAddrV6::new(GROUP_V6, MULTICAST_PORT, 0, index);
            socket.send_to(b"dropped", target)
        })
        .join()
        .expect("sender thread panicked");
    assert!(sent.is_ok(), "send failed under loss: {sent:?}");
    assert!(
        !multicast_between(sender, receiver, false),
        "datagram passed 100% loss"
    );

    sender.set_udp_loss(0).expect("loss rule is removed");
    assert!(
        multicast_between(sender, receiver, true),
        "datagram lost after loss 0"
    );
}

#[test]
fn partial_loss_drops_some_datagrams() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (sender, receiver) = (lab.host(0), lab.host(1));
    receiver.set_udp_loss(50).expect("loss rule installs");

    let received = count_multicast_v6(sender, receiver, 200);

    // Each of 200 datagrams passes with probability 1/2, so either bound fails with
    // probability 2^-200.
    assert!(received > 0, "all 200 datagrams were dropped");
    assert!(received < 200, "no datagram was dropped");
}

#[test]
fn loss_above_100_is_rejected() {
    let Some(lab) = Lab::for_test(1) else { return };

    let error = lab
        .host(0)
        .set_udp_loss(101)
        .expect_err("101 is out of range");

    assert!(
        matches!(error, LabError::InvalidLossPercent { percent: 101 }),
        "{error}"
    );
}

#[test]
fn loss_spares_other_hosts() {
    let Some(lab) = Lab::for_test(3) else { return };
    lab.host(1).set_udp_loss(100).expect("loss rule installs");

    assert!(multicast_between(lab.host(0), lab.host(2), true));
    assert!(link_local_echo(lab.host(2), lab.host(0), DELIVERY_TIMEOUT));
}

#[test]
fn partition_blocks_both_directions() {
    let Some(lab) = Lab::for_test(3) else { return };
    let (a, b, c) = (lab.host(0), lab.host(1), lab.host(2));

    a.partition_from(b).expect("partition installs");

    assert!(
        !multicast_between(a, b, false),
        "IPv6 multicast crossed from a to b"
    );
    assert!(
        !multicast_between(b, a, false),
        "IPv6 multicast crossed from b to a"
    );
    assert!(
        !link_local_echo(a, b, SILENCE_WINDOW),
        "link-local unicast crossed"
    );
    assert!(!ipv4_echo(b, a, SILENCE_WINDOW), "IPv4 unicast crossed");
    let ipv4_multicast = multicast_v4_arrives(
        a,
        &first_interface(a),
        b,
        &first_interface(b),
        SILENCE_WINDOW,
    );
    assert!(!ipv4_multicast, "IPv4 multicast crossed");

    assert!(multicast_between(a, c, true), "a lost c");
    assert!(multicast_between(c, b, true), "c lost b");
}

#[test]
fn heal_restores_traffic() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    a.partition_from(b).expect("partition installs");
    assert!(
        !multicast_between(a, b, false),
        "multicast crossed the partition"
    );

    a.heal().expect("partition is removed");

    assert!(multicast_between(a, b, true), "a to b after heal");
    assert!(multicast_between(b, a, true), "b to a after heal");
    assert!(
        link_local_echo(b, a, DELIVERY_TIMEOUT),
        "unicast after heal"
    );
}

#[test]
fn heal_works_from_either_side() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    a.partition_from(b).expect("partition installs");

    b.heal().expect("partition is removed");

    assert!(multicast_between(a, b, true));
}

#[test]
fn heal_keeps_loss() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    b.set_udp_loss(100).expect("loss rule installs");
    a.partition_from(b).expect("partition installs");

    b.heal().expect("partition is removed");

    assert!(
        !multicast_between(a, b, false),
        "the loss rule went away with the partition"
    );
}

#[test]
fn partition_rejects_self_and_other_labs() {
    let Some(lab) = Lab::for_test(1) else { return };
    let Some(other_lab) = Lab::for_test(1) else {
        return;
    };

    let error = lab
        .host(0)
        .partition_from(lab.host(0))
        .expect_err("self partition");
    assert!(matches!(error, LabError::SelfPartition { .. }), "{error}");

    let error = lab
        .host(0)
        .partition_from(other_lab.host(0))
        .expect_err("foreign host");
    assert!(matches!(error, LabError::ForeignHost { .. }), "{error}");
}

#[test]
fn link_down_and_up() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let link_local = b.link_local();

    b.link_down().expect("link goes down");
    assert!(
        !multicast_between(a, b, false),
        "multicast reached a host whose link is down"
    );

    b.link_up().expect("link comes up");
    assert_eq!(
        b.interfaces().first().map(|i| i.link_local),
        Some(link_local)
    );
    assert!(multicast_between(a, b, true), "multicast after link up");
    assert!(
        link_local_echo(a, b, DELIVERY_TIMEOUT),
        "unicast after link up"
    );
}

#[test]
fn unknown_interface_is_rejected() {
    let Some(lab) = Lab::for_test(1) else { return };

    let error = lab
        .host(0)
        .interface_down("lo")
        .expect_err("lo is not a lab interface");

    assert!(
        matches!(error, LabError::UnknownInterface { .. }),
        "{error}"
    );
}

#[test]
fn added_host_joins_segment() {
    let Some(mut lab) = Lab::for_test(1) else {
        return;
    };

    let added = lab.add_host().expect("host is added");
    assert_eq!(added.index(), 1);
    assert_eq!(lab.hosts().len(), 2);

    assert!(multicast_between(lab.host(0), lab.host(1), true));
    assert!(link_local_echo(lab.host(1), lab.host(0), DELIVERY_TIMEOUT));
}

#[test]
fn added_interface_is_on_segment() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));

    let name = a.add_interface().expect("interface is added");

    assert_eq!(name, "eth1");
    let interfaces = a.interfaces();
    assert_eq!(interfaces.len(), 2);
    let added = interfaces.get(1).expect("two interfaces").clone();
    assert_eq!(added.name, "eth1");
    assert_ne!(added.index, a.interface_index());
    assert_ne!(added.ipv4, a.ipv4());
    assert_ne!(added.link_local, a.link_local());

    let b_interface = first_interface(b);
    assert!(
        multicast_v6_arrives(b, &b_interface, a, &added, DELIVERY_TIMEOUT),
        "IPv6"
    );
    assert!(
        multicast_v4_arrives(b, &b_interface, a, &added, DELIVERY_TIMEOUT),
        "IPv4"
    );
    assert!(
        multicast_v6_arrives(a, &added, b, &b_interface, DELIVERY_TIMEOUT),
        "from eth1"
    );
}

#[test]
fn partition_covers_added_interface() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    a.partition_from(b).expect("partition installs");

    a.add_interface().expect("interface is added");

    let added = a.interfaces().into_iter().nth(1).expect("eth1 exists");
    let b_interface = first_interface(b);
    let arrived = multicast_v6_arrives(b, &b_interface, a, &added, SILENCE_WINDOW);
    assert!(
        !arrived,
        "multicast reached the added interface across the partition"
    );
    let arrived = multicast_v6_arrives(a, &added, b, &b_interface, SILENCE_WINDOW);
    assert!(
        !arrived,
        "multicast left the added interface across the partition"
    );
}

#[test]
fn added_interface_goes_down_alone() {
    let Some(lab) = Lab::for_test(2) else { return };
    let (a, b) = (lab.host(0), lab.host(1));
    let name = a.add_interface().expect("interface is added");

    a.interface_down(&name).expect("eth1 goes down");

    assert!(multicast_between(b, a, true), "eth0 went down with eth1");
    a.interface_up(&name).expect("eth1 comes up");
}
