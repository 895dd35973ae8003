//! `GET /v1/events`: server-sent events of the table.
//!
//! A client first gets `event: snapshot` with every live instance, then `up`, `changed` and
//! `down` events as they happen. Every event has an id; a client that reconnects with
//! `Last-Event-ID` gets the changes it missed, or a fresh snapshot when they are no longer kept.
//! A client too slow to keep up also gets a fresh snapshot instead of the changes it missed, so
//! no client ever holds back the discoverer or the other clients.
//!
//! The body is produced only as fast as the client reads it. A snapshot is one `data:` line,
//! written as several body frames of [`SNAPSHOT_PAGE`] instances each, and each page is read from
//! the catalog and serialized only when hyper polls the body for the next frame. Hyper 1.x stops
//! polling once its write buffer (408 KiB by default) is full, so a client that never reads costs
//! that buffer, one page and its socket buffers, whatever the size of the table. At most
//! `--max-event-clients` streams (default 64) are open at once.
//!
//! Because pages are read while the snapshot is sent, a snapshot may already contain changes
//! that follow it in the stream. Every event carries the instance's whole state, so applying
//! the events in order still yields the table.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, OwnedSemaphorePermit, Semaphore};

use crate::output::InstanceJson;
use crate::serve::api::{ApiError, Parameters};
use crate::serve::catalog::{Catalog, Change, ChangeKind, Start};
use crate::serve::AppState;

/// Instances serialized into one body frame of a snapshot. Small, so that one page is a short
/// piece of work on an async worker.
const SNAPSHOT_PAGE: usize = 16;

/// `Retry-After` value, in seconds, of the 503 response for a client over the limit.
const RETRY_AFTER_SECONDS: &str = "5";

/// The limit on event-stream clients served at once.
#[derive(Debug)]
pub(crate) struct ClientLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ClientLimit {
    pub(crate) fn new(max: usize) -> Self {
        ClientLimit { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// Returns a place for one more client, or `None` when all are taken. The place is freed
    /// when the permit is dropped, that is when the client's stream ends or the client goes.
    fn try_acquire(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// Returns the number of open event streams.
    pub(crate) fn open(&self) -> usize {
        self.max.saturating_sub(self.permits.available_permits())
    }
}

#[derive(Serialize)]
struct ChangeJson {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    instance: InstanceJson,
}

pub(crate) async fn events(State(state): State<Arc<AppState>>, parameters: Parameters, headers: HeaderMap) -> Response {
    if let Err(error) = parameters.reject_all("/v1/events") {
        return error.into_response();
    }
    let Some(permit) = state.event_clients.try_acquire() else {
        state.metrics.count_sse_rejected();
        return too_many_clients(state.event_clients.max);
    };

    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| state.catalog.parse_event_id(value));
    let (start, receiver) = state.catalog.subscribe(last_event_id);
    let mut stopping = state.stopping.clone();
    let client = Client::new(state, receiver, start, permit);

    let frames = stream::unfold(client, |mut client| async move { client.next_frame().await.map(|frame| (frame, client)) });
    let stopped = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let body = Body::from_stream(frames.take_until(stopped).map(Ok::<_, Infallible>));
    (
        [(CONTENT_TYPE, HeaderValue::from_static("text/event-stream")), (CACHE_CONTROL, HeaderValue::from_static("no-cache"))],
        body,
    )
        .into_response()
}

fn too_many_clients(max: usize) -> Response {
    let message = format!("too many event-stream clients: at most {max} are served at once; retry later");
    let mut response = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).into_response();
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    response
}

/// The next part of a client's stream.
enum Step {
    /// The snapshot's first frame: the event name, the id and the start of the array.
    SnapshotHead { sequence: u64 },
    /// Further pages of the snapshot. `after` is the id of the last instance sent.
    SnapshotPage { after: Option<String> },
    /// Changes the client missed, from the history.
    Replay(VecDeque<Arc<Change>>),
    /// New changes as they happen.
    Follow,
}

/// One event-stream client.
struct Client {
    state: Arc<AppState>,
    receiver: broadcast::Receiver<Arc<Change>>,
    step: Step,
    /// The sequence of the latest change the client already has. Changes up to it that reach
    /// the receiver after a snapshot are skipped.
    sent_through: u64,
    _permit: OwnedSemaphorePermit,
}

impl Client {
    fn new(state: Arc<AppState>, receiver: broadcast::Receiver<Arc<Change>>, start: Start, permit: OwnedSemaphorePermit) -> Self {
        let (step, sent_through) = match start {
            Start::Snapshot { sequence } => (Step::SnapshotHead { sequence }, sequence),
            Start::Resume { changes } => (Step::Replay(changes.into()), 0),
        };
        Client { state, receiver, step, sent_through, _permit: permit }
    }

    /// Returns the next body frame, or `None` when the discoverer is gone.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.step {
                Step::SnapshotHead { sequence } => {
                    let frame = snapshot_head(&self.state.catalog, *sequence);
                    self.step = Step::SnapshotPage { after: None };
                    return Some(frame);
                }
                Step::SnapshotPage { after } => {
                    // Hyper polls the body again at once while its buffer has room, so without a
                    // yield one poll of this connection would serialize up to 408 KiB of pages
                    // and make the other connections on this worker wait.
                    tokio::task::yield_now().await;
                    let (frame, last) = snapshot_page(&self.state.catalog, after);
                    if last {
                        self.step = Step::Follow;
                    }
                    return Some(frame);
                }
                Step::Replay(changes) => match changes.pop_front() {
                    Some(change) => {
                        self.sent_through = change.sequence;
                        return Some(change_frame(&self.state.catalog, &change));
                    }
                    None => self.step = Step::Follow,
                },
                Step::Follow => {
                    let received = tokio::select! {
                        received = self.receiver.recv() => received,
                        () = tokio::time::sleep(self.state.keep_alive) => return Some(Bytes::from_static(b":\n\n")),
                    };
                    match received {
                        Ok(change) if change.sequence <= self.sent_through => {}
                        Ok(change) => {
                            self.sent_through = change.sequence;
                            return Some(change_frame(&self.state.catalog, &change));
                        }
                        Err(RecvError::Lagged(missed)) => {
                            self.state.metrics.count_sse_lagged(missed);
                            tracing::debug!(missed, "event-stream client fell behind; sending a fresh snapshot");
                            let sequence = self.state.catalog.sequence();
                            self.sent_through = sequence;
                            self.step = Step::SnapshotHead { sequence };
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            }
        }
    }
}

/// Returns the first frame of a snapshot: its event name, its id and the opening bracket of the
/// `data:` line.
fn snapshot_head(catalog: &Catalog, sequence: u64) -> Bytes {
    Bytes::from(format!("event: snapshot\nid: {}\ndata: [", catalog.event_id(sequence)))
}

/// Returns the next page of a snapshot as a frame, and whether it was the last, which closes
/// the array and the event. `after` is the id of the last instance sent, and is moved on.
fn snapshot_page(catalog: &Catalog, after: &mut Option<String>) -> (Bytes, bool) {
    let page = catalog.page(after.as_deref(), SNAPSHOT_PAGE);
    let now = now();
    let mut frame = Vec::new();
    for (index, info) in page.iter().enumerate() {
        if index > 0 || after.is_some() {
            frame.push(b',');
        }
        // serde_json fails only on I/O errors and on maps with keys that are not strings, and
        // neither occurs when InstanceJson is written to a Vec.
        let _ = serde_json::to_writer(&mut frame, &InstanceJson::new(info, now));
    }

    let last = page.len() < SNAPSHOT_PAGE;
    if last {
        frame.extend_from_slice(b"]\n\n");
    } else if let Some(info) = page.last() {
        *after = Some(info.id.clone());
    }
    (Bytes::from(frame), last)
}

fn change_frame(catalog: &Catalog, change: &Change) -> Bytes {
    let body = ChangeJson {
        event: change.kind.name(),
        reason: match change.kind {
            ChangeKind::Down(reason) => Some(reason.to_string()),
            ChangeKind::Up | ChangeKind::Changed => None,
        },
        instance: InstanceJson::new(&change.instance, now()),
    };
    let mut frame = format!("event: {}\nid: {}\ndata: ", change.kind.name(), catalog.event_id(change.sequence)).into_bytes();
    // Cannot fail, as in `snapshot_page`.
    let _ = serde_json::to_writer(&mut frame, &body);
    frame.extend_from_slice(b"\n\n");
    Bytes::from(frame)
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use msd::{DownReason, Event, InstanceInfo};

    fn info(id: &str) -> InstanceInfo {
        let metadata = BTreeMap::from([("note".to_owned(), "line\nbreak".to_owned())]);
        InstanceInfo { metadata, ..crate::testing::instance_info(id, "http://10.0.0.1:80/") }
    }

    /// Returns the frames of a whole snapshot, as a stalled client would get them one by one.
    fn snapshot_frames(catalog: &Catalog) -> Vec<Bytes> {
        let mut frames = vec![snapshot_head(catalog, catalog.sequence())];
        let mut after = None;
        loop {
            let (frame, last) = snapshot_page(catalog, &mut after);
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }

    /// Splits one event into its `field: value` lines, checking that it ends with a blank line.
    fn fields(event: &str) -> Vec<(String, String)> {
        let body = event.strip_suffix("\n\n").unwrap_or_else(|| panic!("event not terminated: {event:?}"));
        body.split('\n')
            .map(|line| {
                let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("malformed line {line:?}"));
                (name.to_owned(), value.to_owned())
            })
            .collect()
    }

    #[test]
    fn snapshot_pages_form_one_event() {
        for count in [0, 1, SNAPSHOT_PAGE - 1, SNAPSHOT_PAGE, SNAPSHOT_PAGE * 2 + 22] {
            let ids: Vec<String> = (0..count).map(|number| format!("i{number:04}")).collect();
            let catalog = Catalog::new(ids.iter().map(|id| info(id)).collect());
            let frames = snapshot_frames(&catalog);
            assert_eq!(frames.len(), 2 + count / SNAPSHOT_PAGE, "{count} instances");

            let text: String = frames.iter().map(|frame| std::str::from_utf8(frame).unwrap()).collect();
            let fields = fields(&text);
            assert_eq!(fields.len(), 3, "{count} instances: {text:?}");
            assert_eq!(fields[0], ("event".to_owned(), "snapshot".to_owned()));
            assert_eq!(fields[1], ("id".to_owned(), catalog.event_id(0)));
            assert_eq!(fields[2].0, "data");
            let list: Vec<serde_json::Value> = serde_json::from_str(&fields[2].1).unwrap();
            let listed: Vec<&str> = list.iter().map(|entry| entry["id"].as_str().unwrap()).collect();
            assert_eq!(listed, ids, "{count} instances");
        }
    }

    /// A frame contains at most one page, so a client that does not read costs one page of
    /// serialized data beyond what hyper and the kernel buffer.
    #[test]
    fn snapshot_frame_holds_one_page() {
        let catalog = Catalog::new((0..SNAPSHOT_PAGE * 10).map(|number| info(&format!("i{number:04}"))).collect());
        let instance_bytes = serde_json::to_vec(&InstanceJson::new(&info("i0000"), now())).unwrap().len();
        // Ages and times differ in length between instances by a few digits; 32 bytes covers it.
        let page_bytes = SNAPSHOT_PAGE * (instance_bytes + 32);
        let frames = snapshot_frames(&catalog);
        assert_eq!(frames.len(), 12);
        for frame in &frames {
            assert!(frame.len() <= page_bytes, "frame of {} bytes, one instance is {instance_bytes}", frame.len());
        }
    }

    #[test]
    fn change_frame_is_one_event() {
        let catalog = Catalog::new(vec![]);
        let change = catalog.apply(Event::Down { instance: info("gone\nid"), reason: DownReason::Logoff });
        let text = String::from_utf8(change_frame(&catalog, &change).to_vec()).unwrap();
        let fields = fields(&text);
        assert_eq!(fields.len(), 3, "{text:?}");
        assert_eq!(fields[0], ("event".to_owned(), "down".to_owned()));
        assert_eq!(fields[1], ("id".to_owned(), catalog.event_id(1)));
        let data: serde_json::Value = serde_json::from_str(&fields[2].1).unwrap();
        assert_eq!(data["instance"]["id"], "gone\nid");
        assert_eq!(data["reason"], "logoff");
    }

    #[test]
    fn client_limit_frees_dropped_places() {
        let limit = ClientLimit::new(2);
        let first = limit.try_acquire().expect("first place");
        let _second = limit.try_acquire().expect("second place");
        assert!(limit.try_acquire().is_none(), "a third client is over the limit");
        assert_eq!(limit.open(), 2);
        drop(first);
        assert_eq!(limit.open(), 1);
        assert!(limit.try_acquire().is_some(), "a dropped client frees its place");
    }
}
