//! `msd serve` on the loopback interface: every HTTP endpoint against real instances.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use msd_wire::native::{NativeKind, NativePacket};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn msd(args: &[&str]) -> Process {
    msd_logging_to(args, None)
}

/// Starts msd; with `log`, at log level info with its stderr written to that file.
fn msd_logging_to(args: &[&str], log: Option<&Path>) -> Process {
    let (level, stderr) = match log {
        Some(path) => ("info", Stdio::from(std::fs::File::create(path).expect("create the log file"))),
        None => ("warn", Stdio::null()),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(args)
        .env("MSD_LOG", level)
        .env_remove("MSD_MULTICAST_INTERFACE")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start msd");
    Process(child)
}

fn new_group() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_msd")).args(["group", "new", "--json"]).output().unwrap();
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    value["group_id"].as_str().unwrap().to_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn announce(group: &str, id: &str, extra: &[&str]) -> Process {
    let url = format!("http://127.0.0.1:9{:03}/", id.len());
    let mut args = vec!["announce", "--group", group, "--interface", "lo", "--ipv4", "--id", id, "--url", &url];
    args.extend_from_slice(extra);
    msd(&args)
}

struct Server {
    base: String,
    listen: String,
    client: reqwest::Client,
    process: Process,
}

impl Server {
    async fn start(group: &str) -> Server {
        Server::start_with(group, &[], None).await
    }

    /// Starts `msd serve` on the loopback interface with further arguments, logging to `log`
    /// when given.
    async fn start_with(group: &str, extra: &[&str], log: Option<&Path>) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--group", group, "--interface", "lo", "--ipv4", "--listen", &listen];
        args.extend_from_slice(extra);
        let process = msd_logging_to(&args, log);
        let server = Server { base: format!("http://{listen}"), listen: listen.clone(), client: reqwest::Client::new(), process };
        let deadline = Instant::now() + WAIT;
        while server.client.get(server.url("/healthz")).send().await.is_err() {
            assert!(Instant::now() < deadline, "msd serve did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap();
        (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
    }

    async fn wait_for_count(&self, path: &str, count: usize) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let (_, body) = self.get(path).await;
            if body.as_array().is_some_and(|list| list.len() == count) {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} never had {count} entries: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test]
async fn json_api_lists_filters_and_picks() {
    let group = new_group();
    let server = Server::start(&group).await;

    let (status, body) = server.get("/v1/pick").await;
    assert_eq!(status, 503, "no instance yet");
    assert!(body["error"].as_str().unwrap().contains("no serving instance"), "{body}");
    assert_eq!(server.get("/v1/prometheus-sd").await.1, serde_json::json!([]));

    let _a = announce(&group, "alpha", &["--metadata", "zone=a", "--weight", "5"]);
    let _b = announce(&group, "beta", &["--metadata", "zone=b", "--health", "draining"]);
    let all = server.wait_for_count("/v1/instances", 2).await;
    let ids: Vec<&str> = all.as_array().unwrap().iter().map(|entry| entry["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha", "beta"]);
    assert_eq!(all[0]["metadata"]["zone"], "a");
    assert_eq!(all[0]["weight"], 5);
    assert_eq!(all[0]["interface"], "lo");
    assert!(all[0]["first_seen"].as_str().unwrap().ends_with('Z'));

    let (_, zone_b) = server.get("/v1/instances?metadata.zone=b").await;
    assert_eq!(zone_b.as_array().unwrap().len(), 1);
    assert_eq!(zone_b[0]["id"], "beta");
    let (_, draining) = server.get("/v1/instances?health=draining").await;
    assert_eq!(draining[0]["id"], "beta");

    let (status, one) = server.get("/v1/instances/alpha").await;
    assert_eq!(status, 200);
    assert_eq!(one["url"], "http://127.0.0.1:9005/");
    let (status, missing) = server.get("/v1/instances/nobody").await;
    assert_eq!(status, 404);
    assert!(missing["error"].as_str().unwrap().contains("nobody"));

    for _ in 0..20 {
        let (status, picked) = server.get("/v1/pick?strategy=weighted").await;
        assert_eq!(status, 200);
        assert_eq!(picked["id"], "alpha", "the draining instance is never picked");
    }
    let (status, _) = server.get("/v1/pick?metadata.zone=b").await;
    assert_eq!(status, 503, "only a draining instance in zone b");

    for (path, parameter) in [
        ("/v1/instances?health=sick", "health"),
        ("/v1/instances?colour=red", "colour"),
        ("/v1/pick?strategy=fastest", "strategy"),
    ] {
        let (status, body) = server.get(path).await;
        assert_eq!(status, 400, "{path}");
        assert!(body["error"].as_str().unwrap().contains(parameter), "{path}: {body}");
    }

    let (_, targets) = server.get("/v1/prometheus-sd").await;
    let targets = targets.as_array().unwrap();
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["targets"][0], "127.0.0.1:9005");
    assert_eq!(targets[0]["labels"]["__meta_msd_metadata_zone"], "a");
    for (filter, id) in [("metadata.zone=b", "beta"), ("health=serving", "alpha"), ("health=draining&protocol=native", "beta")] {
        let (status, targets) = server.get(&format!("/v1/prometheus-sd?{filter}")).await;
        assert_eq!(status, 200, "{filter}: {targets}");
        assert_eq!(targets.as_array().unwrap().len(), 1, "{filter}: {targets}");
        assert_eq!(targets[0]["labels"]["__meta_msd_id"], id, "{filter}");
    }

    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "msd_instances{health=\"serving\"} 1",
        "msd_instances{health=\"draining\"} 1",
        "msd_instance_events_total{event=\"up\"} 2",
        "msd_packets_received_total",
        "msd_packets_rejected_total",
        "msd_decode_failures_total",
        "msd_authentication_failures_total",
        "msd_discovery_latency_seconds_count",
        "msd_http_requests_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (status, health) = server.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    let (status, _) = server.get("/no/such/route").await;
    assert_eq!(status, 404);
}

/// Reads server-sent events from a response until `count` events have arrived.
async fn read_events(response: &mut reqwest::Response, buffer: &mut String, count: usize) -> Vec<(String, String, Value)> {
    let mut events = Vec::new();
    let deadline = Instant::now() + WAIT;
    while events.len() < count {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event: ") {
                    name = value.to_owned();
                } else if let Some(value) = line.strip_prefix("id: ") {
                    id = value.to_owned();
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            if !name.is_empty() {
                events.push((name, id, serde_json::from_str(&data).unwrap()));
            }
        }
        if events.len() >= count {
            break;
        }
        let left = deadline.checked_duration_since(Instant::now()).expect("events in time");
        let chunk = tokio::time::timeout(left, response.chunk()).await.expect("events in time").unwrap().expect("stream open");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    events
}

#[tokio::test]
async fn event_stream_snapshot_changes_and_resume() {
    let group = new_group();
    let server = Server::start(&group).await;
    let _first = announce(&group, "first", &[]);
    server.wait_for_count("/v1/instances", 1).await;

    let mut stream = server.client.get(server.url("/v1/events")).send().await.unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let mut buffer = String::new();
    let snapshot = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(snapshot[0].0, "snapshot");
    assert_eq!(snapshot[0].2[0]["id"], "first");

    let second = announce(&group, "second", &[]);
    let up = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(up[0].0, "up");
    assert_eq!(up[0].2["instance"]["id"], "second");
    let up_id = up[0].1.clone();
    let (epoch, sequence) = up_id.split_once('-').expect("ids are epoch-sequence");
    assert!(sequence.parse::<u64>().is_ok(), "{up_id}");

    drop(second);
    let down = read_events(&mut stream, &mut buffer, 1).await;
    assert_eq!(down[0].0, "down");
    assert_eq!(down[0].2["reason"], "expired", "killed without LOGOFF");
    drop(stream);

    // A client that saw the Up reconnects and gets only what it missed.
    let mut resumed = server
        .client
        .get(server.url("/v1/events"))
        .header("Last-Event-ID", up_id.as_str())
        .send()
        .await
        .unwrap();
    let mut buffer = String::new();
    let missed = read_events(&mut resumed, &mut buffer, 1).await;
    assert_eq!(missed[0].0, "down");
    assert_eq!(missed[0].2["instance"]["id"], "second");

    // An unknown id, or one of an earlier server process, gets a fresh snapshot.
    for stale in ["999999".to_owned(), format!("{}-{sequence}", epoch.parse::<u64>().unwrap() - 1)] {
        let mut fresh = server.client.get(server.url("/v1/events")).header("Last-Event-ID", stale.as_str()).send().await.unwrap();
        let mut buffer = String::new();
        let snapshot = read_events(&mut fresh, &mut buffer, 1).await;
        assert_eq!(snapshot[0].0, "snapshot", "{stale}");
        assert_eq!(snapshot[0].2.as_array().unwrap().len(), 1, "{stale}");
    }
}

/// Sends `request` over a new connection and returns the status, the headers (names in lower
/// case) and the body, for requests reqwest would not send as written.
fn raw_request(listen: &str, request: &[u8]) -> (u16, BTreeMap<String, String>, String) {
    let mut connection = TcpStream::connect(listen).unwrap();
    connection.set_read_timeout(Some(WAIT)).unwrap();
    connection.write_all(request).unwrap();
    let mut response = Vec::new();
    connection.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no end of headers in {response:?}"));
    let mut lines = head.lines();
    let status = lines.next().and_then(|line| line.split(' ').nth(1)).and_then(|code| code.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

#[tokio::test]
async fn errors_are_json_with_status() {
    let group = new_group();
    let server = Server::start(&group).await;

    for (method, path, status) in [
        ("GET", "/v1/instances/%ff%fe", 400),
        ("GET", "/v1/instances/nobody", 404),
        ("GET", "/no/such/route", 404),
        ("PUT", "/no/such/route", 404),
        ("GET", "/v1/instances/", 404),
        ("POST", "/v1/instances", 405),
        ("DELETE", "/v1/instances", 405),
        ("DELETE", "/v1/instances/alpha", 405),
        ("POST", "/v1/events", 405),
        ("PATCH", "/metrics", 405),
    ] {
        let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (got, headers, body) = raw_request(&server.listen, request.as_bytes());
        assert_eq!(got, status, "{method} {path}: {body}");
        assert_eq!(headers.get("content-type").map(String::as_str), Some("application/json"), "{method} {path}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{method} {path}: body is not JSON: {body:?}"));
        let message = body["error"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{method} {path}: {body}");
        if status == 405 {
            assert_eq!(headers.get("allow").map(String::as_str), Some("GET,HEAD"), "{method} {path}");
            assert!(message.contains(method), "{method} {path}: {message}");
        }
    }

    let (_, _, body) = raw_request(&server.listen, b"GET /v1/instances/%ff%fe HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    assert!(body.contains("UTF-8"), "{body}");
}

#[tokio::test]
async fn unknown_parameters_rejected_everywhere() {
    let group = new_group();
    let server = Server::start(&group).await;
    let _alpha = announce(&group, "alpha", &[]);
    server.wait_for_count("/v1/instances", 1).await;

    for (path, parameter) in [
        ("/v1/events?health=serving", "health"),
        ("/v1/events?metadata.zone=a", "metadata.zone"),
        ("/metrics?format=json", "format"),
        ("/healthz?verbose=1", "verbose"),
        ("/v1/instances/alpha?fields=url", "fields"),
        ("/v1/prometheus-sd?colour=red", "colour"),
        ("/v1/prometheus-sd?health=sick", "health"),
    ] {
        // An event stream that ignored the parameter would never end, so the wait is bounded.
        let (status, body) = tokio::time::timeout(WAIT, server.get(path))
            .await
            .unwrap_or_else(|_| panic!("{path}: no complete response within {WAIT:?}"));
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["error"].as_str().unwrap_or_default().contains(parameter), "{path}: {body}");
    }

    for path in ["/v1/events", "/metrics", "/healthz", "/v1/instances/alpha", "/v1/prometheus-sd?health=serving"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
}

/// The access log writes the path of each request escaped, so a path with a character some
/// terminals take as a line break (U+0085, sent raw) stays on its own log line.
#[tokio::test]
async fn access_log_escapes_paths() {
    let group = new_group();
    let directory = tempfile::tempdir().unwrap();
    let log = directory.path().join("serve.log");
    let mut server = Server::start_with(&group, &[], Some(&log)).await;

    let (status, _, _) = raw_request(
        &server.listen,
        "GET /v1/instances/x\u{85}INFO\u{2028}forged HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".as_bytes(),
    );
    assert_eq!(status, 404);
    let (status, _, _) = raw_request(&server.listen, b"GET /v1/instances/%0a%1b HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    assert_eq!(status, 404);

    let _ = server.process.0.kill();
    let _ = server.process.0.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains('\u{85}'), "a raw U+0085 reached the log:\n{text}");
    assert!(!text.contains('\u{2028}'), "a raw U+2028 reached the log:\n{text}");
    let forged: Vec<&str> = text.lines().filter(|line| line.contains("forged")).collect();
    assert_eq!(forged.len(), 1, "one access line for the forged path:\n{text}");
    assert!(forged[0].contains(r#"path="/v1/instances/x\u{85}INFO\u{2028}forged""#), "{}", forged[0]);
    assert!(text.contains(r#"path="/v1/instances/%0a%1b""#), "percent escapes are logged as sent:\n{text}");
}

/// Instances in the crowd of [`event_clients_limited_and_bounded`]. With about 1.1 kB of JSON
/// each, one snapshot is about 5 MB.
const CROWD: usize = 4_000;

/// Returns the id of instance `number` of the crowd.
fn crowd_id(number: usize) -> String {
    format!("crowd-{number:05}")
}

/// Sends an ANNOUNCE for each instance of the crowd in `numbers` to the group on the loopback
/// interface, each with about 800 bytes of metadata.
fn announce_crowd(group: &str, numbers: &[usize], round: u64) {
    let group: msd::GroupId = group.parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, Some(socket2::Protocol::UDP)).unwrap();
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into()).unwrap();
    socket.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    socket.set_multicast_ttl_v4(1).unwrap();
    let destination: SocketAddr = SocketAddrV4::new(group.ipv4_multicast(), msd::SEED_PORT).into();

    let padding = "p".repeat(100);
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7"];
    let metadata: BTreeMap<&str, &str> = keys.iter().map(|key| (*key, padding.as_str())).collect();
    let timestamp_ms = u64::try_from(std::time::UNIX_EPOCH.elapsed().unwrap().as_millis()).unwrap();
    let mut packet = Vec::new();
    for (index, number) in numbers.iter().enumerate() {
        let id = crowd_id(*number);
        let announce = NativePacket {
            kind: Some(NativeKind::Announce),
            group: Some(group),
            timestamp_ms,
            id: Some(&id),
            incarnation: Some(1),
            sequence: Some(round),
            ttl_ms: Some(600_000),
            url: Some("http://127.0.0.1:9/"),
            metadata: metadata.clone(),
            ..NativePacket::default()
        };
        packet.clear();
        announce.encode(None, &mut packet).unwrap();
        socket.send_to(&packet, &destination.into()).unwrap();
        // Paced at no more than 5,000 packets a second, which a debug build on a busy machine
        // mostly keeps up with. The kernel drops what overflows the receive buffer, uncounted.
        if index % 5 == 4 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Returns the resident memory of a process in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).expect("VmRSS in /proc/PID/status");
    let kilobytes: u64 = line.split_whitespace().nth(1).and_then(|value| value.parse().ok()).expect("VmRSS value");
    kilobytes * 1024
}

/// Opens an event stream with a 4 KiB receive buffer and never reads from it.
fn stalled_event_client(listen: &str) -> socket2::Socket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let address: SocketAddr = listen.parse().unwrap();
    socket.connect(&address.into()).unwrap();
    let mut stream: TcpStream = socket.try_clone().unwrap().into();
    stream.write_all(b"GET /v1/events HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    socket
}

/// Event-stream clients that never read: at most 64 are served, the next gets 503 and is
/// counted, the stalled ones use a bounded amount of the server's memory, and other requests
/// are still served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_clients_limited_and_bounded() {
    const LIMIT: usize = 64;
    let group = new_group();
    let server = Server::start_with(&group, &["--rate-limit", "0"], None).await;

    // Announces sent again to the instances still missing, until the table has them all.
    let mut missing: Vec<usize> = (0..CROWD).collect();
    let deadline = Instant::now() + 3 * WAIT;
    for round in 1.. {
        announce_crowd(&group, &missing, round);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, body) = server.get("/v1/instances").await;
        let present: std::collections::BTreeSet<&str> =
            body.as_array().unwrap().iter().filter_map(|entry| entry["id"].as_str()).collect();
        missing.retain(|number| !present.contains(crowd_id(*number).as_str()));
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the table never had all {CROWD} instances: {} missing", missing.len());
    }
    let snapshot_bytes = server.client.get(server.url("/v1/instances")).send().await.unwrap().bytes().await.unwrap().len();
    let pid = server.process.0.id();
    let before = resident_bytes(pid);

    let stalled: Vec<socket2::Socket> = (0..LIMIT).map(|_| stalled_event_client(&server.listen)).collect();
    // Other requests are still served while the streams open. Their speed is a benchmark's
    // business, not this test's.
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, 200);
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if metrics.contains(&format!("msd_sse_clients {LIMIT}")) {
            break;
        }
        assert!(Instant::now() < deadline, "the stalled clients never all opened:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (status, body) = server.get("/v1/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap_or_default().contains(&LIMIT.to_string()), "{body}");
    let metrics = server.client.get(server.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("msd_sse_rejected_clients_total 1"), "{metrics}");

    // Let every stalled stream fill the buffers it can, then measure the memory they use.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..5 {
        let (status, _) = server.get("/healthz").await;
        assert_eq!(status, 200);
    }
    let grown = resident_bytes(pid).saturating_sub(before);
    let all_snapshots = u64::try_from(snapshot_bytes * LIMIT).unwrap();
    assert!(grown < all_snapshots / 3, "stalled clients grew the server by {grown} bytes; a snapshot is {snapshot_bytes}");

    // Closed streams free their places.
    drop(stalled);
    let deadline = Instant::now() + WAIT;
    loop {
        let response = server.client.get(server.url("/v1/events")).send().await.unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "places were not freed: {}", response.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends a GET of `path` with `Connection: close` and returns the status and body, retrying
/// the connect until the server listens.
fn get_when_listening(listen: &str, path: &str) -> (u16, String) {
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(listen).is_err() {
        assert!(Instant::now() < deadline, "msd serve never listened on {listen}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let (status, _, body) = raw_request(listen, request.as_bytes());
    (status, body)
}

/// Returns the value of a metric line `name value` in the text format.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A client over `--max-connections` waits until a place frees instead of being served or
/// refused, and connections that send nothing are closed after `--idle-timeout`, which frees
/// their places.
#[test]
fn connection_limit_and_idle_close() {
    let group = new_group();
    let listen = format!("127.0.0.1:{}", free_port());
    let args = ["serve", "--group", &group, "--interface", "lo", "--ipv4", "--listen", &listen, "--max-connections", "2", "--max-event-clients", "1", "--idle-timeout", "10s"];
    let _server = msd(&args);
    let (status, _) = get_when_listening(&listen, "/healthz");
    assert_eq!(status, 200);

    let silent: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(&listen).unwrap()).collect();
    let waiting = std::thread::spawn({
        let listen = listen.clone();
        move || get_when_listening(&listen, "/healthz")
    });
    // Both places are taken by connections that send nothing, so the request must still wait
    // (the idle timeout is ten times longer than this pause).
    std::thread::sleep(Duration::from_secs(1));
    assert!(!waiting.is_finished(), "a third connection was served while two held the places");

    for mut connection in silent {
        connection.set_read_timeout(Some(WAIT)).unwrap();
        let mut buffer = [0u8; 64];
        let read = connection.read(&mut buffer);
        assert!(matches!(read, Ok(0)) || read.as_ref().is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset), "a silent connection was not closed: {read:?}");
    }
    let (status, _) = waiting.join().unwrap();
    assert_eq!(status, 200, "the waiting request was not served once places were free");

    let (status, metrics) = get_when_listening(&listen, "/metrics");
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "msd_http_idle_connections_closed_total"), Some(2), "{metrics}");
    assert!(metric(&metrics, "msd_http_connection_limit_reached_total").is_some_and(|waits| waits >= 1), "{metrics}");
    // The scrape's own connection is open while the metrics are rendered.
    assert!(metric(&metrics, "msd_http_connections").is_some_and(|open| open >= 1), "{metrics}");
}

/// An event stream with no changes to send is kept open past the idle timeout by its comment
/// lines.
#[tokio::test]
async fn quiet_event_stream_outlives_idle_timeout() {
    let group = new_group();
    let server = Server::start_with(&group, &["--idle-timeout", "1s"], None).await;
    let mut response = server.client.get(server.url("/v1/events")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut buffer = String::new();
    let snapshot = read_events(&mut response, &mut buffer, 1).await;
    assert_eq!(snapshot[0].0, "snapshot");

    let mut comments = 0;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let chunk = tokio::time::timeout(WAIT, response.chunk()).await.expect("no byte for a long time").unwrap();
        let chunk = chunk.expect("the stream ended although comment lines kept it busy");
        comments += String::from_utf8_lossy(&chunk).matches(":\n\n").count();
    }
    assert!(comments >= 1, "no comment line in 3 s with a 1 s idle timeout");
}

/// Starts `msd serve` on the loopback interface with `extra` arguments, logging at info to
/// `log`, and returns it with its listen address once it listens.
fn serve_logging(extra: &[&str], log: &Path) -> (Process, String) {
    let group = new_group();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["serve", "--group", &group, "--interface", "lo", "--ipv4", "--listen", &listen];
    args.extend_from_slice(extra);
    let server = msd_logging_to(&args, Some(log));
    let (status, _) = get_when_listening(&listen, "/healthz");
    assert_eq!(status, 200);
    (server, listen)
}

/// Opens a connection and sends the start of a request head, which the server then waits on.
fn unfinished_request(listen: &str) -> TcpStream {
    let mut connection = TcpStream::connect(listen).unwrap();
    connection.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ").unwrap();
    // Lets the server read the partial head, so that a request is in progress.
    std::thread::sleep(Duration::from_millis(200));
    connection
}

fn signal(process: &Process, name: &str) {
    let status = Command::new("kill").args(["-s", name, &process.0.id().to_string()]).status().unwrap();
    assert!(status.success(), "kill -s {name} failed");
}

/// Waits for the process to exit and returns whether it did within [`WAIT`].
fn exited(process: &mut Process) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if process.0.try_wait().unwrap().is_some() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A client that sends its request head one byte at a time is closed once the head has taken
/// longer than the idle timeout, although every byte restarts that timeout.
#[test]
fn trickled_request_head_is_closed() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (_server, listen) = serve_logging(&["--idle-timeout", "2s"], log.path());
    let mut connection = unfinished_request(&listen);
    connection.set_read_timeout(Some(Duration::from_millis(300))).unwrap();

    let deadline = Instant::now() + WAIT;
    let closed = loop {
        if Instant::now() > deadline {
            break false;
        }
        if connection.write_all(b"a").is_err() {
            break true;
        }
        let mut buffer = [0u8; 256];
        match connection.read(&mut buffer) {
            Ok(_) => break true,
            Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(closed, "a client trickling its request head kept its connection for {WAIT:?}");
    let (_, metrics) = get_when_listening(&listen, "/metrics");
    assert_eq!(metric(&metrics, "msd_http_request_head_timeouts_total"), Some(1), "{metrics}");
}

/// On SIGTERM the server waits for open requests at most `--drain-timeout`, then exits.
#[test]
fn shutdown_bounded_by_drain_timeout() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut server, listen) = serve_logging(&["--drain-timeout", "1s"], log.path());
    let _connection = unfinished_request(&listen);

    signal(&server, "TERM");
    assert!(exited(&mut server), "msd serve did not exit after SIGTERM with a request open");
    let output = std::fs::read_to_string(log.path()).unwrap();
    assert!(output.contains("closing connections still open after the drain timeout"), "{output}");
    assert!(output.contains("stopped"), "{output}");
}

/// A second SIGTERM during the drain closes the open connections at once.
#[test]
fn second_signal_skips_the_drain() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let (mut server, listen) = serve_logging(&["--drain-timeout", "10m"], log.path());
    let _connection = unfinished_request(&listen);

    signal(&server, "TERM");
    let deadline = Instant::now() + WAIT;
    while !std::fs::read_to_string(log.path()).unwrap().contains("shutting down") {
        assert!(Instant::now() < deadline, "no shutdown logged after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&server, "TERM");
    assert!(exited(&mut server), "msd serve did not exit after a second SIGTERM");
    let output = std::fs::read_to_string(log.path()).unwrap();
    assert!(output.contains("second signal; closing open connections now"), "{output}");
}

/// Reads the soft and hard limits on open files of a process.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|line| line.starts_with("Max open files")).expect("Max open files in /proc/PID/limits");
    let values: Vec<u64> = line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
    (values[0], values[1])
}

/// Starts `msd serve` on the loopback interface after the shell commands `limits` (such as
/// `ulimit -Sn 256`), logging at warn to `log`, and returns it once `/healthz` responds.
fn serve_with_limits(limits: &str, log: &Path) -> Process {
    let group = new_group();
    let listen = format!("127.0.0.1:{}", free_port());
    let command = format!("{limits} && exec \"$0\" serve --group {group} --interface lo --ipv4 --listen {listen}");
    let child = Command::new("sh")
        .args(["-c", &command, env!("CARGO_BIN_EXE_msd")])
        .env("MSD_LOG", "warn")
        .env_remove("MSD_MULTICAST_INTERFACE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    let server = Process(child);
    let (status, _) = get_when_listening(&listen, "/healthz");
    assert_eq!(status, 200);
    server
}

/// Started with a soft limit of 256 open files, `msd serve` raises it so that its 1,024
/// connections and 64 other files fit, as far as the hard limit allows.
#[test]
fn open_file_limit_raised_for_connections() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = serve_with_limits("ulimit -Sn 256", log.path());

    let (soft, hard) = open_file_limits(server.0.id());
    assert_eq!(soft, hard.min(1024 + 64), "soft limit {soft}, hard limit {hard}");
    if hard >= 1024 + 64 {
        let output = std::fs::read_to_string(log.path()).unwrap();
        assert!(!output.contains("open-file limit is below"), "{output}");
    }
}

/// With a hard limit of 300 open files, `msd serve` raises its soft limit to 300 and warns that
/// its 1,024 connections may not fit.
#[test]
fn open_file_limit_too_low_warns() {
    let log = tempfile::NamedTempFile::new().unwrap();
    let server = serve_with_limits("ulimit -Sn 256 && ulimit -Hn 300", log.path());

    let (soft, hard) = open_file_limits(server.0.id());
    assert_eq!((soft, hard), (300, 300));
    let output = std::fs::read_to_string(log.path()).unwrap();
    assert!(output.contains("open-file limit is below what --max-connections connections may need"), "{output}");
    assert!(output.contains("needed=1088"), "{output}");
}
