//! The JSON API: instances, one instance, a pick, Prometheus service discovery, health.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use msd::{Health, InstanceInfo};
use rand::Rng;
use serde::Serialize;

use crate::output::InstanceJson;
use crate::serve::AppState;

/// An error response: `{"error": "..."}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body {
            error: String,
        }
        (self.status, Json(Body { error: self.message })).into_response()
    }
}

impl From<msd::Error> for ApiError {
    fn from(error: msd::Error) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("discoverer unavailable: {error}"))
    }
}

/// The query string as name-value pairs, percent-decoded.
pub(crate) struct Parameters(pub(crate) Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Parameters {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::bad_request(format!("invalid query string: {}", rejection.body_text())))?;
        Ok(Parameters(pairs))
    }
}

impl Parameters {
    /// Rejects every parameter, for a route that takes none.
    pub(crate) fn reject_all(&self, route: &str) -> Result<(), ApiError> {
        match self.0.first() {
            None => Ok(()),
            Some((name, _)) => Err(ApiError::bad_request(format!("unknown query parameter {name:?}: {route} takes no parameters"))),
        }
    }
}

/// The `{id}` segment of `/v1/instances/{id}`, percent-decoded.
pub(crate) struct InstanceId(String);

impl<S: Send + Sync> FromRequestParts<S> for InstanceId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(InstanceId(id)),
            Err(PathRejection::FailedToDeserializePathParams(error))
                if matches!(error.kind(), ErrorKind::InvalidUtf8InPathParam { .. }) =>
            {
                Err(ApiError::bad_request("invalid instance id in the path: it is not UTF-8 after percent-decoding"))
            }
            Err(rejection) => Err(ApiError::new(rejection.status(), format!("invalid instance id in the path: {}", rejection.body_text()))),
        }
    }
}

/// The instances a request selects: `health=serving,draining`, `metadata.KEY=VALUE`,
/// `protocol=native`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    health: Option<Vec<Health>>,
    metadata: BTreeMap<String, String>,
    protocol: Option<msd::Protocol>,
}

impl Filter {
    /// Parses the query; `extra` names further parameters the route accepts.
    pub(crate) fn parse(query: &[(String, String)], extra: &[&str]) -> Result<(Self, BTreeMap<String, String>), ApiError> {
        let mut filter = Filter::default();
        let mut rest = BTreeMap::new();
        for (name, value) in query {
            if let Some(key) = name.strip_prefix("metadata.") {
                if key.is_empty() {
                    return Err(ApiError::bad_request("invalid query parameter \"metadata.\": name a key, as in metadata.zone=eu-1"));
                }
                filter.metadata.insert(key.to_owned(), value.clone());
                continue;
            }
            match name.as_str() {
                "health" => {
                    let parsed: Result<Vec<Health>, String> = value.split(',').map(|part| part.trim().parse()).collect();
                    let parsed = parsed.map_err(|error| ApiError::bad_request(format!("invalid query parameter \"health\": {error}")))?;
                    filter.health = Some(parsed);
                }
                "protocol" => {
                    filter.protocol = Some(match value.as_str() {
                        "seed" => msd::Protocol::Seed,
                        "native" => msd::Protocol::Native,
                        other => {
                            return Err(ApiError::bad_request(format!(
                                "invalid query parameter \"protocol\": {other:?}; expected seed or native"
                            )))
                        }
                    });
                }
                other if extra.contains(&other) => {
                    rest.insert(other.to_owned(), value.clone());
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter {other:?}; use health, protocol or metadata.KEY{}",
                        extra.iter().map(|name| format!(", {name}")).collect::<String>()
                    )))
                }
            }
        }
        Ok((filter, rest))
    }

    pub(crate) fn matches(&self, info: &InstanceInfo) -> bool {
        self.health.as_ref().is_none_or(|allowed| allowed.contains(&info.health))
            && self.protocol.is_none_or(|protocol| protocol == info.protocol)
            && self.metadata.iter().all(|(key, value)| info.metadata.get(key) == Some(value))
    }
}

pub(crate) async fn instances(State(state): State<Arc<AppState>>, Parameters(query): Parameters) -> Result<Response, ApiError> {
    let (filter, _) = Filter::parse(&query, &[])?;
    let now = now();
    let list = state.discoverer.instances().await?;
    json_off_workers(move || {
        list.iter().filter(|info| filter.matches(info)).map(|info| InstanceJson::new(info, now)).collect::<Vec<_>>()
    })
    .await
}

/// Builds and serializes a body on the blocking pool. A body that lists the whole table takes
/// time in proportion to it, and on an async worker that time would delay every other request
/// that worker serves, `/healthz` included.
async fn json_off_workers<T, F>(build: F) -> Result<Response, ApiError>
where
    T: Serialize,
    F: FnOnce() -> T + Send + 'static,
{
    let body = tokio::task::spawn_blocking(move || serde_json::to_vec(&build()))
        .await
        .map_err(|error| {
            tracing::error!(%error, "failed to build a response body");
            ApiError::internal(format!("failed to build the response: {error}"))
        })?
        .map_err(|error| {
            tracing::error!(%error, "failed to serialize a response body");
            ApiError::internal(format!("failed to serialize the response: {error}"))
        })?;
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

pub(crate) async fn instance(
    State(state): State<Arc<AppState>>,
    InstanceId(id): InstanceId,
    parameters: Parameters,
) -> Result<Json<InstanceJson>, ApiError> {
    parameters.reject_all("/v1/instances/{id}")?;
    let list = state.discoverer.instances().await?;
    let info = list
        .iter()
        .find(|info| info.id == id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("instance {id:?} not found")))?;
    Ok(Json(InstanceJson::new(info, now())))
}

/// Picks one serving instance: `strategy=random` (default) or `weighted` (by announced weight,
/// 1 when none). Draining and failing instances are never picked.
pub(crate) async fn pick(State(state): State<Arc<AppState>>, Parameters(query): Parameters) -> Result<Json<InstanceJson>, ApiError> {
    if query.iter().any(|(name, _)| name == "health") {
        return Err(ApiError::bad_request(
            "invalid query parameter \"health\": /v1/pick chooses serving instances only; use /v1/instances to filter by health",
        ));
    }
    let (mut filter, rest) = Filter::parse(&query, &["strategy"])?;
    let weighted = match rest.get("strategy").map(String::as_str) {
        None | Some("random") => false,
        Some("weighted") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "invalid query parameter \"strategy\": {other:?}; expected random or weighted"
            )))
        }
    };
    filter.health = Some(vec![Health::Serving]);
    let list = state.discoverer.instances().await?;
    let candidates: Vec<&InstanceInfo> = list.iter().filter(|info| filter.matches(info)).collect();
    let chosen = choose(&candidates, weighted, &mut rand::rng())
        .ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no serving instance matches the request"))?;
    Ok(Json(InstanceJson::new(chosen, now())))
}

/// Chooses uniformly, or with probability proportional to weight.
pub(crate) fn choose<'a>(candidates: &[&'a InstanceInfo], weighted: bool, rng: &mut impl Rng) -> Option<&'a InstanceInfo> {
    if candidates.is_empty() {
        return None;
    }
    if !weighted {
        return candidates.get(rng.random_range(0..candidates.len())).copied();
    }
    let weight = |info: &InstanceInfo| u64::from(info.weight.unwrap_or(1));
    let total: u64 = candidates.iter().map(|info| weight(info)).sum();
    if total == 0 {
        return None;
    }
    let mut point = rng.random_range(0..total);
    for info in candidates {
        if point < weight(info) {
            return Some(info);
        }
        point -= weight(info);
    }
    None
}

/// One target group of Prometheus HTTP service discovery.
#[derive(Debug, Serialize)]
pub(crate) struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Prometheus HTTP service discovery: one target group per instance whose URL has a host,
/// labelled with its id, health, protocol and metadata. Takes the filters of `/v1/instances`.
pub(crate) async fn prometheus_sd(State(state): State<Arc<AppState>>, Parameters(query): Parameters) -> Result<Response, ApiError> {
    let (filter, _) = Filter::parse(&query, &[])?;
    let list = state.discoverer.instances().await?;
    json_off_workers(move || list.iter().filter(|info| filter.matches(info)).filter_map(target_group).collect::<Vec<_>>()).await
}

fn target_group(info: &InstanceInfo) -> Option<TargetGroup> {
    let url = url::Url::parse(&info.url).ok()?;
    let host = url.host()?;
    let port = url.port_or_known_default()?;
    let target = match host {
        url::Host::Ipv6(address) => format!("[{address}]:{port}"),
        other => format!("{other}:{port}"),
    };
    let mut labels = BTreeMap::from([
        ("__meta_msd_id".to_owned(), info.id.clone()),
        ("__meta_msd_url".to_owned(), info.url.clone()),
        ("__meta_msd_health".to_owned(), info.health.as_str().to_owned()),
        ("__meta_msd_protocol".to_owned(), info.protocol.as_str().to_owned()),
        ("__meta_msd_scheme".to_owned(), url.scheme().to_owned()),
    ]);
    // Prometheus scrapes only over HTTP, so only those schemes set the scrape scheme.
    if matches!(url.scheme(), "http" | "https") {
        labels.insert("__scheme__".to_owned(), url.scheme().to_owned());
    }
    for (key, value) in &info.metadata {
        labels.insert(format!("__meta_msd_metadata_{}", label_name(key)), value.clone());
    }
    Some(TargetGroup { targets: vec![target], labels })
}

/// Turns a metadata key into a valid Prometheus label name part: `[a-zA-Z0-9_]`, others become
/// `_`.
fn label_name(key: &str) -> String {
    key.chars().map(|character| if character.is_ascii_alphanumeric() { character } else { '_' }).collect()
}

pub(crate) async fn healthz(State(state): State<Arc<AppState>>, parameters: Parameters) -> Result<Response, ApiError> {
    parameters.reject_all("/healthz")?;
    state.discoverer.stats().await?;
    Ok((StatusCode::OK, Json(serde_json::json!({ "status": "ok" }))).into_response())
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>, parameters: Parameters) -> Result<Response, ApiError> {
    parameters.reject_all("/metrics")?;
    let stats = state.discoverer.stats().await?;
    let list = state.discoverer.instances().await?;
    let text = state.metrics.render(&list, &stats, state.event_clients.open());
    Ok(([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such route; see /v1/instances, /v1/pick, /v1/events, /v1/prometheus-sd, /metrics, /healthz")
}

/// Maximum size of a plain-text error body that [`json_errors`] copies into the JSON message.
/// Axum's rejections are one short line.
const PLAIN_ERROR_LIMIT: usize = 4096;

/// Gives every error response a JSON body and keeps its headers. The handlers' own errors are
/// JSON already, but axum's rejections and its 405 for a known path with another method come as
/// plain text or empty.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(response.headers()) {
        return response;
    }

    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_LIMIT).await.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned());
    // Axum adds the `Allow` header after this layer has run, so the message points to it.
    let message = if status == StatusCode::METHOD_NOT_ALLOWED {
        format!("method {method} is not allowed on this path; the Allow header lists the methods it accepts")
    } else {
        match text {
            Ok(text) if !text.is_empty() => text,
            _ => status.canonical_reason().unwrap_or("request failed").to_lowercase(),
        }
    };

    let json = ApiError::new(status, message).into_response();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.extend(json.headers().clone());
    Response::from_parts(parts, json.into_body())
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).and_then(|value| value.to_str().ok()).is_some_and(|value| value.starts_with("application/json"))
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn info(id: &str, health: Health, weight: Option<u32>, zone: &str) -> InstanceInfo {
        let metadata = BTreeMap::from([("zone".to_owned(), zone.to_owned())]);
        InstanceInfo { health, weight, metadata, ..crate::testing::instance_info(id, "http://10.0.0.1:8080/x") }
    }

    fn query(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn filter_by_health_and_metadata() {
        let (filter, _) = Filter::parse(&query(&[("health", "serving,draining"), ("metadata.zone", "a")]), &[]).unwrap();
        assert!(filter.matches(&info("1", Health::Serving, None, "a")));
        assert!(filter.matches(&info("2", Health::Draining, None, "a")));
        assert!(!filter.matches(&info("3", Health::Failing, None, "a")));
        assert!(!filter.matches(&info("4", Health::Serving, None, "b")));
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (pairs, fragment) in [
            (query(&[("health", "sick")]), "\"health\""),
            (query(&[("colour", "red")]), "\"colour\""),
            (query(&[("protocol", "udp")]), "\"protocol\""),
            (query(&[("metadata.", "x")]), "\"metadata.\""),
        ] {
            let error = Filter::parse(&pairs, &[]).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert!(error.message.contains(fragment), "{}", error.message);
        }
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let heavy = info("heavy", Health::Serving, Some(3), "a");
        let light = info("light", Health::Serving, Some(1), "a");
        let candidates = [&heavy, &light];
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let draws = 40_000;
        let heavy_picks = (0..draws).filter(|_| choose(&candidates, true, &mut rng).unwrap().id == "heavy").count();
        // Expected 30,000; the binomial standard deviation is about 87, so ±600 is about 7 sigma.
        assert!((29_400..=30_600).contains(&heavy_picks), "{heavy_picks}");
    }

    #[test]
    fn choice_of_nothing_is_none() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(choose(&[], false, &mut rng).is_none());
        let zero = info("zero", Health::Serving, Some(0), "a");
        assert!(choose(&[&zero], true, &mut rng).is_none());
    }

    #[test]
    fn prometheus_target_from_url() {
        let mut instance = info("web-1", Health::Serving, None, "eu-1");
        instance.metadata.insert("app.version".into(), "2".into());
        let group = target_group(&instance).unwrap();
        assert_eq!(group.targets, ["10.0.0.1:8080"]);
        assert_eq!(group.labels["__meta_msd_id"], "web-1");
        assert_eq!(group.labels["__meta_msd_metadata_zone"], "eu-1");
        assert_eq!(group.labels["__meta_msd_metadata_app_version"], "2");
        instance.url = "not a url".into();
        assert!(target_group(&instance).is_none());
    }
}
