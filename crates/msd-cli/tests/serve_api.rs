//! `msd serve` on the loopback interface: every HTTP endpoint against real instances.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let child = Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(args)
        .env("MSD_LOG", "warn")
        .env_remove("MSD_MULTICAST_INTERFACE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    client: reqwest::Client,
    _process: Process,
}

impl Server {
    async fn start(group: &str) -> Server {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let process = msd(&["serve", "--group", group, "--interface", "lo", "--ipv4", "--listen", &listen]);
        let server = Server { base: format!("http://{listen}"), client: reqwest::Client::new(), _process: process };
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
