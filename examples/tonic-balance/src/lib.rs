//! gRPC client-side load balancing over the instances that msd discovers.
//!
//! Each server announces its URL to an msd group. A client runs a [`msd::Discoverer`] on the same
//! group and feeds its `tower::discover` stream into [`Channel::balance_channel`], so calls spread
//! over the serving instances and stop going to one that drains, fails or logs off.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use msd::{DiscoverStream, Discoverer, Health, InstanceInfo};
use tokio::net::TcpListener;
use tonic::transport::channel::Change;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tower::discover::{Change as TowerChange, Discover};

/// The generated code for `proto/echo.proto`.
pub mod echo {
    tonic::include_proto!("echo");
}

use echo::echo_client::EchoClient;
use echo::echo_server::{Echo, EchoServer};
use echo::{WhoReply, WhoRequest};

/// Changes buffered between the discoverer and the balancer.
const CHANGE_BUFFER: usize = 64;

/// Time one connection attempt to an instance may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The `echo.Echo` service, which returns its own name from `Who`.
#[derive(Debug, Clone)]
pub struct NamedEcho {
    name: String,
}

impl NamedEcho {
    pub fn new(name: impl Into<String>) -> Self {
        NamedEcho { name: name.into() }
    }
}

#[tonic::async_trait]
impl Echo for NamedEcho {
    async fn who(&self, _request: Request<WhoRequest>) -> Result<Response<WhoReply>, Status> {
        Ok(Response::new(WhoReply { name: self.name.clone() }))
    }
}

/// Serves `echo.Echo` under `name` on `listener` until `shutdown` completes, then lets calls in
/// progress finish.
///
/// # Errors
///
/// Returns the transport error that stopped the server.
pub async fn serve(
    name: impl Into<String>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(EchoServer::new(NamedEcho::new(name)))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

/// Returns a channel that balances calls over the serving instances of the discoverer's group.
///
/// A background task forwards the discoverer's changes to the channel. It ends when the
/// discoverer stops or every clone of the channel is dropped.
///
/// # Errors
///
/// Returns [`msd::Error::Stopped`] when the discoverer has already stopped.
pub async fn balance_channel(discoverer: &Discoverer) -> Result<Channel, msd::Error> {
    let changes = discoverer.discover(endpoint).await?;
    let (channel, sender) = Channel::balance_channel(CHANGE_BUFFER);
    tokio::spawn(forward_changes(changes, sender));
    Ok(channel)
}

/// Builds the endpoint for an instance, or `None` when its URL is not a valid URI.
fn endpoint(info: &InstanceInfo) -> Option<Endpoint> {
    Endpoint::from_shared(info.url.clone()).ok().map(|endpoint| endpoint.connect_timeout(CONNECT_TIMEOUT))
}

async fn forward_changes(
    mut changes: DiscoverStream<Endpoint>,
    sender: tokio::sync::mpsc::Sender<Change<String, Endpoint>>,
) {
    loop {
        let next = tokio::select! {
            next = next_change(&mut changes) => next,
            () = sender.closed() => return,
        };
        let change = match next {
            Some(Ok(TowerChange::Insert(id, endpoint))) => Change::Insert(id, endpoint),
            Some(Ok(TowerChange::Remove(id))) => Change::Remove(id),
            None => return,
        };
        if sender.send(change).await.is_err() {
            return;
        }
    }
}

async fn next_change(
    changes: &mut DiscoverStream<Endpoint>,
) -> Option<Result<TowerChange<String, Endpoint>, Infallible>> {
    std::future::poll_fn(|cx| Pin::new(&mut *changes).poll_discover(cx)).await
}

/// Waits until the discoverer's table lists at least `count` serving instances, or `timeout`
/// passes. Returns the number of serving instances listed at the end.
///
/// # Errors
///
/// Returns [`msd::Error::Stopped`] when the discoverer stops.
pub async fn wait_for_serving(discoverer: &Discoverer, count: usize, timeout: Duration) -> Result<usize, msd::Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let serving = discoverer.instances().await?.iter().filter(|info| info.health == Health::Serving).count();
        if serving >= count || tokio::time::Instant::now() >= deadline {
            return Ok(serving);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Calls `Who` `calls` times, one after another, and counts the replies by server name.
///
/// # Errors
///
/// Returns the status of the first call that failed.
pub async fn tally_who(channel: Channel, calls: usize) -> Result<BTreeMap<String, usize>, Status> {
    let mut client = EchoClient::new(channel);
    let mut tally = BTreeMap::new();
    for _ in 0..calls {
        let name = client.who(WhoRequest {}).await?.into_inner().name;
        *tally.entry(name).or_insert(0) += 1;
    }
    Ok(tally)
}
