//! Logging setup and the text and JSON forms of instances and events.

use std::io::{self, IsTerminal, Write};
use std::time::Instant;

use msd::{Event, InstanceInfo};
use serde::Serialize;
use tracing_subscriber::EnvFilter;

use crate::args::GlobalArgs;

/// Sends logs to stderr, filtered by `--log` / `MSD_LOG`, in colour only on a terminal.
///
/// # Errors
///
/// Returns the message for an invalid filter.
pub(crate) fn init_logging(global: &GlobalArgs) -> Result<(), String> {
    let filter = EnvFilter::builder()
        .parse(&global.log)
        .map_err(|error| format!("invalid --log (or MSD_LOG) {:?}: {error}; use a level such as info or debug", global.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
}

/// Replaces control characters, which a peer could use to rewrite the terminal, with escapes.
pub(crate) fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars().map(|character| if character.is_control() { character.escape_default().to_string() } else { character.to_string() }).collect()
}

/// One instance as `browse --json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct InstanceJson {
    pub(crate) id: String,
    pub(crate) url: String,
    pub(crate) protocol: &'static str,
    pub(crate) health: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) weight: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) load: Option<u32>,
    pub(crate) metadata: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) incarnation: Option<u64>,
    pub(crate) interface: String,
    pub(crate) source: String,
    /// When the instance was first heard, RFC 3339 in UTC.
    pub(crate) first_seen: String,
    /// When the instance was last heard, RFC 3339 in UTC.
    pub(crate) last_seen: String,
    /// Milliseconds since the instance was first heard.
    pub(crate) age_ms: u128,
    /// Milliseconds since the instance was last heard.
    pub(crate) last_seen_ms: u128,
}

impl InstanceJson {
    pub(crate) fn new(info: &InstanceInfo, now: Instant) -> Self {
        InstanceJson {
            id: info.id.clone(),
            url: info.url.clone(),
            protocol: info.protocol.as_str(),
            health: info.health.as_str(),
            weight: info.weight,
            load: info.load,
            metadata: info.metadata.clone(),
            incarnation: info.incarnation,
            interface: interface_label(info),
            source: info.source.to_string(),
            first_seen: wall_time(info.first_seen, now),
            last_seen: wall_time(info.last_seen, now),
            age_ms: now.saturating_duration_since(info.first_seen).as_millis(),
            last_seen_ms: now.saturating_duration_since(info.last_seen).as_millis(),
        }
    }
}

/// One event as `browse --watch --json` prints it.
#[derive(Debug, Serialize)]
pub(crate) struct EventJson {
    pub(crate) event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    pub(crate) instance: InstanceJson,
    /// The state before a `changed` event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous: Option<InstanceJson>,
}

impl EventJson {
    pub(crate) fn new(event: &Event, now: Instant) -> Self {
        match event {
            Event::Up(info) => EventJson { event: "up", reason: None, instance: InstanceJson::new(info, now), previous: None },
            Event::Changed { previous, current } => EventJson {
                event: "changed",
                reason: None,
                instance: InstanceJson::new(current, now),
                previous: Some(InstanceJson::new(previous, now)),
            },
            Event::Down { instance, reason } => EventJson {
                event: "down",
                reason: Some(reason.to_string()),
                instance: InstanceJson::new(instance, now),
                previous: None,
            },
        }
    }
}

/// Formats a monotonic instant as wall-clock time in RFC 3339, by its distance from `now`.
fn wall_time(instant: Instant, now: Instant) -> String {
    let wall = std::time::SystemTime::now() - now.saturating_duration_since(instant);
    humantime::format_rfc3339_millis(wall).to_string()
}

pub(crate) fn interface_label(info: &InstanceInfo) -> String {
    msd::interface_name(info.interface).unwrap_or_else(|| format!("#{}", info.interface))
}

#[cfg(test)]
mod printable_tests {
    use super::printable;

    #[test]
    fn control_characters_escaped() {
        assert_eq!(printable("a\u{1b}[31mb\nc"), "a\\u{1b}[31mb\\nc");
        assert_eq!(printable("plain é"), "plain é");
    }
}

/// Formats the table `browse` and `demo` print.
pub(crate) fn table(instances: &[InstanceInfo], now: Instant) -> String {
    let headers = ["ID", "URL", "HEALTH", "LOAD", "INTERFACE", "SOURCE", "AGE"];
    let rows: Vec<[String; 7]> = instances
        .iter()
        .map(|info| {
            [
                printable(&info.id),
                printable(&info.url),
                info.health.to_string(),
                info.load.map_or_else(|| "-".to_owned(), |load| load.to_string()),
                interface_label(info),
                info.source.to_string(),
                format!("{:.1}s", now.saturating_duration_since(info.first_seen).as_secs_f64()),
            ]
        })
        .collect();
    // Cells longer than this are cut, so one huge id from the network cannot pad every row.
    const MAX_CELL: usize = 64;
    let rows: Vec<[String; 7]> = rows.into_iter().map(|row| row.map(|cell| shorten(cell, MAX_CELL))).collect();
    let mut widths = headers.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut push_row = |cells: &[&str]| {
        let line: Vec<String> =
            cells.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    };
    push_row(&headers);
    for row in &rows {
        push_row(&row.each_ref().map(String::as_str));
    }
    out
}

fn shorten(cell: String, max: usize) -> String {
    if cell.chars().count() <= max {
        return cell;
    }
    let mut short: String = cell.chars().take(max - 1).collect();
    short.push('…');
    short
}

/// Writes to stdout; a closed pipe (`msd browse | head`) ends the program quietly.
pub(crate) fn print(text: &str) {
    let mut stdout = io::stdout().lock();
    let written = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
    if let Err(error) = written {
        if error.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("msd: failed to write to stdout: {error}");
        std::process::exit(i32::from(crate::exit::FAILURE));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let now = Instant::now();
        let info = InstanceInfo {
            id: "web-1".into(),
            url: "http://10.0.0.7:8080".into(),
            protocol: msd::Protocol::Seed,
            health: msd::Health::Serving,
            weight: None,
            load: None,
            metadata: Default::default(),
            incarnation: None,
            sequence: None,
            ttl: None,
            key_id: None,
            interface: msd::InterfaceIndex(u32::MAX),
            source: "10.0.0.7:40000".parse().unwrap(),
            first_seen: now,
            last_seen: now,
        };
        let text = table(&[info], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("ID     URL"), "{text}");
        assert!(lines[1].starts_with("web-1  http://10.0.0.7:8080  serving  -"), "{text}");
        assert!(lines[1].contains("#4294967295"), "unknown interface index shown as a number: {text}");
    }
}
