//! `tonic-balance server` announces an `echo.Echo` server with msd; `tonic-balance client` finds
//! the servers of the same group and spreads `Who` calls over them.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use msd::{Discoverer, GroupId, Instance, IpVersion};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug, Parser)]
#[command(about = "gRPC load balancing over instances discovered with msd")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve echo.Echo and announce it until SIGINT or SIGTERM, then log off
    Server(ServerArgs),
    /// Call echo.Echo/Who through a balanced channel and print the number of replies per server
    Client(ClientArgs),
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// Group id of the service: 28 hexadecimal digits
    #[arg(long, short, value_name = "GROUP_ID", env = "MSD_GROUP")]
    group: GroupId,

    /// Interface to announce and discover on, by name (`lo` for one machine)
    #[arg(long, short, value_name = "NAME", env = "MSD_MULTICAST_INTERFACE")]
    interface: String,

    /// Use IPv4 multicast instead of IPv6 link-local, as the loopback interface requires.
    /// MSD_IPV4 accepts 1/0, true/false, yes/no, on/off
    #[arg(long, env = "MSD_IPV4", value_parser = clap::builder::FalseyValueParser::new())]
    ipv4: bool,
}

impl NetworkArgs {
    fn ip_version(&self) -> IpVersion {
        if self.ipv4 {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }
}

#[derive(Debug, Args)]
struct ServerArgs {
    #[command(flatten)]
    network: NetworkArgs,

    /// Name returned by Who, also used as the instance id, so it must be unique within the group
    #[arg(long, value_name = "NAME")]
    name: String,

    /// Address and port to listen on. Port 0 picks a free port
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:0")]
    listen: SocketAddr,

    /// URL to announce [default: http:// and the listening address]
    #[arg(long, value_name = "URL")]
    url: Option<String>,
}

#[derive(Debug, Args)]
struct ClientArgs {
    #[command(flatten)]
    network: NetworkArgs,

    /// Number of Who calls, sent one after another
    #[arg(long, value_name = "COUNT", default_value_t = 10)]
    calls: usize,

    /// Serving instances to wait for before the first call
    #[arg(long, value_name = "COUNT", default_value_t = 1)]
    expect: usize,

    /// Seconds to wait for the expected instances
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    wait_secs: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server(args) => run_server(args).await,
        Command::Client(args) => run_client(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tonic-balance: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run_server(args: ServerArgs) -> Result<(), Box<dyn Error>> {
    let listener = TcpListener::bind(args.listen).await?;
    let address = listener.local_addr()?;
    let url = match args.url {
        Some(url) => url,
        None if address.ip().is_unspecified() => {
            return Err(format!("cannot announce the unspecified address {address}: pass --url").into())
        }
        None => format!("http://{address}"),
    };

    let instance = Instance::builder(args.network.group)
        .id(&args.name)
        .url(&url)
        .interface(&args.network.interface)
        .ip_version(args.network.ip_version())
        .start()
        .await?;
    eprintln!("server {} listening on {address}, announced as {url}", args.name);

    // Log off before the server stops, so clients stop sending calls to it first.
    let name = args.name.clone();
    let shutdown = async move {
        if let Err(error) = wait_for_signal().await {
            eprintln!("tonic-balance: cannot wait for signals: {error}");
        }
        match instance.shutdown().await {
            Ok(()) => eprintln!("server {name} logged off, finishing calls in progress"),
            Err(error) => eprintln!("tonic-balance: logoff failed: {error}"),
        }
    };
    tonic_balance::serve(args.name, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}

async fn run_client(args: ClientArgs) -> Result<(), Box<dyn Error>> {
    let discoverer = Discoverer::builder(args.network.group)
        .interface(&args.network.interface)
        .ip_version(args.network.ip_version())
        .start()
        .await?;

    let wait = Duration::from_secs(args.wait_secs);
    let found = tonic_balance::wait_for_serving(&discoverer, args.expect, wait).await?;
    if found < args.expect {
        return Err(format!("found {found} of {} serving instances within {}s", args.expect, args.wait_secs).into());
    }

    let channel = tonic_balance::balance_channel(&discoverer).await?;
    let tally = tonic_balance::tally_who(channel, args.calls).await?;
    for (name, count) in &tally {
        println!("{name}: {count}");
    }
    discoverer.shutdown().await;
    Ok(())
}
