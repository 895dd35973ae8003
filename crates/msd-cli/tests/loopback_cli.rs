//! The `msd` binary on the loopback interface in IPv4 mode: health checks against real servers
//! and key rotation by SIGHUP. No root needed; each test uses its own random group.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A running `msd` whose output lines are collected.
struct Msd {
    child: Child,
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Msd {
    fn start(args: &[&str]) -> Msd {
        let mut child = Command::new(env!("CARGO_BIN_EXE_msd"))
            .args(args)
            .env("MSD_LOG", "info")
            .env_remove("MSD_MULTICAST_INTERFACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start msd");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        for stream in [child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>), child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>)].into_iter().flatten() {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let (list, changed) = &*lines;
                    list.lock().unwrap().push(line);
                    changed.notify_all();
                }
            });
        }
        Msd { child, lines }
    }

    fn output(&self) -> String {
        self.lines.0.lock().unwrap().join("\n")
    }

    /// Waits for the `skip + 1`-th line that `predicate` accepts.
    fn wait_for(&self, skip: usize, predicate: impl FnMut(&str) -> bool) -> Option<String> {
        self.wait_for_from(0, skip, predicate)
    }

    /// Like [`Msd::wait_for`], looking only at the lines from index `from` on.
    fn wait_for_from(&self, from: usize, skip: usize, mut predicate: impl FnMut(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        let (list, changed) = &*self.lines;
        let mut lines = list.lock().unwrap();
        loop {
            let found: Vec<&String> = lines.iter().skip(from).filter(|line| predicate(line)).collect();
            if let Some(line) = found.get(skip) {
                return Some((*line).clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = changed.wait_timeout(lines, left).unwrap().0;
        }
    }

    fn wait_event(&self, skip: usize, kind: &str, id: &str) -> Value {
        let line = self.wait_for(skip, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|value| value["event"] == kind && value["instance"]["id"] == id)
        });
        let line = line.unwrap_or_else(|| panic!("no {kind} event for {id}:\n{}", self.output()));
        serde_json::from_str(&line).unwrap()
    }

    fn line_count(&self) -> usize {
        self.lines.0.lock().unwrap().len()
    }

    /// Waits for an up or changed event, among the lines from index `from` on, that shows `id`
    /// with `health`.
    fn wait_health(&self, from: usize, id: &str, health: &str) -> Value {
        let line = self.wait_for_from(from, 0, |line| {
            serde_json::from_str::<Value>(line).is_ok_and(|value| {
                (value["event"] == "up" || value["event"] == "changed")
                    && value["instance"]["id"] == id
                    && value["instance"]["health"] == health
            })
        });
        let line = line.unwrap_or_else(|| panic!("{id} never became {health}:\n{}", self.output()));
        serde_json::from_str(&line).unwrap()
    }

    fn count_events(&self, kind: &str) -> usize {
        self.lines.0.lock().unwrap().iter().filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|value| value["event"] == kind)
        }).count()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args(["-s", signal, &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }
}

impl Drop for Msd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn new_group() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_msd")).args(["group", "new", "--json"]).output().unwrap();
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    value["group_id"].as_str().unwrap().to_owned()
}

fn loopback<'a>(group: &'a str, command: &'a str) -> Vec<&'a str> {
    vec![command, "--group", group, "--interface", "lo", "--ipv4"]
}

/// Serves `GET /health` with the status in `status`, on an ephemeral loopback port.
fn health_server(status: Arc<AtomicU16>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().route(
                "/health",
                axum::routing::get(move || {
                    let status = Arc::clone(&status);
                    async move { axum::http::StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap() }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    port
}

#[test]
fn http_check_flips_health() {
    let group = new_group();
    let status = Arc::new(AtomicU16::new(200));
    let port = health_server(Arc::clone(&status));
    let check_url = format!("http://127.0.0.1:{port}/health");

    let mut browse = loopback(&group, "browse");
    browse.extend(["--watch", "--json"]);
    let watcher = Msd::start(&browse);
    let mut announce = loopback(&group, "announce");
    announce.extend(["--id", "checked", "--url", "http://127.0.0.1:1/", "--check-http", &check_url]);
    announce.extend(["--check-interval", "200ms", "--check-fall", "2", "--check-rise", "2"]);
    let _instance = Msd::start(&announce);

    // The instance starts failing and serves once its first check has passed; the watcher may
    // join late and see only the second state.
    watcher.wait_health(0, "checked", "serving");

    let before_flip = watcher.line_count();
    status.store(503, Ordering::SeqCst);
    let failing = watcher.wait_health(before_flip, "checked", "failing");
    assert_eq!(failing["event"], "changed");
    assert_eq!(failing["previous"]["health"], "serving");

    let before_recovery = watcher.line_count();
    status.store(200, Ordering::SeqCst);
    let recovered = watcher.wait_health(before_recovery, "checked", "serving");
    assert_eq!(recovered["previous"]["health"], "failing");
}

#[test]
fn tcp_check_drains_when_port_closes() {
    let group = new_group();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();

    let mut browse = loopback(&group, "browse");
    browse.extend(["--watch", "--json"]);
    let watcher = Msd::start(&browse);
    let mut announce = loopback(&group, "announce");
    announce.extend(["--id", "tcp-checked", "--url", "http://127.0.0.1:1/", "--check-tcp", &address]);
    announce.extend(["--check-interval", "200ms", "--check-fall", "1", "--check-fail-health", "draining"]);
    let _instance = Msd::start(&announce);
    watcher.wait_health(0, "tcp-checked", "serving");

    let before_close = watcher.line_count();
    drop(listener);
    let draining = watcher.wait_health(before_close, "tcp-checked", "draining");
    assert_eq!(draining["previous"]["health"], "serving");
}

/// Rotates the key of a running instance and discoverer with SIGHUP, in the three documented
/// steps, and checks that the instance is never lost.
#[test]
fn key_rotation_by_sighup_loses_nothing() {
    let group = new_group();
    let dir = std::env::temp_dir().join(format!("msd-rotation-{}-{group}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = |name: &str| {
        let path = dir.join(name);
        let status = Command::new(env!("CARGO_BIN_EXE_msd")).args(["key", "new", "--output"]).arg(&path).status().unwrap();
        assert!(status.success());
        let text = std::fs::read_to_string(&path).unwrap();
        text.lines().find_map(|line| line.strip_prefix("primary ")).unwrap().to_owned()
    };
    let (old, new) = (key("old"), key("new"));
    let ring = dir.join("ring");
    std::fs::write(&ring, format!("primary {old}\n")).unwrap();
    let ring_arg = ring.to_str().unwrap().to_owned();

    let mut browse = loopback(&group, "browse");
    browse.extend(["--watch", "--json", "--key-file", &ring_arg]);
    let watcher = Msd::start(&browse);
    let mut announce = loopback(&group, "announce");
    announce.extend(["--id", "rotating", "--url", "http://127.0.0.1:1/", "--key-file", &ring_arg]);
    let instance = Msd::start(&announce);
    watcher.wait_event(0, "up", "rotating");

    let steps = [
        format!("primary {old}\naccept {new}\n"),
        format!("primary {new}\naccept {old}\n"),
        format!("primary {new}\n"),
    ];
    for (number, step) in steps.iter().enumerate() {
        std::fs::write(&ring, step).unwrap();
        // The instance first, then the discoverer: in step two the instance signs with the new
        // key before the discoverer has made it primary, which it accepts since step one.
        instance.signal("HUP");
        assert!(instance.wait_for(number, |line| line.contains("key ring reloaded")).is_some(), "{}", instance.output());
        watcher.signal("HUP");
        assert!(watcher.wait_for(number, |line| line.contains("key ring reloaded")).is_some(), "{}", watcher.output());
        // Several heartbeats and more than the TTL under the new ring.
        std::thread::sleep(Duration::from_millis(2500));
    }
    assert_eq!(watcher.count_events("down"), 0, "instance lost during rotation:\n{}", watcher.output());
    assert_eq!(watcher.count_events("up"), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A settings file gives `announce` and `browse` their flags, and an unknown key is a usage
/// error.
#[test]
fn config_file_sets_flags() {
    let group = new_group();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("msd.toml");
    let settings = format!(
        "group = \"{group}\"\ninterface = \"lo\"\nipv4 = true\n\n[announce]\nid = \"from-file\"\nurl = \"http://127.0.0.1:1/\"\nmetadata = {{ zone = \"eu-1\" }}\n\n[browse]\ntimeout = \"30s\"\n"
    );
    std::fs::write(&config, settings).unwrap();
    let config_arg = config.to_str().unwrap();
    let _instance = Msd::start(&["--config", config_arg, "announce"]);

    let output = Command::new(env!("CARGO_BIN_EXE_msd"))
        .args(["browse", "--json", "--timeout", "2s"])
        .env("MSD_CONFIG", config_arg)
        .env_remove("MSD_MULTICAST_INTERFACE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let listed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed[0]["id"], "from-file", "{listed}");
    assert_eq!(listed[0]["metadata"]["zone"], "eu-1", "{listed}");

    std::fs::write(&config, "heartbeat = \"1s\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_msd")).args(["--config", config_arg, "browse"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("unknown setting `heartbeat`"), "{message}");
}

/// Echoes every line back on each connection, on an ephemeral loopback port.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::io::Write::write_all(&mut writer, format!("{line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// Sends one line through `connection` and returns the line that comes back, or the error.
fn echo(connection: &mut std::net::TcpStream, text: &str) -> std::io::Result<String> {
    std::io::Write::write_all(connection, format!("{text}\n").as_bytes())?;
    let mut reader = BufReader::new(connection.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    Ok(line.trim_end().to_owned())
}

/// With `--max-connections 1`, a second client is not forwarded while the first is open, and
/// is forwarded as soon as the first closes.
#[test]
fn proxy_waits_over_connection_limit() {
    let group = new_group();
    let backend = echo_server();
    let url = format!("tcp://127.0.0.1:{backend}");
    let mut announce = loopback(&group, "announce");
    announce.extend(["--id", "echo-1", "--url", &url]);
    let _instance = Msd::start(&announce);

    let listen_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{listen_port}");
    let mut args = loopback(&group, "proxy");
    args.extend(["--listen", &listen, "--max-connections", "1", "--metrics-listen", "127.0.0.1:0"]);
    let proxy = Msd::start(&args);
    proxy.wait_for(0, |line| line.contains("proxying")).unwrap_or_else(|| panic!("the proxy never started:\n{}", proxy.output()));

    // The first client is forwarded once the proxy has discovered the instance.
    let deadline = Instant::now() + WAIT;
    let mut first = loop {
        let mut connection = std::net::TcpStream::connect(&listen).unwrap();
        connection.set_read_timeout(Some(WAIT)).unwrap();
        if echo(&mut connection, "one").is_ok_and(|line| line == "one") {
            break connection;
        }
        assert!(Instant::now() < deadline, "the proxy never forwarded a client:\n{}", proxy.output());
        std::thread::sleep(Duration::from_millis(100));
    };

    let mut second = std::net::TcpStream::connect(&listen).unwrap();
    second.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let waiting = echo(&mut second, "two");
    assert!(
        waiting.as_ref().is_err_and(|error| matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the second client was answered while the only place was taken: {waiting:?}"
    );
    assert_eq!(echo(&mut first, "still").unwrap(), "still");

    drop(first);
    second.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(second.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "two", "the waiting client was not forwarded once the first closed");
    assert!(
        proxy.wait_for(0, |line| line.contains("connection limit reached")).is_some(),
        "no warning that the limit was reached:\n{}",
        proxy.output()
    );
}

/// Accepts connections on an ephemeral loopback port and keeps them open without reading or
/// writing, like a hung backend.
fn hung_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut open_streams = Vec::new();
        for stream in listener.incoming().map_while(Result::ok) {
            open_streams.push(stream);
        }
    });
    port
}

/// Sends `GET path` to an HTTP server on `address` and returns the whole response.
fn http_get(address: &str, path: &str) -> String {
    let mut connection = std::net::TcpStream::connect(address).unwrap();
    connection.set_read_timeout(Some(WAIT)).unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    std::io::Write::write_all(&mut connection, request.as_bytes()).unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut connection, &mut response).unwrap();
    response
}

/// A client that sent its request and closed its side, in front of an instance that never
/// responds, is closed after `--idle-timeout` and counted.
#[test]
fn proxy_closes_idle_connections() {
    let group = new_group();
    let backend = hung_server();
    let url = format!("tcp://127.0.0.1:{backend}");
    let mut announce = loopback(&group, "announce");
    announce.extend(["--id", "hung-1", "--url", &url]);
    let _instance = Msd::start(&announce);

    let free = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{}", free());
    let metrics = format!("127.0.0.1:{}", free());
    let mut args = loopback(&group, "proxy");
    args.extend(["--listen", &listen, "--metrics-listen", &metrics, "--idle-timeout", "1s"]);
    let proxy = Msd::start(&args);
    proxy.wait_for(0, |line| line.contains("proxying")).unwrap_or_else(|| panic!("the proxy never started:\n{}", proxy.output()));
    // Until the proxy has discovered the instance, clients are closed at once; then one is
    // forwarded and stays open until the idle timeout.
    let deadline = Instant::now() + WAIT;
    let (closed, log) = loop {
        let mut client = std::net::TcpStream::connect(&listen).unwrap();
        let port = client.local_addr().unwrap().port();
        // Both fail when the proxy has already closed the connection, which the log then shows.
        let _ = std::io::Write::write_all(&mut client, b"GET / HTTP/1.0\r\n\r\n");
        let _ = client.shutdown(std::net::Shutdown::Write);
        client.set_read_timeout(Some(WAIT)).unwrap();
        let read = std::io::Read::read(&mut client, &mut [0u8; 16]);
        let client = format!("client=127.0.0.1:{port} ");
        let log = proxy
            .wait_for(0, |line| line.contains(&client) && line.contains("connection"))
            .unwrap_or_else(|| panic!("no log line for the client on port {port}:\n{}", proxy.output()));
        if !log.contains("no serving instance could be reached") {
            break (read, log);
        }
        assert!(Instant::now() < deadline, "the proxy never forwarded a client:\n{}", proxy.output());
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(matches!(closed, Ok(0)), "the idle connection was not closed: {closed:?}\n{}", proxy.output());
    assert!(log.contains("connection ended with an error"), "{log}");
    assert!(log.contains("idle timeout"), "{log}");

    let response = http_get(&metrics, "/metrics");
    assert!(response.contains("msd_proxy_idle_connections_closed_total "), "{response}");
    assert!(response.contains("msd_proxy_idle_connections_closed_total 1\n"), "{response}");
}
