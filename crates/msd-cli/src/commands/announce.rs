use msd::Instance;
use tracing::info;

use crate::args::AnnounceArgs;
use crate::commands::shutdown_signal;
use crate::exit::CliError;
use crate::settings::{check_instance, parse_duration, Network};

pub(crate) async fn run(args: AnnounceArgs) -> Result<(), CliError> {
    let network = Network::from_args(&args.network)?;
    check_instance(&args.id, &args.url)?;
    let announce_interval = parse_duration("--announce-interval", &args.announce_interval)?;

    let builder = Instance::builder(network.group).id(args.id.clone()).url(args.url.clone());
    let instance = network.apply_instance(builder).announce_interval(announce_interval).start().await?;
    info!(id = %args.id, url = %args.url, group = %network.group, "announcing");

    let signal = shutdown_signal().await?;
    info!(signal, id = %args.id, "shutting down, sending logoff");
    instance.shutdown().await?;
    info!(id = %args.id, "logged off");
    Ok(())
}
