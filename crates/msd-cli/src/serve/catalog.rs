//! The server's view of the discoverer: the current table, a numbered history of changes for
//! server-sent events, and a broadcast of new changes.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use msd::{DownReason, Event, InstanceInfo};
use tokio::sync::broadcast;

/// Changes kept for clients that reconnect with `Last-Event-ID`.
pub(crate) const HISTORY: usize = 1024;

/// Changes buffered per event-stream client; a client that falls further behind gets a fresh
/// snapshot instead, and the lost changes are counted.
pub(crate) const CLIENT_BUFFER: usize = 256;

/// One numbered change of the table.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    pub(crate) sequence: u64,
    pub(crate) kind: ChangeKind,
    pub(crate) instance: InstanceInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Up,
    Changed,
    Down(DownReason),
}

impl ChangeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            ChangeKind::Up => "up",
            ChangeKind::Changed => "changed",
            ChangeKind::Down(_) => "down",
        }
    }
}

/// The starting point of a new event-stream client.
#[derive(Debug)]
pub(crate) enum Start {
    /// The whole table, read page by page with [`Catalog::page`]. Every change up to `sequence`
    /// is in it, and later ones may be too.
    Snapshot { sequence: u64 },
    /// The changes after the client's last event, which are all still in the history.
    Resume { changes: Vec<Arc<Change>> },
}

#[derive(Debug, Default)]
struct Inner {
    instances: BTreeMap<String, InstanceInfo>,
    sequence: u64,
    history: VecDeque<Arc<Change>>,
}

#[derive(Debug)]
pub(crate) struct Catalog {
    inner: Mutex<Inner>,
    sender: broadcast::Sender<Arc<Change>>,
    /// Distinguishes this server process's event ids from an earlier one's, so that a client
    /// reconnecting after a restart gets a snapshot rather than a resume from the wrong history.
    epoch: u64,
}

impl Catalog {
    pub(crate) fn new(initial: Vec<InstanceInfo>) -> Self {
        let instances = initial.into_iter().map(|info| (info.id.clone(), info)).collect();
        let (sender, _) = broadcast::channel(CLIENT_BUFFER);
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| u64::try_from(since.as_micros()).unwrap_or(u64::MAX));
        Catalog { inner: Mutex::new(Inner { instances, ..Inner::default() }), sender, epoch }
    }

    /// Formats an event id: this process's epoch and the change's sequence number.
    pub(crate) fn event_id(&self, sequence: u64) -> String {
        format!("{}-{sequence}", self.epoch)
    }

    /// Reads a `Last-Event-ID` header value; ids of another server process yield `None`.
    pub(crate) fn parse_event_id(&self, text: &str) -> Option<u64> {
        let (epoch, sequence) = text.trim().split_once('-')?;
        if epoch.parse::<u64>().ok()? != self.epoch {
            return None;
        }
        sequence.parse().ok()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data: every update is one insert or
        // remove followed by a push.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies a discoverer event and broadcasts it as a numbered change.
    pub(crate) fn apply(&self, event: Event) -> Arc<Change> {
        let mut inner = self.lock();
        inner.sequence += 1;
        let (kind, instance) = match event {
            Event::Up(info) => (ChangeKind::Up, info),
            Event::Changed { current, .. } => (ChangeKind::Changed, current),
            Event::Down { instance, reason } => (ChangeKind::Down(reason), instance),
        };
        match kind {
            ChangeKind::Down(_) => inner.instances.remove(&instance.id),
            ChangeKind::Up | ChangeKind::Changed => inner.instances.insert(instance.id.clone(), instance.clone()),
        };
        let change = Arc::new(Change { sequence: inner.sequence, kind, instance });
        if inner.history.len() == HISTORY {
            inner.history.pop_front();
        }
        inner.history.push_back(Arc::clone(&change));
        // Sent under the lock, so a subscriber that took the lock receives each change exactly once:
        // either in its starting state or from the channel.
        let _ = self.sender.send(Arc::clone(&change));
        change
    }

    /// Returns where a client starts and a receiver for what follows, atomically.
    pub(crate) fn subscribe(&self, last_event_id: Option<u64>) -> (Start, broadcast::Receiver<Arc<Change>>) {
        let inner = self.lock();
        let receiver = self.sender.subscribe();
        let resume = last_event_id.and_then(|last| {
            if last > inner.sequence {
                return None;
            }
            if last == inner.sequence {
                return Some(Vec::new());
            }
            let oldest = inner.history.front()?.sequence;
            (last + 1 >= oldest).then(|| inner.history.iter().filter(|change| change.sequence > last).cloned().collect())
        });
        let start = match resume {
            Some(changes) => Start::Resume { changes },
            None => Start::Snapshot { sequence: inner.sequence },
        };
        (start, receiver)
    }

    /// Returns the sequence number of the latest change.
    pub(crate) fn sequence(&self) -> u64 {
        self.lock().sequence
    }

    /// Returns up to `limit` instances in id order, starting after the id `after` (from the
    /// first when `None`).
    ///
    /// Event streams read a snapshot this way instead of copying the whole table, so a client
    /// costs one page of memory however large the table is.
    pub(crate) fn page(&self, after: Option<&str>, limit: usize) -> Vec<InstanceInfo> {
        let inner = self.lock();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        inner.instances.range::<str, _>((start, Bound::Unbounded)).take(limit).map(|(_, info)| info.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> InstanceInfo {
        crate::testing::instance_info(id, "http://a:1")
    }

    #[test]
    fn resume_returns_missed_changes() {
        let catalog = Catalog::new(vec![]);
        catalog.apply(Event::Up(info("a")));
        catalog.apply(Event::Up(info("b")));
        catalog.apply(Event::Down { instance: info("a"), reason: DownReason::Logoff });
        let (start, _) = catalog.subscribe(Some(1));
        let Start::Resume { changes } = start else { panic!("expected resume") };
        let sequences: Vec<u64> = changes.iter().map(|change| change.sequence).collect();
        assert_eq!(sequences, [2, 3]);
    }

    /// Reads the whole table the way an event stream does.
    fn all_pages(catalog: &Catalog, limit: usize) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let page = catalog.page(ids.last().map(String::as_str), limit);
            let done = page.len() < limit;
            ids.extend(page.into_iter().map(|info| info.id));
            if done {
                return ids;
            }
        }
    }

    #[test]
    fn unknown_or_future_id_gets_snapshot() {
        let catalog = Catalog::new(vec![info("x")]);
        catalog.apply(Event::Up(info("a")));
        for last in [None, Some(99)] {
            let (start, _) = catalog.subscribe(last);
            let Start::Snapshot { sequence } = start else { panic!("expected snapshot for {last:?}") };
            assert_eq!(sequence, 1);
        }
        assert_eq!(all_pages(&catalog, 10), ["a", "x"]);
    }

    #[test]
    fn pages_cover_table_once() {
        let catalog = Catalog::new((0..10).map(|number| info(&format!("i{number}"))).collect());
        for limit in [1, 3, 5, 10, 11] {
            let expected: Vec<String> = (0..10).map(|number| format!("i{number}")).collect();
            assert_eq!(all_pages(&catalog, limit), expected, "pages of {limit}");
        }
        assert!(catalog.page(Some("i9"), 4).is_empty(), "nothing after the last id");
        assert_eq!(catalog.page(Some("i45"), 1)[0].id, "i5", "an id that is gone still marks a place");
    }

    #[test]
    fn id_older_than_history_gets_snapshot() {
        let catalog = Catalog::new(vec![]);
        for number in 0..(HISTORY + 10) {
            catalog.apply(Event::Up(info(&format!("i{number}"))));
        }
        let (start, _) = catalog.subscribe(Some(3));
        assert!(matches!(start, Start::Snapshot { .. }));
        let (start, _) = catalog.subscribe(Some(20));
        assert!(matches!(start, Start::Resume { .. }));
    }

    /// A client that never reads must not hold up changes: the broadcast overwrites its oldest
    /// entries and reports how many it lost, which the event stream answers with a snapshot.
    #[test]
    fn stalled_subscriber_never_blocks() {
        let catalog = Catalog::new(vec![]);
        let (_, mut stalled) = catalog.subscribe(None);
        for number in 0..(CLIENT_BUFFER * 2) {
            catalog.apply(Event::Up(info(&format!("i{number}"))));
        }
        assert_eq!(catalog.sequence(), (CLIENT_BUFFER * 2) as u64, "every change was applied");
        let lost = match stalled.try_recv() {
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(lost)) => lost,
            other => panic!("expected a lag report, got {other:?}"),
        };
        assert_eq!(lost, CLIENT_BUFFER as u64);
    }

    #[test]
    fn event_ids_of_other_processes_ignored() {
        let catalog = Catalog::new(vec![]);
        let id = catalog.event_id(7);
        assert_eq!(catalog.parse_event_id(&id), Some(7));
        assert_eq!(catalog.parse_event_id("7"), None, "an id without epoch");
        assert_eq!(catalog.parse_event_id(&format!("{}-7", catalog.epoch + 1)), None, "another process");
    }

    #[test]
    fn down_removes_from_table() {
        let catalog = Catalog::new(vec![info("a")]);
        catalog.apply(Event::Down { instance: info("a"), reason: DownReason::Expired });
        assert!(catalog.page(None, 10).is_empty());
    }
}
