//! Observers that run in a lab host and log, with the instant each arrived, what a msd discoverer
//! or an mdns-sd browser reports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mdns_sd::{ServiceDaemon, ServiceEvent};
use msd::{Discoverer, DiscovererBuilder, Event};
use msd_lab::Host;
use tokio::sync::oneshot;

use crate::lab::{self, block_on_in};

/// A list of events that grows from one thread and is searched from others.
#[derive(Debug)]
pub struct EventLog<T> {
    events: Mutex<Vec<T>>,
    changed: Condvar,
}

impl<T: Clone> EventLog<T> {
    pub fn new() -> Self {
        EventLog {
            events: Mutex::new(Vec::new()),
            changed: Condvar::new(),
        }
    }

    pub fn push(&self, event: T) {
        self.lock().push(event);
        self.changed.notify_all();
    }

    /// Waits up to `timeout` for an event, logged before or during the call, that `predicate`
    /// accepts, and returns the first such event.
    pub fn wait_for(&self, timeout: Duration, mut predicate: impl FnMut(&T) -> bool) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut events = self.lock();
        let mut next = 0;
        loop {
            while let Some(event) = events.get(next) {
                next += 1;
                if predicate(event) {
                    return Some(event.clone());
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return None;
            }
            events = self
                .changed
                .wait_timeout(events, remaining)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<T>> {
        self.events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Clone> Default for EventLog<T> {
    fn default() -> Self {
        EventLog::new()
    }
}

/// An Up or Down event of a msd discoverer, with the instant it arrived.
#[derive(Debug, Clone)]
pub struct MsdEvent {
    pub up: bool,
    pub id: String,
    /// When the event reached the observer.
    pub at: Instant,
    /// When the discoverer last received a packet of the instance.
    pub last_seen: Instant,
}

/// A msd discoverer in a lab host, logging every Up and Down.
#[derive(Debug)]
pub struct MsdWatcher {
    pub log: Arc<EventLog<MsdEvent>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl MsdWatcher {
    /// Starts `builder` in `host` and waits until it has joined an interface.
    ///
    /// # Errors
    ///
    /// Returns why the discoverer failed to start.
    pub fn start(host: &Host, builder: DiscovererBuilder) -> Result<MsdWatcher, String> {
        let log = Arc::new(EventLog::new());
        let (stop, stopped) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_log = Arc::clone(&log);
        let thread = block_on_in(host, move || async move {
            let discoverer = match builder.start().await {
                Ok(discoverer) => discoverer,
                Err(error) => {
                    let message = format!("failed to start the discoverer: {error}");
                    let _ = ready_tx.send(Err(message.clone()));
                    return Err(message);
                }
            };
            let _ = ready_tx.send(Ok(()));
            log_events(&discoverer, &thread_log, stopped).await;
            discoverer.shutdown().await;
            Ok(())
        });
        let mut watcher = MsdWatcher {
            log,
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(watcher),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                watcher.finish();
                Err("the discoverer did not start within 10 s".to_owned())
            }
        }
    }

    /// Waits for the Up of `id` and returns when it arrived.
    pub fn wait_up(&self, id: &str, timeout: Duration) -> Option<Instant> {
        self.log
            .wait_for(timeout, |event| event.up && event.id == id)
            .map(|event| event.at)
    }

    /// Waits for the Down of `id` and returns it.
    pub fn wait_down(&self, id: &str, timeout: Duration) -> Option<MsdEvent> {
        self.log
            .wait_for(timeout, |event| !event.up && event.id == id)
    }

    /// Stops the discoverer and waits for its thread.
    pub fn finish(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if let Err(error) = lab::join(thread, "the discoverer thread").and_then(|result| result)
            {
                eprintln!("msd-bench: {error}");
            }
        }
    }
}

impl Drop for MsdWatcher {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn log_events(
    discoverer: &Discoverer,
    log: &EventLog<MsdEvent>,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut events = discoverer.events();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            event = events.next() => {
                let at = Instant::now();
                match event {
                    Some(Event::Up(info)) => log.push(MsdEvent { up: true, id: info.id, at, last_seen: info.last_seen }),
                    Some(Event::Down { instance, .. }) => {
                        log.push(MsdEvent { up: false, id: instance.id, at, last_seen: instance.last_seen });
                    }
                    Some(Event::Changed { .. }) => {}
                    None => return,
                }
            }
        }
    }
}

/// A resolution or removal an mdns-sd browser reported, with the instant it arrived.
#[derive(Debug, Clone)]
pub struct MdnsEvent {
    pub resolved: bool,
    /// The instance's full name, such as `lat-1._msdbench._udp.local.`.
    pub fullname: String,
    pub at: Instant,
}

/// An mdns-sd daemon browsing one service type in a lab host, logging every resolved and removed
/// instance.
#[derive(Debug)]
pub struct MdnsBrowser {
    pub log: Arc<EventLog<MdnsEvent>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl MdnsBrowser {
    /// Starts a daemon in `host` that browses `service_type`.
    pub fn start(host: &Host, service_type: &'static str) -> MdnsBrowser {
        let log = Arc::new(EventLog::new());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_log, thread_stop) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = host.run(move || {
            // The daemon's own thread is started from here, so it lives in the host's namespace.
            let daemon = ServiceDaemon::new()
                .map_err(|error| format!("failed to start the mdns-sd daemon: {error}"))?;
            let events = daemon
                .browse(service_type)
                .map_err(|error| format!("failed to browse {service_type}: {error}"))?;
            while !thread_stop.load(Ordering::Acquire) {
                let event = match events.recv_timeout(Duration::from_millis(50)) {
                    Ok(event) => event,
                    Err(mdns_sd::RecvTimeoutError::Timeout) => continue,
                    Err(mdns_sd::RecvTimeoutError::Disconnected) => break,
                };
                let at = Instant::now();
                match event {
                    ServiceEvent::ServiceResolved(info) => {
                        thread_log.push(MdnsEvent {
                            resolved: true,
                            fullname: info.get_fullname().to_owned(),
                            at,
                        });
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => thread_log.push(MdnsEvent {
                        resolved: false,
                        fullname,
                        at,
                    }),
                    _ => {}
                }
            }
            shut_down(&daemon);
            Ok(())
        });
        MdnsBrowser {
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// Waits for the first resolution of `fullname` and returns when it arrived.
    pub fn wait_resolved(&self, fullname: &str, timeout: Duration) -> Option<Instant> {
        self.log
            .wait_for(timeout, |event| {
                event.resolved && event.fullname == fullname
            })
            .map(|event| event.at)
    }

    /// Waits for the removal of `fullname` and returns when it arrived.
    pub fn wait_removed(&self, fullname: &str, timeout: Duration) -> Option<Instant> {
        self.log
            .wait_for(timeout, |event| {
                !event.resolved && event.fullname == fullname
            })
            .map(|event| event.at)
    }

    /// Stops the daemon and waits for its thread.
    pub fn finish(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            if let Err(error) =
                lab::join(thread, "the mdns-sd browser thread").and_then(|result| result)
            {
                eprintln!("msd-bench: {error}");
            }
        }
    }
}

impl Drop for MdnsBrowser {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Stops an mdns-sd daemon and waits up to a second for its thread to confirm.
pub fn shut_down(daemon: &ServiceDaemon) {
    if let Ok(status) = daemon.shutdown() {
        let _ = status.recv_timeout(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_finds_earlier_event() {
        let log = EventLog::new();
        log.push(1);
        log.push(2);
        assert_eq!(log.wait_for(Duration::ZERO, |value| *value == 2), Some(2));
    }

    #[test]
    fn wait_finds_later_event() {
        let log = Arc::new(EventLog::new());
        let writer = Arc::clone(&log);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.push(7);
        });
        assert_eq!(
            log.wait_for(Duration::from_secs(10), |value| *value == 7),
            Some(7)
        );
        thread.join().expect("the writer thread ends");
    }

    #[test]
    fn wait_times_out() {
        let log: EventLog<u8> = EventLog::new();
        assert_eq!(log.wait_for(Duration::from_millis(10), |_| true), None);
    }
}
