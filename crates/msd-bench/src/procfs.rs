//! Counters read from `/proc`: UDP errors and interface bytes of a network namespace, and the
//! resident memory of a process.

use std::io;
use std::process::Command;
use std::time::Duration;

use msd_lab::Host;

/// UDP counters of one network namespace, IPv4 and IPv6 added together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams delivered to a socket.
    pub in_datagrams: u64,
    /// Datagrams dropped on receive, for any reason, `rcvbuf_errors` included.
    pub in_errors: u64,
    /// Datagrams dropped because the socket's receive buffer was full.
    pub rcvbuf_errors: u64,
}

impl UdpCounters {
    /// Returns the growth of every counter from `earlier` to `self`.
    pub fn since(&self, earlier: &UdpCounters) -> UdpCounters {
        UdpCounters {
            in_datagrams: self.in_datagrams.saturating_sub(earlier.in_datagrams),
            in_errors: self.in_errors.saturating_sub(earlier.in_errors),
            rcvbuf_errors: self.rcvbuf_errors.saturating_sub(earlier.rcvbuf_errors),
        }
    }

    /// Parses `/proc/net/snmp` (the `Udp:` header and value lines) and `/proc/net/snmp6`
    /// (`Udp6InDatagrams 12` lines).
    pub fn parse(snmp: &str, snmp6: &str) -> UdpCounters {
        let mut counters = UdpCounters::default();
        let mut udp_lines = snmp.lines().filter(|line| line.starts_with("Udp: "));
        if let (Some(names), Some(values)) = (udp_lines.next(), udp_lines.next()) {
            for (name, value) in names
                .split_whitespace()
                .zip(values.split_whitespace())
                .skip(1)
            {
                counters.add(name, value);
            }
        }
        for line in snmp6.lines() {
            let mut fields = line.split_whitespace();
            if let (Some(name), Some(value)) = (fields.next(), fields.next()) {
                if let Some(name) = name.strip_prefix("Udp6") {
                    counters.add(name, value);
                }
            }
        }
        counters
    }

    fn add(&mut self, name: &str, value: &str) {
        let value: u64 = value.parse().unwrap_or(0);
        match name {
            "InDatagrams" => self.in_datagrams += value,
            "InErrors" => self.in_errors += value,
            "RcvbufErrors" => self.rcvbuf_errors += value,
            _ => {}
        }
    }

    /// Reads the counters of the network namespace this process's main thread is in.
    pub fn read_own() -> io::Result<UdpCounters> {
        let snmp = std::fs::read_to_string("/proc/self/net/snmp")?;
        let snmp6 = std::fs::read_to_string("/proc/self/net/snmp6").unwrap_or_default();
        Ok(UdpCounters::parse(&snmp, &snmp6))
    }

    /// Reads the counters of a lab host's namespace.
    pub fn read(host: &Host) -> io::Result<UdpCounters> {
        let snmp = read_file_in(host, "/proc/net/snmp")?;
        let snmp6 = read_file_in(host, "/proc/net/snmp6").unwrap_or_default();
        Ok(UdpCounters::parse(&snmp, &snmp6))
    }
}

/// Byte and packet counters of one interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

impl InterfaceCounters {
    /// Parses the line of `interface` in `/proc/net/dev`. Bytes there are Ethernet frames
    /// without the frame check sequence.
    pub fn parse(dev: &str, interface: &str) -> Option<InterfaceCounters> {
        let line = dev
            .lines()
            .find(|line| line.trim_start().starts_with(&format!("{interface}:")))?;
        let (_, numbers) = line.split_once(':')?;
        let values: Vec<u64> = numbers
            .split_whitespace()
            .map(|field| field.parse().unwrap_or(0))
            .collect();
        Some(InterfaceCounters {
            rx_bytes: *values.first()?,
            rx_packets: *values.get(1)?,
            tx_bytes: *values.get(8)?,
            tx_packets: *values.get(9)?,
        })
    }

    /// Reads the counters of a lab host's interface.
    pub fn read(host: &Host, interface: &str) -> io::Result<InterfaceCounters> {
        let dev = read_file_in(host, "/proc/net/dev")?;
        InterfaceCounters::parse(&dev, interface).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("interface {interface} not found in /proc/net/dev"),
            )
        })
    }

    pub fn since(&self, earlier: &InterfaceCounters) -> InterfaceCounters {
        InterfaceCounters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }
}

/// Reads a file from inside a lab host's namespace with `cat`.
///
/// `/proc/net` shows the namespace of a process's main thread, so a thread that entered a
/// namespace cannot read that namespace's counters there. A process started in the namespace
/// can.
fn read_file_in(host: &Host, path: &str) -> io::Result<String> {
    let output = run_in(host, "cat", &[path])?;
    Ok(output)
}

/// Runs a program inside a lab host's namespace and returns its standard output.
pub fn run_in(host: &Host, program: &str, args: &[&str]) -> io::Result<String> {
    let mut command: Command = host.command(program);
    command.args(args);
    let output = command.output()?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(io::Error::other(format!(
            "{program} {} failed in {}: {stderr}",
            args.join(" "),
            host.name()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Returns the resident set size of a process in KiB, from `VmRSS` in `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    parse_rss(&std::fs::read_to_string(format!("/proc/{pid}/status"))?)
}

/// Returns the CPU time all threads of a process have used, from the first field (nanoseconds
/// on the CPU) of each `/proc/PID/task/TID/schedstat`.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let mut nanos: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread that ended since the listing has no file any more.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        nanos += text
            .split_whitespace()
            .next()
            .and_then(|field| field.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(nanos))
}

/// Returns the resident set size of this process in KiB.
pub fn own_rss_kib() -> io::Result<u64> {
    parse_rss(&std::fs::read_to_string("/proc/self/status")?)
}

fn parse_rss(status: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no VmRSS line in the process status",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "\
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 100 2 7 50 5 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 9 9 9 9 9 9 9 9 9
";

    const SNMP6: &str = "\
Udp6InDatagrams                 	1000
Udp6NoPorts                     	0
Udp6InErrors                    	30
Udp6RcvbufErrors                	20
UdpLite6InDatagrams             	99
";

    #[test]
    fn udp_counters_add_both_families() {
        let counters = UdpCounters::parse(SNMP, SNMP6);
        assert_eq!(
            counters,
            UdpCounters {
                in_datagrams: 1100,
                in_errors: 37,
                rcvbuf_errors: 25
            }
        );
    }

    #[test]
    fn udp_counters_since() {
        let later = UdpCounters {
            in_datagrams: 10,
            in_errors: 4,
            rcvbuf_errors: 3,
        };
        let earlier = UdpCounters {
            in_datagrams: 4,
            in_errors: 1,
            rcvbuf_errors: 3,
        };
        assert_eq!(
            later.since(&earlier),
            UdpCounters {
                in_datagrams: 6,
                in_errors: 3,
                rcvbuf_errors: 0
            }
        );
    }

    #[test]
    fn interface_counters_by_name() {
        let dev = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    0    0    0     0          0        12     7000      50    0    0    0     0       0          0
";
        let counters = InterfaceCounters::parse(dev, "eth0").expect("eth0 is listed");
        assert_eq!(
            counters,
            InterfaceCounters {
                rx_bytes: 5000,
                rx_packets: 40,
                tx_bytes: 7000,
                tx_packets: 50
            }
        );
        assert_eq!(InterfaceCounters::parse(dev, "eth1"), None);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\tmsd\nVmPeak:\t  9000 kB\nVmRSS:\t    4321 kB\n";
        assert_eq!(parse_rss(status).expect("VmRSS present"), 4321);
    }
}
