//! The `msd serve` dashboard in a real browser: headless Chromium, driven over WebDriver, in a
//! network-namespace lab.
//!
//! Host A runs chromedriver, Chromium and `msd serve`, which listens on A's loopback. Host B runs
//! the instances. The test follows the server's event stream with its own client and measures how
//! long the page takes to show each change after that stream carried it.
//!
//! Needs root and the programs `chromium` and `chromedriver` (Debian packages `chromium` and
//! `chromium-driver`). The test skips without them unless `MSD_LAB_REQUIRED=1`, which CI sets.
//! With `MSD_WRITE_SCREENSHOT=1` it also saves the dashboard as `docs/dashboard.png`.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use msd_lab::{Host, Lab, LabChild, Signal, REQUIRED_ENV};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use support::{msd, GROUP, WAIT};

/// Address of `msd serve` on host A's loopback. Each lab host has its own loopback, so a fixed
/// port cannot collide with other tests.
const LISTEN: &str = "127.0.0.1:8080";

/// Port of chromedriver on host A's loopback.
const WEBDRIVER_PORT: u16 = 9515;

/// The page must show every change within this time after the event stream carried it.
const PAGE_BOUND: Duration = Duration::from_secs(1);

/// Gap between two reads of the page. A measured latency is an upper bound, too high by at most
/// this gap plus one WebDriver round trip.
const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// Phone viewport in CSS pixels, that of an iPhone 12 to 14.
const PHONE: (u32, u32) = (390, 844);

/// Window size at desktop width, for the screenshot.
const DESKTOP: (u32, u32) = (1100, 400);

/// Chromium flags: headless, no sandbox because the test runs as root, and no background requests
/// such as component updates and sync. Host A has no route beyond the lab, so such requests would
/// fail anyway, but the flags keep Chromium from trying.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// Error message the test logs in the page to check that the browser log works.
const LOG_PROBE: &str = "msd test: browser log probe";

/// Returns the health of the row for `arguments[0]`, or null when the page has no such row.
const ROW_HEALTH_SCRIPT: &str = r#"
    const row = document.querySelector(`tr[data-id="${CSS.escape(arguments[0])}"]`);
    return row ? row.dataset.health : null;
"#;

/// Returns the widths of the viewport and of the page, and the box of every row with the rightmost
/// edge among its cells. `clientWidth` excludes a vertical scrollbar, `innerWidth` includes it.
const LAYOUT_SCRIPT: &str = r##"
    const page = document.documentElement;
    return {
        innerWidth: window.innerWidth,
        clientWidth: page.clientWidth,
        scrollWidth: page.scrollWidth,
        rows: [...document.querySelectorAll("#rows tr")].map((row) => {
            const box = row.getBoundingClientRect();
            const cellsRight = Math.max(...[...row.cells].map((cell) => cell.getBoundingClientRect().right));
            return { id: row.dataset.id, left: box.left, right: box.right, width: box.width, height: box.height, cellsRight };
        }),
    };
"##;

#[test]
fn dashboard_shows_changes_within_second() {
    let Some(browser) = Browser::find() else { return };
    let Some(lab) = Lab::for_test(2) else { return };
    let lab = Arc::new(lab);
    let inside = Arc::clone(&lab);

    // The scenario runs on a thread in host A, so its connections to chromedriver and to the
    // event stream reach A's loopback. The lab stays alive here until that thread has ended.
    let scenario = lab.host(0).run(move || run_scenario(&inside, &browser));
    if let Err(panic) = scenario.join() {
        std::panic::resume_unwind(panic);
    }
}

fn run_scenario(lab: &Lab, browser: &Browser) {
    let (a, b) = (lab.host(0), lab.host(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime");

    let serve = msd(a, &["serve", "--group", GROUP, "--listen", LISTEN, "--interface", a.interface()]);
    let listening = serve.wait_for_line(WAIT, |line| line.contains("serving"));
    assert!(listening.is_some(), "msd serve did not start:\n{}", serve.output());
    let stream = runtime.block_on(EventStream::follow());

    let profile = TempDir::new().expect("create a Chromium profile directory");
    let driver = browser.start_driver(a, profile.path());
    let page = runtime.block_on(Page::open(browser, profile.path()));
    runtime.block_on(page.wait_until_live());

    let eu_west = ["region=eu-west", "version=1.4.2"];
    let us_east = ["region=us-east", "version=1.5.0"];
    let mut instances = Vec::new();
    for (id, metadata) in [("api-1", eu_west), ("api-2", eu_west), ("api-3", us_east)] {
        let started = Instant::now();
        let instance = announce(b, id, &metadata, "serving");
        let latency = runtime.block_on(page_latency(&page, &stream, id, "up", Some("serving")));
        eprintln!("dashboard: {id} shown {latency:?} after its up event, {:?} after the announce started", started.elapsed());
        assert!(latency < PAGE_BOUND, "row {id} appeared {latency:?} after the up event:\n{}", instance.output());
        instances.push(instance);
    }
    let first_url = format!("http://{}:8080/api-1", b.ipv4());
    let cells = runtime.block_on(page.row_cells("api-1"));
    let cell = |class: &str| cells.get(class).and_then(Value::as_str).map(str::to_owned);
    assert_eq!(cell("url"), Some(first_url), "URL cell of api-1 in {cells}");
    assert_eq!(cell("meta").as_deref(), Some("region=eu-west version=1.4.2"), "metadata cell of api-1 in {cells}");

    // No command changes a running instance's health, so api-2 restarts with the same id and
    // health draining. The new incarnation replaces the old one in place.
    let killed = instances.remove(1);
    killed.signal(Signal::SIGKILL).expect("kill api-2");
    drop(killed);
    let draining = announce(b, "api-2", &eu_west, "draining");
    let latency = runtime.block_on(page_latency(&page, &stream, "api-2", "changed", Some("draining")));
    eprintln!("dashboard: api-2 shown draining {latency:?} after its changed event");
    assert!(latency < PAGE_BOUND, "api-2 turned draining on the page {latency:?} after the changed event:\n{}", draining.output());

    if std::env::var("MSD_WRITE_SCREENSHOT").is_ok_and(|value| value == "1") {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/dashboard.png");
        runtime.block_on(page.save_screenshot(&path));
    }

    let mut leaving = instances.pop().expect("api-3 runs");
    leaving.signal(Signal::SIGTERM).expect("stop api-3");
    let latency = runtime.block_on(page_latency(&page, &stream, "api-3", "down", None));
    eprintln!("dashboard: api-3 removed {latency:?} after its down event");
    assert!(latency < PAGE_BOUND, "row api-3 disappeared {latency:?} after the down event:\n{}", leaving.output());
    let status = leaving.wait_exit(WAIT);
    assert!(status.is_some_and(|status| status.success()), "api-3 exit status {status:?}:\n{}", leaving.output());

    let errors = runtime.block_on(page.console_errors());
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    runtime.block_on(page.check_phone_layout(2));
    runtime.block_on(page.close());
    drop(driver);
}

/// Starts `msd announce` for `id` in `host` with `metadata` (`KEY=VALUE` each) and `health`.
fn announce(host: &Host, id: &str, metadata: &[&str], health: &str) -> LabChild {
    let url = format!("http://{}:8080/{id}", host.ipv4());
    let mut args = vec!["announce", "--group", GROUP, "--id", id, "--url", &url, "--health", health];
    for entry in metadata {
        args.extend(["--metadata", entry]);
    }
    msd(host, &args)
}

/// Waits for an event of `kind` about `id` on the event stream and for the page to show `id`
/// with `health` (`None`: no row), and returns how much later the page showed it. Zero means the
/// page was first.
async fn page_latency(page: &Page, stream: &EventStream, id: &str, kind: &str, health: Option<&str>) -> Duration {
    let (event_at, page_at) = tokio::join!(stream.wait_for(kind, id), page.wait_for_row(id, health));
    page_at.saturating_duration_since(event_at)
}

/// The programs the test drives.
#[derive(Debug)]
struct Browser {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Browser {
    /// Finds `chromium` and `chromedriver` in `PATH`. Without them, prints why and returns
    /// `None`, or panics when `MSD_LAB_REQUIRED=1`.
    fn find() -> Option<Browser> {
        let found = (find_program("chromium"), find_program("chromedriver"));
        if let (Some(chromium), Some(chromedriver)) = found {
            return Some(Browser { chromium, chromedriver });
        }
        let reason = "chromium or chromedriver not found in PATH; install the Debian packages chromium and chromium-driver";
        if std::env::var(REQUIRED_ENV).is_ok_and(|value| value == "1") {
            panic!("msd-lab: the dashboard test cannot run and {REQUIRED_ENV}=1: {reason}");
        }
        eprintln!("msd-lab: skipped: {reason}");
        None
    }

    /// Starts chromedriver in `host` and waits until it accepts sessions. Chromium, which
    /// chromedriver starts, keeps its profile, caches and temporary files under `profile`.
    fn start_driver(&self, host: &Host, profile: &Path) -> LabChild {
        let mut command = host.command(&self.chromedriver);
        command
            .arg(format!("--port={WEBDRIVER_PORT}"))
            .env("HOME", profile)
            .env("XDG_CONFIG_HOME", profile.join("config"))
            .env("XDG_CACHE_HOME", profile.join("cache"))
            .env("TMPDIR", profile);
        let driver = host.spawn(command).expect("start chromedriver");
        let started = driver.wait_for_line(WAIT, |line| line.contains("started successfully"));
        assert!(started.is_some(), "chromedriver did not start:\n{}", driver.output());
        driver
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|directory| directory.join(name)).find(|candidate| candidate.is_file())
}

/// The events of `/v1/events` as this test's own client received them, each with its arrival
/// time.
#[derive(Debug)]
struct EventStream {
    received: watch::Receiver<Vec<StreamEvent>>,
}

#[derive(Debug, Clone)]
struct StreamEvent {
    at: Instant,
    kind: String,
    data: Value,
}

impl EventStream {
    /// Connects to the event stream and returns once its first event, the snapshot, arrived.
    async fn follow() -> EventStream {
        let (sender, received) = watch::channel(Vec::new());
        tokio::spawn(async move {
            if let Err(error) = read_events(&sender).await {
                panic!("reading /v1/events failed: {error}");
            }
        });
        let stream = EventStream { received };
        stream.wait_until("the snapshot", |event| event.kind == "snapshot").await;
        stream
    }

    /// Waits for the first event of `kind` about the instance `id` and returns when it arrived.
    async fn wait_for(&self, kind: &str, id: &str) -> Instant {
        let description = format!("a {kind} event for {id}");
        self.wait_until(&description, |event| event.kind == kind && event.data.pointer("/instance/id").and_then(Value::as_str) == Some(id)).await
    }

    async fn wait_until(&self, description: &str, matches: impl Fn(&StreamEvent) -> bool) -> Instant {
        let mut received = self.received.clone();
        let found = tokio::time::timeout(WAIT, received.wait_for(|events| events.iter().any(&matches))).await;
        match found {
            Ok(Ok(events)) => events.iter().find(|event| matches(event)).map(|event| event.at).expect("an event matched"),
            _ => panic!("no {description} on /v1/events within {WAIT:?}; received: {:#?}", *self.received.borrow()),
        }
    }
}

/// Reads server-sent events from `msd serve` into `sender` until the server closes the stream.
///
/// The request is HTTP/1.0, so the server sends the body as it is, without chunked encoding, and
/// marks its end by closing the connection. Every `data:` line is one JSON document.
async fn read_events(sender: &watch::Sender<Vec<StreamEvent>>) -> std::io::Result<()> {
    let mut connection = TcpStream::connect(LISTEN).await?;
    connection.write_all(b"GET /v1/events HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n").await?;
    let mut lines = BufReader::new(connection).lines();
    let mut kind = String::new();
    while let Some(line) = lines.next_line().await? {
        if let Some(name) = line.strip_prefix("event:") {
            kind = name.trim().to_owned();
        } else if let Some(data) = line.strip_prefix("data:") {
            let data: Value = serde_json::from_str(data.trim()).map_err(std::io::Error::other)?;
            let event = StreamEvent { at: Instant::now(), kind: kind.clone(), data };
            sender.send_modify(|events| events.push(event));
        }
    }
    Ok(())
}

/// The dashboard in a Chromium window, driven over WebDriver.
#[derive(Debug)]
struct Page {
    client: Client,
}

impl Page {
    /// Starts a Chromium session with `profile` as its user data directory and opens the
    /// dashboard at desktop width.
    async fn open(browser: &Browser, profile: &Path) -> Page {
        let mut arguments: Vec<String> = CHROMIUM_FLAGS.iter().map(|flag| (*flag).to_owned()).collect();
        arguments.push(format!("--user-data-dir={}", profile.join("profile").display()));
        let mut capabilities = Capabilities::new();
        capabilities.insert("goog:chromeOptions".to_owned(), json!({ "binary": browser.chromium, "args": arguments }));
        capabilities.insert("goog:loggingPrefs".to_owned(), json!({ "browser": "ALL" }));

        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{WEBDRIVER_PORT}"))
            .await
            .expect("start a Chromium session through chromedriver");
        client.set_window_size(DESKTOP.0, DESKTOP.1).await.expect("set the window size");
        client.goto(&format!("http://{LISTEN}/")).await.expect("open the dashboard");
        Page { client }
    }

    /// Waits until the page's event stream is open, so that later changes reach it as events
    /// rather than in its first snapshot.
    async fn wait_until_live(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            let status = self.execute("return document.getElementById('status').textContent;", vec![]).await;
            if status == "live" {
                return;
            }
            assert!(Instant::now() < deadline, "the dashboard's status stayed {status} for {WAIT:?}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Reads the page every [`POLL_INTERVAL`] until the row of `id` has `health` (`None`: until
    /// there is no row), and returns when it did.
    async fn wait_for_row(&self, id: &str, health: Option<&str>) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            let health_on_page = self.execute(ROW_HEALTH_SCRIPT, vec![json!(id)]).await;
            if health_on_page.as_str() == health {
                return Instant::now();
            }
            assert!(Instant::now() < deadline, "row {id} still has health {health_on_page} after {WAIT:?}, expected {health:?}");
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Returns the text of each cell of the row of `id`, keyed by the cell's class.
    async fn row_cells(&self, id: &str) -> Value {
        let script = r#"
            const row = document.querySelector(`tr[data-id="${CSS.escape(arguments[0])}"]`);
            const cells = {};
            for (const cell of row.cells) cells[cell.classList[0]] = [...cell.childNodes].map((node) => node.textContent).join(" ");
            return cells;
        "#;
        self.execute(script, vec![json!(id)]).await
    }

    /// Checks at phone width that the page does not scroll sideways and that each of the
    /// `expected_rows` rows, with all its cells, fits the viewport.
    ///
    /// When the page is taller than the window, headless Chromium 156 draws a classic scrollbar
    /// that takes 15 px of the width, which a phone's overlay scrollbar does not. The checks
    /// compare with `clientWidth`, the width without that scrollbar.
    async fn check_phone_layout(&self, expected_rows: usize) {
        self.client.set_window_size(PHONE.0, PHONE.1).await.expect("set the window to phone size");
        let layout = self.execute(LAYOUT_SCRIPT, vec![]).await;
        let number = |value: &Value, name: &str| value.get(name).and_then(Value::as_f64).unwrap_or_else(|| panic!("{name} is not a number in {value}"));
        let inner_width = number(&layout, "innerWidth");
        let client_width = number(&layout, "clientWidth");
        let scroll_width = number(&layout, "scrollWidth");
        assert!(inner_width <= f64::from(PHONE.0), "the window is {inner_width} px wide, not a phone's {} px", PHONE.0);
        assert!(scroll_width <= client_width, "at phone width the page is {scroll_width} px wide in a {client_width} px viewport, so it scrolls sideways");

        let rows = layout.get("rows").and_then(Value::as_array).expect("rows is an array");
        assert_eq!(rows.len(), expected_rows, "rows at phone width: {rows:?}");
        for row in rows {
            let visible = number(row, "width") > 0.0 && number(row, "height") > 0.0;
            assert!(visible, "row has no area at phone width: {row}");
            let inside = number(row, "left") >= 0.0 && number(row, "right") <= client_width;
            assert!(inside, "row sticks out of the {client_width} px viewport: {row}");
            assert!(number(row, "cellsRight") <= number(row, "right"), "cells stick out of their row: {row}");
        }
        self.client.set_window_size(DESKTOP.0, DESKTOP.1).await.expect("restore the window size");
    }

    /// Saves a PNG of the window to `path`, once the highlight of the last change has faded.
    async fn save_screenshot(&self, path: &Path) {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let png = self.client.screenshot().await.expect("take a screenshot");
        std::fs::write(path, png).unwrap_or_else(|error| panic!("failed to write {}: {error}", path.display()));
        eprintln!("dashboard: wrote {}", path.display());
    }

    /// Returns the console entries of level SEVERE (errors, uncaught exceptions, failed loads)
    /// logged since the session started.
    ///
    /// Logs an error of its own first and checks that it comes back, so that an empty result
    /// means a clean page and not a browser log that collects nothing.
    async fn console_errors(&self) -> Vec<Value> {
        self.execute(&format!("console.error('{LOG_PROBE}'); return null;"), vec![]).await;
        let entries = self.client.issue_cmd(BrowserLog).await.expect("read the browser log");
        let entries = entries.as_array().cloned().unwrap_or_default();
        let message = |entry: &Value| entry.get("message").and_then(Value::as_str).unwrap_or_default().to_owned();
        assert!(entries.iter().any(|entry| message(entry).contains(LOG_PROBE)), "the browser log lacks the probe: {entries:#?}");

        let expected = |entry: &Value| message(entry).contains(LOG_PROBE);
        entries.into_iter().filter(|entry| entry.get("level") == Some(&json!("SEVERE")) && !expected(entry)).collect()
    }

    async fn close(self) {
        self.client.close().await.expect("end the Chromium session");
    }

    async fn execute(&self, script: &str, arguments: Vec<Value>) -> Value {
        self.client.execute(script, arguments).await.unwrap_or_else(|error| panic!("script failed in the page: {error}"))
    }
}

/// chromedriver's `POST /session/{id}/se/log`, which returns the console entries collected since
/// the last call. It is not part of the W3C WebDriver standard.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}
