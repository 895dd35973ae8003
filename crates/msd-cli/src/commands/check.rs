//! Health checks of the service next to `msd announce`: an HTTP GET or a TCP connect on an
//! interval, turned into the instance's announced health with rise and fall thresholds.

use std::time::Duration;

use msd::{Health, Instance};
use tracing::{debug, info, warn};

/// The target of a health check.
#[derive(Debug, Clone)]
pub(crate) enum Probe {
    /// A GET that must return 2xx or 3xx within the timeout.
    Http(reqwest::Url),
    /// A TCP connection that must open within the timeout.
    Tcp(String),
}

/// How to check and what to announce.
#[derive(Debug, Clone)]
pub(crate) struct CheckSettings {
    pub(crate) probe: Probe,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// Consecutive failures before the instance is marked unhealthy.
    pub(crate) fall: u32,
    /// Consecutive successes before an unhealthy instance is marked healthy again.
    pub(crate) rise: u32,
    /// Health announced while the check fails: failing or draining.
    pub(crate) unhealthy: Health,
    /// Health announced while the check passes.
    pub(crate) healthy: Health,
}

/// Counts consecutive results and decides when the announced health must change.
#[derive(Debug)]
pub(crate) struct Thresholds {
    fall: u32,
    rise: u32,
    passes: u32,
    failures: u32,
    healthy: bool,
    /// Until the first result the instance counts as unhealthy, and one passed check is enough.
    first: bool,
}

impl Thresholds {
    /// Starts unhealthy: a service that has not passed a check yet gets no traffic.
    pub(crate) fn new(fall: u32, rise: u32) -> Self {
        Thresholds { fall: fall.max(1), rise: rise.max(1), passes: 0, failures: 0, healthy: false, first: true }
    }

    /// Records one result; returns the new state when it flips.
    pub(crate) fn record(&mut self, passed: bool) -> Option<bool> {
        if std::mem::take(&mut self.first) && passed {
            self.passes = 1;
            self.healthy = true;
            return Some(true);
        }
        if passed {
            self.passes += 1;
            self.failures = 0;
            if !self.healthy && self.passes >= self.rise {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.healthy && self.failures >= self.fall {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }
}

/// Runs the check until the task is dropped, updating the instance's health on each flip.
pub(crate) async fn run(instance: &Instance, settings: CheckSettings) {
    // The check targets one local service: no redirects to elsewhere, no proxy from the
    // environment.
    let client = match reqwest::Client::builder()
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            warn!(%error, "failed to build the HTTP client; health check disabled");
            return;
        }
    };
    let mut thresholds = Thresholds::new(settings.fall, settings.rise);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Until the first pass the instance announces the unhealthy state without any threshold
    // crossing, so a check that cannot pass at all would otherwise stay silent.
    let mut passed_once = false;
    let mut last_startup_failure: Option<String> = None;
    loop {
        ticker.tick().await;
        let result = check(&client, &settings).await;
        match &result {
            Ok(()) => passed_once = true,
            Err(reason) if !passed_once && last_startup_failure.as_ref() != Some(reason) => {
                warn!(%reason, health = %settings.unhealthy, "health check has not passed yet; the instance stays unhealthy until it does");
                last_startup_failure = Some(reason.clone());
            }
            Err(reason) => debug!(%reason, "health check failed"),
        }
        let Some(healthy) = thresholds.record(result.is_ok()) else { continue };
        let health = if healthy { settings.healthy } else { settings.unhealthy };
        match &result {
            Ok(()) => info!(%health, "health check passes"),
            Err(reason) => warn!(%health, %reason, "health check fails"),
        }
        if let Err(error) = instance.set_health(health).await {
            warn!(%error, "failed to announce the new health");
        }
    }
}

async fn check(client: &reqwest::Client, settings: &CheckSettings) -> Result<(), String> {
    match &settings.probe {
        Probe::Http(url) => {
            let response = client.get(url.clone()).send().await.map_err(|error| error_chain(&error))?;
            let status = response.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(format!("{url} answered {status}"))
            }
        }
        Probe::Tcp(address) => {
            let connect = tokio::net::TcpStream::connect(address.as_str());
            match tokio::time::timeout(settings.timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => Err(format!("connect to {address}: {error}")),
                Err(_) => Err(format!("connect to {address} timed out")),
            }
        }
    }
}

/// Joins an error and its sources, so that "error sending request" shows its cause.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_pass_makes_healthy() {
        let mut thresholds = Thresholds::new(2, 3);
        assert_eq!(thresholds.record(true), Some(true));
        assert_eq!(thresholds.record(true), None);
    }

    #[test]
    fn failing_from_start_stays_unhealthy() {
        let mut thresholds = Thresholds::new(2, 2);
        assert_eq!(thresholds.record(false), None, "already unhealthy");
        assert_eq!(thresholds.record(true), None);
        assert_eq!(thresholds.record(true), Some(true), "then rise applies");
    }

    #[test]
    fn flips_after_thresholds() {
        let mut thresholds = Thresholds::new(2, 3);
        assert_eq!(thresholds.record(true), Some(true));
        assert_eq!(thresholds.record(false), None, "one failure is not enough");
        assert_eq!(thresholds.record(false), Some(false));
        assert_eq!(thresholds.record(false), None, "already unhealthy");
        assert_eq!(thresholds.record(true), None);
        assert_eq!(thresholds.record(true), None);
        assert_eq!(thresholds.record(true), Some(true));
    }

    #[test]
    fn interrupted_streak_starts_over() {
        let mut thresholds = Thresholds::new(2, 2);
        assert_eq!(thresholds.record(true), Some(true));
        assert_eq!(thresholds.record(false), None);
        assert_eq!(thresholds.record(true), None);
        assert_eq!(thresholds.record(false), None, "the streak restarted");
        assert_eq!(thresholds.record(false), Some(false));
    }
}
