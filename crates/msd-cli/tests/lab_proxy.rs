//! `msd proxy` in front of real HTTP backends on lab hosts: spread, a crashed backend and a
//! draining one.
//!
//! Host 0 runs `msd proxy` and the client; every other host runs one HTTP backend that announces
//! itself with the msd library and answers every request with its own name.

mod support;

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use msd::{GroupId, Health, Instance};
use msd_lab::{Host, Lab};
use support::{msd, GROUP, WAIT};

const BACKEND_PORT: u16 = 8080;
const PROXY: &str = "127.0.0.1:7000";

/// What a test can tell a backend to do.
enum Order {
    Drain,
    /// Stop serving and announcing at once, without a LOGOFF, as a crash would.
    Crash,
}

/// Starts an HTTP backend named `name` in `host`, announced as `name`.
fn backend(host: &Host, name: &str) -> mpsc::Sender<Order> {
    let (orders, inbox) = mpsc::channel::<Order>();
    let (ready, started) = mpsc::channel();
    let name = name.to_owned();
    let address = host.ipv4();
    host.run(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind((address, BACKEND_PORT)).await.unwrap();
            let reply = name.clone();
            let app = axum::Router::new().fallback(move || {
                let reply = reply.clone();
                async move { reply }
            });
            let server = tokio::spawn(async move { axum::serve(listener, app).await });
            let group: GroupId = GROUP.parse().unwrap();
            let instance = Instance::builder(group)
                .id(name.clone())
                .url(format!("http://{address}:{BACKEND_PORT}/"))
                .start()
                .await
                .unwrap();
            ready.send(()).unwrap();
            loop {
                let order = tokio::task::block_in_place(|| inbox.recv());
                match order {
                    Ok(Order::Drain) => instance.set_health(Health::Draining).await.unwrap(),
                    Ok(Order::Crash) | Err(_) => {
                        server.abort();
                        // Leaves the instance's task to die with the runtime, so no LOGOFF goes out.
                        std::mem::forget(instance);
                        return;
                    }
                }
            }
        });
    });
    started.recv_timeout(WAIT).expect("backend started");
    orders
}

/// Sends `count` sequential requests through the proxy from host 0 and returns how many each
/// backend answered, with "error" for failed requests.
fn send_requests(host: &Host, count: usize, pause: Duration) -> BTreeMap<String, usize> {
    host.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(5)).build().unwrap();
            let mut tally = BTreeMap::new();
            for _ in 0..count {
                let answer = match client.get(format!("http://{PROXY}/")).send().await {
                    Ok(response) => response.text().await.unwrap_or_else(|_| "error".into()),
                    Err(_) => "error".to_owned(),
                };
                *tally.entry(answer).or_insert(0) += 1;
                tokio::time::sleep(pause).await;
            }
            tally
        })
    })
    .join()
    .unwrap()
}

fn start_proxy(host: &Host) -> msd_lab::LabChild {
    let proxy = msd(host, &["proxy", "--group", GROUP, "--listen", PROXY]);
    assert!(proxy.wait_for_line(WAIT, |line| line.contains("proxying")).is_some(), "{}", proxy.output());
    proxy
}

/// Waits until a batch of requests reaches exactly the backends in `expected`.
fn settle(host: &Host, expected: &[&str]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let tally = send_requests(host, 10, Duration::ZERO);
        if tally.keys().all(|name| expected.contains(&name.as_str())) && tally.len() == expected.len() {
            return;
        }
        assert!(Instant::now() < deadline, "never settled on {expected:?}: {tally:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn proxy_spreads_and_survives_crash_and_drain() {
    let Some(lab) = Lab::for_test(4) else { return };
    let client_host = lab.host(0);
    let proxy = start_proxy(client_host);
    let backends: Vec<_> = ["red", "green", "blue"].iter().zip(1..).map(|(name, index)| backend(lab.host(index), name)).collect();
    settle(client_host, &["blue", "green", "red"]);

    // Spread: 300 sequential requests over three idle backends.
    let tally = send_requests(client_host, 300, Duration::ZERO);
    assert_eq!(tally.get("error"), None, "{tally:?}");
    for name in ["red", "green", "blue"] {
        let count = tally.get(name).copied().unwrap_or(0);
        // Expected 100 each with a uniform choice; the standard deviation is about 8.
        assert!((50..=150).contains(&count), "{name} got {count} of 300: {tally:?}");
    }

    // Drain: green gets no new connection once the proxy has heard of it.
    backends[1].send(Order::Drain).unwrap();
    settle(client_host, &["blue", "red"]);
    let tally = send_requests(client_host, 100, Duration::ZERO);
    assert_eq!(tally.get("green"), None, "a draining backend got new connections: {tally:?}");
    assert_eq!(tally.get("error"), None, "{tally:?}");

    // Crash: red stops answering without a LOGOFF. Until the discoverer expires it (at most
    // 2.9 s), connects to it fail and the proxy retries on blue; no request may fail.
    backends[0].send(Order::Crash).unwrap();
    let tally = send_requests(client_host, 200, Duration::from_millis(20));
    assert_eq!(tally.get("error"), None, "requests failed after the crash: {tally:?}");
    assert_eq!(tally.get("red"), None, "{tally:?}");
    let retried = proxy.output().lines().filter(|line| line.contains("connect failed") && line.contains("red")).count();
    eprintln!("after the crash: {tally:?}; {retried} connects to red failed and were retried");
}

#[test]
fn no_backend_closes_client_at_once() {
    let Some(lab) = Lab::for_test(1) else { return };
    let host = lab.host(0);
    let _proxy = start_proxy(host);
    let elapsed = host
        .run(|| {
            use std::io::Read;
            let started = Instant::now();
            let mut stream = std::net::TcpStream::connect(PROXY).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut buffer = [0u8; 16];
            let read = stream.read(&mut buffer);
            (read.map_err(|error| error.kind()), started.elapsed())
        })
        .join()
        .unwrap();
    assert_eq!(elapsed.0, Ok(0), "the proxy closed the connection without data");
    eprintln!("closed after {:?}", elapsed.1);
}
