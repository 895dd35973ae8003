//! A `tower::discover` change stream of live instances, for `tower::balance` and any other
//! consumer of `Change::Insert` / `Change::Remove`.
//!
//! Only instances that pass the filter (by default: serving) are inserted. An instance that
//! stops serving, changes its URL or restarts is removed or re-inserted, so a balancer never
//! sends new requests to a draining instance.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use msd_engine::{Event, Health, InstanceInfo};
use tower::discover::Change;

use crate::discoverer::TableReader;
use crate::{Discoverer, Error, Events};

/// A read of the current table in progress, after events were lost.
type TableRead = Pin<Box<dyn Future<Output = Result<Vec<InstanceInfo>, Error>> + Send>>;

/// A stream of `tower::discover::Change` values built from a discoverer's events; it implements
/// `tower::discover::Discover` through tower's blanket implementation for such streams.
///
/// A consumer that falls more than [`crate::EVENT_BUFFER`] events behind (tower's balancer reads
/// the stream only when it is polled for readiness) loses events. The stream then reads the
/// current table and sends the inserts and removals that make up the difference, so no removed
/// instance stays in the consumer's set.
pub struct DiscoverStream<S> {
    events: Events,
    reader: TableReader,
    /// Events lost so far, as [`Events::missed`] reported them.
    missed: u64,
    resync: Option<TableRead>,
    pending: VecDeque<Change<String, S>>,
    /// Inserted ids with the URL and incarnation their service was made for.
    inserted: HashMap<String, (String, Option<u64>)>,
    make_service: MakeService<S>,
    filter: Box<dyn Fn(&InstanceInfo) -> bool + Send>,
}

type MakeService<S> = Box<dyn FnMut(&InstanceInfo) -> Option<S> + Send>;

impl<S> std::fmt::Debug for DiscoverStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoverStream").field("inserted", &self.inserted.len()).field("pending", &self.pending.len()).finish()
    }
}

impl Discoverer {
    /// Returns a `tower::discover` stream of the serving instances, each turned into a service
    /// by `make_service` (which may return `None` to skip an instance, for example one whose URL
    /// it cannot use).
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn discover<S, F>(&self, make_service: F) -> Result<DiscoverStream<S>, Error>
    where
        F: FnMut(&InstanceInfo) -> Option<S> + Send + 'static,
    {
        self.discover_filtered(|info| info.health == Health::Serving, make_service).await
    }

    /// Like [`Discoverer::discover`], with a filter of the caller's choice, such as
    /// [`crate::balance::Balancer::eligible`].
    ///
    /// # Errors
    ///
    /// Returns [`Error::Stopped`] when the background task has ended.
    pub async fn discover_filtered<S, P, F>(&self, filter: P, make_service: F) -> Result<DiscoverStream<S>, Error>
    where
        P: Fn(&InstanceInfo) -> bool + Send + 'static,
        F: FnMut(&InstanceInfo) -> Option<S> + Send + 'static,
    {
        let (instances, events) = self.watch().await?;
        let mut stream = DiscoverStream {
            events,
            reader: self.table_reader(),
            missed: 0,
            resync: None,
            pending: VecDeque::new(),
            inserted: HashMap::new(),
            make_service: Box::new(make_service),
            filter: Box::new(filter),
        };
        for info in &instances {
            stream.insert(info);
        }
        Ok(stream)
    }
}

impl<S> DiscoverStream<S> {
    fn insert(&mut self, info: &InstanceInfo) {
        if !(self.filter)(info) {
            return self.remove(&info.id);
        }
        match (self.make_service)(info) {
            Some(service) => {
                self.inserted.insert(info.id.clone(), (info.url.clone(), info.incarnation));
                self.pending.push_back(Change::Insert(info.id.clone(), service));
            }
            None => self.remove(&info.id),
        }
    }

    fn remove(&mut self, id: &str) {
        if self.inserted.remove(id).is_some() {
            self.pending.push_back(Change::Remove(id.to_owned()));
        }
    }

    /// Brings the inserted set in line with the current table after lost events.
    fn resynchronise(&mut self, table: &[InstanceInfo]) {
        let live: HashMap<&str, &InstanceInfo> = table.iter().map(|info| (info.id.as_str(), info)).collect();
        let gone: Vec<String> = self.inserted.keys().filter(|id| !live.contains_key(id.as_str())).cloned().collect();
        for id in gone {
            self.remove(&id);
        }
        for info in table {
            let current = self.inserted.get(&info.id);
            let unchanged = current.is_some_and(|(url, incarnation)| *url == info.url && *incarnation == info.incarnation);
            if !unchanged || !(self.filter)(info) {
                self.insert(info);
            }
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Up(info) => self.insert(&info),
            Event::Changed { previous, current } => {
                let eligible = (self.filter)(&current);
                let known = self.inserted.contains_key(&current.id);
                let replaced = previous.url != current.url || previous.incarnation != current.incarnation;
                // A load or metadata change keeps the existing service.
                if !eligible || !known || replaced {
                    self.insert(&current);
                }
            }
            Event::Down { instance, .. } => self.remove(&instance.id),
        }
    }
}

impl<S> Stream for DiscoverStream<S> {
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if let Some(resync) = self.resync.as_mut() {
                match resync.as_mut().poll(cx) {
                    Poll::Ready(Ok(table)) => {
                        self.resync = None;
                        self.resynchronise(&table);
                        continue;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            }
            match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(event)) => {
                    if self.events.missed() > self.missed {
                        // The event came after a gap; the table read next covers it too.
                        self.missed = self.events.missed();
                        self.resync = Some(Box::pin(self.reader.clone().instances()));
                        continue;
                    }
                    self.apply(event);
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// `DiscoverStream` holds no self-references.
impl<S> Unpin for DiscoverStream<S> {}
