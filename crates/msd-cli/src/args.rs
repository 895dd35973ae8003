//! Command-line arguments as clap parses them, before validation.

use clap::{Args, Parser, Subcommand};

/// Multicast service discovery: find the live instances of a service on one L2 network.
#[derive(Debug, Parser)]
#[command(name = "msd", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct GlobalArgs {
    /// Log filter, as for tracing-subscriber's EnvFilter (error, warn, info, debug, trace, or
    /// per-module directives)
    #[arg(long, global = true, value_name = "FILTER", env = "MSD_LOG", default_value = "info")]
    pub(crate) log: String,

    /// Settings file in TOML: keys are long flags without dashes, top level for every command,
    /// `[announce]`, `[serve]`, ... for one; flags and environment variables take precedence
    #[arg(long, global = true, value_name = "PATH", env = "MSD_CONFIG")]
    pub(crate) config: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Manage group ids
    #[command(subcommand)]
    Group(GroupCommand),
    /// Announce one instance of a service until interrupted (SIGINT or SIGTERM), then log off
    Announce(AnnounceArgs),
    /// List the live instances of a service, or follow their changes
    Browse(BrowseArgs),
    /// Run a discoverer and three instances on the loopback interface and print what it discovers
    Demo(DemoArgs),
    /// Manage keys for authenticated packets
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run a discoverer with an HTTP API, server-sent events, Prometheus endpoints and a live
    /// dashboard
    Serve(ServeArgs),
    /// Forward TCP connections to live, serving instances
    Proxy(ProxyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    pub(crate) network: NetworkArgs,

    /// Address and port to accept connections on
    #[arg(long, value_name = "ADDRESS", env = "MSD_PROXY_LISTEN", default_value = "127.0.0.1:7000")]
    pub(crate) listen: String,

    /// Address and port of an HTTP server for /metrics and /healthz [default: none]
    #[arg(long, value_name = "ADDRESS", env = "MSD_PROXY_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<String>,

    /// How to choose an instance: p2c (on open connections), random, round-robin or weighted
    #[arg(long, value_name = "STRATEGY", env = "MSD_PROXY_STRATEGY", default_value = "p2c")]
    pub(crate) strategy: String,

    /// Only instances with this metadata entry, KEY=VALUE; repeat for several
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE")]
    pub(crate) metadata: Vec<String>,

    /// Metadata key whose value is the port to connect to, instead of the URL's port
    #[arg(long, value_name = "KEY", env = "MSD_PROXY_PORT_METADATA")]
    pub(crate) port_metadata: Option<String>,

    /// Time one connect to an instance may take
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_PROXY_CONNECT_TIMEOUT", default_value = "1s")]
    pub(crate) connect_timeout: String,

    /// Instances tried for one client connection before it is closed
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_PROXY_ATTEMPTS", default_value_t = 3)]
    pub(crate) attempts: usize,

    /// On SIGTERM, how long open connections may run before the proxy exits
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_PROXY_DRAIN_TIMEOUT", default_value = "30s")]
    pub(crate) drain_timeout: String,

    /// Most client connections open at once (at most 1,000,000), each with its instance
    /// connection; further clients wait until one closes
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_PROXY_MAX_CONNECTIONS", default_value = "1024")]
    pub(crate) max_connections: std::num::NonZeroUsize,

    /// Time a forwarded connection may pass with no byte moving in either direction before both
    /// sides are closed (1s to 7 days)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_PROXY_IDLE_TIMEOUT", default_value = "10m")]
    pub(crate) idle_timeout: String,

    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) network: NetworkArgs,

    /// Address and port the HTTP server listens on
    #[arg(long, value_name = "ADDRESS", env = "MSD_LISTEN", default_value = "127.0.0.1:8080")]
    pub(crate) listen: String,

    /// Most /v1/events clients served at once (at most 1,000,000); further ones get 503 with a
    /// JSON error
    #[arg(long, value_name = "COUNT", env = "MSD_MAX_EVENT_CLIENTS", default_value = "64")]
    pub(crate) max_event_clients: std::num::NonZeroUsize,

    /// Most HTTP connections open at once (at most 1,000,000); further clients wait until one
    /// closes
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_MAX_CONNECTIONS", default_value = "1024")]
    pub(crate) max_connections: std::num::NonZeroUsize,

    /// Time a connection may wait to read or write with nothing moving before it is closed
    /// (1s to 7 days). Event streams send a comment every third of it, at most every 15s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_IDLE_TIMEOUT", default_value = "60s")]
    pub(crate) idle_timeout: String,

    /// On SIGTERM, how long open requests may run before the server exits
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_DRAIN_TIMEOUT", default_value = "10s")]
    pub(crate) drain_timeout: String,

    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a new key ring file with one fresh primary key
    New {
        /// File to write, created with mode 0600; refuses to overwrite [default: print to stdout]
        #[arg(long, short, value_name = "PATH")]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// Print a new random group id and its multicast addresses
    New {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
}

/// Group settings shared by every command that joins the group.
#[derive(Debug, Args)]
pub(crate) struct NetworkArgs {
    /// Group id of the service: 28 hexadecimal digits (create one with `msd group new`)
    #[arg(long, short, value_name = "GROUP_ID", env = "MSD_GROUP")]
    pub(crate) group: String,

    /// Interface to use, by name; repeat or separate with commas for several [default: every up,
    /// multicast-capable, non-loopback interface]
    #[arg(long = "interface", short = 'i', value_name = "NAME", env = "MSD_MULTICAST_INTERFACE", value_delimiter = ',')]
    pub(crate) interfaces: Vec<String>,

    /// Use IPv4 multicast (239.0.0.0/8) instead of IPv6 link-local; required on loopback.
    /// MSD_IPV4 accepts 1/0, true/false, yes/no, on/off
    #[arg(long, env = "MSD_IPV4", value_parser = clap::builder::BoolishValueParser::new(), num_args = 0, default_missing_value = "true")]
    pub(crate) ipv4: bool,

    /// IPv4 group address, overriding the one derived from the group id (implies --ipv4)
    #[arg(long, value_name = "ADDRESS", env = "MSD_IPV4_GROUP")]
    pub(crate) ipv4_group: Option<String>,

    /// UDP port of the group
    #[arg(long, value_name = "PORT", allow_hyphen_values = true, env = "MSD_PORT", default_value_t = msd::SEED_PORT)]
    pub(crate) port: u16,

    /// Protocols to speak: seed (the original's), native (msd's own) or both; a key file implies
    /// native
    #[arg(long, value_name = "PROTOCOL", env = "MSD_PROTOCOL", default_value = "both")]
    pub(crate) protocol: String,

    /// Key ring file (`msd key new`): authenticate every packet and reject all others
    #[arg(long, value_name = "PATH", env = "MSD_KEY_FILE")]
    pub(crate) key_file: Option<std::path::PathBuf>,
}

/// Discoverer settings shared by `browse`, `serve` and `proxy`.
#[derive(Debug, Args)]
pub(crate) struct DiscoveryArgs {
    /// Gap between periodic DISCOVER rounds, e.g. 20s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_DISCOVER_INTERVAL", default_value = "20s")]
    pub(crate) discover_interval: String,

    /// Silence after which a seed-protocol instance is probed and then removed, e.g. 65s
    /// (native instances announce their own TTL)
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_EXPIRE_AFTER", default_value = "65s")]
    pub(crate) expire_after: String,

    /// Most instances tracked at once; packets of further ids are dropped and counted
    /// (`instance_limit`) until an entry goes away
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_MAX_INSTANCES", default_value = "10000")]
    pub(crate) max_instances: std::num::NonZeroUsize,

    /// Packets per second accepted from one source address and port; 0 turns the limit off
    #[arg(long, value_name = "PACKETS", allow_hyphen_values = true, env = "MSD_RATE_LIMIT", default_value_t = 50)]
    pub(crate) rate_limit: u32,

    /// Packets one source may send at once above --rate-limit before the limit applies
    #[arg(long, value_name = "PACKETS", allow_hyphen_values = true, env = "MSD_RATE_BURST", default_value_t = 100)]
    pub(crate) rate_burst: u32,
}

#[derive(Debug, Args)]
pub(crate) struct AnnounceArgs {
    #[command(flatten)]
    pub(crate) network: NetworkArgs,

    /// URL where this instance serves, e.g. http://10.0.0.7:8080
    #[arg(long, value_name = "URL", env = "MSD_URL")]
    pub(crate) url: String,

    /// Id of this instance, unique within the group
    #[arg(long, value_name = "ID", env = "MSD_ID")]
    pub(crate) id: String,

    /// Gap between unsolicited seed-protocol announcements, e.g. 20s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_ANNOUNCE_INTERVAL", default_value = "20s")]
    pub(crate) announce_interval: String,

    /// Gap between native heartbeats (varied by ±20 %), e.g. 500ms
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_HEARTBEAT_INTERVAL", default_value = "500ms")]
    pub(crate) heartbeat_interval: String,

    /// How long discoverers keep this instance without another packet, e.g. 2s
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_TTL", default_value = "2s")]
    pub(crate) ttl: String,

    /// Health announced at start: serving, draining or failing
    #[arg(long, value_name = "HEALTH", env = "MSD_HEALTH", default_value = "serving")]
    pub(crate) health: String,

    /// Weight announced for load balancing
    #[arg(long, value_name = "WEIGHT", allow_hyphen_values = true, env = "MSD_WEIGHT")]
    pub(crate) weight: Option<u32>,

    /// Load announced at start, in units the service chooses
    #[arg(long, value_name = "LOAD", allow_hyphen_values = true, env = "MSD_LOAD")]
    pub(crate) load: Option<u32>,

    /// Metadata entry KEY=VALUE; repeat for several
    #[arg(long = "metadata", short = 'm', value_name = "KEY=VALUE")]
    pub(crate) metadata: Vec<String>,

    /// Health check: GET this URL (http only); 2xx or 3xx passes
    #[arg(long, value_name = "URL", env = "MSD_CHECK_HTTP", conflicts_with = "check_tcp")]
    pub(crate) check_http: Option<String>,

    /// Health check: open a TCP connection to this HOST:PORT
    #[arg(long, value_name = "ADDRESS", env = "MSD_CHECK_TCP")]
    pub(crate) check_tcp: Option<String>,

    /// Gap between health checks
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_CHECK_INTERVAL", default_value = "2s")]
    pub(crate) check_interval: String,

    /// Time one health check may take before it counts as failed, at most --check-interval
    /// [default: 1s, or --check-interval when that is shorter]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true, env = "MSD_CHECK_TIMEOUT")]
    pub(crate) check_timeout: Option<String>,

    /// Consecutive failed checks before the instance is announced unhealthy
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_CHECK_FALL", default_value_t = 3)]
    pub(crate) check_fall: u32,

    /// Consecutive passed checks before an unhealthy instance is announced healthy again
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, env = "MSD_CHECK_RISE", default_value_t = 2)]
    pub(crate) check_rise: u32,

    /// Health announced while the check fails: failing or draining
    #[arg(long, value_name = "HEALTH", env = "MSD_CHECK_FAIL_HEALTH", default_value = "failing")]
    pub(crate) check_fail_health: String,
}

#[derive(Debug, Args)]
pub(crate) struct BrowseArgs {
    #[command(flatten)]
    pub(crate) network: NetworkArgs,

    /// Print JSON: an array of instances, or with --watch one event object per line
    #[arg(long)]
    pub(crate) json: bool,

    /// Keep running and print every change (up, changed, down) as it happens
    #[arg(long)]
    pub(crate) watch: bool,

    /// How long to listen before printing the table, or with --watch before exiting, e.g. 3s
    /// [default: 3s without --watch, forever with it]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub(crate) timeout: Option<String>,

    #[command(flatten)]
    pub(crate) discovery: DiscoveryArgs,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of instances to start (1 to 20)
    #[arg(long, value_name = "COUNT", allow_hyphen_values = true, default_value_t = 3)]
    pub(crate) instances: u32,
}
