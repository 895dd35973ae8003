//! Discoverer ingest: how many ANNOUNCEs per second one discoverer receives, decodes, verifies and
//! applies to its table, against bare loops that only receive and drop them.
//!
//! A sender thread sends pre-encoded native ANNOUNCEs of 10,000 distinct instances to the group
//! on the loopback interface of one lab host, as fast as `sendmmsg` takes them. Each run sends a
//! fixed number of packets with rising sequence numbers, so the discoverer applies every one. A receiver
//! thread in the same host runs a msd discoverer on `lo` in IPv4 mode, with the per-source rate
//! limit off (`rate_limit(0, 0)`, since every packet comes from one source), or a bare loop on a
//! socket set up like msd's IPv4 group socket. Sender and receiver are pinned to different CPUs.
//!
//! Each run reports the packets the receiver counted divided by the time from the first send to
//! the last change of the count, and the receiver thread's CPU time per packet. Packets the
//! receiver was too slow for are dropped by the kernel and counted as receive-buffer errors. The
//! same streams also go straight into the sans-IO engine, without sockets.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use msd::{Discoverer, IpVersion, KeyRing};
use msd_engine::{DiscovererConfig, InterfaceIndex, Received as EngineDatagram};
use msd_lab::Host;
use nix::sys::socket::{
    self as nix_socket, sockopt, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn,
    SockaddrStorage,
};
use socket2::{Domain, InterfaceIndexOrAddress, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::lab::{self, block_on_in};
use crate::packets::{self, GROUP};
use crate::procfs::UdpCounters;
use crate::report::Report;
use crate::summary::Summary;

const SECTION: &str = "ingest";

/// The interface sender and receiver share: loopback, inside a lab host's namespace.
const INTERFACE: &str = "lo";

/// Gap between two reads of the receiver's count.
const POLL: Duration = Duration::from_millis(10);

/// Time without a new packet, after the sender finished, that ends a run.
const QUIET: Duration = Duration::from_millis(300);

/// Maximum time of one run; a run still going then is cut off.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Datagrams the sender hands to the kernel in one `sendmmsg` call.
const SEND_BATCH: usize = 64;

/// Datagrams read from the socket before the bare loop waits for readiness again, as msd's
/// driver does.
const RECEIVE_BATCH: usize = 64;

/// Size of the ingest runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Distinct instance ids in the stream.
    pub ids: usize,
    /// Heartbeats sent per id in one run.
    pub rounds: usize,
    /// Runs of each receiver.
    pub repeats: usize,
    /// First UDP port; each run uses the next one, so no datagram of one run reaches another.
    pub first_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ids: 10_000,
            rounds: 30,
            repeats: 5,
            first_port: 47_000,
        }
    }
}

/// The receiver of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Receiver {
    /// Receive with packet information and drop, one `recvmsg` per datagram as msd does.
    Bare,
    /// Receive with packet information and drop, up to [`RECEIVE_BATCH`] datagrams per
    /// `recvmmsg` call.
    BareBatched,
    /// A msd discoverer without keys.
    Discoverer,
    /// A msd discoverer with a key ring; the stream is signed with its primary key.
    AuthenticatedDiscoverer,
}

impl Receiver {
    const ALL: [Receiver; 4] = [
        Receiver::Bare,
        Receiver::BareBatched,
        Receiver::Discoverer,
        Receiver::AuthenticatedDiscoverer,
    ];

    fn label(self) -> &'static str {
        match self {
            Receiver::Bare => "bare loop (recvmsg, drop)",
            Receiver::BareBatched => "bare loop (recvmmsg, drop)",
            Receiver::Discoverer => "discoverer, unauthenticated",
            Receiver::AuthenticatedDiscoverer => "discoverer, authenticated (verify)",
        }
    }
}

/// The outcome of one run.
#[derive(Debug, Clone, Copy)]
struct Run {
    sent: u64,
    send_errors: u64,
    send_time: Duration,
    /// Packets the receiver counted: valid native ANNOUNCEs for a discoverer, datagrams for the
    /// bare loop.
    processed: u64,
    /// From the first send to the last change of the receiver's count.
    receive_time: Duration,
    /// Datagrams the receiver's kernel dropped for a full receive buffer.
    kernel_drops: u64,
    /// Instances in the discoverer's table at the end.
    listed: Option<usize>,
    /// Datagrams the discoverer rejected.
    rejected: u64,
    /// CPU time of the receiver's thread from just before the first send to the end of the run.
    receiver_cpu: Duration,
}

impl Run {
    fn rate(&self) -> f64 {
        self.processed as f64 / self.receive_time.as_secs_f64().max(1e-9)
    }

    /// Returns the receiver's CPU time per packet in microseconds.
    fn cpu_per_packet(&self) -> f64 {
        self.receiver_cpu.as_secs_f64() * 1e6 / self.processed.max(1) as f64
    }

    fn send_rate(&self) -> f64 {
        self.sent as f64 / self.send_time.as_secs_f64().max(1e-9)
    }
}

/// Runs every receiver `repeats` times, interleaved so that drift in the machine's load affects
/// all alike, and reports rates, CPU per packet and their ratios.
pub fn run(report: &mut Report, settings: Settings) {
    let lab = match lab::create(1) {
        Ok(lab) => lab,
        Err(error) => return report.add(SECTION, "lab", "", None, error),
    };
    let host = lab.host(0);
    engine_alone(report, settings);
    let mut runs: Vec<(Receiver, Run)> = Vec::new();
    let mut port = settings.first_port;
    for _ in 0..settings.repeats {
        for kind in Receiver::ALL {
            match run_once(host, kind, port, settings) {
                Ok(run) => {
                    eprintln!(
                        "ingest: {}: {:.0} packets/s, {:.2} µs CPU per packet, {} of {} processed",
                        kind.label(),
                        run.rate(),
                        run.cpu_per_packet(),
                        run.processed,
                        run.sent
                    );
                    runs.push((kind, run));
                }
                Err(error) => eprintln!("ingest: {} run failed: {error}", kind.label()),
            }
            port = port.wrapping_add(1);
        }
    }
    add_figures(report, &runs, settings);
}

fn add_figures(report: &mut Report, runs: &[(Receiver, Run)], settings: Settings) {
    let of = |kind: Receiver| -> Vec<Run> {
        runs.iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, run)| *run)
            .collect()
    };
    let summarize = |kind: Receiver, value: fn(&Run) -> f64| {
        Summary::of(&of(kind).iter().map(value).collect::<Vec<_>>())
    };

    for kind in Receiver::ALL {
        let kind_runs = of(kind);
        let runs_taken = kind_runs.len().max(1);
        let processed: f64 = kind_runs
            .iter()
            .map(|run| run.processed as f64 / run.sent.max(1) as f64)
            .sum::<f64>()
            / runs_taken as f64;
        let drops = kind_runs.iter().map(|run| run.kernel_drops).sum::<u64>() / runs_taken as u64;
        let mut note = format!(
            "{} ANNOUNCEs of {} ids per run; {:.1} % of sent processed, {drops} receive-buffer drops per run",
            settings.ids * settings.rounds,
            settings.ids,
            processed * 100.0
        );
        if matches!(
            kind,
            Receiver::Discoverer | Receiver::AuthenticatedDiscoverer
        ) {
            let listed = kind_runs
                .iter()
                .filter_map(|run| run.listed)
                .min()
                .unwrap_or(0);
            let rejected: u64 = kind_runs.iter().map(|run| run.rejected).sum();
            note.push_str(&format!(
                "; rate limit off; {listed} or more instances listed; {rejected} rejected"
            ));
        }
        report.add(
            SECTION,
            format!("{}: processed at the sender's rate", kind.label()),
            "packets/s",
            summarize(kind, Run::rate),
            note,
        );
        report.add(
            SECTION,
            format!("{}: receiver CPU per packet", kind.label()),
            "µs",
            summarize(kind, Run::cpu_per_packet),
            "user and system time of the receiving thread, at the rate above",
        );
    }

    let send_rates: Vec<f64> = runs.iter().map(|(_, run)| run.send_rate()).collect();
    let send_errors: u64 = runs.iter().map(|(_, run)| run.send_errors).sum();
    report.add(
        SECTION,
        "sender (one thread, sendmmsg of 64)",
        "packets/s",
        Summary::of(&send_rates),
        format!("{send_errors} send errors"),
    );

    let median = |kind: Receiver, value: fn(&Run) -> f64| {
        summarize(kind, value).map(|summary| summary.median)
    };
    let ratio = |kind: Receiver, base: Receiver, value: fn(&Run) -> f64| {
        median(kind, value)
            .zip(median(base, value))
            .map(|(a, b)| a / b)
    };
    for kind in [Receiver::Discoverer, Receiver::AuthenticatedDiscoverer] {
        report.add_single(
            SECTION,
            format!(
                "ratio processed/s, {} / {}",
                kind.label(),
                Receiver::Bare.label()
            ),
            "x",
            ratio(kind, Receiver::Bare, Run::rate),
            "medians; near 1 when both keep up with the sender",
        );
    }
    for (kind, base) in [
        (Receiver::Discoverer, Receiver::Bare),
        (Receiver::AuthenticatedDiscoverer, Receiver::Bare),
        (Receiver::BareBatched, Receiver::Bare),
    ] {
        report.add_single(
            SECTION,
            format!("ratio CPU per packet, {} / {}", kind.label(), base.label()),
            "x",
            ratio(kind, base, Run::cpu_per_packet),
            "medians",
        );
    }
}

/// Feeds the same streams straight into the sans-IO discoverer engine, without sockets, and
/// reports the time per packet: the cost of decoding, verifying and updating the table alone.
fn engine_alone(report: &mut Report, settings: Settings) {
    let ring = packets::key_ring();
    for (label, keys) in [
        ("discoverer engine alone, unauthenticated", None),
        (
            "discoverer engine alone, authenticated (verify)",
            Some(ring),
        ),
    ] {
        let key = keys.as_ref().map(|ring: &KeyRing| ring.primary().clone());
        let Ok(stream) = packets::heartbeat_stream(
            settings.ids,
            settings.rounds,
            key.as_ref(),
            lab::unix_millis(),
        ) else {
            report.add(
                SECTION,
                label,
                "ns/packet",
                None,
                "the stream failed to encode",
            );
            continue;
        };
        let samples: Vec<f64> = (0..settings.repeats)
            .map(|_| engine_pass(&stream, keys.clone()) * 1e9)
            .collect();
        report.add(
            SECTION,
            label,
            "ns/packet",
            Summary::of(&samples),
            "msd_engine::Discoverer::handle_datagram on one thread, no sockets; events drained every 64 packets",
        );
    }
}

/// Returns the seconds per packet of one pass of `stream` through a fresh engine.
fn engine_pass(stream: &[Vec<u8>], keys: Option<KeyRing>) -> f64 {
    let mut config = DiscovererConfig::new(GROUP);
    config.rate_limit = 0;
    config.keys = keys;
    let start = Instant::now();
    let mut engine = msd_engine::Discoverer::new(config, start, lab::unix_millis());
    let interface = InterfaceIndex(1);
    engine.add_interface(start, interface);
    let source = SocketAddr::from((Ipv4Addr::LOCALHOST, 40_000));
    let started = Instant::now();
    for batch in stream.chunks(RECEIVE_BATCH) {
        let now = Instant::now();
        for payload in batch {
            engine.handle_datagram(
                now,
                EngineDatagram {
                    source,
                    interface,
                    payload,
                },
            );
        }
        while engine.poll_event().is_some() {}
        while engine.poll_transmit().is_some() {}
    }
    let elapsed = started.elapsed();
    std::hint::black_box(engine.len());
    elapsed.as_secs_f64() / stream.len().max(1) as f64
}

/// Sends one stream from `sender` to a fresh receiver of `kind` in `receiver`.
fn run_once(host: &Host, kind: Receiver, port: u16, settings: Settings) -> Result<Run, String> {
    let ring = packets::key_ring();
    let key = (kind == Receiver::AuthenticatedDiscoverer).then(|| ring.primary().clone());
    // Encoded right before the run, so authenticated timestamps are well within the clock skew.
    let stream = packets::heartbeat_stream(
        settings.ids,
        settings.rounds,
        key.as_ref(),
        lab::unix_millis(),
    )
    .map_err(|error| format!("failed to encode the stream: {error}"))?;

    let before = UdpCounters::read(host).map_err(|error| error.to_string())?;
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let done = Arc::new(AtomicBool::new(false));
    let receiver_done = Arc::clone(&done);
    let keys = key.map(|_| ring.clone());
    let receiving = block_on_in(host, move || async move {
        lab::pin_to_cpu(1);
        receive(kind, port, keys, ready_tx, receiver_done).await
    });

    let sending = host.run(move || {
        lab::pin_to_cpu(0);
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the receiver did not start".to_owned())?;
        let outcome = send(&stream, port);
        done.store(true, Ordering::Release);
        outcome
    });

    let sent = lab::join(sending, "the sender")?;
    let received = lab::join(receiving, "the receiver")?;
    let (sent, received) = match (sent, received) {
        (Ok(sent), Ok(received)) => (sent, received),
        (Err(error), _) | (_, Err(error)) => return Err(error),
    };
    let after = UdpCounters::read(host).map_err(|error| error.to_string())?;
    Ok(Run {
        sent: sent.count,
        send_errors: sent.errors,
        send_time: sent.finished - sent.started,
        processed: received.count,
        receive_time: received.last_change.saturating_duration_since(sent.started),
        kernel_drops: after.since(&before).rcvbuf_errors,
        listed: received.listed,
        rejected: received.rejected,
        receiver_cpu: received.cpu,
    })
}

struct Sent {
    count: u64,
    errors: u64,
    started: Instant,
    finished: Instant,
}

/// Sends every packet of `stream` to the group on the loopback interface, in `sendmmsg` batches,
/// as fast as the kernel takes them.
fn send(stream: &[Vec<u8>], port: u16) -> Result<Sent, String> {
    let setup = || -> io::Result<StdUdpSocket> {
        let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST)?;
        socket.set_multicast_ttl_v4(1)?;
        socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())?;
        // Connected, so the kernel looks the route up once rather than per packet.
        socket.connect(&SocketAddr::from((GROUP.ipv4_multicast(), port)).into())?;
        Ok(socket.into())
    };
    let socket = setup().map_err(|error| format!("failed to open the sending socket: {error}"))?;
    let slices: Vec<[IoSlice<'_>; 1]> =
        stream.iter().map(|packet| [IoSlice::new(packet)]).collect();
    let no_addresses: Vec<Option<SockaddrIn>> = vec![None; SEND_BATCH];
    let mut errors = 0u64;
    let started = Instant::now();
    for batch in slices.chunks(SEND_BATCH) {
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(batch.len(), None);
        let addresses = no_addresses.get(..batch.len()).unwrap_or_default();
        match nix_socket::sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            batch,
            addresses,
            [],
            MsgFlags::empty(),
        ) {
            Ok(results) => errors += (batch.len() - results.count()) as u64,
            Err(_) => errors += batch.len() as u64,
        }
    }
    let finished = Instant::now();
    Ok(Sent {
        count: stream.len() as u64 - errors,
        errors,
        started,
        finished,
    })
}

struct Received {
    count: u64,
    last_change: Instant,
    listed: Option<usize>,
    rejected: u64,
    /// CPU time of the receiving thread while it counted.
    cpu: Duration,
}

async fn receive(
    kind: Receiver,
    port: u16,
    keys: Option<KeyRing>,
    ready: mpsc::Sender<()>,
    done: Arc<AtomicBool>,
) -> Result<Received, String> {
    match kind {
        Receiver::Bare => receive_bare(port, false, ready, done).await,
        Receiver::BareBatched => receive_bare(port, true, ready, done).await,
        Receiver::Discoverer | Receiver::AuthenticatedDiscoverer => {
            receive_discoverer(port, keys, ready, done).await
        }
    }
}

async fn receive_discoverer(
    port: u16,
    keys: Option<KeyRing>,
    ready: mpsc::Sender<()>,
    done: Arc<AtomicBool>,
) -> Result<Received, String> {
    let mut builder = Discoverer::builder(GROUP)
        .interface(INTERFACE)
        .ip_version(IpVersion::V4)
        .port(port)
        .rate_limit(0, 0);
    if let Some(keys) = keys {
        builder = builder.keys(keys);
    }
    let discoverer = builder
        .start()
        .await
        .map_err(|error| format!("failed to start the discoverer: {error}"))?;
    let _ = ready.send(());

    let mut watch = QuietWatch::new();
    let cpu_before = thread_cpu_time();
    loop {
        tokio::time::sleep(POLL).await;
        let stats = discoverer
            .stats()
            .await
            .map_err(|error| error.to_string())?;
        if watch.observe(stats.packets.received_native.announce, &done) {
            break;
        }
    }
    let cpu = thread_cpu_time().saturating_sub(cpu_before);
    let stats = discoverer
        .stats()
        .await
        .map_err(|error| error.to_string())?;
    let listed = discoverer
        .instances()
        .await
        .map_err(|error| error.to_string())?
        .len();
    discoverer.shutdown().await;
    Ok(Received {
        count: watch.count,
        last_change: watch.last_change,
        listed: Some(listed),
        rejected: stats.packets.rejected_total(),
        cpu,
    })
}

async fn receive_bare(
    port: u16,
    batched: bool,
    ready: mpsc::Sender<()>,
    done: Arc<AtomicBool>,
) -> Result<Received, String> {
    let socket =
        bare_socket(port).map_err(|error| format!("failed to open the bare socket: {error}"))?;
    let count = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&count);
    // A local task, because nix's `recvmmsg` headers hold raw pointers and are not `Send`.
    let tasks = tokio::task::LocalSet::new();
    let reader = if batched {
        tasks.spawn_local(read_batched(socket, counter))
    } else {
        tasks.spawn_local(read_single(socket, counter))
    };
    let _ = ready.send(());

    let counting = async {
        let mut watch = QuietWatch::new();
        let cpu_before = thread_cpu_time();
        loop {
            tokio::time::sleep(POLL).await;
            if watch.observe(count.load(Ordering::Relaxed), &done) {
                break;
            }
        }
        let cpu = thread_cpu_time().saturating_sub(cpu_before);
        Received {
            count: watch.count,
            last_change: watch.last_change,
            listed: None,
            rejected: 0,
            cpu,
        }
    };
    let received = tasks.run_until(counting).await;
    reader.abort();
    Ok(received)
}

/// Reads and drops datagrams one `recvmsg` at a time, up to [`RECEIVE_BATCH`] per readiness.
async fn read_single(socket: UdpSocket, counter: Arc<AtomicU64>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        for _ in 0..RECEIVE_BATCH {
            match socket.try_io(Interest::READABLE, || {
                receive_with_info(&socket, &mut buffer)
            }) {
                Ok(_) => {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
    }
}

/// Reads and drops datagrams with one `recvmmsg` per readiness.
async fn read_batched(socket: UdpSocket, counter: Arc<AtomicU64>) {
    // The benchmark's packets are far below 2 KiB; msd's own buffer is 64 KiB.
    let mut buffers = vec![[0u8; 2048]; RECEIVE_BATCH];
    let control = nix::cmsg_space!(nix::libc::in_pktinfo);
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(RECEIVE_BATCH, Some(control));
    loop {
        if socket.readable().await.is_err() {
            return;
        }
        let received = socket.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|buffer| [IoSliceMut::new(buffer)])
                .collect();
            let results = nix_socket::recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            let mut count = 0u64;
            for message in results {
                let mut interface = 0;
                if let Ok(controls) = message.cmsgs() {
                    for control in controls {
                        if let ControlMessageOwned::Ipv4PacketInfo(info) = control {
                            interface = info.ipi_ifindex;
                        }
                    }
                }
                std::hint::black_box(interface);
                count += 1;
            }
            Ok(count)
        });
        if let Ok(count) = received {
            counter.fetch_add(count, Ordering::Relaxed);
        }
    }
}

/// Returns the CPU time, user and system, that the calling thread has used.
fn thread_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_THREAD) else {
        return Duration::ZERO;
    };
    let to_duration = |time: nix::sys::time::TimeVal| {
        let micros = time.tv_sec() as f64 * 1e6 + time.tv_usec() as f64;
        Duration::from_micros(micros.max(0.0) as u64)
    };
    to_duration(usage.user_time()) + to_duration(usage.system_time())
}

/// Tracks a growing count until the sender is done and the count has not changed for [`QUIET`].
struct QuietWatch {
    started: Instant,
    count: u64,
    last_change: Instant,
}

impl QuietWatch {
    fn new() -> Self {
        let now = Instant::now();
        QuietWatch {
            started: now,
            count: 0,
            last_change: now,
        }
    }

    /// Records the current count and returns whether the run is over.
    fn observe(&mut self, count: u64, done: &AtomicBool) -> bool {
        let now = Instant::now();
        if count != self.count {
            self.count = count;
            self.last_change = now;
        }
        let quiet = done.load(Ordering::Acquire) && now.duration_since(self.last_change) >= QUIET;
        quiet || now.duration_since(self.started) >= RUN_LIMIT
    }
}

/// Opens a socket with the options of msd's IPv4 group socket: reuse, TTL 1, loop on, only joined
/// groups, packet information, joined to the group on the loopback interface.
fn bare_socket(port: u16) -> io::Result<UdpSocket> {
    let index = nix::net::if_::if_nametoindex(INTERFACE).map_err(io::Error::from)?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    socket.set_multicast_ttl_v4(1)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_all_v4(false)?;
    nix_socket::setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(io::Error::from)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.join_multicast_v4_n(
        &GROUP.ipv4_multicast(),
        &InterfaceIndexOrAddress::Index(index),
    )?;
    UdpSocket::from_std(socket.into())
}

/// Reads one datagram with its arrival interface, as msd's receive path does, and returns its
/// length.
fn receive_with_info(socket: &UdpSocket, buffer: &mut [u8]) -> io::Result<usize> {
    let mut iov = [IoSliceMut::new(buffer)];
    let mut control = nix::cmsg_space!(nix::libc::in_pktinfo);
    let message = nix_socket::recvmsg::<SockaddrStorage>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let mut interface = 0;
    for control in message.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::Ipv4PacketInfo(info) = control {
            interface = info.ipi_ifindex;
        }
    }
    std::hint::black_box(interface);
    Ok(message.bytes)
}
