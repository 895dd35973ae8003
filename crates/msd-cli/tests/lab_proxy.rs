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

/// Ids that would end their label value and add series of their own if `/metrics` wrote them
/// unescaped, and that would start forged log lines if logged as they are.
const GOOD_ID: &str = "good\"} 1\nmsd_proxy_connections_total{result=\"forwarded\"} 999999\nfake_metric{a=\"";
const DEAD_ID: &str = "dead\\\"} 2\r\n\u{1b}[2Jfake_metric{b=\"";

/// The label values of `GOOD_ID` and `DEAD_ID`, escaped as the text exposition format requires.
const GOOD_LABEL: &str = r#"good\"} 1\nmsd_proxy_connections_total{result=\"forwarded\"} 999999\nfake_metric{a=\""#;
const DEAD_LABEL: &str = "dead\\\\\\\"} 2\r\\n\u{1b}[2Jfake_metric{b=\\\"";

const METRICS: &str = "127.0.0.1:9100";

/// Announces each `(id, url)` from `host`, after starting a TCP server on `hold_port` (when
/// given) that accepts connections and keeps them open. The instances stay up until the returned
/// sender is dropped.
fn announce_all(host: &Host, instances: Vec<(String, String)>, hold_port: Option<u16>) -> mpsc::Sender<()> {
    let (stop, stopped) = mpsc::channel::<()>();
    let (ready, started) = mpsc::channel();
    let address = host.ipv4();
    host.run(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        runtime.block_on(async move {
            if let Some(port) = hold_port {
                let listener = tokio::net::TcpListener::bind((address, port)).await.unwrap();
                tokio::spawn(async move {
                    while let Ok((mut stream, _)) = listener.accept().await {
                        tokio::spawn(async move {
                            let mut sink = tokio::io::sink();
                            let _ = tokio::io::copy(&mut stream, &mut sink).await;
                        });
                    }
                });
            }
            let group: GroupId = GROUP.parse().unwrap();
            let mut running = Vec::new();
            for (id, url) in instances {
                running.push(Instance::builder(group).id(id).url(url).start().await.unwrap());
            }
            ready.send(()).unwrap();
            let _ = tokio::task::block_in_place(|| stopped.recv());
            for instance in running {
                let _ = instance.shutdown().await;
            }
        });
    });
    started.recv_timeout(WAIT).expect("instances started");
    stop
}

/// Starts `msd proxy` in `host` with `/metrics` on [`METRICS`] and debug logs of the proxy
/// module alone, because the tests below read the proxy's own log lines.
fn start_proxy_with_metrics(host: &Host) -> msd_lab::LabChild {
    let mut command = host.command(env!("CARGO_BIN_EXE_msd"));
    command.args(["proxy", "--group", GROUP, "--listen", PROXY, "--metrics-listen", METRICS]);
    command.env("MSD_LOG", "info,msd::proxy=debug").env_remove("MSD_MULTICAST_INTERFACE");
    let proxy = host.spawn(command).expect("start msd proxy");
    assert!(proxy.wait_for_line(WAIT, |line| line.contains("proxying")).is_some(), "{}", proxy.output());
    proxy
}

/// Fetches the proxy's `/metrics` text over HTTP/1.1, from inside a lab host.
fn fetch_metrics() -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(METRICS).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: msd\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    body.to_owned()
}

/// Fetches `/metrics` until it has the line `expected`, from inside a lab host.
fn wait_for_metrics_line(expected: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = fetch_metrics();
        if text.lines().any(|line| line == expected) {
            return;
        }
        assert!(Instant::now() < deadline, "never got {expected:?} in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of `text` that start with `prefix`.
fn lines_starting<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|line| line.starts_with(prefix)).collect()
}

#[test]
fn hostile_ids_escaped_in_metrics_and_logs() {
    let Some(lab) = Lab::for_test(2) else { return };
    let client_host = lab.host(0);
    let proxy = start_proxy_with_metrics(client_host);
    // GOOD_ID gets a server that keeps connections open, and nothing listens on DEAD_ID's port.
    let address = lab.host(1).ipv4();
    let instances = vec![
        (GOOD_ID.to_owned(), format!("http://{address}:{BACKEND_PORT}/")),
        (DEAD_ID.to_owned(), format!("http://{address}:{}/", BACKEND_PORT + 1)),
        ("zero".to_owned(), format!("http://{address}:0/")),
    ];
    let _instances = announce_all(lab.host(1), instances, Some(BACKEND_PORT));

    // Opens client connections, kept open, until one was forwarded to GOOD_ID and a connect to
    // DEAD_ID failed. Power-of-two-choices prefers DEAD_ID once GOOD_ID has a connection.
    let good_series = format!("msd_proxy_active_connections{{instance=\"{GOOD_LABEL}\"}} ");
    let dead_series = format!("msd_proxy_connect_errors_total{{instance=\"{DEAD_LABEL}\"}} ");
    let (good, dead) = (good_series.clone(), dead_series.clone());
    let metrics = client_host
        .run(move || {
            let deadline = Instant::now() + WAIT;
            let mut clients = Vec::new();
            loop {
                let text = fetch_metrics();
                let forwarded = lines_starting(&text, &good).iter().any(|line| !line.ends_with(" 0"));
                if forwarded && !lines_starting(&text, &dead).is_empty() {
                    return text;
                }
                assert!(Instant::now() < deadline, "no forwarded connection and failed connect in time:\n{text}");
                clients.push(std::net::TcpStream::connect(PROXY).unwrap());
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .join()
        .unwrap();

    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let value = line.rsplit_once(' ').map(|(_, value)| value);
        assert!(line.starts_with("msd_proxy_"), "a line of another metric: {line:?} in:\n{metrics}");
        assert!(value.is_some_and(|value| value.parse::<f64>().is_ok()), "a line without a value: {line:?} in:\n{metrics}");
    }
    assert_eq!(lines_starting(&metrics, &good_series).len(), 1, "{metrics}");
    assert_eq!(lines_starting(&metrics, &dead_series).len(), 1, "{metrics}");
    assert_eq!(lines_starting(&metrics, "msd_proxy_active_connections{").len(), 1, "{metrics}");
    assert_eq!(lines_starting(&metrics, "msd_proxy_connect_errors_total{").len(), 1, "{metrics}");
    let forwarded = lines_starting(&metrics, "msd_proxy_connections_total{result=\"forwarded\"} ");
    assert_eq!(forwarded.len(), 1, "{metrics}");
    assert!(!forwarded[0].ends_with(" 999999"), "{metrics}");
    assert_eq!(lines_starting(&metrics, "msd_proxy_unusable_instances_total ").first().copied(), Some("msd_proxy_unusable_instances_total 1"), "{metrics}");

    // Port 0: skipped with one warning and never tried. Ids reach the log escaped, so no
    // control character from them and no forged line appears.
    let log = proxy.output();
    let skipped: Vec<_> = log.lines().filter(|line| line.contains("instance skipped")).collect();
    assert_eq!(skipped.len(), 1, "{log}");
    assert!(skipped[0].contains("id=\"zero\""), "{log}");
    assert!(!log.lines().any(|line| line.contains("connect failed") && line.contains("zero")), "{log}");
    assert!(log.lines().any(|line| line.contains("connect failed") && line.contains(r#"id="dead\\\"} 2\r\n\u{1b}[2Jfake_metric{b=\"""#)), "{log}");
    assert!(!log.contains('\u{1b}'), "{log:?}");
    assert!(!log.contains('\r'), "{log:?}");
    assert!(!log.lines().any(|line| line.starts_with("fake_metric") || line.starts_with("msd_proxy_")), "{log}");
}

#[test]
fn unusable_flood_warnings_bounded() {
    const FLOOD: usize = 50;
    let Some(lab) = Lab::for_test(2) else { return };
    let client_host = lab.host(0);
    let started = Instant::now();
    let proxy = start_proxy_with_metrics(client_host);
    let address = lab.host(1).ipv4();
    let flood = (0..FLOOD).map(|index| (format!("zero-{index}"), format!("http://{address}:0/"))).collect();
    let _flood = announce_all(lab.host(1), flood, None);

    let counted = format!("msd_proxy_unusable_instances_total {FLOOD}");
    client_host.run(move || wait_for_metrics_line(&counted)).join().unwrap();
    let elapsed = started.elapsed();

    // One more unusable instance, a window later, gets a warning that reports what the flood's
    // last window suppressed.
    std::thread::sleep(Duration::from_millis(1100));
    let _late = announce_all(lab.host(1), vec![("late".to_owned(), format!("http://{address}:0/"))], None);
    let late = proxy.wait_for_line(WAIT, |line| line.contains("instance skipped") && line.contains("id=\"late\""));
    assert!(late.is_some(), "no warning for the late instance:\n{}", proxy.output());

    // The proxy admits 5 warnings per one-second window, and the windows that began before the
    // flood was counted are at most the whole seconds elapsed plus one. The `suppressed` fields
    // of the warnings logged add up to the warnings left out.
    let log = proxy.output();
    let skipped: Vec<&str> = log.lines().filter(|line| line.contains("instance skipped")).collect();
    let warned = skipped.len() - 1;
    let windows = usize::try_from(elapsed.as_secs()).unwrap() + 1;
    assert!(warned < FLOOD, "{warned} warnings for {FLOOD} unusable instances:\n{log}");
    assert!(warned <= 5 * windows, "{warned} warnings in {elapsed:?}:\n{log}");
    let reported: usize = skipped
        .iter()
        .filter_map(|line| line.split_once("suppressed=")?.1.split(' ').next()?.parse::<usize>().ok())
        .sum();
    assert_eq!(reported, FLOOD - warned, "{log}");
    let counted_late = format!("msd_proxy_unusable_instances_total {}", FLOOD + 1);
    client_host.run(move || wait_for_metrics_line(&counted_late)).join().unwrap();
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
