//! A `tower::discover` change stream of live instances, for `tower::balance` and any other
//! consumer of `Change::Insert` / `Change::Remove`.
//!
//! Only instances that pass the filter (by default: serving) are inserted. An instance that
//! stops serving, changes its URL or restarts is removed or re-inserted, so a balancer never
//! sends new requests to a draining instance.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use msd_engine::{Event, Health, InstanceInfo};
use tower::discover::Change;

use crate::{Discoverer, Error, Events};

/// A stream of `tower::discover::Change` values built from a discoverer's events; it implements
/// `tower::discover::Discover` through tower's blanket implementation for such streams.
pub struct DiscoverStream<S> {
    events: Events,
    pending: VecDeque<Change<String, S>>,
    inserted: HashSet<String>,
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
            pending: VecDeque::new(),
            inserted: HashSet::new(),
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
                self.inserted.insert(info.id.clone());
                self.pending.push_back(Change::Insert(info.id.clone(), service));
            }
            None => self.remove(&info.id),
        }
    }

    fn remove(&mut self, id: &str) {
        if self.inserted.remove(id) {
            self.pending.push_back(Change::Remove(id.to_owned()));
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Up(info) => self.insert(&info),
            Event::Changed { previous, current } => {
                let eligible = (self.filter)(&current);
                let known = self.inserted.contains(&current.id);
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
            match Pin::new(&mut self.events).poll_next(cx) {
                Poll::Ready(Some(event)) => self.apply(event),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

// `DiscoverStream` holds no self-references.
impl<S> Unpin for DiscoverStream<S> {}
