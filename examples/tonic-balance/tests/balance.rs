//! Two echo servers and a balanced client in one process, found through msd on the loopback
//! interface in IPv4 mode. Each run uses a fresh random group, so nothing else interferes.

use std::time::Duration;

use msd::{Discoverer, GroupId, Instance, IpVersion};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous limit for each step; the test fails rather than hangs when it passes.
const WAIT: Duration = Duration::from_secs(20);

/// Calls sent through the balanced channel. With both servers ready, p2c picks either one with
/// equal chance, so one server missing all of them has a probability of about 2^-100.
const CALLS: usize = 100;

struct RunningServer {
    instance: Instance,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

async fn start_server(group: GroupId, name: &str) -> RunningServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("local address"));
    let instance = Instance::builder(group)
        .id(name)
        .url(url)
        .interface("lo")
        .ip_version(IpVersion::V4)
        .start()
        .await
        .expect("start the msd instance");
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = async {
        let _ = stopped.await;
    };
    let task = tokio::spawn(tonic_balance::serve(name.to_owned(), listener, shutdown));
    RunningServer { instance, stop, task }
}

async fn stop_server(server: RunningServer) {
    server.instance.shutdown().await.expect("log off");
    let _ = server.stop.send(());
    let result = tokio::time::timeout(WAIT, server.task).await.expect("server stops in time");
    result.expect("server task did not panic").expect("server ran without a transport error");
}

#[tokio::test]
async fn client_reaches_both_servers() {
    let group = GroupId::from_bytes(rand::random());
    let east = start_server(group, "east").await;
    let west = start_server(group, "west").await;
    let discoverer = Discoverer::builder(group)
        .interface("lo")
        .ip_version(IpVersion::V4)
        .start()
        .await
        .expect("start the discoverer");

    let serving = tonic_balance::wait_for_serving(&discoverer, 2, WAIT).await.expect("discoverer running");
    assert_eq!(serving, 2, "both servers discovered");

    let channel = tonic_balance::balance_channel(&discoverer).await.expect("discoverer running");
    let tally = tokio::time::timeout(WAIT, tonic_balance::tally_who(channel, CALLS))
        .await
        .expect("calls finish in time")
        .expect("every call succeeds");
    assert_eq!(tally.values().sum::<usize>(), CALLS, "every call answered: {tally:?}");
    assert!(tally.get("east").copied().unwrap_or(0) > 0, "east answered no call: {tally:?}");
    assert!(tally.get("west").copied().unwrap_or(0) > 0, "west answered no call: {tally:?}");
    assert_eq!(tally.len(), 2, "only east and west answered: {tally:?}");

    discoverer.shutdown().await;
    stop_server(east).await;
    stop_server(west).await;
}
