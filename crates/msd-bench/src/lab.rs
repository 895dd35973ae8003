//! Helpers around `msd-lab`: creating a lab, running async code inside a host, pinning threads.
//!
//! Everything that sends or receives over a network in this crate runs inside lab hosts, where
//! the only interfaces are `lo` and the lab's `eth0`. So nothing reaches the machine's own
//! interfaces, even where msd or mdns-sd use every interface by default.

use std::future::Future;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use msd_lab::{Host, Lab};

/// Creates a lab of `hosts` hosts, or returns why it cannot run here.
///
/// # Errors
///
/// Returns the missing prerequisite (root, `ip`, `nft`) or the failing setup step.
pub fn create(hosts: usize) -> Result<Lab, String> {
    Lab::check_prerequisites().map_err(|error| format!("the lab cannot run: {error}"))?;
    Lab::new(hosts).map_err(|error| format!("failed to create a lab of {hosts} hosts: {error}"))
}

/// Runs `make()` to completion on a current-thread tokio runtime, on a new thread inside `host`'s
/// namespace. The runtime, its sockets and the threads it starts live in that namespace.
///
/// # Panics
///
/// The thread panics, and `join` returns the panic, when the runtime cannot be built.
pub fn block_on_in<F, Fut, T>(host: &Host, make: F) -> JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    host.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| panic!("failed to build a tokio runtime: {error}"));
        runtime.block_on(make())
    })
}

/// Joins a thread started with [`block_on_in`] or [`Host::run`], turning a panic into an error.
///
/// # Errors
///
/// Returns the panic message of the thread.
pub fn join<T>(handle: JoinHandle<T>, what: &str) -> Result<T, String> {
    handle.join().map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
            .unwrap_or_default();
        format!("{what} panicked: {message}")
    })
}

/// Kills the processes inside this process's lab namespaces and deletes the namespaces, for an
/// interrupted run whose labs cannot drop. Namespaces of a lab are named
/// `msdlab-<pid namespace>-<pid>-<lab number>-<host>`.
pub fn remove_own_namespaces() {
    let prefix = Lab::process_prefix();
    let Ok(list) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let list = String::from_utf8_lossy(&list.stdout);
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&prefix))
    {
        if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
            for pid in String::from_utf8_lossy(&pids.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse::<i32>().ok())
            {
                if pid != std::process::id() as i32 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        let _ = Command::new("ip").args(["netns", "delete", name]).status();
    }
}

/// Loads an nftables script into `host`'s namespace with `nft -f -`.
///
/// # Errors
///
/// Returns the output of `nft` when it fails.
pub fn load_nft(host: &Host, script: &str) -> Result<(), String> {
    let mut command = host.command("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|error| format!("failed to start nft: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|error| format!("failed to write to nft: {error}"))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| format!("nft failed: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed in {}: {}",
            host.name(),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Pins the calling thread to one CPU, so that a sender and a receiver do not share a core.
/// Does nothing on a machine with fewer CPUs than `cpu + 1` or when the kernel refuses.
pub fn pin_to_cpu(cpu: usize) {
    let available = std::thread::available_parallelism().map_or(1, usize::from);
    if cpu >= available {
        return;
    }
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

/// Returns the wall clock in milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}
