//! Helper processes the benchmarks start inside lab hosts by running the `msd-bench` binary again
//! with `child ...` arguments.
//!
//! A process of its own is needed where a benchmark kills it with SIGKILL or reads its memory.

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mdns_sd::{ServiceDaemon, ServiceInfo};
use msd_lab::Host;

/// The first argument that selects a child mode.
pub const CHILD_ARG: &str = "child";

/// Line a child prints once it is set up.
pub const READY_LINE: &str = "ready";

/// Returns a command that runs `msd-bench child <mode> <args>` inside `host`.
pub fn command(host: &Host, executable: &Path, mode: &str, args: &[String]) -> Command {
    let mut command = host.command(executable);
    command.arg(CHILD_ARG).arg(mode).args(args);
    command
}

/// Runs the child mode named by `args` (the arguments after `child`) and returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let result = match args.split_first() {
        Some((mode, rest)) if mode == "mdns-register" => mdns_register(rest),
        Some((mode, rest)) if mode == "discoverer" => crate::scale::discoverer_child(rest),
        _ => Err(format!("unknown child mode: {args:?}")),
    };
    match result {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("msd-bench child: {error}");
            1
        }
    }
}

/// `mdns-register NAME ADDRESS`: registers one mdns-sd service with default settings, prints
/// [`READY_LINE`] and keeps running until killed.
fn mdns_register(args: &[String]) -> Result<(), String> {
    let [name, address] = args else {
        return Err("expected NAME ADDRESS".to_owned());
    };
    let address: IpAddr = address
        .parse()
        .map_err(|error| format!("invalid address {address:?}: {error}"))?;
    let daemon = ServiceDaemon::new()
        .map_err(|error| format!("failed to start the mdns-sd daemon: {error}"))?;
    let properties: Option<std::collections::HashMap<String, String>> = None;
    let info = ServiceInfo::new(
        crate::latency::SERVICE_TYPE,
        name,
        &format!("{name}.local."),
        address,
        8080,
        properties,
    )
    .map_err(|error| format!("invalid service info: {error}"))?;
    daemon
        .register(info)
        .map_err(|error| format!("failed to register: {error}"))?;
    println!("{READY_LINE}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
