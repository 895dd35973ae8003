use std::collections::BTreeMap;
use std::time::Duration;

use msd::{Discoverer, Event, InstanceInfo};

use crate::args::BrowseArgs;
use crate::commands::{hangup_signals, reload_keys, StopSignals};
use crate::exit::CliError;
use crate::output::{interface_label, print, printable, table, EventJson, InstanceJson};
use crate::settings::{apply_discovery, parse_duration, Network};

/// How long `browse` listens without `--watch` or `--timeout`: long enough for the startup
/// DISCOVER rounds (0, 250 and 750 ms) and the answers' random delay.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

pub(crate) async fn run(args: BrowseArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    let timeout = args.timeout.as_deref().map(|text| parse_duration("--timeout", text)).transpose()?;

    let mut stop = StopSignals::install()?;
    let hangups = hangup_signals()?;
    let builder = network.apply_discoverer(Discoverer::builder(network.group));
    let discoverer = apply_discovery(&args.discovery, builder)?.start().await?;

    if args.watch {
        let signals = (&mut stop, hangups);
        watch(&discoverer, args.json, timeout, signals, args.network.key_file.as_deref()).await?;
        discoverer.shutdown().await;
        return Ok(());
    }

    let timeout = timeout.unwrap_or(DEFAULT_TIMEOUT);
    let started = tokio::time::Instant::now();
    let mut listened = timeout;
    let mut interrupted = None;
    tokio::select! {
        () = tokio::time::sleep(timeout) => {}
        signal = stop.wait() => {
            listened = started.elapsed();
            interrupted = Some(signal);
        }
    }
    let instances = discoverer.instances().await?;
    let stats = discoverer.stats().await?;
    discoverer.shutdown().await;
    let now = msd_now();
    if args.json {
        let list: Vec<InstanceJson> = instances.iter().map(|info| InstanceJson::new(info, now)).collect();
        print(&format!("{}\n", to_json(&list)?));
    } else {
        print(&table(&instances, now));
    }
    if instances.is_empty() {
        let listened = Duration::from_millis(u64::try_from(listened.as_millis()).unwrap_or(u64::MAX));
        let mut message = humantime::format_duration(listened).to_string();
        if let Some(signal) = interrupted {
            message.push_str(&format!(", when {signal} stopped the search"));
        }
        let refused = stats.packets.authentication_failures();
        if refused > 0 {
            message.push_str(&format!(
                "; {refused} packets failed authentication: check that every host uses the same key file, and its clock"
            ));
        }
        return Err(CliError::NothingFound(message));
    }
    Ok(())
}

/// Prints changes until the timeout or a signal; SIGHUP reloads the key file.
async fn watch(
    discoverer: &Discoverer,
    json: bool,
    timeout: Option<Duration>,
    (stop, mut hangups): (&mut StopSignals, tokio::signal::unix::Signal),
    key_file: Option<&std::path::Path>,
) -> Result<(), CliError> {
    let mut events = discoverer.events();
    let deadline = timeout.map(|timeout| tokio::time::Instant::now() + timeout);
    let timed_out = async {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(timed_out);
    let mut known = BTreeMap::new();
    let mut missed = 0;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = &mut timed_out => return Ok(()),
            _ = stop.wait() => return Ok(()),
            _ = hangups.recv() => {
                if let Some(keys) = reload_keys(key_file) {
                    match discoverer.set_keys(keys).await {
                        Ok(()) => tracing::info!("key ring reloaded"),
                        Err(error) => tracing::warn!(%error, "failed to apply the reloaded key ring"),
                    }
                }
                continue;
            }
        };
        let Some(event) = event else { return Ok(()) };
        if events.missed() > missed {
            missed = events.missed();
            eprintln!("msd: output fell behind and {missed} events were lost; printing the differences from the current table");
            for repair in resynchronise(&mut known, discoverer.instances().await?) {
                emit(&repair, json)?;
            }
            continue;
        }
        track(&mut known, &event);
        emit(&event, json)?;
    }
}

fn emit(event: &Event, json: bool) -> Result<(), CliError> {
    if json {
        print(&format!("{}\n", to_json(&EventJson::new(event, msd_now()))?));
    } else {
        print(&format!("{}\n", describe(event)));
    }
    Ok(())
}

/// Keeps the watcher's own view of the table, to repair it after lost events.
fn track(known: &mut BTreeMap<String, InstanceInfo>, event: &Event) {
    match event {
        Event::Up(info) | Event::Changed { current: info, .. } => {
            known.insert(info.id.clone(), info.clone());
        }
        Event::Down { instance, .. } => {
            known.remove(&instance.id);
        }
    }
}

/// Returns the events that turn the watcher's view into the current table. Instances that
/// vanished meanwhile are reported as expired, the closest reason msd can know.
fn resynchronise(known: &mut BTreeMap<String, InstanceInfo>, current: Vec<InstanceInfo>) -> Vec<Event> {
    let mut repairs = Vec::new();
    let current: BTreeMap<String, InstanceInfo> = current.into_iter().map(|info| (info.id.clone(), info)).collect();
    for (id, old) in known.iter() {
        if !current.contains_key(id) {
            repairs.push(Event::Down { instance: old.clone(), reason: msd::DownReason::Expired });
        }
    }
    for (id, info) in &current {
        match known.get(id) {
            None => repairs.push(Event::Up(info.clone())),
            Some(old) if old.url != info.url || old.health != info.health || old.incarnation != info.incarnation => {
                repairs.push(Event::Changed { previous: old.clone(), current: info.clone() });
            }
            Some(_) => {}
        }
    }
    *known = current;
    repairs
}

/// Returns one line describing an event, as `browse --watch` and `demo` print it.
pub(crate) fn describe(event: &Event) -> String {
    match event {
        Event::Up(info) => {
            // Serving is the usual case; anything else must stand out.
            let health = match info.health {
                msd::Health::Serving => String::new(),
                other => format!("  [{other}]"),
            };
            format!(
                "up       {}  {}{health}  via {} from {}",
                printable(&info.id),
                printable(&info.url),
                interface_label(info),
                info.source
            )
        }
        Event::Changed { previous, current } => {
            let mut changes = Vec::new();
            if previous.url != current.url {
                changes.push(format!("url {} -> {}", printable(&previous.url), printable(&current.url)));
            }
            if previous.health != current.health {
                changes.push(format!("health {} -> {}", previous.health, current.health));
            }
            if previous.load != current.load {
                changes.push(format!("load {} -> {}", optional(previous.load), optional(current.load)));
            }
            if previous.weight != current.weight {
                changes.push(format!("weight {} -> {}", optional(previous.weight), optional(current.weight)));
            }
            if previous.incarnation != current.incarnation {
                changes.push("restarted".to_owned());
            }
            if previous.protocol != current.protocol {
                changes.push(format!("protocol {} -> {}", previous.protocol.as_str(), current.protocol.as_str()));
            }
            if changes.is_empty() {
                changes.push("metadata".to_owned());
            }
            format!("changed  {}  {}", printable(&current.id), changes.join(", "))
        }
        Event::Down { instance, reason } => {
            format!("down     {}  {}  ({reason})", printable(&instance.id), printable(&instance.url))
        }
    }
}

/// Formats an optional number, `none` when it is absent.
fn optional(value: Option<u32>) -> String {
    value.map_or_else(|| "none".to_owned(), |value| value.to_string())
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string(value).map_err(|error| CliError::Failure(format!("failed to encode JSON: {error}")))
}

fn msd_now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
