//! Discovery latency: from the start of an instance in one lab host to its Up event at a
//! discoverer in another, for msd and for mdns-sd, with one-way UDP latency over the same link as
//! the floor.

use std::net::{IpAddr, Ipv6Addr, SocketAddrV6, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceInfo};
use msd::{Discoverer, Instance};
use msd_lab::Host;
use tokio::sync::mpsc as async_mpsc;

use crate::lab::{self, block_on_in};
use crate::packets::GROUP;
use crate::report::Report;
use crate::summary::Summary;
use crate::watch::{self, MdnsBrowser, MsdWatcher};

const SECTION: &str = "latency";

/// The lab interface every host has.
const INTERFACE: &str = "eth0";

/// The mDNS service type the mdns-sd runs register and browse.
pub const SERVICE_TYPE: &str = "_msdbench._udp.local.";

/// Maximum wait for one Up or resolution; a run that waits longer counts as failed.
const WAIT: Duration = Duration::from_secs(10);

/// Port of the raw UDP floor measurement.
const UDP_PORT: u16 = 46_000;

/// Number of runs of each measurement.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Instances started for msd and for mdns-sd without probing.
    pub runs: usize,
    /// Services registered for mdns-sd with its default name probing, which takes about 750 ms
    /// per run.
    pub probing_runs: usize,
    /// Datagrams of the raw UDP measurement.
    pub udp_samples: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            runs: 100,
            probing_runs: 100,
            udp_samples: 1000,
        }
    }
}

/// Measures every latency on one two-host lab: host 1 starts instances, host 0 discovers them.
pub fn run(report: &mut Report, settings: Settings) {
    let lab = match lab::create(2) {
        Ok(lab) => lab,
        Err(error) => return report.add(SECTION, "lab", "", None, error),
    };
    let (observer, announcer) = (lab.host(0), lab.host(1));

    let floor = udp_one_way(observer, announcer, settings.udp_samples);
    report_samples(
        report,
        "one-way UDP datagram over the lab link (floor)",
        floor,
        "blocking recv, unicast link-local IPv6",
    );

    let (msd_total, msd_after_start) = match msd_latency(observer, announcer, settings.runs) {
        Ok(samples) => (
            Ok(samples.iter().map(|sample| sample.0).collect()),
            Ok(samples.iter().map(|sample| sample.1).collect()),
        ),
        Err(error) => (Err(error.clone()), Err(error)),
    };
    let msd_median = report_samples(
        report,
        "msd: Instance::start called to Up at the discoverer",
        msd_total,
        "default settings; includes opening sockets and joining the group",
    );
    let msd_running_median = report_samples(
        report,
        "msd: Instance::start returned to Up at the discoverer",
        msd_after_start,
        "default settings",
    );

    let fresh = mdns_latency(
        observer,
        announcer,
        settings.probing_runs,
        MdnsMode::NewDaemon,
    );
    let fresh_median = report_samples(
        report,
        "mdns-sd: ServiceDaemon::new and register to ServiceResolved",
        fresh,
        "default settings (RFC 6762 name probing); the counterpart of Instance::start",
    );
    let probing = mdns_latency(
        observer,
        announcer,
        settings.probing_runs,
        MdnsMode::RunningDaemon { probing: true },
    );
    report_samples(
        report,
        "mdns-sd: register on a running daemon to ServiceResolved",
        probing,
        "default settings (name probing)",
    );
    let fast = mdns_latency(
        observer,
        announcer,
        settings.runs,
        MdnsMode::RunningDaemon { probing: false },
    );
    let fast_median = report_samples(
        report,
        "mdns-sd: register on a running daemon to ServiceResolved, probing off",
        fast,
        "set_requires_probe(false); the counterpart of start returned to Up",
    );

    let ratio = |mdns: Option<f64>, msd: Option<f64>| mdns.zip(msd).map(|(mdns, msd)| mdns / msd);
    report.add_single(
        SECTION,
        "ratio mdns-sd new daemon / msd Instance::start (medians)",
        "x",
        ratio(fresh_median, msd_median),
        "",
    );
    report.add_single(
        SECTION,
        "ratio mdns-sd running daemon, probing off / msd start returned (medians)",
        "x",
        ratio(fast_median, msd_running_median),
        "",
    );
}

/// Reports latency samples in milliseconds and returns their median.
fn report_samples(
    report: &mut Report,
    name: &str,
    samples: Result<Vec<Duration>, String>,
    note: &str,
) -> Option<f64> {
    match samples {
        Ok(samples) => {
            let summary = Summary::of_millis(&samples);
            report.add(SECTION, name, "ms", summary, note);
            summary.map(|summary| summary.median)
        }
        Err(error) => {
            report.add(SECTION, name, "ms", None, error);
            None
        }
    }
}

/// Starts `runs` msd instances in `announcer`, one at a time, and measures to the Up event at a
/// discoverer in `observer`, from the start call and from its return. Each instance shuts down
/// (LOGOFF) before the next.
fn msd_latency(
    observer: &Host,
    announcer: &Host,
    runs: usize,
) -> Result<Vec<(Duration, Duration)>, String> {
    let mut watcher = MsdWatcher::start(observer, Discoverer::builder(GROUP).interface(INTERFACE))?;
    let (commands, command_rx) = async_mpsc::channel(1);
    let (replies_tx, replies) = mpsc::channel();
    let runner = block_on_in(announcer, move || run_instances(command_rx, replies_tx));

    let mut samples = Vec::with_capacity(runs);
    let mut failures = 0;
    for run in 0..runs {
        let id = format!("lat-{run}");
        if commands
            .blocking_send(InstanceCommand::Start(id.clone()))
            .is_err()
        {
            break;
        }
        let (called, returned) = match replies.recv_timeout(WAIT) {
            Ok(Ok(instants)) => instants,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err("the instance did not start".to_owned()),
        };
        match watcher.wait_up(&id, WAIT) {
            Some(up) => samples.push((
                up.saturating_duration_since(called),
                up.saturating_duration_since(returned),
            )),
            None => failures += 1,
        }
        if commands.blocking_send(InstanceCommand::Stop).is_err()
            || replies.recv_timeout(WAIT).is_err()
        {
            break;
        }
    }
    drop(commands);
    lab::join(runner, "the instance thread")?;
    watcher.finish();
    if failures > 0 {
        eprintln!("latency: {failures} msd instances were not seen within {WAIT:?}");
    }
    Ok(samples)
}

enum InstanceCommand {
    Start(String),
    Stop,
}

/// Starts and stops instances on command, and replies with the instants each start was called
/// and returned.
async fn run_instances(
    mut commands: async_mpsc::Receiver<InstanceCommand>,
    replies: mpsc::Sender<Result<(Instant, Instant), String>>,
) {
    let mut running: Option<Instance> = None;
    while let Some(command) = commands.recv().await {
        match command {
            InstanceCommand::Start(id) => {
                let started = Instant::now();
                let builder = Instance::builder(GROUP)
                    .id(id)
                    .url("http://10.0.0.2:8080")
                    .interface(INTERFACE);
                let reply = match builder.start().await {
                    Ok(instance) => {
                        running = Some(instance);
                        Ok((started, Instant::now()))
                    }
                    Err(error) => Err(format!("failed to start an instance: {error}")),
                };
                let _ = replies.send(reply);
            }
            InstanceCommand::Stop => {
                if let Some(instance) = running.take() {
                    let _ = instance.shutdown().await;
                }
                let now = Instant::now();
                let _ = replies.send(Ok((now, now)));
            }
        }
    }
}

/// The way the mdns-sd runs register their services.
#[derive(Debug, Clone, Copy)]
enum MdnsMode {
    /// Each run starts a new daemon, as a new process would, and registers with default settings.
    NewDaemon,
    /// Each run registers on one daemon that runs for all of them.
    RunningDaemon { probing: bool },
}

/// Registers `runs` mdns-sd services in `announcer`, one at a time, and measures to
/// ServiceResolved at a browser in `observer`. Each service is unregistered before the next.
fn mdns_latency(
    observer: &Host,
    announcer: &Host,
    runs: usize,
    mode: MdnsMode,
) -> Result<Vec<Duration>, String> {
    let mut browser = MdnsBrowser::start(observer, SERVICE_TYPE);
    let address = IpAddr::V4(announcer.ipv4());
    let prefix = match mode {
        MdnsMode::NewDaemon => "new",
        MdnsMode::RunningDaemon { probing: true } => "probe",
        MdnsMode::RunningDaemon { probing: false } => "fast",
    };
    let (commands, command_rx) = mpsc::channel::<Option<String>>();
    let (replies_tx, replies) = mpsc::channel();
    let registrant =
        announcer.run(move || register_services(command_rx, replies_tx, address, mode));

    let mut samples = Vec::with_capacity(runs);
    let mut failures = 0;
    for run in 0..runs {
        let name = format!("{prefix}-{run}");
        if commands.send(Some(name.clone())).is_err() {
            break;
        }
        let started = match replies.recv_timeout(WAIT) {
            Ok(Ok(started)) => started,
            Ok(Err(error)) => return Err(error),
            Err(_) => return Err("the mdns-sd registrant did not answer".to_owned()),
        };
        match browser.wait_resolved(&format!("{name}.{SERVICE_TYPE}"), WAIT) {
            Some(resolved) => samples.push(resolved.saturating_duration_since(started)),
            None => failures += 1,
        }
        if commands.send(None).is_err() || replies.recv_timeout(WAIT).is_err() {
            break;
        }
    }
    drop(commands);
    lab::join(registrant, "the mdns-sd registrant")??;
    browser.finish();
    if failures > 0 {
        eprintln!("latency: {failures} mdns-sd services were not resolved within {WAIT:?}");
    }
    Ok(samples)
}

/// Registers a service for each `Some(name)` and unregisters it at the next `None`, replying with
/// the instant each registration began: before the daemon starts in [`MdnsMode::NewDaemon`].
fn register_services(
    commands: mpsc::Receiver<Option<String>>,
    replies: mpsc::Sender<Result<Instant, String>>,
    address: IpAddr,
    mode: MdnsMode,
) -> Result<(), String> {
    let start_daemon = || {
        ServiceDaemon::new().map_err(|error| format!("failed to start the mdns-sd daemon: {error}"))
    };
    let mut daemon = match mode {
        MdnsMode::NewDaemon => None,
        MdnsMode::RunningDaemon { .. } => Some(start_daemon()?),
    };
    let mut registered: Option<String> = None;
    for command in commands {
        let reply = match command {
            Some(name) => {
                let started = Instant::now();
                if daemon.is_none() {
                    daemon = Some(start_daemon()?);
                }
                let probing = !matches!(mode, MdnsMode::RunningDaemon { probing: false });
                register(daemon.as_ref(), &name, address, probing).map(|fullname| {
                    registered = Some(fullname);
                    started
                })
            }
            None => {
                if let (Some(daemon), Some(fullname)) = (daemon.as_ref(), registered.take()) {
                    if let Ok(status) = daemon.unregister(&fullname) {
                        let _ = status.recv_timeout(Duration::from_secs(5));
                    }
                }
                if let (MdnsMode::NewDaemon, Some(daemon)) = (mode, daemon.take()) {
                    watch::shut_down(&daemon);
                }
                Ok(Instant::now())
            }
        };
        if replies.send(reply).is_err() {
            break;
        }
    }
    if let Some(daemon) = daemon {
        watch::shut_down(&daemon);
    }
    Ok(())
}

/// Registers the service `name` at `address` and returns its full name.
fn register(
    daemon: Option<&ServiceDaemon>,
    name: &str,
    address: IpAddr,
    probing: bool,
) -> Result<String, String> {
    let daemon = daemon.ok_or("no mdns-sd daemon")?;
    // A host name of its own per service, because mdns-sd 0.21 multicasts one record at most once
    // a second (RFC 6762 section 6), so a host record shared with the previous run would be held
    // back.
    let host_name = format!("{name}.local.");
    let properties: Option<std::collections::HashMap<String, String>> = None;
    let mut info = ServiceInfo::new(SERVICE_TYPE, name, &host_name, address, 8080, properties)
        .map_err(|error| format!("invalid service info: {error}"))?;
    info.set_requires_probe(probing);
    let fullname = info.get_fullname().to_owned();
    daemon
        .register(info)
        .map_err(|error| format!("failed to register: {error}"))?;
    Ok(fullname)
}

/// Sends `samples` counted datagrams from `sender` to `receiver`, 1 ms apart, and returns each one's time
/// from `send_to` to the return of a blocking `recv_from`.
fn udp_one_way(receiver: &Host, sender: &Host, samples: usize) -> Result<Vec<Duration>, String> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiving = receiver.run(move || -> Result<Vec<(u32, Instant)>, String> {
        let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, UDP_PORT))
            .map_err(|error| format!("failed to bind: {error}"))?;
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .map_err(|error| error.to_string())?;
        let _ = ready_tx.send(());
        let mut arrivals = Vec::with_capacity(samples);
        let mut buffer = [0u8; 64];
        while arrivals.len() <= samples {
            match socket.recv_from(&mut buffer) {
                Ok((4, _)) => {
                    let at = Instant::now();
                    if let Some(number) = buffer.first_chunk::<4>() {
                        arrivals.push((u32::from_be_bytes(*number), at));
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(arrivals)
    });
    ready_rx
        .recv_timeout(WAIT)
        .map_err(|_| "the UDP receiver did not start".to_owned())?;

    let target = SocketAddrV6::new(receiver.link_local(), UDP_PORT, 0, sender.interface_index());
    let sending = sender.run(move || -> Result<Vec<Instant>, String> {
        let socket = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, 0))
            .map_err(|error| format!("failed to bind: {error}"))?;
        let mut sent = Vec::with_capacity(samples + 1);
        // Datagram 0 also resolves the neighbor's link-layer address and is not counted.
        for number in 0..=samples as u32 {
            sent.push(Instant::now());
            socket
                .send_to(&number.to_be_bytes(), target)
                .map_err(|error| format!("failed to send: {error}"))?;
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(sent)
    });
    let sent = lab::join(sending, "the UDP sender")??;
    let arrivals = lab::join(receiving, "the UDP receiver")??;
    Ok(arrivals
        .iter()
        .filter(|(number, _)| *number > 0)
        .filter_map(|(number, at)| {
            sent.get(*number as usize)
                .map(|sent| at.saturating_duration_since(*sent))
        })
        .collect())
}
