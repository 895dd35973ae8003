use std::collections::BTreeMap;

use msd_wire::seed::SeedKind;

/// Packet counts by message kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCounts {
    pub discover: u64,
    pub announce: u64,
    pub logoff: u64,
    /// Valid packets of a kind msd does not act on.
    pub other: u64,
}

impl KindCounts {
    pub(crate) fn count(&mut self, kind: SeedKind) {
        let counter = match kind {
            SeedKind::Discover => &mut self.discover,
            SeedKind::Announce => &mut self.announce,
            SeedKind::Logoff => &mut self.logoff,
            SeedKind::Other(_) => &mut self.other,
        };
        *counter += 1;
    }

    pub fn total(&self) -> u64 {
        self.discover + self.announce + self.logoff + self.other
    }
}

/// Counters an engine keeps about its traffic. All counts start at zero and only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Valid packets received, by kind.
    pub received: KindCounts,
    /// Packets queued for sending, by kind.
    pub sent: KindCounts,
    /// Datagrams dropped, by reason: a decode error's [`msd_wire::DecodeError::kind`], or one of
    /// the engine's own reasons such as `instance_limit` or `no_host`.
    pub rejected: BTreeMap<&'static str, u64>,
}

impl Stats {
    pub(crate) fn reject(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }

    /// Returns the number of datagrams dropped for any reason.
    pub fn rejected_total(&self) -> u64 {
        self.rejected.values().sum()
    }
}
