use std::collections::BTreeMap;

use msd_wire::native::NativeKind;
use msd_wire::seed::SeedKind;

/// Packet counts by message kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub discover: u64,
    pub announce: u64,
    pub logoff: u64,
    /// Direct DISCOVERs to one overdue instance (native PROBE, or a unicast seed DISCOVER).
    pub probe: u64,
    /// Valid packets of a kind msd does not act on.
    pub other: u64,
}

impl KindCounts {
    pub(crate) fn count_seed(&mut self, kind: SeedKind) {
        let counter = match kind {
            SeedKind::Discover => &mut self.discover,
            SeedKind::Announce => &mut self.announce,
            SeedKind::Logoff => &mut self.logoff,
            SeedKind::Other(_) => &mut self.other,
        };
        *counter += 1;
    }

    pub(crate) fn count_native(&mut self, kind: NativeKind) {
        let counter = match kind {
            NativeKind::Discover => &mut self.discover,
            NativeKind::Announce => &mut self.announce,
            NativeKind::Logoff => &mut self.logoff,
            NativeKind::Probe => &mut self.probe,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.discover + self.announce + self.logoff + self.probe + self.other
    }
}

/// Counters an engine keeps about its traffic. All counts start at zero and only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Valid seed packets received, by kind.
    pub received_seed: KindCounts,
    /// Valid native packets received, by kind.
    pub received_native: KindCounts,
    /// Seed packets queued for sending, by kind.
    pub sent_seed: KindCounts,
    /// Native packets queued for sending, by kind.
    pub sent_native: KindCounts,
    /// Datagrams dropped, by reason: a decode error's [`msd_wire::DecodeError::kind`], or one of
    /// the engine's own reasons (`instance_limit`, `no_host`, `rate_limit`, `too_large`,
    /// `stale_timestamp`, `old_incarnation`, `old_sequence`, `other_group`, ...).
    pub rejected: BTreeMap<&'static str, u64>,
}

/// Rejection reasons that mean a packet failed authentication: no tag, an unknown key, a tag
/// that does not match, or a timestamp outside the clock-skew window.
pub const AUTHENTICATION_REASONS: &[&str] = &["unauthenticated", "unknown_key", "bad_tag", "stale_timestamp"];

impl Stats {
    pub(crate) fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }

    /// Returns the number of datagrams dropped for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }

    /// Returns the datagrams that failed authentication (see [`AUTHENTICATION_REASONS`]).
    pub fn authentication_failures(&self) -> u64 {
        self.count_reasons(|reason| AUTHENTICATION_REASONS.contains(&reason))
    }

    /// Returns the datagrams that were not valid packets, authentication failures excluded.
    pub fn decode_failures(&self) -> u64 {
        self.count_reasons(|reason| {
            msd_wire::DecodeError::KINDS.contains(&reason) && !AUTHENTICATION_REASONS.contains(&reason)
        })
    }

    fn count_reasons(&self, wanted: impl Fn(&str) -> bool) -> u64 {
        self.rejected.iter().filter(|(reason, _)| wanted(reason)).map(|(_, count)| count).sum()
    }

    /// Returns the valid packets received of both protocols.
    pub fn received(&self) -> KindCounts {
        add(self.received_seed, self.received_native)
    }

    /// Returns the packets sent of both protocols.
    pub fn sent(&self) -> KindCounts {
        add(self.sent_seed, self.sent_native)
    }
}

fn add(a: KindCounts, b: KindCounts) -> KindCounts {
    KindCounts {
        discover: a.discover + b.discover,
        announce: a.announce + b.announce,
        logoff: a.logoff + b.logoff,
        probe: a.probe + b.probe,
        other: a.other + b.other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_classified() {
        let mut stats = Stats::default();
        for reason in ["truncated", "bad_tag", "stale_timestamp", "logged_off", "rate_limit", "unknown_key"] {
            stats.reject(reason);
        }
        assert_eq!(stats.decode_failures(), 1, "only truncated is a decode failure");
        assert_eq!(stats.authentication_failures(), 3);
        assert_eq!(stats.rejected_total(), 6);
    }
}
