//! Removal of namespaces left behind by a test process that died.
//!
//! This is its own test binary because `Lab::new` sweeps only once per process.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use msd_lab::Lab;

#[test]
fn stale_namespaces_are_removed() {
    // Checks the prerequisites and reports a skip the same way as every other lab test.
    let Some(lab) = Lab::for_test(0) else { return };

    let finished = Command::new("true").spawn().expect("`true` starts");
    let dead_pid = finished.id();
    let status = { finished }.wait().expect("`true` exits");
    assert!(status.success());
    let own_prefix = Lab::process_prefix();
    let pid_namespace = own_prefix
        .strip_prefix("msdlab-")
        .and_then(|rest| rest.split('-').next())
        .expect("prefix names the pid namespace");
    let stale = format!("msdlab-{pid_namespace}-{dead_pid}-0-h0");
    // The same dead pid in another pid namespace may belong to a live process there.
    let foreign = format!("msdlab-1-{dead_pid}-0-h0");
    let added = Command::new("ip").args(["netns", "add", &stale]).status();
    assert!(
        added.is_ok_and(|status| status.success()),
        "cannot add {stale}"
    );
    let _cleanup = DeleteOnDrop(stale.clone());
    let added = Command::new("ip").args(["netns", "add", &foreign]).status();
    assert!(
        added.is_ok_and(|status| status.success()),
        "cannot add {foreign}"
    );
    let _cleanup_foreign = DeleteOnDrop(foreign.clone());
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &stale, "sleep", "30"])
        .spawn()
        .expect("sleep starts in the stale namespace");
    wait_until_inside(&stale);

    let removed = Lab::remove_stale_namespaces().expect("sweep succeeds");

    assert!(removed.contains(&stale), "{stale} not in {removed:?}");
    assert!(
        !removed.contains(&foreign),
        "{foreign} was removed: {removed:?}"
    );
    assert!(
        !removed.iter().any(|name| name.starts_with(lab.name())),
        "{removed:?}"
    );
    let status = sleeper.wait().expect("sleep is reaped");
    assert_eq!(
        status.signal(),
        Some(nix::sys::signal::Signal::SIGKILL as i32)
    );
    let listing = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip runs");
    assert!(!String::from_utf8_lossy(&listing.stdout).contains(&stale));
}

/// Deletes a namespace when dropped, so a failing assertion leaves nothing behind.
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        // After a successful sweep the namespace is already gone and this fails quietly.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Waits until `ip netns pids` lists a process in `namespace`.
fn wait_until_inside(namespace: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let output = Command::new("ip")
            .args(["netns", "pids", namespace])
            .output()
            .expect("ip runs");
        if !output.stdout.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no process entered {namespace}");
}
