//! `tower::balance::p2c::Balance` over `Discoverer::discover`, with real HTTP backends.
//!
//! Each test runs three axum servers on 127.0.0.1, announces each with an msd instance on the
//! loopback interface in IPv4 mode, and sends requests through the balancer one after another.
//! Every backend counts the requests it receives, so the checks count at the server side. Each
//! test uses a fresh random group, so tests running side by side do not see each other.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use msd::{DiscoverStream, Discoverer, GroupId, Health, Instance, InstanceInfo, IpVersion};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::balance::p2c::Balance;
use tower::load::{CompleteOnResponse, PendingRequestsDiscover};
use tower::{BoxError, Service, ServiceExt};

/// Generous limit for one expected step. Tests fail rather than hang when it passes.
const WAIT: Duration = Duration::from_secs(20);

const BACKENDS: [&str; 3] = ["alpha", "beta", "gamma"];

type HttpClient = Client<HttpConnector, Empty<Bytes>>;
type Balancer =
    Balance<PendingRequestsDiscover<DiscoverStream<InstanceClient>, CompleteOnResponse>, Request<Empty<Bytes>>>;

/// Sends each request to one instance: the request's path and query, joined to the instance's
/// URL. The response comes back tagged with the instance id.
#[derive(Debug, Clone)]
struct InstanceClient {
    id: String,
    base: Uri,
    client: HttpClient,
}

impl InstanceClient {
    fn new(client: &HttpClient, info: &InstanceInfo) -> Option<Self> {
        let base: Uri = info.url.parse().ok()?;
        (base.scheme_str() == Some("http") && base.authority().is_some()).then(|| InstanceClient {
            id: info.id.clone(),
            base,
            client: client.clone(),
        })
    }

    fn target(&self, request: &Uri) -> Result<Uri, hyper::http::uri::InvalidUri> {
        let prefix = self.base.path().trim_end_matches('/');
        let rest = request.path_and_query().map_or("/", |path| path.as_str());
        let authority = self.base.authority().map_or("", |authority| authority.as_str());
        format!("http://{authority}{prefix}{rest}").parse()
    }
}

impl Service<Request<Empty<Bytes>>> for InstanceClient {
    type Response = (String, Response<Incoming>);
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Service::<Request<Empty<Bytes>>>::poll_ready(&mut self.client, cx).map_err(BoxError::from)
    }

    fn call(&mut self, mut request: Request<Empty<Bytes>>) -> Self::Future {
        let id = self.id.clone();
        let target = self.target(request.uri());
        let client = self.client.clone();
        Box::pin(async move {
            *request.uri_mut() = target?;
            let response = client.request(request).await?;
            Ok((id, response))
        })
    }
}

/// An HTTP server on 127.0.0.1 that counts the requests it receives and returns its name as the
/// body of every response.
struct Backend {
    url: String,
    hits: Arc<AtomicUsize>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
        let url = format!("http://{}/", listener.local_addr().expect("local address"));
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let router = axum::Router::new().fallback(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::ready(name)
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let server = axum::serve(listener, router).with_graceful_shutdown(shutdown);
        let task = tokio::spawn(async move { server.await });
        Backend { url, hits, stop, task }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let result = tokio::time::timeout(WAIT, self.task).await.expect("backend stops in time");
        result.expect("backend task did not panic").expect("backend served without an I/O error");
    }
}

/// Three backends, each announced by an msd instance with the backend's name as its id, and a
/// balancer over the discoverer's stream.
struct Cluster {
    backends: Vec<Backend>,
    instances: Vec<Instance>,
    discoverer: Discoverer,
    balancer: Balancer,
}

impl Cluster {
    async fn start() -> Cluster {
        let group = GroupId::from_bytes(rand::random());
        let mut backends = Vec::new();
        let mut instances = Vec::new();
        for name in BACKENDS {
            let backend = Backend::start(name).await;
            let instance = Instance::builder(group)
                .id(name)
                .url(&backend.url)
                .interface("lo")
                .ip_version(IpVersion::V4)
                .start()
                .await
                .expect("start an msd instance");
            backends.push(backend);
            instances.push(instance);
        }

        let discoverer = Discoverer::builder(group)
            .interface("lo")
            .ip_version(IpVersion::V4)
            .start()
            .await
            .expect("start a discoverer");
        let serving = wait_until(&discoverer, |instances| {
            instances.iter().filter(|info| info.health == Health::Serving).count() == BACKENDS.len()
        })
        .await;
        assert!(serving, "all {} instances discovered as serving", BACKENDS.len());

        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let changes =
            discoverer.discover(move |info| InstanceClient::new(&client, info)).await.expect("discoverer running");
        let balancer = Balance::new(PendingRequestsDiscover::new(changes, CompleteOnResponse::default()));
        Cluster { backends, instances, discoverer, balancer }
    }

    fn hits(&self) -> Vec<usize> {
        self.backends.iter().map(Backend::hits).collect()
    }

    /// Sends `count` GET requests one after another. Returns, per request, the id of the instance
    /// the balancer picked and the response body from its backend, or the error.
    async fn send(&mut self, count: usize) -> Vec<Result<(String, String), BoxError>> {
        let mut results = Vec::with_capacity(count);
        for _ in 0..count {
            let sent = tokio::time::timeout(WAIT, send_one(&mut self.balancer));
            let result = sent.await.expect("request finishes in time");
            results.push(result);
        }
        results
    }

    async fn shutdown(self) {
        self.discoverer.shutdown().await;
        for instance in self.instances {
            instance.shutdown().await.expect("log off");
        }
        for backend in self.backends {
            backend.stop().await;
        }
    }
}

async fn send_one(balancer: &mut Balancer) -> Result<(String, String), BoxError> {
    let request = Request::get("/").body(Empty::new())?;
    let (id, response) = balancer.ready().await?.call(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    Ok((id, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls the discoverer's table until `done` returns true or [`WAIT`] passes. Returns whether
/// `done` returned true.
async fn wait_until(discoverer: &Discoverer, done: impl Fn(&[InstanceInfo]) -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let instances = discoverer.instances().await.expect("discoverer running");
        if done(&instances) {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn difference(after: &[usize], before: &[usize]) -> Vec<usize> {
    after.iter().zip(before).map(|(after, before)| after - before).collect()
}

#[tokio::test]
async fn balance_spreads_over_every_backend() {
    const REQUESTS: usize = 300;
    let mut cluster = Cluster::start().await;

    let results = cluster.send(REQUESTS).await;
    let failed: Vec<_> = results.iter().filter_map(|result| result.as_ref().err()).collect();
    assert!(failed.is_empty(), "every request succeeds: {failed:?}");
    for (id, body) in results.iter().flatten() {
        assert_eq!(id, body, "the backend of the picked instance answered");
    }

    let hits = cluster.hits();
    assert_eq!(hits.iter().sum::<usize>(), REQUESTS, "backends saw every request once: {hits:?}");
    for (name, count) in BACKENDS.iter().zip(&hits) {
        assert!(*count > 0, "{name} received no request: {hits:?}");
    }
    // With one request in flight at a time, every pending count is zero and p2c picks uniformly.
    // Each backend's share is then binomial with n = 300 and p = 1/3: mean 100, standard deviation
    // 8.2. A count outside 50..=150 is about six standard deviations out. By the exact binomial
    // tail, a correct balancer fails this check in fewer than 3 runs in a billion.
    for (name, count) in BACKENDS.iter().zip(&hits) {
        assert!((50..=150).contains(count), "{name} received {count} of {REQUESTS}, outside 50..=150: {hits:?}");
    }

    cluster.shutdown().await;
}

#[tokio::test]
async fn draining_backend_gets_no_new_requests() {
    let mut cluster = Cluster::start().await;
    let warm_up = cluster.send(30).await;
    assert!(warm_up.iter().all(Result::is_ok), "every warm-up request succeeds: {warm_up:?}");

    let drained = 1;
    let drained_id = BACKENDS[drained];
    cluster.instances[drained].set_health(Health::Draining).await.expect("instance running");
    let seen = wait_until(&cluster.discoverer, |instances| {
        instances.iter().any(|info| info.id == drained_id && info.health == Health::Draining)
    })
    .await;
    assert!(seen, "discoverer saw {drained_id} draining");

    // The discover stream subscribed before the change, so the balancer applies the removal on
    // its next readiness check, before the first of these requests.
    let before = cluster.hits();
    let results = cluster.send(100).await;
    let hits = difference(&cluster.hits(), &before);
    assert!(results.iter().all(Result::is_ok), "every request succeeds: {results:?}");
    assert_eq!(hits[drained], 0, "{drained_id} is draining but received requests: {hits:?}");
    assert_eq!(hits.iter().sum::<usize>(), 100, "the other backends received every request: {hits:?}");
    let picked_drained = results.iter().flatten().filter(|(id, _)| id == drained_id).count();
    assert_eq!(picked_drained, 0, "the balancer picked the draining instance");

    cluster.shutdown().await;
}

#[tokio::test]
async fn stopped_instance_gets_no_requests() {
    let mut cluster = Cluster::start().await;
    let warm_up = cluster.send(30).await;
    assert!(warm_up.iter().all(Result::is_ok), "every warm-up request succeeds: {warm_up:?}");

    // Stop the instance as a process would on exit: log off first, close the HTTP server later.
    let stopped = 2;
    let stopped_id = BACKENDS[stopped];
    cluster.instances.remove(stopped).shutdown().await.expect("log off");
    let removed = wait_until(&cluster.discoverer, |instances| instances.iter().all(|info| info.id != stopped_id)).await;
    assert!(removed, "discoverer dropped {stopped_id} after its logoff");

    // While its HTTP server still runs, the logged-off backend receives nothing.
    let before = cluster.hits();
    let results = cluster.send(50).await;
    let hits = difference(&cluster.hits(), &before);
    assert!(results.iter().all(Result::is_ok), "every request succeeds: {results:?}");
    assert_eq!(hits[stopped], 0, "{stopped_id} logged off but received requests: {hits:?}");

    // Once its server is closed too, a request sent there would fail to connect.
    cluster.backends.remove(stopped).stop().await;
    let before = cluster.hits();
    let results = cluster.send(50).await;
    let hits = difference(&cluster.hits(), &before);
    let failed: Vec<_> = results.iter().filter_map(|result| result.as_ref().err()).collect();
    assert!(failed.is_empty(), "requests keep succeeding after {stopped_id} stopped: {failed:?}");
    assert_eq!(hits.iter().sum::<usize>(), 50, "the remaining backends received every request: {hits:?}");
    let picked_stopped = results.iter().flatten().filter(|(id, _)| id == stopped_id).count();
    assert_eq!(picked_stopped, 0, "the balancer picked the stopped instance");

    cluster.shutdown().await;
}

/// A stream left unpolled while more than `EVENT_BUFFER` events pass loses some of them; it must
/// still remove an instance that logged off meanwhile, from a fresh read of the table.
#[tokio::test]
async fn lagging_discover_stream_still_removes() {
    use tower::discover::{Change, Discover};
    let group = GroupId::from_bytes(rand::random());
    let start = |id: &'static str| {
        Instance::builder(group).id(id).url(format!("http://127.0.0.1:1/{id}")).interface("lo").ip_version(IpVersion::V4).start()
    };
    let leaving = start("leaving").await.unwrap();
    let busy = start("busy").await.unwrap();
    let discoverer =
        Discoverer::builder(group).interface("lo").ip_version(IpVersion::V4).rate_limit(0, 0).start().await.unwrap();
    assert!(wait_until(&discoverer, |table| table.len() == 2).await);
    let mut stream = discoverer.discover(|info| Some(info.id.clone())).await.unwrap();

    // Not polled from here on, like a balancer that sends no request for a while.
    leaving.shutdown().await.unwrap();
    let updates = msd::EVENT_BUFFER as u32 + 200;
    for load in 0..updates {
        busy.set_load(Some(load)).await.unwrap();
    }
    assert!(wait_until(&discoverer, |table| table.len() == 1 && table[0].load == Some(updates - 1)).await);

    let mut changes = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !changes.contains(&"remove leaving".to_owned()) && tokio::time::Instant::now() < deadline {
        let next = tokio::time::timeout(
            Duration::from_millis(500),
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_discover(cx)),
        )
        .await;
        match next {
            Ok(Some(Ok(Change::Insert(key, _)))) => changes.push(format!("insert {key}")),
            Ok(Some(Ok(Change::Remove(key)))) => changes.push(format!("remove {key}")),
            Ok(Some(Err(never))) => match never {},
            Ok(None) | Err(_) => {}
        }
    }
    assert!(changes.contains(&"remove leaving".to_owned()), "the stream never removed it: {changes:?}");
    assert!(discoverer.stats().await.unwrap().events_lagged > 0, "the scenario made the stream lag");
}
