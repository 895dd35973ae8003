//! `GET /v1/events`: server-sent events of the table.
//!
//! A client first gets `event: snapshot` with every live instance, then `up`, `changed` and
//! `down` events as they happen. Every event has an id; a client that reconnects with
//! `Last-Event-ID` gets the changes it missed, or a fresh snapshot when they are no longer kept.
//! A client too slow to keep up also gets a fresh snapshot instead of the changes it missed, so
//! no client ever holds back the discoverer or the other clients.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use msd::InstanceInfo;
use serde::Serialize;
use tokio::sync::broadcast::error::RecvError;

use crate::output::InstanceJson;
use crate::serve::catalog::{Change, ChangeKind, Start};
use crate::serve::AppState;

#[derive(Serialize)]
struct ChangeJson {
    event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    instance: InstanceJson,
}

pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| state.catalog.parse_event_id(value));
    let (start, receiver) = state.catalog.subscribe(last_event_id);
    let state_stopping = state.stopping.clone();
    let first: Vec<SseEvent> = match start {
        Start::Snapshot { sequence, instances } => vec![snapshot_event(&state, sequence, &instances)],
        Start::Resume { changes } => changes.iter().map(|change| change_event(&state, change)).collect(),
    };

    let follow = stream::unfold((receiver, state), |(mut receiver, state)| async move {
        let event = match receiver.recv().await {
            Ok(change) => change_event(&state, &change),
            Err(RecvError::Lagged(missed)) => {
                state.metrics.count_sse_lagged(missed);
                tracing::debug!(missed, "event-stream client fell behind; sending a fresh snapshot");
                let (sequence, instances) = state.catalog.snapshot();
                snapshot_event(&state, sequence, &instances)
            }
            Err(RecvError::Closed) => return None,
        };
        Some((event, (receiver, state)))
    });
    let mut stopping = state_stopping;
    let stopped = async move {
        let _ = stopping.wait_for(|stopping| *stopping).await;
    };
    let stream = stream::iter(first).chain(follow).take_until(stopped).map(Ok);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn snapshot_event(state: &AppState, sequence: u64, instances: &[InstanceInfo]) -> SseEvent {
    let now = now();
    let list: Vec<InstanceJson> = instances.iter().map(|info| InstanceJson::new(info, now)).collect();
    SseEvent::default().event("snapshot").id(state.catalog.event_id(sequence)).json_data(list).unwrap_or_default()
}

fn change_event(state: &AppState, change: &Change) -> SseEvent {
    let body = ChangeJson {
        event: change.kind.name(),
        reason: match change.kind {
            ChangeKind::Down(reason) => Some(reason.to_string()),
            ChangeKind::Up | ChangeKind::Changed => None,
        },
        instance: InstanceJson::new(&change.instance, now()),
    };
    SseEvent::default()
        .event(change.kind.name())
        .id(state.catalog.event_id(change.sequence))
        .json_data(body)
        .unwrap_or_default()
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}
