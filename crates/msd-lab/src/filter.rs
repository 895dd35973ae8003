//! nftables rulesets for loss and partitions.
//!
//! Each host gets one table, `netdev msdlab`, with an ingress and an egress chain per lab
//! interface. The netdev family is used instead of `inet` because a drop in the `inet`
//! output hook fails `sendto` with `EPERM`, so the program under test would see an error
//! where a real network loses the datagram silently. A drop in the egress hook is silent.

/// Name of the table in every host namespace.
pub(crate) const TABLE: &str = "msdlab";

/// Loss and partition settings that one host's table enforces.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct FilterState {
    /// Percentage (0 to 100) of UDP packets dropped in each direction.
    pub(crate) udp_loss_percent: u8,
    /// MAC addresses of the interfaces of hosts this host is partitioned from.
    pub(crate) blocked_macs: Vec<String>,
}

impl FilterState {
    /// Returns whether the state drops nothing, so the table can be removed.
    pub(crate) fn is_empty(&self) -> bool {
        self.udp_loss_percent == 0 && self.blocked_macs.is_empty()
    }
}

/// Builds an `nft -f` script that replaces the lab table with one enforcing `state` on
/// `interfaces`, or only removes the table when `state` drops nothing.
///
/// Declaring the table before deleting it makes the delete succeed whether or not the
/// table exists, and `nft -f` applies the whole script as one transaction.
pub(crate) fn ruleset(interfaces: &[String], state: &FilterState) -> String {
    let mut lines = vec![
        format!("table netdev {TABLE}"),
        format!("delete table netdev {TABLE}"),
    ];
    if state.is_empty() {
        return lines.join("\n") + "\n";
    }

    lines.push(format!("table netdev {TABLE} {{"));
    lines.push("\tchain partition {".to_owned());
    if !state.blocked_macs.is_empty() {
        let macs = state.blocked_macs.join(", ");
        lines.push(format!("\t\tether saddr {{ {macs} }} drop"));
        lines.push(format!("\t\tether daddr {{ {macs} }} drop"));
    }
    lines.push("\t}".to_owned());

    lines.push("\tchain loss {".to_owned());
    match state.udp_loss_percent {
        0 => {}
        100.. => lines.push("\t\tmeta l4proto udp drop".to_owned()),
        percent => lines.push(format!(
            "\t\tmeta l4proto udp numgen random mod 100 < {percent} drop"
        )),
    }
    lines.push("\t}".to_owned());

    for interface in interfaces {
        for hook in ["ingress", "egress"] {
            lines.push(format!("\tchain {hook}_{interface} {{"));
            lines.push(format!(
                "\t\ttype filter hook {hook} device \"{interface}\" priority 0; policy accept;"
            ));
            lines.push("\t\tjump partition".to_owned());
            lines.push("\t\tjump loss".to_owned());
            lines.push("\t}".to_owned());
        }
    }
    lines.push("}".to_owned());
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces() -> Vec<String> {
        vec!["eth0".to_owned(), "eth1".to_owned()]
    }

    #[test]
    fn empty_state_only_removes_table() {
        let script = ruleset(&interfaces(), &FilterState::default());
        assert_eq!(script, "table netdev msdlab\ndelete table netdev msdlab\n");
    }

    #[test]
    fn partial_loss_uses_random_numbers() {
        let state = FilterState {
            udp_loss_percent: 30,
            blocked_macs: Vec::new(),
        };
        let script = ruleset(&interfaces(), &state);
        assert!(
            script.contains("meta l4proto udp numgen random mod 100 < 30 drop"),
            "{script}"
        );
        assert!(!script.contains("ether saddr"), "{script}");
    }

    #[test]
    fn full_loss_drops_every_udp_packet() {
        let state = FilterState {
            udp_loss_percent: 100,
            blocked_macs: Vec::new(),
        };
        let script = ruleset(&interfaces(), &state);
        assert!(script.contains("\t\tmeta l4proto udp drop\n"), "{script}");
        assert!(!script.contains("numgen"), "{script}");
    }

    #[test]
    fn partition_blocks_both_mac_directions() {
        let state = FilterState {
            udp_loss_percent: 0,
            blocked_macs: vec![
                "02:00:00:00:00:01".to_owned(),
                "02:00:00:00:00:02".to_owned(),
            ],
        };
        let script = ruleset(&interfaces(), &state);
        let set = "{ 02:00:00:00:00:01, 02:00:00:00:00:02 }";
        assert!(
            script.contains(&format!("ether saddr {set} drop")),
            "{script}"
        );
        assert!(
            script.contains(&format!("ether daddr {set} drop")),
            "{script}"
        );
    }

    #[test]
    fn every_interface_gets_both_hooks() {
        let state = FilterState {
            udp_loss_percent: 5,
            blocked_macs: Vec::new(),
        };
        let script = ruleset(&interfaces(), &state);
        for interface in interfaces() {
            for hook in ["ingress", "egress"] {
                let declaration = format!("type filter hook {hook} device \"{interface}\"");
                assert!(script.contains(&declaration), "{script}");
            }
        }
    }
}
