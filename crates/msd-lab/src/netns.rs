//! Network namespace plumbing: creating, entering, sweeping and deleting namespaces, and
//! reading interface details back from `ip`.

use std::fs::File;
use std::net::Ipv6Addr;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::command;
use crate::LabError;

/// Prefix of every namespace the lab creates, followed by `<pid namespace>-<pid>-<lab number>-`.
pub(crate) const NAMESPACE_PREFIX: &str = "msdlab-";

/// Returns the prefix of the namespaces this process creates, `msdlab-<pid namespace>-<pid>-`.
///
/// The pid namespace is the inode number of `/proc/self/ns/pid`. Containers that share
/// `/var/run/netns` but not their pids see different inode numbers, so the sweep of one never
/// takes another's live lab for a dead one.
pub(crate) fn own_prefix() -> String {
    format!(
        "{NAMESPACE_PREFIX}{}-{}-",
        pid_namespace(),
        std::process::id()
    )
}

/// Returns the inode number of this process's pid namespace, or 0 when it cannot be read.
fn pid_namespace() -> u64 {
    static INODE: OnceLock<u64> = OnceLock::new();
    *INODE.get_or_init(|| {
        std::fs::read_link("/proc/self/ns/pid")
            .ok()
            .and_then(|target| parse_namespace_link(&target.to_string_lossy()))
            .unwrap_or(0)
    })
}

/// Reads the inode number from a namespace link target such as `pid:[4026531836]`.
fn parse_namespace_link(target: &str) -> Option<u64> {
    target
        .strip_prefix("pid:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Directory where `ip netns` keeps the bind mounts that name namespaces.
const NETNS_DIR: &str = "/var/run/netns";

/// How long to wait for an interface's link-local address to become usable.
const LINK_LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Serializes `ip netns add` within this process. The first call on a machine also mounts
/// the netns directory, and the lock keeps threads of one process from doing that at once.
static NETNS_ADD_LOCK: Mutex<()> = Mutex::new(());

/// Creates a named network namespace.
pub(crate) fn add(namespace: &str) -> Result<(), LabError> {
    let _guard = NETNS_ADD_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    command::run("ip", &["netns", "add", namespace]).map(drop)
}

/// Kills every process inside `namespace` and deletes the namespace's name.
///
/// The kernel frees the namespace, and the veth ends inside it, once no process or thread
/// uses it any more.
pub(crate) fn delete(namespace: &str) -> Result<(), LabError> {
    kill_processes(namespace)?;
    command::run("ip", &["netns", "delete", namespace]).map(drop)
}

/// Sends SIGKILL to every process whose network namespace is `namespace`, except this one.
fn kill_processes(namespace: &str) -> Result<(), LabError> {
    let output = command::run("ip", &["netns", "pids", namespace])?;
    let own_pid = std::process::id();
    for pid in output
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
    {
        if pid == own_pid {
            continue;
        }
        if let Ok(raw) = i32::try_from(pid) {
            // The process may have exited since `ip` listed it.
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    Ok(())
}

/// Deletes lab namespaces left behind by processes that no longer exist, once per process.
pub(crate) fn sweep_stale_once() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        if let Err(error) = sweep_stale() {
            eprintln!("msd-lab: failed to delete stale namespaces: {error}");
        }
    });
}

/// Deletes every namespace named with [`NAMESPACE_PREFIX`] by a process of this pid namespace
/// that no longer runs, and returns their names.
pub(crate) fn sweep_stale() -> Result<Vec<String>, LabError> {
    let listing = command::run("ip", &["netns", "list"])?;
    let mut deleted = Vec::new();
    for namespace in listing
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some((pid_namespace_inode, pid)) = owner(namespace) else {
            continue;
        };
        // A pid of another pid namespace means nothing here, so its labs are left alone.
        if pid_namespace_inode != pid_namespace() {
            continue;
        }
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete(namespace)?;
        deleted.push(namespace.to_owned());
    }
    Ok(deleted)
}

/// Returns the pid namespace inode and the pid encoded in a lab namespace name, or `None` for
/// other namespaces.
fn owner(namespace: &str) -> Option<(u64, u32)> {
    let rest = namespace.strip_prefix(NAMESPACE_PREFIX)?;
    let (pid_namespace_inode, rest) = rest.split_once('-')?;
    let (pid, _) = rest.split_once('-')?;
    Some((pid_namespace_inode.parse().ok()?, pid.parse().ok()?))
}

/// Moves the calling thread into `namespace`.
pub(crate) fn enter(namespace: &str) -> Result<(), LabError> {
    let to_error = |source| LabError::EnterNamespace {
        namespace: namespace.to_owned(),
        source,
    };
    let file = File::open(Path::new(NETNS_DIR).join(namespace)).map_err(to_error)?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| to_error(errno.into()))
}

/// Writes `(path, value)` pairs under `/proc/sys` from a thread inside `namespace`.
///
/// `/proc/sys/net` shows the settings of the writing thread's network namespace, so a
/// helper thread enters the namespace first. This needs no `sysctl` binary.
pub(crate) fn write_sysctls(
    namespace: &str,
    settings: &'static [(&'static str, &'static str)],
) -> Result<(), LabError> {
    let namespace = namespace.to_owned();
    let worker = thread::spawn(move || {
        enter(&namespace)?;
        for (path, value) in settings {
            std::fs::write(path, value).map_err(|source| LabError::Sysctl {
                namespace: namespace.clone(),
                path: (*path).to_owned(),
                source,
            })?;
        }
        Ok(())
    });
    worker
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Index and MAC address of an interface, as `ip link` prints them.
#[derive(Debug)]
pub(crate) struct LinkInfo {
    pub(crate) index: u32,
    pub(crate) mac: String,
}

/// Reads the index and MAC address of `interface` inside `namespace`.
pub(crate) fn link_info(namespace: &str, interface: &str) -> Result<LinkInfo, LabError> {
    let args = ["-n", namespace, "-o", "link", "show", "dev", interface];
    let output = command::run("ip", &args)?;
    parse_link_info(&output).ok_or_else(|| LabError::UnexpectedOutput {
        command: command::command_line("ip", &args),
        output,
    })
}

/// Parses one line of `ip -o link show`, such as
/// `2: eth0@if3: <BROADCAST,...> mtu 1500 ... link/ether 02:00:00:00:00:01 brd ...`.
fn parse_link_info(output: &str) -> Option<LinkInfo> {
    let mut words = output.split_whitespace();
    let index = words.next()?.strip_suffix(':')?.parse().ok()?;
    let mac = words
        .skip_while(|word| *word != "link/ether")
        .nth(1)?
        .to_owned();
    Some(LinkInfo { index, mac })
}

/// Waits until `interface` inside `namespace` has a link-local IPv6 address that is not
/// tentative, and returns it.
pub(crate) fn wait_for_link_local(namespace: &str, interface: &str) -> Result<Ipv6Addr, LabError> {
    let args = [
        "-n", namespace, "-6", "-o", "addr", "show", "dev", interface, "scope", "link",
    ];
    let deadline = Instant::now() + LINK_LOCAL_TIMEOUT;
    loop {
        let output = command::run("ip", &args)?;
        if let Some(address) = parse_usable_link_local(&output) {
            return Ok(address);
        }
        if Instant::now() >= deadline {
            return Err(LabError::LinkLocalTimeout {
                namespace: namespace.to_owned(),
                interface: interface.to_owned(),
                timeout: LINK_LOCAL_TIMEOUT,
                last_output: output,
            });
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the first `fe80::` address in `ip -6 -o addr show` output that is neither
/// tentative nor failed duplicate address detection.
fn parse_usable_link_local(output: &str) -> Option<Ipv6Addr> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let (address, _prefix) = words
            .by_ref()
            .skip_while(|word| *word != "inet6")
            .nth(1)?
            .split_once('/')?;
        let address: Ipv6Addr = address.parse().ok()?;
        let unusable = words.any(|flag| flag == "tentative" || flag == "dadfailed");
        let link_local = address.segments().first() == Some(&0xfe80);
        (link_local && !unusable).then_some(address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_reads_lab_names() {
        assert_eq!(
            owner("msdlab-4026531836-4242-7-h0"),
            Some((4026531836, 4242))
        );
        assert_eq!(
            owner("msdlab-4026531836-4242-7-sw"),
            Some((4026531836, 4242))
        );
        assert_eq!(owner("msdlab-4026531836-x-7-sw"), None);
        assert_eq!(owner("msdlab-4242-sw"), None);
        assert_eq!(owner("other-4026531836-4242-7"), None);
    }

    #[test]
    fn own_prefix_names_this_process() {
        let prefix = own_prefix();
        let name = format!("{prefix}0-h0");
        assert_eq!(owner(&name), Some((pid_namespace(), std::process::id())));
        assert_ne!(pid_namespace(), 0, "/proc/self/ns/pid was not read");
    }

    #[test]
    fn namespace_link_parsed() {
        assert_eq!(parse_namespace_link("pid:[4026531836]"), Some(4026531836));
        assert_eq!(parse_namespace_link("net:[4026531836]"), None);
        assert_eq!(parse_namespace_link("pid:[x]"), None);
    }

    #[test]
    fn link_info_parses_veth_line() {
        let line =
            "2: eth0@if3: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state UP \
                    mode DEFAULT group default qlen 1000\\    link/ether 26:e8:67:97:84:1f \
                    brd ff:ff:ff:ff:ff:ff link-netns msdlab-4026531836-1-0-sw\n";
        let info = parse_link_info(line).expect("line parses");
        assert_eq!(info.index, 2);
        assert_eq!(info.mac, "26:e8:67:97:84:1f");
    }

    #[test]
    fn link_info_rejects_garbage() {
        assert!(parse_link_info("").is_none());
        assert!(parse_link_info("eth0 link/ether").is_none());
    }

    #[test]
    fn link_local_skips_tentative() {
        let tentative =
            "2: eth0    inet6 fe80::1/64 scope link tentative \\       valid_lft forever\n";
        assert_eq!(parse_usable_link_local(tentative), None);

        let usable =
            "2: eth0    inet6 fe80::24bc:20ff:fee2:753d/64 scope link \\       valid_lft forever\n";
        let expected: Ipv6Addr = "fe80::24bc:20ff:fee2:753d".parse().expect("valid address");
        assert_eq!(parse_usable_link_local(usable), Some(expected));
    }

    #[test]
    fn link_local_ignores_other_scopes() {
        let global = "2: eth0    inet6 2001:db8::1/64 scope global \\       valid_lft forever\n";
        assert_eq!(parse_usable_link_local(global), None);
        assert_eq!(parse_usable_link_local(""), None);
    }
}
