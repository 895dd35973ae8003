use msd::Instance;
use tracing::{info, warn};

use crate::args::AnnounceArgs;
use crate::commands::{hangup_signals, reload_keys, StopSignals};
use crate::exit::CliError;
use crate::commands::check::{CheckSettings, Probe};
use crate::settings::{check_instance, parse_duration, parse_metadata, usage, Network};

pub(crate) async fn run(args: AnnounceArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    check_instance(&args.id, &args.url)?;
    let announce_interval = parse_duration("--announce-interval", &args.announce_interval)?;
    let heartbeat_interval = parse_duration("--heartbeat-interval", &args.heartbeat_interval)?;
    let ttl = parse_duration("--ttl", &args.ttl)?;
    let health: msd::Health = args.health.trim().parse().map_err(|error| usage(format!("--health: {error}")))?;
    let metadata = parse_metadata(&args.metadata)?;
    let check = check_settings(&args, health)?;
    if network.protocols == msd::ProtocolMode::Seed {
        let native_only = [
            (args.health.trim() != "serving", "--health"),
            (args.load.is_some(), "--load"),
            (args.weight.is_some(), "--weight"),
            (!args.metadata.is_empty(), "--metadata"),
            (check.is_some(), "--check-http/--check-tcp"),
        ];
        if let Some((_, flag)) = native_only.iter().find(|(set, _)| *set) {
            return Err(usage(format!(
                "invalid {flag} with --protocol seed: the seed protocol carries only an id and a URL; use --protocol native or both"
            )));
        }
    }

    // With a health check the instance starts unhealthy and serves after its first passed check.
    let initial_health = check.as_ref().map_or(health, |settings| settings.unhealthy);
    let mut builder = Instance::builder(network.group)
        .id(args.id.clone())
        .url(args.url.clone())
        .announce_interval(announce_interval)
        .heartbeat_interval(heartbeat_interval)
        .ttl(ttl)
        .health(initial_health);
    if let Some(weight) = args.weight {
        builder = builder.weight(weight);
    }
    if let Some(load) = args.load {
        builder = builder.load(load);
    }
    for (key, value) in metadata {
        builder = builder.metadata(key, value);
    }
    let mut stop = StopSignals::install()?;
    let mut hangups = hangup_signals()?;
    let instance = network.apply_instance(builder).start().await?;
    let interfaces = instance.interfaces();
    info!(id = ?args.id, url = ?args.url, group = %network.group, ?interfaces, "announcing");
    if interfaces.is_empty() {
        info!("no usable interface yet; waiting for one to come up");
    }

    let mut checks = Box::pin(async {
        match check {
            Some(settings) => super::check::run(&instance, settings).await,
            None => std::future::pending().await,
        }
    });
    let signal = loop {
        tokio::select! {
            signal = stop.wait() => break signal,
            _ = hangups.recv() => {
                if let Some(keys) = reload_keys(args.network.key_file.as_deref()) {
                    match instance.set_keys(keys).await {
                        Ok(()) => info!("key ring reloaded"),
                        Err(error) => warn!(%error, "failed to apply the reloaded key ring; keeping the old one"),
                    }
                }
            }
            () = &mut checks => {}
        }
    };
    // The checks borrow the instance; end them before it shuts down.
    drop(checks);
    info!(signal, id = ?args.id, "shutting down, sending logoff");
    instance.shutdown().await?;
    info!(id = ?args.id, "logged off");
    Ok(())
}

/// Time a health check may take when `--check-timeout` is not given.
const DEFAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Shortest gap between health checks accepted, so a check cannot load the service it watches.
const MIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

fn check_settings(args: &AnnounceArgs, healthy: msd::Health) -> Result<Option<CheckSettings>, CliError> {
    let probe = match (&args.check_http, &args.check_tcp) {
        (Some(url), _) => {
            let parsed = reqwest::Url::parse(url)
                .map_err(|error| usage(format!("invalid --check-http {url:?}: {error}; write a URL such as http://127.0.0.1:8080/health")))?;
            if parsed.scheme() != "http" {
                return Err(usage(format!(
                    "invalid --check-http {url:?}: only http URLs are checked; use --check-tcp for other services"
                )));
            }
            Probe::Http(parsed)
        }
        (None, Some(address)) => {
            if address.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(usage(format!("invalid --check-tcp {address:?}: write HOST:PORT, such as 127.0.0.1:5432")));
            }
            Probe::Tcp(address.clone())
        }
        (None, None) => return Ok(None),
    };
    let unhealthy: msd::Health =
        args.check_fail_health.trim().parse().map_err(|error| usage(format!("--check-fail-health: {error}")))?;
    if unhealthy == msd::Health::Serving {
        return Err(usage("invalid --check-fail-health serving: choose failing or draining".into()));
    }
    if args.check_fall == 0 || args.check_rise == 0 {
        return Err(usage("invalid --check-fall or --check-rise 0: both must be at least 1".into()));
    }
    let interval = parse_duration("--check-interval", &args.check_interval)?;
    let timeout = match &args.check_timeout {
        Some(text) => parse_duration("--check-timeout", text)?,
        None => DEFAULT_CHECK_TIMEOUT.min(interval),
    };
    if interval < MIN_CHECK_INTERVAL {
        return Err(usage(format!("invalid --check-interval {interval:?}: the minimum is {MIN_CHECK_INTERVAL:?}")));
    }
    if timeout.is_zero() || timeout > interval {
        return Err(usage(format!(
            "invalid --check-timeout {timeout:?}: it must be greater than zero and at most --check-interval ({interval:?})"
        )));
    }
    Ok(Some(CheckSettings {
        probe,
        interval,
        timeout,
        fall: args.check_fall,
        rise: args.check_rise,
        unhealthy,
        healthy,
    }))
}
