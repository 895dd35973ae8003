//! UDP probes that check which datagrams cross a lab, each socket bound inside a host.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the probes"
)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use msd_lab::{Host, Interface};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};

/// IPv6 group for probes: `ff02::114`, link-local scope, assigned to private experiments.
pub const GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x114);

/// IPv4 group for probes, from the organization-local scope.
pub const GROUP_V4: Ipv4Addr = Ipv4Addr::new(239, 255, 0, 114);

/// UDP port of multicast probes.
pub const MULTICAST_PORT: u16 = 40000;

/// UDP port of the echo server in unicast probes.
pub const ECHO_PORT: u16 = 40001;

/// How long a probe waits when the datagram is expected to arrive.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a probe listens when the datagram is expected to be dropped.
pub const SILENCE_WINDOW: Duration = Duration::from_secs(1);

/// Gap between repeated sends of one probe datagram.
const RESEND_INTERVAL: Duration = Duration::from_millis(50);

/// Read timeout of probe sockets, so loops can check their deadline.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Returns a payload no earlier probe of this process has sent.
fn unique_token() -> Vec<u8> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let number = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("msd-lab probe {} {number}", std::process::id()).into_bytes()
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Returns whether an IPv6 multicast datagram sent by `from` on `from_interface` reaches
/// `to`, whose socket joins [`GROUP_V6`] on `to_interface`, within `wait`.
///
/// The sender repeats the datagram until the receiver has it or gives up.
pub fn multicast_v6_arrives(
    from: &Host,
    from_interface: &Interface,
    to: &Host,
    to_interface: &Interface,
    wait: Duration,
) -> bool {
    let receive_index = to_interface.index;
    let send_index = from_interface.index;
    let open_receiver = move || {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_only_v6(true)?;
        let bind = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, MULTICAST_PORT, 0, 0);
        socket.bind(&SocketAddr::V6(bind).into())?;
        socket.join_multicast_v6(&GROUP_V6, receive_index)?;
        Ok(UdpSocket::from(socket))
    };
    let open_sender = move || {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_if_v6(send_index)?;
        socket.set_multicast_hops_v6(1)?;
        socket.set_multicast_loop_v6(false)?;
        let target = SocketAddrV6::new(GROUP_V6, MULTICAST_PORT, 0, send_index);
        Ok((UdpSocket::from(socket), SocketAddr::V6(target)))
    };
    datagram_arrives(from, to, wait, open_receiver, open_sender)
}

/// Returns whether an IPv4 multicast datagram sent by `from` on `from_interface` reaches
/// `to`, whose socket joins [`GROUP_V4`] on `to_interface`, within `wait`.
pub fn multicast_v4_arrives(
    from: &Host,
    from_interface: &Interface,
    to: &Host,
    to_interface: &Interface,
    wait: Duration,
) -> bool {
    let receive_index = to_interface.index;
    let send_address = from_interface.ipv4;
    let open_receiver = move || {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        let bind = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MULTICAST_PORT);
        socket.bind(&SocketAddr::V4(bind).into())?;
        let interface = InterfaceIndexOrAddress::Index(receive_index);
        socket.join_multicast_v4_n(&GROUP_V4, &interface)?;
        Ok(UdpSocket::from(socket))
    };
    let open_sender = move || {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_if_v4(&send_address)?;
        socket.set_multicast_ttl_v4(1)?;
        socket.set_multicast_loop_v4(false)?;
        let target = SocketAddrV4::new(GROUP_V4, MULTICAST_PORT);
        Ok((UdpSocket::from(socket), SocketAddr::V4(target)))
    };
    datagram_arrives(from, to, wait, open_receiver, open_sender)
}

/// Returns whether a datagram from `from`'s `eth0` to `to`'s link-local address on port
/// [`ECHO_PORT`] is echoed back within `wait`.
pub fn link_local_echo(from: &Host, to: &Host, wait: Duration) -> bool {
    let server = SocketAddrV6::new(to.link_local(), ECHO_PORT, 0, to.interface_index());
    let target = SocketAddrV6::new(to.link_local(), ECHO_PORT, 0, from.interface_index());
    udp_echo(
        from,
        to,
        SocketAddr::V6(server),
        SocketAddr::V6(target),
        wait,
    )
}

/// Returns whether a datagram from `from` to `to`'s IPv4 address on port [`ECHO_PORT`] is
/// echoed back within `wait`.
pub fn ipv4_echo(from: &Host, to: &Host, wait: Duration) -> bool {
    let address = SocketAddr::V4(SocketAddrV4::new(to.ipv4(), ECHO_PORT));
    udp_echo(from, to, address, address, wait)
}

/// Runs an echo server bound to `server` in `to` and a client in `from` that sends to
/// `target` until it gets its datagram back or `wait` passes.
fn udp_echo(
    from: &Host,
    to: &Host,
    server: SocketAddr,
    target: SocketAddr,
    wait: Duration,
) -> bool {
    let (ready_sender, ready) = mpsc::channel();
    let echo = to.run(move || -> io::Result<()> {
        let socket = UdpSocket::bind(server)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let _ = ready_sender.send(());
        let deadline = Instant::now() + wait;
        let mut buffer = [0; 256];
        while Instant::now() < deadline {
            match socket.recv_from(&mut buffer) {
                Ok((length, peer)) => {
                    let payload = buffer.get(..length).unwrap_or_default();
                    socket.send_to(payload, peer)?;
                    return Ok(());
                }
                Err(error) if is_timeout(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    });
    wait_until_ready(&ready, echo);

    let unspecified: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let token = unique_token();
    let client = from.run(move || -> io::Result<bool> {
        let socket = UdpSocket::bind(unspecified)?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let deadline = Instant::now() + wait;
        let mut buffer = [0; 256];
        while Instant::now() < deadline {
            // A partition may fail neighbor discovery, which the next send reports.
            let _ = socket.send_to(&token, target);
            match socket.recv(&mut buffer) {
                Ok(length) if buffer.get(..length) == Some(token.as_slice()) => return Ok(true),
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(error) if error.raw_os_error() == Some(nix::libc::EHOSTUNREACH) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    });
    client
        .join()
        .expect("echo client thread panicked")
        .expect("echo client socket failed")
}

/// Panics with the server's own error when it stopped before signalling readiness.
fn wait_until_ready(ready: &mpsc::Receiver<()>, server: thread::JoinHandle<io::Result<()>>) {
    if ready.recv_timeout(DELIVERY_TIMEOUT).is_ok() {
        // The server stops by itself at its deadline, and its result is not needed.
        drop(server);
        return;
    }
    match server.join() {
        Ok(Err(error)) => panic!("probe socket failed: {error}"),
        Ok(Ok(())) => panic!("probe server stopped before it was ready"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Opens the receiver in `to`, then sends one datagram from `from` every
/// [`RESEND_INTERVAL`] until the receiver gets it or `wait` passes.
fn datagram_arrives<R, S>(
    from: &Host,
    to: &Host,
    wait: Duration,
    open_receiver: R,
    open_sender: S,
) -> bool
where
    R: FnOnce() -> io::Result<UdpSocket> + Send + 'static,
    S: FnOnce() -> io::Result<(UdpSocket, SocketAddr)> + Send + 'static,
{
    let token = unique_token();
    let expected = token.clone();
    let (ready_sender, ready) = mpsc::channel();
    let receiver = to.run(move || -> io::Result<bool> {
        let socket = open_receiver()?;
        socket.set_read_timeout(Some(POLL_INTERVAL))?;
        let _ = ready_sender.send(());
        let deadline = Instant::now() + wait;
        let mut buffer = [0; 256];
        while Instant::now() < deadline {
            match socket.recv(&mut buffer) {
                Ok(length) if buffer.get(..length) == Some(expected.as_slice()) => return Ok(true),
                Ok(_) => {}
                Err(error) if is_timeout(&error) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    });
    if ready.recv_timeout(DELIVERY_TIMEOUT).is_err() {
        let result = receiver.join().expect("probe receiver thread panicked");
        panic!("probe receiver was not ready: {result:?}");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stop_sender = Arc::clone(&stop);
    let sender = from.run(move || -> io::Result<()> {
        let (socket, target) = open_sender()?;
        while !stop_sender.load(Ordering::Relaxed) {
            // A link that is down rejects the send, which is what some tests expect.
            let _ = socket.send_to(&token, target);
            thread::sleep(RESEND_INTERVAL);
        }
        Ok(())
    });

    let received = receiver.join().expect("probe receiver thread panicked");
    stop.store(true, Ordering::Relaxed);
    sender
        .join()
        .expect("probe sender thread panicked")
        .expect("probe sender socket failed");
    received.expect("probe receiver socket failed")
}

/// Sends `count` distinct IPv6 multicast datagrams from `from`'s `eth0` to `to`'s `eth0`
/// and returns how many arrived.
pub fn count_multicast_v6(from: &Host, to: &Host, count: usize) -> usize {
    let receive_index = to.interface_index();
    let send_index = from.interface_index();
    let prefix = unique_token();
    let expected_prefix = prefix.clone();
    let done = Arc::new(AtomicBool::new(false));
    let sender_done = Arc::clone(&done);

    let (ready_sender, ready) = mpsc::channel();
    let receiver = to.run(move || -> io::Result<usize> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_address(true)?;
        socket.set_only_v6(true)?;
        socket.set_recv_buffer_size(1 << 20)?;
        let bind = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, MULTICAST_PORT, 0, 0);
        socket.bind(&SocketAddr::V6(bind).into())?;
        socket.join_multicast_v6(&GROUP_V6, receive_index)?;
        let socket = UdpSocket::from(socket);
        socket.set_read_timeout(Some(SILENCE_WINDOW))?;
        let _ = ready_sender.send(());

        let mut received = 0;
        let mut buffer = [0; 256];
        loop {
            match socket.recv(&mut buffer) {
                Ok(length) => {
                    let payload = buffer.get(..length).unwrap_or_default();
                    if payload.starts_with(&expected_prefix) {
                        received += 1;
                    }
                }
                // Quiet for a whole window after the last send: nothing more is coming.
                Err(error) if is_timeout(&error) && done.load(Ordering::Relaxed) => {
                    return Ok(received)
                }
                Err(error) if is_timeout(&error) => {}
                Err(error) => return Err(error),
            }
        }
    });
    ready
        .recv_timeout(DELIVERY_TIMEOUT)
        .expect("counting receiver was not ready");

    let sender = from.run(move || -> io::Result<()> {
        let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_if_v6(send_index)?;
        socket.set_multicast_loop_v6(false)?;
        let socket = UdpSocket::from(socket);
        let target = SocketAddrV6::new(GROUP_V6, MULTICAST_PORT, 0, send_index);
        for number in 0..count {
            let mut payload = prefix.clone();
            payload.extend_from_slice(format!(" {number}").as_bytes());
            socket.send_to(&payload, target)?;
            thread::sleep(Duration::from_millis(2));
        }
        sender_done.store(true, Ordering::Relaxed);
        Ok(())
    });
    sender
        .join()
        .expect("counting sender thread panicked")
        .expect("counting sender socket failed");
    receiver
        .join()
        .expect("counting receiver thread panicked")
        .expect("counting receiver socket failed")
}

/// Returns the names listed by `ip netns list`.
pub fn namespace_names() -> Vec<String> {
    let output = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("`ip netns list` runs");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
