//! Crash detection: SIGKILL to an `msd announce` process in one lab host, then the time until a
//! discoverer in another host reports it Down. The same for an mdns-sd registrant and a browser.
//!
//! msd's bound counts from the last packet the discoverer received: `ttl + probes ×
//! probe_interval`. The Down event carries that instant (`last_seen`), so each run gives both the
//! time from the kill and the time from the last packet. mdns-sd 0.21 removes a service when its
//! SRV record's TTL runs out, 120 s, which its public API cannot change. So all mdns-sd
//! registrants are killed at once, and their removals are awaited while the msd runs go on.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use msd::Discoverer;
use msd_lab::{Host, LabChild, Signal};
use rand::Rng;

use crate::child::{self, READY_LINE};
use crate::lab;
use crate::latency::SERVICE_TYPE;
use crate::packets::GROUP;
use crate::report::Report;
use crate::summary::Summary;
use crate::watch::{MdnsBrowser, MsdWatcher};

const SECTION: &str = "crash";

/// The lab interface every host has.
const INTERFACE: &str = "eth0";

/// Maximum wait for an instance to come up.
const UP_WAIT: Duration = Duration::from_secs(10);

/// Maximum wait for mdns-sd to remove a killed service: its 120 s SRV TTL with room to spare.
const MDNS_REMOVAL_WAIT: Duration = Duration::from_secs(200);

/// Settings of the crash runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The `msd` binary; without it the msd runs are skipped.
    pub msd: Option<PathBuf>,
    /// This benchmark's own binary, started again as an mdns-sd registrant.
    pub bench: PathBuf,
    /// Kills per msd configuration.
    pub runs: usize,
    /// mdns-sd registrants killed at once; 0 leaves mdns-sd out.
    pub mdns_registrants: usize,
}

/// One msd configuration under test.
struct Variant {
    name: &'static str,
    /// Extra `msd announce` arguments.
    announce_args: &'static [&'static str],
    heartbeat: Duration,
    ttl: Duration,
    probes: u32,
    probe_interval: Duration,
}

impl Variant {
    /// `ttl + probes × probe_interval`, from the last packet received.
    fn bound(&self) -> Duration {
        self.ttl + self.probe_interval * self.probes
    }
}

const VARIANTS: [Variant; 3] = [
    Variant {
        name: "defaults",
        announce_args: &[],
        heartbeat: Duration::from_millis(500),
        ttl: Duration::from_secs(2),
        probes: 3,
        probe_interval: Duration::from_millis(300),
    },
    Variant {
        name: "heartbeat 100 ms, TTL 400 ms",
        announce_args: &["--heartbeat-interval", "100ms", "--ttl", "400ms"],
        heartbeat: Duration::from_millis(100),
        ttl: Duration::from_millis(400),
        probes: 3,
        probe_interval: Duration::from_millis(300),
    },
    Variant {
        name: "heartbeat 100 ms, TTL 400 ms, probes 3 × 100 ms",
        announce_args: &["--heartbeat-interval", "100ms", "--ttl", "400ms"],
        heartbeat: Duration::from_millis(100),
        ttl: Duration::from_millis(400),
        probes: 3,
        probe_interval: Duration::from_millis(100),
    },
];

/// Measures crash detection of msd in every variant and of mdns-sd, on one two-host lab.
pub fn run(report: &mut Report, settings: &Settings) {
    let lab = match lab::create(2) {
        Ok(lab) => lab,
        Err(error) => return report.add(SECTION, "lab", "", None, error),
    };
    let (observer, announcer) = (lab.host(0), lab.host(1));

    // mdns-sd first: its registrants are killed now and removed about two minutes later.
    let mut mdns =
        (settings.mdns_registrants > 0).then(|| MdnsCrash::start(observer, announcer, settings));

    match &settings.msd {
        Some(msd) => {
            for variant in &VARIANTS {
                msd_variant(report, observer, announcer, msd, variant, settings.runs);
            }
        }
        None => report.add(
            SECTION,
            "msd",
            "",
            None,
            "the msd binary was not found; build it with `cargo build --release -p msd-cli`",
        ),
    }

    match mdns.as_mut() {
        Some(Ok(mdns)) => mdns.finish(report),
        Some(Err(error)) => report.add(
            SECTION,
            "mdns-sd, defaults: SIGKILL to ServiceRemoved",
            "s",
            None,
            error.clone(),
        ),
        None => {}
    }
}

/// Kills `runs` `msd announce` processes of one variant, one at a time, and reports the time to
/// Down from the kill and from the last packet.
fn msd_variant(
    report: &mut Report,
    observer: &Host,
    announcer: &Host,
    msd: &PathBuf,
    variant: &Variant,
    runs: usize,
) {
    let builder = Discoverer::builder(GROUP)
        .interface(INTERFACE)
        .probes(variant.probes, variant.probe_interval);
    let mut watcher = match MsdWatcher::start(observer, builder) {
        Ok(watcher) => watcher,
        Err(error) => {
            return report.add(SECTION, format!("msd, {}", variant.name), "ms", None, error)
        }
    };
    let mut from_kill = Vec::with_capacity(runs);
    let mut from_last_packet = Vec::with_capacity(runs);
    let mut rng = rand::rng();
    for run in 0..runs {
        let id = format!("crash-{}-{run}", variant.ttl.as_millis());
        let Some(mut process) = start_announce(announcer, msd, &id, variant) else {
            continue;
        };
        if watcher.wait_up(&id, UP_WAIT).is_none() {
            eprintln!("crash: {id} was not seen:\n{}", process.output());
            continue;
        }
        // A random moment, so the kill falls anywhere between two heartbeats.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..=1300)));
        let killed = Instant::now();
        if process.signal(Signal::SIGKILL).is_err() {
            continue;
        }
        process.wait_exit(Duration::from_secs(5));
        match watcher.wait_down(&id, variant.bound() + Duration::from_secs(10)) {
            Some(down) => {
                from_kill.push(down.at.saturating_duration_since(killed));
                from_last_packet.push(down.at.saturating_duration_since(down.last_seen));
            }
            None => eprintln!("crash: {id} was not reported down"),
        }
    }
    watcher.finish();

    let bound = variant.bound();
    let within = match from_last_packet.iter().max() {
        Some(longest) if *longest > bound => format!(
            "the longest exceeds it by {:.1} ms",
            (*longest - bound).as_secs_f64() * 1e3
        ),
        Some(_) => "all within it".to_owned(),
        None => String::new(),
    };
    let max_gap = variant.heartbeat * 6 / 5;
    report.add(
        SECTION,
        format!("msd, {}: last packet to Down", variant.name),
        "ms",
        Summary::of_millis(&from_last_packet),
        format!(
            "bound ttl + probes × probe_interval = {} ms; {within}",
            bound.as_millis()
        ),
    );
    report.add(
        SECTION,
        format!("msd, {}: SIGKILL to Down", variant.name),
        "ms",
        Summary::of_millis(&from_kill),
        format!(
            "bound from the kill: {} ms plus the heartbeat gap, at most {} ms",
            bound.as_millis(),
            max_gap.as_millis()
        ),
    );
}

/// Starts `msd announce` for `id` on the lab interface and waits until it announces.
fn start_announce(host: &Host, msd: &PathBuf, id: &str, variant: &Variant) -> Option<LabChild> {
    let url = format!("http://{}:8080/{id}", host.ipv4());
    let group = GROUP.to_string();
    let mut command = host.command(msd);
    command.args([
        "announce",
        "--group",
        &group,
        "--id",
        id,
        "--url",
        &url,
        "--interface",
        INTERFACE,
    ]);
    command
        .args(variant.announce_args)
        .env("MSD_LOG", "warn")
        .env_remove("MSD_MULTICAST_INTERFACE");
    match host.spawn(command) {
        Ok(child) => Some(child),
        Err(error) => {
            eprintln!("crash: failed to start msd announce: {error}");
            None
        }
    }
}

/// mdns-sd registrants killed at one instant, and the browser that waits for their removal.
struct MdnsCrash {
    browser: MdnsBrowser,
    /// Full names of the services whose registrant was killed.
    names: Vec<String>,
    killed: Instant,
    _registrants: Vec<LabChild>,
}

impl MdnsCrash {
    /// Starts the registrants and the browser, waits until every service is resolved, then kills
    /// every registrant with SIGKILL.
    fn start(observer: &Host, announcer: &Host, settings: &Settings) -> Result<MdnsCrash, String> {
        let browser = MdnsBrowser::start(observer, SERVICE_TYPE);
        let address = announcer.ipv4().to_string();
        let mut registrants = Vec::with_capacity(settings.mdns_registrants);
        let mut names = Vec::with_capacity(settings.mdns_registrants);
        for index in 0..settings.mdns_registrants {
            let name = format!("crash-{index}");
            let command = child::command(
                announcer,
                &settings.bench,
                "mdns-register",
                &[name.clone(), address.clone()],
            );
            let registrant = announcer
                .spawn(command)
                .map_err(|error| format!("failed to start a registrant: {error}"))?;
            if registrant
                .wait_for_line(UP_WAIT, |line| line == READY_LINE)
                .is_none()
            {
                return Err(format!(
                    "an mdns-sd registrant did not start:\n{}",
                    registrant.output()
                ));
            }
            let fullname = format!("{name}.{SERVICE_TYPE}");
            if browser.wait_resolved(&fullname, UP_WAIT).is_none() {
                return Err(format!("{fullname} was not resolved within {UP_WAIT:?}"));
            }
            registrants.push(registrant);
            names.push(fullname);
        }
        std::thread::sleep(Duration::from_secs(1));
        let killed = Instant::now();
        for registrant in &registrants {
            registrant
                .signal(Signal::SIGKILL)
                .map_err(|error| format!("failed to kill a registrant: {error}"))?;
        }
        Ok(MdnsCrash {
            browser,
            names,
            killed,
            _registrants: registrants,
        })
    }

    /// Waits for the removals and reports the time from the kill to each.
    fn finish(&mut self, report: &mut Report) {
        let deadline = self.killed + MDNS_REMOVAL_WAIT;
        let mut removed = Vec::with_capacity(self.names.len());
        for name in &self.names {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Some(at) = self.browser.wait_removed(name, remaining) {
                removed.push(at.saturating_duration_since(self.killed));
            }
        }
        self.browser.finish();
        let seconds: Vec<f64> = removed.iter().map(Duration::as_secs_f64).collect();
        report.add(
            SECTION,
            "mdns-sd, defaults: SIGKILL to ServiceRemoved",
            "s",
            Summary::of(&seconds),
            format!(
                "{} of {} removed within {} s; removal comes when the 120 s SRV TTL runs out",
                removed.len(),
                self.names.len(),
                MDNS_REMOVAL_WAIT.as_secs()
            ),
        );
    }
}
