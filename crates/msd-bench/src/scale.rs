//! Scale: convergence of 10,000 simulated instances on the engine's simulator, and of 1,000 real
//! instances in the lab, with traffic, receive-buffer drops and memory.
//!
//! The real instances run as `msd::Instance`s, many per lab host in one tokio runtime each. A
//! fresh discoverer then starts in a host of its own, as a separate process (this binary run
//! again as `child discoverer`), so that its memory can be read apart from the instances'.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use msd::{Discoverer, Event, GroupId, Instance};
use msd_engine::sim::Sim;
use msd_engine::{DiscovererConfig, InstanceConfig};
use msd_lab::{Host, LabChild};
use tokio::sync::{mpsc, oneshot};

use crate::child;
use crate::lab::{self, block_on_in};
use crate::packets::GROUP;
use crate::procfs::{self, InterfaceCounters, UdpCounters};
use crate::report::Report;
use crate::summary::Summary;

const SECTION: &str = "scale";

/// The lab interface every host has.
const INTERFACE: &str = "eth0";

/// Settings of the simulated runs.
#[derive(Debug, Clone)]
pub struct SimSettings {
    pub instances: usize,
    /// Runs per loss rate, each with its own seed.
    pub seeds: u64,
    /// Loss probabilities per packet copy.
    pub losses: Vec<f64>,
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            instances: 10_000,
            seeds: 3,
            losses: vec![0.0, 0.1],
        }
    }
}

/// Virtual time before the fresh discoverer starts: well past the instances' startup rounds.
const SIM_WARM_UP: Duration = Duration::from_secs(5);

/// Virtual time over which steady-state traffic is counted.
const SIM_WINDOW: Duration = Duration::from_secs(10);

/// Simulates `instances` instances and a discoverer that starts once they are in steady state,
/// and reports the virtual time until it lists all of them and the wall time to simulate.
pub fn sim(report: &mut Report, settings: &SimSettings) {
    for &loss in &settings.losses {
        let mut converge = Vec::new();
        let mut wall = Vec::new();
        let mut packets_per_second = Vec::new();
        let mut bytes_per_second = Vec::new();
        let mut incomplete = 0;
        for seed in 0..settings.seeds {
            let run = sim_run(settings.instances, loss, seed);
            wall.push(run.wall);
            packets_per_second.push(run.packets_per_second);
            bytes_per_second.push(run.bytes_per_second);
            match run.converged {
                Some(converged) => converge.push(converged),
                None => incomplete += 1,
            }
        }
        let label = format!(
            "{} simulated instances, {:.0} % loss",
            settings.instances,
            loss * 100.0
        );
        let incomplete_note = if incomplete > 0 {
            format!("; {incomplete} runs did not converge within 60 s")
        } else {
            String::new()
        };
        report.add(
            SECTION,
            format!("{label}: fresh discoverer lists all (virtual time)"),
            "ms",
            Summary::of_millis(&converge),
            format!("msd_engine::sim, default settings, latency 0.1 to 2 ms{incomplete_note}"),
        );
        report.add(
            SECTION,
            format!("{label}: wall time to simulate"),
            "s",
            Summary::of(&wall.iter().map(Duration::as_secs_f64).collect::<Vec<_>>()),
            format!(
                "{} s of virtual time per run",
                (SIM_WARM_UP + SIM_WINDOW).as_secs()
            ),
        );
        if loss == 0.0 {
            report.add(
                SECTION,
                "simulated instance: packets sent per second",
                "packets/s",
                Summary::of(&packets_per_second),
                "steady state, no discoverer DISCOVERs",
            );
            report.add(
                SECTION,
                "simulated instance: payload bytes sent per second",
                "bytes/s",
                Summary::of(&bytes_per_second),
                "UDP payload only",
            );
        }
    }
}

struct SimRun {
    converged: Option<Duration>,
    wall: Duration,
    packets_per_second: f64,
    bytes_per_second: f64,
}

fn sim_run(instances: usize, loss: f64, seed: u64) -> SimRun {
    let wall_start = Instant::now();
    let mut sim = Sim::new(seed, Instant::now());
    sim.set_instances_hear_instances(false);
    sim.set_loss(loss);
    for index in 0..instances {
        let url = format!(
            "http://10.{}.{}.{}:8080",
            index / 65_536,
            (index / 256) % 256,
            index % 256
        );
        let config = InstanceConfig {
            incarnation: 1,
            ..InstanceConfig::new(GROUP, format!("sim-{index:05}"), url)
        };
        if sim.add_instance(config).is_err() {
            break;
        }
    }
    sim.run_for(SIM_WARM_UP);
    let before = sim.traffic();
    sim.run_for(SIM_WINDOW);
    let after = sim.traffic();
    let per_instance =
        |count: u64| count as f64 / instances.max(1) as f64 / SIM_WINDOW.as_secs_f64();

    let discoverer = sim.add_discoverer(DiscovererConfig::new(GROUP));
    let started = sim.now();
    let converged = sim
        .run_until_condition(started + Duration::from_secs(60), |sim| {
            sim.discoverer(discoverer).len() >= instances
        })
        .map(|at| at - started);
    SimRun {
        converged,
        wall: wall_start.elapsed(),
        packets_per_second: per_instance(after.sent_packets - before.sent_packets),
        bytes_per_second: per_instance(after.sent_bytes - before.sent_bytes),
    }
}

/// Settings of the lab runs.
#[derive(Debug, Clone)]
pub struct LabSettings {
    /// This benchmark's binary, run again as the discoverer process.
    pub bench: PathBuf,
    /// The `msd` binary, for the memory of one `msd announce`; skipped without it.
    pub msd: Option<PathBuf>,
    /// Hosts that run instances.
    pub instance_hosts: usize,
    pub instances_per_host: usize,
    /// Fresh discoverers per loss rate.
    pub discoverer_runs: usize,
    /// UDP loss percentages at the discoverer's host.
    pub losses: Vec<u8>,
    /// Steady-state window for traffic figures.
    pub window: Duration,
}

/// A command to the thread that runs one host's instances.
enum HostCommand {
    /// Reply with the native and seed packets the host's instances have sent.
    CountSent(oneshot::Sender<u64>),
}

/// Runs `instance_hosts × instances_per_host` real instances and measures fresh discoverers
/// against them.
pub fn lab_run(report: &mut Report, settings: &LabSettings) {
    // The instance hosts, then one for the discoverers and one for a single `msd announce`.
    let lab = match lab::create(settings.instance_hosts + 2) {
        Ok(lab) => lab,
        Err(error) => return report.add(SECTION, "lab", "", None, error),
    };
    let total = settings.instance_hosts * settings.instances_per_host;
    let (instance_hosts, others) = lab.hosts().split_at(settings.instance_hosts);
    let [discoverer_host, announce_host] = others else {
        return;
    };

    for host in instance_hosts {
        if let Err(error) = lab::load_nft(host, &instance_host_filter(msd::SEED_PORT)) {
            return report.add(SECTION, format!("{total} lab instances"), "", None, error);
        }
    }
    let probe = settings
        .msd
        .as_deref()
        .map(|msd| AnnounceProbe::start(announce_host, msd));
    let alone = match &probe {
        Some(Ok(probe)) => Some(probe.measure(5)),
        _ => None,
    };

    let started = Instant::now();
    let hosts = match start_instances(instance_hosts, settings.instances_per_host) {
        Ok(hosts) => hosts,
        Err(error) => {
            return report.add(SECTION, format!("{total} lab instances"), "", None, error)
        }
    };
    eprintln!(
        "scale: {total} instances started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));

    steady_traffic(report, instance_hosts, &hosts, settings);
    match probe {
        Some(Ok(probe)) => {
            let loaded = probe.measure(5);
            probe.stop();
            report_probe(report, alone, loaded, total);
        }
        Some(Err(error)) => report.add(SECTION, "one msd announce process", "", None, error),
        None => report.add(
            SECTION,
            "one msd announce process",
            "",
            None,
            "the msd binary was not found; build it with `cargo build --release -p msd-cli`",
        ),
    }
    for &loss in &settings.losses {
        fresh_discoverers(report, discoverer_host, total, loss, settings);
    }

    for host in hosts {
        drop(host.commands);
        if let Err(error) = lab::join(host.thread, "an instance host").and_then(|result| result) {
            eprintln!("scale: {error}");
        }
    }
}

/// Returns an nftables table for a host that runs many instances: it drops every datagram to the
/// group port except native DISCOVERs, so the instances there do not receive each other's
/// heartbeats.
///
/// On a real network each host runs one instance, whose kernel delivers each heartbeat of the
/// group to one socket. With hundreds of instances in one namespace the kernel would deliver
/// each heartbeat to every one of their sockets, a cost that grows with the square of the group
/// and that real hosts never pay. Instances act only on DISCOVER and PROBE, and probes arrive on
/// their private ports, so dropping the rest changes nothing they do.
fn instance_host_filter(port: u16) -> String {
    // `@th,64,32` is the first 4 bytes of the UDP payload (the magic `\xc1msd`), `@th,112,8` the
    // kind byte at payload offset 6.
    format!(
        "table inet msdbench {{
	chain input {{
		type filter hook input priority 0; policy accept;
		udp dport {port} @th,64,32 0xc16d7364 @th,112,8 1 accept
		udp dport {port} drop
	}}
}}
"
    )
}

/// A host running instances, and the channel to its thread.
struct InstanceHost {
    commands: mpsc::Sender<HostCommand>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

/// Starts `per_host` instances in each host and waits until all have started.
fn start_instances(hosts: &[Host], per_host: usize) -> Result<Vec<InstanceHost>, String> {
    let mut started = Vec::with_capacity(hosts.len());
    for (index, host) in hosts.iter().enumerate() {
        let (commands, command_rx) = mpsc::channel(4);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let address = host.ipv4();
        let thread = block_on_in(host, move || {
            run_host(index, address, per_host, command_rx, ready_tx)
        });
        match ready_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Ok(())) => started.push(InstanceHost { commands, thread }),
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(format!(
                    "the instances of host {index} did not start within 120 s"
                ))
            }
        }
    }
    Ok(started)
}

async fn run_host(
    host: usize,
    address: std::net::Ipv4Addr,
    count: usize,
    mut commands: mpsc::Receiver<HostCommand>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let mut instances = Vec::with_capacity(count);
    for index in 0..count {
        let builder = Instance::builder(GROUP)
            .id(format!("scale-{host}-{index:04}"))
            .url(format!("http://{address}:{}", 10_000 + index))
            .interface(INTERFACE);
        match builder.start().await {
            Ok(instance) => instances.push(instance),
            Err(error) => {
                let message = format!("failed to start instance {index} of host {host}: {error}");
                let _ = ready.send(Err(message.clone()));
                return Err(message);
            }
        }
    }
    let _ = ready.send(Ok(()));

    while let Some(command) = commands.recv().await {
        match command {
            HostCommand::CountSent(reply) => {
                let mut sent = 0;
                for instance in &instances {
                    if let Ok(stats) = instance.stats().await {
                        sent += stats.packets.sent().total();
                    }
                }
                let _ = reply.send(sent);
            }
        }
    }
    for instance in instances {
        let _ = instance.shutdown().await;
    }
    Ok(())
}

/// Reports packets and bytes per second per instance over the steady-state window, counted by the
/// instances and on the wire of their hosts.
fn steady_traffic(
    report: &mut Report,
    lab_hosts: &[Host],
    hosts: &[InstanceHost],
    settings: &LabSettings,
) {
    let total = (settings.instance_hosts * settings.instances_per_host) as f64;
    let count_sent = || -> u64 {
        hosts
            .iter()
            .filter_map(|host| {
                let (reply, answer) = oneshot::channel();
                host.commands
                    .blocking_send(HostCommand::CountSent(reply))
                    .ok()?;
                answer.blocking_recv().ok()
            })
            .sum()
    };
    let wire = || -> u64 {
        lab_hosts
            .iter()
            .filter_map(|host| InterfaceCounters::read(host, INTERFACE).ok())
            .map(|counters| counters.tx_bytes)
            .sum()
    };
    let (sent_before, bytes_before, started) = (count_sent(), wire(), Instant::now());
    std::thread::sleep(settings.window);
    let (sent_after, bytes_after) = (count_sent(), wire());
    let seconds = started.elapsed().as_secs_f64();
    let packets = sent_after.saturating_sub(sent_before) as f64 / total / seconds;
    let bytes = bytes_after.saturating_sub(bytes_before) as f64 / total / seconds;
    report.add_single(
        SECTION,
        "lab instance: packets sent per second",
        "packets/s",
        Some(packets),
        format!("steady state, {total} instances, {:.0} s window", seconds),
    );
    report.add_single(
        SECTION,
        "lab instance: bytes sent per second on the wire",
        "bytes/s",
        Some(bytes),
        "Ethernet frames as /proc/net/dev counts them",
    );
}

/// One `msd announce` of the measured group, in a host that drops nothing, so that every heartbeat
/// of the group reaches its group socket (whose filter then drops it in the kernel).
struct AnnounceProbe {
    process: LabChild,
}

impl AnnounceProbe {
    fn start(host: &Host, msd: &std::path::Path) -> Result<AnnounceProbe, String> {
        let group = GROUP.to_string();
        let mut command = host.command(msd);
        command
            .args([
                "announce",
                "--group",
                &group,
                "--id",
                "probe",
                "--url",
                "http://10.0.0.1:8080",
                "--interface",
                INTERFACE,
            ])
            .env("MSD_LOG", "warn");
        let process = host.spawn(command).map_err(|error| error.to_string())?;
        std::thread::sleep(Duration::from_secs(1));
        Ok(AnnounceProbe { process })
    }

    /// Samples resident memory (KiB) and CPU time per second (ms/s) once a second, `seconds`
    /// times.
    fn measure(&self, seconds: usize) -> (Vec<f64>, Vec<f64>) {
        let pid = self.process.pid();
        let mut rss = Vec::new();
        let mut cpu_per_second = Vec::new();
        for _ in 0..seconds {
            let (cpu_before, started) = (procfs::cpu_time(pid), Instant::now());
            std::thread::sleep(Duration::from_secs(1));
            if let (Ok(before), Ok(after)) = (cpu_before, procfs::cpu_time(pid)) {
                cpu_per_second
                    .push((after - before).as_secs_f64() * 1e3 / started.elapsed().as_secs_f64());
            }
            if let Ok(kib) = procfs::rss_kib(pid) {
                rss.push(kib as f64);
            }
        }
        (rss, cpu_per_second)
    }

    /// Stops the process with SIGTERM, so it logs off.
    fn stop(mut self) {
        let _ = self.process.signal(msd_lab::Signal::SIGTERM);
        self.process.wait_exit(Duration::from_secs(5));
    }
}

/// Reports the memory and CPU of the probe, alone in the group and among `total` instances.
fn report_probe(
    report: &mut Report,
    alone: Option<(Vec<f64>, Vec<f64>)>,
    loaded: (Vec<f64>, Vec<f64>),
    total: usize,
) {
    let (alone_rss, alone_cpu) = alone.unwrap_or_default();
    let (loaded_rss, loaded_cpu) = loaded;
    let rss_note = "VmRSS, sampled once a second for 5 s";
    let cpu_note = "CPU time per second, all threads, from /proc/PID/task/*/schedstat";
    report.add(
        SECTION,
        "one msd announce, alone in its group: RSS",
        "KiB",
        Summary::of(&alone_rss),
        rss_note,
    );
    report.add(
        SECTION,
        "one msd announce, alone in its group: CPU",
        "ms/s",
        Summary::of(&alone_cpu),
        cpu_note,
    );
    report.add(
        SECTION,
        format!("one msd announce among {total} instances: RSS"),
        "KiB",
        Summary::of(&loaded_rss),
        rss_note,
    );
    report.add(
        SECTION,
        format!("one msd announce among {total} instances: CPU"),
        "ms/s",
        Summary::of(&loaded_cpu),
        format!("{cpu_note}; every heartbeat of the group reaches its socket filter"),
    );
}

/// Starts `settings.discoverer_runs` fresh discoverer processes in `host`, one at a time, with
/// `loss` percent UDP loss there, and reports convergence, drops and memory.
fn fresh_discoverers(
    report: &mut Report,
    host: &Host,
    total: usize,
    loss: u8,
    settings: &LabSettings,
) {
    if let Err(error) = host.set_udp_loss(loss) {
        return report.add(
            SECTION,
            format!("{loss} % loss"),
            "",
            None,
            error.to_string(),
        );
    }
    let results: Vec<ChildResult> = (0..settings.discoverer_runs)
        .filter_map(|_| run_discoverer_child(host, &settings.bench, GROUP, total, settings.window))
        .collect();
    let _ = host.set_udp_loss(0);

    let label = format!("{total} lab instances, {loss} % loss at the discoverer");
    let collect = |value: fn(&ChildResult) -> f64| results.iter().map(value).collect::<Vec<f64>>();
    let listed_min = results
        .iter()
        .map(|result| result.listed)
        .min()
        .unwrap_or(0);
    let downs: u64 = results.iter().map(|result| result.downs).sum();
    report.add(
        SECTION,
        format!("{label}: fresh discoverer lists all"),
        "ms",
        Summary::of(&collect(|result| result.converged_ms)),
        format!("from Discoverer::start; at least {listed_min} of {total} listed; {downs} Down events in the steady window"),
    );
    report.add(
        SECTION,
        format!("{label}: receive-buffer drops while converging"),
        "datagrams",
        Summary::of(&collect(|result| result.drops_converging as f64)),
        "UDP RcvbufErrors of the discoverer's namespace, start to all listed",
    );
    report.add(
        SECTION,
        format!("{label}: receive-buffer drops in steady state"),
        "datagrams",
        Summary::of(&collect(|result| result.drops_steady as f64)),
        format!("over {} s", settings.window.as_secs()),
    );
    report.add(
        SECTION,
        format!("{label}: datagrams received per second"),
        "datagrams/s",
        Summary::of(&collect(|result| result.received_per_second)),
        "valid packets counted by the discoverer in steady state",
    );
    report.add(
        SECTION,
        format!("{label}: discoverer CPU in steady state"),
        "ms/s",
        Summary::of(&collect(|result| result.cpu_ms_per_second)),
        "CPU time per second of the discoverer process, all threads",
    );
    if loss == 0 {
        // The same process against a group without instances gives the growth that does not
        // depend on the table.
        let empty_group = GroupId::from_bytes([0x43; 14]);
        let baseline: Vec<f64> = (0..settings.discoverer_runs)
            .filter_map(|_| {
                run_discoverer_child(
                    host,
                    &settings.bench,
                    empty_group,
                    0,
                    Duration::from_millis(100),
                )
            })
            .map(|result| result.rss_growth_bytes)
            .collect();
        let baseline = Summary::of(&baseline).map_or(0.0, |summary| summary.median);
        let per_instance: Vec<f64> = results
            .iter()
            .map(|result| (result.rss_growth_bytes - baseline) / result.listed.max(1) as f64)
            .collect();
        report.add(
            SECTION,
            format!("{label}: memory per tracked instance"),
            "bytes",
            Summary::of(&per_instance),
            format!(
                "RSS growth of the discoverer process, start to steady state, less {:.0} KiB measured with no instances, divided by instances listed; includes one buffered Up event each",
                baseline / 1024.0
            ),
        );
    }
}

/// Runs one discoverer process in `host` until it lists `expected` instances of `group` and has
/// watched `window` of steady state, and returns what it measured.
fn run_discoverer_child(
    host: &Host,
    bench: &std::path::Path,
    group: GroupId,
    expected: usize,
    window: Duration,
) -> Option<ChildResult> {
    let args = vec![
        group.to_string(),
        expected.to_string(),
        window.as_millis().to_string(),
    ];
    let mut process = match host.spawn(child::command(host, bench, "discoverer", &args)) {
        Ok(process) => process,
        Err(error) => {
            eprintln!("scale: failed to start the discoverer process: {error}");
            return None;
        }
    };
    let line = process.wait_for_line(Duration::from_secs(120), |line| {
        line.starts_with(RESULT_PREFIX)
    });
    process.wait_exit(Duration::from_secs(10));
    let result = line.as_deref().and_then(ChildResult::parse);
    if result.is_none() {
        eprintln!(
            "scale: the discoverer process gave no result:\n{}",
            process.output()
        );
    }
    result
}

/// Prefix of the one line a discoverer child prints with its results.
const RESULT_PREFIX: &str = "result ";

/// Measurements of one discoverer child.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct ChildResult {
    converged_ms: f64,
    listed: u64,
    drops_converging: u64,
    drops_steady: u64,
    received_per_second: f64,
    /// RSS growth of the process from before the discoverer started to steady state.
    rss_growth_bytes: f64,
    /// CPU time of the process per second of the steady window, in milliseconds.
    cpu_ms_per_second: f64,
    downs: u64,
}

impl ChildResult {
    fn to_line(self) -> String {
        format!(
            "{RESULT_PREFIX}converged_ms={} listed={} drops_converging={} drops_steady={} received_per_second={} rss_growth_bytes={} cpu_ms_per_second={} downs={}",
            self.converged_ms,
            self.listed,
            self.drops_converging,
            self.drops_steady,
            self.received_per_second,
            self.rss_growth_bytes,
            self.cpu_ms_per_second,
            self.downs
        )
    }

    fn parse(line: &str) -> Option<ChildResult> {
        let mut result = ChildResult::default();
        for pair in line.strip_prefix(RESULT_PREFIX)?.split_whitespace() {
            let (key, value) = pair.split_once('=')?;
            match key {
                "converged_ms" => result.converged_ms = value.parse().ok()?,
                "listed" => result.listed = value.parse().ok()?,
                "drops_converging" => result.drops_converging = value.parse().ok()?,
                "drops_steady" => result.drops_steady = value.parse().ok()?,
                "received_per_second" => result.received_per_second = value.parse().ok()?,
                "rss_growth_bytes" => result.rss_growth_bytes = value.parse().ok()?,
                "cpu_ms_per_second" => result.cpu_ms_per_second = value.parse().ok()?,
                "downs" => result.downs = value.parse().ok()?,
                _ => return None,
            }
        }
        Some(result)
    }
}

/// `discoverer GROUP EXPECTED WINDOW_MS`: starts a discoverer on the lab interface, waits until
/// it lists `EXPECTED` instances (at most 30 s), watches a steady window, and prints one result
/// line. Runs in its own process, inside a lab host.
pub fn discoverer_child(args: &[String]) -> Result<(), String> {
    let [group, expected, window] = args else {
        return Err("expected GROUP EXPECTED WINDOW_MS".to_owned());
    };
    let group: GroupId = group
        .parse()
        .map_err(|error| format!("invalid group {group:?}: {error}"))?;
    let expected: usize = expected
        .parse()
        .map_err(|error| format!("invalid count {expected:?}: {error}"))?;
    let window = Duration::from_millis(
        window
            .parse()
            .map_err(|error| format!("invalid window {window:?}: {error}"))?,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("failed to build a tokio runtime: {error}"))?;
    let result = runtime.block_on(measure_discoverer(group, expected, window))?;
    println!("{}", result.to_line());
    Ok(())
}

async fn measure_discoverer(
    group: GroupId,
    expected: usize,
    window: Duration,
) -> Result<ChildResult, String> {
    let read_udp =
        || UdpCounters::read_own().map_err(|error| format!("failed to read UDP counters: {error}"));
    let rss_before = procfs::own_rss_kib().map_err(|error| error.to_string())?;
    let udp_start = read_udp()?;

    let started = Instant::now();
    let discoverer = Discoverer::builder(group)
        .interface(INTERFACE)
        .start()
        .await
        .map_err(|error| error.to_string())?;
    let mut events = discoverer.events();
    let mut listed = 0usize;
    let mut last_up = started;
    let limit = tokio::time::sleep(Duration::from_secs(30));
    tokio::pin!(limit);
    while listed < expected {
        tokio::select! {
            () = &mut limit => break,
            event = events.next() => match event {
                Some(Event::Up(_)) => {
                    listed += 1;
                    last_up = Instant::now();
                }
                Some(Event::Down { .. }) => listed = listed.saturating_sub(1),
                Some(Event::Changed { .. }) => {}
                None => break,
            },
        }
    }
    let converged = last_up - started;
    let udp_converged = read_udp()?;

    // Let the answers to the DISCOVERs and the first heartbeats pass, then watch a steady window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = procfs::own_rss_kib().map_err(|error| error.to_string())?;
    let table = discoverer
        .instances()
        .await
        .map_err(|error| error.to_string())?
        .len();
    let stats_before = discoverer
        .stats()
        .await
        .map_err(|error| error.to_string())?;
    let udp_before = read_udp()?;
    let own_cpu = || procfs::cpu_time(std::process::id()).unwrap_or_default();
    let cpu_before = own_cpu();
    let window_started = Instant::now();
    let mut downs = 0;
    let window_end = tokio::time::sleep(window);
    tokio::pin!(window_end);
    loop {
        tokio::select! {
            () = &mut window_end => break,
            event = events.next() => match event {
                Some(Event::Down { .. }) => downs += 1,
                Some(_) => {}
                None => break,
            },
        }
    }
    let cpu = own_cpu().saturating_sub(cpu_before);
    let stats_after = discoverer
        .stats()
        .await
        .map_err(|error| error.to_string())?;
    let udp_after = read_udp()?;
    let seconds = window_started.elapsed().as_secs_f64();
    discoverer.shutdown().await;

    let received = stats_after
        .packets
        .received()
        .total()
        .saturating_sub(stats_before.packets.received().total());
    Ok(ChildResult {
        converged_ms: converged.as_secs_f64() * 1e3,
        listed: table as u64,
        drops_converging: udp_converged.since(&udp_start).rcvbuf_errors,
        drops_steady: udp_after.since(&udp_before).rcvbuf_errors,
        received_per_second: received as f64 / seconds,
        rss_growth_bytes: rss_after.saturating_sub(rss_before) as f64 * 1024.0,
        cpu_ms_per_second: cpu.as_secs_f64() * 1e3 / seconds,
        downs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_result_round_trips() {
        let result = ChildResult {
            converged_ms: 812.5,
            listed: 1000,
            drops_converging: 3,
            drops_steady: 0,
            received_per_second: 2050.25,
            rss_growth_bytes: 2_101_248.0,
            cpu_ms_per_second: 12.5,
            downs: 1,
        };
        assert_eq!(ChildResult::parse(&result.to_line()), Some(result));
    }

    #[test]
    fn child_result_rejects_unknown_key() {
        assert_eq!(ChildResult::parse("result converged_ms=1 color=blue"), None);
        assert_eq!(ChildResult::parse("converged_ms=1"), None);
    }

    #[test]
    fn small_simulation_converges() {
        let run = sim_run(50, 0.0, 1);
        let converged = run
            .converged
            .expect("50 instances are listed within a minute");
        assert!(converged <= Duration::from_secs(60));
        assert!(run.packets_per_second > 0.0);
    }
}
