//! Helpers shared by the lab tests: run `msd` in lab hosts and read the events it prints.

#![allow(dead_code)]

use std::time::Duration;

use msd_lab::{Host, LabChild};
use serde_json::Value;

/// Generous limit for one expected event; tests fail rather than hang when it passes.
pub const WAIT: Duration = Duration::from_secs(20);

pub const GROUP: &str = "55c545258c440a731a50810425bc";

/// Starts `msd` with `args` in `host`, with debug logs of msd itself.
pub fn msd(host: &Host, args: &[&str]) -> LabChild {
    let mut command = host.command(env!("CARGO_BIN_EXE_msd"));
    command.args(args).env("MSD_LOG", "msd=debug,info").env_remove("MSD_MULTICAST_INTERFACE");
    host.spawn(command).expect("start msd")
}

/// Starts `msd announce` for `id` in `host` and waits until it runs.
pub fn announce_with(host: &Host, id: &str, extra: &[&str]) -> LabChild {
    let url = format!("http://{}:8080/{id}", host.ipv4());
    let mut args = vec!["announce", "--group", GROUP, "--id", id, "--url", &url];
    args.extend_from_slice(extra);
    let child = msd(host, &args);
    let started = child.wait_for_line(WAIT, |line| line.contains("announcing"));
    assert!(started.is_some(), "announce {id} did not start:\n{}", child.output());
    child
}

/// Starts `msd browse --watch --json` in `host`, with quick DISCOVER rounds and a 2 s expiry
/// for seed-protocol instances.
pub fn browse_with(host: &Host, extra: &[&str]) -> LabChild {
    let mut args = vec!["browse", "--group", GROUP, "--watch", "--json", "--discover-interval", "1s", "--expire-after", "2s"];
    args.extend_from_slice(extra);
    msd(host, &args)
}

/// Waits for an event line `{"event": kind, "instance": {"id": id, ...}}`, counting from the
/// first line of output, and returns it.
pub fn wait_event(child: &LabChild, kind: &str, id: &str) -> Value {
    wait_event_after(child, kind, id, 0)
}

/// Like [`wait_event`], but only the `skip + 1`-th matching event counts.
pub fn wait_event_after(child: &LabChild, kind: &str, id: &str, skip: usize) -> Value {
    let mut seen = 0;
    let mut found = None;
    child.wait_for_line(WAIT, |line| {
        let Ok(value) = serde_json::from_str::<Value>(line) else { return false };
        if value["event"] == kind && value["instance"]["id"] == id {
            seen += 1;
            if seen > skip {
                found = Some(value);
                return true;
            }
        }
        false
    });
    found.unwrap_or_else(|| panic!("no {kind} event for {id} (after {skip} earlier ones):\n{}", child.output()))
}

/// Counts the event lines of `kind` for `id` printed so far.
pub fn count_events(child: &LabChild, kind: &str, id: &str) -> usize {
    child
        .output()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["event"] == kind && value["instance"]["id"] == id)
        .count()
}
