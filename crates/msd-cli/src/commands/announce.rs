use msd::Instance;
use tracing::info;

use crate::args::AnnounceArgs;
use crate::commands::shutdown_signal;
use crate::exit::CliError;
use crate::settings::{check_instance, parse_duration, parse_metadata, usage, Network};

pub(crate) async fn run(args: AnnounceArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    check_instance(&args.id, &args.url)?;
    let announce_interval = parse_duration("--announce-interval", &args.announce_interval)?;
    let heartbeat_interval = parse_duration("--heartbeat-interval", &args.heartbeat_interval)?;
    let ttl = parse_duration("--ttl", &args.ttl)?;
    let health: msd::Health = args.health.trim().parse().map_err(usage)?;
    let metadata = parse_metadata(&args.metadata)?;

    let mut builder = Instance::builder(network.group)
        .id(args.id.clone())
        .url(args.url.clone())
        .announce_interval(announce_interval)
        .heartbeat_interval(heartbeat_interval)
        .ttl(ttl)
        .health(health);
    if let Some(weight) = args.weight {
        builder = builder.weight(weight);
    }
    if let Some(load) = args.load {
        builder = builder.load(load);
    }
    for (key, value) in metadata {
        builder = builder.metadata(key, value);
    }
    let instance = network.apply_instance(builder).start().await?;
    let interfaces = instance.interfaces();
    info!(id = ?args.id, url = ?args.url, group = %network.group, ?interfaces, "announcing");
    if interfaces.is_empty() {
        info!("no usable interface yet; waiting for one to come up");
    }

    let signal = shutdown_signal().await?;
    info!(signal, id = ?args.id, "shutting down, sending logoff");
    instance.shutdown().await?;
    info!(id = ?args.id, "logged off");
    Ok(())
}
