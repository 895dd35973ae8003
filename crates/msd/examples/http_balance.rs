//! Spreads HTTP GET requests over the serving instances of a service with tower's p2c balancer.
//!
//! A discoverer turns every serving instance into a hyper client aimed at the instance's URL,
//! wrapped to count its requests in flight. `tower::balance::p2c::Balance` picks two instances
//! at random and sends each request to the one with fewer requests in flight. An instance that
//! drains, fails or logs off leaves the balancer; a new one joins it.
//!
//! Run it on one machine, on the loopback interface, against two HTTP servers announced with the
//! `msd` command:
//!
//! ```text
//! GROUP=$(openssl rand -hex 14)
//! python3 -m http.server 8081 --bind 127.0.0.1 &
//! python3 -m http.server 8082 --bind 127.0.0.1 &
//! cargo run -p msd-cli -- announce -g $GROUP -i lo --ipv4 --id web-1 --url http://127.0.0.1:8081/ &
//! cargo run -p msd-cli -- announce -g $GROUP -i lo --ipv4 --id web-2 --url http://127.0.0.1:8082/ &
//! cargo run -p msd --example http_balance -- $GROUP --interface lo --ipv4 --expect 2 --requests 6
//! ```
//!
//! It prints the instance that served each request, then the count per instance. The picks are
//! random, so they vary from run to run. One run printed:
//!
//! ```text
//! request 1: web-1 http://127.0.0.1:8081/ 200 OK
//! request 2: web-1 http://127.0.0.1:8081/ 200 OK
//! request 3: web-1 http://127.0.0.1:8081/ 200 OK
//! request 4: web-2 http://127.0.0.1:8082/ 200 OK
//! request 5: web-1 http://127.0.0.1:8081/ 200 OK
//! request 6: web-1 http://127.0.0.1:8081/ 200 OK
//! web-1: 5
//! web-2: 1
//! ```
//!
//! After `web-1`'s `msd announce` exits (it logs off), every request goes to `web-2`.
//!
//! Between machines, or in a network namespace, name that interface instead of `lo`. `--ipv4`
//! is optional there, but the instances and the balancer must agree on it.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Duration;

use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msd::{Discoverer, GroupId, Health, InstanceInfo, IpVersion};
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{BoxError, Service, ServiceExt};

#[derive(Debug, Parser)]
#[command(about = "Send HTTP GET requests through a p2c balancer over the instances msd discovers")]
struct Args {
    /// Group id of the service: 28 hexadecimal digits
    #[arg(value_name = "GROUP_ID", env = "MSD_GROUP")]
    group: GroupId,

    /// Interface to discover on, by name (`lo` for one machine)
    #[arg(long, short, value_name = "NAME", env = "MSD_MULTICAST_INTERFACE")]
    interface: String,

    /// Use IPv4 multicast instead of IPv6 link-local, as the loopback interface requires.
    /// MSD_IPV4 accepts 1/0, true/false, yes/no, on/off
    #[arg(long, env = "MSD_IPV4", value_parser = clap::builder::FalseyValueParser::new())]
    ipv4: bool,

    /// Number of requests, sent one after another
    #[arg(long, value_name = "COUNT", default_value_t = 10)]
    requests: usize,

    /// Serving instances to wait for before the first request
    #[arg(long, value_name = "COUNT", default_value_t = 1)]
    expect: usize,

    /// Seconds to wait for the expected instances
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    wait_secs: u64,

    /// Path and query of each request, joined to the instance's URL
    #[arg(long, value_name = "PATH", default_value = "/")]
    path: String,
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Sends each request to one instance: the request's path and query, joined to the instance's
/// URL. The response comes back tagged with the instance id and URL.
#[derive(Debug, Clone)]
struct InstanceClient {
    id: String,
    base: Uri,
    client: HttpClient,
}

impl InstanceClient {
    /// Returns `None` for an instance whose URL is not plain `http://` with a host, which this
    /// client cannot reach.
    fn new(client: &HttpClient, info: &InstanceInfo) -> Option<Self> {
        let base: Uri = info.url.parse().ok()?;
        if base.scheme_str() != Some("http") || base.authority().is_none() {
            eprintln!("skipping instance {}: invalid URL {:?}, expected http://HOST:PORT/", info.id, info.url);
            return None;
        }
        Some(InstanceClient { id: info.id.clone(), base, client: client.clone() })
    }

    fn target(&self, request: &Uri) -> Result<Uri, hyper::http::uri::InvalidUri> {
        let prefix = self.base.path().trim_end_matches('/');
        let rest = request.path_and_query().map_or("/", |path| path.as_str());
        let authority = self.base.authority().map_or("", |authority| authority.as_str());
        format!("http://{authority}{prefix}{rest}").parse()
    }
}

/// A response with the instance that served it.
struct Tagged {
    id: String,
    base: Uri,
    response: Response<Incoming>,
}

impl Service<Request<Empty<Bytes>>> for InstanceClient {
    type Response = Tagged;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Tagged, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<Request<Empty<Bytes>>>::poll_ready(&mut self.client, cx).map_err(BoxError::from)
    }

    fn call(&mut self, mut request: Request<Empty<Bytes>>) -> Self::Future {
        let id = self.id.clone();
        let base = self.base.clone();
        let target = self.target(request.uri());
        let client = self.client.clone();
        Box::pin(async move {
            *request.uri_mut() = target?;
            let response = client.request(request).await?;
            Ok(Tagged { id, base, response })
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("http_balance: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let ip_version = if args.ipv4 { IpVersion::V4 } else { IpVersion::V6 };
    let discoverer = Discoverer::builder(args.group).interface(&args.interface).ip_version(ip_version).start().await?;

    let wait = Duration::from_secs(args.wait_secs);
    let found = wait_for_serving(&discoverer, args.expect, wait).await?;
    if found < args.expect {
        return Err(format!("found {found} of {} serving instances within {}s", args.expect, args.wait_secs).into());
    }

    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let changes = discoverer.discover(move |info| InstanceClient::new(&client, info)).await?;
    let mut balancer = Balance::new(PendingRequestsDiscover::new(changes, CompleteOnResponse::default()));

    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for number in 1..=args.requests {
        let request = Request::get(args.path.as_str()).body(Empty::new())?;
        // The balancer waits while it has no instance, so bound that wait.
        let ready = tokio::time::timeout(wait, balancer.ready())
            .await
            .map_err(|_| format!("no serving instance for {}s", args.wait_secs))??;
        let Tagged { id, base, response } = ready.call(request).await?;
        let status = response.status();
        // Read the body to the end, so the connection can be reused.
        response.into_body().collect().await?;
        println!("request {number}: {id} {base} {status}");
        *tally.entry(id).or_insert(0) += 1;
    }
    for (id, count) in &tally {
        println!("{id}: {count}");
    }

    discoverer.shutdown().await;
    Ok(())
}

/// Waits until the discoverer's table lists at least `count` serving instances, or `timeout`
/// passes. Returns the number of serving instances listed at the end.
async fn wait_for_serving(discoverer: &Discoverer, count: usize, timeout: Duration) -> Result<usize, msd::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let serving = discoverer.instances().await?.iter().filter(|info| info.health == Health::Serving).count();
        if serving >= count || tokio::time::Instant::now() >= deadline {
            return Ok(serving);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
